//! Lines that are not events, kept with the reason in the dead-letter list.
//!
//! The list (`Names::eve_deadletter()`) gets the newest record on the left (LPUSH) and is
//! trimmed to `maxlen` records so a flood of garbage cannot fill Redis.

use aurora_core::bus::Conn;
use aurora_core::model::{to_bytes, DeadLetter};
use bytes::Bytes;

use crate::error::IngestError;
use crate::event::Rejection;
use crate::telemetry;
use crate::SERVICE;

#[derive(Clone)]
pub struct DeadLetters {
    conn: Conn,
    key: String,
    maxlen: usize,
}

impl DeadLetters {
    pub fn new(conn: Conn, key: String, maxlen: usize) -> Self {
        Self {
            conn,
            key,
            maxlen: maxlen.max(1),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Writes every record in one round trip; counts them once written.
    pub async fn write(
        &self,
        source: &str,
        rejected: &[(Rejection, Bytes)],
    ) -> Result<(), IngestError> {
        if rejected.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (reason, raw) in rejected {
            let mut record = DeadLetter::new(SERVICE, source, reason.describe(), raw);
            record
                .extra
                .insert("reason_code".into(), reason.as_str().into());
            pipe.cmd("LPUSH")
                .arg(&self.key)
                .arg(to_bytes(&record))
                .ignore();
        }
        pipe.cmd("LTRIM")
            .arg(&self.key)
            .arg(0)
            .arg(self.maxlen - 1)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(IngestError::redis("LPUSH", &self.key))?;
        for (reason, _) in rejected {
            tracing::warn!(reason = reason.as_str(), source, "dead-lettered a line");
            telemetry::dead_letter(reason.as_str());
        }
        Ok(())
    }
}
