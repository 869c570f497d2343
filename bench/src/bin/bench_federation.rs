//! `make bench-federation`: M alerts raised at site A, carried by two gateways (site A and
//! site B, two Redis databases, one NATS) to B's alert stream. Measures, in one run:
//! - the gateways in the bench's process: messages per second from A's stream to B's stream,
//!   latency p50/p99, lost and duplicated; then latency at a paced 2,000 msg/s;
//! - the figure: the same carry by the gateways as deployed, each the release binary in a
//!   process of its own, fresh every round (`BENCH_FEDERATION_PROCESS_ROUNDS`, default 3; the
//!   median round), lost and duplicated checked in every round (in the bench's process both
//!   gateways share one runtime with the producer and the reader, which is not how they run);
//! - the ceiling: raw JetStream publish-with-ack with 256 acks in flight (async-nats, the
//!   same subject, stream config, payloads and headers), measured before and after the
//!   gateway; the higher of the two is used;
//! - what NATS alone allows for the carry: the same publishes, each delivered to both sites'
//!   durable consumers and acked by each, with no gateway and no Redis (a bound on any
//!   gateway on this machine), before the gateways and after them; the figure is compared
//!   with the mean of the two.
//!
//! The gateways sign what they export and check what they import (`--signing-key`,
//! `--peer-keys`, keys made for the run) unless BENCH_FEDERATION_SIGNATURES=off. The target is
//! the issue's: at least 80% of what NATS alone carries, zero lost, zero duplicated. Site B's
//! Redis memory (`INFO memory` used_memory, the database's key count and the revision
//! state's own size) is recorded before and after the carry.
//!
//! With `AURORA_BENCH_TRACE=1` (`only`: these rounds alone, recorded into the last whole
//! run's result; a whole run without it keeps the trace rounds of the last result): the cost
//! of tracing at 1% sampling on the carry. Tracing is set up once per process, so these rounds
//! run both sites' gateways as the release binary `federation-gateway`, child processes (the
//! configuration above as flags, signatures as above). Pairs of rounds
//! (`BENCH_FEDERATION_TRACE_PAIRS`, default 5), each with fresh gateways in a namespace of its
//! own taking M alerts raised at A once both are ready: one pair of gateways untraced, one
//! exporting spans over OTLP/HTTP to a receiver in this process
//! (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.01`), the order
//! swapped every pair. About 1% of the alerts raised carry a `traceparent`, as a traced writer
//! sampling at 1% leaves them (eve-ingest writes a sampled batch's context on the alerts it
//! raises; here a new trace for each alert the trace-id ratio rule samples, nothing on the
//! others, which the gateways' parent-based samplers then leave untraced), in both kinds of
//! round. The figure is the median of the
//! pairs' traced/untraced ratios of alerts per second A->B, with their spread; zero lost and
//! zero duplicated are checked in every round, and both gateways' CPU per alert is compared
//! beside it (`AURORA_BENCH_FEDERATION_LOG`: the children's log filter, `warn`).
//! `BENCH_FEDERATION_TRACE_RATIO` sets another ratio for the traced gateways and the alerts'
//! contexts (0: no alert sampled, no context carried, no span: what tracing costs the carry
//! when nothing is sampled),
//! printed, not recorded.
//!
//! Writes bench/results/federation.json. On the shared NATS and Redis (databases 3 and 4).
//! Environment: BENCH_FEDERATION_M (default 50000), BENCH_FEDERATION_GATEWAY_ARGS (extra
//! gateway flags, e.g. `--publish-window 512`), BENCH_FEDERATION_SIGNATURES (`on`, `off`).

#![recursion_limit = "256"]

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, message::PublishMessage};
use aurora_bench::{
    cpu_secs, jetstream_len, now_us, percentile, poll_until, round_to, span_names, spans_since,
    trace_pairs, upstream_trace, InProcess, PairRound, TraceRounds, TRACE_SAMPLING,
};
use aurora_core::bus::{self, Conn, Producer};
use aurora_core::jetstream::federation_stream_config;
use aurora_core::names::Names;
use aurora_core::service::{Flags, LaunchOptions, Stopped};
use aurora_core::trace::{Sampler, TraceContext};
use aurora_testkit::cleanup::{cleanup, Cleanup};
use aurora_testkit::otlp::OtlpReceiver;
use aurora_testkit::process::{Site, Svc, REDIS_BASE};
use aurora_testkit::{names as fresh_names, NATS_URL};
use federation_gateway::signing::SiteKey;
use federation_gateway::{Args, ORIGIN_SITE_HEADER, SERVICE};
use serde_json::{json, Value};

const WINDOW: usize = 256;
const PACED_RATE: usize = 2_000;
const PACED_SECS: usize = 2;

/// Alert ids are UUIDs (an Alert's id must be one): the first group names the phase, the
/// last one counts, so `alert_id(FLOOD, 7)` is `0000000f-0000-4000-8000-000000000007`.
fn alert_id(phase: &str, n: usize) -> String {
    format!("{}0000-4000-8000-{n:012x}", phase)
}

/// The id prefix of the flood phase.
const FLOOD: &str = "0000000f-";
/// The id prefix of the paced phase.
const PACED: &str = "0000000a-";

fn alert(id: &str) -> Value {
    json!({"id": id, "title": "Suspicious DNS Query to Known C2 Domain", "severity": "high",
           "status": "new", "source": "suricata",
           "iocs": [{"type": "domain", "value": "t1.evil.com", "tlp": "TLP:AMBER"}],
           "mitre_techniques": ["T1071.004"], "timestamp": "2024-01-15T10:30:00Z",
           "raised_at_us": 0})
}

