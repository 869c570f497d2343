//! Every metric of the gateway, in one place (listed in the README).

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
/// Seconds from an entry's id (its XADD time) to its hand-off to the clients.
pub const FANOUT_DELAY_SECONDS: &str = "aurora_ws_gateway_fanout_delay_seconds";

pub fn channel_label(channel: Channel) -> &'static str {
    channel.as_str()
}

/// Counts a close with its code.
pub fn count_close(channel: Channel, code: u16) {
    metrics::counter!(CLOSES_TOTAL, "channel" => channel_label(channel), "code" => code.to_string())
        .increment(1);
}
