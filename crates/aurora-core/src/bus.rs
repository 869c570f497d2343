//! The Redis Streams bus every service uses.
//!
//! - Entries carry one JSON document in the field `data` ([`DATA_FIELD`]), and, when tracing
//!   is on, the W3C trace context of the span that wrote them ([`crate::trace`]).
//! - [`Producer`] writes batches in one pipelined round trip, trimming with `MAXLEN ~`.
//! - [`GroupReader`] reads with a consumer group: its own pending entries first (after a
//!   restart), entries a dead consumer left pending (XAUTOCLAIM), then new ones; an entry
//!   delivered more than `max_deliveries` times goes to a dead-letter stream with the reason.
//! - [`tail`] and [`range`] read without a group, for fan-out (every reader sees every entry).
//!
//! A blocking read holds its connection until it returns, so each reader that blocks gets a
//! connection of its own ([`connect_blocking`]); everything else shares one multiplexed
//! connection ([`connect`]).

use std::time::{Duration, Instant};

use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use redis::Value;

use crate::ledger;
use crate::model::{to_bytes, DeadLetter};
pub use crate::redis_link::{redacted_url, Conn, ReplicaWait};
use crate::trace::{self, TraceContext, TRACEPARENT_FIELD, TRACESTATE_FIELD};

/// The field of a stream entry that holds the document.
pub const DATA_FIELD: &str = "data";

/// What went wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid Redis URL {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis command {command} on {key} failed: {source}")]
    Command {
        command: &'static str,
        key: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("only {acknowledged} of {wanted} Redis replicas acknowledged {command} on {key} within {timeout:?}")]
    NotReplicated {
        command: &'static str,
        key: String,
        wanted: u32,
        acknowledged: i64,
        timeout: Duration,
    },
}

impl BusError {
    /// Maps a Redis error of `command` on `key` (for stores built beside the bus).
    pub fn command<'a>(
        command: &'static str,
        key: &'a str,
    ) -> impl FnOnce(redis::RedisError) -> Self + 'a {
        move |source| Self::Command {
            command,
            key: key.to_string(),
            source,
        }
    }

    /// True when Redis could not be reached (as opposed to a refused command).
    pub fn is_connection(&self) -> bool {
        match self {
            Self::Url { .. } => false,
            Self::Connect { .. } | Self::NotReplicated { .. } => true,
            Self::Command { source, .. } => is_connection_error(source),
        }
    }
}

/// True when Redis could not be reached, did not answer, or cannot take the command now
/// (a failover under way, a server loading its data): worth retrying in place, as opposed to
/// a command Redis refused.
pub fn is_connection_error(e: &redis::RedisError) -> bool {
    crate::redis_link::primary_may_have_moved(e)
        || matches!(e.code(), Some("LOADING" | "TRYAGAIN" | "NOREPLICAS"))
}

async fn connect_with(url: &str, response_timeout: Duration) -> Result<Conn, BusError> {
    Conn::connect(url, response_timeout)
        .await
        .map_err(|e| match e {
            crate::redis_link::ConnectError::Url(reason) => BusError::Url {
                url: redacted_url(url),
                source: redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "unusable Redis URL",
                    reason,
                )),
            },
            crate::redis_link::ConnectError::Unreachable(source) => BusError::Connect {
                url: redacted_url(url),
                source,
            },
        })
}

/// A shared, multiplexed connection for writes and short commands.
pub async fn connect(url: &str) -> Result<Conn, BusError> {
    connect_with(url, Duration::from_secs(10)).await
}

/// A connection of its own for a reader that blocks up to `block`.
pub async fn connect_blocking(url: &str, block: Duration) -> Result<Conn, BusError> {
    connect_with(url, block + Duration::from_secs(10)).await
}

/// Pings Redis: the readiness check of every service.
pub async fn ping(conn: &mut Conn) -> Result<(), BusError> {
    redis::cmd("PING")
        .query_async::<String>(conn)
        .await
        .map(|_| ())
        .map_err(BusError::command("PING", "-"))
}

/// One entry read from a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The stream the entry is in.
    pub stream: String,
    pub id: String,
    /// The `data` field; `None` when the entry has none (it is then dead-lettered).
    pub data: Option<Vec<u8>>,
    /// How many times a consumer group delivered it (1 on first delivery; 0 without a group).
    pub deliveries: u64,
    /// The trace context its writer left (read only when tracing is on; a malformed one is
    /// ignored).
    pub trace: Option<TraceContext>,
}

