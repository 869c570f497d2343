//! Traces across the bridge, exported to a real OTLP/HTTP receiver: a device message sent
//! over MQTT 5 with a `traceparent` user property gets a receive span, the child of the
//! device's span, and a publish span, the child of the receive span, whose context the Redis
//! entry carries beside `data`. A message without one (or with a malformed one) starts a new
//! trace.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use aurora_core::names::DeviceTopicKind;
use common::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};

const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const DEVICE_SPAN: &str = "eee19b7ec3c1b174";

/// An MQTT 5 device; its event loop runs in a task. Returns the client and a count of acks.
fn mqtt5_device(client_id: &str) -> (AsyncClient, tokio::sync::watch::Receiver<u64>) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", MQTT_PORT);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        let mut acked = 0;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => {
                    acked += 1;
                    let _ = tx.send(acked);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (client, rx)
}

async fn publish(client: &AsyncClient, topic: &str, payload: &str, traceparent: Option<&str>) {
    let properties = PublishProperties {
        user_properties: traceparent
            .map(|t| vec![("traceparent".to_string(), t.to_string())])
            .unwrap_or_default(),
        ..PublishProperties::default()
    };
    client
        .publish_with_properties(
            topic,
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
            properties,
        )
        .await
        .unwrap();
}

/// The `traceparent` field of each entry of `stream`, oldest first.
async fn entry_traceparents(stream: &str) -> Vec<Option<String>> {
    let conn = redis(REDIS_URL).await;
    traced_entries(&conn, stream)
        .await
        .into_iter()
        .map(|e| e.traceparent)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_message_is_one_trace_from_the_device_to_the_stream_entry() {
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let receiver = OtlpReceiver::start().await;
    let mut site = site(&names, MQTT_PORT, REDIS_URL);
    site.extra_env = receiver.service_env();
    let bridge = site
        .start(Svc::MqttBridge, &[("share-group", &share_group(&names))])
        .await;

    let (device, mut acked) = mqtt5_device(&format!("{}-dev5", names.namespace()));
    let kind = DeviceTopicKind::Telemetry;
    let topic = names.mqtt_sensor_topic("d-1", kind);
    let parent = format!("00-{TRACE_ID}-{DEVICE_SPAN}-01");
    publish(&device, &topic, r#"{"seq":0}"#, Some(&parent)).await;
    publish(&device, &topic, r#"{"seq":1}"#, None).await;
    publish(&device, &topic, r#"{"seq":2}"#, Some("00-not-a-trace-01")).await;
    tokio::time::timeout(WAIT, acked.wait_for(|n| *n >= 3))
        .await
        .expect("three acks in time")
        .unwrap();

    let receive = receiver
        .wait_span("the receive span of the traced message", |s| {
            s.trace_id == TRACE_ID && s.name == format!("{topic} receive")
        })
        .await;
    assert_eq!(receive.service, "mqtt-bridge");
    assert_eq!(
        receive.parent_span_id, DEVICE_SPAN,
        "child of the device's span"
    );
    assert_eq!(receive.kind, 5, "a consumer span");
    assert_eq!(
        receive.messaging(),
        (Some("mqtt"), Some("receive"), Some(topic.as_str()))
    );

    let stream = names.cps_stream(kind);
    let publish_span = receiver
        .wait_span("the publish span of its stream entry", |s| {
            s.trace_id == TRACE_ID && s.name == format!("{stream} publish")
        })
        .await;
    assert_eq!(publish_span.parent_span_id, receive.span_id);
    assert_eq!(publish_span.kind, 4, "a producer span");
    assert_eq!(publish_span.attribute("messaging.system"), Some("redis"));

    let entries = entry_traceparents(&stream).await;
    assert_eq!(entries.len(), 3, "every message written");
    assert_eq!(
        entries[0].as_deref(),
        Some(format!("00-{TRACE_ID}-{}-01", publish_span.span_id).as_str()),
        "the entry carries its publish span's context"
    );
    for (i, other) in entries[1..].iter().enumerate() {
        let other = other
            .as_deref()
            .expect("a new trace for a message without a context");
        assert!(!other.contains(TRACE_ID), "message {}: {other}", i + 1);
    }

    // The message with a malformed traceparent started a new trace: its receive span is a root.
    let roots = receiver
        .wait_span("a root receive span", |s| {
            s.name == format!("{topic} receive") && s.parent_span_id.is_empty()
        })
        .await;
    assert_ne!(roots.trace_id, TRACE_ID);

    drop(bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_traced_and_entries_have_data_only() {
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let _bridge = start_bridge(&names, MQTT_PORT, REDIS_URL).await;
    let (device, mut acked) = mqtt5_device(&format!("{}-dev5", names.namespace()));
    let topic = names.mqtt_sensor_topic("d-1", DeviceTopicKind::Telemetry);
    let parent = format!("00-{TRACE_ID}-{DEVICE_SPAN}-01");
    publish(&device, &topic, r#"{"seq":0}"#, Some(&parent)).await;
    tokio::time::timeout(WAIT, acked.wait_for(|n| *n >= 1))
        .await
        .expect("acked in time")
        .unwrap();
    let stream = names.cps_stream(DeviceTopicKind::Telemetry);
    wait_xlen(&redis(REDIS_URL).await, &stream, 1, "written").await;
    assert_eq!(
        entry_traceparents(&stream).await,
        [None],
        "tracing off: the entry has `data` only"
    );
}
