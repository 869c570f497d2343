//! One EVE line: checked, identified by the hash of its bytes, and routed by its event type.
//!
//! The bytes published are the line exactly as Suricata wrote it (without the newline of a
//! file), so what consumers receive is what the sensor said. The `Nats-Msg-Id` is the SHA-256
//! of those bytes: a retried event carries the same id and JetStream drops the copy; two
//! distinct events differ (Suricata stamps each with a microsecond timestamp and a flow id).

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use aurora_core::Names;

/// Why a line is not an event; also the `reason` label of the dead-letter metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not valid JSON (or not valid UTF-8 inside a string).
    InvalidJson,
    /// JSON, but not an object.
    NotAnObject,
    /// An object without a string `event_type` (missing, empty, or another type).
    NoEventType,
    /// Longer than the configured maximum (file input).
    TooLong,
    /// Larger than NATS accepts as one message.
    TooLargeForNats,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::NoEventType => "no_event_type",
            Self::TooLong => "line_too_long",
            Self::TooLargeForNats => "too_large_for_nats",
        }
    }

    /// The sentence written in the dead-letter record.
    pub fn describe(self) -> &'static str {
        match self {
            Self::InvalidJson => "line is not valid JSON",
            Self::NotAnObject => "line is JSON but not an object",
            Self::NoEventType => "event has no string `event_type`",
            Self::TooLong => "line is longer than --max-line-bytes",
            Self::TooLargeForNats => "event is larger than the NATS server's max_payload",
        }
    }
}

/// A line that is an EVE event.
#[derive(Debug, Clone)]
pub struct EveEvent {
    /// The line as received, without a trailing newline.
    pub raw: Bytes,
    /// Suricata's types are held without a copy of their own ([`event_type`]).
    pub event_type: Cow<'static, str>,
    /// SHA-256 of `raw`.
    pub hash: [u8; 32],
}

impl EveEvent {
    /// The `Nats-Msg-Id`: the hex SHA-256 of the line.
    pub fn msg_id(&self) -> String {
        hex_of(&self.hash)
    }

    pub fn subject(&self, names: &Names) -> String {
        names.suricata_subject(&self.event_type)
    }

    pub fn is_alert(&self) -> bool {
        self.event_type == "alert"
    }

    /// The whole event as JSON (only alerts need it; other events are passed through as
    /// bytes).
    pub fn json(&self) -> Option<serde_json::Map<String, Value>> {
        serde_json::from_slice(&self.raw).ok()
    }
}

/// A SHA-256 in lowercase hex, written into a buffer of its size (`hex::encode` gathers
/// the string char by char: a few percent of eve-ingest's CPU at one id per event).
pub fn hex_of(hash: &[u8; 32]) -> String {
    let mut buf = [0u8; 64];
    // The buffer is exactly twice the hash: encoding cannot fail, and hex digits are UTF-8.
    if hex::encode_to_slice(hash, &mut buf).is_err() {
        return hex::encode(hash);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Only the field routing needs; serde still checks the whole line is well-formed JSON.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    event_type: Option<Value>,
}

/// Strips one trailing `\n` (and a `\r` before it).
pub fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads one line. Never panics, whatever the bytes.
pub fn parse_line(raw: Bytes) -> Result<EveEvent, (Rejection, Bytes)> {
    let is_object = raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !is_object {
        // Serde would read a struct from an array too: anything but `{` is not an event.
        return match serde_json::from_slice::<serde::de::IgnoredAny>(&raw) {
            Ok(_) => Err((Rejection::NotAnObject, raw)),
            Err(_) => Err((Rejection::InvalidJson, raw)),
        };
    }
    let head: Head = match serde_json::from_slice(&raw) {
        Ok(head) => head,
        Err(e) if e.is_data() => return Err((Rejection::NoEventType, raw)),
        Err(_) => return Err((Rejection::InvalidJson, raw)),
    };
    let event_type = match head.event_type {
        Some(Value::String(t)) if !t.trim().is_empty() => match metric_label(&t) {
            "other" => Cow::Owned(t),
            known => Cow::Borrowed(known),
        },
        _ => return Err((Rejection::NoEventType, raw)),
    };
    let hash: [u8; 32] = Sha256::digest(&raw).into();
    Ok(EveEvent {
        raw,
        event_type,
        hash,
    })
}

/// An event's type as it is held: one of Suricata's without a copy, another as its own
/// string; `None` when it cannot be one (empty or blank).
pub fn event_type(t: &str) -> Option<Cow<'static, str>> {
    if t.trim().is_empty() {
        return None;
    }
    Some(match metric_label(t) {
        "other" => Cow::Owned(t.to_string()),
        known => Cow::Borrowed(known),
    })
}

