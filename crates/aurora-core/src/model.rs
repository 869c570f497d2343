//! The messages of the contract (docs/contract.md#messages) as serde types.
//!
//! Every document keeps the JSON fields it does not know in `extra`, so a document passed
//! through a service comes out with everything it came in with. [`parse`] turns bytes into a
//! type and, when they do not fit, says which field is wrong.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// JSON fields a type does not know, kept for the round trip.
pub type Extra = Map<String, Value>;

/// Input that is not a valid document of the expected type.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind}: field `{field}`: {message}")]
pub struct InvalidMessage {
    /// The type that was expected ("alert", "approval", ...).
    pub kind: &'static str,
    /// The JSON path of the offending field (`.` for the document itself).
    pub field: String,
    pub message: String,
}

/// A type that is one of the product's documents.
pub trait Message: Serialize + DeserializeOwned {
    /// Its name in error messages and schemas ("alert").
    const KIND: &'static str;

    /// Checks beyond the shape serde checks (non-empty strings, ranges).
    fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}

/// Parses and validates one document; the error names the field at fault.
pub fn parse<T: Message>(bytes: &[u8]) -> Result<T, InvalidMessage> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        InvalidMessage {
            kind: T::KIND,
            field: path,
            message: e.into_inner().to_string(),
        }
    })?;
    de.end().map_err(|e| InvalidMessage {
        kind: T::KIND,
        field: ".".into(),
        message: e.to_string(),
    })?;
    value
        .validate()
        .map_err(|(field, message)| InvalidMessage {
            kind: T::KIND,
            field,
            message,
        })?;
    Ok(value)
}

/// Like [`parse`], from an already parsed JSON value.
pub fn from_value<T: Message>(value: Value) -> Result<T, InvalidMessage> {
    let parsed: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        InvalidMessage {
            kind: T::KIND,
            field: path,
            message: e.into_inner().to_string(),
        }
    })?;
    parsed
        .validate()
        .map_err(|(field, message)| InvalidMessage {
            kind: T::KIND,
            field,
            message,
        })?;
    Ok(parsed)
}

fn non_empty(field: &str, value: &str) -> Result<(), (String, String)> {
    if value.trim().is_empty() {
        Err((field.to_string(), "must not be empty".to_string()))
    } else {
        Ok(())
    }
}

/// How bad an alert is; ordered from `Info` to `Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(Value::String(s.to_ascii_lowercase()))
            .map_err(|_| format!("unknown severity {s:?} (info, low, medium, high, critical)"))
    }
}

/// Where an alert stands in its triage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    New,
    Acknowledged,
    Investigating,
    Resolved,
    Closed,
    FalsePositive,
}

/// Traffic Light Protocol marking of shared intelligence (TLP 2.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tlp {
    Clear,
    Green,
    Amber,
    AmberStrict,
    Red,
}

impl Tlp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clear => "TLP:CLEAR",
            Self::Green => "TLP:GREEN",
            Self::Amber => "TLP:AMBER",
            Self::AmberStrict => "TLP:AMBER+STRICT",
            Self::Red => "TLP:RED",
        }
    }

    /// Accepts `TLP:RED`, `red`, `RED`; `WHITE` is the TLP 1.0 name of `CLEAR`.
    pub fn parse(s: &str) -> Option<Self> {
        let upper = s.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("TLP:").unwrap_or(&upper);
        Some(match bare {
            "CLEAR" | "WHITE" => Self::Clear,
            "GREEN" => Self::Green,
            "AMBER" => Self::Amber,
            "AMBER+STRICT" => Self::AmberStrict,
            "RED" => Self::Red,
            _ => return None,
        })
    }
}

impl Serialize for Tlp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Tlp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Tlp::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown TLP marking {s:?} (TLP:CLEAR, TLP:GREEN, TLP:AMBER, TLP:AMBER+STRICT, TLP:RED)"
            ))
        })
    }
}

