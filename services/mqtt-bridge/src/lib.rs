//! mqtt-bridge: sensor devices (MQTT) to the Redis Streams bus, and device commands back.
//!
//! - [`uplink`]: shared QoS 1 subscription with a persistent session, batched pipelined
//!   writes, PUBACK only after the write; [`link`] is its MQTT 5 connection and [`acks`] the
//!   PUBACKs waiting to go out.
//! - [`decode`]: what a device message must be; everything else is dead-lettered.
//! - [`seen`]: `device.seen` announcements with bounded memory.
//! - [`downlink`]: commands from the bus to the devices (MQTT 5, with the command's expiry),
//!   XACK after the broker's PUBACK; [`guard`] checks a privileged action's approval proof
//!   and that the approval is used once before it is sent.
//! - [`replicas`]: a lease per replica; a leaving replica hands its session back, a live one
//!   takes over the session of a replica gone without a word.
//! - [`mqtt`]: broker URL, credentials, TLS.
//! - [`config`]: the flags; [`health`]: the readiness parts and dependencies;
//!   [`telemetry`]: every metric; [`error`]: what can go wrong.
//!
//! [`MqttBridge`] is the service: `aurora_core::service` runs its lifecycle (ops endpoints,
//! readiness, the drain on shutdown).

pub mod acks;
pub mod broker_drops;
pub mod config;
pub mod decode;
pub mod downlink;
pub mod error;
pub mod guard;
pub mod health;
pub mod link;
pub mod mqtt;
pub mod replicas;
pub mod seen;
pub mod telemetry;
pub mod uplink;

use std::time::Duration;

use anyhow::Context as _;
use aurora_core::approval::{ApproverKeys, DEFAULT_PRIVILEGED_ACTIONS};
use aurora_core::bus::{self, Producer};
use aurora_core::durability::SelfCheck;
use aurora_core::replicas::Lease;
use aurora_core::service::{Context, Running, Service};
use aurora_core::Names;
use rumqttc::v5::AsyncClient;

pub use error::{CommandError, ConfigError};
pub use mqtt::MqttSettings;

/// The service's name: dead letters, logs, consumer group, client ids, variables.
pub const SERVICE: &str = "mqtt-bridge";
/// Default ops port.
pub const OPS_PORT: u16 = 9101;

/// The bridge: everything it needs to run. Its replica name (client ids, consumer name) is
/// the instance it is launched as.
#[derive(Debug, Clone)]
pub struct MqttBridge {
    pub names: Names,
    pub redis_url: String,
    pub stream_maxlen: usize,
    pub mqtt: MqttSettings,
    pub share_group: String,
    pub max_payload: usize,
    pub batch_size: usize,
    pub batch_linger: Duration,
    pub queue_capacity: usize,
    pub seen_capacity: usize,
    pub seen_interval: Duration,
    pub command_timeout: Duration,
    /// The largest command packet sent when the broker does not say its maximum.
    pub command_max_packet: usize,
    /// This replica's lease lapses this long after its last renewal.
    pub lease_ttl: Duration,
    /// How often to look for gone replicas.
    pub adoption_interval: Duration,
    /// Device actions sent only with a valid approval proof.
    pub privileged_actions: Vec<String>,
    /// The approving service's public keys (none: every privileged action is refused).
    pub approver_keys: ApproverKeys,
}

/// The uplink's client id: stable per replica, so the broker keeps this replica's session.
pub fn uplink_client_id(instance: &str) -> String {
    format!("{SERVICE}-{instance}-up")
}

/// The downlink's client id (a clean session of its own).
pub fn downlink_client_id(instance: &str) -> String {
    format!("{SERVICE}-{instance}-down")
}

/// The largest packet the downlink's connection takes.
const DOWNLINK_MAX_PACKET: usize = 1024 * 1024;

