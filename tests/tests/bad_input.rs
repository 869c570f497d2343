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
    let telemetry = wait_stream_docs(&conn, &names.cps_telemetry(), 2, "the good messages").await;
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
    // Refused with 400/413, or the server answers 413 and closes before the client has
    // written the whole body (the client then sees a broken pipe): both are a refusal.
    match http()
        .post(&url)
        .bearer_auth(&manage)
        .json(&huge)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            assert!(matches!(status, 400 | 413), "a 4 MiB body: {status}");
        }
        Err(e) => assert!(e.is_request(), "a 4 MiB body: {e}"),
    }
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
    // (An answer before the whole body was written shows as a broken pipe: also a refusal.)
    match http()
        .post(registry.http_url("/api/v1/firmware"))
        .bearer_auth(&fw)
        .json(&huge)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            assert!(matches!(status, 400 | 413), "a 4 MiB body: {status}");
        }
        Err(e) => assert!(e.is_request(), "a 4 MiB body: {e}"),
    }
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
    let landed = wait_stream_docs(&conn_b, &names.alerts(), 1, "the good alert at B").await;
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

// ---------------------------------------------------------------------------------------
// Random input: what goes in is counted out, either delivered or dead-lettered, never lost
// and never a crash. The seed is printed; E2E_SEED replays a run.
// ---------------------------------------------------------------------------------------

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn seeded_rng(test: &str) -> StdRng {
    let seed = std::env::var("E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("{test}: E2E_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// A random JSON value, `depth` levels deep at most.
fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!(rng.gen_range(-1_000_000i64..1_000_000)),
        3 => json!(rng.gen::<f64>() * 1e6),
        4 => json!(random_text(rng, 0..40)),
        5 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => random_object(rng, depth - 1),
    }
}

fn random_object(rng: &mut StdRng, depth: u32) -> Value {
    let mut m = serde_json::Map::new();
    for _ in 0..rng.gen_range(0..5) {
        m.insert(random_text(rng, 1..12), random_json(rng, depth));
    }
    Value::Object(m)
}