/// An indicator of compromise, STIX-like: what to look for and how far to trust and share it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ioc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `ipv4`, `ipv6`, `domain`, `url`, `sha256`, `md5`, `email`, ...
    #[serde(rename = "type")]
    pub ioc_type: String,
    pub value: String,
    /// 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlp: Option<Tlp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Ioc {
    pub fn new(ioc_type: &str, value: &str) -> Self {
        Self {
            id: None,
            ioc_type: ioc_type.to_string(),
            value: value.to_string(),
            confidence: None,
            tlp: None,
            valid_from: None,
            valid_until: None,
            extra: Extra::new(),
        }
    }
}

impl Message for Ioc {
    const KIND: &'static str = "ioc";
    fn validate(&self) -> Result<(), (String, String)> {
        non_empty("type", &self.ioc_type)?;
        non_empty("value", &self.value)?;
        if let Some(c) = self.confidence {
            if !(0.0..=1.0).contains(&c) {
                return Err(("confidence".into(), "must be between 0 and 1".into()));
            }
        }
        if let (Some(from), Some(until)) = (self.valid_from, self.valid_until) {
            if until < from {
                return Err(("valid_until".into(), "is before valid_from".into()));
            }
        }
        Ok(())
    }
}

/// A security alert, as analysts see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: Uuid,
    pub title: String,
    pub severity: Severity,
    pub status: AlertStatus,
    pub source: String,
    #[serde(default)]
    pub iocs: Vec<Ioc>,
    #[serde(default)]
    pub mitre_techniques: Vec<String>,
    pub timestamp: DateTime<Utc>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message for Alert {
    const KIND: &'static str = "alert";
    fn validate(&self) -> Result<(), (String, String)> {
        non_empty("title", &self.title)?;
        non_empty("source", &self.source)?;
        for (i, ioc) in self.iocs.iter().enumerate() {
            ioc.validate()
                .map_err(|(f, m)| (format!("iocs[{i}].{f}"), m))?;
        }
        for (i, t) in self.mitre_techniques.iter().enumerate() {
            if !is_mitre_technique(t) {
                return Err((
                    format!("mitre_techniques[{i}]"),
                    format!("{t:?} is not a MITRE ATT&CK technique id (T1234 or T1234.001)"),
                ));
            }
        }
        Ok(())
    }
}

/// `T1071` or `T1071.004`.
pub fn is_mitre_technique(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('T') else {
        return false;
    };
    let (main, sub) = match rest.split_once('.') {
        Some((m, s)) => (m, Some(s)),
        None => (rest, None),
    };
    main.len() == 4
        && main.bytes().all(|b| b.is_ascii_digit())
        && sub.is_none_or(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
}

/// One step of an AI agent's reasoning, streamed on `aurora:audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentThought {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub agent: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub timestamp: DateTime<Utc>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message for AgentThought {
    const KIND: &'static str = "agent thought";
    fn validate(&self) -> Result<(), (String, String)> {
        non_empty("agent", &self.agent)?;
        non_empty("action", &self.action)
    }
}

/// An audit record of who did what (`aurora:audit`, `AURORA.audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub actor: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
    pub timestamp: DateTime<Utc>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message for AuditEvent {
    const KIND: &'static str = "audit event";
    fn validate(&self) -> Result<(), (String, String)> {
        non_empty("actor", &self.actor)?;
        non_empty("action", &self.action)
    }
}

/// The result of an agent's investigation, shared across sites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentResult {
    pub id: String,
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
    pub timestamp: DateTime<Utc>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message for AgentResult {
    const KIND: &'static str = "agent result";
    fn validate(&self) -> Result<(), (String, String)> {
        non_empty("id", &self.id)?;
        non_empty("agent", &self.agent)?;
        non_empty("summary", &self.summary)?;
        if let Some(c) = self.confidence {
            if !(0.0..=1.0).contains(&c) {
                return Err(("confidence".into(), "must be between 0 and 1".into()));
            }
        }
        Ok(())
    }
}

/// How risky the action an approval asks for is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
    Critical,
}

/// `pending` moves once to one of the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl ApprovalStatus {
    pub fn is_final(self) -> bool {
        self != Self::Pending
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
        }
    }
}

