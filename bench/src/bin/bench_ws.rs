//! `make bench-ws`: the gateway (release build, a child process) with 500 clients on each of
//! the three channels, in one run:
//! 1. memory per idle connection: the gateway's RSS before and after the 1,500 connections;
//! 2. a fixed rate of 200 messages per second on each channel: deliveries per second and the
//!    latency from XADD to client receipt (p50, p99, max), and clients that missed anything;
//! 3. as fast as possible: deliveries per second.
//! 4. With `AURORA_BENCH_TRACE=1`: the cost of tracing at 1% sampling on that figure. Pairs
//!    of rounds (`BENCH_WS_TRACE_PAIRS`, default 5), each a fresh gateway with its 1,500 clients
//!    taking a burst of `BENCH_WS_TRACE_BURST` entries on each channel (default 10,000) as fast
//!    as possible: one untraced, one exporting spans over OTLP/HTTP to a receiver in this
//!    process (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.01`),
//!    the order swapped every pair. About 1% of the entries carry a `traceparent`, as a traced
//!    writer sampling at 1% leaves them (sampled by the trace-id ratio rule, nothing on the
//!    others; the gateway's parent-based sampler follows), in both kinds of round.
//!    The figure is the median of the pairs' traced/untraced ratios of deliveries per second,
//!    with their spread; the gateway's CPU per entry is compared beside it. A traced gateway
//!    adds the `traceparent` to the frames of sampled entries (docs/contract.md, WebSocket),
//!    some 70 bytes on frames of about 250: with `BENCH_WS_TRACE_FRAMES_ALIKE=1` the entries' documents
//!    carry it themselves, so the frames are the same in both kinds of round and the ratio
//!    leaves their size out.
//!
//! The clients, Redis and the gateway share the machine's cores: the figures are a floor.
//! Writes bench/results/ws.json.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aurora_bench::{
    cpu_secs, env_or, now_us, percentile, poll_until, proc_status_kib, round_to, upstream_trace,
    TraceCost, TRACE_SAMPLING,
};
use aurora_core::auth::Permission;
use aurora_core::bus::{self, Producer};
use aurora_core::names::Channel;
use aurora_core::trace::Sampler;
use aurora_testkit::cleanup::Cleanup;
use aurora_testkit::ops::Ops;
use aurora_testkit::otlp::OtlpReceiver;
use aurora_testkit::process::{service_env, Service, Site, Svc};
use aurora_testkit::{free_port, NATS_URL, REDIS_URL};
use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS_PER_CHANNEL: usize = 500;
const RATE_PER_CHANNEL: u64 = 200;
const FIXED_SECONDS: u64 = 10;
const BURST_PER_CHANNEL: u64 = 3_000;
/// The burst of each round of the trace pairs, per channel (`BENCH_WS_TRACE_BURST`): longer
/// than the bench's own, so that a round lasts seconds rather than one.
const TRACE_BURST_PER_CHANNEL: u64 = 10_000;
/// Each bench client's read buffer.
const CLIENT_READ_BUFFER: usize = 16 * 1024;
const TARGET_DELIVERIES: f64 = 300_000.0;
const TARGET_P99_MS: f64 = 50.0;
const TARGET_KIB_PER_CONN: f64 = 30.0;
/// Set (to `gateway`) in the child process: it runs the gateway instead of the benchmark.
const ROLE_VARIABLE: &str = "AURORA_BENCH_WS_ROLE";

struct Probe {
    phase: u8,
    sent_us: u64,
}

