//! Head sampling by ratio, parent-based, through the bus and a real OTLP/HTTP receiver: each
//! written entry's hop decides once; every entry carries its context, sampled or not; the
//! consumer's `process` hop follows the entry's flag, so a trace is exported whole or not at
//! all, and what the handler writes on keeps the decision. Tracing is set up as a service sets
//! it up, once per test process (cargo-nextest runs each test in a process of its own).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use aurora_core::bus::{self, Producer};
use aurora_core::config::LogFormat;
use aurora_core::trace::{self, TraceContext};
use aurora_testkit::otlp::OtlpReceiver;
use aurora_testkit::REDIS_URL;

const ENTRIES: usize = 120;

async fn contexts(conn: &mut bus::Conn, stream: &str) -> Vec<TraceContext> {
    bus::range(conn, stream, "0-0", ENTRIES + 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            e.trace
                .expect("every entry carries a context, sampled or not")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_is_exported_whole_or_not_at_all_and_the_decision_travels() {
    let receiver = OtlpReceiver::start().await;
    for (k, v) in receiver.service_env() {
        std::env::set_var(k, v);
    }
    std::env::set_var("OTEL_TRACES_SAMPLER", "parentbased_traceidratio");
    std::env::set_var("OTEL_TRACES_SAMPLER_ARG", "0.5");
    let guard = aurora_core::ops::init_telemetry("sampling-test", LogFormat::Json);
    assert!(trace::enabled());

    let names = aurora_testkit::names();
    let stream = format!("{}:sampling:in", names.namespace());
    let out = format!("{}:sampling:out", names.namespace());
    let mut conn = bus::connect(REDIS_URL).await.unwrap();
    let producer = Producer::new(conn.clone(), 1000);

    // Each write is the root of its own trace (a `publish` hop with no parent).
    for n in 0..ENTRIES {
        let hop = trace::message_hop("redis", &stream, "publish", "producer", None);
        assert_eq!(hop.sampled(), hop.context().unwrap().sampled());
        hop.scope(producer.publish(&stream, format!("{{\"n\":{n}}}").as_bytes()))
            .await
            .unwrap();
    }
    let written = contexts(&mut conn, &stream).await;
    let sampled: HashSet<String> = written
        .iter()
        .filter(|c| c.sampled())
        .map(|c| c.trace_id().to_string())
        .collect();
    let unsampled: HashSet<String> = written
        .iter()
        .filter(|c| !c.sampled())
        .map(|c| c.trace_id().to_string())
        .collect();
    assert_eq!(
        sampled.len() + unsampled.len(),
        ENTRIES,
        "a trace per entry"
    );
    // At a ratio of one half, 120 decisions all alike would be a broken sampler (2^-119).
    assert!(!sampled.is_empty() && !unsampled.is_empty());

    let (shutdown, task) = common::spawn_forward(&producer, &stream, &out, true).await;
    let forwarded =
        aurora_testkit::wait_until(aurora_testkit::WAIT, "every entry forwarded", || {
            let mut conn = conn.clone();
            let out = out.clone();
            async move {
                let got = contexts(&mut conn, &out).await;
                (got.len() == ENTRIES).then_some(got)
            }
        })
        .await;

    // What the handler wrote keeps each entry's trace and decision.
    for (before, after) in written.iter().zip(&forwarded) {
        assert_eq!(after.trace_id(), before.trace_id());
        assert_eq!(after.sampled(), before.sampled());
        if !before.sampled() {
            assert_eq!(
                after, before,
                "an unsampled context is passed on as it came"
            );
        }
    }

    // Every sampled trace is exported with its two spans; no unsampled one has any.
    let process_of = |id: &str| format!("{stream} process") == id;
    let spans = aurora_testkit::wait_until(
        aurora_testkit::WAIT,
        "a process span per sampled trace",
        || {
            let spans = receiver.spans();
            let done = spans
                .iter()
                .filter(|s| process_of(&s.name) && sampled.contains(&s.trace_id))
                .count()
                == sampled.len();
            async move { done.then_some(spans) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spans = [spans, receiver.spans()].concat();
    for id in &sampled {
        let names: HashSet<&str> = spans
            .iter()
            .filter(|s| &s.trace_id == id)
            .map(|s| s.name.as_str())
            .collect();
        assert!(
            names.contains(format!("{stream} publish").as_str()),
            "{id}: {names:?}"
        );
        assert!(
            names.contains(format!("{stream} process").as_str()),
            "{id}: {names:?}"
        );
    }
    let leaked: Vec<_> = spans
        .iter()
        .filter(|s| unsampled.contains(&s.trace_id))
        .collect();
    assert!(leaked.is_empty(), "spans of unsampled traces: {leaked:?}");

    shutdown.cancel();
    task.await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .arg(&out)
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(guard);
}
