//! Devices to the bus.
//!
//! One task keeps the MQTT connection polled and hands each publish to a bounded queue; the
//! writer takes what is queued (up to `batch_size`), checks every message, writes the
//! documents, `device.seen` records and dead letters in ONE pipelined round trip, and only then
//! acknowledges every publish of the batch, in order. When Redis fails the writer retries the
//! same batch with backoff and acknowledges nothing: the queue fills, the connection task stops
//! polling, and the broker keeps the rest for the persistent session. Nothing is acknowledged
//! before it is written; a crash at any point means redelivery, never loss.
//!
//! A session is handed back rather than left behind: at shutdown (or at once, for a gone
//! replica's session taken over by [`crate::replicas`]) the connection unsubscribes, goes on
//! writing and acknowledging what the broker still delivers until the session is quiet, then
//! ends the session (see [`Uplink::tasks`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aurora_core::bus::Producer;
use aurora_core::model::{to_bytes, DeadLetter};
use aurora_core::names::DeviceTopicKind;
use aurora_core::ops::Readiness;
use aurora_core::retry::Backoff;
use aurora_core::trace::{self, TraceContext};
use aurora_core::Names;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Filter, Packet, Publish, RetainForwardRule, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::acks::AckQueue;
use crate::decode::{decode, DeviceDoc};
use crate::health::{BROKER_SESSION, MQTT_UPLINK, REDIS};
use crate::link::{Link, LinkError, LinkOptions};
use crate::seen::SeenTracker;
use crate::telemetry::{self as t, BrokerLink};
use crate::SERVICE;

/// How the uplink runs.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// `$share/<group>/...`: replicas with the same group split the traffic.
    pub share_group: String,
    pub max_payload: usize,
    pub batch_size: usize,
    /// How long to wait for more messages once the queue is empty (0: write what is there).
    pub batch_linger: Duration,
    /// Messages received and not yet written.
    pub queue_capacity: usize,
    pub seen_capacity: usize,
    pub seen_interval: Duration,
}

/// A publish and the connection it came on (acks only make sense on that connection).
struct Received {
    publish: Publish,
    epoch: u64,
}

/// Whose broker session an uplink serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This replica's own: subscribed until `leave`, then handed back; reconnects when the
    /// connection is lost.
    Own,
    /// A gone replica's, taken over with its client id: handed back at once, on one
    /// connection (a lost connection ends the adoption; the session is kept for the next).
    Adopted,
}

impl Role {
    fn link(self) -> BrokerLink {
        match self {
            Self::Own => BrokerLink::Uplink,
            Self::Adopted => BrokerLink::Adoption,
        }
    }
}

/// How an uplink's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Unsubscribed, everything the broker still delivered for the session written and
    /// acknowledged until it was quiet, then the session ended (DISCONNECT with session
    /// expiry 0): the broker holds nothing more for this client id.
    HandedBack,
    /// Stopped with the session kept (the drain deadline, a writer that ended, an adoption's
    /// lost connection or deadline): what is unacknowledged stays in it, delivered again to
    /// whoever connects with its client id next.
    Kept,
    /// Another connection took the session over (for an adoption: the replica came back).
    TakenOver,
}

/// How long a leaving session must be quiet (unsubscribed, nothing unacknowledged, nothing
/// delivered) before it is ended. The broker sends what it queued for the session as soon as
/// the in-flight window has room, so a quiet second means nothing is left.
pub const QUIET: Duration = Duration::from_secs(1);

/// The uplink, ready to run.
pub struct Uplink {
    pub cfg: UplinkConfig,
    /// The connection; its client id is stable per replica, so the broker keeps the session
    /// (and queues for it) under this id.
    pub link: LinkOptions,
    pub names: Names,
    pub producer: Producer,
    pub readiness: Readiness,
}

