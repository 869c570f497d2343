//! Tokens for tests: good ones signed with [`SECRET`] (the secret [`crate::process::Site`]
//! gives every service), and the bad ones a service must refuse.

use std::time::Duration;

use aurora_core::auth::{Claims, Minter, Permission};
use base64::Engine;
use serde_json::json;

/// The HS256 secret every service of a [`crate::process::Site`] is given (at least 32 bytes:
/// the services refuse a shorter one at start).
pub const SECRET: &str = "aurora-e2e-test-secret-0123456789abcdef";

/// A token signed with [`SECRET`] for `e2e-analyst`, valid 10 minutes.
pub fn token(permissions: &[Permission]) -> String {
    token_for("e2e-analyst", permissions)
}

/// A token signed with [`SECRET`] for `sub`, valid 10 minutes.
pub fn token_for(sub: &str, permissions: &[Permission]) -> String {
    token_valid_for(sub, permissions, Duration::from_secs(600))
}

/// A token signed with [`SECRET`] for `sub`, valid for `ttl` (a short one expires while a
/// test watches).
pub fn token_valid_for(sub: &str, permissions: &[Permission], ttl: Duration) -> String {
    Minter::hs256(SECRET.as_bytes()).token(sub, permissions, ttl)
}

/// A token with `alg: none` (no signature) granting everything.
pub fn alg_none_token() -> String {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(v).expect("JSON of a value"))
    };
    let claims = Claims::new("mallory", &Permission::ALL, Duration::from_secs(600));
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&serde_json::to_value(&claims).expect("JSON of claims"))
    )
}

/// Signed with a secret the services do not know, granting everything.
pub fn forged_token() -> String {
    Minter::hs256(b"not-the-secret").token("mallory", &Permission::ALL, Duration::from_secs(600))
}

/// Signed with [`SECRET`], granting everything, expired an hour ago.
pub fn expired_token() -> String {
    let mut claims = Claims::new("alice", &Permission::ALL, Duration::from_secs(600));
    claims.exp = claims.exp.saturating_sub(3600 + 600);
    Minter::hs256(SECRET.as_bytes()).mint(&claims)
}
