//! Every metric of the gateway, in one place (listed in the README).

use std::time::Duration;

use aurora_core::names::FederatedKind;

pub const MESSAGES: &str = "aurora_federation_gateway_messages_total";
pub const WITHHELD: &str = "aurora_federation_gateway_withheld_total";
pub const IOCS_WITHHELD: &str = "aurora_federation_gateway_iocs_withheld_total";
pub const DUPLICATES: &str = "aurora_federation_gateway_duplicates_total";
pub const STALE_REVISIONS: &str = "aurora_federation_gateway_stale_revisions_total";
pub const LEGACY_IMPORTED: &str = "aurora_federation_gateway_legacy_imported_total";
pub const OWN_SKIPPED: &str = "aurora_federation_gateway_own_messages_skipped_total";
pub const DEAD_LETTERS: &str = "aurora_federation_gateway_dead_letters_total";
pub const PUBLISH_RETRIES: &str = "aurora_federation_gateway_publish_retries_total";
pub const NAKS: &str = "aurora_federation_gateway_naks_total";
pub const CONSUMER_LAG: &str = "aurora_federation_gateway_consumer_lag";
pub const CONSUMER_ACK_PENDING: &str = "aurora_federation_gateway_consumer_ack_pending";
pub const STREAM_DROPPED: &str = "aurora_federation_gateway_stream_dropped_unimported";
pub const TIME_TO_LOSS: &str = "aurora_federation_gateway_time_to_loss_seconds";
pub const MESSAGES_LOST: &str = "aurora_federation_gateway_messages_lost_total";
pub const CONNECTED: &str = "aurora_federation_gateway_connected";
pub const PUBLISH_LATENCY: &str = "aurora_federation_gateway_publish_latency_seconds";
pub const IMPORT_WRITE_LATENCY: &str = "aurora_federation_gateway_import_write_latency_seconds";

/// Which way a message went.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    Export,
    Import,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Export => "export",
            Self::Import => "import",
        }
    }
}

pub fn messages(direction: Direction, kind: FederatedKind, n: u64) {
    metrics::counter!(MESSAGES, "direction" => direction.as_str(), "subject" => kind.subject_token())
        .increment(n);
}

pub fn withheld(kind: FederatedKind, reason: &'static str) {
    metrics::counter!(WITHHELD, "subject" => kind.subject_token(), "reason" => reason).increment(1);
}

pub fn iocs_withheld(n: usize) {
    metrics::counter!(IOCS_WITHHELD).increment(n as u64);
}

pub fn duplicates(direction: Direction, n: u64) {
    metrics::counter!(DUPLICATES, "direction" => direction.as_str()).increment(n);
}

/// A revision older than the one the site holds arrived, and was not applied.
pub fn stale_revision(kind: FederatedKind) {
    metrics::counter!(STALE_REVISIONS, "subject" => kind.subject_token()).increment(1);
}

/// An unsigned design-format message imported from a legacy peer, marked unverified.
pub fn legacy_imported(kind: FederatedKind) {
    metrics::counter!(LEGACY_IMPORTED, "subject" => kind.subject_token()).increment(1);
}

pub fn own_skipped(n: u64) {
    metrics::counter!(OWN_SKIPPED).increment(n);
}

pub fn dead_letter(direction: Direction, reason: &'static str) {
    metrics::counter!(DEAD_LETTERS, "direction" => direction.as_str(), "reason" => reason)
        .increment(1);
}

pub fn publish_retry() {
    metrics::counter!(PUBLISH_RETRIES).increment(1);
}

pub fn nak() {
    metrics::counter!(NAKS).increment(1);
}

pub fn consumer_state(stream: &str, consumer: &str, pending: u64, ack_pending: u64) {
    let labels = [
        ("stream", stream.to_string()),
        ("consumer", consumer.to_string()),
    ];
    metrics::gauge!(CONSUMER_LAG, &labels).set(pending as f64);
    metrics::gauge!(CONSUMER_ACK_PENDING, &labels).set(ack_pending as f64);
}

pub fn stream_dropped(stream: &str, consumer: &str, n: u64) {
    metrics::gauge!(STREAM_DROPPED, "stream" => stream.to_string(), "consumer" => consumer.to_string())
        .set(n as f64);
}

/// Seconds until the stream's limits drop a message `consumer` (a site) has not imported.
pub fn time_to_loss(stream: &str, consumer: &str, seconds: f64) {
    metrics::gauge!(TIME_TO_LOSS, "stream" => stream.to_string(), "consumer" => consumer.to_string())
        .set(seconds);
}

/// Messages the stream dropped before `consumer` (a site) imported them.
pub fn messages_lost(stream: &str, consumer: &str, n: u64) {
    metrics::counter!(MESSAGES_LOST, "stream" => stream.to_string(), "consumer" => consumer.to_string())
        .increment(n);
}

pub fn connected(up: bool) {
    metrics::gauge!(CONNECTED).set(if up { 1.0 } else { 0.0 });
}

pub fn publish_latency(d: Duration) {
    metrics::histogram!(PUBLISH_LATENCY).record(d.as_secs_f64());
}

pub fn import_write_latency(d: Duration) {
    metrics::histogram!(IMPORT_WRITE_LATENCY).record(d.as_secs_f64());
}
