//! Property tests on the decoders and the goal checks: whatever arrives, decoding never
//! panics, and every refusal carries a reason (and, for a schema refusal, the fields at fault).
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use infracrew_protocol::{
    ApplyRequest, BuildStatus, DeadLetter, DecisionRequest, DecodeError, GoalStatement, Heartbeat,
    OpsEvent, PlanSpec, ValidateRequest, ValidationResult, decode, examples,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Checks one decoder's answer: a refusal says why.
fn check<M>(result: Result<M, DecodeError>) -> Result<(), TestCaseError> {
    if let Err(error) = result {
        prop_assert!(!error.to_string().trim().is_empty(), "{error:?}");
        if let DecodeError::Invalid { errors, .. } = &error {
            prop_assert!(
                !errors.is_empty(),
                "a schema refusal names its fields: {error}"
            );
            for field in errors {
                prop_assert!(!field.message.is_empty(), "{error}");
            }
        }
    }
    Ok(())
}

fn every_decoder(bytes: &[u8]) -> Result<(), TestCaseError> {
    check(decode::<GoalStatement>(bytes))?;
    check(decode::<PlanSpec>(bytes))?;
    check(decode::<ValidateRequest>(bytes))?;
    check(decode::<ValidationResult>(bytes))?;
    check(decode::<BuildStatus>(bytes))?;
    check(decode::<ApplyRequest>(bytes))?;
    check(decode::<OpsEvent>(bytes))?;
    check(decode::<Heartbeat>(bytes))?;
    check(decode::<DeadLetter>(bytes))?;
    check(decode::<DecisionRequest>(bytes))
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

const GOAL_FIELDS: [&str; 9] = [
    "intent",
    "service",
    "environment",
    "version",
    "replicas",
    "strategy",
    "requested_by",
    "reason",
    "schema_version",
];

/// A sample goal with some fields replaced, removed or added.
fn goal_variant() -> impl Strategy<Value = Value> {
    let change = prop_oneof![
        (prop::sample::select(&GOAL_FIELDS[..]), any_json())
            .prop_map(|(field, value)| (field.to_owned(), Some(value))),
        prop::sample::select(&GOAL_FIELDS[..]).prop_map(|field| (field.to_owned(), None)),
        ("[a-z_]{1,12}", any_json()).prop_map(|(field, value)| (field, Some(value))),
    ];
    prop::collection::vec(change, 0..4).prop_map(|changes| {
        let mut goal = serde_json::to_value(examples::goal()).unwrap();
        for (field, value) in changes {
            match value {
                Some(value) => goal[field.as_str()] = value,
                None => {
                    goal.as_object_mut().unwrap().remove(&field);
                }
            }
        }
        goal
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_and_every_refusal_says_why(
        bytes in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        every_decoder(&bytes)?;
    }

    #[test]
    fn a_damaged_message_is_refused_with_a_reason(
        cut in 0usize..400,
        flips in prop::collection::vec((0usize..400, any::<u8>()), 0..4),
    ) {
        let mut bytes = serde_json::to_vec(&examples::plan_spec()).unwrap();
        for (at, byte) in flips {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        bytes.truncate(cut.min(bytes.len()));
        every_decoder(&bytes)?;
    }

    #[test]
    fn arbitrary_json_is_refused_with_a_reason(value in any_json()) {
        every_decoder(value.to_string().as_bytes())?;
    }

    #[test]
    fn a_changed_goal_is_accepted_only_when_valid_and_otherwise_names_the_field(
        goal in goal_variant()
    ) {
        let result = decode::<GoalStatement>(goal.to_string().as_bytes());
        if let Ok(decoded) = &result {
            // Accepted means the required fields are there with usable values.
            prop_assert!(!decoded.service.is_empty());
            prop_assert!(!decoded.requested_by.is_empty());
        }
        check(result)?;
    }
}

#[test]
fn the_sample_goal_itself_is_accepted() {
    let goal = serde_json::to_value(examples::goal()).unwrap();
    assert!(decode::<GoalStatement>(goal.to_string().as_bytes()).is_ok());
    assert!(decode::<GoalStatement>(json!({}).to_string().as_bytes()).is_err());
}
