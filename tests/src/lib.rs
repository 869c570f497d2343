//! The harness of Aurora's whole-system tests: the service binaries as built, started as
//! processes against the real servers, each test in a namespace, Redis database index and
//! PostgreSQL database of its own.
//!
//! - [`Site`]: what one site's services are told (namespace, site id, Redis, NATS, MQTT,
//!   PostgreSQL, JWT secret); [`Site::start`] spawns a service and waits for its `/readyz`.
//! - [`Service`]: one running binary, its output in a log file (its tail is printed when the
//!   test fails); SIGKILL, SIGTERM and restart with the same environment; killed on drop.
//! - [`TestDb`], tokens, a WebSocket console client ([`Console`]), an MQTT device
//!   ([`MqttDevice`]), readers of Redis streams and lists and of JetStream streams, the
//!   `aurora` CLI, and [`cleanup`] of what a namespace left behind.
//!
//! The binaries are looked up next to the test executable (`target/<profile>/`): build them
//! first with `cargo build --workspace --bins`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aurora_core::auth::{Minter, Permission};
use aurora_core::bus::{self, Conn};
use aurora_core::names::Channel;
use aurora_core::Names;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use aurora_testkit::{free_port, wait_until, DATABASE_URL, MQTT_HOST, MQTT_PORT, NATS_URL};

/// The HS256 secret every service of a test is given.
pub const SECRET: &str = "aurora-e2e-test-secret";
/// How long anything may take on this loaded machine before a test gives up.
pub const WAIT: Duration = Duration::from_secs(45);
/// The shared Redis, without a database index.
pub const REDIS_BASE: &str = "redis://127.0.0.1:6379";

// ---------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------

/// The five services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Svc {
    MqttBridge,
    DeviceRegistry,
    WsGateway,
    FederationGateway,
    EveIngest,
}

impl Svc {
    pub fn binary_name(self) -> &'static str {
        match self {
            Self::MqttBridge => "mqtt-bridge",
            Self::DeviceRegistry => "device-registry",
            Self::WsGateway => "ws-gateway",
            Self::FederationGateway => "federation-gateway",
            Self::EveIngest => "eve-ingest",
        }
    }
}

/// `target/<profile>/`, the directory of the binaries as built.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    // target/<profile>/deps/<test executable>
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// The path of a workspace binary, or a failure that says how to build it. Warns when a
/// source file of its package or of aurora-core is newer than the binary (a stale build).
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {} not found: run `cargo build --workspace --bins` before these tests",
        path.display()
    );
    let package = match name {
        "aurora" => "crates/aurora-cli",
        service => &format!("services/{service}"),
    };
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let newest = [
        format!("{package}/src"),
        "crates/aurora-core/src".to_string(),
    ]
    .iter()
    .filter_map(|dir| newest_file(&workspace_path(dir)))
    .max();
    if let (Some(built), Some(newest)) = (built, newest) {
        if newest > built {
            eprintln!(
                "warning: {} is older than its sources: run `cargo build --workspace --bins`",
                path.display()
            );
        }
    }
    path
}

/// The latest modification time of the files under `dir`.
fn newest_file(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                // src/bin holds benchmarks, not the service.
                (e.file_name() != "bin")
                    .then(|| newest_file(&e.path()))
                    .flatten()
            } else {
                meta.modified().ok()
            }
        })
        .max()
}

// ---------------------------------------------------------------------------------------
// Sites and services
// ---------------------------------------------------------------------------------------

/// What the services of one site are told.
#[derive(Debug, Clone)]
pub struct Site {
    pub names: Names,
    pub site_id: String,
    pub redis_url: String,
    pub nats_url: String,
    pub mqtt_url: String,
    pub database_url: Option<String>,
}

impl Site {
    /// A site in `names`, on the shared servers, with this Redis database index.
    pub fn new(names: &Names, site_id: &str, redis_db: u8) -> Self {
        Self {
            names: names.clone(),
            site_id: site_id.to_string(),
            redis_url: format!("{REDIS_BASE}/{redis_db}"),
            nats_url: NATS_URL.to_string(),
            mqtt_url: format!("mqtt://{MQTT_HOST}:{MQTT_PORT}"),
            database_url: None,
        }
    }

    pub fn with_database(mut self, db: &TestDb) -> Self {
        self.database_url = Some(db.url.clone());
        self
    }

