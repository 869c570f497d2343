//! Firmware attestation.
//!
//! Challenge: a fresh 32-byte nonce stored with an expiry and sent as an `attest` command.
//! Answer: an [`AttestationReport`] on `aurora:cps:attestation`, checked in this order:
//! the nonce is outstanding for this device and not expired (a used nonce is a replay), the
//! Ed25519 signature over `nonce|firmware_version|firmware_sha256` verifies with the device's
//! key, and (model, version, sha256) is on the firmware allow-list. Pass: `trusted`. Fail:
//! `untrusted` and a high-severity alert. One batch is one lookup statement, one
//! consume-the-nonces statement and one status statement; alerts are on the bus before the
//! commit, and the entries are acknowledged after it.

use std::collections::HashMap;

use aurora_core::bus::{BusError, Entry, GroupReader};
use aurora_core::consumer::{process_hop, BatchHandler};
use aurora_core::model::{parse, to_bytes, AttestationReport};
use aurora_core::trace::{Hop, TraceContext};
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::db::{self, status, AttestationContext, Challenge, ReportKey, Verdict};
use crate::error::BatchError;
use crate::records::{attest_command, attestation_failed_alert, FailedAttestation};
use crate::shared::Shared;
use crate::streams;
use crate::telemetry::{self, AlertKind, Trigger};

/// The reader of attestation worker `worker` of replica `instance`.
pub async fn reader(
    shared: &Shared,
    instance: &str,
    worker: usize,
) -> Result<GroupReader, BusError> {
    let name = if worker == 0 {
        format!("{instance}-attestation")
    } else {
        format!("{instance}-attestation-{worker}")
    };
    streams::reader(shared, &shared.cfg.names.cps_attestation(), &name).await
}

/// Issues and sends one challenge per device (on demand or on schedule).
pub async fn challenge(
    shared: &Shared,
    device_ids: &[String],
    trigger: Trigger,
) -> Result<Vec<Challenge>, BatchError> {
    if device_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = shared.pool.begin().await?;
    let challenges =
        db::insert_challenges(&mut tx, device_ids, shared.cfg.attestation_timeout, true).await?;
    tx.commit().await?;
    send_challenges(shared, &challenges).await?;
    db::mark_sent(
        &shared.pool,
        &challenges
            .iter()
            .map(|c| c.nonce.clone())
            .collect::<Vec<_>>(),
        &[],
    )
    .await?;
    telemetry::challenges_issued(trigger, challenges.len());
    Ok(challenges)
}

/// Puts the `attest` commands of these challenges on the bus.
pub async fn send_challenges(shared: &Shared, challenges: &[Challenge]) -> Result<(), BatchError> {
    let stream = shared.cfg.names.cps_commands();
    let docs: Vec<(&str, Vec<u8>)> = challenges
        .iter()
        .map(|c| (stream.as_str(), to_bytes(&attest_command(c))))
        .collect();
    shared.producer.publish_batch(&docs).await?;
    Ok(())
}

/// Why an answer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    UnknownNonce,
    ReplayedNonce,
    ExpiredNonce,
    NoPublicKey,
    BadSignature,
    FirmwareNotAllowed,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownNonce => "unknown nonce",
            Self::ReplayedNonce => "replayed nonce",
            Self::ExpiredNonce => "expired nonce",
            Self::NoPublicKey => "no public key registered for the device",
            Self::BadSignature => "bad signature",
            Self::FirmwareNotAllowed => "firmware not on the allow-list",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Self::UnknownNonce => "unknown_nonce",
            Self::ReplayedNonce => "replayed_nonce",
            Self::ExpiredNonce => "expired_nonce",
            Self::NoPublicKey => "no_public_key",
            Self::BadSignature => "bad_signature",
            Self::FirmwareNotAllowed => "firmware_not_allowed",
        }
    }
}

/// What to do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The same entry was already handled (a redelivery): acknowledge, nothing else.
    AlreadyHandled,
    Pass,
    Fail(Failure),
}

