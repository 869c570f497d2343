//! Commands from the bus to devices: a valid command reaches the device's command topic and
//! is recorded `sent`; an expired one is not sent and is recorded `expired`; an entry that is
//! not a command is dead-lettered (and `failed` when it names a command and device); nothing
//! stays pending in the group.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use aurora_core::bus::Producer;
use aurora_core::model::{CommandOutcome, CommandStatus, DeviceCommand};
use aurora_testkit::{MQTT_PORT, REDIS_URL};
use common::*;
use serde_json::json;

fn command(device: &str, expires_in: Option<i64>) -> serde_json::Value {
    let now = chrono::Utc::now();
    let mut c = json!({
        "id": uuid::Uuid::new_v4(),
        "device_id": device,
        "action": "attest",
        "params": {"nonce": "n-1"},
        "issued_at": now,
        "x_trace": "kept",
    });
    if let Some(secs) = expires_in {
        c["expires_at"] = json!(now + chrono::Duration::seconds(secs));
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_sent_expired_or_dead_lettered_and_each_outcome_recorded() {
    let names = aurora_testkit::names();
    let cfg = config(&names, MQTT_PORT, REDIS_URL, "a");
    let client_id = cfg.uplink_client_id();
    let bridge = Bridge::start(cfg).await;
    bridge.ready().await;
    let mut redis = redis(REDIS_URL).await;

    let mut device =
        Device::connect(MQTT_PORT, &format!("{}-dev-1", names.namespace()), None).await;
    device.subscribe(&names.mqtt_command_topic("dev-1")).await;
    device.subscribe(&names.mqtt_command_topic("dev-2")).await;
    device.wait_subacked(2).await;
    // The subscription delivers: a probe on it comes back.
    let probe = Device::connect(MQTT_PORT, &format!("{}-probe", names.namespace()), None).await;
    probe
        .publish(&names.mqtt_command_topic("dev-1"), "probe")
        .await;
    let first = tokio::time::timeout(LONG, device.received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first.payload[..], b"probe");
    probe.disconnect().await;

    let sent_later = command("dev-1", Some(3600));
    let sent_forever = command("dev-1", None);
    let expired = command("dev-2", Some(-5));
    let bad_action = json!({"id": uuid::Uuid::new_v4(), "device_id": "dev-1", "action": "", "issued_at": chrono::Utc::now()});
    let producer = Producer::new(redis.clone(), 10_000);
    let stream = names.cps_commands();
    for doc in [&sent_later, &expired, &bad_action, &sent_forever] {
        producer
            .publish(&stream, doc.to_string().as_bytes())
            .await
            .unwrap();
    }
    producer.publish(&stream, b"not json at all").await.unwrap();

    // The device gets exactly the two live commands, in order, as they were written.
    for want in [&sent_later, &sent_forever] {
        let p = tokio::time::timeout(LONG, device.received.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.topic, names.mqtt_command_topic("dev-1"));
        let got: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(&got, want, "the command JSON, unknown fields included");
        let parsed: DeviceCommand = aurora_core::model::parse(&p.payload).unwrap();
        assert_eq!(parsed.action, "attest");
    }

    wait_len(&redis, &names.cps_command_status(), 4, LONG).await;
    let statuses: Vec<CommandStatus> = read_all(&mut redis, &names.cps_command_status())
        .await
        .into_iter()
        .map(|e| aurora_core::model::parse(&e.data.unwrap()).unwrap())
        .collect();
    let outcome = |id: &serde_json::Value| {
        statuses
            .iter()
            .find(|s| s.command_id.to_string() == id.as_str().unwrap())
            .map(|s| s.status)
    };
    assert_eq!(outcome(&sent_later["id"]), Some(CommandOutcome::Sent));
    assert_eq!(outcome(&sent_forever["id"]), Some(CommandOutcome::Sent));
    assert_eq!(outcome(&expired["id"]), Some(CommandOutcome::Expired));
    assert_eq!(outcome(&bad_action["id"]), Some(CommandOutcome::Failed));

    wait_len(&redis, &names.cps_deadletter(), 2, LONG).await;
    let dead = docs(&mut redis, &names.cps_deadletter()).await;
    assert!(dead.iter().all(|d| d["source"] == stream.as_str()));

    // Nothing left pending: every entry was acknowledged after its outcome was recorded.
    aurora_testkit::wait_until(LONG, "no pending commands", || {
        let mut c = redis.clone();
        let stream = stream.clone();
        async move {
            let summary: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(mqtt_bridge::downlink::GROUP)
                .query_async(&mut c)
                .await
                .ok()?;
            (summary.count() == 0).then_some(())
        }
    })
    .await;
    // And the expired command never reached the device.
    let extra = tokio::time::timeout(Duration::from_millis(300), device.received.recv()).await;
    assert!(extra.is_err(), "nothing else delivered: {extra:?}");

    device.disconnect().await;
    bridge.stop().await;
    forget_session(MQTT_PORT, &client_id).await;
    cleanup(&mut redis, &names).await;
}