/// A request for a human to approve an agent's action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: Uuid,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    pub risk_level: RiskLevel,
    pub status: ApprovalStatus,
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub context: Value,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message for Approval {
    const KIND: &'static str = "approval";
    fn validate(&self) -> Result<(), (String, String)> {
        non_empty("action", &self.action)?;
        non_empty("requested_by", &self.requested_by)?;
        if self.expires_at < self.requested_at {
            return Err(("expires_at".into(), "is before requested_at".into()));
        }
        Ok(())
    }
}

/// A message from a sensor device, as the bridge writes it: the device's own JSON object
/// with `device_id` and `message_type` added from its topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceMessage {
    pub device_id: String,
    pub message_type: crate::names::DeviceTopicKind,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message for DeviceMessage {
    const KIND: &'static str = "device message";
    fn validate(&self) -> Result<(), (String, String)> {
        if is_valid_device_id(&self.device_id) {
            Ok(())
        } else {
            Err((
                "device_id".into(),
                "must be 1 to 128 characters of A-Z, a-z, 0-9, '_', '.', ':' or '-'".into(),
            ))
        }
    }
}

/// Device ids the product accepts: `[A-Za-z0-9_.:-]{1,128}`.
pub fn is_valid_device_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// The answer of a device to an attestation challenge (the payload of its attestation topic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttestationReport {
    pub device_id: String,
    pub nonce: String,
    pub firmware_version: String,
    /// Lower-case hex SHA-256 of the firmware image.
    pub firmware_sha256: String,
    /// Base64 Ed25519 signature over [`AttestationReport::signed_bytes`].
    pub signature: String,
    #[serde(flatten)]
    pub extra: Extra,
}

impl AttestationReport {
    /// What the device signs: `nonce|firmware_version|firmware_sha256`, UTF-8.
    pub fn signed_bytes(nonce: &str, firmware_version: &str, firmware_sha256: &str) -> Vec<u8> {
        format!("{nonce}|{firmware_version}|{firmware_sha256}").into_bytes()
    }
}

impl Message for AttestationReport {
    const KIND: &'static str = "attestation report";
    fn validate(&self) -> Result<(), (String, String)> {
        non_empty("nonce", &self.nonce)?;
        non_empty("firmware_version", &self.firmware_version)?;
        let h = &self.firmware_sha256;
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(("firmware_sha256".into(), "must be 64 hex digits".into()));
        }
        non_empty("signature", &self.signature)
    }
}

/// A command for a device (`aurora:cps:commands`), delivered on its command topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCommand {
    pub id: Uuid,
    pub device_id: String,
    /// `attest`, `reboot`, `quarantine`, `update_config`, ...
    pub action: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
    pub issued_at: DateTime<Utc>,
    /// A command not sent by then is never sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message for DeviceCommand {
    const KIND: &'static str = "device command";
    fn validate(&self) -> Result<(), (String, String)> {
        if !is_valid_device_id(&self.device_id) {
            return Err(("device_id".into(), "is not a valid device id".into()));
        }
        non_empty("action", &self.action)
    }
}

