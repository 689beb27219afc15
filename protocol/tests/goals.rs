//! The sample goals in `examples/goals/`: every valid one decodes, every invalid one fails
//! with exactly the errors written beside it in `<name>.errors`.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::{fs, path::PathBuf};

use infracrew_protocol::{GoalStatement, decode};

fn goals_dir(which: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/goals")
        .join(which)
}

fn json_files(which: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(goals_dir(which))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn valid_sample_goals_decode() {
    let files = json_files("valid");
    assert!(
        files.len() >= 3,
        "examples/goals/valid holds the sample goals"
    );
    for path in files {
        let bytes = fs::read(&path).unwrap();
        let goal: GoalStatement = decode(&bytes)
            .unwrap_or_else(|error| panic!("{} must be valid: {error}", path.display()));
        assert!(!goal.requested_by.is_empty());
    }
}

#[test]
fn invalid_sample_goals_fail_with_their_written_errors() {
    let files = json_files("invalid");
    assert!(
        files.len() >= 5,
        "examples/goals/invalid holds the refused goals"
    );
    for path in files {
        let bytes = fs::read(&path).unwrap();
        let expected_path = path.with_extension("errors");
        let expected = fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} needs {}", path.display(), expected_path.display()));
        let error = decode::<GoalStatement>(&bytes)
            .expect_err(&format!("{} must be refused", path.display()));
        assert_eq!(
            error.to_string().trim_end(),
            expected.trim_end(),
            "the error for {} (left) differs from {} (right)",
            path.display(),
            expected_path.display()
        );
    }
}

#[test]
fn every_schema_error_is_reported_at_once() {
    let bytes = br#"{"intent":"deploy","service":"Social Intel","environment":"staging",
        "replicas":-1,"requested_by":"dave","servce":"x","colour":"red"}"#;
    let error = decode::<GoalStatement>(bytes).unwrap_err();
    let mut paths: Vec<&str> = error
        .field_errors()
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/colour", "/replicas", "/servce", "/service"],
        "{error}"
    );
}

#[test]
fn a_goal_of_a_newer_major_version_is_refused_with_that_reason() {
    let bytes = br#"{"schema_version":"2.0","intent":"deploy","service":"social-intel",
        "environment":"staging","requested_by":"dave","shiny_new_field":true}"#;
    let error = decode::<GoalStatement>(bytes).unwrap_err();
    assert!(
        matches!(
            error,
            infracrew_protocol::DecodeError::UnsupportedVersion(_)
        ),
        "{error}"
    );
    assert!(error.to_string().contains("reads only 1.x"), "{error}");
}
