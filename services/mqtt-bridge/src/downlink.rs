//! Commands back to devices.
//!
//! Reads `cps:commands` through a consumer group, publishes each command QoS 1 on the device's
//! command topic over a connection of its own, waits for the broker's PUBACK, then writes the
//! outcome to `cps:command_status` and only then XACKs. An expired command is not sent; an
//! entry that is not a command is dead-lettered. A crash between PUBACK and XACK sends the
//! command again (at least once; commands carry their id for the device to deduplicate).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_core::bus::{self, Entry, GroupConfig, GroupReader, Producer};
use aurora_core::model::{self, to_bytes, CommandOutcome, CommandStatus, DeviceCommand, Extra};
use aurora_core::ops::Readiness;
use aurora_core::Names;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::{metrics_names as m, SERVICE};

pub const MQTT_COMPONENT: &str = "mqtt-downlink";
pub const COMMANDS_COMPONENT: &str = "commands";
/// The consumer group on the commands stream.
pub const GROUP: &str = "mqtt-bridge";

#[derive(Debug, Clone)]
pub struct DownlinkConfig {
    /// This replica's consumer name in the group (stable, to find its pending entries).
    pub consumer: String,
    /// How long to wait for a PUBACK before trying again.
    pub publish_timeout: Duration,
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

fn lock(acks: &SharedAcks) -> std::sync::MutexGuard<'_, PubAcks> {
    acks.lock().unwrap_or_else(|p| p.into_inner())
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: DownlinkConfig,
    client: AsyncClient,
    eventloop: EventLoop,
    names: Names,
    redis_url: String,
    producer: Producer,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    readiness.register(MQTT_COMPONENT);
    readiness.register(COMMANDS_COMPONENT);
    let acks = SharedAcks::default();
    let done = CancellationToken::new();
    let connection = tokio::spawn(poll_connection(
        eventloop,
        acks.clone(),
        readiness.clone(),
        done.clone(),
    ));
    let sender = Sender {
        cfg,
        client: client.clone(),
        acks,
        names,
        producer,
        readiness,
        shutdown,
    };
    sender.run(&redis_url).await;
    let _ = client.try_disconnect();
    // Let the DISCONNECT go out, then stop polling.
    tokio::time::sleep(Duration::from_millis(50)).await;
    done.cancel();
    if let Err(e) = connection.await {
        tracing::error!(error = %e, "downlink connection task failed");
    }
}

