//! What the tests of device-registry share: a database of each test's own, the service
//! started in-process in a namespace of its own, a simulated device, and stream helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use aurora_core::auth::{Minter, Permission, Verifier};
use aurora_core::bus::{self, Conn, Entry};
use aurora_core::model::{to_bytes, AttestationReport, DeviceCommand, DeviceSeen, Extra};
use aurora_core::names::DeviceTopicKind;
use aurora_core::service::{launch, LaunchOptions, Launched, Stopped};
use aurora_core::Names;
use aurora_testkit::{wait_until, DATABASE_URL, REDIS_URL};
use base64::Engine;
use chrono::{DateTime, Utc};
use device_registry::{Config, DeviceRegistry};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "device-registry-test-secret";
pub const LONG: Duration = Duration::from_secs(25);

/// A PostgreSQL database of the test's own, dropped at the end.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("reg_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let mut admin = admin().await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Self { name, url }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

async fn admin() -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(DATABASE_URL).await.unwrap()
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut admin = admin().await;
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
            });
        })
        .join();
    }
}

pub fn config(names: &Names, db: &TestDb) -> Config {
    let mut cfg = Config::local(
        names.clone(),
        REDIS_URL,
        &db.url,
        Verifier::hs256(SECRET.as_bytes()).unwrap(),
    );
    cfg.trust_on_first_use = true;
    cfg.sweep_interval = Duration::from_millis(200);
    cfg.batch_size = 200;
    cfg.claim_idle = Duration::from_secs(5);
    cfg
}

/// A service running in-process; stopped (and waited for) by [`Running::stop`].
pub struct Running {
    pub launched: Option<Launched>,
    pub shutdown: CancellationToken,
    /// The REST API, `http://127.0.0.1:<port>`.
    pub base: String,
    /// The ops endpoints, `http://127.0.0.1:<port>`.
    pub ops: String,
}

impl Running {
    pub async fn start(cfg: Config) -> Self {
        Self::start_as(cfg, "local").await
    }

