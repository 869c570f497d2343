//! `make bench-registry`: N new devices (default 100,000) registered through the stream, then
//! N attestations verified, by the real service against the real PostgreSQL and Redis; and,
//! in the same run, the ceiling: the same batch upsert statement run directly against
//! PostgreSQL. Writes bench/results/registry.json.
//!
//! With `AURORA_BENCH_TRACE=1`, the cost of tracing at 1% sampling on the registration rate.
//! Tracing is set up once per process, so these rounds run the release binary
//! `device-registry` as a child process (the bench's configuration as flags), untraced and
//! traced alike. Pairs of rounds (`BENCH_REGISTRY_TRACE_PAIRS`, default 5), each a fresh
//! service taking `BENCH_REGISTRY_TRACE_N` new devices (default 50,000, ids of the round's
//! own; the devices table and the streams emptied before each round) written to the stream
//! once it is ready: one untraced, one exporting spans over OTLP/HTTP to a receiver in this
//! process (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.01`),
//! the order swapped every pair. About 1% of the sightings carry a `traceparent`, as a traced
//! bridge sampling at 1% writes them (sampled ones only; the registry's parent-based sampler
//! follows), in both kinds of round. The figure is the median of the pairs'
//! traced/untraced ratios of devices per second, with their spread.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aurora_bench::{
    cpu_secs, env_or, poll_until, round_to, upstream_trace, InProcess, TraceCost, TRACE_SAMPLING,
};
use aurora_core::auth::Verifier;
use aurora_core::bus::{self, Producer};
use aurora_core::model::{to_bytes, AttestationReport, DeviceCommand, DeviceSeen, Extra};
use aurora_core::names::DeviceTopicKind;
use aurora_core::service::{LaunchOptions, Stopped};
use aurora_core::trace::{Sampler, TraceContext};
use aurora_core::Names;
use aurora_testkit::cleanup::Cleanup;
use aurora_testkit::db::TestDb;
use aurora_testkit::otlp::OtlpReceiver;
use aurora_testkit::process::{Site, Svc};
use aurora_testkit::redis::xlen;
use aurora_testkit::{NATS_URL, REDIS_URL};
use base64::Engine;
use chrono::Utc;
use device_registry::{db, Config, DeviceRegistry};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;

const MODEL: &str = "bench-model";
const VERSION: &str = "2.0.0";
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const TARGET_DEVICES: f64 = 20_000.0;
const TARGET_ATTESTATIONS: f64 = 5_000.0;

/// How often a wait inside a timed phase polls (Redis's XLEN and XINFO are cheap; a
/// `count(*)` over the devices every 20 ms took a real share of the two cores away from the
/// service it measures, so PostgreSQL is asked only once the streams say done).
const POLL: Duration = Duration::from_millis(20);
/// The same in the trace rounds, whose end is seen on the streams alone (XLEN): a round of
/// 50,000 devices lasts under two seconds.
const TRACE_POLL: Duration = Duration::from_millis(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = env_or("BENCH_N", 100_000)?;
    let batch: usize = env_or("BENCH_BATCH", 1000)?;
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let db = TestDb::create().await;
    let report = run(n, batch, &names, &db.url).await?;
    aurora_bench::write_result("registry", &report)?;
    Ok(())
}

fn config(names: &Names, db_url: &str, batch: usize) -> anyhow::Result<Config> {
    let mut cfg = Config::local(
        names.clone(),
        REDIS_URL,
        db_url,
        Verifier::hs256(b"bench-secret")?,
    );
    cfg.trust_on_first_use = true;
    cfg.batch_size = batch;
    cfg.registration_workers = env_or("BENCH_REGISTRATION_WORKERS", cfg.registration_workers)?;
    cfg.attestation_workers = env_or("BENCH_ATTESTATION_WORKERS", cfg.attestation_workers)?;
    cfg.sweep_interval = Duration::from_secs(1);
    cfg.resend_after = Duration::from_secs(120);
    cfg.attestation_timeout = Duration::from_secs(3600);
    Ok(cfg)
}

/// The service launched in-process (ops endpoints on an ephemeral loopback port).
async fn start(cfg: Config) -> anyhow::Result<InProcess> {
    InProcess::launch(DeviceRegistry::new(cfg), LaunchOptions::local("bench")).await
}

