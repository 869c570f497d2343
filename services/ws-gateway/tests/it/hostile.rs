//! Hostile and careless clients against a real gateway (the shared Redis): tokens in any
//! query parameter are never logged, weak secrets are refused at start, empty subjects and
//! foreign origins are refused, one subject cannot take a channel, parser detail never
//! reaches a client, fractional NumericDates are valid, a close waits for the client's reply,
//! and secrets are not printed by `--help`.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aurora_core::auth::{Minter, Permission};
use aurora_core::names::Channel;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A token for `sub` signed with the test secret, its claims as given (fractions allowed).
fn raw_token(claims: serde_json::Value) -> String {
    Minter::hs256(SECRET.as_bytes()).mint_json(&claims)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn a_token_in_any_query_parameter_or_after_a_semicolon_is_never_logged() {
    let names = aurora_testkit::names();
    let svc = Site::new(&names, "site-a", 0)
        .with_binary(Svc::WsGateway, env!("CARGO_BIN_EXE_ws-gateway"))
        .start(Svc::WsGateway, &[])
        .await;
    let tokens: Vec<String> = (0..4)
        .map(|i| token_for(&format!("leak-{i}"), &[Permission::WsAlerts]))
        .collect();
    let queries = [
        format!("jwt={}", tokens[0]),
        format!("auth={}", tokens[1]),
        format!("x=1;token={}", tokens[2]),
        format!("x=1;access_token={}&y=2", tokens[3]),
    ];
    for query in &queries {
        let mut ws = Console::connect(&svc.ws_url(Channel::Alerts, query))
            .await
            .ws;
        let (close, _) = close_frame(&mut ws, WAIT).await;
        assert_eq!(close.unwrap().0, 1008, "{query}");
    }
    aurora_testkit::wait_until(WAIT, "the four refusals logged", || {
        let n = svc.log().matches("connection refused").count();
        async move { (n >= 4).then_some(()) }
    })
    .await;
    let logs = svc.log();
    for t in &tokens {
        assert!(
            !logs.contains(t.as_str()),
            "a token leaked into the logs: {logs}"
        );
    }
    assert!(logs.contains("jwt=REDACTED"), "{logs}");
    assert!(logs.contains("auth=REDACTED"), "{logs}");
}

#[tokio::test]
async fn an_empty_subject_is_refused_and_a_fractional_expiry_is_valid() {
    let gw = TestGateway::start(|_| {}).await;
    let t = now();
    for sub in ["", "  "] {
        let empty = raw_token(serde_json::json!({
            "sub": sub, "exp": t as u64 + 600, "permissions": ["ws:alerts"]
        }));
        let mut ws = gw.connect(Channel::Alerts, &empty).await;
        let (code, reason) = close_frame(&mut ws, WAIT).await.0.unwrap();
        assert_eq!(code, 1008);
        assert!(reason.contains("empty subject"), "{reason}");
    }

    // As Python's issuer writes it: time.time() + 3600.
    let python = raw_token(serde_json::json!({
        "sub": "py-analyst", "exp": t + 3600.0, "iat": t, "nbf": t - 0.5,
        "permissions": ["ws:alerts"]
    }));
    let mut ws = gw.connect(Channel::Alerts, &python).await;
    let p = redis(REDIS_URL).await;
    let stream = gw.names.channel_stream(Channel::Alerts);
    xadd_json(&p, &stream, &alert(1)).await;
    let doc = next_json(&mut ws, WAIT).await;
    assert_eq!(doc["n"], 1);
}

#[tokio::test]
async fn a_client_is_told_a_short_reason_never_what_the_parser_said() {
    let gw = TestGateway::start(|_| {}).await;
    let bad_claims = raw_token(serde_json::json!({"sub": "x", "exp": "tomorrow"}));
    for token in [
        "garbage",
        "a.b.c",
        "eyJhbGciOiJIUzI1NiJ9.e30",
        bad_claims.as_str(),
    ] {
        let mut ws = gw.connect(Channel::Alerts, token).await;
        let (code, reason) = close_frame(&mut ws, WAIT).await.0.unwrap();
        assert_eq!(code, 1008);
        assert_eq!(reason, "invalid token: malformed token", "for {token}");
    }
    // The approval API answers the same way.
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/approvals/{}/decision",
            gw.http,
            uuid::Uuid::new_v4()
        ))
        .bearer_auth("a.b.c")
        .body(r#"{"decision":"approve"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid token: malformed token");
}

