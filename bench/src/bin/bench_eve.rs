//! `make bench-eve`: how fast eve-ingest moves Suricata events from the Redis list to
//! JetStream, and alerts to the alerts stream, against the raw JetStream publish rate (the
//! ceiling) measured in the same run with the same ack window.
//!
//! 1. Ceiling: N distinct events published straight to JetStream with `Nats-Msg-Id`, at most
//!    `window` acks outstanding, to the stream as the service declares it (its limits and the
//!    design's `flow` and `stats` consumers).
//! 2. Events, in rounds (`BENCH_EVE_ROUNDS`, default 3): N events LPUSHed (as Suricata does)
//!    into a staging list, renamed into the service's list at once; time until all N are
//!    stored in JetStream; then the ceiling once more (another namespace, the same events).
//!    Each round is compared with the mean of the ceilings just before and just after it,
//!    since the shared machine's load drifts within a run; the round with the median ratio is
//!    the figure, and every round is recorded.
//! 3. Alerts: M alert events the same way; time until all M alerts are on the stream.
//!
//! Before the service starts, `BENCH_EVE_IOCS` (100,000) indicators are put on the
//! namespace's `aurora:iocs` (generated domains, IPv4 addresses and SHA-256 hashes, half of
//! them as if imported from another site, plus a few that the samples show), so every round
//! runs with IOC sightings on and the set loaded; the sightings found, the time the load took
//! and the process's memory (the service runs in it) are recorded.
//!
//! With `AURORA_BENCH_TRACE=1` (`only`: these rounds alone, recorded into the last whole
//! run's result; a whole run without it keeps the trace rounds of the last result): the cost
//! of tracing at 1% sampling on the events' rate. Tracing is set up once per process, so these
//! rounds run the release binary `eve-ingest` as a child process (the settings above as
//! flags), untraced and traced alike. Pairs of rounds (`BENCH_EVE_TRACE_PAIRS`, default 5),
//! each a fresh service in a namespace of its own with the indicators loaded, taking
//! `BENCH_EVE_TRACE_N` events (default 100,000, the same lines every round) staged and renamed
//! into its list once it is ready: one untraced, one exporting spans over OTLP/HTTP to a
//! receiver in this process (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`,
//! `OTEL_TRACES_SAMPLER_ARG=0.01`), the order swapped every pair. Suricata's lines carry no
//! trace context, so every batch is a root sampled by the ratio (about 1% of the batches make
//! spans; a traced round's events are checked to carry a `traceparent`, an untraced round's
//! none, and the traced rounds to have exported spans). The figure is the median of the
//! pairs' traced/untraced ratios of events per second, with their spread, and the service's
//! CPU per event beside it (`AURORA_BENCH_EVE_LOG`: the child's log filter, `warn`).
//!
//! The samples come from `../shared/data/suricata` (all five files) when present, else from
//! the test fixtures; each repetition gets a `bench_seq` field so that every event is distinct
//! (identical bytes would be deduplicated). Everything runs in a namespace of its own, which
//! is deleted at the end. Writes `bench/results/eve.json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream::context::ContextBuilder;
use async_nats::jetstream::message::PublishMessage;
use aurora_bench::{
    cpu_secs, env_or, jetstream_len, median_by, poll_until, proc_status_kib, round_to, span_names,
    spans_since, trace_pairs, InProcess, PairRound, TraceRounds, TRACE_SAMPLING,
};
use aurora_core::jetstream::{ensure_consumer, ensure_stream, suricata_stream_config};
use aurora_core::service::LaunchOptions;
use aurora_core::trace::{self, TraceContext};
use aurora_core::{bus, Names};
use aurora_testkit::cleanup::Cleanup;
use aurora_testkit::otlp::OtlpReceiver;
use aurora_testkit::process::{Site, Svc};
use aurora_testkit::redis::xlen;
use aurora_testkit::{workspace_path, RedisServer, NATS_URL, REDIS_URL};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use eve_ingest::{EveIngest, Settings, SERVICE};

/// How often a timed phase's end is polled for.
const POLL: Duration = Duration::from_millis(10);

/// CPU seconds used so far by this process (the service runs in it, and the ceiling's client)
/// and by the shared Redis and NATS servers on loopback, from /proc: what a phase cost, beside
/// how long it took. The servers also serve whatever else runs on the machine (other tests), so
/// their figures are an upper bound.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    bench: f64,
    redis: f64,
    nats: f64,
}

impl Cpu {
    fn now(servers: &Servers) -> Self {
        Self {
            bench: cpu_secs(std::process::id()).unwrap_or(0.0),
            redis: servers.redis.and_then(cpu_secs).unwrap_or(0.0),
            nats: servers.nats.and_then(cpu_secs).unwrap_or(0.0),
        }
    }

    /// µs of CPU per event between `self` and `later`, by process, as JSON.
    fn per_event(&self, later: &Cpu, events: usize) -> serde_json::Value {
        let us = |a: f64, b: f64| round_to((b - a) * 1e6 / events.max(1) as f64, 1);
        serde_json::json!({
            "bench_process": us(self.bench, later.bench),
            "redis": us(self.redis, later.redis),
            "nats": us(self.nats, later.nats),
            "total": us(self.bench + self.redis + self.nats, later.bench + later.redis + later.nats),
        })
    }
}

/// The pids of the shared servers (found by name and port).
struct Servers {
    redis: Option<u32>,
    nats: Option<u32>,
}

impl Servers {
    fn find() -> Self {
        let port = |url: &str| url.rsplit(':').next().unwrap_or("").to_string();
        Self {
            redis: server_pid("redis-server", &port(REDIS_URL)),
            nats: server_pid("nats-server", &port(NATS_URL)),
        }
    }
}

