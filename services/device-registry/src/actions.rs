//! Device actions from the request to the device's receipt (docs/contract.md#device-actions).
//!
//! - [`request`]: the API's commands. A privileged action (`--privileged-actions`) is not
//!   executed: it becomes a pending approval on `aurora:approvals` (the console shows it with
//!   the device, the action and who asked) and a row `awaiting_approval`. Any other command is
//!   queued at once. Either way the row, the bus records and an audit event go together.
//! - [`Decisions`]: the approvals stream. An approved request whose proof holds
//!   (`--approval-public-keys`: ws-gateway signs what an analyst approved) is executed: its
//!   command goes out with the proof (mqtt-bridge checks it again before it sends), a quarantine
//!   also marks the device, a key change sets the key. Rejected and expired approvals end the
//!   request with that status; an approval whose proof does not hold ends it `refused`.
//! - [`Outcomes`]: mqtt-bridge's command statuses (`sent`, `not_reached`, `expired`, `failed`).
//! - [`Receipts`]: the devices' receipts (`aurora/sensors/{id}/receipt`): `done` or `failed`.
//! - [`sweep_unconfirmed`]: a command with no receipt by its expiry (and `--receipt-grace`) is
//!   `unconfirmed`, not failed.
//!
//! Every step is an audit event on `aurora:audit` (the console's agent-thoughts channel, and
//! federation), and a privileged action that does not end `done` raises an Alert. Records go
//! out with `publish_once` keyed by command and step, before the transaction commits: a step
//! retried after a crash writes nothing twice.

use std::time::Duration;

use aurora_core::approval::{self, ActionProof, DeviceAction};
use aurora_core::bus::{BusError, Entry, GroupReader, OnceWrite};
use aurora_core::consumer::BatchHandler;
use aurora_core::model::{
    self, to_bytes, Approval, ApprovalStatus, AuditEvent, CommandOutcome, CommandStatus,
    DeviceCommand, DeviceMessage, Extra, RiskLevel,
};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::{self, command_status as cs, CommandRow};
use crate::error::{ApiError, BatchError};
use crate::records::{high_alert, stable_id};
use crate::shared::Shared;
use crate::streams;
use crate::{telemetry, SERVICE};

/// How long the idempotency keys of the records of one step are kept.
const ONCE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Commands marked unconfirmed per sweep round.
const SWEEP_LIMIT: i64 = 500;

/// The `actor` of audit events the registry writes on its own.
const ACTOR: &str = SERVICE;
/// The `actor` of what mqtt-bridge reports.
const BRIDGE: &str = "mqtt-bridge";

/// What the API asks for.
pub struct Request<'a> {
    pub device_id: &'a str,
    pub action: &'a str,
    pub params: Value,
    pub reason: Option<String>,
    pub requested_by: &'a str,
    /// The command's lifetime when it is not privileged (`ttl_seconds`, else `--command-ttl`).
    pub ttl: Duration,
}

/// What the API answers.
pub struct Requested {
    pub command_id: Uuid,
    pub approval_id: Option<Uuid>,
    pub status: &'static str,
    pub expires_at: DateTime<Utc>,
}

impl Requested {
    pub fn to_json(&self, device_id: &str, action: &str) -> Value {
        json!({
            "command_id": self.command_id,
            "approval_id": self.approval_id,
            "device_id": device_id,
            "action": action,
            "status": self.status,
            "expires_at": self.expires_at,
        })
    }
}

/// Whether `action` needs an approval here.
pub fn is_privileged(shared: &Shared, action: &str) -> bool {
    approval::is_privileged(&shared.cfg.privileged_actions, action)
}

fn until(d: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(7))
}

fn once_key(shared: &Shared, command: Uuid, step: &str) -> String {
    shared
        .cfg
        .names
        .state_key(SERVICE, &format!("action:{command}:{step}"))
}

/// One record of a step.
struct Record {
    stream: String,
    data: Vec<u8>,
}