/// Connects with an `Origin` header; `Ok` when upgraded, `Err(status)` when refused.
async fn connect_with_origin(url: &str, origin: Option<&str>) -> Result<(), u16> {
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("connect {url}: {e}"),
    }
}

#[tokio::test]
async fn a_websocket_from_another_origin_is_refused_unless_allowed() {
    let gw = TestGateway::start(|_| {}).await;
    let url = gw.url(Channel::Alerts, &format!("token={}", all_token()));
    let own = format!("http://{}", gw.http);
    assert_eq!(connect_with_origin(&url, None).await, Ok(()), "no Origin");
    assert_eq!(
        connect_with_origin(&url, Some(&own)).await,
        Ok(()),
        "same origin"
    );
    assert_eq!(
        connect_with_origin(&url, Some("https://evil.example")).await,
        Err(403)
    );
    assert_eq!(
        connect_with_origin(&url, Some("null")).await,
        Err(403),
        "a sandboxed page"
    );

    let gw = TestGateway::start(|args| {
        args.allowed_origins = vec!["https://soc.example".into()];
    })
    .await;
    let url = gw.url(Channel::Alerts, &format!("token={}", all_token()));
    assert_eq!(
        connect_with_origin(&url, Some("https://soc.example")).await,
        Ok(())
    );
    assert_eq!(
        connect_with_origin(&url, Some("https://evil.example")).await,
        Err(403)
    );
    let metrics = gw.ops.metrics().await;
    assert!(
        metrics.contains("aurora_ws_gateway_origin_refused_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn one_subject_cannot_hold_more_than_its_share_of_a_channel() {
    let gw = TestGateway::start(|args| args.max_connections_per_subject = 2).await;
    let alice = token_for("alice", &[Permission::WsAlerts]);
    let a1 = gw.connect(Channel::Alerts, &alice).await;
    let _a2 = gw.connect(Channel::Alerts, &alice).await;
    let mut a3 = gw.connect(Channel::Alerts, &alice).await;
    let (code, reason) = close_frame(&mut a3, WAIT).await.0.unwrap();
    assert_eq!(code, 1013);
    assert!(reason.contains("subject"), "{reason}");
    // Another subject is served; another channel is counted apart.
    let mut bob = gw
        .connect(Channel::Alerts, &token_for("bob", &[Permission::WsAlerts]))
        .await;
    let p = redis(REDIS_URL).await;
    xadd_json(&p, &gw.names.channel_stream(Channel::Alerts), &alert(7)).await;
    assert_eq!(next_json(&mut bob, WAIT).await["n"], 7);
    // A slot given back is free again.
    let mut a1 = a1;
    close_normally(&mut a1, WAIT).await;
    let mut again = None;
    for _ in 0..50 {
        let mut ws = gw.connect(Channel::Alerts, &alice).await;
        xadd_json(&p, &gw.names.channel_stream(Channel::Alerts), &alert(8)).await;
        match tokio::time::timeout(Duration::from_secs(2), futures::StreamExt::next(&mut ws)).await
        {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))) => {
                again = Some(ws);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(
        again.is_some(),
        "alice could not connect again after closing one"
    );
}

/// A WebSocket handshake by hand on a raw TCP connection, so the test controls when (and
/// whether) its close reply is sent.
async fn raw_upgrade(addr: std::net::SocketAddr, path_and_query: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    // The 101 head, byte by byte up to the blank line (the close frame may follow at once).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "the connection ended during the handshake");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Reads one unmasked server frame: (opcode, payload).
async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => panic!("no frame this long expected"),
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (h[0] & 0x0f, payload)
}

/// True when the server ended the TCP connection within `within`.
async fn ended_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn a_close_waits_for_the_clients_reply_so_browsers_see_a_clean_close() {
    let gw = TestGateway::start(|args| args.max_connections_per_subject = 1).await;
    let alice = token_for("alice", &[Permission::WsAlerts]);
    let _held = gw.connect(Channel::Alerts, &alice).await;
    for (query, code) in [
        ("token=garbage".to_string(), 1008u16),
        (format!("token={alice}"), 1013u16),
    ] {
        let mut s = raw_upgrade(gw.http, &format!("{}?{query}", Channel::Alerts.path())).await;
        let (opcode, payload) = read_frame(&mut s).await;
        assert_eq!(opcode, 0x8, "a close frame");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
        // The server waits for the reply: the TCP connection stays up meanwhile.
        assert!(
            !ended_within(&mut s, Duration::from_millis(500)).await,
            "the connection was dropped before the client could reply to {code}"
        );
        // The reply (masked, as a client's frames are): the code echoed.
        let mask = [1u8, 2, 3, 4];
        let mut reply = vec![0x88, 0x80 | 2];
        reply.extend_from_slice(&mask);
        reply.extend(
            payload[..2]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4]),
        );
        s.write_all(&reply).await.unwrap();
        let replied = Instant::now();
        assert!(
            ended_within(&mut s, Duration::from_secs(2)).await,
            "the server did not end the connection after the handshake"
        );
        assert!(replied.elapsed() < Duration::from_secs(1));
    }

    // A client that never replies is dropped after --close-timeout (2 s by default).
    let mut s = raw_upgrade(
        gw.http,
        &format!("{}?token=garbage", Channel::Alerts.path()),
    )
    .await;
    let (opcode, _) = read_frame(&mut s).await;
    assert_eq!(opcode, 0x8);
    assert!(ended_within(&mut s, Duration::from_secs(5)).await);
}

