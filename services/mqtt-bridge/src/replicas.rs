//! Replicas come and go (a scale-down, a pod replaced under a new name, a rollout, a node
//! lost): nothing a replica was assigned stays in a broker session nobody reads.
//!
//! Each replica holds a lease in Redis (`aurora_core::replicas::Lease`, renewed every third
//! of `--lease-ttl`), from start-up until its own uplink session was handed back.
//!
//! - **Leaving (SIGTERM):** the uplink hands its session back (see [`crate::uplink::Uplink`]:
//!   UNSUBSCRIBE, write and acknowledge what the broker still delivers until the session is
//!   quiet, DISCONNECT ending the session), then the lease is released. When the drain
//!   deadline passes first, the session is kept and the lease is left to lapse: a live
//!   replica then takes the session over as below.
//! - **Gone without a word (SIGKILL, node lost):** every `--adoption-interval` each replica
//!   looks for members whose lease lapsed; one of them takes the adoption lock, connects with
//!   the gone replica's uplink client id and clean start off (the broker's session takeover),
//!   and hands that session back the same way: UNSUBSCRIBE, write and acknowledge until
//!   quiet, DISCONNECT ending the session, then `forget`s the gone replica. A replica is taken
//!   over within `--lease-ttl` + `--adoption-interval` of its death, plus the work.
//! - **Coming back under its own name** while being adopted: it renews its lease first (no
//!   new adoption starts), then waits until the adoption in progress ends before its uplink
//!   connects. If it connects anyway (a race), the broker's session takeover disconnects the
//!   adopter, which stops: the session is the returning replica's again, nothing is deleted.

use std::time::{Duration, Instant};

use aurora_core::bus::Producer;
use aurora_core::ops::Readiness;
use aurora_core::replicas::Lease;
use aurora_core::retry::Backoff;
use aurora_core::Names;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::health::MQTT_UPLINK;
use crate::link::LinkOptions;
use crate::telemetry as t;
use crate::uplink::{Ended, Role, Uplink, UplinkConfig};

/// How long the adoption lock of a gone replica holds.
pub const ADOPTION_HOLD: Duration = Duration::from_secs(60);
/// An adoption gives up this long before its lock expires (the session is kept, and the
/// next look adopts it again), so two replicas never take one session from each other.
const ADOPTION_MARGIN: Duration = Duration::from_secs(10);
/// The seen-LRU of an adoption: its device.seen records are a hint, and memory stays small.
const ADOPTION_SEEN_CAPACITY: usize = 10_000;

/// Everything needed to take over a gone replica's uplink session.
pub struct Adopter {
    pub lease: Lease,
    /// How often to look for gone replicas.
    pub interval: Duration,
    pub cfg: UplinkConfig,
    /// This replica's own uplink options: an adoption uses them with the gone client id.
    pub link: LinkOptions,
    pub names: Names,
    pub producer: Producer,
}

