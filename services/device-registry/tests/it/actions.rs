//! Device actions: a privileged request waits for an approval, runs once when another analyst
//! approved it with a valid proof, and never when the approval was rejected, expired, forged
//! or given by the requester; the bridge's statuses and the device's receipt move the command
//! on; no receipt by the deadline is `unconfirmed` with an alert; every step is an audit event,
//! in order. The approving gateway is stood in for by the test (its signing key and decision
//! documents); the whole chain with the real gateway and bridge is in tests/tests/it/device_actions.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use aurora_core::approval::{DeviceAction, SigningKey, PROOF_FIELD};
use aurora_core::auth::Permission;
use aurora_core::bus::Conn;
use aurora_core::model::{Approval, ApprovalStatus};
use aurora_core::Names;
use chrono::Utc;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn one_device(names: &Names, conn: &Conn, pool: &sqlx::PgPool) -> String {
    let d = SimDevice::new("act");
    xadd_json(conn, &names.cps_registrations(), &d.seen(Utc::now())).await;
    aurora_testkit::wait_until(LONG, "the device registered", || async {
        device_status(pool, &d.id).await.map(|_| ())
    })
    .await;
    d.id
}

/// The pending approval of `approval_id` on the approvals stream.
async fn pending(conn: &Conn, names: &Names, approval_id: &str) -> Approval {
    let docs = wait_matching(conn, &names.approvals(), 1, "the pending approval", |v| {
        v["id"] == approval_id && v["status"] == "pending"
    })
    .await;
    serde_json::from_value(docs[0].clone()).unwrap()
}

/// What the gateway writes when `by` decides: the approval with its status and, approved,
/// a proof signed by `key` valid for `valid`.
fn decided(
    mut a: Approval,
    status: ApprovalStatus,
    by: &str,
    key: Option<&SigningKey>,
    valid: Duration,
) -> Value {
    a.status = status;
    a.decided_by = Some(by.to_string());
    a.decided_at = Some(Utc::now());
    if let Some(key) = key {
        let action = DeviceAction::from_context(&a.context).unwrap().unwrap();
        let proof = key.sign(
            &action,
            a.id,
            by,
            Utc::now() + chrono::Duration::from_std(valid).unwrap(),
        );
        a.extra
            .insert(PROOF_FIELD.into(), serde_json::to_value(proof).unwrap());
    }
    serde_json::to_value(a).unwrap()
}

/// The gateway's decision on a pending approval: see [`decided`].
async fn answer(
    conn: &Conn,
    names: &Names,
    approval_id: &str,
    status: ApprovalStatus,
    by: &str,
    key: Option<&SigningKey>,
    valid: Duration,
) {
    let approval = pending(conn, names, approval_id).await;
    xadd_json(
        conn,
        &names.approvals(),
        &decided(approval, status, by, key, valid),
    )
    .await;
}

