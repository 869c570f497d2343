//! Suricata's Redis list, read with the reliable-queue pattern.
//!
//! Each replica atomically moves lines from the shared list to a processing list of its own
//! (`BLMOVE list processing RIGHT LEFT`: Suricata LPUSHes, so the right end is the oldest),
//! and removes a line from there only once it is out (see [`crate::batch`]). A replica that
//! dies leaves its lines in its processing list; at start a replica handles what its own list
//! holds, oldest first, and can adopt the lists of replicas that are gone
//! (`--recover-from`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use aurora_core::bus::Conn;
use aurora_core::ops::Readiness;

use crate::batch::Processor;
use crate::error::IngestError;
use crate::metrics as m;
use crate::Hooks;

/// Moves up to ARGV[1] lines from the right of KEYS[1] to the left of KEYS[2], oldest first,
/// atomically; returns them.
const MOVE_SCRIPT: &str = r#"
local lines = redis.call('RPOP', KEYS[1], ARGV[1])
if not lines then return {} end
for i = 1, #lines, 1000 do
  redis.call('LPUSH', KEYS[2], unpack(lines, i, math.min(i + 999, #lines)))
end
return lines
"#;

/// `LREM KEYS[1] -1 line` for every line of ARGV.
const RELEASE_SCRIPT: &str = r#"
for i = 1, #ARGV do redis.call('LREM', KEYS[1], -1, ARGV[i]) end
return #ARGV
"#;

/// Where the lines are and how they are taken.
#[derive(Debug, Clone)]
pub struct ListConfig {
    /// The list Suricata pushes to.
    pub list: String,
    /// This replica's processing list.
    pub processing: String,
    /// Processing lists of replicas that are gone, to take over at start.
    pub adopt: Vec<String>,
    /// Lines taken at once.
    pub batch: usize,
    /// How long one blocking take waits for a line.
    pub block: Duration,
    /// Batches handled at the same time (their publishes share one window).
    pub inflight_batches: usize,
}

/// Takes and releases lines.
pub struct ListSource {
    cfg: ListConfig,
    /// Blocks in BLMOVE: a connection of its own.
    blocking: Conn,
    /// Shared, for LREM and the recovery reads.
    conn: Conn,
}

fn bulk(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s.into_bytes())),
        _ => None,
    }
}

impl ListSource {
    pub fn new(cfg: ListConfig, blocking: Conn, conn: Conn) -> Self {
        Self {
            cfg,
            blocking,
            conn,
        }
    }

    pub fn config(&self) -> &ListConfig {
        &self.cfg
    }

    /// Moves every line of the lists of gone replicas into ours, oldest first.
    pub async fn adopt_orphans(&mut self) -> Result<u64, IngestError> {
        let mut moved = 0;
        for orphan in self.cfg.adopt.clone() {
            loop {
                let mut pipe = redis::pipe();
                for _ in 0..self.cfg.batch.max(1) {
                    pipe.cmd("LMOVE")
                        .arg(&orphan)
                        .arg(&self.cfg.processing)
                        .arg("RIGHT")
                        .arg("LEFT");
                }
                let got: Vec<Option<Vec<u8>>> = pipe
                    .query_async(&mut self.conn)
                    .await
                    .map_err(IngestError::redis("LMOVE", &orphan))?;
                let n = got.iter().filter(|g| g.is_some()).count();
                moved += n as u64;
                if n < got.len() || n == 0 {
                    break;
                }
            }
            tracing::info!(orphan = %orphan, "adopted the processing list of a gone replica");
        }
        Ok(moved)
    }

    /// The oldest `n` lines of the processing list, oldest first.
    pub async fn oldest_in_processing(&mut self, n: usize) -> Result<Vec<Bytes>, IngestError> {
        let n = n.max(1) as i64;
        let mut lines: Vec<Value> = redis::cmd("LRANGE")
            .arg(&self.cfg.processing)
            .arg(-n)
            .arg(-1)
            .query_async(&mut self.conn)
            .await
            .map_err(IngestError::redis("LRANGE", &self.cfg.processing))?;
        lines.reverse();
        Ok(lines.into_iter().filter_map(bulk).collect())
    }

