//! The loss ledger: what went into each stream and what became of it in each consumer group,
//! per minute, kept in Redis beside the stream (docs/contract.md#ledger).
//!
//! - Every write of an entry counts `in` in the hash `<stream>:ledger:<minute>` (the minute of
//!   the entry's id, Unix time / 60), in the same transaction or script as the `XADD`.
//! - Every consumer group counts, in the same hash and atomically with its `XACK`, what it
//!   handled (`done:<group>`) and dead-lettered (`dead:<group>`); what a limit took from it:
//!   entries trimmed before it read them (`trimmed:<group>`) and entries trimmed while it held
//!   them (`vanished:<group>`); and, for information, each delivery after the first
//!   (`redelivered:<group>`).
//! - What is still in flight is read from the stream itself: the group's pending entries and
//!   the entries after its last delivered id.
//!
//! For any window of minutes and any group, `in = done + dead + trimmed + vanished + in
//! flight`; [`report`] computes each side and names what does not add up. The counts live in
//! Redis, so they survive restarts and add up across replicas: every replica counts into the
//! same hashes. They expire after [`KEEP`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;

use crate::bus::{parse_id, BusError, Conn};

/// The width of one ledger bucket.
pub const BUCKET_MS: u64 = 60_000;

/// How long a bucket is kept after its last count.
pub const KEEP: Duration = Duration::from_secs(8 * 24 * 3600);

/// The count of entries written to the stream.
pub const IN: &str = "in";

/// What a consumer group counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupCount {
    /// Handled and acknowledged.
    Done,
    /// Moved to the dead-letter stream with a reason.
    Dead,
    /// Trimmed from the stream (its length limit) before the group read it.
    Trimmed,
    /// Trimmed from the stream while the group held it, not yet acknowledged.
    Vanished,
    /// Delivered again (after a consumer failed or went away); information, not an outcome.
    Redelivered,
}

impl GroupCount {
    pub const ALL: [GroupCount; 5] = [
        Self::Done,
        Self::Dead,
        Self::Trimmed,
        Self::Vanished,
        Self::Redelivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Dead => "dead",
            Self::Trimmed => "trimmed",
            Self::Vanished => "vanished",
            Self::Redelivered => "redelivered",
        }
    }

    /// The hash field of this count for `group`.
    pub fn field(self, group: &str) -> String {
        format!("{}:{group}", self.as_str())
    }
}

/// The hash holding the counts of `stream` for one bucket.
pub fn key(stream: &str, bucket: u64) -> String {
    format!("{stream}:ledger:{bucket}")
}

/// The hash holding, per group, how many entries Redis says were trimmed before the group
/// read them (what [`record_trimmed`] has counted so far).
pub fn trimmed_key(stream: &str) -> String {
    format!("{stream}:ledger:trimmed")
}

/// The bucket of a time in ms since the epoch.
pub fn bucket_of_ms(ms: u64) -> u64 {
    ms / BUCKET_MS
}

