//! What another site sends, arbitrary: the landing (origin and revision spliced in, the
//! document checked) errs or accepts, never panics; what it accepts is a JSON object with an
//! owner and the revision it lands with.

#![allow(clippy::unwrap_used)]

use aurora_core::names::FederatedKind;
use federation_gateway::import::{landing, validate};
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
        for kind in FederatedKind::ALL {
            let _ = validate(kind, &payload);
            if let Ok(landed) = landing(kind, &payload, &origin, "", false) {
                let v: serde_json::Value = serde_json::from_slice(&landed.data).unwrap();
                prop_assert!(v["origin_site"].is_string());
                prop_assert_eq!(v["imported_revision"].as_i64(), Some(landed.stamp.revision));
            }
        }
    }
}