    /// Takes up to a batch of lines, oldest first, waiting up to the block time for the
    /// first; empty when none came.
    pub async fn take(&mut self) -> Result<Vec<Bytes>, IngestError> {
        let first: Option<Vec<u8>> = redis::cmd("BLMOVE")
            .arg(&self.cfg.list)
            .arg(&self.cfg.processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(self.cfg.block.as_secs_f64())
            .query_async(&mut self.blocking)
            .await
            .map_err(IngestError::redis("BLMOVE", &self.cfg.list))?;
        let Some(first) = first else {
            return Ok(Vec::new());
        };
        let mut lines = vec![Bytes::from(first)];
        if self.cfg.batch > 1 {
            // One atomic script instead of a command per line: the same as that many
            // `LMOVE list processing RIGHT LEFT`, at a fraction of Redis's work.
            let more: Vec<Vec<u8>> = redis::Script::new(MOVE_SCRIPT)
                .key(&self.cfg.list)
                .key(&self.cfg.processing)
                .arg(self.cfg.batch - 1)
                .invoke_async(&mut self.blocking)
                .await
                .map_err(IngestError::redis("EVALSHA move", &self.cfg.list))?;
            lines.extend(more.into_iter().map(Bytes::from));
        }
        Ok(lines)
    }

    /// Forgets lines that are out. Each is removed once, from the old end, where it is.
    pub async fn release(
        conn: &Conn,
        processing: &str,
        lines: &[Bytes],
    ) -> Result<(), IngestError> {
        if lines.is_empty() {
            return Ok(());
        }
        let script = redis::Script::new(RELEASE_SCRIPT);
        let mut invocation = script.key(processing);
        for line in lines {
            invocation.arg(line.as_ref());
        }
        let mut conn = conn.clone();
        invocation
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(IngestError::redis("EVALSHA release", processing))
    }
}

/// Runs the list input until `shutdown`: first what this replica (and the adopted ones) left
/// in processing, then new lines.
pub async fn run(
    mut source: ListSource,
    processor: Processor,
    readiness: Readiness,
    hooks: Hooks,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let cfg = source.config().clone();
    let adopted = source.adopt_orphans().await?;
    let recovered = recover(&mut source, &processor, &hooks, &shutdown).await?;
    if recovered + adopted > 0 {
        tracing::info!(recovered, adopted, "handled the lines left in processing");
    }
    readiness.set_ready("input");

    let release_conn = source.conn.clone();
    let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(1);
    let stop_taking = shutdown.child_token();
    let taker = AbortOnDropHandle::new(tokio::spawn(take_loop(
        source,
        tx,
        readiness.clone(),
        stop_taking.clone(),
    )));
    let hooks = Arc::new(hooks);
    // Each batch is a task of its own: the parsing and alert mapping of one batch run on the
    // other core while another batch waits for its acks, and a batch busy with CPU work
    // never holds back the acks (and so the window permits) of the others.
    let mut running: JoinSet<Result<bool, IngestError>> = JoinSet::new();
    let mut batches: u64 = 0;
    // Batches release their lines in the order they were taken (see [`ReleaseTurn`]).
    let mut after: Option<oneshot::Receiver<()>> = None;
    let max_running = cfg.inflight_batches.max(1);
    loop {
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => {
                if !joined(done)? {
                    break; // interrupted by shutdown: the lines stay in processing
                }
            }
            lines = rx.recv(), if running.len() < max_running => {
                let Some(lines) = lines else { break };
                batches += 1;
                let (released, next_after) = oneshot::channel();
                running.spawn(handle_batch(
                    processor.clone(),
                    release_conn.clone(),
                    cfg.processing.clone(),
                    cfg.list.clone(),
                    lines,
                    batches,
                    hooks.clone(),
                    ReleaseTurn {
                        after: after.replace(next_after),
                        released,
                    },
                    shutdown.clone(),
                ));
            }
        }
    }
    stop_taking.cancel();
    while let Some(done) = running.join_next().await {
        joined(done)?;
    }
    drop(taker);
    Ok(())
}

