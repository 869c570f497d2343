//! Which replicas of a service are alive, so that a live one takes over the work of one that
//! is gone for good (a scale-down, a pod replaced under a new name, a node lost).
//!
//! Each replica holds a lease: a Redis key `<ns>:<service>:replica:<instance>` that expires
//! after `ttl` unless renewed, so liveness is judged by Redis's clock alone. Every replica that
//! ever started is a member of the set `<ns>:<service>:replicas`. A member without a lease is
//! gone; one live replica at a time adopts it (an adoption lock that expires too), takes over
//! what it held, then [`Lease::forget`]s it. A replica that leaves cleanly hands its work back
//! first and then releases its lease and its membership itself.
//!
//! Keys are documented in docs/contract.md#redis-keys.

use std::time::Duration;

use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::bus::{BusError, Conn};
use crate::names::Names;
use crate::retry::Backoff;

/// This replica's lease on the service's registry.
#[derive(Clone)]
pub struct Lease {
    conn: Conn,
    members: String,
    prefix: String,
    instance: String,
    ttl: Duration,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("members", &self.members)
            .field("instance", &self.instance)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Lease {
    pub fn new(conn: Conn, names: &Names, service: &str, instance: &str, ttl: Duration) -> Self {
        Self {
            conn,
            members: names.state_key(service, "replicas"),
            prefix: names.state_key(service, "replica:"),
            instance: instance.to_string(),
            ttl,
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lease_key(&self, instance: &str) -> String {
        format!("{}{instance}", self.prefix)
    }

    fn adoption_key(&self, gone: &str) -> String {
        format!("{}{gone}:adopter", self.prefix)
    }

    /// Joins the registry and takes (or renews) the lease.
    pub async fn renew(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        redis::pipe()
            .atomic()
            .sadd(&self.members, &self.instance)
            .ignore()
            .cmd("SET")
            .arg(self.lease_key(&self.instance))
            .arg(now_marker())
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(BusError::command("SET", &self.members))
    }

    /// Leaves the registry: only after this replica has handed back all it held.
    pub async fn release(&self) -> Result<(), BusError> {
        self.forget(&self.instance).await
    }

    /// The members whose lease has expired (never this replica).
    pub async fn gone(&self) -> Result<Vec<String>, BusError> {
        let mut conn = self.conn.clone();
        let members: Vec<String> = conn
            .smembers(&self.members)
            .await
            .map_err(BusError::command("SMEMBERS", &self.members))?;
        let others: Vec<String> = members
            .into_iter()
            .filter(|m| m != &self.instance)
            .collect();
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for m in &others {
            pipe.exists(self.lease_key(m));
        }
        let alive: Vec<bool> = pipe
            .query_async(&mut conn)
            .await
            .map_err(BusError::command("EXISTS", &self.prefix))?;
        Ok(others
            .into_iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(m, _)| m)
            .collect())
    }

    /// The live members (this replica included when its lease holds).
    pub async fn alive(&self) -> Result<Vec<String>, BusError> {
        let mut conn = self.conn.clone();
        let members: Vec<String> = conn
            .smembers(&self.members)
            .await
            .map_err(BusError::command("SMEMBERS", &self.members))?;
        let gone = self.gone().await?;
        Ok(members.into_iter().filter(|m| !gone.contains(m)).collect())
    }

    /// Takes the right to adopt `gone` for `hold` (one adopter at a time); false when another
    /// replica holds it.
    pub async fn try_adopt(&self, gone: &str, hold: Duration) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = redis::cmd("SET")
            .arg(self.adoption_key(gone))
            .arg(&self.instance)
            .arg("NX")
            .arg("PX")
            .arg(hold_ms)
            .query_async(&mut conn)
            .await
            .map_err(BusError::command("SET", &self.adoption_key(gone)))?;
        Ok(set.is_some())
    }

    /// True while another replica is adopting `instance` (a replica coming back under its
    /// old name waits for that to end before it takes up its own work).
    pub async fn being_adopted(&self, instance: &str) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let adopter: Option<String> = conn
            .get(self.adoption_key(instance))
            .await
            .map_err(BusError::command("GET", &self.adoption_key(instance)))?;
        Ok(adopter.is_some_and(|a| a != self.instance))
    }

    /// Removes `instance` from the registry (its work was taken over, or it left cleanly).
    pub async fn forget(&self, instance: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .srem(&self.members, instance)
            .ignore()
            .del(self.lease_key(instance))
            .ignore()
            .del(self.adoption_key(instance))
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(BusError::command("SREM", &self.members))
    }

    /// Renews the lease every third of its ttl until `shutdown`. A failed renewal is retried
    /// with back-off; the lease may then lapse and another replica adopt this one's work,
    /// which is safe: everything adopted is idempotent downstream.
    pub async fn keep(self, shutdown: CancellationToken) {
        let every = self.ttl / 3;
        let mut backoff = Backoff::default();
        loop {
            let wait = match self.renew().await {
                Ok(()) => {
                    backoff.reset();
                    every
                }
                Err(e) => {
                    tracing::warn!(error = %e, instance = %self.instance, "cannot renew the replica lease");
                    backoff.next_delay().min(every)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// What a lease key holds: when it was last renewed (for people reading Redis).
fn now_marker() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
