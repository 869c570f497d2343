//! The Redis-list input against the real Redis and NATS, with the real Suricata samples.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use aurora_core::model::{parse, Alert, DeadLetter, Severity};
use common::*;
use eve_ingest::alert::parse_timestamp;
use eve_ingest::{Hooks, IngestError};
use futures::StreamExt;
use serde_json::Value;

/// Every event of every type reaches its subject once, byte for byte, with its hash as
/// `Nats-Msg-Id`; every alert event becomes one valid Alert whose fields match the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_event_reaches_its_subject_and_every_alert_matches_its_event() {
    let env = Env::new().await;
    let lines = fixture_lines();
    let expected = distinct_by_type(&lines);
    let total: usize = expected.values().sum();
    for t in [
        "alert", "fileinfo", "http", "dns", "flow", "stats", "dnp3", "tls", "ldap", "drop",
    ] {
        assert!(expected.contains_key(t), "the fixtures hold {t}");
    }
    env.push(&lines).await;
    let svc = start(env.settings(), "r1", Hooks::default()).await;
    env.wait_stream_len(total as u64).await;
    env.wait_alerts(expected["alert"]).await;

    let messages = env.messages().await;
    assert_eq!(messages.len(), total);
    let mut by_subject: BTreeMap<String, usize> = BTreeMap::new();
    let mut events: HashMap<String, Value> = HashMap::new();
    for (id, subject, payload) in &messages {
        let ty = event_type(payload);
        assert_eq!(subject, &env.names.suricata_subject(&ty));
        assert_eq!(
            id,
            &sha256_hex(payload),
            "Nats-Msg-Id is the hash of the bytes"
        );
        assert!(
            lines.contains(payload),
            "published bytes are a line as pushed"
        );
        *by_subject.entry(ty).or_insert(0) += 1;
        events.insert(id.clone(), serde_json::from_slice(payload).unwrap());
    }
    let expected_by_subject: BTreeMap<String, usize> = expected.clone();
    assert_eq!(by_subject, expected_by_subject);

    let alerts = env.alerts().await;
    assert_eq!(alerts.len(), expected["alert"]);
    let mut ids = HashSet::new();
    for raw in &alerts {
        let alert: Alert = parse(raw).unwrap();
        assert!(ids.insert(alert.id), "one alert per event");
        let event = &events[alert.extra["event_sha256"].as_str().unwrap()];
        assert_eq!(event["event_type"], "alert");
        assert_eq!(alert.title, event["alert"]["signature"].as_str().unwrap());
        let severity = match event["alert"]["severity"].as_i64().unwrap() {
            1 => Severity::High,
            2 => Severity::Medium,
            3 => Severity::Low,
            _ => Severity::Info,
        };
        assert_eq!(alert.severity, severity);
        assert_eq!(alert.source, "suricata");
        assert_eq!(
            alert.timestamp,
            parse_timestamp(event["timestamp"].as_str().unwrap()).unwrap()
        );
        assert_eq!(alert.extra["signature_id"], event["alert"]["signature_id"]);
        assert_eq!(alert.extra["src_ip"], event["src_ip"]);
        assert_eq!(alert.extra["dest_port"], event["dest_port"]);
        assert_eq!(alert.extra["flow_id"], event["flow_id"]);
        for ioc in &alert.iocs {
            match ioc.ioc_type.as_str() {
                "ipv4" | "ipv6" => assert!(
                    event["src_ip"] == ioc.value.as_str() || event["dest_ip"] == ioc.value.as_str()
                ),
                "domain" => assert!(
                    [
                        &event["http"]["hostname"],
                        &event["tls"]["sni"],
                        &event["dns"]["rrname"]
                    ]
                    .iter()
                    .any(|v| v.as_str().map(|s| s.to_ascii_lowercase()) == Some(ioc.value.clone())),
                    "{} not in the event",
                    ioc.value
                ),
                other => panic!("unexpected ioc type {other}"),
            }
        }
        // 172.17.0.2 -> 54.230.202.37 (surevego): the external side only.
        if event["src_ip"] == "172.17.0.2" {
            assert!(alert.iocs.iter().any(|i| i.value == "54.230.202.37"));
            assert!(!alert.iocs.iter().any(|i| i.value == "172.17.0.2"));
            assert!(alert
                .iocs
                .iter()
                .any(|i| i.ioc_type == "domain" && i.value == "deb.debian.org"));
        }
    }
    assert_eq!(llen(&mut env.conn(), &env.names.suricata_list()).await, 0);
    assert_eq!(env.held("r1").await, 0);
    assert_eq!(llen(&mut env.conn(), &env.names.eve_deadletter()).await, 0);
    svc.stop().await.unwrap();
}

