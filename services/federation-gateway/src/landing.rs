//! Writes imported documents to the local bus exactly once.
//!
//! Each document is appended with an idempotency key named after its JetStream message id
//! (kept as long as the federation stream keeps messages), through the bus's one idempotent
//! write: a redelivery, or a publisher's retry after JetStream's 2-minute duplicate window,
//! finds the key and writes nothing; a failed append leaves no key behind that would hide the
//! message on its next delivery.

use std::time::Duration;

use aurora_core::bus::{Conn, OnceWrite, Producer};

use crate::error::LandError;

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

/// Lands documents on the local streams, each once
/// ([`aurora_core::bus::Producer::publish_once`]).
#[derive(Clone)]
pub struct Lander {
    producer: Producer,
    key_ttl: Duration,
}

impl Lander {
    pub fn new(conn: Conn, maxlen: usize, key_ttl: Duration) -> Self {
        Self {
            producer: Producer::new(conn, maxlen),
            key_ttl,
        }
    }

    /// Lands many documents in one round trip; results in input order. Fails as a whole when
    /// any write fails (the others may have landed: landing them again is harmless).
    pub async fn land_batch(&self, items: &[Landing]) -> Result<Vec<Landed>, LandError> {
        let writes: Vec<OnceWrite<'_>> = items
            .iter()
            .map(|item| OnceWrite {
                key: &item.key,
                stream: &item.stream,
                data: &item.data,
            })
            .collect();
        let ids = self
            .producer
            .publish_once(&writes, self.key_ttl)
            .await
            .map_err(|source| LandError { source })?;
        Ok(ids
            .into_iter()
            .map(|id| id.map_or(Landed::Duplicate, Landed::Written))
            .collect())
    }

    /// Lands one document.
    pub async fn land(&self, item: &Landing) -> Result<Landed, LandError> {
        let mut out = self.land_batch(std::slice::from_ref(item)).await?;
        Ok(out.pop().unwrap_or(Landed::Duplicate))
    }
}
