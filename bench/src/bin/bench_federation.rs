//! `make bench-federation`: M alerts raised at site A, carried by two gateways (site A and
//! site B, two Redis databases, one NATS) to B's alert stream. Measures, in one run:
//! - the gateway: messages per second from A's stream to B's stream, latency p50/p99, lost
//!   and duplicated; then latency at a paced 2,000 msg/s;
//! - the ceiling: raw JetStream publish-with-ack with 256 acks in flight (async-nats, the
//!   same subject, stream config, payloads and headers), measured before and after the
//!   gateway; the higher of the two is used;
//! - what NATS alone allows for the carry: the same publishes, each delivered to both sites'
//!   durable consumers and acked by each, with no gateway and no Redis (a bound on any
//!   gateway on this machine, printed and recorded beside the ceiling).
//!
//! The gateways sign what they export and check what they import (`--signing-key`,
//! `--peer-keys`, keys made for the run) unless BENCH_FEDERATION_SIGNATURES=off. The target is
//! the issue's: at least 80% of what NATS alone carries, zero lost, zero duplicated. Site B's
//! Redis memory (`INFO memory` used_memory, the database's key count and the revision
//! state's own size) is recorded before and after the carry.
//!
//! Writes bench/results/federation.json. On the shared NATS and Redis (databases 3 and 4).
//! Environment: BENCH_FEDERATION_M (default 50000), BENCH_FEDERATION_GATEWAY_ARGS (extra
//! gateway flags, e.g. `--publish-window 512`), BENCH_FEDERATION_SIGNATURES (`on`, `off`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::jetstream::{self, message::PublishMessage};
use aurora_bench::{cpu_secs, jetstream_len, now_us, percentile, poll_until, round_to, InProcess};
use aurora_core::bus::{self, Conn, Producer};
use aurora_core::jetstream::federation_stream_config;
use aurora_core::names::Names;
use aurora_core::service::{Flags, LaunchOptions, Stopped};
use aurora_testkit::cleanup::cleanup;
use aurora_testkit::process::REDIS_BASE;
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

fn gateway_args(
    names: &Names,
    site: &str,
    redis: &str,
    keys: Option<&RunKeys>,
) -> anyhow::Result<Args> {
    let extra = std::env::var("BENCH_FEDERATION_GATEWAY_ARGS").unwrap_or_default();
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
        .chain(extra.split_whitespace().map(str::to_string));
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

async fn raise_batch(producer: &Producer, stream: &str, ids: &[String]) -> anyhow::Result<()> {
    let at = now_us();
    let docs: Vec<Vec<u8>> = ids.iter().map(|id| alert_bytes(id, at)).collect();
    let items: Vec<(&str, &[u8])> = docs.iter().map(|d| (stream, d.as_slice())).collect();
    producer.publish_batch(&items).await?;
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
                raise_batch(&producer, &stream, chunk).await?;
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
                raise_batch(&producer, &stream, &ids).await?;
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
    // Late duplicates, if any, show up now.
    let settle = Instant::now() + Duration::from_secs(1);
    read_until(
        &mut reader,
        &stream,
        &mut last,
        &mut arrivals,
        |_| false,
        settle,
    )
    .await?;
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
    let ceiling_after = ceiling(m).await?;
    println!("  ceiling again: {ceiling_after:.0} msg/s");
    let ceiling = ceiling_before.max(ceiling_after);
    let ratio = run.rate / carry;
    let met = ratio >= 0.8 && run.lost == 0 && run.duplicated == 0 && run.paced_lost == 0;
    println!(
        "  gateway / NATS alone = {:.1}% (target >= 80%, zero lost, zero duplicated): {}",
        ratio * 100.0,
        if met { "met" } else { "NOT met" }
    );

    let result = json!({
        "bench": "federation",
        "service": "federation-gateway",
        "figure": {"name": "alerts carried from site A's stream to site B's stream", "value": run.rate.round(), "unit": "msg/s"},
        "ceiling": {"name": "NATS alone doing the same carry: the same publishes, each delivered to both sites' durable consumers and acked by each, no gateway, no Redis", "value": carry.round(), "unit": "msg/s"},
        "ratio": round_to(ratio, 3),
        "target": "at least 80% of what NATS alone carries in the same run, with signatures on, zero lost, zero duplicated",
        "met": met,
        "details": {
            "alerts": m,
            "signatures": signatures,
            "raw_publish_ceiling_msg_s": ceiling.round(),
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
            "nats_alone_carry_vs_ceiling": round_to(carry / ceiling, 3),
            "gateway_vs_nats_alone_carry": round_to(run.rate / carry, 3),
            "ceiling_after_msg_s": ceiling_after.round(),
            "publish_window": WINDOW,
            "setup": "both gateways in one process (export and import on each), sites A and B = Redis databases 3 and 4 of one Redis, one NATS 2.9 with file storage, all on loopback; the machine is shared with other builds",
            "cores": aurora_bench::cores(),
        },
        "command": "make bench-federation",
        "measured_at": aurora_bench::measured_at(),
    });
    aurora_bench::write_result("federation", &result)?;
    Ok(())
}
