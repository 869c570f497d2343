//! The uplink's decoder, fed arbitrary topics and payloads: a document or a rejection with a
//! reason, never a panic; what it accepts is always a valid device message.

#![allow(clippy::unwrap_used)]

use aurora_core::model::{self, DeviceMessage};
use aurora_core::Names;
use mqtt_bridge::decode::decode;
use proptest::prelude::*;

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,80}",
        (
            "[A-Za-z0-9_.:-]{0,130}",
            prop_oneof![
                Just("telemetry"),
                Just("alerts"),
                Just("attestation"),
                Just("receipt"),
                Just("x")
            ]
        )
            .prop_map(|(d, k)| format!("aurora/sensors/{d}/{k}")),
        (".{0,40}", Just("telemetry")).prop_map(|(d, k)| format!("aurora/sensors/{d}/{k}")),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        prop::collection::vec((".{0,10}", any::<i32>()), 0..8).prop_map(|kv| {
            let body: Vec<String> = kv
                .iter()
                .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
                .collect();
            format!("{{{}}}", body.join(",")).into_bytes()
        }),
        Just(b"{\"device_id\":\"someone-else\",\"message_type\":\"firmware\"}".to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn decode_never_panics_and_accepts_only_valid_messages(topic in topic(), payload in payload()) {
        let names = Names::default();
        match decode(&names, &topic, &payload, 256) {
            Ok(doc) => {
                prop_assert!(payload.len() <= 256);
                let (device, kind) = names.parse_sensor_topic(&topic).unwrap();
                prop_assert_eq!(&doc.device_id, device);
                prop_assert_eq!(doc.kind, kind);
                let parsed: DeviceMessage = model::parse(&doc.data).unwrap();
                prop_assert_eq!(parsed.device_id, device, "the topic's id wins over the payload's");
            }
            Err(rejected) => prop_assert!(!rejected.reason.is_empty()),
        }
    }
}
