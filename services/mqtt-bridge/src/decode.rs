//! One MQTT message from a device, checked and turned into the document the bus carries, or
//! rejected with the reason. Pure: no I/O, never panics, whatever the topic and payload.

use aurora_core::names::DeviceTopicKind;
use aurora_core::Names;
use serde_json::{Map, Value};

/// A device message that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceDoc {
    pub device_id: String,
    pub kind: DeviceTopicKind,
    /// The document the bus carries: the device's JSON object with `device_id` and
    /// `message_type` from the topic first.
    pub data: Vec<u8>,
}

impl DeviceDoc {
    /// The `device.seen` record of this message, seen at `at`: a
    /// [`DeviceSeen`](aurora_core::model::DeviceSeen) whose metadata is the document. Written
    /// directly, with the document's bytes as they are (it is a JSON object: [`decode`]
    /// checked it), instead of parsing the document into a map and serialising it again.
    pub fn seen_record(&self, at: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 192);
        out.extend_from_slice(b"{\"event\":");
        push_json(&mut out, &aurora_core::model::DeviceSeen::EVENT);
        out.extend_from_slice(b",\"device_id\":");
        push_json(&mut out, &self.device_id);
        out.extend_from_slice(b",\"message_type\":");
        push_json(&mut out, &self.kind);
        out.extend_from_slice(b",\"metadata\":");
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b",\"seen_at\":");
        push_json(&mut out, &at);
        out.push(b'}');
        out
    }
}

/// Appends a value's JSON. For the types written here (a string, an enum, a time) writing
/// into a `Vec` cannot fail; `null` stands in if it ever did.
fn push_json<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) {
    let before = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(before);
        out.extend_from_slice(b"null");
    }
}

/// The top-level fields the topic decides, looked for without building the document.
#[derive(serde::Deserialize)]
struct Probe {
    #[serde(default)]
    device_id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    message_type: Option<serde::de::IgnoredAny>,
}

/// Why a message was refused; the label is the metric's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Not `<ns>/sensors/<device>/{telemetry,alerts,attestation}`.
    UnknownTopic,
    /// The topic's device id is outside `[A-Za-z0-9_.:-]{1,128}`.
    InvalidDeviceId,
    PayloadTooLarge,
    InvalidUtf8,
    InvalidJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// Holds a NUL character (`\u0000`), which PostgreSQL cannot store in text or JSON.
    NulCharacter,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownTopic => "unknown_topic",
            Self::InvalidDeviceId => "invalid_device_id",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidJson => "invalid_json",
            Self::NotAnObject => "not_a_json_object",
            Self::NulCharacter => "nul_character",
        }
    }
}

