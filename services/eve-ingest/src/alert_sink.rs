//! Alerts onto the alerts stream, each at most once.
//!
//! The id of an alert comes from its event, and one Lua script checks an idempotency key,
//! appends the alert and sets the key, atomically: a crash after the alert was written but
//! before its line left the processing list makes the retry a no-op instead of a second
//! alert. The key expires after `dedup_ttl` (memory stays bounded); a line retried later than
//! that (a replica down for longer, then recovered) could give its alert again.

use std::time::Duration;

use aurora_core::bus::{Conn, OnceWrite, Producer};
use aurora_core::model::{to_bytes, Alert};
use aurora_core::Names;

use crate::error::IngestError;
use crate::SERVICE;

/// How many alerts one write added, and how many were there already.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AlertsWritten {
    pub new: usize,
    pub duplicate: usize,
}

#[derive(Clone)]
pub struct AlertSink {
    producer: Producer,
    names: Names,
    stream: String,
    dedup_ttl: Duration,
}

impl AlertSink {
    pub fn new(conn: Conn, names: Names, maxlen: usize, dedup_ttl: Duration) -> Self {
        Self {
            producer: Producer::new(conn, maxlen),
            stream: names.alerts(),
            names,
            dedup_ttl,
        }
    }

    /// The idempotency key of one alert id.
    pub fn dedup_key(&self, alert: &Alert) -> String {
        self.names
            .state_key(SERVICE, &format!("alert:{}", alert.id.simple()))
    }

    /// Writes the alerts, each at most once, in one round trip
    /// ([`aurora_core::bus::Producer::publish_once`]: one script call per 256 alerts).
    pub async fn write(&self, alerts: &[&Alert]) -> Result<AlertsWritten, IngestError> {
        if alerts.is_empty() {
            return Ok(AlertsWritten::default());
        }
        let keys: Vec<String> = alerts.iter().map(|a| self.dedup_key(a)).collect();
        let docs: Vec<Vec<u8>> = alerts.iter().map(to_bytes).collect();
        let items: Vec<OnceWrite<'_>> = keys
            .iter()
            .zip(&docs)
            .map(|(key, data)| OnceWrite {
                key,
                stream: &self.stream,
                data,
            })
            .collect();
        let written = self.producer.publish_once(&items, self.dedup_ttl).await?;
        let new = written.iter().filter(|w| w.is_some()).count();
        Ok(AlertsWritten {
            new,
            duplicate: written.len() - new,
        })
    }
}
