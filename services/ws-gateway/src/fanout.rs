//! Fan-out: one reader per stream on each replica (XREAD, no consumer group, so every replica
//! sees every entry) turns each entry into one [`Frame`], serialised once, and hands that same
//! frame to every client of the channel through a bounded broadcast. The reader never waits
//! for a client: a client that falls `capacity` frames behind finds out on its own side
//! (`Lagged`) and is closed; the others go on.

use std::sync::Arc;
use std::time::Duration;

use aurora_core::bus::{self, BusError, Entry};
use aurora_core::names::Channel;
use aurora_core::ops::Readiness;
use axum::extract::ws::Utf8Bytes;
use serde_json::{Map, Value};
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::approvals::ApprovalStore;
use crate::telemetry;

/// The field added to every document sent to a client: its position in the stream.
pub const STREAM_ID_FIELD: &str = "stream_id";

/// Entries read per XREAD.
const READ_BATCH: usize = 512;
/// How long one XREAD blocks when there is nothing new.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// An entry ready to send: the document with its `stream_id`, serialised once and shared.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The entry id as numbers, to compare with what a client already has.
    pub position: (u64, u64),
    pub text: Utf8Bytes,
}

/// Why an entry cannot be sent to clients.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("entry {0} has no `data` field")]
    NoData(String),
    #[error("entry {0} is not a JSON object: {1}")]
    NotAnObject(String, String),
    #[error("entry id {0:?} is not a stream entry id")]
    BadId(String),
}

impl Frame {
    /// The entry's document with `stream_id` added.
    pub fn from_entry(entry: &Entry) -> Result<Self, FrameError> {
        let position =
            bus::parse_id(&entry.id).ok_or_else(|| FrameError::BadId(entry.id.clone()))?;
        let data = entry
            .data
            .as_deref()
            .ok_or_else(|| FrameError::NoData(entry.id.clone()))?;
        let mut doc: Map<String, Value> = serde_json::from_slice(data)
            .map_err(|e| FrameError::NotAnObject(entry.id.clone(), e.to_string()))?;
        doc.insert(STREAM_ID_FIELD.into(), Value::String(entry.id.clone()));
        let text = Value::Object(doc).to_string();
        Ok(Self {
            position,
            text: Utf8Bytes::from(text),
        })
    }
}

/// One channel on this replica: its stream, its broadcast, and its connection slots.
#[derive(Clone)]
pub struct Hub {
    pub channel: Channel,
    pub stream: String,
    tx: broadcast::Sender<Frame>,
    /// One permit per connection: the channel's limit on this replica.
    pub slots: Arc<Semaphore>,
    /// `aurora_ws_gateway_deliveries_total` of this channel, looked up once (it is counted on
    /// every write to every client).
    pub deliveries: metrics::Counter,
}

impl Hub {
    /// `queue` is how many frames a client may fall behind before it is closed.
    pub fn new(channel: Channel, stream: String, queue: usize, max_connections: usize) -> Self {
        let (tx, _) = broadcast::channel(queue.max(1));
        Self {
            channel,
            stream,
            tx,
            slots: Arc::new(Semaphore::new(max_connections)),
            deliveries: metrics::counter!(telemetry::DELIVERIES_TOTAL, "channel" => telemetry::channel_label(channel)),
        }
    }

    /// A receiver of every frame from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.tx.subscribe()
    }

    /// Hands a frame to every client; returns how many receivers it reached.
    pub fn publish(&self, frame: Frame) -> usize {
        // An error only means nobody listens right now.
        self.tx.send(frame).unwrap_or(0)
    }
}

/// The name of a channel's reader in `/readyz`.
pub fn readiness_component(channel: Channel) -> String {
    format!("stream:{}", channel.as_str())
}