impl Uplink {
    /// The two tasks of the uplink: the connection (reads publishes, writes the acks) and
    /// the writer.
    ///
    /// Once `leave` is cancelled (at once for [`Role::Adopted`], at shutdown for
    /// [`Role::Own`]) the session is handed back: UNSUBSCRIBE (the broker assigns it nothing
    /// new), then what the broker still delivers for it is written and acknowledged as
    /// always, until it is [`QUIET`]; then DISCONNECT ending the session
    /// ([`Ended::HandedBack`]). At `abort` (the drain deadline) the writer gives up and the
    /// connection closes keeping the session ([`Ended::Kept`]): what is unacknowledged is
    /// delivered again to whoever takes the session next.
    pub fn tasks(
        self,
        role: Role,
        leave: CancellationToken,
        abort: CancellationToken,
    ) -> (
        impl Future<Output = Ended> + Send + 'static,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel(self.cfg.queue_capacity.max(1));
        let acks = AckQueue::new();
        let writer_done = CancellationToken::new();
        let filters = names_filters(&self.names, &self.cfg.share_group);
        let connection = drive_connection(
            Driver {
                link: self.link,
                filters,
                role,
                acks: acks.clone(),
                readiness: self.readiness.clone(),
                leave,
                abort: abort.clone(),
                writer_done: writer_done.clone(),
            },
            tx,
        );
        let writer = Writer {
            streams: Streams::new(&self.names),
            names: self.names,
            producer: self.producer,
            acks,
            readiness: self.readiness,
            seen: SeenTracker::new(self.cfg.seen_capacity, self.cfg.seen_interval),
            cfg: self.cfg,
            abort,
        };
        let writer = async move {
            // Done even if the writer panics: the connection closes either way.
            let _done = writer_done.drop_guard();
            writer.run(rx).await;
        };
        (connection, writer)
    }
}

/// The shared-subscription filters, one per kind of device message, QoS 1, asking for no retained messages on
/// subscribing (retain handling 2): a retained message was bridged when it was published, and
/// is not bridged again on every restart. Retain-as-published is on, so a device clearing its
/// retained message (an empty payload published with retain) can be told from an empty
/// message, which is bad input.
fn names_filters(names: &Names, group: &str) -> Vec<Filter> {
    DeviceTopicKind::ALL
        .into_iter()
        .map(|k| {
            let mut filter = Filter::new(
                format!("$share/{group}/{}", names.mqtt_sensor_filter(k)),
                QoS::AtLeastOnce,
            );
            filter.retain_forward_rule = RetainForwardRule::Never;
            filter.preserve_retain = true;
            filter
        })
        .collect()
}

/// Why a publish is acknowledged without being bridged, if it is: a device clearing its
/// retained message (an empty payload published with retain: nothing to bridge, and not bad
/// input). A retained publish with a payload is a live message (retain handling 2 keeps the
/// broker from replaying stored ones on subscribing) and is bridged; an empty payload without
/// retain is bad input and is dead-lettered like any other.
fn ignored(publish: &Publish) -> Option<&'static str> {
    (publish.retain && publish.payload.is_empty()).then_some("retained_clear")
}

/// What the connection task works with.
struct Driver {
    link: LinkOptions,
    filters: Vec<Filter>,
    role: Role,
    acks: AckQueue,
    readiness: Readiness,
    leave: CancellationToken,
    abort: CancellationToken,
    writer_done: CancellationToken,
}

