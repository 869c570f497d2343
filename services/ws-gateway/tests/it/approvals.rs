//! Approval decisions: once, across replicas and concurrent clicks; expiry, once; the API's
//! answers to bad requests.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use aurora_core::auth::Permission;
use aurora_core::names::Channel;
use aurora_core::Names;
use chrono::Utc;
use common::*;
use serde_json::{json, Value};
use uuid::Uuid;

/// The documents of the approvals stream about this approval, oldest first.
async fn history(names: &Names, id: Uuid) -> Vec<Value> {
    stream_values(&redis(REDIS_URL).await, &names.approvals())
        .await
        .into_iter()
        .filter(|d| d["id"] == id.to_string())
        .collect()
}

async fn post(gw: &TestGateway, id: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = http()
        .post(format!("http://{}/api/v1/approvals/{id}/decision", gw.http))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn two_analysts_on_two_replicas_decide_at_once_and_exactly_one_wins() {
    let names = aurora_testkit::names();
    let a = TestGateway::start_in(&names, aurora_testkit::REDIS_URL, |_| {}).await;
    let b = TestGateway::start_in(&names, aurora_testkit::REDIS_URL, |_| {}).await;
    let t = token(&[Permission::ApprovalsManage]);
    let mut watcher = b.connect(Channel::Approvals, &t).await;

    let p = redis(REDIS_URL).await;
    for round in 0..5 {
        let id = Uuid::new_v4();
        xadd_json(
            &p,
            &names.approvals(),
            &approval(id, chrono::Duration::hours(4)),
        )
        .await;
        assert_eq!(next_json(&mut watcher, WAIT).await["status"], "pending");
        wait_state(&names, id, "pending").await;

        let alice = token_valid_for(
            "alice",
            &[Permission::ApprovalsManage],
            Duration::from_secs(60),
        );
        let bob = token_valid_for(
            "bob",
            &[Permission::ApprovalsManage],
            Duration::from_secs(60),
        );
        let sid = id.to_string();
        let (ra, rb) = tokio::join!(
            post(
                &a,
                &sid,
                Some(&alice),
                r#"{"decision":"approve","comment":"go"}"#
            ),
            post(&b, &sid, Some(&bob), r#"{"decision":"reject"}"#),
        );
        let mut codes = [ra.0, rb.0];
        codes.sort();
        assert_eq!(codes, [200, 409], "round {round}: {ra:?} {rb:?}");
        let (winner, doc) = if ra.0 == 200 {
            ("alice", ra.1)
        } else {
            ("bob", rb.1)
        };
        assert_eq!(doc["decided_by"], winner);
        assert!(doc["decided_at"].is_string());
        assert_eq!(doc["x_custom"], "kept", "unknown fields survive");

        // One decided document in the stream, and every approvals client sees it.
        let decided = next_json(&mut watcher, WAIT).await;
        assert_eq!(decided["id"], sid);
        assert_eq!(decided["decided_by"], winner);
        let docs = history(&names, id).await;
        assert_eq!(docs.len(), 2, "pending + exactly one decision: {docs:?}");

        // Any later click is a conflict that names the outcome.
        let (code, body) = post(&a, &sid, Some(&alice), r#"{"decision":"approve"}"#).await;
        assert_eq!(code, 409);
        assert_eq!(body["status"], docs[1]["status"]);
    }
}

#[tokio::test]
async fn an_approval_past_its_expiry_is_expired_once_by_the_replicas() {
    let names = aurora_testkit::names();
    let fast = |a: &mut ws_gateway::Args| a.expiry_sweep_interval = Duration::from_millis(100);
    let a = TestGateway::start_in(&names, aurora_testkit::REDIS_URL, fast).await;
    let _b = TestGateway::start_in(&names, aurora_testkit::REDIS_URL, fast).await;
    let p = redis(REDIS_URL).await;
    let id = Uuid::new_v4();
    xadd_json(
        &p,
        &names.approvals(),
        &approval(id, chrono::Duration::seconds(1)),
    )
    .await;
    wait_state(&names, id, "expired").await;
    // Give the other replica's sweeper time to (not) expire it again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let docs = history(&names, id).await;
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert_eq!(docs[1]["status"], "expired");
    let (code, body) = post(
        &a,
        &id.to_string(),
        Some(&all_token()),
        r#"{"decision":"approve"}"#,
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(body["status"], "expired");
}

#[tokio::test]
async fn an_approval_written_while_no_gateway_ran_can_be_decided() {
    let names = aurora_testkit::names();
    let p = redis(REDIS_URL).await;
    let id = Uuid::new_v4();
    xadd_json(
        &p,
        &names.approvals(),
        &approval(id, chrono::Duration::hours(1)),
    )
    .await;
    let gw = TestGateway::start_in(&names, aurora_testkit::REDIS_URL, |_| {}).await;
    let (code, doc) = post(
        &gw,
        &id.to_string(),
        Some(&all_token()),
        r#"{"decision":"reject","comment":"false positive"}"#,
    )
    .await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["status"], "rejected");
    assert_eq!(doc["comment"], "false positive");
}

#[tokio::test]
async fn the_decision_api_refuses_what_it_must() {
    let gw = TestGateway::start(|_| {}).await;
    let p = redis(REDIS_URL).await;
    let id = Uuid::new_v4();
    xadd_json(
        &p,
        &gw.names.approvals(),
        &approval(id, chrono::Duration::hours(1)),
    )
    .await;
    wait_state(&gw.names, id, "pending").await;
    let sid = id.to_string();
    let ok = r#"{"decision":"approve"}"#;

    assert_eq!(post(&gw, &sid, None, ok).await.0, 401);
    assert_eq!(post(&gw, &sid, Some("garbage"), ok).await.0, 401);
    let alerts_only = token(&[Permission::WsAlerts]);
    assert_eq!(post(&gw, &sid, Some(&alerts_only), ok).await.0, 403);
    // The refusals of every service's API: a JSON error, and the scheme to use on a 401.
    let (_, forbidden) = post(&gw, &sid, Some(&alerts_only), ok).await;
    assert!(forbidden["error"].is_string(), "{forbidden}");
    let unauthenticated = http()
        .post(format!(
            "http://{}/api/v1/approvals/{sid}/decision",
            gw.http
        ))
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    assert_eq!(
        unauthenticated
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let body: Value = unauthenticated.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    let t = token(&[Permission::ApprovalsManage]);
    for bad in [
        "",
        "not json",
        r#"{"decision":"maybe"}"#,
        r#"{"comment":"no decision"}"#,
    ] {
        assert_eq!(post(&gw, &sid, Some(&t), bad).await.0, 400, "{bad:?}");
    }
    let long = json!({"decision": "approve", "comment": "x".repeat(5000)}).to_string();
    assert_eq!(post(&gw, &sid, Some(&t), &long).await.0, 400);
    assert_eq!(
        post(&gw, &Uuid::new_v4().to_string(), Some(&t), ok).await.0,
        404
    );
    assert_eq!(post(&gw, "not-a-uuid", Some(&t), ok).await.0, 404);
    // None of that touched the approval.
    assert_eq!(state(&gw.names, id).await.as_deref(), Some("pending"));
    assert_eq!(post(&gw, &sid, Some(&t), ok).await.0, 200);
}

/// A pending approval of a device action, as device-registry writes it, asked by `by`.
fn device_action(id: Uuid, by: &str) -> Value {
    let action = aurora_core::approval::DeviceAction::new(
        Uuid::new_v4(),
        "dev-7",
        "quarantine",
        json!({"reason": "C2 beacon"}),
    );
    let mut doc = approval(id, chrono::Duration::hours(1));
    doc["requested_by"] = json!(by);
    doc["context"] = serde_json::to_value(action).unwrap();
    // A proof written in by whoever wrote the pending document is never carried.
    doc["approval"] = json!({"forged": true});
    doc
}

#[tokio::test]
async fn the_requester_cannot_approve_and_an_approved_device_action_carries_the_gateways_signature()
{
    let key = aurora_core::approval::SigningKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("approval.key");
    std::fs::write(&key_file, key.to_base64()).unwrap();
    let keyless = TestGateway::start(|_| {}).await;
    let names = keyless.names.clone();
    let gw = TestGateway::start_in(&names, REDIS_URL, |a| {
        a.approval_signing_key = Some(key_file.clone());
        a.approval_action_ttl = Duration::from_secs(120);
    })
    .await;
    let p = redis(REDIS_URL).await;
    let id = Uuid::new_v4();
    xadd_json(&p, &names.approvals(), &device_action(id, "alice")).await;
    wait_state(&names, id, "pending").await;
    let sid = id.to_string();
    let approve = r#"{"decision":"approve"}"#;

    // Alice asked: she cannot approve it, on any replica.
    let alice = token_for("alice", &[Permission::ApprovalsManage]);
    for g in [&keyless, &gw] {
        let (status, body) = post(g, &sid, Some(&alice), approve).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("another analyst"),
            "{body}"
        );
    }
    // Bob can, but not on a gateway without a signing key.
    let bob = token_for("bob", &[Permission::ApprovalsManage]);
    let (status, body) = post(&keyless, &sid, Some(&bob), approve).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("signing key"),
        "{body}"
    );
    assert_eq!(state(&names, id).await.as_deref(), Some("pending"));
    let (status, body) = post(&gw, &sid, Some(&bob), approve).await;
    assert_eq!(status, 200, "{body}");

    // The decision on the stream carries a proof that verifies against the gateway's public
    // key for exactly this action, and nothing else.
    let decided: aurora_core::model::Approval = serde_json::from_value(
        history(&names, id)
            .await
            .into_iter()
            .find(|d| d["status"] == "approved")
            .unwrap(),
    )
    .unwrap();
    let proof: aurora_core::approval::ActionProof =
        serde_json::from_value(decided.extra["approval"].clone()).unwrap();
    assert_eq!(proof.approved_by, "bob");
    assert_eq!(proof.approval_id, id);
    let ttl = proof.not_after - Utc::now();
    assert!(
        ttl > chrono::Duration::seconds(100) && ttl <= chrono::Duration::seconds(120),
        "{ttl}"
    );
    let keys = aurora_core::approval::ApproverKeys::parse(&[key.public_base64()]).unwrap();
    let mut action = aurora_core::approval::DeviceAction::from_context(&decided.context)
        .unwrap()
        .unwrap();
    assert_eq!(keys.verify(&action, &proof, Utc::now()), Ok(()));
    action.device_id = "dev-8".into();
    assert!(keys.verify(&action, &proof, Utc::now()).is_err());

    // Rejecting one's own request is allowed (a withdrawal).
    let other = Uuid::new_v4();
    xadd_json(&p, &names.approvals(), &device_action(other, "alice")).await;
    wait_state(&names, other, "pending").await;
    let (status, body) = post(
        &gw,
        &other.to_string(),
        Some(&alice),
        r#"{"decision":"reject"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "rejected");
    assert!(body.get("approval").is_none(), "{body}");
}
