//! Highly available backends under load (issue: Redis with Sentinel, a NATS cluster):
//!
//! - A Redis primary, one replica and three Sentinels, the services pointed at the Sentinels:
//!   MQTT telemetry through mqtt-bridge and Suricata events through eve-ingest while the
//!   primary is SIGKILLed; the Sentinels promote the replica; the old primary comes back
//!   (empty) and is made a replica. With `--redis-wait-replicas 1` nothing the broker or the
//!   sensor handed over is lost (duplicates counted); without it the test prints what was
//!   lost.
//! - Three NATS servers in a cluster, the streams R3: federation (site A to site B) and
//!   eve-ingest under load, the node each service is connected to SIGKILLed and later started
//!   again: nothing lost, nothing twice, nobody restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aurora_core::names::DeviceTopicKind;
use aurora_e2e::eve_lines;
use aurora_testkit::ha::{NatsCluster, SentinelSet};
use aurora_testkit::nats::try_jetstream_messages;
use aurora_testkit::prelude::*;
use serde_json::json;

/// What one failover run saw.
struct Outcome {
    mqtt_lost: usize,
    mqtt_duplicated: usize,
    eve_lost: usize,
    eve_alerts_lost: usize,
}

/// MQTT messages and EVE lines through a Redis failover; `wait` = `--redis-wait-replicas 1`.
async fn redis_failover(wait: bool) -> Outcome {
    const MQTT: u64 = 2_000;
    const EVE: usize = 600;
    let names = aurora_testkit::names();
    let mut set = SentinelSet::start().await;
    let broker = MosquittoServer::start();
    let mut site = Site::new(&names, "site-a", 0);
    site.redis_url = set.url();
    site.mqtt_url = format!("mqtt://127.0.0.1:{}", broker.port());
    let _cleanup = Cleanup::new(&names, &site.nats_url, &[]);
    let replicas = if wait { "1" } else { "0" };
    let flags = [
        ("redis-wait-replicas", replicas),
        ("redis-wait-timeout", "1s"),
    ];
    let mut bridge = site.start(Svc::MqttBridge, &flags).await;
    let mut eve = site
        .start(Svc::EveIngest, &[flags[0], flags[1], ("batch", "50")])
        .await;

    let device = MqttDevice::connect(
        "127.0.0.1",
        broker.port(),
        &format!("ha-pub-{}", names.namespace()),
    );
    device.wait_connected().await;
    // The sensor's side of eve-ingest: a line counts as handed over once the primary and its
    // replica hold it (the test's own WAIT), so that what it pushed is not lost by the
    // failover before eve-ingest ever saw it.
    let lines = eve_lines(EVE);
    let alerts = lines
        .iter()
        .filter(|l| l.contains("\"event_type\":\"alert\""))
        .count();
    let sensor = {
        let conn = aurora_core::bus::connect(&set.url()).await.unwrap();
        let (list, lines) = (names.suricata_list(), lines.clone());
        tokio::spawn(async move {
            for chunk in lines.chunks(3) {
                let chunk: Vec<Vec<u8>> = chunk.iter().map(|l| l.clone().into_bytes()).collect();
                let mut conn = conn.clone();
                loop {
                    let reply: ::redis::RedisResult<(i64, i64)> = ::redis::pipe()
                        .cmd("LPUSH")
                        .arg(&list)
                        .arg(&chunk)
                        .cmd("WAIT")
                        .arg(1)
                        .arg(1000)
                        .query_async(&mut conn)
                        .await;
                    match reply {
                        Ok((_, replicas)) if replicas >= 1 => break,
                        // Pushed but not replicated, or not pushed: push again (duplicates
                        // are what JetStream's message ids are for).
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut killed = None;
    let started = Instant::now();
    for seq in 0..MQTT {
        let topic =
            names.mqtt_sensor_topic(&format!("ha-dev-{}", seq % 7), DeviceTopicKind::Telemetry);
        device
            .publish(
                &topic,
                json!({"seq": seq, "temperature_c": 20.5}).to_string(),
            )
            .await;
        if seq == MQTT / 3 {
            let port = set.kill_primary().await;
            killed = Some(port);
            eprintln!("primary {port} SIGKILLed at seq {seq}");
        }
        if let Some(port) = killed {
            // Once the replica is promoted the old primary comes back, to be its replica.
            if seq % 50 == 0 && set.primary_port().await.is_some_and(|p| p != port) {
                set.start_node(port).await;
                killed = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    if let Some(port) = killed {
        set.wait_primary(|p| p != port, Duration::from_secs(30))
            .await;
        set.start_node(port).await;
    }
    let primary = set.wait_primary(|_| true, Duration::from_secs(30)).await;
    set.wait_replicas(primary, 1, Duration::from_secs(30)).await;
    sensor.await.unwrap();
    eprintln!(
        "traffic done in {:?}; acked by the broker: {}",
        started.elapsed(),
        device.acked()
    );

    // Everything settles on the new primary: count until the counts stop growing.
    let stream = names.cps_telemetry();
    let mut last = (usize::MAX, usize::MAX);
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mqtt_seqs, mqtt_entries, eve_ids, alert_ids) = loop {
        let mut conn = aurora_core::bus::connect(&set.url()).await.unwrap();
        let docs = stream_docs(&mut conn, &stream).await;
        let seqs: BTreeSet<u64> = docs.iter().filter_map(|(_, d)| d["seq"].as_u64()).collect();
        let messages = jetstream_messages(&site.nats_url, &names.suricata_stream()).await;
        let ids: BTreeSet<Vec<u8>> = messages.iter().map(|(_, _, p)| p.clone()).collect();
        let alert_docs = stream_docs(&mut conn, &names.alerts()).await;
        let alert_ids: BTreeSet<String> = alert_docs
            .iter()
            .filter_map(|(_, d)| d["id"].as_str().map(str::to_string))
            .collect();
        let complete = seqs.len() as u64 == MQTT && ids.len() == EVE && alert_ids.len() == alerts;
        let now = (docs.len(), ids.len() + alert_ids.len());
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        if complete || stable_since.elapsed() > Duration::from_secs(15) || Instant::now() > deadline
        {
            break (seqs, docs.len(), ids, alert_ids);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let outcome = Outcome {
        mqtt_lost: (0..MQTT).filter(|s| !mqtt_seqs.contains(s)).count(),
        mqtt_duplicated: mqtt_entries - mqtt_seqs.len(),
        eve_lost: lines
            .iter()
            .filter(|l| !eve_ids.contains(l.as_bytes()))
            .count(),
        eve_alerts_lost: alerts - alert_ids.len().min(alerts),
    };
    eprintln!(
        "redis failover, --redis-wait-replicas {replicas}: mqtt {MQTT} sent, {} lost, {} duplicated; \
         eve {EVE} lines, {} lost; {alerts} alerts, {} lost; bridge moves {}, eve moves {}",
        outcome.mqtt_lost,
        outcome.mqtt_duplicated,
        outcome.eve_lost,
        outcome.eve_alerts_lost,
        bridge.metric("aurora_bus_primary_moves_total", &[]).await,
        eve.metric("aurora_bus_primary_moves_total", &[]).await,
    );
    // Nobody was restarted, and both are ready on the new primary.
    bridge.wait_ready().await;
    eve.wait_ready().await;
    assert!(bridge.exited().is_none() && eve.exited().is_none());
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_failover_loses_nothing_with_the_replica_wait() {
    let outcome = redis_failover(true).await;
    assert_eq!(
        outcome.mqtt_lost, 0,
        "telemetry the broker handed over, lost"
    );
    assert_eq!(outcome.eve_lost, 0, "events the sensor handed over, lost");
    assert_eq!(outcome.eve_alerts_lost, 0, "alerts lost");
    let _ = outcome.mqtt_duplicated;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_failover_without_the_replica_wait_reports_what_it_lost() {
    // Asynchronous replication: what a primary acknowledged and had not sent to its replica
    // when it died is gone. On loopback the replica is rarely behind, so this run often
    // loses nothing; it prints what it lost either way (docs/contract.md#redis).
    let outcome = redis_failover(false).await;
    eprintln!(
        "without the wait: {} telemetry messages, {} events, {} alerts lost",
        outcome.mqtt_lost, outcome.eve_lost, outcome.eve_alerts_lost
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_lost_under_load_loses_and_repeats_nothing() {
    const ALERTS: usize = 700;
    let names = aurora_testkit::names();
    let mut cluster = NatsCluster::start().await;
    let mut a = Site::new(&names, "site-a", 10);
    let mut b = Site::new(&names, "site-b", 11);
    // eve-ingest at a third site: its alerts stay there, out of the federation's count.
    let mut c = Site::new(&names, "site-c", 12);
    a.nats_url = cluster.url();
    b.nats_url = cluster.url();
    c.nats_url = cluster.url();
    let _cleanup = Cleanup::new(
        &names,
        &cluster.url(),
        &[&a.redis_url, &b.redis_url, &c.redis_url],
    );
    let r3 = ("nats-stream-replicas", "3");
    let fed_a = a.start(Svc::FederationGateway, &[r3]).await;
    let fed_b = b.start(Svc::FederationGateway, &[r3]).await;
    let eve = c.start(Svc::EveIngest, &[r3, ("batch", "20")]).await;
    let mut conn_a = redis(&a.redis_url).await;
    let mut conn_c = redis(&c.redis_url).await;
    let mut conn_b = redis(&b.redis_url).await;

    let lines = eve_lines(ALERTS);
    let mut ids = Vec::new();
    // Three rounds: the node federation A, then federation B, then eve-ingest is connected to
    // is SIGKILLed, and started again a while later (two nodes of three must stay up for an
    // R3 stream to take writes).
    let mut down: Option<usize> = None;
    for (i, line) in lines.iter().enumerate() {
        let round = i * 7 / ALERTS;
        if round % 2 == 1 && down.is_none() && i * 7 % ALERTS < 7 {
            let svc = [&fed_a, &fed_b, &eve][round / 2];
            let client = format!("{}-{}", svc.svc.name(), svc.instance);
            let node = wait_until(
                Duration::from_secs(20),
                "the node serving a service",
                || {
                    let cluster = &cluster;
                    let client = client.clone();
                    async move { cluster.node_of_client(&client).await }
                },
            )
            .await;
            cluster.kill(node);
            down = Some(node);
            eprintln!("round {round}: node {node} (serving {client}) SIGKILLed");
        }
        if round.is_multiple_of(2) && round > 0 {
            if let Some(node) = down.take() {
                cluster.start_again(node);
                eprintln!("round {round}: node {node} started again");
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let alert = json!({"id": id, "title": format!("ha alert {i}"), "severity": "high",
            "status": "new", "source": "e2e", "timestamp": chrono::Utc::now()});
        xadd(&mut conn_a, &names.alerts(), alert.to_string().as_bytes()).await;
        ids.push(id);
        lpush(
            &mut conn_c,
            &names.suricata_list(),
            &[line.clone().into_bytes()],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }

    let nats_url = cluster.url();
    let stream = names.suricata_stream();
    // Read while the cluster may still be settling: a read that fails is tried again.
    let read_all = |nats_url: String, stream: String| async move {
        try_jetstream_messages(&nats_url, &stream).await.ok()
    };
    let events = wait_until(Duration::from_secs(90), "every event in JetStream", || {
        let read = read_all(nats_url.clone(), stream.clone());
        async move { read.await.filter(|m| m.len() >= ALERTS) }
    })
    .await;
    wait_until(Duration::from_secs(90), "every alert at B", || {
        let mut conn = conn_b.clone();
        let stream = names.alerts();
        async move { (xlen(&mut conn, &stream).await as usize >= ALERTS).then_some(()) }
    })
    .await;
    // Redeliveries would land now: give them time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events_after = wait_until(Duration::from_secs(30), "the events read again", || {
        read_all(nats_url.clone(), stream.clone())
    })
    .await;
    let per_event = tally(events_after.iter().map(|(id, _, _)| id.clone()));
    assert_eq!(per_event.len(), ALERTS, "every event");
    assert_eq!(duplicates(&per_event), 0, "an event stored twice");
    assert_eq!(events_after.len(), events.len(), "events after the count");
    let payloads: BTreeSet<&[u8]> = events_after.iter().map(|(_, _, p)| p.as_slice()).collect();
    for l in &lines {
        assert!(payloads.contains(l.as_bytes()), "event lost: {}", &l[..60]);
    }
    let at_b = stream_docs(&mut conn_b, &names.alerts()).await;
    let per_id = tally(
        at_b.iter()
            .map(|(_, d)| d["id"].as_str().unwrap_or("").to_string()),
    );
    for id in &ids {
        assert_eq!(per_id.get(id), Some(&1), "alert {id} at B");
    }
    assert_eq!(at_b.len(), ALERTS, "nothing else at B");
    eprintln!(
        "nats cluster: {ALERTS} alerts A to B and {} events, each exactly once through a node's loss",
        events_after.len()
    );
    for svc in [&fed_a, &fed_b, &eve] {
        assert_eq!(svc.readyz().await, Some(200), "{} ready", svc.instance);
    }
    // The streams were made R3 by the services (--nats-stream-replicas 3).
    let js = async_nats::jetstream::new(
        async_nats::connect(aurora_testkit::nats::servers(&nats_url))
            .await
            .unwrap(),
    );
    for name in [names.nats_stream(), names.suricata_stream()] {
        let replicas = wait_until(Duration::from_secs(30), "the stream's info", || {
            let (js, name) = (js.clone(), name.clone());
            async move {
                let mut stream = js.get_stream(&name).await.ok()?;
                stream.info().await.ok().map(|i| i.config.num_replicas)
            }
        })
        .await;
        assert_eq!(replicas, 3, "{name} replicas");
    }
}
