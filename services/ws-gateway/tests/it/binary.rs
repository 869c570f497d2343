//! The built binary: configured by AURORA_* variables (its own AURORA_WS_GATEWAY_*), JSON logs
//! without the token, a clean drain on SIGTERM (clients closed with 1001, exit code 0), and a
//! variable under its old name refused with the new one named.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::{Command, Stdio};

use aurora_core::auth::Permission;
use aurora_core::names::Channel;
use common::*;

#[tokio::test]
async fn the_binary_logs_no_token_and_drains_on_sigterm() {
    let names = aurora_testkit::names();
    // Started as the harness starts every service: ready (`/readyz` 200) before it returns.
    let mut svc = Site::new(&names, "site-a", 0)
        .with_binary(Svc::WsGateway, env!("CARGO_BIN_EXE_ws-gateway"))
        .start(Svc::WsGateway, &[("drain-grace", "500ms")])
        .await;

    let good = token(&[Permission::WsAlerts]);
    let wrong = token(&[Permission::DevicesRead]);
    let url = |t: &str| svc.ws_url(Channel::Alerts, &format!("token={t}&since=0-0"));
    let mut client = Console::connect(&url(&good)).await.ws;
    let mut refused = Console::connect(&url(&wrong)).await.ws;
    assert_eq!(close_frame(&mut refused, WAIT).await.0.unwrap().0, 1008);

    svc.sigterm();
    let (close, _) = close_frame(&mut client, WAIT).await;
    assert_eq!(close.unwrap().0, 1001);

    let (status, _) = svc.wait_exit(WAIT).await;
    assert!(status.success(), "exit status {status}");

    let logs = svc.log();
    assert!(
        logs.contains("connection refused"),
        "refusal not logged: {logs}"
    );
    assert!(
        logs.contains("token=REDACTED"),
        "path not logged redacted: {logs}"
    );
    for secret in [&good, &wrong] {
        assert!(
            !logs.contains(secret.as_str()),
            "a token leaked into the logs"
        );
    }
    // Every line is JSON.
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

#[test]
fn a_variable_under_its_old_name_stops_the_start_and_names_the_new_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_ws-gateway"))
        .env("AURORA_JWT_SECRET", SECRET)
        .env("AURORA_DRAIN_GRACE", "1s")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with a renamed variable");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("AURORA_DRAIN_GRACE") && stderr.contains("AURORA_WS_GATEWAY_DRAIN_GRACE"),
        "{stderr}"
    );
}

#[test]
fn a_drain_grace_past_the_drain_deadline_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_ws-gateway"))
        .env("AURORA_JWT_SECRET", SECRET)
        .env("AURORA_WS_GATEWAY_DRAIN_GRACE", "30s")
        .env("AURORA_SHUTDOWN_TIMEOUT", "10s")
        .env("AURORA_OPS_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--drain-grace"), "{stderr}");
}