/// A process named `name` whose command line mentions `port`.
fn server_pid(name: &str, port: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            (comm.trim() == name && String::from_utf8_lossy(&cmdline).contains(port)).then_some(pid)
        })
}

/// The sample lines and where they came from.
fn samples() -> anyhow::Result<(Vec<Vec<u8>>, Vec<String>)> {
    let shared = workspace_path("../shared/data/suricata");
    let (dir, files): (PathBuf, &[&str]) = if shared.join("eve-panther.jsonl").exists() {
        (
            shared,
            &[
                "eve-surevego.jsonl",
                "eve-suricata-verify.jsonl",
                "eve-telegraf.jsonl",
                "eve-panther.jsonl",
                "eve-s7ot.jsonl",
            ],
        )
    } else {
        (
            workspace_path(&format!("services/{SERVICE}/tests/fixtures")),
            &[
                "eve-surevego.jsonl",
                "eve-suricata-verify.jsonl",
                "eve-telegraf.jsonl",
            ],
        )
    };
    let mut lines = Vec::new();
    for f in files {
        let text = std::fs::read(dir.join(f)).with_context(|| format!("reading {f}"))?;
        lines.extend(
            text.split(|b| *b == b'\n')
                .map(|l| l.trim_ascii().to_vec())
                .filter(|l| l.ends_with(b"}")),
        );
    }
    let used = files
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect();
    Ok((lines, used))
}

/// `n` distinct lines cycling through `base`: `{..., "bench_seq": i}`.
fn distinct(base: &[Vec<u8>], n: usize, offset: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let line = &base[i % base.len()];
            let mut out = line[..line.len() - 1].to_vec();
            out.extend_from_slice(format!(",\"bench_seq\":{}}}", offset + i).as_bytes());
            out
        })
        .collect()
}

