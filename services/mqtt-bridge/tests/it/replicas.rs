//! Two bridge replicas (the built binary, twice) in one shared-subscription group split the
//! devices' traffic: both write, and every message is in the stream exactly once.
#![allow(clippy::unwrap_used)]

use crate::common;

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

// ---------------------------------------------------------------------------------------
// Replicas come and go while devices publish: scale-down, pod replacement, a replica killed
// for good, scale-up. Each run has its own Mosquitto (its sessions are the test's to check)
// and short leases (`--lease-ttl 3s`, `--adoption-interval 1s`).
// ---------------------------------------------------------------------------------------

use std::path::Path;
use std::time::{Duration, Instant};

use aurora_core::Names;
use aurora_testkit::replicas::{mqtt_session_present, registry_members, start_as};

const LEASE_TTL: Duration = Duration::from_secs(3);
const ADOPTION_INTERVAL: Duration = Duration::from_secs(1);
/// The bridge's receive maximum (`--queue-capacity`, default): the most messages a replica
/// can have written and not yet acknowledged when it is killed.
const RECEIVE_MAX: u64 = 1024;

/// Bridge replicas on a broker of the test's own, in one share group.
struct Fleet {
    broker: MosquittoServer,
    names: Names,
    redis: aurora_core::bus::Conn,
    site: Site,
    _cleanup: Cleanup,
}

impl Fleet {
    async fn new() -> Self {
        let broker = MosquittoServer::start();
        let names = aurora_testkit::names();
        let cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
        let mut site = site(&names, broker.port(), REDIS_URL);
        site.shutdown_timeout = "10s".into();
        Self {
            redis: redis(REDIS_URL).await,
            site,
            broker,
            names,
            _cleanup: cleanup,
        }
    }

    /// The replica `instance` (the test chooses its name, as Kubernetes names a pod), ready.
    async fn start(&self, instance: &str) -> Service {
        let group = share_group(&self.names);
        let ttl = format!("{}ms", LEASE_TTL.as_millis());
        let every = format!("{}ms", ADOPTION_INTERVAL.as_millis());
        start_as(
            &self.site,
            Svc::MqttBridge,
            Path::new(env!("CARGO_BIN_EXE_mqtt-bridge")),
            instance,
            &[
                ("share-group", &group),
                ("lease-ttl", &ttl),
                ("adoption-interval", &every),
            ],
        )
        .await
    }

    /// Devices publish `n` telemetry messages (QoS 1, 20 devices) at `per_second`, the
    /// whole time the test changes the replicas, then wait for every PUBACK.
    fn load(&self, n: u64, per_second: u64) -> tokio::task::JoinHandle<()> {
        let (names, port) = (self.names.clone(), self.broker.port());
        tokio::spawn(async move {
            let dev = device_on(port, &format!("{}-load", names.namespace())).await;
            let started = tokio::time::Instant::now();
            for seq in 0..n {
                let device = format!("dev-{}", seq % 20);
                let topic = names.mqtt_sensor_topic(&device, DeviceTopicKind::Telemetry);
                dev.publish(&topic, json!({"seq": seq, "temp": 21.5}).to_string())
                    .await;
                if seq % 20 == 19 {
                    let due = Duration::from_secs_f64((seq + 1) as f64 / per_second as f64);
                    tokio::time::sleep_until(started + due).await;
                }
            }
            dev.wait_acked(n).await;
            dev.disconnect().await;
        })
    }

    async fn written(&self) -> u64 {
        xlen(&mut self.redis.clone(), &self.names.cps_telemetry()).await
    }

    /// Waits until the stream holds `n` entries.
    async fn wait_written(&self, n: u64, what: &str) {
        wait_xlen(&self.redis, &self.names.cps_telemetry(), n, what).await;
    }

    /// Waits until every one of the `n` messages is in the stream: (distinct, duplicates).
    async fn wait_all(&self, n: u64) -> (u64, u64) {
        let stream = self.names.cps_telemetry();
        let (distinct, dups) = aurora_testkit::wait_until(
            Duration::from_secs(60),
            "every message in the stream",
            || async {
                let (distinct, dups) = seq_counts(&stream_values(&self.redis, &stream).await);
                (distinct >= n).then_some((distinct, dups))
            },
        )
        .await;
        assert_eq!(distinct, n, "zero lost");
        (distinct, dups)
    }

    async fn members(&self) -> Vec<String> {
        registry_members(&self.redis, &self.names, mqtt_bridge::SERVICE).await
    }

    /// The registry holds exactly these replicas.
    async fn assert_members(&self, live: &[&str]) {
        let mut want: Vec<String> = live.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(self.members().await, want, "the replica registry");
    }

