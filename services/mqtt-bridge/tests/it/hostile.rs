//! Hostile and careless input at the bridge, against real Mosquitto and Redis: a command
//! larger than the broker takes is dead-lettered and never blocks the commands behind it; a
//! device's JSON holding a NUL is dead-lettered where it enters; a retained message is bridged
//! once, not again on every restart, and clearing it is no dead letter; the drain deadline
//! holds while the broker refuses the bridge's credentials.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use aurora_core::bus::Producer;
use aurora_core::model::DeadLetter;
use aurora_core::names::DeviceTopicKind;
use aurora_testkit::mqtt::password_file;
use common::*;
use serde_json::json;

fn command(device: &str, params: serde_json::Value) -> serde_json::Value {
    let now = chrono::Utc::now();
    json!({
        "id": uuid::Uuid::new_v4(),
        "device_id": device,
        "action": "set",
        "params": params,
        "issued_at": now,
        "expires_at": now + chrono::Duration::seconds(3600),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_larger_than_the_broker_takes_is_dead_lettered_and_later_ones_go_out() {
    // The broker's limit (64 KiB) reaches the bridge in its CONNACK: the bridge's own default
    // (256 KiB) would let the command through.
    let broker = MosquittoServer::start_with_config(
        "allow_anonymous true\nmax_packet_size 65536\nmax_queued_messages 1000\n",
    );
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let cfg = config(&names, broker.port(), REDIS_URL, "big");
    let bridge = Bridge::start(cfg).await;
    bridge.ready().await;
    let redis = redis(REDIS_URL).await;

    let device = device_on(broker.port(), &format!("{}-dev", names.namespace())).await;
    device.subscribe(&names.mqtt_command_topic("dev-1")).await;
    device.wait_subacked(1).await;

    let big = command("dev-1", json!({"blob": "x".repeat(100_000)}));
    let small = command("dev-1", json!({"n": 1}));
    let producer = Producer::new(redis.clone(), 10_000);
    let stream = names.cps_commands();
    producer
        .publish(&stream, big.to_string().as_bytes())
        .await
        .unwrap();
    producer
        .publish(&stream, small.to_string().as_bytes())
        .await
        .unwrap();

    let got = device
        .next_message(LONG)
        .await
        .expect("the command behind the oversized one is delivered");
    let got: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(got, small);

    let dead = wait_matching(
        &redis,
        &names.cps_deadletter(),
        1,
        "the oversized command dead-lettered",
        |_| true,
    )
    .await;
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("maximum packet size of 65536"),
        "the broker's limit is the reason: {reason}"
    );
    let statuses = wait_matching(
        &redis,
        &names.cps_command_status(),
        2,
        "both outcomes recorded",
        |_| true,
    )
    .await;
    let of = |c: &serde_json::Value| {
        statuses
            .iter()
            .find(|s| s["command_id"] == c["id"])
            .map(|s| s["status"].clone())
    };
    assert_eq!(of(&big), Some(json!("failed")));
    assert_eq!(of(&small), Some(json!("sent")));
    wait_no_pending(&redis, &stream, mqtt_bridge::downlink::GROUP).await;
    assert!(
        device.next_message(Duration::from_secs(2)).await.is_none(),
        "nothing more reaches the device (the big command is never sent)"
    );
    assert!(bridge.readiness.is_ready(), "the downlink stayed connected");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_device_message_is_dead_lettered_where_it_enters() {
    let run = SharedRun::start(|_| {}).await;
    let names = run.names.clone();
    let device = run.device("nul").await;
    let topic = names.mqtt_sensor_topic("dev-nul", DeviceTopicKind::Telemetry);
    device.publish(&topic, r#"{"note": "a\u0000b"}"#).await;
    // Text that is a backslash and `u0000` is fine.
    device
        .publish(&topic, r#"{"note": "a\\u0000b", "seq": 2}"#)
        .await;
    device.wait_acked(2).await;

    let dead = wait_matching(
        &run.redis,
        &names.cps_deadletter(),
        1,
        "the NUL message dead-lettered",
        |_| true,
    )
    .await;
    let record: DeadLetter = serde_json::from_value(dead[0].clone()).unwrap();
    assert!(record.reason.contains("NUL"), "{}", record.reason);
    assert_eq!(record.raw().unwrap(), br#"{"note": "a\u0000b"}"#.to_vec());
    let docs = wait_matching(
        &run.redis,
        &names.cps_telemetry(),
        1,
        "the escaped backslash bridged",
        |_| true,
    )
    .await;
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(docs[0]["seq"], 2);
    assert_eq!(docs[0]["note"], "a\\u0000b");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_alert_is_bridged_once_across_a_restart_and_its_clear_is_ignored() {
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let redis = redis(REDIS_URL).await;
    let topic = names.mqtt_sensor_topic("dev-ret", DeviceTopicKind::Alerts);
    let device = device_on(MQTT_PORT, &format!("{}-ret", names.namespace())).await;

    let cfg = config(&names, MQTT_PORT, REDIS_URL, "ret");
    let client_id = cfg.uplink_client_id();
    let bridge = Bridge::start(cfg).await;
    bridge.ready().await;
    device
        .client
        .publish(
            &topic,
            rumqttc::QoS::AtLeastOnce,
            true,
            json!({"title": "door open", "seq": 1}).to_string(),
        )
        .await
        .unwrap();
    device.wait_acked(1).await;
    wait_xlen(&redis, &names.cps_alerts(), 1, "the retained alert bridged").await;
    bridge.stop().await;
    forget_session(MQTT_HOST, MQTT_PORT, &client_id).await;

    // A new subscription: the broker holds the retained alert and would send it.
    let bridge = Bridge::start(config(&names, MQTT_PORT, REDIS_URL, "ret")).await;
    bridge.ready().await;
    // Clearing the retained message (empty payload), then a live alert as a marker.
    device
        .client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, true, Vec::<u8>::new())
        .await
        .unwrap();
    device
        .publish(&topic, json!({"title": "marker", "seq": 2}).to_string())
        .await;
    device.wait_acked(3).await;
    wait_matching(&redis, &names.cps_alerts(), 1, "the marker", |d| {
        d["seq"] == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alerts = stream_values(&redis, &names.cps_alerts()).await;
    let seqs: Vec<_> = alerts.iter().map(|d| d["seq"].clone()).collect();
    assert_eq!(seqs, [json!(1), json!(2)], "bridged once: {alerts:?}");
    let dead = stream_values(&redis, &names.cps_deadletter()).await;
    assert!(dead.is_empty(), "the clear is no dead letter: {dead:?}");
    let metrics = aurora_core::ops::metrics_handle().render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("aurora_mqtt_bridge_ignored_total{reason=\"retained_clear\"}")),
        "the clear is counted"
    );
    bridge.stop().await;
    forget_session(
        MQTT_HOST,
        MQTT_PORT,
        &mqtt_bridge::uplink_client_id(&format!("{}-ret", names.namespace())),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_holds_while_the_broker_refuses_the_credentials() {
    let auth_dir = tempfile::tempdir().unwrap();
    let passwd = password_file(auth_dir.path(), &[("aurora-bridge", "right-pw")]);
    let broker = MosquittoServer::start_with_config(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwd.display()
    ));
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let mut site = site(&names, broker.port(), REDIS_URL);
    site.shutdown_timeout = "2s".into();
    let mut bridge = site.spawn(
        Svc::MqttBridge,
        &[
            ("share-group", &share_group(&names)),
            ("mqtt-username", "aurora-bridge"),
            ("mqtt-password", "wrong-pw"),
        ],
    );
    let ops = bridge.ops();
    // Running, and refused by the broker for a while (several reconnect attempts).
    aurora_testkit::wait_until(LONG, "the broker refuses the bridge", || async {
        ops.get("/readyz")
            .await
            .ok()
            .filter(|a| a.status == 503 && a.body.contains("refused"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = Instant::now();
    bridge.sigterm();
    let (_status, exited) = bridge.wait_exit(LONG).await;
    let took = exited.duration_since(asked);
    // The drain deadline (2 s) plus 1.5 s for the ops server to stop and the process to exit.
    assert!(
        took <= Duration::from_millis(3500),
        "exited {took:?} after SIGTERM (deadline 2 s); log:\n{}",
        bridge.log_tail(30)
    );
}