fn event_type(line: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["event_type"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The ceiling's stream: the Suricata stream as the service declares it, with the design's
/// `flow` and `stats` consumers (NATS matches every stored message against their filters),
/// so that the ceiling and the service write to streams that cost the server the same.
async fn ceiling_stream(js: &async_nats::jetstream::Context, names: &Names) -> anyhow::Result<()> {
    let stream = names.suricata_stream();
    ensure_stream(js, &suricata_stream_config(names)).await?;
    for consumer in eve_ingest::stream_setup::design_consumers(names) {
        ensure_consumer(js, &stream, &consumer).await?;
    }
    Ok(())
}

/// The ceiling: publish-with-ack, `window` acks outstanding; the rate, and the CPU per event
/// it took (see [`Cpu`]).
async fn raw_publish_cpu(
    client: async_nats::Client,
    names: &Names,
    lines: &[Vec<u8>],
    window: usize,
    servers: &Servers,
) -> anyhow::Result<(f64, serde_json::Value)> {
    let js = ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(window + 1)
        .build(client);
    let sem = Arc::new(Semaphore::new(window));
    let mut inflight = FuturesUnordered::new();
    // Subjects and ids are worked out before the clock starts: the ceiling is JetStream's.
    let prepared: Vec<(String, String, Bytes)> = lines
        .iter()
        .map(|line| {
            (
                names.suricata_subject(&event_type(line)),
                format!("{:x}", Sha256::digest(line)),
                Bytes::from(line.clone()),
            )
        })
        .collect();
    let cpu = Cpu::now(servers);
    let started = Instant::now();
    for (subject, id, payload) in prepared {
        let permit = loop {
            tokio::select! {
                biased;
                Some(r) = inflight.next(), if !inflight.is_empty() => { let _: Result<(), anyhow::Error> = r; }
                p = sem.clone().acquire_owned() => break p?,
            }
        };
        let ack = js
            .send_publish(
                subject,
                PublishMessage::build().payload(payload).message_id(id),
            )
            .await?;
        inflight.push(async move {
            ack.await?;
            drop(permit);
            Ok(())
        });
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    let rate = lines.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, cpu.per_event(&Cpu::now(servers), lines.len())))
}

/// [`raw_publish_cpu`]'s rate alone.
async fn raw_publish(
    client: async_nats::Client,
    names: &Names,
    lines: &[Vec<u8>],
    window: usize,
) -> anyhow::Result<f64> {
    let servers = Servers {
        redis: None,
        nats: None,
    };
    Ok(raw_publish_cpu(client, names, lines, window, &servers)
        .await?
        .0)
}

/// Puts `lines` into the service's list at once (LPUSH into a staging key, then RENAME).
async fn stage(conn: &mut bus::Conn, names: &Names, lines: &[Vec<u8>]) -> anyhow::Result<()> {
    let staging = names.state_key("bench", "staging");
    for chunk in lines.chunks(5_000) {
        let mut pipe = redis::pipe();
        for line in chunk {
            pipe.cmd("LPUSH").arg(&staging).arg(line).ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

async fn release(conn: &mut bus::Conn, names: &Names) -> anyhow::Result<Instant> {
    let staging = names.state_key("bench", "staging");
    redis::cmd("RENAME")
        .arg(&staging)
        .arg(names.suricata_list())
        .query_async::<()>(conn)
        .await?;
    Ok(Instant::now())
}

/// Indicators of the samples (the shared data and the fixtures both show them): a domain by
/// suffix, a TLS SNI's name, an address, as another site would share them.
const MATCHING_IOCS: &[(&str, &str)] = &[
    ("domain", "dropbox.com"),
    ("domain", "www.google.com"),
    ("domain", "debian.org"),
    ("ipv4", "8.8.4.4"),
    ("ipv4", "82.165.177.154"),
];

/// Puts `n` generated indicators (and [`MATCHING_IOCS`]) on `aurora:iocs`: 60% domains, 30%
/// IPv4 addresses (198.18.0.0/15, which no sample holds), 10% SHA-256; every other one from
/// `site-b`.
async fn share_iocs(conn: &mut bus::Conn, names: &Names, n: usize) -> anyhow::Result<usize> {
    let stream = names.iocs();
    let doc = |i: usize| -> serde_json::Value {
        let (kind, value) = match i % 10 {
            0..=5 => ("domain", format!("c2-{i}.bench-ioc.example")),
            6..=8 => (
                "ipv4",
                format!("198.{}.{}.{}", 18 + (i >> 16) % 2, (i >> 8) & 255, i & 255),
            ),
            _ => ("sha256", format!("{:x}", Sha256::digest(i.to_le_bytes()))),
        };
        let mut doc = serde_json::json!({"id": format!("bench-ioc-{i}"), "type": kind, "value": value,
                                         "tlp": "TLP:AMBER", "confidence": 0.7});
        if i % 2 == 1 {
            doc["origin_site"] = "site-b".into();
        }
        doc
    };
    let mut docs: Vec<serde_json::Value> = (0..n).map(doc).collect();
    for (i, (kind, value)) in MATCHING_IOCS.iter().enumerate() {
        docs.push(
            serde_json::json!({"id": format!("bench-match-{i}"), "type": kind, "value": value,
                                     "tlp": "TLP:GREEN", "origin_site": "site-b"}),
        );
    }
    for chunk in docs.chunks(5_000) {
        let mut pipe = redis::pipe();
        for d in chunk {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg(bus::DATA_FIELD)
                .arg(serde_json::to_vec(d)?)
                .ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(docs.len())
}

/// The memory of eve-ingest as a process (the release binary, idle on a list of its own,
/// the stream left alone): once with the IOCs of `names` loaded, once with sightings off.
async fn process_memory(names: &Names) -> anyhow::Result<serde_json::Value> {
    let binary = aurora_bench::release_binary(SERVICE)?;
    let site = Site::new(names, "bench", 0).with_binary(Svc::EveIngest, &binary);
    let idle_list = names.state_key("bench", "idle");
    let mut rss = Vec::new();
    for sightings in [true, false] {
        let mut flags = vec![
            ("list-key", idle_list.as_str()),
            ("no-stream-setup", "true"),
        ];
        if !sightings {
            flags.push(("no-ioc-sightings", "true"));
        }
        let mut service = site.start(Svc::EveIngest, &flags).await;
        let loaded = service.metric("aurora_eve_ingest_iocs_loaded", &[]).await;
        // Settled: a few seconds after ready.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pid = service.pid().context("eve-ingest exited")?;
        rss.push((
            proc_status_kib(pid, "VmRSS").unwrap_or(0),
            proc_status_kib(pid, "VmHWM").unwrap_or(0),
            loaded,
        ));
        service.terminate().await;
    }
    let [(on_rss, on_hwm, loaded), (off_rss, off_hwm, _)] = rss[..] else {
        bail!("two starts expected");
    };
    println!(
        "eve-ingest process: {} MiB RSS with {loaded} IOCs loaded (peak {} MiB), {} MiB with sightings off (peak {} MiB)",
        on_rss / 1024,
        on_hwm / 1024,
        off_rss / 1024,
        off_hwm / 1024
    );
    Ok(serde_json::json!({
        "what": "the eve-ingest release binary as a process of its own, idle after start (3 s after ready), with the IOCs loaded and again with --no-ioc-sightings",
        "iocs_loaded": loaded,
        "rss_kib_with_iocs": on_rss,
        "peak_rss_kib_with_iocs": on_hwm,
        "rss_kib_sightings_off": off_rss,
        "peak_rss_kib_sightings_off": off_hwm,
        "iocs_cost_kib": on_rss.saturating_sub(off_rss),
        "bytes_per_ioc": if loaded > 0.0 { ((on_rss.saturating_sub(off_rss) * 1024) as f64 / loaded).round() } else { 0.0 },
    }))
}

/// The sighting alerts on the alerts stream.
async fn sighting_alerts(conn: &mut bus::Conn, stream: &str) -> anyhow::Result<u64> {
    let mut after = "0-0".to_string();
    let mut found = 0;
    loop {
        let entries = bus::range(conn, stream, &after, 10_000).await?;
        let Some(last) = entries.last() else {
            return Ok(found);
        };
        after = last.id.clone();
        found += entries
            .iter()
            .filter_map(|e| e.data.as_deref())
            .filter(|d| {
                serde_json::from_slice::<serde_json::Value>(d)
                    .is_ok_and(|v| v["kind"] == eve_ingest::sightings::ALERT_KIND)
            })
            .count() as u64;
    }
}

/// What one run measured (rates per second; counts at the end).
struct Round {
    ceiling_before: f64,
    ceiling_after: f64,
    /// Mean of the two.
    ceiling: f64,
    events_per_s: f64,
    mix_alerts_per_s: f64,
    /// CPU per event of the service's phase and of the ceiling after it.
    cpu_service: serde_json::Value,
    cpu_ceiling_after: serde_json::Value,
}

impl Round {
    fn ratio(&self) -> f64 {
        self.events_per_s / self.ceiling
    }
}

struct Measured {
    iocs: serde_json::Value,
    replica_wait: serde_json::Value,
    rounds: Vec<Round>,
    alert_ceiling: f64,
    alerts_per_s: f64,
    final_events: u64,
    final_alerts: u64,
}

/// One round of `lines` through the service against a Redis of its own with one replica and
/// the replica wait on, between raw-publish ceilings (the first is `ceiling_before`, the
/// ceiling measured last).
async fn replica_wait_round(
    settings: &Settings,
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    names: &Names,
    lines: Vec<Vec<u8>>,
    ceiling_before: f64,
) -> anyhow::Result<serde_json::Value> {
    let primary = RedisServer::start();
    let replica_of = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &replica_of]);
    let mut conn = bus::connect(&primary.url()).await?;
    let info_conn = conn.clone();
    poll_until(POLL, Duration::from_secs(20), "the replica online", || {
        let mut c = info_conn.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            Ok(info.contains("connected_slaves:1") && info.contains("state=online"))
        }
    })
    .await?;
    // Every connection made from now on in this process carries the wait.
    aurora_core::redis_link::set_replica_wait(Some(aurora_core::bus::ReplicaWait {
        replicas: 1,
        timeout: Duration::from_secs(2),
    }));
    let rw_names = Names::new(&format!("{}rw", names.namespace()))?;
    let mut rw = settings.clone();
    rw.consumers = eve_ingest::stream_setup::design_consumers(&rw_names);
    rw.names = rw_names.clone();
    rw.redis_url = primary.url();
    let service = InProcess::launch(EveIngest::new(rw), LaunchOptions::local("bench-rw")).await?;
    let readiness = service.readiness();
    poll_until(
        POLL,
        Duration::from_secs(30),
        "the service ready",
        || async move { Ok(readiness.is_ready()) },
    )
    .await?;
    let mix = lines.iter().filter(|l| event_type(l) == "alert").count();
    stage(&mut conn, &rw_names, &lines).await?;
    let t0 = release(&mut conn, &rw_names).await?;
    let stream = rw_names.suricata_stream();
    let n = lines.len() as u64;
    let t1 = poll_until(
        POLL,
        Duration::from_secs(600),
        "all events in JetStream",
        || {
            let (js, stream) = (js, &stream);
            async move { Ok(jetstream_len(js, stream).await >= n) }
        },
    )
    .await?;
    let alerts_key = rw_names.alerts();
    let t1a = poll_until(
        POLL,
        Duration::from_secs(60),
        "all alerts of the mix",
        || {
            let mut c = conn.clone();
            let k = alerts_key.clone();
            async move { Ok(xlen(&mut c, &k).await >= mix as u64) }
        },
    )
    .await?;
    let _ = tokio::time::timeout(Duration::from_secs(30), service.stop()).await;
    let _ = js.delete_stream(&stream).await;
    let events_per_s = n as f64 / (t1 - t0).as_secs_f64();
    let after_names = Names::new(&format!("{}rwa", names.namespace()))?;
    ceiling_stream(js, &after_names).await?;
    let ceiling_after = raw_publish(
        client.clone(),
        &after_names,
        &lines,
        settings.publish_window,
    )
    .await;
    let _ = js.delete_stream(after_names.suricata_stream()).await;
    let ceiling_after = ceiling_after?;
    let ceiling = (ceiling_before + ceiling_after) / 2.0;
    println!(
        "replica wait (Redis with one replica, --redis-wait-replicas 1): {events_per_s:.0} events/s ({:.1}% of the mean ceiling {ceiling:.0}; ceiling after {ceiling_after:.0})",
        100.0 * events_per_s / ceiling
    );
    drop(replica);
    Ok(serde_json::json!({
        "what": "the same kind of events (distinct ones) through a second eve-ingest against a Redis of its own with one replica on loopback, every alert write waiting for the replica (--redis-wait-replicas 1)",
        "events": n,
        "events_per_s": events_per_s.round(),
        "alerts_in_mix_per_s": (mix as f64 / (t1a - t0).as_secs_f64()).round(),
        "ceiling_before_per_s": ceiling_before.round(),
        "ceiling_after_per_s": ceiling_after.round(),
        "ratio": round_to(events_per_s / ceiling, 3),
    }))
}

/// What one round of the trace pairs measured.
struct TraceRound {
    events: usize,
    /// From the release of the lines until all are stored in JetStream.
    seconds: f64,
    rate: f64,
    /// CPU seconds the service used in that time.
    service_cpu_s: f64,
    /// The last stored event carries a `traceparent` (an event of a traced service does
    /// when its batch was sampled; none of an untraced one).
    carries_context: bool,
    exit_ok: bool,
}

/// The in-process rounds' settings as the release binary's flags (the harness's shorter
/// `--block` overridden).
fn service_flags(settings: &Settings) -> Vec<(&'static str, String)> {
    let mut flags = vec![
        ("batch", settings.batch.to_string()),
        ("block", format!("{}ms", settings.block.as_millis())),
        ("publish-window", settings.publish_window.to_string()),
        ("inflight-batches", settings.inflight_batches.to_string()),
        ("stream-maxlen", settings.stream_maxlen.to_string()),
    ];
    if settings.sightings.is_none() {
        flags.push(("no-ioc-sightings", "true".into()));
    }
    flags
}

/// Whether the last message of `stream` carries a trace context in its headers.
async fn last_carries_context(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> anyhow::Result<bool> {
    let mut stream = js.get_stream(stream).await?;
    let last = stream.info().await?.state.last_sequence;
    let message = stream.get_raw_message(last).await?;
    // Read here, not by `TraceContext::from_nats_headers`, which reads nothing in a process
    // that does not trace (this one).
    let traceparent = message.headers.get(trace::TRACEPARENT_FIELD);
    Ok(traceparent.is_some_and(|v| TraceContext::parse(v.as_str(), None).is_some()))
}

/// One round of the trace pairs, in the namespace of `site` (a fresh one): `iocs` indicators
/// shared and `lines` staged, a fresh service of `site` (the release binary) started and
/// ready (the indicators loaded), then the lines released into its list; timed until all
/// are stored in JetStream (then the alerts of the mix on the alerts stream, untimed), then
/// SIGTERM (the exporter flushes as it stops) and the namespace deleted.
async fn trace_round(
    site: &Site,
    flags: &[(&str, &str)],
    conn: &mut bus::Conn,
    js: &async_nats::jetstream::Context,
    lines: &[Vec<u8>],
    iocs: usize,
) -> anyhow::Result<TraceRound> {
    let names = &site.names;
    let _cleanup = Cleanup::new(names, NATS_URL, &[REDIS_URL]);
    share_iocs(conn, names, iocs).await?;
    stage(conn, names, lines).await?;
    let mut service = site.start(Svc::EveIngest, flags).await;
    let pid = service.pid().context("eve-ingest exited")?;
    let stream = names.suricata_stream();
    let n = lines.len();
    let cpu_start = cpu_secs(pid).unwrap_or(f64::NAN);
    let started = release(conn, names).await?;
    let stream_ref = &stream;
    let done = poll_until(
        POLL,
        Duration::from_secs(600),
        "all events in JetStream",
        || async move { Ok(jetstream_len(js, stream_ref).await >= n as u64) },
    )
    .await?;
    let service_cpu_s = cpu_secs(pid).unwrap_or(f64::NAN) - cpu_start;
    let seconds = done.duration_since(started).as_secs_f64();
    let carries_context = last_carries_context(js, &stream).await?;
    let mix = lines.iter().filter(|l| event_type(l) == "alert").count() as u64;
    let alerts = names.alerts();
    poll_until(
        POLL,
        Duration::from_secs(60),
        "all alerts of the mix",
        || {
            let (mut c, k) = (conn.clone(), &alerts);
            async move { Ok(xlen(&mut c, k).await >= mix) }
        },
    )
    .await?;
    let exit_ok = service.terminate().await.success();
    Ok(TraceRound {
        events: n,
        seconds,
        rate: n as f64 / seconds.max(1e-6),
        service_cpu_s,
        carries_context,
        exit_ok,
    })
}

/// Pairs of rounds, each with a service of its own (the release binary, a child process, in
/// a namespace of the round's own with the indicators loaded): untraced, and exporting its
/// spans to an OTLP receiver with 1% of traces sampled; the order swaps every pair (the
/// machine's load drifts). Each pair's ratio is traced/untraced events per second; the median
/// pair is the figure.
async fn trace_rounds(
    settings: &Settings,
    names: &Names,
    base: &[Vec<u8>],
    iocs: usize,
    conn: &mut bus::Conn,
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<serde_json::Value> {
    let bin = aurora_bench::release_binary(SERVICE)?;
    let receiver = OtlpReceiver::start().await;
    let mut site = Site::new(names, "site-a", 0).with_binary(Svc::EveIngest, &bin);
    site.redis_url = REDIS_URL.to_string();
    site.log_filter = std::env::var("AURORA_BENCH_EVE_LOG").unwrap_or_else(|_| "warn".into());
    let (untraced_site, traced_site) = aurora_bench::trace_sites(&site, &receiver, TRACE_SAMPLING);
    let owned = service_flags(settings);
    let flags: Vec<(&str, &str)> = owned.iter().map(|(f, v)| (*f, v.as_str())).collect();
    let pairs = env_or("BENCH_EVE_TRACE_PAIRS", 5usize)?.max(1);
    let n = env_or("BENCH_EVE_TRACE_N", 100_000usize)?.max(1);
    // The same lines every round: each round has a stream and alert state of its own.
    let lines = distinct(base, n, 0);
    let batches = n.div_ceil(settings.batch.max(1));
    let mut traced_spans = 0;
    let mut traced_span_names = std::collections::BTreeMap::new();
    let measured = trace_pairs(pairs, async |pair, traced| {
        let label = if traced { "traced" } else { "untraced" };
        let mut round_site = (if traced { &traced_site } else { &untraced_site }).clone();
        round_site.names = Names::new(&format!(
            "{}t{}{}",
            names.namespace(),
            pair + 1,
            &label[..1]
        ))?;
        let spans_before = receiver.spans().len();
        let r = trace_round(&round_site, &flags, conn, js, &lines, iocs).await?;
        let received = spans_since(&receiver, spans_before).await;
        let spans = received.len();
        // Only a sampled batch's events carry a context, so only the untraced case is sure.
        if !traced && r.carries_context {
            bail!("the untraced eve-ingest put a trace context on its events");
        }
        if traced {
            traced_spans += spans;
            for (name, count) in span_names(&received, round_site.names.namespace()) {
                *traced_span_names.entry(name).or_insert(0) += count;
            }
        }
        let cpu_per_event = r.service_cpu_s / r.events as f64;
        println!(
            "  pair {}, {label}: {:.0} events/s ({} in {:.3} s), service CPU {:.2} s ({:.1} µs per event), exit {}, spans received {spans}",
            pair + 1,
            r.rate,
            r.events,
            r.seconds,
            r.service_cpu_s,
            1e6 * cpu_per_event,
            if r.exit_ok { "0" } else { "not 0" }
        );
        Ok(PairRound {
            rate: r.rate,
            cpu_per_message: cpu_per_event,
            json: serde_json::json!({
                "events_per_s": r.rate.round(),
                "events": r.events,
                "seconds": round_to(r.seconds, 3),
                "service_cpu_seconds": round_to(r.service_cpu_s, 2),
                "service_cpu_us_per_event": round_to(1e6 * cpu_per_event, 1),
                "events_carry_traceparent": r.carries_context,
                "exit_ok": r.exit_ok,
                "spans_received": spans,
            }),
        })
    })
    .await?;
    // About 1% of the batches are sampled (two spans each): a round may by chance export
    // none, the traced rounds together may not.
    if traced_spans == 0 {
        bail!("the traced eve-ingest exported no span in {pairs} rounds: they measured nothing");
    }
    let cost = measured.cost()?;
    let mut out = serde_json::json!({
        "what": format!("pairs of rounds, each with a fresh eve-ingest (the release binary as a child process, --batch {}, --block {}ms, --publish-window {}, --inflight-batches {}, sightings {}) in a namespace of the round's own with {iocs} indicators on its aurora:iocs (loaded before ready), taking {n} events (the same lines every round, as the whole run's first round) staged in a list and renamed into its list at once: untraced, and traced (OTEL_EXPORTER_OTLP_ENDPOINT to an OTLP/HTTP receiver in the bench's process, OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG={TRACE_SAMPLING}), the order swapped every pair", settings.batch, settings.block.as_millis(), settings.publish_window, settings.inflight_batches, if settings.sightings.is_some() { "on" } else { "off" }),
        "events_carry": "no trace context (Suricata writes none): every batch is a root, sampled by the trace-id ratio rule; a sampled batch makes two spans (eve batch, the stream's publish) and its events carry its context; an unsampled one carries nothing (checked: the last stored event of an untraced round has no traceparent header; of a traced round, one only when its batch was sampled)",
        "batches_per_round": batches,
        "sampler": "parentbased_traceidratio",
        "sampler_arg": TRACE_SAMPLING,
        "events_per_round": n,
        "timed": "from the release of the lines (RENAME into the service's list, the service ready) until JetStream holds them all (polled every 10 ms); the alerts of the mix on the alerts stream checked after, untimed",
        "ratio_is": "events per second to JetStream, traced over untraced of the same pair",
        "service_cpu_per_message_ratio_is": "eve-ingest's CPU seconds (utime + stime from /proc) from the release to the last event stored, per event, traced over untraced of the same pair (above 1: tracing costs CPU)",
        "spans_received_traced_rounds": traced_spans,
        "spans_by_name_traced_rounds": traced_span_names,
    });
    if let Some(out) = out.as_object_mut() {
        out.extend(measured.json(&cost));
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = env_or("BENCH_EVE_EVENTS", 100_000)?;
    let rounds = env_or("BENCH_EVE_ROUNDS", 3usize)?.max(1);
    let m: usize = env_or("BENCH_EVE_ALERTS", 50_000)?;
    let ioc_count: usize = env_or("BENCH_EVE_IOCS", 100_000)?;
    // `off`: the service without sightings, to see what they cost in the same conditions.
    let sightings_on = env_or("BENCH_EVE_SIGHTINGS", "on".to_string())? != "off";
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let mut settings = Settings::new(names.clone(), REDIS_URL, NATS_URL);
    settings.block = Duration::from_millis(100);
    settings.batch = env_or("BENCH_EVE_BATCH", settings.batch)?;
    settings.publish_window = env_or("BENCH_EVE_WINDOW", settings.publish_window)?;
    settings.inflight_batches = env_or("BENCH_EVE_INFLIGHT", settings.inflight_batches)?;
    let window = settings.publish_window;
    if !sightings_on {
        settings.sightings = None;
    }

    let (base, used) = samples()?;
    let events = distinct(&base, n, 0);
    let alert_base: Vec<Vec<u8>> = base
        .iter()
        .filter(|l| event_type(l) == "alert")
        .cloned()
        .collect();
    let alert_events = distinct(&alert_base, m, n);
    let alerts_in_mix = events.iter().filter(|l| event_type(l) == "alert").count();
    println!(
        "{SERVICE} benchmark: {n} events ({alerts_in_mix} alerts) from {} sample lines, then {m} alert events; window {window}, batch {}, {} batches in flight",
        base.len(),
        settings.batch,
        settings.inflight_batches
    );

    let mut conn = bus::connect(REDIS_URL).await?;
    let client = async_nats::connect(NATS_URL).await?;
    let js = async_nats::jetstream::new(client.clone());
    let trace = TraceRounds::from_env();
    if trace == TraceRounds::Only {
        println!("tracing at 1% sampling, the trace rounds alone: pairs of rounds of the release binary, untraced and traced (OTLP/HTTP to a receiver in this process), the order swapped every pair");
        let traced = trace_rounds(&settings, &names, &base, ioc_count, &mut conn, &js).await?;
        aurora_bench::record_trace_rounds_alone("eve", traced)?;
        return Ok(());
    }
    let mut alerts_in_mix_total = 0;
    let servers = Servers::find();
    let result = async {
        // 1. The ceiling.
        ceiling_stream(&js, &names).await?;
        let ceiling = raw_publish(client.clone(), &names, &events, window).await?;
        println!("raw JetStream publish (ceiling): {ceiling:.0} events/s");
        js.delete_stream(names.suricata_stream()).await?;
        // The same for alert events only (larger lines): what bounds the alert phase, which
        // publishes every alert event too.
        ceiling_stream(&js, &names).await?;
        let alert_ceiling = raw_publish(client.clone(), &names, &alert_events, window).await?;
        println!("raw JetStream publish of the alert events: {alert_ceiling:.0} events/s");
        js.delete_stream(names.suricata_stream()).await?;

        // 2. The service, events, in rounds: ceiling, service, ceiling, service, ... Each
        // round's figure is compared with the mean of the ceilings just before and just after
        // it (the shared machine's load drifts within a run); the median round is reported.
        // It starts with the indicators on aurora:iocs, so it loads them first.
        let shared = share_iocs(&mut conn, &names, ioc_count).await?;
        let rss_before = proc_status_kib(std::process::id(), "VmRSS").unwrap_or(0);
        let launched_at = Instant::now();
        let service =
            InProcess::launch(EveIngest::new(settings.clone()), LaunchOptions::local("bench"))
                .await?;
        let readiness = service.readiness();
        poll_until(POLL, Duration::from_secs(60), "the service ready", || async move {
            Ok(readiness.is_ready())
        })
        .await?;
        let ready_after = launched_at.elapsed();
        let rss_loaded = proc_status_kib(std::process::id(), "VmRSS").unwrap_or(0);
        println!(
            "{shared} IOCs on {}: the service ready after {:.2} s; process RSS {} MiB before its start, {} MiB with the IOCs loaded",
            names.iocs(),
            ready_after.as_secs_f64(),
            rss_before / 1024,
            rss_loaded / 1024
        );
        let stream = names.suricata_stream();
        let alerts_key = names.alerts();
        let mut measured_rounds = Vec::with_capacity(rounds);
        let mut ceiling_before = ceiling;
        for round in 0..rounds {
            // Distinct events every round (and distinct from the alert phase's).
            let lines = if round == 0 {
                events.clone()
            } else {
                distinct(&base, n, n + m + round * n)
            };
            let mix = lines.iter().filter(|l| event_type(l) == "alert").count();
            stage(&mut conn, &names, &lines).await?;
            let cpu0 = Cpu::now(&servers);
            let t0 = release(&mut conn, &names).await?;
            let stored = ((round + 1) * n) as u64;
            let (js_ref, stream_ref) = (&js, &stream);
            let t1 = poll_until(
                POLL,
                Duration::from_secs(600),
                "all events in JetStream",
                || async move { Ok(jetstream_len(js_ref, stream_ref).await >= stored) },
            )
            .await?;
            let cpu_service = cpu0.per_event(&Cpu::now(&servers), n);
            let events_per_s = n as f64 / (t1 - t0).as_secs_f64();
            let alerts_so_far = alerts_in_mix_total + mix;
            let t1a = poll_until(POLL, Duration::from_secs(60), "all alerts of the mix", || {
                let mut c = conn.clone();
                let k = alerts_key.clone();
                async move { Ok(xlen(&mut c, &k).await >= alerts_so_far as u64) }
            })
            .await?;
            alerts_in_mix_total = alerts_so_far;
            let mix_alerts_per_s = mix as f64 / (t1a - t0).as_secs_f64();
            // The ceiling once more, right after (in a namespace of its own, the service
            // still running idle).
            let after_names = Names::new(&format!("{}a{round}", names.namespace()))?;
            ceiling_stream(&js, &after_names).await?;
            let ceiling_after =
                raw_publish_cpu(client.clone(), &after_names, &events, window, &servers).await;
            let _ = js.delete_stream(after_names.suricata_stream()).await;
            let (ceiling_after, cpu_ceiling_after) = ceiling_after?;
            let ceiling = (ceiling_before + ceiling_after) / 2.0;
            println!(
                "round {}: {SERVICE} events -> JetStream: {events_per_s:.0} events/s ({:.1}% of the mean ceiling {ceiling:.0}; ceiling after {ceiling_after:.0}); CPU µs per event: service phase {cpu_service}, ceiling {cpu_ceiling_after}",
                round + 1,
                100.0 * events_per_s / ceiling
            );
            measured_rounds.push(Round {
                ceiling_before,
                ceiling_after,
                ceiling,
                events_per_s,
                mix_alerts_per_s,
                cpu_service,
                cpu_ceiling_after,
            });
            ceiling_before = ceiling_after;
        }

        // 3. The service, alerts only.
        stage(&mut conn, &names, &alert_events).await?;
        let t2 = release(&mut conn, &names).await?;
        let t3 = poll_until(POLL, Duration::from_secs(600), "all alerts on the stream", || {
            let mut c = conn.clone();
            let k = alerts_key.clone();
            async move { Ok(xlen(&mut c, &k).await >= (alerts_in_mix_total + m) as u64) }
        })
        .await?;
        let alerts_per_s = m as f64 / (t3 - t2).as_secs_f64();
        println!(
            "{SERVICE} alerts -> {}: {alerts_per_s:.0} alerts/s",
            names.alerts()
        );
        let final_events = jetstream_len(&js, &stream).await;
        let final_alerts = xlen(&mut conn, &alerts_key).await;
        let sightings = sighting_alerts(&mut conn, &alerts_key).await?;
        let pid = std::process::id();
        let memory = serde_json::json!({
            "what": "RSS of the benchmark's process, which runs eve-ingest in-process (with its IOC set) beside the benchmark's own buffers of lines; the IOC set's cost is the difference at start",
            "rss_before_service_kib": rss_before,
            "rss_service_ready_with_iocs_kib": rss_loaded,
            "rss_after_rounds_kib": proc_status_kib(pid, "VmRSS").unwrap_or(0),
            "peak_rss_kib": proc_status_kib(pid, "VmHWM").unwrap_or(0),
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), service.stop()).await;
        let process = process_memory(&names).await?;

        // 4. The replica wait: the same events against a Redis of its own with one replica,
        // every alert write waiting for it (--redis-wait-replicas 1), between two ceilings.
        let replica_wait = replica_wait_round(
            &settings,
            &client,
            &js,
            &names,
            distinct(&base, n, n + m + (rounds + 1) * n),
            ceiling_before,
        )
        .await?;
        let iocs = serde_json::json!({
            "sightings_on": sightings_on,
            "iocs_on_stream": shared,
            "generated": ioc_count,
            "matching_samples": MATCHING_IOCS.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>(),
            "service_ready_after_s": round_to(ready_after.as_secs_f64(), 2),
            "sighting_alerts": sightings,
            "sightings_are": "one alert per indicator, flow and window (1h): the replayed samples repeat their flows, so the count is the distinct (indicator, flow) pairs of the samples",
            "memory_in_process": memory,
            "memory_of_the_process": process,
        });
        println!("{sightings} IOC sighting alerts on {}", names.alerts());
        anyhow::Ok(Measured {
            iocs,
            rounds: measured_rounds,
            alert_ceiling,
            alerts_per_s,
            final_events,
            final_alerts,
            replica_wait,
        })
    }
    .await;
    let Measured {
        iocs,
        replica_wait,
        rounds: measured_rounds,
        alert_ceiling,
        alerts_per_s,
        final_events,
        final_alerts,
    } = result?;
    let Some(&Round {
        ceiling_before,
        ceiling_after,
        ceiling,
        events_per_s,
        mix_alerts_per_s,
        ..
    }) = median_by(&measured_rounds, Round::ratio)
    else {
        bail!("no round measured");
    };
    let ratio = events_per_s / ceiling;
    println!(
        "median of {} rounds: {events_per_s:.0} events/s, {:.1}% of its mean ceiling {ceiling:.0}",
        measured_rounds.len(),
        ratio * 100.0
    );
    let met = ratio >= 0.8 && alerts_per_s >= 20_000.0;
    println!(
        "target (>= 80% of the ceiling for events, >= 20,000 alerts/s): {}",
        if met { "met" } else { "NOT met" }
    );
    let traced = match trace {
        TraceRounds::WithRun => {
            println!("tracing at 1% sampling: pairs of rounds of the release binary, untraced and traced (OTLP/HTTP to a receiver in this process), the order swapped every pair");
            Some(trace_rounds(&settings, &names, &base, ioc_count, &mut conn, &js).await?)
        }
        _ => None,
    };
    let mut report = serde_json::json!({
        "bench": "eve",
        "service": SERVICE,
        "figure": {"name": format!("events to JetStream through {SERVICE}"), "value": events_per_s.round(), "unit": "events/s"},
        "ceiling": {"name": "raw JetStream publish-with-ack of the same events, same window, to the stream as the service declares it (with the design's flow and stats consumers) (mean of the runs just before and just after the service's; the median of the rounds)", "value": ceiling.round(), "unit": "events/s"},
        "ratio": round_to(ratio, 3),
        "target": "events at least 80% of the raw JetStream publish rate in the same run (with 100,000 IOCs loaded and sightings on), and at least 20,000 alerts per second, on a 2-core machine",
        "met": met,
        "details": {
            "events": n,
            "rounds": measured_rounds.iter().map(|r| serde_json::json!({
                "events_per_s": r.events_per_s.round(),
                "ceiling_before_per_s": r.ceiling_before.round(),
                "ceiling_after_per_s": r.ceiling_after.round(),
                "ratio": round_to(r.ratio(), 3),
                "cpu_us_per_event_service_phase": r.cpu_service,
                "cpu_us_per_event_ceiling_after": r.cpu_ceiling_after,
            })).collect::<Vec<_>>(),
            "cpu_us_per_event_is": "CPU (utime + stime from /proc) of the benchmark's process (the service runs in it; in a ceiling only the raw client works), of the shared Redis and of NATS, from the release of the lines until all are stored (service phase) or over the ceiling's publish; the servers also serve whatever else runs on the machine",
            "figure_is": "the round with the median ratio",
            "ceiling_before_per_s": ceiling_before.round(),
            "ceiling_after_per_s": ceiling_after.round(),
            "alerts_in_event_mix": alerts_in_mix,
            "alerts_in_mix_per_s": mix_alerts_per_s.round(),
            "alert_only_events": m,
            "alerts_per_s": alerts_per_s.round(),
            "alerts_target_per_s": 20000,
            "raw_jetstream_publish_of_alert_events_per_s": alert_ceiling.round(),
            "alerts_vs_raw_publish_of_alert_events": round_to(alerts_per_s / alert_ceiling, 3),
            "events_target_ratio": 0.8,
            "publish_window": window,
            "batch": settings.batch,
            "inflight_batches": settings.inflight_batches,
            "sample_lines": base.len(),
            "sample_files": used,
            "stored_events_at_end": final_events,
            "alerts_on_stream_at_end": final_alerts,
            "jetstream_storage": "file, duplicate window 2 minutes (the service's stream config)",
            "replica_wait_round": replica_wait,
            "ioc_sightings": iocs,
            "machine": "2 cores shared with the Redis and NATS servers and the benchmark itself",
        },
        "command": "make bench-eve",
        "measured_at": aurora_bench::measured_at(),
    });
    aurora_bench::set_trace_rounds("eve", &mut report, traced);
    aurora_bench::write_result("eve", &report)?;
    Ok(())
}
