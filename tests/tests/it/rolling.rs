//! A rolling replacement of a whole site under traffic, as Kubernetes does it to a Deployment:
//! every service in turn gets a replica under a NEW instance name, which is started and waited
//! for until ready, and then the old replica is stopped with SIGTERM and never comes back.
//! Meanwhile a device publishes telemetry and alerts through mqtt-bridge, Suricata lines flow
//! through eve-ingest, device-registry turns device alerts into alerts, federation-gateway
//! exports alerts to JetStream and an analyst's console follows the alerts channel (and
//! resumes with `since` when its gateway goes). At the end nothing accepted is lost; where
//! only at-least-once is promised, duplicates are counted and printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_core::auth::Permission;
use aurora_core::names::{Channel, DeviceTopicKind};
use aurora_e2e::{aurora_cli, eve_lines};
use aurora_testkit::prelude::*;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Devices the publisher takes turns with.
const DEVICES: u64 = 5;
/// Every this many telemetry messages, the device also raises an alert.
const ALERT_EVERY: u64 = 10;
/// Suricata lines pushed per round, and the pause between rounds.
const EVE_ROUND: usize = 5;
const EVE_PAUSE: Duration = Duration::from_millis(100);
/// How long the counts may take to settle once the traffic stopped.
const SETTLE: Duration = Duration::from_secs(40);

/// What the analyst's console has seen, across its reconnections.
#[derive(Default)]
struct ConsoleLog {
    frames: Vec<Value>,
    reconnects: usize,
}

/// Follows the alerts channel of whichever gateway `url` names, reconnecting with `since`
/// (the last `stream_id` seen) whenever its gateway closes the connection, until `stop`.
async fn follow_alerts(
    url: Arc<Mutex<String>>,
    log: Arc<Mutex<ConsoleLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut since: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        let base = url.lock().unwrap().clone();
        let target = match &since {
            Some(id) => format!("{base}&since={id}"),
            None => base,
        };
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&target).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("a JSON frame");
                    if let Some(id) = v["stream_id"].as_str() {
                        since = Some(id.to_string());
                    }
                    log.lock().unwrap().frames.push(v);
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(_))) => {}
            }
        }
        log.lock().unwrap().reconnects += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many keys were seen more than once, and how many extra copies there were.
fn repeats(counts: &HashMap<String, usize>) -> (usize, usize) {
    let keys = counts.values().filter(|&&n| n > 1).count();
    (keys, duplicates(counts))
}

/// The keys of `want` that `counts` lacks (at most 20 shown).
fn missing<'a>(
    want: impl IntoIterator<Item = &'a String>,
    counts: &HashMap<String, usize>,
) -> Vec<&'a String> {
    want.into_iter()
        .filter(|k| !counts.contains_key(*k))
        .collect()
}

fn show(keys: &[&String]) -> String {
    let shown: Vec<&str> = keys.iter().take(20).map(|k| k.as_str()).collect();
    format!("{} missing, e.g. {shown:?}", keys.len())
}