impl Probe {
    /// Reads the two numbers without parsing the whole document: the clients share the
    /// gateway's cores, so what they spend is taken from it.
    fn scan(text: &str) -> Option<Self> {
        fn number(text: &str, key: &str) -> Option<u64> {
            let rest = &text[text.find(key)? + key.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        }
        Some(Self {
            phase: number(text, "\"phase\":")? as u8,
            sent_us: number(text, "\"sent_us\":")?,
        })
    }
}

/// What one client saw.
#[derive(Default)]
struct ClientReport {
    channel: usize,
    received: [u64; 3],
    latencies_us: Vec<u32>,
    close_code: Option<u16>,
}

struct Shared {
    /// Last receipt time per phase (µs since the epoch).
    last_receipt: [AtomicU64; 3],
    received: [AtomicU64; 3],
}

fn main() -> ExitCode {
    // The child: the gateway binary itself, configured by the variables the parent sets.
    if std::env::var(ROLE_VARIABLE).as_deref() == Ok("gateway") {
        return aurora_core::service::run_main::<ws_gateway::config::Args>();
    }
    match run_bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-ws: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_bench() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    proc_status_kib(pid, "VmRSS").context("no VmRSS")
}

/// CPU seconds of a process, NaN when unreadable.
fn cpu(pid: u32) -> f64 {
    cpu_secs(pid).unwrap_or(f64::NAN)
}

/// The Redis server on the bench's URL's port, if it runs on this machine.
fn redis_pid(redis_url: &str) -> Option<u32> {
    // `redis://[user:password@]host[:port][/db]`: the port is after the last colon, if any.
    let port = redis_url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse::<u16>().ok())
        .unwrap_or(6379);
    let needle = format!(":{port}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
        (cmdline.starts_with("redis-server") && cmdline.contains(&needle)).then_some(pid)
    })
}

/// CPU seconds used by the gateway, this process (the clients and the publisher) and Redis.
#[derive(Clone, Copy)]
struct CpuSample {
    gateway: f64,
    clients: f64,
    redis: f64,
    at: Instant,
}

impl CpuSample {
    fn take(gateway: u32, redis: Option<u32>) -> Self {
        Self {
            gateway: cpu(gateway),
            clients: cpu(std::process::id()),
            redis: redis.map(cpu).unwrap_or(f64::NAN),
            at: Instant::now(),
        }
    }

    /// Cores used by each since `before`.
    fn cores_since(&self, before: &Self) -> serde_json::Value {
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-6);
        let r = |a: f64, b: f64| ((a - b) / secs * 100.0).round() / 100.0;
        json!({
            "gateway": r(self.gateway, before.gateway),
            "bench_clients_and_publisher": r(self.clients, before.clients),
            "redis": r(self.redis, before.redis),
            "seconds": secs,
        })
    }
}

/// The gateway's fan-out delay histogram (all channels), from its `/metrics`:
/// upper bound (seconds) -> entries handed out within it.
async fn fanout_delay_buckets(ops: Ops) -> serde_json::Map<String, serde_json::Value> {
    let mut buckets: std::collections::BTreeMap<String, (f64, u64)> = Default::default();
    {
        let body = ops.metrics().await;
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("aurora_ws_gateway_fanout_delay_seconds_bucket{")
            else {
                continue;
            };
            let Some(le) = rest.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
                continue;
            };
            let count: u64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
            let order = le.parse::<f64>().unwrap_or(f64::INFINITY);
            buckets.entry(le.to_string()).or_insert((order, 0)).1 += count;
        }
    }
    let mut sorted: Vec<_> = buckets.into_iter().collect();
    sorted.sort_by(|a, b| a.1 .0.total_cmp(&b.1 .0));
    sorted
        .into_iter()
        .map(|(le, (_, n))| (le, json!(n)))
        .collect()
}

/// The gateway: this very binary as a child process of the harness, running the gateway
/// (chosen by [`ROLE_VARIABLE`]) with the variables a site gives it, on the shared Redis.
async fn start_gateway(site: &Site) -> anyhow::Result<Service> {
    let mut flags = vec![
        ("max-connections-per-channel", "500".to_string()),
        ("client-queue", "16384".to_string()),
        ("drain-grace", "0s".to_string()),
    ];
    // The child gets none of this shell's AURORA_* variables: a linger to try is passed on.
    let linger_var = service_env(Svc::WsGateway, "fanout-linger");
    if let Ok(linger) = std::env::var(&linger_var) {
        flags.push(("fanout-linger", linger));
    }
    let flags: Vec<(&str, &str)> = flags.iter().map(|(f, v)| (*f, v.as_str())).collect();
    let (ops, http) = (free_port(), free_port());
    let mut env = site.env(Svc::WsGateway, "bench-ws", ops, http, &flags);
    env.push((ROLE_VARIABLE.to_string(), "gateway".to_string()));
    let exe = std::env::current_exe()?;
    let mut gateway = Service::spawn(Svc::WsGateway, exe, "bench-ws", env, ops, http);
    gateway
        .try_ready()
        .await
        .map_err(|e| anyhow::anyhow!("the gateway did not become ready: {e}"))?;
    Ok(gateway)
}