/// What happened to a device command (`aurora:cps:command_status`): `sent` (the broker
/// acknowledged it for a device that is subscribed, or has a session that keeps it),
/// `not_reached` (the broker had no subscriber for it: a device offline without a persistent
/// session), `expired` (not sent before its `expires_at`), `failed` (refused: not a command, too
/// large, a privileged action without a valid approval proof).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    Sent,
    NotReached,
    Expired,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandStatus {
    pub command_id: Uuid,
    pub device_id: String,
    pub status: CommandOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message for CommandStatus {
    const KIND: &'static str = "command status";
}

/// A device the bridge saw (`aurora:cps:registrations`): `event` is `device.seen`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSeen {
    pub event: String,
    pub device_id: String,
    pub message_type: crate::names::DeviceTopicKind,
    /// The device's message, as metadata for its registration.
    #[serde(default)]
    pub metadata: Extra,
    pub seen_at: DateTime<Utc>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl DeviceSeen {
    pub const EVENT: &'static str = "device.seen";
}

impl Message for DeviceSeen {
    const KIND: &'static str = "device.seen record";
    fn validate(&self) -> Result<(), (String, String)> {
        if self.event != Self::EVENT {
            return Err(("event".into(), format!("must be {:?}", Self::EVENT)));
        }
        if !is_valid_device_id(&self.device_id) {
            return Err(("device_id".into(), "is not a valid device id".into()));
        }
        Ok(())
    }
}

/// Something a service could not process, kept with the reason instead of being dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The service that gave up on it.
    pub service: String,
    /// Where it came from: an MQTT topic, a stream key, a subject, a file.
    pub source: String,
    pub reason: String,
    /// The input exactly as received, base64; only its first [`DEAD_LETTER_RAW_MAX`] bytes
    /// when it was larger (`raw_truncated`, with its size and SHA-256).
    pub raw_base64: String,
    /// The size of the input in bytes, when only a prefix of it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_size: Option<u64>,
    /// The SHA-256 of the whole input (hex), when only a prefix of it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_sha256: Option<String>,
    /// True when `raw_base64` holds only a prefix of the input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw_truncated: bool,
    pub received_at: DateTime<Utc>,
    /// Stream entry id or message id in its source, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// How many times it was delivered before it was given up on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The most of a record's bytes a dead letter keeps: a larger record is kept as this prefix
/// with its size and SHA-256, so one oversized input cannot fill the dead-letter store.
pub const DEAD_LETTER_RAW_MAX: usize = 64 * 1024;

impl DeadLetter {
    /// The record of `raw` given up for `reason`; an input over [`DEAD_LETTER_RAW_MAX`]
    /// bytes keeps only its prefix, its size and its SHA-256.
    pub fn new(service: &str, source: &str, reason: impl Into<String>, raw: &[u8]) -> Self {
        use base64::Engine;
        use sha2::Digest;
        let truncated = raw.len() > DEAD_LETTER_RAW_MAX;
        let kept = if truncated {
            &raw[..DEAD_LETTER_RAW_MAX]
        } else {
            raw
        };
        let (raw_size, raw_sha256) = if truncated {
            let digest = sha2::Sha256::digest(raw);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            (Some(raw.len() as u64), Some(hex))
        } else {
            (None, None)
        };
        Self {
            service: service.to_string(),
            source: source.to_string(),
            reason: reason.into(),
            raw_base64: base64::engine::general_purpose::STANDARD.encode(kept),
            raw_size,
            raw_sha256,
            raw_truncated: truncated,
            received_at: Utc::now(),
            source_id: None,
            deliveries: None,
            extra: Extra::new(),
        }
    }

    /// The raw input, decoded.
    pub fn raw(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&self.raw_base64)
            .ok()
    }

    /// True when this record is the dead letter of `input`: its bytes whole, or, for an input
    /// over [`DEAD_LETTER_RAW_MAX`], its prefix with the input's size and SHA-256.
    pub fn describes(&self, input: &[u8]) -> bool {
        let Some(raw) = self.raw() else { return false };
        if !self.raw_truncated {
            return raw == input;
        }
        use sha2::Digest;
        let digest: String = sha2::Sha256::digest(input)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        input.starts_with(&raw)
            && self.raw_size == Some(input.len() as u64)
            && self.raw_sha256.as_deref() == Some(digest.as_str())
    }
}

impl Message for DeadLetter {
    const KIND: &'static str = "dead letter";
}