/// Reads the hub's stream from its newest entry on and fans every entry out, until
/// `shutdown`. Redis errors make the channel unready and are retried; the reader resumes
/// after the last entry it handed out, so a short Redis outage loses nothing.
pub async fn run_reader(
    hub: Hub,
    redis_url: String,
    readiness: Readiness,
    approvals: Option<ApprovalStore>,
    linger: Duration,
    shutdown: CancellationToken,
) {
    let component = readiness_component(hub.channel);
    readiness.register(&component);
    let mut last: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = read_until_error(&hub, &redis_url, &readiness, &component, approvals.as_ref(), linger, &mut last) => r,
        };
        if let Err(e) = outcome {
            metrics::counter!(telemetry::READ_ERRORS_TOTAL, "channel" => hub.channel.as_str())
                .increment(1);
            readiness.set_not_ready(&component, e.to_string());
            tracing::warn!(channel = hub.channel.as_str(), error = %e, retry_in = ?backoff, "stream reader failed");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

async fn read_until_error(
    hub: &Hub,
    redis_url: &str,
    readiness: &Readiness,
    component: &str,
    approvals: Option<&ApprovalStore>,
    linger: Duration,
    last: &mut Option<String>,
) -> Result<(), BusError> {
    let mut conn = bus::connect_blocking(redis_url, READ_BLOCK).await?;
    let after = match last.clone() {
        Some(id) => id,
        None => bus::last_id(&mut conn, &hub.stream).await?,
    };
    if let Some(store) = approvals {
        store.catch_up(&mut conn, &after).await?;
    }
    *last = Some(after);
    readiness.set_ready(component);
    loop {
        let from = last.clone().unwrap_or_else(|| "0-0".to_string());
        let entries = bus::tail(
            &mut conn,
            &[(hub.stream.clone(), from)],
            READ_BATCH,
            Some(READ_BLOCK),
        )
        .await?;
        readiness.set_ready(component);
        let Some(newest) = entries.last().map(|e| e.id.clone()) else {
            continue;
        };
        if let Some(store) = approvals {
            // Registered before clients see them, so a decision on a shown approval finds it.
            store.register_entries(&entries).await?;
        }
        for entry in &entries {
            fan_out(hub, entry);
        }
        *last = Some(newest);
        // Let what comes next accumulate, so that each client gets it in one write: at a
        // steady rate of one entry every few milliseconds, a read per entry means a wake-up
        // and a syscall per entry and client, which costs more CPU than the machine has.
        if !linger.is_zero() && entries.len() < READ_BATCH {
            tokio::time::sleep(linger).await;
        }
    }
}

fn fan_out(hub: &Hub, entry: &Entry) {
    let channel = hub.channel.as_str();
    match Frame::from_entry(entry) {
        Ok(frame) => {
            let delay = fanout_delay(frame.position.0);
            hub.publish(frame);
            metrics::counter!(telemetry::MESSAGES_TOTAL, "channel" => channel).increment(1);
            metrics::histogram!(telemetry::FANOUT_DELAY_SECONDS, "channel" => channel)
                .record(delay);
        }
        Err(e) => {
            // The entry stays in its stream (nothing is consumed here); it is counted and
            // logged, and clients are not sent something they cannot parse.
            metrics::counter!(telemetry::INVALID_ENTRIES_TOTAL, "channel" => channel).increment(1);
            tracing::warn!(channel, stream = %hub.stream, error = %e, "skipped an entry clients cannot read");
        }
    }
}

/// Seconds since the entry's XADD (its id's milliseconds).
fn fanout_delay(entry_ms: u64) -> f64 {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    now_ms.saturating_sub(entry_ms) as f64 / 1000.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(id: &str, data: Option<&str>) -> Entry {
        Entry {
            stream: "s".into(),
            id: id.into(),
            data: data.map(|d| d.as_bytes().to_vec()),
            deliveries: 0,
        }
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

    #[test]
    fn a_stalled_receiver_does_not_hold_the_sender_back() {
        let hub = Hub::new(Channel::Alerts, "s".into(), 4, 10);
        let mut stalled = hub.subscribe();
        for i in 0..100u64 {
            let frame = Frame::from_entry(&entry(&format!("{i}-0"), Some("{}"))).unwrap();
            assert_eq!(hub.publish(frame), 1);
        }
        assert!(matches!(
            stalled.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(96))
        ));
    }
}