/// The same document as [`alert`], written directly (the bench's own cost stays small).
fn alert_bytes(id: &str, raised_at_us: u64) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","title":"Suspicious DNS Query to Known C2 Domain","severity":"high","status":"new","source":"suricata","iocs":[{{"type":"domain","value":"t1.evil.com","tlp":"TLP:AMBER"}}],"mitre_techniques":["T1071.004"],"timestamp":"2024-01-15T10:30:00Z","raised_at_us":{raised_at_us}}}"#
    )
    .into_bytes()
}

/// What the reader at B looks at.
#[derive(serde::Deserialize)]
struct Arrived {
    id: String,
    #[serde(default)]
    raised_at_us: Option<u64>,
}

fn db_url(db: u8) -> String {
    format!("{REDIS_BASE}/{db}")
}

/// Publishes `m` alerts of the site `site-a` to the federation subject with `WINDOW` acks in
/// flight, as the gateway publishes (ids `<tag>-<n>`); returns when the first went out.
async fn publish_alerts(
    js: &jetstream::Context,
    names: &Names,
    m: usize,
    tag: &str,
) -> anyhow::Result<Instant> {
    let subject = names.nats_subject(aurora_core::names::FederatedKind::Alerts);
    // Built before the clock starts: the ceiling is JetStream's.
    let payloads: Vec<bytes::Bytes> = (0..m)
        .map(|i| serde_json::to_vec(&alert(&format!("{tag}-{i}"))).map(bytes::Bytes::from))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    for (i, payload) in payloads.into_iter().enumerate() {
        if in_flight.len() >= WINDOW {
            if let Some(ack) = in_flight.pop_front() {
                let _: jetstream::publish::PublishAck = ack.await?;
            }
        }
        let msg = PublishMessage::build()
            .payload(payload)
            .message_id(format!("site-a:{tag}-{i}"))
            .header(ORIGIN_SITE_HEADER, "site-a");
        in_flight.push_back(js.send_publish(subject.clone(), msg).await?);
    }
    for ack in in_flight {
        ack.await?;
    }
    Ok(started)
}

/// Raw JetStream publish-with-ack, `WINDOW` acks in flight, as the gateway publishes.
async fn ceiling(m: usize) -> anyhow::Result<f64> {
    let names = fresh_names();
    let client = async_nats::connect(NATS_URL).await?;
    let js = jetstream::new(client);
    js.create_stream(federation_stream_config(&names)).await?;
    let started = publish_alerts(&js, &names, m, "c").await?;
    let rate = m as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(names.nats_stream()).await?;
    Ok(rate)
}

/// NATS alone doing what it does for the gateways: the same publishes with `WINDOW` acks in
/// flight, each message delivered to the durable consumers of both sites (the gateway's
/// consumer config and pull batch) and acked by each. No Redis, no gateway: the rate NATS
/// itself allows for a carry from one site to another on this machine.
async fn nats_carry(m: usize) -> anyhow::Result<f64> {
    use async_nats::jetstream::consumer::pull;
    use futures::StreamExt;
    let names = fresh_names();
    let client = async_nats::connect(NATS_URL).await?;
    let js = jetstream::new(client);
    let stream = js.create_stream(federation_stream_config(&names)).await?;
    let args = gateway_args(&names, "site-a", REDIS_BASE, None)?;
    let mut consumers = Vec::new();
    for site in ["site-a", "site-b"] {
        let config = pull::Config {
            durable_name: Some(names.federation_consumer(site)),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: args.ack_wait,
            max_deliver: args.max_deliver,
            max_ack_pending: args.max_ack_pending,
            ..Default::default()
        };
        let consumer: jetstream::consumer::PullConsumer = stream.create_consumer(config).await?;
        let batch = args.import_batch as usize;
        consumers.push(tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(batch)
                .messages()
                .await?
                .ready_chunks(batch);
            let mut acked = 0;
            while acked < m {
                let Some(chunk) = messages.next().await else {
                    break;
                };
                for msg in chunk {
                    msg.map_err(|e| anyhow::anyhow!("{e}"))?
                        .ack()
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    acked += 1;
                }
            }
            anyhow::Ok(acked)
        }));
    }
    let started = publish_alerts(&js, &names, m, "n").await?;
    for consumer in consumers {
        let acked = consumer.await??;
        if acked < m {
            bail!("a consumer got {acked} of {m} messages");
        }
    }
    let rate = m as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(names.nats_stream()).await?;
    Ok(rate)
}

/// Keys made for the run: `<dir>/<site>.key` and the peers' public keys in `<dir>/peers`.
struct RunKeys {
    dir: tempfile::TempDir,
}

impl RunKeys {
    fn new() -> anyhow::Result<Self> {
        use base64::Engine;
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("peers"))?;
        for site in ["site-a", "site-b"] {
            let seed: [u8; 32] = rand_seed(site);
            let key = SiteKey::from_seed(seed);
            std::fs::write(
                dir.path().join(format!("{site}.key")),
                base64::engine::general_purpose::STANDARD.encode(seed),
            )?;
            std::fs::write(dir.path().join("peers").join(site), key.public_base64())?;
        }
        Ok(Self { dir })
    }

    fn flags(&self, site: &str) -> Vec<String> {
        let path = |p: std::path::PathBuf| p.display().to_string();
        vec![
            "--signing-key".into(),
            path(self.dir.path().join(format!("{site}.key"))),
            "--peer-keys".into(),
            path(self.dir.path().join("peers")),
        ]
    }
}