/// Checks one answer against what PostgreSQL knows. Pure: no I/O.
pub fn decide(report: &AttestationReport, entry_id: &str, c: &AttestationContext) -> Decision {
    match (c.challenge_state.as_deref(), c.challenge_expired) {
        (None, _) => return Decision::Fail(Failure::UnknownNonce),
        (Some("passed" | "failed"), _) if c.answered_by.as_deref() == Some(entry_id) => {
            return Decision::AlreadyHandled
        }
        (Some("passed" | "failed"), _) => return Decision::Fail(Failure::ReplayedNonce),
        (Some("outstanding"), Some(false)) => {}
        _ => return Decision::Fail(Failure::ExpiredNonce),
    }
    let Some(key) = c.public_key.as_deref() else {
        return Decision::Fail(Failure::NoPublicKey);
    };
    if !signature_valid(key, report) {
        return Decision::Fail(Failure::BadSignature);
    }
    if !c.allowed {
        return Decision::Fail(Failure::FirmwareNotAllowed);
    }
    Decision::Pass
}

/// Verifies the report's signature (strict: no malleable signatures, no weak keys).
pub fn signature_valid(public_key: &[u8], report: &AttestationReport) -> bool {
    let Ok(key_bytes) = <[u8; 32]>::try_from(public_key) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key_bytes) else {
        return false;
    };
    let Ok(sig_bytes) = base64::engine::general_purpose::STANDARD.decode(report.signature.trim())
    else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&sig_bytes) else {
        return false;
    };
    let msg = AttestationReport::signed_bytes(
        &report.nonce,
        &report.firmware_version,
        &report.firmware_sha256,
    );
    key.verify_strict(&msg, &sig).is_ok()
}

/// Checks each batch of attestation answers.
pub struct Attestation(pub Shared);

struct Checked {
    entry_id: String,
    report: AttestationReport,
    ctx: AttestationContext,
    decision: Decision,
    /// The context of the entry's `process` span: its alert carries it.
    trace: Option<TraceContext>,
}

/// An answer to check, with its entry id and the context of its `process` span.
type ToCheck = (
    String,
    AttestationReport,
    AttestationContext,
    Option<TraceContext>,
);

impl BatchHandler for Attestation {
    type Error = BatchError;

    fn part(&self) -> &'static str {
        "attestation"
    }

    /// Each entry is handled in its `process` hop (when tracing is on), and the alert it
    /// raises carries that hop's context.
    async fn handle(&self, reader: &GroupReader, entries: Vec<Entry>) -> Result<(), BatchError> {
        let shared = &self.0;
        let mut parsed: Vec<(Entry, AttestationReport, Hop)> = Vec::with_capacity(entries.len());
        for entry in entries {
            let hop = process_hop(&entry);
            match parse::<AttestationReport>(entry.data.as_deref().unwrap_or_default()) {
                Ok(r) => parsed.push((entry, r, hop)),
                Err(e) => {
                    hop.scope(streams::reject(reader, &entry, &e.to_string()))
                        .await?
                }
            }
        }
        if parsed.is_empty() {
            return Ok(());
        }
        let keys: Vec<ReportKey<'_>> = parsed
            .iter()
            .map(|(_, r, _)| ReportKey {
                device_id: &r.device_id,
                nonce: &r.nonce,
                version: &r.firmware_version,
                sha256: &r.firmware_sha256,
            })
            .collect();
        // A read-only transaction, so the lookup can be planned as key lookups.
        let mut tx = shared.pool.begin().await?;
        db::plan_key_lookups(&mut tx).await?;
        let mut contexts: HashMap<i32, AttestationContext> =
            db::attestation_context(&mut *tx, &keys)
                .await?
                .into_iter()
                .map(|c| (c.idx, c))
                .collect();
        tx.commit().await?;
        drop(keys);

        let mut handled = Vec::with_capacity(parsed.len());
        let mut to_check = Vec::with_capacity(parsed.len());
        // They end once the batch is settled.
        let mut spans = Vec::with_capacity(parsed.len());
        for (i, (entry, report, hop)) in parsed.into_iter().enumerate() {
            let Some(c) = contexts.remove(&(i as i32)) else {
                continue;
            };
            if c.device_uuid.is_none() {
                let reason = format!(
                    "attestation report from unknown device {:?}",
                    report.device_id
                );
                hop.scope(streams::reject(reader, &entry, &reason)).await?;
                continue;
            }
            handled.push(entry.id.clone());
            to_check.push((entry.id, report, c, hop.context().cloned()));
            spans.push(hop);
        }
        // Signatures are CPU work: off the async threads, in as many chunks as there are
        // cores, so one batch's signatures are checked in parallel.
        let mut checked = check_all(to_check).await?;
        settle(shared, &mut checked).await?;
        reader.ack(&handled).await?;
        drop(spans);
        Ok(())
    }

    fn traces_entries(&self) -> bool {
        true
    }

    fn failed(&self, _error: &BatchError) {
        telemetry::batch_failed(self.part());
    }
}

