//! A flood larger than every queue and ack window on the way (100,000 messages published
//! before the bridge can keep up): the bridge never deadlocks between reading and acking,
//! and every message reaches the stream. (Found by the benchmark: acks queued behind reads
//! stalled the bridge for good at 65,536 pending acks.)
#![allow(clippy::unwrap_used)]

use crate::common;

use aurora_core::names::DeviceTopicKind;
use aurora_testkit::redis::wait_xlen_within;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_written_entirely_without_stalling() {
    let broker = MosquittoServer::start_with_config(
        "allow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 100\n",
    );
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let redis = redis(REDIS_URL).await;
    let bridge = Bridge::start(config(&names, broker.port(), REDIS_URL, "a")).await;
    bridge.ready().await;

    let (connections, per) = (4u64, 25_000u64);
    let mut load = Vec::new();
    for c in 0..connections {
        let names = names.clone();
        let port = broker.port();
        load.push(tokio::spawn(async move {
            let dev = device_on(port, &format!("{}-load{c}", names.namespace())).await;
            for i in 0..per {
                let seq = c * per + i;
                let topic = names
                    .mqtt_sensor_topic(&format!("d{}", seq % 50_000), DeviceTopicKind::Telemetry);
                dev.publish(&topic, format!("{{\"seq\":{seq}}}")).await;
            }
            dev.wait_acked(per).await;
            dev.disconnect().await;
        }));
    }
    for l in load {
        l.await.unwrap();
    }
    let n = connections * per;
    wait_xlen_within(
        &redis,
        &names.cps_telemetry(),
        n,
        std::time::Duration::from_secs(60),
        "every message in the stream",
    )
    .await;
    let (distinct, dups) = seq_counts(&stream_values(&redis, &names.cps_telemetry()).await);
    assert_eq!(distinct, n);
    assert_eq!(dups, 0);

    bridge.stop().await;
}
