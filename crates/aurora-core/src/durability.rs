//! The durability self-check: do the dependencies keep what they acknowledge?
//!
//! Every service acknowledges upstream (a PUBACK, an `XACK`, a JetStream ack, a list removal)
//! once Redis or JetStream acknowledged the write downstream ([at least once]). That keeps the
//! promise "nothing accepted is lost" only when Redis and JetStream keep what they acknowledged
//! through a restart. This module asks them, at start and every [`CHECK_INTERVAL`]:
//!
//! - Redis: `CONFIG GET appendonly`, `appendfsync` and `save`, and this process's
//!   `AURORA_REDIS_WAIT_REPLICAS` ([`ReplicaWait`]);
//! - each JetStream stream the service writes to or reads from: its storage and replicas.
//!
//! Each dependency gets a [`Finding`]: it keeps what it acknowledges, it does not, or this
//! service cannot tell (a managed Redis that refuses `CONFIG`), with a sentence why. A
//! dependency that does not keep the promise is a loud warning in the log, the gauge
//! `aurora_durability_state`, and its entry under `durability` in `/readyz` (the service
//! stays ready: it still works, it just cannot promise). `aurora status` runs the same checks.
//! What "keeps" means is in docs/contract.md#durability.
//!
//! [at least once]: ../../../docs/contract.md#at-least-once

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream, ErrorCode};
use tokio_util::sync::CancellationToken;

use crate::bus::{Conn, ReplicaWait};
use crate::ops::Readiness;

/// How often a running service checks again (an operator's `CONFIG SET appendonly yes`
/// clears the warning within this).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// How soon a check that could not reach a dependency is tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// How long one look at a dependency may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The gauge: 1 for the dependency's current state, 0 for the two others.
pub const STATE_METRIC: &str = "aurora_durability_state";

/// The dependency name of the site's Redis (label, `/readyz` key).
pub const REDIS: &str = "redis";

/// The dependency name of a JetStream stream (label, `/readyz` key).
pub fn stream_dependency(stream: &str) -> String {
    format!("jetstream:{stream}")
}

/// Whether a dependency keeps what it acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Keeps,
    DoesNotKeep,
    /// The service cannot read the settings (refused, or the stream is missing).
    Unknown,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Keeps, Verdict::DoesNotKeep, Verdict::Unknown];

    /// The name shown in `/readyz`, `aurora status` and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Keeps => "keeps",
            Verdict::DoesNotKeep => "does-not-keep",
            Verdict::Unknown => "unknown",
        }
    }

    /// The value of the gauge's `state` label.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Keeps => "keeps",
            Verdict::DoesNotKeep => "does_not_keep",
            Verdict::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one look found about one dependency.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub dependency: String,
    pub verdict: Verdict,
    /// One sentence: why, and what to change when it does not keep.
    pub why: String,
}

impl Finding {
    fn new(dependency: impl Into<String>, verdict: Verdict, why: impl Into<String>) -> Self {
        Self {
            dependency: dependency.into(),
            verdict,
            why: why.into(),
        }
    }
}

/// A dependency that did not answer the check (down, a failover, a timeout): no verdict, the
/// last one stands; its readiness part already says it is down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot check {dependency}: {reason}")]
pub struct Unreachable {
    pub dependency: String,
    pub reason: String,
}

/// Redis's persistence settings, as `CONFIG GET` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisPersistence {
    pub appendonly: bool,
    /// `always`, `everysec` or `no`.
    pub appendfsync: String,
    /// The RDB save points (`""`: no snapshots).
    pub save: String,
}

