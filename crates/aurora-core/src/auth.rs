//! JWT verification and minting (docs/contract.md#auth).
//!
//! HS256 with a shared secret by default; RS256 or ES256 with a PEM public key as an option.
//! Only the configured algorithm is accepted, so `alg: none` and algorithm-confusion tokens
//! (an HS256 token signed with the public key) fail. `exp` and `sub` are required, `nbf` is
//! checked when present, `iss`/`aud` when configured.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The secret every binary uses with `--dev-insecure-auth`: for a developer's machine only.
pub const DEV_SECRET: &str = "aurora-dev-secret-do-not-use-in-production";

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// The permissions of the contract (docs/contract.md#permissions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    WsAlerts,
    WsAgentThoughts,
    ApprovalsManage,
    DevicesRead,
    DevicesWrite,
    FirmwareManage,
}

impl Permission {
    pub const ALL: [Permission; 6] = [
        Self::WsAlerts,
        Self::WsAgentThoughts,
        Self::ApprovalsManage,
        Self::DevicesRead,
        Self::DevicesWrite,
        Self::FirmwareManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::WsAlerts => "ws:alerts",
            Self::WsAgentThoughts => "ws:agent_thoughts",
            Self::ApprovalsManage => "approvals:manage",
            Self::DevicesRead => "devices:read",
            Self::DevicesWrite => "devices:write",
            Self::FirmwareManage => "firmware:manage",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `aud` may be one string or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims of an Aurora token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Permission strings; unknown ones are kept but grant nothing.
    #[serde(default)]
    pub permissions: Vec<String>,
}

impl Claims {
    /// Claims for `sub` with these permissions, valid from now for `ttl`.
    pub fn new(sub: &str, permissions: &[Permission], ttl: Duration) -> Self {
        let now = jsonwebtoken::get_current_timestamp();
        Self {
            sub: sub.to_string(),
            exp: now + ttl.as_secs(),
            nbf: None,
            iat: Some(now),
            iss: None,
            aud: None,
            permissions: permissions.iter().map(|p| p.as_str().to_string()).collect(),
        }
    }

    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.iter().any(|p| p == permission.as_str())
    }

    /// `Ok` when the token grants `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), AuthError> {
        if self.has(permission) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(permission))
        }
    }

    /// Time left before expiry (zero when already expired).
    pub fn remaining(&self) -> Duration {
        let now = jsonwebtoken::get_current_timestamp();
        Duration::from_secs(self.exp.saturating_sub(now))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token given")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("missing permission {0}")]
    Forbidden(Permission),
}

impl AuthError {
    /// True for a refused identity (HTTP 401), false for a missing permission (403).
    pub fn is_unauthenticated(&self) -> bool {
        !matches!(self, Self::Forbidden(_))
    }
}

/// Key material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the JWT public key {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the JWT key is neither an RSA nor an EC (P-256) PEM key: {0}")]
    Pem(String),
    #[error("the JWT secret is empty")]
    EmptySecret,
    #[error("no JWT key configured: set AURORA_JWT_SECRET or AURORA_JWT_PUBLIC_KEY, or pass --dev-insecure-auth on a developer machine")]
    NotConfigured,
}

/// Checks tokens.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok(Self::with(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
        ))
    }

    /// RS256 or ES256, from the PEM of the public key (the kind of key decides).
    pub fn from_public_pem(pem: &[u8]) -> Result<Self, KeyError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self::with(key, Algorithm::RS256));
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Ok(Self::with(key, Algorithm::ES256)),
            Err(e) => Err(KeyError::Pem(e.to_string())),
        }
    }

    /// From a PEM file of the public key.
    pub fn from_public_pem_file(path: &str) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_string(),
            source,
        })?;
        Self::from_public_pem(&pem)
    }

    fn with(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = LEEWAY_SECS;
        Self { key, validation }
    }

    /// Requires `iss` to be this issuer.
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".into());
        self
    }

    /// Requires `aud` to contain this audience.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation.required_spec_claims.insert("aud".into());
        self
    }

    /// The algorithm this verifier accepts.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not accepted".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::Invalid(format!("missing claim {c}"))
                }
                _ => AuthError::Invalid(e.to_string()),
            })
    }

    /// Verifies and requires a permission.
    pub fn authorize(
        &self,
        token: Option<&str>,
        permission: Permission,
    ) -> Result<Claims, AuthError> {
        let claims = self.verify(token.ok_or(AuthError::Missing)?)?;
        claims.require(permission)?;
        Ok(claims)
    }
}

