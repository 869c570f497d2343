//! What the broker's queue limit drops is named in the loss ledger. A bridge replica is killed
//! (SIGKILL: its persistent session stays on the broker) while devices go on publishing: the
//! broker queues `max_queued_messages` for the session and drops the rest. Once a replica
//! takes the session again (the same one back under its name, or a new one adopting it), the
//! stream holds what was queued and the ledger names what the broker dropped: together,
//! every message published.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use aurora_core::ledger::{self, BrokerLoss, Window};
use aurora_core::names::DeviceTopicKind;
use aurora_testkit::replicas::start_as;
use common::*;
use serde_json::json;

/// The broker's queue for a session (`max_queued_messages`).
const QUEUED: u64 = 5;
const PUBLISHED: u64 = 40;

enum Back {
    UnderItsName,
    Never,
}

async fn broker_losses(conn: &aurora_core::bus::Conn, base: &str) -> Vec<BrokerLoss> {
    ledger::broker_losses(conn, base, Window::last(Duration::from_secs(600)))
        .await
        .unwrap()
}

async fn overflow_while_killed(back: Back) {
    let broker = MosquittoServer::start_with_config(&format!(
        "allow_anonymous true\nmax_queued_messages {QUEUED}\nsys_interval 1\n"
    ));
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let conn = redis(REDIS_URL).await;
    let site = site(&names, broker.port(), REDIS_URL);
    let group = share_group(&names);
    let flags = [
        ("share-group", group.as_str()),
        ("lease-ttl", "3s"),
        ("adoption-interval", "1s"),
    ];
    let program = Path::new(env!("CARGO_BIN_EXE_mqtt-bridge"));
    let mut r1 = start_as(&site, Svc::MqttBridge, program, "r1", &flags).await;
    let base = names.ledger_mqtt();
    let source = format!("127.0.0.1:{}", broker.port());
    // The first count a bridge reads is the baseline: drops from then on are this install's.
    aurora_testkit::wait_until(WAIT, "the broker's drop count read", || {
        let mut conn = conn.clone();
        let (key, field) = (format!("{base}:counted"), source.clone());
        async move {
            let held: Option<u64> = redis::cmd("HGET")
                .arg(&key)
                .arg(&field)
                .query_async(&mut conn)
                .await
                .unwrap();
            held
        }
    })
    .await;

    r1.kill();
    let dev = device_on(broker.port(), &format!("{}-dev", names.namespace())).await;
    let topic = names.mqtt_sensor_topic("dev-1", DeviceTopicKind::Telemetry);
    for seq in 0..PUBLISHED {
        dev.publish(&topic, json!({"seq": seq}).to_string()).await;
    }
    dev.wait_acked(PUBLISHED).await;

    let _r2 = match back {
        Back::UnderItsName => {
            r1.kill_and_spawn();
            r1.wait_ready().await;
            None
        }
        Back::Never => Some(start_as(&site, Svc::MqttBridge, program, "r2", &flags).await),
    };
    let stream = names.cps_telemetry();
    let (written, dropped) = aurora_testkit::wait_until(
        Duration::from_secs(60),
        "every message in the stream or named dropped by the broker",
        || async {
            let written = xlen(&mut conn.clone(), &stream).await;
            let dropped: i64 = broker_losses(&conn, &base)
                .await
                .iter()
                .filter(|l| l.broker == source)
                .map(|l| l.dropped)
                .sum();
            (written + dropped as u64 == PUBLISHED).then_some((written, dropped))
        },
    )
    .await;
    eprintln!("{PUBLISHED} published: {written} in the stream, {dropped} dropped by the broker");
    assert!((1..=QUEUED + 1).contains(&written), "{written} written");
    assert!(dropped > 0);
    let losses = broker_losses(&conn, &base).await;
    assert!(
        losses[0].finding().contains("dropped by its queue limits"),
        "{losses:?}"
    );
    // The count stays put: nothing is counted twice by the replicas reading it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again: i64 = broker_losses(&conn, &base)
        .await
        .iter()
        .map(|l| l.dropped)
        .sum();
    assert_eq!(again, dropped, "counted once");
    dev.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_overflow_while_a_replica_is_down_is_named_when_it_comes_back_under_its_name() {
    overflow_while_killed(Back::UnderItsName).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_overflow_for_a_replica_that_never_comes_back_is_named_by_the_one_adopting_it() {
    overflow_while_killed(Back::Never).await;
}