async fn poll_connection(
    mut eventloop: EventLoop,
    acks: SharedAcks,
    readiness: Readiness,
    done: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = done.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                metrics::counter!(m::CONNECTIONS, "link" => "downlink").increment(1);
                readiness.set_ready(MQTT_COMPONENT);
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
                metrics::counter!(m::CONNECTION_ERRORS, "link" => "downlink").increment(1);
                readiness.set_not_ready(MQTT_COMPONENT, format!("broker connection: {e}"));
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

struct Sender {
    cfg: DownlinkConfig,
    client: AsyncClient,
    acks: SharedAcks,
    names: Names,
    producer: Producer,
    readiness: Readiness,
    shutdown: CancellationToken,
}

impl Sender {
    async fn run(&self, redis_url: &str) {
        let Some(mut reader) = self.reader(redis_url).await else {
            return;
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !self.shutdown.is_cancelled() {
            let entries = match reader.next_batch().await {
                Ok(entries) => {
                    backoff.reset();
                    self.readiness.set_ready(COMMANDS_COMPONENT);
                    entries
                }
                Err(e) => {
                    self.failed_redis(&e, &mut backoff).await;
                    continue;
                }
            };
            let mut handled = Vec::with_capacity(entries.len());
            for entry in &entries {
                match self.handle(&reader, entry).await {
                    Some(h) => handled.push(h),
                    None => break, // shutting down: the rest stays pending for next time
                }
            }
            self.settle(&reader, handled).await;
        }
    }

    async fn reader(&self, redis_url: &str) -> Option<GroupReader> {
        let stream = self.names.cps_commands();
        let dead = self.names.cps_deadletter();
        let cfg = GroupConfig::new(&stream, GROUP, &self.cfg.consumer, &dead, SERVICE);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let attempt = async {
                let conn = bus::connect_blocking(redis_url, cfg.block).await?;
                GroupReader::new(cfg.clone(), conn, self.producer.clone()).await
            };
            match attempt.await {
                Ok(reader) => return Some(reader),
                Err(e) => {
                    self.failed_redis(&e, &mut backoff).await;
                    if self.shutdown.is_cancelled() {
                        return None;
                    }
                }
            }
        }
    }

    async fn failed_redis(&self, e: &bus::BusError, backoff: &mut Backoff) {
        metrics::counter!(m::COMMAND_ERRORS).increment(1);
        self.readiness
            .set_not_ready(COMMANDS_COMPONENT, format!("commands stream: {e}"));
        tracing::warn!(error = %e, "reading device commands failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Sends one command (or decides not to). `None` when shutdown came first.
    async fn handle(&self, reader: &GroupReader, entry: &Entry) -> Option<Handled> {
        let data = entry.data.as_deref().unwrap_or_default();
        let command = match model::parse::<DeviceCommand>(data) {
            Ok(c) => c,
            Err(e) => return self.invalid(reader, entry, &e.to_string()).await,
        };
        let now = chrono::Utc::now();
        if command.expires_at.is_some_and(|at| at <= now) {
            metrics::counter!(m::COMMANDS, "outcome" => "expired").increment(1);
            tracing::info!(command = %command.id, device = %command.device_id, "command expired before it could be sent");
            return Some(Handled {
                entry_id: entry.id.clone(),
                status: Some(status(
                    &command,
                    CommandOutcome::Expired,
                    Some("expired before it was sent".into()),
                )),
            });
        }
        let started = Instant::now();
        let topic = self.names.mqtt_command_topic(&command.device_id);
        if !self.publish(&topic, data).await {
            return None;
        }
        metrics::histogram!(m::COMMAND_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::COMMANDS, "outcome" => "sent").increment(1);
        Some(Handled {
            entry_id: entry.id.clone(),
            status: Some(status(&command, CommandOutcome::Sent, None)),
        })
    }

    /// Not a command: dead-lettered (and acknowledged) at once; a `failed` status too when
    /// the entry says which command and device it was.
    async fn invalid(&self, reader: &GroupReader, entry: &Entry, reason: &str) -> Option<Handled> {
        metrics::counter!(m::COMMANDS, "outcome" => "invalid").increment(1);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match reader.dead_letter(entry, reason).await {
                Ok(()) => break,
                Err(e) => {
                    self.failed_redis(&e, &mut backoff).await;
                    if self.shutdown.is_cancelled() {
                        return None;
                    }
                }
            }
        }
        Some(Handled {
            entry_id: entry.id.clone(),
            status: failed_status(entry.data.as_deref().unwrap_or_default(), reason),
        })
    }

    /// Publishes QoS 1 and waits for the PUBACK, trying again until it comes. False when
    /// shutdown came first.
    async fn publish(&self, topic: &str, payload: &[u8]) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let (tx, rx) = oneshot::channel();
            lock(&self.acks).queued.push_back(tx);
            let sent = self
                .client
                .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
                .await;
            if sent.is_err() {
                return false; // the connection task is gone
            }
            let outcome = tokio::select! {
                r = tokio::time::timeout(self.cfg.publish_timeout, rx) => matches!(r, Ok(Ok(()))),
                _ = self.shutdown.cancelled() => return false,
            };
            if outcome {
                return true;
            }
            // No PUBACK: forget the waiters (the connection may be down) and send again.
            *lock(&self.acks) = PubAcks::default();
            metrics::counter!(m::COMMAND_ERRORS).increment(1);
            tracing::warn!(topic, "no PUBACK for a command; sending it again");
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    /// Writes the outcomes, then acknowledges the entries (dead-lettered ones again: harmless).
    async fn settle(&self, reader: &GroupReader, handled: Vec<Handled>) {
        if handled.is_empty() {
            return;
        }
        let stream = self.names.cps_command_status();
        let statuses: Vec<(&str, Vec<u8>)> = handled
            .iter()
            .filter_map(|h| h.status.as_ref())
            .map(|s| (stream.as_str(), to_bytes(s)))
            .collect();
        let ids: Vec<&str> = handled.iter().map(|h| h.entry_id.as_str()).collect();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let result = async {
                self.producer.publish_batch(&statuses).await?;
                reader.ack(&ids).await
            };
            match result.await {
                Ok(()) => return,
                Err(e) => {
                    // Sent but not acknowledged: if we stop now the commands go out again.
                    self.failed_redis(&e, &mut backoff).await;
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                }
            }
        }
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