async fn bench() -> anyhow::Result<()> {
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let mut site = Site::new(&names, "site-a", 0);
    site.log_filter = "warn".into();
    let mut gateway = start_gateway(&site).await?;
    let pid = gateway.pid().context("the gateway is running")?;
    let http = format!("127.0.0.1:{}", gateway.http_port);
    let ops = gateway.ops();
    println!(
        "bench-ws: namespace {}, gateway on {http} (release child process)",
        names.namespace()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid)?;

    // ---- 1,500 idle connections ----
    let token = aurora_testkit::auth::token_for(
        "bench",
        &[
            Permission::WsAlerts,
            Permission::WsAgentThoughts,
            Permission::ApprovalsManage,
        ],
    );
    let shared = Arc::new(Shared {
        last_receipt: Default::default(),
        received: Default::default(),
    });
    let connect_start = Instant::now();
    let clients = connect_clients(&http, &token, &shared).await?;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(pid)?;
    let conns = (CLIENTS_PER_CHANNEL * 3) as f64;
    let kib_per_conn = (rss_after.saturating_sub(rss_before)) as f64 / conns;
    println!(
        "idle: RSS {rss_before} KiB -> {rss_after} KiB with {conns} connections: {kib_per_conn:.1} KiB per connection (connected in {connect_secs:.1} s)"
    );

    let producer = Producer::new(bus::connect(REDIS_URL).await?, 1_000_000);
    let streams: Vec<String> = Channel::ALL
        .into_iter()
        .map(|c| names.channel_stream(c))
        .collect();
    let pad = "x".repeat(120);

    // ---- fixed rate ----
    // The publisher runs on a thread and runtime of its own, so the 1,500 client tasks of
    // this process do not delay its ticks.
    let fixed_total = RATE_PER_CHANNEL * FIXED_SECONDS;
    let redis_pid = redis_pid(REDIS_URL);
    let cpu_fixed_start = CpuSample::take(pid, redis_pid);
    let fixed_start_us = now_us();
    let publisher = {
        let (streams, pad) = (streams.clone(), pad.clone());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let producer = Producer::new(bus::connect(REDIS_URL).await?, 1_000_000);
                let mut ticker =
                    tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_CHANNEL));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for seq in 0..fixed_total {
                    ticker.tick().await;
                    let sent = now_us();
                    let docs: Vec<(String, Vec<u8>)> = streams
                        .iter()
                        .map(|s| {
                            let doc = json!({"phase": 1, "seq": seq, "sent_us": sent, "title": "bench alert", "severity": "high", "pad": pad});
                            (s.clone(), doc.to_string().into_bytes())
                        })
                        .collect();
                    producer.publish_batch(&docs).await?;
                }
                Ok(now_us())
            })
        })
    };
    let publish_end = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    let fixed_publish_secs = (publish_end - fixed_start_us) as f64 / 1e6;
    let expected_fixed = fixed_total * conns as u64;
    wait_for(&shared, 1, expected_fixed, Duration::from_secs(20)).await;
    let cpu_fixed = CpuSample::take(pid, redis_pid).cores_since(&cpu_fixed_start);
    let fanout_delay_fixed = fanout_delay_buckets(ops).await;
    println!("fixed rate: cores used {cpu_fixed}; gateway fan-out delay buckets (s -> entries) {fanout_delay_fixed:?}");
    let fixed_received = shared.received[1].load(Ordering::Relaxed);
    let fixed_last = shared.last_receipt[1].load(Ordering::Relaxed);
    let fixed_rate =
        fixed_received as f64 / ((fixed_last.max(publish_end) - fixed_start_us) as f64 / 1e6);
    println!(
        "fixed rate: {RATE_PER_CHANNEL} msg/s on each channel for {FIXED_SECONDS} s (written in {fixed_publish_secs:.1} s): {fixed_received}/{expected_fixed} deliveries, {fixed_rate:.0} deliveries/s"
    );

    // ---- as fast as possible ----
    let cpu_burst_start = CpuSample::take(pid, redis_pid);
    let burst_start_us = now_us();
    let mut seq = 0;
    while seq < BURST_PER_CHANNEL {
        let sent = now_us();
        let mut docs = Vec::with_capacity(300);
        for _ in 0..100 {
            for s in &streams {
                let doc = json!({"phase": 2, "seq": seq, "sent_us": sent, "title": "bench alert", "severity": "high", "pad": pad});
                docs.push((s.clone(), doc.to_string().into_bytes()));
            }
            seq += 1;
        }
        producer.publish_batch(&docs).await?;
    }
    let burst_publish_secs = (now_us() - burst_start_us) as f64 / 1e6;
    let expected_burst = BURST_PER_CHANNEL * conns as u64;
    wait_for(&shared, 2, expected_burst, Duration::from_secs(60)).await;
    let cpu_burst = CpuSample::take(pid, redis_pid).cores_since(&cpu_burst_start);
    println!("as fast as possible: cores used {cpu_burst}");
    let burst_received = shared.received[2].load(Ordering::Relaxed);
    let burst_last = shared.last_receipt[2].load(Ordering::Relaxed);
    let burst_secs = (burst_last.saturating_sub(burst_start_us)) as f64 / 1e6;
    let burst_rate = burst_received as f64 / burst_secs.max(1e-6);
    println!(
        "as fast as possible: {BURST_PER_CHANNEL} messages on each channel (written in {burst_publish_secs:.2} s): {burst_received}/{expected_burst} deliveries in {burst_secs:.2} s, {burst_rate:.0} deliveries/s"
    );

    // ---- drain: SIGTERM, every client should get 1001 ----
    gateway.sigterm();
    let mut reports = Vec::new();
    for c in clients {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(30), c).await {
            reports.push(r);
        }
    }
    let mut latencies: Vec<u32> = reports
        .iter_mut()
        .flat_map(|r| std::mem::take(&mut r.latencies_us))
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| percentile(&latencies, p) / 1000.0;
    let (p50, p99, max) = (pct(0.50), pct(0.99), pct(1.0));
    let missed_fixed = reports
        .iter()
        .filter(|r| r.received[1] < fixed_total)
        .count();
    let missed_burst = reports
        .iter()
        .filter(|r| r.received[2] < BURST_PER_CHANNEL)
        .count();
    let closed_1001 = reports
        .iter()
        .filter(|r| r.close_code == Some(1001))
        .count();
    let closed_1013 = reports
        .iter()
        .filter(|r| r.close_code == Some(1013))
        .count();
    let per_channel_fixed: Vec<u64> = (0..3)
        .map(|ci| {
            reports
                .iter()
                .filter(|r| r.channel == ci)
                .map(|r| r.received[1])
                .sum()
        })
        .collect();
    println!(
        "latency XADD -> client (fixed rate): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; clients that missed anything: {missed_fixed} (fixed), {missed_burst} (burst); closed 1001 on SIGTERM: {closed_1001}/{}",
        reports.len()
    );
    let mut gateway_exit = None;
    let _ = poll_until(
        Duration::from_millis(50),
        Duration::from_secs(30),
        "the gateway's exit",
        || {
            gateway_exit = gateway.exited().map(|status| status.code());
            let exited = gateway_exit.is_some();
            async move { Ok(exited) }
        },
    )
    .await;

    let met = missed_fixed == 0
        && p99 < TARGET_P99_MS
        && fixed_rate >= TARGET_DELIVERIES * 0.99
        && burst_rate >= TARGET_DELIVERIES
        && kib_per_conn < TARGET_KIB_PER_CONN;
    let mut result = json!({
        "bench": "ws",
        "service": "ws-gateway",
        "figure": {"name": "deliveries per second, as fast as possible, 500 clients on each of 3 channels", "value": burst_rate.round(), "unit": "deliveries/s"},
        "ceiling": {"name": "target of issue 5: 500 clients x 3 channels x 200 msg/s", "value": TARGET_DELIVERIES, "unit": "deliveries/s"},
        "ratio": burst_rate / TARGET_DELIVERIES,
        "target": "500 clients on each channel at 200 msg/s each (300,000 deliveries/s): every message delivered with p99 < 50 ms; as fast as possible >= 300,000 deliveries/s; < 30 KiB gateway memory per idle connection",
        "met": met,
        "details": {
            "machine": "2 cores shared by the gateway, the 1,500 benchmark clients and Redis (and other engineers' builds): figures are a floor",
            "gateway_fanout_linger": std::env::var("AURORA_WS_GATEWAY_FANOUT_LINGER").unwrap_or_else(|_| "10ms (default)".into()),
            "clients_per_channel": CLIENTS_PER_CHANNEL,
            "channels": 3,
            "message_bytes": 200,
            "fixed_rate": {
                "rate_per_channel_msg_s": RATE_PER_CHANNEL,
                "seconds": FIXED_SECONDS,
                "publish_seconds": fixed_publish_secs,
                "deliveries_expected": expected_fixed,
                "deliveries_received": fixed_received,
                "deliveries_per_second": fixed_rate.round(),
                "per_channel_received": per_channel_fixed,
                "latency_ms": {"p50": p50, "p99": p99, "max": max, "samples": latencies.len()},
                "clients_that_missed_anything": missed_fixed,
                "cores_used": cpu_fixed,
                "gateway_fanout_delay_buckets_seconds": fanout_delay_fixed,
            },
            "as_fast_as_possible": {
                "messages_per_channel": BURST_PER_CHANNEL,
                "publish_seconds": burst_publish_secs,
                "deliveries_expected": expected_burst,
                "deliveries_received": burst_received,
                "seconds_to_last_delivery": burst_secs,
                "deliveries_per_second": burst_rate.round(),
                "clients_that_missed_anything": missed_burst,
                "client_queue": 16384,
                "cores_used": cpu_burst,
            },
            "memory": {
                "rss_before_kib": rss_before,
                "rss_after_1500_idle_kib": rss_after,
                "kib_per_idle_connection": kib_per_conn,
                "target_kib": TARGET_KIB_PER_CONN,
            },
            "shutdown": {
                "clients_closed_1001": closed_1001,
                "clients_closed_1013_slow": closed_1013,
                "clients_reported": reports.len(),
                "gateway_exit_code": gateway_exit.flatten(),
            },
            "connect_seconds_1500": connect_secs,
        },
        "command": "make bench-ws",
        "measured_at": aurora_bench::measured_at(),
    });
    println!("target met: {met}");
    if std::env::var("AURORA_BENCH_TRACE").as_deref() == Ok("1") {
        println!("tracing at 1% sampling: pairs of rounds, untraced and traced (OTLP/HTTP to a receiver in this process), the order swapped every pair");
        result["details"]["trace_sampling_rounds"] =
            trace_rounds(&site, &token, &streams, &pad).await?;
    }
    aurora_bench::write_result("ws", &result)?;
    Ok(())
}

