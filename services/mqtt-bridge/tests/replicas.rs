//! Two bridge replicas (the built binary, twice) in one shared-subscription group split the
//! devices' traffic: both write, and every message is in the stream exactly once.
#![allow(clippy::unwrap_used)]

mod common;

use aurora_core::names::DeviceTopicKind;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_load_with_nothing_lost_or_doubled() {
    let broker = MosquittoServer::start();
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let redis = redis(REDIS_URL).await;
    let a = start_bridge(&names, broker.port(), REDIS_URL).await;
    let b = start_bridge(&names, broker.port(), REDIS_URL).await;

    let n = 2000u64;
    let dev = device_on(broker.port(), &format!("{}-load", names.namespace())).await;
    for seq in 0..n {
        let topic =
            names.mqtt_sensor_topic(&format!("dev-{}", seq % 50), DeviceTopicKind::Telemetry);
        dev.publish(&topic, json!({"seq": seq}).to_string()).await;
    }
    dev.wait_acked(n).await;
    wait_xlen(
        &redis,
        &names.cps_telemetry(),
        n,
        "every message in the stream",
    )
    .await;

    let docs = stream_values(&redis, &names.cps_telemetry()).await;
    let (distinct, dups) = seq_counts(&docs);
    assert_eq!(distinct, n, "nothing lost");
    assert_eq!(dups, 0, "nothing doubled");
    assert_eq!(docs.len() as u64, n);

    let metric = "aurora_mqtt_bridge_messages_total";
    let (wa, wb) =
        aurora_testkit::wait_until(LONG, "both replicas report their counts", || async {
            let (wa, wb) = (a.metric(metric, &[]).await, b.metric(metric, &[]).await);
            (wa + wb == n as f64).then_some((wa, wb))
        })
        .await;
    eprintln!("replica a wrote {wa}, replica b wrote {wb} of {n}");
    assert!(
        wa > 0.0 && wb > 0.0,
        "both replicas took a share: a={wa} b={wb}"
    );

    dev.disconnect().await;
}
