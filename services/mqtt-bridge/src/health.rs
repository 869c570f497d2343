//! What `/readyz` of the bridge is made of: its readiness parts and the dependencies the one
//! watcher looks at.
//!
//! - `redis`: Redis answers (the watcher), and the uplink's last batch write succeeded (the
//!   writer says so after every write).
//! - `commands`: the commands stream can be read (the watcher; the downlink's consumer marks it
//!   not ready when a batch fails and waits for it before reading the batch again).
//! - `mqtt-uplink`, `mqtt-downlink`: the broker connections, set by the connection tasks on
//!   every CONNACK, SUBACK and lost connection (they are events, not polled).

use std::sync::Arc;
use std::time::Duration;

use aurora_core::bus::Conn;
use aurora_core::health::{Dependencies, Dependency};

/// Redis (the uplink's writes, the downlink's statuses and acks).
pub const REDIS: &str = aurora_core::health::REDIS;
/// The commands stream the downlink reads.
pub const COMMANDS: &str = "commands";
/// The uplink's MQTT 5 connection, subscribed.
pub const MQTT_UPLINK: &str = "mqtt-uplink";
/// The downlink's MQTT connection.
pub const MQTT_DOWNLINK: &str = "mqtt-downlink";
/// The `/readyz` warning of a broker that keeps the bridge's session shorter than asked.
pub const BROKER_SESSION: &str = "broker-session";

/// Every part `/readyz` waits for.
pub const PARTS: [&str; 4] = [REDIS, MQTT_UPLINK, MQTT_DOWNLINK, COMMANDS];

/// How often the watcher looks at the dependencies.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// The dependencies the watcher looks at: Redis, and the commands stream on it.
pub fn dependencies(conn: Conn, commands_stream: &str) -> Dependencies {
    Dependencies::new()
        .with(Dependency::redis(conn.clone()))
        .with(commands(conn, commands_stream))
}

/// The commands stream answers `XLEN` (a missing stream is fine: the reader makes it; a key
/// of another type is not).
fn commands(conn: Conn, stream: &str) -> Dependency {
    let stream: Arc<str> = stream.into();
    Dependency::new(COMMANDS, move || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move {
            redis::cmd("XLEN")
                .arg(&*stream)
                .query_async::<u64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| format!("commands stream {stream}: {e}"))
        }
    })
}