/// Writes the records of one step of a command, each once.
async fn publish_step(
    shared: &Shared,
    command: Uuid,
    step: &str,
    records: &[Record],
) -> Result<(), BusError> {
    let keys: Vec<String> = (0..records.len())
        .map(|i| once_key(shared, command, &format!("{step}:{i}")))
        .collect();
    let writes: Vec<OnceWrite<'_>> = records
        .iter()
        .zip(&keys)
        .map(|(r, key)| OnceWrite {
            key,
            stream: &r.stream,
            data: &r.data,
        })
        .collect();
    shared.producer.publish_once(&writes, ONCE_TTL).await?;
    Ok(())
}

/// The audit event of one step of a command.
fn audit(shared: &Shared, row: &CommandRow, step: &str, actor: &str, details: Value) -> Record {
    let mut d = json!({
        "command_id": row.id,
        "device_action": row.action,
        "privileged": row.privileged,
        "requested_by": row.requested_by,
    });
    if let (Some(o), Value::Object(extra)) = (d.as_object_mut(), details) {
        o.extend(extra);
    }
    if let Some(a) = row.approval_id {
        d["approval_id"] = json!(a);
    }
    let event = AuditEvent {
        id: Some(stable_id(&format!("audit:{}:{step}", row.id)).to_string()),
        actor: actor.to_string(),
        action: format!("device_action.{step}"),
        target: Some(row.device_id.clone()),
        details: d,
        timestamp: Utc::now(),
        extra: Extra::new(),
    };
    Record {
        stream: shared.cfg.names.audit(),
        data: to_bytes(&event),
    }
}

/// The Alert of a privileged action that did not end `done`.
fn not_done_alert(shared: &Shared, row: &CommandRow, status: &str, reason: &str) -> Record {
    let mut extra = Extra::new();
    extra.insert("device_id".into(), json!(row.device_id));
    extra.insert("command_id".into(), json!(row.id));
    extra.insert("device_action".into(), json!(row.action));
    extra.insert("command_status".into(), json!(status));
    extra.insert("reason".into(), json!(reason));
    if let Some(a) = row.approval_id {
        extra.insert("approval_id".into(), json!(a));
    }
    let alert = high_alert(
        &format!("device-action:{}:{status}", row.id),
        format!(
            "Device {} did not confirm the {} it was sent: {status}",
            row.device_id, row.action
        ),
        Vec::new(),
        extra,
    );
    telemetry::alerts(telemetry::AlertKind::Action, 1);
    Record {
        stream: shared.cfg.names.alerts(),
        data: to_bytes(&alert),
    }
}

/// The command of a row, with its proof when it has one.
fn command_of(row: &CommandRow, proof: Option<&ActionProof>) -> DeviceCommand {
    let mut c = DeviceCommand {
        id: row.id,
        device_id: row.device_id.clone(),
        action: row.action.clone(),
        params: row.params_value(),
        issued_at: Utc::now(),
        expires_at: Some(row.expires_at),
        extra: Extra::new(),
    };
    if let Some(p) = proof {
        p.attach(&mut c);
    }
    c
}

fn title(action: &str) -> String {
    let words = action.replace('_', " ");
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => words,
    }
}

