//! This replica among the service's replicas (list input): its lease, the adoption of what
//! gone replicas hold, and its clean leave.
//!
//! Every replica reading the list holds a lease ([`aurora_core::replicas::Lease`], `--lease-ttl`)
//! renewed every third of its ttl. A replica whose lease lapsed is gone: every live replica
//! looks for gone ones every third of the ttl ([`Replica::watch`]); the one that takes the
//! adoption lock moves the gone replica's processing list and chunks into its own
//! ([`crate::list_source::take_over`]), removes it from the registry, and makes its input
//! look at what it holds again. So a replica that died holding lines has them handled by
//! another within about 4/3 of the ttl plus the batches at hand (see the README, Replicas
//! come and go).
//!
//! A replica that leaves cleanly (SIGTERM) finishes its batches, hands everything it still
//! holds back to the shared list ([`Replica::leave`]) and only then releases its lease: the
//! replicas that stay take the lines at once, and a replica that leaves for good strands
//! nothing. A replica that starts under a name that is being adopted waits until the adoption
//! is over ([`Replica::join`]).

use std::sync::Arc;
use std::time::Duration;

use aurora_core::bus::Conn;
use aurora_core::ops::Readiness;
use aurora_core::replicas::Lease;
use aurora_core::retry::Backoff;
use aurora_core::Names;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::IngestError;
use crate::health::INPUT;
use crate::list_source;
use crate::telemetry;
use crate::SERVICE;

/// This replica's lease and what it needs to adopt and to hand back.
#[derive(Clone)]
pub struct Replica {
    lease: Lease,
    conn: Conn,
    names: Names,
    list: String,
    processing: String,
    batch: usize,
}

/// Lines and chunks taken over from one gone replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adopted {
    pub lines: u64,
    pub chunks: u64,
}

impl Replica {
    pub fn new(
        conn: Conn,
        names: &Names,
        instance: &str,
        ttl: Duration,
        list: &str,
        batch: usize,
    ) -> Self {
        Self {
            lease: Lease::new(conn.clone(), names, SERVICE, instance, ttl),
            processing: names.eve_processing_list(instance),
            names: names.clone(),
            conn,
            list: list.to_string(),
            batch,
        }
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub fn instance(&self) -> &str {
        self.lease.instance()
    }

    /// How often gone replicas are looked for: a third of the ttl.
    pub fn every(&self) -> Duration {
        self.lease.ttl() / 3
    }

    /// How long one adoption may hold the adoption lock: the ttl, at least 5 s (a move of a
    /// processing list and chunk names takes milliseconds; the lock expires by itself if the
    /// adopter dies meanwhile).
    fn hold(&self) -> Duration {
        self.lease.ttl().max(Duration::from_secs(5))
    }

    /// Takes the lease at start. A replica coming back under a name another replica is
    /// adopting waits until that adoption is over (what it held has then moved to the
    /// adopter), so two replicas never handle the same held lines at once. Checked before
    /// and after the lease is taken: an adopter checks the lease again after it took the
    /// lock. Returns false when shutdown came first.
    pub async fn join(
        &self,
        readiness: &Readiness,
        shutdown: &CancellationToken,
    ) -> Result<bool, IngestError> {
        let mut waited = false;
        loop {
            if shutdown.is_cancelled() {
                return Ok(false);
            }
            if !self.lease.being_adopted(self.instance()).await? {
                self.lease.renew().await?;
                if !self.lease.being_adopted(self.instance()).await? {
                    if waited {
                        tracing::info!(instance = %self.instance(), "the adoption of what this replica held is over");
                    }
                    return Ok(true);
                }
            }
            if !waited {
                tracing::info!(instance = %self.instance(), "another replica is adopting what this replica held: waiting");
                readiness.set_not_ready(
                    INPUT,
                    "another replica is adopting the lines this replica held",
                );
                waited = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// `--recover-from`: adopts the replicas named, at start, unless one is alive (its lines
    /// are its own) or another replica is adopting it. Returns the lines taken over.
    pub async fn recover_from(&self, instances: &[String]) -> Result<u64, IngestError> {
        let mut lines = 0;
        for gone in instances.iter().filter(|id| *id != self.instance()) {
            if self.lease.alive().await?.contains(gone) {
                tracing::warn!(instance = %gone, "not adopted: its lease is alive (it is running)");
                continue;
            }
            if !self.lease.try_adopt(gone, self.hold()).await? {
                tracing::info!(instance = %gone, "another replica is adopting it");
                continue;
            }
            lines += self.adopt(gone).await?.lines;
        }
        Ok(lines)
    }

    /// Adopts every gone replica whose adoption lock this replica takes. Returns how many
    /// were adopted.
    pub async fn adopt_gone(&self, stop: &CancellationToken) -> Result<usize, IngestError> {
        let mut adopted = 0;
        for gone in self.lease.gone().await? {
            if stop.is_cancelled() {
                break;
            }
            if !self.lease.try_adopt(&gone, self.hold()).await? {
                continue;
            }
            // Came back under its name between the look and the lock: its lines are its own
            // (it waits for the lock before it handles them: see `join`).
            if !self.lease.gone().await?.contains(&gone) {
                tracing::info!(instance = %gone, "came back before its adoption");
                continue;
            }
            self.adopt(&gone).await?;
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Moves what `gone` holds into this replica's keys, then removes it from the registry.
    async fn adopt(&self, gone: &str) -> Result<Adopted, IngestError> {
        let from = self.names.eve_processing_list(gone);
        let (lines, chunks) =
            list_source::take_over(&self.conn, &from, &self.processing, self.batch).await?;
        self.lease.forget(gone).await?;
        telemetry::adopted(lines, chunks);
        tracing::info!(
            instance = %gone,
            lines,
            chunks,
            "adopted the processing list and chunks of a gone replica"
        );
        Ok(Adopted { lines, chunks })
    }

    /// Looks for gone replicas every [`Replica::every`] until `stop`, adopting them; the
    /// input is told to look at what it holds again after each adoption. A failed look is
    /// logged and retried at the next.
    pub async fn watch(self, look_again: Arc<Notify>, stop: CancellationToken) {
        let every = self.every();
        let mut backoff = Backoff::default();
        loop {
            let wait = match self.adopt_gone(&stop).await {
                Ok(adopted) => {
                    backoff.reset();
                    if adopted > 0 {
                        look_again.notify_one();
                    }
                    every
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for gone replicas");
                    // Something may have moved before the error.
                    look_again.notify_one();
                    backoff.next_delay().min(every)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A clean leave, once the input has drained (nothing taken is in flight, nothing is
    /// being adopted): hands every line this replica still holds back to the shared list,
    /// then releases the lease. If the hand-back fails, the lease is kept (it lapses) and
    /// another replica adopts what is left. Returns the lines handed back.
    pub async fn leave(&self) -> Result<u64, IngestError> {
        let lines =
            list_source::hand_back(&self.conn, &self.list, &self.processing, self.batch).await?;
        self.lease.release().await?;
        telemetry::handed_back(lines);
        tracing::info!(
            lines,
            "handed back what this replica held and left the registry"
        );
        Ok(lines)
    }
}