impl Entry {
    fn from_stream_id(stream: &str, sid: StreamId) -> Self {
        let data = match sid.map.get(DATA_FIELD) {
            Some(Value::BulkString(bytes)) => Some(bytes.clone()),
            Some(Value::SimpleString(s)) => Some(s.clone().into_bytes()),
            _ => None,
        };
        let trace = if trace::enabled() {
            let text = |field: &str| match sid.map.get(field) {
                Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).ok(),
                Some(Value::SimpleString(s)) => Some(s.as_str()),
                _ => None,
            };
            text(TRACEPARENT_FIELD)
                .and_then(|parent| TraceContext::parse(parent, text(TRACESTATE_FIELD)))
        } else {
            None
        };
        Self {
            stream: stream.to_string(),
            id: sid.id,
            data,
            deliveries: sid.delivered_count.map(|c| c as u64).unwrap_or(0),
            trace,
        }
    }
}

/// Documents per script call of [`Producer::publish_once`] (Redis serves no one else while a
/// script runs, so a call stays short).
pub const ONCE_PER_CALL: usize = 256;

/// For each pair (KEYS[2i-1] idempotency key, KEYS[2i] stream) and document ARGV[4+i]: when
/// the key does not exist, XADD the document (`MAXLEN ~ ARGV[1]`, field ARGV[2]; with the
/// field `traceparent` ARGV[4] unless it is empty), then set the key to the new entry id for
/// ARGV[3] seconds, and count it in the ledger ([`crate::ledger`]). Returns per document the
/// entry id or false.
const PUBLISH_ONCE: &str = concat!(
    crate::ledger_lua!(),
    r"
local out, written = {}, {}
local traceparent = ARGV[4]
for i = 1, #KEYS / 2 do
  local key, stream = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('EXISTS', key) == 1 then
    -- A write all the same (the key's time to live starts again): a WAIT after this call
    -- then covers the first write of the document too, on a connection that did not make it.
    redis.call('EXPIRE', key, ARGV[3])
    out[i] = false
  else
    local id
    if traceparent == '' then
      id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[4 + i])
    else
      id = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[4 + i],
        'traceparent', traceparent)
    end
    redis.call('SET', key, id, 'EX', ARGV[3])
    ledger_add(written, stream, id, 1)
    out[i] = id
  end
end
ledger_flush(written, 'in')
return out
"
);

/// A pipeline opened with `MULTI`, for [`Producer::run_writes`] to close.
fn transaction() -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("MULTI").ignore();
    pipe
}

/// One document for [`Producer::publish_once`].
#[derive(Debug, Clone, Copy)]
pub struct OnceWrite<'a> {
    /// The idempotency key: the same document always has the same key.
    pub key: &'a str,
    pub stream: &'a str,
    pub data: &'a [u8],
}

/// Writes documents to streams, trimming each to about `maxlen` entries.
#[derive(Clone)]
pub struct Producer {
    conn: Conn,
    maxlen: usize,
}

impl Producer {
    pub fn new(conn: Conn, maxlen: usize) -> Self {
        Self { conn, maxlen }
    }

    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    fn xadd(
        &self,
        pipe: &mut redis::Pipeline,
        stream: &str,
        data: &[u8],
        trace: Option<&TraceContext>,
    ) {
        let cmd = pipe
            .cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*")
            .arg(DATA_FIELD)
            .arg(data);
        if let Some(trace) = trace {
            cmd.arg(TRACEPARENT_FIELD).arg(&trace.traceparent);
            if let Some(state) = &trace.tracestate {
                cmd.arg(TRACESTATE_FIELD).arg(state);
            }
        }
        // Inside the transaction: its reply is `QUEUED`, the id comes with `EXEC`.
        pipe.ignore();
    }

