//! The JSON Schemas of proto-schemas/ and the Rust types of `model` agree: every example
//! validates against its schema and parses as its type; every invalid example is refused by
//! both; what the types serialise validates against the schema.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use aurora_core::model::{
    self, AgentResult, AgentThought, Alert, Approval, AttestationReport, AuditEvent, CommandStatus,
    DeadLetter, DeviceCommand, DeviceMessage, DeviceSeen, Ioc, Message,
};
use serde_json::Value;

const BASE: &str = "https://schemas.aurora-soc.dev/transport/";

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto-schemas")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator(name: &str) -> jsonschema::Validator {
    let dir = schemas_dir();
    let schema = read_json(&dir.join(format!("{name}.schema.json")));
    assert!(
        jsonschema::meta::is_valid(&schema),
        "{name}.schema.json is not a valid draft 2020-12 schema"
    );
    let mut options = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if file.ends_with(".schema.json") {
            options = options.with_resource(
                format!("{BASE}{file}"),
                jsonschema::Resource::from_contents(read_json(&path)).unwrap(),
            );
        }
    }
    options.build(&schema).unwrap()
}

/// Parses with the Rust type and serialises back.
type RoundTrip = fn(&[u8]) -> Result<Value, model::InvalidMessage>;

fn round_trip<T: Message>(bytes: &[u8]) -> Result<Value, model::InvalidMessage> {
    let doc: T = model::parse(bytes)?;
    Ok(serde_json::from_slice(&model::to_bytes(&doc)).unwrap())
}

const MESSAGES: &[(&str, RoundTrip)] = &[
    ("alert", round_trip::<Alert>),
    ("ioc", round_trip::<Ioc>),
    ("agent-thought", round_trip::<AgentThought>),
    ("audit-event", round_trip::<AuditEvent>),
    ("agent-result", round_trip::<AgentResult>),
    ("approval", round_trip::<Approval>),
    ("device-message", round_trip::<DeviceMessage>),
    ("attestation-report", round_trip::<AttestationReport>),
    ("device-command", round_trip::<DeviceCommand>),
    ("command-status", round_trip::<CommandStatus>),
    ("device-seen", round_trip::<DeviceSeen>),
    ("dead-letter", round_trip::<DeadLetter>),
    ("device-alert", round_trip::<Alert>),
];

fn examples(name: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for entry in std::fs::read_dir(schemas_dir().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap();
        if file.starts_with(&format!("{name}.valid")) {
            valid.push(path);
        } else if file.starts_with(&format!("{name}.invalid.")) {
            invalid.push(path);
        }
    }
    (valid, invalid)
}

#[test]
fn every_message_has_a_schema_and_examples() {
    let dir = schemas_dir();
    let mut schema_files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let f = e.unwrap().file_name().to_str().unwrap().to_string();
            f.strip_suffix(".schema.json").map(str::to_string)
        })
        .collect();
    schema_files.sort();
    let mut typed: Vec<String> = MESSAGES.iter().map(|(n, _)| n.to_string()).collect();
    typed.sort();
    assert_eq!(
        schema_files, typed,
        "a schema without a type or a type without a schema"
    );
    for (name, _) in MESSAGES {
        let (valid, invalid) = examples(name);
        assert!(!valid.is_empty(), "{name}: no valid example");
        assert!(!invalid.is_empty(), "{name}: no invalid example");
    }
}

#[test]
fn valid_examples_pass_schema_and_type_and_the_types_output_validates() {
    for (name, parse) in MESSAGES {
        let validator = validator(name);
        for path in examples(name).0 {
            let doc = read_json(&path);
            let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            let bytes = std::fs::read(&path).unwrap();
            let back = parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let errors: Vec<String> = validator
                .iter_errors(&back)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{} serialised: {errors:?}",
                path.display()
            );
            assert_eq!(
                without_nulls(&back),
                without_nulls(&doc),
                "{}: the round trip changed the document",
                path.display()
            );
        }
    }
}

#[test]
fn invalid_examples_fail_schema_and_type() {
    for (name, parse) in MESSAGES {
        let validator = validator(name);
        for path in examples(name).1 {
            let doc = read_json(&path);
            assert!(
                !validator.is_valid(&doc),
                "{}: the schema accepts it",
                path.display()
            );
            let bytes = std::fs::read(&path).unwrap();
            let err = parse(&bytes).expect_err(&format!("{}: the type accepts it", path.display()));
            assert!(
                !err.field.is_empty(),
                "{}: error names no field",
                path.display()
            );
        }
    }
}

/// Timestamps are compared as instants: `2024-01-15T10:30:00Z` may come back as
/// `2024-01-15T10:30:00Z` exactly (chrono keeps the `Z` form).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}
