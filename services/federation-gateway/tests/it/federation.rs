//! Two sites under one namespace, against real Redis and NATS JetStream: site A and site B
//! are two databases of one Redis (or Redis servers of the test's own), sharing one NATS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use aurora_core::bus::{Conn, Producer};
use aurora_core::jetstream::StreamChange;
use aurora_core::model::DeadLetter;
use aurora_core::names::Names;
use aurora_core::ops::Readiness;
use aurora_core::service::{launch, Flags, LaunchOptions, Launched, Stopped};
use aurora_testkit::cleanup::cleanup;
use aurora_testkit::nats::stream_len;
use aurora_testkit::prelude::*;
use federation_gateway::{Args, FederationGateway, ORIGIN_SITE_HEADER, SERVICE};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const SITE_A_REDIS: &str = "redis://127.0.0.1:6379/1";
const SITE_B_REDIS: &str = "redis://127.0.0.1:6379/2";
const LONG: Duration = Duration::from_secs(30);
/// The consumer group of the gateway on the streams it exports.
const GROUP: &str = federation_gateway::SERVICE;

fn args(names: &Names, site: &str, redis: &str, nats: &str, extra: &[&str]) -> Args {
    let instance = format!("{site}-1");
    let mut argv = vec![
        "federation-gateway",
        "--namespace",
        names.namespace(),
        "--site-id",
        site,
        "--redis-url",
        redis,
        "--nats-url",
        nats,
        "--ops-addr",
        "127.0.0.1:0",
        "--instance-id",
        &instance,
        "--log-format",
        "pretty",
        "--lag-interval",
        "500ms",
        "--shutdown-timeout",
        "5s",
    ];
    argv.extend_from_slice(extra);
    aurora_core::config::parse_from::<Args, _, _>(SERVICE, Args::RENAMED_ENV, argv).unwrap()
}

/// A gateway running in-process.
struct Gateway {
    readiness: Readiness,
    launched: Launched,
}

impl Gateway {
    async fn start(args: Args) -> Self {
        let mut options = LaunchOptions::local(&args.common.instance());
        options.drain_deadline = args.common.shutdown_timeout;
        let service = args.into_service().expect("valid flags");
        let launched = launch(service, options, CancellationToken::new())
            .await
            .expect("gateway starts");
        Self {
            readiness: launched.readiness.clone(),
            launched,
        }
    }

    async fn stop(self) {
        self.launched.shutdown();
        assert_eq!(self.launched.stopped().await, Stopped::Drained);
    }
}

/// The alert id of a test label: alerts carry UUIDs.
fn uid(label: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, label.as_bytes()).to_string()
}

fn alert(label: &str, severity: &str) -> Value {
    json!({"id": uid(label), "title": "Suspicious DNS Query to Known C2 Domain", "severity": severity,
           "status": "new", "source": "suricata", "iocs": [{"type": "domain", "value": "t1.evil.com"}],
           "mitre_techniques": ["T1071.004"], "timestamp": "2024-01-15T10:30:00Z"})
}

