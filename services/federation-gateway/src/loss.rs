//! Time to loss: for each site's consumer on the federation stream, how many seconds until the
//! stream's limits (messages, bytes, age) drop a message that site has not imported, if it
//! imported nothing more from now on; and, once that happened, how many were lost.
//!
//! The oldest message a site has not imported is the one after its consumer's ack floor.
//! Messages arrive at the stream's observed rate (over the last minute of samples, else the
//! average over what the stream holds); the stream drops its oldest when a limit is reached:
//!
//! - messages: after `room + ahead + 1` more arrivals, where `room` is what the stream may still
//!   take before the limit and `ahead` the messages older than the site's oldest unimported one;
//! - bytes: the same in bytes, at the stream's average message size;
//! - age: when that message is `max_age` old.
//!
//! A site that is caught up has the time a message arriving now would have. Loss is counted
//! when the stream's first sequence passed a consumer's oldest unimported message.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// Samples of the stream's last sequence kept for its arrival rate.
const RATE_SAMPLES: usize = 12;

/// What the computation reads of a stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamView {
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub bytes: u64,
    /// Limits, 0 or less: none.
    pub max_messages: i64,
    pub max_bytes: i64,
    pub max_age: Duration,
    /// Unix ms of the first and last message.
    pub first_ms: i64,
    pub last_ms: i64,
}

impl StreamView {
    pub fn of(info: &jetstream::stream::Info) -> Self {
        Self {
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            messages: info.state.messages,
            bytes: info.state.bytes,
            max_messages: info.config.max_messages,
            max_bytes: info.config.max_bytes,
            max_age: info.config.max_age,
            first_ms: (info.state.first_timestamp.unix_timestamp_nanos() / 1_000_000) as i64,
            last_ms: (info.state.last_timestamp.unix_timestamp_nanos() / 1_000_000) as i64,
        }
    }

    /// Messages per second over what the stream holds (0 when it cannot tell).
    pub fn average_rate(&self) -> f64 {
        let span = (self.last_ms - self.first_ms) as f64 / 1000.0;
        if self.messages < 2 || span <= 0.0 {
            return 0.0;
        }
        (self.last_seq.saturating_sub(self.first_seq)) as f64 / span
    }
}

/// Seconds until the stream drops a message not yet imported by a consumer whose oldest
/// unimported message is `next` (`last_seq + 1` or more: caught up), `next_age` old, while
/// messages arrive at `rate` per second. 0 once lost; infinite when nothing bounds it.
pub fn seconds_to_loss(s: &StreamView, next: u64, next_age: Option<Duration>, rate: f64) -> f64 {
    if next < s.first_seq {
        return 0.0;
    }
    let next = next.min(s.last_seq + 1);
    let caught_up = next > s.last_seq;
    // Messages before `next` still in the stream: they go first.
    let ahead = next.saturating_sub(s.first_seq.max(1)) as f64;
    let mut seconds = f64::INFINITY;
    if s.max_messages > 0 && rate > 0.0 {
        let room = (s.max_messages as f64 - s.messages as f64).max(0.0);
        seconds = seconds.min((room + ahead + 1.0) / rate);
    }
    if s.max_bytes > 0 && rate > 0.0 && s.messages > 0 {
        let size = s.bytes as f64 / s.messages as f64;
        let room = (s.max_bytes as f64 - s.bytes as f64).max(0.0);
        seconds = seconds.min((room + (ahead + 1.0) * size) / (rate * size));
    }
    if !s.max_age.is_zero() {
        let age = if caught_up {
            Duration::ZERO
        } else {
            next_age.unwrap_or_default()
        };
        seconds = seconds.min(s.max_age.saturating_sub(age).as_secs_f64());
    }
    seconds.max(0.0)
}

/// Messages the stream dropped before a consumer whose oldest unimported message is `next`
/// imported them.
pub fn lost(s: &StreamView, next: u64) -> u64 {
    s.first_seq.saturating_sub(next)
}

