//! Faults while traffic flows: each service SIGKILLed and restarted, and a Redis, a NATS and
//! a Mosquitto of the test's own restarted; then every accepted message is counted where it
//! should be. At least once everywhere (none lost); exactly once where the product promises
//! it (JetStream by `Nats-Msg-Id`, eve-ingest's alerts, federation imports, WebSocket resume);
//! duplicates where only at-least-once is promised are counted and printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use aurora_core::auth::Permission;
use aurora_core::names::{Channel, DeviceTopicKind};
use aurora_e2e::eve_lines;
use aurora_testkit::prelude::*;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_telemetry_survives_bridge_kill_and_broker_and_redis_restarts() {
    const N: u64 = 300;
    const BURST: std::ops::Range<u64> = 10_000..10_200;
    let names = aurora_testkit::names();
    // Mosquitto saves its state on every change, so a SIGKILL keeps the bridge's session and
    // what is queued for it; Redis fsyncs every write before it answers.
    let mut broker = MosquittoServer::start_with_config(
        "allow_anonymous true\nmax_queued_messages 1000000\nautosave_on_changes true\nautosave_interval 1\n",
    );
    let mut own_redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut site = Site::new(&names, "site-a", 0);
    site.redis_url = own_redis.url();
    site.mqtt_url = format!("mqtt://127.0.0.1:{}", broker.port());
    let mut bridge = site.start(Svc::MqttBridge, &[]).await;

    let device = MqttDevice::connect(
        "127.0.0.1",
        broker.port(),
        &format!("e2e-pub-{}", names.namespace()),
    );
    device.wait_connected().await;
    let mut attempts = 0;
    for seq in 0..N {
        match seq {
            75 => {
                // A burst the broker has accepted and the bridge is still writing: then SIGKILL.
                let before = device.acked();
                for b in BURST {
                    let topic = names.mqtt_sensor_topic(
                        &format!("fault-dev-{}", b % 5),
                        DeviceTopicKind::Telemetry,
                    );
                    device.publish(&topic, json!({"seq": b}).to_string()).await;
                }
                let acked = wait_until(WAIT, "the burst acknowledged by the broker", || {
                    let n = device.acked();
                    async move { (n >= before + BURST.end - BURST.start).then_some(n) }
                })
                .await;
                assert_eq!(acked, before + BURST.end - BURST.start);
                bridge.kill_and_spawn();
            }
            150 => broker.restart(),
            225 => own_redis.restart(),
            _ => {}
        }
        let topic = names.mqtt_sensor_topic(
            &format!("fault-dev-{}", seq % 5),
            DeviceTopicKind::Telemetry,
        );
        let payload = json!({"seq": seq, "temperature_c": 21.5}).to_string();
        attempts += device
            .publish_acked(&topic, payload.as_bytes(), Duration::from_secs(60))
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Every message the broker accepted is in the telemetry stream.
    let stream = names.cps_telemetry();
    let docs = wait_until(
        Duration::from_secs(60),
        "every seq in the telemetry stream",
        || {
            let url = site.redis_url.clone();
            let stream = stream.clone();
            async move {
                let mut conn = aurora_core::bus::connect(&url).await.ok()?;
                let docs = stream_docs(&mut conn, &stream).await;
                let seqs: BTreeSet<u64> =
                    docs.iter().filter_map(|(_, d)| d["seq"].as_u64()).collect();
                (seqs.len() as u64 == N + BURST.end - BURST.start).then_some(docs)
            }
        },
    )
    .await;
    let counts = tally(docs.iter().map(|(_, d)| d["seq"].to_string()));
    for seq in (0..N).chain(BURST) {
        assert!(counts.contains_key(&seq.to_string()), "seq {seq} lost");
    }
    for (_, d) in &docs {
        let seq = d["seq"].as_u64().unwrap();
        assert_eq!(d["device_id"], format!("fault-dev-{}", seq % 5), "{d}");
        assert_eq!(d["message_type"], "telemetry");
    }
    eprintln!(
        "mqtt: {} accepted ({attempts} acknowledged one by one, {} in a burst before the SIGKILL), {} entries, {} duplicates (QoS 1 is at least once)",
        N + BURST.end - BURST.start,
        BURST.end - BURST.start,
        docs.len(),
        duplicates(&counts)
    );
    bridge.wait_ready().await;
    assert_eq!(bridge.readyz().await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suricata_events_survive_eve_ingest_kill_and_nats_restart_exactly_once() {
    const N: usize = 300;
    let names = aurora_testkit::names();
    let mut nats = NatsServer::start();
    let mut site = Site::new(&names, "site-a", 12);
    site.nats_url = nats.url();
    let _cleanup = Cleanup::new(&names, &site.nats_url, &[&site.redis_url]);
    let mut eve = site.start(Svc::EveIngest, &[("batch", "20")]).await;
    let mut conn = redis(&site.redis_url).await;

    let lines = eve_lines(N);
    let alerts = lines
        .iter()
        .filter(|l| l.contains("\"event_type\":\"alert\""))
        .count();
    assert!(alerts > 10, "the samples hold alerts");
    for (i, chunk) in lines.chunks(N / 6).enumerate() {
        let items: Vec<Vec<u8>> = chunk.iter().map(|l| l.clone().into_bytes()).collect();
        lpush(&mut conn, &names.suricata_list(), &items).await;
        // The faults strike while a chunk is being taken and published.
        tokio::time::sleep(Duration::from_millis(30)).await;
        match i {
            2 => eve.kill_and_spawn(),
            4 => nats.restart(),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let nats_url = site.nats_url.clone();
    let stream = names.suricata_stream();
    let messages = wait_until(Duration::from_secs(60), "every event in JetStream", || {
        let (nats_url, stream) = (nats_url.clone(), stream.clone());
        async move {
            let m = jetstream_messages(&nats_url, &stream).await;
            (m.len() >= N).then_some(m)
        }
    })
    .await;
    eve.wait_ready().await;
    let per_id = tally(messages.iter().map(|(id, _, _)| id.clone()));
    assert_eq!(per_id.len(), N, "distinct Nats-Msg-Id");
    assert_eq!(duplicates(&per_id), 0, "an event stored twice");
    let payloads: BTreeSet<&[u8]> = messages.iter().map(|(_, _, p)| p.as_slice()).collect();
    for l in &lines {
        assert!(payloads.contains(l.as_bytes()), "event lost: {}", &l[..80]);
    }

    let alert_docs = wait_stream_docs(&conn, &names.alerts(), alerts, "every alert").await;
    // Nothing more trickles in.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alert_docs_after = stream_docs(&mut conn, &names.alerts()).await;
    assert_eq!(alert_docs.len(), alert_docs_after.len());
    let per_alert = tally(alert_docs_after.iter().map(|(_, d)| d["id"].to_string()));
    assert_eq!(per_alert.len(), alerts, "one alert per alert event");
    assert_eq!(duplicates(&per_alert), 0, "an alert written twice");
    assert_eq!(llen(&mut conn, &names.suricata_list()).await, 0);
    assert_eq!(
        llen(&mut conn, &names.eve_processing_list(&eve.instance)).await,
        0,
        "nothing left in the processing list"
    );
    // The replica's chunk index (`<processing list>:chunks`, see eve-ingest's README) names
    // no chunk: every line taken whole from the list was released.
    assert_eq!(
        llen(
            &mut conn,
            &format!("{}:chunks", names.eve_processing_list(&eve.instance))
        )
        .await,
        0,
        "a chunk still held"
    );
    eprintln!(
        "eve: {N} events, {alerts} alerts, each exactly once through a SIGKILL and a NATS restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_cross_a_to_b_exactly_once_through_gateway_kills_and_a_nats_restart() {
    const N: usize = 300;
    let names = aurora_testkit::names();
    let mut nats = NatsServer::start();
    let mut a = Site::new(&names, "site-a", 10);
    let mut b = Site::new(&names, "site-b", 11);
    a.nats_url = nats.url();
    b.nats_url = nats.url();
    let _cleanup = Cleanup::new(&names, &nats.url(), &[&a.redis_url, &b.redis_url]);
    let mut fed_a = a.start(Svc::FederationGateway, &[]).await;
    let mut fed_b = b.start(Svc::FederationGateway, &[]).await;
    let mut conn_a = redis(&a.redis_url).await;
    let mut conn_b = redis(&b.redis_url).await;

    let mut ids = Vec::new();
    for i in 0..N {
        match i {
            75 => fed_a.kill_and_spawn(),
            150 => nats.restart(),
            225 => fed_b.kill_and_spawn(),
            _ => {}
        }
        let id = uuid::Uuid::new_v4().to_string();
        let alert = json!({"id": id, "title": format!("fault alert {i}"), "severity": "high",
            "status": "new", "source": "e2e", "timestamp": chrono::Utc::now()});
        xadd(&mut conn_a, &names.alerts(), alert.to_string().as_bytes()).await;
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    wait_until(Duration::from_secs(60), "every alert at B", || {
        let mut conn = conn_b.clone();
        let stream = names.alerts();
        async move { (xlen(&mut conn, &stream).await as usize >= N).then_some(()) }
    })
    .await;
    fed_a.wait_ready().await;
    fed_b.wait_ready().await;
    // Redeliveries after the kills would land now: give them time.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let at_b = stream_docs(&mut conn_b, &names.alerts()).await;
    let per_id = tally(
        at_b.iter()
            .map(|(_, d)| d["id"].as_str().unwrap_or("").to_string()),
    );
    for id in &ids {
        assert_eq!(per_id.get(id), Some(&1), "alert {id} at B");
    }
    assert_eq!(at_b.len(), N, "nothing else at B");
    assert!(at_b.iter().all(|(_, d)| d["origin_site"] == "site-a"));
    assert_eq!(
        xlen(&mut conn_a, &names.alerts()).await as usize,
        N,
        "no echo at A"
    );
    let wire = jetstream_messages(&nats.url(), &names.nats_stream()).await;
    let per_msg = tally(wire.iter().map(|(id, _, _)| id.clone()));
    assert_eq!(per_msg.len(), N, "one message per alert on the wire");
    assert_eq!(duplicates(&per_msg), 0);
    // Both sites' ledgers: every alert read by A's exporter settled or held, every alert
    // landed at B read by B's groups; no loss to a stream limit.
    for conn in [&conn_a, &conn_b] {
        let rows =
            assert_ledger_accounts_for_everything(conn, &names, Duration::from_secs(600)).await;
        assert!(rows.iter().any(|r| r.done > 0), "{rows:?}");
    }
}

/// Reads alert frames into `seen` until the connection ends or `want` are seen; returns
/// false when the connection ended.
async fn read_alerts(ws: &mut Socket, seen: &mut Vec<Value>, want: usize) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < want {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("timed out with {} of {want} alerts", seen.len()),
            Ok(Some(Ok(Message::Text(t)))) => seen.push(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return false,
            Ok(Some(Ok(_))) => {}
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_resumes_after_a_gateway_kill_without_gap_or_duplicate() {
    const N: usize = 200;
    let names = aurora_testkit::names();
    let site = Site::new(&names, "site-a", 13);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let mut gateway = site.start(Svc::WsGateway, &[]).await;
    let query = format!("token={}", token(&[Permission::WsAlerts]));
    let (mut ws, _) = tokio_tungstenite::connect_async(gateway.ws_url(Channel::Alerts, &query))
        .await
        .unwrap();

    let redis_url = site.redis_url.clone();
    let stream = names.alerts();
    let publisher = tokio::spawn(async move {
        let mut conn = redis(&redis_url).await;
        let mut ids = Vec::new();
        for i in 0..N {
            let id = uuid::Uuid::new_v4().to_string();
            let alert = json!({"id": id, "title": format!("live {i}"), "severity": "low",
                "status": "new", "source": "e2e", "timestamp": chrono::Utc::now()});
            xadd(&mut conn, &stream, alert.to_string().as_bytes()).await;
            ids.push(id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ids
    });

    let mut seen = Vec::new();
    assert!(read_alerts(&mut ws, &mut seen, N / 3).await, "first part");
    gateway.kill();
    // The connection drops with the process (no close frame from a SIGKILL).
    assert!(!read_alerts(&mut ws, &mut seen, N + 1).await);
    gateway.restart().await;
    let since = seen.last().unwrap()["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(
        gateway.ws_url(Channel::Alerts, &format!("{query}&since={since}")),
    )
    .await
    .unwrap();
    let ids = publisher.await.unwrap();
    assert!(
        read_alerts(&mut ws, &mut seen, N).await,
        "the rest after resuming"
    );
    // Nothing more (no duplicate) arrives.
    let extra = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
    assert!(
        !matches!(extra, Ok(Some(Ok(Message::Text(_))))),
        "an extra frame: {extra:?}"
    );
    let got: Vec<&str> = seen.iter().map(|v| v["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(got, want, "every alert once, in order, across the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_their_alerts_survive_a_registry_kill() {
    const DEVICES: usize = 60;
    let names = aurora_testkit::names();
    let db = TestDb::create().await;
    let site = Site::new(&names, "site-a", 14).with_database(&db);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let _bridge = site.start(Svc::MqttBridge, &[]).await;
    let mut registry = site.start(Svc::DeviceRegistry, &[]).await;
    let device = MqttDevice::shared(&format!("e2e-fleet-{}", names.namespace()));
    device.wait_connected().await;

    let ids: Vec<String> = (0..DEVICES).map(|i| format!("reg-{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        if i == DEVICES / 2 {
            registry.kill_and_spawn();
        }
        let hello = json!({"seq": 0, "model": "nRF52840-DK", "firmware_version": "1.4.2"});
        device
            .publish_acked(
                &names.mqtt_sensor_topic(id, DeviceTopicKind::Telemetry),
                hello.to_string().as_bytes(),
                WAIT,
            )
            .await;
        let alert =
            json!({"id": format!("cps-{i}"), "alert_type": "tamper_switch", "severity": "high"});
        device
            .publish_acked(
                &names.mqtt_sensor_topic(id, DeviceTopicKind::Alerts),
                alert.to_string().as_bytes(),
                WAIT,
            )
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    registry.wait_ready().await;

    let pool = db.pool().await;
    wait_until(Duration::from_secs(60), "every device registered and challenged", || {
        let pool = pool.clone();
        async move {
            let (devices, challenged): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM attestation_challenges c WHERE c.device_id = d.device_id AND c.sent)) FROM devices d",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (devices == DEVICES as i64 && challenged == DEVICES as i64).then_some(())
        }
    })
    .await;
    let mut conn = redis(&site.redis_url).await;
    let registered = wait_until(WAIT, "device.registered for every device", || {
        let mut conn = conn.clone();
        let stream = names.cps_devices();
        async move {
            let docs = stream_docs(&mut conn, &stream).await;
            let t = tally(
                docs.iter()
                    .map(|(_, d)| d["device_id"].as_str().unwrap_or("").to_string()),
            );
            (t.len() == DEVICES).then_some(t)
        }
    })
    .await;
    let alerts = wait_until(WAIT, "an alert for every device alert", || {
        let mut conn = conn.clone();
        let stream = names.alerts();
        async move {
            let docs = stream_docs(&mut conn, &stream).await;
            let t = tally(
                docs.iter()
                    .filter(|(_, d)| d["source"] == "cps")
                    .map(|(_, d)| d["device_id"].as_str().unwrap_or("").to_string()),
            );
            (t.len() == DEVICES).then_some(t)
        }
    })
    .await;
    let commands = stream_docs(&mut conn, &names.cps_commands()).await;
    let attests = tally(
        commands
            .iter()
            .filter(|(_, d)| d["action"] == "attest")
            .map(|(_, d)| d["device_id"].as_str().unwrap_or("").to_string()),
    );
    for id in &ids {
        assert!(registered.contains_key(id), "{id} not announced");
        assert!(alerts.contains_key(id), "{id}'s alert lost");
        assert!(attests.contains_key(id), "{id} never challenged on the bus");
    }
    eprintln!(
        "registry: {DEVICES} devices; duplicates after the kill: device.registered {}, attest commands {}, cps alerts {}",
        duplicates(&registered),
        duplicates(&attests),
        duplicates(&alerts)
    );
    // The killed registry's entries were taken over: the ledger accounts for every one.
    let ledger =
        assert_ledger_accounts_for_everything(&conn, &names, Duration::from_secs(600)).await;
    assert!(
        ledger
            .iter()
            .any(|r| r.group == "device-registry" && r.done >= DEVICES as i64),
        "{ledger:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_drains_and_exits_zero_on_sigterm_while_traffic_flows() {
    let names = aurora_testkit::names();
    let db = TestDb::create().await;
    let site = Site::new(&names, "site-a", 15).with_database(&db);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let mut services = Vec::new();
    for svc in [
        Svc::MqttBridge,
        Svc::DeviceRegistry,
        Svc::WsGateway,
        Svc::FederationGateway,
        Svc::EveIngest,
    ] {
        services.push(site.start(svc, &[]).await);
    }
    // Traffic into every service: device telemetry and alerts, Suricata events, alerts to
    // export, a console on the alerts channel.
    let device = MqttDevice::shared(&format!("e2e-drain-{}", names.namespace()));
    device.wait_connected().await;
    let query = format!("token={}", token(&[Permission::WsAlerts]));
    let (_console, _) =
        tokio_tungstenite::connect_async(services[2].ws_url(Channel::Alerts, &query))
            .await
            .unwrap();
    let mut conn = redis(&site.redis_url).await;
    let lines: Vec<Vec<u8>> = eve_lines(100).into_iter().map(String::into_bytes).collect();
    lpush(&mut conn, &names.suricata_list(), &lines).await;
    for i in 0..50 {
        let topic =
            names.mqtt_sensor_topic(&format!("drain-{}", i % 5), DeviceTopicKind::Telemetry);
        device.publish(&topic, json!({"seq": i}).to_string()).await;
    }
    for mut service in services {
        let status = service.terminate().await;
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; log:\n{}",
            service.instance,
            service.log_tail(30)
        );
    }
}
