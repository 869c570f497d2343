//! Writes imported documents to the local bus, each revision once and never over a newer one.
//!
//! The site's revision state is, per kind, a hash `aurora:federation:revisions:<kind>`
//! (document `<owner site>:<id>` to its latest [`Stamp`], `revision|site|hash`) and a sorted
//! set `aurora:federation:revision-order:<kind>` (the same documents by when they were last
//! written). One Lua script compares a landing's stamp with the one held and appends the
//! document, records the stamp and trims the state to the newest `max_documents` in the same
//! atomic step: a redelivery finds its own stamp (a duplicate), an older revision finds a
//! newer one (stale), and a failed append leaves no stamp behind. Memory is bounded by
//! `max_documents` per kind, not by how many messages came (docs/contract.md#idempotency);
//! both keys expire with the stream's age limit when nothing is written.
//!
//! The exporter records the revisions this site makes through the same script
//! ([`Lander::record`]), so an older revision arriving later does not overwrite them.

use std::time::Duration;

use aurora_core::bus::{query_replicated, Conn, DATA_FIELD};
use aurora_core::names::{FederatedKind, Names};
use aurora_core::trace::TraceContext;
use redis::Value;

use crate::error::LandError;
use crate::revision::Stamp;

/// Landings per script call (Redis serves no one else while a script runs).
const PER_CALL: usize = 256;

/// Per item: KEYS (state hash, order set, stream); ARGV after the four shared ones (maxlen,
/// data field, key ttl in seconds, most documents kept, now in ms, mode `land` or `record`):
/// document, revision, site, hash, data, traceparent (empty for none). Returns per item the new entry id (`land`), `+` (a
/// recorded stamp), `=` (the same stamp held: a duplicate) or `<` (a newer stamp held). Each
/// appended entry is counted in the stream's ledger (aurora_core::ledger).
const LAND: &str = concat!(
    aurora_core::ledger_lua!(),
    r"
local maxlen, field, ttl, cap, now, mode = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local function older(r, s, h, held)
  local hr, hs, hh = string.match(held, '^(%-?%d+)|([^|]*)|(.*)$')
  if hr == nil then return 1 end
  local a, b = tonumber(r), tonumber(hr)
  if a ~= b then return a < b and -1 or 1 end
  if s ~= hs then return s < hs and -1 or 1 end
  if h ~= hh then return h < hh and -1 or 1 end
  return 0
end
local out, touched, written = {}, {}, {}
for i = 1, #KEYS / 3 do
  local state, order, stream = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local b = 6 + (i - 1) * 6
  local doc, rev, site, hash = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local held = redis.call('HGET', state, doc)
  local cmp = 1
  if held then cmp = older(rev, site, hash, held) end
  if cmp == 0 then
    out[i] = '='
  elseif cmp < 0 then
    out[i] = '<'
  else
    if mode == 'land' then
      if ARGV[b + 6] == '' then
        out[i] = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', field, ARGV[b + 5])
      else
        out[i] = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', field, ARGV[b + 5],
          'traceparent', ARGV[b + 6])
      end
      ledger_add(written, stream, out[i], 1)
    else
      out[i] = '+'
    end
    redis.call('HSET', state, doc, rev .. '|' .. site .. '|' .. hash)
    redis.call('ZADD', order, now, doc)
  end
  touched[state] = order
end
-- Once per kind: trimmed to the newest `cap` documents, expiring with the stream.
for state, order in pairs(touched) do
  local extra = redis.call('ZCARD', order) - cap
  if extra > 0 then
    local gone = redis.call('ZPOPMIN', order, extra)
    for j = 1, #gone, 2 do redis.call('HDEL', state, gone[j]) end
  end
  redis.call('EXPIRE', state, ttl)
  redis.call('EXPIRE', order, ttl)
end
ledger_flush(written, 'in')
return out
"
);

/// One document to land.
#[derive(Debug, Clone)]
pub struct Landing {
    pub kind: FederatedKind,
    /// `<owner site>:<document id>`.
    pub doc: String,
    pub stamp: Stamp,
    pub data: Vec<u8>,
    /// The trace context the landed entry carries (its `traceparent` field), if any.
    pub trace: Option<TraceContext>,
}