/// Keeps the uplink connected (an own session reconnects with backoff) until its session was
/// handed back, or the writer is done, or `abort`.
async fn drive_connection(d: Driver, tx: mpsc::Sender<Received>) -> Ended {
    let mut tx = Some(tx);
    let mut backoff = Backoff::default();
    let own = d.role == Role::Own;
    loop {
        let connected = tokio::select! {
            c = Link::connect(&d.link) => c,
            _ = d.writer_done.cancelled() => return Ended::Kept,
            _ = d.abort.cancelled() => return Ended::Kept,
        };
        let error = match connected {
            Ok(session) => {
                backoff.reset();
                let epoch = d.acks.connected();
                t::connected(d.role.link());
                if own {
                    d.readiness.warn(
                        BROKER_SESSION,
                        session.granted_session_expiry.map(|granted| {
                            format!(
                                "the broker keeps this bridge's session only {granted} s (asked {} s): \
                                 messages queued for a bridge that is away longer are dropped; \
                                 raise the broker's session expiry limit (deploy/mosquitto/README.md)",
                                d.link.session_expiry
                            )
                        }),
                    );
                }
                tracing::info!(
                    client_id = %d.link.client_id,
                    session_present = session.session_present,
                    leaving = d.leave.is_cancelled(),
                    "uplink connected to the broker"
                );
                let mut conn = Connection {
                    link: session,
                    role: d.role,
                    epoch,
                    acks: &d.acks,
                    readiness: &d.readiness,
                    keep_alive: d.link.keep_alive.max(Duration::from_secs(1)),
                    unacked: 0,
                    unsubscribed: false,
                    received: 0,
                };
                match conn.run(&d, &mut tx).await {
                    Ok(Stop::Quiet) => {
                        let received = conn.received;
                        // Nothing is left in the session: end it, so that the broker assigns
                        // and keeps nothing more for this client id.
                        let ended =
                            tokio::time::timeout(Duration::from_secs(5), conn.end_session()).await;
                        return match ended {
                            Ok(Ok(())) => {
                                tracing::info!(
                                    client_id = %d.link.client_id,
                                    received_while_leaving = received,
                                    "session handed back: unsubscribed, written, acknowledged, ended"
                                );
                                Ended::HandedBack
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, client_id = %d.link.client_id, "could not end the session; it is kept (and adopted once this replica's lease lapses)");
                                Ended::Kept
                            }
                            Err(_) => Ended::Kept,
                        };
                    }
                    Ok(Stop::Halted) => {
                        // The writer is done (abort): what it acknowledged goes out, then
                        // DISCONNECT keeping the session for whoever takes it next.
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
                        return Ended::Kept;
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        d.acks.disconnected();
        t::connection_error(d.role.link());
        let taken_over = matches!(
            error,
            LinkError::Disconnected(DisconnectReasonCode::SessionTakenOver)
        );
        if !own {
            tracing::warn!(error = %error, client_id = %d.link.client_id, "adopted session's connection ended");
            return if taken_over {
                Ended::TakenOver
            } else {
                Ended::Kept
            };
        }
        d.readiness
            .set_not_ready(MQTT_UPLINK, format!("broker connection: {error}"));
        let delay = backoff.next_delay();
        if taken_over {
            // Another client connected with this replica's client id: an adopter that found
            // the lease lapsed (Redis unreachable too long) or a second replica under the same
            // instance id. Connecting again takes the session back; an adopter then stops.
            tracing::warn!(retry_in = ?delay, "uplink session taken over by another connection; taking it back");
        } else {
            tracing::warn!(error = %error, retry_in = ?delay, "uplink connection to the broker lost; reconnecting");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = d.writer_done.cancelled() => return Ended::Kept,
            _ = d.abort.cancelled() => return Ended::Kept,
        }
    }
}

/// Why a connection's run ended without an error.
enum Stop {
    /// Leaving, and nothing more is held: end the session.
    Quiet,
    /// The writer is done or `abort`: close, keeping the session.
    Halted,
}

/// One connected session of the uplink.
struct Connection<'a> {
    link: Link,
    role: Role,
    epoch: u64,
    acks: &'a AckQueue,
    readiness: &'a Readiness,
    keep_alive: Duration,
    /// Messages handed to the writer whose PUBACK has not gone out yet.
    unacked: u64,
    /// The broker answered our UNSUBSCRIBE (leaving).
    unsubscribed: bool,
    /// Publishes received on this connection since it started leaving.
    received: u64,
}

impl Connection<'_> {
    /// Subscribes (or, leaving, unsubscribes), then hands publishes to the writer and writes
    /// the acks it queues, until the connection fails (`Err`), the session is quiet after
    /// leaving, or the writer is done.
    async fn run(
        &mut self,
        d: &Driver,
        tx: &mut Option<mpsc::Sender<Received>>,
    ) -> Result<Stop, LinkError> {
        let mut leaving = d.leave.is_cancelled();
        if leaving {
            self.start_leaving(&d.filters).await?;
        } else {
            // Subscribing again with a session present is harmless and covers a changed
            // group or namespace; without a session it is required.
            self.link.subscribe(d.filters.clone()).await?;
        }
        let mut ping = tokio::time::interval(self.keep_alive);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut quiet = tokio::time::interval(Duration::from_millis(100));
        quiet.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut quiet_since = Instant::now();
        let mut pkids = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = d.writer_done.cancelled() => return Ok(Stop::Halted),
                _ = d.abort.cancelled() => return Ok(Stop::Halted),
                _ = d.leave.cancelled(), if !leaving => {
                    leaving = true;
                    quiet_since = Instant::now();
                    self.start_leaving(&d.filters).await?;
                }
                _ = self.acks.ready() => self.write_acks(&mut pkids).await?,
                packet = self.link.next() => {
                    last_heard = Instant::now();
                    match packet? {
                        Packet::Publish(publish) => {
                            quiet_since = Instant::now();
                            self.received += 1;
                            self.hand_over(publish, tx).await;
                        }
                        Packet::SubAck(ack) => self.subscribed(&ack.return_codes),
                        Packet::UnsubAck(ack) => {
                            quiet_since = Instant::now();
                            self.unsubscribed = true;
                            tracing::debug!(reasons = ?ack.reasons, "unsubscribed");
                        }
                        Packet::PingResp(_) => {}
                        Packet::ConnAck(_) => return Err(LinkError::Unexpected("second CONNACK")),
                        // Nothing else is expected on a subscribe-only QoS 1 session.
                        other => tracing::debug!(packet = ?other, "ignored a packet from the broker"),
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > self.keep_alive * 2 {
                        return Err(LinkError::Timeout(self.keep_alive * 2, "keep-alive"));
                    }
                    self.link.ping().await?;
                }
                _ = quiet.tick(), if leaving => {
                    if self.unsubscribed && self.unacked == 0 && quiet_since.elapsed() >= QUIET {
                        return Ok(Stop::Quiet);
                    }
                }
            }
        }
    }

    /// UNSUBSCRIBE: from its UNSUBACK on, the broker assigns this session nothing new.
    async fn start_leaving(&mut self, filters: &[Filter]) -> Result<(), LinkError> {
        self.received = 0;
        tracing::info!(
            unacked = self.unacked,
            "leaving the shared subscription: reading what the broker still holds for this session"
        );
        self.link
            .unsubscribe(filters.iter().map(|f| f.path.clone()).collect())
            .await
    }

    fn subscribed(&self, codes: &[SubscribeReasonCode]) {
        if self.role != Role::Own {
            return;
        }
        let refused = codes
            .iter()
            .any(|c| !matches!(c, SubscribeReasonCode::Success(_)));
        if refused {
            self.readiness
                .set_not_ready(MQTT_UPLINK, "the broker refused a subscription (ACL?)");
        } else {
            self.readiness.set_ready(MQTT_UPLINK);
        }
    }

    /// Gives a publish to the writer. Waiting here is the backpressure: while the writer is
    /// behind, the broker's in-flight window (our receive maximum) fills and it queues the
    /// rest for this session.
    async fn hand_over(&mut self, publish: Publish, tx: &mut Option<mpsc::Sender<Received>>) {
        let Some(queue) = tx.as_ref() else { return };
        if publish.qos != QoS::AtMostOnce {
            self.unacked += 1;
        }
        let received = Received {
            publish,
            epoch: self.epoch,
        };
        if queue.send(received).await.is_err() {
            *tx = None;
        }
    }

    /// Writes every ack the writer queued, in one write.
    async fn write_acks(&mut self, pkids: &mut Vec<u16>) -> Result<(), LinkError> {
        self.acks.take(pkids);
        if pkids.is_empty() {
            return Ok(());
        }
        self.link.write_acks(pkids).await?;
        let n = pkids.len() as u64;
        t::acks_sent(n);
        self.unacked = self.unacked.saturating_sub(n);
        if self.role == Role::Own {
            t::unacked(self.unacked);
        }
        Ok(())
    }

    /// Sends the acks still queued, then DISCONNECT (the session is kept).
    async fn close(mut self) {
        let mut pkids = Vec::new();
        if self.write_acks(&mut pkids).await.is_ok() {
            let _ = self.link.disconnect().await;
        }
    }

    /// Sends the acks still queued (none when quiet), then DISCONNECT ending the session.
    async fn end_session(mut self) -> Result<(), LinkError> {
        let mut pkids = Vec::new();
        self.write_acks(&mut pkids).await?;
        self.link.disconnect_ending_session().await
    }
}

