//! Periodic work, safe with several replicas (rows are taken with `FOR UPDATE SKIP LOCKED`):
//!
//! 1. challenges that expired unanswered: the device becomes `attestation_timeout` and an
//!    alert is raised (on the bus before the commit, with a stable id);
//! 2. the outbox: challenges and `device.registered` records committed but never put on the
//!    bus (a crash or a Redis outage between the two) are sent again;
//! 3. scheduled re-attestation (`--reattest-interval`).

use aurora_core::model::to_bytes;
use tokio_util::sync::CancellationToken;

use crate::records::{attestation_timeout_alert, DeviceRegistered};
use crate::{attestation, back_off, db, report_failure, telemetry, BatchError, Context};

/// Rows handled per step and round.
const LIMIT: i64 = 1000;
/// Registration outbox rows (batches) handled per round.
const OUTBOX_BATCHES: i64 = 10;

pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let mut attempt = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ctx.cfg.sweep_interval) => {}
        }
        match sweep(&ctx).await {
            Ok(_) => attempt = 0,
            Err(e) => {
                report_failure(&ctx, "sweeper", &e);
                if !back_off(&mut attempt, &shutdown).await {
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
}

/// One round of every step.
pub async fn sweep(ctx: &Context) -> Result<Swept, BatchError> {
    let swept = Swept {
        timed_out: expire(ctx).await?,
        challenges_resent: resend_challenges(ctx).await?,
        devices_announced: resend_announcements(ctx).await?,
        registrations_resent: resend_registrations(ctx).await?,
        reattested: reattest(ctx).await?,
    };
    if swept != Swept::default() {
        tracing::info!(?swept, "sweep");
    }
    Ok(swept)
}

async fn expire(ctx: &Context) -> Result<usize, BatchError> {
    let mut tx = ctx.pool.begin().await?;
    let timed_out = db::expire_challenges(&mut tx, LIMIT).await?;
    let stream = ctx.cfg.names.alerts();
    let docs: Vec<(&str, Vec<u8>)> = timed_out
        .iter()
        .map(|t| {
            let alert = attestation_timeout_alert(&t.device_id, t.id, t.model.as_deref(), &t.nonce);
            tracing::warn!(device = %t.device_id, alert = %alert.id, "attestation challenge expired unanswered");
            (stream.as_str(), to_bytes(&alert))
        })
        .collect();
    ctx.producer.publish_batch(&docs).await?;
    tx.commit().await?;
    metrics::counter!(telemetry::ATTESTATION_TIMEOUTS).increment(timed_out.len() as u64);
    metrics::counter!(telemetry::ALERTS, "kind" => "timeout").increment(timed_out.len() as u64);
    Ok(timed_out.len())
}

async fn resend_challenges(ctx: &Context) -> Result<usize, BatchError> {
    let mut tx = ctx.pool.begin().await?;
    let unsent = db::unsent_challenges(
        &mut tx,
        ctx.cfg.resend_after,
        ctx.cfg.attestation_timeout,
        LIMIT,
    )
    .await?;
    attestation::send_challenges(ctx, &unsent).await?;
    tx.commit().await?;
    metrics::counter!(telemetry::RESENT, "kind" => "challenge").increment(unsent.len() as u64);
    Ok(unsent.len())
}

async fn resend_announcements(ctx: &Context) -> Result<usize, BatchError> {
    let mut tx = ctx.pool.begin().await?;
    let devices = db::unannounced_devices(&mut tx, ctx.cfg.resend_after, LIMIT).await?;
    let stream = ctx.cfg.names.cps_devices();
    let docs: Vec<(&str, Vec<u8>)> = devices
        .iter()
        .map(|d| (stream.as_str(), to_bytes(&DeviceRegistered::from_device(d))))
        .collect();
    ctx.producer.publish_batch(&docs).await?;
    tx.commit().await?;
    metrics::counter!(telemetry::RESENT, "kind" => "registered").increment(devices.len() as u64);
    Ok(devices.len())
}

/// Registration batches committed but (maybe) not on the bus: their `device.registered`
/// records and `attest` commands are sent again; the outbox rows go in the same transaction.
async fn resend_registrations(ctx: &Context) -> Result<usize, BatchError> {
    let mut tx = ctx.pool.begin().await?;
    let (devices, challenges) = db::take_outbox(
        &mut tx,
        ctx.cfg.resend_after,
        ctx.cfg.attestation_timeout,
        OUTBOX_BATCHES,
    )
    .await?;
    if devices.is_empty() && challenges.is_empty() {
        return Ok(0);
    }
    let devices_stream = ctx.cfg.names.cps_devices();
    let mut docs: Vec<(&str, Vec<u8>)> = devices
        .iter()
        .map(|d| {
            (
                devices_stream.as_str(),
                to_bytes(&DeviceRegistered::from_device(d)),
            )
        })
        .collect();
    let commands_stream = ctx.cfg.names.cps_commands();
    docs.extend(challenges.iter().map(|c| {
        (
            commands_stream.as_str(),
            to_bytes(&crate::records::attest_command(c)),
        )
    }));
    ctx.producer.publish_batch(&docs).await?;
    tx.commit().await?;
    metrics::counter!(telemetry::RESENT, "kind" => "registered").increment(devices.len() as u64);
    metrics::counter!(telemetry::RESENT, "kind" => "challenge").increment(challenges.len() as u64);
    Ok(devices.len())
}

async fn reattest(ctx: &Context) -> Result<usize, BatchError> {
    let Some(interval) = ctx.cfg.reattest_interval else {
        return Ok(0);
    };
    // Issued inside the locking transaction, so two replicas never challenge one device twice
    // in a round; sent after the commit (the outbox covers a failure in between).
    let mut tx = ctx.pool.begin().await?;
    let due = db::due_for_reattestation(&mut tx, interval, LIMIT).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let challenges =
        db::insert_challenges(&mut tx, &due, ctx.cfg.attestation_timeout, true).await?;
    tx.commit().await?;
    attestation::send_challenges(ctx, &challenges).await?;
    let nonces: Vec<String> = challenges.iter().map(|c| c.nonce.clone()).collect();
    db::mark_sent(&ctx.pool, &nonces, &[]).await?;
    metrics::counter!(telemetry::CHALLENGES, "trigger" => "schedule")
        .increment(challenges.len() as u64);
    Ok(challenges.len())
}
