//! Replicas come and go while lines keep arriving: a scale-down (one replica SIGTERMed for
//! good), a pod replaced under a new name, a replica SIGKILLed while holding lines (adopted
//! by a live one once its lease lapsed, within the bound the README gives), and a scale-up
//! from one replica to three. The binaries run as processes with instance ids chosen here.
//! Each test counts at the end: every line is in JetStream once, every alert on the alerts
//! stream once, the republished events JetStream dropped as duplicates are printed, nothing
//! is left in the list or held by anyone, and no gone replica is left in the registry.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aurora_testkit::process::NotReady;
use common::*;
use eve_ingest::SERVICE;

/// The lease ttl the replicas are given (`--lease-ttl`).
const TTL: Duration = Duration::from_secs(2);
/// Lines pushed per tick of the producer (every 10 ms: about 1,500 lines/s).
const PER_TICK: u64 = 15;

/// Every tenth line is an alert; every line is distinct (its `seq`).
fn line(run: &str, seq: u64) -> Vec<u8> {
    if seq.is_multiple_of(10) {
        format!(
            r#"{{"timestamp":"2024-01-15T10:30:00.000000+0000","event_type":"alert","src_ip":"10.0.0.1","src_port":5353,"dest_ip":"8.8.8.8","dest_port":53,"proto":"UDP","alert":{{"action":"allowed","gid":1,"signature_id":{seq},"rev":1,"signature":"replica test {run} {seq}","category":"test","severity":2}},"seq":{seq}}}"#
        )
        .into_bytes()
    } else {
        format!(
            r#"{{"timestamp":"2024-01-15T10:30:00.000000+0000","event_type":"dns","src_ip":"10.0.0.1","dest_ip":"10.0.0.53","dns":{{"type":"query","rrname":"h{seq}.example.com"}},"run":"{run}","seq":{seq}}}"#
        )
        .into_bytes()
    }
}

/// Pushes lines as Suricata does until stopped; counts what it pushed.
struct Producer {
    stop: Arc<AtomicBool>,
    pushed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    /// Lines and alerts pushed at once by [`Producer::burst`].
    burst: (u64, u64),
    conn: aurora_core::bus::Conn,
    list: String,
    run: String,
}

impl Producer {
    fn start(env: &Env) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let pushed = Arc::new(AtomicU64::new(0));
        let (mut conn, list) = (env.conn(), env.names.suricata_list());
        let run = env.names.namespace().to_string();
        let task = tokio::spawn({
            let (stop, pushed) = (stop.clone(), pushed.clone());
            async move {
                let mut seq = 0;
                while !stop.load(Ordering::SeqCst) {
                    let lines: Vec<Vec<u8>> =
                        (seq..seq + PER_TICK).map(|s| line(&run, s)).collect();
                    lpush(&mut conn, &list, &lines).await;
                    seq += PER_TICK;
                    pushed.store(seq, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Self {
            stop,
            pushed,
            task,
            burst: (0, 0),
            conn: env.conn(),
            list: env.names.suricata_list(),
            run: env.names.namespace().to_string(),
        }
    }

    /// Pushes `n` more lines at once (a backlog some replica takes as one chunk).
    async fn burst(&mut self, n: u64) {
        let first = 1_000_000_000 + self.burst.0;
        let lines: Vec<Vec<u8>> = (first..first + n).map(|s| line(&self.run, s)).collect();
        lpush(&mut self.conn, &self.list, &lines).await;
        self.burst.0 += n;
        self.burst.1 += (first..first + n).filter(|s| s.is_multiple_of(10)).count() as u64;
    }

    fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::SeqCst)
    }

    /// Stops; the lines pushed and how many of them are alerts.
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let n = self.pushed.load(Ordering::SeqCst);
        (n + self.burst.0, n.div_ceil(10) + self.burst.1)
    }
}

/// The replicas of one test: processes of the built binary, each named by the test.
struct Replicas<'a> {
    env: &'a Env,
    site: Site,
    /// Republished events JetStream dropped, as counted by replicas that are gone.
    duplicates_of_gone: f64,
}

impl<'a> Replicas<'a> {
    fn new(env: &'a Env) -> Self {
        Self {
            env,
            site: Site::new(&env.names, "site-a", 0),
            duplicates_of_gone: 0.0,
        }
    }

