//! One batch of lines, handled until every line is safely out.
//!
//! A line is out when it is in the dead-letter list (not an event, or too large for NATS),
//! or when JetStream acknowledged it and, for an `alert`, its Alert is on the alerts stream.
//! Only then may the caller forget it (release it from the processing list or its chunk, save the file
//! position). Failures that can pass (NATS or Redis away, an ack timing out) are retried with
//! the shared back-off, republishing only what is not out yet; JetStream's duplicate window
//! and the alerts' idempotency keys make a republished event harmless. A batch is finished
//! during a drain; only the drain deadline (the abort token) makes it give up.

use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use aurora_core::model::Alert;
use aurora_core::ops::Readiness;
use aurora_core::retry::Backoff;
use aurora_core::trace;

use crate::alert::AlertMapping;
use crate::alert_sink::AlertSink;
use crate::dead_letter::DeadLetters;
use crate::event::{event_type, metric_label, parse_line, EveEvent, Rejection};
use crate::health::{NATS, REDIS};
use crate::iocs::Kind;
use crate::publish::{EventPublisher, Published};
use crate::read::LineRead;
use crate::sensors::{self, Sensors, StatsSample};
use crate::sightings::{Finder, Observed, Sightings};
use crate::telemetry::{self, BatchStage, RetryStage};

/// What a handled batch held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub events: usize,
    pub alerts_new: usize,
    pub alerts_duplicate: usize,
    pub dead_letters: usize,
}

/// The batch was given up at the drain deadline; its lines were not forgotten, so they will
/// be handled again.
#[derive(Debug, thiserror::Error)]
#[error("drain deadline passed with a batch unfinished: it stays in the input and is handled at the next start")]
pub struct Interrupted;

/// When an input stops taking lines and when it gives up the lines it holds.
#[derive(Debug, Clone)]
pub struct Stop {
    /// Take nothing more; finish the batches at hand.
    pub shutdown: CancellationToken,
    /// The drain deadline passed: give up the batches at hand (their lines stay held).
    pub abort: CancellationToken,
}

/// Everything a batch needs; cheap to clone.
#[derive(Clone)]
pub struct Processor {
    pub publisher: EventPublisher,
    pub alerts: AlertSink,
    /// IOC sightings; `None`: off.
    pub sightings: Option<Sightings>,
    pub dead_letters: DeadLetters,
    pub mapping: AlertMapping,
    /// Sensor blindness (`stats` events); `None`: off.
    pub sensors: Option<Sensors>,
    pub readiness: Readiness,
}

/// A batch read: its events, the lines that are not, and the sightings found in it.
struct Read {
    pending: Vec<Pending>,
    rejected: Vec<(Rejection, Bytes)>,
    sightings: Vec<(Kind, Alert)>,
}

struct Pending {
    event: EveEvent,
    published: bool,
    alert: Option<Alert>,
    alert_written: bool,
    /// A `stats` event's sample when the sensors are on (`Some(None)`: a stats event that
    /// gave none).
    stats: Option<Option<StatsSample>>,
}

impl Processor {
    /// Handles `lines` (read from `source`, for dead-letter records) until all are out, or
    /// until `abort` (the drain deadline) is cancelled.
    pub async fn handle(
        &self,
        source: &str,
        lines: Vec<Bytes>,
        abort: &CancellationToken,
    ) -> Result<BatchReport, Interrupted> {
        self.handle_with(source, lines, Vec::new(), abort).await
    }

    /// Like [`Processor::handle`], with lines already known to be rejected.
    pub async fn handle_with(
        &self,
        source: &str,
        lines: Vec<Bytes>,
        rejected: Vec<(Rejection, Bytes)>,
        abort: &CancellationToken,
    ) -> Result<BatchReport, Interrupted> {
        // Nothing is forgotten in here: dropping the work at the deadline leaves every line
        // where the input holds it.
        tokio::select! {
            _ = abort.cancelled() => Err(Interrupted),
            handled = self.until_out(source, lines, rejected, abort) => handled,
        }
    }

