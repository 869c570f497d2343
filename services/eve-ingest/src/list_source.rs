//! Suricata's Redis list, read with the reliable-queue pattern.
//!
//! A line leaves the shared list only by an atomic move into a key of this replica, and
//! leaves that key only once it is out (see [`crate::batch`]):
//!
//! - `BLMOVE list processing RIGHT LEFT` waits for the first line (Suricata LPUSHes, so the
//!   right end is the oldest) and moves it into the replica's processing list;
//! - the rest of the list is then taken whole: one script renames it to a *chunk* of this
//!   replica (`<processing>:chunk:<uuid>`) and registers the chunk in the replica's chunk
//!   index (`<processing>:chunks`), atomically. Only key names enter the script: Redis's Lua
//!   hashes every byte of every string given to it, and moving lines through a script cost
//!   Redis more than the moves themselves;
//! - a chunk is handed out in batches from its old end (`LRANGE`; how many lines fit the
//!   batch's byte budget is decided first, see [`MEASURE`]), and nobody else writes to
//!   it, so a batch that is out is forgotten with one `LTRIM` (the last one deletes the chunk
//!   and unregisters it). Batches of a chunk are released strictly in order: a batch whose
//!   predecessor gave up keeps its lines for the next start. A line taken into the processing
//!   list is forgotten with `LREM processing -1 line`.
//!
//! A replica that dies leaves its lines in its processing list and its chunks; at start a
//! replica handles what its processing list holds, oldest first, then its chunks. A live
//! replica takes over what a gone one holds ([`take_over`], see [`crate::replica`]): the
//! lines move into its processing list and the chunks into its index, and it is asked to
//! *look again*. After a failed take (a lost reply can leave a line or a chunk taken but
//! unknown) or when asked to look again, the replica lets its batches finish and looks at
//! what it holds again, as at a start.
//!
//! On shutdown nothing more is taken and the batches at hand are finished ([`Ended::Drained`]:
//! the replica then hands back what it still holds, [`hand_back`]); at the drain deadline
//! (abort) they are given up ([`Ended::GaveUp`]), and what they held stays in the processing
//! list and the chunks for the next start or for adoption.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::Value;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use aurora_core::bus::Conn;
use aurora_core::ops::Readiness;
use aurora_core::retry::Backoff;

use crate::batch::{Processor, Stop};
use crate::error::IngestError;
use crate::health::{INPUT, REDIS};
use crate::hooks::Hooks;
use crate::telemetry::{self, BatchStage, RetryStage};

/// When KEYS[1] is a list: renames it to KEYS[2], appends KEYS[2] to KEYS[3] and returns its
/// length; else returns 0.
const TAKE_CHUNK: &str = r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'list' then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[3], KEYS[2])
return redis.call('LLEN', KEYS[2])
"#;

/// The chunk index of a processing list: the names of the replica's chunks, oldest first.
pub fn chunk_index(processing: &str) -> String {
    format!("{processing}:chunks")
}

/// Where the lines are and how they are taken.
#[derive(Debug, Clone)]
pub struct ListConfig {
    /// The list Suricata pushes to.
    pub list: String,
    /// This replica's processing list.
    pub processing: String,
    /// Lines taken at once.
    pub batch: usize,
    /// How long one blocking take waits for a line.
    pub block: Duration,
    /// Batches handled at the same time (their publishes share one window).
    pub inflight_batches: usize,
    /// The bytes of lines one batch holds at most (a single larger line is a batch of its
    /// own): with `inflight_batches`, what bounds the memory of the lines in flight.
    pub max_batch_bytes: usize,
}

/// The lengths of the elements ARGV[1]..ARGV[2] of list KEYS[1], in list order: how many of
/// them fit a batch's byte budget is decided before any is read. Exact, but every line
/// enters Lua (about a microsecond of Redis per line), so it is the second look, taken only
/// when [`MEASURE`] cannot vouch for the whole slice.
const LINE_LENGTHS: &str = r#"
local out = {}
for i, line in ipairs(redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])) do
  out[i] = #line
end
return out
"#;

