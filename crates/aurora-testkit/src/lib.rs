//! The test harness of the Aurora workspace: what the tests of every crate share, against
//! the real servers (Redis, NATS with JetStream, Mosquitto, PostgreSQL on loopback, started by
//! `make services`), never mocks.
//!
//! - [`servers`]: a Redis, NATS or Mosquitto of the test's own on a free port (to stop, kill
//!   or restart, or to start after the service that waits for it).
//! - [`tls`]: a test CA with server and client certificates, and TLS-only Mosquitto, NATS
//!   and Redis (and a NATS with a password) of the test's own.
//! - [`ha`]: a Redis primary with a replica and three Sentinels, and a three-node NATS
//!   cluster with JetStream, to kill a node of under load.
//! - [`process`]: the service binaries as built, run as processes: [`process::Site`] (what
//!   one site's services are told), [`process::Service`] (spawn, SIGTERM, SIGKILL, restart,
//!   its log), [`process::service_env`] (the variable of a service's flag).
//! - [`ops`]: `GET /healthz`, `/readyz`, `/metrics` of an ops port, and metric sums.
//! - [`otlp`]: a real OTLP/HTTP trace receiver ([`otlp::OtlpReceiver`]) and the spans it got.
//! - [`db`]: a PostgreSQL database of the test's own ([`db::TestDb`]).
//! - [`redis`]: stream and list readers and writers, dead letters, a namespace's keys deleted.
//! - [`nats`]: JetStream messages with their `Nats-Msg-Id`, a namespace's streams deleted.
//! - [`cleanup`]: [`cleanup::Cleanup`], what a namespace left deleted also when a test fails.
//! - [`mqtt`]: a device publishing QoS 1, subscribing, with credentials or not
//!   ([`mqtt::MqttDevice`]); a broker session forgotten.
//! - [`replicas`]: a binary started under an instance id the test chooses, a service's
//!   replica registry, whether the broker holds an MQTT session for a client id.
//! - [`console`]: an analyst's WebSocket console ([`console::Console`]).
//! - [`auth`]: test tokens, good and bad. [`http`]: an HTTP client and JSON answers.
//! - [`random`]: seeded random input (the seed is printed; `E2E_SEED` replays it).
//!
//! At the root: a fresh namespace per test ([`names`]), [`wait_until`] (poll with a deadline
//! instead of sleeping a guessed time), [`tally`], [`workspace_path`]. [`prelude`] imports
//! what most tests use.

pub mod auth;
pub mod cleanup;
pub mod console;
pub mod db;
pub mod ha;
pub mod http;
pub mod mqtt;
pub mod nats;
pub mod ops;
pub mod otlp;
pub mod process;
pub mod random;
pub mod redis;
pub mod replicas;
pub mod servers;
pub mod tcp;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use aurora_core::Names;
pub use servers::{
    free_port, MosquittoServer, NatsServer, RedisServer, DATABASE_URL, MQTT_HOST, MQTT_PORT,
    NATS_URL, REDIS_URL,
};

/// How long anything may take on a loaded test machine before a test gives up.
pub const WAIT: Duration = Duration::from_secs(45);

/// A namespace no other test uses: `t` and 12 random hex digits.
pub fn namespace() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}", &id[..12])
}

/// The names of a fresh namespace.
pub fn names() -> Names {
    Names::new(&namespace()).expect("a generated namespace is valid")
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to `timeout`) for an in-process launch that was asked to stop during start-up,
/// and fails unless it ended with [`aurora_core::service::LaunchError::StoppedWhileStarting`].
pub async fn assert_stopped_while_starting(
    launching: tokio::task::JoinHandle<
        Result<aurora_core::service::Launched, aurora_core::service::LaunchError>,
    >,
    timeout: Duration,
) {
    let launched = tokio::time::timeout(timeout, launching)
        .await
        .unwrap_or_else(|_| panic!("the launch did not end within {timeout:?}"))
        .expect("the launch task");
    assert!(
        matches!(
            launched,
            Err(aurora_core::service::LaunchError::StoppedWhileStarting)
        ),
        "{:?}",
        launched.err()
    );
}

/// Runs `work` to its end on a runtime of its own in a thread of its own, from anywhere
/// (a `Drop` inside the test's runtime cannot block on it): clean-ups at the end of a test.
pub(crate) fn block_on_own_runtime<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(work);
    })
    .join();
}

/// How many times each key occurs.
pub fn tally<I: IntoIterator<Item = String>>(keys: I) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for k in keys {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// Occurrences above one, summed (the duplicates of a [`tally`]).
pub fn duplicates(tally: &HashMap<String, usize>) -> usize {
    tally.values().map(|n| n.saturating_sub(1)).sum()
}

/// The path of a file of the workspace, from a test of any crate.
pub fn workspace_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// What most tests use, in one import.
pub mod prelude {
    pub use crate::auth::{
        alg_none_token, expired_token, forged_token, token, token_for, token_valid_for, SECRET,
    };
    pub use crate::cleanup::Cleanup;
    pub use crate::console::{close_code, close_frame, close_normally, next_json, Console, Socket};
    pub use crate::db::TestDb;
    pub use crate::http::{
        assert_bodies_refused_with_400, assert_body_refused, http, json_response,
    };
    pub use crate::mqtt::{forget_session, MqttDevice};
    pub use crate::nats::{jetstream_messages, stream_len};
    pub use crate::ops::{metric_sum, Ops};
    pub use crate::otlp::{OtlpReceiver, ReceivedSpan};
    pub use crate::process::{service_env, Service, Site, Svc};
    pub use crate::redis::{
        assert_ledger_accounts_for_everything, dead_letters, delete_namespace, list_docs, llen,
        lpush, pending, redis, stream_docs, stream_records, stream_values, traced_entries,
        wait_matching, wait_no_pending, wait_stream_docs, wait_xlen, xadd, xadd_json, xlen,
        TracedEntry,
    };
    pub use crate::{
        assert_stopped_while_starting, duplicates, free_port, names, tally, wait_until,
        workspace_path, MosquittoServer, NatsServer, RedisServer, DATABASE_URL, MQTT_HOST,
        MQTT_PORT, NATS_URL, REDIS_URL, WAIT,
    };
}