    /// Appends one document; returns its entry id.
    pub async fn publish(&self, stream: &str, data: &[u8]) -> Result<String, BusError> {
        let mut ids = self.publish_batch(&[(stream, data)]).await?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Appends a serialisable document.
    pub async fn publish_doc<T: serde::Serialize>(
        &self,
        stream: &str,
        doc: &T,
    ) -> Result<String, BusError> {
        self.publish(stream, &to_bytes(doc)).await
    }

    /// Appends many documents, possibly to several streams, in one pipelined round trip.
    /// Entries to one stream keep their order. Returns the entry ids in input order. Each
    /// entry carries the context of the hop the caller runs in when it is sampled, or outside
    /// any hop that of the write's own hop when it is ([`trace::write_hop`]).
    pub async fn publish_batch<S: AsRef<str>, D: AsRef<[u8]>>(
        &self,
        items: &[(S, D)],
    ) -> Result<Vec<String>, BusError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Kept until written: outside any hop, the write's own hop (a new trace's root).
        let hop = trace::write_hop(items[0].0.as_ref());
        let mut pipe = transaction();
        for (stream, data) in items {
            self.xadd(&mut pipe, stream.as_ref(), data.as_ref(), hop.context());
        }
        let streams: Vec<&str> = items.iter().map(|(s, _)| s.as_ref()).collect();
        self.run_writes(pipe, &streams).await
    }

    /// As [`Self::publish_batch`], each entry with a trace context of its own (the span of
    /// the message it came from), or none.
    pub async fn publish_batch_traced<S: AsRef<str>, D: AsRef<[u8]>>(
        &self,
        items: &[(S, D, Option<TraceContext>)],
    ) -> Result<Vec<String>, BusError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = transaction();
        for (stream, data, trace) in items {
            self.xadd(&mut pipe, stream.as_ref(), data.as_ref(), trace.as_ref());
        }
        let streams: Vec<&str> = items.iter().map(|(s, _, _)| s.as_ref()).collect();
        self.run_writes(pipe, &streams).await
    }

    /// Runs the `XADD`s of `pipe` (queued by [`Self::xadd`] for `streams`, in order) in one
    /// transaction with their ledger counts ([`crate::ledger`]), closed by `WAIT` when the
    /// connection asks for replicas. The counts go to the current minute; an entry whose id
    /// fell in another minute (a write across the minute's end, a Redis clock apart) is moved
    /// to its own minute afterwards.
    async fn run_writes(
        &self,
        mut pipe: redis::Pipeline,
        streams: &[&str],
    ) -> Result<Vec<String>, BusError> {
        let key = streams.first().copied().unwrap_or("-");
        let bucket = ledger::bucket_of_ms(ledger::now_ms());
        let mut per_stream: Vec<(&str, i64)> = Vec::new();
        for stream in streams {
            match per_stream.iter_mut().find(|(s, _)| s == stream) {
                Some((_, n)) => *n += 1,
                None => per_stream.push((stream, 1)),
            }
        }
        for (stream, n) in &per_stream {
            let ledger_key = ledger::key(stream, bucket);
            pipe.hincr(&ledger_key, ledger::IN, *n)
                .ignore()
                .expire(&ledger_key, ledger::KEEP.as_secs() as i64)
                .ignore();
        }
        pipe.cmd("EXEC");
        let mut replies = query_replicated(&self.conn, pipe, "XADD", key).await?;
        let bad_reply = |detail: String| {
            BusError::command("XADD", key)(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply to a transaction",
                detail,
            )))
        };
        let results = match replies.pop() {
            Some(Value::Array(results)) => results,
            other => return Err(bad_reply(format!("{other:?}"))),
        };
        let ids: Vec<String> = results
            .into_iter()
            .take(streams.len())
            .map(|v| {
                redis::from_redis_value(v)
                    .map_err(|e| BusError::command("XADD", key)(redis::RedisError::from(e)))
            })
            .collect::<Result<_, _>>()?;
        if ids.len() != streams.len() {
            return Err(bad_reply(format!(
                "{} ids for {} entries",
                ids.len(),
                streams.len()
            )));
        }
        self.move_ledger_counts(streams, &ids, bucket).await;
        Ok(ids)
    }

    /// Moves the `in` count of entries whose id is not in `counted` to their own minute.
    async fn move_ledger_counts(&self, streams: &[&str], ids: &[String], counted: u64) {
        let mut moves: std::collections::BTreeMap<(&str, u64), i64> = Default::default();
        for (stream, id) in streams.iter().zip(ids) {
            match ledger::bucket_of_id(id) {
                Some(b) if b != counted => {
                    *moves.entry((stream, b)).or_default() += 1;
                    *moves.entry((stream, counted)).or_default() -= 1;
                }
                _ => {}
            }
        }
        if moves.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for ((stream, bucket), n) in moves {
            let key = ledger::key(stream, bucket);
            pipe.hincr(&key, ledger::IN, n)
                .ignore()
                .expire(&key, ledger::KEEP.as_secs() as i64)
                .ignore();
        }
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "cannot move ledger counts to their entries' minute");
        }
    }

    /// Appends documents each at most once: an entry goes to its stream only when its
    /// idempotency key is new (a key seen again has its `key_ttl` started again), and the key
    /// is set (for `key_ttl`) in the same atomic script,
    /// after the append, so a failed append leaves no key that would hide the document on its
    /// next try. Up to [`ONCE_PER_CALL`] documents go in one script call and all calls in one
    /// pipelined round trip (the script is loaded in the same pipeline, so a Redis that
    /// restarted and lost its scripts is no error). Each new entry carries the current span's
    /// `traceparent` (when tracing is on). Returns, in input order, the new entry id, or
    /// `None` for a document written before.
    pub async fn publish_once(
        &self,
        items: &[OnceWrite<'_>],
        key_ttl: Duration,
    ) -> Result<Vec<Option<String>>, BusError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let script = redis::Script::new(PUBLISH_ONCE);
        let ttl = key_ttl.as_secs().max(1);
        let hop = trace::write_hop(items[0].stream);
        let traceparent = hop.context().map_or("", |c| c.traceparent.as_str());
        let mut pipe = redis::pipe();
        pipe.load_script(&script).ignore();
        let invocations: Vec<_> = items
            .chunks(ONCE_PER_CALL)
            .map(|chunk| {
                let mut inv = script.prepare_invoke();
                inv.arg(self.maxlen)
                    .arg(DATA_FIELD)
                    .arg(ttl)
                    .arg(traceparent);
                for item in chunk {
                    inv.key(item.key).key(item.stream).arg(item.data);
                }
                inv
            })
            .collect();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let key = items[0].stream;
        let replies = query_replicated(&self.conn, pipe, "XADD once", key).await?;
        let ids: Vec<Option<String>> = replies
            .into_iter()
            .flat_map(|reply| match reply {
                Value::Array(values) => values,
                other => vec![other],
            })
            .map(|v| match v {
                Value::BulkString(id) => Some(String::from_utf8_lossy(&id).into_owned()),
                Value::SimpleString(id) => Some(id),
                _ => None,
            })
            .collect();
        debug_assert_eq!(ids.len(), items.len());
        Ok(ids)
    }

    /// Writes a dead-letter record.
    pub async fn dead_letter(&self, stream: &str, record: &DeadLetter) -> Result<String, BusError> {
        self.publish_doc(stream, record).await
    }
}