    async fn until_out(
        &self,
        source: &str,
        lines: Vec<Bytes>,
        rejected: Vec<(Rejection, Bytes)>,
        abort: &CancellationToken,
    ) -> Result<BatchReport, Interrupted> {
        let started = Instant::now();
        let mut report = BatchReport::default();
        let Read {
            mut pending,
            mut rejected,
            sightings,
        } = self.read_off_the_runtime(lines, rejected).await;
        self.write_sightings(&sightings, abort).await?;
        let mut backoff = Backoff::default();
        while self.attempt(&mut pending, &mut rejected, &mut report).await {
            if !backoff.wait(abort).await {
                return Err(Interrupted);
            }
        }
        self.observe_sensors(&pending, abort).await?;
        report.dead_letters = rejected.len();
        // Dead letters last: a too-large event is only known after its publish was refused.
        let mut backoff = Backoff::default();
        while let Err(e) = self.dead_letters.write(source, &rejected).await {
            tracing::warn!(error = %e, "cannot write dead letters: retrying");
            telemetry::retry(RetryStage::DeadLetter);
            if !backoff.wait(abort).await {
                return Err(Interrupted);
            }
        }
        telemetry::batch_time(BatchStage::Handled, started.elapsed());
        Ok(report)
    }

    /// [`Processor::read`] on the blocking pool: reading a batch is a few milliseconds of
    /// CPU without an await, which on a runtime worker would hold back the NATS connection's
    /// task (and so every batch's acks) for as long.
    async fn read_off_the_runtime(
        &self,
        lines: Vec<Bytes>,
        rejected: Vec<(Rejection, Bytes)>,
    ) -> Read {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.read(lines, rejected)).await {
            Ok(read) => read,
            // Reading never panics on any input (see `event::parse_line`); should it, the
            // batch task fails the same way as if it had read inline.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Parses the lines, maps the alerts, reads the `stats` events and finds the IOC
    /// sightings: each line is read once ([`LineRead`]), and only a line that pass cannot
    /// decide is read again by each part's own reader ([`Processor::read_apart`]).
    fn read(&self, lines: Vec<Bytes>, mut rejected: Vec<(Rejection, Bytes)>) -> Read {
        let mut pending: Vec<Pending> = Vec::with_capacity(lines.len());
        let mut finder = self.sightings.as_ref().map(|s| s.watch.finder());
        for line in lines {
            let read = LineRead::scan(&line);
            let Some((read, event_type)) =
                read.and_then(|r| event_type(r.event_type.as_deref()?).map(|t| (r, t)))
            else {
                match self.read_apart(line, finder.as_mut()) {
                    Ok(p) => pending.push(p),
                    Err(rejection) => rejected.push(rejection),
                }
                continue;
            };
            let hash: [u8; 32] = Sha256::digest(&line).into();
            let alert = (event_type == "alert").then(|| self.mapping.alert_of_read(&read, &hash));
            let stats = match &self.sensors {
                Some(sensors) if event_type == "stats" => Some(sensors::sample_of(
                    read.stats(),
                    &hash,
                    sensors.default_sensor(),
                )),
                _ => None,
            };
            if let Some(finder) = finder.as_mut().filter(|f| f.is_active()) {
                finder.look(&read.observed(), &event_type, &hash);
            }
            drop(read);
            pending.push(Pending {
                event: EveEvent {
                    raw: line,
                    event_type,
                    hash,
                },
                published: false,
                alert_written: alert.is_none(),
                alert,
                stats,
            });
        }
        let sightings = finder.map(Finder::found).unwrap_or_default();
        Read {
            pending,
            rejected,
            sightings,
        }
    }

    /// A line read by each part's own reader, as before the one pass: what decides a line
    /// that pass could not (not an object, not JSON, a repeated `event_type`, a string that
    /// is not UTF-8, ...), so that such a line is handled exactly as it always was.
    fn read_apart(
        &self,
        line: Bytes,
        finder: Option<&mut Finder<'_>>,
    ) -> Result<Pending, (Rejection, Bytes)> {
        let event = parse_line(line)?;
        let alert = if event.is_alert() {
            self.mapping.to_alert(&event)
        } else {
            None
        };
        let stats = match &self.sensors {
            Some(sensors) if event.event_type == "stats" => {
                Some(sensors::stats_sample(&event, sensors.default_sensor()))
            }
            _ => None,
        };
        if let Some(finder) = finder.filter(|f| f.is_active()) {
            if let Some(observed) = Observed::scan(&event.raw) {
                finder.look(&observed, &event.event_type, &event.hash);
            }
        }
        Ok(Pending {
            event,
            published: false,
            alert_written: alert.is_none(),
            alert,
            stats,
        })
    }

    /// Feeds the batch's `stats` events (a few in a thousand) to the sensor state, in order;
    /// retried like the alerts, since its alerts are part of what the batch writes.
    async fn observe_sensors(
        &self,
        pending: &[Pending],
        abort: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let Some(sensors) = &self.sensors else {
            return Ok(());
        };
        let stats: Vec<Option<&StatsSample>> = pending
            .iter()
            .filter_map(|p| p.stats.as_ref().map(Option::as_ref))
            .collect();
        if stats.is_empty() {
            return Ok(());
        }
        let mut backoff = Backoff::default();
        while let Err(e) = sensors.observe_samples(&stats).await {
            tracing::warn!(error = %e, "cannot update the sensors' state: retrying");
            telemetry::retry(RetryStage::Sensors);
            self.readiness.set_not_ready(REDIS, e.to_string());
            if !backoff.wait(abort).await {
                return Err(Interrupted);
            }
        }
        Ok(())
    }

    /// One round: publishes what is not published and writes the alerts not written, at the
    /// same time. True when something must be tried again.
    async fn attempt(
        &self,
        pending: &mut [Pending],
        rejected: &mut Vec<(Rejection, Bytes)>,
        report: &mut BatchReport,
    ) -> bool {
        let to_publish: Vec<usize> = (0..pending.len())
            .filter(|i| !pending[*i].published)
            .collect();
        let to_alert: Vec<usize> = (0..pending.len())
            .filter(|i| !pending[*i].alert_written)
            .collect();
        let events: Vec<&EveEvent> = to_publish.iter().map(|i| &pending[*i].event).collect();
        let alerts: Vec<&Alert> = to_alert
            .iter()
            .filter_map(|i| pending[*i].alert.as_ref())
            .collect();
        // One `eve batch` hop (when tracing is on) over both: the JetStream publish hop is its
        // child, and the alerts written carry its context (Suricata to console, one trace).
        let hop = trace::Hop::root(
            None,
            || tracing::info_span!(target: trace::SPAN_TARGET, parent: None, "eve batch", events = events.len(), alerts = alerts.len()),
        );
        let (published, written) = hop
            .scope(async {
                tokio::join!(
                    self.publisher.publish_all(&events),
                    self.alerts.write(&alerts)
                )
            })
            .await;
        let mut failed = false;
        let mut first_error = None;
        // Counted per event type once per round, not with a registry lookup per event.
        let mut by_type: Vec<(&'static str, u64)> = Vec::new();
        let mut duplicates = 0u64;
        for (i, result) in to_publish.iter().zip(published) {
            let item = &mut pending[*i];
            match result {
                Ok(Published::Stored { duplicate }) => {
                    item.published = true;
                    report.events += 1;
                    duplicates += u64::from(duplicate);
                    let label = metric_label(&item.event.event_type);
                    match by_type.iter_mut().find(|(l, _)| *l == label) {
                        Some((_, n)) => *n += 1,
                        None => by_type.push((label, 1)),
                    }
                }
                Ok(Published::TooLarge) => {
                    item.published = true;
                    rejected.push((Rejection::TooLargeForNats, item.event.raw.clone()));
                }
                Err(e) => {
                    failed = true;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        for (label, n) in by_type {
            telemetry::events_stored(label, n);
        }
        if duplicates > 0 {
            telemetry::events_duplicate(duplicates);
        }
        if let Some(error) = first_error {
            tracing::warn!(%error, "JetStream publish failed: retrying what is not stored");
            telemetry::retry(RetryStage::Publish);
            self.readiness.set_not_ready(NATS, error);
        }
        match written {
            Ok(w) => {
                for i in &to_alert {
                    pending[*i].alert_written = true;
                }
                report.alerts_new += w.new;
                report.alerts_duplicate += w.duplicate;
                telemetry::alerts_written(w.new as u64);
                telemetry::alerts_duplicate(w.duplicate as u64);
            }
            Err(e) => {
                failed = true;
                tracing::warn!(error = %e, "cannot write alerts: retrying");
                telemetry::retry(RetryStage::Alerts);
                self.readiness.set_not_ready(REDIS, e.to_string());
            }
        }
        failed
    }

    /// Writes the batch's IOC sighting alerts (each at most once), retried like the alerts.
    async fn write_sightings(
        &self,
        found: &[(Kind, Alert)],
        abort: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let Some(sightings) = &self.sightings else {
            return Ok(());
        };
        if found.is_empty() {
            return Ok(());
        }
        let mut backoff = Backoff::default();
        while let Err(e) = sightings.write(found).await {
            tracing::warn!(error = %e, "cannot write IOC sighting alerts: retrying");
            telemetry::retry(RetryStage::Alerts);
            self.readiness.set_not_ready(REDIS, e.to_string());
            if !backoff.wait(abort).await {
                return Err(Interrupted);
            }
        }
        Ok(())
    }
}
