//! Proof that analysts approved a privileged device action.
//!
//! A privileged action (by default those of [`DEFAULT_PRIVILEGED_ACTIONS`]) is not executed when
//! it is asked for: device-registry writes a pending [approval](crate::model::Approval) whose
//! `context` is a [`DeviceAction`]; an analyst other than the requester approves it on the
//! console; ws-gateway, where the decision is taken, signs the action with its Ed25519 key
//! ([`SigningKey::sign`]) and the decided approval carries the [`ActionProof`]. The command that
//! device-registry then writes carries the proof in its `approval` field, and mqtt-bridge checks
//! it with the approvers' public keys ([`ApproverKeys::verify`]) before it sends anything:
//! writing to Redis is not enough to command a device.
//!
//! The signature covers, one per line after the domain tag `aurora-device-action-v1`: the
//! command id, the device id, the action, the SHA-256 of the parameters in [canonical
//! JSON](canonical_json) (hex), the approval id, who approved it and the instant after which the
//! proof is void (RFC 3339, milliseconds, UTC). A key is named by its id: the first 8 bytes of
//! the SHA-256 of its public key, hex; two keys may be valid at once while one replaces the
//! other.

use std::fmt;
use std::path::Path;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signer, Verifier as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::DeviceCommand;

/// The device actions that need an approval unless an install says otherwise.
pub const DEFAULT_PRIVILEGED_ACTIONS: &[&str] = &[
    "quarantine",
    "isolate",
    "firmware_update",
    "key_change",
    "reboot",
];

/// The `kind` of an approval `context` that is a device action.
pub const DEVICE_ACTION_KIND: &str = "device_action";

/// The field of a command, and of a decided approval, that holds the proof.
pub const PROOF_FIELD: &str = "approval";

const DOMAIN: &str = "aurora-device-action-v1";

/// What an approval of a device action is about (its `context`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAction {
    /// Always [`DEVICE_ACTION_KIND`].
    pub kind: String,
    pub command_id: Uuid,
    pub device_id: String,
    /// The command's action (`quarantine`, `reboot`, ...).
    pub device_action: String,
    #[serde(default)]
    pub params: Value,
    /// Why, as the requester said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl DeviceAction {
    pub fn new(command_id: Uuid, device_id: &str, action: &str, params: Value) -> Self {
        Self {
            kind: DEVICE_ACTION_KIND.to_string(),
            command_id,
            device_id: device_id.to_string(),
            device_action: action.to_string(),
            params,
            reason: None,
        }
    }

    /// The device action an approval's context describes, if it is one.
    pub fn from_context(context: &Value) -> Option<Result<Self, String>> {
        if context.get("kind").and_then(Value::as_str) != Some(DEVICE_ACTION_KIND) {
            return None;
        }
        Some(
            serde_json::from_value::<Self>(context.clone())
                .map_err(|e| format!("the device action of this approval is malformed: {e}")),
        )
    }

    /// The action of a command.
    pub fn of_command(c: &DeviceCommand) -> Self {
        Self::new(c.id, &c.device_id, &c.action, c.params.clone())
    }
}

/// The proof a decided approval, and the command made from it, carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionProof {
    pub approval_id: Uuid,
    pub approved_by: String,
    /// The proof is void after this instant: the command is not sent later.
    pub not_after: DateTime<Utc>,
    pub key_id: String,
    /// Ed25519 signature, base64.
    pub signature: String,
}

impl ActionProof {
    /// The proof a command carries, if any.
    pub fn of_command(c: &DeviceCommand) -> Result<Self, ProofError> {
        let v = c.extra.get(PROOF_FIELD).ok_or(ProofError::Missing)?;
        serde_json::from_value(v.clone()).map_err(|e| ProofError::Malformed(e.to_string()))
    }

    /// Puts the proof in a command.
    pub fn attach(&self, c: &mut DeviceCommand) {
        if let Ok(v) = serde_json::to_value(self) {
            c.extra.insert(PROOF_FIELD.to_string(), v);
        }
    }
}

/// Why a proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("a privileged action without an approval proof")]
    Missing,
    #[error("the approval proof is malformed: {0}")]
    Malformed(String),
    #[error("the approval proof is signed by an unknown key {0:?}")]
    UnknownKey(String),
    #[error("the approval proof's signature does not match this command")]
    BadSignature,
    #[error("the approval proof expired at {0}")]
    Expired(String),
    #[error("no approver public key is configured: privileged actions cannot be checked")]
    NoKeys,
}

impl ProofError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired(_) => "expired",
            Self::NoKeys => "no_keys",
        }
    }
}

/// A key that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// JSON with the keys of every object sorted, no spaces: the same bytes for the same document
/// whatever order its keys were written in (PostgreSQL's `jsonb`, a client, this code).
pub fn canonical_json(v: &Value) -> Vec<u8> {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&o[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sorted(v)).unwrap_or_default()
}

