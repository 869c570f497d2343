//! Sensor blindness against the real Redis and NATS: the samples' own `stats` events, with
//! capture counters written into them, drive a blind alert when drops are injected (closed
//! when they stop) and a silent alert when the stats stop (closed when they come again).
//! Two replicas share the list and the state: one alert per condition, not one per event.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use aurora_core::model::{parse, Alert, AlertStatus, Severity};
use chrono::{DateTime, Utc};
use common::*;
use eve_ingest::sensors::{SensorSettings, KIND_BLIND, KIND_SILENT, SOURCE};
use eve_ingest::Hooks;
use serde_json::{json, Value};

/// The `stats` events of the samples (tests/fixtures, from /work/shared/data/suricata).
fn sample_stats() -> Vec<Value> {
    let stats: Vec<Value> = fixture_lines()
        .iter()
        .map(|l| serde_json::from_slice::<Value>(l).unwrap())
        .filter(|v| v["event_type"] == "stats")
        .collect();
    assert!(stats.len() >= 5, "the fixtures hold stats events");
    stats
}

/// Sample `n` of the samples' stats as sensor `host` said it at `at`, after `uptime`
/// seconds, with the cumulative capture counters `packets` and `drops`.
fn stats_line(
    n: usize,
    host: &str,
    at: DateTime<Utc>,
    uptime: u64,
    counters: (u64, u64),
) -> Vec<u8> {
    let samples = sample_stats();
    let mut event = samples[n % samples.len()].clone();
    event["host"] = json!(host);
    event["timestamp"] = json!(at.format("%Y-%m-%dT%H:%M:%S%.6f%z").to_string());
    let stats = event["stats"].as_object_mut().unwrap();
    stats.insert("uptime".into(), json!(uptime));
    stats.insert(
        "capture".into(),
        json!({"kernel_packets": counters.0, "kernel_drops": counters.1}),
    );
    serde_json::to_vec(&event).unwrap()
}

/// The sensor alerts on the alerts stream, in order.
async fn sensor_alerts(env: &Env) -> Vec<Alert> {
    env.alerts()
        .await
        .iter()
        .map(|data| parse::<Alert>(data).unwrap())
        .filter(|a| a.source == SOURCE)
        .collect()
}

/// The example of proto-schemas/ for this kind and status: a written alert has its fields.
fn example_fields(kind: &str, status: AlertStatus) -> HashSet<String> {
    let name = match (kind, status) {
        (KIND_BLIND, AlertStatus::Closed) => "sensor-blind-closed",
        (KIND_BLIND, _) => "sensor-blind",
        (_, AlertStatus::Closed) => "sensor-silent-closed",
        _ => "sensor-silent",
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../../proto-schemas/examples/alert.valid.{name}.json"
    ));
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc.as_object().unwrap().keys().cloned().collect()
}

fn check_shape(alert: &Alert) {
    let doc: Value = serde_json::from_slice(&aurora_core::model::to_bytes(alert)).unwrap();
    let fields: HashSet<String> = doc.as_object().unwrap().keys().cloned().collect();
    let kind = alert.extra["kind"].as_str().unwrap();
    assert_eq!(
        fields,
        example_fields(kind, alert.status),
        "{kind} {:?}: the fields of the proto-schemas example",
        alert.status
    );
}

/// Pushes `lines` and waits until the replicas took and finished them.
async fn push_handled(env: &Env, lines: &[Vec<u8>]) {
    env.push(lines).await;
    aurora_testkit::wait_until(LONG, "the lines handled", || async {
        let held = env.held("r1").await + env.held("r2").await;
        let left = llen(&mut env.conn(), &env.names.suricata_list()).await;
        (held == 0 && left == 0).then_some(())
    })
    .await;
}

async fn wait_sensor_alerts(env: &Env, n: usize, what: &str) -> Vec<Alert> {
    aurora_testkit::wait_until(LONG, what, || async {
        let alerts = sensor_alerts(env).await;
        (alerts.len() >= n).then_some(alerts)
    })
    .await
}

