//! Encoding, and decoding that checks version and schema before it trusts a byte.

use std::sync::OnceLock;

use jsonschema::{
    JsonType, ValidationError, Validator,
    error::{TypeKind, ValidationErrorKind},
};
use schemars::{JsonSchema, generate::SchemaSettings};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{SchemaVersion, UnsupportedVersion};

/// A message of the crew's protocol.
pub trait Message: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// Stable name of the kind; its schema is committed as `schemas/<KIND>.json`.
    const KIND: &'static str;

    /// The committed schema that incoming bytes are validated against.
    const COMMITTED_SCHEMA: &'static str;

    /// The compiled form of [`Message::COMMITTED_SCHEMA`], built on first use.
    #[doc(hidden)]
    fn validator_cell() -> &'static OnceLock<Result<Validator, String>>;

    /// An id derived from what caused the message, sent as `Nats-Msg-Id`, so a retried
    /// input produces the same id and JetStream stores the output once.
    fn message_id(&self) -> String;
}

/// Implements [`Message`] for a type whose schema is `schemas/<kind>.json`.
macro_rules! message {
    ($ty:ty, $kind:literal, |$msg:ident| $id:expr) => {
        impl $crate::Message for $ty {
            const KIND: &'static str = $kind;
            const COMMITTED_SCHEMA: &'static str = include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../schemas/",
                $kind,
                ".json"
            ));

            fn validator_cell()
            -> &'static ::std::sync::OnceLock<Result<::jsonschema::Validator, String>> {
                static CELL: ::std::sync::OnceLock<Result<::jsonschema::Validator, String>> =
                    ::std::sync::OnceLock::new();
                &CELL
            }

            fn message_id(&self) -> String {
                let $msg = self;
                $id
            }
        }
    };
}
pub(crate) use message;

/// The JSON Schema (draft 2020-12) generated from a message type, as committed in `schemas/`.
pub fn schema_for<M: Message>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    generator.into_root_schema_for::<M>().to_value()
}

/// One way a message breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldError {
    /// JSON pointer to the offending value (`""` is the whole document).
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        write!(f, "at {path}: {}", self.message)
    }
}

/// Why bytes are not a valid message. Each variant is final: retrying the same bytes fails
/// the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{kind} is not valid JSON: {message} (line {line}, column {column})")]
    Malformed {
        kind: &'static str,
        line: usize,
        column: usize,
        message: String,
    },

    #[error(transparent)]
    UnsupportedVersion(#[from] UnsupportedVersion),

    #[error("{kind} does not match its schema:{}", list(.errors))]
    Invalid {
        kind: &'static str,
        errors: Vec<FieldError>,
    },

    #[error("the committed schema for {kind} does not compile ({reason}); run `make schemas`")]
    SchemaUnavailable { kind: &'static str, reason: String },
}

impl DecodeError {
    /// The individual schema violations, if that is what went wrong.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            DecodeError::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }
}

fn list(errors: &[FieldError]) -> String {
    errors.iter().map(|error| format!("\n  {error}")).collect()
}

/// Serializes a message to the bytes that go on the bus.
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(message)
}

/// The largest message the crew's bus carries: nats-server's `max_payload` (1 MB by default,
/// and in deploy/nats/nats.conf). The server refuses a larger publish.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Decodes bytes from outside this process: JSON, then the schema major version, then every
/// schema violation at once, then the typed value.
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, DecodeError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| DecodeError::Malformed {
        kind: M::KIND,
        line: error.line(),
        column: error.column(),
        message: strip_position(&error),
    })?;
    decode_value(value)
}

/// [`decode`] for an already parsed JSON value.
pub fn decode_value<M: Message>(value: Value) -> Result<M, DecodeError> {
    // The version goes first so a newer major is refused with that reason, not with a list
    // of schema errors it would likely also produce.
    if let Some(Ok(version)) = value
        .get("schema_version")
        .and_then(Value::as_str)
        .map(str::parse::<SchemaVersion>)
    {
        version.check_supported(M::KIND)?;
    }

    let validator = validator::<M>()?;
    // The yes-or-no check stops at the first violation and builds no errors: a valid message,
    // the usual case, costs a fraction of listing them.
    if !validator.is_valid(&value) {
        let errors: Vec<FieldError> = validator
            .iter_errors(&value)
            .flat_map(|error| field_errors(&error))
            .collect();
        if !errors.is_empty() {
            return Err(DecodeError::Invalid {
                kind: M::KIND,
                errors,
            });
        }
    }

    // The schema is generated from the type, so this fails only if the two drifted apart.
    M::deserialize(value).map_err(|error| DecodeError::Invalid {
        kind: M::KIND,
        errors: vec![FieldError {
            path: String::new(),
            message: error.to_string(),
        }],
    })
}

