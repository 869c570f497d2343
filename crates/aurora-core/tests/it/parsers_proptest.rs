//! Every parser of outside input in aurora-core, fed arbitrary input: an error, never a panic.

#![allow(clippy::unwrap_used)]

use aurora_core::auth::{redact_query, token_from_request, Verifier};
use aurora_core::bus::parse_id;
use aurora_core::config::parse_duration;
use aurora_core::model::{
    self, AgentResult, AgentThought, Alert, Approval, AttestationReport, AuditEvent, DeadLetter,
    DeviceCommand, DeviceMessage, DeviceSeen, Ioc, Tlp,
};
use aurora_core::names::{subject_token, Names};
use proptest::prelude::*;

fn parse_all(bytes: &[u8]) {
    let _ = model::parse::<Alert>(bytes);
    let _ = model::parse::<Ioc>(bytes);
    let _ = model::parse::<AgentThought>(bytes);
    let _ = model::parse::<AuditEvent>(bytes);
    let _ = model::parse::<AgentResult>(bytes);
    let _ = model::parse::<Approval>(bytes);
    let _ = model::parse::<DeviceMessage>(bytes);
    let _ = model::parse::<AttestationReport>(bytes);
    let _ = model::parse::<DeviceCommand>(bytes);
    let _ = model::parse::<DeviceSeen>(bytes);
    let _ = model::parse::<DeadLetter>(bytes);
}

/// JSON-ish input: objects with the fields of the messages and values of every type, so the
/// parsers get past the first byte.
fn json_like() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        Just("id"),
        Just("title"),
        Just("severity"),
        Just("status"),
        Just("timestamp"),
        Just("iocs"),
        Just("tlp"),
        Just("confidence"),
        Just("device_id"),
        Just("expires_at"),
        Just("requested_at"),
        Just("mitre_techniques"),
        Just("nonce"),
        Just("firmware_sha256"),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() {
            f.to_string()
        } else {
            "1e309".into()
        }),
        ".{0,20}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("null".to_string()),
        Just("[{\"type\":\"\",\"value\":1}]".to_string()),
        Just("\"2024-01-15T10:30:00Z\"".to_string()),
        Just("{\"a\":[[[[[]]]]]}".to_string()),
    ];
    prop::collection::vec((key, value), 0..12).prop_map(|fields| {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(",")).into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn messages_from_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_all(&bytes);
    }

    #[test]
    fn messages_from_json_like_input(bytes in json_like()) {
        parse_all(&bytes);
    }

    #[test]
    fn topics_tokens_and_small_grammars(s in ".{0,200}") {
        let names = Names::default();
        if let Some((device, _)) = names.parse_sensor_topic(&s) {
            prop_assert!(!device.contains('/'));
        }
        let token = subject_token(&s);
        prop_assert!(!token.is_empty() && !token.contains('.') && !token.contains('*') && !token.contains('>'));
        let _ = Names::new(&s);
        let _ = Tlp::parse(&s);
        let _ = parse_duration(&s);
        let _ = parse_id(&s);
        let _ = model::is_valid_device_id(&s);
        let _ = model::is_mitre_technique(&s);
        let _ = redact_query(&s);
        let _ = token_from_request(Some(&s), Some(&s));
    }

    #[test]
    fn tokens_from_random_strings(s in ".{0,300}", dots in "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,40}") {
        let v = Verifier::hs256(b"k").unwrap();
        prop_assert!(v.verify(&s).is_err());
        prop_assert!(v.verify(&dots).is_err());
    }
}
