//! Traces of eve-ingest, exported to a real OTLP/HTTP receiver: a batch is one `eve batch`
//! span; its JetStream publish span is the child, and the alerts it writes carry its context
//! (the start of a Suricata alert's trace to the console, at this site and others).
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_written_carries_its_batch_span_and_the_publish_is_its_child() {
    let env = Env::new().await;
    let receiver = OtlpReceiver::start().await;
    let mut site = Site::new(&env.names, "site-a", 0)
        .with_binary(Svc::EveIngest, env!("CARGO_BIN_EXE_eve-ingest"));
    site.extra_env = receiver.service_env();
    let _svc = site.start(Svc::EveIngest, &[]).await;

    let lines = fixture_lines();
    let alert = lines
        .iter()
        .find(|l| event_type(l) == "alert")
        .unwrap()
        .clone();
    env.push(&[alert]).await;
    env.wait_alerts(1).await;

    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(env.names.alerts())
        .arg("-")
        .arg("+")
        .query_async(&mut env.conn())
        .await
        .unwrap();
    let traceparent: String = reply.ids[0]
        .get("traceparent")
        .expect("a traceparent field");
    let parent = aurora_core::trace::TraceContext::parse(&traceparent, None).expect("well formed");

    let batch = receiver
        .wait_span("the batch span", |s| s.span_id == parent.span_id())
        .await;
    assert_eq!(batch.name, "eve batch");
    assert_eq!(batch.service, "eve-ingest");
    assert_eq!(batch.trace_id, parent.trace_id());
    let publish = receiver
        .wait_span("the publish span", |s| {
            s.name == format!("{} publish", env.names.suricata_stream())
        })
        .await;
    assert_eq!(publish.trace_id, batch.trace_id);
    assert_eq!(publish.parent_span_id, batch.span_id);
    assert_eq!(publish.kind, 4, "a producer span");
    assert_eq!(
        publish.attribute("messaging.batch.message_count"),
        Some("1")
    );
}
