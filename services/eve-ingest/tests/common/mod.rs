//! What the integration tests share: the fixtures, a service run in-process, and readers of
//! what it wrote (JetStream messages, alerts, dead letters).
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use aurora_core::bus::{self, Conn};
use aurora_core::ops::Readiness;
use aurora_core::service::{launch, LaunchOptions, Launched, Stopped};
use aurora_core::Names;
use aurora_testkit::{NATS_URL, REDIS_URL};
use eve_ingest::{EveIngest, Hooks, IngestError, Settings};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

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

pub struct Env {
    pub names: Names,
    pub redis: Conn,
    pub js: jetstream::Context,
    pub redis_url: String,
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
        let redis = bus::connect(redis_url).await.unwrap();
        let client = async_nats::connect(NATS_URL).await.unwrap();
        Self {
            names,
            redis,
            js: jetstream::new(client),
            redis_url: redis_url.to_string(),
        }
    }

    pub fn settings(&self) -> Settings {
        let mut s = Settings::new(self.names.clone(), &self.redis_url, NATS_URL);
        s.block = Duration::from_millis(200);
        s
    }

    /// Pushes lines as Suricata does (LPUSH, one at a time in order).
    pub async fn push(&self, lines: &[Vec<u8>]) {
        let mut pipe = redis::pipe();
        for line in lines {
            pipe.cmd("LPUSH")
                .arg(self.names.suricata_list())
                .arg(line)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.redis.clone())
            .await
            .unwrap();
    }

    pub async fn llen(&self, key: &str) -> usize {
        redis::cmd("LLEN")
            .arg(key)
            .query_async(&mut self.redis.clone())
            .await
            .unwrap()
    }

    /// Lines a replica holds: its processing list and every chunk its index names (and the
    /// index's own entries, so that a chunk left registered also counts).
    pub async fn held(&self, instance: &str) -> usize {
        let processing = self.names.eve_processing_list(instance);
        let index = eve_ingest::list_source::chunk_index(&processing);
        let chunks: Vec<String> = redis::cmd("LRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.redis.clone())
            .await
            .unwrap();
        let mut held = self.llen(&processing).await + chunks.len();
        for chunk in &chunks {
            held += self.llen(chunk).await;
        }
        held
    }

    pub async fn xlen(&self, key: &str) -> usize {
        redis::cmd("XLEN")
            .arg(key)
            .query_async(&mut self.redis.clone())
            .await
            .unwrap()
    }

    /// Messages in the test's Suricata stream (0 when it does not exist yet).
    pub async fn stream_len(&self) -> u64 {
        match self.js.get_stream(self.names.suricata_stream()).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Every message of the stream: (subject, Nats-Msg-Id, payload).
    pub async fn messages(&self) -> Vec<(String, String, Vec<u8>)> {
        let mut stream = self
            .js
            .get_stream(self.names.suricata_stream())
            .await
            .unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            let id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push((m.subject.to_string(), id, m.payload.to_vec()));
        }
        out
    }

    /// The `data` of every entry of the alerts stream.
    pub async fn alerts(&self) -> Vec<Vec<u8>> {
        let mut conn = self.redis.clone();
        let mut out = Vec::new();
        let mut after = "0-0".to_string();
        loop {
            let entries = bus::range(&mut conn, &self.names.alerts(), &after, 1000)
                .await
                .unwrap();
            if entries.is_empty() {
                return out;
            }
            after = entries.last().unwrap().id.clone();
            out.extend(entries.into_iter().filter_map(|e| e.data));
        }
    }

    pub async fn wait_stream_len(&self, n: u64) {
        aurora_testkit::wait_until(LONG, &format!("{n} messages in the stream"), || async {
            (self.stream_len().await >= n).then_some(())
        })
        .await;
    }

    pub async fn wait_alerts(&self, n: usize) {
        aurora_testkit::wait_until(LONG, &format!("{n} alerts"), || async {
            (self.xlen(&self.names.alerts()).await >= n).then_some(())
        })
        .await;
    }

    /// Deletes the test's stream and keys.
    pub async fn cleanup(&self) {
        let _ = self.js.delete_stream(self.names.suricata_stream()).await;
        let mut conn = self.redis.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.names.namespace()))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        for key in keys {
            let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
        }
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