    /// Started as replica `instance` (its consumer names).
    pub async fn start_as(cfg: Config, instance: &str) -> Self {
        let shutdown = CancellationToken::new();
        let registry = DeviceRegistry::new(cfg);
        let api = registry.api_addr();
        let launched = launch(registry, LaunchOptions::local(instance), shutdown.clone())
            .await
            .unwrap();
        let base = format!("http://{}", api.get().unwrap());
        let ops = format!("http://{}", launched.ops_addr);
        Self {
            launched: Some(launched),
            shutdown,
            base,
            ops,
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(launched) = self.launched.take() {
            let stopped = tokio::time::timeout(LONG, launched.stopped())
                .await
                .expect("service drains in time");
            assert_eq!(stopped, Stopped::Drained);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn redis() -> Conn {
    bus::connect(REDIS_URL).await.unwrap()
}

pub async fn publish(conn: &Conn, stream: &str, doc: &Value) -> String {
    bus::Producer::new(conn.clone(), 100_000)
        .publish(stream, &to_bytes(doc))
        .await
        .unwrap()
}

pub async fn entries(conn: &Conn, stream: &str) -> Vec<Entry> {
    let mut c = conn.clone();
    bus::range(&mut c, stream, "0-0", 100_000).await.unwrap()
}

pub async fn docs(conn: &Conn, stream: &str) -> Vec<Value> {
    entries(conn, stream)
        .await
        .into_iter()
        .map(|e| serde_json::from_slice(&e.data.unwrap()).unwrap())
        .collect()
}

/// Waits until `stream` holds at least `n` documents matching `pred`; returns them.
pub async fn wait_docs(
    conn: &Conn,
    stream: &str,
    n: usize,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    wait_until(LONG, what, || async {
        let found: Vec<Value> = docs(conn, stream)
            .await
            .into_iter()
            .filter(|d| pred(d))
            .collect();
        (found.len() >= n).then_some(found)
    })
    .await
}

/// Entries of the group still unacknowledged.
pub async fn pending(conn: &Conn, stream: &str) -> u64 {
    let mut c = conn.clone();
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("device-registry")
        .query_async(&mut c)
        .await
        .unwrap();
    match reply {
        redis::Value::Array(v) => match v.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

pub async fn device_status(pool: &sqlx::PgPool, device_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM devices WHERE device_id = $1")
        .bind(device_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

pub async fn wait_status(pool: &sqlx::PgPool, device_id: &str, status: &str) {
    wait_until(LONG, &format!("{device_id} {status}"), || async {
        (device_status(pool, device_id).await.as_deref() == Some(status)).then_some(())
    })
    .await
}

pub fn token(perms: &[Permission]) -> String {
    Minter::hs256(SECRET.as_bytes()).token("tester", perms, Duration::from_secs(600))
}

pub const MODEL: &str = "nrf52840-sensor";
pub const VERSION: &str = "1.4.2";
pub const GOOD_SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
pub const BAD_SHA: &str = "0000000000000000000000000000000000000000000000000000000000000bad";

/// A simulated device: its id and Ed25519 key.
pub struct SimDevice {
    pub id: String,
    pub key: SigningKey,
}

impl SimDevice {
    pub fn new(prefix: &str) -> Self {
        let seed: [u8; 32] = rand::random();
        Self {
            id: format!(
                "{prefix}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public_key_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.verifying_key().as_bytes())
    }

    /// The `device.seen` record mqtt-bridge writes for its first telemetry message.
    pub fn seen(&self, seen_at: DateTime<Utc>) -> Value {
        let mut metadata = Extra::new();
        metadata.insert("model".into(), json!(MODEL));
        metadata.insert("firmware_version".into(), json!(VERSION));
        metadata.insert("public_key".into(), json!(self.public_key_b64()));
        metadata.insert("temperature".into(), json!(21.5));
        serde_json::to_value(DeviceSeen {
            event: DeviceSeen::EVENT.into(),
            device_id: self.id.clone(),
            message_type: DeviceTopicKind::Telemetry,
            metadata,
            seen_at,
            extra: Extra::new(),
        })
        .unwrap()
    }

    /// Its answer to a challenge, signed with `key`.
    pub fn answer_with(&self, key: &SigningKey, nonce: &str, version: &str, sha: &str) -> Value {
        let sig = key.sign(&AttestationReport::signed_bytes(nonce, version, sha));
        serde_json::to_value(AttestationReport {
            device_id: self.id.clone(),
            nonce: nonce.into(),
            firmware_version: version.into(),
            firmware_sha256: sha.into(),
            signature: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
            extra: Extra::new(),
        })
        .unwrap()
    }

    pub fn answer(&self, nonce: &str, sha: &str) -> Value {
        self.answer_with(&self.key, nonce, VERSION, sha)
    }
}

/// The `attest` commands sent to a device, oldest first.
pub async fn challenges_for(conn: &Conn, names: &Names, device_id: &str) -> Vec<DeviceCommand> {
    docs(conn, &names.cps_commands())
        .await
        .into_iter()
        .filter_map(|d| serde_json::from_value::<DeviceCommand>(d).ok())
        .filter(|c| c.device_id == device_id && c.action == "attest")
        .collect()
}

pub async fn wait_challenge(conn: &Conn, names: &Names, device_id: &str, n: usize) -> String {
    let cmds = wait_until(LONG, "attest command", || async {
        let c = challenges_for(conn, names, device_id).await;
        (c.len() >= n).then_some(c)
    })
    .await;
    cmds[n - 1].params["nonce"].as_str().unwrap().to_string()
}

pub async fn allow_firmware(pool: &sqlx::PgPool) {
    sqlx::query(
        "INSERT INTO firmware (model, version, sha256) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(MODEL)
    .bind(VERSION)
    .bind(GOOD_SHA)
    .execute(pool)
    .await
    .unwrap();
}
