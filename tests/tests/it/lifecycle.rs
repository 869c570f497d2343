//! Every service's ops port answers `/healthz` from the first second of start-up to the last
//! moment of its drain, the binaries as built.
//!
//! Each test starts a service with a dependency it waits for not yet there (a server of the
//! test's own, its port chosen, nothing listening), and polls `/healthz` every 50 ms from the
//! spawn: 200 within 1 s of the spawn and at every poll after. Meanwhile `/readyz` is 503 and
//! its report names the dependency. Then the server starts, the service becomes ready, is
//! given work, and gets SIGTERM while it holds it: `/healthz` still answers 200 until the
//! process exits (the ops port is the last thing to close, as the process exits; a poll caught
//! at that instant may be reset), and the exit status is 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_core::auth::Permission;
use aurora_core::names::{Channel, DeviceTopicKind};
use aurora_e2e::eve_lines;
use aurora_testkit::ops;
use aurora_testkit::prelude::*;
use serde_json::json;

/// How often `/healthz` is asked.
const POLL: Duration = Duration::from_millis(50);
/// How long one `/healthz` may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// From spawn to the first 200 of `/healthz`.
const FIRST_HEALTHZ_WITHIN: Duration = Duration::from_secs(1);
/// From the ops port's closing (the last step of the drain) to the process being seen gone:
/// the exit itself and this harness's 5 ms polling of it.
const EXIT_AFTER_OPS_CLOSED: Duration = Duration::from_millis(100);

/// One `/healthz` poll: when it started and ended, and the status or the error's kind.
#[derive(Debug, Clone)]
struct Sample {
    start: Instant,
    end: Instant,
    outcome: Result<u16, io::ErrorKind>,
}

/// Polls `/healthz` every [`POLL`] in a task of its own, from its creation until stopped.
struct HealthPoller {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthPoller {
    fn start(ops: Ops) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !st.load(Ordering::SeqCst) {
                tick.tick().await;
                let start = Instant::now();
                let outcome = ops::get(ops.addr, "/healthz", ANSWER_WITHIN)
                    .await
                    .map(|a| a.status)
                    .map_err(|e| e.kind());
                s.lock().unwrap().push(Sample {
                    start,
                    end: Instant::now(),
                    outcome,
                });
            }
        });
        Self {
            samples,
            stop,
            task,
        }
    }

    /// Polls a little longer (the port must stay closed), then stops; every sample.
    async fn finish(self) -> Vec<Sample> {
        tokio::time::sleep(POLL * 4).await;
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let samples = self.samples.lock().unwrap().clone();
        samples
    }
}

/// A service spawned with `/healthz` polled from the spawn on.
struct Watched {
    service: Service,
    poller: HealthPoller,
}

/// Spawns `svc` and polls its `/healthz` from that moment; spawns again (other ports) when
/// a port found free was taken meanwhile.
async fn spawn_watched(site: &Site, svc: Svc, flags: &[(&str, &str)]) -> Watched {
    for _ in 0..3 {
        let mut service = site.spawn(svc, flags);
        let poller = HealthPoller::start(service.ops());
        tokio::time::sleep(FIRST_HEALTHZ_WITHIN + Duration::from_millis(200)).await;
        match service.exited() {
            Some(status) if service.log().contains("in use") => {
                eprintln!(
                    "{}: port taken ({status}), starting again",
                    service.instance
                );
                poller.finish().await;
            }
            Some(status) => panic!(
                "{} exited ({status}) while its dependency was away; log:\n{}",
                service.instance,
                service.log_tail(60)
            ),
            None => return Watched { service, poller },
        }
    }
    panic!("{svc}: no free ports after 3 attempts");
}