/// The time to loss of every consumer of the federation stream, watched.
#[derive(Debug, Default)]
pub struct LossWatch {
    samples: VecDeque<(Instant, u64)>,
    /// Per consumer, the last stream sequence already counted as lost.
    counted: HashMap<String, u64>,
}

/// One consumer's state, as a watch reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerLoss {
    pub consumer: String,
    pub seconds: f64,
    /// Lost since the last look.
    pub newly_lost: u64,
}

impl LossWatch {
    /// The arrival rate over the samples, else the stream's average.
    fn rate(&mut self, now: Instant, s: &StreamView) -> f64 {
        self.samples.push_back((now, s.last_seq));
        while self.samples.len() > RATE_SAMPLES {
            self.samples.pop_front();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, q0)), Some((t1, q1))) if t1 > t0 && q1 >= q0 => {
                (q1 - q0) as f64 / (*t1 - *t0).as_secs_f64()
            }
            _ => s.average_rate(),
        }
    }

    /// Judges each consumer `(name, oldest unimported sequence, its age)`.
    pub fn observe(
        &mut self,
        now: Instant,
        s: &StreamView,
        consumers: &[(String, u64, Option<Duration>)],
    ) -> Vec<ConsumerLoss> {
        let rate = self.rate(now, s);
        consumers
            .iter()
            .map(|(name, next, age)| {
                let counted = self.counted.entry(name.clone()).or_default();
                let mut newly_lost = 0;
                if *next < s.first_seq {
                    let from = (*next).max(*counted + 1);
                    newly_lost = s.first_seq.saturating_sub(from);
                    *counted = (*counted).max(s.first_seq - 1);
                }
                ConsumerLoss {
                    consumer: name.clone(),
                    seconds: seconds_to_loss(s, *next, *age, rate),
                    newly_lost,
                }
            })
            .collect()
    }
}

/// Reads the stream and its consumers once: the stream view and, per consumer, its oldest
/// unimported sequence and that message's age.
pub async fn read(
    stream: &jetstream::stream::Stream,
) -> Result<(StreamView, Vec<(String, u64, Option<Duration>)>), String> {
    let mut stream = stream.clone();
    let info = stream.info().await.map_err(|e| e.to_string())?;
    let view = StreamView::of(info);
    let infos: Vec<jetstream::consumer::Info> = stream
        .consumers()
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut consumers = Vec::with_capacity(infos.len());
    for c in infos {
        let next = c.ack_floor.stream_sequence + 1;
        let mut age = None;
        if next >= view.first_seq && next <= view.last_seq {
            if let Ok(msg) = stream.get_raw_message(next).await {
                let stored_ms = (msg.time.unix_timestamp_nanos() / 1_000_000) as i64;
                age = Some(Duration::from_millis(
                    now_ms.saturating_sub(stored_ms).max(0) as u64,
                ));
            }
        }
        consumers.push((c.name, next, age));
    }
    Ok((view, consumers))
}

/// Where the losses go in the site's loss ledger (aurora_core::ledger): the site's Redis and
/// the stream's ledger key (`Names::ledger_jetstream`).
#[derive(Clone)]
pub struct LedgerSink {
    pub conn: aurora_core::bus::Conn,
    pub base: String,
}

impl LedgerSink {
    /// Records what the stream dropped before each consumer acknowledged it (each message
    /// once, whoever looks).
    async fn record(&self, view: &StreamView, consumers: &[(String, u64, Option<Duration>)]) {
        for (consumer, next, _) in consumers {
            if let Err(e) = aurora_core::ledger::record_jetstream_dropped(
                &self.conn,
                &self.base,
                consumer,
                *next,
                view.first_seq,
            )
            .await
            {
                tracing::warn!(consumer = %consumer, error = %e, "cannot record a loss in the ledger");
            }
        }
    }
}

