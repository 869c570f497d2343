//! Hostile and careless input at the REST API of a running registry (real PostgreSQL and
//! Redis): a NUL in any text is a 400, never a 503 from the database; a command larger than
//! the MQTT broker accepts is a 413, never queued; idle and dripping connections are cut while
//! clients are served; a token error says nothing of the parser; a weak JWT secret stops the
//! binary at start; `--help` prints no secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aurora_core::auth::Permission;
use aurora_core::listener::Limits;
use aurora_testkit::tcp::closed_within;
use chrono::Utc;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_device-registry");

async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn one_device(
    names: &aurora_core::Names,
    conn: &aurora_core::bus::Conn,
    pool: &sqlx::PgPool,
) -> String {
    let d = SimDevice::new("hostile");
    xadd_json(conn, &names.cps_registrations(), &d.seen(Utc::now())).await;
    aurora_testkit::wait_until(LONG, "the device registered", || async {
        device_status(pool, &d.id).await.map(|_| ())
    })
    .await;
    d.id
}

#[tokio::test]
async fn text_with_a_nul_is_refused_with_400_wherever_it_enters() {
    let (_db, names, svc, pool, conn) = Registry::start(|_| {}).await.parts();
    let dev = one_device(&names, &conn, &pool).await;
    let read = token(&[Permission::DevicesRead]);
    let write = token(&[Permission::DevicesWrite]);
    let firmware = token(&[Permission::FirmwareManage]);
    let sha = GOOD_SHA;
    let cases: Vec<(Method, String, &str, Option<String>)> = vec![
        (
            Method::GET,
            "/api/v1/devices?model=a%00b".into(),
            &read,
            None,
        ),
        (
            Method::GET,
            "/api/v1/devices?status=active&model=%00".into(),
            &read,
            None,
        ),
        (
            Method::GET,
            "/api/v1/firmware?model=x%00".into(),
            &firmware,
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{dev}/quarantine"),
            &write,
            Some(r#"{"reason": "bad\u0000reason"}"#.into()),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{dev}/commands"),
            &write,
            Some(r#"{"action": "set", "params": {"note": "a\u0000b"}}"#.into()),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{dev}/commands"),
            &write,
            Some(r#"{"action": "set", "params": {"k\u0000": 1}}"#.into()),
        ),
        (
            Method::POST,
            "/api/v1/firmware".into(),
            &firmware,
            Some(format!(
                r#"{{"model": "m\u0000", "version": "1", "sha256": "{sha}"}}"#
            )),
        ),
        (
            Method::DELETE,
            format!("/api/v1/firmware?model=m%00&version=1&sha256={sha}"),
            &firmware,
            None,
        ),
    ];
    for (method, path, token, body) in cases {
        let (status, body) = call(&svc.base, method.clone(), &path, token, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert!(
            body["error"].as_str().unwrap_or_default().contains("NUL"),
            "{method} {path}: {body}"
        );
    }
    // The API is still healthy, the device untouched, and nothing was queued for it.
    let (status, device) = call(
        &svc.base,
        Method::GET,
        &format!("/api/v1/devices/{dev}"),
        &read,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(device["status"], "quarantined");
    assert_eq!(
        svc.ops.readyz().await,
        Some(200),
        "the registry is not ready after the NULs"
    );
    let commands = stream_values(&conn, &names.cps_commands()).await;
    assert!(
        commands.iter().all(|c| c["action"] != "set"),
        "a command with a NUL was queued: {commands:?}"
    );
    // A backslash followed by u0000 as text is fine.
    let (status, _) = call(
        &svc.base,
        Method::POST,
        &format!("/api/v1/devices/{dev}/commands"),
        &write,
        Some(r#"{"action": "set", "params": {"note": "a\\u0000b"}}"#.into()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_command_larger_than_the_broker_accepts_is_refused_with_413() {
    let (_db, names, svc, pool, conn) = Registry::start(|_| {}).await.parts();
    let dev = one_device(&names, &conn, &pool).await;
    let write = token(&[Permission::DevicesWrite]);
    let path = format!("/api/v1/devices/{dev}/commands");
    // 300 KiB of params: under the API's body limit, over the broker's 256 KiB packet.
    let big = json!({"action": "flash", "params": {"blob": "x".repeat(300 * 1024)}}).to_string();
    let (status, body) = call(&svc.base, Method::POST, &path, &write, Some(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at most"),
        "{body}"
    );
    // Just under the limit: queued.
    let fits = json!({"action": "flash", "params": {"blob": "x".repeat(200 * 1024)}}).to_string();
    let (status, body) = call(&svc.base, Method::POST, &path, &write, Some(fits)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let commands = stream_values(&conn, &names.cps_commands()).await;
    let flashes: Vec<&Value> = commands.iter().filter(|c| c["action"] == "flash").collect();
    assert_eq!(flashes.len(), 1, "only the command that fits is queued");
    assert!(serde_json::to_vec(flashes[0]).unwrap().len() < 256 * 1024);
}

#[tokio::test]
async fn a_token_error_tells_the_client_no_parser_detail() {
    let (_db, _names, svc, _pool, _conn) = Registry::start(|_| {}).await.parts();
    for bad in ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30"] {
        let (status, body) = call(&svc.base, Method::GET, "/api/v1/devices", bad, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "invalid token: malformed token", "{bad}");
    }
    let empty_sub = token_for("", &[Permission::DevicesRead]);
    let (status, body) = call(&svc.base, Method::GET, "/api/v1/devices", &empty_sub, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid token: empty subject");
}

#[tokio::test]
async fn idle_and_dripping_connections_are_cut_while_clients_are_served() {
    let idle = Duration::from_secs(2);
    let (_db, _names, svc, _pool, _conn) = Registry::start(|cfg| {
        cfg.listener = Limits {
            header_timeout: Duration::from_millis(700),
            idle_timeout: idle,
            max_connections: 2000,
            max_per_address: 2000,
        };
    })
    .await
    .parts();
    let addr: std::net::SocketAddr = svc.base.trim_start_matches("http://").parse().unwrap();
    let started = Instant::now();
    let mut idle_conns = Vec::new();
    for _ in 0..500 {
        idle_conns.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut drip = TcpStream::connect(addr).await.unwrap();
    let read = token(&[Permission::DevicesRead]);
    let mut cut_at = None;
    let mut served = 0;
    for (i, b) in b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        .iter()
        .enumerate()
    {
        if cut_at.is_none() && (drip.write_all(&[*b]).await.is_err() || closed_within(&mut drip, Duration::from_millis(100)).await) {
            cut_at = Some(started.elapsed());
        }
        if i % 5 == 0 {
            let (status, _) = call(&svc.base, Method::GET, "/api/v1/devices", &read, None).await;
            assert_eq!(status, StatusCode::OK, "a client was not served");
            served += 1;
        }
        if started.elapsed() > idle + Duration::from_secs(1) {
            break;
        }
    }
    let cut_at = cut_at.expect("a dripped header was never cut");
    assert!(cut_at < Duration::from_millis(2000), "cut after {cut_at:?}");
    assert!(served > 3);
    let left = (idle + Duration::from_secs(3)).saturating_sub(started.elapsed());
    let mut open = 0;
    for c in idle_conns.iter_mut() {
        if !closed_within(c, left.max(Duration::from_millis(10))).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} idle connections still open");
    assert!(started.elapsed() >= idle);
    let (status, _) = call(&svc.base, Method::GET, "/api/v1/devices", &read, None).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = svc.ops.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("aurora_listener_timeouts_total")
                && l.contains("listener=\"api\"")),
        "{metrics}"
    );
}

fn binary(envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn a_short_jwt_secret_stops_the_start() {
    let out = binary(&[
        ("AURORA_JWT_SECRET", "short".into()),
        ("AURORA_OPS_ADDR", format!("127.0.0.1:{}", free_port())),
        ("AURORA_DEVICE_REGISTRY_HTTP_ADDR", "127.0.0.1:0".into()),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("32") && stderr.contains("--jwt-allow-weak-secret"),
        "{stderr}"
    );
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    let out = binary(&[
        (
            "AURORA_JWT_SECRET",
            "jwt-secret-value-0123456789abcdef0123".into(),
        ),
        (
            "AURORA_REDIS_URL",
            "redis://:redis-password-value@127.0.0.1:6379/0".into(),
        ),
        (
            "AURORA_DEVICE_REGISTRY_DATABASE_URL",
            "postgres://aurora:pg-password-value@127.0.0.1/aurora".into(),
        ),
    ])
    .arg("--help")
    .output()
    .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("AURORA_REDIS_URL"), "{help}");
    for secret in [
        "jwt-secret-value",
        "redis-password-value",
        "pg-password-value",
    ] {
        assert!(!help.contains(secret), "--help printed {secret}: {help}");
    }
}