/// A batch's place in the release order. The oldest lines sit at the right end of the
/// processing list, so lines released oldest batch first are each found by `LREM -1` at
/// once; a batch released before an older one makes every `LREM` scan past the older
/// batch's lines (about 12 µs of Redis time per line instead of 1, measured). Only speed
/// depends on it: `LREM` removes a line wherever it is, and a batch whose predecessor gave
/// up (shutdown, crash) goes on without waiting.
struct ReleaseTurn {
    /// Resolves (or fails) when the previous batch released its lines or gave up.
    after: Option<oneshot::Receiver<()>>,
    /// Tells the next batch this one is released; dropped unsent when this one gives up.
    released: oneshot::Sender<()>,
}

#[allow(clippy::too_many_arguments)]
async fn handle_batch(
    processor: Processor,
    conn: Conn,
    processing: String,
    source: String,
    lines: Vec<Bytes>,
    number: u64,
    hooks: Arc<Hooks>,
    turn: ReleaseTurn,
    shutdown: CancellationToken,
) -> Result<bool, IngestError> {
    let started = Instant::now();
    if processor
        .handle(&source, lines.clone(), &shutdown)
        .await
        .is_err()
    {
        return Ok(false);
    }
    if hooks.crash_before_release(number) {
        return Err(IngestError::FaultInjected("after publishing, before LREM"));
    }
    if let Some(after) = turn.after {
        let _ = after.await;
    }
    let mut backoff = Duration::from_millis(100);
    while let Err(e) = ListSource::release(&conn, &processing, &lines).await {
        // Not released means handled again after a restart: a duplicate JetStream and the
        // alert keys absorb, never a loss.
        tracing::warn!(error = %e, "cannot remove handled lines from processing: retrying");
        metrics::counter!(m::RETRIES, "stage" => "release").increment(1);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    let _ = turn.released.send(());
    metrics::histogram!(m::BATCH_SECONDS, "stage" => "released")
        .record(started.elapsed().as_secs_f64());
    Ok(true)
}

/// The outcome of a batch task; a task that panicked is an error (its lines stay in
/// processing and are handled at the next start).
fn joined(
    done: Result<Result<bool, IngestError>, tokio::task::JoinError>,
) -> Result<bool, IngestError> {
    match done {
        Ok(result) => result,
        Err(e) => Err(IngestError::BatchTask(e.to_string())),
    }
}

async fn recover(
    source: &mut ListSource,
    processor: &Processor,
    hooks: &Hooks,
    shutdown: &CancellationToken,
) -> Result<u64, IngestError> {
    let processing = source.config().processing.clone();
    let batch = source.config().batch;
    let conn = source.conn.clone();
    let mut total = 0u64;
    loop {
        let lines = source.oldest_in_processing(batch).await?;
        if lines.is_empty() {
            return Ok(total);
        }
        total += lines.len() as u64;
        metrics::counter!(m::RECOVERED).increment(lines.len() as u64);
        if processor
            .handle(&processing, lines.clone(), shutdown)
            .await
            .is_err()
        {
            return Ok(total);
        }
        if hooks.crash_before_release(0) {
            return Err(IngestError::FaultInjected("recovery, before LREM"));
        }
        ListSource::release(&conn, &processing, &lines).await?;
    }
}

async fn take_loop(
    mut source: ListSource,
    tx: mpsc::Sender<Vec<Bytes>>,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match source.take().await {
            Ok(lines) if lines.is_empty() => {}
            Ok(lines) => {
                backoff = Duration::from_millis(100);
                metrics::counter!(m::LINES).increment(lines.len() as u64);
                if tx.send(lines).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take lines from the list: retrying");
                readiness.set_not_ready("redis", e.to_string());
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
