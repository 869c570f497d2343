//! Fan-out: one reader per stream on each replica (XREAD, no consumer group, so every replica
//! sees every entry) turns each entry into one [`Frame`], serialised once, and hands that same
//! frame to every client of the channel through a bounded broadcast. The reader never waits
//! for a client: a client that falls `capacity` frames behind finds out on its own side
//! (`Lagged`) and is closed; the others go on.
//!
//! This is not the shared group consumer (`aurora_core::consumer`): nothing is acknowledged,
//! every replica reads everything, and a reader resumes after the last entry it handed out.
//! Its retry waits through the shared back-off and the dependency check.

use std::sync::Arc;
use std::time::Duration;

use aurora_core::bus::{self, BusError, Entry};
use aurora_core::health::Dependencies;
use aurora_core::names::Channel;
use aurora_core::ops::Readiness;
use aurora_core::retry::Backoff;
use aurora_core::trace;
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::approvals::ApprovalStore;
use crate::frame::Frame;
use crate::{health, telemetry};

/// Entries read per XREAD.
const READ_BATCH: usize = 512;
/// How long one XREAD blocks when there is nothing new.
const READ_BLOCK: Duration = Duration::from_secs(1);

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
            deliveries: telemetry::deliveries(channel),
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

/// The reader of one channel's stream.
pub struct Reader {
    pub hub: Hub,
    /// Each reader has a connection of its own (its XREAD blocks).
    pub redis_url: String,
    pub readiness: Readiness,
    /// Waited for after a failed read, before reconnecting.
    pub dependencies: Dependencies,
    /// The approvals channel's reader registers pending approvals before clients see them.
    pub approvals: Option<ApprovalStore>,
    /// Pause after a read that found entries (`--fanout-linger`).
    pub linger: Duration,
}

impl Reader {
    /// Reads the hub's stream from its newest entry on and fans every entry out, until
    /// `stop`. A failed read makes the channel unready, backs off, waits until Redis answers,
    /// and reconnects; the reader resumes after the last entry it handed out, so a Redis
    /// outage loses nothing.
    pub async fn run(self, stop: CancellationToken) {
        let channel = self.hub.channel;
        let part = health::stream_part(channel);
        self.readiness.register(&part);
        let mut last: Option<String> = None;
        let mut backoff = Backoff::default();
        loop {
            let read = tokio::select! {
                _ = stop.cancelled() => return,
                read = self.read(&part, &mut last, &mut backoff) => read,
            };
            let Err(error) = read;
            telemetry::read_error(channel);
            self.readiness.set_not_ready(&part, error.to_string());
            tracing::warn!(channel = channel.as_str(), error = %error, "stream reader failed: retrying");
            if !backoff.wait(&stop).await
                || !self.dependencies.wait_up(&self.readiness, &stop).await
            {
                return;
            }
        }
    }

    /// Connects, catches up, and reads until a read fails.
    async fn read(
        &self,
        part: &str,
        last: &mut Option<String>,
        backoff: &mut Backoff,
    ) -> Result<std::convert::Infallible, BusError> {
        let hub = &self.hub;
        let mut conn = bus::connect_blocking(&self.redis_url, READ_BLOCK).await?;
        let after = match last.clone() {
            Some(id) => id,
            None => bus::last_id(&mut conn, &hub.stream).await?,
        };
        if let Some(store) = &self.approvals {
            store.catch_up(&mut conn, &after).await?;
        }
        *last = Some(after);
        self.readiness.set_ready(part);
        backoff.reset();
        loop {
            let from = last.clone().unwrap_or_else(|| "0-0".to_string());
            let entries = bus::tail(
                &mut conn,
                &[(hub.stream.clone(), from)],
                READ_BATCH,
                Some(READ_BLOCK),
            )
            .await?;
            self.readiness.set_ready(part);
            let Some(newest) = entries.last().map(|e| e.id.clone()) else {
                continue;
            };
            if let Some(store) = &self.approvals {
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
            if !self.linger.is_zero() && entries.len() < READ_BATCH {
                tokio::time::sleep(self.linger).await;
            }
        }
    }
}

/// Sends an entry to every client of the hub, inside a `<stream> process` hop (the child of
/// the entry's context, when tracing is on) whose context the frame offers the console.
fn fan_out(hub: &Hub, entry: &Entry) {
    let hop = trace::message_hop(
        "redis",
        &hub.stream,
        "process",
        "consumer",
        entry.trace.as_ref(),
    );
    let span = hop.span();
    let _entered = span.enter();
    // The console is offered a context only to link its own spans to a recorded trace: an
    // unsampled one would add its bytes to every frame to every client, for nothing.
    match Frame::traced(entry, hop.context().filter(|c| c.sampled())) {
        Ok(frame) => {
            let delay = fanout_delay(frame.position.0);
            hub.publish(frame);
            telemetry::fanned_out(hub.channel, delay);
        }
        Err(e) => {
            // The entry stays in its stream (nothing is consumed here); it is counted and
            // logged, and clients are not sent something they cannot parse.
            telemetry::invalid_entry(hub.channel);
            tracing::warn!(channel = hub.channel.as_str(), stream = %hub.stream, error = %e, "skipped an entry clients cannot read");
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
    use crate::frame::tests::entry;

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
