//! The plan digest: SHA-256 over a canonical JSON form of the exact change.

use std::fmt::{self, Write as _};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// `sha256:<64 hex digits>` over [`canonical_json`] of a change. Approvals bind to it: a change
/// that is rendered again with any difference gets another digest and needs new approvals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct PlanDigest(#[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))] String);

impl PlanDigest {
    /// Digests any serializable change. Two values with the same content have the same digest,
    /// whatever the order of their object keys.
    pub fn of<T: Serialize>(change: &T) -> Result<Self, serde_json::Error> {
        let value = serde_json::to_value(change)?;
        Ok(Self::of_value(&value))
    }

    /// Digests a JSON value in its canonical form.
    pub fn of_value(value: &Value) -> Self {
        let hash = Sha256::digest(canonical_json(value).as_bytes());
        PlanDigest(format!("sha256:{}", hex(&hash)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, enough for a person to compare two digests at a glance.
    pub fn short(&self) -> &str {
        // A digest read from storage may be malformed: never slice past its end.
        self.0.get(7..19).unwrap_or(&self.0)
    }
}

impl fmt::Display for PlanDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `bytes` as lowercase hex digits, two per byte.
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Renders JSON canonically: object keys sorted by their UTF-8 bytes, no insignificant
/// white space, strings and numbers as serde_json writes them. The sort is explicit so the
/// result does not depend on whether serde_json's `preserve_order` feature is on.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(text) => write_string(text, out),
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_string(text: &str, out: &mut String) {
    out.push_str(&Value::String(text.to_owned()).to_string());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn same_content_in_any_key_order_has_one_digest() {
        let a: Value = serde_json::from_str(
            r#"{"service":"social-intel","after":{"replicas":2,"image":"x:1"},"list":[1,{"b":1,"a":2}]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{ "list": [1, {"a": 2, "b": 1}], "after": {"image": "x:1", "replicas": 2}, "service": "social-intel" }"#,
        )
        .unwrap();
        assert_eq!(PlanDigest::of_value(&a), PlanDigest::of_value(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"after":{"image":"x:1","replicas":2},"list":[1,{"a":2,"b":1}],"service":"social-intel"}"#
        );
    }

    #[test]
    fn any_difference_changes_the_digest() {
        let base = json!({"replicas": 2, "image": "x:1"});
        let digest = PlanDigest::of_value(&base);
        assert_ne!(
            digest,
            PlanDigest::of_value(&json!({"replicas": 3, "image": "x:1"}))
        );
        assert_ne!(
            digest,
            PlanDigest::of_value(&json!({"replicas": 2, "image": "x:2"}))
        );
        assert_ne!(
            digest,
            PlanDigest::of_value(&json!([{"replicas": 2, "image": "x:1"}]))
        );
        assert!(digest.as_str().starts_with("sha256:"));
        assert_eq!(digest.as_str().len(), 71);
        assert_eq!(digest.short().len(), 12);
    }

    #[test]
    fn strings_are_escaped_canonically() {
        let value = json!({"k\"ey": "line\nbreak \u{e9}"});
        assert_eq!(canonical_json(&value), r#"{"k\"ey":"line\nbreak é"}"#);
    }
}