/// The bucket of an entry id.
pub fn bucket_of_id(id: &str) -> Option<u64> {
    parse_id(id).map(|(ms, _)| bucket_of_ms(ms))
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Lua helpers for scripts that write or acknowledge entries: `ledger_add(counts, stream, id,
/// n)` adds to a table, `ledger_flush(counts, field)` writes it (one `HINCRBY` and `EXPIRE`
/// per stream and minute). Prepend to a script with `concat!`.
#[macro_export]
macro_rules! ledger_lua {
    () => {
        r"
local function ledger_add(counts, stream, id, n)
  local ms = tonumber(string.match(id, '^(%d+)'))
  if ms == nil then return end
  local key = stream .. ':ledger:' .. string.format('%d', math.floor(ms / 60000))
  counts[key] = (counts[key] or 0) + n
end
local function ledger_flush(counts, field)
  for key, n in pairs(counts) do
    redis.call('HINCRBY', key, field, n)
    redis.call('EXPIRE', key, 691200)
  end
end
"
    };
}

/// Acknowledges ids (ARGV[3..]) of group ARGV[1] on stream KEYS[1] and counts those it
/// acknowledged (still pending until now) under field ARGV[2]. Returns how many.
const ACK: &str = concat!(
    ledger_lua!(),
    r"
local counts, n = {}, 0
for i = 3, #ARGV do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    ledger_add(counts, KEYS[1], ARGV[i], 1)
    n = n + 1
  end
end
ledger_flush(counts, ARGV[2])
return n
"
);

/// Acknowledges entry ARGV[2] of group ARGV[1] on stream KEYS[1] and, when it was still
/// pending, appends the record ARGV[5] (field ARGV[4], `MAXLEN ~ ARGV[3]`, `traceparent`
/// ARGV[6] unless empty) to the dead-letter stream KEYS[2]; counts `dead:<group>` and the
/// dead-letter stream's `in`. Returns the record's id, or false when another consumer had
/// settled the entry already.
pub(crate) const DEAD_LETTER: &str = concat!(
    ledger_lua!(),
    r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
local id
if ARGV[6] == '' then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', ARGV[4], ARGV[5])
else
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', ARGV[4], ARGV[5],
    'traceparent', ARGV[6])
end
local dead, written = {}, {}
ledger_add(dead, KEYS[1], ARGV[2], 1)
ledger_flush(dead, 'dead:' .. ARGV[1])
ledger_add(written, KEYS[2], id, 1)
ledger_flush(written, 'in')
return id
"
);

/// Records that Redis now says ARGV[2] entries in all were trimmed before group ARGV[1] read
/// them (held in hash KEYS[1]); counts what is new under `trimmed:<group>` in bucket hash
/// KEYS[2]. A smaller total (the group was made again) becomes the new base. Returns what
/// was new.
const TRIMMED: &str = r"
local held = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local seen = tonumber(ARGV[2])
if seen == held then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], 691200)
if seen < held then return 0 end
redis.call('HINCRBY', KEYS[2], 'trimmed:' .. ARGV[1], seen - held)
redis.call('EXPIRE', KEYS[2], 691200)
return seen - held
";

/// Acknowledges `ids` of `group` on `stream`, counting those that were still pending under
/// `count` (done, or vanished for entries trimmed while pending). Returns how many were.
pub async fn ack_counted<S: AsRef<str>>(
    conn: &Conn,
    stream: &str,
    group: &str,
    count: GroupCount,
    ids: &[S],
) -> Result<u64, BusError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let script = redis::Script::new(ACK);
    let mut inv = script.key(stream);
    inv.arg(group).arg(count.field(group));
    for id in ids {
        inv.arg(id.as_ref());
    }
    let mut conn = conn.clone();
    inv.invoke_async(&mut conn)
        .await
        .map_err(BusError::command("XACK", stream))
}

/// Counts `ids` of `group` under `count`, each in its entry's minute, without acknowledging
/// anything: deliveries after the first ([`GroupCount::Redelivered`]), and entries that
/// `XAUTOCLAIM` found trimmed while pending and removed itself ([`GroupCount::Vanished`]:
/// only the reader whose claim removed them sees them, so each is counted once).
pub async fn count(
    conn: &Conn,
    stream: &str,
    group: &str,
    count: GroupCount,
    ids: &[&str],
) -> Result<(), BusError> {
    let mut per_bucket: BTreeMap<u64, i64> = BTreeMap::new();
    for id in ids {
        if let Some(b) = bucket_of_id(id) {
            *per_bucket.entry(b).or_default() += 1;
        }
    }
    if per_bucket.is_empty() {
        return Ok(());
    }
    let field = count.field(group);
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (bucket, n) in per_bucket {
        let key = key(stream, bucket);
        pipe.hincr(&key, &field, n)
            .ignore()
            .expire(&key, KEEP.as_secs() as i64)
            .ignore();
    }
    let mut conn = conn.clone();
    pipe.query_async::<()>(&mut conn)
        .await
        .map_err(BusError::command("HINCRBY", stream))
}

