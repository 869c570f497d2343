//! Periodic work, safe with several replicas (rows are taken with `FOR UPDATE SKIP LOCKED`):
//!
//! 1. challenges that expired unanswered: the device becomes `attestation_timeout` and an
//!    alert is raised (on the bus before the commit, with a stable id);
//! 2. the outbox: challenges and `device.registered` records committed but never put on the
//!    bus (a crash or a Redis outage between the two) are sent again;
//! 3. scheduled re-attestation (`--reattest-interval`);
//! 4. device commands with no receipt by their expiry become `unconfirmed`;
//! 5. silent devices (docs/contract.md#device-hygiene).
//!
//! A device that does not answer is raised once per condition (not again while it stays
//! `attestation_timeout`), only when its model's attestation policy requires an answer; more
//! devices than `--alert-storm-threshold` entering one condition in a round make one fleet
//! alert.

use aurora_core::consumer::BatchFailure;
use aurora_core::model::{to_bytes, Alert};
use aurora_core::ops::Readiness;
use aurora_core::retry::Backoff;
use tokio_util::sync::CancellationToken;

use crate::config::AttestationPolicy;
use crate::db::status;
use crate::error::BatchError;
use crate::records::{
    attest_command, attestation_timeout_alert, device_silent_alert, fleet_alert, DeviceRegistered,
    Fleet,
};
use crate::shared::Shared;
use crate::telemetry::{self, AlertKind, Resent, Trigger};
use crate::{attestation, db, streams};

/// Rows handled per step and round.
const LIMIT: i64 = 1000;
/// Registration outbox rows (batches) handled per round.
const OUTBOX_BATCHES: i64 = 10;
/// The `part` of a failed sweep in logs and metrics.
const PART: &str = "sweeper";