/// Text from a pool of awkward characters (never `/`, `+`, `#`, NUL or control characters,
/// which MQTT topics cannot hold).
fn random_text(rng: &mut StdRng, len: std::ops::Range<usize>) -> String {
    const POOL: &[char] = &[
        'a', 'b', 'z', 'A', 'Z', '0', '9', '_', '.', ':', '-', ' ', 'é', 'ß', '☢', '𝄞', '$', '%',
        '"', '\\', '{', '}', '[', '*', '>', '\'', '=', '?', '&',
    ];
    let n = rng.gen_range(len);
    (0..n).map(|_| POOL[rng.gen_range(0..POOL.len())]).collect()
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..max);
    (0..n).map(|_| rng.gen::<u8>()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_bridge_random_device_messages_are_all_delivered_or_dead_lettered() {
    const N: usize = 300;
    let mut rng = seeded_rng("mqtt_bridge_random");
    let names = aurora_testkit::names();
    let site = Site::new(&names, "site-a", 9);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let bridge = site.start(Svc::MqttBridge, &[]).await;
    let device = MqttDevice::shared(&format!("e2e-rand-{}", names.namespace()));
    device.wait_connected().await;

    let mut valid = 0;
    for seq in 0..N {
        let device_id = if rng.gen_bool(0.5) {
            format!("rand-{}", rng.gen_range(0..20))
        } else {
            random_text(&mut rng, 0..150)
        };
        let kind = DeviceTopicKind::ALL[rng.gen_range(0..3)];
        let payload = match rng.gen_range(0..6) {
            0..=2 => {
                let mut o = random_object(&mut rng, 3);
                o["seq"] = json!(seq);
                o.to_string().into_bytes()
            }
            3 => random_json(&mut rng, 3).to_string().into_bytes(),
            4 => random_bytes(&mut rng, 2000),
            _ => {
                let mut s = random_object(&mut rng, 2).to_string().into_bytes();
                s.truncate(rng.gen_range(0..s.len().max(1)));
                s
            }
        };
        let is_object = std::str::from_utf8(&payload)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .is_some_and(|v| v.is_object());
        if aurora_core::model::is_valid_device_id(&device_id) && is_object {
            valid += 1;
        }
        device
            .publish(&names.mqtt_sensor_topic(&device_id, kind), payload)
            .await;
    }

    let mut conn = redis(&site.redis_url).await;
    let streams: Vec<String> = DeviceTopicKind::ALL
        .iter()
        .map(|k| names.cps_stream(*k))
        .collect();
    let (delivered, dead) = wait_until(WAIT, "every message delivered or dead-lettered", || {
        let mut conn = conn.clone();
        let streams = streams.clone();
        let dl = names.cps_deadletter();
        async move {
            let mut delivered = 0;
            for s in &streams {
                delivered += xlen(&mut conn, s).await as usize;
            }
            let dead = xlen(&mut conn, &dl).await as usize;
            (delivered + dead >= N).then_some((delivered, dead))
        }
    })
    .await;
    assert_eq!(delivered, valid, "delivered");
    assert_eq!(dead, N - valid, "dead-lettered");
    for r in dead_letters(&mut conn, &names.cps_deadletter()).await {
        assert!(!r.reason.is_empty() && r.raw().is_some(), "{r:?}");
    }
    assert_eq!(bridge.readyz().await, Some(200));
    eprintln!(
        "mqtt random: {valid} delivered, {} dead-lettered",
        N - valid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eve_ingest_random_lines_are_all_published_or_dead_lettered_and_alerts_valid() {
    const N: usize = 200;
    let mut rng = seeded_rng("eve_ingest_random");
    let names = aurora_testkit::names();
    let site = Site::new(&names, "site-a", 9);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let eve = site.start(Svc::EveIngest, &[]).await;

    let (mut valid, mut alerts) = (0, 0);
    let mut lines = Vec::new();
    for seq in 0..N {
        let line: Vec<u8> = match rng.gen_range(0..4) {
            0 => random_bytes(&mut rng, 500),
            1 => random_json(&mut rng, 3).to_string().into_bytes(),
            2 => {
                let mut o = random_object(&mut rng, 2);
                o["event_type"] = if rng.gen_bool(0.8) {
                    json!(random_text(&mut rng, 0..10))
                } else {
                    random_json(&mut rng, 1)
                };
                o.to_string().into_bytes()
            }
            _ => {
                // Alert-shaped, every field hostile.
                let mut o = random_object(&mut rng, 1);
                o["event_type"] = json!("alert");
                for field in ["timestamp", "src_ip", "dest_ip", "proto", "flow_id", "host"] {
                    if rng.gen_bool(0.7) {
                        o[field] = random_json(&mut rng, 1);
                    }
                }
                let mut alert = random_object(&mut rng, 2);
                for field in [
                    "signature",
                    "signature_id",
                    "severity",
                    "category",
                    "metadata",
                ] {
                    if rng.gen_bool(0.7) {
                        alert[field] = random_json(&mut rng, 2);
                    }
                }
                o["alert"] = alert;
                for field in ["dns", "tls", "http", "fileinfo"] {
                    if rng.gen_bool(0.3) {
                        o[field] = random_object(&mut rng, 2);
                    }
                }
                o.to_string().into_bytes()
            }
        };
        // Distinct lines (identical ones are one event to JetStream): a unique prefix keeps an
        // invalid line invalid and a valid one valid.
        let line = if line.first() == Some(&b'{') && line.len() > 2 {
            let mut l = format!("{{\"e2e_seq\":{seq},").into_bytes();
            l.extend_from_slice(&line[1..]);
            if line == b"{}" {
                l = format!("{{\"e2e_seq\":{seq}}}").into_bytes();
            }
            l
        } else {
            let mut l = format!("#{seq}#").into_bytes();
            l.extend_from_slice(&line);
            l
        };
        if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&line) {
            if let Some(Value::String(t)) = o.get("event_type") {
                if !t.trim().is_empty() {
                    valid += 1;
                    alerts += usize::from(t == "alert");
                }
            }
        }
        lines.push(line);
    }
    let mut conn = redis(&site.redis_url).await;
    lpush(&mut conn, &names.suricata_list(), &lines).await;

    let dl = names.eve_deadletter();
    let (published, dead) = wait_until(WAIT, "every line published or dead-lettered", || {
        let mut conn = conn.clone();
        let (dl, stream) = (dl.clone(), names.suricata_stream());
        async move {
            let dead = llen(&mut conn, &dl).await as usize;
            let published = jetstream_messages(NATS_URL, &stream).await.len();
            (published + dead >= N).then_some((published, dead))
        }
    })
    .await;
    assert_eq!(published, valid, "published");
    assert_eq!(dead, N - valid, "dead-lettered");
    let written = wait_stream_docs(&conn, &names.alerts(), alerts, "every alert").await;
    assert_eq!(written.len(), alerts);
    for (_, doc) in &written {
        let bytes = serde_json::to_vec(doc).unwrap();
        if let Err(e) = aurora_core::model::parse::<aurora_core::model::Alert>(&bytes) {
            panic!("not a valid Alert ({e}): {doc}");
        }
    }
    assert_eq!(eve.readyz().await, Some(200));
    eprintln!(
        "eve random: {valid} published ({alerts} alerts), {} dead-lettered",
        N - valid
    );
}

/// Every byte outside `[A-Za-z0-9]` percent-encoded.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_registry_answers_random_requests_with_a_clear_4xx_never_a_5xx() {
    const N: usize = 150;
    let mut rng = seeded_rng("device_registry_random");
    let names = aurora_testkit::names();
    let db = TestDb::create().await;
    let site = Site::new(&names, "site-a", 9).with_database(&db);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let registry = site.start(Svc::DeviceRegistry, &[]).await;
    let all = token(&[
        Permission::DevicesRead,
        Permission::DevicesWrite,
        Permission::FirmwareManage,
    ]);
    let client = http();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..N {
        let id = if rng.gen_bool(0.5) {
            format!("dev-{}", rng.gen_range(0..5))
        } else {
            path_segment(&random_text(&mut rng, 0..140))
        };
        let body: Vec<u8> = match rng.gen_range(0..3) {
            0 => random_bytes(&mut rng, 300),
            1 => random_json(&mut rng, 3).to_string().into_bytes(),
            _ => {
                let mut o = random_object(&mut rng, 2);
                for f in [
                    "model",
                    "version",
                    "sha256",
                    "public_key",
                    "action",
                    "params",
                    "ttl_seconds",
                    "reason",
                ] {
                    if rng.gen_bool(0.5) {
                        o[f] = random_json(&mut rng, 1);
                    }
                }
                o.to_string().into_bytes()
            }
        };
        let query = if rng.gen_bool(0.3) {
            rng.gen_range(1..50).to_string()
        } else {
            path_segment(&random_text(&mut rng, 0..20))
        };
        let (method, path) = match rng.gen_range(0..8) {
            0 => (reqwest::Method::POST, "/api/v1/firmware".to_string()),
            1 => (reqwest::Method::PUT, format!("/api/v1/devices/{id}/key")),
            2 => (
                reqwest::Method::POST,
                format!("/api/v1/devices/{id}/commands"),
            ),
            3 => (
                reqwest::Method::POST,
                format!("/api/v1/devices/{id}/quarantine"),
            ),
            4 => (
                reqwest::Method::POST,
                format!("/api/v1/devices/{id}/attest"),
            ),
            5 => (reqwest::Method::GET, format!("/api/v1/devices/{id}")),
            6 => (
                reqwest::Method::GET,
                format!("/api/v1/devices?status={query}&limit={query}&cursor={id}"),
            ),
            _ => (
                reqwest::Method::DELETE,
                format!("/api/v1/firmware?model={query}&version={id}&sha256={query}"),
            ),
        };
        let r = client
            .request(method.clone(), registry.http_url(&path))
            .bearer_auth(&all)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert!(
            status < 500,
            "{method} {path} with {:?}: {status} {text}",
            String::from_utf8_lossy(&body)
        );
        if status >= 400 && status != 405 {
            let err: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            assert!(
                err["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{method} {path}: {status} without an error message: {text:?}"
            );
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(registry.readyz().await, Some(200));
    eprintln!("registry random: statuses {statuses:?}");
}
