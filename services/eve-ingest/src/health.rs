//! `/readyz` from the real state of Redis and NATS, checked every few seconds.

use std::time::Duration;

use aurora_core::bus::{self, Conn};
use aurora_core::ops::Readiness;
use tokio_util::sync::CancellationToken;

/// Pings Redis and reads the NATS connection state until `shutdown`.
pub async fn watch(
    mut redis: Conn,
    nats: async_nats::Client,
    readiness: Readiness,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match tokio::time::timeout(Duration::from_secs(2), bus::ping(&mut redis)).await {
            Ok(Ok(())) => readiness.set_ready("redis"),
            Ok(Err(e)) => readiness.set_not_ready("redis", e.to_string()),
            Err(_) => readiness.set_not_ready("redis", "PING timed out"),
        }
        match nats.connection_state() {
            async_nats::connection::State::Connected => readiness.set_ready("nats"),
            other => readiness.set_not_ready("nats", other.to_string()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
