//! Device public keys as operators and devices send them, arbitrary: a 32-byte key or a
//! clear error, never a panic.

#![allow(clippy::unwrap_used)]

use device_registry::registration::decode_public_key;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn public_keys_decode_or_err(text in prop_oneof![".{0,100}", "[A-Za-z0-9+/=]{0,60}", "[0-9a-f]{60,70}"]) {
        match decode_public_key(&text) {
            Ok(key) => prop_assert_eq!(key.len(), 32),
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }
}