/// The verdict on Redis from its settings (`Err`: why they could not be read) and the
/// replicas this process's writes wait for.
pub fn judge_redis(
    settings: Result<RedisPersistence, String>,
    wait: Option<ReplicaWait>,
) -> Finding {
    let on_disk = match &settings {
        Ok(s) => judge_persistence(s),
        Err(why) => Finding::new(
            REDIS,
            Verdict::Unknown,
            format!(
                "its persistence cannot be read ({why}): make sure it runs with appendonly yes \
                 and appendfsync everysec or always, or set AURORA_REDIS_WAIT_REPLICAS"
            ),
        ),
    };
    match wait {
        Some(w) if w.replicas > 0 && on_disk.verdict != Verdict::Keeps => Finding::new(
            REDIS,
            Verdict::Keeps,
            format!(
                "every acknowledged write waits for {} replica(s) (AURORA_REDIS_WAIT_REPLICAS); \
                 the primary alone would not keep it ({}), so it must not restart empty before a \
                 failover: no automatic restart of the primary, or appendonly yes",
                w.replicas,
                settings_summary(&settings)
            ),
        ),
        _ => on_disk,
    }
}

fn settings_summary(settings: &Result<RedisPersistence, String>) -> String {
    match settings {
        Ok(s) if s.appendonly => format!("appendfsync {}", s.appendfsync),
        Ok(s) if s.save.trim().is_empty() => "appendonly no, no snapshots".to_string(),
        Ok(s) => format!("appendonly no, save \"{}\"", s.save),
        Err(_) => "persistence unknown".to_string(),
    }
}

fn judge_persistence(s: &RedisPersistence) -> Finding {
    if s.appendonly {
        return match s.appendfsync.as_str() {
            "always" => Finding::new(
                REDIS,
                Verdict::Keeps,
                "appendonly yes, appendfsync always: every write is on disk before Redis answers it",
            ),
            "everysec" => Finding::new(
                REDIS,
                Verdict::Keeps,
                "appendonly yes, appendfsync everysec: every write is in the append-only file \
                 before Redis answers it, on disk within a second",
            ),
            other => Finding::new(
                REDIS,
                Verdict::DoesNotKeep,
                format!(
                    "appendonly yes but appendfsync {other}: the kernel writes the file when it \
                     likes, so a machine crash loses acknowledged writes without bound; set \
                     appendfsync everysec"
                ),
            ),
        };
    }
    let why = if s.save.trim().is_empty() {
        "appendonly no and no snapshots (save \"\"): a restart of Redis loses every \
         acknowledged write; set appendonly yes (CONFIG SET appendonly yes, and in redis.conf)"
            .to_string()
    } else {
        format!(
            "appendonly no, only snapshots (save \"{}\"): a crash loses every acknowledged write \
             since the last one; set appendonly yes (CONFIG SET appendonly yes, and in redis.conf)",
            s.save
        )
    };
    Finding::new(REDIS, Verdict::DoesNotKeep, why)
}

/// Errors that say Redis did not answer now, rather than that it refused the question.
pub fn redis_unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY")
        )
}

/// Reads Redis's persistence settings: `Ok(Err(why))` when Redis refuses `CONFIG GET` (an
/// ACL without `+config|get`, a renamed command, a managed Redis).
pub async fn redis_persistence(
    conn: &mut Conn,
) -> Result<Result<RedisPersistence, String>, Unreachable> {
    let appendonly = match config_get(conn, "appendonly").await? {
        Ok(v) => v,
        Err(why) => return Ok(Err(why)),
    };
    let appendfsync = match config_get(conn, "appendfsync").await? {
        Ok(v) => v,
        Err(why) => return Ok(Err(why)),
    };
    let save = match config_get(conn, "save").await? {
        Ok(v) => v,
        Err(why) => return Ok(Err(why)),
    };
    Ok(Ok(RedisPersistence {
        appendonly: appendonly == "yes",
        appendfsync,
        save,
    }))
}