/// The schema generated from a type, compiled once to check documents (configuration files,
/// say) against it.
#[derive(Debug)]
pub struct DocumentSchema(Result<Validator, String>);

impl DocumentSchema {
    pub fn of<T: JsonSchema>() -> Self {
        let generator = SchemaSettings::draft2020_12()
            .for_deserialize()
            .into_generator();
        let schema = generator.into_root_schema_for::<T>().to_value();
        Self(jsonschema::draft202012::new(&schema).map_err(|error| error.to_string()))
    }

    /// Every violation in `document`, each with its JSON path.
    pub fn check(&self, document: &Value) -> Vec<FieldError> {
        match &self.0 {
            Ok(validator) => validator
                .iter_errors(document)
                .flat_map(|e| field_errors(&e))
                .collect(),
            Err(reason) => vec![FieldError {
                path: String::new(),
                message: reason.clone(),
            }],
        }
    }
}

fn validator<M: Message>() -> Result<&'static Validator, DecodeError> {
    let compiled = M::validator_cell().get_or_init(|| {
        let schema: Value =
            serde_json::from_str(M::COMMITTED_SCHEMA).map_err(|error| error.to_string())?;
        jsonschema::draft202012::new(&schema).map_err(|error| error.to_string())
    });
    compiled
        .as_ref()
        .map_err(|reason| DecodeError::SchemaUnavailable {
            kind: M::KIND,
            reason: reason.clone(),
        })
}

/// Turns one validator error into errors that name the offending path and what was expected.
fn field_errors(error: &ValidationError<'_>) -> Vec<FieldError> {
    let path = error.instance_path().as_str().to_owned();
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => unexpected
            .iter()
            .map(|field| FieldError {
                path: format!("{path}/{}", escape_pointer(field)),
                message: "unknown field".to_owned(),
            })
            .collect(),
        ValidationErrorKind::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_owned);
            vec![FieldError {
                path: format!("{path}/{}", escape_pointer(&name)),
                message: "missing required field".to_owned(),
            }]
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // Optional fields are `anyOf: [T, null]` and documented enums are `oneOf` of
            // constants: say what the value could have been instead of naming the keyword.
            let branches: Vec<&Vec<ValidationError<'static>>> = context
                .iter()
                .filter(|branch| !is_null_branch(branch))
                .collect();
            if let Some(choices) = constant_choices(&branches) {
                return vec![FieldError {
                    path,
                    message: format!("{} is not one of {}", error.instance(), choices.join(", ")),
                }];
            }
            match branches.as_slice() {
                [only] => only.iter().flat_map(field_errors).collect(),
                _ => vec![FieldError {
                    path,
                    message: error.to_string(),
                }],
            }
        }
        _ => vec![FieldError {
            path,
            message: error.to_string(),
        }],
    }
}

fn is_null_branch(branch: &[ValidationError<'_>]) -> bool {
    matches!(branch, [error] if matches!(
        error.kind(),
        ValidationErrorKind::Type { kind: TypeKind::Single(JsonType::Null) }
    ))
}

/// The allowed values when every branch is a constant or an enum.
fn constant_choices(branches: &[&Vec<ValidationError<'static>>]) -> Option<Vec<String>> {
    let mut choices = Vec::new();
    for branch in branches {
        match branch.as_slice() {
            [error] => match error.kind() {
                ValidationErrorKind::Constant { expected_value } => {
                    choices.push(expected_value.to_string());
                }
                ValidationErrorKind::Enum { options } => {
                    choices.extend(options.as_array()?.iter().map(Value::to_string));
                }
                _ => return None,
            },
            _ => return None,
        }
    }
    (!choices.is_empty()).then_some(choices)
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// serde_json appends " at line L column C"; the position has its own fields.
fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(index) => text[..index].to_owned(),
        None => text,
    }
}