/// What Redis says of a group and its stream, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct GroupState {
    pub last_delivered: String,
    /// Redis's count of entries added and not read by the group, trimmed ones included;
    /// `None` when Redis cannot tell (entries deleted with `XDEL`).
    pub lag: Option<u64>,
    pub pending: u64,
    pub length: u64,
    pub first_id: Option<String>,
}

impl GroupState {
    /// How many entries, in all, were trimmed before the group read them, when it can be
    /// told cheaply: while the stream's first entry is past the group's last delivered one,
    /// every entry left is unread, and Redis's lag counts the trimmed ones too.
    pub fn trimmed_unread(&self) -> Option<u64> {
        let lag = self.lag?;
        let first = match &self.first_id {
            None => return Some(lag),
            Some(first) => first,
        };
        let past = crate::bus::compare_ids(first, &self.last_delivered)?;
        (past == std::cmp::Ordering::Greater).then(|| lag.saturating_sub(self.length))
    }
}

/// Reads a group's state (`None` when the stream or the group does not exist).
pub async fn group_state(
    conn: &Conn,
    stream: &str,
    group: &str,
) -> Result<Option<GroupState>, BusError> {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .cmd("XLEN")
        .arg(stream);
    let mut conn = conn.clone();
    let replies: Vec<Value> = match pipe.query_async(&mut conn).await {
        Ok(r) => r,
        Err(e) if e.code() == Some("ERR") && e.to_string().contains("no such key") => {
            return Ok(None)
        }
        Err(e) => return Err(BusError::command("XINFO GROUPS", stream)(e)),
    };
    let [groups, first, length] = <[Value; 3]>::try_from(replies).map_err(|_| {
        BusError::command("XINFO GROUPS", stream)(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected reply",
        )))
    })?;
    let groups: redis::streams::StreamInfoGroupsReply = redis::from_redis_value(groups)
        .map_err(|e| BusError::command("XINFO GROUPS", stream)(redis::RedisError::from(e)))?;
    let Some(info) = groups.groups.into_iter().find(|g| g.name == group) else {
        return Ok(None);
    };
    let first: redis::streams::StreamRangeReply = redis::from_redis_value(first)
        .map_err(|e| BusError::command("XRANGE", stream)(redis::RedisError::from(e)))?;
    let length: u64 = redis::from_redis_value(length).unwrap_or_default();
    Ok(Some(GroupState {
        last_delivered: info.last_delivered_id,
        lag: info.lag.map(|l| l as u64),
        pending: info.pending as u64,
        length,
        first_id: first.ids.into_iter().next().map(|s| s.id),
    }))
}

/// Counts entries trimmed before `group` read them that the ledger does not hold yet
/// (idempotent: every replica and `aurora ledger` may call it). Returns how many were new.
pub async fn record_trimmed(conn: &Conn, stream: &str, group: &str) -> Result<u64, BusError> {
    let Some(state) = group_state(conn, stream, group).await? else {
        return Ok(0);
    };
    let Some(total) = state.trimmed_unread() else {
        return Ok(0);
    };
    // The trimmed entries lay between the last delivered one and the first one left: they
    // are counted in the minute just before the first one left.
    let bucket = state
        .first_id
        .as_deref()
        .and_then(parse_id)
        .map(|(ms, _)| bucket_of_ms(ms.saturating_sub(1)))
        .unwrap_or_else(|| bucket_of_ms(now_ms()));
    let script = redis::Script::new(TRIMMED);
    let mut conn = conn.clone();
    let new: u64 = script
        .key(trimmed_key(stream))
        .key(key(stream, bucket))
        .arg(group)
        .arg(total)
        .invoke_async(&mut conn)
        .await
        .map_err(BusError::command("ledger trimmed", stream))?;
    if new > 0 {
        tracing::error!(
            stream,
            group,
            entries = new,
            "the stream's length limit trimmed entries before this group read them: they are lost to it"
        );
        metrics::counter!(
            "aurora_ledger_trimmed_unread_total",
            "stream" => stream.to_string(),
            "group" => group.to_string()
        )
        .increment(new);
    }
    Ok(new)
}

