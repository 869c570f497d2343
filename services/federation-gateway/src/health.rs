//! What `/readyz` and the lag metrics say: NATS connected at start-up ([`nats_at_start`]),
//! Redis and NATS reachable ([`dependencies`]), and
//! how far this site's consumer is behind the federation stream ([`watch_lag`]). The stream
//! drops its oldest messages past its limits (count and age), so a site far enough behind
//! loses messages: warn before that.

use std::time::Duration;

use async_nats::jetstream;
use aurora_core::bus::Conn;
use aurora_core::health::{Dependencies, Dependency, NATS};
use aurora_core::ops::Readiness;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// The `/readyz` warning of a consumer falling behind.
pub const LAG: &str = "consumer_lag";

/// How often Redis and NATS are looked at.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The gateway's dependencies: the site's Redis and NATS (whose state is also the
/// `aurora_federation_gateway_connected` gauge). Watched by one
/// [`Dependencies::watch`]; an exporter whose read failed waits on them too.
pub fn dependencies(redis: Conn, nats: async_nats::Client) -> Dependencies {
    let nats = Dependency::nats(nats);
    Dependencies::new()
        .with(Dependency::redis(redis))
        .with(Dependency::new(NATS, move || {
            let nats = nats.clone();
            async move {
                let state = nats.check().await;
                telemetry::connected(state.is_ok());
                state
            }
        }))
}

pub use aurora_core::health::{nats_at_start, shown_urls};

/// The numbers a lag check reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LagSnapshot {
    /// Messages not yet delivered to this site.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    pub max_messages: i64,
    pub max_age: Duration,
    /// Age of the oldest message this site has not acknowledged.
    pub oldest_unacked_age: Option<Duration>,
    /// Messages the stream dropped before this site acknowledged them.
    pub dropped: u64,
}

/// The warning a snapshot calls for, if any.
pub fn lag_warning(s: &LagSnapshot, ratio: f64) -> Option<String> {
    let behind = s.pending + s.ack_pending;
    let mut reasons = Vec::new();
    if s.dropped > 0 {
        reasons.push(format!(
            "the stream already dropped {} messages this site had not imported",
            s.dropped
        ));
    }
    if s.max_messages > 0 && behind as f64 >= ratio * s.max_messages as f64 {
        reasons.push(format!(
            "{behind} messages behind, the stream keeps at most {}",
            s.max_messages
        ));
    }
    if let Some(age) = s.oldest_unacked_age {
        if !s.max_age.is_zero() && age.as_secs_f64() >= ratio * s.max_age.as_secs_f64() {
            reasons.push(format!(
                "oldest unimported message is {}s old, the stream keeps {}s",
                age.as_secs(),
                s.max_age.as_secs()
            ));
        }
    }
    if reasons.is_empty() {
        None
    } else {
        Some(format!(
            "site falling behind, messages may be lost: {}",
            reasons.join("; ")
        ))
    }
}

/// Reads the consumer's lag now.
pub async fn snapshot(
    stream: &jetstream::stream::Stream,
    consumer_name: &str,
) -> Result<LagSnapshot, String> {
    let info = stream.get_info().await.map_err(|e| e.to_string())?;
    let consumer = stream
        .consumer_info(consumer_name)
        .await
        .map_err(|e| e.to_string())?;
    let next_unacked = consumer.ack_floor.stream_sequence + 1;
    let dropped = if consumer.num_pending + consumer.num_ack_pending as u64 > 0 {
        info.state.first_sequence.saturating_sub(next_unacked)
    } else {
        0
    };
    let mut oldest_unacked_age = None;
    if consumer.num_pending + consumer.num_ack_pending as u64 > 0 {
        let seq = next_unacked.max(info.state.first_sequence);
        if let Ok(msg) = stream.get_raw_message(seq).await {
            let now = chrono::Utc::now().timestamp();
            let age = now.saturating_sub(msg.time.unix_timestamp()).max(0) as u64;
            oldest_unacked_age = Some(Duration::from_secs(age));
        }
    }
    Ok(LagSnapshot {
        pending: consumer.num_pending,
        ack_pending: consumer.num_ack_pending as u64,
        max_messages: info.config.max_messages,
        max_age: info.config.max_age,
        oldest_unacked_age,
        dropped,
    })
}

/// Measures the lag every `interval`: metrics, log and `/readyz` warning.
pub async fn watch_lag(
    stream: jetstream::stream::Stream,
    stream_name: String,
    consumer_name: String,
    readiness: Readiness,
    interval: Duration,
    ratio: f64,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snap = match snapshot(&stream, &consumer_name).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the consumer's lag");
                continue;
            }
        };
        telemetry::consumer_state(&stream_name, &consumer_name, snap.pending, snap.ack_pending);
        telemetry::stream_dropped(&stream_name, &consumer_name, snap.dropped);
        let warning = lag_warning(&snap, ratio);
        match &warning {
            Some(w) => tracing::warn!(consumer = %consumer_name, pending = snap.pending, "{w}"),
            None if warned => tracing::info!(consumer = %consumer_name, "consumer caught up"),
            None => {}
        }
        warned = warning.is_some();
        readiness.warn(LAG, warning);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_near_the_limits_only() {
        let base = LagSnapshot {
            pending: 10,
            max_messages: 100_000,
            max_age: Duration::from_secs(7 * 86_400),
            oldest_unacked_age: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        assert_eq!(lag_warning(&base, 0.8), None);
        let many = LagSnapshot {
            pending: 79_000,
            ack_pending: 1_000,
            ..base.clone()
        };
        assert!(lag_warning(&many, 0.8)
            .unwrap_or_default()
            .contains("80000 messages behind"));
        let old = LagSnapshot {
            oldest_unacked_age: Some(Duration::from_secs(6 * 86_400)),
            ..base.clone()
        };
        assert!(lag_warning(&old, 0.8).is_some());
        let lost = LagSnapshot { dropped: 5, ..base };
        assert!(lag_warning(&lost, 0.8)
            .unwrap_or_default()
            .contains("dropped 5"));
    }
}