/// What happened to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landed {
    /// Appended with this entry id.
    Written(String),
    /// This revision was landed before.
    Duplicate,
    /// The site holds a newer revision: not applied.
    Stale,
}

/// How much revision state the site keeps.
#[derive(Debug, Clone, Copy)]
pub struct RevisionMemory {
    /// Documents per kind whose latest revision is remembered.
    pub max_documents: u64,
    /// How long the state lives without writes: the stream's age limit.
    pub ttl: Duration,
}

/// Lands documents on the local streams by the last-writer rule.
#[derive(Clone)]
pub struct Lander {
    conn: Conn,
    names: Names,
    maxlen: usize,
    memory: RevisionMemory,
}

impl std::fmt::Debug for Lander {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lander")
            .field("maxlen", &self.maxlen)
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

impl Lander {
    pub fn new(conn: Conn, names: Names, maxlen: usize, memory: RevisionMemory) -> Self {
        Self {
            conn,
            names,
            maxlen,
            memory,
        }
    }

    /// The revision hash of a kind.
    pub fn state_key(names: &Names, kind: FederatedKind) -> String {
        names.state_key("federation", &format!("revisions:{}", kind.subject_token()))
    }

    /// The sorted set that bounds the revision hash of a kind.
    pub fn order_key(names: &Names, kind: FederatedKind) -> String {
        names.state_key(
            "federation",
            &format!("revision-order:{}", kind.subject_token()),
        )
    }

    /// Lands many documents in one round trip; results in input order. Fails as a whole when
    /// any write fails (the others may have landed: landing them again finds them).
    pub async fn land_batch(&self, items: &[Landing]) -> Result<Vec<Landed>, LandError> {
        let replies = self.run("land", items).await?;
        Ok(replies
            .into_iter()
            .map(|r| match r.as_str() {
                "=" | "+" => Landed::Duplicate,
                "<" => Landed::Stale,
                _ => Landed::Written(r),
            })
            .collect())
    }

    /// Lands one document.
    pub async fn land(&self, item: &Landing) -> Result<Landed, LandError> {
        let mut out = self.land_batch(std::slice::from_ref(item)).await?;
        Ok(out.pop().unwrap_or(Landed::Duplicate))
    }

    /// Records revisions this site publishes (without writing the documents, which are on
    /// the local stream already); `true` per item when it is the newest the site knows.
    pub async fn record(&self, items: &[Landing]) -> Result<Vec<bool>, LandError> {
        let replies = self.run("record", items).await?;
        Ok(replies.iter().map(|r| r != "<").collect())
    }

    async fn run(&self, mode: &str, items: &[Landing]) -> Result<Vec<String>, LandError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let err = |source| LandError { source };
        let script = redis::Script::new(LAND);
        let now = chrono::Utc::now().timestamp_millis();
        let mut pipe = redis::pipe();
        pipe.load_script(&script).ignore();
        let invocations: Vec<_> = items
            .chunks(PER_CALL)
            .map(|chunk| {
                let mut inv = script.prepare_invoke();
                inv.arg(self.maxlen)
                    .arg(DATA_FIELD)
                    .arg(self.memory.ttl.as_secs().max(1))
                    .arg(self.memory.max_documents.max(1))
                    .arg(now)
                    .arg(mode);
                for item in chunk {
                    inv.key(Self::state_key(&self.names, item.kind))
                        .key(Self::order_key(&self.names, item.kind))
                        .key(self.names.federated_stream(item.kind));
                    inv.arg(&item.doc)
                        .arg(item.stamp.revision)
                        .arg(&item.stamp.site)
                        .arg(&item.stamp.hash)
                        .arg(if mode == "land" { &item.data[..] } else { b"" })
                        .arg(item.trace.as_ref().map_or("", |t| t.traceparent.as_str()));
                }
                inv
            })
            .collect();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let stream = self.names.federated_stream(items[0].kind);
        let replies = query_replicated(&self.conn, pipe, "federation landing", &stream)
            .await
            .map_err(err)?;
        Ok(replies
            .into_iter()
            .flat_map(|reply| match reply {
                Value::Array(values) => values,
                other => vec![other],
            })
            .map(|v| match v {
                Value::BulkString(s) => String::from_utf8_lossy(&s).into_owned(),
                Value::SimpleString(s) => s,
                _ => "=".to_string(),
            })
            .collect())
    }
}