/// True when a JSON text holds the escape `\u0000` (a NUL in a string or key); an escaped
/// backslash followed by `u0000` is text, not a NUL. (A raw NUL byte is not JSON at all.)
pub fn has_escaped_nul(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(&b"0000"[..]) {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// A refused message: the label and a sentence for the dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub rejection: Rejection,
    pub reason: String,
}

fn reject(rejection: Rejection, reason: impl Into<String>) -> Rejected {
    Rejected {
        rejection,
        reason: reason.into(),
    }
}

/// Checks a message in the order that costs least for hostile input: the topic (and its
/// device id) first, then the size, the encoding and the JSON.
pub fn decode(
    names: &Names,
    topic: &str,
    payload: &[u8],
    max_payload: usize,
) -> Result<DeviceDoc, Rejected> {
    let Some((device_id, kind)) = names.parse_sensor_topic(topic) else {
        return Err(reject(
            Rejection::UnknownTopic,
            "topic is not <namespace>/sensors/<device_id>/{telemetry,alerts,attestation}",
        ));
    };
    if !aurora_core::model::is_valid_device_id(device_id) {
        return Err(reject(
            Rejection::InvalidDeviceId,
            "device id in the topic is not 1 to 128 characters of A-Z a-z 0-9 _ . : -",
        ));
    }
    if payload.len() > max_payload {
        return Err(reject(
            Rejection::PayloadTooLarge,
            format!(
                "payload of {} bytes is larger than the limit of {max_payload} bytes",
                payload.len()
            ),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| reject(Rejection::InvalidUtf8, format!("payload is not UTF-8: {e}")))?;
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if !trimmed.starts_with('{') {
        // Serde would read a struct from an array too: anything but `{` is not an object.
        let value: Value = serde_json::from_str(text)
            .map_err(|e| reject(Rejection::InvalidJson, format!("payload is not JSON: {e}")))?;
        return Err(reject(
            Rejection::NotAnObject,
            format!("payload is JSON but not an object ({})", json_type(&value)),
        ));
    }
    // Refused where it enters: downstream, PostgreSQL would refuse the record (and, before,
    // the whole batch it came in).
    if has_escaped_nul(trimmed) {
        return Err(reject(
            Rejection::NulCharacter,
            "payload holds a NUL character (\\u0000), which cannot be stored",
        ));
    }
    // The usual message names neither field: its bytes are kept and the two fields spliced
    // in front, with no document built. The probe still checks the whole payload is JSON.
    let data = match serde_json::from_str::<Probe>(trimmed) {
        Ok(Probe {
            device_id: None,
            message_type: None,
        }) => splice(device_id, kind, trimmed),
        Ok(_) => rebuild(device_id, kind, trimmed)?,
        // A duplicate field, say: the document itself decides.
        Err(e) if e.is_data() => rebuild(device_id, kind, trimmed)?,
        Err(e) => {
            return Err(reject(
                Rejection::InvalidJson,
                format!("payload is not JSON: {e}"),
            ))
        }
    };
    Ok(DeviceDoc {
        device_id: device_id.to_string(),
        kind,
        data,
    })
}

/// `{"device_id":..,"message_type":..,` and the rest of the object as it came.
fn splice(device_id: &str, kind: DeviceTopicKind, object: &str) -> Vec<u8> {
    let rest = &object[1..];
    let empty = rest.trim_start_matches(|c: char| c.is_ascii_whitespace()) == "}";
    let mut out = Vec::with_capacity(object.len() + device_id.len() + 48);
    // `decode` let only `[A-Za-z0-9_.:-]` through: nothing in a device id needs escaping.
    out.extend_from_slice(b"{\"device_id\":\"");
    out.extend_from_slice(device_id.as_bytes());
    out.extend_from_slice(b"\",\"message_type\":\"");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.push(b'"');
    if empty {
        out.push(b'}');
    } else {
        out.push(b',');
        out.extend_from_slice(rest.as_bytes());
    }
    out
}

/// The document rebuilt: the payload names `device_id` or `message_type` itself. The topic
/// is what the broker authenticated, so the payload's values are dropped.
fn rebuild(device_id: &str, kind: DeviceTopicKind, object: &str) -> Result<Vec<u8>, Rejected> {
    let fields: Map<String, Value> = serde_json::from_str(object)
        .map_err(|e| reject(Rejection::InvalidJson, format!("payload is not JSON: {e}")))?;
    let mut doc = Map::with_capacity(fields.len() + 2);
    doc.insert("device_id".into(), Value::String(device_id.to_string()));
    doc.insert("message_type".into(), Value::String(kind.as_str().into()));
    for (k, v) in fields {
        if k != "device_id" && k != "message_type" {
            doc.insert(k, v);
        }
    }
    Ok(aurora_core::model::to_bytes(&doc))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document's fields, parsed.
    fn fields(d: &DeviceDoc) -> Map<String, Value> {
        serde_json::from_slice(&d.data).unwrap_or_default()
    }

    fn names() -> Names {
        Names::default()
    }

    fn rejection(topic: &str, payload: &[u8]) -> Option<Rejection> {
        decode(&names(), topic, payload, 64)
            .err()
            .map(|r| r.rejection)
    }

    #[test]
    fn a_good_message_gets_device_id_and_type_from_its_topic() {
        let d = decode(
            &names(),
            "aurora/sensors/dev-1/alerts",
            br#"{"device_id":"forged","message_type":"x","v":1}"#,
            64,
        )
        .expect("valid");
        assert_eq!(d.device_id, "dev-1");
        assert_eq!(d.kind, DeviceTopicKind::Alerts);
        assert_eq!(
            Value::Object(fields(&d)),
            serde_json::json!({"device_id":"dev-1","message_type":"alerts","v":1})
        );
    }

    #[test]
    fn the_usual_message_keeps_its_bytes_behind_the_topic_fields() {
        let d = decode(
            &names(),
            "aurora/sensors/dev-1/telemetry",
            b" {\"t\":21.5, \"nested\":{\"device_id\":\"inner\"}}\n",
            128,
        )
        .expect("valid");
        assert_eq!(
            String::from_utf8(d.data).expect("utf-8"),
            r#"{"device_id":"dev-1","message_type":"telemetry","t":21.5, "nested":{"device_id":"inner"}}"#
        );
        let d = decode(&names(), "aurora/sensors/d/alerts", b"{ }", 64).expect("valid");
        assert_eq!(
            String::from_utf8(d.data).expect("utf-8"),
            r#"{"device_id":"d","message_type":"alerts"}"#
        );
    }

    #[test]
    fn the_seen_record_written_directly_is_the_record_of_the_parsed_document() {
        use aurora_core::model::{parse, DeviceSeen, Extra};
        let at = chrono::Utc::now();
        for (topic, payload) in [
            ("aurora/sensors/dev-1/telemetry", &br#"{"t":21.5,"fw":"1.2"}"#[..]),
            ("aurora/sensors/d.2:x_y-z/attestation", b" { } "),
            (
                "aurora/sensors/d3/alerts",
                r#"{"msg":"quote \" and \u00e9 é","nested":{"a":[1,{"b":null}]},"device_id":"forged"}"#
                    .as_bytes(),
            ),
        ] {
            let d = decode(&names(), topic, payload, 256).expect("valid");
            let direct = d.seen_record(at);
            let record: DeviceSeen = parse(&direct).expect("a valid device.seen record");
            let built = DeviceSeen {
                event: DeviceSeen::EVENT.to_string(),
                device_id: d.device_id.clone(),
                message_type: d.kind,
                metadata: fields(&d),
                seen_at: at,
                extra: Extra::new(),
            };
            assert_eq!(record, built, "{topic}");
            assert_eq!(
                serde_json::from_slice::<Value>(&direct).expect("json"),
                serde_json::to_value(&built).expect("json"),
                "{topic}"
            );
        }
    }

    #[test]
    fn a_payload_cannot_override_the_topic_however_it_names_the_field() {
        for payload in [
            &br#"{"device_id":"forged","device_id":"again","v":1}"#[..],
            br#"{"v":1,"device\u005fid":"escaped"}"#,
            br#"{"message_type":"firmware"}"#,
        ] {
            let d = decode(&names(), "aurora/sensors/dev-1/alerts", payload, 128).expect("valid");
            let fields = fields(&d);
            assert_eq!(fields["device_id"], "dev-1", "{payload:?}");
            assert_eq!(fields["message_type"], "alerts", "{payload:?}");
            let raw = String::from_utf8(d.data).expect("utf-8");
            assert_eq!(raw.matches("device_id").count(), 1, "{raw}");
        }
    }

    #[test]
    fn every_bad_input_has_its_reason() {
        let ok = br#"{"a":1}"#;
        assert_eq!(
            rejection("aurora/sensors/dev/other", ok),
            Some(Rejection::UnknownTopic)
        );
        assert_eq!(
            rejection("aurora/sensors/a/b/telemetry", ok),
            Some(Rejection::UnknownTopic)
        );
        assert_eq!(
            rejection("aurora/sensors//telemetry", ok),
            Some(Rejection::InvalidDeviceId)
        );
        assert_eq!(
            rejection("aurora/sensors/d\u{e9}v/telemetry", ok),
            Some(Rejection::InvalidDeviceId)
        );
        let long = format!("aurora/sensors/{}/telemetry", "x".repeat(129));
        assert_eq!(rejection(&long, ok), Some(Rejection::InvalidDeviceId));
        assert_eq!(
            rejection("aurora/sensors/d/telemetry", &[b' '; 65]),
            Some(Rejection::PayloadTooLarge)
        );
        assert_eq!(
            rejection("aurora/sensors/d/telemetry", b"{\"a\":\"\xff\"}"),
            Some(Rejection::InvalidUtf8)
        );
        assert_eq!(
            rejection("aurora/sensors/d/telemetry", b"{\"a\":"),
            Some(Rejection::InvalidJson)
        );
        assert_eq!(
            rejection("aurora/sensors/d/telemetry", b"[1,2]"),
            Some(Rejection::NotAnObject)
        );
        assert_eq!(
            rejection("aurora/sensors/d/telemetry", b""),
            Some(Rejection::InvalidJson)
        );
    }

    #[test]
    fn hostile_topics_never_panic() {
        for topic in [
            "",
            "/",
            "aurora",
            "aurora/sensors/",
            "aurora/sensors/+/#",
            "\u{0}\u{ffff}",
        ] {
            assert!(decode(&names(), topic, b"{}", 64).is_err(), "{topic:?}");
        }
    }
}