impl MqttBridge {
    /// The defaults of the flags, on the given broker and Redis (tests, tools).
    pub fn new(names: Names, mqtt: MqttSettings, redis_url: &str) -> Self {
        Self {
            names,
            redis_url: redis_url.to_string(),
            stream_maxlen: 1_000_000,
            mqtt,
            share_group: SERVICE.to_string(),
            max_payload: 256 * 1024,
            batch_size: 512,
            batch_linger: Duration::ZERO,
            queue_capacity: 1024,
            seen_capacity: 100_000,
            seen_interval: Duration::from_secs(60),
            command_timeout: Duration::from_secs(10),
            command_max_packet: 256 * 1024,
            lease_ttl: Duration::from_secs(15),
            adoption_interval: Duration::from_secs(5),
            privileged_actions: DEFAULT_PRIVILEGED_ACTIONS
                .iter()
                .map(|a| a.to_string())
                .collect(),
            approver_keys: ApproverKeys::default(),
        }
    }

    /// The largest packet the uplink takes from the broker: the payload limit plus room for
    /// the topic, so an oversized payload is read and dead-lettered rather than breaking the
    /// connection (and coming back for ever). The broker's `max_packet_size` should not be
    /// above this.
    pub fn uplink_max_packet(&self) -> usize {
        self.max_payload.saturating_add(64 * 1024 + 16)
    }

    /// The broker sends the uplink at most this many messages ahead of the acks.
    fn receive_max(&self) -> u16 {
        u16::try_from(self.queue_capacity.max(self.batch_size)).unwrap_or(u16::MAX)
    }

    fn uplink_options(&self, instance: &str) -> Result<link::LinkOptions, ConfigError> {
        self.mqtt.link_options(
            &uplink_client_id(instance),
            u32::try_from(self.uplink_max_packet()).unwrap_or(u32::MAX),
            self.receive_max(),
        )
    }

    fn downlink_options(&self, instance: &str) -> Result<rumqttc::v5::MqttOptions, ConfigError> {
        self.mqtt
            .options(&downlink_client_id(instance), true, DOWNLINK_MAX_PACKET)
    }

    /// Says which actions need an approval and which keys prove one; warns when none can.
    fn log_guard(&self) {
        if self.privileged_actions.is_empty() {
            tracing::warn!("no privileged device actions (--privileged-actions is empty): every command is sent without an approval proof");
        } else if self.approver_keys.is_empty() {
            tracing::warn!(
                privileged_actions = ?self.privileged_actions,
                "no approver public key configured (--approval-public-keys): every privileged command is refused and dead-lettered"
            );
        } else {
            tracing::info!(
                privileged_actions = ?self.privileged_actions,
                approver_keys = ?self.approver_keys.ids(),
                "privileged commands are sent only with an approval proof signed by one of these keys"
            );
        }
    }

    /// Refuses broker settings that cannot work (URL, credentials, TLS files).
    pub fn check_broker_settings(&self) -> Result<(), ConfigError> {
        self.uplink_options("check")?;
        self.downlink_options("check")?;
        Ok(())
    }
}

impl Service for MqttBridge {
    const NAME: &'static str = SERVICE;
    const OPS_PORT: u16 = OPS_PORT;