struct Writer {
    cfg: UplinkConfig,
    names: Names,
    streams: Streams,
    producer: Producer,
    acks: AckQueue,
    readiness: Readiness,
    seen: SeenTracker,
    abort: CancellationToken,
}

/// The streams the writer appends to, named once (a batch holds a cheap clone per entry).
struct Streams {
    /// Indexed by [`kind_index`].
    by_kind: [Arc<str>; KINDS],
    registrations: Arc<str>,
    deadletter: Arc<str>,
}

impl Streams {
    fn new(names: &Names) -> Self {
        let mut by_kind: [Arc<str>; KINDS] = Default::default();
        for kind in DeviceTopicKind::ALL {
            by_kind[kind_index(kind)] = names.cps_stream(kind).into();
        }
        Self {
            by_kind,
            registrations: names.cps_registrations().into(),
            deadletter: names.cps_deadletter().into(),
        }
    }
}

/// What one batch writes, in the order it arrived, each entry with the trace context of the
/// message it came from (when tracing is on).
#[derive(Default)]
struct Prepared {
    items: Vec<(Arc<str>, Vec<u8>, Option<TraceContext>)>,
    /// The receive and publish hops of the batch's sampled messages: their spans end once it
    /// is written.
    spans: Vec<trace::Hop>,
    /// The context of the message being prepared (its receive hop's), the parent of what it
    /// writes.
    receive: Option<TraceContext>,
    messages: [u64; KINDS],
    seen: u64,
    dead: Vec<&'static str>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Received>) {
        let mut batch = Vec::with_capacity(self.cfg.batch_size);
        loop {
            batch.clear();
            let more = tokio::select! {
                more = self.next_batch(&mut rx, &mut batch) => more,
                // The drain deadline passed while the queue was still open.
                _ = self.abort.cancelled() => false,
            };
            if !more {
                break;
            }
            t::queue_depth(rx.len());
            let prepared = self.prepare(&batch);
            if !self.write(&prepared).await {
                tracing::warn!(
                    messages = batch.len(),
                    "drain deadline passed with Redis unavailable: messages left to the broker"
                );
                return;
            }
            self.count(&prepared, batch.len());
            self.ack(&batch);
        }
    }

    /// Waits for one message, then takes what else is queued (and what arrives within the
    /// linger) up to the batch size. False when the queue is closed and empty.
    async fn next_batch(
        &self,
        rx: &mut mpsc::Receiver<Received>,
        batch: &mut Vec<Received>,
    ) -> bool {
        let limit = self.cfg.batch_size.max(1);
        if rx.recv_many(batch, limit).await == 0 {
            return false;
        }
        if batch.len() < limit && !self.cfg.batch_linger.is_zero() {
            let deadline = tokio::time::Instant::now() + self.cfg.batch_linger;
            while batch.len() < limit {
                match tokio::time::timeout_at(deadline, rx.recv_many(batch, limit - batch.len()))
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        true
    }

    fn prepare(&mut self, batch: &[Received]) -> Prepared {
        let mut out = Prepared {
            items: Vec::with_capacity(batch.len() + 8),
            ..Prepared::default()
        };
        let now = Instant::now();
        for r in batch {
            let p = &r.publish;
            self.receive_hop(p, &mut out);
            if let Some(reason) = ignored(p) {
                tracing::debug!(topic = %String::from_utf8_lossy(&p.topic), reason, "acknowledged a message without bridging it");
                t::ignored(reason);
                continue;
            }
            // MQTT topics are UTF-8; a broker that let another through gets it dead-lettered
            // (the replacement characters fail the device id check).
            let topic = String::from_utf8_lossy(&p.topic);
            match decode(&self.names, &topic, &p.payload, self.cfg.max_payload) {
                Ok(doc) => self.accept(doc, now, &mut out),
                Err(rejected) => {
                    tracing::warn!(topic = %topic, reason = %rejected.reason, "dead-lettered a device message");
                    let record = DeadLetter::new(SERVICE, &topic, rejected.reason, &p.payload);
                    let stream = self.streams.deadletter.clone();
                    let trace = publish_context(&stream, &mut out);
                    out.items.push((stream, to_bytes(&record), trace));
                    out.dead.push(rejected.rejection.label());
                }
            }
        }
        out
    }

    fn accept(&mut self, d: DeviceDoc, now: Instant, out: &mut Prepared) {
        if self.seen.announce(&d.device_id, now) {
            let stream = self.streams.registrations.clone();
            let trace = publish_context(&stream, out);
            out.items
                .push((stream, d.seen_record(chrono::Utc::now()), trace));
            out.seen += 1;
        }
        let kind = kind_index(d.kind);
        out.messages[kind] += 1;
        let stream = self.streams.by_kind[kind].clone();
        let trace = publish_context(&stream, out);
        out.items.push((stream, d.data, trace));
    }

    /// The `<topic> receive` hop of a publish (when tracing is on): the child of the context
    /// the device sent in its `traceparent` user property, or the root of a new trace. Its
    /// context (when sampled) becomes `out.receive`.
    fn receive_hop(&self, p: &Publish, out: &mut Prepared) {
        if !trace::enabled() {
            return;
        }
        let parent = p
            .properties
            .as_ref()
            .and_then(|props| TraceContext::from_user_properties(&props.user_properties));
        let topic = String::from_utf8_lossy(&p.topic);
        let hop = trace::message_root("mqtt", &topic, "receive", "consumer", parent.as_ref());
        out.receive = hop.context().cloned();
        if hop.sampled() {
            out.spans.push(hop);
        }
    }

    /// Writes the batch, retrying with backoff until it succeeds. False only when the drain
    /// deadline passes first.
    async fn write(&self, prepared: &Prepared) -> bool {
        if prepared.items.is_empty() {
            return true;
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let started = Instant::now();
            match self.producer.publish_batch_traced(&prepared.items).await {
                Ok(_) => {
                    t::write_seconds(started.elapsed());
                    self.readiness.set_ready(REDIS);
                    return true;
                }
                Err(e) => {
                    t::write_retry();
                    self.readiness
                        .set_not_ready(REDIS, format!("stream write failed: {e}"));
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, entries = prepared.items.len(), "stream write failed; nothing acknowledged, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.abort.cancelled() => return false,
                    }
                }
            }
        }
    }

    fn count(&self, prepared: &Prepared, received: usize) {
        for kind in DeviceTopicKind::ALL {
            t::messages(kind, prepared.messages[kind_index(kind)]);
        }
        for &reason in &prepared.dead {
            t::dead_letter(reason);
        }
        t::devices_seen(prepared.seen);
        t::batch_messages(received);
        t::seen_cache_devices(self.seen.len());
    }

    /// Acknowledges the batch in order (queued compactly, never waiting). A publish that came
    /// on an earlier connection is not acknowledged: the broker sends it again on this one
    /// and it is written again (a duplicate, never a loss).
    fn ack(&self, batch: &[Received]) {
        let skipped = self.acks.push(
            batch
                .iter()
                .map(|r| (r.epoch, r.publish.pkid, r.publish.qos)),
        );
        t::acks_skipped(skipped);
    }
}