/// How many entries, in all, the ledger has counted as trimmed before `group` read them
/// (what Redis's lag of the group still includes); 0 when it cannot tell.
pub async fn trimmed_total(conn: &Conn, stream: &str, group: &str) -> u64 {
    let mut conn = conn.clone();
    redis::cmd("HGET")
        .arg(trimmed_key(stream))
        .arg(group)
        .query_async::<Option<u64>>(&mut conn)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// A window of whole minutes: `[from, to)` in buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: u64,
    pub to: u64,
}

impl Window {
    /// The last `span` up to now, widened to whole minutes: from the minute `span` ago to
    /// the current one, both included.
    pub fn last(span: Duration) -> Self {
        let now = now_ms();
        Self::between(now.saturating_sub(span.as_millis() as u64), now)
    }

    /// From `from_ms` to `to_ms` (each widened to whole minutes).
    pub fn between(from_ms: u64, to_ms: u64) -> Self {
        Self {
            from: bucket_of_ms(from_ms),
            to: bucket_of_ms(to_ms) + 1,
        }
    }

    fn first_id(&self) -> String {
        format!("{}-0", self.from * BUCKET_MS)
    }

    fn last_id(&self) -> String {
        format!("{}-{}", self.to * BUCKET_MS - 1, u64::MAX)
    }
}

/// One group's account of its stream over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupLedger {
    pub stream: String,
    pub group: String,
    /// Entries written to the stream in the window.
    pub written: i64,
    pub done: i64,
    pub dead: i64,
    pub trimmed: i64,
    pub vanished: i64,
    /// Entries of the window the group holds, not yet acknowledged.
    pub pending: i64,
    /// Entries of the window after the group's last delivered one.
    pub unread: i64,
    pub redelivered: i64,
    /// `written - done - dead - trimmed - vanished - pending - unread`: zero when every entry
    /// is accounted for.
    pub unexplained: i64,
}

impl GroupLedger {
    /// What a limit dropped (named losses).
    pub fn dropped(&self) -> i64 {
        self.trimmed + self.vanished
    }

    pub fn in_flight(&self) -> i64 {
        self.pending + self.unread
    }

    /// Each difference named in words; empty when the group accounts for everything.
    pub fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let hop = format!("{} -> group {}", self.stream, self.group);
        if self.trimmed > 0 {
            out.push(format!(
                "{hop}: {} entries trimmed by the stream's length limit before the group read them (lost to it)",
                self.trimmed
            ));
        }
        if self.vanished > 0 {
            out.push(format!(
                "{hop}: {} entries trimmed by the stream's length limit while the group held them unacknowledged (lost to it)",
                self.vanished
            ));
        }
        if self.unexplained > 0 {
            out.push(format!(
                "{hop}: {} entries written in this window are neither handled, dead-lettered, dropped by a limit nor in flight (unexplained: written before the group existed, or removed from the stream by something other than its limit)",
                self.unexplained
            ));
        } else if self.unexplained < 0 {
            out.push(format!(
                "{hop}: {} more entries settled than written in this window (unexplained: entries written by something that does not keep the ledger, or counts lost with a Redis that does not keep what it acknowledges)",
                -self.unexplained
            ));
        }
        out
    }
}

fn sum_field(hashes: &[BTreeMap<String, i64>], field: &str) -> i64 {
    hashes.iter().filter_map(|h| h.get(field)).sum()
}

/// Counts the entries of `stream` in `[from, to]` (ids, inclusive; `(` for exclusive) page by
/// page, up to `cap`.
async fn count_range(
    conn: &mut Conn,
    stream: &str,
    from: String,
    to: &str,
    cap: u64,
) -> Result<u64, BusError> {
    let mut start = from;
    let mut n = 0u64;
    loop {
        let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg(to)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(BusError::command("XRANGE", stream))?;
        let got = page.ids.len() as u64;
        n += got;
        match page.ids.last() {
            Some(last) if got == 1000 && n < cap => start = format!("({}", last.id),
            _ => return Ok(n),
        }
    }
}

