//! What the bridge's tests share: a bridge in-process or as a child process, simulated
//! devices, and reading what the bridge wrote.
#![allow(clippy::unwrap_used, dead_code)]

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aurora_core::bus::{self, Conn, Entry};
use aurora_core::ops::Readiness;
use aurora_core::service::{launch, LaunchOptions, Stopped};
use aurora_core::Names;
use mqtt_bridge::{MqttBridge, MqttSettings};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;

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
    bridge.share_group = format!("g{}", names.namespace());
    Config {
        bridge,
        instance: format!("{}-{instance}", names.namespace()),
    }
}

/// The built bridge binary as a child process (killed when dropped).
pub struct BridgeProcess {
    child: Option<Child>,
    env: Vec<(String, String)>,
    pub ops_port: u16,
}

impl BridgeProcess {
    pub fn spawn(names: &Names, mqtt_port: u16, redis_url: &str, instance: &str) -> Self {
        let ops_port = aurora_testkit::free_port();
        let env = vec![
            ("AURORA_NAMESPACE".into(), names.namespace().to_string()),
            ("AURORA_REDIS_URL".into(), redis_url.to_string()),
            (
                "AURORA_MQTT_BRIDGE_MQTT_URL".into(),
                format!("mqtt://127.0.0.1:{mqtt_port}"),
            ),
            (
                "AURORA_INSTANCE_ID".into(),
                format!("{}-{instance}", names.namespace()),
            ),
            ("AURORA_OPS_ADDR".into(), format!("127.0.0.1:{ops_port}")),
            (
                "AURORA_MQTT_BRIDGE_SHARE_GROUP".into(),
                format!("g{}", names.namespace()),
            ),
            ("AURORA_SHUTDOWN_TIMEOUT".into(), "5s".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        let mut p = Self {
            child: None,
            env,
            ops_port,
        };
        p.start();
        p
    }

    pub fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_mqtt-bridge"))
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no drain, no DISCONNECT.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (up to [`LONG`]) for the exit: true when it exited with 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + LONG;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// GET on the ops port; `None` while it does not answer.
    pub async fn get(&self, path: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.ops_port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    }

    pub async fn wait_ready(&self) {
        aurora_testkit::wait_until(LONG, "bridge process ready", || async {
            self.get("/readyz")
                .await
                .filter(|r| r.starts_with("HTTP/1.0 200"))
                .map(|_| ())
        })
        .await;
    }

    /// A counter's value summed over its labels, from /metrics.
    pub async fn counter(&self, name: &str) -> f64 {
        let body = self.get("/metrics").await.unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A simulated device (or any MQTT client): publishes QoS 1 and waits for every PUBACK.
pub struct Device {
    pub client: AsyncClient,
    acked: tokio::sync::watch::Receiver<u64>,
    subacked: tokio::sync::watch::Receiver<u64>,
    pub received: tokio::sync::mpsc::Receiver<rumqttc::Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    pub async fn connect(port: u16, client_id: &str, credentials: Option<(&str, &str)>) -> Self {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some((u, p)) = credentials {
            opts.set_credentials(u, p);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (ack_tx, acked) = tokio::sync::watch::channel(0u64);
        let (suback_tx, subacked) = tokio::sync::watch::channel(0u64);
        let (pub_tx, received) = tokio::sync::mpsc::channel(10_000);
        let (conn_tx, conn_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut conn_tx = Some(conn_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = conn_tx.take() {
                            let _ = tx.send(true);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        ack_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        suback_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = pub_tx.try_send(p);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(_) => {
                        if let Some(tx) = conn_tx.take() {
                            let _ = tx.send(false);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let connected = tokio::time::timeout(LONG, conn_rx).await.unwrap().unwrap();
        assert!(connected, "{client_id} could not connect");
        Self {
            client,
            acked,
            subacked,
            received,
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Waits until `n` publishes in all were acknowledged by the broker.
    pub async fn wait_acked(&mut self, n: u64) {
        let mut rx = self.acked.clone();
        tokio::time::timeout(LONG, rx.wait_for(|a| *a >= n))
            .await
            .expect("broker acknowledged every publish")
            .unwrap();
    }

    /// Waits until the broker answered `n` SUBSCRIBEs in all.
    pub async fn wait_subacked(&self, n: u64) {
        let mut rx = self.subacked.clone();
        tokio::time::timeout(LONG, rx.wait_for(|a| *a >= n))
            .await
            .expect("broker answered every subscription")
            .unwrap();
    }

    pub async fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Forgets the persistent session of `client_id` on the broker (tests leave nothing behind).
pub async fn forget_session(port: u16, client_id: &str) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_disconnect();
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

pub async fn redis(url: &str) -> Conn {
    bus::connect(url).await.unwrap()
}

/// Every entry of a stream, oldest first.
pub async fn read_all(conn: &mut Conn, stream: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut after = "0-0".to_string();
    loop {
        let batch = bus::range(conn, stream, &after, 1000).await.unwrap();
        let Some(last) = batch.last() else {
            return out;
        };
        after = last.id.clone();
        out.extend(batch);
    }
}

/// The `data` of every entry as JSON.
pub async fn docs(conn: &mut Conn, stream: &str) -> Vec<serde_json::Value> {
    read_all(conn, stream)
        .await
        .into_iter()
        .map(|e| serde_json::from_slice(&e.data.unwrap()).unwrap())
        .collect()
}

pub async fn xlen(conn: &mut Conn, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap_or(0)
}

/// Waits until `stream` holds at least `n` entries.
pub async fn wait_len(conn: &Conn, stream: &str, n: u64, timeout: Duration) {
    aurora_testkit::wait_until(timeout, &format!("{n} entries in {stream}"), || {
        let mut c = conn.clone();
        async move { (xlen(&mut c, stream).await >= n).then_some(()) }
    })
    .await;
}

/// Deletes every key of the namespace on a shared Redis.
pub async fn cleanup(conn: &mut Conn, names: &Names) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", names.namespace()))
        .query_async(conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(conn).await;
    }
}

/// Counts per sequence number in docs carrying `"seq"`: (distinct, duplicates).
pub fn seq_counts(docs: &[serde_json::Value]) -> (std::collections::BTreeMap<u64, u32>, u64) {
    let mut counts = std::collections::BTreeMap::new();
    for d in docs {
        if let Some(s) = d["seq"].as_u64() {
            *counts.entry(s).or_insert(0u32) += 1;
        }
    }
    let dups = counts.values().map(|c| u64::from(c - 1)).sum();
    (counts, dups)
}