async fn command_status(base: &str, id: &str) -> Value {
    let read = token(&[Permission::DevicesRead]);
    let (s, body) = call(
        base,
        Method::GET,
        &format!("/api/v1/commands/{id}"),
        &read,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

async fn wait_command(base: &str, id: &str, status: &str) -> Value {
    aurora_testkit::wait_until(LONG, &format!("command {id} {status}"), || async {
        let c = command_status(base, id).await;
        (c["status"] == status).then_some(c)
    })
    .await
}

/// The audit actions of one command, in stream order.
async fn trail(conn: &Conn, names: &Names, command_id: &str) -> Vec<String> {
    stream_values(conn, &names.audit())
        .await
        .into_iter()
        .filter(|e| e["details"]["command_id"] == command_id)
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

fn commands_for(values: &[Value], device: &str, action: &str) -> usize {
    values
        .iter()
        .filter(|c| c["device_id"] == device && c["action"] == action)
        .count()
}

#[tokio::test]
async fn a_privileged_action_runs_only_once_another_analyst_approved_it_with_a_valid_proof() {
    let key = SigningKey::generate();
    let public = key.public_base64();
    let reg = Registry::start(move |c| {
        c.approver_keys = aurora_core::approval::ApproverKeys::parse(&[public]).unwrap();
    })
    .await;
    let (names, conn, base) = (&reg.names, &reg.conn, reg.svc.base.clone());
    let dev = one_device(names, conn, &reg.pool).await;
    let alice = token_for("alice", &[Permission::DevicesWrite]);
    let quarantine = || async {
        let (s, body) = call(
            &base,
            Method::POST,
            &format!("/api/v1/devices/{dev}/quarantine"),
            &alice,
            Some(json!({"reason": "C2 beacon"})),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["status"], "awaiting_approval");
        (
            body["command_id"].as_str().unwrap().to_string(),
            body["approval_id"].as_str().unwrap().to_string(),
        )
    };

    // Requested: an approval naming the device, the action and who asked; nothing runs.
    let (forged_cmd, forged_approval) = quarantine().await;
    let approval = pending(conn, names, &forged_approval).await;
    assert_eq!(approval.requested_by, "alice");
    assert_eq!(approval.context["device_id"], dev.as_str());
    assert_eq!(approval.context["device_action"], "quarantine");
    assert!(approval.action.contains(&dev), "{}", approval.action);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(
        device_status(&reg.pool, &dev).await.as_deref(),
        Some("quarantined")
    );

    // Approved with a proof of a key the registry does not know: refused, with an alert.
    let forger = SigningKey::generate();
    xadd_json(
        conn,
        &names.approvals(),
        &decided(
            approval,
            ApprovalStatus::Approved,
            "bob",
            Some(&forger),
            Duration::from_secs(60),
        ),
    )
    .await;
    let c = wait_command(&base, &forged_cmd, "refused").await;
    assert!(
        c["status_reason"].as_str().unwrap().contains("unknown key"),
        "{c}"
    );

    // Approved by the requester herself, with a valid signature: refused.
    let (own_cmd, own_approval) = quarantine().await;
    answer(
        conn,
        names,
        &own_approval,
        ApprovalStatus::Approved,
        "alice",
        Some(&key),
        Duration::from_secs(60),
    )
    .await;
    let c = wait_command(&base, &own_cmd, "refused").await;
    assert!(
        c["status_reason"].as_str().unwrap().contains("requester"),
        "{c}"
    );

    // Rejected, and expired: ended with that status.
    let (rejected_cmd, rejected_approval) = quarantine().await;
    answer(
        conn,
        names,
        &rejected_approval,
        ApprovalStatus::Rejected,
        "bob",
        None,
        Duration::ZERO,
    )
    .await;
    wait_command(&base, &rejected_cmd, "rejected").await;
    let (expired_cmd, expired_approval) = quarantine().await;
    let mut approval = pending(conn, names, &expired_approval).await;
    approval.decided_by = None;
    let mut doc = decided(approval, ApprovalStatus::Expired, "-", None, Duration::ZERO);
    doc.as_object_mut().unwrap().remove("decided_by");
    xadd_json(conn, &names.approvals(), &doc).await;
    wait_command(&base, &expired_cmd, "approval_expired").await;
    assert_eq!(
        commands_for(
            &stream_values(conn, &names.cps_commands()).await,
            &dev,
            "quarantine"
        ),
        0,
        "nothing was sent for a refused, rejected or expired request"
    );
    assert_ne!(
        device_status(&reg.pool, &dev).await.as_deref(),
        Some("quarantined")
    );

    // Approved by another analyst with a valid proof, the decision read twice: one command,
    // carrying the proof; the device is quarantined.
    let (cmd, approval_id) = quarantine().await;
    let approval = pending(conn, names, &approval_id).await;
    let doc = decided(
        approval,
        ApprovalStatus::Approved,
        "bob",
        Some(&key),
        Duration::from_secs(60),
    );
    xadd_json(conn, &names.approvals(), &doc).await;
    xadd_json(conn, &names.approvals(), &doc).await;
    let c = wait_command(&base, &cmd, "queued").await;
    assert_eq!(c["decided_by"], "bob");
    let sent = wait_matching(
        conn,
        &names.cps_commands(),
        1,
        "the approved command",
        |v| v["id"] == cmd.as_str(),
    )
    .await;
    assert_eq!(sent[0]["approval"]["approved_by"], "bob", "{}", sent[0]);
    assert_eq!(sent[0]["approval"]["approval_id"], approval_id.as_str());
    assert!(sent[0]["expires_at"].is_string());
    wait_status(&reg.pool, &dev, "quarantined").await;

    // The bridge says it is sent; the device says it is done (and a second, late receipt
    // changes nothing).
    xadd_json(
        conn,
        &names.cps_command_status(),
        &json!({"command_id": cmd, "device_id": dev, "status": "sent", "at": Utc::now()}),
    )
    .await;
    wait_command(&base, &cmd, "sent").await;
    // The bridge refusing a second entry of the same command (a replay) does not undo `sent`.
    xadd_json(
        conn,
        &names.cps_command_status(),
        &json!({"command_id": cmd, "device_id": dev, "status": "failed", "reason": "replayed", "at": Utc::now()}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(command_status(&base, &cmd).await["status"], "sent");
    let receipt = |outcome: &str| json!({"device_id": dev, "message_type": "receipt", "command_id": cmd, "outcome": outcome});
    xadd_json(conn, &names.cps_receipts(), &receipt("done")).await;
    wait_command(&base, &cmd, "done").await;
    xadd_json(conn, &names.cps_receipts(), &receipt("failed")).await;

    // Receipts that do not hold: dead-lettered with the reason.
    let other = one_device(names, conn, &reg.pool).await;
    xadd_json(
        conn,
        &names.cps_receipts(),
        &json!({"device_id": other, "message_type": "receipt", "command_id": cmd, "outcome": "done"}),
    )
    .await;
    xadd_json(
        conn,
        &names.cps_receipts(),
        &json!({"device_id": dev, "message_type": "receipt", "command_id": cmd, "outcome": "maybe"}),
    )
    .await;
    xadd_json(
        conn,
        &names.cps_receipts(),
        &json!({"device_id": dev, "message_type": "receipt", "command_id": uuid::Uuid::new_v4(), "outcome": "done"}),
    )
    .await;
    let dead = wait_matching(conn, &names.deadletter(GROUP), 3, "3 bad receipts", |_| {
        true
    })
    .await;
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d["reason"].as_str().unwrap_or_default())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("of device")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("outcome")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("unknown command")),
        "{reasons:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(command_status(&base, &cmd).await["status"], "done");

    // The trail of each request, in order; a refused one raised an alert.
    assert_eq!(
        trail(conn, names, &cmd).await,
        [
            "device_action.requested",
            "device_action.approved",
            "device_action.sent",
            "device_action.done"
        ]
    );
    assert_eq!(
        trail(conn, names, &forged_cmd).await,
        ["device_action.requested", "device_action.refused"]
    );
    assert_eq!(
        trail(conn, names, &rejected_cmd).await,
        ["device_action.requested", "device_action.rejected"]
    );
    let alerts = stream_values(conn, &names.alerts()).await;
    assert!(
        alerts
            .iter()
            .any(|a| a["command_id"] == forged_cmd.as_str() && a["severity"] == "high"),
        "{alerts:?}"
    );
    assert_eq!(
        commands_for(
            &stream_values(conn, &names.cps_commands()).await,
            &dev,
            "quarantine"
        ),
        1
    );
    // The device's command list shows them all.
    let read = token(&[Permission::DevicesRead]);
    let (s, list) = call(
        &base,
        Method::GET,
        &format!("/api/v1/devices/{dev}/commands"),
        &read,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["commands"].as_array().unwrap().len(), 5, "{list}");
}

#[tokio::test]
async fn no_receipt_by_the_deadline_is_unconfirmed_and_a_privileged_one_raises_an_alert() {
    let key = SigningKey::generate();
    let public = key.public_base64();
    let reg = Registry::start(move |c| {
        c.approver_keys = aurora_core::approval::ApproverKeys::parse(&[public]).unwrap();
        c.receipt_grace = Duration::from_millis(200);
    })
    .await;
    let (names, conn, base) = (&reg.names, &reg.conn, reg.svc.base.clone());
    let dev = one_device(names, conn, &reg.pool).await;
    let alice = token_for("alice", &[Permission::DevicesWrite]);

    // A reboot (privileged), approved for one second; a plain command with a one-second TTL.
    let (s, body) = call(
        &base,
        Method::POST,
        &format!("/api/v1/devices/{dev}/commands"),
        &alice,
        Some(json!({"action": "reboot"})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let reboot = body["command_id"].as_str().unwrap().to_string();
    answer(
        conn,
        names,
        body["approval_id"].as_str().unwrap(),
        ApprovalStatus::Approved,
        "bob",
        Some(&key),
        Duration::from_secs(1),
    )
    .await;
    let (s, body) = call(
        &base,
        Method::POST,
        &format!("/api/v1/devices/{dev}/commands"),
        &alice,
        Some(json!({"action": "blink", "ttl_seconds": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    let blink = body["command_id"].as_str().unwrap().to_string();

    let c = wait_command(&base, &reboot, "unconfirmed").await;
    assert!(
        c["status_reason"].as_str().unwrap().contains("no receipt"),
        "{c}"
    );
    wait_command(&base, &blink, "unconfirmed").await;
    let alerts = wait_matching(conn, &names.alerts(), 1, "the unconfirmed alert", |a| {
        a["command_id"] == reboot.as_str()
    })
    .await;
    assert_eq!(alerts[0]["command_status"], "unconfirmed");
    assert!(
        stream_values(conn, &names.alerts())
            .await
            .iter()
            .all(|a| a["command_id"] != blink.as_str()),
        "a plain command raises no alert"
    );
    // A key change is applied by the registry itself once approved.
    let new_key = SigningKey::generate();
    let (s, body) = call(
        &base,
        Method::PUT,
        &format!("/api/v1/devices/{dev}/key"),
        &alice,
        Some(json!({"public_key": new_key.public_base64()})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let change = body["command_id"].as_str().unwrap().to_string();
    answer(
        conn,
        names,
        body["approval_id"].as_str().unwrap(),
        ApprovalStatus::Approved,
        "bob",
        Some(&key),
        Duration::from_secs(60),
    )
    .await;
    wait_command(&base, &change, "done").await;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT public_key FROM devices WHERE device_id = $1")
        .bind(&dev)
        .fetch_one(&reg.pool)
        .await
        .unwrap();
    assert_eq!(
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, stored),
        new_key.public_base64()
    );

    // A late receipt still closes it.
    xadd_json(
        conn,
        &names.cps_receipts(),
        &json!({"device_id": dev, "message_type": "receipt", "command_id": reboot, "outcome": "done"}),
    )
    .await;
    wait_command(&base, &reboot, "done").await;
}

#[tokio::test]
async fn without_an_approver_key_a_privileged_request_is_refused_and_a_plain_one_queued() {
    let reg = Registry::start(|_| {}).await;
    let (names, conn, base) = (&reg.names, &reg.conn, reg.svc.base.clone());
    let dev = one_device(names, conn, &reg.pool).await;
    let write = token(&[Permission::DevicesWrite]);
    let (s, body) = call(
        &base,
        Method::POST,
        &format!("/api/v1/devices/{dev}/quarantine"),
        &write,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--approval-public-keys"),
        "{body}"
    );
    let (s, body) = call(
        &base,
        Method::PUT,
        &format!("/api/v1/devices/{dev}/key"),
        &write,
        Some(json!({"public_key": SigningKey::generate().public_base64()})),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (s, body) = call(
        &base,
        Method::POST,
        &format!("/api/v1/devices/{dev}/commands"),
        &write,
        Some(json!({"action": "update_config", "params": {"rate": 5}})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    let sent = stream_values(conn, &names.cps_commands()).await;
    assert_eq!(commands_for(&sent, &dev, "update_config"), 1);
    assert_eq!(commands_for(&sent, &dev, "quarantine"), 0);
}