/// Counts the pending entries of `group` in `[from, to]`, page by page.
async fn count_pending(
    conn: &mut Conn,
    stream: &str,
    group: &str,
    from: String,
    to: &str,
) -> Result<u64, BusError> {
    let mut start = from;
    let mut n = 0u64;
    loop {
        let page: redis::RedisResult<redis::streams::StreamPendingCountReply> =
            redis::cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .arg(&start)
                .arg(to)
                .arg(10_000)
                .query_async(conn)
                .await;
        let page = match page {
            Ok(page) => page,
            // No such group (or stream): it holds nothing.
            Err(e) if e.code() == Some("NOGROUP") => return Ok(0),
            Err(e) => return Err(BusError::command("XPENDING", stream)(e)),
        };
        let got = page.ids.len() as u64;
        n += got;
        match page.ids.last() {
            Some(last) if got == 10_000 => start = format!("({}", last.id),
            _ => return Ok(n),
        }
    }
}

/// The account of `group` on `stream` over `window` (trimming noticed by Redis is recorded
/// first, as a reader would).
pub async fn group_ledger(
    conn: &Conn,
    stream: &str,
    group: &str,
    window: Window,
) -> Result<GroupLedger, BusError> {
    let (row, _) = group_ledger_within(conn, stream, group, window, true).await?;
    Ok(row)
}

/// Pending and unread entries one snapshot of [`group_ledger_within`] reads at most (each
/// unread one is sent whole); past that, the count is made page by page.
const SNAPSHOT_CAP: u64 = 20_000;

/// As [`group_ledger`]. The counts and what is in flight are read in one transaction, so an
/// entry written, delivered or settled meanwhile is never counted twice or missed, up to
/// [`SNAPSHOT_CAP`] pending and unread entries. Past that, with `exact_past_cap`, they are
/// counted page by page (exact when the group is idle, otherwise off by what moved during
/// the count), else left uncounted: the second value says whether the row is complete.
async fn group_ledger_within(
    conn: &Conn,
    stream: &str,
    group: &str,
    window: Window,
    exact_past_cap: bool,
) -> Result<(GroupLedger, bool), BusError> {
    record_trimmed(conn, stream, group).await?;
    let mut c = conn.clone();
    let buckets = (window.to - window.from) as usize;
    let first = window.first_id();
    let last = window.last_id();
    // The last delivered id before the snapshot: the snapshot reads from it and keeps what
    // is past the group's last delivered id within the snapshot (which can only be later).
    let before = group_state(conn, stream, group).await?;
    let mut pipe = redis::pipe();
    pipe.atomic();
    for bucket in window.from..window.to {
        pipe.hgetall(key(stream, bucket));
    }
    if let Some(state) = &before {
        let from = match crate::bus::compare_ids(&state.last_delivered, &first) {
            Some(std::cmp::Ordering::Less) | None => first.clone(),
            _ => format!("({}", state.last_delivered),
        };
        pipe.cmd("XINFO").arg("GROUPS").arg(stream);
        pipe.cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg(&first)
            .arg(&last)
            .arg(SNAPSHOT_CAP);
        pipe.cmd("XRANGE")
            .arg(stream)
            .arg(from)
            .arg(&last)
            .arg("COUNT")
            .arg(SNAPSHOT_CAP);
    }
    let mut replies: Vec<Value> = pipe
        .query_async(&mut c)
        .await
        .map_err(BusError::command("ledger snapshot", stream))?;
    let rest = replies.split_off(buckets.min(replies.len()));
    let hashes: Vec<BTreeMap<String, i64>> = replies
        .into_iter()
        .map(|v| redis::from_redis_value(v).unwrap_or_default())
        .collect();
    let (mut pending, mut unread, mut complete) = (0u64, 0u64, true);
    if let Ok([groups, pending_reply, range]) = <[Value; 3]>::try_from(rest) {
        let parse = |e: redis::ParsingError| {
            BusError::command("ledger snapshot", stream)(redis::RedisError::from(e))
        };
        let groups: redis::streams::StreamInfoGroupsReply =
            redis::from_redis_value(groups).map_err(parse)?;
        let last_delivered = groups
            .groups
            .into_iter()
            .find(|g| g.name == group)
            .map(|g| g.last_delivered_id)
            .unwrap_or_else(|| "0-0".to_string());
        let held: redis::streams::StreamPendingCountReply =
            redis::from_redis_value(pending_reply).map_err(parse)?;
        let range: redis::streams::StreamRangeReply =
            redis::from_redis_value(range).map_err(parse)?;
        pending = held.ids.len() as u64;
        let past = |id: &str| {
            crate::bus::compare_ids(id, &last_delivered) == Some(std::cmp::Ordering::Greater)
        };
        unread = range.ids.iter().filter(|e| past(&e.id)).count() as u64;
        if pending >= SNAPSHOT_CAP || range.ids.len() as u64 >= SNAPSHOT_CAP {
            complete = false;
            if exact_past_cap {
                pending = count_pending(&mut c, stream, group, first.clone(), &last).await?;
                let from = match crate::bus::compare_ids(&last_delivered, &first) {
                    Some(std::cmp::Ordering::Less) | None => first.clone(),
                    _ => format!("({last_delivered}"),
                };
                unread = count_range(&mut c, stream, from, &last, u64::MAX).await?;
                complete = true;
            }
        }
    }
    let field = |count: GroupCount| sum_field(&hashes, &count.field(group));
    let mut row = GroupLedger {
        stream: stream.to_string(),
        group: group.to_string(),
        written: sum_field(&hashes, IN),
        done: field(GroupCount::Done),
        dead: field(GroupCount::Dead),
        trimmed: field(GroupCount::Trimmed),
        vanished: field(GroupCount::Vanished),
        pending: pending as i64,
        unread: unread as i64,
        redelivered: field(GroupCount::Redelivered),
        unexplained: 0,
    };
    row.unexplained =
        row.written - row.done - row.dead - row.trimmed - row.vanished - row.pending - row.unread;
    Ok((row, complete))
}