/// Makes tokens: for the CLI, the simulator and tests.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
    alg: Algorithm,
}

impl Minter {
    pub fn hs256(secret: &[u8]) -> Self {
        Self {
            key: EncodingKey::from_secret(secret),
            alg: Algorithm::HS256,
        }
    }

    /// RS256 or ES256 from a PEM private key.
    pub fn from_private_pem(pem: &[u8]) -> Result<Self, KeyError> {
        if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
            return Ok(Self {
                key,
                alg: Algorithm::RS256,
            });
        }
        EncodingKey::from_ec_pem(pem)
            .map(|key| Self {
                key,
                alg: Algorithm::ES256,
            })
            .map_err(|e| KeyError::Pem(e.to_string()))
    }

    pub fn mint(&self, claims: &Claims) -> String {
        // Encoding a struct of strings and integers with a key that parsed cannot fail.
        encode(&Header::new(self.alg), claims, &self.key).unwrap_or_default()
    }

    /// A token for `sub` with these permissions, valid for `ttl`.
    pub fn token(&self, sub: &str, permissions: &[Permission], ttl: Duration) -> String {
        self.mint(&Claims::new(sub, permissions, ttl))
    }
}

/// Takes the token of a request: `Authorization: Bearer <t>` first, then `?token=<t>`.
pub fn token_from_request<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<String> {
    if let Some(h) = authorization {
        let h = h.trim();
        if let Some(t) = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
        {
            return Some(t.trim().to_string());
        }
    }
    query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    })
}