/// The blog's example: a pull consumer filtered on `suricata.dns` gets the DNS events only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_consumer_on_the_dns_subject_receives_only_dns_events() {
    let env = Env::new().await;
    let lines = fixture_lines();
    let dns = distinct_by_type(&lines)["dns"];
    let total: usize = distinct_by_type(&lines).values().sum();
    env.push(&lines).await;
    let svc = start(env.settings(), "r1", Hooks::default()).await;
    env.wait_stream_len(total as u64).await;

    let stream = env
        .js
        .get_stream(env.names.suricata_stream())
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("dns-reader".into()),
            filter_subject: env.names.suricata_subject("dns"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(total)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut got = 0;
    while let Some(message) = batch.next().await {
        let message = message.unwrap();
        assert_eq!(message.subject.as_str(), env.names.suricata_subject("dns"));
        assert_eq!(event_type(&message.payload), "dns");
        message.ack().await.unwrap();
        got += 1;
    }
    assert_eq!(got, dns);
    svc.stop().await.unwrap();
}

/// Lines that are not events go to the dead-letter list with the reason and their exact
/// bytes, are counted, and leave the processing list; the good lines around them go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_dead_lettered_with_the_reason_and_counted() {
    let env = Env::new().await;
    let good: Vec<Vec<u8>> = fixture_lines().into_iter().take(5).collect();
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"not json at all".to_vec(), "invalid_json"),
        (b"{\"event_type\":\"dns\"".to_vec(), "invalid_json"),
        (vec![0xff, 0xfe, 0x00, 0x7b], "invalid_json"),
        (b"[1,2,3]".to_vec(), "not_an_object"),
        (b"{\"timestamp\":\"x\"}".to_vec(), "no_event_type"),
        (b"{\"event_type\":42}".to_vec(), "no_event_type"),
        (
            b"{\"event_type\":\"alert\",\"alert\":\"not an object\"}".to_vec(),
            "-",
        ),
    ];
    let mut lines = good.clone();
    lines.extend(bad.iter().map(|(l, _)| l.clone()));
    env.push(&lines).await;
    let svc = start(env.settings(), "r1", Hooks::default()).await;
    // The last "bad" one is an alert event with an odd body: it is an event, not a dead letter.
    env.wait_stream_len(good.len() as u64 + 1).await;
    aurora_testkit::wait_until(LONG, "dead letters", || async {
        (llen(&mut env.conn(), &env.names.eve_deadletter()).await >= bad.len() as u64 - 1)
            .then_some(())
    })
    .await;
    let records: Vec<Vec<u8>> = env.list(&env.names.eve_deadletter()).await;
    assert_eq!(records.len(), bad.len() - 1);
    for (line, reason) in bad.iter().filter(|(_, r)| *r != "-") {
        let record = records
            .iter()
            .map(|r| parse::<DeadLetter>(r).unwrap())
            .find(|r| r.raw().as_deref() == Some(line.as_slice()))
            .unwrap_or_else(|| panic!("no dead letter for {line:?}"));
        assert_eq!(record.extra["reason_code"], *reason);
        assert_eq!(record.service, "eve-ingest");
        assert_eq!(record.source, env.names.suricata_list());
        assert!(!record.reason.is_empty());
    }
    // The odd alert still became a valid alert.
    env.wait_alerts(1).await;
    let alert: Alert = parse(&env.alerts().await[0]).unwrap();
    assert_eq!(alert.title, "Suricata alert");
    let metrics = aurora_core::ops::metrics_handle().render();
    for reason in ["invalid_json", "not_an_object", "no_event_type"] {
        assert!(
            metrics.contains(&format!(
                "aurora_eve_ingest_dead_letters_total{{reason=\"{reason}\"}}"
            )),
            "{reason} counted"
        );
    }
    aurora_testkit::wait_until(LONG, "processing list empty", || async {
        (env.held("r1").await == 0).then_some(())
    })
    .await;
    svc.stop().await.unwrap();
}