/// The event types Suricata writes: the metric labels, and the types held without a copy.
pub const SURICATA_EVENT_TYPES: &[&str] = &[
    "alert",
    "anomaly",
    "bittorrent_dht",
    "dcerpc",
    "dhcp",
    "dnp3",
    "dns",
    "drop",
    "enip",
    "fileinfo",
    "flow",
    "frame",
    "ftp",
    "ftp_data",
    "http",
    "http2",
    "ike",
    "ikev2",
    "krb5",
    "ldap",
    "modbus",
    "mqtt",
    "netflow",
    "nfs",
    "pgsql",
    "quic",
    "rdp",
    "rfb",
    "sip",
    "smb",
    "smtp",
    "snmp",
    "ssh",
    "stats",
    "tftp",
    "tls",
];

/// The event types Suricata writes, for bounded metric labels; anything else is `other`.
pub fn metric_label(event_type: &str) -> &'static str {
    SURICATA_EVENT_TYPES
        .iter()
        .find(|k| **k == event_type)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<EveEvent, Rejection> {
        parse_line(Bytes::copy_from_slice(s.as_bytes())).map_err(|(r, _)| r)
    }

    #[test]
    fn lines_are_sorted_into_events_and_rejections() {
        let ev =
            parse(r#"{"timestamp":"2017-01-30T16:12:36.066011+0100","event_type":"dns"}"#).unwrap();
        assert_eq!(ev.event_type, "dns");
        assert_eq!(ev.msg_id().len(), 64);
        assert_eq!(ev.subject(&Names::default()), "suricata.dns");
        assert_eq!(parse("not json").unwrap_err(), Rejection::InvalidJson);
        assert_eq!(
            parse(r#"{"event_type":"dns""#).unwrap_err(),
            Rejection::InvalidJson
        );
        assert_eq!(parse("[1,2]").unwrap_err(), Rejection::NotAnObject);
        assert_eq!(parse("\"alert\"").unwrap_err(), Rejection::NotAnObject);
        assert_eq!(parse("{}").unwrap_err(), Rejection::NoEventType);
        assert_eq!(
            parse(r#"{"event_type":5}"#).unwrap_err(),
            Rejection::NoEventType
        );
        assert_eq!(
            parse(r#"{"event_type":"  "}"#).unwrap_err(),
            Rejection::NoEventType
        );
        assert_eq!(parse("").unwrap_err(), Rejection::InvalidJson);
    }

    #[test]
    fn odd_event_types_become_safe_subjects() {
        let ev = parse(r#"{"event_type":"a.b*>c"}"#).unwrap();
        assert_eq!(ev.subject(&Names::default()), "suricata.a_b__c");
        assert_eq!(metric_label(&ev.event_type), "other");
        assert_eq!(metric_label("dnp3"), "dnp3");
    }

    #[test]
    fn the_id_is_the_hash_of_the_bytes() {
        let a = parse(r#"{"event_type":"flow","flow_id":1}"#).unwrap();
        let b = parse(r#"{"event_type":"flow","flow_id":1}"#).unwrap();
        let c = parse(r#"{"event_type":"flow","flow_id":2}"#).unwrap();
        assert_eq!(a.msg_id(), b.msg_id());
        assert_eq!(a.msg_id(), hex::encode(a.hash));
        assert_ne!(a.msg_id(), c.msg_id());
        assert_eq!(trim_newline(b"x\r\n"), b"x");
        assert_eq!(trim_newline(b"x\n"), b"x");
        assert_eq!(trim_newline(b"x"), b"x");
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_line(Bytes::from(bytes));
        }

        #[test]
        fn any_json_object_with_a_type_is_an_event(t in "[a-z_.*> ]{1,20}", n in any::<i64>()) {
            let line = serde_json::json!({"event_type": t, "n": n}).to_string();
            match parse_line(Bytes::from(line)) {
                Ok(ev) => {
                    let subject = ev.subject(&Names::default());
                    prop_assert!(!subject[9..].contains(['.', '*', '>', ' ']));
                }
                Err((r, _)) => prop_assert_eq!(r, Rejection::NoEventType),
            }
        }
    }
}
