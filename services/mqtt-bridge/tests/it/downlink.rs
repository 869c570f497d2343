//! Commands from the bus to devices: a valid command reaches the device's command topic and
//! is recorded `sent`; an expired one is not sent and is recorded `expired`; an entry that is
//! not a command is dead-lettered (and `failed` when it names a command and device); nothing
//! stays pending in the group.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use aurora_core::bus::Producer;
use aurora_core::model::{CommandOutcome, CommandStatus, DeviceCommand};
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
    let run = SharedRun::start(|_| {}).await;
    let names = run.names.clone();
    let redis = run.redis.clone();

    let device = run.device("dev-1").await;
    device.subscribe(&names.mqtt_command_topic("dev-1")).await;
    device.subscribe(&names.mqtt_command_topic("dev-2")).await;
    device.wait_subacked(2).await;
    // The subscription delivers: a probe on it comes back.
    let probe = run.device("probe").await;
    probe
        .publish(&names.mqtt_command_topic("dev-1"), "probe")
        .await;
    let first = device
        .next_message(LONG)
        .await
        .expect("the probe delivered");
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
        let p = device
            .next_message(LONG)
            .await
            .expect("a command delivered");
        assert_eq!(p.topic, names.mqtt_command_topic("dev-1"));
        let got: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(&got, want, "the command JSON, unknown fields included");
        let parsed: DeviceCommand = aurora_core::model::parse(&p.payload).unwrap();
        assert_eq!(parsed.action, "attest");
    }

    wait_xlen(&redis, &names.cps_command_status(), 4, "4 outcomes").await;
    let statuses: Vec<CommandStatus> = stream_records(&redis, &names.cps_command_status()).await;
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

    wait_xlen(&redis, &names.cps_deadletter(), 2, "2 dead letters").await;
    let dead = stream_values(&redis, &names.cps_deadletter()).await;
    assert!(dead.iter().all(|d| d["source"] == stream.as_str()));

    // Nothing left pending: every entry was acknowledged after its outcome was recorded.
    wait_no_pending(&redis, &stream, mqtt_bridge::downlink::GROUP).await;
    // And the expired command never reached the device.
    let extra = device.next_message(Duration::from_millis(300)).await;
    assert!(extra.is_none(), "nothing else delivered: {extra:?}");

    device.disconnect().await;
    run.stop().await;
}

/// The sum of a metric's series in this process.
fn metric(name: &str) -> f64 {
    metric_sum(&aurora_core::ops::metrics_handle().render(), name, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_before_its_outcome_could_be_recorded_is_not_sent_again() {
    let run = SharedRun::start(|_| {}).await;
    let names = run.names.clone();
    let mut redis = run.redis.clone();

    let device = run.device("dev-1").await;
    device.subscribe(&names.mqtt_command_topic("dev-1")).await;
    device.wait_subacked(1).await;

    // The status stream is a key of another type: the outcome cannot be recorded.
    let status_stream = names.cps_command_status();
    let _: () = redis::cmd("SET")
        .arg(&status_stream)
        .arg("in the way")
        .query_async(&mut redis)
        .await
        .unwrap();
    let errors_before = metric("aurora_mqtt_bridge_command_errors_total");
    let cmd = command("dev-1", None);
    let producer = Producer::new(redis.clone(), 10_000);
    producer
        .publish(&names.cps_commands(), cmd.to_string().as_bytes())
        .await
        .unwrap();
    let got = device
        .next_message(LONG)
        .await
        .expect("the command delivered");
    let got: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(got, cmd);
    // The batch failed (at least) twice and was read again: then the way is cleared.
    aurora_testkit::wait_until(LONG, "the outcome failed to be recorded twice", || async {
        (metric("aurora_mqtt_bridge_command_errors_total") >= errors_before + 2.0).then_some(())
    })
    .await;
    let _: () = redis::cmd("DEL")
        .arg(&status_stream)
        .query_async(&mut redis)
        .await
        .unwrap();

    wait_xlen(&redis, &status_stream, 1, "the outcome").await;
    let statuses: Vec<CommandStatus> = stream_records(&redis, &status_stream).await;
    assert_eq!(statuses.len(), 1);
    assert_eq!(
        statuses[0].command_id.to_string(),
        cmd["id"].as_str().unwrap()
    );
    assert_eq!(statuses[0].status, CommandOutcome::Sent);
    wait_no_pending(&redis, &names.cps_commands(), mqtt_bridge::downlink::GROUP).await;
    let again = device.next_message(Duration::from_millis(500)).await;
    assert!(again.is_none(), "the command was sent once: {again:?}");
    assert!(
        stream_values(&redis, &names.cps_deadletter())
            .await
            .is_empty(),
        "nothing dead-lettered"
    );

    device.disconnect().await;
    run.stop().await;
}