/// The service dies after a batch is published and its alerts written, before the lines
/// leave the processing list; then dies again while recovering them. The third start
/// finishes: every event is in JetStream once (its republish was a duplicate) and every
/// alert is on the stream once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_publish_and_removal_loses_nothing_and_doubles_nothing() {
    let env = Env::new().await;
    let lines = fixture_lines();
    let expected = distinct_by_type(&lines);
    let total: usize = expected.values().sum();
    env.push(&lines).await;

    let mut settings = env.settings();
    settings.batch = 40;
    settings.inflight_batches = 1;
    let crash_at_3 = Hooks {
        crash_before_release: Some(Arc::new(|batch| batch == 3)),
        ..Hooks::default()
    };
    let first = start(settings.clone(), "r1", crash_at_3).await;
    let died = first.died().await;
    assert!(
        matches!(died, Err(IngestError::FaultInjected(_))),
        "{died:?}"
    );
    let published = env.stream_len().await;
    let left = env.held("r1").await;
    assert!(
        published >= 80,
        "two batches and the crashed one went out: {published}"
    );
    assert!(left >= 40, "the crashed batch is still held: {left}");
    let alerts_before = xlen(&mut env.conn(), &env.names.alerts()).await;
    assert!(alerts_before > 0);

    // Dies again during recovery, after republishing what it found.
    let crashed_once = Arc::new(AtomicBool::new(false));
    let flag = crashed_once.clone();
    let crash_in_recovery = Hooks {
        crash_before_release: Some(Arc::new(move |batch| {
            batch == 0 && !flag.swap(true, Ordering::SeqCst)
        })),
        ..Hooks::default()
    };
    let second = start(settings.clone(), "r1", crash_in_recovery).await;
    let died = second.died().await;
    assert!(
        matches!(died, Err(IngestError::FaultInjected(_))),
        "{died:?}"
    );
    assert_eq!(
        env.stream_len().await,
        published,
        "the republished batch was deduplicated"
    );
    assert_eq!(
        xlen(&mut env.conn(), &env.names.alerts()).await,
        alerts_before,
        "no alert twice"
    );

    let third = start(settings, "r1", Hooks::default()).await;
    env.wait_stream_len(total as u64).await;
    env.wait_alerts(expected["alert"]).await;
    aurora_testkit::wait_until(LONG, "processing list empty", || async {
        (env.held("r1").await == 0).then_some(())
    })
    .await;
    third.stop().await.unwrap();

    let messages = env.messages().await;
    assert_eq!(messages.len(), total, "nothing lost, nothing doubled");
    let ids: HashSet<&String> = messages.iter().map(|(id, _, _)| id).collect();
    assert_eq!(ids.len(), total);
    let alerts = env.alerts().await;
    assert_eq!(alerts.len(), expected["alert"]);
    let alert_ids: HashSet<_> = alerts
        .iter()
        .map(|a| parse::<Alert>(a).unwrap().id)
        .collect();
    assert_eq!(alert_ids.len(), alerts.len());
}

