//! What another site sends, arbitrary: the origin splice and the document check err or
//! accept, never panic; what they accept is a JSON object with our origin and a valid document.

#![allow(clippy::unwrap_used)]

use aurora_core::names::FederatedKind;
use federation_gateway::import::{validate, with_origin};
use proptest::prelude::*;

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        Just(br#"{"id":"550e8400-e29b-41d4-a716-446655440000","title":"t","severity":"high","status":"new","source":"s","timestamp":"2024-01-15T10:30:00Z"}"#.to_vec()),
        ".{0,100}".prop_map(|s| format!("{{\"origin_site\":{},\"x\":1}}", serde_json::to_string(&s).unwrap()).into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn splice_and_check_never_panic(payload in payload(), origin in "[a-z0-9-]{1,20}") {
        if let Ok(data) = with_origin(&payload, &origin) {
            let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
            prop_assert_eq!(v["origin_site"].as_str(), Some(origin.as_str()));
        }
        for kind in FederatedKind::ALL {
            let _ = validate(kind, &payload);
        }
    }
}
