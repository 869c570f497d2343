//! Export: one local stream to its JetStream subject.
//!
//! A reader takes entries through the consumer group `federation-gateway` (the shared
//! [`Consumer`] loop: a failed read waits until Redis and NATS answer, then reads again),
//! applies the [`Policy`](crate::policy::Policy) and publishes what may leave with a
//! deterministic `Nats-Msg-Id` and the origin site. Publishes are pipelined: up to `window`
//! acks are outstanding. A collector (a task of its own) awaits the acks in order (publishing
//! again when one fails) and XACKs entries only once JetStream has stored them, in batches.
//! An entry stays "in flight" from its publish to its XACK; a re-read of it (own pending
//! entries after a restart, a takeover) is skipped meanwhile instead of being published twice.
//!
//! The publish timeout counts from the publish, not from when the collector gets to the ack:
//! acks lost with a connection (a NATS restart) then all run out together, instead of one
//! after the other, each a full timeout after the previous one, while the window stays full.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, publish::PublishAck};
use aurora_core::bus::{self, Entry, GroupAcker, GroupConfig, GroupReader, Producer};
use aurora_core::consumer::{BatchHandler, Consumer};
use aurora_core::health::Dependencies;
use aurora_core::names::{FederatedKind, Names};
use aurora_core::ops::Readiness;
use aurora_core::trace::{self, TraceContext};
use bytes::Bytes;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::{ExportError, ReadError};
use crate::landing::{Lander, Landing};
use crate::policy::{Decision, Policy, ORIGIN_SITE_HEADER};
use crate::signing::{
    self, Seal, SiteKey, KEY_ID_HEADER, PROOF_HEADER, SIGNATURE_HEADER, SIGNED_AT_HEADER,
};
use crate::telemetry::{self, Direction};
use crate::{retry, SERVICE};

/// The consumer group of every exporter on every local stream.
pub const GROUP: &str = SERVICE;

/// A batch's seal is used for a first publish within this many ms of its signing; later,
/// the message is sealed anew.
const SEAL_FRESH_MS: i64 = 10_000;

/// XACK at least every this many settled entries while busy.
const FLUSH_AT: usize = 128;

/// How the exporters read and publish.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// The site's Redis (each reader blocks on a connection of its own).
    pub redis_url: String,
    /// This replica's consumer name in the group.
    pub consumer: String,
    pub window: usize,
    pub batch: usize,
    pub claim_idle: Duration,
    pub max_deliveries: u64,
    /// How long after a publish its ack may take before the message is published again.
    pub publish_timeout: Duration,
    /// Signs every publish when set.
    pub signing_key: Option<SiteKey>,
    /// Records the revisions published in the site's revision state.
    pub lander: Lander,
}

/// An entry between its read and its XACK.
struct InFlight {
    entry_id: String,
    /// The entry, for a dead letter should JetStream refuse what was made of it.
    entry: Option<Entry>,
    _permit: OwnedSemaphorePermit,
    /// `None` when the policy withheld it: only the XACK is left to do.
    publish: Option<Outgoing>,
}

struct Outgoing {
    msg_id: String,
    payload: Bytes,
    ack: PublishAckFuture,
    /// The first publish (for the latency metric).
    sent: Instant,
    /// The context its headers carry (again on a publish again).
    trace: Option<TraceContext>,
}

/// What the publisher and the collector share.
#[derive(Clone)]
struct Shared {
    kind: FederatedKind,
    subject: String,
    site_id: String,
    js: jetstream::Context,
    publish_timeout: Duration,
    key: Option<Arc<SiteKey>>,
    in_flight: Arc<Mutex<HashSet<String>>>,
    progress: Arc<Notify>,
    abort: CancellationToken,
}

