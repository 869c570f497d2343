//! What the integration tests share: the fixtures, a service run in-process, and the test's
//! namespace with what the service wrote there (read with aurora-testkit).
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use aurora_core::bus::Conn;
use aurora_core::ops::Readiness;
use aurora_core::service::{launch, LaunchOptions, Launched, Stopped};
use aurora_core::Names;
use aurora_testkit::redis::stream_entries;
use eve_ingest::{EveIngest, Hooks, IngestError, Settings};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use aurora_testkit::prelude::*;

pub const LONG: Duration = Duration::from_secs(30);

/// Every line of the three fixture files, in file order.
pub fn fixture_lines() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut lines = Vec::new();
    for file in [
        "eve-surevego.jsonl",
        "eve-suricata-verify.jsonl",
        "eve-telegraf.jsonl",
    ] {
        let text = std::fs::read(dir.join(file)).unwrap();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            lines.push(line.to_vec());
        }
    }
    lines
}

pub fn event_type(line: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(line).unwrap();
    v["event_type"].as_str().unwrap().to_string()
}

/// Distinct lines (a byte-identical line is a retry to JetStream) by event type.
pub fn distinct_by_type(lines: &[Vec<u8>]) -> BTreeMap<String, usize> {
    let distinct: std::collections::BTreeSet<&Vec<u8>> = lines.iter().collect();
    let mut counts = BTreeMap::new();
    for line in distinct {
        *counts.entry(event_type(line)).or_insert(0) += 1;
    }
    counts
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A test's namespace on the shared NATS and a Redis, deleted at the end (also when the test
/// fails).
/// The Suricata stream's size in tests (the service's default is 10 GiB).
pub const TEST_STREAM_BYTES: u64 = 256 << 20;

pub struct Env {
    pub names: Names,
    pub redis: Conn,
    pub js: jetstream::Context,
    pub redis_url: String,
    _cleanup: Cleanup,
}

impl Env {
    pub async fn new() -> Self {
        Self::with_redis(REDIS_URL).await
    }

    /// With a Redis of the test's own.
    pub async fn with_redis(redis_url: &str) -> Self {
        // The process-wide recorder, installed before anything is counted.
        let _ = aurora_core::ops::metrics_handle();
        let names = aurora_testkit::names();
        let client = async_nats::connect(NATS_URL)
            .await
            .expect("NATS on 127.0.0.1:4222");
        Self {
            _cleanup: Cleanup::new(&names, NATS_URL, &[redis_url]),
            names,
            redis: redis(redis_url).await,
            js: jetstream::new(client),
            redis_url: redis_url.to_string(),
        }
    }

    /// The service's defaults, but for the stream's size: tests run side by side on one
    /// NATS, and each stream's size is reserved from the server's storage.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::new(self.names.clone(), &self.redis_url, NATS_URL);
        s.block = Duration::from_millis(200);
        s.stream_limits.max_bytes = aurora_core::jetstream::Limit::At(TEST_STREAM_BYTES);
        s
    }

    /// A connection to the test's Redis.
    pub fn conn(&self) -> Conn {
        self.redis.clone()
    }

    /// The whole Redis list `key` (LRANGE 0 -1), each entry as a `T`.
    pub async fn list<T: redis::FromRedisValue>(&self, key: &str) -> Vec<T> {
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await
            .unwrap()
    }

    /// Pushes lines as Suricata does (LPUSH, in order).
    pub async fn push(&self, lines: &[Vec<u8>]) {
        lpush(&mut self.conn(), &self.names.suricata_list(), lines).await;
    }

    /// Lines a replica holds: its processing list and every chunk its index names (and the
    /// index's own entries, so that a chunk left registered also counts).
    pub async fn held(&self, instance: &str) -> usize {
        let processing = self.names.eve_processing_list(instance);
        let index = eve_ingest::list_source::chunk_index(&processing);
        let chunks: Vec<String> = self.list(&index).await;
        let mut held = llen(&mut self.conn(), &processing).await as usize + chunks.len();
        for chunk in &chunks {
            held += llen(&mut self.conn(), chunk).await as usize;
        }
        held
    }

    /// Messages in the test's Suricata stream (0 when it does not exist yet).
    pub async fn stream_len(&self) -> u64 {
        stream_len(NATS_URL, &self.names.suricata_stream()).await
    }

    /// Every message of the Suricata stream: (Nats-Msg-Id, subject, payload).
    pub async fn messages(&self) -> Vec<(String, String, Vec<u8>)> {
        jetstream_messages(NATS_URL, &self.names.suricata_stream()).await
    }

    /// The `data` of every entry of the alerts stream.
    pub async fn alerts(&self) -> Vec<Vec<u8>> {
        stream_entries(&mut self.conn(), &self.names.alerts())
            .await
            .into_iter()
            .map(|(_, data)| data)
            .collect()
    }

    pub async fn wait_stream_len(&self, n: u64) {
        aurora_testkit::wait_until(LONG, &format!("{n} messages in the stream"), || async {
            (self.stream_len().await >= n).then_some(())
        })
        .await;
    }

    /// Deletes the test's streams and keys now (the end of the test deletes them too).
    pub async fn clear(&self) {
        aurora_testkit::cleanup::cleanup(&self.names, NATS_URL, &[&self.redis_url]).await;
    }

    pub async fn wait_alerts(&self, n: usize) {
        wait_xlen(&self.redis, &self.names.alerts(), n as u64, "alerts").await;
    }
}

/// A service launched in-process as the replica `instance`.
pub struct Running {
    pub shutdown: CancellationToken,
    pub readiness: Readiness,
    launched: Launched,
    failure: Arc<Mutex<Option<IngestError>>>,
}

pub async fn start(settings: Settings, instance: &str, mut hooks: Hooks) -> Running {
    let failure = Arc::new(Mutex::new(None));
    hooks.failure = Some(failure.clone());
    let shutdown = CancellationToken::new();
    let launched = launch(
        EveIngest::new(settings).with_hooks(hooks),
        LaunchOptions::local(instance),
        shutdown.clone(),
    )
    .await
    .unwrap();
    Running {
        shutdown,
        readiness: launched.readiness.clone(),
        launched,
        failure,
    }
}

impl Running {
    /// Stops it: drained within the deadline, or the error that stopped its input.
    pub async fn stop(self) -> Result<(), IngestError> {
        self.shutdown.cancel();
        self.stopped().await
    }

    /// Waits until it stops by itself (a failure); `Ok` when it stopped cleanly.
    pub async fn died(self) -> Result<(), IngestError> {
        self.stopped().await
    }

    async fn stopped(self) -> Result<(), IngestError> {
        let stopped = tokio::time::timeout(LONG, self.launched.stopped())
            .await
            .unwrap();
        let failure = self.failure.lock().unwrap().take();
        match (stopped, failure) {
            (Stopped::Drained, None) => Ok(()),
            (Stopped::Failed, Some(e)) => Err(e),
            other => panic!("stopped as {other:?}"),
        }
    }
}