/// The bytes Redis takes to hold the ARGV[2] elements of list KEYS[1] from index ARGV[1]:
/// they are copied, in Redis's own code, into the scratch list KEYS[2], which is measured
/// and deleted in the same call (-1 when nothing was copied). No line enters Lua: this costs
/// about a quarter of [`LINE_LENGTHS`], and copies the slice once where that script copies
/// it twice.
const MEASURE: &str = r#"
local copied = redis.call('SORT', KEYS[1], 'BY', 'nosort', 'LIMIT', ARGV[1], ARGV[2], 'STORE', KEYS[2])
local bytes = redis.call('MEMORY', 'USAGE', KEYS[2], 'SAMPLES', '0')
redis.call('DEL', KEYS[2])
if copied ~= tonumber(ARGV[2]) or not bytes then return -1 end
return bytes
"#;

/// What a line may take less room in a list than its length: a line of up to 20 digits is
/// held as an integer (9 bytes and a 1-byte back length, against up to 20 bytes of text).
const INTEGER_SAVING: usize = 11;

static LINE_LENGTHS_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(LINE_LENGTHS));
static MEASURE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(MEASURE));

/// Whether Redis's measure of a list's memory covers its lines' lengths: false when lists
/// may be compressed (`list-compress-depth` not 0) or when that cannot be read.
pub async fn lists_measurable(conn: &mut Conn) -> bool {
    let depth: Result<std::collections::HashMap<String, String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("list-compress-depth")
        .query_async(conn)
        .await;
    match depth {
        Ok(depth) => depth.get("list-compress-depth").map(String::as_str) == Some("0"),
        Err(e) => {
            tracing::info!(error = %e, "cannot read list-compress-depth: each batch's lines are measured one by one");
            false
        }
    }
}

/// Where the lines of a batch are held until they are out.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Lines in the processing list.
    pub lines: Vec<Bytes>,
    /// A slice of a chunk: the chunk and how many lines it keeps once the slice is out (all
    /// before it in the chunk are out too; 0: the chunk is done).
    pub chunk: Option<(String, usize)>,
}

/// Lines handed out at once.
#[derive(Debug)]
pub struct Batch {
    /// Oldest first.
    pub lines: Vec<Bytes>,
    pub held: Held,
    /// Found at start (or after a failed take) rather than taken from the list.
    pub recovered: bool,
}

/// A chunk being handed out.
#[derive(Debug)]
struct Chunk {
    key: String,
    /// Lines not handed out yet: the chunk's indexes `0..left` (the oldest at `left - 1`).
    left: usize,
    recovered: bool,
}