fn signed_bytes(
    action: &DeviceAction,
    approval_id: &Uuid,
    approved_by: &str,
    not_after: &DateTime<Utc>,
) -> Vec<u8> {
    let params = if action.params.is_null() {
        Value::Object(Default::default())
    } else {
        action.params.clone()
    };
    let digest = hex(&Sha256::digest(canonical_json(&params)));
    format!(
        "{DOMAIN}\n{}\n{}\n{}\n{digest}\n{approval_id}\n{approved_by}\n{}",
        action.command_id,
        action.device_id,
        action.device_action,
        not_after.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
    .into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The id of a public key: the first 8 bytes of its SHA-256, hex.
pub fn key_id(public: &ed25519_dalek::VerifyingKey) -> String {
    hex(&Sha256::digest(public.as_bytes())[..8])
}

/// An Ed25519 signing key kept as its base64 seed: the approving service's (ws-gateway), a
/// federation site's.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    id: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).finish()
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self::from_seed(rand::random())
    }

    /// The key of a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let id = key_id(&key.verifying_key());
        Self { key, id }
    }

    /// A key from its 32-byte seed in base64 (what `aurora approval-key` writes).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = b64()
            .decode(text.trim())
            .map_err(|_| KeyError::Invalid("the signing key is not base64".to_string()))?;
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            KeyError::Invalid(format!(
                "the signing key must be a 32-byte Ed25519 seed, got {} bytes",
                bytes.len()
            ))
        })?;
        Ok(Self::from_seed(seed))
    }

    /// The key in a file (base64 seed, surrounding white space ignored).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_base64(&text)
    }

    /// The seed, base64: the content of a key file.
    pub fn to_base64(&self) -> String {
        b64().encode(self.key.to_bytes())
    }

    /// The public key, base64: what mqtt-bridge and device-registry are given.
    pub fn public_base64(&self) -> String {
        b64().encode(self.key.verifying_key().as_bytes())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Signs `message` as it is (callers frame what they sign with a domain tag).
    pub fn sign_bytes(&self, message: &[u8]) -> ed25519_dalek::Signature {
        self.key.sign(message)
    }

    /// Signs an approved action.
    pub fn sign(
        &self,
        action: &DeviceAction,
        approval_id: Uuid,
        approved_by: &str,
        not_after: DateTime<Utc>,
    ) -> ActionProof {
        // Milliseconds: what the signed text and the JSON carry.
        let not_after =
            DateTime::from_timestamp_millis(not_after.timestamp_millis()).unwrap_or(not_after);
        let signature =
            self.sign_bytes(&signed_bytes(action, &approval_id, approved_by, &not_after));
        ActionProof {
            approval_id,
            approved_by: approved_by.to_string(),
            not_after,
            key_id: self.id.clone(),
            signature: b64().encode(signature.to_bytes()),
        }
    }
}

/// The public keys of the approving service (one, or two while one replaces the other).
#[derive(Debug, Clone, Default)]
pub struct ApproverKeys {
    keys: Vec<(String, ed25519_dalek::VerifyingKey)>,
}

impl ApproverKeys {
    /// Keys in base64 (32 bytes each); blank entries are skipped.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for text in list
            .iter()
            .map(|s| s.as_ref().trim())
            .filter(|s| !s.is_empty())
        {
            let bytes = b64().decode(text).map_err(|_| {
                KeyError::Invalid(format!("approver public key {text:?} is not base64"))
            })?;
            let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                KeyError::Invalid(format!(
                    "approver public key {text:?} must be 32 bytes, got {}",
                    bytes.len()
                ))
            })?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|_| {
                KeyError::Invalid(format!(
                    "approver public key {text:?} is not an Ed25519 key"
                ))
            })?;
            keys.push((key_id(&key), key));
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The ids of the keys, for logs.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    /// Checks that `proof` is a signature of one of these keys over `action`, valid at `now`.
    pub fn verify(
        &self,
        action: &DeviceAction,
        proof: &ActionProof,
        now: DateTime<Utc>,
    ) -> Result<(), ProofError> {
        if self.keys.is_empty() {
            return Err(ProofError::NoKeys);
        }
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| *id == proof.key_id)
            .ok_or_else(|| ProofError::UnknownKey(proof.key_id.clone()))?;
        let bytes = b64()
            .decode(proof.signature.trim())
            .map_err(|_| ProofError::Malformed("the signature is not base64".into()))?;
        let signature = ed25519_dalek::Signature::from_slice(&bytes)
            .map_err(|_| ProofError::Malformed("the signature is not 64 bytes".into()))?;
        key.verify(
            &signed_bytes(
                action,
                &proof.approval_id,
                &proof.approved_by,
                &proof.not_after,
            ),
            &signature,
        )
        .map_err(|_| ProofError::BadSignature)?;
        if proof.not_after <= now {
            return Err(ProofError::Expired(
                proof.not_after.to_rfc3339_opts(SecondsFormat::Millis, true),
            ));
        }
        Ok(())
    }

    /// Checks the proof a command carries; returns it.
    pub fn verify_command(
        &self,
        c: &DeviceCommand,
        now: DateTime<Utc>,
    ) -> Result<ActionProof, ProofError> {
        let proof = ActionProof::of_command(c)?;
        self.verify(&DeviceAction::of_command(c), &proof, now)?;
        Ok(proof)
    }
}

