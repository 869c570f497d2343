//! Writes imported documents to the local bus exactly once.
//!
//! One Lua script per message checks an idempotency key named after the JetStream message
//! id, appends the entry and sets the key (kept as long as the federation stream keeps
//! messages), atomically: a redelivery, or a publisher's retry after JetStream's 2-minute
//! duplicate window, finds the key and writes nothing. The entry is appended before the key is
//! set, so a failed append leaves no key behind that would hide the message on its next
//! delivery.

use std::time::Duration;

use aurora_core::bus::{Conn, DATA_FIELD};
use redis::{Script, Value};

const LAND: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[3])
redis.call('SET', KEYS[1], id, 'EX', ARGV[4])
return id
";

/// A write to the local bus failed.
#[derive(Debug, thiserror::Error)]
#[error("writing imported messages to Redis failed: {source}")]
pub struct LandError {
    #[source]
    pub source: redis::RedisError,
}

impl LandError {
    /// Redis could not be reached: worth retrying in place, not a fault of the message.
    pub fn is_connection(&self) -> bool {
        let s = &self.source;
        s.is_io_error() || s.is_connection_dropped() || s.is_connection_refusal() || s.is_timeout()
    }
}

/// One document to land.
#[derive(Debug, Clone)]
pub struct Landing {
    /// The idempotency key of its message id.
    pub key: String,
    /// The local stream it goes to.
    pub stream: String,
    pub data: Vec<u8>,
}

/// What happened to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landed {
    /// Appended with this entry id.
    Written(String),
    /// Its key existed: it was imported before.
    Duplicate,
}

/// Lands documents on the local streams.
#[derive(Clone)]
pub struct Lander {
    conn: Conn,
    script: Script,
    maxlen: usize,
    key_ttl_secs: u64,
}

impl Lander {
    pub fn new(conn: Conn, maxlen: usize, key_ttl: Duration) -> Self {
        Self {
            conn,
            script: Script::new(LAND),
            maxlen,
            key_ttl_secs: key_ttl.as_secs().max(1),
        }
    }

    /// Lands many documents in one round trip; results in input order. Fails as a whole when
    /// any write fails (the others may have landed: landing them again is harmless).
    pub async fn land_batch(&self, items: &[Landing]) -> Result<Vec<Landed>, LandError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        // Loading first makes the batch work on a Redis that restarted and lost its scripts.
        pipe.load_script(&self.script);
        let invocations: Vec<_> = items
            .iter()
            .map(|item| {
                let mut inv = self.script.prepare_invoke();
                inv.key(&item.key)
                    .key(&item.stream)
                    .arg(self.maxlen)
                    .arg(DATA_FIELD)
                    .arg(item.data.as_slice())
                    .arg(self.key_ttl_secs);
                inv
            })
            .collect();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|source| LandError { source })?;
        Ok(replies.into_iter().skip(1).map(landed).collect())
    }

    /// Lands one document.
    pub async fn land(&self, item: &Landing) -> Result<Landed, LandError> {
        let mut out = self.land_batch(std::slice::from_ref(item)).await?;
        Ok(out.pop().unwrap_or(Landed::Duplicate))
    }
}

fn landed(value: Value) -> Landed {
    match value {
        Value::BulkString(id) => Landed::Written(String::from_utf8_lossy(&id).into_owned()),
        Value::SimpleString(id) => Landed::Written(id),
        _ => Landed::Duplicate,
    }
}
