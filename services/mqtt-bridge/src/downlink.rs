//! Commands back to devices.
//!
//! Reads `cps:commands` through a consumer group (the shared [`Consumer`]), publishes each
//! command QoS 1 on the device's command topic over a connection of its own, waits for the
//! broker's PUBACK, then writes the outcome to `cps:command_status` and only then XACKs. An
//! expired command is not sent, and one that expires while it is being sent again is given up
//! (`expired`); a command whose packet is larger than the broker takes (its CONNACK's maximum
//! packet size, else `--command-max-packet`) is dead-lettered, never sent (a broker drops the
//! connection of a client that sends one, which would then send it again for ever, blocking
//! every later command); an entry that is not a command is dead-lettered. A crash
//! between PUBACK and XACK sends the command again (at least once; commands carry their id for
//! the device to deduplicate). When Redis fails after commands of a batch were sent, their
//! outcomes are kept and recorded when the batch is read again: they are not sent twice.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aurora_core::bus::{self, Entry, GroupConfig, GroupReader, Producer};
use aurora_core::consumer::{BatchHandler, Consumer};
use aurora_core::health::Dependencies;
use aurora_core::model::{self, to_bytes, CommandOutcome, CommandStatus, DeviceCommand, Extra};
use aurora_core::ops::Readiness;
use aurora_core::retry::Backoff;
use aurora_core::Names;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::error::CommandError;
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
    /// The broker's maximum packet size, as its CONNACK to the uplink said.
    pub broker_limit: crate::link::BrokerLimit,
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

/// The size of the MQTT PUBLISH packet (QoS 1) of `payload` on `topic`: fixed header (type
/// byte and remaining length), topic with its length, packet id, payload. (MQTT 3.1.1: no
/// properties.)
pub fn publish_packet_size(topic: &str, payload: &[u8]) -> usize {
    let remaining = 2 + topic.len() + 2 + payload.len();
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// How a publish ended.
enum Published {
    Acked,
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
}

/// Which publish each PUBACK answers. Publishes leave rumqttc in the order they were
/// requested (clean session: nothing is replayed), so `Outgoing::Publish(pkid)` events pair
/// with the waiters in order.
#[derive(Default)]
struct PubAcks {
    queued: VecDeque<oneshot::Sender<()>>,
    by_pkid: HashMap<u16, oneshot::Sender<()>>,
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
            acks.clone(),
            self.readiness.clone(),
            done.clone(),
        );
        let consumer = async move {
            // The connection stops even if the consumer panics.
            let done = done.drop_guard();
            if let Some(reader) = self.reader(&shutdown).await {
                let handler = Commands {
                    client: client.clone(),
                    acks,
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

async fn poll_connection(
    mut eventloop: EventLoop,
    acks: SharedAcks,
    readiness: Readiness,
    done: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = done.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
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
                    let _ = waiter.send(());
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
}

/// Handles batches of the commands stream for the [`Consumer`].
struct Commands {
    cfg: DownlinkConfig,
    client: AsyncClient,
    acks: SharedAcks,
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

    async fn handle(&self, reader: &GroupReader, entries: Vec<Entry>) -> Result<(), CommandError> {
        let mut known = std::mem::take(&mut *lock(&self.unsettled));
        let mut handled = Vec::with_capacity(entries.len());
        let mut failure = None;
        for entry in &entries {
            if let Some(status) = known.remove(&entry.id) {
                handled.push(Handled {
                    entry_id: entry.id.clone(),
                    status,
                });
                continue;
            }
            // Shutting down: what is not started stays pending for next time.
            if self.shutdown.is_cancelled() {
                break;
            }
            match self.handle_one(reader, entry).await {
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
        let now = chrono::Utc::now();
        if command.expires_at.is_some_and(|at| at <= now) {
            t::command(t::CommandOutcome::Expired);
            tracing::info!(command = %command.id, device = %command.device_id, "command expired before it could be sent");
            return Ok(Some(Handled {
                entry_id: entry.id.clone(),
                status: Some(status(
                    &command,
                    CommandOutcome::Expired,
                    Some("expired before it was sent".into()),
                )),
            }));
        }
        let started = Instant::now();
        let topic = self.names.mqtt_command_topic(&command.device_id);
        let size = publish_packet_size(&topic, data);
        let limit = self.cfg.packet_limit();
        if size > limit {
            let reason = format!(
                "command packet of {size} bytes is larger than the broker's maximum packet size of {limit} bytes"
            );
            tracing::warn!(command = %command.id, device = %command.device_id, size, limit, "command too large for the broker; dead-lettered");
            return self.invalid(reader, entry, &reason).await.map(Some);
        }
        match self.publish(&topic, data, command.expires_at).await {
            Published::Acked => {}
            Published::GaveUp => return Ok(None),
            Published::Expired => {
                t::command(t::CommandOutcome::Expired);
                tracing::warn!(command = %command.id, device = %command.device_id, "command expired while it was being sent; given up");
                return Ok(Some(Handled {
                    entry_id: entry.id.clone(),
                    status: Some(status(
                        &command,
                        CommandOutcome::Expired,
                        Some("expired before the broker acknowledged it".into()),
                    )),
                }));
            }
        }
        t::command_publish_seconds(started.elapsed());
        t::command(t::CommandOutcome::Sent);
        Ok(Some(Handled {
            entry_id: entry.id.clone(),
            status: Some(status(&command, CommandOutcome::Sent, None)),
        }))
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
        })
    }

    /// Publishes QoS 1 and waits for the PUBACK, sending again until it comes or the command
    /// expires. Given up at the drain deadline, or when no PUBACK came while draining.
    async fn publish(
        &self,
        topic: &str,
        payload: &[u8],
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Published {
        let mut backoff = Backoff::default();
        let expired = || expires_at.is_some_and(|at| at <= chrono::Utc::now());
        loop {
            if expired() {
                return Published::Expired;
            }
            let (tx, rx) = oneshot::channel();
            lock(&self.acks).queued.push_back(tx);
            let sent = tokio::select! {
                sent = self.client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()) => sent,
                _ = self.abort.cancelled() => return Published::GaveUp,
            };
            if sent.is_err() {
                return Published::GaveUp; // the connection task is gone
            }
            let acked = tokio::select! {
                r = tokio::time::timeout(self.cfg.publish_timeout, rx) => matches!(r, Ok(Ok(()))),
                _ = self.abort.cancelled() => return Published::GaveUp,
            };
            if acked {
                return Published::Acked;
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
        let statuses: Vec<(&str, Vec<u8>)> = handled
            .iter()
            .filter_map(|h| h.status.as_ref())
            .map(|s| (self.status_stream.as_str(), to_bytes(s)))
            .collect();
        let ids: Vec<&str> = handled.iter().map(|h| h.entry_id.as_str()).collect();
        self.producer.publish_batch(&statuses).await?;
        reader.ack(&ids).await?;
        Ok(())
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
        at: chrono::Utc::now(),
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
        at: chrono::Utc::now(),
        extra: Extra::new(),
    })
}