/// The `<stream> publish` hop of one entry, the child of the message's receive hop, and the
/// context the entry carries; `None` when the message is not sampled or tracing is off.
fn publish_context(stream: &str, out: &mut Prepared) -> Option<TraceContext> {
    if !trace::enabled() {
        return None;
    }
    let hop = trace::message_hop("redis", stream, "publish", "producer", out.receive.as_ref());
    if !hop.sampled() {
        return None;
    }
    let context = hop.context().cloned();
    out.spans.push(hop);
    context
}

/// How many kinds of device message there are (one stream, one subscription each).
const KINDS: usize = DeviceTopicKind::ALL.len();

fn kind_index(kind: DeviceTopicKind) -> usize {
    match kind {
        DeviceTopicKind::Telemetry => 0,
        DeviceTopicKind::Alerts => 1,
        DeviceTopicKind::Attestation => 2,
        DeviceTopicKind::Receipt => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_slot_and_its_subscription() {
        for (i, kind) in DeviceTopicKind::ALL.into_iter().enumerate() {
            assert_eq!(kind_index(kind), i, "{kind:?}");
        }
        let names = Names::default();
        let filters = names_filters(&names, "g");
        let paths: Vec<&str> = filters.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$share/g/aurora/sensors/+/telemetry",
                "$share/g/aurora/sensors/+/alerts",
                "$share/g/aurora/sensors/+/attestation",
                "$share/g/aurora/sensors/+/receipt",
            ]
        );
        let streams = Streams::new(&names);
        assert_eq!(
            &*streams.by_kind[kind_index(DeviceTopicKind::Receipt)],
            names.cps_receipts()
        );
    }
}