/// Serialises a document to its JSON bytes (the `data` field of a stream entry).
pub fn to_bytes<T: Serialize>(doc: &T) -> Vec<u8> {
    // Serialising these types cannot fail: every map key is a string and there are no
    // non-finite floats a device could smuggle in through `Value` (serde_json rejects those).
    serde_json::to_vec(doc)
        .unwrap_or_else(|e| format!("{{\"serialise_error\":{:?}}}", e.to_string()).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALERT: &str = r#"{"id":"550e8400-e29b-41d4-a716-446655440000","title":"Suspicious DNS Query to Known C2 Domain","severity":"high","status":"new","source":"suricata","iocs":[{"type":"domain","value":"t1.evil.com"}],"mitre_techniques":["T1071.004"],"timestamp":"2024-01-15T10:30:00Z","x_custom":{"a":1}}"#;

    #[test]
    fn dead_letters_keep_a_bounded_prefix_of_large_inputs() {
        use sha2::Digest;
        let small = DeadLetter::new("svc", "src", "bad", b"abc");
        assert_eq!(small.raw().as_deref(), Some(&b"abc"[..]));
        assert!(!small.raw_truncated && small.raw_size.is_none() && small.raw_sha256.is_none());
        let big = vec![b'x'; DEAD_LETTER_RAW_MAX * 3 + 7];
        let record = DeadLetter::new("svc", "src", "too big", &big);
        assert!(record.raw_truncated);
        assert!(record.describes(&big) && !record.describes(&big[..big.len() - 1]));
        assert_eq!(record.raw().map(|r| r.len()), Some(DEAD_LETTER_RAW_MAX));
        assert_eq!(record.raw_size, Some(big.len() as u64));
        let hex: String = sha2::Sha256::digest(&big)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(record.raw_sha256.as_deref(), Some(hex.as_str()));
        assert!(to_bytes(&record).len() < DEAD_LETTER_RAW_MAX * 2);
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let alert: Alert = parse(ALERT.as_bytes()).expect("valid alert");
        assert_eq!(alert.extra["x_custom"]["a"], 1);
        let back: Value = serde_json::from_slice(&to_bytes(&alert)).expect("json");
        let orig: Value = serde_json::from_str(ALERT).expect("json");
        assert_eq!(back, orig);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = ALERT.replace("\"high\"", "\"apocalyptic\"");
        let err = parse::<Alert>(bad.as_bytes()).expect_err("must fail");
        assert_eq!(err.field, "severity");
        let bad = ALERT.replace("\"t1.evil.com\"", "17");
        let err = parse::<Alert>(bad.as_bytes()).expect_err("must fail");
        assert_eq!(err.field, "iocs[0].value");
        let bad = ALERT.replace("T1071.004", "dns");
        let err = parse::<Alert>(bad.as_bytes()).expect_err("must fail");
        assert_eq!(err.field, "mitre_techniques[0]");
        let err = parse::<Alert>(b"{\"id\":").expect_err("must fail");
        assert_eq!(err.kind, "alert");
        let err = parse::<Alert>(b"[1,2]").expect_err("must fail");
        assert_eq!(err.kind, "alert");
    }

    #[test]
    fn tlp_reads_every_spelling() {
        for s in ["TLP:RED", "red", "Red", "tlp:red"] {
            assert_eq!(Tlp::parse(s), Some(Tlp::Red));
        }
        assert_eq!(Tlp::parse("white"), Some(Tlp::Clear));
        assert_eq!(Tlp::parse("purple"), None);
        assert_eq!(
            serde_json::to_string(&Tlp::AmberStrict).expect("ser"),
            "\"TLP:AMBER+STRICT\""
        );
    }

    #[test]
    fn severities_are_ordered() {
        assert!(Severity::Critical > Severity::High);
        assert!(Severity::Low > Severity::Info);
        assert_eq!("HIGH".parse::<Severity>(), Ok(Severity::High));
    }

    #[test]
    fn device_ids() {
        assert!(is_valid_device_id("sensor-01.site:a_b"));
        assert!(!is_valid_device_id(""));
        assert!(!is_valid_device_id("a/b"));
        assert!(!is_valid_device_id("a+b"));
        assert!(!is_valid_device_id(&"x".repeat(129)));
    }

    #[test]
    fn mitre_ids() {
        assert!(is_mitre_technique("T1071"));
        assert!(is_mitre_technique("T1071.004"));
        assert!(!is_mitre_technique("T10"));
        assert!(!is_mitre_technique("T1071.4"));
        assert!(!is_mitre_technique("X1071"));
    }
}