/// Counts a move of the connection to a new Redis primary (a Sentinel failover followed).
pub(crate) fn count_primary_move() {
    metrics::counter!("aurora_bus_primary_moves_total").increment(1);
}

/// Runs a pipeline of writes that gate an acknowledgement outside Redis, closed by `WAIT`
/// when the connection asks for replicas (docs/contract.md#redis): the writes' replies, or
/// an error when the replicas did not take them in time (the connection then looks again
/// for the primary).
pub async fn query_replicated(
    conn: &Conn,
    mut pipe: redis::Pipeline,
    command: &'static str,
    key: &str,
) -> Result<Vec<Value>, BusError> {
    let wait = conn.replica_wait();
    if let Some(wait) = wait {
        pipe.cmd("WAIT")
            .arg(wait.replicas)
            .arg(wait.timeout.as_millis().max(1) as u64);
    }
    let mut conn = conn.clone();
    let mut replies: Vec<Value> = pipe
        .query_async(&mut conn)
        .await
        .map_err(BusError::command(command, key))?;
    if let Some(wait) = wait {
        if let Err(e) = check_replicated(wait, replies.pop(), command, key) {
            conn.check_primary().await;
            return Err(e);
        }
    }
    Ok(replies)
}

/// Checks the reply of a pipeline's closing `WAIT`.
pub fn check_replicated(
    wait: ReplicaWait,
    reply: Option<Value>,
    command: &'static str,
    key: &str,
) -> Result<(), BusError> {
    let acknowledged = match reply {
        Some(Value::Int(n)) => n,
        _ => -1,
    };
    if acknowledged >= i64::from(wait.replicas) {
        return Ok(());
    }
    metrics::counter!("aurora_bus_replica_wait_failures_total", "command" => command).increment(1);
    Err(BusError::NotReplicated {
        command,
        key: key.to_string(),
        wanted: wait.replicas,
        acknowledged: acknowledged.max(0),
        timeout: wait.timeout,
    })
}

/// Removes the consumers of group ARGV[1] on stream KEYS[1], other than ARGV[2], that hold no
/// pending entry and have been idle for at least ARGV[3] ms; returns their names.
const FORGET_GONE_CONSUMERS: &str = r#"
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed[#removed + 1] = f['name']
  end
end
return removed
"#;

/// How a [`GroupReader`] reads.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub stream: String,
    pub group: String,
    /// Stable per replica, so a restarted replica finds its own pending entries.
    pub consumer: String,
    /// Where a new group starts: `0` (everything in the stream) or `$` (only new entries).
    pub start_id: String,
    pub batch: usize,
    pub block: Duration,
    /// An entry pending this long is taken over from whichever consumer holds it.
    pub claim_idle: Duration,
    /// How often to look for such entries.
    pub claim_every: Duration,
    /// A consumer of the group that holds nothing and has not read for this long is gone (a
    /// replica scaled down or replaced under a new name) and is removed from the group, so
    /// the group's consumers stay bounded by the live replicas.
    pub forget_idle: Duration,
    /// An entry delivered more times than this is dead-lettered.
    pub max_deliveries: u64,
    /// Where it goes, with the reason.
    pub dead_letter_stream: String,
    /// The service named in dead-letter records.
    pub service: String,
}

impl GroupConfig {
    /// Defaults that suit most services: batches of 256, 1 s blocking, entries idle for 30 s
    /// reclaimed, 5 deliveries at most.
    pub fn new(
        stream: &str,
        group: &str,
        consumer: &str,
        dead_letter_stream: &str,
        service: &str,
    ) -> Self {
        Self {
            stream: stream.to_string(),
            group: group.to_string(),
            consumer: consumer.to_string(),
            start_id: "0".to_string(),
            batch: 256,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            claim_every: Duration::from_secs(5),
            forget_idle: Duration::from_secs(300),
            max_deliveries: 5,
            dead_letter_stream: dead_letter_stream.to_string(),
            service: service.to_string(),
        }
    }
}

