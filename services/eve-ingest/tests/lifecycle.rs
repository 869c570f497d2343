//! The service under the shared lifecycle: `/readyz` names what start-up waits for, and at
//! the drain deadline the batches at hand are given up with their lines still held by the
//! replica, for its next start.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use aurora_core::service::{launch, LaunchError, LaunchOptions, Stopped};
use common::*;
use eve_ingest::{EveIngest, Hooks, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// NATS does not answer: the ops port answers meanwhile, `/readyz` is 503 and names the
/// NATS server being connected to (Redis, connected, is ready); a shutdown ends the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_dependency_start_up_waits_for() {
    let env = Env::new().await;
    let nats_port = aurora_testkit::free_port();
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let settings = Settings::new(env.names.clone(), &env.redis_url, &nats_url);
    let ops: SocketAddr = ([127, 0, 0, 1], aurora_testkit::free_port()).into();
    let mut options = LaunchOptions::local("w1");
    options.ops_addr = ops;
    let shutdown = CancellationToken::new();
    let launching = tokio::spawn(launch(EveIngest::new(settings), options, shutdown.clone()));
    let report = aurora_testkit::wait_until(LONG, "/readyz naming NATS", || async {
        get(ops, "/readyz")
            .await
            .filter(|r| r.contains(&format!("connecting to {nats_url}")))
    })
    .await;
    assert!(report.starts_with("HTTP/1.0 503"), "{report}");
    let body = report.split("\r\n\r\n").nth(1).unwrap();
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["components"]["redis"]["ready"], true, "{body}");
    assert_eq!(body["components"]["nats"]["ready"], false, "{body}");
    assert_eq!(body["components"]["input"]["ready"], false, "{body}");
    assert_eq!(body["components"]["start-up"]["ready"], false, "{body}");
    assert!(get(ops, "/healthz")
        .await
        .unwrap()
        .starts_with("HTTP/1.0 200"));
    shutdown.cancel();
    let launched = tokio::time::timeout(LONG, launching)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(launched, Err(LaunchError::StoppedWhileStarting)),
        "{:?}",
        launched.err()
    );
    env.cleanup().await;
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
        (env.llen(&env.names.suricata_list()).await == 0 && held >= lines.len()).then_some(held)
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
    env.cleanup().await;
}
