//! The service under the shared lifecycle: `/readyz` names what start-up waits for, and at
//! the drain deadline the batches at hand are given up with their lines still held by the
//! replica, for its next start.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use aurora_core::service::{launch, LaunchOptions, Stopped};
use common::*;
use eve_ingest::{EveIngest, Hooks, Settings};
use tokio_util::sync::CancellationToken;

/// NATS does not answer: the ops port answers meanwhile, `/readyz` is 503 and names the
/// NATS server being connected to (Redis, connected, is ready); a shutdown ends the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_dependency_start_up_waits_for() {
    let env = Env::new().await;
    let nats_port = aurora_testkit::free_port();
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let settings = Settings::new(env.names.clone(), &env.redis_url, &nats_url);
    let ops = Ops::port(aurora_testkit::free_port());
    let mut options = LaunchOptions::local("w1");
    options.ops_addr = ops.addr;
    let shutdown = CancellationToken::new();
    let launching = tokio::spawn(launch(EveIngest::new(settings), options, shutdown.clone()));
    let report = aurora_testkit::wait_until(LONG, "/readyz naming NATS", || async {
        ops.get("/readyz")
            .await
            .ok()
            .filter(|r| r.body.contains(&format!("connecting to {nats_url}")))
    })
    .await;
    assert_eq!(report.status, 503, "{report:?}");
    let body = report.json();
    assert_eq!(body["components"]["redis"]["ready"], true, "{body}");
    assert_eq!(body["components"]["nats"]["ready"], false, "{body}");
    assert_eq!(body["components"]["input"]["ready"], false, "{body}");
    assert_eq!(body["components"]["start-up"]["ready"], false, "{body}");
    assert_eq!(ops.healthz().await, Some(200));
    shutdown.cancel();
    assert_stopped_while_starting(launching, LONG).await;
}

/// No stream takes the events (stream setup is off), so the taken batch retries its publish
/// through the drain; at the deadline it is given up and its lines are still held by the
/// replica. The next start (with the stream) handles them: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_drain_deadline_what_was_taken_stays_held_for_the_next_start() {
    let env = Env::new().await;
    let lines: Vec<Vec<u8>> = fixture_lines().into_iter().take(30).collect();
    let distinct: usize = distinct_by_type(&lines).values().sum();
    env.push(&lines).await;
    let mut settings = env.settings();
    settings.stream_setup = false;
    let shutdown = CancellationToken::new();
    let mut options = LaunchOptions::local("d1");
    options.drain_deadline = Duration::from_millis(500);
    let launched = launch(EveIngest::new(settings), options, shutdown.clone())
        .await
        .unwrap();
    // Held: the processing list, the chunk and its index entry.
    let held = aurora_testkit::wait_until(LONG, "every line taken", || async {
        let held = env.held("d1").await;
        (llen(&mut env.conn(), &env.names.suricata_list()).await == 0 && held >= lines.len())
            .then_some(held)
    })
    .await;
    let draining = tokio::time::Instant::now();
    shutdown.cancel();
    let stopped = tokio::time::timeout(LONG, launched.stopped())
        .await
        .unwrap();
    assert_eq!(stopped, Stopped::DeadlinePassed);
    assert!(draining.elapsed() >= Duration::from_millis(500));
    assert_eq!(env.held("d1").await, held, "the taken lines are held");
    assert_eq!(env.stream_len().await, 0);

    let svc = start(env.settings(), "d1", Hooks::default()).await;
    env.wait_stream_len(distinct as u64).await;
    aurora_testkit::wait_until(LONG, "nothing held", || async {
        (env.held("d1").await == 0).then_some(())
    })
    .await;
    svc.stop().await.unwrap();
    assert_eq!(env.messages().await.len(), distinct);
}
