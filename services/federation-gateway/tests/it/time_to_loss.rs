//! Time to loss against the real NATS and Redis: site B offline while site A keeps exporting
//! into a stream that keeps 40 messages. A's gateway shows B's time to loss falling as the
//! stream fills, then counts what the stream dropped before B imported it; B, back, counts
//! its loss too and imports what is left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use aurora_core::bus::Conn;
use aurora_testkit::cleanup::cleanup;
use aurora_testkit::prelude::*;
use common::*;
use federation_gateway::telemetry::{MESSAGES_LOST, TIME_TO_LOSS};

const SITE_A: &str = "redis://127.0.0.1:6379/8";
const SITE_B: &str = "redis://127.0.0.1:6379/9";

/// The value of a series, `None` while it is absent.
async fn series(ops: &Ops, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let page = ops.metrics().await;
    let present = page.lines().any(|l| {
        l.starts_with(name)
            && labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
    });
    present.then(|| metric_sum(&page, name, labels))
}

/// Raises `n` alerts at A, one every 50 ms (a steady rate for the gauge to read).
async fn raise(conn: &Conn, stream: &str, from: usize, n: usize) {
    for i in from..from + n {
        xadd_json(conn, stream, &alert(&format!("loss-{i}"))).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_offline_past_the_stream_limit_sees_its_time_to_loss_fall_then_its_loss_counted() {
    let names = aurora_testkit::names();
    let nats = aurora_testkit::NATS_URL;
    let limit = ["--jetstream-max-messages", "40"];
    let a = Gateway::start(args(&names, "site-a", SITE_A, nats, &limit)).await;
    let b = Gateway::start(args(&names, "site-b", SITE_B, nats, &limit)).await;
    b.stop().await;
    let ra = redis(SITE_A).await;
    let ops = a.ops();
    let stream = names.nats_stream();
    let consumer = names.federation_consumer("site-b");
    let labels = [("stream", stream.as_str()), ("consumer", consumer.as_str())];

    raise(&ra, &names.alerts(), 0, 12).await;
    let first = wait_until(LONG, "B's time to loss, finite", || async {
        series(&ops, TIME_TO_LOSS, &labels)
            .await
            .filter(|s| s.is_finite() && *s > 0.0)
    })
    .await;
    raise(&ra, &names.alerts(), 12, 16).await;
    let later = wait_until(LONG, "B's time to loss falling", || async {
        series(&ops, TIME_TO_LOSS, &labels)
            .await
            .filter(|s| *s < first * 0.8)
    })
    .await;
    assert!(later < first, "{first} -> {later}");
    assert_eq!(
        series(&ops, MESSAGES_LOST, &labels).await,
        Some(0.0),
        "nothing lost yet, and the series is there for alerts to watch"
    );

    // Past the limit: 55 messages, the stream keeps 40.
    raise(&ra, &names.alerts(), 28, 27).await;
    let lost = wait_until(LONG, "B's loss counted at A", || async {
        series(&ops, MESSAGES_LOST, &labels)
            .await
            .filter(|n| *n >= 15.0)
    })
    .await;
    assert_eq!(lost, 15.0, "the 15 oldest went");
    assert_eq!(series(&ops, TIME_TO_LOSS, &labels).await, Some(0.0));

    // B back: it imports the 40 the stream kept.
    let b = Gateway::start(args(&names, "site-b", SITE_B, nats, &limit)).await;
    let rb = redis(SITE_B).await;
    wait_xlen(&rb, &names.alerts(), 40, "what the stream kept, at B").await;
    wait_until(LONG, "B caught up: its time to loss back up", || async {
        series(&ops, TIME_TO_LOSS, &labels)
            .await
            .filter(|s| *s > 0.0)
    })
    .await;
    // One process, one counter: A's count, and B's own when its first look came before its
    // first import.
    let counted = series(&ops, MESSAGES_LOST, &labels).await;
    assert!(
        matches!(counted, Some(n) if n == 15.0 || n == 30.0),
        "{counted:?}"
    );

    // Both sites' loss ledgers name it, each message once: A saw it happen, B looked before
    // its first import.
    for conn in [&ra, &rb] {
        let losses = aurora_core::ledger::jetstream_losses(
            conn,
            &names.ledger_jetstream(&stream),
            &stream,
            aurora_core::ledger::Window::last(Duration::from_secs(600)),
        )
        .await
        .unwrap();
        assert_eq!(losses.len(), 1, "{losses:?}");
        assert_eq!(
            (losses[0].consumer.as_str(), losses[0].dropped),
            (consumer.as_str(), 15),
            "{losses:?}"
        );
    }

    a.stop().await;
    b.stop().await;
    cleanup(&names, nats, &[SITE_A, SITE_B]).await;
}