impl Shared {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Nothing panics while holding it; a poisoned set is still a valid set.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seals the messages of a batch with one signature (in order; `None` each when the site
    /// has no key).
    fn seal(&self, messages: &[(&str, &[u8])]) -> Vec<Option<Seal>> {
        let Some(key) = &self.key else {
            return vec![None; messages.len()];
        };
        let leaves: Vec<[u8; 32]> = messages
            .iter()
            .map(|(msg_id, payload)| signing::leaf(&self.subject, msg_id, &self.site_id, payload))
            .collect();
        let signed_at_ms = chrono::Utc::now().timestamp_millis();
        key.seal(&self.site_id, signed_at_ms, &leaves)
            .into_iter()
            .map(Some)
            .collect()
    }

    /// Publishes with `seal`; without one (a publish again), sealed alone now: the signing
    /// instant is what tells a replay.
    async fn send(
        &self,
        msg_id: &str,
        payload: Bytes,
        seal: Option<Seal>,
        trace: Option<&TraceContext>,
    ) -> Result<PublishAckFuture, PublishError> {
        let mut publish = PublishMessage::build()
            .message_id(msg_id)
            .header(ORIGIN_SITE_HEADER, self.site_id.as_str());
        if let Some(trace) = trace {
            publish = publish.header(trace::TRACEPARENT_FIELD, trace.traceparent.as_str());
            if let Some(state) = &trace.tracestate {
                publish = publish.header(trace::TRACESTATE_FIELD, state.as_str());
            }
        }
        let seal = seal.or_else(|| self.seal(&[(msg_id, &payload)]).pop().flatten());
        if let Some(seal) = seal {
            publish = publish
                .header(KEY_ID_HEADER, seal.key_id.as_str())
                .header(SIGNED_AT_HEADER, seal.signed_at_ms.to_string().as_str())
                .header(SIGNATURE_HEADER, seal.signature.as_str());
            if !seal.proof.is_empty() {
                publish = publish.header(PROOF_HEADER, seal.proof.as_str());
            }
        }
        self.js
            .send_publish(self.subject.clone(), publish.payload(payload))
            .await
    }
}

/// Exports one local stream.
pub struct Exporter {
    shared: Shared,
    reader: GroupReader,
    policy: Arc<Policy>,
    lander: Lander,
    window: usize,
}

impl Exporter {
    pub async fn new(
        kind: FederatedKind,
        names: &Names,
        producer: Producer,
        js: jetstream::Context,
        policy: Arc<Policy>,
        settings: &ExportSettings,
        abort: CancellationToken,
    ) -> Result<Self, ExportError> {
        let stream = names.federated_stream(kind);
        let err = |source| ExportError {
            stream: stream.clone(),
            source,
        };
        let mut cfg = GroupConfig::new(
            &stream,
            GROUP,
            &settings.consumer,
            &names.federation_deadletter(),
            SERVICE,
        );
        cfg.batch = settings.batch;
        cfg.claim_idle = settings.claim_idle;
        cfg.max_deliveries = settings.max_deliveries;
        let read_conn = bus::connect_blocking(&settings.redis_url, cfg.block)
            .await
            .map_err(err)?;
        let reader = GroupReader::new(cfg, read_conn, producer)
            .await
            .map_err(err)?;
        Ok(Self {
            shared: Shared {
                kind,
                subject: names.nats_subject(kind),
                site_id: policy.site_id().to_string(),
                js,
                publish_timeout: settings.publish_timeout,
                key: settings.signing_key.clone().map(Arc::new),
                in_flight: Arc::default(),
                progress: Arc::default(),
                abort,
            },
            reader,
            policy,
            lander: settings.lander.clone(),
            window: settings.window,
        })
    }

    /// The exporter's two tasks. The first reads until `shutdown` and publishes what may
    /// leave; the second settles what was published, in order, and XACKs it. Once the first
    /// returns, the second settles what is in flight and returns too (or gives up on `abort`).
    pub fn into_tasks(
        self,
        dependencies: Dependencies,
        readiness: Readiness,
        shutdown: CancellationToken,
    ) -> (
        impl Future<Output = ()> + Send + 'static,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let Self {
            shared,
            reader,
            policy,
            lander,
            window,
        } = self;
        let (tx, rx) = mpsc::channel(window);
        // XACKs through the shared connection, not the reader's blocking one.
        let collecting = collect(rx, reader.acker(), shared.clone());
        tracing::info!(stream = %reader.config().stream, subject = %shared.subject, "exporting");
        let consumer = Consumer {
            reader,
            handler: Publisher {
                shared,
                policy,
                lander,
                window: Arc::new(Semaphore::new(window)),
                tx,
            },
            dependencies,
            readiness,
        };
        // The publisher's end of the channel goes with the consumer: the collector sees the
        // channel close when the reading stops.
        (consumer.run(shutdown), collecting)
    }
}

