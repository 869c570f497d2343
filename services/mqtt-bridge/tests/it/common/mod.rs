//! What the bridge's tests share: a bridge in-process or its binary run by the test
//! harness, and devices on a broker of the test's choosing. Everything else (devices,
//! Redis readers, clean-up) is aurora-testkit's.
#![allow(clippy::unwrap_used, dead_code)]

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use aurora_core::ops::Readiness;
use aurora_core::service::{launch, LaunchOptions, Stopped};
use aurora_core::Names;
use mqtt_bridge::{MqttBridge, MqttSettings};
use tokio_util::sync::CancellationToken;

pub use aurora_testkit::prelude::*;

pub const LONG: Duration = Duration::from_secs(30);

/// A bridge running in this process.
pub struct Bridge {
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Stopped>,
}

impl Bridge {
    /// Launches the bridge (returns once it is connected to Redis; the broker links come up
    /// by themselves: [`Bridge::ready`]).
    pub async fn start(cfg: Config) -> Self {
        aurora_core::ops::metrics_handle();
        let shutdown = CancellationToken::new();
        let mut options = LaunchOptions::local(&cfg.instance);
        options.drain_deadline = Duration::from_secs(5);
        let launched = tokio::time::timeout(LONG, launch(cfg.bridge, options, shutdown.clone()))
            .await
            .expect("bridge started in time")
            .expect("bridge started");
        let readiness = launched.readiness.clone();
        let task = tokio::spawn(launched.stopped());
        Self {
            readiness,
            shutdown,
            task,
        }
    }

    /// Waits until both broker links and Redis are up (subscribed, so nothing is missed).
    pub async fn ready(&self) {
        let r = self.readiness.clone();
        aurora_testkit::wait_until(LONG, "bridge ready", || {
            let r = r.clone();
            async move { r.is_ready().then_some(()) }
        })
        .await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(LONG, self.task)
            .await
            .expect("bridge drained in time")
            .expect("bridge task");
        assert_ne!(stopped, Stopped::Failed, "bridge ran");
    }
}

/// A bridge's settings in a test and the replica name it runs as.
pub struct Config {
    pub bridge: MqttBridge,
    pub instance: String,
}

impl Config {
    /// The uplink's client id (its persistent session on the broker).
    pub fn uplink_client_id(&self) -> String {
        mqtt_bridge::uplink_client_id(&self.instance)
    }
}

impl Deref for Config {
    type Target = MqttBridge;
    fn deref(&self) -> &MqttBridge {
        &self.bridge
    }
}

impl DerefMut for Config {
    fn deref_mut(&mut self) -> &mut MqttBridge {
        &mut self.bridge
    }
}

/// A config on the given broker port and Redis, instance named after the namespace.
pub fn config(names: &Names, mqtt_port: u16, redis_url: &str, instance: &str) -> Config {
    let mut bridge = MqttBridge::new(
        names.clone(),
        MqttSettings::plain("127.0.0.1", mqtt_port),
        redis_url,
    );
    bridge.share_group = share_group(names);
    Config {
        bridge,
        instance: format!("{}-{instance}", names.namespace()),
    }
}

/// A bridge in-process on the shared broker and Redis, in a fresh namespace that is deleted
/// at the end of the test (also when it fails).
pub struct SharedRun {
    pub names: Names,
    pub redis: aurora_core::bus::Conn,
    pub bridge: Bridge,
    client_id: String,
    _cleanup: Cleanup,
}

impl SharedRun {
    /// Started with `tune` applied to its settings, and ready.
    pub async fn start(tune: impl FnOnce(&mut Config)) -> Self {
        let names = aurora_testkit::names();
        let cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
        let mut cfg = config(&names, MQTT_PORT, REDIS_URL, "a");
        tune(&mut cfg);
        let client_id = cfg.uplink_client_id();
        let bridge = Bridge::start(cfg).await;
        bridge.ready().await;
        Self {
            redis: redis(REDIS_URL).await,
            names,
            bridge,
            client_id,
            _cleanup: cleanup,
        }
    }

    /// A device of the test on the shared broker, connected.
    pub async fn device(&self, name: &str) -> MqttDevice {
        device_on(MQTT_PORT, &format!("{}-{name}", self.names.namespace())).await
    }

    /// Stops the bridge and forgets its broker session (nothing is left queued for it).
    pub async fn stop(self) {
        self.bridge.stop().await;
        forget_session(MQTT_HOST, MQTT_PORT, &self.client_id).await;
    }
}

/// The shared-subscription group of a test's bridges (in-process and binaries alike).
pub fn share_group(names: &Names) -> String {
    format!("g{}", names.namespace())
}

/// The built bridge binary as a test runs it: in the test's namespace and share group, on
/// this broker and Redis.
pub fn site(names: &Names, mqtt_port: u16, redis_url: &str) -> Site {
    let mut site = Site::new(names, "site-a", 0)
        .with_binary(Svc::MqttBridge, env!("CARGO_BIN_EXE_mqtt-bridge"));
    site.redis_url = redis_url.to_string();
    site.mqtt_url = format!("mqtt://127.0.0.1:{mqtt_port}");
    site.shutdown_timeout = "5s".into();
    site
}

/// The bridge binary spawned (see [`site`]), not waited for.
pub fn spawn_bridge(names: &Names, mqtt_port: u16, redis_url: &str) -> Service {
    site(names, mqtt_port, redis_url)
        .spawn(Svc::MqttBridge, &[("share-group", &share_group(names))])
}

/// The bridge binary started (see [`site`]) and ready.
pub async fn start_bridge(names: &Names, mqtt_port: u16, redis_url: &str) -> Service {
    site(names, mqtt_port, redis_url)
        .start(Svc::MqttBridge, &[("share-group", &share_group(names))])
        .await
}

/// A device (or any MQTT client) on a broker on loopback, connected.
pub async fn device_on(port: u16, client_id: &str) -> MqttDevice {
    MqttDevice::online("127.0.0.1", port, client_id, None).await
}

/// The sequence numbers of documents carrying `"seq"`: (how many distinct, duplicates).
pub fn seq_counts(docs: &[serde_json::Value]) -> (u64, u64) {
    let counts = tally(
        docs.iter()
            .filter_map(|d| d["seq"].as_u64())
            .map(|s| s.to_string()),
    );
    (counts.len() as u64, duplicates(&counts) as u64)
}