#[test]
fn a_short_jwt_secret_stops_the_start_unless_allowed_for_development() {
    let run = |envs: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-gateway"));
        for (k, _) in std::env::vars() {
            if k.starts_with("AURORA_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("AURORA_OPS_ADDR", "127.0.0.1:0")
            .env("AURORA_WS_GATEWAY_HTTP_ADDR", "127.0.0.1:0")
            .env("AURORA_REDIS_URL", "redis://127.0.0.1:1")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                return Some((status.success(), text));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    };
    let (ok, text) = run(&[("AURORA_JWT_SECRET", "x")]).expect("a one-byte secret stops the start");
    assert!(!ok);
    assert!(text.contains("32"), "the error names the minimum: {text}");
    assert!(!text.contains("\"x\""), "{text}");
    // Allowed for development: it runs (waiting for its Redis here).
    assert!(
        run(&[
            ("AURORA_JWT_SECRET", "x"),
            ("AURORA_JWT_ALLOW_WEAK_SECRET", "true")
        ])
        .is_none(),
        "a weak secret allowed by the flag was refused"
    );
    // The development secret still works with --dev-insecure-auth.
    assert!(run(&[("AURORA_DEV_INSECURE_AUTH", "true")]).is_none());
    // A secret of 32 bytes is fine.
    assert!(run(&[("AURORA_JWT_SECRET", &"k".repeat(32))]).is_none());
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_ws-gateway"))
        .arg("--help")
        .env("AURORA_JWT_SECRET", "jwt-secret-value-0123456789abcdef0123")
        .env(
            "AURORA_REDIS_URL",
            "redis://:redis-password-value@127.0.0.1:6379/0",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("AURORA_REDIS_URL"), "{help}");
    for secret in ["jwt-secret-value", "redis-password-value"] {
        assert!(!help.contains(secret), "--help printed {secret}: {help}");
    }
}

/// The token of an analyst who keeps a session open through the test.
fn analyst() -> String {
    Minter::hs256(SECRET.as_bytes()).token(
        "steady-analyst",
        &[Permission::WsAlerts],
        Duration::from_secs(600),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_are_closed_after_the_idle_timeout_while_analysts_are_served(
) {
    let idle = Duration::from_secs(3);
    let gw = TestGateway::start(|args| {
        args.listener.idle_timeout = idle;
        args.listener.header_timeout = Duration::from_secs(1);
        args.listener.max_connections = 10_000;
        args.listener.max_connections_per_address = 10_000;
    })
    .await;
    let p = redis(REDIS_URL).await;
    let stream = gw.names.channel_stream(Channel::Alerts);
    // An analyst connected before the flood stays connected through and after it: an
    // authenticated session is not cut by the idle timeout.
    let mut steady = gw.connect(Channel::Alerts, &analyst()).await;

    let started = Instant::now();
    let mut idle_conns = Vec::new();
    for _ in 0..50 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let addr = gw.http;
            batch.spawn(async move { TcpStream::connect(addr).await });
        }
        while let Some(c) = batch.join_next().await {
            idle_conns.push(c.unwrap().unwrap());
        }
    }
    assert_eq!(idle_conns.len(), 5000);
    // Each is cut `idle` after its own opening; the last opened this long after the start (on a
    // busy machine, more than `idle`: the first ones are cut while the last are opened).
    let opened = started.elapsed();

    // Served throughout: a new analyst connects and gets an alert, again and again, until
    // well after the idle connections are cut.
    let mut n = 0;
    while started.elapsed() < opened + idle + Duration::from_secs(2) {
        n += 1;
        let mut ws = gw.connect(Channel::Alerts, &analyst()).await;
        xadd_json(&p, &stream, &alert(n)).await;
        let doc = next_json(&mut ws, Duration::from_secs(5)).await;
        assert_eq!(doc["n"], n);
        assert_eq!(next_json(&mut steady, Duration::from_secs(5)).await["n"], n);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut waits = tokio::task::JoinSet::new();
    let left = (opened + idle + Duration::from_secs(4)).saturating_sub(started.elapsed());
    for mut c in idle_conns {
        waits.spawn(async move { ended_within(&mut c, left).await });
    }
    let mut open = 0;
    while let Some(ended) = waits.join_next().await {
        if !ended.unwrap() {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} idle connections still open");
    // The analyst from before is still served.
    xadd_json(&p, &stream, &alert(9999)).await;
    assert_eq!(
        next_json(&mut steady, Duration::from_secs(5)).await["n"],
        9999
    );
    let metrics = gw.ops.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("aurora_listener_timeouts_total")
                && l.contains("listener=\"ws\"")),
        "{metrics}"
    );
}

/// Every binary of the workspace (the five services and the `aurora` command), as built in
/// `target/<profile>/`: its `--help` with secrets in the environment prints none of them.
/// Build them first (`cargo build --bins -p <package>`); a missing one fails with that advice.
#[test]
fn no_binary_prints_a_secret_from_the_environment_in_help() {
    let secrets = [
        (
            "AURORA_REDIS_URL",
            "redis://:redis-pw-value@127.0.0.1:6379/0",
        ),
        (
            "AURORA_NATS_URL",
            "nats://user:nats-url-pw-value@127.0.0.1:4222",
        ),
        ("AURORA_NATS_PASSWORD", "nats-pw-value"),
        ("AURORA_NATS_TOKEN", "nats-token-value"),
        ("AURORA_NATS_NKEY", "nats-nkey-value"),
        ("AURORA_JWT_SECRET", "jwt-secret-value"),
        (
            "AURORA_MQTT_BRIDGE_MQTT_URL",
            "mqtt://u:mqtt-url-pw-value@127.0.0.1:1883",
        ),
        ("AURORA_MQTT_BRIDGE_MQTT_PASSWORD", "mqtt-pw-value"),
        (
            "AURORA_DEVICE_REGISTRY_DATABASE_URL",
            "postgres://u:pg-pw-value@127.0.0.1/db",
        ),
    ];
    let mut programs: Vec<std::path::PathBuf> = Svc::ALL
        .iter()
        .map(|svc| aurora_testkit::process::binary(svc.name()))
        .collect();
    programs.push(aurora_testkit::process::binary("aurora"));
    for program in programs {
        let out = Command::new(&program)
            .arg("--help")
            .envs(secrets)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", program.display());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("AURORA_REDIS_URL"), "{help}");
        for (_, value) in secrets {
            let secret = value
                .split([':', '@'])
                .find(|part| part.contains("value"))
                .unwrap();
            assert!(
                !help.contains(secret),
                "{} --help printed {secret}",
                program.display()
            );
        }
    }
}