/// Judges and publishes the entries the reader hands out.
struct Publisher {
    shared: Shared,
    policy: Arc<Policy>,
    lander: Lander,
    window: Arc<Semaphore>,
    tx: mpsc::Sender<InFlight>,
}

impl BatchHandler for Publisher {
    type Error = ReadError;

    fn part(&self) -> &'static str {
        "export"
    }

    async fn handle(&self, reader: &GroupReader, entries: Vec<Entry>) -> Result<(), ReadError> {
        let read = entries.len();
        let decided: Vec<(Entry, Decision)> = {
            let in_flight = self.shared.in_flight();
            entries
                .into_iter()
                .filter(|entry| !in_flight.contains(&entry.id))
                .map(|entry| {
                    let data = entry.data.as_deref().unwrap_or_default();
                    let decision = self.policy.decide(self.shared.kind, data);
                    (entry, decision)
                })
                .collect()
        };
        let fresh = decided.len();
        self.record(&decided).await?;
        let mut seals = self.seal(&decided).into_iter();
        for (entry, decision) in decided {
            if self.shared.abort.is_cancelled() {
                return Ok(());
            }
            let seal = match decision {
                Decision::Export { .. } => seals.next().flatten(),
                _ => None,
            };
            let Some(item) = self.prepare(reader, entry, decision, seal).await else {
                continue;
            };
            if self.tx.send(item).await.is_err() {
                return Ok(()); // the collector gave up (abort)
            }
        }
        if read > 0 && fresh == 0 {
            // Everything read is still in flight: wait for acks rather than spin.
            let _ =
                tokio::time::timeout(Duration::from_millis(200), self.shared.progress.notified())
                    .await;
        }
        Ok(())
    }
}

impl Publisher {
    /// Records the changes about to leave in the site's revision state, so that an older
    /// revision of the same document arriving later is not applied over them. A document's
    /// first form needs no record: every other revision of it is newer.
    async fn record(&self, decided: &[(Entry, Decision)]) -> Result<(), ReadError> {
        let revisions: Vec<Landing> = decided
            .iter()
            .filter_map(|(_, decision)| match decision {
                Decision::Export {
                    doc,
                    stamp,
                    change: true,
                    ..
                } => Some(Landing {
                    kind: self.shared.kind,
                    doc: doc.clone(),
                    stamp: stamp.clone(),
                    data: Vec::new(),
                    trace: None,
                }),
                _ => None,
            })
            .collect();
        self.lander
            .record(&revisions)
            .await
            .map(drop)
            .map_err(|e| ReadError(e.source))
    }

    /// One signature for what leaves of the batch: a seal per exported entry, in order.
    fn seal(&self, decided: &[(Entry, Decision)]) -> Vec<Option<Seal>> {
        let messages: Vec<(&str, &[u8])> = decided
            .iter()
            .filter_map(|(_, decision)| match decision {
                Decision::Export {
                    msg_id, payload, ..
                } => Some((msg_id.as_str(), &payload[..])),
                _ => None,
            })
            .collect();
        self.shared.seal(&messages)
    }

