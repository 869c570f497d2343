//! mqtt-bridge: sensor devices (MQTT) to the Redis Streams bus, and device commands back.
//!
//! - [`uplink`]: shared QoS 1 subscription with a persistent session, batched pipelined
//!   writes, PUBACK only after the write.
//! - [`decode`]: what a device message must be; everything else is dead-lettered.
//! - [`seen`]: `device.seen` announcements with bounded memory.
//! - [`downlink`]: commands from the bus to the devices, XACK after the broker's PUBACK.
//! - [`mqtt`]: broker URL, credentials, TLS.
//! - [`cli`]: the flags and their `AURORA_*` variables.

pub mod acks;
pub mod backoff;
pub mod cli;
pub mod decode;
pub mod downlink;
pub mod error;
pub mod link;
pub mod metrics_names;
pub mod mqtt;
pub mod seen;
pub mod uplink;

use std::time::Duration;

use aurora_core::bus::{self, Producer};
use aurora_core::ops::Readiness;
use aurora_core::Names;
use rumqttc::AsyncClient;
use tokio_util::sync::CancellationToken;

pub use error::{BridgeError, ConfigError};
pub use mqtt::MqttSettings;

/// The service's name in dead letters, logs and consumer groups.
pub const SERVICE: &str = "mqtt-bridge";
/// Default ops port.
pub const OPS_PORT: u16 = 9101;

/// Everything the bridge needs to run.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub names: Names,
    /// This replica's name: client ids and the consumer name derive from it.
    pub instance: String,
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
    pub shutdown_timeout: Duration,
}

impl BridgeConfig {
    /// Defaults for a replica named `instance` on the given broker and Redis (tests).
    pub fn new(names: Names, instance: &str, mqtt: MqttSettings, redis_url: &str) -> Self {
        Self {
            names,
            instance: instance.to_string(),
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
            shutdown_timeout: Duration::from_secs(20),
        }
    }

    /// The uplink's client id: stable, so the broker keeps this replica's session.
    pub fn uplink_client_id(&self) -> String {
        format!("{SERVICE}-{}-up", self.instance)
    }

    pub fn downlink_client_id(&self) -> String {
        format!("{SERVICE}-{}-down", self.instance)
    }

    /// The largest packet the uplink takes from the broker: the payload limit plus room for
    /// the topic, so an oversized payload is read and dead-lettered rather than breaking the
    /// connection (and coming back for ever). The broker's `max_packet_size` should not be
    /// above this.
    pub fn uplink_max_packet(&self) -> usize {
        self.max_payload.saturating_add(64 * 1024 + 16)
    }
}

/// Registers every part `/readyz` waits for. [`run`] does it too; a caller that polls the
/// readiness before `run` gets going calls it first, so "nothing registered" never reads as
/// ready.
pub fn register_components(readiness: &Readiness) {
    for component in [
        uplink::REDIS_COMPONENT,
        uplink::MQTT_COMPONENT,
        downlink::MQTT_COMPONENT,
        downlink::COMMANDS_COMPONENT,
    ] {
        readiness.register(component);
    }
}

/// Runs the bridge until `shutdown` is cancelled, then drains within `shutdown_timeout`.
/// Start order: Redis (the bridge acks nothing it cannot write), then both broker links.
pub async fn run(
    cfg: BridgeConfig,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), BridgeError> {
    // The broker sends at most this many messages ahead of the acks.
    let receive_max = u16::try_from(cfg.queue_capacity.max(cfg.batch_size)).unwrap_or(u16::MAX);
    let up_link = cfg.mqtt.link_options(
        &cfg.uplink_client_id(),
        u32::try_from(cfg.uplink_max_packet()).unwrap_or(u32::MAX),
        receive_max,
    )?;
    let down_opts = cfg
        .mqtt
        .options(&cfg.downlink_client_id(), true, 1024 * 1024)?;

    register_components(&readiness);
    let Some(producer) = connect_redis(&cfg, &readiness, &shutdown).await else {
        return Ok(());
    };
    readiness.set_ready(uplink::REDIS_COMPONENT);

    let abort = CancellationToken::new();
    let deadline = tokio::spawn(drain_deadline(
        shutdown.clone(),
        abort.clone(),
        readiness.clone(),
        cfg.shutdown_timeout,
    ));

    let (down_client, down_loop) = AsyncClient::new(down_opts, 64);
    let uplink_cfg = uplink::UplinkConfig {
        client_id: cfg.uplink_client_id(),
        share_group: cfg.share_group.clone(),
        max_payload: cfg.max_payload,
        batch_size: cfg.batch_size,
        batch_linger: cfg.batch_linger,
        queue_capacity: cfg.queue_capacity,
        seen_capacity: cfg.seen_capacity,
        seen_interval: cfg.seen_interval,
    };
    let downlink_cfg = downlink::DownlinkConfig {
        consumer: cfg.instance.clone(),
        publish_timeout: cfg.command_timeout,
    };
    tracing::info!(
        namespace = cfg.names.namespace(),
        client_id = %cfg.uplink_client_id(),
        share_group = %cfg.share_group,
        "bridging devices and the bus"
    );
    let up = uplink::run(
        uplink_cfg,
        up_link,
        cfg.names.clone(),
        producer.clone(),
        readiness.clone(),
        shutdown.clone(),
        abort.clone(),
    );
    let down = downlink::run(
        downlink_cfg,
        down_client,
        down_loop,
        cfg.names.clone(),
        cfg.redis_url.clone(),
        producer,
        readiness.clone(),
        shutdown.clone(),
    );
    // The downlink stops at shutdown; the deadline also cuts a stuck command send short.
    let down = async {
        tokio::select! {
            _ = down => {}
            _ = abort.cancelled() => {}
        }
    };
    tokio::join!(up, down);
    deadline.abort();
    tracing::info!("bridge stopped");
    Ok(())
}

/// Connects to Redis, retrying until it answers or shutdown.
async fn connect_redis(
    cfg: &BridgeConfig,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Option<Producer> {
    let mut backoff = backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let attempt = async {
            let mut conn = bus::connect(&cfg.redis_url).await?;
            bus::ping(&mut conn).await?;
            Ok::<_, bus::BusError>(conn)
        };
        match attempt.await {
            Ok(conn) => return Some(Producer::new(conn, cfg.stream_maxlen)),
            Err(e) => {
                readiness.set_not_ready(uplink::REDIS_COMPONENT, e.to_string());
                tracing::warn!(error = %e, "Redis unavailable at start; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// At shutdown: `/readyz` fails at once; `abort` fires when the drain time is up.
async fn drain_deadline(
    shutdown: CancellationToken,
    abort: CancellationToken,
    readiness: Readiness,
    timeout: Duration,
) {
    shutdown.cancelled().await;
    readiness.start_draining();
    tokio::time::sleep(timeout).await;
    tracing::warn!(?timeout, "drain deadline passed");
    abort.cancel();
}
