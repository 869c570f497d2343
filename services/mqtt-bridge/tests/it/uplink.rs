//! Devices to the bus on the shared broker and Redis: every message type arrives with its
//! device id and type, in order per device, with one device.seen per device; every kind of
//! bad input is dead-lettered with its reason and the raw bytes, and the bridge goes on.
#![allow(clippy::unwrap_used)]

use crate::common;

use aurora_core::model::{DeadLetter, DeviceSeen};
use aurora_core::names::DeviceTopicKind;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type_reaches_its_stream_in_order_with_one_device_seen() {
    let run = SharedRun::start(|_| {}).await;
    let names = run.names.clone();
    let redis = run.redis.clone();

    let dev = run.device("dev").await;
    let per_kind = 20u64;
    for seq in 0..per_kind {
        for kind in DeviceTopicKind::ALL {
            for device in ["d-1", "d-2"] {
                let payload = json!({"seq": seq, "kind_sent": kind.as_str(), "x": {"nested": [1, 2]}, "device_id": "forged"});
                dev.publish(&names.mqtt_sensor_topic(device, kind), payload.to_string())
                    .await;
            }
        }
    }
    dev.wait_acked(per_kind * 2 * DeviceTopicKind::ALL.len() as u64)
        .await;
    for kind in DeviceTopicKind::ALL {
        wait_xlen(&redis, &names.cps_stream(kind), per_kind * 2, kind.as_str()).await;
    }

    for kind in DeviceTopicKind::ALL {
        let docs = stream_values(&redis, &names.cps_stream(kind)).await;
        assert_eq!(
            docs.len() as u64,
            per_kind * 2,
            "{kind}: exactly once on a clean run"
        );
        for device in ["d-1", "d-2"] {
            let seqs: Vec<u64> = docs
                .iter()
                .filter(|d| d["device_id"] == device)
                .map(|d| d["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(
                seqs,
                (0..per_kind).collect::<Vec<_>>(),
                "{kind} {device}: order kept"
            );
        }
        let d = &docs[0];
        assert_eq!(d["message_type"], kind.as_str());
        assert_eq!(d["kind_sent"], kind.as_str());
        assert_eq!(
            d["x"],
            json!({"nested": [1, 2]}),
            "unknown fields pass through"
        );
        assert_ne!(
            d["device_id"], "forged",
            "the topic, not the payload, names the device"
        );
    }

    let seen: Vec<DeviceSeen> = stream_records(&redis, &names.cps_registrations()).await;
    let mut devices: Vec<&str> = seen.iter().map(|s| s.device_id.as_str()).collect();
    devices.sort();
    assert_eq!(
        devices,
        ["d-1", "d-2"],
        "one device.seen per device within --seen-interval"
    );
    assert_eq!(seen[0].event, "device.seen");
    assert_eq!(
        seen[0].metadata["seq"], 0,
        "metadata is the device's first message"
    );

    dev.disconnect().await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_reason_and_raw_bytes() {
    let run = SharedRun::start(|cfg| cfg.max_payload = 1024).await;
    let names = run.names.clone();
    let redis = run.redis.clone();
    let dev = run.device("dev").await;

    let topic = names.mqtt_sensor_topic("dev-ok", DeviceTopicKind::Telemetry);
    let bad_device = format!(
        "{}/sensors/{}/telemetry",
        names.namespace(),
        "x".repeat(129)
    );
    let bad_chars = format!("{}/sensors/d*v=1/alerts", names.namespace());
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (bad_device, b"{}".to_vec(), "device id"),
        (bad_chars, b"{}".to_vec(), "device id"),
        (topic.clone(), vec![b' '; 2000], "larger than"),
        (topic.clone(), b"{\"a\":\"\xff\xfe\"}".to_vec(), "not UTF-8"),
        (topic.clone(), b"{\"a\":".to_vec(), "not JSON"),
        (topic.clone(), b"[1,2,3]".to_vec(), "not an object"),
        (topic.clone(), b"42".to_vec(), "not an object"),
    ];
    for (t, payload, _) in &cases {
        dev.publish(t, payload.clone()).await;
    }
    // A good message after the bad ones: the bridge is still working.
    dev.publish(&topic, json!({"ok": true}).to_string()).await;
    dev.wait_acked(cases.len() as u64 + 1).await;
    wait_xlen(&redis, &names.cps_telemetry(), 1, "the good message").await;
    let n_dead = cases.len() as u64;
    wait_xlen(&redis, &names.cps_deadletter(), n_dead, "every dead letter").await;

    let dead: Vec<DeadLetter> = stream_records(&redis, &names.cps_deadletter()).await;
    assert_eq!(dead.len(), cases.len());
    for (record, (t, payload, reason)) in dead.iter().zip(&cases) {
        assert_eq!(&record.source, t);
        assert_eq!(record.service, "mqtt-bridge");
        assert!(
            record.reason.contains(reason),
            "{:?} should say {reason:?}",
            record.reason
        );
        assert_eq!(
            record.raw().as_deref(),
            Some(payload.as_slice()),
            "raw bytes kept"
        );
    }
    let good = stream_values(&redis, &names.cps_telemetry()).await;
    assert_eq!(good.len(), 1);
    assert_eq!(good[0]["ok"], true);
    let metrics = aurora_core::ops::metrics_handle().render();
    assert!(
        metrics.contains("aurora_mqtt_bridge_dead_letters_total{reason=\"invalid_utf8\"}"),
        "dead letters are counted by reason"
    );

    dev.disconnect().await;
    run.stop().await;
}