/// Takes and releases lines.
pub struct ListSource {
    cfg: ListConfig,
    index: String,
    /// Blocks in BLMOVE: a connection of its own.
    blocking: Conn,
    /// Shared, for releases and the recovery reads.
    conn: Conn,
    /// Chunks with lines not handed out yet, oldest first.
    chunks: VecDeque<Chunk>,
    /// Whether a slice may be measured whole ([`MEASURE`]) before its lines are counted one
    /// by one ([`LINE_LENGTHS`]); see [`lists_measurable`].
    measurable: bool,
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
            index: chunk_index(&cfg.processing),
            cfg,
            blocking,
            conn,
            chunks: VecDeque::new(),
            measurable: false,
        }
    }

    /// Lets a slice be measured whole first (see [`lists_measurable`]).
    pub fn measure_slices(mut self, measurable: bool) -> Self {
        self.measurable = measurable;
        self
    }

    pub fn config(&self) -> &ListConfig {
        &self.cfg
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

    /// Reads the chunk index again: every chunk it names is handed out from what it holds
    /// (before anything new is taken); empty ones are unregistered. Returns the lines found.
    pub async fn load_chunks(&mut self) -> Result<u64, IngestError> {
        self.chunks.clear();
        let keys: Vec<String> = redis::cmd("LRANGE")
            .arg(&self.index)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn)
            .await
            .map_err(IngestError::redis("LRANGE", &self.index))?;
        let mut found = 0;
        for key in keys {
            let left: usize = redis::cmd("LLEN")
                .arg(&key)
                .query_async(&mut self.conn)
                .await
                .map_err(IngestError::redis("LLEN", &key))?;
            if left == 0 {
                let _: () = redis::cmd("LREM")
                    .arg(&self.index)
                    .arg(0)
                    .arg(&key)
                    .query_async(&mut self.conn)
                    .await
                    .map_err(IngestError::redis("LREM", &self.index))?;
                continue;
            }
            found += left as u64;
            self.chunks.push_back(Chunk {
                key,
                left,
                recovered: true,
            });
        }
        Ok(found)
    }

    /// Hands out up to `room` of the oldest lines of the current chunk into `batch`, as many
    /// as fit in `budget` bytes (at least one line when the batch is empty).
    async fn slice(
        &mut self,
        batch: &mut Batch,
        room: usize,
        budget: usize,
    ) -> Result<(), IngestError> {
        let Some(chunk) = self.chunks.front_mut() else {
            return Ok(());
        };
        let n = room.min(chunk.left);
        if n == 0 {
            return Ok(());
        }
        // Measured whole, the slice is known to fit when Redis holds it in no more than the
        // budget (less what integer-encoded lines may save): the common case, decided as the
        // line-by-line count would decide it.
        // A slice not copied whole (the chunk is not as this replica left it), or one Redis
        // has no room to copy, is left to the line-by-line count, as is every slice of a Redis
        // that refuses the script's commands (an ACL without `SORT` or `MEMORY`): measuring is
        // then given up.
        let mut fit = 0usize;
        if self.measurable {
            let measured: Result<i64, redis::RedisError> = MEASURE_SCRIPT
                .key(&chunk.key)
                .key(format!("{}:measure", chunk.key))
                .arg(chunk.left - n)
                .arg(n)
                .invoke_async(&mut self.conn)
                .await;
            match measured {
                Ok(held) => {
                    let held = usize::try_from(held).unwrap_or(usize::MAX);
                    if held.saturating_add(n.saturating_mul(INTEGER_SAVING)) <= budget {
                        fit = n;
                    }
                }
                Err(e) if aurora_core::durability::redis_unreachable(&e) => {
                    return Err(IngestError::redis("EVALSHA measure", &chunk.key)(e));
                }
                // Out of memory (the copy is a write): this slice is counted line by line.
                Err(e) if e.code() == Some("OOM") => {
                    tracing::debug!(error = %e, "no room to measure a slice whole");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Redis refuses to measure a slice whole: each batch's lines are measured one by one from now on");
                    self.measurable = false;
                }
            }
        }
        if fit == 0 {
            // The oldest line is the last index: count from there while the budget holds.
            let lengths: Vec<usize> = LINE_LENGTHS_SCRIPT
                .key(&chunk.key)
                .arg(chunk.left - n)
                .arg(chunk.left - 1)
                .invoke_async(&mut self.conn)
                .await
                .map_err(IngestError::redis("EVALSHA lengths", &chunk.key))?;
            let mut bytes = 0usize;
            for len in lengths.iter().rev() {
                bytes = bytes.saturating_add(*len);
                if bytes > budget && (fit > 0 || !batch.lines.is_empty()) {
                    break;
                }
                fit += 1;
            }
        }
        if fit == 0 {
            return Ok(());
        }
        let n = fit;
        let start = chunk.left - n;
        let mut lines: Vec<Value> = redis::cmd("LRANGE")
            .arg(&chunk.key)
            .arg(start)
            .arg(chunk.left - 1)
            .query_async(&mut self.conn)
            .await
            .map_err(IngestError::redis("LRANGE", &chunk.key))?;
        lines.reverse();
        batch.lines.extend(lines.into_iter().filter_map(bulk));
        chunk.left = start;
        batch.held.chunk = Some((chunk.key.clone(), start));
        batch.recovered |= chunk.recovered;
        if chunk.left == 0 {
            self.chunks.pop_front();
        }
        Ok(())
    }

    /// The next batch, oldest lines first: from the chunks at hand, else from the list,
    /// waiting up to the block time for a line; `None` when none came.
    pub async fn take(&mut self) -> Result<Option<Batch>, IngestError> {
        let batch_size = self.cfg.batch.max(1);
        let mut batch = Batch {
            lines: Vec::new(),
            held: Held::default(),
            recovered: false,
        };
        let budget = self.cfg.max_batch_bytes.max(1);
        if !self.chunks.is_empty() {
            self.slice(&mut batch, batch_size, budget).await?;
            return Ok(Some(batch));
        }
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
            return Ok(None);
        };
        let first = Bytes::from(first);
        let first_len = first.len();
        batch.lines.push(first.clone());
        batch.held.lines.push(first);
        if batch_size > 1 {
            let key = format!(
                "{}:chunk:{}",
                self.cfg.processing,
                uuid::Uuid::new_v4().simple()
            );
            let left: usize = redis::Script::new(TAKE_CHUNK)
                .key(&self.cfg.list)
                .key(&key)
                .key(&self.index)
                .invoke_async(&mut self.blocking)
                .await
                .map_err(IngestError::redis("EVALSHA take", &self.cfg.list))?;
            if left > 0 {
                self.chunks.push_back(Chunk {
                    key,
                    left,
                    recovered: false,
                });
                let left = budget.saturating_sub(first_len);
                self.slice(&mut batch, batch_size - 1, left).await?;
            }
        }
        Ok(Some(batch))
    }

    /// Forgets lines that are out: each line of the processing list is removed once, from
    /// the old end, where it is; a chunk keeps only the lines after the slice.
    pub async fn release(conn: &Conn, processing: &str, held: &Held) -> Result<(), IngestError> {
        if held.lines.is_empty() && held.chunk.is_none() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for line in &held.lines {
            pipe.cmd("LREM")
                .arg(processing)
                .arg(-1)
                .arg(line.as_ref())
                .ignore();
        }
        match &held.chunk {
            Some((key, 0)) => {
                pipe.cmd("DEL").arg(key).ignore();
                pipe.cmd("LREM")
                    .arg(chunk_index(processing))
                    .arg(1)
                    .arg(key)
                    .ignore();
            }
            Some((key, keep)) => {
                pipe.cmd("LTRIM").arg(key).arg(0).arg(keep - 1).ignore();
            }
            None => {}
        }
        let mut conn = conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(IngestError::redis("release", processing))
    }
}