/// Takes a command the API was asked for: queued at once, or awaiting an approval.
pub async fn request(shared: &Shared, r: Request<'_>) -> Result<Requested, ApiError> {
    let cfg = &shared.cfg;
    let privileged = is_privileged(shared, r.action);
    if privileged && cfg.approver_keys.is_empty() {
        return Err(ApiError::Unavailable(format!(
            "{:?} needs an approval, and no approver public key is configured \
             (--approval-public-keys): it could never be carried out",
            r.action
        )));
    }
    let params = if r.params.is_null() {
        json!({})
    } else {
        r.params
    };
    let params_text = String::from_utf8(approval::canonical_json(&params))
        .map_err(|e| ApiError::BadRequest(format!("params: {e}")))?;
    let command_id = Uuid::new_v4();
    let (status, approval_id, expires_at) = if privileged {
        (
            cs::AWAITING_APPROVAL,
            Some(Uuid::new_v4()),
            until(cfg.approval_timeout),
        )
    } else {
        (cs::QUEUED, None, until(r.ttl))
    };
    let mut tx = shared.pool.begin().await?;
    db::insert_command(
        &mut tx,
        &db::NewCommand {
            id: command_id,
            device_id: r.device_id,
            action: r.action,
            params: &params_text,
            privileged,
            status,
            requested_by: r.requested_by,
            approval_id,
            expires_at,
        },
    )
    .await?;
    let row = db::get_command(&mut tx, command_id, false)
        .await?
        .ok_or_else(|| ApiError::Unavailable("the command was not stored".into()))?;
    let mut records = Vec::new();
    if let Some(approval_id) = approval_id {
        // The parameters as the row holds them: what the proof will be checked against.
        let mut action = DeviceAction::new(command_id, r.device_id, r.action, row.params_value());
        action.reason = r.reason.clone();
        let now = Utc::now();
        let doc = Approval {
            id: approval_id,
            action: format!("{} device {}", title(r.action), r.device_id),
            case_id: None,
            risk_level: RiskLevel::High,
            status: ApprovalStatus::Pending,
            requested_by: r.requested_by.to_string(),
            context: serde_json::to_value(&action).unwrap_or(Value::Null),
            requested_at: now,
            expires_at,
            decided_by: None,
            decided_at: None,
            comment: None,
            extra: Extra::new(),
        };
        records.push(Record {
            stream: cfg.names.approvals(),
            data: to_bytes(&doc),
        });
    } else {
        records.push(Record {
            stream: cfg.names.cps_commands(),
            data: to_bytes(&command_of(&row, None)),
        });
    }
    records.push(audit(
        shared,
        &row,
        "requested",
        r.requested_by,
        json!({ "status": status, "reason": r.reason, "params": row.params_value() }),
    ));
    publish_step(shared, command_id, "requested", &records).await?;
    tx.commit().await?;
    telemetry::device_action(status);
    tracing::info!(command = %command_id, device = r.device_id, action = r.action, by = r.requested_by, status, "device action requested");
    Ok(Requested {
        command_id,
        approval_id,
        status,
        expires_at,
    })
}

// ---------------------------------------------------------------- approvals

/// The reader of the approvals stream of replica `instance`.
pub async fn decisions_reader(shared: &Shared, instance: &str) -> Result<GroupReader, BusError> {
    let name = format!("{instance}-approvals");
    streams::reader(shared, &shared.cfg.names.approvals(), &name).await
}

/// Carries out (or ends) the requests whose approvals were decided.
pub struct Decisions(pub Shared);

impl BatchHandler for Decisions {
    type Error = BatchError;

    fn part(&self) -> &'static str {
        "approvals"
    }

    async fn handle(&self, reader: &GroupReader, entries: Vec<Entry>) -> Result<(), BatchError> {
        for entry in &entries {
            // Approvals of other kinds are not this service's: they are skipped, not refused.
            if let Ok(approval) =
                model::parse::<Approval>(entry.data.as_deref().unwrap_or_default())
            {
                if approval.status != ApprovalStatus::Pending {
                    self.decided(&approval).await?;
                }
            }
            reader.ack(&[entry.id.as_str()]).await?;
        }
        Ok(())
    }

    fn failed(&self, _error: &BatchError) {
        telemetry::batch_failed(self.part());
    }
}

