//! Every metric of the gateway, in one place (listed in the README): each is counted through
//! a function here, so a name is spelled once.

use aurora_core::names::Channel;

/// Open WebSocket connections, by channel.
pub const CONNECTIONS: &str = "aurora_ws_gateway_connections";
/// Connections accepted, by channel.
pub const CONNECTIONS_TOTAL: &str = "aurora_ws_gateway_connections_total";
/// Connections refused or closed, by channel and close code.
pub const CLOSES_TOTAL: &str = "aurora_ws_gateway_closes_total";
/// Clients closed because they fell too far behind or their socket stalled, by channel.
pub const SLOW_CLIENTS_CLOSED_TOTAL: &str = "aurora_ws_gateway_slow_clients_closed_total";
/// Stream entries read and fanned out, by channel.
pub const MESSAGES_TOTAL: &str = "aurora_ws_gateway_messages_total";
/// Frames written to clients (live and replayed), by channel.
pub const DELIVERIES_TOTAL: &str = "aurora_ws_gateway_deliveries_total";
/// Entries replayed to clients resuming with `since`, by channel.
pub const REPLAYED_TOTAL: &str = "aurora_ws_gateway_replayed_total";
/// Stream entries that are not a JSON object (skipped, left in their stream), by channel.
pub const INVALID_ENTRIES_TOTAL: &str = "aurora_ws_gateway_invalid_entries_total";
/// Failed reads of a stream, by channel.
pub const READ_ERRORS_TOTAL: &str = "aurora_ws_gateway_read_errors_total";
/// Approval decisions, by outcome (approved, rejected, expired, conflict, not_found).
pub const APPROVAL_DECISIONS_TOTAL: &str = "aurora_ws_gateway_approval_decisions_total";
/// Approval documents that could not be read as approvals.
pub const INVALID_APPROVALS_TOTAL: &str = "aurora_ws_gateway_invalid_approvals_total";
/// WebSocket upgrades refused for their Origin, by channel.
pub const ORIGIN_REFUSED_TOTAL: &str = "aurora_ws_gateway_origin_refused_total";
/// Seconds from an entry's id (its XADD time) to its hand-off to the clients.
pub const FANOUT_DELAY_SECONDS: &str = "aurora_ws_gateway_fanout_delay_seconds";

/// The `channel` label.
pub fn channel_label(channel: Channel) -> &'static str {
    channel.as_str()
}

/// An accepted connection: counted when made; the open-connections gauge goes down again when
/// it is dropped, however the session ends (also when it is given up at the drain deadline).
#[must_use = "the connection counts as open until this is dropped"]
pub struct OpenConnection {
    channel: Channel,
}

/// Counts an accepted connection, open until the returned value is dropped.
pub fn connection_opened(channel: Channel) -> OpenConnection {
    let label = channel_label(channel);
    metrics::gauge!(CONNECTIONS, "channel" => label).increment(1.0);
    metrics::counter!(CONNECTIONS_TOTAL, "channel" => label).increment(1);
    OpenConnection { channel }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS, "channel" => channel_label(self.channel)).decrement(1.0);
    }
}

/// Counts a close (or a refusal) with its code; 1006 is a peer dropped without a close frame.
pub fn closed(channel: Channel, code: u16) {
    metrics::counter!(CLOSES_TOTAL, "channel" => channel_label(channel), "code" => code.to_string())
        .increment(1);
}

/// Counts an upgrade refused for its Origin.
pub fn origin_refused(channel: Channel) {
    metrics::counter!(ORIGIN_REFUSED_TOTAL, "channel" => channel_label(channel)).increment(1);
}

/// Counts a client closed for falling behind or for a socket that accepted nothing.
pub fn slow_client_closed(channel: Channel) {
    metrics::counter!(SLOW_CLIENTS_CLOSED_TOTAL, "channel" => channel_label(channel)).increment(1);
}

/// The deliveries counter of a channel, looked up once: it is counted on every write to every
/// client.
pub fn deliveries(channel: Channel) -> metrics::Counter {
    metrics::counter!(DELIVERIES_TOTAL, "channel" => channel_label(channel))
}

/// Counts entries replayed to a resuming client.
pub fn replayed(channel: Channel, entries: u64) {
    metrics::counter!(REPLAYED_TOTAL, "channel" => channel_label(channel)).increment(entries);
}

/// Counts an entry handed to the clients, `delay_seconds` after its XADD.
pub fn fanned_out(channel: Channel, delay_seconds: f64) {
    let label = channel_label(channel);
    metrics::counter!(MESSAGES_TOTAL, "channel" => label).increment(1);
    metrics::histogram!(FANOUT_DELAY_SECONDS, "channel" => label).record(delay_seconds);
}

/// Counts an entry clients cannot read (skipped).
pub fn invalid_entry(channel: Channel) {
    metrics::counter!(INVALID_ENTRIES_TOTAL, "channel" => channel_label(channel)).increment(1);
}

/// Counts a failed read of a channel's stream.
pub fn read_error(channel: Channel) {
    metrics::counter!(READ_ERRORS_TOTAL, "channel" => channel_label(channel)).increment(1);
}

/// Counts a decision attempt by its outcome.
pub fn approval_decision(outcome: &'static str) {
    metrics::counter!(APPROVAL_DECISIONS_TOTAL, "outcome" => outcome).increment(1);
}

/// Counts an approvals-stream entry that is not an approval.
pub fn invalid_approval() {
    metrics::counter!(INVALID_APPROVALS_TOTAL).increment(1);
}