impl Adopter {
    /// Looks for gone replicas at start and then every `interval`, and adopts each whose
    /// lock it gets, one at a time. Stops looking at `shutdown`; an adoption in progress
    /// then goes on until it is done or `abort`.
    pub async fn run(self, shutdown: CancellationToken, abort: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let gone = match self.lease.gone().await {
                Ok(gone) => gone,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for gone replicas");
                    continue;
                }
            };
            for replica in gone {
                if shutdown.is_cancelled() {
                    return;
                }
                match self.lease.try_adopt(&replica, ADOPTION_HOLD).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!(replica = %replica, "another replica is adopting it");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, replica = %replica, "cannot take the adoption lock");
                        continue;
                    }
                }
                // Looked at again with the lock held: a replica that came back meanwhile is
                // left alone (the lock expires by itself).
                match self.lease.gone().await {
                    Ok(still) if still.contains(&replica) => {}
                    Ok(_) => {
                        tracing::info!(replica = %replica, "the replica came back before its adoption: left alone");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, replica = %replica, "cannot look at the replica again");
                        continue;
                    }
                }
                self.adopt(&replica, &abort).await;
            }
        }
    }

    /// Takes over `replica`'s uplink session and hands it back; forgets the replica once its
    /// session is ended.
    async fn adopt(&self, replica: &str, abort: &CancellationToken) {
        let started = Instant::now();
        let client_id = crate::uplink_client_id(replica);
        tracing::info!(replica = %replica, client_id = %client_id, "adopting a gone replica's session");
        let mut cfg = self.cfg.clone();
        cfg.seen_capacity = cfg.seen_capacity.min(ADOPTION_SEEN_CAPACITY);
        let uplink = Uplink {
            cfg,
            link: LinkOptions {
                client_id,
                ..self.link.clone()
            },
            names: self.names.clone(),
            producer: self.producer.clone(),
            // An adoption says nothing about this replica's own readiness.
            readiness: Readiness::new(),
        };
        let leave_now = CancellationToken::new();
        leave_now.cancel();
        let stop = abort.child_token();
        let (connection, writer) = uplink.tasks(Role::Adopted, leave_now, stop.clone());
        let connection = async {
            let ended = connection.await;
            // Whatever the writer still holds can no longer be acknowledged on this
            // connection: it is not written (the session delivers it again to its owner or
            // the next adopter).
            stop.cancel();
            ended
        };
        let work = async { tokio::join!(connection, writer).0 };
        tokio::pin!(work);
        let ended = tokio::select! {
            ended = &mut work => ended,
            _ = tokio::time::sleep(ADOPTION_HOLD.saturating_sub(ADOPTION_MARGIN)) => {
                stop.cancel();
                work.await
            }
        };
        let took = started.elapsed();
        match ended {
            Ended::HandedBack => {
                let mut backoff = Backoff::default();
                loop {
                    match self.lease.forget(replica).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, replica = %replica, "cannot forget the adopted replica; retrying");
                            if !backoff.wait(abort).await {
                                break;
                            }
                        }
                    }
                }
                t::adoption(t::AdoptionOutcome::HandedBack);
                tracing::info!(replica = %replica, took = ?took, "gone replica adopted: its session is handed back and ended, the replica forgotten");
            }
            Ended::TakenOver => {
                t::adoption(t::AdoptionOutcome::Returned);
                tracing::info!(replica = %replica, took = ?took, "the replica came back and took its session again: adoption stopped");
            }
            Ended::Kept => {
                t::adoption(t::AdoptionOutcome::Interrupted);
                tracing::warn!(replica = %replica, took = ?took, "adoption interrupted: the session is kept and adopted again later");
            }
        }
    }
}

/// Keeps this replica's lease (renewed every third of its ttl) until its own uplink session
/// ended, then releases it when the session was handed back. Otherwise (the drain deadline
/// passed, the session could not be ended) the lease is left to lapse, so that a live replica
/// takes the session over.
pub async fn hold_lease(lease: Lease, own: oneshot::Receiver<Ended>, abort: CancellationToken) {
    let keeping = CancellationToken::new();
    let keep = lease.clone().keep(keeping.clone());
    let ended = async {
        let ended = tokio::select! {
            ended = own => ended.ok(),
            _ = abort.cancelled() => None,
        };
        keeping.cancel();
        ended
    };
    let ((), ended) = tokio::join!(keep, ended);
    if ended != Some(Ended::HandedBack) {
        tracing::warn!(
            ttl = ?lease.ttl(),
            "this replica's broker session is kept: its lease lapses and a live replica takes the session over"
        );
        return;
    }
    let mut backoff = Backoff::default();
    loop {
        match lease.release().await {
            Ok(()) => {
                tracing::info!("left the replica registry");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the replica lease; retrying");
                if !backoff.wait(&abort).await {
                    return;
                }
            }
        }
    }
}

/// Waits while another replica adopts this one's session (this replica was taken for gone
/// and came back under its name): the uplink connects once that adoption ended, or at
/// `shutdown`. Bounded by [`ADOPTION_HOLD`]; a Redis error does not hold the start up (the
/// broker's session takeover settles a race).
pub async fn wait_while_adopted(
    lease: &Lease,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) {
    let mut said = false;
    loop {
        match lease.being_adopted(lease.instance()).await {
            Ok(false) => return,
            Ok(true) => {
                if !said {
                    said = true;
                    tracing::info!("a live replica is handing back this replica's session (it was taken for gone): waiting for it");
                    readiness.set_not_ready(
                        MQTT_UPLINK,
                        "waiting for a live replica to finish adopting this replica's session",
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether this replica is being adopted; connecting");
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
