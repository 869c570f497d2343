//! An approval decision continues the trace of the request that asked for it, exported by the
//! real binary to a real OTLP/HTTP receiver: the pending approval's entry carries a
//! `traceparent`, the gateway keeps it with the approval's state, and the decision is an
//! `<approvals stream> publish` span (producer), its child, whose context the decided entry
//! carries.
#![allow(clippy::unwrap_used)]

use crate::common;

use aurora_core::auth::Permission;
use common::*;
use serde_json::json;
use uuid::Uuid;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REQUEST_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_is_the_child_of_the_context_its_pending_approval_carried() {
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let receiver = OtlpReceiver::start().await;
    let mut site = Site::new(&names, "site-a", 0)
        .with_binary(Svc::WsGateway, env!("CARGO_BIN_EXE_ws-gateway"));
    site.redis_url = REDIS_URL.to_string();
    site.shutdown_timeout = "5s".into();
    site.extra_env = receiver.service_env();
    let mut gateway = site.start(Svc::WsGateway, &[]).await;

    let id = Uuid::new_v4();
    let doc = approval(id, chrono::Duration::hours(1));
    let mut conn = redis(REDIS_URL).await;
    let _: String = redis::cmd("XADD")
        .arg(names.approvals())
        .arg("*")
        .arg("data")
        .arg(doc.to_string())
        .arg("traceparent")
        .arg(format!("00-{TRACE_ID}-{REQUEST_SPAN}-01"))
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_state(&names, id, "pending").await;

    let alice = token_for("alice", &[Permission::ApprovalsManage]);
    let res = http()
        .post(gateway.http_url(&format!("/api/v1/approvals/{id}/decision")))
        .bearer_auth(alice)
        .json(&json!({"decision": "reject", "comment": "not now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{:?}", res.text().await);

    let approvals = names.approvals();
    let decision = receiver
        .wait_span("the decision's span", |s| {
            s.trace_id == TRACE_ID && s.name == format!("{approvals} publish")
        })
        .await;
    assert_eq!(decision.service, "ws-gateway");
    assert_eq!(
        decision.parent_span_id, REQUEST_SPAN,
        "the pending entry's context"
    );
    assert_eq!(decision.kind, 4, "a producer span");
    assert_eq!(
        decision.messaging(),
        (Some("redis"), Some("publish"), Some(approvals.as_str()))
    );

    let decided = traced_entries(&conn, &approvals)
        .await
        .into_iter()
        .find(|e| e.data.to_string().contains("\"rejected\""))
        .expect("the decided entry");
    assert_eq!(
        decision.attribute("messaging.message.id"),
        Some(decided.id.as_str())
    );
    assert_eq!(
        decided.traceparent.as_deref(),
        Some(format!("00-{TRACE_ID}-{}-01", decision.span_id).as_str()),
        "the decided entry carries the decision's context"
    );

    gateway.terminate().await;
}