/// Polls `count` until it covers `want` or `SETTLE` passes; returns the last count.
async fn settle<F, Fut>(what: &str, want: &BTreeSet<String>, mut count: F) -> HashMap<String, usize>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = HashMap<String, usize>>,
{
    let deadline = Instant::now() + SETTLE;
    loop {
        let counts = count().await;
        if want.iter().all(|k| counts.contains_key(k)) || Instant::now() >= deadline {
            if Instant::now() >= deadline {
                eprintln!("rolling: {what} did not settle within {SETTLE:?}");
            }
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_is_replaced_under_a_new_name_while_traffic_flows_and_nothing_is_lost() {
    let started = Instant::now();
    let names = aurora_testkit::names();
    let db = TestDb::create().await;
    let site = Site::new(&names, "site-a", 3).with_database(&db);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let order = [
        Svc::MqttBridge,
        Svc::EveIngest,
        Svc::DeviceRegistry,
        Svc::FederationGateway,
        Svc::WsGateway,
    ];
    let mut running: BTreeMap<&'static str, Service> = BTreeMap::new();
    for svc in order {
        running.insert(svc.name(), site.start(svc, &[]).await);
    }
    let alerts_query = format!("token={}", token(&[Permission::WsAlerts]));
    let console_url = Arc::new(Mutex::new(
        running["ws-gateway"].ws_url(Channel::Alerts, &alerts_query),
    ));
    let console = Arc::new(Mutex::new(ConsoleLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let following = tokio::spawn(follow_alerts(
        console_url.clone(),
        console.clone(),
        stop.clone(),
    ));

    // The device: telemetry one message at a time, each acknowledged by the broker before
    // the next; every ALERT_EVERY-th also an alert.
    let device = Arc::new(MqttDevice::shared(&format!(
        "e2e-roll-{}",
        names.namespace()
    )));
    device.wait_connected().await;
    let publishing = {
        let (device, names, stop) = (device.clone(), names.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("roll-{}", seq % DEVICES);
                let payload = json!({"seq": seq, "temperature_c": 21.5}).to_string();
                device
                    .publish_acked(
                        &names.mqtt_sensor_topic(&id, DeviceTopicKind::Telemetry),
                        payload.as_bytes(),
                        WAIT,
                    )
                    .await;
                if seq.is_multiple_of(ALERT_EVERY) {
                    let alert = json!({"id": format!("roll-alert-{seq}"), "alert_type": "tamper_switch", "severity": "high"});
                    device
                        .publish_acked(
                            &names.mqtt_sensor_topic(&id, DeviceTopicKind::Alerts),
                            alert.to_string().as_bytes(),
                            WAIT,
                        )
                        .await;
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seq
        })
    };
    // Suricata: EVE_ROUND lines every EVE_PAUSE.
    let pushing = {
        let (url, list, stop) = (site.redis_url.clone(), names.suricata_list(), stop.clone());
        tokio::spawn(async move {
            let mut conn = redis(&url).await;
            let lines = eve_lines(20_000);
            let mut pushed = 0;
            while !stop.load(Ordering::SeqCst) && pushed + EVE_ROUND <= lines.len() {
                let round: Vec<Vec<u8>> = lines[pushed..pushed + EVE_ROUND]
                    .iter()
                    .map(|l| l.clone().into_bytes())
                    .collect();
                lpush(&mut conn, &list, &round).await;
                pushed += EVE_ROUND;
                tokio::time::sleep(EVE_PAUSE).await;
            }
            lines[..pushed].to_vec()
        })
    };

    // The rolling replacement: one service at a time, a new name, ready before the old goes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut replaced = Vec::new();
    for svc in order {
        let step = Instant::now();
        let new = site.start(svc, &[]).await;
        if svc == Svc::WsGateway {
            *console_url.lock().unwrap() = new.ws_url(Channel::Alerts, &alerts_query);
        }
        let mut old = running.insert(svc.name(), new).expect("running");
        assert_ne!(old.instance, running[svc.name()].instance, "a new name");
        old.sigterm();
        let (status, _) = old.wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; log:\n{}",
            old.instance,
            old.log_tail(30)
        );
        eprintln!(
            "rolling: {svc} {} -> {} in {:?}",
            old.instance,
            running[svc.name()].instance,
            step.elapsed()
        );
        replaced.push(old.instance.clone());
        // Traffic flows through the new replica alone for a while before the next step.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let published = publishing.await.unwrap();
    let lines = pushing.await.unwrap();
    eprintln!(
        "rolling: traffic stopped after {:?}: {published} telemetry messages, {} device alerts, {} EVE lines",
        started.elapsed(),
        published.div_ceil(ALERT_EVERY),
        lines.len()
    );
    // The console follows the last gateway until the counts settle.
    let stop_console = Arc::new(AtomicBool::new(false));
    following.abort();
    let following = tokio::spawn(follow_alerts(
        console_url.clone(),
        console.clone(),
        stop_console.clone(),
    ));

    let conn = redis(&site.redis_url).await;
    // 1. Every telemetry message in its stream.
    let want_telemetry: BTreeSet<String> = (0..published).map(|s| s.to_string()).collect();
    let telemetry = settle("telemetry", &want_telemetry, || {
        let mut conn = conn.clone();
        let stream = names.cps_telemetry();
        async move {
            let docs = stream_docs(&mut conn, &stream).await;
            tally(
                docs.iter()
                    .filter_map(|(_, d)| d["seq"].as_u64())
                    .map(|s| s.to_string()),
            )
        }
    })
    .await;
    // 2. Every device alert in its stream, and made an alert on `aurora:alerts`.
    let want_device_alerts: BTreeSet<String> = (0..published)
        .filter(|s| s.is_multiple_of(ALERT_EVERY))
        .map(|s| format!("roll-alert-{s}"))
        .collect();
    let device_alerts = settle("device alerts", &want_device_alerts, || {
        let mut conn = conn.clone();
        let stream = names.cps_alerts();
        async move {
            let docs = stream_docs(&mut conn, &stream).await;
            tally(
                docs.iter()
                    .filter_map(|(_, d)| d["id"].as_str().map(str::to_string)),
            )
        }
    })
    .await;
    let cps_alerts = settle("device alerts as alerts", &want_device_alerts, || {
        let mut conn = conn.clone();
        let stream = names.alerts();
        async move {
            let docs = stream_docs(&mut conn, &stream).await;
            tally(
                docs.iter()
                    .filter(|(_, d)| d["source"] == "cps")
                    .filter_map(|(_, d)| d["device_message"]["id"].as_str().map(str::to_string)),
            )
        }
    })
    .await;
    // 3. Every EVE line on JetStream.
    let want_lines: BTreeSet<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["e2e_seq"].to_string())
        .collect();
    let alert_lines = lines
        .iter()
        .filter(|l| serde_json::from_str::<Value>(l).unwrap()["event_type"] == "alert")
        .count();
    let on_jetstream = settle("EVE lines on JetStream", &want_lines, || {
        let stream = names.suricata_stream();
        async move {
            let msgs = jetstream_messages(NATS_URL, &stream).await;
            tally(msgs.iter().filter_map(|(_, _, p)| {
                serde_json::from_slice::<Value>(p)
                    .ok()
                    .map(|v| v["e2e_seq"].to_string())
            }))
        }
    })
    .await;
    // 4. Every alert on `aurora:alerts` (device and Suricata) exported to JetStream and seen by
    //    the console.
    let local_alerts: Vec<(String, Value)> = stream_docs(&mut conn.clone(), &names.alerts()).await;
    let suricata_alerts = tally(
        local_alerts
            .iter()
            .filter(|(_, d)| d["source"] == "suricata")
            .filter_map(|(_, d)| d["id"].as_str().map(str::to_string)),
    );
    let want_alert_ids: BTreeSet<String> = local_alerts
        .iter()
        .filter_map(|(_, d)| d["id"].as_str().map(str::to_string))
        .collect();
    let exported = settle("alerts exported to JetStream", &want_alert_ids, || {
        let stream = names.nats_stream();
        async move {
            let msgs = jetstream_messages(NATS_URL, &stream).await;
            tally(msgs.iter().filter_map(|(_, _, p)| {
                serde_json::from_slice::<Value>(p)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
            }))
        }
    })
    .await;
    let want_stream_ids: BTreeSet<String> = local_alerts.iter().map(|(id, _)| id.clone()).collect();
    let on_console = settle("alerts on the console", &want_stream_ids, || {
        let console = console.clone();
        async move {
            tally(
                console
                    .lock()
                    .unwrap()
                    .frames
                    .iter()
                    .filter_map(|v| v["stream_id"].as_str().map(str::to_string)),
            )
        }
    })
    .await;
    stop_console.store(true, Ordering::SeqCst);
    let _ = following.await;

    // 5. Nothing left pending with a replica that is gone, as `aurora status` shows it.
    let status: Value =
        serde_json::from_str(&aurora_cli(&site, &["status", "--json", "--no-nats"])).unwrap();
    let mut stranded = Vec::new();
    let mut gone_consumers = 0;
    for stream in status["redis"].as_array().unwrap() {
        for group in stream["groups"].as_array().unwrap() {
            for c in group["members"].as_array().unwrap() {
                let name = c["consumer"].as_str().unwrap_or("");
                if replaced.iter().any(|old| name.starts_with(old.as_str())) {
                    gone_consumers += 1;
                    if c["pending"].as_u64() != Some(0) {
                        stranded.push(format!("{} {} {c}", stream["stream"], group["group"]));
                    }
                }
            }
        }
    }
    eprintln!("rolling: {gone_consumers} consumers of replaced replicas left in their groups, none holding anything unless listed: {stranded:?}");
    let mut conn = conn.clone();
    let mut eve_held = Vec::new();
    for old in &replaced {
        let n = llen(&mut conn, &names.eve_processing_list(old)).await;
        if n > 0 {
            eve_held.push(format!("{}: {n} lines", names.eve_processing_list(old)));
        }
    }

    let (console_reconnects, console_frames) = {
        let c = console.lock().unwrap();
        (c.reconnects, c.frames.len())
    };
    let report = [
        ("telemetry", repeats(&telemetry), telemetry.len()),
        (
            "device alerts (stream)",
            repeats(&device_alerts),
            device_alerts.len(),
        ),
        (
            "device alerts (as alerts)",
            repeats(&cps_alerts),
            cps_alerts.len(),
        ),
        (
            "EVE lines (JetStream)",
            repeats(&on_jetstream),
            on_jetstream.len(),
        ),
        (
            "Suricata alerts",
            repeats(&suricata_alerts),
            suricata_alerts.len(),
        ),
        ("alerts exported", repeats(&exported), exported.len()),
        (
            "alerts on the console",
            repeats(&on_console),
            on_console.len(),
        ),
    ];
    for (what, (keys, extra), distinct) in report {
        eprintln!("rolling: {what}: {distinct} distinct, {extra} duplicates ({keys} duplicated)");
    }
    eprintln!(
        "rolling: the console saw {console_frames} frames over {console_reconnects} reconnections; {:?} in all",
        started.elapsed()
    );

    let lost = [
        ("telemetry", missing(&want_telemetry, &telemetry)),
        (
            "device alerts in aurora:cps:alerts",
            missing(&want_device_alerts, &device_alerts),
        ),
        (
            "device alerts on aurora:alerts",
            missing(&want_device_alerts, &cps_alerts),
        ),
        (
            "EVE lines on JetStream",
            missing(&want_lines, &on_jetstream),
        ),
        (
            "alerts exported to JetStream",
            missing(&want_alert_ids, &exported),
        ),
        (
            "alerts on the console",
            missing(&want_stream_ids, &on_console),
        ),
    ];
    let lost: Vec<String> = lost
        .iter()
        .filter(|(_, keys)| !keys.is_empty())
        .map(|(what, keys)| format!("{what}: {}", show(keys)))
        .collect();
    assert!(
        lost.is_empty(),
        "lost through the rolling replacement:\n{}",
        lost.join("\n")
    );
    assert_eq!(
        suricata_alerts.len(),
        alert_lines,
        "one alert for each Suricata alert line"
    );
    assert!(
        stranded.is_empty(),
        "pending with a gone replica: {stranded:?}"
    );
    assert!(
        eve_held.is_empty(),
        "held by a gone eve-ingest replica: {eve_held:?}"
    );
    assert!(published > 0 && !lines.is_empty());
    for (name, service) in running.iter_mut() {
        assert_eq!(service.readyz().await, Some(200), "{name} ready at the end");
    }
    // The loss ledger of every stream and consumer group: nothing lost, nothing unexplained.
    let ledger = assert_ledger_accounts_for_everything(&conn, &names, started.elapsed()).await;
    eprintln!("rolling: ledger: {ledger:?}");
    assert!(
        ledger.iter().any(|r| r.done > 0),
        "the ledger saw the groups' work"
    );
}