impl Decisions {
    async fn decided(&self, approval: &Approval) -> Result<(), BatchError> {
        let shared = &self.0;
        let mut tx = shared.pool.begin().await?;
        let Some(row) = db::command_of_approval(&mut tx, approval.id).await? else {
            return Ok(());
        };
        if row.status != cs::AWAITING_APPROVAL {
            // Decided before (a redelivery, or a second decision document).
            return Ok(());
        }
        let decided_by = approval.decided_by.clone();
        let actor = decided_by.clone().unwrap_or_else(|| ACTOR.to_string());
        match approval.status {
            ApprovalStatus::Approved => match self.proof(&row, approval) {
                Ok(proof) => self.execute(&mut tx, row, &proof, &actor).await?,
                Err(reason) => {
                    tracing::warn!(command = %row.id, approval = %approval.id, %reason, "an approval's proof does not hold: the action is refused");
                    let records = [
                        audit(
                            shared,
                            &row,
                            "refused",
                            ACTOR,
                            json!({ "reason": reason, "approved_by": decided_by }),
                        ),
                        not_done_alert(shared, &row, cs::REFUSED, &reason),
                    ];
                    publish_step(shared, row.id, "refused", &records).await?;
                    db::set_command_status(
                        &mut tx,
                        row.id,
                        cs::REFUSED,
                        Some(&reason),
                        decided_by.as_deref(),
                        None,
                    )
                    .await?;
                    telemetry::device_action(cs::REFUSED);
                }
            },
            ApprovalStatus::Rejected | ApprovalStatus::Expired => {
                let (status, step) = if approval.status == ApprovalStatus::Rejected {
                    (cs::REJECTED, "rejected")
                } else {
                    (cs::APPROVAL_EXPIRED, "approval_expired")
                };
                let records = [audit(
                    shared,
                    &row,
                    step,
                    &actor,
                    json!({ "comment": approval.comment }),
                )];
                publish_step(shared, row.id, step, &records).await?;
                db::set_command_status(
                    &mut tx,
                    row.id,
                    status,
                    approval.comment.as_deref(),
                    decided_by.as_deref(),
                    None,
                )
                .await?;
                telemetry::device_action(status);
            }
            ApprovalStatus::Pending => return Ok(()),
        }
        tx.commit().await?;
        Ok(())
    }

    /// The approval's proof, checked against the row (not against what the approval says).
    fn proof(&self, row: &CommandRow, approval: &Approval) -> Result<ActionProof, String> {
        let shared = &self.0;
        let proof: ActionProof = approval
            .extra
            .get(approval::PROOF_FIELD)
            .ok_or_else(|| {
                "approved without a proof (is the gateway's approval signing key set?)".to_string()
            })
            .and_then(|v| {
                serde_json::from_value(v.clone())
                    .map_err(|e| format!("the approval proof is malformed: {e}"))
            })?;
        if proof.approval_id != approval.id {
            return Err("the proof is for another approval".into());
        }
        if approval.decided_by.as_deref() != Some(proof.approved_by.as_str()) {
            return Err("the proof names another approver than the decision".into());
        }
        if proof.approved_by == row.requested_by {
            return Err("approved by the requester".into());
        }
        let action = DeviceAction::new(row.id, &row.device_id, &row.action, row.params_value());
        shared
            .cfg
            .approver_keys
            .verify(&action, &proof, Utc::now())
            .map_err(|e| e.to_string())?;
        Ok(proof)
    }

    async fn execute(
        &self,
        tx: &mut PgConnection,
        mut row: CommandRow,
        proof: &ActionProof,
        approved_by: &str,
    ) -> Result<(), BatchError> {
        let shared = &self.0;
        row.expires_at = proof.not_after;
        let mut records = vec![audit(
            shared,
            &row,
            "approved",
            approved_by,
            json!({ "approved_by": approved_by, "not_after": proof.not_after }),
        )];
        let status = if row.action == "key_change" {
            let key = row
                .params_value()
                .get("public_key")
                .and_then(Value::as_str)
                .and_then(|k| crate::registration::decode_public_key(k).ok());
            match key {
                Some(key) => {
                    db::set_public_key_in(tx, &row.device_id, &key).await?;
                    records.push(audit(shared, &row, "done", ACTOR, json!({})));
                    cs::DONE
                }
                None => {
                    records.push(audit(
                        shared,
                        &row,
                        "failed",
                        ACTOR,
                        json!({ "reason": "the key change has no valid public_key" }),
                    ));
                    cs::FAILED
                }
            }
        } else {
            if row.action == "quarantine" {
                let reason = row
                    .params_value()
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("quarantine approved by {approved_by}"));
                db::quarantine(tx, &db::DeviceRef::DeviceId(row.device_id.clone()), &reason)
                    .await?;
            }
            records.push(Record {
                stream: shared.cfg.names.cps_commands(),
                data: to_bytes(&command_of(&row, Some(proof))),
            });
            cs::QUEUED
        };
        publish_step(shared, row.id, "approved", &records).await?;
        db::set_command_status(
            tx,
            row.id,
            status,
            None,
            Some(approved_by),
            Some(proof.not_after),
        )
        .await?;
        telemetry::device_action(status);
        tracing::warn!(command = %row.id, device = %row.device_id, action = %row.action, approved_by, "approved device action carried out");
        Ok(())
    }
}