/// Reads a stream through a consumer group; see the module documentation.
pub struct GroupReader {
    cfg: GroupConfig,
    read_conn: Conn,
    producer: Producer,
    own_pending_done: bool,
    /// Where the re-read of this consumer's own pending entries has got to: each is handed
    /// out once per pass, even when the caller acknowledges later (a pipeline).
    own_pending_cursor: String,
    last_claim: Option<Instant>,
    claim_cursor: String,
    last_ledger_export: Option<Instant>,
    /// Own pending entries the last read found trimmed and cleared.
    cleared_in_last_read: usize,
}

impl GroupReader {
    /// `read_conn` must be a connection of this reader's own ([`connect_blocking`]);
    /// `producer` is shared, for acks and dead letters.
    pub async fn new(
        cfg: GroupConfig,
        read_conn: Conn,
        producer: Producer,
    ) -> Result<Self, BusError> {
        let mut reader = Self {
            cfg,
            read_conn,
            producer,
            own_pending_done: false,
            own_pending_cursor: "0-0".to_string(),
            last_claim: None,
            claim_cursor: "0-0".to_string(),
            last_ledger_export: None,
            cleared_in_last_read: 0,
        };
        reader.ensure_group().await?;
        Ok(reader)
    }

    pub fn config(&self) -> &GroupConfig {
        &self.cfg
    }

    /// Makes the next [`GroupReader::next_batch`] hand out this consumer's pending entries
    /// again (after a batch failed and was not acknowledged). Each re-read counts as a
    /// delivery: wait until the dependency that failed answers before calling it, so an
    /// outage does not dead-letter good entries.
    pub fn rewind(&mut self) {
        self.own_pending_done = false;
        self.own_pending_cursor = "0-0".to_string();
    }

    /// A handle that acknowledges for this reader, for a task other than the one reading.
    pub fn acker(&self) -> GroupAcker {
        GroupAcker {
            stream: self.cfg.stream.clone(),
            group: self.cfg.group.clone(),
            service: self.cfg.service.clone(),
            dead_letter_stream: self.cfg.dead_letter_stream.clone(),
            producer: self.producer.clone(),
        }
    }

