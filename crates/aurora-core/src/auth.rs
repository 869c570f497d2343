//! JWT verification and minting (docs/contract.md#auth).
//!
//! HS256 with a shared secret by default; RS256 or ES256 with a PEM public key as an option.
//! Only the configured algorithm is accepted, so `alg: none` and algorithm-confusion tokens
//! (an HS256 token signed with the public key) fail. `exp` and a non-empty `sub` are
//! required, `nbf` is checked when present, `iss`/`aud` when configured. `exp`, `nbf` and
//! `iat` are RFC 7519 NumericDates: integers or fractions of seconds (`time.time() + 3600`).
//!
//! A refused token gets a short, stable reason ([`AuthError`]); what the parser said is
//! logged, never sent to the client.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The secret every binary uses with `--dev-insecure-auth`: for a developer's machine only.
pub const DEV_SECRET: &str = "aurora-dev-secret-do-not-use-in-production";

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// The shortest HS256 secret accepted at start (RFC 7518 section 3.2: a key of at least the
/// hash's size, 256 bits), unless a development flag allows a shorter one.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

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
    /// Expiry, seconds since the epoch (a fraction in the token is rounded down).
    #[serde(deserialize_with = "numeric_date::required")]
    pub exp: u64,
    /// Not before, seconds since the epoch (a fraction in the token is rounded up).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date::optional_up"
    )]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the epoch (a fraction in the token is rounded down).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date::optional"
    )]
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

/// RFC 7519 NumericDate: a JSON number of seconds since the epoch, integer or not.
mod numeric_date {
    use serde::{de, Deserialize, Deserializer};

    fn seconds<E: de::Error>(value: f64, up: bool) -> Result<u64, E> {
        if !value.is_finite() || value < 0.0 || value > u64::MAX as f64 {
            return Err(E::custom(
                "a NumericDate must be a non-negative number of seconds",
            ));
        }
        Ok(if up { value.ceil() } else { value.floor() } as u64)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(u64),
        Float(f64),
    }