/// One `CONFIG GET` (one parameter per command: Redis before 7 takes only one); `Ok(Err)`
/// when Redis refuses it.
async fn config_get(conn: &mut Conn, name: &str) -> Result<Result<String, String>, Unreachable> {
    let unreachable = |reason: String| Unreachable {
        dependency: REDIS.to_string(),
        reason,
    };
    let asked = tokio::time::timeout(
        CHECK_TIMEOUT,
        redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async::<HashMap<String, String>>(conn),
    )
    .await
    .map_err(|_| unreachable(format!("no answer within {CHECK_TIMEOUT:?}")))?;
    match asked {
        Ok(mut answer) => Ok(answer
            .remove(name)
            .ok_or_else(|| format!("CONFIG GET {name} gave nothing"))),
        Err(e) if redis_unreachable(&e) => Err(unreachable(e.to_string())),
        Err(e) => Ok(Err(format!("CONFIG GET {name} refused: {e}"))),
    }
}

/// Looks at Redis once.
pub async fn check_redis(conn: &mut Conn) -> Result<Finding, Unreachable> {
    let wait = conn.replica_wait();
    Ok(judge_redis(redis_persistence(conn).await?, wait))
}

/// The verdict on a JetStream stream from its info.
pub fn judge_stream(info: &stream::Info) -> Finding {
    let name = &info.config.name;
    let dependency = stream_dependency(name);
    let replicas = info.config.num_replicas.max(1);
    if info.config.storage == stream::StorageType::Memory {
        return Finding::new(
            dependency,
            Verdict::DoesNotKeep,
            format!(
                "stream {name} keeps its messages in memory (R{replicas}): a restart of its \
                 servers loses every message it acknowledged; recreate it with file storage"
            ),
        );
    }
    let clustered = info.cluster.as_ref().is_some_and(|c| c.name.is_some());
    let offline = info
        .cluster
        .as_ref()
        .map(|c| {
            c.replicas
                .iter()
                .filter(|p| p.offline || !p.current)
                .count()
        })
        .unwrap_or(0);
    let why = match (replicas, clustered) {
        (1, true) => format!(
            "stream {name} is on file storage, R1 on a cluster: a restart keeps it, the loss of \
             its one server's disk does not (AURORA_NATS_STREAM_REPLICAS=3 keeps it on three)"
        ),
        (1, false) => format!(
            "stream {name} is on file storage (R1): a restart of NATS keeps every message it \
             acknowledged"
        ),
        (r, _) if offline > 0 => format!(
            "stream {name} is on file storage, R{r}: a message is acknowledged once a majority \
             holds it ({offline} of its replicas behind or offline now)"
        ),
        (r, _) => format!(
            "stream {name} is on file storage, R{r}: a message is acknowledged once a majority \
             of its replicas holds it"
        ),
    };
    Finding::new(dependency, Verdict::Keeps, why)
}

/// Looks at one JetStream stream once. A missing stream is [`Verdict::Unknown`] (it is made
/// by whoever sets it up, e.g. eve-ingest with `--no-stream-setup`).
pub async fn check_stream(js: &jetstream::Context, name: &str) -> Result<Finding, Unreachable> {
    let dependency = stream_dependency(name);
    let looked = tokio::time::timeout(CHECK_TIMEOUT, js.get_stream(name)).await;
    let unreachable = |reason: String| Unreachable {
        dependency: dependency.clone(),
        reason,
    };
    match looked {
        Err(_) => Err(unreachable(format!("no answer within {CHECK_TIMEOUT:?}"))),
        Ok(Ok(stream)) => Ok(judge_stream(stream.cached_info())),
        Ok(Err(e)) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(js_error)
                if js_error.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(Finding::new(
                    dependency.clone(),
                    Verdict::Unknown,
                    format!("stream {name} does not exist (yet)"),
                ))
            }
            jetstream::context::GetStreamErrorKind::JetStream(js_error) => Ok(Finding::new(
                dependency.clone(),
                Verdict::Unknown,
                format!("JetStream refused STREAM.INFO {name}: {js_error}"),
            )),
            _ => Err(unreachable(e.to_string())),
        },
    }
}