    /// Creates the group (and the stream) unless it exists.
    pub async fn ensure_group(&mut self) -> Result<(), BusError> {
        let mut conn = self.producer.conn();
        let res: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&self.cfg.start_id)
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(BusError::command("XGROUP CREATE", &self.cfg.stream)(e)),
        }
    }

    /// The next batch to handle: may be empty when nothing arrived within the block time.
    /// Entries without a `data` field and entries delivered too often are dead-lettered here
    /// and not returned.
    pub async fn next_batch(&mut self) -> Result<Vec<Entry>, BusError> {
        match self.next_batch_inner().await {
            Err(BusError::Command { source, .. }) if source.code() == Some("NOGROUP") => {
                // The stream or its group vanished (a Redis restarted without persistence,
                // a stream deleted by an operator): make it again and go on.
                self.rewind();
                self.ensure_group().await?;
                self.next_batch_inner().await
            }
            other => other,
        }
    }

    async fn next_batch_inner(&mut self) -> Result<Vec<Entry>, BusError> {
        if !self.own_pending_done {
            let cursor = self.own_pending_cursor.clone();
            let mut own = self.read_group(&cursor, None).await?;
            // A page of entries all trimmed meanwhile was cleared: read past it.
            while own.is_empty() && self.cleared_in_last_read > 0 {
                own = self.read_group(&cursor, None).await?;
            }
            match own.last() {
                None => self.own_pending_done = true,
                Some(last) => {
                    self.own_pending_cursor = last.id.clone();
                    return self.screen(own).await;
                }
            }
        }
        let claim_due = self
            .last_claim
            .is_none_or(|t| t.elapsed() >= self.cfg.claim_every);
        if claim_due {
            self.report_backlog().await;
            let claimed = self.autoclaim().await?;
            if !claimed.is_empty() {
                return self.screen(claimed).await;
            }
            self.forget_gone_consumers().await;
            self.last_claim = Some(Instant::now());
        }
        let fresh = self.read_group(">", Some(self.cfg.block)).await?;
        self.screen(fresh).await
    }

    async fn read_group(
        &mut self,
        id: &str,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>, BusError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg("COUNT")
            .arg(self.cfg.batch);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.cfg.stream).arg(id);
        let reply: Option<StreamReadReply> = cmd
            .query_async(&mut self.read_conn)
            .await
            .map_err(BusError::command("XREADGROUP", &self.cfg.stream))?;
        let sids: Vec<StreamId> = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        let (gone, sids): (Vec<StreamId>, Vec<StreamId>) = sids
            .into_iter()
            .partition(|sid| id != ">" && sid.map.is_empty());
        self.cleared_in_last_read = gone.len();
        if !gone.is_empty() {
            // This consumer's own pending entries that the stream's limit trimmed meanwhile
            // (Redis answers their id without fields): lost to the stream's limit, counted
            // as such and cleared.
            let ids: Vec<&str> = gone.iter().map(|sid| sid.id.as_str()).collect();
            self.lost_while_pending(&ids, true).await?;
        }
        let mut entries: Vec<Entry> = sids
            .into_iter()
            .map(|sid| Entry::from_stream_id(&self.cfg.stream, sid))
            .collect();
        if id == ">" {
            for e in &mut entries {
                e.deliveries = 1;
            }
        } else {
            self.fill_deliveries(&mut entries).await?;
        }
        Ok(entries)
    }

    /// Exports the group's pending entries and lag (entries not yet delivered) as gauges
    /// `aurora_bus_pending_entries` and `aurora_bus_consumer_lag`; records entries trimmed
    /// before the group read them, and exports the group's ledger every minute
    /// ([`crate::ledger`]).
    async fn report_backlog(&mut self) {
        let reply: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.cfg.stream)
            .query_async(&mut self.read_conn)
            .await;
        let Ok(reply) = reply else { return };
        let Some(group) = reply.groups.into_iter().find(|g| g.name == self.cfg.group) else {
            return;
        };
        let labels = [
            ("service", self.cfg.service.clone()),
            ("stream", self.cfg.stream.clone()),
        ];
        metrics::gauge!("aurora_bus_pending_entries", &labels).set(group.pending as f64);
        if let Err(e) =
            ledger::record_trimmed(&self.producer.conn, &self.cfg.stream, &self.cfg.group).await
        {
            tracing::warn!(stream = %self.cfg.stream, error = %e, "cannot look for trimmed entries");
        }
        if let Some(lag) = group.lag {
            // Redis's lag keeps counting entries trimmed before the group read them; those
            // are in the ledger, not waiting to be read.
            let trimmed =
                ledger::trimmed_total(&self.producer.conn, &self.cfg.stream, &self.cfg.group).await;
            metrics::gauge!("aurora_bus_consumer_lag", &labels)
                .set((lag as u64).saturating_sub(trimmed) as f64);
        }
        let export_due = self
            .last_ledger_export
            .is_none_or(|t| t.elapsed() >= ledger::EXPORT_EVERY);
        if export_due {
            self.last_ledger_export = Some(Instant::now());
            if let Err(e) =
                ledger::export(&self.producer.conn, &self.cfg.stream, &self.cfg.group).await
            {
                tracing::warn!(stream = %self.cfg.stream, error = %e, "cannot export the ledger");
            }
        }
    }

    /// Removes the group's consumers that hold nothing and have been idle past
    /// `forget_idle` (checked and removed in one script, so a consumer that reads meanwhile
    /// is never removed with entries pending). A removed consumer that was alive after all is
    /// made again by its next read.
    async fn forget_gone_consumers(&mut self) {
        let script = redis::Script::new(FORGET_GONE_CONSUMERS);
        let removed: redis::RedisResult<Vec<String>> = script
            .key(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg(self.cfg.forget_idle.as_millis() as u64)
            .invoke_async(&mut self.read_conn)
            .await;
        match removed {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    stream = %self.cfg.stream,
                    group = %self.cfg.group,
                    consumers = ?removed,
                    "removed consumers that are gone and hold nothing"
                );
                metrics::counter!(
                    "aurora_bus_consumers_removed_total",
                    "service" => self.cfg.service.clone(),
                    "stream" => self.cfg.stream.clone()
                )
                .increment(removed.len() as u64);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(stream = %self.cfg.stream, error = %e, "cannot look for gone consumers")
            }
        }
    }

    async fn autoclaim(&mut self) -> Result<Vec<Entry>, BusError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg(self.cfg.claim_idle.as_millis() as u64)
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(self.cfg.batch)
            .query_async(&mut self.read_conn)
            .await
            .map_err(BusError::command("XAUTOCLAIM", &self.cfg.stream))?;
        self.claim_cursor = reply.next_stream_id;
        if !reply.deleted_ids.is_empty() {
            // Entries trimmed away while pending (Redis removed them from the group's
            // pending list with this claim): lost to the stream's limit, counted once here.
            let gone: Vec<&str> = reply.deleted_ids.iter().map(String::as_str).collect();
            self.lost_while_pending(&gone, false).await?;
        }
        let mut entries: Vec<Entry> = reply
            .claimed
            .into_iter()
            .map(|sid| Entry::from_stream_id(&self.cfg.stream, sid))
            .collect();
        if !entries.is_empty() {
            tracing::info!(
                stream = %self.cfg.stream,
                group = %self.cfg.group,
                count = entries.len(),
                "took over entries left pending by another consumer"
            );
        }
        self.fill_deliveries(&mut entries).await?;
        Ok(entries)
    }

    /// Counts pending entries the stream's limit trimmed as lost to this group
    /// ([`ledger::GroupCount::Vanished`]), acknowledging them first when they are still in
    /// the group's pending list (`still_listed`; `XAUTOCLAIM` removes those it finds gone).
    async fn lost_while_pending(&self, ids: &[&str], still_listed: bool) -> Result<(), BusError> {
        let (conn, stream, group) = (&self.producer.conn, &self.cfg.stream, &self.cfg.group);
        let lost = if still_listed {
            ledger::ack_counted(conn, stream, group, ledger::GroupCount::Vanished, ids).await?
        } else {
            ledger::count(conn, stream, group, ledger::GroupCount::Vanished, ids).await?;
            ids.len() as u64
        };
        tracing::error!(
            stream = %stream,
            group = %group,
            entries = lost,
            "entries were trimmed from the stream while pending: they are lost to this group"
        );
        Ok(())
    }

    /// Reads the delivery counts of entries this consumer holds.
    async fn fill_deliveries(&mut self, entries: &mut [Entry]) -> Result<(), BusError> {
        let mut conn = self.read_conn.clone();
        let counts = self.own_pending(&mut conn, entries).await?;
        for e in entries.iter_mut() {
            e.deliveries = counts.get(&e.id).copied().unwrap_or(1);
        }
        Ok(())
    }

    /// The entries of `entries` this consumer still holds (not acknowledged or dead-lettered
    /// meanwhile), in their order: what a failed attempt at a batch left to do.
    pub async fn still_pending(&self, entries: Vec<Entry>) -> Result<Vec<Entry>, BusError> {
        let pending = self
            .own_pending(&mut self.producer.conn(), &entries)
            .await?;
        Ok(entries
            .into_iter()
            .filter(|e| pending.contains_key(&e.id))
            .collect())
    }

    /// Which of `entries` (in stream order) this consumer holds, with their delivery counts.
    async fn own_pending(
        &self,
        conn: &mut Conn,
        entries: &[Entry],
    ) -> Result<std::collections::HashMap<String, u64>, BusError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(Default::default());
        };
        let reply: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len())
            .arg(&self.cfg.consumer)
            .query_async(conn)
            .await
            .map_err(BusError::command("XPENDING", &self.cfg.stream))?;
        Ok(reply
            .ids
            .into_iter()
            .map(|p| (p.id, p.times_delivered as u64))
            .collect())
    }

    /// Dead-letters what cannot be handled; returns the rest.
    async fn screen(&mut self, entries: Vec<Entry>) -> Result<Vec<Entry>, BusError> {
        let again: Vec<&str> = entries
            .iter()
            .filter(|e| e.deliveries > 1)
            .map(|e| e.id.as_str())
            .collect();
        if let Err(e) = ledger::count(
            &self.producer.conn,
            &self.cfg.stream,
            &self.cfg.group,
            ledger::GroupCount::Redelivered,
            &again,
        )
        .await
        {
            tracing::debug!(stream = %self.cfg.stream, error = %e, "cannot count redeliveries");
        }
        let mut keep = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.data.is_none() {
                self.dead_letter(&entry, "entry has no `data` field")
                    .await?;
            } else if entry.deliveries > self.cfg.max_deliveries {
                let reason = format!(
                    "delivered {} times without being acknowledged (max {})",
                    entry.deliveries, self.cfg.max_deliveries
                );
                self.dead_letter(&entry, &reason).await?;
            } else {
                keep.push(entry);
            }
        }
        Ok(keep)
    }

    /// Acknowledges handled entries.
    pub async fn ack<S: AsRef<str>>(&self, ids: &[S]) -> Result<(), BusError> {
        self.acker().ack(ids).await
    }

    /// Acknowledges an entry and moves it to the dead-letter stream with the reason, in one
    /// script: it is never both lost and acknowledged. When another consumer settled it
    /// meanwhile (it took the entry over), nothing is written. Counted in the ledger.
    pub async fn dead_letter(&self, entry: &Entry, reason: &str) -> Result<(), BusError> {
        self.acker().dead_letter(entry, reason).await
    }
}