async fn jetstream_ctx(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

fn ids(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_crosses_once_with_its_origin_and_red_iocs_stay_home() {
    let names = aurora_testkit::names();
    let nats = aurora_testkit::NATS_URL;
    let a = Gateway::start(args(&names, "site-a", SITE_A_REDIS, nats, &[])).await;
    let b = Gateway::start(args(&names, "site-b", SITE_B_REDIS, nats, &[])).await;
    let (ra, rb) = (redis(SITE_A_REDIS).await, redis(SITE_B_REDIS).await);

    xadd_json(&ra, &names.alerts(), &alert("a-1", "high")).await;
    xadd_json(
        &ra,
        &names.iocs(),
        &json!({"id": "ioc-red", "type": "domain", "value": "secret.example", "tlp": "TLP:RED"}),
    )
    .await;
    xadd_json(
        &ra,
        &names.iocs(),
        &json!({"id": "ioc-green", "type": "domain", "value": "shared.example", "tlp": "TLP:GREEN"}),
    )
    .await;

    let at_b = wait_until(LONG, "the alert and the green IOC at site B", || async {
        let alerts = stream_values(&rb, &names.alerts()).await;
        let iocs = stream_values(&rb, &names.iocs()).await;
        (!alerts.is_empty() && !iocs.is_empty()).then_some((alerts, iocs))
    })
    .await;
    assert_eq!(at_b.0[0]["id"], uid("a-1").as_str());
    assert_eq!(at_b.0[0]["origin_site"], "site-a");
    assert_eq!(
        at_b.0[0]["title"],
        "Suspicious DNS Query to Known C2 Domain"
    );
    assert_eq!(at_b.1[0]["id"], "ioc-green");

    // A sentinel from B: once it is at A, B has had its chance to echo A's alert back.
    xadd_json(&rb, &names.alerts(), &alert("b-1", "critical")).await;
    wait_until(LONG, "B's alert at site A", || async {
        let alerts = stream_values(&ra, &names.alerts()).await;
        (alerts.len() >= 2).then_some(())
    })
    .await;
    // Wait for both exporters to settle their streams (B also read A's alert, and withheld it).
    wait_until(LONG, "every entry settled on both sites", || async {
        let mut total = 0;
        for conn in [&ra, &rb] {
            total += pending(conn, &names.alerts(), GROUP).await;
            total += pending(conn, &names.iocs(), GROUP).await;
        }
        (total == 0).then_some(())
    })
    .await;

    // On the wire: A's alert, A's green IOC, B's alert. No red IOC, no echo.
    assert_eq!(stream_len(nats, &names.nats_stream()).await, 3);
    let at_a = stream_values(&ra, &names.alerts()).await;
    assert_eq!(ids(&at_a), vec![uid("a-1"), uid("b-1")]);
    assert!(at_a[0].get("origin_site").is_none());
    assert_eq!(at_a[1]["origin_site"], "site-b");
    let at_b = stream_values(&rb, &names.alerts()).await;
    assert_eq!(ids(&at_b), vec![uid("a-1"), uid("b-1")]);
    assert_eq!(
        at_b[1].get("origin_site"),
        None,
        "B's own alert carries no origin"
    );
    let iocs_b = stream_values(&rb, &names.iocs()).await;
    assert_eq!(ids(&iocs_b), vec!["ioc-green"]);
    assert!(a.readiness.is_ready(), "{}", a.readiness.report());

    a.stop().await;
    b.stop().await;
    cleanup(&names, nats, &[SITE_A_REDIS, SITE_B_REDIS]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_ends_in_the_dead_letter_stream_after_max_deliveries() {
    let names = aurora_testkit::names();
    let nats = aurora_testkit::NATS_URL;
    let extra = ["--no-export", "--max-deliver", "3", "--nak-delay", "100ms"];
    let b = Gateway::start(args(&names, "site-b", SITE_B_REDIS, nats, &extra)).await;
    let rb = redis(SITE_B_REDIS).await;
    // The audit stream's key holds a string: every write of an audit entry is refused.
    let mut conn = rb.clone();
    let _: () = redis::cmd("SET")
        .arg(names.audit())
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();

    let js = jetstream_ctx(nats).await;
    let publish = |subject: String, id: &'static str, payload: &'static [u8]| {
        let js = js.clone();
        async move {
            let msg = jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .message_id(id)
                .header(ORIGIN_SITE_HEADER, "site-x");
            js.send_publish(subject, msg).await.unwrap().await.unwrap();
        }
    };
    publish(
        names.nats_subject(aurora_core::names::FederatedKind::Audit),
        "site-x:poison",
        br#"{"id":"poison","actor":"x","action":"y","timestamp":"2024-01-15T10:30:00Z"}"#,
    )
    .await;
    publish(
        names.nats_subject(aurora_core::names::FederatedKind::Alerts),
        "site-x:garbage",
        b"{not json",
    )
    .await;
    publish(
        names.nats_subject(aurora_core::names::FederatedKind::Alerts),
        "site-x:fine",
        br#"{"id":"6f1c0a9e-3b5d-4c6e-9f2a-1b2c3d4e5f60","title":"fine","severity":"low","status":"new","source":"site-x","timestamp":"2024-01-15T10:30:00Z"}"#,
    )
    .await;

    let dead = wait_until(LONG, "two dead letters", || async {
        let dead = stream_values(&rb, &names.federation_deadletter()).await;
        (dead.len() >= 2).then_some(dead)
    })
    .await;
    let dead: Vec<DeadLetter> = dead
        .into_iter()
        .map(|d| serde_json::from_value(d).unwrap())
        .collect();
    let by_id: HashMap<_, _> = dead
        .iter()
        .map(|d| (d.source_id.clone().unwrap_or_default(), d))
        .collect();
    let garbage = by_id["site-x:garbage"];
    assert!(
        garbage.reason.contains("invalid JSON"),
        "{}",
        garbage.reason
    );
    assert_eq!(
        garbage.deliveries,
        Some(1),
        "invalid JSON is dead-lettered at once"
    );
    assert_eq!(garbage.raw().unwrap(), b"{not json");
    let poison = by_id["site-x:poison"];
    assert_eq!(poison.deliveries, Some(3));
    assert!(poison.reason.contains("WRONGTYPE"), "{}", poison.reason);
    assert_eq!(
        poison.source,
        names.nats_subject(aurora_core::names::FederatedKind::Audit)
    );
    // The healthy message went through beside them.
    let alerts = stream_values(&rb, &names.alerts()).await;
    assert_eq!(ids(&alerts), vec!["6f1c0a9e-3b5d-4c6e-9f2a-1b2c3d4e5f60"]);
    assert_eq!(alerts[0]["origin_site"], "site-x");
    // Terminated: nothing left for this site's consumer.
    let stream = js.get_stream(names.nats_stream()).await.unwrap();
    wait_until(LONG, "consumer settled", || async {
        let info = stream
            .consumer_info(names.federation_consumer("site-b"))
            .await
            .unwrap();
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    b.stop().await;
    cleanup(&names, nats, &[SITE_B_REDIS]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_what_start_up_waits_for() {
    let names = aurora_testkit::names();
    let mut server = NatsServer::not_started();
    let (nats, nats_port) = (server.url(), server.port());
    let service = args(&names, "site-a", SITE_A_REDIS, &nats, &[])
        .into_service()
        .unwrap();
    let mut options = LaunchOptions::local("site-a-1");
    options.ops_addr = SocketAddr::from(([127, 0, 0, 1], aurora_testkit::free_port()));
    let ops = options.ops_addr;
    let launching = tokio::spawn(launch(service, options, CancellationToken::new()));

    let (status, report) = wait_until(LONG, "/readyz naming the NATS it waits for", || async {
        let answer = aurora_testkit::ops::get(ops, "/readyz", Duration::from_secs(2))
            .await
            .ok()?;
        let report = answer.json();
        let detail = report["components"]["nats"]["detail"].as_str()?;
        // Start-up connects to NATS first (aurora-core's connect_at_start): the detail is
        // `connecting to <url>`, with the last error once an attempt failed.
        let waiting = format!("connecting to nats://127.0.0.1:{nats_port}");
        detail
            .starts_with(&waiting)
            .then_some((answer.status, report))
    })
    .await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["components"]["start-up"]["ready"], false, "{report}");
    assert_eq!(report["components"]["redis"]["ready"], true, "{report}");

    server.start_again();
    let launched = launching.await.unwrap().expect("starts once NATS is up");
    assert_eq!(launched.ops_addr, ops);
    wait_until(LONG, "ready once NATS is up", || async {
        launched.readiness.is_ready().then_some(())
    })
    .await;
    launched.shutdown();
    assert_eq!(launched.stopped().await, Stopped::Drained);
    cleanup(&names, &nats, &[SITE_A_REDIS]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_config_drift_is_corrected_and_reported() {
    let names = aurora_testkit::names();
    let nats = aurora_testkit::NATS_URL;
    let js = jetstream_ctx(nats).await;
    let mut drifted = federation_gateway::design_stream_config(&names);
    drifted.max_messages = 10;
    js.create_stream(drifted).await.unwrap();

    let gateway = FederationGateway::new(args(&names, "site-a", SITE_A_REDIS, nats, &[]))
        .unwrap()
        .connect(&Readiness::new(), "site-a-1")
        .await
        .unwrap();
    match gateway.stream_change() {
        StreamChange::Updated(changes) => assert_eq!(
            changes,
            &vec!["max_messages: 10 -> 100000".to_string()],
            "reported"
        ),
        other => panic!("drift not corrected: {other:?}"),
    }
    let mut stream = js.get_stream(names.nats_stream()).await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.max_messages, 100_000);
    drop(gateway);

    // Started again, it finds nothing to change.
    let again = FederationGateway::new(args(&names, "site-a", SITE_A_REDIS, nats, &[]))
        .unwrap()
        .connect(&Readiness::new(), "site-a-1")
        .await
        .unwrap();
    assert_eq!(again.stream_change(), &StreamChange::Unchanged);
    drop(again);
    cleanup(&names, nats, &[SITE_A_REDIS]).await;
}

/// Raises `n` alerts `a-<from>`… at a site, in batches.
async fn raise_many(conn: &Conn, names: &Names, range: std::ops::Range<usize>) {
    let producer = Producer::new(conn.clone(), 1_000_000);
    let docs: Vec<Vec<u8>> = range
        .map(|i| serde_json::to_vec(&alert(&format!("a-{i}"), "high")).unwrap())
        .collect();
    for chunk in docs.chunks(200) {
        let items: Vec<(String, &[u8])> = chunk
            .iter()
            .map(|d| (names.alerts(), d.as_slice()))
            .collect();
        producer.publish_batch(&items).await.unwrap();
    }
}

/// Waits until site B holds every alert `a-0..a-<n>`; fails on a duplicate.
async fn wait_all_at_b(rb: &Conn, names: &Names, n: usize, what: &str) {
    // A deadline, not a speed target (it takes seconds). Past it something stalls: publish
    // acks lost in a NATS restart used to time out one after the other, 2 s each, for minutes.
    let got = wait_until(Duration::from_secs(60), what, || async {
        let at_b = ids(&stream_values(rb, &names.alerts()).await);
        (at_b.len() >= n).then_some(at_b)
    })
    .await;
    // Give a late duplicate the time to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_after = ids(&stream_values(rb, &names.alerts()).await);
    assert_eq!(got_after.len(), got.len());
    let distinct: HashSet<&String> = got_after.iter().collect();
    assert_eq!(distinct.len(), got_after.len(), "duplicates at B");
    let expected: HashSet<String> = (0..n).map(|i| uid(&format!("a-{i}"))).collect();
    assert_eq!(
        distinct.into_iter().cloned().collect::<HashSet<_>>(),
        expected,
        "lost or foreign alerts at B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_stream_loses_nothing() {
    let mut server = NatsServer::start();
    let nats = server.url();
    let names = aurora_testkit::names();
    let extra = ["--publish-timeout", "2s", "--ack-wait", "3s"];
    let a = Gateway::start(args(&names, "site-a", SITE_A_REDIS, &nats, &extra)).await;
    let b = Gateway::start(args(&names, "site-b", SITE_B_REDIS, &nats, &extra)).await;
    let (ra, rb) = (redis(SITE_A_REDIS).await, redis(SITE_B_REDIS).await);

    raise_many(&ra, &names, 0..300).await;
    wait_until(LONG, "the first alerts at B", || async {
        (stream_values(&rb, &names.alerts()).await.len() >= 50).then_some(())
    })
    .await;
    server.kill();
    raise_many(&ra, &names, 300..600).await;
    wait_until(LONG, "A to notice NATS is down", || async {
        (!a.readiness.is_ready()).then_some(())
    })
    .await;
    server.start_again();
    raise_many(&ra, &names, 600..900).await;
    wait_all_at_b(
        &rb,
        &names,
        900,
        "all 900 alerts at B after the NATS restart",
    )
    .await;

    a.stop().await;
    b.stop().await;
    cleanup(&names, &nats, &[SITE_A_REDIS, SITE_B_REDIS]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_past_its_deadline_gives_up_what_it_holds() {
    let mut server = NatsServer::start();
    let nats = server.url();
    let names = aurora_testkit::names();
    let service = args(&names, "site-a", SITE_A_REDIS, &nats, &["--no-import"])
        .into_service()
        .unwrap();
    let mut options = LaunchOptions::local("site-a-1");
    options.drain_deadline = Duration::from_millis(500);
    let launched = launch(service, options, CancellationToken::new())
        .await
        .expect("gateway starts");
    let ra = redis(SITE_A_REDIS).await;
    // No NATS: what the exporter reads, it publishes and then holds, waiting for acks.
    server.kill();
    raise_many(&ra, &names, 0..100).await;
    wait_until(LONG, "alerts read and held", || async {
        (pending(&ra, &names.alerts(), GROUP).await > 0).then_some(())
    })
    .await;

    launched.shutdown();
    let asked = std::time::Instant::now();
    assert_eq!(launched.stopped().await, Stopped::DeadlinePassed);
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "gave up only after {:?}",
        asked.elapsed()
    );
    assert!(
        pending(&ra, &names.alerts(), GROUP).await > 0,
        "what was given up stays pending, to be read again"
    );
    server.start_again();
    cleanup(&names, &nats, &[SITE_A_REDIS]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_between_publish_and_xack_loses_and_duplicates_nothing() {
    let names = aurora_testkit::names();
    let nats = aurora_testkit::NATS_URL;
    let b = Gateway::start(args(&names, "site-b", SITE_B_REDIS, nats, &[])).await;
    let (ra, rb) = (redis(SITE_A_REDIS).await, redis(SITE_B_REDIS).await);
    let n = 3000;
    raise_many(&ra, &names, 0..n).await;

    // The built binary, as the harness runs it at site A (Redis database 1).
    let site_a = Site::new(&names, "site-a", 1).with_binary(
        Svc::FederationGateway,
        env!("CARGO_BIN_EXE_federation-gateway"),
    );
    let mut gateway_a = site_a.spawn(Svc::FederationGateway, &[]);
    // Kill it while it holds entries it read but has not acknowledged.
    wait_until(LONG, "site A exporting with entries in flight", || async {
        let in_flight = pending(&ra, &names.alerts(), GROUP).await;
        let at_b = stream_values(&rb, &names.alerts()).await.len();
        (in_flight > 0 && at_b > 0 && at_b < n).then_some(())
    })
    .await;
    gateway_a.kill(); // SIGKILL
    let at_kill = stream_values(&rb, &names.alerts()).await.len();
    assert!(at_kill < n, "the kill came too late to mean anything");

    // Started again as the same replica (same instance id, same consumer).
    gateway_a.kill_and_spawn();
    wait_all_at_b(&rb, &names, n, "every alert at B after the restart").await;
    gateway_a.kill();

    b.stop().await;
    // Each site's ledger accounts for every alert its exporter read (handled, or still held
    // by the killed replica) and every alert landed.
    for conn in [&ra, &rb] {
        let rows =
            assert_ledger_accounts_for_everything(conn, &names, Duration::from_secs(600)).await;
        assert!(rows.iter().any(|r| r.done > 0), "{rows:?}");
    }
    cleanup(&names, nats, &[SITE_A_REDIS, SITE_B_REDIS]).await;
}