/// Moves everything `from` holds to `to`: every line of the processing list `from` into the
/// processing list `to` (oldest first, at its new end), and every chunk of `from`'s index into
/// `to`'s index. Each line and each chunk name moves by one atomic `LMOVE`, so a move cut
/// short (a crash, a lost connection) leaves each line in exactly one of the two, and two
/// replicas moving the same lists at once share them without losing or doubling one. Returns
/// the lines moved out of the processing list and the chunks moved.
pub async fn take_over(
    conn: &Conn,
    from: &str,
    to: &str,
    batch: usize,
) -> Result<(u64, u64), IngestError> {
    let mut conn = conn.clone();
    let mut lines = 0;
    loop {
        let mut pipe = redis::pipe();
        for _ in 0..batch.max(1) {
            pipe.cmd("LMOVE").arg(from).arg(to).arg("RIGHT").arg("LEFT");
        }
        let got: Vec<Option<Vec<u8>>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(IngestError::redis("LMOVE", from))?;
        let n = got.iter().filter(|g| g.is_some()).count();
        lines += n as u64;
        if n < got.len() || n == 0 {
            break;
        }
    }
    let (from_index, to_index) = (chunk_index(from), chunk_index(to));
    let mut chunks = 0;
    loop {
        let chunk: Option<String> = redis::cmd("LMOVE")
            .arg(&from_index)
            .arg(&to_index)
            .arg("LEFT")
            .arg("RIGHT")
            .query_async(&mut conn)
            .await
            .map_err(IngestError::redis("LMOVE", &from_index))?;
        if chunk.is_none() {
            break;
        }
        chunks += 1;
    }
    Ok((lines, chunks))
}