/// Drops injected into one sensor's counters open one blind episode (its alert written
/// again only when the ratio crosses into a higher severity band) and a clean window closes
/// it under the same id; the healthy sensor beside it, the samples' stats without counters
/// and malformed stats raise nothing; the same lines again (a retry) change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_drops_open_one_blind_episode_and_a_clean_window_closes_it() {
    let env = Env::new().await;
    let mut settings = env.settings();
    settings.batch = 4;
    // Event time: stats 10 s apart, a 30 s window; silence would need 30 s of real time.
    settings.sensors = Some(SensorSettings {
        drop_ratio: 0.01,
        window: Duration::from_secs(30),
        min_packets: 100,
        stats_interval: Duration::from_secs(10),
        silent_after: 3,
    });
    let r1 = start(settings.clone(), "r1", Hooks::default()).await;
    let r2 = start(settings, "r2", Hooks::default()).await;

    let start_at = Utc::now() - chrono::Duration::hours(1);
    let mut lines = Vec::new();
    let (mut packets, mut drops) = (0u64, 0u64);
    let mut phase = |lines: &mut Vec<Vec<u8>>, from: usize, to: usize, dropped: u64| {
        for i in from..to {
            packets += 10_000;
            drops += dropped;
            let at = start_at + chrono::Duration::seconds(10 * i as i64);
            lines.push(stats_line(
                i,
                "sensor-a",
                at,
                10 * i as u64,
                (packets, drops),
            ));
            lines.push(stats_line(
                i + 1,
                "sensor-b",
                at,
                10 * i as u64,
                (20_000 * i as u64, 3 * i as u64),
            ));
        }
    };
    // Healthy, then 20% dropped (the window's ratio climbs through medium to high).
    phase(&mut lines, 0, 6, 0);
    phase(&mut lines, 6, 12, 2_000);
    // The samples' stats as they are (no capture counters) and malformed ones.
    lines.extend(
        fixture_lines()
            .into_iter()
            .filter(|l| event_type(l) == "stats"),
    );
    lines.push(br#"{"event_type":"stats","host":"sensor-a","stats":{"capture":{"kernel_packets":"many"}}}"#.to_vec());
    lines.push(br#"{"event_type":"stats","host":"sensor-a","stats":7}"#.to_vec());
    lines.push(br#"{"event_type":"stats","host":["x"],"timestamp":12}"#.to_vec());
    // One sensor's stats are used in time order: a stats event older than the newest used is
    // stale (a retry). Pushed one interval at a time, each taken before the next, so the two
    // replicas see them in order (pushed at once, a replica may take a later one first, and
    // the window skips from healthy straight to high).
    for chunk in lines.chunks(2) {
        push_handled(&env, chunk).await;
    }
    let opened = wait_sensor_alerts(&env, 2, "the blind episode at medium, then high").await;

    // Drops stop: a window without drops closes it.
    let mut recovery = Vec::new();
    phase(&mut recovery, 12, 18, 0);
    for chunk in recovery.chunks(2) {
        push_handled(&env, chunk).await;
    }
    let alerts = aurora_testkit::wait_until(LONG, "the blind episode closed", || async {
        let alerts = sensor_alerts(&env).await;
        alerts
            .iter()
            .any(|a| a.status == AlertStatus::Closed)
            .then_some(alerts)
    })
    .await;
    // A retry of everything: stale stats, no new transition.
    env.push(&lines).await;
    env.push(&recovery).await;
    let total = 2 * lines.len() + 2 * recovery.len();
    aurora_testkit::wait_until(LONG, "every line handled", || async {
        let held = env.held("r1").await + env.held("r2").await;
        let left = llen(&mut env.conn(), &env.names.suricata_list()).await;
        (held == 0 && left == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sensor_alerts(&env).await.len(),
        alerts.len(),
        "a retry writes nothing"
    );
    println!("{} lines pushed; sensor alerts: {alerts:#?}", total);

    assert!(opened.iter().all(|a| a.status == AlertStatus::New));
    let ids: HashSet<_> = alerts.iter().map(|a| a.id).collect();
    assert_eq!(ids.len(), 1, "one episode, one id");
    assert!(alerts.iter().all(|a| a.extra["sensor"] == "sensor-a"));
    assert!(alerts.iter().all(|a| a.extra["kind"] == KIND_BLIND));
    let news: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.status == AlertStatus::New)
        .collect();
    let closed: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.status == AlertStatus::Closed)
        .collect();
    assert_eq!(closed.len(), 1, "closed once");
    assert_eq!(alerts.last().unwrap().status, AlertStatus::Closed);
    assert_eq!(news[0].severity, Severity::Medium);
    assert!(
        news.windows(2).all(|w| w[0].severity < w[1].severity),
        "written again only when worse"
    );
    assert_eq!(news.last().unwrap().severity, Severity::High);
    assert_eq!(closed[0].severity, Severity::High);
    let ratio = news.last().unwrap().extra["drop_ratio"].as_f64().unwrap();
    assert!((0.1..=0.2).contains(&ratio), "{ratio}");
    assert!(closed[0].extra["drop_ratio"].as_f64().unwrap() < 0.005);
    assert_eq!(closed[0].extra["window_seconds"], 30.0);
    for alert in &alerts {
        check_shape(alert);
    }
    let metrics = aurora_core::ops::metrics_handle().render();
    assert!(
        metrics
            .contains("aurora_eve_ingest_sensor_alerts_total{kind=\"blind\",status=\"closed\"} 1"),
        "{metrics}"
    );
    r1.stop().await.unwrap();
    r2.stop().await.unwrap();
}

/// A sensor whose stats stop is silent after `silent_after` of its intervals (learned from
/// its stats: 200 ms here): one alert, though both replicas sweep; its next stats close it;
/// a second silence is a second episode with an id of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_stats_raise_one_silent_alert_per_episode() {
    let env = Env::new().await;
    let mut settings = env.settings();
    settings.sensors = Some(SensorSettings {
        stats_interval: Duration::from_millis(200),
        silent_after: 3,
        ..SensorSettings::default()
    });
    let r1 = start(settings.clone(), "r1", Hooks::default()).await;
    let r2 = start(settings, "r2", Hooks::default()).await;
    let base = Utc::now();
    let at = |i: i64| base + chrono::Duration::milliseconds(200 * i);
    let lines: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            stats_line(
                i as usize,
                "sensor-s",
                at(i),
                i as u64,
                (1000 * i as u64, 0),
            )
        })
        .collect();
    env.push(&lines).await;
    let started = std::time::Instant::now();
    let first = wait_sensor_alerts(&env, 1, "a silent alert").await;
    println!("silent alert after {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alerts = sensor_alerts(&env).await;
    assert_eq!(alerts.len(), 1, "one alert per episode: {alerts:#?}");
    let silent = &first[0];
    assert_eq!(silent.extra["kind"], KIND_SILENT);
    assert_eq!(silent.extra["sensor"], "sensor-s");
    assert_eq!(
        (silent.status, silent.severity),
        (AlertStatus::New, Severity::High)
    );
    assert_eq!(silent.mitre_techniques, vec!["T1562.001"]);
    assert!(silent.extra["silent_seconds"].as_f64().unwrap() >= 0.6);

    env.push(&[stats_line(5, "sensor-s", at(5), 5, (5000, 0))])
        .await;
    let alerts = wait_sensor_alerts(&env, 2, "the silent alert closed").await;
    assert_eq!(alerts[1].id, silent.id);
    assert_eq!(alerts[1].status, AlertStatus::Closed);

    let alerts = wait_sensor_alerts(&env, 3, "a second silence").await;
    assert_ne!(alerts[2].id, silent.id, "a new episode, a new id");
    assert_eq!(alerts[2].status, AlertStatus::New);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(sensor_alerts(&env).await.len(), 3);
    for alert in &alerts {
        check_shape(alert);
    }
    r1.stop().await.unwrap();
    r2.stop().await.unwrap();
}
