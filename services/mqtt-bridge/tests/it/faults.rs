//! Faults while QoS 1 messages flow: the bridge SIGKILLed and restarted with the same client
//! id, and Redis stopped and restarted. Every message sent arrives at least once; duplicates
//! (allowed by at-least-once) are counted and reported.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use aurora_core::names::DeviceTopicKind;
use aurora_core::Names;
use common::*;
use serde_json::json;

/// Publishes `n` telemetry messages from 20 devices at a steady pace, then waits for every
/// PUBACK from the broker.
fn publish_stream(
    names: &Names,
    port: u16,
    n: u64,
    pause_per_50: Duration,
) -> tokio::task::JoinHandle<()> {
    let names = names.clone();
    tokio::spawn(async move {
        let dev = device_on(port, &format!("{}-load", names.namespace())).await;
        for seq in 0..n {
            let device = format!("dev-{}", seq % 20);
            let topic = names.mqtt_sensor_topic(&device, DeviceTopicKind::Telemetry);
            dev.publish(&topic, json!({"seq": seq, "temp": 21.5}).to_string())
                .await;
            if seq % 50 == 49 {
                tokio::time::sleep(pause_per_50).await;
            }
        }
        dev.wait_acked(n).await;
        dev.disconnect().await;
    })
}

async fn wait_all_seqs(conn: &aurora_core::bus::Conn, stream: &str, n: u64) -> u64 {
    let (distinct, dups) = aurora_testkit::wait_until(
        Duration::from_secs(60),
        "every message in the stream",
        || async {
            let (distinct, dups) = seq_counts(&stream_values(conn, stream).await);
            (distinct >= n).then_some((distinct, dups))
        },
    )
    .await;
    assert_eq!(distinct, n, "every message sent arrived");
    dups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_mid_stream_and_restarted_loses_nothing() {
    let broker = MosquittoServer::start();
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let mut redis = redis(REDIS_URL).await;
    let mut bridge = start_bridge(&names, broker.port(), REDIS_URL).await;

    let n = 3000;
    let load = publish_stream(&names, broker.port(), n, Duration::from_millis(20));
    wait_xlen(&redis, &names.cps_telemetry(), 500, "500 entries").await;
    bridge.kill();
    let at_kill = xlen(&mut redis, &names.cps_telemetry()).await;
    // Started again (the same instance, so the same MQTT session), not waited for.
    bridge.kill_and_spawn();
    load.await.unwrap();

    let dups = wait_all_seqs(&redis, &names.cps_telemetry(), n).await;
    eprintln!("bridge SIGKILLed after {at_kill} of {n} entries: all {n} arrived, {dups} duplicates (at-least-once redelivery)");
    assert!(at_kill < n, "the kill happened mid-stream");

    bridge.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_mid_stream_loses_nothing() {
    let broker = MosquittoServer::start();
    // Append-only with fsync on every write: what Redis acknowledged survives its SIGKILL.
    let mut own_redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let names = aurora_testkit::names();
    let bridge = Bridge::start(config(&names, broker.port(), &own_redis.url(), "a")).await;
    bridge.ready().await;
    let conn = redis(&own_redis.url()).await;

    let n = 2000;
    // About 4 s of traffic: Redis goes away early and messages keep coming.
    let load = publish_stream(&names, broker.port(), n, Duration::from_millis(100));
    wait_xlen(&conn, &names.cps_telemetry(), 300, "300 entries").await;
    // What Redis held when it went away.
    let at_outage = xlen(&mut conn.clone(), &names.cps_telemetry()).await;
    own_redis.kill();
    let r = bridge.readiness.clone();
    aurora_testkit::wait_until(LONG, "/readyz: redis not ready while it is down", || {
        let r = r.clone();
        async move { (r.report()["components"]["redis"]["ready"] == false).then_some(()) }
    })
    .await;
    assert!(!r.is_ready());
    // Keep Redis away while messages keep coming: the broker holds them for the session.
    tokio::time::sleep(Duration::from_secs(1)).await;
    own_redis.start_again();
    load.await.unwrap();

    let conn = redis(&own_redis.url()).await;
    let dups = wait_all_seqs(&conn, &names.cps_telemetry(), n).await;
    eprintln!("Redis killed mid-stream and restarted: all {n} arrived, {dups} duplicates");
    assert!(at_outage < n, "the outage happened mid-stream");
    bridge.ready().await;
    bridge.stop().await;
}

/// Publishes telemetry with sequence numbers `seqs` from one new connection and waits for
/// the broker's acks.
async fn publish_seqs(names: &Names, port: u16, seqs: std::ops::Range<u64>, client: &str) {
    let dev = device_on(port, &format!("{}-{client}", names.namespace())).await;
    let n = seqs.end - seqs.start;
    for seq in seqs {
        let topic =
            names.mqtt_sensor_topic(&format!("dev-{}", seq % 20), DeviceTopicKind::Telemetry);
        dev.publish(&topic, json!({"seq": seq, "temp": 21.5}).to_string())
            .await;
    }
    dev.wait_acked(n).await;
    dev.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_restarted_the_bridge_reconnects_resubscribes_and_resumes() {
    let mut broker = MosquittoServer::start();
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let conn = redis(REDIS_URL).await;
    let bridge = Bridge::start(config(&names, broker.port(), REDIS_URL, "a")).await;
    bridge.ready().await;

    publish_seqs(&names, broker.port(), 0..200, "before").await;
    wait_xlen(&conn, &names.cps_telemetry(), 200, "the first 200 entries").await;

    broker.terminate();
    let r = bridge.readiness.clone();
    aurora_testkit::wait_until(
        LONG,
        "/readyz: the uplink not ready while the broker is down",
        || {
            let r = r.clone();
            async move {
                (r.report()["components"][mqtt_bridge::health::MQTT_UPLINK]["ready"] == false)
                    .then_some(())
            }
        },
    )
    .await;
    broker.start_again();
    bridge.ready().await;

    publish_seqs(&names, broker.port(), 200..400, "after").await;
    let dups = wait_all_seqs(&conn, &names.cps_telemetry(), 400).await;
    eprintln!("broker restarted: all 400 arrived, {dups} duplicates");
    bridge.stop().await;
}