/// Gives everything `processing` holds back to the shared `list`, at its old end (the end
/// the replicas take from), so that the replicas that stay take it next: the lines of each
/// chunk (the newest chunk first), then the lines of the processing list, each by one atomic
/// `LMOVE` (a hand-back cut short leaves each line in exactly one place); an emptied chunk
/// is unregistered. Only once nothing of this replica takes or releases lines any more (its
/// input has ended). Returns the lines handed back.
pub async fn hand_back(
    conn: &Conn,
    list: &str,
    processing: &str,
    batch: usize,
) -> Result<u64, IngestError> {
    let mut conn = conn.clone();
    let index = chunk_index(processing);
    let mut moved = 0;
    loop {
        let chunk: Option<String> = redis::cmd("LINDEX")
            .arg(&index)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(IngestError::redis("LINDEX", &index))?;
        let Some(chunk) = chunk else { break };
        moved += move_all_to_old_end(&mut conn, &chunk, list, batch).await?;
        let _: () = redis::cmd("LREM")
            .arg(&index)
            .arg(0)
            .arg(&chunk)
            .query_async(&mut conn)
            .await
            .map_err(IngestError::redis("LREM", &index))?;
    }
    moved += move_all_to_old_end(&mut conn, processing, list, batch).await?;
    Ok(moved)
}

/// Moves every line of `from` (a list whose old end is on the right) to the right end of
/// `list`, newest first, so that `from`'s oldest line ends up the oldest of `list`.
async fn move_all_to_old_end(
    conn: &mut Conn,
    from: &str,
    list: &str,
    batch: usize,
) -> Result<u64, IngestError> {
    let mut moved = 0;
    loop {
        let mut pipe = redis::pipe();
        for _ in 0..batch.max(1) {
            pipe.cmd("LMOVE")
                .arg(from)
                .arg(list)
                .arg("LEFT")
                .arg("RIGHT");
        }
        let got: Vec<Option<Vec<u8>>> = pipe
            .query_async(conn)
            .await
            .map_err(IngestError::redis("LMOVE", from))?;
        let n = got.iter().filter(|g| g.is_some()).count();
        moved += n as u64;
        if n < got.len() || n == 0 {
            return Ok(moved);
        }
    }
}

/// How the list input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown, and every batch taken was finished: nothing of it is in flight, what the
    /// replica still holds (not yet handed out) can be handed back.
    Drained,
    /// The drain deadline passed: batches were given up, their lines stay held.
    GaveUp,
}

/// Runs the list input until shutdown: first what this replica left in processing and in
/// chunks, then new lines. After a failed take, or when `look_again` is notified (lines or
/// chunks were moved into what this replica holds), the batches at hand finish and the
/// replica looks at what it holds again before taking more.
pub async fn run(
    mut source: ListSource,
    processor: Processor,
    readiness: Readiness,
    hooks: Hooks,
    stop: Stop,
    look_again: Option<Arc<Notify>>,
) -> Result<Ended, IngestError> {
    let hooks = Arc::new(hooks);
    let mut first = true;
    let mut backoff = Backoff::default();
    let ended = |stop: &Stop| {
        if stop.abort.is_cancelled() {
            Ended::GaveUp
        } else {
            Ended::Drained
        }
    };
    loop {
        match recover(&mut source, &processor, &hooks, &stop).await {
            Ok(recovered) => {
                if recovered > 0 {
                    tracing::info!(
                        recovered,
                        at_start = first,
                        "found lines held in processing and chunks"
                    );
                }
            }
            // At start Redis must answer; later, wait for it.
            Err(e) if first || matches!(e, IngestError::FaultInjected(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "cannot look at the lines this replica holds: retrying");
                readiness.set_not_ready(REDIS, e.to_string());
                if !backoff.wait(&stop.shutdown).await {
                    return Ok(ended(&stop));
                }
                continue;
            }
        }
        first = false;
        if stop.shutdown.is_cancelled() {
            return Ok(ended(&stop));
        }
        readiness.set_ready(INPUT);
        match pump(source, &processor, &readiness, &hooks, &stop, &look_again).await? {
            Pumped::Stopped => return Ok(ended(&stop)),
            Pumped::LookAgain(back) => source = back,
            Pumped::TakeFailed(back) => {
                source = back;
                if !backoff.wait(&stop.shutdown).await {
                    return Ok(ended(&stop));
                }
            }
        }
    }
}

