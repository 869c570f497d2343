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

const SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[3])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[4])
return 1
"#;

/// How many alerts one write added, and how many were there already.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AlertsWritten {
    pub new: usize,
    pub duplicate: usize,
}

#[derive(Clone)]
pub struct AlertSink {
    conn: Conn,
    names: Names,
    stream: String,
    maxlen: usize,
    dedup_ttl_secs: u64,
    script: redis::Script,
}

impl AlertSink {
    pub fn new(conn: Conn, names: Names, maxlen: usize, dedup_ttl: Duration) -> Self {
        Self {
            conn,
            stream: names.alerts(),
            names,
            maxlen,
            dedup_ttl_secs: dedup_ttl.as_secs().max(1),
            script: redis::Script::new(SCRIPT),
        }
    }

    /// The idempotency key of one alert id.
    pub fn dedup_key(&self, alert: &Alert) -> String {
        self.names
            .state_key("eve-ingest", &format!("alert:{}", alert.id.simple()))
    }

    /// Writes the alerts in one round trip (loading the script once more if Redis lost it).
    pub async fn write(&self, alerts: &[&Alert]) -> Result<AlertsWritten, IngestError> {
        if alerts.is_empty() {
            return Ok(AlertsWritten::default());
        }
        match self.write_once(alerts).await {
            Err(IngestError::Redis { source, .. }) if source.code() == Some("NOSCRIPT") => {
                let mut conn = self.conn.clone();
                self.script
                    .load_async(&mut conn)
                    .await
                    .map_err(IngestError::redis("SCRIPT LOAD", &self.stream))?;
                self.write_once(alerts).await
            }
            other => other,
        }
    }

    async fn write_once(&self, alerts: &[&Alert]) -> Result<AlertsWritten, IngestError> {
        let mut pipe = redis::pipe();
        for alert in alerts {
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(2)
                .arg(self.dedup_key(alert))
                .arg(&self.stream)
                .arg(self.maxlen)
                .arg(DATA_FIELD)
                .arg(to_bytes(alert))
                .arg(self.dedup_ttl_secs);
        }
        let mut conn = self.conn.clone();
        let added: Vec<i64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(IngestError::redis("EVALSHA", &self.stream))?;
        let new = added.iter().filter(|a| **a == 1).count();
        Ok(AlertsWritten {
            new,
            duplicate: added.len() - new,
        })
    }
}