/// The query string with every `token` value replaced, for logs and traces.
pub fn redact_query(query: &str) -> String {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| {
            if k.eq_ignore_ascii_case("token") || k.eq_ignore_ascii_case("access_token") {
                format!("{k}=REDACTED")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Parses `ws:alerts,approvals:manage`; the error names the unknown permission.
pub fn parse_permissions(list: &str) -> Result<Vec<Permission>, String> {
    let mut seen = HashSet::new();
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter(|s| seen.insert(s.to_string()))
        .map(|s| {
            Permission::parse(s).ok_or_else(|| {
                let known: Vec<_> = Permission::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown permission {s:?} (known: {})", known.join(", "))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn a_minted_token_verifies_with_its_permissions() {
        let minter = Minter::hs256(b"s3cret");
        let token = minter.token("alice", &[Permission::WsAlerts], Duration::from_secs(60));
        let claims = Verifier::hs256(b"s3cret")
            .expect("key")
            .verify(&token)
            .expect("valid");
        assert_eq!(claims.sub, "alice");
        assert!(claims.has(Permission::WsAlerts));
        assert_eq!(
            claims.require(Permission::ApprovalsManage),
            Err(AuthError::Forbidden(Permission::ApprovalsManage))
        );
    }

    #[test]
    fn forged_expired_and_unsigned_tokens_fail() {
        let v = Verifier::hs256(b"s3cret").expect("key");
        let forged =
            Minter::hs256(b"other").token("eve", &Permission::ALL, Duration::from_secs(60));
        assert_eq!(
            v.verify(&forged),
            Err(AuthError::Invalid("bad signature".into()))
        );

        let mut claims = Claims::new("bob", &[Permission::WsAlerts], Duration::from_secs(0));
        claims.exp -= 120;
        let expired = Minter::hs256(b"s3cret").mint(&claims);
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));

        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(
                r#"{{"sub":"eve","exp":{exp},"permissions":["ws:alerts"]}}"#
            ))
        );
        assert!(matches!(v.verify(&none), Err(AuthError::Invalid(_))));
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        assert!(matches!(v.verify("garbage"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn not_before_and_missing_sub() {
        let v = Verifier::hs256(b"k").expect("key");
        let m = Minter::hs256(b"k");
        let mut claims = Claims::new("bob", &[], Duration::from_secs(600));
        claims.nbf = Some(claims.exp - 10);
        assert_eq!(v.verify(&m.mint(&claims)), Err(AuthError::NotYetValid));

        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let no_sub = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": exp}),
            &EncodingKey::from_secret(b"k"),
        )
        .expect("encode");
        assert!(matches!(v.verify(&no_sub), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let m = Minter::hs256(b"k");
        let v = Verifier::hs256(b"k")
            .expect("key")
            .with_issuer("aurora")
            .with_audience("soc");
        let mut claims = Claims::new("bob", &[], Duration::from_secs(600));
        assert!(v.verify(&m.mint(&claims)).is_err());
        claims.iss = Some("aurora".into());
        claims.aud = Some(Audience::One("soc".into()));
        assert!(v.verify(&m.mint(&claims)).is_ok());
        claims.aud = Some(Audience::Many(vec!["other".into()]));
        assert_eq!(
            v.verify(&m.mint(&claims)),
            Err(AuthError::Invalid("wrong audience".into()))
        );
    }

    #[test]
    fn tokens_come_from_header_or_query_and_never_reach_logs() {
        assert_eq!(
            token_from_request(Some("Bearer abc"), Some("token=def")),
            Some("abc".into())
        );
        assert_eq!(
            token_from_request(None, Some("since=1-0&token=d%2Bf")),
            Some("d+f".into())
        );
        assert_eq!(token_from_request(None, Some("since=1")), None);
        assert_eq!(
            redact_query("since=1-0&token=secret"),
            "since=1-0&token=REDACTED"
        );
    }

    #[test]
    fn permission_lists_parse() {
        assert_eq!(
            parse_permissions("ws:alerts, approvals:manage"),
            Ok(vec![Permission::WsAlerts, Permission::ApprovalsManage])
        );
        assert!(parse_permissions("ws:alerts,root").is_err());
    }
}

/// The HTTP side of auth, the same in every API: an extractor for "authorised with
/// permission P" and one refusal shape (401 with `WWW-Authenticate: Bearer` for a missing or
/// bad token, 403 for a missing permission; the body is `{"error": "..."}` everywhere).
pub mod http {
    use std::marker::PhantomData;

    use axum::extract::{FromRef, FromRequestParts};
    use axum::http::request::Parts;
    use axum::http::{header, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::Json;

    use super::{token_from_request, AuthError, Claims, Permission, Verifier};

    /// A permission a route needs, as a type.
    pub trait Needs: Send + Sync + 'static {
        const PERMISSION: Permission;
    }

    macro_rules! needs {
        ($($name:ident => $perm:ident),* $(,)?) => {$(
            #[doc = concat!("Needs `", stringify!($perm), "`.")]
            pub struct $name;
            impl Needs for $name {
                const PERMISSION: Permission = Permission::$perm;
            }
        )*};
    }

    needs! {
        WsAlerts => WsAlerts,
        WsAgentThoughts => WsAgentThoughts,
        ApprovalsManage => ApprovalsManage,
        DevicesRead => DevicesRead,
        DevicesWrite => DevicesWrite,
        FirmwareManage => FirmwareManage,
    }

    /// The claims of a request whose token is valid and grants `P`; first in a handler's
    /// arguments, so identity is checked before input. The state must hold the [`Verifier`].
    pub struct Authorized<P: Needs>(pub Claims, PhantomData<P>);

    impl<P: Needs, S> FromRequestParts<S> for Authorized<P>
    where
        S: Send + Sync,
        Verifier: FromRef<S>,
    {
        type Rejection = Refused;

        async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Refused> {
            let claims = authorize(parts, &Verifier::from_ref(state), P::PERMISSION)?;
            Ok(Self(claims, PhantomData))
        }
    }

    /// The token of a request (header first, then `?token=`), verified for `permission`.
    pub fn authorize(
        parts: &Parts,
        verifier: &Verifier,
        permission: Permission,
    ) -> Result<Claims, Refused> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = token_from_request(authorization, parts.uri.query());
        verifier
            .authorize(token.as_deref(), permission)
            .map_err(Refused)
    }

    /// A request refused by auth: 401 or 403 with `{"error": ...}`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Refused(pub AuthError);

    impl Refused {
        pub fn status(&self) -> StatusCode {
            if self.0.is_unauthenticated() {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            }
        }
    }

    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }

    impl IntoResponse for Refused {
        fn into_response(self) -> Response {
            let status = self.status();
            let body = Json(serde_json::json!({ "error": self.0.to_string() }));
            if status == StatusCode::UNAUTHORIZED {
                (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
            } else {
                (status, body).into_response()
            }
        }
    }
}