// ---------------------------------------------------------------- outcomes and receipts

/// Moves a command to a later status: `sent`, `not_reached`, `expired`, `failed` from the
/// bridge; `done`, `failed` from the device. Returns false when the status does not apply
/// (the command is past it).
async fn advance(
    shared: &Shared,
    command_id: Uuid,
    to: &str,
    reason: Option<&str>,
    actor: &str,
    by_device: bool,
) -> Result<bool, BatchError> {
    let mut tx = shared.pool.begin().await?;
    let Some(row) = db::get_command(&mut tx, command_id, true).await? else {
        return Ok(false);
    };
    let from = row.status.as_str();
    let applies = match to {
        // What the bridge says of a queued command (a `failed` after `sent` would be about
        // a second entry of the same command, refused as a replay: the first one went out).
        cs::SENT | cs::NOT_REACHED | cs::EXPIRED => from == cs::QUEUED,
        cs::FAILED if !by_device => from == cs::QUEUED,
        // The device's receipt, also after the deadline.
        cs::FAILED | cs::DONE => matches!(from, cs::QUEUED | cs::SENT | cs::UNCONFIRMED),
        cs::UNCONFIRMED => matches!(from, cs::QUEUED | cs::SENT),
        _ => false,
    };
    if !applies {
        return Ok(false);
    }
    let mut records = Vec::new();
    // A receipt read before the bridge's own `sent`: the trail still reads in order.
    if by_device && from == cs::QUEUED {
        records.push(audit(shared, &row, cs::SENT, ACTOR, json!({})));
    }
    records.push(audit(shared, &row, to, actor, json!({ "reason": reason })));
    if row.privileged
        && matches!(
            to,
            cs::NOT_REACHED | cs::EXPIRED | cs::FAILED | cs::UNCONFIRMED
        )
    {
        records.push(not_done_alert(shared, &row, to, reason.unwrap_or(to)));
    }
    publish_step(shared, row.id, to, &records).await?;
    db::set_command_status(&mut tx, row.id, to, reason, None, None).await?;
    tx.commit().await?;
    telemetry::device_action(to);
    Ok(true)
}

/// The reader of mqtt-bridge's command statuses of replica `instance`.
pub async fn outcomes_reader(shared: &Shared, instance: &str) -> Result<GroupReader, BusError> {
    let name = format!("{instance}-command-status");
    streams::reader(shared, &shared.cfg.names.cps_command_status(), &name).await
}

/// Applies mqtt-bridge's command statuses to the commands of the API.
pub struct Outcomes(pub Shared);

impl BatchHandler for Outcomes {
    type Error = BatchError;

    fn part(&self) -> &'static str {
        "command_status"
    }

    async fn handle(&self, reader: &GroupReader, entries: Vec<Entry>) -> Result<(), BatchError> {
        for entry in &entries {
            match model::parse::<CommandStatus>(entry.data.as_deref().unwrap_or_default()) {
                Ok(s) => {
                    let to = match s.status {
                        CommandOutcome::Sent => cs::SENT,
                        CommandOutcome::NotReached => cs::NOT_REACHED,
                        CommandOutcome::Expired => cs::EXPIRED,
                        CommandOutcome::Failed => cs::FAILED,
                    };
                    advance(
                        &self.0,
                        s.command_id,
                        to,
                        s.reason.as_deref(),
                        BRIDGE,
                        false,
                    )
                    .await?;
                    reader.ack(&[entry.id.as_str()]).await?;
                }
                Err(e) => streams::reject(reader, entry, &e.to_string()).await?,
            }
        }
        Ok(())
    }

    fn failed(&self, _error: &BatchError) {
        telemetry::batch_failed(self.part());
    }
}