/// The accounts of every consumer group of the streams whose keys start with `prefix`
/// (`<namespace>:`), over `window`.
pub async fn report(
    conn: &Conn,
    prefix: &str,
    window: Window,
) -> Result<Vec<GroupLedger>, BusError> {
    let mut c = conn.clone();
    let mut streams: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("stream")
            .query_async(&mut c)
            .await
            .map_err(BusError::command("SCAN", prefix))?;
        streams.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    streams.sort();
    streams.dedup();
    let mut rows = Vec::new();
    for stream in streams {
        let groups: redis::streams::StreamInfoGroupsReply = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut c)
            .await
        {
            Ok(g) => g,
            Err(_) => continue, // gone meanwhile
        };
        for g in groups.groups {
            rows.push(group_ledger(conn, &stream, &g.name, window).await?);
        }
    }
    Ok(rows)
}

/// Records that a JetStream stream dropped, by its limits, messages a consumer had not
/// acknowledged: its oldest unacknowledged sequence ARGV[2] is before the stream's first
/// ARGV[3]. The highest sequence counted per consumer ARGV[1] is kept in hash KEYS[1], so
/// every replica and every look counts each message once; what is new goes to
/// `dropped:<consumer>` in bucket hash KEYS[2]. Returns what was new.
const JETSTREAM_DROPPED: &str = r"
local held = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local first = tonumber(ARGV[3])
local from = math.max(tonumber(ARGV[2]), held + 1)
if first <= from then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', first - 1))
redis.call('EXPIRE', KEYS[1], 691200)
redis.call('HINCRBY', KEYS[2], 'dropped:' .. ARGV[1], first - from)
redis.call('EXPIRE', KEYS[2], 691200)
return first - from
";