/// Asks the service to stop and waits for its drain.
async fn stop(service: InProcess) -> anyhow::Result<()> {
    let stopped = service.stop().await;
    if stopped != Stopped::Drained {
        bail!("the service did not drain: {stopped:?}");
    }
    Ok(())
}

/// Until `streams` each hold at least `n` entries.
async fn wait_streams(
    conn: &bus::Conn,
    streams: &[String],
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    wait_streams_every(POLL, conn, streams, n, timeout).await
}

/// As [`wait_streams`], polling every `every`.
async fn wait_streams_every(
    every: Duration,
    conn: &bus::Conn,
    streams: &[String],
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    poll_until(
        every,
        timeout,
        &format!("{n} entries in {streams:?}"),
        || {
            let mut conn = conn.clone();
            async move {
                for s in streams {
                    if xlen(&mut conn, s).await < n as u64 {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        },
    )
    .await
}

/// Until the service's group on `stream` has read every entry and has none pending (each
/// acknowledged after its durable write). XINFO GROUPS is cheap for Redis.
async fn wait_group_done(
    conn: &bus::Conn,
    stream: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    type Group = std::collections::HashMap<String, redis::Value>;
    let int = |g: &Group, k: &str| match g.get(k) {
        Some(redis::Value::Int(i)) => Some(*i),
        _ => None,
    };
    poll_until(POLL, timeout, &format!("the group on {stream} to finish"), || {
        let mut conn = conn.clone();
        async move {
            let groups: Vec<Group> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(&mut conn)
                .await?;
            Ok(groups.iter().any(|g| {
                matches!(g.get("name"), Some(redis::Value::BulkString(b)) if b == device_registry::SERVICE.as_bytes())
                    && int(g, "pending") == Some(0)
                    && (int(g, "lag") == Some(0) || int(g, "entries-read") >= Some(n as i64))
            }))
        }
    })
    .await
}

async fn run(
    n: usize,
    batch: usize,
    names: &Names,
    db_url: &str,
) -> anyhow::Result<serde_json::Value> {
    let pool = db::connect(db_url, 4).await?;
    db::migrate(&pool).await?;
    sqlx::query("INSERT INTO firmware (model, version, sha256) VALUES ($1, $2, $3)")
        .bind(MODEL)
        .bind(VERSION)
        .bind(SHA)
        .execute(&pool)
        .await?;

    // ---- ceiling: the registration upsert statement alone, same batch size, one connection.
    let now = Utc::now();
    let ceiling_rows: Vec<db::Sighting> = (0..n)
        .map(|i| db::Sighting {
            device_id: format!("ceiling-{i:07}"),
            first_seen: now,
            last_seen: now,
            metadata: json!({"model": MODEL, "firmware_version": VERSION, "public_key": "x".repeat(44)}),
            model: Some(MODEL.into()),
            firmware_version: Some(VERSION.into()),
            public_key: Some(vec![7u8; 32]),
        })
        .collect();
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    for chunk in ceiling_rows.chunks(batch) {
        db::upsert_devices(&mut conn, chunk).await?;
    }
    let ceiling_secs = started.elapsed().as_secs_f64();
    drop(conn);
    let ceiling_rate = n as f64 / ceiling_secs;
    sqlx::query("TRUNCATE devices CASCADE")
        .execute(&pool)
        .await?;
    println!(
        "ceiling: upsert statement alone: {ceiling_rate:.0} devices/s ({n} in {ceiling_secs:.2} s)"
    );

    // ---- devices and their sightings, all in the stream before the service starts.
    let keys: Vec<SigningKey> = (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seed[8] = 0xa5;
            SigningKey::from_bytes(&seed)
        })
        .collect();
    let redis = bus::connect(REDIS_URL).await?;
    let producer = Producer::new(redis.clone(), 10_000_000);
    let reg_stream = names.cps_registrations();
    for (c, chunk) in keys.chunks(5000).enumerate() {
        let docs: Vec<(&str, Vec<u8>)> = chunk
            .iter()
            .enumerate()
            .map(|(j, k)| {
                let mut metadata = Extra::new();
                metadata.insert("model".into(), json!(MODEL));
                metadata.insert("firmware_version".into(), json!(VERSION));
                metadata.insert(
                    "public_key".into(),
                    json!(base64::engine::general_purpose::STANDARD
                        .encode(k.verifying_key().as_bytes())),
                );
                let seen = DeviceSeen {
                    event: DeviceSeen::EVENT.into(),
                    device_id: format!("dev-{:07}", c * 5000 + j),
                    message_type: DeviceTopicKind::Telemetry,
                    metadata,
                    seen_at: Utc::now(),
                    extra: Extra::new(),
                };
                (reg_stream.as_str(), to_bytes(&seen))
            })
            .collect();
        producer.publish_batch(&docs).await?;
    }

    // ---- registration through the service.
    let started = Instant::now();
    let cfg = config(names, db_url, batch)?;
    let (registration_workers, attestation_workers) =
        (cfg.registration_workers, cfg.attestation_workers);
    let service = start(cfg).await?;
    wait_streams(
        &redis,
        &[names.cps_devices(), names.cps_commands()],
        n,
        Duration::from_secs(600),
    )
    .await?;
    // Every batch acknowledged (after its durable commit) and its outbox row cleared.
    wait_group_done(
        &redis,
        &names.cps_registrations(),
        n,
        Duration::from_secs(60),
    )
    .await?;
    let sql = "SELECT count(*) FROM devices d WHERE NOT EXISTS (SELECT 1 FROM registration_outbox)";
    poll_until(POLL, Duration::from_secs(60), sql, || {
        let pool = &pool;
        async move {
            let c: i64 = sqlx::query_scalar(sql).fetch_one(pool).await?;
            Ok(c as usize >= n)
        }
    })
    .await?;
    let reg_secs = started.elapsed().as_secs_f64();
    let reg_rate = n as f64 / reg_secs;
    stop(service).await?;
    println!("registration: {reg_rate:.0} new devices/s ({n} in {reg_secs:.2} s, challenge and device.registered record each)");

    // ---- every device answers its challenge.
    let mut rconn = redis.clone();
    let mut after = "0-0".to_string();
    let mut nonces = std::collections::HashMap::with_capacity(n);
    loop {
        let entries = bus::range(&mut rconn, &names.cps_commands(), &after, 10_000).await?;
        let Some(last) = entries.last() else { break };
        after = last.id.clone();
        for e in entries {
            let cmd: DeviceCommand = serde_json::from_slice(e.data.as_deref().unwrap_or_default())?;
            if let Some(nonce) = cmd.params["nonce"].as_str() {
                nonces.insert(cmd.device_id, nonce.to_string());
            }
        }
    }
    if nonces.len() != n {
        bail!("{} challenges for {n} devices", nonces.len());
    }
    let att_stream = names.cps_attestation();
    for (c, chunk) in keys.chunks(5000).enumerate() {
        let docs: Vec<(&str, Vec<u8>)> = chunk
            .iter()
            .enumerate()
            .map(|(j, k)| {
                let device_id = format!("dev-{:07}", c * 5000 + j);
                let nonce = nonces.get(&device_id).cloned().unwrap_or_default();
                let sig = k.sign(&AttestationReport::signed_bytes(&nonce, VERSION, SHA));
                let report = AttestationReport {
                    device_id,
                    nonce,
                    firmware_version: VERSION.into(),
                    firmware_sha256: SHA.into(),
                    signature: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
                    extra: Extra::new(),
                };
                (att_stream.as_str(), to_bytes(&report))
            })
            .collect();
        producer.publish_batch(&docs).await?;
    }

    // ---- attestation through the service.
    let started = Instant::now();
    let service = start(config(names, db_url, batch)?).await?;
    wait_group_done(
        &redis,
        &names.cps_attestation(),
        n,
        Duration::from_secs(600),
    )
    .await?;
    let att_secs = started.elapsed().as_secs_f64();
    let att_rate = n as f64 / att_secs;
    stop(service).await?;
    let untrusted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM devices WHERE status <> 'trusted'")
            .fetch_one(&pool)
            .await?;
    println!("attestation: {att_rate:.0} attestations verified/s ({n} in {att_secs:.2} s, {untrusted} not trusted)");

    // ---- the signature check alone, one core, for scale.
    let sample = 10_000.min(n);
    let msg = AttestationReport::signed_bytes("nonce", VERSION, SHA);
    let sigs: Vec<_> = keys[..sample]
        .iter()
        .map(|k| (k.verifying_key(), k.sign(&msg)))
        .collect();
    let started = Instant::now();
    let ok = sigs
        .iter()
        .filter(|(vk, s)| vk.verify_strict(&msg, s).is_ok())
        .count();
    let verify_rate = ok as f64 / started.elapsed().as_secs_f64();
    let traced = match std::env::var("AURORA_BENCH_TRACE").as_deref() {
        Ok("1") => {
            println!("tracing at 1% sampling: pairs of registration rounds of the release binary, untraced and traced (OTLP/HTTP to a receiver in this process), the order swapped every pair");
            Some(trace_rounds(batch, names, db_url, &pool, &redis).await?)
        }
        _ => None,
    };
    pool.close().await;

    let met = reg_rate >= TARGET_DEVICES && att_rate >= TARGET_ATTESTATIONS && untrusted == 0;
    println!(
        "target >= {TARGET_DEVICES} devices/s and >= {TARGET_ATTESTATIONS} attestations/s: {}",
        if met { "met" } else { "NOT met" }
    );
    let mut report = json!({
        "bench": "registry",
        "service": "device-registry",
        "figure": {"name": "new devices registered per second through the stream", "value": reg_rate.round(), "unit": "devices/s"},
        "ceiling": {"name": "the batch upsert statement alone against PostgreSQL, same batch size, one connection", "value": ceiling_rate.round(), "unit": "devices/s"},
        "ratio": (reg_rate / ceiling_rate * 1000.0).round() / 1000.0,
        "target": "at least 20,000 new devices per second and at least 5,000 attestations verified per second on a 2-core machine",
        "met": met,
        "details": {
            "devices": n,
            "batch_size": batch,
            "registration_workers": registration_workers,
            "attestation_workers": attestation_workers,
            "attestation_verify": "signatures of a batch checked in parallel on every core (spawn_blocking chunks)",
            "completion_detected_by": "XLEN of the devices and commands streams and XINFO GROUPS (pending 0, lag 0), polled every 20 ms; PostgreSQL checked after (every device trusted, outbox empty)",
            "registration_seconds": reg_secs,
            "attestations_per_second": att_rate.round(),
            "attestation_seconds": att_secs,
            "devices_not_trusted_after_attestation": untrusted,
            "ceiling_seconds": ceiling_secs,
            "ed25519_verify_strict_per_second_one_core": verify_rate.round(),
            "registration_includes": "one statement per batch (upsert + challenge insert + one outbox row, durable commit), device.registered and attest command XADD pipeline, outbox row delete (synchronous_commit off: non-critical), XACK",
            "attestation_includes": "lookup, Ed25519 verify, nonce consume + status update (one transaction), XACK",
            "machine": "2 cores shared with other builds; PostgreSQL 15 and Redis 7 on loopback",
        },
        "command": "make bench-registry",
        "measured_at": aurora_bench::measured_at(),
    });
    if let Some(traced) = traced {
        report["details"]["trace_sampling_rounds"] = traced;
    }
    Ok(report)
}

/// What one registration round of the trace pairs measured.
struct RegistrationRound {
    devices: usize,
    /// From the first sighting written to the last device's records on the bus.
    seconds: f64,
    rate: f64,
    /// CPU seconds the service used in that time.
    service_cpu_s: f64,
    exit_ok: bool,
}

/// The sightings of `public_keys.len()` new devices named `<prefix><i>`, each with the trace
/// context a bridge sampling by `sampler` leaves on it.
fn traced_sightings(
    stream: &str,
    prefix: &str,
    public_keys: &[String],
    sampler: &Sampler,
) -> Vec<(String, Vec<u8>, Option<TraceContext>)> {
    public_keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let mut metadata = Extra::new();
            metadata.insert("model".into(), json!(MODEL));
            metadata.insert("firmware_version".into(), json!(VERSION));
            metadata.insert("public_key".into(), json!(key));
            let seen = DeviceSeen {
                event: DeviceSeen::EVENT.into(),
                device_id: format!("{prefix}{i:07}"),
                message_type: DeviceTopicKind::Telemetry,
                metadata,
                seen_at: Utc::now(),
                extra: Extra::new(),
            };
            (stream.to_string(), to_bytes(&seen), upstream_trace(sampler))
        })
        .collect()
}