/// A service's dependencies to check: its Redis and the JetStream streams it uses.
#[derive(Debug, Clone)]
pub struct SelfCheck {
    redis: Option<Conn>,
    jetstream: Option<(jetstream::Context, Vec<String>)>,
    interval: Duration,
}

impl SelfCheck {
    /// The site's Redis (every service).
    pub fn redis(conn: Conn) -> Self {
        Self {
            redis: Some(conn),
            jetstream: None,
            interval: CHECK_INTERVAL,
        }
    }

    /// And these JetStream streams, through `client`.
    pub fn with_streams(
        mut self,
        client: &async_nats::Client,
        streams: impl IntoIterator<Item = String>,
    ) -> Self {
        let js = jetstream::new(client.clone());
        self.jetstream = Some((js, streams.into_iter().collect()));
        self
    }

    /// Checks again every `interval` instead of [`CHECK_INTERVAL`] (tests).
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Looks at every dependency once.
    pub async fn check(&self) -> Vec<Result<Finding, Unreachable>> {
        let mut found = Vec::new();
        if let Some(conn) = &self.redis {
            found.push(check_redis(&mut conn.clone()).await);
        }
        if let Some((js, streams)) = &self.jetstream {
            for name in streams {
                found.push(check_stream(js, name).await);
            }
        }
        found
    }

    /// Checks now and then every interval until `shutdown`, reporting each finding on
    /// `readiness`, the gauge and (when it changes) the log. Spawn it.
    pub async fn watch(self, readiness: Readiness, shutdown: CancellationToken) {
        let mut last: HashMap<String, Finding> = HashMap::new();
        loop {
            let mut missed = false;
            for result in self.check().await {
                match result {
                    Ok(finding) => {
                        if last.get(&finding.dependency) != Some(&finding) {
                            log_change(&finding);
                        }
                        report(&readiness, &finding);
                        last.insert(finding.dependency.clone(), finding);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "durability check postponed");
                        missed = !last.contains_key(&e.dependency) || missed;
                    }
                }
            }
            // A dependency never judged yet is tried again soon, not in a minute.
            let next = if missed {
                self.interval.min(RETRY_INTERVAL)
            } else {
                self.interval
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(next) => {}
            }
        }
    }
}

/// The gauge and `/readyz` for one finding.
pub fn report(readiness: &Readiness, finding: &Finding) {
    for verdict in Verdict::ALL {
        metrics::gauge!(
            STATE_METRIC,
            "dependency" => finding.dependency.clone(),
            "state" => verdict.label()
        )
        .set(if verdict == finding.verdict { 1.0 } else { 0.0 });
    }
    readiness.set_durability(
        &finding.dependency,
        serde_json::json!({"verdict": finding.verdict, "why": finding.why}),
    );
}

