//! The built binary: configured by environment variables, serves /healthz, /readyz and
//! /metrics, moves events, and drains and exits 0 on SIGTERM; a variable it no longer reads
//! stops it with the name of the one that replaced it.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_is_ready_moves_events_and_drains_on_sigterm() {
    let env = Env::new().await;
    // Started as the harness starts every service: ready (`/readyz` 200) before it returns.
    let mut svc = Site::new(&env.names, "site-a", 0)
        .with_binary(Svc::EveIngest, env!("CARGO_BIN_EXE_eve-ingest"))
        .start(Svc::EveIngest, &[("severity-1-critical", "false")])
        .await;
    assert_eq!(svc.healthz().await, Some(200));

    let lines: Vec<Vec<u8>> = fixture_lines().into_iter().take(20).collect();
    let distinct: usize = distinct_by_type(&lines).values().sum();
    env.push(&lines).await;
    env.wait_stream_len(distinct as u64).await;
    let metrics = svc.ops().metrics().await;
    assert!(
        metrics.contains("aurora_eve_ingest_events_total"),
        "{metrics}"
    );

    let exit = svc.terminate().await;
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(env.held(&svc.instance).await, 0);
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