/// Acknowledges entries of one group; cheap to clone.
#[derive(Clone)]
pub struct GroupAcker {
    stream: String,
    group: String,
    service: String,
    dead_letter_stream: String,
    producer: Producer,
}

impl GroupAcker {
    /// Acknowledges an entry and moves it to the dead-letter stream with the reason, in one
    /// script: it is never both lost and acknowledged. When another consumer settled it
    /// meanwhile (it took the entry over), nothing is written. Counted in the ledger.
    pub async fn dead_letter(&self, entry: &Entry, reason: &str) -> Result<(), BusError> {
        let mut record = DeadLetter::new(
            &self.service,
            &self.stream,
            reason,
            entry.data.as_deref().unwrap_or_default(),
        );
        record.source_id = Some(entry.id.clone());
        record.deliveries = Some(entry.deliveries);
        tracing::warn!(
            stream = %self.stream,
            entry = %entry.id,
            reason,
            "dead-lettered a stream entry"
        );
        metrics::counter!(
            "aurora_bus_dead_letters_total",
            "service" => self.service.clone(),
            "stream" => self.stream.clone()
        )
        .increment(1);
        let script = redis::Script::new(ledger::DEAD_LETTER);
        let traceparent = entry.trace.as_ref().map_or("", |t| t.traceparent.as_str());
        let mut conn = self.producer.conn();
        let _settled: Option<String> = script
            .key(&self.stream)
            .key(&self.dead_letter_stream)
            .arg(&self.group)
            .arg(&entry.id)
            .arg(self.producer.maxlen)
            .arg(DATA_FIELD)
            .arg(to_bytes(&record))
            .arg(traceparent)
            .invoke_async(&mut conn)
            .await
            .map_err(BusError::command("XACK+XADD", &self.dead_letter_stream))?;
        Ok(())
    }

