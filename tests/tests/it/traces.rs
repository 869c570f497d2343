//! One Suricata alert raised at site A and shown on site B's console is one trace, exported
//! by every service it crosses to a real OTLP/HTTP receiver: eve-ingest at A maps it, A's
//! federation-gateway exports it, B's imports it, and B's ws-gateway fans it out with the
//! trace's `traceparent` offered in the frame.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use aurora_core::auth::Permission;
use aurora_core::names::Channel;
use aurora_e2e::suricata_alert_line;
use aurora_testkit::prelude::*;
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suricata_alert_shown_on_another_sites_console_is_one_trace() {
    let names = aurora_testkit::names();
    let receiver = OtlpReceiver::start().await;
    // The log quieted to warnings: the spans are exported all the same.
    let mut env = receiver.service_env();
    env.push(("RUST_LOG".into(), "warn".into()));
    let mut a = Site::new(&names, "site-a", 4);
    a.extra_env = env.clone();
    let mut b = Site::new(&names, "site-b", 12);
    b.extra_env = env;
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&a.redis_url, &b.redis_url]);
    let _fed_b = b.start(Svc::FederationGateway, &[]).await;
    let ws_b = b.start(Svc::WsGateway, &[]).await;
    let _fed_a = a.start(Svc::FederationGateway, &[]).await;
    let _eve_a = a.start(Svc::EveIngest, &[]).await;
    let query = format!("token={}", token(&[Permission::WsAlerts]));
    let (mut console, _) = tokio_tungstenite::connect_async(ws_b.ws_url(Channel::Alerts, &query))
        .await
        .unwrap();

    let mut conn = redis(&a.redis_url).await;
    lpush(
        &mut conn,
        &names.suricata_list(),
        &[suricata_alert_line().into_bytes()],
    )
    .await;

    // The alert on B's console, with its trace.
    let frame: Value = tokio::time::timeout(WAIT, async {
        loop {
            match console.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["source"] == "suricata" {
                        return v;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the console closed: {other:?}"),
            }
        }
    })
    .await
    .expect("the Suricata alert on site B's console");
    assert_eq!(frame["origin_site"], "site-a", "{frame}");
    let traceparent = frame["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the frame offers its traceparent: {frame}"));
    let trace_id = traceparent.split('-').nth(1).unwrap().to_string();

    // Every hop's spans are in that one trace, each the child of the one before.
    let spans = receiver.trace(&trace_id, Duration::from_secs(2)).await;
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for service in ["eve-ingest", "federation-gateway", "ws-gateway"] {
        assert!(
            services.contains(service),
            "{service} in the trace: {spans:#?}"
        );
    }
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {spans:#?}");
    assert_eq!(roots[0].service, "eve-ingest", "{spans:#?}");
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    for s in &spans {
        assert!(
            s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str()),
            "every parent is in the trace: {s:?}"
        );
    }
    let parent_of_frame = traceparent.split('-').nth(2).unwrap();
    assert!(
        ids.contains(parent_of_frame),
        "the frame's context is a span of the trace"
    );
}