/// Counts, under `base` (`Names::ledger_jetstream`), the messages a JetStream stream's limits
/// dropped before `consumer` acknowledged them: `next` is its oldest unacknowledged sequence
/// (ack floor + 1), `first_seq` the stream's first. Idempotent. Returns how many were new.
pub async fn record_jetstream_dropped(
    conn: &Conn,
    base: &str,
    consumer: &str,
    next: u64,
    first_seq: u64,
) -> Result<u64, BusError> {
    if first_seq <= next {
        return Ok(0);
    }
    let bucket = bucket_of_ms(now_ms());
    let mut conn = conn.clone();
    redis::Script::new(JETSTREAM_DROPPED)
        .key(format!("{base}:counted"))
        .key(format!("{base}:{bucket}"))
        .arg(consumer)
        .arg(next)
        .arg(first_seq)
        .invoke_async(&mut conn)
        .await
        .map_err(BusError::command("ledger jetstream", base))
}

/// What a JetStream stream's limits dropped before each consumer took it, over `window`
/// (counted when found, in that minute).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JetStreamLoss {
    pub stream: String,
    pub consumer: String,
    pub dropped: i64,
}

impl JetStreamLoss {
    pub fn finding(&self) -> String {
        format!(
            "JetStream {} -> consumer {}: {} messages dropped by the stream's limits before that site imported them (lost to it)",
            self.stream, self.consumer, self.dropped
        )
    }
}

/// The JetStream losses of `stream` recorded under `base` over `window`, per consumer.
pub async fn jetstream_losses(
    conn: &Conn,
    base: &str,
    stream: &str,
    window: Window,
) -> Result<Vec<JetStreamLoss>, BusError> {
    Ok(dropped_by(conn, base, window)
        .await?
        .into_iter()
        .map(|(consumer, dropped)| JetStreamLoss {
            stream: stream.to_string(),
            consumer,
            dropped,
        })
        .collect())
}

/// The `dropped:<who>` counts of the bucket hashes under `base` over `window`, summed per
/// `<who>`; zeros left out.
async fn dropped_by(
    conn: &Conn,
    base: &str,
    window: Window,
) -> Result<BTreeMap<String, i64>, BusError> {
    let mut pipe = redis::pipe();
    for bucket in window.from..window.to {
        pipe.hgetall(format!("{base}:{bucket}"));
    }
    let mut c = conn.clone();
    let hashes: Vec<BTreeMap<String, i64>> = pipe
        .query_async(&mut c)
        .await
        .map_err(BusError::command("HGETALL", base))?;
    let mut per: BTreeMap<String, i64> = BTreeMap::new();
    for h in hashes {
        for (field, n) in h {
            if let Some(who) = field.strip_prefix("dropped:") {
                *per.entry(who.to_string()).or_default() += n;
            }
        }
    }
    per.retain(|_, n| *n != 0);
    Ok(per)
}

/// Records what an MQTT broker's own count of dropped messages (Mosquitto's
/// `$SYS/broker/publish/messages/dropped`: messages it dropped because a client's queue was
/// full) says is new, once whichever replica reports it. The highest count seen per broker
/// ARGV[1] is kept in hash KEYS[1]; the first count ever seen is only a baseline (drops
/// before it are not this install's to name). ARGV[2] is the count now, ARGV[3] the count the
/// reporting replica saw before ('' for none): a count lower than both is the broker's
/// restart, whose drops since count whole; a count lower than another replica's last is late
/// news and counts nothing. What is new goes to `dropped:<broker>` in bucket hash KEYS[2].
/// Returns what was new.
const BROKER_DROPPED: &str = r"
local held = redis.call('HGET', KEYS[1], ARGV[1])
local now = tonumber(ARGV[2])
local own = tonumber(ARGV[3])
redis.call('EXPIRE', KEYS[1], 691200)
if not held then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
held = tonumber(held)
local new = 0
if own and now < own and now < held then
  new = now
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
elseif now > held then
  new = now - held
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if new > 0 then
  redis.call('HINCRBY', KEYS[2], 'dropped:' .. ARGV[1], new)
  redis.call('EXPIRE', KEYS[2], 691200)
end
return new
";