    /// Acknowledges handled entries (XACK), counting those still pending as done in the
    /// ledger ([`crate::ledger`]).
    pub async fn ack<S: AsRef<str>>(&self, ids: &[S]) -> Result<(), BusError> {
        ledger::ack_counted(
            &self.producer.conn,
            &self.stream,
            &self.group,
            ledger::GroupCount::Done,
            ids,
        )
        .await
        .map(|_| ())
    }
}

/// Reads entries after the given ids from several streams without a group (XREAD), blocking
/// up to `block` when there are none. Returns them in stream order per stream.
pub async fn tail(
    conn: &mut Conn,
    streams: &[(String, String)],
    count: usize,
    block: Option<Duration>,
) -> Result<Vec<Entry>, BusError> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(count);
    if let Some(b) = block {
        cmd.arg("BLOCK").arg(b.as_millis() as u64);
    }
    cmd.arg("STREAMS");
    for (stream, _) in streams {
        cmd.arg(stream);
    }
    for (_, id) in streams {
        cmd.arg(id);
    }
    let first = streams.first().map(|s| s.0.as_str()).unwrap_or("-");
    let reply: Option<StreamReadReply> = cmd
        .query_async(conn)
        .await
        .map_err(BusError::command("XREAD", first))?;
    Ok(reply
        .map(|r| {
            r.keys
                .into_iter()
                .flat_map(|k| {
                    let stream = k.key;
                    k.ids
                        .into_iter()
                        .map(move |sid| Entry::from_stream_id(&stream, sid))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Up to `count` entries of a stream strictly after `after` (an entry id), oldest first.
pub async fn range(
    conn: &mut Conn,
    stream: &str,
    after: &str,
    count: usize,
) -> Result<Vec<Entry>, BusError> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await
        .map_err(BusError::command("XRANGE", stream))?;
    Ok(reply
        .ids
        .into_iter()
        .map(|sid| Entry::from_stream_id(stream, sid))
        .collect())
}

/// The id of the newest entry of a stream (`0-0` when it is empty or missing).
pub async fn last_id(conn: &mut Conn, stream: &str) -> Result<String, BusError> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(BusError::command("XREVRANGE", stream))?;
    Ok(reply
        .ids
        .into_iter()
        .next()
        .map(|s| s.id)
        .unwrap_or_else(|| "0-0".to_string()))
}

/// Compares two entry ids (`ms-seq`) numerically; `None` when one is not an entry id.
pub fn compare_ids(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    Some(parse_id(a)?.cmp(&parse_id(b)?))
}

/// `ms-seq` as numbers; a bare `ms` means `ms-0`.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    match id.split_once('-') {
        Some((ms, seq)) => Some((ms.parse().ok()?, seq.parse().ok()?)),
        None => Some((id.parse().ok()?, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_numerically() {
        assert_eq!(
            compare_ids("10-0", "9-5"),
            Some(std::cmp::Ordering::Greater)
        );
        assert_eq!(
            compare_ids("5-10", "5-9"),
            Some(std::cmp::Ordering::Greater)
        );
        assert_eq!(compare_ids("5", "5-0"), Some(std::cmp::Ordering::Equal));
        assert_eq!(compare_ids("x", "5-0"), None);
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redacted_url("redis://user:secret@host:6379/2"),
            "redis://user:***@host:6379/2"
        );
        assert_eq!(redacted_url("redis://host:6379"), "redis://host:6379");
    }
}
