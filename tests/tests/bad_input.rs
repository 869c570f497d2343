//! Bad input of every kind, sent to the binaries as built: each gets a clear error or a
//! dead-letter record naming the reason, and the service keeps serving (`/readyz` 200, a good
//! message right after still goes through).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aurora_core::auth::{Claims, Minter, Permission};
use aurora_core::model::DeadLetter;
use aurora_core::names::{Channel, DeviceTopicKind};
use aurora_e2e::*;
use base64::Engine;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A token with `alg: none` (no signature) granting everything.
fn alg_none_token() -> String {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let claims = Claims::new("mallory", &Permission::ALL, Duration::from_secs(600));
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&serde_json::to_value(&claims).unwrap())
    )
}

/// Signed with a secret the services do not know.
fn forged_token() -> String {
    Minter::hs256(b"not-the-secret").token("mallory", &Permission::ALL, Duration::from_secs(600))
}

/// Signed with the right secret, expired an hour ago.
fn expired_token() -> String {
    let mut claims = Claims::new("alice", &Permission::ALL, Duration::from_secs(600));
    claims.exp = claims.exp.saturating_sub(3600 + 600);
    Minter::hs256(SECRET.as_bytes()).mint(&claims)
}

/// The records of a dead-letter stream.
async fn dead_letters(conn: &mut aurora_core::bus::Conn, stream: &str) -> Vec<DeadLetter> {
    stream_docs(conn, stream)
        .await
        .into_iter()
        .map(|(_, d)| serde_json::from_value(d).expect("a DeadLetter record"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_bridge_dead_letters_every_bad_device_message_and_keeps_serving() {
    let names = aurora_testkit::names();
    let site = Site::new(&names, "site-a", 9);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let mut bridge = site.start(Svc::MqttBridge, &[]).await;
    let device = MqttDevice::shared(&format!("e2e-bad-{}", names.namespace()));
    device.wait_connected().await;
    let topic = |id: &str| names.mqtt_sensor_topic(id, DeviceTopicKind::Telemetry);

    let long_id = "d".repeat(200);
    // (topic, payload, words the dead-letter reason must hold)
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            topic("dev-1"),
            b"{\"temperature\": 21.5,".to_vec(),
            "not JSON",
        ),
        (topic("dev-1"), vec![0x7b, 0xff, 0xfe, 0x7d], "not UTF-8"),
        (topic("dev-1"), b"[1,2,3]".to_vec(), "not an object"),
        (topic("dev-1"), vec![b' '; 300_000], "larger than the limit"),
        (topic("with space"), b"{}".to_vec(), "device id"),
        (topic("ünïcødé-☢"), b"{}".to_vec(), "device id"),
        (topic(&long_id), b"{}".to_vec(), "device id"),
        (topic(""), b"{}".to_vec(), "device id"),
    ];
    for (t, p, _) in &cases {
        device.publish(t, p.clone()).await;
    }
    // A good message right after, and one from a device id made of dots (valid characters:
    // it is a device like any other, not a path).
    device
        .publish(
            &topic("dev-1"),
            br#"{"seq": 1, "device_id": "forged"}"#.to_vec(),
        )
        .await;
    device
        .publish(&topic(".."), br#"{"seq": 2}"#.to_vec())
        .await;

    let conn = redis(&site.redis_url).await;
    let records = wait_until(WAIT, "every bad message dead-lettered", || {
        let mut conn = conn.clone();
        let stream = names.cps_deadletter();
        let want = cases.len();
        async move {
            let records = dead_letters(&mut conn, &stream).await;
            (records.len() >= want).then_some(records)
        }
    })
    .await;
    assert_eq!(records.len(), cases.len(), "{records:#?}");
    for (t, p, reason) in &cases {
        let r = records
            .iter()
            .find(|r| &r.source == t && r.raw().as_deref() == Some(p.as_slice()))
            .unwrap_or_else(|| panic!("no dead letter for {t:?}"));
        assert!(
            r.reason.contains(reason),
            "{t:?}: reason {:?} does not say {reason:?}",
            r.reason
        );
        assert_eq!(r.service, "mqtt-bridge");
    }
    let telemetry = wait_until(WAIT, "the good messages", || {
        let mut conn = conn.clone();
        let stream = names.cps_telemetry();
        async move {
            let docs = stream_docs(&mut conn, &stream).await;
            (docs.len() >= 2).then_some(docs)
        }
    })
    .await;
    assert_eq!(telemetry.len(), 2, "{telemetry:?}");
    assert_eq!(
        telemetry[0].1["device_id"], "dev-1",
        "the topic names the device"
    );
    assert_eq!(telemetry[0].1["seq"], 1);
    assert_eq!(telemetry[1].1["device_id"], "..");
    assert_eq!(bridge.readyz().await, Some(200));
    assert!(bridge.exited().is_none(), "the bridge is still running");
    let counted = bridge
        .metric("aurora_mqtt_bridge_dead_letters_total", &[])
        .await;
    assert_eq!(counted as usize, cases.len(), "dead letters counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eve_ingest_dead_letters_bad_lines_and_keeps_serving() {
    let names = aurora_testkit::names();
    let site = Site::new(&names, "site-a", 9);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let mut eve = site.start(Svc::EveIngest, &[]).await;
    let mut conn = redis(&site.redis_url).await;

    // Larger than NATS's default max_payload (1 MiB): it cannot be published.
    let huge = format!(
        r#"{{"event_type":"dns","timestamp":"2024-01-15T10:30:00.000000+0000","pad":"{}"}}"#,
        "x".repeat(1_200_000)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"event_type\": \"alert\", ".to_vec(), "invalid_json"),
        (b"[\"event_type\", \"alert\"]".to_vec(), "not_an_object"),
        (
            b"{\"timestamp\": \"2024-01-15T10:30:00Z\"}".to_vec(),
            "no_event_type",
        ),
        (b"{\"event_type\": \"\"}".to_vec(), "no_event_type"),
        (vec![b'{', 0xc3, 0x28, b'}'], "invalid_json"),
        (huge.into_bytes(), "too_large_for_nats"),
    ];
    let lines: Vec<Vec<u8>> = cases.iter().map(|(l, _)| l.clone()).collect();
    lpush(&mut conn, &names.suricata_list(), &lines).await;
    let good = suricata_alert_line();
    lpush(
        &mut conn,
        &names.suricata_list(),
        &[good.clone().into_bytes()],
    )
    .await;

    let records = wait_until(WAIT, "every bad line dead-lettered", || {
        let mut conn = conn.clone();
        let key = names.eve_deadletter();
        let want = cases.len();
        async move {
            let docs = list_docs(&mut conn, &key).await;
            (docs.len() >= want).then_some(docs)
        }
    })
    .await;
    assert_eq!(records.len(), cases.len(), "{records:#?}");
    for (line, code) in &cases {
        let r = records
            .iter()
            .find(|r| {
                let dl: DeadLetter = serde_json::from_value((*r).clone()).unwrap();
                dl.raw().as_deref() == Some(line.as_slice())
            })
            .unwrap_or_else(|| {
                panic!(
                    "no dead letter for {:?}",
                    String::from_utf8_lossy(&line[..line.len().min(60)])
                )
            });
        assert_eq!(r["reason_code"], *code, "{r}");
        assert!(!r["reason"].as_str().unwrap_or("").is_empty(), "{r}");
    }
    // The good line still went through, once, and its alert too.
    wait_until(WAIT, "the good event in JetStream", || async {
        let m = jetstream_messages(NATS_URL, &names.suricata_stream()).await;
        (m.len() == 1).then_some(())
    })
    .await;
    let m = jetstream_messages(NATS_URL, &names.suricata_stream()).await;
    assert_eq!(m[0].2, good.as_bytes());
    // A hostile event type (NATS wildcards and a separator) lands on one safe subject.
    let hostile = br#"{"event_type":"dns.*>","timestamp":"2024-01-15T10:30:00.000000+0000"}"#;
    lpush(&mut conn, &names.suricata_list(), &[hostile.to_vec()]).await;
    wait_until(WAIT, "the hostile-typed event in JetStream", || async {
        let m = jetstream_messages(NATS_URL, &names.suricata_stream()).await;
        (m.len() == 2).then_some(())
    })
    .await;
    let m = jetstream_messages(NATS_URL, &names.suricata_stream()).await;
    assert_eq!(m[1].1, names.suricata_subject("dns.*>"));
    assert_eq!(
        m[1].1,
        format!("{}.dns___", names.suricata_subject_prefix())
    );
    assert_eq!(m[1].2, hostile);
    wait_until(WAIT, "its alert", || {
        let mut conn = conn.clone();
        let stream = names.alerts();
        async move { (xlen(&mut conn, &stream).await == 1).then_some(()) }
    })
    .await;
    assert_eq!(llen(&mut conn, &names.suricata_list()).await, 0);
    assert_eq!(eve.readyz().await, Some(200));
    assert!(eve.exited().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_gateway_refuses_bad_tokens_and_oversized_frames_and_keeps_serving() {
    let names = aurora_testkit::names();
    let site = Site::new(&names, "site-a", 9);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let gateway = site.start(Svc::WsGateway, &[]).await;

    // Every bad token: 1008.
    let bad = [
        ("forged", forged_token()),
        ("expired", expired_token()),
        ("alg none", alg_none_token()),
        ("garbage", "not.a.jwt".to_string()),
        ("missing", String::new()),
        (
            "missing permission",
            token(&[Permission::DevicesRead, Permission::ApprovalsManage]),
        ),
    ];
    for (what, t) in &bad {
        let mut c = Console::connect(&gateway.ws_url(Channel::Alerts, &format!("token={t}"))).await;
        assert_eq!(
            close_code(&mut c.ws, WAIT).await,
            Some(1008),
            "{what} token not refused with 1008"
        );
    }
    // A malformed resume position: HTTP 400 before any upgrade.
    let r = http()
        .get(gateway.http_url(&format!(
            "{}?token={}&since=yesterday",
            Channel::Alerts.path(),
            token(&[Permission::WsAlerts])
        )))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // A client sending a frame far over the limit is cut off...
    let good = format!("token={}", token(&[Permission::WsAlerts]));
    let mut hostile = Console::connect(&gateway.ws_url(Channel::Alerts, &good)).await;
    let _ = hostile.send(Message::text("x".repeat(2 << 20))).await;
    let code = close_code(&mut hostile.ws, WAIT).await;
    eprintln!("ws: an oversized client frame ended the connection with {code:?}");
    assert!(
        matches!(code, None | Some(1009) | Some(1002)),
        "an oversized frame ends the connection (1009 or dropped), got {code:?}"
    );

    // ...and everyone else is still served.
    let mut console = Console::connect(&gateway.ws_url(Channel::Alerts, &good)).await;
    let mut conn = redis(&site.redis_url).await;
    xadd(&mut conn, &names.alerts(), b"not json at all").await;
    let id = uuid::Uuid::new_v4().to_string();
    let alert = json!({"id": id, "title": "after the bad input", "severity": "high", "status": "new",
        "source": "e2e", "timestamp": chrono::Utc::now()});
    xadd(&mut conn, &names.alerts(), alert.to_string().as_bytes()).await;
    let got = console
        .wait_for(WAIT, "the good alert", |v| v["id"] == id.as_str())
        .await;
    assert_eq!(got["title"], "after the bad input");
    assert_eq!(
        console.seen.len(),
        1,
        "the non-JSON entry is not sent: {:?}",
        console.seen
    );
    assert_eq!(gateway.readyz().await, Some(200));
    assert_eq!(
        gateway
            .metric("aurora_ws_gateway_invalid_entries_total", &[])
            .await,
        1.0
    );

    // The decision API: bad tokens 401, bad bodies 400 with a message, unknown id 404.
    let url = gateway.http_url(&format!(
        "/api/v1/approvals/{}/decision",
        uuid::Uuid::new_v4()
    ));
    for (what, t) in &bad[..3] {
        let r = http()
            .post(&url)
            .bearer_auth(t)
            .json(&json!({"decision": "approve"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{what} token on the decision API");
    }
    let manage = token(&[Permission::ApprovalsManage]);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"decision\": ".to_vec()),
        ("unknown decision", br#"{"decision": "maybe"}"#.to_vec()),
        ("invalid UTF-8", vec![b'{', 0xff, b'}']),
        (
            "comment too long",
            json!({"decision": "reject", "comment": "c".repeat(5000)})
                .to_string()
                .into_bytes(),
        ),
    ];
    for (what, body) in bodies {
        let r = http()
            .post(&url)
            .bearer_auth(&manage)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, body) = json_response(r).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
    }
    let huge = json!({"decision": "approve", "comment": "c".repeat(4 << 20)});
    let r = http()
        .post(&url)
        .bearer_auth(&manage)
        .json(&huge)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert!(matches!(status, 400 | 413), "a 4 MiB body: {status}");
    let r = http()
        .post(&url)
        .bearer_auth(&manage)
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(gateway.readyz().await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_registry_refuses_bad_tokens_and_bodies_and_dead_letters_bad_entries() {
    let names = aurora_testkit::names();
    let db = TestDb::create().await;
    let site = Site::new(&names, "site-a", 9).with_database(&db);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let registry = site.start(Svc::DeviceRegistry, &[]).await;

    for (what, t) in [
        ("forged", forged_token()),
        ("expired", expired_token()),
        ("alg none", alg_none_token()),
        ("garbage", "a.b.c".to_string()),
    ] {
        for path in ["/api/v1/devices", "/api/v1/firmware"] {
            let r = http()
                .get(registry.http_url(path))
                .bearer_auth(&t)
                .send()
                .await
                .unwrap();
            let (status, body) = json_response(r).await;
            assert_eq!(status, 401, "{what} token on {path}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
    }
    let r = http()
        .get(registry.http_url("/api/v1/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "no token");

    let fw = token(&[Permission::FirmwareManage]);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"model\": ".to_vec()),
        ("not an object", b"[]".to_vec()),
        ("missing fields", br#"{"model": "m"}"#.to_vec()),
        (
            "sha256 not hex",
            br#"{"model": "m", "version": "1", "sha256": "zz"}"#.to_vec(),
        ),
        ("invalid UTF-8", vec![b'{', 0xff, b'}']),
    ];
    for (what, body) in bodies {
        let r = http()
            .post(registry.http_url("/api/v1/firmware"))
            .bearer_auth(&fw)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, body) = json_response(r).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
    }
    // A huge body: refused (400 or 413), never taken in.
    let huge = json!({"model": "m".repeat(4 << 20), "version": "1", "sha256": "a".repeat(64)});
    let r = http()
        .post(registry.http_url("/api/v1/firmware"))
        .bearer_auth(&fw)
        .json(&huge)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert!(matches!(status, 400 | 413), "a 4 MiB body: {status}");
    let r = http()
        .get(registry.http_url("/api/v1/devices?limit=-5"))
        .bearer_auth(token(&[Permission::DevicesRead]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "a bad query");

    // Bad entries on the streams it reads: dead-lettered with the reason.
    let mut conn = redis(&site.redis_url).await;
    xadd(&mut conn, &names.cps_registrations(), b"{not json").await;
    xadd(&mut conn, &names.cps_attestation(), b"[1,2]").await;
    xadd(&mut conn, &names.cps_alerts(), &[0xff, 0xfe, 0x00, 0x01]).await;
    let stream = names.deadletter("device-registry");
    let records = wait_until(WAIT, "three dead letters", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move {
            let r = dead_letters(&mut conn, &stream).await;
            (r.len() >= 3).then_some(r)
        }
    })
    .await;
    assert_eq!(records.len(), 3, "{records:#?}");
    for r in &records {
        assert!(!r.reason.is_empty(), "{r:?}");
        assert_eq!(r.service, "device-registry");
    }
    let sources: Vec<&str> = records.iter().map(|r| r.source.as_str()).collect();
    for s in [
        names.cps_registrations(),
        names.cps_attestation(),
        names.cps_alerts(),
    ] {
        assert!(sources.contains(&s.as_str()), "{s} in {sources:?}");
    }

    // Still serving: a good request works.
    let r = http()
        .post(registry.http_url("/api/v1/firmware"))
        .bearer_auth(&fw)
        .json(&json!({"model": "m", "version": "1", "sha256": "a".repeat(64)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(registry.readyz().await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_gateway_dead_letters_bad_documents_from_its_site_and_from_the_wire() {
    let names = aurora_testkit::names();
    let a = Site::new(&names, "site-a", 9);
    let b = Site::new(&names, "site-b", 10);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&a.redis_url, &b.redis_url]);
    let fed_a = a.start(Svc::FederationGateway, &[]).await;
    let fed_b = b.start(Svc::FederationGateway, &[]).await;
    let mut conn_a = redis(&a.redis_url).await;
    let conn_b = redis(&b.redis_url).await;

    // Bad entries on A's own alerts stream: dead-lettered at A, never exported.
    xadd(&mut conn_a, &names.alerts(), b"not json").await;
    xadd(&mut conn_a, &names.alerts(), b"[1, 2]").await;
    // Junk on the wire, as a rogue or broken site would send it.
    let client = async_nats::connect(NATS_URL).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = names.nats_subject(aurora_core::names::FederatedKind::Alerts);
    let wire: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("garbage", Some("site-x"), b"\xff\xfe garbage"),
        ("array", Some("site-x"), b"[1,2,3]"),
        ("no origin", None, br#"{"id":"x","title":"t"}"#),
    ];
    for (id, origin, payload) in &wire {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("junk-{id}").as_str());
        if let Some(o) = origin {
            headers.insert("Aurora-Origin-Site", *o);
        }
        js.publish_with_headers(subject.clone(), headers, payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let dl = names.federation_deadletter();
    let n_wire = wire.len();
    let at_a = wait_until(WAIT, "A's dead letters", || {
        let mut conn = conn_a.clone();
        let dl = dl.clone();
        async move {
            let r = dead_letters(&mut conn, &dl).await;
            (r.len() >= 2 + n_wire).then_some(r)
        }
    })
    .await;
    let at_b = wait_until(WAIT, "B's dead letters", || {
        let mut conn = conn_b.clone();
        let dl = dl.clone();
        async move {
            let r = dead_letters(&mut conn, &dl).await;
            (r.len() >= n_wire).then_some(r)
        }
    })
    .await;
    for (_, _, payload) in &wire {
        for (site, records) in [("A", &at_a), ("B", &at_b)] {
            let r = records
                .iter()
                .find(|r| r.raw().as_deref() == Some(*payload))
                .unwrap_or_else(|| {
                    panic!("no dead letter at {site} for {payload:?}: {records:#?}")
                });
            assert!(!r.reason.is_empty());
            assert_eq!(r.service, "federation-gateway");
        }
    }
    assert_eq!(
        at_b.len(),
        wire.len(),
        "A's bad entries never left A: {at_b:#?}"
    );

    // Both keep serving: a good alert crosses, and nothing bad landed at B.
    let id = uuid::Uuid::new_v4().to_string();
    let alert = json!({"id": id, "title": "good", "severity": "high", "status": "new",
        "source": "e2e", "timestamp": chrono::Utc::now()});
    xadd(&mut conn_a, &names.alerts(), alert.to_string().as_bytes()).await;
    let landed = wait_until(WAIT, "the good alert at B", || {
        let mut conn = conn_b.clone();
        let stream = names.alerts();
        async move {
            let docs = stream_docs(&mut conn, &stream).await;
            (!docs.is_empty()).then_some(docs)
        }
    })
    .await;
    assert_eq!(landed.len(), 1, "{landed:?}");
    assert_eq!(landed[0].1["id"], id.as_str());
    assert_eq!(fed_a.readyz().await, Some(200));
    assert_eq!(fed_b.readyz().await, Some(200));
}

/// A JSON object that is not an Alert, published on the federation subject by another site,
/// must not reach analysts as an alert: SPEC.md, "bad input ... goes to a dead-letter stream
/// with the reason".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_gateway_does_not_import_an_invalid_alert() {
    let names = aurora_testkit::names();
    let b = Site::new(&names, "site-b", 10);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&b.redis_url]);
    let _fed_b = b.start(Svc::FederationGateway, &[]).await;
    let mut conn_b = redis(&b.redis_url).await;
    let client = async_nats::connect(NATS_URL).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = names.nats_subject(aurora_core::names::FederatedKind::Alerts);
    let not_an_alert = br#"{"hello": "world", "severity": "apocalyptic"}"#;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "site-x:not-an-alert");
    headers.insert("Aurora-Origin-Site", "site-x");
    js.publish_with_headers(subject, headers, not_an_alert.to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();

    let dl = names.federation_deadletter();
    let records = wait_until(WAIT, "a dead letter or an import", || {
        let mut conn = conn_b.clone();
        let (dl, alerts) = (dl.clone(), names.alerts());
        async move {
            let r = dead_letters(&mut conn, &dl).await;
            let imported = xlen(&mut conn, &alerts).await;
            (!r.is_empty() || imported > 0).then_some(r)
        }
    })
    .await;
    let imported = stream_docs(&mut conn_b, &names.alerts()).await;
    assert!(
        imported.is_empty(),
        "an invalid alert from another site was imported into {}: {imported:?}",
        names.alerts()
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].raw().as_deref(), Some(&not_an_alert[..]));
}