fn log_change(finding: &Finding) {
    let (dependency, why) = (&finding.dependency, &finding.why);
    match finding.verdict {
        Verdict::Keeps => {
            tracing::info!(%dependency, verdict = "keeps", %why, "{dependency} keeps what it acknowledges")
        }
        Verdict::DoesNotKeep => tracing::warn!(
            %dependency,
            verdict = "does-not-keep",
            %why,
            "DURABILITY: {dependency} does NOT keep what it acknowledges: messages this service accepts can be lost"
        ),
        Verdict::Unknown => tracing::warn!(
            %dependency,
            verdict = "unknown",
            %why,
            "durability: cannot tell whether {dependency} keeps what it acknowledges"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persistence(appendonly: bool, appendfsync: &str, save: &str) -> RedisPersistence {
        RedisPersistence {
            appendonly,
            appendfsync: appendfsync.into(),
            save: save.into(),
        }
    }

    #[test]
    fn redis_keeps_with_an_append_only_file_synced_at_least_every_second() {
        for fsync in ["always", "everysec"] {
            let f = judge_redis(Ok(persistence(true, fsync, "")), None);
            assert_eq!(f.verdict, Verdict::Keeps, "{f:?}");
        }
        let f = judge_redis(Ok(persistence(true, "no", "")), None);
        assert_eq!(f.verdict, Verdict::DoesNotKeep);
        assert!(f.why.contains("appendfsync everysec"), "{}", f.why);
        let f = judge_redis(Ok(persistence(false, "everysec", "3600 1 300 100")), None);
        assert_eq!(f.verdict, Verdict::DoesNotKeep);
        assert!(f.why.contains("since the last one"), "{}", f.why);
        let f = judge_redis(Ok(persistence(false, "everysec", "")), None);
        assert!(f.why.contains("a restart of Redis loses"), "{}", f.why);
    }

    fn stream_info(storage: &str, replicas: usize, cluster: serde_json::Value) -> stream::Info {
        let at = "2026-01-01T00:00:00Z";
        serde_json::from_value(serde_json::json!({
            "config": {"name": "AURORA", "subjects": ["AURORA.>"], "retention": "limits",
                       "storage": storage, "num_replicas": replicas, "discard": "old",
                       "max_consumers": -1, "max_msgs": -1, "max_bytes": -1, "max_age": 0},
            "created": at,
            "state": {"messages": 0, "bytes": 0, "first_seq": 0, "first_ts": at,
                      "last_seq": 0, "last_ts": at, "consumer_count": 0},
            "cluster": cluster,
        }))
        .expect("a stream info")
    }

    #[test]
    fn streams_keep_on_file_storage_and_not_in_memory() {
        let standalone = serde_json::json!({"leader": "n1"});
        let f = judge_stream(&stream_info("memory", 3, standalone.clone()));
        assert_eq!(f.verdict, Verdict::DoesNotKeep);
        assert_eq!(f.dependency, "jetstream:AURORA");
        let f = judge_stream(&stream_info("file", 1, standalone));
        assert_eq!(f.verdict, Verdict::Keeps);
        assert!(f.why.contains("(R1)"), "{}", f.why);
        let cluster = |offline: bool| {
            serde_json::json!({"name": "c", "leader": "n1", "replicas": [
                {"name": "n2", "current": true, "active": 1000},
                {"name": "n3", "current": !offline, "active": 1000, "offline": offline},
            ]})
        };
        let f = judge_stream(&stream_info(
            "file",
            1,
            serde_json::json!({"name": "c", "leader": "n1"}),
        ));
        assert_eq!(f.verdict, Verdict::Keeps);
        assert!(f.why.contains("AURORA_NATS_STREAM_REPLICAS=3"), "{}", f.why);
        let f = judge_stream(&stream_info("file", 3, cluster(false)));
        assert!(
            f.why.contains("R3") && !f.why.contains("offline"),
            "{}",
            f.why
        );
        let f = judge_stream(&stream_info("file", 3, cluster(true)));
        assert_eq!(f.verdict, Verdict::Keeps);
        assert!(
            f.why.contains("1 of its replicas behind or offline"),
            "{}",
            f.why
        );
    }

    #[test]
    fn waiting_for_replicas_keeps_without_persistence_and_unknown_stays_unknown() {
        let wait = Some(ReplicaWait {
            replicas: 1,
            timeout: Duration::from_secs(2),
        });
        let f = judge_redis(Ok(persistence(false, "everysec", "")), wait);
        assert_eq!(f.verdict, Verdict::Keeps);
        assert!(f.why.contains("1 replica(s)"), "{}", f.why);
        let f = judge_redis(Err("CONFIG GET refused: NOPERM".into()), wait);
        assert_eq!(f.verdict, Verdict::Keeps);
        let f = judge_redis(Err("CONFIG GET refused: NOPERM".into()), None);
        assert_eq!(f.verdict, Verdict::Unknown);
        assert!(f.why.contains("NOPERM"), "{}", f.why);
    }
}