/// One round of the trace pairs: the devices table and the streams emptied, a fresh service
/// of `site` (the release binary) started and ready, then `sightings` written to the stream;
/// timed from the first write until the records of every device are on the bus (then every
/// entry acknowledged and the outbox empty, untimed), then SIGTERM (the exporter flushes as
/// it stops).
async fn registration_round(
    site: &Site,
    flags: &[(&str, &str)],
    names: &Names,
    pool: &sqlx::PgPool,
    redis: &bus::Conn,
    sightings: &[(String, Vec<u8>, Option<TraceContext>)],
) -> anyhow::Result<RegistrationRound> {
    let n = sightings.len();
    let reg_stream = names.cps_registrations();
    let mut conn = redis.clone();
    for stream in [&reg_stream, &names.cps_devices(), &names.cps_commands()] {
        let _: () = redis::cmd("DEL").arg(stream).query_async(&mut conn).await?;
    }
    sqlx::query("TRUNCATE devices, registration_outbox CASCADE")
        .execute(pool)
        .await?;
    let mut service = site.start(Svc::DeviceRegistry, flags).await;
    let pid = service.pid().context("the registry is running")?;
    let producer = Producer::new(redis.clone(), 10_000_000);
    let cpu_start = cpu_secs(pid).unwrap_or(f64::NAN);
    let started = Instant::now();
    for chunk in sightings.chunks(5000) {
        producer.publish_batch_traced(chunk).await?;
    }
    let done = wait_streams_every(
        TRACE_POLL,
        redis,
        &[names.cps_devices(), names.cps_commands()],
        n,
        Duration::from_secs(600),
    )
    .await?;
    let service_cpu_s = cpu_secs(pid).unwrap_or(f64::NAN) - cpu_start;
    let seconds = done.duration_since(started).as_secs_f64();
    wait_group_done(redis, &reg_stream, n, Duration::from_secs(60)).await?;
    let sql = "SELECT count(*) FROM devices d WHERE NOT EXISTS (SELECT 1 FROM registration_outbox)";
    poll_until(POLL, Duration::from_secs(60), sql, || async move {
        let c: i64 = sqlx::query_scalar(sql).fetch_one(pool).await?;
        Ok(c as usize >= n)
    })
    .await?;
    let exit_ok = service.terminate().await.success();
    Ok(RegistrationRound {
        devices: n,
        seconds,
        rate: n as f64 / seconds.max(1e-6),
        service_cpu_s,
        exit_ok,
    })
}

