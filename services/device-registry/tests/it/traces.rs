//! A device's registration is one trace, exported by the real binaries (mqtt-bridge and
//! device-registry, as processes) to a real OTLP/HTTP receiver, on the real broker, Redis and
//! PostgreSQL: the device's first telemetry, sent over MQTT 5 with a `traceparent` user
//! property, is the bridge's `<topic> receive` span, then its `<registrations> publish` span,
//! then the registry's `<registrations> process` span, whose context the `device.registered`
//! record and the `attest` command carry; the bridge's downlink reads the command in a
//! `<commands> process` span and sends it to the device in a `<command topic> publish` span,
//! whose context the device gets in the MQTT 5 user property `traceparent`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aurora_core::names::DeviceTopicKind;
use aurora_testkit::prelude::*;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const DEVICE_SPAN: &str = "b7ad6b7169203331";

/// An MQTT 5 device; its event loop runs in a task and hands over what it receives.
fn mqtt5_device(client_id: &str) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<Publish>) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", MQTT_PORT);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (client, rx)
}

/// Waits for the entry of `stream` that `matches` and returns its `traceparent`.
async fn entry_traceparent(
    stream: &str,
    what: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> Option<String> {
    wait_until(WAIT, what, || async {
        let conn = redis(REDIS_URL).await;
        traced_entries(&conn, stream)
            .await
            .into_iter()
            .find(|e| matches(&e.data))
            .map(|e| e.traceparent)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_is_registered_and_challenged_in_the_trace_of_its_first_message() {
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let db = TestDb::create().await;
    let receiver = OtlpReceiver::start().await;
    let mut site = Site::new(&names, "site-a", 0)
        .with_database(&db)
        .with_binary(Svc::DeviceRegistry, env!("CARGO_BIN_EXE_device-registry"));
    site.redis_url = REDIS_URL.to_string();
    site.mqtt_url = format!("mqtt://127.0.0.1:{MQTT_PORT}");
    site.shutdown_timeout = "5s".into();
    site.extra_env = receiver.service_env();
    let mut registry = site.start(Svc::DeviceRegistry, &[]).await;
    let share_group = format!("g{}", names.namespace());
    let mut bridge = site
        .start(Svc::MqttBridge, &[("share-group", &share_group)])
        .await;

    // The device listens on its command topic, then says hello with its own span as parent.
    let device_id = "trace-dev-1";
    let (device, mut received) = mqtt5_device(&format!("{}-{device_id}", names.namespace()));
    let command_topic = names.mqtt_command_topic(device_id);
    device
        .subscribe(&command_topic, QoS::AtLeastOnce)
        .await
        .unwrap();
    let topic = names.mqtt_sensor_topic(device_id, DeviceTopicKind::Telemetry);
    let properties = PublishProperties {
        user_properties: vec![(
            "traceparent".to_string(),
            format!("00-{TRACE_ID}-{DEVICE_SPAN}-01"),
        )],
        ..PublishProperties::default()
    };
    // Sent again until the bridge's receive span shows up: the subscription may not be in
    // place yet when the first goes out (QoS 1 makes no difference before it is).
    let receive = wait_until(WAIT, "the bridge's receive span", || async {
        device
            .publish_with_properties(
                topic.as_str(),
                QoS::AtLeastOnce,
                false,
                r#"{"model":"trace-model","firmware_version":"1.0","temperature":21.5}"#,
                properties.clone(),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        receiver
            .spans()
            .into_iter()
            .find(|s| s.trace_id == TRACE_ID && s.name == format!("{topic} receive"))
    })
    .await;
    assert_eq!(receive.service, "mqtt-bridge");
    assert_eq!(receive.parent_span_id, DEVICE_SPAN, "the device's span");

    // MQTT receive → stream publish → registry process, each the parent of the next.
    let registrations = names.cps_registrations();
    let publish = receiver
        .wait_span("the bridge's publish to the registrations stream", |s| {
            s.trace_id == TRACE_ID
                && s.name == format!("{registrations} publish")
                && s.parent_span_id == receive.span_id
        })
        .await;
    assert_eq!(publish.service, "mqtt-bridge");
    assert_eq!(publish.kind, 4, "a producer span");
    let process = receiver
        .wait_span("the registry's process span", |s| {
            s.trace_id == TRACE_ID && s.name == format!("{registrations} process")
        })
        .await;
    assert_eq!(process.service, "device-registry");
    assert_eq!(process.parent_span_id, publish.span_id, "the entry's span");
    assert_eq!(process.kind, 5, "a consumer span");
    assert_eq!(
        process.messaging(),
        (Some("redis"), Some("process"), Some(registrations.as_str()))
    );
    assert!(
        process.attribute("messaging.message.id").is_some(),
        "{process:?}"
    );

    // What the registry wrote for the device carries its process span's context.
    let registry_context = format!("00-{TRACE_ID}-{}-01", process.span_id);
    let registered = entry_traceparent(&names.cps_devices(), "device.registered", |d| {
        d["event"] == "device.registered" && d["device_id"] == device_id
    })
    .await;
    assert_eq!(registered.as_deref(), Some(registry_context.as_str()));
    let attest = entry_traceparent(&names.cps_commands(), "the attest command", |d| {
        d["action"] == "attest" && d["device_id"] == device_id
    })
    .await;
    assert_eq!(attest.as_deref(), Some(registry_context.as_str()));

    // The downlink: the command read in the bridge's process span, sent in its publish span.
    let commands = names.cps_commands();
    let downlink = receiver
        .wait_span("the downlink's process span", |s| {
            s.trace_id == TRACE_ID && s.name == format!("{commands} process")
        })
        .await;
    assert_eq!(downlink.service, "mqtt-bridge");
    assert_eq!(downlink.parent_span_id, process.span_id);
    let sent = receiver
        .wait_span("the downlink's MQTT publish span", |s| {
            s.trace_id == TRACE_ID && s.name == format!("{command_topic} publish")
        })
        .await;
    assert_eq!(sent.parent_span_id, downlink.span_id);
    assert_eq!(sent.kind, 4, "a producer span");
    assert_eq!(sent.attribute("messaging.system"), Some("mqtt"));
    assert_eq!(
        sent.attribute("messaging.destination.name"),
        Some(command_topic.as_str())
    );
    let command = tokio::time::timeout(WAIT, async {
        loop {
            let p = received.recv().await.expect("the device's link");
            if p.topic == command_topic.as_bytes() {
                return p;
            }
        }
    })
    .await
    .expect("the attest command reaches the device");
    let user_properties = command
        .properties
        .map(|p| p.user_properties)
        .unwrap_or_default();
    assert!(
        user_properties.contains(&(
            "traceparent".to_string(),
            format!("00-{TRACE_ID}-{}-01", sent.span_id)
        )),
        "the command carries its publish span's context: {user_properties:?}"
    );
    let status = entry_traceparent(&names.cps_command_status(), "the command's status", |d| {
        d["device_id"] == device_id && d["status"] == "sent"
    })
    .await;
    assert_eq!(
        status.as_deref(),
        Some(format!("00-{TRACE_ID}-{}-01", downlink.span_id).as_str()),
        "the status carries the downlink's process span's context"
    );

    bridge.terminate().await;
    registry.terminate().await;
}
