//! Every metric of the bridge, in one place (README.md lists them): each is recorded through
//! the function named after it, never by its name elsewhere.

use std::time::Duration;

use aurora_core::names::DeviceTopicKind;

/// Device messages written to their stream, by `type` (telemetry, alerts, attestation,
/// receipt).
pub const MESSAGES: &str = "aurora_mqtt_bridge_messages_total";
/// Device messages dead-lettered, by `reason`.
pub const DEAD_LETTERS: &str = "aurora_mqtt_bridge_dead_letters_total";
/// `device.seen` records written.
pub const DEVICES_SEEN: &str = "aurora_mqtt_bridge_devices_seen_total";
/// Device ids held by the seen-LRU.
pub const SEEN_DEVICES: &str = "aurora_mqtt_bridge_seen_cache_devices";
/// Messages per written batch.
pub const BATCH_MESSAGES: &str = "aurora_mqtt_bridge_batch_messages";
/// Time of one pipelined batch write.
pub const WRITE_SECONDS: &str = "aurora_mqtt_bridge_write_seconds";
/// Batch writes that failed and were retried (nothing acknowledged meanwhile).
pub const WRITE_RETRIES: &str = "aurora_mqtt_bridge_write_retries_total";
/// Messages received and not yet written.
pub const QUEUE_DEPTH: &str = "aurora_mqtt_bridge_queue_messages";
/// PUBACKs sent to the broker (each after its message was written).
pub const ACKS_SENT: &str = "aurora_mqtt_bridge_acks_sent_total";
/// Messages handed to the writer whose PUBACK has not gone out yet (sampled).
pub const UNACKED: &str = "aurora_mqtt_bridge_unacked_messages";
/// Acks not sent because the message came on an earlier connection (it is redelivered).
pub const ACKS_SKIPPED: &str = "aurora_mqtt_bridge_acks_skipped_total";
/// Successful broker connections, by `link` (uplink, downlink).
pub const CONNECTIONS: &str = "aurora_mqtt_bridge_connections_total";
/// Lost or refused broker connections, by `link`.
pub const CONNECTION_ERRORS: &str = "aurora_mqtt_bridge_connection_errors_total";
/// Device commands handled, by `outcome` (sent, not_reached, expired, invalid, refused,
/// failed).
pub const COMMANDS: &str = "aurora_mqtt_bridge_commands_total";
/// Privileged commands refused before they were sent, by `reason` (the proof's fault:
/// missing, malformed, unknown_key, bad_signature, expired, no_keys; or replayed).
pub const COMMANDS_REFUSED: &str = "aurora_mqtt_bridge_commands_refused_total";
/// Time from reading a command to the broker's PUBACK.
pub const COMMAND_SECONDS: &str = "aurora_mqtt_bridge_command_publish_seconds";
/// Failed reads or writes of the command streams, and commands without a PUBACK in time:
/// each is tried again.
pub const COMMAND_ERRORS: &str = "aurora_mqtt_bridge_command_errors_total";

/// Device messages acknowledged and not bridged, by `reason`: `retained_clear` (an empty
/// payload published with retain: a device clearing its retained message).
pub const IGNORED: &str = "aurora_mqtt_bridge_ignored_total";

/// Gone replicas' sessions taken over, by `outcome` (handed_back, returned, interrupted).
pub const ADOPTIONS: &str = "aurora_mqtt_bridge_adoptions_total";

/// Messages the broker dropped by its queue limits, by its own count, as this replica found
/// them new (each drop is counted by one replica: the sum over replicas is the ledger's).
pub const BROKER_DROPPED: &str = "aurora_mqtt_bridge_broker_dropped_total";

/// Which of the bridge's broker connections (the `link` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerLink {
    Uplink,
    Downlink,
    /// A gone replica's uplink session, taken over to hand it back.
    Adoption,
}

impl BrokerLink {
    fn as_str(self) -> &'static str {
        match self {
            Self::Uplink => "uplink",
            Self::Downlink => "downlink",
            Self::Adoption => "adoption",
        }
    }
}

/// What became of an adoption (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptionOutcome {
    /// The gone replica's session was handed back and ended, the replica forgotten.
    HandedBack,
    /// The replica came back and took its session again.
    Returned,
    /// Stopped with the session kept (connection lost, deadline): adopted again later.
    Interrupted,
}