    fn parse<'de, D: Deserializer<'de>>(d: D, up: bool) -> Result<u64, D::Error> {
        match Number::deserialize(d)? {
            Number::Int(n) => Ok(n),
            Number::Float(f) => seconds(f, up),
        }
    }

    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse(d, false)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        parse(d, false).map(Some)
    }

    pub fn optional_up<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        parse(d, true).map(Some)
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
    #[error("the JWT secret is {len} bytes: an HS256 secret must have at least {MIN_HS256_SECRET_BYTES} (e.g. `head -c 32 /dev/urandom | base64`); --jwt-allow-weak-secret accepts it on a developer machine")]
    WeakSecret { len: usize },
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
        // `exp` and `nbf` are checked by `verify` on the decoded claims: the library reads
        // them as integers only, and RFC 7519 allows fractions.
        validation.set_required_spec_claims(&["sub"]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
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

    /// Verifies a token and returns its claims. The error is one of a few stable reasons;
    /// the parser's detail is logged (at debug), never returned.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let raw = decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| {
            let reason = match e.kind() {
                ErrorKind::ExpiredSignature => return AuthError::Expired,
                ErrorKind::ImmatureSignature => return AuthError::NotYetValid,
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::InvalidAlgorithm => "algorithm not accepted",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::MissingRequiredClaim(c) if c == "sub" => "missing claim sub",
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => "missing claim iss",
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => "missing claim aud",
                _ => MALFORMED,
            };
            tracing::debug!(reason, detail = %e, "token refused");
            AuthError::Invalid(reason.into())
        })?
        .claims;
        if !raw.contains_key("exp") {
            return Err(AuthError::Invalid("missing claim exp".into()));
        }
        let claims: Claims =
            serde_json::from_value(serde_json::Value::Object(raw)).map_err(|e| {
                tracing::debug!(detail = %e, "token refused: claims of the wrong type");
                AuthError::Invalid(MALFORMED.into())
            })?;
        if claims.sub.trim().is_empty() {
            return Err(AuthError::Invalid("empty subject".into()));
        }
        let now = jsonwebtoken::get_current_timestamp();
        if claims.exp.saturating_add(LEEWAY_SECS) < now {
            return Err(AuthError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(claims)
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

/// What a client is told for a token that cannot be read (the detail is only logged).
const MALFORMED: &str = "malformed token";

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

    /// A token of any claims as they are (e.g. a fractional `exp`, as a Python issuer writes
    /// it): for tests of what other issuers send. An object that cannot be encoded gives "".
    pub fn mint_json(&self, claims: &serde_json::Value) -> String {
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

/// The query string for logs and traces: the value of `token` and `access_token`, and of
/// every parameter whatever its name whose value looks like a JWT ([`looks_like_jwt`]), is
/// replaced by `REDACTED`. Pairs are separated by `&` or `;`.
pub fn redact_query(query: &str) -> String {
    query
        .split(['&', ';'])
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode_component(k);
            let v = decode_component(v);
            let named = k.eq_ignore_ascii_case("token") || k.eq_ignore_ascii_case("access_token");
            if looks_like_jwt(&k) {
                "REDACTED".to_string()
            } else if named || contains_jwt(&v) {
                format!("{k}=REDACTED")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn decode_component(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A value that is, or has a word that is, a JWT (`Bearer <jwt>` too).
fn contains_jwt(value: &str) -> bool {
    value
        .split(|c: char| c.is_whitespace() || c == ',')
        .any(looks_like_jwt)
}

/// Three base64url parts separated by dots, the first two not empty (an unsigned token has
/// an empty third part).
pub fn looks_like_jwt(s: &str) -> bool {
    let b64url = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    };
    let parts: Vec<&str> = s.trim().split('.').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && !parts[1].is_empty()
        && parts.iter().all(|p| b64url(p))
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
    fn every_jwt_looking_value_is_redacted_whatever_its_name_and_separator() {
        let jwt = Minter::hs256(b"s3cret").token("alice", &[], Duration::from_secs(60));
        for query in [
            format!("jwt={jwt}"),
            format!("since=1-0;auth={jwt}"),
            format!("since=1-0&x=1;access_token={jwt}"),
            format!("a=Bearer%20{jwt}"),
            jwt.clone(),
            "Token=abc;since=1-0".to_string(),
        ] {
            let redacted = redact_query(&query);
            assert!(!redacted.contains(&jwt), "{query} -> {redacted}");
            assert!(redacted.contains("REDACTED"), "{query} -> {redacted}");
            assert!(!redacted.contains("abc"), "{query} -> {redacted}");
        }
        assert_eq!(redact_query("since=1-0;limit=5"), "since=1-0&limit=5");
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."));
        assert!(!looks_like_jwt("1700000000000-0"));
    }

    #[test]
    fn numeric_dates_may_be_fractions() {
        let v = Verifier::hs256(b"k").expect("key");
        let now = jsonwebtoken::get_current_timestamp() as f64 + 0.25;
        let token = |claims: serde_json::Value| {
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"k"),
            )
            .expect("encode")
        };
        let claims = v
            .verify(&token(serde_json::json!({
                "sub": "py", "exp": now + 3600.0, "iat": now, "nbf": now - 1.5
            })))
            .expect("fractional NumericDates are valid");
        assert_eq!(claims.exp, (now + 3600.0).floor() as u64);
        assert_eq!(
            v.verify(&token(
                serde_json::json!({"sub": "py", "exp": now - 3600.0})
            )),
            Err(AuthError::Expired)
        );
        assert_eq!(
            v.verify(&token(
                serde_json::json!({"sub": "py", "exp": now + 600.0, "nbf": now + 300.0})
            )),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            v.verify(&token(serde_json::json!({"sub": "py"}))),
            Err(AuthError::Invalid("missing claim exp".into()))
        );
        assert_eq!(
            v.verify(&token(serde_json::json!({"sub": "py", "exp": "soon"}))),
            Err(AuthError::Invalid("malformed token".into()))
        );
    }

    #[test]
    fn an_empty_subject_is_refused_and_parser_detail_stays_in_the_logs() {
        let v = Verifier::hs256(b"k").expect("key");
        let m = Minter::hs256(b"k");
        for sub in ["", "   "] {
            let t = m.token(sub, &Permission::ALL, Duration::from_secs(60));
            assert_eq!(
                v.verify(&t),
                Err(AuthError::Invalid("empty subject".into()))
            );
        }
        for garbage in ["garbage", "a.b.c", "eyJ.eyJ.x", "%%%.###.!!!"] {
            assert_eq!(
                v.verify(garbage),
                Err(AuthError::Invalid("malformed token".into())),
                "{garbage}"
            );
        }
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
