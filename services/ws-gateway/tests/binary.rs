//! The built binary: configured by AURORA_* variables (its own AURORA_WS_GATEWAY_*), JSON logs
//! without the token, a clean drain on SIGTERM (clients closed with 1001, exit code 0), and a
//! variable under its old name refused with the new one named.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use aurora_core::auth::Permission;
use aurora_core::names::Channel;
use common::*;

#[tokio::test]
async fn the_binary_logs_no_token_and_drains_on_sigterm() {
    let names = aurora_testkit::names();
    let http = aurora_testkit::free_port();
    let ops = aurora_testkit::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ws-gateway"))
        .env("AURORA_NAMESPACE", names.namespace())
        .env("AURORA_REDIS_URL", aurora_testkit::REDIS_URL)
        .env("AURORA_JWT_SECRET", SECRET)
        .env("AURORA_WS_GATEWAY_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("AURORA_OPS_ADDR", format!("127.0.0.1:{ops}"))
        .env("AURORA_WS_GATEWAY_DRAIN_GRACE", "500ms")
        .env("AURORA_SHUTDOWN_TIMEOUT", "10s")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ops_addr: std::net::SocketAddr = format!("127.0.0.1:{ops}").parse().unwrap();
    aurora_testkit::wait_until(WAIT, "binary ready", || async {
        let ok = reqwest::get(format!("http://{ops_addr}/readyz"))
            .await
            .ok()
            .map(|r| r.status().as_u16() == 200);
        (ok == Some(true)).then_some(())
    })
    .await;

    let good = token(&[Permission::WsAlerts]);
    let wrong = token(&[Permission::DevicesRead]);
    let url = |t: &str| {
        format!(
            "ws://127.0.0.1:{http}{}?token={t}&since=0-0",
            Channel::Alerts.path()
        )
    };
    let (mut client, _) = tokio_tungstenite::connect_async(url(&good)).await.unwrap();
    let (mut refused, _) = tokio_tungstenite::connect_async(url(&wrong)).await.unwrap();
    assert_eq!(until_close(&mut refused, WAIT).await.0.unwrap().0, 1008);

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (close, _) = until_close(&mut client, WAIT).await;
    assert_eq!(close.unwrap().0, 1001);

    let status = aurora_testkit::wait_until(WAIT, "the binary to exit", || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "exit status {status}");

    let mut logs = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
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
