//! RS256 and ES256 with public keys, and algorithm confusion refused.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aurora_core::auth::{AuthError, Minter, Permission, Verifier};

const RSA_PRIVATE: &[u8] = include_bytes!("../fixtures/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../fixtures/rsa-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../fixtures/ec-private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../fixtures/ec-public.pem");

#[test]
fn rs256_and_es256_tokens_verify_with_the_public_key() {
    for (private, public, alg) in [
        (RSA_PRIVATE, RSA_PUBLIC, jsonwebtoken::Algorithm::RS256),
        (EC_PRIVATE, EC_PUBLIC, jsonwebtoken::Algorithm::ES256),
    ] {
        let verifier = Verifier::from_public_pem(public).unwrap();
        assert_eq!(verifier.algorithm(), alg);
        let token = Minter::from_private_pem(private).unwrap().token(
            "svc",
            &[Permission::DevicesRead],
            Duration::from_secs(60),
        );
        let claims = verifier.verify(&token).unwrap();
        assert!(claims.has(Permission::DevicesRead));
    }
}

#[test]
fn a_token_signed_with_another_algorithm_or_key_is_refused() {
    let rsa = Verifier::from_public_pem(RSA_PUBLIC).unwrap();
    // Algorithm confusion: HS256 "signed" with the public key as the secret.
    let confused =
        Minter::hs256(RSA_PUBLIC).token("eve", &Permission::ALL, Duration::from_secs(60));
    assert!(matches!(rsa.verify(&confused), Err(AuthError::Invalid(_))));
    let es = Minter::from_private_pem(EC_PRIVATE).unwrap().token(
        "eve",
        &Permission::ALL,
        Duration::from_secs(60),
    );
    assert!(matches!(rsa.verify(&es), Err(AuthError::Invalid(_))));
    assert!(Verifier::from_public_pem(b"not a key").is_err());
}