/// Whether `action` is one of `privileged`.
pub fn is_privileged<S: AsRef<str>>(privileged: &[S], action: &str) -> bool {
    privileged.iter().any(|p| p.as_ref() == action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Extra;
    use serde_json::json;

    fn command(params: Value) -> DeviceCommand {
        DeviceCommand {
            id: Uuid::new_v4(),
            device_id: "dev-1".into(),
            action: "quarantine".into(),
            params,
            issued_at: Utc::now(),
            expires_at: None,
            extra: Extra::new(),
        }
    }

    fn signed(key: &SigningKey, c: &mut DeviceCommand, not_after: DateTime<Utc>) -> ActionProof {
        let proof = key.sign(
            &DeviceAction::of_command(c),
            Uuid::new_v4(),
            "alice",
            not_after,
        );
        proof.attach(c);
        proof
    }

    #[test]
    fn a_signed_command_verifies_and_any_change_breaks_it() {
        let key = SigningKey::generate();
        let keys = ApproverKeys::parse(&[key.public_base64()]).expect("keys");
        let later = Utc::now() + chrono::Duration::minutes(5);
        let mut c = command(json!({"b": 1, "a": {"y": [1, 2], "x": "z"}}));
        signed(&key, &mut c, later);
        // Through JSON and back, with the parameters' keys in another order.
        let text = serde_json::to_string(&c).expect("json");
        let mut back: DeviceCommand = serde_json::from_str(&text).expect("parse");
        back.params = json!({"a": {"x": "z", "y": [1, 2]}, "b": 1});
        assert!(keys.verify_command(&back, Utc::now()).is_ok());

        let mut other_device = back.clone();
        other_device.device_id = "dev-2".into();
        assert_eq!(
            keys.verify_command(&other_device, Utc::now()),
            Err(ProofError::BadSignature)
        );
        let mut other_action = back.clone();
        other_action.action = "reboot".into();
        assert_eq!(
            keys.verify_command(&other_action, Utc::now()),
            Err(ProofError::BadSignature)
        );
        let mut other_params = back.clone();
        other_params.params = json!({"b": 2, "a": {"x": "z", "y": [1, 2]}});
        assert_eq!(
            keys.verify_command(&other_params, Utc::now()),
            Err(ProofError::BadSignature)
        );
        let mut other_id = back.clone();
        other_id.id = Uuid::new_v4();
        assert_eq!(
            keys.verify_command(&other_id, Utc::now()),
            Err(ProofError::BadSignature)
        );
        // A later not_after written in by hand.
        let mut stretched = back.clone();
        let mut proof = ActionProof::of_command(&back).expect("proof");
        proof.not_after = later + chrono::Duration::days(1);
        proof.attach(&mut stretched);
        assert_eq!(
            keys.verify_command(&stretched, Utc::now()),
            Err(ProofError::BadSignature)
        );
        assert!(matches!(
            keys.verify_command(&back, later + chrono::Duration::seconds(1)),
            Err(ProofError::Expired(_))
        ));
    }

    #[test]
    fn unknown_keys_missing_and_malformed_proofs_are_named() {
        let key = SigningKey::generate();
        let other = SigningKey::generate();
        let keys = ApproverKeys::parse(&[other.public_base64()]).expect("keys");
        let later = Utc::now() + chrono::Duration::minutes(5);
        let mut c = command(Value::Null);
        assert_eq!(
            keys.verify_command(&c, Utc::now()),
            Err(ProofError::Missing)
        );
        signed(&key, &mut c, later);
        assert_eq!(
            keys.verify_command(&c, Utc::now()),
            Err(ProofError::UnknownKey(key.id().to_string()))
        );
        // Two keys at once: the old and the new one both verify.
        let both =
            ApproverKeys::parse(&[other.public_base64(), key.public_base64()]).expect("keys");
        assert!(both.verify_command(&c, Utc::now()).is_ok());
        c.extra
            .insert(PROOF_FIELD.into(), json!({"approval_id": "x"}));
        assert!(matches!(
            keys.verify_command(&c, Utc::now()),
            Err(ProofError::Malformed(_))
        ));
        let mut valid = command(Value::Null);
        signed(&key, &mut valid, later);
        assert_eq!(
            ApproverKeys::default().verify_command(&valid, Utc::now()),
            Err(ProofError::NoKeys)
        );
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_refused() {
        let key = SigningKey::generate();
        let again = SigningKey::from_base64(&key.to_base64()).expect("seed");
        assert_eq!(again.public_base64(), key.public_base64());
        assert_eq!(again.id(), key.id());
        assert!(SigningKey::from_base64("not base64!").is_err());
        assert!(SigningKey::from_base64("AAAA").is_err());
        assert!(ApproverKeys::parse(&["AAAA"]).is_err());
        assert!(ApproverKeys::parse(&["", " "]).expect("blank").is_empty());
    }
}