    /// Start order: Redis (the bridge acks nothing it cannot write), then both broker links,
    /// which connect (and reconnect) by themselves.
    async fn start(self, ctx: Context) -> anyhow::Result<Running> {
        let up_link = self
            .uplink_options(&ctx.instance)
            .context("uplink broker settings")?;
        let down_opts = self
            .downlink_options(&ctx.instance)
            .context("downlink broker settings")?;
        let redis = bus::redacted_url(&self.redis_url);
        for part in health::PARTS {
            ctx.readiness.register(part);
        }
        for part in [health::MQTT_UPLINK, health::MQTT_DOWNLINK] {
            ctx.readiness
                .set_not_ready(part, format!("connecting to {}", self.mqtt.url));
        }
        // The commands stream is read from Redis: not ready until Redis answers.
        ctx.readiness
            .set_not_ready(health::COMMANDS, format!("connecting to {redis}"));
        // The bridge acknowledges nothing it cannot write, so nothing starts before Redis.
        let conn =
            aurora_core::health::redis_at_start(&ctx.readiness, &ctx.shutdown, &self.redis_url)
                .await?;
        let producer = Producer::new(conn, self.stream_maxlen);
        let commands = self.names.cps_commands();
        let dependencies = health::dependencies(producer.conn(), &commands);
        dependencies.check(&ctx.readiness).await;

        tracing::info!(
            namespace = self.names.namespace(),
            client_id = %up_link.client_id,
            share_group = %self.share_group,
            "bridging devices and the bus"
        );
        self.log_guard();
        let mut running = Running::new(&ctx);
        running.spawn(dependencies.clone().watch(
            ctx.readiness.clone(),
            health::WATCH_INTERVAL,
            ctx.shutdown.clone(),
        ));
        running.spawn(
            SelfCheck::redis(producer.conn()).watch(ctx.readiness.clone(), ctx.shutdown.clone()),
        );

        // The lease: taken before the uplink connects (no replica adopts this one's session
        // while it is alive), kept until the session was handed back.
        let lease = Lease::new(
            producer.conn(),
            &self.names,
            SERVICE,
            &ctx.instance,
            self.lease_ttl,
        );
        if let Err(e) = lease.renew().await {
            tracing::warn!(error = %e, "cannot take the replica lease yet; retrying in the background");
        }
        let uplink_cfg = uplink::UplinkConfig {
            share_group: self.share_group.clone(),
            max_payload: self.max_payload,
            batch_size: self.batch_size,
            batch_linger: self.batch_linger,
            queue_capacity: self.queue_capacity,
            seen_capacity: self.seen_capacity,
            seen_interval: self.seen_interval,
        };
        let adopter = replicas::Adopter {
            lease: lease.clone(),
            interval: self.adoption_interval,
            cfg: uplink_cfg.clone(),
            link: up_link.clone(),
            names: self.names.clone(),
            producer: producer.clone(),
        };
        let uplink = uplink::Uplink {
            cfg: uplink_cfg,
            link: up_link,
            names: self.names.clone(),
            producer: producer.clone(),
            readiness: ctx.readiness.clone(),
        };
        let up_link_limit = uplink.link.broker_limit.clone();
        let (connection, writer) =
            uplink.tasks(uplink::Role::Own, ctx.shutdown.clone(), ctx.abort.clone());
        let (own_ended, own) = tokio::sync::oneshot::channel();
        let (waiting_lease, readiness, shutdown) =
            (lease.clone(), ctx.readiness.clone(), ctx.shutdown.clone());
        running.spawn(async move {
            // Coming back under a name that is being adopted: let the adoption end first.
            replicas::wait_while_adopted(&waiting_lease, &readiness, &shutdown).await;
            let _ = own_ended.send(connection.await);
        });
        running.spawn(writer);
        running.spawn(replicas::hold_lease(lease, own, ctx.abort.clone()));
        running.spawn(adopter.run(ctx.shutdown.clone(), ctx.abort.clone()));

        // What the broker drops by its queue limits: counts read on the downlink's connection,
        // taken to the loss ledger.
        let (broker_dropped, counts) = tokio::sync::watch::channel(None);
        running.spawn(broker_drops::record(
            counts,
            producer.conn(),
            self.names.ledger_mqtt(),
            self.mqtt.broker_name(),
            ctx.shutdown.clone(),
        ));
        let (down_client, down_loop) = AsyncClient::new(down_opts, 64);
        let downlink = downlink::Downlink {
            cfg: downlink::DownlinkConfig {
                consumer: ctx.instance.clone(),
                publish_timeout: self.command_timeout,
                max_packet: self.command_max_packet.min(DOWNLINK_MAX_PACKET),
                broker_limit: up_link_limit,
                guard: guard::Guard {
                    privileged: self.privileged_actions.clone(),
                    keys: self.approver_keys.clone(),
                },
            },
            names: self.names.clone(),
            redis_url: self.redis_url.clone(),
            producer,
            dependencies,
            readiness: ctx.readiness.clone(),
            broker_dropped,
        };
        let (connection, consumer) = downlink.tasks(
            down_client,
            down_loop,
            ctx.shutdown.clone(),
            ctx.abort.clone(),
        );
        running.spawn(connection);
        running.spawn(consumer);
        Ok(running)
    }
}
