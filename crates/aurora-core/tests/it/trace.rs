//! Trace context through the bus, exported to a real OTLP/HTTP receiver: a write made inside
//! a span carries the span's context in its entry; the shared consumer handles the entry
//! inside a `<stream> process` span, the child of that context; what the handler writes on
//! carries the process span's context. Tracing is set up as a service sets it up
//! ([`aurora_core::ops::init_telemetry`]), once per test process.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use aurora_core::bus::{self, Producer};
use aurora_core::config::LogFormat;
use aurora_core::trace::TraceContext;
use aurora_testkit::otlp::OtlpReceiver;
use aurora_testkit::REDIS_URL;

async fn entry_context(conn: &mut bus::Conn, stream: &str) -> Option<TraceContext> {
    bus::range(conn, stream, "0-0", 10)
        .await
        .unwrap()
        .pop()
        .and_then(|e| e.trace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumed_entry_is_processed_and_written_on_in_its_writers_trace() {
    let receiver = OtlpReceiver::start().await;
    for (k, v) in receiver.service_env() {
        std::env::set_var(k, v);
    }
    let guard = aurora_core::ops::init_telemetry("trace-test", LogFormat::Json);
    assert!(aurora_core::trace::enabled());

    let names = aurora_testkit::names();
    let stream = format!("{}:trace:in", names.namespace());
    let out = format!("{}:trace:out", names.namespace());
    let mut conn = bus::connect(REDIS_URL).await.unwrap();
    let producer = Producer::new(conn.clone(), 1000);

    let once = format!("{}:trace:once", names.namespace());
    let once_key = format!("{}:trace:once-key", names.namespace());
    let origin = tracing::info_span!("origin");
    {
        let _entered = origin.enter();
        producer.publish(&stream, b"{\"n\":1}").await.unwrap();
        let write = bus::OnceWrite {
            key: &once_key,
            stream: &once,
            data: b"{}",
        };
        producer
            .publish_once(&[write], Duration::from_secs(60))
            .await
            .unwrap();
    }
    let written = entry_context(&mut conn, &stream)
        .await
        .expect("a traceparent field");
    assert_eq!(
        written,
        TraceContext::of_span(&origin).unwrap(),
        "the entry carries its writer's span"
    );
    assert_eq!(
        entry_context(&mut conn, &once).await,
        Some(written.clone()),
        "a write-once entry carries its writer's span too"
    );
    drop(origin);

    let (shutdown, task) = common::spawn_forward(&producer, &stream, &out, false).await;

    let process = receiver
        .wait_span("the process span", |s| {
            s.name == format!("{stream} process")
        })
        .await;
    assert_eq!(process.trace_id, written.trace_id());
    assert_eq!(process.parent_span_id, written.span_id());
    assert_eq!(process.kind, 5, "a consumer span");
    assert_eq!(
        process.messaging(),
        (Some("redis"), Some("process"), Some(stream.as_str()))
    );
    assert!(process.attribute("messaging.message.id").is_some());

    let forwarded = entry_context(&mut conn, &out).await.expect("carried on");
    assert_eq!(forwarded.trace_id(), written.trace_id());
    assert_eq!(forwarded.span_id(), process.span_id);

    shutdown.cancel();
    task.await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .arg(&out)
        .arg(&once)
        .arg(&once_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(guard);
}