/// A seed of the run's own (not a secret: the keys sign nothing outside the bench).
fn rand_seed(site: &str) -> [u8; 32] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{site}-{}", now_us()).as_bytes());
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&digest);
    seed
}

/// Site B's Redis: used_memory (the whole server), keys in its database, and the bytes of the
/// revision state (MEMORY USAGE of its keys).
async fn redis_memory(url: &str, names: &Names) -> anyhow::Result<Value> {
    use federation_gateway::landing::Lander;
    let mut conn = bus::connect(url).await?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    let used: Option<u64> = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok());
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
    let mut state = 0u64;
    for kind in aurora_core::names::FederatedKind::ALL {
        for key in [
            Lander::state_key(names, kind),
            Lander::order_key(names, kind),
        ] {
            let bytes: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            state += bytes.unwrap_or(0);
        }
    }
    Ok(json!({"used_memory": used, "keys_in_db": keys, "revision_state_bytes": state}))
}

/// The further gateway flags of `BENCH_FEDERATION_GATEWAY_ARGS`, as tokens.
fn extra_args() -> Vec<String> {
    std::env::var("BENCH_FEDERATION_GATEWAY_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn gateway_args(
    names: &Names,
    site: &str,
    redis: &str,
    keys: Option<&RunKeys>,
) -> anyhow::Result<Args> {
    let signing = keys.map(|k| k.flags(site)).unwrap_or_default();
    let base = [
        "federation-gateway",
        "--namespace",
        names.namespace(),
        "--site-id",
        site,
        "--instance-id",
        &format!("{site}-bench"),
        "--redis-url",
        redis,
        "--nats-url",
        NATS_URL,
        "--ops-addr",
        "127.0.0.1:0",
        "--shutdown-timeout",
        "10s",
    ];
    let argv = base
        .iter()
        .map(|s| s.to_string())
        .chain(signing)
        .chain(extra_args());
    Ok(aurora_core::config::parse_from::<Args, _, _>(
        SERVICE,
        Args::RENAMED_ENV,
        argv,
    )?)
}

/// What arrived at B: id → (arrivals, latency of the first in µs).
#[derive(Default)]
struct Arrivals {
    seen: HashMap<String, (u32, u64)>,
    total: usize,
    /// Distinct ids per phase prefix ([`FLOOD`], [`PACED`]), kept as they arrive.
    distinct: HashMap<String, usize>,
}

impl Arrivals {
    fn record(&mut self, doc: Arrived, at_us: u64) {
        let id = doc.id;
        let raised = doc.raised_at_us.unwrap_or(at_us);
        let prefix = id.split_once('-').map(|(p, _)| format!("{p}-"));
        let slot = self
            .seen
            .entry(id)
            .or_insert((0, at_us.saturating_sub(raised)));
        slot.0 += 1;
        self.total += 1;
        if slot.0 == 1 {
            *self.distinct.entry(prefix.unwrap_or_default()).or_default() += 1;
        }
    }

    fn count(&self, prefix: &str) -> usize {
        self.distinct.get(prefix).copied().unwrap_or(0)
    }

    fn latencies_ms(&self, prefix: &str) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .seen
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, (_, l))| *l as f64 / 1000.0)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
}

/// Reads B's alert stream until `until` says stop.
async fn read_until(
    conn: &mut Conn,
    stream: &str,
    last: &mut String,
    arrivals: &mut Arrivals,
    until: impl Fn(&Arrivals) -> bool,
    deadline: Instant,
) -> anyhow::Result<()> {
    while !until(arrivals) && Instant::now() < deadline {
        let entries = bus::tail(
            conn,
            &[(stream.to_string(), last.clone())],
            2_000,
            Some(Duration::from_millis(200)),
        )
        .await?;
        let at = now_us();
        for e in entries {
            *last = e.id.clone();
            if let Some(doc) = e
                .data
                .as_deref()
                .and_then(|d| serde_json::from_slice(d).ok())
            {
                arrivals.record(doc, at);
            }
        }
    }
    Ok(())
}

/// Reads B's alert stream for a second more: late duplicates, if any, show up then.
async fn read_late(
    conn: &mut Conn,
    stream: &str,
    last: &mut String,
    arrivals: &mut Arrivals,
) -> anyhow::Result<()> {
    let settle = Instant::now() + Duration::from_secs(1);
    read_until(conn, stream, last, arrivals, |_| false, settle).await
}

/// Raises the alerts `ids` at a site's alert stream; with `upstream`, each carries the trace
/// context a traced writer sampling by it leaves.
async fn raise_batch(
    producer: &Producer,
    stream: &str,
    ids: &[String],
    upstream: Option<&Sampler>,
) -> anyhow::Result<()> {
    let at = now_us();
    let items: Vec<(&str, Vec<u8>, Option<TraceContext>)> = ids
        .iter()
        .map(|id| {
            (
                stream,
                alert_bytes(id, at),
                upstream.and_then(upstream_trace),
            )
        })
        .collect();
    producer.publish_batch_traced(&items).await?;
    Ok(())
}