/// Decides every report, the signature checks spread over the cores (`spawn_blocking`
/// chunks).
async fn check_all(to_check: Vec<ToCheck>) -> Result<Vec<Checked>, BatchError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = to_check.len().div_ceil(cores).max(64);
    let mut rest = to_check;
    let mut tasks = Vec::new();
    while !rest.is_empty() {
        let tail = rest.split_off(chunk.min(rest.len()));
        let part = std::mem::replace(&mut rest, tail);
        tasks.push(tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|(entry_id, report, ctx, trace)| {
                    let decision = decide(&report, &entry_id, &ctx);
                    Checked {
                        entry_id,
                        report,
                        ctx,
                        decision,
                        trace,
                    }
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut checked = Vec::new();
    for task in futures::future::join_all(tasks).await {
        checked.extend(
            task.map_err(|e| BatchError::Internal(format!("signature check task failed: {e}")))?,
        );
    }
    Ok(checked)
}

/// Consumes the nonces, applies the verdicts, raises the alerts, in one transaction.
async fn settle(shared: &Shared, checked: &mut [Checked]) -> Result<(), BatchError> {
    let mut tx = shared.pool.begin().await?;
    db::plan_key_lookups(&mut tx).await?;
    let consumable: Vec<&Checked> = checked
        .iter()
        .filter(|c| {
            c.ctx.challenge_state.as_deref() == Some("outstanding")
                && c.decision != Decision::AlreadyHandled
        })
        .collect();
    let nonces: Vec<String> = consumable.iter().map(|c| c.report.nonce.clone()).collect();
    let states: Vec<&str> = consumable
        .iter()
        .map(|c| {
            if c.decision == Decision::Pass {
                "passed"
            } else {
                "failed"
            }
        })
        .collect();
    let entries: Vec<String> = consumable.iter().map(|c| c.entry_id.clone()).collect();
    let consumed: std::collections::HashSet<String> =
        db::consume_challenges(&mut tx, &nonces, &states, &entries)
            .await?
            .into_iter()
            .collect();
    for c in checked.iter_mut() {
        // Another answer took the nonce between our lookup and now.
        if c.decision == Decision::Pass && !consumed.contains(&c.report.nonce) {
            c.decision = Decision::Fail(Failure::ReplayedNonce);
        }
    }

    // One verdict per device; a failure outweighs a pass in the same batch.
    let mut verdicts: HashMap<&str, Verdict> = HashMap::new();
    let mut alerts = Vec::new();
    for c in checked.iter() {
        let verdict = match c.decision {
            Decision::AlreadyHandled => continue,
            Decision::Pass => Verdict {
                device_id: c.report.device_id.clone(),
                status: status::TRUSTED,
                reason: None,
                firmware_version: c.report.firmware_version.clone(),
            },
            Decision::Fail(f) => {
                let reason = failure_reason(f, c);
                let alert = attestation_failed_alert(&FailedAttestation {
                    device_id: &c.report.device_id,
                    device_uuid: c.ctx.device_uuid,
                    model: c.ctx.model.as_deref(),
                    nonce: &c.report.nonce,
                    firmware_version: &c.report.firmware_version,
                    firmware_sha256: &c.report.firmware_sha256,
                    reason: &reason,
                    entry_id: &c.entry_id,
                });
                alerts.push((alert, c.trace.clone()));
                telemetry::attestation_failed(f.label());
                Verdict {
                    device_id: c.report.device_id.clone(),
                    status: status::UNTRUSTED,
                    reason: Some(reason),
                    firmware_version: c.report.firmware_version.clone(),
                }
            }
        };
        telemetry::attestation_checked(verdict.status == status::TRUSTED);
        match verdicts.get(c.report.device_id.as_str()) {
            Some(v) if v.status == status::UNTRUSTED => {}
            _ => {
                verdicts.insert(&c.report.device_id, verdict);
            }
        }
    }
    let mut verdicts: Vec<Verdict> = verdicts.into_values().collect();
    verdicts.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    db::apply_verdicts(&mut tx, &verdicts).await?;
    if !alerts.is_empty() {
        streams::publish_alerts_traced(shared, &alerts).await?;
        telemetry::alerts(AlertKind::Attestation, alerts.len());
        for (a, _) in &alerts {
            tracing::warn!(alert = %a.id, title = %a.title, "device failed attestation");
        }
    }
    tx.commit().await?;
    Ok(())
}

fn failure_reason(f: Failure, c: &Checked) -> String {
    match f {
        Failure::FirmwareNotAllowed => format!(
            "firmware not on the allow-list (model {}, version {}, sha256 {})",
            c.ctx.model.as_deref().unwrap_or("unknown"),
            c.report.firmware_version,
            c.report.firmware_sha256
        ),
        other => other.as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aurora_core::model::Extra;
    use ed25519_dalek::{Signer, SigningKey};

    fn report(key: &SigningKey, nonce: &str) -> AttestationReport {
        let sha = "ab".repeat(32);
        let sig = key.sign(&AttestationReport::signed_bytes(nonce, "1.0", &sha));
        AttestationReport {
            device_id: "d1".into(),
            nonce: nonce.into(),
            firmware_version: "1.0".into(),
            firmware_sha256: sha,
            signature: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
            extra: Extra::new(),
        }
    }

    fn ctx(
        key: &SigningKey,
        state: Option<&str>,
        expired: bool,
        allowed: bool,
    ) -> AttestationContext {
        AttestationContext {
            idx: 0,
            device_uuid: Some(uuid::Uuid::new_v4()),
            model: Some("m".into()),
            public_key: Some(key.verifying_key().as_bytes().to_vec()),
            device_status: Some("pending_attestation".into()),
            challenge_state: state.map(str::to_string),
            challenge_expired: state.map(|_| expired),
            answered_by: state
                .filter(|s| *s != "outstanding")
                .map(|_| "1-0".to_string()),
            allowed,
        }
    }

    #[test]
    fn every_check_has_its_verdict() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let r = report(&key, "n1");
        assert_eq!(
            decide(&r, "2-0", &ctx(&key, Some("outstanding"), false, true)),
            Decision::Pass
        );
        assert_eq!(
            decide(&r, "2-0", &ctx(&key, None, false, true)),
            Decision::Fail(Failure::UnknownNonce)
        );
        assert_eq!(
            decide(&r, "2-0", &ctx(&key, Some("passed"), false, true)),
            Decision::Fail(Failure::ReplayedNonce)
        );
        assert_eq!(
            decide(&r, "1-0", &ctx(&key, Some("passed"), false, true)),
            Decision::AlreadyHandled
        );
        assert_eq!(
            decide(&r, "2-0", &ctx(&key, Some("outstanding"), true, true)),
            Decision::Fail(Failure::ExpiredNonce)
        );
        assert_eq!(
            decide(&r, "2-0", &ctx(&key, Some("expired"), true, true)),
            Decision::Fail(Failure::ExpiredNonce)
        );
        assert_eq!(
            decide(&r, "2-0", &ctx(&key, Some("outstanding"), false, false)),
            Decision::Fail(Failure::FirmwareNotAllowed)
        );
        assert_eq!(
            decide(&r, "2-0", &ctx(&other, Some("outstanding"), false, true)),
            Decision::Fail(Failure::BadSignature)
        );
        let mut no_key = ctx(&key, Some("outstanding"), false, true);
        no_key.public_key = None;
        assert_eq!(
            decide(&r, "2-0", &no_key),
            Decision::Fail(Failure::NoPublicKey)
        );
        let mut garbled = r.clone();
        garbled.signature = "not base64!".into();
        assert!(!signature_valid(key.verifying_key().as_bytes(), &garbled));
        // The signature covers the hash: a different hash with the old signature fails.
        let mut swapped = r;
        swapped.firmware_sha256 = "cd".repeat(32);
        assert!(!signature_valid(key.verifying_key().as_bytes(), &swapped));
    }
}