/// The reader of device receipts of replica `instance`.
pub async fn receipts_reader(shared: &Shared, instance: &str) -> Result<GroupReader, BusError> {
    let name = format!("{instance}-receipts");
    streams::reader(shared, &shared.cfg.names.cps_receipts(), &name).await
}

/// Applies the devices' receipts.
pub struct Receipts(pub Shared);

/// A receipt checked: the command, its new status, the device's detail.
fn parse_receipt(m: &DeviceMessage) -> Result<(Uuid, &'static str, Option<String>), String> {
    let id = m
        .extra
        .get("command_id")
        .and_then(Value::as_str)
        .ok_or("a receipt needs command_id (the command's id)")?;
    let id = Uuid::parse_str(id).map_err(|_| format!("command_id {id:?} is not a UUID"))?;
    let status = match m.extra.get("outcome").and_then(Value::as_str) {
        Some("done") => cs::DONE,
        Some("failed") => cs::FAILED,
        other => {
            return Err(format!(
                "a receipt's outcome is \"done\" or \"failed\", not {other:?}"
            ))
        }
    };
    let detail = match m.extra.get("detail") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= 1000 => Some(s.clone()),
        Some(_) => return Err("a receipt's detail is a string of at most 1000 characters".into()),
    };
    Ok((id, status, detail))
}

impl BatchHandler for Receipts {
    type Error = BatchError;

    fn part(&self) -> &'static str {
        "receipts"
    }

    async fn handle(&self, reader: &GroupReader, entries: Vec<Entry>) -> Result<(), BatchError> {
        let shared = &self.0;
        for entry in &entries {
            let message =
                match model::parse::<DeviceMessage>(entry.data.as_deref().unwrap_or_default()) {
                    Ok(m) => m,
                    Err(e) => {
                        streams::reject(reader, entry, &e.to_string()).await?;
                        continue;
                    }
                };
            let (id, status, detail) = match parse_receipt(&message) {
                Ok(r) => r,
                Err(reason) => {
                    streams::reject(reader, entry, &reason).await?;
                    continue;
                }
            };
            let mut conn = shared.pool.acquire().await?;
            let row = db::get_command(&mut conn, id, false).await?;
            drop(conn);
            match row {
                Some(row) if row.device_id == message.device_id => {
                    let applied = advance(
                        shared,
                        id,
                        status,
                        detail.as_deref(),
                        &message.device_id,
                        true,
                    )
                    .await?;
                    if !applied {
                        tracing::info!(command = %id, device = %message.device_id, status, current = %row.status, "a receipt for a command past that status: kept as it is");
                    }
                    reader.ack(&[entry.id.as_str()]).await?;
                }
                Some(row) => {
                    let reason = format!(
                        "receipt from device {} for command {id} of device {}",
                        message.device_id, row.device_id
                    );
                    streams::reject(reader, entry, &reason).await?;
                }
                None if db::is_challenge_command(&shared.pool, id).await? => {
                    // An attest command: its answer is the attestation report.
                    reader.ack(&[entry.id.as_str()]).await?;
                }
                None => {
                    let reason = format!("receipt for an unknown command {id}");
                    streams::reject(reader, entry, &reason).await?;
                }
            }
        }
        Ok(())
    }

    fn failed(&self, _error: &BatchError) {
        telemetry::batch_failed(self.part());
    }
}

/// Marks commands with no receipt by their expiry (plus `--receipt-grace`) `unconfirmed`;
/// returns how many.
pub async fn sweep_unconfirmed(shared: &Shared) -> Result<usize, BatchError> {
    let mut conn = shared.pool.acquire().await?;
    let due = db::unconfirmed_commands(&mut conn, shared.cfg.receipt_grace, SWEEP_LIMIT).await?;
    drop(conn);
    let mut n = 0;
    for row in due {
        let reason = format!("no receipt from the device by {}", row.expires_at);
        if advance(shared, row.id, cs::UNCONFIRMED, Some(&reason), ACTOR, false).await? {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_read_as_words() {
        assert_eq!(title("firmware_update"), "Firmware update");
        assert_eq!(title("quarantine"), "Quarantine");
    }
}
