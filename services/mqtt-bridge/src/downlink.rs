//! Commands back to devices.
//!
//! Reads `cps:commands` through a consumer group (the shared [`Consumer`]), publishes each
//! command QoS 1 (MQTT 5) on the device's command topic over a connection of its own, waits
//! for the broker's PUBACK, then writes the outcome to `cps:command_status` and only then
//! XACKs. A command with an `expires_at` carries it as the MQTT 5 message expiry interval, so
//! the broker drops it rather than hand it to a device that connects too late. The PUBACK's
//! reason code decides the outcome: success is `sent`, "no matching subscribers" is
//! `not_reached` (no device got it), any other code is `failed` and the entry is
//! dead-lettered. An expired command is not sent, and one that expires while it is being sent
//! again is given up (`expired`); a command whose packet is larger than the broker takes (its
//! CONNACK's maximum packet size, else `--command-max-packet`) is dead-lettered, never sent (a
//! broker drops the connection of a client that sends one, which would then send it again for
//! ever, blocking every later command); an entry that is not a command is dead-lettered; a
//! privileged action without a valid approval proof, or with one already used by another
//! entry, is dead-lettered and never sent ([`crate::guard`]). A crash between PUBACK and XACK
//! sends the command again (at least once; commands carry their id for the device to
//! deduplicate). When Redis fails after commands of a batch were sent, their outcomes are kept
//! and recorded when the batch is read again: they are not sent twice.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aurora_core::bus::{self, Entry, GroupConfig, GroupReader, Producer};
use aurora_core::consumer::{process_hop, BatchHandler, Consumer};
use aurora_core::health::Dependencies;
use aurora_core::model::{self, to_bytes, CommandOutcome, CommandStatus, DeviceCommand, Extra};
use aurora_core::ops::Readiness;
use aurora_core::retry::Backoff;
use aurora_core::trace::{self, TraceContext};
use aurora_core::Names;
use chrono::{DateTime, Utc};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use rumqttc::Outgoing;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::error::CommandError;
use crate::guard::{Guard, Refusal, UsedApprovals};
use crate::health::{COMMANDS, MQTT_DOWNLINK};
use crate::telemetry::{self as t, BrokerLink};
use crate::SERVICE;

/// The consumer group on the commands stream.
pub const GROUP: &str = SERVICE;

#[derive(Debug, Clone)]
pub struct DownlinkConfig {
    /// This replica's consumer name in the group (stable, to find its pending entries).
    pub consumer: String,
    /// How long to wait for a PUBACK before trying again.
    pub publish_timeout: Duration,
    /// The largest packet sent when the broker said no maximum of its own.
    pub max_packet: usize,
    /// The broker's maximum packet size, as its last CONNACK (to the uplink or the
    /// downlink) said.
    pub broker_limit: crate::link::BrokerLimit,
    /// The privileged actions and the approvers' keys.
    pub guard: Guard,
}

impl DownlinkConfig {
    /// The largest packet the downlink may send now.
    pub fn packet_limit(&self) -> usize {
        match self.broker_limit.get() {
            Some(broker) => (broker as usize).min(self.max_packet),
            None => self.max_packet,
        }
    }
}

/// The size of the MQTT 5 PUBLISH packet (QoS 1) of `payload` on `topic`: fixed header (type
/// byte and remaining length), topic with its length, packet id, properties (their length,
/// the message expiry interval when `with_expiry`, and each user property), payload.
pub fn publish_packet_size(
    topic: &str,
    payload: &[u8],
    with_expiry: bool,
    user_properties: &[(String, String)],
) -> usize {
    // The expiry property (identifier, u32); a user property is its identifier and two
    // strings, each with its length.
    let properties = if with_expiry { 1 + 4 } else { 0 }
        + user_properties
            .iter()
            .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
            .sum::<usize>();
    let remaining = 2 + topic.len() + 2 + variable_int_len(properties) + properties + payload.len();
    1 + variable_int_len(remaining) + remaining
}

