//! Alerts onto the alerts stream, each at most once.
//!
//! The id of an alert comes from its event, and one Lua script checks an idempotency key,
//! appends the alert and sets the key, atomically: a crash after the alert was written but
//! before its line left the processing list makes the retry a no-op instead of a second
//! alert. The key expires after `dedup_ttl` (memory stays bounded); a line retried later than
//! that (a replica down for longer, then recovered) could give its alert again.

use std::time::Duration;

use aurora_core::bus::{Conn, DATA_FIELD};
use aurora_core::model::{to_bytes, Alert};
use aurora_core::Names;

use crate::error::IngestError;

/// `aurora_core::bus::Producer::publish_once` for a whole batch in one script call: for
/// each i, when the key KEYS[i+1] does not exist, XADD ARGV[i+3] to the stream KEYS[1]
/// (`MAXLEN ~ ARGV[1]`, field ARGV[2]) and then set the key to the entry id for ARGV[3]
/// seconds. Returns, per document, the new entry id or nil (written before). Each document
/// is appended before its key is set, in one atomic script, exactly as with one call per
/// document; the batch costs one script call instead of one per alert (measured: the
/// per-call overhead, not the XADD, was most of Redis's time per alert).
const PUBLISH_ONCE_BATCH: &str = r"
local out = {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    out[i - 1] = false
  else
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[i + 2])
    redis.call('SET', KEYS[i], id, 'EX', ARGV[3])
    out[i - 1] = id
  end
end
return out
";

/// Alerts per script call at most (Redis runs a script without serving anyone else).
const ALERTS_PER_CALL: usize = 256;

/// How many alerts one write added, and how many were there already.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AlertsWritten {
    pub new: usize,
    pub duplicate: usize,
}

#[derive(Clone)]
pub struct AlertSink {
    conn: Conn,
    maxlen: usize,
    names: Names,
    stream: String,
    dedup_ttl: Duration,
    script: std::sync::Arc<redis::Script>,
}

impl AlertSink {
    pub fn new(conn: Conn, names: Names, maxlen: usize, dedup_ttl: Duration) -> Self {
        Self {
            conn,
            maxlen,
            stream: names.alerts(),
            names,
            dedup_ttl,
            script: std::sync::Arc::new(redis::Script::new(PUBLISH_ONCE_BATCH)),
        }
    }

    /// The idempotency key of one alert id.
    pub fn dedup_key(&self, alert: &Alert) -> String {
        self.names
            .state_key("eve-ingest", &format!("alert:{}", alert.id.simple()))
    }

    /// Writes the alerts, each at most once, with one script call per
    /// [`ALERTS_PER_CALL`] alerts (the script is loaded again if Redis lost it).
    pub async fn write(&self, alerts: &[&Alert]) -> Result<AlertsWritten, IngestError> {
        let mut written = AlertsWritten::default();
        let ttl = self.dedup_ttl.as_secs().max(1);
        for chunk in alerts.chunks(ALERTS_PER_CALL) {
            let mut invocation = self.script.key(&self.stream);
            invocation.arg(self.maxlen).arg(DATA_FIELD).arg(ttl);
            for alert in chunk {
                invocation.key(self.dedup_key(alert)).arg(to_bytes(alert));
            }
            let mut conn = self.conn.clone();
            let replies: Vec<Option<String>> = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(IngestError::redis("EVALSHA publish once", &self.stream))?;
            let new = replies.iter().filter(|r| r.is_some()).count();
            written.new += new;
            written.duplicate += chunk.len() - new;
        }
        Ok(written)
    }
}
