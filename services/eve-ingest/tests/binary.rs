//! The built binary: configured by environment variables, serves /healthz, /readyz and
//! /metrics, moves events, and drains and exits 0 on SIGTERM; a variable it no longer reads
//! stops it with the name of the one that replaced it.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_is_ready_moves_events_and_drains_on_sigterm() {
    let env = Env::new().await;
    let port = aurora_testkit::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eve-ingest"))
        .env("AURORA_NAMESPACE", env.names.namespace())
        .env("AURORA_OPS_ADDR", format!("127.0.0.1:{port}"))
        .env("AURORA_INSTANCE_ID", "bin1")
        .env("AURORA_EVE_INGEST_BLOCK", "200ms")
        .env("AURORA_EVE_INGEST_SEVERITY_1_CRITICAL", "false")
        .env("AURORA_SHUTDOWN_TIMEOUT", "10s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    aurora_testkit::wait_until(LONG, "/readyz 200", || async {
        get(port, "/readyz")
            .await
            .filter(|r| r.starts_with("HTTP/1.0 200"))
            .map(|_| ())
    })
    .await;
    assert!(get(port, "/healthz")
        .await
        .unwrap()
        .starts_with("HTTP/1.0 200"));

    let lines: Vec<Vec<u8>> = fixture_lines().into_iter().take(20).collect();
    let distinct: usize = distinct_by_type(&lines).values().sum();
    env.push(&lines).await;
    env.wait_stream_len(distinct as u64).await;
    let metrics = get(port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("aurora_eve_ingest_events_total"),
        "{metrics}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(env.held("bin1").await, 0);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {}).await;
    env.cleanup().await;
}

#[test]
fn a_renamed_variable_stops_the_start_and_names_its_replacement() {
    let out = Command::new(env!("CARGO_BIN_EXE_eve-ingest"))
        .env("AURORA_EVE_BATCH", "100")
        .env("AURORA_OPS_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("AURORA_EVE_BATCH") && stderr.contains("AURORA_EVE_INGEST_BATCH"),
        "{stderr}"
    );
}