/// `/readyz` is 503 and its report has a part named after `dependency` that is not ready;
/// asked several times over a second (the dependency stays away).
async fn assert_waits_for(service: &Service, dependency: &str) {
    for _ in 0..4 {
        let (status, report) = service
            .ops()
            .readyz_report()
            .await
            .unwrap_or_else(|| panic!("{}: /readyz does not answer", service.instance));
        assert_eq!(
            status, 503,
            "{}: ready while {dependency} is away: {report}",
            service.instance
        );
        let waiting: Vec<&String> = report["components"]
            .as_object()
            .map(|parts| {
                parts
                    .iter()
                    .filter(|(name, state)| name.contains(dependency) && state["ready"] == false)
                    .map(|(name, _)| name)
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            !waiting.is_empty(),
            "{}: /readyz does not name {dependency} as what it waits for: {report}",
            service.instance
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, report) = service.ops().readyz_report().await.unwrap_or_default();
    eprintln!(
        "{}: waiting for {dependency}: /readyz {report}",
        service.instance
    );
}

/// SIGTERM, the exit awaited closely, then the poll samples checked against the spawn and the
/// exit. Returns the exit status and how many polls fell within the drain.
async fn terminate_and_check(mut watched: Watched) -> (ExitStatus, usize) {
    let spawned = watched.service.spawned_at();
    let instance = watched.service.instance.clone();
    let sigterm = Instant::now();
    watched.service.sigterm();
    let (status, exited) = watched.service.wait_exit(WAIT).await;
    let samples = watched.poller.finish().await;
    let log = watched.service.log_tail(40);
    let context = |what: String| format!("{instance}: {what}; log:\n{log}");

    let first = samples
        .iter()
        .position(|s| s.outcome == Ok(200))
        .unwrap_or_else(|| panic!("{}", context("/healthz never answered 200".into())));
    let first_at = samples[first].end - spawned;
    assert!(
        first_at <= FIRST_HEALTHZ_WITHIN,
        "{}",
        context(format!(
            "/healthz first answered 200 {first_at:?} after the spawn (more than {FIRST_HEALTHZ_WITHIN:?})"
        ))
    );
    for s in &samples[..first] {
        assert!(
            s.outcome.is_err(),
            "{}",
            context(format!("/healthz answered {:?} during start-up", s.outcome))
        );
    }
    // From the first 200 on: 200 at every poll while the process lives; once the ops port has
    // closed, the process must be gone right after, and nothing answers any more.
    let mut closed_at: Option<Instant> = None;
    for s in &samples[first..] {
        match s.outcome {
            Ok(200) => assert!(
                closed_at.is_none(),
                "{}",
                context(format!(
                    "/healthz answered again {:?} after it had stopped answering",
                    s.start - spawned
                ))
            ),
            // The ops port closes as the process exits: a poll caught at that instant is
            // reset or cut short; after it, connections are refused. Either way the port has
            // closed, and the check below bounds how long before the exit that was.
            Err(
                io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::InvalidData
                | io::ErrorKind::UnexpectedEof,
            ) => {
                closed_at.get_or_insert(s.start);
            }
            ref other => panic!(
                "{}",
                context(format!(
                    "/healthz answered {other:?} {:?} after the spawn ({:?} after SIGTERM, the process exited {:?} after SIGTERM)",
                    s.start - spawned,
                    s.start.saturating_duration_since(sigterm),
                    exited - sigterm
                ))
            ),
        }
    }
    let closed_before_exit = closed_at.map(|closed| exited.saturating_duration_since(closed));
    if let (Some(closed), Some(gap)) = (closed_at, closed_before_exit) {
        assert!(
            gap <= EXIT_AFTER_OPS_CLOSED,
            "{}",
            context(format!(
                "/healthz refused connections {gap:?} before the process was gone ({:?} after SIGTERM)",
                closed.saturating_duration_since(sigterm)
            ))
        );
    }
    let during_drain = samples
        .iter()
        .filter(|s| s.start >= sigterm && s.end <= exited && s.outcome == Ok(200))
        .count();
    eprintln!(
        "{instance}: /healthz 200 from {first_at:?} after the spawn; {} polls; drain took {:?} with {during_drain} polls answered 200 during it; first refusal {:?} before the exit was seen; exit {status}",
        samples.len(),
        exited - sigterm,
        closed_before_exit,
    );
    (status, during_drain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_bridge_answers_healthz_from_start_up_to_the_end_of_its_drain() {
    let names = aurora_testkit::names();
    let mut broker = MosquittoServer::not_started();
    let mut site = Site::new(&names, "site-a", 2);
    site.mqtt_url = broker.url();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);

    let mut watched = spawn_watched(&site, Svc::MqttBridge, &[]).await;
    assert_waits_for(&watched.service, "mqtt").await;
    broker.start_again();
    watched.service.wait_ready().await;

    // Work in flight: device messages the bridge is taking when SIGTERM comes.
    let device = MqttDevice::connect(
        "127.0.0.1",
        broker.port(),
        &format!("lifecycle-{}", names.namespace()),
    );
    device.wait_connected().await;
    for seq in 0..200 {
        let topic = names.mqtt_sensor_topic(&format!("lc-{}", seq % 5), DeviceTopicKind::Telemetry);
        device
            .publish(&topic, json!({"seq": seq}).to_string())
            .await;
    }
    let (status, _) = terminate_and_check(watched).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_registry_answers_healthz_from_start_up_to_the_end_of_its_drain() {
    let names = aurora_testkit::names();
    let db = TestDb::create().await;
    let mut own_redis = RedisServer::not_started();
    let mut site = Site::new(&names, "site-a", 2).with_database(&db);
    site.redis_url = own_redis.url();

    let mut watched = spawn_watched(&site, Svc::DeviceRegistry, &[]).await;
    assert_waits_for(&watched.service, "redis").await;
    own_redis.start_again();
    watched.service.wait_ready().await;

    // Work in flight: device alerts on the stream it reads, and API requests.
    let mut conn = redis(&site.redis_url).await;
    for i in 0..100 {
        let alert = json!({"device_id": format!("lc-{}", i % 5), "message_type": "alerts",
            "id": format!("cps-{i}"), "alert_type": "tamper_switch", "severity": "high"});
        xadd(&mut conn, &names.cps_alerts(), alert.to_string().as_bytes()).await;
    }
    let read = token(&[Permission::DevicesRead]);
    let url = watched.service.http_url("/api/v1/devices");
    let requests = tokio::spawn(async move {
        for _ in 0..20 {
            let _ = http().get(&url).bearer_auth(&read).send().await;
        }
    });
    let (status, _) = terminate_and_check(watched).await;
    requests.abort();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_gateway_answers_healthz_from_start_up_to_the_end_of_its_drain() {
    let names = aurora_testkit::names();
    let mut own_redis = RedisServer::not_started();
    let mut site = Site::new(&names, "site-a", 2);
    site.redis_url = own_redis.url();

    // A drain grace long enough to be seen: consoles are told to go, then closed after it.
    let mut watched = spawn_watched(&site, Svc::WsGateway, &[("drain-grace", "1s")]).await;
    assert_waits_for(&watched.service, "redis").await;
    own_redis.start_again();
    watched.service.wait_ready().await;

    // Work in flight: a console on the alerts channel, alerts flowing to it.
    let query = format!("token={}", token(&[Permission::WsAlerts]));
    let mut console = Console::connect(&watched.service.ws_url(Channel::Alerts, &query)).await;
    let mut conn = redis(&site.redis_url).await;
    let id = uuid::Uuid::new_v4().to_string();
    let alert = json!({"id": id, "title": "lifecycle", "severity": "low", "status": "new",
        "source": "e2e", "timestamp": chrono::Utc::now()});
    xadd(&mut conn, &names.alerts(), alert.to_string().as_bytes()).await;
    console
        .wait_for(WAIT, "the alert", |v| v["id"] == id.as_str())
        .await;
    let (status, during_drain) = terminate_and_check(watched).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        during_drain >= 5,
        "a 1 s drain grace with a console connected, and only {during_drain} polls during the drain"
    );
    drop(console);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_gateway_answers_healthz_from_start_up_to_the_end_of_its_drain() {
    let names = aurora_testkit::names();
    let mut nats = NatsServer::not_started();
    let mut site = Site::new(&names, "site-a", 2);
    site.nats_url = nats.url();
    let _cleanup = Cleanup::new(&names, &site.nats_url, &[&site.redis_url]);

    let mut watched = spawn_watched(&site, Svc::FederationGateway, &[]).await;
    assert_waits_for(&watched.service, "nats").await;
    nats.start_again();
    watched.service.wait_ready().await;

    // Work in flight: alerts of this site being exported.
    let mut conn = redis(&site.redis_url).await;
    for i in 0..200 {
        let alert = json!({"id": uuid::Uuid::new_v4().to_string(), "title": format!("lifecycle {i}"),
            "severity": "high", "status": "new", "source": "e2e", "timestamp": chrono::Utc::now()});
        xadd(&mut conn, &names.alerts(), alert.to_string().as_bytes()).await;
    }
    let (status, _) = terminate_and_check(watched).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eve_ingest_answers_healthz_from_start_up_to_the_end_of_its_drain() {
    let names = aurora_testkit::names();
    let mut nats = NatsServer::not_started();
    let mut site = Site::new(&names, "site-a", 2);
    site.nats_url = nats.url();
    let _cleanup = Cleanup::new(&names, &site.nats_url, &[&site.redis_url]);

    let mut watched = spawn_watched(&site, Svc::EveIngest, &[]).await;
    assert_waits_for(&watched.service, "nats").await;
    nats.start_again();
    watched.service.wait_ready().await;

    // Work in flight: Suricata lines being taken and published.
    let mut conn = redis(&site.redis_url).await;
    let lines: Vec<Vec<u8>> = eve_lines(500).into_iter().map(String::into_bytes).collect();
    lpush(&mut conn, &names.suricata_list(), &lines).await;
    let (status, _) = terminate_and_check(watched).await;
    assert!(status.success(), "exit status {status}");
}