/// Counts, under `base` (`Names::ledger_mqtt`), what `broker`'s drop count `total` says it
/// dropped since it was last looked at (see [`BROKER_DROPPED`]); `seen_before` is the count
/// this replica reported last. Idempotent across replicas. Returns how many were new.
pub async fn record_broker_dropped(
    conn: &Conn,
    base: &str,
    broker: &str,
    total: u64,
    seen_before: Option<u64>,
) -> Result<u64, BusError> {
    let bucket = bucket_of_ms(now_ms());
    let mut conn = conn.clone();
    redis::Script::new(BROKER_DROPPED)
        .key(format!("{base}:counted"))
        .key(format!("{base}:{bucket}"))
        .arg(broker)
        .arg(total)
        .arg(seen_before.map(|n| n.to_string()).unwrap_or_default())
        .invoke_async(&mut conn)
        .await
        .map_err(BusError::command("ledger broker", base))
}

/// What an MQTT broker dropped by its queue limits over a window (counted when found, in
/// that minute), by its own count: every client's queue, the bridge's among them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokerLoss {
    pub broker: String,
    pub dropped: i64,
}

impl BrokerLoss {
    pub fn finding(&self) -> String {
        format!(
            "MQTT broker {}: {} messages dropped by its queue limits (the broker's own count, for all its clients: device messages queued for the bridge among them)",
            self.broker, self.dropped
        )
    }
}

/// The broker losses recorded under `base` over `window`, per broker.
pub async fn broker_losses(
    conn: &Conn,
    base: &str,
    window: Window,
) -> Result<Vec<BrokerLoss>, BusError> {
    Ok(dropped_by(conn, base, window)
        .await?
        .into_iter()
        .map(|(broker, dropped)| BrokerLoss { broker, dropped })
        .collect())
}

/// The window the services export ([`export`]).
pub const EXPORTED_WINDOW: Duration = Duration::from_secs(3600);

/// How often a reader exports its group's account.
pub const EXPORT_EVERY: Duration = Duration::from_secs(60);

/// Exports the account of `group` over the last hour as `aurora_ledger_entries{stream,
/// group, outcome}` (outcome `written`, `done`, `dead`, `dropped`, `in_flight`,
/// `unexplained`): every replica of the group exports the same figures.
pub async fn export(conn: &Conn, stream: &str, group: &str) -> Result<(), BusError> {
    let (row, complete) =
        group_ledger_within(conn, stream, group, Window::last(EXPORTED_WINDOW), false).await?;
    let mut outcomes = vec![
        ("written", row.written),
        ("done", row.done),
        ("dead", row.dead),
        ("dropped", row.dropped()),
    ];
    if complete {
        outcomes.extend([
            ("in_flight", row.in_flight()),
            ("unexplained", row.unexplained),
        ]);
    } else {
        tracing::debug!(
            stream,
            group,
            "more than {SNAPSHOT_CAP} entries in flight: in flight and unexplained not exported this minute"
        );
    }
    for (outcome, value) in outcomes {
        metrics::gauge!(
            "aurora_ledger_entries",
            "stream" => stream.to_string(),
            "group" => group.to_string(),
            "outcome" => outcome
        )
        .set(value as f64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_takes_every_minute_it_touches() {
        // 19 s back from just past a minute's start: that minute and the one before.
        assert_eq!(
            Window::between(60_005 - 19_000, 60_005),
            Window { from: 0, to: 2 }
        );
        assert_eq!(Window::between(60_000, 119_999), Window { from: 1, to: 2 });
        let hour = Window::last(Duration::from_secs(3600));
        assert!((60..=61).contains(&(hour.to - hour.from)), "{hour:?}");
    }

    #[test]
    fn entry_ids_fall_in_their_minute() {
        assert_eq!(bucket_of_id("119999-7"), Some(1));
        assert_eq!(bucket_of_id("120000-0"), Some(2));
        assert_eq!(bucket_of_id("nonsense"), None);
        let w = Window { from: 1, to: 3 };
        assert_eq!(w.first_id(), "60000-0");
        assert_eq!(w.last_id(), format!("179999-{}", u64::MAX));
    }
}