struct GatewayRun {
    rate: f64,
    elapsed: f64,
    export_elapsed: f64,
    cpu_us_per_msg: Option<f64>,
    lost: usize,
    duplicated: usize,
    flood_p50: f64,
    flood_p99: f64,
    paced_sent: usize,
    paced_lost: usize,
    paced_p50: f64,
    paced_p99: f64,
    redis_before: Value,
    redis_after: Value,
}

async fn gateway(m: usize, keys: Option<&RunKeys>) -> anyhow::Result<GatewayRun> {
    let names = fresh_names();
    let (url_a, url_b) = (db_url(3), db_url(4));
    let redis_before = redis_memory(&url_b, &names).await?;
    let mut gateways = Vec::new();
    for (site, url) in [("site-a", &url_a), ("site-b", &url_b)] {
        let args = gateway_args(&names, site, url, keys)?;
        let mut options = LaunchOptions::local(&args.common.instance());
        options.drain_deadline = args.common.shutdown_timeout;
        gateways.push(InProcess::launch(args.into_service()?, options).await?);
    }
    let producer = Producer::new(bus::connect(&url_a).await?, 1_000_000);
    let mut reader = bus::connect_blocking(&url_b, Duration::from_millis(200)).await?;
    let stream = names.alerts();
    let mut last = "0-0".to_string();
    let mut arrivals = Arrivals::default();

    // Flood: M alerts as fast as Redis takes them, read at B concurrently.
    let ids: Vec<String> = (0..m).map(|i| alert_id(FLOOD, i)).collect();
    let cpu_before = cpu_secs(std::process::id());
    let started = Instant::now();
    // When the export half is done: every alert stored in JetStream.
    let exported = {
        let js = jetstream::new(async_nats::connect(NATS_URL).await?);
        let name = names.nats_stream();
        tokio::spawn(async move {
            let (js, name) = (&js, &name);
            poll_until(
                Duration::from_millis(20),
                Duration::from_secs(180),
                "every alert in JetStream",
                || async move { Ok(jetstream_len(js, name).await >= m as u64) },
            )
            .await
            .ok()
            .map(|at| (at - started).as_secs_f64())
        })
    };
    let raise = {
        let producer = producer.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            for chunk in ids.chunks(500) {
                raise_batch(&producer, &stream, chunk, None).await?;
            }
            anyhow::Ok(started.elapsed().as_secs_f64())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    read_until(
        &mut reader,
        &stream,
        &mut last,
        &mut arrivals,
        |a| a.count(FLOOD) >= m,
        deadline,
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_us_per_msg = cpu_before
        .zip(cpu_secs(std::process::id()))
        .map(|(b, a)| (a - b) * 1e6 / m as f64);
    let raise_elapsed = raise.await??;
    println!("  raising {m} alerts at A took {raise_elapsed:.2} s");
    let export_elapsed = exported.await?.unwrap_or(f64::NAN);
    let got = arrivals.count(FLOOD);
    let flood_lat = arrivals.latencies_ms(FLOOD);

    // Paced: PACED_RATE msg/s for PACED_SECS s, 10 ms ticks.
    let per_tick = PACED_RATE / 100;
    let paced_sent = per_tick * 100 * PACED_SECS;
    let pace = {
        let producer = producer.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for t in 0..(100 * PACED_SECS) {
                tick.tick().await;
                let ids: Vec<String> = (0..per_tick)
                    .map(|i| alert_id(PACED, t * per_tick + i))
                    .collect();
                raise_batch(&producer, &stream, &ids, None).await?;
            }
            anyhow::Ok(())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    read_until(
        &mut reader,
        &stream,
        &mut last,
        &mut arrivals,
        |a| a.count(PACED) >= paced_sent,
        deadline,
    )
    .await?;
    pace.await??;
    read_late(&mut reader, &stream, &mut last, &mut arrivals).await?;
    let paced_lat = arrivals.latencies_ms(PACED);
    let duplicated = arrivals.total - arrivals.seen.len();
    let redis_after = redis_memory(&url_b, &names).await?;

    for gateway in &gateways {
        gateway.shutdown();
    }
    for gateway in gateways {
        if gateway.stopped().await == Stopped::Failed {
            bail!("a gateway failed");
        }
    }
    cleanup(&names, NATS_URL, &[&url_a, &url_b]).await;
    Ok(GatewayRun {
        rate: got as f64 / elapsed,
        elapsed,
        export_elapsed,
        cpu_us_per_msg,
        lost: m - got,
        duplicated,
        flood_p50: percentile(&flood_lat, 0.5),
        flood_p99: percentile(&flood_lat, 0.99),
        paced_sent,
        paced_lost: paced_sent - arrivals.count(PACED),
        paced_p50: percentile(&paced_lat, 0.5),
        paced_p99: percentile(&paced_lat, 0.99),
        redis_before,
        redis_after,
    })
}

// ---- the cost of tracing ----------------------------------------------------------------

/// `--flag value` tokens (a lone `--flag`, or `--flag=value`) as the harness's (flag, value)
/// pairs (a lone flag is `true`).
fn flag_pairs(tokens: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut tokens = tokens.iter().peekable();
    while let Some(token) = tokens.next() {
        let Some(flag) = token.strip_prefix("--") else {
            bail!("{token:?} is not a flag (BENCH_FEDERATION_GATEWAY_ARGS)");
        };
        let (flag, value) = match flag.split_once('=') {
            Some((flag, value)) => (flag, value.to_string()),
            None => match tokens.next_if(|v| !v.starts_with("--")) {
                Some(value) => (flag, value.clone()),
                None => (flag, "true".to_string()),
            },
        };
        pairs.push((flag.to_string(), value));
    }
    Ok(pairs)
}

/// The flags of `site`'s gateway as a child process: the in-process gateways' configuration
/// ([`gateway_args`]: the harness's shorter intervals for tests overridden), its keys, and
/// `BENCH_FEDERATION_GATEWAY_ARGS`.
fn child_flags(names: &Names, site: &str, keys: Option<&RunKeys>) -> anyhow::Result<ChildFlags> {
    let args = gateway_args(names, site, REDIS_BASE, keys)?;
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut flags = vec![
        ("ack-wait".to_string(), ms(args.ack_wait)),
        ("nak-delay".to_string(), ms(args.nak_delay)),
        ("export-claim-idle".to_string(), ms(args.export_claim_idle)),
    ];
    let mut tokens = keys.map(|k| k.flags(site)).unwrap_or_default();
    tokens.extend(extra_args());
    flags.extend(flag_pairs(&tokens)?);
    Ok(flags)
}

/// A child gateway's flags, name and value.
type ChildFlags = Vec<(String, String)>;

/// Sites A and B for gateways as child processes (the release binary): databases 3 and 4 of
/// the shared Redis, as the in-process gateways, with their flags ([`child_flags`]) and the
/// children's log filter (`AURORA_BENCH_FEDERATION_LOG`, `warn`).
fn child_sites(keys: Option<&RunKeys>) -> anyhow::Result<(Vec<Site>, Vec<ChildFlags>)> {
    let bin = aurora_bench::release_binary(SERVICE)?;
    let log = std::env::var("AURORA_BENCH_FEDERATION_LOG").unwrap_or_else(|_| "warn".into());
    let names = fresh_names();
    let mut sites = Vec::new();
    let mut flags = Vec::new();
    for (site_id, db) in [("site-a", 3), ("site-b", 4)] {
        let mut site = Site::new(&names, site_id, db).with_binary(Svc::FederationGateway, &bin);
        site.log_filter = log.clone();
        sites.push(site);
        flags.push(child_flags(&names, site_id, keys)?);
    }
    Ok((sites, flags))
}

/// The flags as [`carry_round`] takes them.
fn flag_refs(owned: &[ChildFlags]) -> Vec<Vec<(&str, &str)>> {
    owned
        .iter()
        .map(|f| f.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect())
        .collect()
}

/// The same sites in a namespace of their own (one per round).
fn renamed(sites: &[Site]) -> Vec<Site> {
    let names = fresh_names();
    sites
        .iter()
        .map(|s| {
            let mut site = s.clone();
            site.names = names.clone();
            site
        })
        .collect()
}

/// What one carry round of the trace pairs measured.
struct CarryRound {
    /// From the first alert raised at A until every one is on B's stream.
    seconds: f64,
    rate: f64,
    /// CPU seconds both gateways used in that time.
    gateways_cpu_s: f64,
    lost: usize,
    duplicated: usize,
    exit_ok: bool,
}

/// One round of the trace pairs in a namespace of its own: the gateways of `sites` (A, B: the
/// release binary, fresh) started and ready, then `m` alerts raised at A's stream in batches
/// of 500, each with a context from `upstream`, and read at B's; timed until every one has
/// arrived, then a second for late duplicates, then SIGTERM to both (their exporters flush as
/// they stop) and the namespace deleted.
async fn carry_round(
    sites: [&Site; 2],
    flags: [&[(&str, &str)]; 2],
    m: usize,
    upstream: Option<&Sampler>,
) -> anyhow::Result<CarryRound> {
    let names = sites[0].names.clone();
    let urls: Vec<&str> = sites.iter().map(|s| s.redis_url.as_str()).collect();
    let _cleanup = Cleanup::new(&names, NATS_URL, &urls);
    let mut gateways = Vec::with_capacity(2);
    for (site, flags) in sites.iter().zip(flags) {
        gateways.push(site.start(Svc::FederationGateway, flags).await);
    }
    let pids: Vec<u32> = gateways.iter().filter_map(|g| g.pid()).collect();
    if pids.len() != 2 {
        bail!("a gateway exited before the round");
    }
    let cpu = || {
        pids.iter()
            .map(|p| cpu_secs(*p).unwrap_or(f64::NAN))
            .sum::<f64>()
    };
    let producer = Producer::new(bus::connect(urls[0]).await?, 1_000_000);
    let mut reader = bus::connect_blocking(urls[1], Duration::from_millis(200)).await?;
    let stream = names.alerts();
    let (mut last, mut arrivals) = ("0-0".to_string(), Arrivals::default());
    let ids: Vec<String> = (0..m).map(|i| alert_id(FLOOD, i)).collect();
    let cpu_start = cpu();
    let started = Instant::now();
    let raise = {
        let (producer, stream, upstream) = (producer.clone(), stream.clone(), upstream.copied());
        tokio::spawn(async move {
            for chunk in ids.chunks(500) {
                raise_batch(&producer, &stream, chunk, upstream.as_ref()).await?;
            }
            anyhow::Ok(())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let all = |a: &Arrivals| a.count(FLOOD) >= m;
    read_until(
        &mut reader,
        &stream,
        &mut last,
        &mut arrivals,
        all,
        deadline,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let gateways_cpu_s = cpu() - cpu_start;
    raise.await??;
    read_late(&mut reader, &stream, &mut last, &mut arrivals).await?;
    let got = arrivals.count(FLOOD);
    let mut exit_ok = true;
    for gateway in &mut gateways {
        exit_ok &= gateway.terminate().await.success();
    }
    Ok(CarryRound {
        seconds,
        rate: got as f64 / seconds.max(1e-6),
        gateways_cpu_s,
        lost: m - got,
        duplicated: arrivals.total - arrivals.seen.len(),
        exit_ok,
    })
}

/// The headline: `rounds` carry rounds of both sites' gateways as deployed, each the release
/// binary in a process of its own (fresh, in a namespace of the round's own, the in-process
/// gateways' configuration as flags, untraced, alerts raised without a context); the figures
/// of each round and the median round's.
struct ProcessRounds {
    rounds: Vec<CarryRound>,
}

impl ProcessRounds {
    async fn run(m: usize, keys: Option<&RunKeys>, rounds: usize) -> anyhow::Result<Self> {
        let (sites, owned) = child_sites(keys)?;
        let flags = flag_refs(&owned);
        let mut out = Vec::with_capacity(rounds);
        for round in 0..rounds.max(1) {
            let here = renamed(&sites);
            let r = carry_round(
                [&here[0], &here[1]],
                [flags[0].as_slice(), flags[1].as_slice()],
                m,
                None,
            )
            .await?;
            println!(
                "  gateways as processes, round {}: {:.0} alerts/s A->B ({m} in {:.3} s), lost {}, duplicated {}, gateways' CPU {:.0} µs per alert, exit {}",
                round + 1,
                r.rate,
                r.seconds,
                r.lost,
                r.duplicated,
                1e6 * r.gateways_cpu_s / m as f64,
                if r.exit_ok { "0" } else { "not 0" }
            );
            out.push(r);
        }
        Ok(Self { rounds: out })
    }

    /// The round of median rate.
    fn median(&self) -> Option<&CarryRound> {
        let mut by_rate: Vec<&CarryRound> = self.rounds.iter().collect();
        by_rate.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        by_rate.get(by_rate.len() / 2).copied()
    }

    fn lost(&self) -> usize {
        self.rounds.iter().map(|r| r.lost).sum()
    }

    fn duplicated(&self) -> usize {
        self.rounds.iter().map(|r| r.duplicated).sum()
    }

    fn all_exited_cleanly(&self) -> bool {
        self.rounds.iter().all(|r| r.exit_ok)
    }

    fn json(&self, m: usize) -> Value {
        let rounds: Vec<Value> = self
            .rounds
            .iter()
            .map(|r| {
                json!({
                    "alerts_per_s": r.rate.round(),
                    "seconds": round_to(r.seconds, 3),
                    "lost": r.lost,
                    "duplicated": r.duplicated,
                    "gateways_cpu_us_per_alert": round_to(1e6 * r.gateways_cpu_s / m as f64, 1),
                    "exit_ok": r.exit_ok,
                })
            })
            .collect();
        json!({
            "what": format!("both sites' gateways as deployed, each the release binary in a process of its own (fresh every round, in a namespace of the round's own, the in-process gateways' configuration as flags, untraced), {m} alerts raised at A's alert stream in batches of 500 once both are ready, timed until every one is on B's; the figure is the median round"),
            "rounds": rounds,
        })
    }
}

/// Pairs of carry rounds, each with gateways of their own (the release binary, child
/// processes) in a namespace of its own: untraced, and exporting their spans to an OTLP
/// receiver with 1% of traces sampled; the order swaps every pair (the machine's load
/// drifts). Each pair's ratio is traced/untraced alerts per second A->B; the median pair is
/// the figure.
async fn trace_rounds(m: usize, keys: Option<&RunKeys>, ratio: &str) -> anyhow::Result<Value> {
    let receiver = OtlpReceiver::start().await;
    let (sites, owned) = child_sites(keys)?;
    let mut kinds: [Vec<Site>; 2] = [Vec::new(), Vec::new()];
    for site in &sites {
        let (untraced, traced) = aurora_bench::trace_sites(site, &receiver, ratio);
        kinds[0].push(untraced);
        kinds[1].push(traced);
    }
    let flags = flag_refs(&owned);
    let sampler = Sampler::parse("parentbased_traceidratio", Some(ratio))
        .context("the sampler of the alerts' contexts")?;
    let exports = ratio.parse::<f64>().map_or(true, |r| r > 0.0);
    let pairs = aurora_bench::env_or("BENCH_FEDERATION_TRACE_PAIRS", 5usize)?.max(1);
    let (mut lost, mut duplicated) = (0, 0);
    let mut traced_span_names = std::collections::BTreeMap::new();
    let measured = trace_pairs(pairs, async |pair, traced| {
        let label = if traced { "traced" } else { "untraced" };
        let sites = renamed(&kinds[usize::from(traced)]);
        let spans_before = receiver.spans().len();
        let r = carry_round(
            [&sites[0], &sites[1]],
            [flags[0].as_slice(), flags[1].as_slice()],
            m,
            Some(&sampler),
        )
        .await?;
        let received = spans_since(&receiver, spans_before).await;
        let spans = received.len();
        if traced && spans == 0 && exports {
            bail!("the traced gateways exported no span: the round measured nothing");
        }
        if traced {
            for (name, count) in span_names(&received, sites[0].names.namespace()) {
                *traced_span_names.entry(name).or_insert(0) += count;
            }
        }
        lost += r.lost;
        duplicated += r.duplicated;
        let cpu_per_alert = r.gateways_cpu_s / m as f64;
        println!(
            "  pair {}, {label}: {:.0} alerts/s A->B ({m} in {:.3} s), lost {}, duplicated {}, gateways' CPU {:.2} s ({:.0} µs per alert), exit {}, spans received {spans}",
            pair + 1,
            r.rate,
            r.seconds,
            r.lost,
            r.duplicated,
            r.gateways_cpu_s,
            1e6 * cpu_per_alert,
            if r.exit_ok { "0" } else { "not 0" }
        );
        Ok(PairRound {
            rate: r.rate,
            cpu_per_message: cpu_per_alert,
            json: json!({
                "alerts_per_s": r.rate.round(),
                "alerts": m,
                "seconds": round_to(r.seconds, 3),
                "lost": r.lost,
                "duplicated": r.duplicated,
                "gateways_cpu_seconds": round_to(r.gateways_cpu_s, 2),
                "gateways_cpu_us_per_alert": round_to(1e6 * cpu_per_alert, 1),
                "exit_ok": r.exit_ok,
                "spans_received": spans,
            }),
        })
    })
    .await?;
    let cost = measured.cost()?;
    println!("  lost {lost}, duplicated {duplicated} over all rounds");
    let mut out = json!({
        "what": format!("pairs of rounds, each with fresh gateways of sites A and B (the release binary as child processes, signatures {}, the in-process gateways' configuration as flags; Redis databases 3 and 4, one NATS) in a namespace of the round's own, {m} alerts raised at A's alert stream in batches of 500 once both are ready and read at B's: untraced, and traced (OTEL_EXPORTER_OTLP_ENDPOINT to an OTLP/HTTP receiver in the bench's process, OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG={ratio}), the order swapped every pair", if keys.is_some() { "on" } else { "off" }),
        "alerts_carry": "a traceparent when sampled, in both kinds of round, as a traced writer sampling at 1% leaves it (eve-ingest writes its batch's context on the alerts it raises when the batch is sampled): a new trace for about 1% of the alerts by the trace-id ratio rule, nothing on the others; the gateways' parent-based samplers follow, so about 1% of the alerts make spans (their names: spans_by_name_traced_rounds) and carry a context on",
        "signatures": keys.is_some(),
        "sampler": "parentbased_traceidratio",
        "sampler_arg": ratio,
        "alerts_per_round": m,
        "timed": "from the first alert raised at A (both gateways ready) until every one has arrived on B's alert stream (read as they come); a second more for late duplicates, untimed",
        "spans_by_name_traced_rounds": traced_span_names,
        "lost_all_rounds": lost,
        "duplicated_all_rounds": duplicated,
        "ratio_is": "alerts per second from A's stream to B's, traced over untraced of the same pair",
        "service_cpu_per_message_ratio_is": "both gateways' CPU seconds (utime + stime from /proc) over the timed carry, per alert, traced over untraced of the same pair (above 1: tracing costs CPU)",
    });
    if let Some(out) = out.as_object_mut() {
        out.extend(measured.json(&cost));
    }
    out["met"] = json!(cost.met() && lost == 0 && duplicated == 0);
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let m: usize = aurora_bench::env_or("BENCH_FEDERATION_M", 50_000)?;
    if m == 0 || m > 90_000 {
        bail!("BENCH_FEDERATION_M must be 1..=90000 (the stream keeps 100,000 messages)");
    }

    let signatures = std::env::var("BENCH_FEDERATION_SIGNATURES").unwrap_or_default() != "off";
    let keys = if signatures {
        Some(RunKeys::new()?)
    } else {
        None
    };
    println!(
        "bench-federation: {m} alerts, site A -> JetStream -> site B, signatures {}",
        if signatures { "on" } else { "off" }
    );
    let trace = TraceRounds::from_env();
    let trace_ratio = std::env::var("BENCH_FEDERATION_TRACE_RATIO")
        .unwrap_or_else(|_| TRACE_SAMPLING.to_string());
    if trace == TraceRounds::Only {
        println!("tracing, sampling ratio {trace_ratio}, the trace rounds alone: pairs of carry rounds of the release binaries, untraced and traced (OTLP/HTTP to a receiver in this process), the order swapped every pair");
        let traced = trace_rounds(m, keys.as_ref(), &trace_ratio).await?;
        if trace_ratio == TRACE_SAMPLING {
            aurora_bench::record_trace_rounds_alone("federation", traced)?;
        } else {
            println!("not recorded: the results hold the rounds at {TRACE_SAMPLING}");
        }
        return Ok(());
    }
    let ceiling_before = ceiling(m).await?;
    println!("  ceiling (raw publish-with-ack, {WINDOW} in flight): {ceiling_before:.0} msg/s");
    let carry = nats_carry(m).await?;
    println!("  NATS alone carrying to both sites' consumers (publish, 2 deliveries, 2 acks): {carry:.0} msg/s");
    let run = gateway(m, keys.as_ref()).await?;
    println!(
        "  gateway A->B: {:.0} msg/s ({m} in {:.2} s), lost {}, duplicated {}, latency under flood p50 {:.1} ms p99 {:.1} ms",
        run.rate, run.elapsed, run.lost, run.duplicated, run.flood_p50, run.flood_p99
    );
    println!(
        "  export half (A's stream -> JetStream): {:.0} msg/s; both gateways used {:.0} us CPU per alert",
        m as f64 / run.export_elapsed,
        run.cpu_us_per_msg.unwrap_or(f64::NAN)
    );
    println!(
        "  paced {PACED_RATE} msg/s for {PACED_SECS} s: latency p50 {:.1} ms p99 {:.1} ms, lost {}",
        run.paced_p50, run.paced_p99, run.paced_lost
    );
    println!(
        "  site B's Redis before: {}; after: {}",
        run.redis_before, run.redis_after
    );
    let process_rounds = aurora_bench::env_or("BENCH_FEDERATION_PROCESS_ROUNDS", 3usize)?.max(1);
    let processes = ProcessRounds::run(m, keys.as_ref(), process_rounds).await?;
    let carry_after = nats_carry(m).await?;
    println!("  NATS alone again: {carry_after:.0} msg/s");
    let ceiling_after = ceiling(m).await?;
    println!("  ceiling again: {ceiling_after:.0} msg/s");
    let ceiling = ceiling_before.max(ceiling_after);
    let nats_alone = (carry + carry_after) / 2.0;
    let median = processes
        .median()
        .context("no round of the gateways as processes")?;
    let figure = median.rate;
    let ratio = figure / nats_alone;
    let lost = run.lost + processes.lost();
    let duplicated = run.duplicated + processes.duplicated();
    let met = ratio >= 0.8
        && lost == 0
        && duplicated == 0
        && run.paced_lost == 0
        && processes.all_exited_cleanly();
    println!(
        "  gateways as processes (median round) / NATS alone (mean of before and after) = {:.1}% (target >= 80%, zero lost, zero duplicated): {}; both gateways in the bench's process: {:.1}%",
        ratio * 100.0,
        if met { "met" } else { "NOT met" },
        100.0 * run.rate / nats_alone
    );

    let traced = match trace {
        TraceRounds::WithRun => {
            println!("tracing at 1% sampling: pairs of carry rounds of the release binaries, untraced and traced (OTLP/HTTP to a receiver in this process), the order swapped every pair");
            Some(trace_rounds(m, keys.as_ref(), &trace_ratio).await?)
        }
        _ => None,
    };
    let mut result = json!({
        "bench": "federation",
        "service": "federation-gateway",
        "figure": {"name": "alerts carried from site A's stream to site B's stream by both sites' gateways, each a process of its own (the median of the process rounds)", "value": figure.round(), "unit": "msg/s"},
        "ceiling": {"name": "NATS alone doing the same carry: the same publishes, each delivered to both sites' durable consumers and acked by each, no gateway, no Redis (the mean of the runs before and after the gateways)", "value": nats_alone.round(), "unit": "msg/s"},
        "ratio": round_to(ratio, 3),
        "target": "at least 80% of what NATS alone carries in the same run, with signatures on, zero lost, zero duplicated",
        "met": met,
        "details": {
            "alerts": m,
            "signatures": signatures,
            "raw_publish_ceiling_msg_s": ceiling.round(),
            "gateways_as_processes": processes.json(m),
            "gateways_as_processes_cpu_us_per_alert": round_to(1e6 * median.gateways_cpu_s / m as f64, 1),
            "gateways_as_processes_vs_raw_publish": round_to(figure / ceiling, 3),
            "lost_all_rounds": lost,
            "duplicated_all_rounds": duplicated,
            "in_process_is": "both gateways in the bench's process and runtime, beside the producer and the reader: the run whose latency, paced rate and Redis memory are recorded below; its rate is given for comparison with the figure",
            "in_process_gateways_msg_s": run.rate.round(),
            "in_process_vs_nats_alone_carry": round_to(run.rate / nats_alone, 3),
            "gateway_vs_raw_publish": round_to(run.rate / ceiling, 3),
            "site_b_redis_before": run.redis_before,
            "site_b_redis_after": run.redis_after,
            "gateway_elapsed_s": round_to(run.elapsed, 3),
            "export_half_msg_s": (m as f64 / run.export_elapsed).round(),
            "gateways_cpu_us_per_alert": run.cpu_us_per_msg.map(|c| c.round()),
            "load_average_1m_at_end": std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split_whitespace().next().map(str::to_string)),
            "lost": run.lost,
            "duplicated": run.duplicated,
            "latency_under_flood_p50_ms": run.flood_p50,
            "latency_under_flood_p99_ms": run.flood_p99,
            "paced_rate_msg_s": PACED_RATE,
            "paced_sent": run.paced_sent,
            "paced_lost": run.paced_lost,
            "paced_latency_p50_ms": run.paced_p50,
            "paced_latency_p99_ms": run.paced_p99,
            "ceiling_before_msg_s": ceiling_before.round(),
            "nats_alone_carry_to_both_sites_msg_s": carry.round(),
            "nats_alone_carry_after_msg_s": carry_after.round(),
            "nats_alone_carry_vs_ceiling": round_to(nats_alone / ceiling, 3),
            "gateway_vs_nats_alone_carry": round_to(ratio, 3),
            "ceiling_after_msg_s": ceiling_after.round(),
            "publish_window": WINDOW,
            "setup": "sites A and B = Redis databases 3 and 4 of one Redis, one NATS 2.9 with file storage, all on loopback; the gateways (export and import on each) as processes of their own for the figure, in the bench's process for the latency, paced and memory figures; the machine is shared with other builds",
            "cores": aurora_bench::cores(),
        },
        "command": "make bench-federation",
        "measured_at": aurora_bench::measured_at(),
    });
    aurora_bench::set_trace_rounds("federation", &mut result, traced);
    aurora_bench::write_result("federation", &result)?;
    Ok(())
}
