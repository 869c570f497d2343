//! Bad input where it enters mqtt-bridge (device messages on the MQTT broker), sent to the
//! binary as built: each bad message is a dead-letter record naming the reason, and the
//! bridge keeps serving (`/readyz` 200, a good message right after still goes through).
//! Random messages are counted out: delivered or dead-lettered, never lost (the seed is
//! printed; `E2E_SEED` replays a run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aurora_core::names::DeviceTopicKind;
use aurora_testkit::prelude::*;
use aurora_testkit::random::{random_bytes, random_json, random_object, random_text, seeded_rng};
use rand::Rng;
use serde_json::{json, Value};

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
            .find(|r| &r.source == t && r.describes(p))
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
