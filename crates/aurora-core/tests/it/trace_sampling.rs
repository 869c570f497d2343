//! Head sampling by ratio, parent-based, through the bus and a real OTLP/HTTP receiver: the
//! first hop of each message decides once; only a sampled message carries its context; the
//! consumer's `process` hop follows it, and a message that comes without one (not sampled, or
//! with a context flagged unsampled as an earlier version wrote it) is not sampled again. So
//! a trace is exported whole or not at all, and nothing unsampled carries a context on.
//! Tracing is set up as a service sets it up, once per test process (cargo-nextest runs each
//! test in a process of its own).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use aurora_core::bus::{self, Producer};
use aurora_core::config::LogFormat;
use aurora_core::trace::{self, TraceContext};
use aurora_testkit::otlp::OtlpReceiver;
use aurora_testkit::REDIS_URL;

/// Entries written each inside a root hop of its own (an edge: a message from outside).
const ROOTS: usize = 120;
/// Entries written outside any hop (each write is then its own root).
const OUTSIDE: usize = 60;
/// Entries carrying a context flagged unsampled, as an earlier version carried them.
const FLAGGED: usize = 20;
const ENTRIES: usize = ROOTS + OUTSIDE + FLAGGED;

/// The context of each entry of `stream`, in order.
async fn contexts(conn: &mut bus::Conn, stream: &str) -> Vec<Option<TraceContext>> {
    bus::range(conn, stream, "0-0", ENTRIES + 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.trace)
        .collect()
}

fn sampled_ids(contexts: &[Option<TraceContext>]) -> HashSet<String> {
    contexts
        .iter()
        .flatten()
        .filter(|c| c.sampled())
        .map(|c| c.trace_id().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_is_exported_whole_or_not_at_all_and_only_sampled_messages_carry_it() {
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

    for n in 0..ROOTS {
        let hop = trace::message_root("redis", &stream, "publish", "producer", None);
        assert_eq!(hop.sampled(), hop.context().is_some());
        hop.scope(producer.publish(&stream, format!("{{\"n\":{n}}}").as_bytes()))
            .await
            .unwrap();
    }
    for n in ROOTS..ROOTS + OUTSIDE {
        producer
            .publish(&stream, format!("{{\"n\":{n}}}").as_bytes())
            .await
            .unwrap();
    }
    let flagged: Vec<(String, Vec<u8>, Option<TraceContext>)> = (0..FLAGGED)
        .map(|n| {
            let traceparent = format!("00-{:032x}-{:016x}-00", 0xabc0 + n, 0x100 + n);
            let context = TraceContext::parse(&traceparent, None).unwrap();
            assert!(!context.sampled());
            (
                stream.clone(),
                format!("{{\"n\":{}}}", ROOTS + OUTSIDE + n).into_bytes(),
                Some(context),
            )
        })
        .collect();
    producer.publish_batch_traced(&flagged).await.unwrap();

    let written = contexts(&mut conn, &stream).await;
    assert_eq!(written.len(), ENTRIES);
    // At a ratio of one half, all alike would be a broken sampler (2^-119, 2^-59).
    for (kind, part) in [
        ("in a root hop", &written[..ROOTS]),
        ("outside any hop", &written[ROOTS..ROOTS + OUTSIDE]),
    ] {
        let carried = part.iter().flatten().count();
        assert!(
            carried > 0 && carried < part.len(),
            "{carried} of {} written {kind} carry a context",
            part.len()
        );
        assert!(
            part.iter().flatten().all(TraceContext::sampled),
            "only a sampled context is written ({kind})"
        );
    }
    let sampled = sampled_ids(&written);
    assert_eq!(
        sampled.len(),
        written[..ROOTS + OUTSIDE].iter().flatten().count()
    );

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

    // What the handler wrote keeps a sampled entry's trace, and carries nothing for the others.
    for (n, (before, after)) in written.iter().zip(&forwarded).enumerate() {
        match (before, after) {
            (Some(b), Some(a)) if b.sampled() => assert_eq!(a.trace_id(), b.trace_id(), "{n}"),
            (Some(b), None) if !b.sampled() => {}
            (None, None) => {}
            other => panic!(
                "entry {n}: written with {:?}, forwarded with {:?}",
                other.0, other.1
            ),
        }
    }

    // Every sampled trace is exported with its two spans; nothing else has a span: no
    // `process` span for an entry that came without a sampled context.
    let process = format!("{stream} process");
    let spans = aurora_testkit::wait_until(
        aurora_testkit::WAIT,
        "a process span per sampled trace",
        || {
            let spans = receiver.spans();
            let done = spans
                .iter()
                .filter(|s| s.name == process && sampled.contains(&s.trace_id))
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
        assert!(names.contains(process.as_str()), "{id}: {names:?}");
    }
    let processed: HashSet<&str> = spans
        .iter()
        .filter(|s| s.name == process)
        .map(|s| s.trace_id.as_str())
        .collect();
    assert_eq!(
        processed.len(),
        sampled.len(),
        "process spans only for the sampled traces"
    );
    let others: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with(stream.as_str()) && !sampled.contains(&s.trace_id))
        .collect();
    assert!(
        others.is_empty(),
        "spans outside the sampled traces: {others:?}"
    );

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