    /// The environment of a service of this site (every service ignores what it does not
    /// know), then `extra`.
    fn env(&self, svc: Svc, instance: &str, ops: u16, http: u16) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("AURORA_NAMESPACE", self.names.namespace().to_string()),
            ("AURORA_SITE_ID", self.site_id.clone()),
            ("AURORA_REDIS_URL", self.redis_url.clone()),
            ("AURORA_NATS_URL", self.nats_url.clone()),
            ("AURORA_MQTT_URL", self.mqtt_url.clone()),
            ("AURORA_JWT_SECRET", SECRET.to_string()),
            ("AURORA_OPS_ADDR", format!("127.0.0.1:{ops}")),
            ("AURORA_HTTP_ADDR", format!("127.0.0.1:{http}")),
            ("AURORA_INSTANCE_ID", instance.to_string()),
            ("AURORA_LOG_FORMAT", "json".to_string()),
            ("AURORA_SHUTDOWN_TIMEOUT", "10s".to_string()),
            ("RUST_LOG", "info".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(db) = &self.database_url {
            env.push(("AURORA_DATABASE_URL".into(), db.clone()));
        }
        // Short intervals, so that a test sees the service's periodic work without waiting.
        let tuned: &[(&str, &str)] = match svc {
            Svc::DeviceRegistry => &[
                ("AURORA_TRUST_ON_FIRST_USE", "true"),
                ("AURORA_SWEEP_INTERVAL", "500ms"),
                ("AURORA_RESEND_AFTER", "3s"),
                ("AURORA_CLAIM_IDLE", "5s"),
            ],
            Svc::WsGateway => &[("AURORA_DRAIN_GRACE", "200ms")],
            Svc::FederationGateway => &[
                ("AURORA_FEDERATION_ACK_WAIT", "5s"),
                ("AURORA_FEDERATION_NAK_DELAY", "1s"),
                ("AURORA_FEDERATION_EXPORT_CLAIM_IDLE", "5s"),
            ],
            Svc::EveIngest => &[("AURORA_EVE_BLOCK", "200ms")],
            Svc::MqttBridge => &[],
        };
        env.extend(tuned.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// Spawns `svc` of this site (with `extra` environment variables, which win) and waits
    /// until its `/readyz` answers 200.
    pub async fn start(&self, svc: Svc, extra: &[(&str, &str)]) -> Service {
        // A port found free can be taken by another test before the service binds it: then
        // try again on other ports.
        for _ in 0..3 {
            let mut service = self.spawn(svc, extra);
            match service.try_ready().await {
                Ok(()) => return service,
                Err(NotReady::Exited(log)) if log.contains("in use") => {
                    eprintln!("{}: port taken, starting again", service.instance);
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{}: no free ports after 3 attempts", svc.binary_name());
    }

    /// Spawns `svc` without waiting for it.
    pub fn spawn(&self, svc: Svc, extra: &[(&str, &str)]) -> Service {
        let instance = format!(
            "{}-{}-{}",
            svc.binary_name(),
            self.site_id,
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let (ops, http) = (free_port(), free_port());
        let mut env = self.env(svc, &instance, ops, http);
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        Service::spawn(svc, &instance, env, ops, http)
    }
}

/// Why a service did not become ready; each holds the message with the log's tail.
#[derive(Debug)]
enum NotReady {
    Exited(String),
    Timeout(String),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(m) | Self::Timeout(m) => f.write_str(m),
        }
    }
}

/// One service binary running as a process of the test. Killed (SIGKILL) when dropped; the
/// tail of its log is printed when the test is failing.
pub struct Service {
    pub svc: Svc,
    pub instance: String,
    pub ops_port: u16,
    pub http_port: u16,
    program: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    fn spawn(svc: Svc, instance: &str, env: Vec<(String, String)>, ops: u16, http: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_path = dir.path().join(format!("{instance}.log"));
        let mut s = Self {
            svc,
            instance: instance.to_string(),
            ops_port: ops,
            http_port: http,
            program: binary(svc.binary_name()),
            env,
            child: None,
            log_path,
            _dir: dir,
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.instance);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut cmd = Command::new(&self.program);
        // Nothing of the developer's own AURORA_* settings leaks in.
        for (k, _) in std::env::vars() {
            if k.starts_with("AURORA_") || k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display())),
        );
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ops_port)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn ws_url(&self, channel: Channel, query: &str) -> String {
        format!(
            "ws://127.0.0.1:{}{}?{query}",
            self.http_port,
            channel.path()
        )
    }

    /// The status of `GET /readyz` (None when nothing answers).
    pub async fn readyz(&self) -> Option<u16> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        let r = client.get(self.ops_url("/readyz")).send().await.ok()?;
        Some(r.status().as_u16())
    }

    /// Waits until `/readyz` is 200; fails with the log's tail if the process exits or the
    /// deadline passes.
    pub async fn wait_ready(&mut self) {
        if let Err(e) = self.try_ready().await {
            panic!("{e}");
        }
    }

    async fn try_ready(&mut self) -> Result<(), NotReady> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.readyz().await == Some(200) {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                self.child = None;
                return Err(NotReady::Exited(format!(
                    "{} exited ({status}) before it was ready; log:\n{}",
                    self.instance,
                    self.log_tail(60)
                )));
            }
            if Instant::now() > deadline {
                return Err(NotReady::Timeout(format!(
                    "{} not ready after {WAIT:?}; log:\n{}",
                    self.instance,
                    self.log_tail(60)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The exit status, when the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait (up to `WAIT`) for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("service running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM failed");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "{} did not exit within {WAIT:?} of SIGTERM; log:\n{}",
                    self.instance,
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts again with the same environment (same ports and instance id) and waits until
    /// it is ready.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch();
        self.wait_ready().await;
    }

    /// SIGKILL then start again, without waiting for readiness.
    pub fn kill_and_spawn(&mut self) {
        self.kill();
        self.launch();
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The last `lines` lines of the log (at most 64 KiB are read).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
            let _ = f.read_to_end(&mut buf);
        }
        let text = String::from_utf8_lossy(&buf);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A counter or gauge of `/metrics`, summed over the series whose labels contain every
    /// `label=value` given (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let Ok(r) = reqwest::get(self.ops_url("/metrics")).await else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        metric_sum(&text, name, labels)
    }
}

/// Sums the samples of `name` in a Prometheus text page whose labels contain every pair.
pub fn metric_sum(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}\n-----",
                self.instance,
                self.log_path.display(),
                self.log_tail(40)
            );
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

/// A PostgreSQL database of the test's own, dropped at the end.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

async fn pg_admin() -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(DATABASE_URL)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (`make services`)")
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("e2e_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let mut admin = pg_admin().await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Self { name, url }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut admin = pg_admin().await;
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------------------
// Tokens and HTTP
// ---------------------------------------------------------------------------------------

/// A token signed with [`SECRET`], valid 10 minutes.
pub fn token(permissions: &[Permission]) -> String {
    Minter::hs256(SECRET.as_bytes()).token("e2e-analyst", permissions, Duration::from_secs(600))
}

/// A token for `sub`.
pub fn token_for(sub: &str, permissions: &[Permission]) -> String {
    Minter::hs256(SECRET.as_bytes()).token(sub, permissions, Duration::from_secs(600))
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTP client")
}

/// Status and JSON body (Null when the body is not JSON).
pub async fn json_response(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------------
// WebSocket console
// ---------------------------------------------------------------------------------------

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An analyst's console connected to one channel of a ws-gateway.
pub struct Console {
    pub ws: Socket,
    /// Every JSON frame received so far.
    pub seen: Vec<Value>,
}

impl Console {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"));
        Self {
            ws,
            seen: Vec::new(),
        }
    }

    /// Reads frames until one matches `pred` (returned), or fails after `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what}; frames seen: {:?}",
                    self.seen
                ),
                Ok(None) => panic!("connection ended while waiting for {what}"),
                Ok(Some(Err(e))) => panic!("socket error while waiting for {what}: {e}"),
                Ok(Some(Ok(Message::Close(f)))) => {
                    panic!("closed ({f:?}) while waiting for {what}")
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("a JSON frame");
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Keeps reading for `period`, collecting frames; fails if the connection ends.
    pub async fn drain_for(&mut self, period: Duration) {
        let deadline = tokio::time::Instant::now() + period;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => {
                    self.seen
                        .push(serde_json::from_str(t.as_str()).expect("a JSON frame"));
                }
                Ok(Some(Ok(Message::Close(f)))) => panic!("closed while draining: {f:?}"),
                Ok(None) | Ok(Some(Err(_))) => panic!("connection ended while draining"),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Frames seen whose `field` equals `value`.
    pub fn count(&self, field: &str, value: &str) -> usize {
        self.seen
            .iter()
            .filter(|v| v.get(field).and_then(Value::as_str) == Some(value))
            .count()
    }

    pub async fn send(
        &mut self,
        msg: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(msg).await
    }
}

/// Reads until the server closes: the close code (None when the connection ended without a
/// close frame). Fails after `timeout`.
pub async fn close_code(ws: &mut Socket, timeout: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close within {timeout:?}"),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// MQTT
// ---------------------------------------------------------------------------------------

/// An MQTT client publishing QoS 1, its event loop polled in a task that reconnects for
/// ever (rumqttc sends unacknowledged publishes again after a reconnect).
pub struct MqttDevice {
    pub client: rumqttc::AsyncClient,
    acked: Arc<AtomicU64>,
    connected: Arc<AtomicU64>,
    events: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<LinkEvent>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the event loop of an [`MqttDevice`] saw, for [`MqttDevice::publish_acked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkEvent {
    Sent(u16),
    Acked(u16),
    Down,
}

impl MqttDevice {
    pub fn connect(host: &str, port: u16, client_id: &str) -> Self {
        let mut opts = rumqttc::MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(4 << 20, 4 << 20);
        opts.set_inflight(100);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
        let acked = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicU64::new(0));
        let (a, c) = (acked.clone(), connected.clone());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            use rumqttc::{Event, Outgoing, Packet};
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send(LinkEvent::Acked(ack.pkid));
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let _ = tx.send(LinkEvent::Sent(pkid));
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = tx.send(LinkEvent::Down);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Self {
            client,
            acked,
            connected,
            events: tokio::sync::Mutex::new(rx),
            task,
        }
    }

    /// On the shared broker.
    pub fn shared(client_id: &str) -> Self {
        Self::connect(MQTT_HOST, MQTT_PORT, client_id)
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("the MQTT client's request queue is open");
    }

    /// Publishes QoS 1 and returns once the broker acknowledged this very message (by packet
    /// id), publishing it again after a disconnect or 10 s without an ack; returns how many
    /// attempts it took. The client's session is clean, so nothing is resent behind our back;
    /// a retry may still make a duplicate (at least once), never a loss.
    pub async fn publish_acked(&self, topic: &str, payload: &[u8], deadline: Duration) -> u32 {
        let mut events = self.events.lock().await;
        let end = tokio::time::Instant::now() + deadline;
        let mut attempts = 0;
        loop {
            while events.try_recv().is_ok() {}
            attempts += 1;
            self.publish(topic, payload.to_vec()).await;
            let attempt_end = end.min(tokio::time::Instant::now() + Duration::from_secs(10));
            let mut mine = None;
            loop {
                match tokio::time::timeout_at(attempt_end, events.recv()).await {
                    Err(_) | Ok(Some(LinkEvent::Down)) => break,
                    Ok(None) => panic!("the MQTT event loop ended"),
                    Ok(Some(LinkEvent::Sent(p))) if mine.is_none() => mine = Some(p),
                    Ok(Some(LinkEvent::Acked(p))) if Some(p) == mine => return attempts,
                    Ok(Some(_)) => {}
                }
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{topic}: not acknowledged by the broker within {deadline:?} ({attempts} attempts)"
            );
        }
    }

    /// PUBACKs received so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    pub async fn wait_connected(&self) {
        let c = self.connected.clone();
        wait_until(WAIT, "MQTT CONNACK", || {
            let n = c.load(Ordering::SeqCst);
            async move { (n > 0).then_some(()) }
        })
        .await;
    }
}

impl Drop for MqttDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

pub async fn redis(url: &str) -> Conn {
    bus::connect(url).await.expect("Redis")
}

/// Every entry of a stream, oldest first: (entry id, document). An entry whose `data` is not
/// JSON is returned as a JSON string of its lossy text.
pub async fn stream_docs(conn: &mut Conn, stream: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut after = "0-0".to_string();
    loop {
        let batch = bus::range(conn, stream, &after, 1000)
            .await
            .expect("XRANGE");
        let Some(last) = batch.last() else { break };
        after = last.id.clone();
        for e in batch {
            let data = e.data.unwrap_or_default();
            let doc = serde_json::from_slice(&data)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&data).into_owned()));
            out.push((e.id, doc));
        }
    }
    out
}

/// Waits (up to [`WAIT`]) until `stream` holds at least `n` entries; returns them all.
pub async fn wait_stream_docs(
    conn: &Conn,
    stream: &str,
    n: usize,
    what: &str,
) -> Vec<(String, Value)> {
    aurora_testkit::wait_until(WAIT, what, || {
        let mut conn = conn.clone();
        async move {
            let docs = stream_docs(&mut conn, stream).await;
            (docs.len() >= n).then_some(docs)
        }
    })
    .await
}

pub async fn xlen(conn: &mut Conn, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .expect("XLEN")
}

pub async fn llen(conn: &mut Conn, key: &str) -> u64 {
    redis::cmd("LLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("LLEN")
}

/// Every element of a list, as JSON (left to right).
pub async fn list_docs(conn: &mut Conn, key: &str) -> Vec<Value> {
    let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("LRANGE");
    items
        .iter()
        .map(|b| {
            serde_json::from_slice(b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
        })
        .collect()
}

/// LPUSH, as Suricata's redis output does.
pub async fn lpush(conn: &mut Conn, key: &str, items: &[Vec<u8>]) {
    if items.is_empty() {
        return;
    }
    let mut cmd = redis::cmd("LPUSH");
    cmd.arg(key);
    for i in items {
        cmd.arg(i.as_slice());
    }
    cmd.query_async::<u64>(conn).await.expect("LPUSH");
}

/// XADD one document (`data` field).
pub async fn xadd(conn: &mut Conn, stream: &str, doc: &[u8]) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(bus::DATA_FIELD)
        .arg(doc)
        .query_async(conn)
        .await
        .expect("XADD")
}

/// How many times each key occurs.
pub fn tally<I: IntoIterator<Item = String>>(keys: I) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for k in keys {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------
// JetStream
// ---------------------------------------------------------------------------------------

/// Every message of a JetStream stream: (Nats-Msg-Id header or "", subject, payload).
pub async fn jetstream_messages(nats_url: &str, stream: &str) -> Vec<(String, String, Vec<u8>)> {
    let client = async_nats::connect(nats_url).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.expect("the stream exists");
    let info = s.info().await.expect("stream info").clone();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in first..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            let id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push((id, m.subject.to_string(), m.payload.to_vec()));
        }
    }
    out
}

/// Deletes what a namespace left: its JetStream streams (`NS`, `NS_SURICATA`) and its keys
/// in each Redis URL given.
pub async fn cleanup(names: &Names, nats_url: &str, redis_urls: &[&str]) {
    if let Ok(client) = async_nats::connect(nats_url).await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(names.nats_stream()).await;
        let _ = js.delete_stream(names.suricata_stream()).await;
    }
    for url in redis_urls {
        let Ok(mut conn) = bus::connect(url).await else {
            continue;
        };
        let pattern = format!("{}:*", names.namespace());
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async::<(u64, Vec<String>)>(&mut conn)
                .await
            else {
                break;
            };
            if !keys.is_empty() {
                let _ = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<u64>(&mut conn)
                    .await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

/// Runs [`cleanup`] when dropped, also when the test fails: declare it right after the names,
/// so that it runs after the services are gone.
pub struct Cleanup {
    names: Names,
    nats_url: String,
    redis_urls: Vec<String>,
}

impl Cleanup {
    pub fn new(names: &Names, nats_url: &str, redis_urls: &[&str]) -> Self {
        Self {
            names: names.clone(),
            nats_url: nats_url.to_string(),
            redis_urls: redis_urls.iter().map(|u| u.to_string()).collect(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (names, nats_url) = (self.names.clone(), self.nats_url.clone());
        let urls = std::mem::take(&mut self.redis_urls);
        // Drop runs inside the test's runtime: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
            rt.block_on(async {
                let _ = tokio::time::timeout(
                    Duration::from_secs(15),
                    cleanup(&names, &nats_url, &refs),
                )
                .await;
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------------------
// The aurora CLI
// ---------------------------------------------------------------------------------------

/// Runs `aurora` with `args` in `site`'s namespace and Redis; fails on a non-zero exit.
pub fn aurora_cli(site: &Site, args: &[&str]) -> String {
    let out = aurora_command(site)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run aurora");
    assert!(
        out.status.success(),
        "aurora {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `aurora` configured for `site`, not yet started.
pub fn aurora_command(site: &Site) -> Command {
    let mut cmd = Command::new(binary("aurora"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AURORA_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AURORA_NAMESPACE", site.names.namespace())
        .env("AURORA_REDIS_URL", &site.redis_url)
        .env("AURORA_NATS_URL", &site.nats_url)
        .env("AURORA_MQTT_URL", &site.mqtt_url)
        .env("AURORA_JWT_SECRET", SECRET);
    cmd
}

/// A child process killed when dropped (the device simulator).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The path of a file of the workspace.
pub fn workspace_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// The first line of an eve-ingest fixture whose `event_type` is `alert`.
pub fn suricata_alert_line() -> String {
    let path = workspace_path("services/eve-ingest/tests/fixtures/eve-suricata-verify.jsonl");
    let text = std::fs::read_to_string(&path).expect("the Suricata samples");
    text.lines()
        .find(|l| {
            serde_json::from_str::<Value>(l)
                .map(|v| v["event_type"] == "alert")
                .unwrap_or(false)
        })
        .expect("an alert event in the samples")
        .to_string()
}