    /// Starts the replica `instance` and waits until it is ready.
    async fn start(&self, instance: &str) -> Service {
        let ttl = format!("{}ms", TTL.as_millis());
        let flags = [("lease-ttl", ttl.as_str()), ("batch", "50")];
        for _ in 0..3 {
            let (ops, http) = (free_port(), free_port());
            let env = self.site.env(Svc::EveIngest, instance, ops, http, &flags);
            let mut svc = Service::spawn(
                Svc::EveIngest,
                env!("CARGO_BIN_EXE_eve-ingest").into(),
                instance,
                env,
                ops,
                http,
            );
            match svc.try_ready().await {
                Ok(()) => return svc,
                Err(NotReady::Exited(log)) if log.contains("in use") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{instance}: no free ports after 3 attempts");
    }

    /// SIGTERM, a clean exit, and the replica is gone for good: it holds nothing and left
    /// the registry by itself.
    async fn leave(&mut self, svc: &mut Service) -> u64 {
        self.duplicates_of_gone += duplicates_counted(svc).await;
        let exit = svc.terminate().await;
        assert!(exit.success(), "{} exit status {exit:?}", svc.instance);
        let log = svc.log();
        let handed_back = log
            .lines()
            .find(|l| l.contains("handed back what this replica held"))
            .unwrap_or_else(|| panic!("{} handed back and left; log:\n{log}", svc.instance));
        let lines = serde_json::from_str::<serde_json::Value>(handed_back)
            .ok()
            .and_then(|v| v["fields"]["lines"].as_u64().or(v["lines"].as_u64()));
        let lines = lines.unwrap_or_else(|| panic!("lines handed back: {handed_back}"));
        println!("{} left: handed back {lines} lines", svc.instance);
        assert_eq!(self.env.held(&svc.instance).await, 0, "{}", svc.instance);
        assert!(
            !members(self.env).await.contains(&svc.instance),
            "{} left the registry",
            svc.instance
        );
        lines
    }
}

/// Republished events JetStream dropped as duplicates, as a replica counted them.
async fn duplicates_counted(svc: &Service) -> f64 {
    svc.metric("aurora_eve_ingest_events_duplicate_total", &[])
        .await
}

/// The replica registry's members.
async fn members(env: &Env) -> BTreeSet<String> {
    redis::cmd("SMEMBERS")
        .arg(env.names.state_key(SERVICE, "replicas"))
        .query_async(&mut env.conn())
        .await
        .unwrap()
}

/// Whether `instance` holds a lease.
async fn has_lease(env: &Env, instance: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(env.names.state_key(SERVICE, &format!("replica:{instance}")))
        .query_async::<bool>(&mut env.conn())
        .await
        .unwrap()
}

/// Waits until `pushed` lines are in JetStream and nothing is left in the list or held by
/// `live`, then counts: every line once in JetStream, every alert once on the stream, no
/// gone replica holding anything or in the registry. Stops the live replicas (each hands
/// back nothing: it holds nothing) and prints the duplicates.
async fn settle_and_count(
    name: &str,
    env: &Env,
    replicas: &mut Replicas<'_>,
    producer: Producer,
    live: Vec<Service>,
    gone: &[&str],
) {
    let (pushed, alerts) = producer.finish().await;
    aurora_testkit::wait_until(LONG, "every line out and nothing held", || async {
        let mut held = 0;
        for svc in &live {
            held += env.held(&svc.instance).await;
        }
        (env.stream_len().await >= pushed
            && llen(&mut env.conn(), &env.names.suricata_list()).await == 0
            && held == 0)
            .then_some(())
    })
    .await;
    env.wait_alerts(alerts as usize).await;
    let live_names: BTreeSet<String> = live.iter().map(|s| s.instance.clone()).collect();
    assert_eq!(members(env).await, live_names, "only the live replicas");
    for g in gone {
        assert_eq!(env.held(g).await, 0, "{g} holds nothing");
        assert!(!has_lease(env, g).await, "{g} has no lease");
    }
    let mut republished = replicas.duplicates_of_gone;
    for mut svc in live {
        republished += duplicates_counted(&svc).await;
        replicas.leave(&mut svc).await;
    }
    assert!(members(env).await.is_empty(), "everyone left");

    let messages = env.messages().await;
    let ids: HashSet<&String> = messages.iter().map(|(id, _, _)| id).collect();
    let stored_twice = messages.len() - ids.len();
    let alert_docs = env.alerts().await;
    let alert_ids: HashSet<String> = alert_docs
        .iter()
        .map(|a| {
            let v: serde_json::Value = serde_json::from_slice(a).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    println!(
        "{name}: {pushed} lines pushed, {} in JetStream ({} distinct, {stored_twice} stored \
         twice), {republished} republished and dropped by JetStream as duplicates; {alerts} \
         alerts expected, {} on the stream ({} distinct)",
        messages.len(),
        ids.len(),
        alert_docs.len(),
        alert_ids.len()
    );
    assert_eq!(ids.len() as u64, pushed, "zero lost");
    assert_eq!(messages.len() as u64, pushed, "each line stored once");
    assert_eq!(alert_ids.len() as u64, alerts, "zero alerts lost");
    assert_eq!(alert_docs.len() as u64, alerts, "each alert once");
}

/// Waits until the producer has pushed `n` more lines.
async fn traffic(producer: &Producer, n: u64) {
    let from = producer.pushed();
    aurora_testkit::wait_until(LONG, "lines pushed", || async {
        (producer.pushed() >= from + n).then_some(())
    })
    .await;
}

/// Three replicas; one leaves with SIGTERM while lines keep coming and never returns: it
/// is stopped while it holds a backlog it took, hands back what it had not handed out, and
/// leaves the registry; the two others take everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_a_replica_that_leaves_strands_nothing() {
    let env = Env::new().await;
    let mut replicas = Replicas::new(&env);
    let mut producer = Producer::start(&env);
    let mut live = vec![
        replicas.start("sd-1").await,
        replicas.start("sd-2").await,
        replicas.start("sd-3").await,
    ];
    traffic(&producer, 3000).await;
    producer.burst(4000).await;
    let leaving = holding_a_backlog(&env, &live).await;
    let mut leaving = live.remove(leaving);
    let handed_back = replicas.leave(&mut leaving).await;
    assert!(handed_back > 0, "stopped while holding a backlog");
    traffic(&producer, 3000).await;
    settle_and_count(
        "scale-down",
        &env,
        &mut replicas,
        producer,
        live,
        &[&leaving.instance],
    )
    .await;
}

/// The index of a replica holding at least 200 lines (a backlog it took as a chunk).
async fn holding_a_backlog(env: &Env, live: &[Service]) -> usize {
    aurora_testkit::wait_until(LONG, "a replica holding the backlog", || async {
        for (i, svc) in live.iter().enumerate() {
            if env.held(&svc.instance).await >= 200 {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// A pod replaced: a replica is stopped (SIGTERM) and a new one starts under a new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_replacement_under_a_new_name_strands_nothing() {
    let env = Env::new().await;
    let mut replicas = Replicas::new(&env);
    let producer = Producer::start(&env);
    let r1 = replicas.start("pr-a").await;
    let mut r2 = replicas.start("pr-b").await;
    traffic(&producer, 3000).await;
    replicas.leave(&mut r2).await;
    let r3 = replicas.start("pr-c").await;
    traffic(&producer, 3000).await;
    settle_and_count(
        "pod replacement",
        &env,
        &mut replicas,
        producer,
        vec![r1, r3],
        &["pr-b"],
    )
    .await;
}

/// A replica is SIGKILLed while it holds lines and never returns: once its lease lapsed, a
/// live replica adopts its processing list and chunks; the time from the kill until nothing
/// is left with it and it is out of the registry is printed and bounded by the lease (ttl,
/// plus a third of it for the next look, plus the batches at hand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_holding_lines_is_adopted_within_the_lease() {
    let env = Env::new().await;
    let mut replicas = Replicas::new(&env);
    let mut producer = Producer::start(&env);
    let mut live = vec![replicas.start("k-1").await, replicas.start("k-2").await];
    traffic(&producer, 3000).await;
    // A backlog arrives; the replica that took it is killed while it holds it.
    producer.burst(4000).await;
    let victim = holding_a_backlog(&env, &live).await;
    let mut killed_svc = live.remove(victim);
    let name = killed_svc.instance.clone();
    replicas.duplicates_of_gone += duplicates_counted(&killed_svc).await;
    killed_svc.kill();
    let killed = Instant::now();
    let left = env.held(&name).await;
    assert!(left > 0, "killed holding lines");
    let adopted_after = aurora_testkit::wait_until(LONG, "the killed replica adopted", || async {
        (env.held(&name).await == 0 && !members(&env).await.contains(&name))
            .then(|| killed.elapsed())
    })
    .await;
    let bound = TTL + TTL / 3 + Duration::from_secs(1);
    println!(
        "killed replica {name}: {left} lines held at the kill, adopted after \
         {adopted_after:?} (lease ttl {TTL:?}, bound {bound:?})"
    );
    assert!(
        adopted_after <= bound,
        "adopted after {adopted_after:?}, more than {bound:?}"
    );
    // Not before its lease could have lapsed (renewed every third of the ttl).
    assert!(
        adopted_after >= TTL / 2,
        "adopted after {adopted_after:?}: before its lease lapsed"
    );
    assert!(
        live[0]
            .metric("aurora_eve_ingest_adopted_replicas_total", &[])
            .await
            >= 1.0
    );
    traffic(&producer, 1500).await;
    settle_and_count("kill", &env, &mut replicas, producer, live, &[&name]).await;
}

/// One replica under load, then three: the new ones join the registry and share the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_from_one_to_three_under_load() {
    let env = Env::new().await;
    let mut replicas = Replicas::new(&env);
    let producer = Producer::start(&env);
    let r1 = replicas.start("su-1").await;
    traffic(&producer, 2000).await;
    let r2 = replicas.start("su-2").await;
    traffic(&producer, 1500).await;
    let r3 = replicas.start("su-3").await;
    traffic(&producer, 2000).await;
    let all: BTreeSet<String> = ["su-1", "su-2", "su-3"].map(String::from).into();
    assert_eq!(members(&env).await, all);
    for svc in [&r2, &r3] {
        assert!(
            svc.metric("aurora_eve_ingest_lines_total", &[]).await > 0.0,
            "{} takes lines",
            svc.instance
        );
    }
    settle_and_count(
        "scale-up",
        &env,
        &mut replicas,
        producer,
        vec![r1, r2, r3],
        &[],
    )
    .await;
}

/// A replica that comes back under its name while another replica holds the adoption lock
/// on that name waits (not ready, naming why) until the adoption is over, and only then
/// handles what its name holds: the two never handle the same held lines at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_under_its_name_waits_for_its_adoption_to_end() {
    let env = Env::new().await;
    let lines: Vec<Vec<u8>> = (0..40).map(|s| line("back", s)).collect();
    lpush(
        &mut env.conn(),
        &env.names.eve_processing_list("back"),
        &lines,
    )
    .await;
    // Another replica has taken the adoption lock on "back" (and is slow about it).
    let hold = Duration::from_millis(1500);
    let other = aurora_core::replicas::Lease::new(env.conn(), &env.names, SERVICE, "other", TTL);
    assert!(other.try_adopt("back", hold).await.unwrap());
    let locked = Instant::now();

    let ops = Ops::port(free_port());
    let mut options = aurora_core::service::LaunchOptions::local("back");
    options.ops_addr = ops.addr;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let launching = tokio::spawn(aurora_core::service::launch(
        eve_ingest::EveIngest::new(env.settings()),
        options,
        shutdown.clone(),
    ));
    let report = aurora_testkit::wait_until(LONG, "/readyz naming the adoption", || async {
        ops.get("/readyz")
            .await
            .ok()
            .filter(|r| r.body.contains("adopting"))
    })
    .await;
    assert_eq!(report.status, 503, "{report:?}");
    assert_eq!(env.held("back").await, lines.len(), "untouched meanwhile");
    assert_eq!(env.stream_len().await, 0);

    let launched = launching.await.unwrap().unwrap();
    let waited = locked.elapsed();
    println!("came back under its name: waited {waited:?} for the adoption lock ({hold:?})");
    assert!(waited >= hold - Duration::from_millis(100), "{waited:?}");
    env.wait_stream_len(lines.len() as u64).await;
    aurora_testkit::wait_until(LONG, "nothing held", || async {
        (env.held("back").await == 0).then_some(())
    })
    .await;
    shutdown.cancel();
    let stopped = tokio::time::timeout(LONG, launched.stopped())
        .await
        .unwrap();
    assert_eq!(stopped, aurora_core::service::Stopped::Drained);
    assert!(members(&env).await.is_empty(), "left the registry");
    assert_eq!(env.messages().await.len(), lines.len());
}