/// Why [`pump`] ended (with every batch it started finished or given up).
enum Pumped {
    /// Shutdown, or a batch given up at the drain deadline. After a drain (no abort), the
    /// taker has returned too: no take is under way.
    Stopped,
    /// A take failed: what this replica holds must be looked at again.
    TakeFailed(ListSource),
    /// Asked to look at what this replica holds again (something was adopted).
    LookAgain(ListSource),
}

/// Resolves when `notify` is notified (never without one).
async fn asked(notify: &Option<Arc<Notify>>) {
    match notify {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    }
}

/// Takes batches and handles them, up to `inflight_batches` at a time, until shutdown, a
/// failed take, or a request to look again.
async fn pump(
    source: ListSource,
    processor: &Processor,
    readiness: &Readiness,
    hooks: &Arc<Hooks>,
    stop: &Stop,
    look_again: &Option<Arc<Notify>>,
) -> Result<Pumped, IngestError> {
    let cfg = source.config().clone();
    let release_conn = source.conn.clone();
    let (tx, mut rx) = mpsc::channel::<Batch>(1);
    let stop_taking = stop.shutdown.child_token();
    let mut taker = AbortOnDropHandle::new(tokio::spawn(take_loop(
        source,
        tx,
        readiness.clone(),
        stop_taking.clone(),
    )));
    let mut looking = false;
    // Each batch is a task of its own: the parsing and alert mapping of one batch run on the
    // other core while another batch waits for its acks, and a batch busy with CPU work
    // never holds back the acks (and so the window permits) of the others.
    let mut running: JoinSet<Result<bool, IngestError>> = JoinSet::new();
    let mut batches: u64 = 0;
    // Batches release their lines in the order they were taken (see [`ReleaseTurn`]).
    let mut after: Option<oneshot::Receiver<()>> = None;
    let max_running = cfg.inflight_batches.max(1);
    let mut outcome = Ok(());
    let mut take_failed = false;
    loop {
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => {
                match joined(done) {
                    Ok(true) => {}
                    Ok(false) => break, // given up at the deadline: the lines stay held
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            _ = asked(look_again), if !looking => {
                // Stop taking; the batches at hand (and one the taker still hands over)
                // finish, then the taker's end closes the channel.
                looking = true;
                stop_taking.cancel();
            }
            batch = rx.recv(), if running.len() < max_running => {
                let Some(batch) = batch else {
                    // The taker stopped: shutdown, a failed take, or asked to look again.
                    take_failed = !stop.shutdown.is_cancelled();
                    break;
                };
                // Recovered batches are numbered 0 for the test hooks, as at start.
                let number = if batch.recovered {
                    0
                } else {
                    batches += 1;
                    batches
                };
                let (released, next_after) = oneshot::channel();
                running.spawn(handle_batch(
                    processor.clone(),
                    release_conn.clone(),
                    cfg.processing.clone(),
                    cfg.list.clone(),
                    batch,
                    number,
                    hooks.clone(),
                    ReleaseTurn {
                        after: after.replace(next_after),
                        released,
                    },
                    stop.abort.clone(),
                ));
            }
        }
    }
    stop_taking.cancel();
    while let Some(done) = running.join_next().await {
        if let Err(e) = joined(done) {
            if outcome.is_ok() {
                outcome = Err(e);
            }
        }
    }
    // Batches handed to the channel and not started stay held: forgotten here, found again
    // by the next look at what this replica holds.
    drop(rx);
    outcome?;
    if !take_failed {
        if !stop.abort.is_cancelled() {
            // A take under way (a blocking BLMOVE, the chunk script) still lands in what this
            // replica holds: wait for it, so that nothing arrives after the hand-back.
            let _ = (&mut taker).await;
        }
        return Ok(Pumped::Stopped);
    }
    let source = match (&mut taker).await {
        Ok(source) => source,
        Err(e) => return Err(IngestError::BatchTask(e.to_string())),
    };
    // Asked to look again and the takes ended cleanly: no back-off. (A take that failed
    // meanwhile has marked Redis not ready; looking again finds out whether it answers.)
    if looking {
        Ok(Pumped::LookAgain(source))
    } else {
        Ok(Pumped::TakeFailed(source))
    }
}

/// A batch's place in the release order. Releases go strictly oldest batch first: a chunk
/// slice is released by trimming the chunk down to the lines after it, which also drops
/// every older slice of that chunk; and each line of the processing list is then found by
/// `LREM -1` at once. A batch whose predecessor gave up (drain deadline, crash) does not release:
/// its lines stay held and are handled again at the next start.
struct ReleaseTurn {
    /// Resolves when the previous batch released its lines; fails when it gave up.
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
    batch: Batch,
    number: u64,
    hooks: Arc<Hooks>,
    turn: ReleaseTurn,
    abort: CancellationToken,
) -> Result<bool, IngestError> {
    let started = Instant::now();
    let Batch { lines, held, .. } = batch;
    if processor.handle(&source, lines, &abort).await.is_err() {
        return Ok(false);
    }
    if hooks.crash_before_release(number) {
        return Err(IngestError::FaultInjected(
            "after publishing, before release",
        ));
    }
    if let Some(after) = turn.after {
        let released_before = tokio::select! {
            _ = abort.cancelled() => false,
            before = after => before.is_ok(),
        };
        if !released_before {
            return Ok(false);
        }
    }
    let mut backoff = Backoff::default();
    while let Err(e) = ListSource::release(&conn, &processing, &held).await {
        // Not released means handled again after a restart: a duplicate JetStream and the
        // alert keys absorb, never a loss.
        tracing::warn!(error = %e, "cannot forget handled lines: retrying");
        telemetry::retry(RetryStage::Release);
        if !backoff.wait(&abort).await {
            return Ok(false);
        }
    }
    let _ = turn.released.send(());
    telemetry::batch_time(BatchStage::Released, started.elapsed());
    Ok(true)
}

/// The outcome of a batch task; a task that panicked is an error (its lines stay held and
/// are handled at the next start).
fn joined(
    done: Result<Result<bool, IngestError>, tokio::task::JoinError>,
) -> Result<bool, IngestError> {
    match done {
        Ok(result) => result,
        Err(e) => Err(IngestError::BatchTask(e.to_string())),
    }
}

/// Handles what the processing list holds, oldest first, then reads the chunk index (its
/// chunks are handed out before anything new is taken). Returns the lines found. On
/// shutdown, the batch at hand is finished and the rest stays held.
async fn recover(
    source: &mut ListSource,
    processor: &Processor,
    hooks: &Hooks,
    stop: &Stop,
) -> Result<u64, IngestError> {
    let processing = source.config().processing.clone();
    let batch = source.config().batch;
    let conn = source.conn.clone();
    let mut total = 0u64;
    loop {
        if stop.shutdown.is_cancelled() {
            return Ok(total);
        }
        let lines = source.oldest_in_processing(batch).await?;
        if lines.is_empty() {
            break;
        }
        total += lines.len() as u64;
        telemetry::recovered_lines(lines.len() as u64);
        if processor
            .handle(&processing, lines.clone(), &stop.abort)
            .await
            .is_err()
        {
            return Ok(total);
        }
        if hooks.crash_before_release(0) {
            return Err(IngestError::FaultInjected("recovery, before release"));
        }
        let held = Held { lines, chunk: None };
        ListSource::release(&conn, &processing, &held).await?;
    }
    let in_chunks = source.load_chunks().await?;
    telemetry::recovered_lines(in_chunks);
    Ok(total + in_chunks)
}

/// Takes batches until `stop`, or until a take fails: then returns the source (what it
/// holds must be looked at again before taking more).
async fn take_loop(
    mut source: ListSource,
    tx: mpsc::Sender<Batch>,
    readiness: Readiness,
    stop: CancellationToken,
) -> ListSource {
    while !stop.is_cancelled() {
        match source.take().await {
            Ok(None) => {}
            Ok(Some(batch)) if batch.lines.is_empty() => {}
            Ok(Some(batch)) => {
                telemetry::lines(batch.lines.len() as u64);
                if tx.send(batch).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take lines from the list");
                readiness.set_not_ready(REDIS, e.to_string());
                break;
            }
        }
    }
    source
}
