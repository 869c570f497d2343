//! One alert crossing two sites is one trace, exported to a real OTLP/HTTP receiver: the
//! alert's entry at site A carries its writer's context (as eve-ingest's would); site A's
//! export processes it (`<stream> process`, the child of that context) and publishes it
//! (`<subject> publish`, the child of the process span, its context in the NATS headers);
//! site B imports it (`<subject> process`, the child of the publish span) and the landed
//! entry carries the import span's context.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use aurora_testkit::cleanup::cleanup;
use aurora_testkit::prelude::*;
use common::{alert, uid};

const SITE_A_REDIS: &str = "redis://127.0.0.1:6379/1";
const SITE_B_REDIS: &str = "redis://127.0.0.1:6379/2";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const ORIGIN_SPAN: &str = "b7ad6b7169203331";

/// The `traceparent` field of the entry of `stream` whose document has `id`.
async fn traceparent_of(
    conn: &mut aurora_core::bus::Conn,
    stream: &str,
    id: &str,
) -> Option<String> {
    traced_entries(conn, stream)
        .await
        .into_iter()
        .find(|e| e.data["id"] == id)?
        .traceparent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_crossing_two_sites_is_one_trace() {
    let names = aurora_testkit::names();
    let receiver = OtlpReceiver::start().await;
    let binary = env!("CARGO_BIN_EXE_federation-gateway");
    let mut site_a = Site::new(&names, "site-a", 1).with_binary(Svc::FederationGateway, binary);
    site_a.extra_env = receiver.service_env();
    let mut site_b = Site::new(&names, "site-b", 2).with_binary(Svc::FederationGateway, binary);
    site_b.extra_env = receiver.service_env();
    let mut gateway_b = site_b.start(Svc::FederationGateway, &[]).await;
    let mut gateway_a = site_a.start(Svc::FederationGateway, &[]).await;

    let doc = alert("traced");
    let id = uid("traced");
    let mut ra = redis(SITE_A_REDIS).await;
    let origin = format!("00-{TRACE_ID}-{ORIGIN_SPAN}-01");
    let _: String = redis::cmd("XADD")
        .arg(names.alerts())
        .arg("*")
        .arg("data")
        .arg(doc.to_string())
        .arg("traceparent")
        .arg(&origin)
        .query_async(&mut ra)
        .await
        .unwrap();

    // Site B's alerts stream has the same name, and B's export reads the landed alert in the
    // same trace: each span is told by its parent.
    let stream = names.alerts();
    let export = receiver
        .wait_span("site A's process span, the child of the writer's", |s| {
            s.trace_id == TRACE_ID
                && s.name == format!("{stream} process")
                && s.parent_span_id == ORIGIN_SPAN
        })
        .await;
    assert_eq!(export.service, "federation-gateway");
    assert_eq!(export.kind, 5, "a consumer span");
    let publish = receiver
        .wait_span(
            "site A's publish span, the child of its process span",
            |s| s.trace_id == TRACE_ID && s.parent_span_id == export.span_id,
        )
        .await;
    assert!(publish.name.ends_with(" publish"), "{}", publish.name);
    assert_eq!(publish.kind, 4, "a producer span");
    assert_eq!(publish.attribute("messaging.system"), Some("nats"));
    let subject = publish.name.trim_end_matches(" publish").to_string();
    let import = receiver
        .wait_span("site B's import span, the child of A's publish", |s| {
            s.trace_id == TRACE_ID && s.parent_span_id == publish.span_id
        })
        .await;
    assert_eq!(import.name, format!("{subject} process"));
    assert_eq!(import.kind, 5, "a consumer span");

    let rb = redis(SITE_B_REDIS).await;
    let landed = wait_until(WAIT, "the alert landed at site B", || {
        let (mut rb, stream, id) = (rb.clone(), stream.clone(), id.clone());
        async move { traceparent_of(&mut rb, &stream, &id).await }
    })
    .await;
    assert_eq!(
        landed,
        format!("00-{TRACE_ID}-{}-01", import.span_id),
        "the landed entry carries the import span's context"
    );

    // Stopped first: a gateway still running would set its stream up again.
    gateway_a.terminate().await;
    gateway_b.terminate().await;
    cleanup(&names, NATS_URL, &[SITE_A_REDIS, SITE_B_REDIS]).await;
}
