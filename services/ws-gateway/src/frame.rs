//! What a client is sent: a stream entry's document with its position in the stream added,
//! serialised once and shared by every client of the channel.

use aurora_core::bus::{self, Entry};
use aurora_core::trace::{TraceContext, TRACEPARENT_FIELD};
use axum::extract::ws::Utf8Bytes;
use serde_json::{Map, Value};

use crate::error::FrameError;

/// The field added to every document sent to a client: its position in the stream.
pub const STREAM_ID_FIELD: &str = "stream_id";

/// An entry ready to send: the document with its `stream_id`, serialised once and shared.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The entry id as numbers, to compare with what a client already has.
    pub position: (u64, u64),
    pub text: Utf8Bytes,
}

impl Frame {
    /// The entry's document with `stream_id` added, and `traceparent` when the entry carried
    /// a sampled trace context (an unsampled one is of no use to the console).
    pub fn from_entry(entry: &Entry) -> Result<Self, FrameError> {
        Self::traced(entry, entry.trace.as_ref().filter(|c| c.sampled()))
    }

    /// The entry's document with `stream_id` added, and `traceparent` (docs/contract.md,
    /// WebSocket) when there is a `trace` and the document has no field of that name.
    pub fn traced(entry: &Entry, trace: Option<&TraceContext>) -> Result<Self, FrameError> {
        let position =
            bus::parse_id(&entry.id).ok_or_else(|| FrameError::BadId(entry.id.clone()))?;
        let data = entry
            .data
            .as_deref()
            .ok_or_else(|| FrameError::NoData(entry.id.clone()))?;
        let mut doc: Map<String, Value> = serde_json::from_slice(data)
            .map_err(|e| FrameError::NotAnObject(entry.id.clone(), e.to_string()))?;
        doc.insert(STREAM_ID_FIELD.into(), Value::String(entry.id.clone()));
        if let Some(trace) = trace {
            if !doc.contains_key(TRACEPARENT_FIELD) {
                doc.insert(
                    TRACEPARENT_FIELD.into(),
                    Value::String(trace.traceparent.clone()),
                );
            }
        }
        let text = Value::Object(doc).to_string();
        Ok(Self {
            position,
            text: Utf8Bytes::from(text),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn entry(id: &str, data: Option<&str>) -> Entry {
        Entry {
            stream: "s".into(),
            id: id.into(),
            data: data.map(|d| d.as_bytes().to_vec()),
            deliveries: 0,
            trace: None,
        }
    }

    #[test]
    fn a_traced_frame_offers_its_traceparent_beside_the_document() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceContext::parse(parent, None).unwrap();
        let frame = Frame::traced(&entry("1-0", Some(r#"{"title":"x"}"#)), Some(&trace)).unwrap();
        assert_eq!(
            frame.text.as_str(),
            format!(r#"{{"title":"x","stream_id":"1-0","traceparent":"{parent}"}}"#)
        );
        let own = Frame::traced(
            &entry("1-0", Some(r#"{"traceparent":"mine"}"#)),
            Some(&trace),
        )
        .unwrap();
        assert_eq!(
            own.text.as_str(),
            r#"{"traceparent":"mine","stream_id":"1-0"}"#,
            "a document's own field is never replaced"
        );
    }

    #[test]
    fn a_replayed_entry_offers_its_context_only_when_sampled() {
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let unsampled = sampled.replace("-01", "-00");
        let with = |tp: &str| Entry {
            trace: TraceContext::parse(tp, None),
            ..entry("2-0", Some(r#"{"title":"x"}"#))
        };
        let frame = Frame::from_entry(&with(sampled)).unwrap();
        assert!(frame.text.as_str().contains(sampled));
        let frame = Frame::from_entry(&with(&unsampled)).unwrap();
        assert_eq!(frame.text.as_str(), r#"{"title":"x","stream_id":"2-0"}"#);
    }

    #[test]
    fn a_frame_is_the_document_with_its_position_and_every_field_kept() {
        let frame =
            Frame::from_entry(&entry("17-3", Some(r#"{"title":"x","z":{"a":1}}"#))).unwrap();
        assert_eq!(frame.position, (17, 3));
        assert_eq!(
            frame.text.as_str(),
            r#"{"title":"x","z":{"a":1},"stream_id":"17-3"}"#
        );
    }

    #[test]
    fn entries_clients_cannot_read_are_refused_with_the_reason() {
        assert!(matches!(
            Frame::from_entry(&entry("1-0", Some("[1,2]"))),
            Err(FrameError::NotAnObject(..))
        ));
        assert!(matches!(
            Frame::from_entry(&entry("1-0", Some("{oops"))),
            Err(FrameError::NotAnObject(..))
        ));
        assert!(matches!(
            Frame::from_entry(&entry("1-0", None)),
            Err(FrameError::NoData(id)) if id == "1-0"
        ));
    }
}