/// One look before this site imports: a loss that came while it was away is recorded before
/// its first import moves its consumer past it.
pub async fn record_once(stream: &jetstream::stream::Stream, ledger: &LedgerSink) {
    match read(stream).await {
        Ok((view, consumers)) => ledger.record(&view, &consumers).await,
        Err(e) => tracing::debug!(error = %e, "cannot read the consumers for the ledger"),
    }
}

/// Every `interval`: the time to loss of every site's consumer (a gauge each) and the
/// messages lost (a counter each, and in the site's ledger).
pub async fn watch(
    stream: jetstream::stream::Stream,
    stream_name: String,
    interval: Duration,
    ledger: LedgerSink,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = LossWatch::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (view, consumers) = match read(&stream).await {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the consumers' time to loss");
                continue;
            }
        };
        ledger.record(&view, &consumers).await;
        for c in watch.observe(Instant::now(), &view, &consumers) {
            telemetry::time_to_loss(&stream_name, &c.consumer, c.seconds);
            // Counted from 0 for every site, so an alert sees the first loss as an increase.
            telemetry::messages_lost(&stream_name, &c.consumer, c.newly_lost);
            if c.newly_lost > 0 {
                tracing::error!(consumer = %c.consumer, lost = c.newly_lost, "the federation stream dropped messages this site's consumer had not imported: lost for it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamView {
        StreamView {
            first_seq: 1,
            last_seq: 1_000,
            messages: 1_000,
            bytes: 1_000_000,
            max_messages: 10_000,
            max_bytes: -1,
            max_age: Duration::from_secs(7 * 86_400),
            first_ms: 0,
            last_ms: 100_000,
        }
    }

    #[test]
    fn the_binding_limit_decides() {
        let s = stream();
        assert!((s.average_rate() - 9.99).abs() < 0.01);
        // Caught up at 10/s: 10,001 arrivals.
        assert!((seconds_to_loss(&s, 1_001, None, 10.0) - 1_000.1).abs() < 1e-6);
        // 100 messages behind: 9,000 of room + 100 ahead + 1.
        assert!((seconds_to_loss(&s, 101, None, 10.0) - 910.1).abs() < 1e-6);
        // Nothing arrives: the age limit binds.
        let age = Some(Duration::from_secs(86_400));
        assert_eq!(seconds_to_loss(&s, 101, age, 0.0), 6.0 * 86_400.0);
        // Bytes: 1 kB messages, 2 MB limit: 1,000,000 of room + 101 kB, at 10 kB/s.
        let bytes = StreamView {
            max_bytes: 2_000_000,
            ..s.clone()
        };
        assert!((seconds_to_loss(&bytes, 101, None, 10.0) - 110.1).abs() < 1e-6);
        assert_eq!(seconds_to_loss(&s, 0, None, 10.0), 0.0, "lost already");
        let unbounded = StreamView {
            max_messages: 0,
            max_age: Duration::ZERO,
            ..s
        };
        assert!(seconds_to_loss(&unbounded, 1, None, 10.0).is_infinite());
    }

    #[test]
    fn a_loss_is_counted_once() {
        let mut watch = LossWatch::default();
        let t = Instant::now();
        let mut s = stream();
        let behind = |next| vec![("site-b".to_string(), next, None)];
        assert_eq!(watch.observe(t, &s, &behind(1))[0].newly_lost, 0);
        s.first_seq = 51;
        let seen = watch.observe(t + Duration::from_secs(1), &s, &behind(1));
        assert_eq!(seen[0].newly_lost, 50);
        assert_eq!(seen[0].seconds, 0.0);
        s.first_seq = 61;
        assert_eq!(
            watch.observe(t + Duration::from_secs(2), &s, &behind(1))[0].newly_lost,
            10
        );
        // Caught up past the gap: nothing more.
        assert_eq!(
            watch.observe(t + Duration::from_secs(3), &s, &behind(1_001))[0].newly_lost,
            0
        );
    }
}