    /// Nothing is left in `instance`'s broker session (connecting with its uplink client id
    /// and clean start off finds none; the check ends the session it makes).
    async fn assert_no_session(&self, instance: &str) {
        let client_id = mqtt_bridge::uplink_client_id(instance);
        assert!(
            !mqtt_session_present(MQTT_HOST, self.broker.port(), &client_id).await,
            "the broker still holds a session for {client_id}"
        );
    }
}

/// How many messages each session handed back in `log` still received while leaving (the
/// bridge logs it when it ends a session).
fn received_while_leaving(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("session handed back"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            v.pointer("/fields/received_while_leaving")
                .or_else(|| v.get("received_while_leaving"))
                .and_then(serde_json::Value::as_u64)
        })
        .collect()
}

/// SIGTERM and wait for the exit: 0, and its session was handed back.
async fn leave(replica: &mut Service) {
    let status = replica.terminate().await;
    assert!(
        status.success(),
        "{} exited with {status}",
        replica.instance
    );
    assert!(
        replica.log().contains("session handed back"),
        "{} did not hand its session back; log:\n{}",
        replica.instance,
        replica.log_tail(40)
    );
    eprintln!(
        "{} left: received {:?} messages while leaving",
        replica.instance,
        received_while_leaving(&replica.log())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_a_replica_that_leaves_hands_back_its_share() {
    let fleet = Fleet::new().await;
    let r1 = fleet.start("r1").await;
    let r2 = fleet.start("r2").await;
    let mut r3 = fleet.start("r3").await;
    fleet.assert_members(&["r1", "r2", "r3"]).await;

    let n = 3000;
    let load = fleet.load(n, 500);
    fleet.wait_written(n / 3, "a third of the messages").await;
    leave(&mut r3).await;
    let at_leave = fleet.written().await;
    load.await.unwrap();

    let (_, dups) = fleet.wait_all(n).await;
    eprintln!(
        "scale-down 3 -> 2: r3 left after {at_leave} of {n}; all {n} arrived, {dups} duplicates"
    );
    assert!(at_leave < n, "r3 left while the devices published");
    assert_eq!(dups, 0, "a clean leave makes no duplicates");
    fleet.assert_no_session("r3").await;
    fleet.assert_members(&["r1", "r2"]).await;
    drop((r1, r2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_replacement_a_replica_stopped_and_a_new_one_under_a_new_name() {
    let fleet = Fleet::new().await;
    let r1 = fleet.start("r1").await;
    let mut r2 = fleet.start("bridge-7f9c-a").await;

    let n = 3000;
    let load = fleet.load(n, 500);
    fleet.wait_written(n / 3, "a third of the messages").await;
    leave(&mut r2).await;
    let replacement = fleet.start("bridge-7f9c-b").await;
    let at_replaced = fleet.written().await;
    load.await.unwrap();

    let (_, dups) = fleet.wait_all(n).await;
    let took = replacement
        .metric("aurora_mqtt_bridge_messages_total", &[])
        .await;
    eprintln!("pod replaced after {at_replaced} of {n}: all {n} arrived, {dups} duplicates; the new pod wrote {took}");
    assert!(at_replaced < n, "replaced while the devices published");
    assert_eq!(dups, 0, "a clean leave makes no duplicates");
    assert!(took > 0.0, "the new pod took a share");
    fleet.assert_no_session("bridge-7f9c-a").await;
    fleet.assert_members(&["bridge-7f9c-b", "r1"]).await;
    drop((r1, replacement));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_for_good_is_taken_over_within_the_lease() {
    let fleet = Fleet::new().await;
    let r1 = fleet.start("r1").await;
    let r2 = fleet.start("r2").await;
    let mut r3 = fleet.start("r3").await;

    let n = 4000;
    let load = fleet.load(n, 400);
    fleet.wait_written(n / 4, "a quarter of the messages").await;
    r3.kill();
    let killed = Instant::now();
    let at_kill = fleet.written().await;
    // Taken over: its session handed back by a live replica and the replica forgotten.
    let took = aurora_testkit::wait_until(Duration::from_secs(40), "r3 taken over", || async {
        (!fleet.members().await.contains(&"r3".to_string())).then(|| killed.elapsed())
    })
    .await;
    let bound = LEASE_TTL + ADOPTION_INTERVAL + Duration::from_secs(4);
    load.await.unwrap();

    let (_, dups) = fleet.wait_all(n).await;
    let adoptions = r1
        .metric(
            "aurora_mqtt_bridge_adoptions_total",
            &[("outcome", "handed_back")],
        )
        .await
        + r2.metric(
            "aurora_mqtt_bridge_adoptions_total",
            &[("outcome", "handed_back")],
        )
        .await;
    eprintln!(
        "r3 SIGKILLed after {at_kill} of {n}: taken over {took:?} after the kill (lease ttl {LEASE_TTL:?}, \
         look every {ADOPTION_INTERVAL:?}, bound {bound:?}); all {n} arrived, {dups} duplicates \
         (at most the receive maximum, {RECEIVE_MAX}, written and not acknowledged at the kill)"
    );
    assert!(at_kill < n, "killed while the devices published");
    assert!(took <= bound, "taken over after {took:?}, over {bound:?}");
    assert!(
        took >= LEASE_TTL / 3,
        "taken over after {took:?}: before its lease could lapse"
    );
    let adopted: u64 = received_while_leaving(&format!("{}\n{}", r1.log(), r2.log()))
        .iter()
        .sum();
    eprintln!("the adopter read {adopted} messages from r3's session");
    assert_eq!(adoptions, 1.0, "one live replica adopted r3");
    assert!(
        adopted > 0,
        "r3's session held messages when it was adopted"
    );
    assert!(dups <= RECEIVE_MAX, "{dups} duplicates");
    fleet.assert_no_session("r3").await;
    fleet.assert_members(&["r1", "r2"]).await;
    drop((r1, r2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_from_one_to_three_under_load_then_down_to_zero() {
    let fleet = Fleet::new().await;
    let mut r1 = fleet.start("r1").await;

    let n = 3000;
    let load = fleet.load(n, 500);
    fleet.wait_written(n / 5, "a fifth of the messages").await;
    let mut r2 = fleet.start("r2").await;
    let at_r2 = fleet.written().await;
    let mut r3 = fleet.start("r3").await;
    let at_r3 = fleet.written().await;
    load.await.unwrap();

    let (_, dups) = fleet.wait_all(n).await;
    let metric = "aurora_mqtt_bridge_messages_total";
    let shares = [
        r1.metric(metric, &[]).await,
        r2.metric(metric, &[]).await,
        r3.metric(metric, &[]).await,
    ];
    eprintln!("scale-up 1 -> 3: r2 joined after {at_r2}, r3 after {at_r3} of {n}; all {n} arrived, {dups} duplicates; shares {shares:?}");
    assert!(at_r3 < n, "scaled up while the devices published");
    assert_eq!(dups, 0, "joining replicas make no duplicates");
    assert!(
        shares.iter().all(|s| *s > 0.0),
        "every replica took a share"
    );
    fleet.assert_members(&["r1", "r2", "r3"]).await;

    // Down to zero: every replica hands its session back and leaves the registry.
    for r in [&r1, &r2, &r3] {
        r.sigterm();
    }
    for r in [&mut r1, &mut r2, &mut r3] {
        let (status, _) = r.wait_exit(Duration::from_secs(20)).await;
        assert!(status.success(), "{} exited with {status}", r.instance);
        assert!(
            r.log().contains("session handed back"),
            "{}",
            r.log_tail(40)
        );
    }
    for r in ["r1", "r2", "r3"] {
        fleet.assert_no_session(r).await;
    }
    fleet.assert_members(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_coming_back_under_its_name_while_being_adopted_owns_its_session_again() {
    let fleet = Fleet::new().await;
    let r1 = fleet.start("r1").await;
    let mut r2 = fleet.start("r2").await;

    let n = 3000;
    let load = fleet.load(n, 400);
    fleet.wait_written(n / 4, "a quarter of the messages").await;
    r2.kill();
    // r1 takes r2's session over: r2 comes back under its name while that is in progress.
    let adoption = "aurora_mqtt_bridge_connections_total";
    aurora_testkit::wait_until(Duration::from_secs(30), "r1 adopting r2", || async {
        (r1.metric(adoption, &[("link", "adoption")]).await >= 1.0).then_some(())
    })
    .await;
    r2.kill_and_spawn();
    r2.wait_ready().await;
    let waited = r2.log().contains("waiting for it");
    load.await.unwrap();

    let (_, dups) = fleet.wait_all(n).await;
    let outcomes = [
        r1.metric(
            "aurora_mqtt_bridge_adoptions_total",
            &[("outcome", "handed_back")],
        )
        .await,
        r1.metric(
            "aurora_mqtt_bridge_adoptions_total",
            &[("outcome", "returned")],
        )
        .await,
    ];
    eprintln!(
        "r2 came back while r1 adopted it (waited for the adoption: {waited}; r1's adoptions \
         handed back / stopped by the return: {outcomes:?}): all {n} arrived, {dups} duplicates"
    );
    assert_eq!(
        outcomes[0] + outcomes[1],
        1.0,
        "one adoption, ended either way"
    );
    assert!(dups <= 2 * RECEIVE_MAX, "{dups} duplicates");
    // r2 is a live member again (its renewal adds it back after the adopter forgot it).
    aurora_testkit::wait_until(
        Duration::from_secs(10),
        "r1 and r2 in the registry",
        || async { (fleet.members().await == ["r1", "r2"]).then_some(()) },
    )
    .await;
    drop(r1);
}