/// Two replicas share the list and each event goes out once; a third adopts the processing
/// list and the chunk a gone replica left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_list_and_a_gone_replicas_lines_are_adopted() {
    let env = Env::new().await;
    let lines = fixture_lines();
    let total: usize = distinct_by_type(&lines).values().sum();
    let (orphaned, shared) = lines.split_at(30);
    // What a replica "gone" had taken and never finished: lines in its processing list and
    // a chunk registered in its index.
    let gone = env.names.eve_processing_list("gone");
    let chunk = format!("{gone}:chunk:left-behind");
    let (in_processing, in_chunk) = orphaned.split_at(15);
    let mut pipe = redis::pipe();
    for line in in_processing {
        pipe.cmd("LPUSH").arg(&gone).arg(line).ignore();
    }
    for line in in_chunk {
        pipe.cmd("LPUSH").arg(&chunk).arg(line).ignore();
    }
    pipe.cmd("RPUSH")
        .arg(eve_ingest::list_source::chunk_index(&gone))
        .arg(&chunk)
        .ignore();
    pipe.query_async::<()>(&mut env.redis.clone())
        .await
        .unwrap();
    env.push(shared).await;

    let mut s1 = env.settings();
    s1.batch = 25;
    let mut s2 = env.settings();
    s2.batch = 25;
    let r1 = start(s1, "r1", Hooks::default()).await;
    let r2 = start(s2, "r2", Hooks::default()).await;
    aurora_testkit::wait_until(LONG, "the shared list drained", || async {
        (llen(&mut env.conn(), &env.names.suricata_list()).await == 0
            && env.held("r1").await == 0
            && env.held("r2").await == 0)
            .then_some(())
    })
    .await;
    let mut s3 = env.settings();
    if let eve_ingest::Input::List { recover_from, .. } = &mut s3.input {
        recover_from.push("gone".into());
    }
    let r3 = start(s3, "r3", Hooks::default()).await;
    env.wait_stream_len(total as u64).await;
    assert_eq!(env.held("gone").await, 0);
    for r in [r1, r2, r3] {
        r.stop().await.unwrap();
    }
    let messages = env.messages().await;
    assert_eq!(messages.len(), total);
}

/// Redis (a server of the test's own) is killed while the service waits on the list, and
/// started again: the failed take makes the replica finish what it had, look at what it
/// holds again, and go on. Every event before and after is in JetStream once, every alert on
/// the stream once, and the replica ends holding nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_stream_loses_nothing_and_doubles_nothing() {
    // Append-only with fsync on every write: what Redis acknowledged survives its SIGKILL.
    let mut own_redis = aurora_testkit::RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]);
    let env = Env::with_redis(&own_redis.url()).await;
    let lines = fixture_lines();
    let expected = distinct_by_type(&lines);
    let total: usize = expected.values().sum();
    let (before, after) = lines.split_at(lines.len() / 2);
    let mut settings = env.settings();
    settings.batch = 20;
    env.push(before).await;
    let svc = start(settings, "r1", Hooks::default()).await;
    aurora_testkit::wait_until(LONG, "the first half taken and released", || async {
        (env.stream_len().await > 0 && env.held("r1").await == 0).then_some(())
    })
    .await;

    own_redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    own_redis.start_again();
    aurora_testkit::wait_until(LONG, "Redis answers again", || async {
        let pong: redis::RedisResult<String> =
            redis::cmd("PING").query_async(&mut env.conn()).await;
        pong.ok()
    })
    .await;
    env.push(after).await;

    env.wait_stream_len(total as u64).await;
    env.wait_alerts(expected["alert"]).await;
    aurora_testkit::wait_until(LONG, "nothing held", || async {
        (env.held("r1").await == 0 && llen(&mut env.conn(), &env.names.suricata_list()).await == 0)
            .then_some(())
    })
    .await;
    svc.stop().await.unwrap();

    let messages = env.messages().await;
    assert_eq!(messages.len(), total, "nothing lost, nothing doubled");
    let alerts = env.alerts().await;
    assert_eq!(alerts.len(), expected["alert"]);
}