    /// Acts on the decision about one entry; publishes it (with its batch's `seal`) when it
    /// may leave. `None` when there is nothing left to do with it (dead-lettered) or when told
    /// to give up.
    async fn prepare(
        &self,
        reader: &GroupReader,
        entry: Entry,
        decision: Decision,
        mut seal: Option<Seal>,
    ) -> Option<InFlight> {
        let kind = self.shared.kind;
        let (payload, msg_id) = match decision {
            Decision::Reject(reason) => {
                reject(reader, &entry, &reason).await;
                return None;
            }
            Decision::Withhold(why) => {
                telemetry::withheld(kind, why.as_str());
                let permit = self.window.clone().acquire_owned().await.ok()?;
                self.shared.in_flight().insert(entry.id.clone());
                return Some(InFlight {
                    entry_id: entry.id,
                    entry: None,
                    _permit: permit,
                    publish: None,
                });
            }
            Decision::Export {
                payload,
                msg_id,
                iocs_withheld,
                ..
            } => {
                if iocs_withheld > 0 {
                    telemetry::iocs_withheld(iocs_withheld);
                }
                (payload, msg_id)
            }
        };
        let permit = self.window.clone().acquire_owned().await.ok()?;
        // The `<subject> publish` hop; its context goes in the message's headers. Its parent
        // is the entry's `process` hop when the consumer handles the entry alone (the hop
        // this runs in), else the entry's own context.
        let current = TraceContext::current();
        let parent = current.as_ref().or(entry.trace.as_ref());
        let hop = trace::message_hop("nats", &self.shared.subject, "publish", "producer", parent);
        let context = hop.context().cloned();
        let mut backoff = retry();
        let ack = loop {
            // The batch's seal on the first try, unless the window held the entry long enough
            // for its signing instant to look like a replay's; a try again is sealed anew.
            let now_ms = chrono::Utc::now().timestamp_millis();
            let fresh = seal
                .take()
                .filter(|s| now_ms - s.signed_at_ms < SEAL_FRESH_MS);
            match self
                .shared
                .send(&msg_id, payload.clone(), fresh, context.as_ref())
                .await
            {
                Ok(ack) => break ack,
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    reject(reader, &entry, &format!("too large for NATS: {e}")).await;
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, subject = %self.shared.subject, "publish failed; retrying");
                    telemetry::publish_retry();
                    if !backoff.wait(&self.shared.abort).await {
                        return None;
                    }
                }
            }
        };
        self.shared.in_flight().insert(entry.id.clone());
        Some(InFlight {
            entry_id: entry.id.clone(),
            entry: Some(entry),
            _permit: permit,
            publish: Some(Outgoing {
                msg_id,
                payload,
                ack,
                sent: Instant::now(),
                trace: context,
            }),
        })
    }
}

/// Dead-letters an entry that cannot be exported; left pending (and retried) when even that
/// fails.
async fn reject(reader: &GroupReader, entry: &Entry, reason: &str) {
    telemetry::dead_letter(Direction::Export, "invalid_document");
    if let Err(e) = reader.dead_letter(entry, reason).await {
        tracing::error!(error = %e, entry = %entry.id, "cannot dead-letter; the entry stays pending");
    }
}

/// Settles in-flight entries in order and XACKs them in batches.
async fn collect(mut rx: mpsc::Receiver<InFlight>, acker: GroupAcker, shared: Shared) {
    let mut settled: Vec<InFlight> = Vec::new();
    loop {
        let next = if settled.is_empty() {
            rx.recv().await
        } else {
            match rx.try_recv() {
                Ok(item) => Some(item),
                Err(TryRecvError::Empty) => {
                    if !flush(&acker, &shared, &mut settled).await {
                        return;
                    }
                    continue;
                }
                Err(TryRecvError::Disconnected) => None,
            }
        };
        let Some(mut item) = next else { break };
        if let Some(out) = item.publish.take() {
            match settle(&shared, out).await {
                Settled::Stored => {}
                Settled::GaveUp => return,
                Settled::Refused(reason) => {
                    // Refused for what it is (one message): dead-lettered alone, the others
                    // go on. The dead letter acknowledges it; only the in-flight mark is left.
                    if let Some(entry) = item.entry.take() {
                        telemetry::dead_letter(Direction::Export, "refused_by_jetstream");
                        while let Err(e) = acker.dead_letter(&entry, &reason).await {
                            tracing::warn!(error = %e, entry = %entry.id, "cannot dead-letter yet");
                            if !retry().wait(&shared.abort).await {
                                return;
                            }
                        }
                    }
                    shared.in_flight().remove(&item.entry_id);
                    shared.progress.notify_waiters();
                    continue;
                }
            }
        }
        settled.push(item);
        if settled.len() >= FLUSH_AT && !flush(&acker, &shared, &mut settled).await {
            return;
        }
    }
    flush(&acker, &shared, &mut settled).await;
}