/// Pairs of registration rounds, each with a service of its own (the release binary, a child
/// process): untraced, and exporting its spans to an OTLP receiver with 1% of traces sampled;
/// the order swaps every pair (the machine's load drifts). Each pair's ratio is
/// traced/untraced devices per second; the median pair is the figure.
async fn trace_rounds(
    batch: usize,
    names: &Names,
    db_url: &str,
    pool: &sqlx::PgPool,
    redis: &bus::Conn,
) -> anyhow::Result<serde_json::Value> {
    let bin = aurora_bench::release_binary(Svc::DeviceRegistry.name())?;
    let receiver = OtlpReceiver::start().await;
    let mut site = Site::new(names, "site-a", 0).with_binary(Svc::DeviceRegistry, &bin);
    site.redis_url = REDIS_URL.to_string();
    site.database_url = Some(db_url.to_string());
    site.log_filter = std::env::var("AURORA_BENCH_REGISTRY_LOG").unwrap_or_else(|_| "warn".into());
    let (untraced_site, traced_site) = aurora_bench::trace_sites(&site, &receiver, TRACE_SAMPLING);
    // The in-process configuration of the rounds above, as flags (the harness's shorter
    // intervals for tests overridden).
    let local = config(names, db_url, batch)?;
    let owned: Vec<(&str, String)> = vec![
        ("batch-size", batch.to_string()),
        (
            "registration-workers",
            local.registration_workers.to_string(),
        ),
        ("attestation-workers", local.attestation_workers.to_string()),
        ("sweep-interval", "1s".into()),
        ("resend-after", "120s".into()),
        ("attestation-timeout", "3600s".into()),
        ("claim-idle", "30s".into()),
    ];
    let flags: Vec<(&str, &str)> = owned.iter().map(|(f, v)| (*f, v.as_str())).collect();
    let sampler = Sampler::parse("parentbased_traceidratio", Some(TRACE_SAMPLING))
        .context("the sampler of the sightings' contexts")?;
    let pairs = env_or("BENCH_REGISTRY_TRACE_PAIRS", 5usize)?.max(1);
    let n = env_or("BENCH_REGISTRY_TRACE_N", 50_000usize)?.max(1);
    let public_keys: Vec<String> = (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seed[8] = 0xb6;
            base64::engine::general_purpose::STANDARD
                .encode(SigningKey::from_bytes(&seed).verifying_key().as_bytes())
        })
        .collect();
    let reg_stream = names.cps_registrations();
    let mut rounds = Vec::with_capacity(2 * pairs);
    let mut ratios = Vec::with_capacity(pairs);
    for pair in 0..pairs {
        let order = aurora_bench::pair_order(pair);
        let mut rates = [0.0f64; 2];
        for traced in order {
            let which = if traced { &traced_site } else { &untraced_site };
            let label = if traced { "traced" } else { "untraced" };
            // Devices of the round's own: new to the registry, as in every round.
            let prefix = format!("tr{pair}{}-dev-", &label[..1]);
            let sightings = traced_sightings(&reg_stream, &prefix, &public_keys, &sampler);
            let spans_before = receiver.spans().len();
            let r = registration_round(which, &flags, names, pool, redis, &sightings).await?;
            // What the last batches exported as the service stopped.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let spans = receiver.spans().len().saturating_sub(spans_before);
            if traced && spans == 0 {
                bail!("the traced registry exported no span: the round measured nothing");
            }
            println!(
                "  pair {}, {label}: {:.0} new devices/s ({} in {:.3} s), service CPU {:.2} s, exit {}, spans received {spans}",
                pair + 1,
                r.rate,
                r.devices,
                r.seconds,
                r.service_cpu_s,
                if r.exit_ok { "0" } else { "not 0" }
            );
            rates[usize::from(traced)] = r.rate;
            rounds.push(json!({
                "pair": pair + 1,
                "traced": traced,
                "devices_per_second": r.rate.round(),
                "devices": r.devices,
                "seconds": round_to(r.seconds, 3),
                "service_cpu_seconds": round_to(r.service_cpu_s, 2),
                "exit_ok": r.exit_ok,
                "spans_received": spans,
            }));
        }
        let ratio = rates[1] / rates[0];
        println!("  pair {}: traced/untraced {ratio:.3}", pair + 1);
        ratios.push(ratio);
    }
    let cost = TraceCost::of(&ratios).context("no pair measured")?;
    println!("{}", cost.line());
    let mut out = json!({
        "what": format!("pairs of registration rounds, each with a fresh device-registry (the release binary as a child process, --batch-size {batch}, --registration-workers {}, the other flags as the in-process rounds' configuration) taking {n} new devices (ids of the round's own; the devices table and the streams emptied first) written to the stream once it is ready: untraced, and traced (OTEL_EXPORTER_OTLP_ENDPOINT to an OTLP/HTTP receiver in the bench's process, OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG={TRACE_SAMPLING}), the order swapped every pair", local.registration_workers),
        "sightings_carry": "a traceparent when sampled, in both kinds of round, as a traced bridge sampling at 1% writes it: a new trace for about 1% of the sightings by the trace-id ratio rule, nothing on the others; the registry's parent-based sampler follows, so about 1% of the entries make spans",
        "sampler": "parentbased_traceidratio",
        "sampler_arg": TRACE_SAMPLING,
        "devices_per_round": n,
        "timed": "from the first sighting written (the service ready) until the devices and commands streams hold a record for every device (XLEN polled every 5 ms); every entry acknowledged and the outbox empty checked after, untimed",
        "rounds": rounds,
        "pair_ratios": ratios.iter().map(|r| round_to(*r, 3)).collect::<Vec<_>>(),
        "ratio_is": "new devices per second through the stream, traced over untraced of the same pair",
    });
    if let (Some(out), serde_json::Value::Object(figure)) = (out.as_object_mut(), cost.json()) {
        out.extend(figure);
    }
    Ok(out)
}
