//! Every metric of the bridge, in one place (README.md lists them).

/// Device messages written to their stream, by `type` (telemetry, alerts, attestation).
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
/// Device commands handled, by `outcome` (sent, expired, invalid).
pub const COMMANDS: &str = "aurora_mqtt_bridge_commands_total";
/// Time from reading a command to the broker's PUBACK.
pub const COMMAND_SECONDS: &str = "aurora_mqtt_bridge_command_publish_seconds";
/// Failed reads or writes of the command streams, retried.
pub const COMMAND_ERRORS: &str = "aurora_mqtt_bridge_command_errors_total";
