//! The committed schemas in `schemas/` match the protocol types, and validate real messages.
//!
//! Regenerate them with `make schemas` (it sets `INFRACREW_UPDATE_SCHEMAS=1` for this test).

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::{fs, path::PathBuf};

use infracrew_protocol::{self as protocol, Message, examples};
use serde_json::Value;

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

struct Kind {
    name: &'static str,
    generated: Value,
    example: Value,
    decodes: fn(&[u8]) -> Result<(), protocol::DecodeError>,
}

fn kind<M: Message>(example: M) -> Kind {
    Kind {
        name: M::KIND,
        generated: protocol::schema_for::<M>(),
        example: serde_json::to_value(&example).unwrap(),
        decodes: |bytes| protocol::decode::<M>(bytes).map(drop),
    }
}

fn all_kinds() -> Vec<Kind> {
    vec![
        kind(examples::goal()),
        kind(examples::goal_rejected()),
        kind(examples::plan_spec()),
        kind(examples::validate_request()),
        kind(examples::validation_result()),
        kind(examples::build_status()),
        kind(examples::approval_decision()),
        kind(examples::apply_request()),
        kind(examples::ops_event()),
        kind(examples::heartbeat()),
        kind(examples::dead_letter()),
        kind(examples::decision_request()),
        kind(examples::decision_reply()),
        kind(examples::plan_transitioned()),
    ]
}

#[test]
fn committed_schemas_match_the_protocol_types() {
    let update = std::env::var_os("INFRACREW_UPDATE_SCHEMAS").is_some();
    let mut drifted = Vec::new();
    for kind in all_kinds() {
        let path = schemas_dir().join(format!("{}.json", kind.name));
        let generated = serde_json::to_string_pretty(&kind.generated).unwrap() + "\n";
        let committed = fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            if update {
                fs::write(&path, &generated).unwrap();
            } else {
                drifted.push(path.display().to_string());
            }
        }
    }
    assert!(
        drifted.is_empty(),
        "these schemas differ from the protocol types: {drifted:?}\n\
         regenerate them with `make schemas`, then rebuild (decoders embed the committed files)"
    );

    let mut on_disk: Vec<String> = fs::read_dir(schemas_dir())
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".json"))
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = all_kinds()
        .iter()
        .map(|k| format!("{}.json", k.name))
        .collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "schemas/ holds exactly one schema per message type"
    );
}

#[test]
fn every_example_message_validates_against_its_committed_schema() {
    for kind in all_kinds() {
        let bytes = serde_json::to_vec(&kind.example).unwrap();
        if let Err(error) = (kind.decodes)(&bytes) {
            panic!("the example {} does not decode: {error}", kind.name);
        }
    }
}

#[test]
fn schemas_are_draft_2020_12() {
    for kind in all_kinds() {
        assert_eq!(
            kind.generated["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{}",
            kind.name
        );
    }
}
