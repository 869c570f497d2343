//! What the tests of device-registry share: the service started in-process in a namespace
//! of its own, a simulated device, and the registry's tables and commands as a test reads
//! them. Databases, Redis, tokens: aurora-testkit's.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use aurora_core::auth::Verifier;
use aurora_core::bus::Conn;
use aurora_core::model::{AttestationReport, DeviceCommand, DeviceSeen, Extra};
use aurora_core::names::DeviceTopicKind;
use aurora_core::service::{launch, LaunchOptions, Launched, Stopped};
use aurora_core::Names;
use base64::Engine;
use chrono::{DateTime, Utc};
use device_registry::{Config, DeviceRegistry};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use aurora_testkit::prelude::*;

pub const LONG: Duration = Duration::from_secs(25);

/// The consumer group of the service on every stream it reads.
pub const GROUP: &str = device_registry::SERVICE;

pub fn config(names: &Names, db: &TestDb) -> Config {
    let mut cfg = Config::local(
        names.clone(),
        REDIS_URL,
        &db.url,
        Verifier::hs256(SECRET.as_bytes()).expect("an HS256 verifier"),
    );
    cfg.trust_on_first_use = true;
    cfg.sweep_interval = Duration::from_millis(200);
    cfg.batch_size = 200;
    cfg.claim_idle = Duration::from_secs(5);
    cfg
}

/// A fresh namespace, a database of its own, and the test configuration ([`config`]) for
/// them with `tune` applied.
pub async fn fresh(tune: impl FnOnce(&mut Config)) -> (TestDb, Names, Config) {
    let names = aurora_testkit::names();
    let db = TestDb::create().await;
    let mut cfg = config(&names, &db);
    tune(&mut cfg);
    (db, names, cfg)
}

/// The service in-process in a fresh namespace with a database of its own, and the test's
/// connections to both. (The database is dropped last: keep `db` bound to the end.)
pub struct Registry {
    pub db: TestDb,
    pub names: Names,
    pub svc: Running,
    pub pool: sqlx::PgPool,
    pub conn: Conn,
}

impl Registry {
    /// Started with `tune` applied to the test configuration ([`config`]).
    pub async fn start(tune: impl FnOnce(&mut Config)) -> Self {
        let (db, names, cfg) = fresh(tune).await;
        let svc = Running::start(cfg).await;
        Self {
            pool: db.pool_with(3).await,
            conn: redis(REDIS_URL).await,
            db,
            names,
            svc,
        }
    }

    /// Its parts, to bind at once (`let (_db, names, svc, pool, conn) = ...`: the database
    /// is dropped last).
    pub fn parts(self) -> (TestDb, Names, Running, sqlx::PgPool, Conn) {
        (self.db, self.names, self.svc, self.pool, self.conn)
    }
}

/// A service running in-process; stopped (and waited for) by [`Running::stop`].
pub struct Running {
    pub launched: Option<Launched>,
    pub shutdown: CancellationToken,
    /// The REST API, `http://127.0.0.1:<port>`.
    pub base: String,
    /// The ops endpoints.
    pub ops: Ops,
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
        let ops = Ops::new(launched.ops_addr);
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

/// Waits for the service's first dead letter; fails unless its reason names `field`.
pub async fn assert_dead_letter_names(conn: &Conn, names: &Names, field: &str) {
    let dead = wait_matching(conn, &names.deadletter(GROUP), 1, "a dead letter", |_| true).await;
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(field), "{}", dead[0]);
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
    stream_values(conn, &names.cps_commands())
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

/// Starts the binary as built, as the harness starts every service (ready, `/readyz` 200,
/// before it returns), with `flags`; checks that it answers an unauthenticated API call
/// with 401 and exits cleanly on SIGTERM.
pub async fn serves_and_drains(db: &TestDb, flags: &[(&str, &str)]) {
    let names = aurora_testkit::names();
    let mut svc = Site::new(&names, "site-a", 0)
        .with_database(db)
        .with_binary(Svc::DeviceRegistry, env!("CARGO_BIN_EXE_device-registry"))
        .start(Svc::DeviceRegistry, flags)
        .await;
    let r = http()
        .get(svc.http_url("/api/v1/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let exit = svc.terminate().await;
    assert!(exit.success(), "exit status {exit:?}");
}