/// The bytes of an MQTT variable byte integer.
fn variable_int_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The MQTT 5 message expiry interval of a command that expires at `expires_at`: the
/// seconds left, rounded up, at least 1 (a command that expires within the second is still
/// sent with 1 s: it was checked unexpired just before).
pub fn message_expiry(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> u32 {
    let millis = (expires_at - now).num_milliseconds().max(0);
    let secs = (millis + 999) / 1000;
    u32::try_from(secs).unwrap_or(u32::MAX).max(1)
}

/// An MQTT 5 PUBACK reason code as the protocol numbers it, for reasons people read.
pub fn reason_code(reason: PubAckReason) -> u8 {
    match reason {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

/// How a publish ended.
enum Published {
    /// The broker's PUBACK, with its reason code.
    Acked(PubAckReason),
    /// Its `expires_at` passed while it was being sent again.
    Expired,
    /// Given up (drain deadline, shutdown): it stays pending.
    GaveUp,
}

/// The downlink, ready to run.
pub struct Downlink {
    pub cfg: DownlinkConfig,
    pub names: Names,
    pub redis_url: String,
    pub producer: Producer,
    /// What the consumer waits for after a failed batch (Redis, the commands stream).
    pub dependencies: Dependencies,
    pub readiness: Readiness,
    /// Where the broker's drop count goes ([`crate::broker_drops`]).
    pub broker_dropped: tokio::sync::watch::Sender<Option<u64>>,
}

/// Which publish each PUBACK answers. Publishes leave rumqttc in the order they were
/// requested (clean start: nothing is replayed), so `Outgoing::Publish(pkid)` events pair
/// with the waiters in order.
#[derive(Default)]
struct PubAcks {
    queued: VecDeque<oneshot::Sender<PubAckReason>>,
    by_pkid: HashMap<u16, oneshot::Sender<PubAckReason>>,
}

type SharedAcks = Arc<Mutex<PubAcks>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Whatever a panic left behind is at worst a command sent again: use it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Downlink {
    /// The two tasks of the downlink: the broker connection (rumqttc's event loop) and the
    /// consumer of the commands stream. At `shutdown` the consumer reads nothing more and
    /// finishes the command it is sending (its PUBACK, its outcome, its XACK); the rest of the
    /// batch stays pending. At `abort` it gives up the PUBACK it waits for. Then the connection
    /// is closed with DISCONNECT.
    pub fn tasks(
        self,
        client: AsyncClient,
        eventloop: EventLoop,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) -> (
        impl Future<Output = ()> + Send + 'static,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let acks = SharedAcks::default();
        let done = CancellationToken::new();
        let connection = poll_connection(
            eventloop,
            Connection {
                acks: acks.clone(),
                readiness: self.readiness.clone(),
                broker_limit: self.cfg.broker_limit.clone(),
                client: client.clone(),
                broker_dropped: self.broker_dropped.clone(),
            },
            done.clone(),
        );
        let consumer = async move {
            // The connection stops even if the consumer panics.
            let done = done.drop_guard();
            if let Some(reader) = self.reader(&shutdown).await {
                let handler = Commands {
                    client: client.clone(),
                    acks,
                    used: UsedApprovals::new(self.producer.conn(), self.names.clone()),
                    status_stream: self.names.cps_command_status(),
                    names: self.names,
                    cfg: self.cfg,
                    producer: self.producer,
                    shutdown: shutdown.clone(),
                    abort,
                    unsettled: Mutex::default(),
                };
                Consumer {
                    reader,
                    handler,
                    dependencies: self.dependencies,
                    readiness: self.readiness,
                }
                .run(shutdown)
                .await;
            }
            let _ = client.try_disconnect();
            // Let the DISCONNECT go out, then stop polling.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(done);
        };
        (connection, consumer)
    }

    /// The group reader on the commands stream, trying again until Redis lets it make the
    /// group. `None` at shutdown.
    async fn reader(&self, shutdown: &CancellationToken) -> Option<GroupReader> {
        let stream = self.names.cps_commands();
        let dead = self.names.cps_deadletter();
        let cfg = GroupConfig::new(&stream, GROUP, &self.cfg.consumer, &dead, SERVICE);
        let mut backoff = Backoff::default();
        loop {
            let attempt = async {
                let conn = bus::connect_blocking(&self.redis_url, cfg.block).await?;
                GroupReader::new(cfg.clone(), conn, self.producer.clone()).await
            };
            let attempt = tokio::select! {
                attempt = attempt => attempt,
                _ = shutdown.cancelled() => return None,
            };
            match attempt {
                Ok(reader) => return Some(reader),
                Err(e) => {
                    t::command_error();
                    self.readiness
                        .set_not_ready(COMMANDS, format!("commands stream: {e}"));
                    tracing::warn!(error = %e, "cannot read the device commands; retrying");
                    if !backoff.wait(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }
}

/// What the downlink's connection serves besides the event loop.
struct Connection {
    acks: SharedAcks,
    readiness: Readiness,
    broker_limit: crate::link::BrokerLimit,
    /// To subscribe to the broker's drop count at each connection.
    client: AsyncClient,
    /// The latest drop count the broker published ([`crate::broker_drops`]).
    broker_dropped: tokio::sync::watch::Sender<Option<u64>>,
}

async fn poll_connection(mut eventloop: EventLoop, c: Connection, done: CancellationToken) {
    let Connection {
        acks,
        readiness,
        broker_limit,
        client,
        broker_dropped,
    } = c;
    let mut backoff = Backoff::default();
    let mut told_unreadable = false;
    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = done.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                // The same broker as the uplink's: what it takes, for the size check.
                broker_limit.set(ack.properties.and_then(|p| p.max_packet_size));
                // A clean session: subscribed again at each connection (QoS 0, the
                // broker sends the count it holds at once).
                if let Err(e) = client.try_subscribe(crate::broker_drops::TOPIC, QoS::AtMostOnce) {
                    tracing::warn!(error = %e, "cannot subscribe to the broker's drop count");
                }
                backoff.reset();
                t::connected(BrokerLink::Downlink);
                readiness.set_ready(MQTT_DOWNLINK);
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut a = lock(&acks);
                if let Some(waiter) = a.queued.pop_front() {
                    a.by_pkid.insert(pkid, waiter);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(waiter) = lock(&acks).by_pkid.remove(&ack.pkid) {
                    let _ = waiter.send(ack.reason);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == crate::broker_drops::TOPIC => {
                match crate::broker_drops::parse(&p.payload) {
                    Some(count) => {
                        broker_dropped.send_replace(Some(count));
                    }
                    None => {
                        tracing::debug!(payload = %String::from_utf8_lossy(&p.payload), "not a drop count")
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| !matches!(c, SubscribeReasonCode::Success(_)));
                if refused && !told_unreadable {
                    told_unreadable = true;
                    tracing::warn!(topic = crate::broker_drops::TOPIC, reasons = ?ack.return_codes, "the broker does not let the bridge read its drop count: what its queue limits drop is not in the loss ledger");
                }
            }
            Ok(_) => {}
            Err(e) => {
                // Dropping the waiters fails the publishes in flight: they are sent again.
                *lock(&acks) = PubAcks::default();
                t::connection_error(BrokerLink::Downlink);
                readiness.set_not_ready(MQTT_DOWNLINK, format!("broker connection: {e}"));
                tracing::warn!(error = %e, "downlink connection to the broker lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = done.cancelled() => return,
                }
            }
        }
    }
}

/// What became of one entry, to be recorded before it is acknowledged.
struct Handled {
    entry_id: String,
    status: Option<CommandStatus>,
    /// The context of the entry's `process` span, which its status carries.
    trace: Option<TraceContext>,
}

/// Handles batches of the commands stream for the [`Consumer`].
struct Commands {
    cfg: DownlinkConfig,
    client: AsyncClient,
    acks: SharedAcks,
    /// Which entry used each approval.
    used: UsedApprovals,
    names: Names,
    status_stream: String,
    producer: Producer,
    shutdown: CancellationToken,
    abort: CancellationToken,
    /// Outcomes of the last batch that failed before they were recorded, by entry id: when
    /// the batch is read again, these entries are recorded and acknowledged, not handled
    /// (sent) again.
    unsettled: Mutex<HashMap<String, Option<CommandStatus>>>,
}

impl BatchHandler for Commands {
    type Error = CommandError;

    fn part(&self) -> &'static str {
        COMMANDS
    }

    /// Each entry is handled in its `process` span (when tracing is on): the command's
    /// publish to the device is its child, and the status written carries its context.
    async fn handle(&self, reader: &GroupReader, entries: Vec<Entry>) -> Result<(), CommandError> {
        let mut known = std::mem::take(&mut *lock(&self.unsettled));
        let mut handled = Vec::with_capacity(entries.len());
        let mut failure = None;
        // They end once the outcomes are recorded.
        let mut spans = Vec::new();
        for entry in &entries {
            let hop = process_hop(entry);
            if let Some(status) = known.remove(&entry.id) {
                handled.push(Handled {
                    entry_id: entry.id.clone(),
                    status,
                    trace: hop.context().cloned(),
                });
                spans.push(hop);
                continue;
            }
            // Shutting down: what is not started stays pending for next time.
            if self.shutdown.is_cancelled() {
                break;
            }
            let trace = hop.context().cloned();
            let one = hop.scope(self.handle_one(reader, entry)).await;
            spans.push(hop);
            match one.map(|h| h.map(|h| Handled { trace, ..h })) {
                Ok(Some(h)) => handled.push(h),
                Ok(None) => break, // given up: the rest stays pending
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let result = match failure {
            Some(e) => Err(e),
            None => self.settle(reader, &handled).await,
        };
        drop(spans);
        if result.is_err() {
            *lock(&self.unsettled) = handled
                .into_iter()
                .map(|h| (h.entry_id, h.status))
                .collect();
        }
        result
    }

    fn failed(&self, _error: &CommandError) {
        t::command_error();
    }

    fn traces_entries(&self) -> bool {
        true
    }
}

impl Commands {
    /// Sends one command (or decides not to). `None` when it was given up (shutdown, abort).
    async fn handle_one(
        &self,
        reader: &GroupReader,
        entry: &Entry,
    ) -> Result<Option<Handled>, CommandError> {
        let data = entry.data.as_deref().unwrap_or_default();
        let command = match model::parse::<DeviceCommand>(data) {
            Ok(c) => c,
            Err(e) => return self.invalid(reader, entry, &e.to_string()).await.map(Some),
        };
        let now = Utc::now();
        if command.expires_at.is_some_and(|at| at <= now) {
            t::command(t::CommandOutcome::Expired);
            tracing::info!(command = %command.id, device = %command.device_id, "command expired before it could be sent");
            return Ok(Some(handled(
                entry,
                &command,
                CommandOutcome::Expired,
                Some("expired before it was sent".into()),
            )));
        }
        let proof = match self.cfg.guard.verify(&command, now) {
            Ok(proof) => proof,
            Err(refusal) => {
                return self
                    .refused(reader, entry, &command, refusal)
                    .await
                    .map(Some)
            }
        };
        let started = Instant::now();
        let topic = self.names.mqtt_command_topic(&command.device_id);
        // The `<topic> publish` hop (producer, when tracing is on), the child of the entry's
        // `process` hop: every attempt is inside it, and the command carries its context in
        // the MQTT 5 user property `traceparent` (counted in the packet's size).
        let publish_hop = trace::message_hop("mqtt", &topic, "publish", "producer", None);
        let user_properties = publish_hop
            .context()
            .map(|c| c.user_properties())
            .unwrap_or_default();
        let size =
            publish_packet_size(&topic, data, command.expires_at.is_some(), &user_properties);
        let limit = self.cfg.packet_limit();
        if size > limit {
            let reason = format!(
                "command packet of {size} bytes is larger than the broker's maximum packet size of {limit} bytes"
            );
            tracing::warn!(command = %command.id, device = %command.device_id, size, limit, "command too large for the broker; dead-lettered");
            return self.invalid(reader, entry, &reason).await.map(Some);
        }
        // One use per approval, recorded before anything is sent.
        if let Some(proof) = &proof {
            if let Err(refusal) = self.used.claim(proof, &entry.id).await? {
                return self
                    .refused(reader, entry, &command, refusal)
                    .await
                    .map(Some);
            }
        }
        let void_at = proof.as_ref().map(|p| p.not_after);
        let reason = match publish_hop
            .scope(self.publish(&topic, data, command.expires_at, void_at, user_properties))
            .await
        {
            Published::Acked(reason) => reason,
            Published::GaveUp => return Ok(None),
            Published::Expired => {
                t::command(t::CommandOutcome::Expired);
                let why = if void_at.is_some_and(|at| at <= Utc::now()) {
                    "the approval proof expired before the broker acknowledged the command"
                } else {
                    "expired before the broker acknowledged it"
                };
                tracing::warn!(command = %command.id, device = %command.device_id, why, "command given up");
                return Ok(Some(handled(
                    entry,
                    &command,
                    CommandOutcome::Expired,
                    Some(why.into()),
                )));
            }
        };
        t::command_publish_seconds(started.elapsed());
        match reason {
            PubAckReason::Success => {
                t::command(t::CommandOutcome::Sent);
                Ok(Some(handled(entry, &command, CommandOutcome::Sent, None)))
            }
            PubAckReason::NoMatchingSubscribers => {
                t::command(t::CommandOutcome::NotReached);
                tracing::info!(command = %command.id, device = %command.device_id, "no device subscribed to the command's topic: not reached");
                let why = format!(
                    "no subscriber on {topic}: the device is offline without a persistent session, or not subscribed"
                );
                Ok(Some(handled(
                    entry,
                    &command,
                    CommandOutcome::NotReached,
                    Some(why),
                )))
            }
            refused => {
                let why = format!(
                    "the broker refused the command: {refused:?} (reason code 0x{:02x})",
                    reason_code(refused)
                );
                tracing::warn!(command = %command.id, device = %command.device_id, reason = %why, "command refused by the broker; dead-lettered");
                reader.dead_letter(entry, &why).await?;
                t::command(t::CommandOutcome::Failed);
                Ok(Some(handled(
                    entry,
                    &command,
                    CommandOutcome::Failed,
                    Some(why),
                )))
            }
        }
    }

    /// Not a command: dead-lettered (and acknowledged) at once; a `failed` status too when
    /// the entry says which command and device it was.
    async fn invalid(
        &self,
        reader: &GroupReader,
        entry: &Entry,
        reason: &str,
    ) -> Result<Handled, CommandError> {
        reader.dead_letter(entry, reason).await?;
        t::command(t::CommandOutcome::Invalid);
        Ok(Handled {
            entry_id: entry.id.clone(),
            status: failed_status(entry.data.as_deref().unwrap_or_default(), reason),
            trace: None,
        })
    }

    /// A privileged action the bridge may not send: dead-lettered (and acknowledged) at once,
    /// `failed` with the reason.
    async fn refused(
        &self,
        reader: &GroupReader,
        entry: &Entry,
        command: &DeviceCommand,
        refusal: Refusal,
    ) -> Result<Handled, CommandError> {
        let reason = refusal.to_string();
        tracing::warn!(command = %command.id, device = %command.device_id, action = %command.action, %reason, "privileged command refused; dead-lettered, not sent");
        reader.dead_letter(entry, &reason).await?;
        t::command(t::CommandOutcome::Refused);
        t::command_refused(refusal.label());
        Ok(handled(
            entry,
            command,
            CommandOutcome::Failed,
            Some(reason),
        ))
    }

    /// Publishes QoS 1 and waits for the PUBACK, sending again until it comes or the command
    /// expires (`expires_at`, or its approval proof's `void_at`). Each attempt carries the
    /// message expiry interval left until `expires_at`. Given up at the drain deadline, or when
    /// no PUBACK came while draining. Every attempt carries `user_properties` (the trace
    /// context of the publish span).
    async fn publish(
        &self,
        topic: &str,
        payload: &[u8],
        expires_at: Option<DateTime<Utc>>,
        void_at: Option<DateTime<Utc>>,
        user_properties: Vec<(String, String)>,
    ) -> Published {
        let mut backoff = Backoff::default();
        let deadline = match (expires_at, void_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        loop {
            let now = Utc::now();
            if deadline.is_some_and(|at| at <= now) {
                return Published::Expired;
            }
            let properties = PublishProperties {
                message_expiry_interval: expires_at.map(|at| message_expiry(at, now)),
                user_properties: user_properties.clone(),
                ..PublishProperties::default()
            };
            let (tx, rx) = oneshot::channel();
            lock(&self.acks).queued.push_back(tx);
            let sent = tokio::select! {
                sent = self.client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_vec(), properties) => sent,
                _ = self.abort.cancelled() => return Published::GaveUp,
            };
            if sent.is_err() {
                return Published::GaveUp; // the connection task is gone
            }
            let acked = tokio::select! {
                r = tokio::time::timeout(self.cfg.publish_timeout, rx) => r.ok().and_then(Result::ok),
                _ = self.abort.cancelled() => return Published::GaveUp,
            };
            if let Some(reason) = acked {
                return Published::Acked(reason);
            }
            // No PUBACK: forget the waiters (the connection may be down) and send again.
            *lock(&self.acks) = PubAcks::default();
            t::command_error();
            if self.shutdown.is_cancelled() {
                tracing::warn!(
                    topic,
                    "no PUBACK for a command while draining; it stays pending"
                );
                return Published::GaveUp;
            }
            tracing::warn!(topic, "no PUBACK for a command; sending it again");
            if !backoff.wait(&self.shutdown).await {
                return Published::GaveUp;
            }
        }
    }

    /// Writes the outcomes, then acknowledges the entries (dead-lettered ones again: harmless).
    async fn settle(&self, reader: &GroupReader, handled: &[Handled]) -> Result<(), CommandError> {
        if handled.is_empty() {
            return Ok(());
        }
        let statuses: Vec<(&str, Vec<u8>, Option<TraceContext>)> = handled
            .iter()
            .filter_map(|h| Some((h.status.as_ref()?, h.trace.clone())))
            .map(|(s, trace)| (self.status_stream.as_str(), to_bytes(s), trace))
            .collect();
        let ids: Vec<&str> = handled.iter().map(|h| h.entry_id.as_str()).collect();
        self.producer.publish_batch_traced(&statuses).await?;
        reader.ack(&ids).await?;
        Ok(())
    }
}

/// The outcome of a command read from `entry`.
fn handled(
    entry: &Entry,
    command: &DeviceCommand,
    outcome: CommandOutcome,
    reason: Option<String>,
) -> Handled {
    Handled {
        entry_id: entry.id.clone(),
        status: Some(status(command, outcome, reason)),
        trace: None,
    }
}

fn status(
    command: &DeviceCommand,
    outcome: CommandOutcome,
    reason: Option<String>,
) -> CommandStatus {
    CommandStatus {
        command_id: command.id,
        device_id: command.device_id.clone(),
        status: outcome,
        reason,
        at: Utc::now(),
        extra: Extra::new(),
    }
}

/// A `failed` status for an entry that names a command id and a device but is otherwise not
/// a valid command.
fn failed_status(data: &[u8], reason: &str) -> Option<CommandStatus> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let id = v.get("id")?.as_str()?.parse::<uuid::Uuid>().ok()?;
    let device_id = v.get("device_id")?.as_str()?;
    Some(CommandStatus {
        command_id: id,
        device_id: device_id.to_string(),
        status: CommandOutcome::Failed,
        reason: Some(reason.to_string()),
        at: Utc::now(),
        extra: Extra::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::Publish;

    /// The bytes rumqttc writes for the command's PUBLISH.
    fn encoded(
        topic: &str,
        payload: &[u8],
        expiry: Option<u32>,
        user_properties: &[(String, String)],
    ) -> usize {
        let properties =
            (expiry.is_some() || !user_properties.is_empty()).then(|| PublishProperties {
                message_expiry_interval: expiry,
                user_properties: user_properties.to_vec(),
                ..PublishProperties::default()
            });
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec(), properties);
        publish.pkid = 1;
        let mut buffer = bytes::BytesMut::new();
        publish.write(&mut buffer).expect("encodes");
        buffer.len()
    }

    #[test]
    fn the_packet_size_is_what_is_written_with_and_without_expiry() {
        let topic = "aurora/command/dev-1/action";
        for len in [0, 1, 100, 115, 116, 117, 120, 127, 16_360, 16_400, 300_000] {
            let payload = vec![b'x'; len];
            assert_eq!(
                publish_packet_size(topic, &payload, false, &[]),
                encoded(topic, &payload, None, &[]),
                "{len} bytes, no expiry"
            );
            assert_eq!(
                publish_packet_size(topic, &payload, true, &[]),
                encoded(topic, &payload, Some(u32::MAX), &[]),
                "{len} bytes, with expiry"
            );
        }
    }

    #[test]
    fn the_packet_size_counts_the_trace_context() {
        let topic = "aurora/command/dev-1/action";
        let traced = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: None,
        }
        .user_properties();
        let long_state = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: Some(format!("vendor={}", "x".repeat(200))),
        }
        .user_properties();
        for props in [&traced, &long_state] {
            for len in [0, 40, 100, 16_300, 300_000] {
                let payload = vec![b'x'; len];
                for expiry in [None, Some(u32::MAX)] {
                    assert_eq!(
                        publish_packet_size(topic, &payload, expiry.is_some(), props),
                        encoded(topic, &payload, expiry, props),
                        "{len} bytes, expiry {expiry:?}, {} properties",
                        props.len()
                    );
                }
            }
        }
    }

    #[test]
    fn the_expiry_interval_is_the_seconds_left_rounded_up_at_least_one() {
        let now = Utc::now();
        let ms = chrono::Duration::milliseconds;
        assert_eq!(message_expiry(now + ms(10_000), now), 10);
        assert_eq!(message_expiry(now + ms(10_001), now), 11);
        assert_eq!(message_expiry(now + ms(1), now), 1);
        assert_eq!(message_expiry(now, now), 1);
        assert_eq!(message_expiry(now - ms(5_000), now), 1);
        assert_eq!(
            message_expiry(now + chrono::Duration::days(365 * 200), now),
            u32::MAX
        );
    }

    #[test]
    fn reason_codes_are_the_protocol_numbers() {
        assert_eq!(reason_code(PubAckReason::NoMatchingSubscribers), 0x10);
        assert_eq!(reason_code(PubAckReason::NotAuthorized), 0x87);
        assert_eq!(reason_code(PubAckReason::Success), 0);
    }
}