/// A round every `--sweep-interval` until `shutdown`; a failed round is logged, marks the
/// dependency it names not ready, and is followed by a back-off.
pub async fn run(shared: Shared, readiness: Readiness, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(shared.cfg.sweep_interval) => {}
        }
        match sweep(&shared).await {
            Ok(_) => backoff.reset(),
            Err(e) => {
                tracing::warn!(part = PART, error = %e, "sweep failed; it is retried");
                telemetry::batch_failed(PART);
                if let Some(dependency) = e.dependency() {
                    readiness.set_not_ready(dependency, e.to_string());
                }
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub timed_out: usize,
    pub challenges_resent: usize,
    pub devices_announced: usize,
    /// New devices whose registration batch was sent again from the outbox.
    pub registrations_resent: usize,
    pub reattested: usize,
    pub unconfirmed: usize,
    pub silent: usize,
    pub talking_again: usize,
}

/// One round of every step.
pub async fn sweep(shared: &Shared) -> Result<Swept, BatchError> {
    let (silent, talking_again) = silence(shared).await?;
    let swept = Swept {
        silent,
        talking_again,
        timed_out: expire(shared).await?,
        challenges_resent: resend_challenges(shared).await?,
        devices_announced: resend_announcements(shared).await?,
        registrations_resent: resend_registrations(shared).await?,
        reattested: reattest(shared).await?,
        unconfirmed: crate::actions::sweep_unconfirmed(shared).await?,
    };
    if swept != Swept::default() {
        tracing::info!(?swept, "sweep");
    }
    Ok(swept)
}

async fn expire(shared: &Shared) -> Result<usize, BatchError> {
    let mut tx = shared.pool.begin().await?;
    let timed_out = db::expire_challenges(&mut tx, LIMIT).await?;
    // One alert per device and condition: a device that did not answer before is not raised
    // again, nor one whose model's policy does not require an answer.
    let raised: Vec<&db::TimedOut> = timed_out
        .iter()
        .filter(|t| t.status == status::TIMEOUT && t.previous_status != status::TIMEOUT)
        .filter(|t| {
            shared.cfg.attestation_policy_of(t.model.as_deref()) == AttestationPolicy::Required
        })
        .collect();
    let alerts: Vec<Alert> = if raised.len() > shared.cfg.alert_storm_threshold {
        vec![fleet_alert(&Fleet {
            condition: status::TIMEOUT,
            what: "did not answer their attestation challenge",
            devices: raised
                .iter()
                .map(|t| (t.device_id.clone(), t.model.clone(), t.nonce.clone()))
                .collect(),
        })]
    } else {
        raised
            .iter()
            .map(|t| attestation_timeout_alert(&t.device_id, t.id, t.model.as_deref(), &t.nonce))
            .collect()
    };
    for a in &alerts {
        tracing::warn!(alert = %a.id, title = %a.title, "attestation challenge expired unanswered");
    }
    streams::publish_alerts(shared, &alerts).await?;
    tx.commit().await?;
    telemetry::attestation_timeouts(timed_out.len());
    telemetry::alerts(AlertKind::Timeout, alerts.len());
    Ok(timed_out.len())
}

/// Devices silent for `--silent-after` times their usual interval: marked, one alert each (a
/// fleet alert past `--alert-storm-threshold`); silent devices heard again: cleared.
async fn silence(shared: &Shared) -> Result<(usize, usize), BatchError> {
    if shared.cfg.silent_after == 0 {
        return Ok((0, 0));
    }
    let mut tx = shared.pool.begin().await?;
    let cleared = db::clear_silent(&mut tx, LIMIT).await?;
    let silent = db::mark_silent(
        &mut tx,
        shared.cfg.silent_after,
        shared.cfg.silent_floor,
        LIMIT,
    )
    .await?;
    let alerts: Vec<Alert> = if silent.len() > shared.cfg.alert_storm_threshold {
        vec![fleet_alert(&Fleet {
            condition: "silent",
            what: "fell silent",
            devices: silent
                .iter()
                .map(|s| {
                    (
                        s.device_id.clone(),
                        s.model.clone(),
                        s.last_seen.timestamp_millis().to_string(),
                    )
                })
                .collect(),
        })]
    } else {
        silent.iter().map(device_silent_alert).collect()
    };
    for s in &silent {
        tracing::warn!(device = %s.device_id, last_seen = %s.last_seen, "device silent");
    }
    for c in &cleared {
        tracing::info!(device = %c.device_id, silent_since = %c.silent_since, "device talks again");
    }
    streams::publish_alerts(shared, &alerts).await?;
    tx.commit().await?;
    telemetry::alerts(AlertKind::Silent, alerts.len());
    Ok((silent.len(), cleared.len()))
}

async fn resend_challenges(shared: &Shared) -> Result<usize, BatchError> {
    let mut tx = shared.pool.begin().await?;
    let unsent = db::unsent_challenges(
        &mut tx,
        shared.cfg.resend_after,
        shared.cfg.attestation_timeout,
        LIMIT,
    )
    .await?;
    attestation::send_challenges(shared, &unsent).await?;
    tx.commit().await?;
    telemetry::resent(Resent::Challenge, unsent.len());
    Ok(unsent.len())
}

async fn resend_announcements(shared: &Shared) -> Result<usize, BatchError> {
    let mut tx = shared.pool.begin().await?;
    let devices = db::unannounced_devices(&mut tx, shared.cfg.resend_after, LIMIT).await?;
    let stream = shared.cfg.names.cps_devices();
    let docs: Vec<(&str, Vec<u8>)> = devices
        .iter()
        .map(|d| (stream.as_str(), to_bytes(&DeviceRegistered::from_device(d))))
        .collect();
    shared.producer.publish_batch(&docs).await?;
    tx.commit().await?;
    telemetry::resent(Resent::Registered, devices.len());
    Ok(devices.len())
}

/// Registration batches committed but (maybe) not on the bus: their `device.registered`
/// records and `attest` commands are sent again; the outbox rows go in the same transaction.
async fn resend_registrations(shared: &Shared) -> Result<usize, BatchError> {
    let mut tx = shared.pool.begin().await?;
    let (devices, challenges) = db::take_outbox(
        &mut tx,
        shared.cfg.resend_after,
        shared.cfg.attestation_timeout,
        OUTBOX_BATCHES,
    )
    .await?;
    if devices.is_empty() && challenges.is_empty() {
        return Ok(0);
    }
    let devices_stream = shared.cfg.names.cps_devices();
    let mut docs: Vec<(&str, Vec<u8>)> = devices
        .iter()
        .map(|d| {
            (
                devices_stream.as_str(),
                to_bytes(&DeviceRegistered::from_device(d)),
            )
        })
        .collect();
    let commands_stream = shared.cfg.names.cps_commands();
    docs.extend(
        challenges
            .iter()
            .map(|c| (commands_stream.as_str(), to_bytes(&attest_command(c)))),
    );
    shared.producer.publish_batch(&docs).await?;
    tx.commit().await?;
    telemetry::resent(Resent::Registered, devices.len());
    telemetry::resent(Resent::Challenge, challenges.len());
    Ok(devices.len())
}

async fn reattest(shared: &Shared) -> Result<usize, BatchError> {
    let Some(interval) = shared.cfg.reattest_interval else {
        return Ok(0);
    };
    // Issued inside the locking transaction, so two replicas never challenge one device twice
    // in a round; sent after the commit (the outbox covers a failure in between).
    let mut tx = shared.pool.begin().await?;
    let due = db::due_for_reattestation(
        &mut tx,
        interval,
        LIMIT,
        &shared.cfg.not_challenged_models(),
    )
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let challenges =
        db::insert_challenges(&mut tx, &due, shared.cfg.attestation_timeout, true).await?;
    tx.commit().await?;
    attestation::send_challenges(shared, &challenges).await?;
    let nonces: Vec<String> = challenges.iter().map(|c| c.nonce.clone()).collect();
    db::mark_sent(&shared.pool, &nonces, &[]).await?;
    telemetry::challenges_issued(Trigger::Schedule, challenges.len());
    Ok(challenges.len())
}