/// The 500 clients of each channel, connected one after another to the gateway at `http`.
async fn connect_clients(
    http: &str,
    token: &str,
    shared: &Arc<Shared>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<ClientReport>>> {
    let mut clients = Vec::with_capacity(CLIENTS_PER_CHANNEL * 3);
    for (ci, channel) in Channel::ALL.into_iter().enumerate() {
        for _ in 0..CLIENTS_PER_CHANNEL {
            let url = format!("ws://{http}{}?token={token}", channel.path());
            // tungstenite zero-fills its read buffer up to `read_buffer_size` (128 KiB by
            // default) before every read: with 1,500 clients on the gateway's cores that
            // memset was a fifth of all CPU. The frames here are a few hundred bytes.
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(CLIENT_READ_BUFFER);
            let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
                .await
                .context("client connect")?;
            clients.push(tokio::spawn(client(ws, ci, shared.clone())));
        }
    }
    Ok(clients)
}

/// What one round of the trace pairs measured.
struct BurstRound {
    /// Entries written to each channel.
    per_channel: u64,
    deliveries_expected: u64,
    deliveries_received: u64,
    /// From the first write to the last delivery.
    seconds: f64,
    publish_seconds: f64,
    rate: f64,
    /// CPU seconds the gateway used from the first write to the last delivery.
    gateway_cpu_s: f64,
    clients_that_missed_anything: usize,
    gateway_exit_code: Option<i32>,
}

impl BurstRound {
    /// The gateway's CPU per entry it fanned out (to 500 clients each), in microseconds.
    fn cpu_us_per_entry(&self) -> f64 {
        self.gateway_cpu_s * 1e6 / (self.per_channel * Channel::ALL.len() as u64) as f64
    }
}

/// One round of the trace pairs: a fresh gateway of `site` with its 1,500 clients, a burst of
/// `per_channel` entries on each channel as fast as possible (each with the trace context a
/// writer sampling by `sampler` leaves), then SIGTERM (the exporter flushes as it stops).
async fn burst_round(
    site: &Site,
    token: &str,
    streams: &[String],
    pad: &str,
    per_channel: u64,
    sampler: &Sampler,
    frames_alike: bool,
) -> anyhow::Result<BurstRound> {
    let mut gateway = start_gateway(site).await?;
    let pid = gateway.pid().context("the gateway is running")?;
    let http = format!("127.0.0.1:{}", gateway.http_port);
    let shared = Arc::new(Shared {
        last_receipt: Default::default(),
        received: Default::default(),
    });
    let clients = connect_clients(&http, token, &shared).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let producer = Producer::new(bus::connect(REDIS_URL).await?, 1_000_000);
    let cpu_start = cpu(pid);
    let start_us = now_us();
    let mut seq = 0;
    while seq < per_channel {
        let sent = now_us();
        let mut docs = Vec::with_capacity(100 * streams.len());
        for _ in 0..100 {
            for s in streams {
                let trace = upstream_trace(sampler);
                let mut doc = json!({"phase": 2, "seq": seq, "sent_us": sent, "title": "bench alert", "severity": "high", "pad": pad});
                if let (true, Some(trace)) = (frames_alike, &trace) {
                    doc["traceparent"] = json!(trace.traceparent);
                }
                docs.push((s.clone(), doc.to_string().into_bytes(), trace));
            }
            seq += 1;
        }
        producer.publish_batch_traced(&docs).await?;
    }
    let publish_seconds = (now_us() - start_us) as f64 / 1e6;
    let expected = seq * (CLIENTS_PER_CHANNEL * streams.len()) as u64;
    wait_for(&shared, 2, expected, Duration::from_secs(60)).await;
    let gateway_cpu_s = cpu(pid) - cpu_start;
    let received = shared.received[2].load(Ordering::Relaxed);
    let last = shared.last_receipt[2].load(Ordering::Relaxed);
    let seconds = last.saturating_sub(start_us) as f64 / 1e6;

    gateway.sigterm();
    let mut missed = 0;
    for c in clients {
        match tokio::time::timeout(Duration::from_secs(30), c).await {
            Ok(Ok(r)) if r.received[2] >= seq => {}
            _ => missed += 1,
        }
    }
    let mut exit = None;
    let _ = poll_until(
        Duration::from_millis(50),
        Duration::from_secs(30),
        "the gateway's exit",
        || {
            exit = gateway.exited().map(|status| status.code());
            let exited = exit.is_some();
            async move { Ok(exited) }
        },
    )
    .await;
    Ok(BurstRound {
        per_channel: seq,
        deliveries_expected: expected,
        deliveries_received: received,
        seconds,
        publish_seconds,
        rate: received as f64 / seconds.max(1e-6),
        gateway_cpu_s,
        clients_that_missed_anything: missed,
        gateway_exit_code: exit.flatten(),
    })
}

/// Pairs of rounds, each with a gateway of its own: untraced, and exporting its spans to an
/// OTLP receiver with 1% of traces sampled; the order swaps every pair (the machine's load
/// drifts). Each pair's ratio is traced/untraced deliveries per second; the median pair is
/// the figure.
async fn trace_rounds(
    site: &Site,
    token: &str,
    streams: &[String],
    pad: &str,
) -> anyhow::Result<serde_json::Value> {
    let receiver = OtlpReceiver::start().await;
    // The spans are `info` and the gateway's `RUST_LOG` filters them as it filters its logs:
    // the bench's `warn` would leave nothing to export. Both kinds of round get the same
    // filter (an untraced gateway makes no span).
    let (untraced_site, traced_site) = aurora_bench::trace_sites(site, &receiver, TRACE_SAMPLING);
    // What decided the flag of each entry's context upstream: the same rule at the same ratio.
    let sampler = Sampler::parse("parentbased_traceidratio", Some(TRACE_SAMPLING))
        .context("the sampler of the entries' contexts")?;
    let pairs = env_or("BENCH_WS_TRACE_PAIRS", 5usize)?.max(1);
    let per_channel = env_or("BENCH_WS_TRACE_BURST", TRACE_BURST_PER_CHANNEL)?.max(100);
    let frames_alike = env_or("BENCH_WS_TRACE_FRAMES_ALIKE", 0u8)? == 1;
    let mut rounds = Vec::with_capacity(2 * pairs);
    let mut ratios = Vec::with_capacity(pairs);
    let mut cpu_ratios = Vec::with_capacity(pairs);
    for pair in 0..pairs {
        let order = aurora_bench::pair_order(pair);
        let mut measured: [Option<BurstRound>; 2] = [None, None];
        for traced in order {
            let which = if traced { &traced_site } else { &untraced_site };
            let spans_before = receiver.spans().len();
            let r = burst_round(
                which,
                token,
                streams,
                pad,
                per_channel,
                &sampler,
                frames_alike,
            )
            .await?;
            // What the last entries' spans exported as the gateway stopped.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let spans = receiver.spans().len().saturating_sub(spans_before);
            if traced && spans == 0 {
                anyhow::bail!("the traced gateway exported no span: the round measured nothing");
            }
            let label = if traced { "traced" } else { "untraced" };
            println!(
                "  pair {}, {label}: {:.0} deliveries/s ({}/{} in {:.2} s, written in {:.2} s), gateway CPU {:.2} s ({:.1} us per entry), clients that missed anything {}, spans received {spans}",
                pair + 1,
                r.rate,
                r.deliveries_received,
                r.deliveries_expected,
                r.seconds,
                r.publish_seconds,
                r.gateway_cpu_s,
                r.cpu_us_per_entry(),
                r.clients_that_missed_anything,
            );
            rounds.push(json!({
                "pair": pair + 1,
                "traced": traced,
                "deliveries_per_second": r.rate.round(),
                "deliveries_expected": r.deliveries_expected,
                "deliveries_received": r.deliveries_received,
                "seconds_to_last_delivery": round_to(r.seconds, 3),
                "publish_seconds": round_to(r.publish_seconds, 3),
                "gateway_cpu_seconds": round_to(r.gateway_cpu_s, 2),
                "gateway_cpu_us_per_entry": round_to(r.cpu_us_per_entry(), 1),
                "clients_that_missed_anything": r.clients_that_missed_anything,
                "gateway_exit_code": r.gateway_exit_code,
                "spans_received": spans,
            }));
            measured[usize::from(traced)] = Some(r);
        }
        let [Some(untraced), Some(traced)] = measured else {
            anyhow::bail!("pair {} lacks a round", pair + 1);
        };
        let ratio = traced.rate / untraced.rate;
        let cpu_ratio = traced.cpu_us_per_entry() / untraced.cpu_us_per_entry();
        println!(
            "  pair {}: traced/untraced {ratio:.3} (gateway CPU per entry, traced/untraced {cpu_ratio:.3})",
            pair + 1
        );
        ratios.push(ratio);
        cpu_ratios.push(cpu_ratio);
    }
    let cost = TraceCost::of(&ratios).context("no pair measured")?;
    let cpu_cost = TraceCost::of(&cpu_ratios).context("no pair measured")?;
    println!(
        "  gateway CPU per entry, traced/untraced: median {:.3} ({:.3} to {:.3})",
        cpu_cost.median, cpu_cost.min, cpu_cost.max
    );
    println!("{}", cost.line());
    let mut out = json!({
        "what": format!("pairs of rounds, each with a fresh gateway (this binary as a child process, the bench's flags) and its {} clients ({CLIENTS_PER_CHANNEL} on each channel), {per_channel} entries written to each channel as fast as possible: untraced, and traced (OTEL_EXPORTER_OTLP_ENDPOINT to an OTLP/HTTP receiver in the bench's process, OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG={TRACE_SAMPLING}), the order swapped every pair", CLIENTS_PER_CHANNEL * 3),
        "entries_carry": "a traceparent when sampled, in both kinds of round, as a traced writer sampling at 1% leaves it: a new trace for about 1% of the entries by the trace-id ratio rule, nothing on the others; the gateway's parent-based sampler follows, so about 1% of the fan-out hops make a span",
        "frames_alike": frames_alike,
        "frames_are": if frames_alike { "the same in both kinds of round: each entry's document carries its traceparent itself (BENCH_WS_TRACE_FRAMES_ALIKE=1), so the traced gateway adds nothing to the frames" } else { "as the contract has them: the traced gateway adds the traceparent (about 70 bytes) to the frames of sampled entries (about 1%), the untraced one to none" },
        "sampler": "parentbased_traceidratio",
        "sampler_arg": TRACE_SAMPLING,
        "rounds": rounds,
        "pair_ratios": ratios.iter().map(|r| round_to(*r, 3)).collect::<Vec<_>>(),
        "ratio_is": "deliveries per second as fast as possible (the bench's figure: first write to last delivery), traced over untraced of the same pair",
        "gateway_cpu_per_entry_pair_ratios": cpu_ratios.iter().map(|r| round_to(*r, 3)).collect::<Vec<_>>(),
        "gateway_cpu_per_entry_ratio_median": round_to(cpu_cost.median, 3),
        "gateway_cpu_per_entry_ratio_is": "the gateway's CPU seconds from the first write to the last delivery per entry fanned out, traced over untraced of the same pair (above 1: tracing costs CPU)",
    });
    if let (Some(out), serde_json::Value::Object(figure)) = (out.as_object_mut(), cost.json()) {
        out.extend(figure);
    }
    Ok(out)
}

async fn wait_for(shared: &Shared, phase: usize, expected: u64, patience: Duration) {
    let deadline = Instant::now() + patience;
    let mut last = 0;
    let mut last_change = Instant::now();
    while Instant::now() < deadline {
        let got = shared.received[phase].load(Ordering::Relaxed);
        if got >= expected {
            return;
        }
        if got != last {
            last = got;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(5) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(
    mut ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    channel: usize,
    shared: Arc<Shared>,
) -> ClientReport {
    let mut report = ClientReport {
        channel,
        ..Default::default()
    };
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(text)) => {
                let now = now_us();
                let Some(probe) = Probe::scan(text.as_str()) else {
                    continue;
                };
                let phase = usize::from(probe.phase.min(2));
                report.received[phase] += 1;
                if phase == 1 {
                    report
                        .latencies_us
                        .push(now.saturating_sub(probe.sent_us).min(u32::MAX as u64) as u32);
                }
                shared.received[phase].fetch_add(1, Ordering::Relaxed);
                shared.last_receipt[phase].fetch_max(now, Ordering::Relaxed);
            }
            Ok(Message::Close(frame)) => {
                report.close_code = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    report
}