/// How a publish ended.
enum Settled {
    Stored,
    /// JetStream refused this message for what it is (too large for the stream, a header it
    /// does not take): publishing it again would be refused again.
    Refused(String),
    /// Told to give up first.
    GaveUp,
}

/// The reason when `e` is JetStream refusing one message for what it is, `None` when it is
/// worth publishing again (no ack, no stream, connection gone).
fn refusal(e: &PublishError) -> Option<String> {
    use async_nats::jetstream::ErrorCode;
    if e.kind() != PublishErrorKind::Other {
        return None;
    }
    let api = std::error::Error::source(e)?.downcast_ref::<async_nats::jetstream::Error>()?;
    let per_message = [
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
        ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
        ErrorCode::MESSAGE_TTL_INVALID,
    ];
    per_message
        .contains(&api.error_code())
        .then(|| format!("refused by JetStream: {api}"))
}

/// Waits until JetStream stored the message, publishing it again when no ack came within
/// the publish timeout of its publish, or when the publish failed.
async fn settle(shared: &Shared, out: Outgoing) -> Settled {
    let Outgoing {
        msg_id,
        payload,
        mut ack,
        sent,
        trace,
    } = out;
    let mut published = sent;
    let mut backoff = retry();
    loop {
        // The ack future's own timeout starts when it is first polled, and the collector gets
        // to it only after the acks before it: bound the wait from the publish instead.
        let deadline = tokio::time::Instant::from_std(published + shared.publish_timeout);
        let result: Result<PublishAck, PublishError> = tokio::select! {
            _ = shared.abort.cancelled() => return Settled::GaveUp,
            r = tokio::time::timeout_at(deadline, ack) => {
                r.unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut)))
            }
        };
        let timed_out = match result {
            Ok(stored) => {
                if stored.duplicate {
                    telemetry::duplicates(Direction::Export, 1);
                } else {
                    telemetry::messages(Direction::Export, shared.kind, 1);
                }
                telemetry::publish_latency(sent.elapsed());
                return Settled::Stored;
            }
            Err(e) => {
                if let Some(reason) = refusal(&e) {
                    return Settled::Refused(reason);
                }
                tracing::warn!(error = %e, msg_id = %msg_id, "no JetStream ack; publishing again");
                telemetry::publish_retry();
                e.kind() == PublishErrorKind::TimedOut
            }
        };
        // After a timeout the publish timeout was the wait: publish again at once (its
        // message id makes a copy JetStream already stored a duplicate). A quick failure
        // (no stream, connection gone) backs off first.
        let mut wait = !timed_out;
        ack = loop {
            if wait && !backoff.wait(&shared.abort).await {
                return Settled::GaveUp;
            }
            wait = true;
            match shared
                .send(&msg_id, payload.clone(), None, trace.as_ref())
                .await
            {
                Ok(ack) => break ack,
                Err(e) => {
                    tracing::warn!(error = %e, msg_id = %msg_id, "publish failed; retrying")
                }
            }
        };
        published = Instant::now();
    }
}

/// XACKs settled entries; retries until Redis takes it. `false` when told to give up.
async fn flush(acker: &GroupAcker, shared: &Shared, settled: &mut Vec<InFlight>) -> bool {
    if settled.is_empty() {
        return true;
    }
    let ids: Vec<&str> = settled.iter().map(|i| i.entry_id.as_str()).collect();
    let mut backoff = retry();
    while let Err(e) = acker.ack(&ids).await {
        tracing::warn!(error = %e, "XACK failed; retrying");
        if !backoff.wait(&shared.abort).await {
            return false;
        }
    }
    {
        let mut in_flight = shared.in_flight();
        for item in settled.iter() {
            in_flight.remove(&item.entry_id);
        }
    }
    settled.clear(); // releases the window permits
    shared.progress.notify_waiters();
    true
}