impl AdoptionOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::HandedBack => "handed_back",
            Self::Returned => "returned",
            Self::Interrupted => "interrupted",
        }
    }
}

/// What became of a device command (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcome {
    /// The broker acknowledged it for a subscriber (or a session that keeps it).
    Sent,
    /// The broker acknowledged it with "no matching subscribers": no device got it.
    NotReached,
    Expired,
    /// Not a command, or too large for the broker: dead-lettered.
    Invalid,
    /// A privileged action without a valid, unused approval proof: dead-lettered, not sent.
    Refused,
    /// The broker refused it (a PUBACK reason code such as NotAuthorized): dead-lettered.
    Failed,
}

impl CommandOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::NotReached => "not_reached",
            Self::Expired => "expired",
            Self::Invalid => "invalid",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// `n` device messages of `kind` written to their stream.
pub fn messages(kind: DeviceTopicKind, n: u64) {
    if n > 0 {
        metrics::counter!(MESSAGES, "type" => kind.as_str()).increment(n);
    }
}

/// One device message dead-lettered for `reason` (a [`crate::decode::Rejection`] label).
pub fn dead_letter(reason: &'static str) {
    metrics::counter!(DEAD_LETTERS, "reason" => reason).increment(1);
}

/// One device message acknowledged without being bridged, for `reason`.
pub fn ignored(reason: &'static str) {
    metrics::counter!(IGNORED, "reason" => reason).increment(1);
}

/// `n` messages the broker dropped, new in the ledger.
pub fn broker_dropped(n: u64) {
    metrics::counter!(BROKER_DROPPED).increment(n);
}

/// `n` `device.seen` records written.
pub fn devices_seen(n: u64) {
    metrics::counter!(DEVICES_SEEN).increment(n);
}

/// Device ids the seen-LRU holds now.
pub fn seen_cache_devices(n: usize) {
    metrics::gauge!(SEEN_DEVICES).set(n as f64);
}

/// Messages in one written batch.
pub fn batch_messages(n: usize) {
    metrics::histogram!(BATCH_MESSAGES).record(n as f64);
}

/// Time of one pipelined batch write.
pub fn write_seconds(took: Duration) {
    metrics::histogram!(WRITE_SECONDS).record(took.as_secs_f64());
}

/// A batch write failed and is tried again.
pub fn write_retry() {
    metrics::counter!(WRITE_RETRIES).increment(1);
}

/// Messages received and not yet written, now.
pub fn queue_depth(n: usize) {
    metrics::gauge!(QUEUE_DEPTH).set(n as f64);
}

/// `n` PUBACKs written to the broker.
pub fn acks_sent(n: u64) {
    metrics::counter!(ACKS_SENT).increment(n);
}

/// Messages handed to the writer whose PUBACK has not gone out yet, now.
pub fn unacked(n: u64) {
    metrics::gauge!(UNACKED).set(n as f64);
}

/// `n` acks not sent: their messages came on an earlier connection.
pub fn acks_skipped(n: u64) {
    if n > 0 {
        metrics::counter!(ACKS_SKIPPED).increment(n);
    }
}

/// A broker connection came up (CONNACK).
pub fn connected(link: BrokerLink) {
    metrics::counter!(CONNECTIONS, "link" => link.as_str()).increment(1);
}

/// A broker connection was lost or refused.
pub fn connection_error(link: BrokerLink) {
    metrics::counter!(CONNECTION_ERRORS, "link" => link.as_str()).increment(1);
}

/// One device command handled.
pub fn command(outcome: CommandOutcome) {
    metrics::counter!(COMMANDS, "outcome" => outcome.as_str()).increment(1);
}

/// A privileged command refused before it was sent, for `reason` (a
/// [`crate::guard::Refusal`] label).
pub fn command_refused(reason: &'static str) {
    metrics::counter!(COMMANDS_REFUSED, "reason" => reason).increment(1);
}

/// From reading a command to the broker's PUBACK.
pub fn command_publish_seconds(took: Duration) {
    metrics::histogram!(COMMAND_SECONDS).record(took.as_secs_f64());
}

/// A read or write of the command streams failed, or a command got no PUBACK in time.
pub fn command_error() {
    metrics::counter!(COMMAND_ERRORS).increment(1);
}

/// One adoption of a gone replica's session ended.
pub fn adoption(outcome: AdoptionOutcome) {
    metrics::counter!(ADOPTIONS, "outcome" => outcome.as_str()).increment(1);
}
