//! The broker as the boundary between devices, with the configuration shipped in
//! deploy/mosquitto (password file + ACL): a device cannot publish as another device (the
//! bridge never gets it), cannot read another device's commands, cannot send commands, and
//! anonymous clients are refused; the bridge, with its own credentials, reads every device and
//! commands every device.
#![allow(clippy::unwrap_used)]

use crate::common;

use aurora_core::bus::Producer;
use aurora_core::names::DeviceTopicKind;
use aurora_core::Names;
use aurora_testkit::mqtt::{password_file, shipped_broker_config};
use common::*;
use serde_json::json;

async fn anonymous_is_refused(port: u16) -> bool {
    let opts = rumqttc::MqttOptions::new("anon", "127.0.0.1", port);
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    matches!(
        tokio::time::timeout(LONG, eventloop.poll()).await,
        Ok(Err(rumqttc::ConnectionError::ConnectionRefused(_)))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_publish_as_another_or_read_its_commands() {
    let auth_dir = tempfile::tempdir().unwrap();
    let passwd = password_file(
        auth_dir.path(),
        &[
            ("aurora-bridge", "bridge-pw"),
            ("dev-a", "pw-a"),
            ("dev-b", "pw-b"),
        ],
    );
    let broker = MosquittoServer::start_with_config(&shipped_broker_config(&passwd));
    // The shipped ACL names topics under `aurora/`: the default namespace, on a Redis of the
    // test's own so nothing collides with the shared one.
    let own_redis = RedisServer::start();
    let names = Names::default();
    let mut cfg = config(&names, broker.port(), &own_redis.url(), "sec");
    cfg.mqtt.username = Some("aurora-bridge".into());
    cfg.mqtt.password = Some("bridge-pw".into());
    let bridge = Bridge::start(cfg).await;
    bridge.ready().await;
    let redis = redis(&own_redis.url()).await;

    assert!(
        anonymous_is_refused(broker.port()).await,
        "anonymous clients refused"
    );

    // Uplink: dev-a's own message arrives; its message on dev-b's topic does not.
    let dev_a =
        MqttDevice::online(MQTT_HOST, broker.port(), "dev-a", Some(("dev-a", "pw-a"))).await;
    let own = names.mqtt_sensor_topic("dev-a", DeviceTopicKind::Alerts);
    let forged = names.mqtt_sensor_topic("dev-b", DeviceTopicKind::Alerts);
    dev_a.publish(&own, json!({"seq": 1}).to_string()).await;
    dev_a
        .publish(&forged, json!({"seq": 2, "forged": true}).to_string())
        .await;
    dev_a.publish(&own, json!({"seq": 3}).to_string()).await;
    dev_a.wait_acked(3).await;
    wait_xlen(&redis, &names.cps_alerts(), 2, "dev-a's two alerts").await;
    let alerts = stream_values(&redis, &names.cps_alerts()).await;
    let seqs: Vec<_> = alerts.iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        [1, 3],
        "the forged message (sent between them) never reached the bridge"
    );
    assert!(alerts.iter().all(|d| d["device_id"] == "dev-a"));

    // Downlink: dev-a listens on its own and on dev-b's command topics; dev-b on its own.
    dev_a.subscribe(&names.mqtt_command_topic("dev-b")).await;
    dev_a.subscribe(&names.mqtt_command_topic("dev-a")).await;
    let dev_b =
        MqttDevice::online(MQTT_HOST, broker.port(), "dev-b", Some(("dev-b", "pw-b"))).await;
    dev_b.subscribe(&names.mqtt_command_topic("dev-b")).await;
    // A device cannot send commands either: dev-a's fake command for dev-b goes nowhere.
    dev_a
        .publish(&names.mqtt_command_topic("dev-b"), "fake command")
        .await;
    dev_a.wait_acked(4).await;
    dev_a.wait_subacked(2).await;
    dev_b.wait_subacked(1).await;

    let producer = Producer::new(redis.clone(), 10_000);
    let now = chrono::Utc::now();
    // `attest` needs no approval proof (a privileged action would, tests/it/guarded.rs).
    for device in ["dev-b", "dev-a"] {
        let cmd = json!({"id": uuid::Uuid::new_v4(), "device_id": device, "action": "attest", "issued_at": now});
        producer
            .publish(&names.cps_commands(), cmd.to_string().as_bytes())
            .await
            .unwrap();
    }
    let for_b = dev_b.next_message(LONG).await.expect("dev-b's command");
    assert_eq!(for_b.topic, names.mqtt_command_topic("dev-b"));
    assert!(
        for_b.payload.starts_with(b"{"),
        "dev-b gets the bridge's command, not dev-a's fake"
    );
    // dev-b's command went out first; dev-a's first delivery is its own command, so dev-b's
    // never reached it.
    let for_a = dev_a.next_message(LONG).await.expect("dev-a's command");
    assert_eq!(
        for_a.topic,
        names.mqtt_command_topic("dev-a"),
        "dev-a never sees dev-b's commands"
    );

    dev_a.disconnect().await;
    dev_b.disconnect().await;
    bridge.stop().await;
}
