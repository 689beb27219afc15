//! The schema version every message carries, and the rule for refusing unknown majors.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `MAJOR.MINOR` of the message schema. A reader accepts any minor of the major it knows
/// (minors only add optional fields) and refuses other majors with [`UnsupportedVersion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SchemaVersion {
    pub major: u32,
    pub minor: u32,
}

impl SchemaVersion {
    /// The version this build of the protocol writes.
    pub const CURRENT: SchemaVersion = SchemaVersion { major: 1, minor: 3 };

    /// Checks that a message written with `self` can be read by this build.
    pub fn check_supported(self, kind: &'static str) -> Result<(), UnsupportedVersion> {
        if self.major == Self::CURRENT.major {
            Ok(())
        } else {
            Err(UnsupportedVersion {
                kind,
                found: self,
                supported_major: Self::CURRENT.major,
            })
        }
    }
}

impl Default for SchemaVersion {
    fn default() -> Self {
        Self::CURRENT
    }
}

/// A message whose major schema version this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} has schema_version {found}, but this build reads only {supported_major}.x; \
     upgrade the reader or send a {supported_major}.x message"
)]
pub struct UnsupportedVersion {
    pub kind: &'static str,
    pub found: SchemaVersion,
    pub supported_major: u32,
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Why a schema version string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schema version {0:?} is not of the form MAJOR.MINOR (for example \"1.0\")")]
pub struct InvalidSchemaVersion(String);

impl FromStr for SchemaVersion {
    type Err = InvalidSchemaVersion;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidSchemaVersion(text.to_owned());
        let (major, minor) = text.split_once('.').ok_or_else(invalid)?;
        let number = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            part.parse::<u32>().map_err(|_| invalid())
        };
        Ok(SchemaVersion {
            major: number(major)?,
            minor: number(minor)?,
        })
    }
}

impl Serialize for SchemaVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SchemaVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for SchemaVersion {
    fn schema_name() -> Cow<'static, str> {
        "SchemaVersion".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "MAJOR.MINOR of the message schema; readers refuse a major they do not know",
            "type": "string",
            "pattern": "^[0-9]+\\.[0-9]+$",
            "examples": ["1.0"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_major_minor() {
        let version: SchemaVersion = "1.7".parse().unwrap();
        assert_eq!(version, SchemaVersion { major: 1, minor: 7 });
        assert_eq!(version.to_string(), "1.7");
        for bad in ["1", "1.", ".1", "a.b", "1.0.0", "-1.0", "+1.0", ""] {
            assert!(
                bad.parse::<SchemaVersion>().is_err(),
                "{bad:?} must not parse"
            );
        }
    }

    #[test]
    fn refuses_unknown_major_and_accepts_newer_minor() {
        assert!(
            SchemaVersion { major: 1, minor: 9 }
                .check_supported("plan_spec")
                .is_ok()
        );
        let err = SchemaVersion { major: 2, minor: 0 }
            .check_supported("plan_spec")
            .unwrap_err();
        assert_eq!(err.supported_major, 1);
        assert!(
            err.to_string().contains("plan_spec has schema_version 2.0"),
            "{err}"
        );
    }
}
