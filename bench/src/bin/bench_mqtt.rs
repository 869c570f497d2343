//! `make bench-mqtt`: the bridge's end-to-end throughput and latency against the ceilings of
//! the path without it, in one run.
//!
//! 1. Ceiling A: the broker's own QoS 1 delivery to one subscriber (the uplink's own MQTT 5
//!    connection, acking every read at once, same receive maximum),
//!    8 publishing connections.
//! 2. Ceiling B: Redis pipelined XADD (batches of the bridge's size, one connection).
//! 3. The bridge (the release binary, a child process): 8 connections publish QoS 1 telemetry
//!    of about 200 bytes from 100,000 distinct devices as fast as the broker takes it;
//!    messages per second from first publish to last stream entry, lost and duplicated. In
//!    rounds (`BENCH_MQTT_ROUNDS`, default 3), ceiling A measured again after each: each round
//!    is compared with the mean of the ceilings around it, the median round is the figure.
//! 4. Latency at a fixed 10,000 msg/s: publish to stream entry, p50/p99.
//! 5. Scale-down (after the single bridge has left): 3 replicas of the bridge in one share
//!    group take the same load as a round of 3; when a third of it is in the stream, one of
//!    them is sent SIGTERM and never comes back (what a scale-down or a rollout does). Its
//!    throughput against the mean of the broker ceilings just before and just after it, lost
//!    and duplicated (zero of both: a replica that leaves hands its share back, see
//!    services/mqtt-bridge/README.md, "Replicas come and go"), how long the leave took and
//!    whether the broker still holds a session for the replica that left.
//!
//! 6. With `AURORA_BENCH_TRACE=1` (`only`: this alone): the cost of tracing at 1% sampling
//!    (`BENCH_MQTT_TRACE_RATIO` another ratio). Pairs of rounds
//!    (`BENCH_MQTT_TRACE_PAIRS`, default 3), each a fresh bridge taking the load of a round: one
//!    untraced, one exporting spans over OTLP/HTTP to a receiver in this process
//!    (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.01`; the
//!    devices send no context, so every message starts a trace and 1% are kept), the order
//!    swapped every pair; the figure is the median of the pairs' traced/untraced ratios, with
//!    their spread.
//!
//! Peak memory of the bridge is VmHWM from /proc. Its own Mosquitto (queue limits in the
//! JSON), the shared Redis under a namespace of its own, deleted at the end.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aurora_bench::{median_by, now_us, percentile, poll_until, round_to};
use aurora_core::bus::{self, Conn, Producer};
use aurora_core::names::DeviceTopicKind;
use aurora_core::Names;
use aurora_testkit::cleanup::Cleanup;
use aurora_testkit::otlp::OtlpReceiver;
use aurora_testkit::process::{Service, Site, Svc};
use aurora_testkit::redis::{stream_docs, xlen};
use aurora_testkit::replicas::{mqtt_session_present, registry_members, start_as};
use aurora_testkit::{MosquittoServer, RedisServer, NATS_URL, REDIS_URL};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

const PUBLISHERS: usize = 8;
const DEVICES: u64 = 100_000;
const THROUGHPUT_MESSAGES: u64 = 300_000;
const CEILING_MESSAGES: u64 = 300_000;
const REDIS_MESSAGES: u64 = 500_000;
const LATENCY_RATE: u64 = 10_000;
const LATENCY_SECONDS: u64 = 6;
/// The bridge's receive maximum with its default flags (`--queue-capacity` 1024).
const RECEIVE_MAX: u16 = 1024;
/// The broker's configuration besides its listener (the harness adds it); `persistence
/// false` overrides the harness's `persistence true`.
const BROKER_CONFIG: &str = "allow_anonymous true\nmax_queued_messages 1000000\nmax_queued_bytes 0\nmax_inflight_messages 100\nmax_packet_size 262144\npersistence false\n";
/// The scale-down round's replicas (instance ids, as Kubernetes names pods); the last leaves.
const REPLICAS: [&str; 3] = ["bridge-a", "bridge-b", "bridge-c"];
/// Their share group, apart from the single bridge's (the default, `mqtt-bridge`).
const REPLICA_SHARE_GROUP: &str = "bench-replicas";
/// Their drain deadline (`AURORA_SHUTDOWN_TIMEOUT`), the chart's default.
const REPLICA_SHUTDOWN_TIMEOUT: &str = "20s";
/// A round ends when nothing new came for this long: 15 s for the single bridge; for the
/// scale-down round long enough for a takeover with the default lease (15 s ttl, a look
/// every 5 s) should the leave be cut short by its deadline.
const ROUND_STALL: Duration = Duration::from_secs(15);
const SCALE_DOWN_STALL: Duration = Duration::from_secs(45);
/// The sampling ratio of the traced rounds (`OTEL_TRACES_SAMPLER_ARG`).
const TRACE_SAMPLING: &str = "0.01";

/// The sampling ratio of the traced rounds: `BENCH_MQTT_TRACE_RATIO`, else [`TRACE_SAMPLING`]
/// (0: no message sampled, so no span and no context: what tracing costs when nothing is).
fn trace_ratio() -> String {
    std::env::var("BENCH_MQTT_TRACE_RATIO").unwrap_or_else(|_| TRACE_SAMPLING.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bridge_bin = aurora_bench::release_binary(Svc::MqttBridge.name())?;
    let broker = MosquittoServer::start_with_config(BROKER_CONFIG);
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let mut site = Site::new(&names, "site-a", 0).with_binary(Svc::MqttBridge, &bridge_bin);
    site.mqtt_url = broker.url();
    site.log_filter = std::env::var("AURORA_BENCH_BRIDGE_LOG").unwrap_or_else(|_| "warn".into());
    let mut redis = bus::connect(REDIS_URL).await?;
    if std::env::var("AURORA_BENCH_TRACE").as_deref() == Ok("only") {
        // The trace rounds alone (to look into the cost of tracing), recorded as those of the
        // last whole run.
        println!(
            "tracing: pairs of rounds only, untraced and traced, sampling ratio {}",
            trace_ratio()
        );
        let stream = names.cps_telemetry();
        let traced = trace_rounds(&site, &broker, &names, &mut redis, &stream).await?;
        // Into the last full run's result, as its trace rounds.
        let path = aurora_bench::result_path("mqtt");
        let mut report: serde_json::Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .context(
                "the trace rounds alone go into bench/results/mqtt.json: run the whole bench first",
            )?;
        report["details"]["trace_sampling_rounds"] = traced;
        report["details"]["trace_sampling_rounds"]["measured_at"] =
            json!(aurora_bench::measured_at());
        aurora_bench::write_result("mqtt", &report)?;
        return Ok(());
    }
    let report = run(&site, &bridge_bin, &broker, &names, &mut redis).await?;
    aurora_bench::write_result("mqtt", &report)?;
    Ok(())
}

async fn run(
    site: &Site,
    bridge_bin: &Path,
    broker: &MosquittoServer,
    names: &Names,
    redis: &mut Conn,
) -> anyhow::Result<serde_json::Value> {
    println!("ceiling A: broker QoS 1 to one subscriber, {PUBLISHERS} publishers, {CEILING_MESSAGES} messages");
    let first_ceiling = broker_ceiling(broker.port()).await?;
    println!("  {first_ceiling:.0} msg/s");
    println!("ceiling B: Redis pipelined XADD, {REDIS_MESSAGES} entries in batches of 512");
    let redis_rate = redis_ceiling(redis, names).await?;
    println!("  {redis_rate:.0} msg/s");

    let mut bridge = site.start(Svc::MqttBridge, &[]).await;
    let stream = names.cps_telemetry();
    // Rounds of bridge and ceiling in turn: each round against the mean of the broker
    // ceilings just before and just after it (the shared machine's load drifts within a
    // run); the round with the median ratio is the figure. Every round has devices of its
    // own, so each sees 100,000 new devices, as the first did.
    let rounds = aurora_bench::env_or("BENCH_MQTT_ROUNDS", 3usize)?.max(1);
    let mut measured: Vec<(Throughput, f64, f64)> = Vec::with_capacity(rounds);
    let mut before = first_ceiling;
    for round in 0..rounds {
        let _: () = redis::cmd("DEL").arg(&stream).query_async(redis).await?;
        println!("bridge, round {}: {THROUGHPUT_MESSAGES} messages from {DEVICES} distinct devices, as fast as possible", round + 1);
        let tp = throughput(broker.port(), names, redis, &stream, round).await?;
        let after = broker_ceiling(broker.port()).await?;
        println!(
            "  {:.0} msg/s end to end, lost {}, duplicated {}; ceiling after {after:.0} msg/s: {:.1}% of the mean",
            tp.rate,
            tp.lost,
            tp.duplicated,
            100.0 * tp.rate / ((before + after) / 2.0)
        );
        measured.push((tp, before, after));
        before = after;
    }
    let ratio_of = |(tp, b, a): &(Throughput, f64, f64)| tp.rate / ((b + a) / 2.0);
    let all_lost: u64 = measured.iter().map(|(tp, _, _)| tp.lost).sum();
    let all_duplicated: u64 = measured.iter().map(|(tp, _, _)| tp.duplicated).sum();
    let rounds_json: Vec<serde_json::Value> = measured
        .iter()
        .map(|m| {
            json!({"msg_s": m.0.rate.round(), "ceiling_before_msg_s": m.1.round(),
                   "ceiling_after_msg_s": m.2.round(), "ratio": round_to(ratio_of(m), 3),
                   "lost": m.0.lost, "duplicated": m.0.duplicated})
        })
        .collect();
    let (tp, before, after) = median_by(&measured, ratio_of).context("no round measured")?;
    let broker_rate = (before + after) / 2.0;
    println!("latency at a fixed {LATENCY_RATE} msg/s for {LATENCY_SECONDS} s");
    let lat = latency(broker.port(), names, redis, &stream).await?;
    println!(
        "  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, lost {}",
        lat.p50_ms, lat.p99_ms, lat.max_ms, lat.lost
    );
    let pid = bridge.pid().context("the bridge is running")?;
    let memory = |field| aurora_bench::proc_status_kib(pid, field).context("the bridge's memory");
    let (hwm_kib, rss_kib) = (memory("VmHWM")?, memory("VmRSS")?);
    stop(&mut bridge).await;
    let peak_mib = hwm_kib as f64 / 1024.0;
    println!("bridge peak memory (VmHWM) {peak_mib:.1} MiB");

    // The single bridge has left (and handed its session back): the replicas alone.
    if mqtt_session_present(
        "127.0.0.1",
        broker.port(),
        &mqtt_bridge::uplink_client_id(&bridge.instance),
    )
    .await
    {
        println!("  the single bridge left a session behind (now ended)");
    }
    println!(
        "scale-down: {} replicas in share group {REPLICA_SHARE_GROUP}, {THROUGHPUT_MESSAGES} messages from {DEVICES} distinct devices; {} leaves (SIGTERM) at a third",
        REPLICAS.len(),
        REPLICAS[REPLICAS.len() - 1]
    );
    let sd = scale_down(site, bridge_bin, broker, names, redis, &stream).await?;
    let sd_ratio = sd.tp.rate / ((sd.before + sd.after) / 2.0);
    let sd_met = sd.tp.lost == 0
        && sd.tp.duplicated == 0
        && sd.exit_ok
        && sd.handed_back
        && !sd.session_left;
    println!(
        "  {:.0} msg/s end to end, lost {}, duplicated {}; ceilings {:.0} / {:.0} msg/s: {:.1}% of the mean",
        sd.tp.rate,
        sd.tp.lost,
        sd.tp.duplicated,
        sd.before,
        sd.after,
        100.0 * sd_ratio
    );
    println!(
        "  {} left after {} of {THROUGHPUT_MESSAGES} entries, exit {} after {:.2} s, session handed back {} (received {:?} while leaving), session left on the broker {}; registry after {:?}; the others wrote {:?}",
        REPLICAS[REPLICAS.len() - 1],
        sd.at_leave,
        if sd.exit_ok { "0" } else { "not 0" },
        sd.leave_seconds,
        sd.handed_back,
        sd.received_while_leaving,
        sd.session_left,
        sd.members_after,
        sd.survivors_wrote
    );
    println!(
        "  scale-down target (zero lost, zero duplicated, session handed back) {}",
        if sd_met { "met" } else { "NOT met" }
    );

    println!("replica wait: a Redis of its own with one replica; a round with --redis-wait-replicas 0, then with 1");
    let rw = replica_wait_rounds(site, broker, names).await?;

    let traced = match std::env::var("AURORA_BENCH_TRACE").as_deref() {
        Ok("1") => {
            println!("tracing at 1% sampling: pairs of rounds, untraced and traced (OTLP/HTTP to a receiver in this process), the order swapped every pair");
            trace_rounds(site, broker, names, redis, &stream).await?
        }
        _ => serde_json::Value::Null,
    };

    let ceiling = broker_rate.min(redis_rate);
    let ceiling_name = if broker_rate <= redis_rate {
        "broker QoS 1 delivery to one subscriber (8 publishing connections)"
    } else {
        "Redis pipelined XADD"
    };
    let ratio = tp.rate / ceiling;
    let met = ratio >= 0.9
        && all_lost == 0
        && all_duplicated == 0
        && lat.lost == 0
        && lat.p99_ms < 20.0
        && peak_mib < 64.0;
    println!(
        "bridge at {:.1}% of the lower ceiling ({ceiling_name}); target {}",
        ratio * 100.0,
        if met { "met" } else { "NOT met" }
    );
    let scale_down_json = json!({
        "what": format!("{} bridge replicas (separate processes, release binary, default flags) in one share group take {THROUGHPUT_MESSAGES} messages from {DEVICES} distinct devices as fast as possible; when a third is in the stream one replica gets SIGTERM and never returns", REPLICAS.len()),
        "replicas": REPLICAS.len(),
        "msg_s": sd.tp.rate.round(),
        "seconds": round_to(sd.tp.seconds, 3),
        "ceiling_before_msg_s": sd.before.round(),
        "ceiling_after_msg_s": sd.after.round(),
        "ratio": round_to(sd_ratio, 3),
        "ratio_is": "msg/s against the mean of the broker QoS 1 ceilings (one subscriber) just before and just after the round",
        "lost": sd.tp.lost,
        "duplicated": sd.tp.duplicated,
        "left_at_entries": sd.at_leave,
        "leave_seconds": round_to(sd.leave_seconds, 3),
        "leave_exit_ok": sd.exit_ok,
        "leave_session_handed_back": sd.handed_back,
        "received_while_leaving": sd.received_while_leaving,
        "session_left_on_broker": sd.session_left,
        "registry_after": sd.members_after,
        "remaining_replicas_wrote": sd.survivors_wrote,
        "shutdown_timeout": REPLICA_SHUTDOWN_TIMEOUT,
        "target": "zero lost, zero duplicated (a SIGTERM'd replica costs none), its session handed back; the ratio is reported, without a target",
        "met": sd_met,
    });
    Ok(json!({
        "bench": "mqtt",
        "service": "mqtt-bridge",
        "figure": {"name": "end-to-end QoS 1 throughput, publish to stream entry", "value": tp.rate.round(), "unit": "msg/s"},
        "ceiling": {"name": ceiling_name, "value": ceiling.round(), "unit": "msg/s"},
        "ratio": round_to(ratio, 3),
        "target": "at least 90% of the broker's own QoS 1 ceiling measured in the same run, zero lost, zero duplicated; p99 latency under 20 ms at a fixed 10,000 msg/s; peak memory under 64 MiB with 100,000 distinct devices",
        "met": met,
        "details": {
            "broker_qos1_ceiling_msg_s": broker_rate.round(),
            "broker_qos1_ceiling_is": "mean of the broker ceilings just before and just after the median round",
            "throughput_rounds": rounds_json,
            "throughput_lost_all_rounds": all_lost,
            "throughput_duplicated_all_rounds": all_duplicated,
            "redis_pipelined_xadd_ceiling_msg_s": redis_rate.round(),
            "throughput_messages": THROUGHPUT_MESSAGES,
            "throughput_lost": tp.lost,
            "throughput_duplicated": tp.duplicated,
            "throughput_seconds": round_to(tp.seconds, 3),
            "distinct_devices": DEVICES,
            "publishing_connections": PUBLISHERS,
            "payload_bytes": payload(0, 0).len(),
            "latency_rate_msg_s": LATENCY_RATE,
            "latency_messages": lat.messages,
            "latency_lost": lat.lost,
            "latency_p50_ms": lat.p50_ms,
            "latency_p99_ms": lat.p99_ms,
            "latency_max_ms": lat.max_ms,
            "bridge_peak_rss_mib": round_to(peak_mib, 1),
            "bridge_rss_at_end_mib": round_to(rss_kib as f64 / 1024.0, 1),
            "bridge_flags": "defaults (--batch-size 512, --batch-linger 0ms, --queue-capacity 1024, --seen-capacity 100000)",
            "broker": "own Mosquitto 2.0: max_queued_messages 1000000, max_queued_bytes 0 (no limit), max_inflight_messages 100 (as deploy/mosquitto), persistence off",
            "redis": "shared Redis 7 on loopback, no persistence",
            "machine_cores": aurora_bench::cores(),
            "scale_down_round": scale_down_json,
            "replica_wait_rounds": rw,
            "trace_sampling_rounds": traced,
        },
        "command": "make bench-mqtt",
        "measured_at": aurora_bench::measured_at(),
    }))
}

/// About 200 bytes of telemetry, carrying its sequence number and send time.
fn payload(seq: u64, ts: u64) -> Vec<u8> {
    let body = json!({
        "seq": seq,
        "ts": ts,
        "temperature_c": 21.53,
        "humidity_pct": 40.2,
        "battery_v": 3.71,
        "rssi_dbm": -67,
        "firmware": "1.4.2",
        "uptime_s": 86_400,
        "status": "ok",
        "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

// ---- the bridge's process ------------------------------------------------------------------

/// SIGTERM, and up to 10 s for the bridge to drain and exit (it is killed when dropped).
async fn stop(bridge: &mut Service) {
    bridge.sigterm();
    let _ = poll_until(
        Duration::from_millis(50),
        Duration::from_secs(10),
        "the bridge's exit",
        || {
            let exited = bridge.exited().is_some();
            async move { Ok(exited) }
        },
    )
    .await;
}

// ---- MQTT clients --------------------------------------------------------------------------

/// A publishing connection: `publish` queues, the event loop task counts PUBACKs.
struct Publisher {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    connected: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn connect(port: u16, id: &str) -> Self {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = acked.clone();
        let (connected_tx, connected) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = connected_tx.send(true);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("publisher connection error: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Self {
            client,
            acked,
            connected,
            task,
        }
    }

    /// Waits for the CONNACK, so that a timed phase does not count the handshake.
    async fn wait_connected(&self) -> anyhow::Result<()> {
        let mut rx = self.connected.clone();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|c| *c))
            .await
            .context("no CONNACK within 10 s")??;
        Ok(())
    }

    async fn wait_acked(&self, n: u64) -> anyhow::Result<()> {
        let acked = &self.acked;
        poll_until(
            Duration::from_millis(5),
            Duration::from_secs(120),
            "the broker's acknowledgement of every publish",
            || async move { Ok(acked.load(Ordering::Relaxed) >= n) },
        )
        .await?;
        Ok(())
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Publishes `per` messages from each of `PUBLISHERS` connections as fast as the broker takes
/// them; `topic(seq)` names the topic of message `seq`.
async fn blast(
    port: u16,
    prefix: &str,
    per: u64,
    topic: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS as u64 {
        let topic = topic.clone();
        let publisher = Publisher::connect(port, &format!("{prefix}-pub-{p}"));
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let seq = p * per + i;
                publisher
                    .client
                    .publish(topic(seq), QoS::AtLeastOnce, false, payload(seq, now_us()))
                    .await?;
            }
            publisher.wait_acked(per).await?;
            publisher.close().await;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The broker's own QoS 1 delivery to one subscriber that does nothing but count and ack:
/// the same MQTT 5 connection as the bridge's uplink (same receive maximum, every ack of a
/// read written at once), so the ceiling is the broker's, not a slower client's.
async fn broker_ceiling(port: u16) -> anyhow::Result<f64> {
    use futures::FutureExt;
    use mqtt_bridge::link::{Link, LinkOptions};
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet as Packet5};
    let opts = LinkOptions {
        host: "127.0.0.1".into(),
        port,
        tls: None,
        client_id: format!("bench-ceiling-sub-{}", std::process::id()),
        credentials: None,
        keep_alive: Duration::from_secs(30),
        session_expiry: 0,
        receive_max: RECEIVE_MAX,
        max_packet: 1 << 20,
        connect_timeout: Duration::from_secs(10),
        broker_limit: mqtt_bridge::link::BrokerLimit::default(),
    };
    let mut link = Link::connect(&opts).await?;
    link.subscribe(vec![Filter::new(
        "bench/ceiling/#",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    )])
    .await?;
    loop {
        if let Packet5::SubAck(_) = link.next().await? {
            break;
        }
    }
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop_sub = stop.clone();
    let sub = tokio::spawn(async move {
        let mut pkids = Vec::new();
        loop {
            let first = tokio::select! {
                p = link.next() => p,
                _ = stop_sub.notified() => break,
            };
            let mut handle = |packet: Packet5| {
                if let Packet5::Publish(p) = packet {
                    counter.fetch_add(1, Ordering::Relaxed);
                    pkids.push(p.pkid);
                }
            };
            let Ok(packet) = first else { return };
            handle(packet);
            // Everything already read is acked with it, in one write.
            while let Some(next) = link.next().now_or_never() {
                let Ok(packet) = next else { return };
                handle(packet);
            }
            if link.write_acks(&pkids).await.is_err() {
                return;
            }
            pkids.clear();
        }
        let _ = link.disconnect().await;
    });
    let per = CEILING_MESSAGES / PUBLISHERS as u64;
    let total = per * PUBLISHERS as u64;
    let started = Instant::now();
    blast(
        port,
        "ceiling",
        per,
        Arc::new(|seq| format!("bench/ceiling/d{}", seq % 1000)),
    )
    .await?;
    let received = &received;
    poll_until(
        Duration::from_millis(2),
        Duration::from_secs(60),
        "every message at the ceiling subscriber",
        || async move { Ok(received.load(Ordering::Relaxed) >= total) },
    )
    .await?;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    stop.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(5), sub).await;
    Ok(rate)
}

async fn redis_ceiling(redis: &Conn, names: &Names) -> anyhow::Result<f64> {
    let producer = Producer::new(redis.clone(), 1_000_000);
    let stream = names.state_key("bench", "xadd-ceiling");
    let batch: Vec<(String, Vec<u8>)> = (0..512)
        .map(|i| (stream.clone(), payload(i, now_us())))
        .collect();
    let batches = REDIS_MESSAGES / 512;
    let started = Instant::now();
    for _ in 0..batches {
        producer.publish_batch(&batch).await?;
    }
    Ok((batches * 512) as f64 / started.elapsed().as_secs_f64())
}

// ---- the bridge ----------------------------------------------------------------------------

struct Throughput {
    rate: f64,
    seconds: f64,
    lost: u64,
    duplicated: u64,
}

async fn throughput(
    port: u16,
    names: &Names,
    redis: &mut Conn,
    stream: &str,
    round: usize,
) -> anyhow::Result<Throughput> {
    let devices = format!("r{round}-dev-");
    throughput_of(port, names, redis, stream, devices, ROUND_STALL, None).await
}

/// Told once, mid-round, that the stream holds at least `at` entries (how many it holds).
struct Midway {
    at: u64,
    tx: tokio::sync::oneshot::Sender<u64>,
}

/// A round: devices `<devices>0..DEVICES`; done when every message is in the stream or
/// nothing new came for `stall`.
async fn throughput_of(
    port: u16,
    names: &Names,
    redis: &mut Conn,
    stream: &str,
    devices: String,
    stall: Duration,
    mut midway: Option<Midway>,
) -> anyhow::Result<Throughput> {
    let per = THROUGHPUT_MESSAGES / PUBLISHERS as u64;
    let total = per * PUBLISHERS as u64;
    let topic_names = names.clone();
    let started = Instant::now();
    let load = tokio::spawn(blast(
        port,
        "bridge",
        per,
        Arc::new(move |seq| {
            topic_names.mqtt_sensor_topic(
                &format!("{devices}{}", seq % DEVICES),
                DeviceTopicKind::Telemetry,
            )
        }),
    ));
    // Done when every message is in the stream, or nothing new came for `stall`.
    let (mut last_len, mut last_change) = (0, Instant::now());
    let mut finished = started.elapsed();
    loop {
        let len = xlen(redis, stream).await;
        if len != last_len {
            last_len = len;
            last_change = Instant::now();
            finished = started.elapsed();
        }
        if midway.as_ref().is_some_and(|m| len >= m.at) {
            if let Some(m) = midway.take() {
                let _ = m.tx.send(len);
            }
        }
        if len >= total || last_change.elapsed() > stall {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    load.await??;
    let (lost, duplicated) = lost_and_duplicated(redis, stream, total).await;
    Ok(Throughput {
        rate: total.saturating_sub(lost) as f64 / finished.as_secs_f64(),
        seconds: finished.as_secs_f64(),
        lost,
        duplicated,
    })
}

/// The scale-down round and what it left behind.
struct ScaleDown {
    tp: Throughput,
    before: f64,
    after: f64,
    /// Entries in the stream when the SIGTERM went out.
    at_leave: u64,
    /// From the SIGTERM to the exit.
    leave_seconds: f64,
    exit_ok: bool,
    /// The leaving replica logged its session handed back (unsubscribed, drained, ended).
    handed_back: bool,
    received_while_leaving: Option<u64>,
    /// The broker still held a session for the replica that left.
    session_left: bool,
    members_after: Vec<String>,
    survivors_wrote: Vec<f64>,
}

/// 3 replicas in one share group, the broker ceiling just before and just after; the last
/// replica is sent SIGTERM when a third of the round is in the stream and is not replaced.
async fn scale_down(
    site: &Site,
    bridge_bin: &Path,
    broker: &MosquittoServer,
    names: &Names,
    redis: &mut Conn,
    stream: &str,
) -> anyhow::Result<ScaleDown> {
    let mut site = site.clone();
    site.shutdown_timeout = REPLICA_SHUTDOWN_TIMEOUT.into();
    // The bridge logs at info when a session is handed back (once per replica).
    site.log_filter = format!("{},mqtt_bridge=info", site.log_filter);
    let flags = [("share-group", REPLICA_SHARE_GROUP)];
    let mut replicas = Vec::with_capacity(REPLICAS.len());
    for id in REPLICAS {
        replicas.push(start_as(&site, Svc::MqttBridge, bridge_bin, id, &flags).await);
    }
    let mut leaver = replicas.pop().context("a replica to leave")?;
    let _: () = redis::cmd("DEL").arg(stream).query_async(redis).await?;
    let before = broker_ceiling(broker.port()).await?;

    let (tx, rx) = tokio::sync::oneshot::channel();
    let leave = tokio::spawn(async move {
        let at_leave = rx.await.context("the round ended before a third was in")?;
        let sent = Instant::now();
        leaver.sigterm();
        let (status, exited) = leaver.wait_exit(Duration::from_secs(60)).await;
        anyhow::Ok((leaver, at_leave, status.success(), exited - sent))
    });
    let per = THROUGHPUT_MESSAGES / PUBLISHERS as u64;
    let midway = Midway {
        at: per * PUBLISHERS as u64 / 3,
        tx,
    };
    let tp = throughput_of(
        broker.port(),
        names,
        redis,
        stream,
        "sd-dev-".into(),
        SCALE_DOWN_STALL,
        Some(midway),
    )
    .await?;
    let (leaver, at_leave, exit_ok, took) = leave.await??;
    let after = broker_ceiling(broker.port()).await?;

    let log = leaver.log();
    let handed_back = log.contains("session handed back");
    let received_while_leaving = log
        .lines()
        .filter(|l| l.contains("session handed back"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| {
            v.pointer("/fields/received_while_leaving")
                .or_else(|| v.get("received_while_leaving"))
                .and_then(serde_json::Value::as_u64)
        });
    let session_left = mqtt_session_present(
        "127.0.0.1",
        broker.port(),
        &mqtt_bridge::uplink_client_id(&leaver.instance),
    )
    .await;
    let members_after = registry_members(redis, names, mqtt_bridge::SERVICE).await;
    let mut survivors_wrote = Vec::with_capacity(replicas.len());
    for r in &replicas {
        survivors_wrote.push(r.metric("aurora_mqtt_bridge_messages_total", &[]).await);
    }
    for r in &mut replicas {
        stop(r).await;
    }
    Ok(ScaleDown {
        tp,
        before,
        after,
        at_leave,
        leave_seconds: took.as_secs_f64(),
        exit_ok,
        handed_back,
        received_while_leaving,
        session_left,
        members_after,
        survivors_wrote,
    })
}

/// The bridge against a Redis with one replica: a round without the replica wait, then one
/// with `--redis-wait-replicas 1` (every batch waits for the replica before its PUBACKs), each
/// against the broker ceilings just before and just after it.
async fn replica_wait_rounds(
    site: &Site,
    broker: &MosquittoServer,
    names: &Names,
) -> anyhow::Result<serde_json::Value> {
    let primary = RedisServer::start();
    let replica_of = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &replica_of]);
    let mut redis = bus::connect(&primary.url()).await?;
    poll_until(
        Duration::from_millis(50),
        Duration::from_secs(20),
        "the replica online",
        || {
            let mut conn = redis.clone();
            async move {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                anyhow::Ok(info.contains("connected_slaves:1") && info.contains("state=online"))
            }
        },
    )
    .await?;
    let mut site = site.clone();
    site.redis_url = primary.url();
    let stream = names.cps_telemetry();
    let mut rounds = Vec::new();
    for wait in ["0", "1"] {
        let mut bridge = site
            .start(Svc::MqttBridge, &[("redis-wait-replicas", wait)])
            .await;
        let _: () = redis::cmd("DEL")
            .arg(&stream)
            .query_async(&mut redis)
            .await?;
        let before = broker_ceiling(broker.port()).await?;
        let tp = throughput_of(
            broker.port(),
            names,
            &mut redis,
            &stream,
            format!("rw{wait}-dev-"),
            ROUND_STALL,
            None,
        )
        .await?;
        let after = broker_ceiling(broker.port()).await?;
        let waits = bridge
            .metric("aurora_bus_replica_wait_failures_total", &[])
            .await
            .max(0.0);
        stop(&mut bridge).await;
        let ratio = tp.rate / ((before + after) / 2.0);
        println!(
            "  --redis-wait-replicas {wait}: {:.0} msg/s, lost {}, duplicated {}; ceilings {before:.0} / {after:.0} msg/s: {:.1}% of the mean; waits that timed out {waits}",
            tp.rate,
            tp.lost,
            tp.duplicated,
            100.0 * ratio
        );
        rounds.push(json!({
            "redis_wait_replicas": wait.parse::<u32>().unwrap_or_default(),
            "msg_s": tp.rate.round(),
            "ceiling_before_msg_s": before.round(),
            "ceiling_after_msg_s": after.round(),
            "ratio": round_to(ratio, 3),
            "lost": tp.lost,
            "duplicated": tp.duplicated,
            "replica_wait_failures": waits,
        }));
    }
    drop(replica);
    Ok(json!({
        "what": format!("one bridge (release binary, default flags) against a Redis of its own with one replica on loopback, {THROUGHPUT_MESSAGES} messages from {DEVICES} distinct devices as fast as possible: a round with --redis-wait-replicas 0, then a round with 1 (WAIT 1 after every batch, before its PUBACKs)"),
        "ratio_is": "msg/s against the mean of the broker QoS 1 ceilings (one subscriber) just before and just after the round",
        "rounds": rounds,
    }))
}

/// Pairs of rounds, each with a bridge of its own: untraced, and exporting its spans to an
/// OTLP receiver with 1% of traces sampled; the order swaps every pair (the machine's load
/// drifts). Each pair's ratio is traced/untraced; the median pair is the figure.
async fn trace_rounds(
    site: &Site,
    broker: &MosquittoServer,
    names: &Names,
    redis: &mut Conn,
    stream: &str,
) -> anyhow::Result<serde_json::Value> {
    let receiver = OtlpReceiver::start().await;
    // The spans are `info` and a service's `RUST_LOG` filters them as it filters its logs:
    // the bench's default (`warn`) would leave nothing to export. Both kinds of round get the
    // same filter (it changes nothing in an untraced bridge: it makes no span).
    let (untraced_site, traced_site) = aurora_bench::trace_sites(site, &receiver, &trace_ratio());
    let pairs = aurora_bench::env_or("BENCH_MQTT_TRACE_PAIRS", 3usize)?.max(1);
    let mut rounds = Vec::with_capacity(pairs);
    let mut ratios = Vec::with_capacity(pairs);
    // CPU per message of the bridge and of Redis (the shared server: an upper bound), a
    // steadier measure of what tracing costs than the throughput of a shared machine.
    let redis_pid = redis_server_pid(redis).await;
    let mut cpu_ratios = Vec::with_capacity(pairs);
    for pair in 0..pairs {
        let order = aurora_bench::pair_order(pair);
        let mut rates = [0.0f64; 2];
        let mut cpu_per_msg = [0.0f64; 2];
        for traced in order {
            let which = if traced { &traced_site } else { &untraced_site };
            let mut bridge = which.start(Svc::MqttBridge, &[]).await;
            let _: () = redis::cmd("DEL").arg(stream).query_async(redis).await?;
            let spans_before = receiver.spans().len();
            let label = if traced { "traced" } else { "untraced" };
            let bridge_pid = bridge.pid().context("the bridge runs")?;
            let cpu_of = |pid: Option<u32>| pid.and_then(aurora_bench::cpu_secs).unwrap_or(0.0);
            let cpu_before = (cpu_of(Some(bridge_pid)), cpu_of(redis_pid));
            let tp = throughput_of(
                broker.port(),
                names,
                redis,
                stream,
                format!("tr{pair}{}-dev-", &label[..1]),
                ROUND_STALL,
                None,
            )
            .await?;
            let bridge_cpu = cpu_of(Some(bridge_pid)) - cpu_before.0;
            let redis_cpu = cpu_of(redis_pid) - cpu_before.1;
            let per_msg = |secs: f64| secs * 1e6 / THROUGHPUT_MESSAGES as f64;
            stop(&mut bridge).await;
            // What the last batches exported (the exporter flushes at shutdown).
            tokio::time::sleep(Duration::from_millis(200)).await;
            let spans = receiver.spans().len() - spans_before;
            // At ratio 0 nothing is to be exported: that round measures the contexts alone.
            let exports = trace_ratio().parse::<f64>().map_or(true, |r| r > 0.0);
            if traced && spans == 0 && exports {
                anyhow::bail!("the traced bridge exported no span: the round measured nothing");
            }
            println!(
                "  pair {}, {label}: {:.0} msg/s, lost {}, duplicated {}, spans received {spans}; CPU per message: bridge {:.2} µs, Redis {:.2} µs",
                pair + 1,
                tp.rate,
                tp.lost,
                tp.duplicated,
                per_msg(bridge_cpu),
                per_msg(redis_cpu),
            );
            rates[usize::from(traced)] = tp.rate;
            cpu_per_msg[usize::from(traced)] = per_msg(bridge_cpu + redis_cpu);
            rounds.push(json!({
                "pair": pair + 1,
                "traced": traced,
                "msg_s": tp.rate.round(),
                "seconds": round_to(tp.seconds, 3),
                "lost": tp.lost,
                "duplicated": tp.duplicated,
                "spans_received": spans,
                "bridge_cpu_us_per_msg": round_to(per_msg(bridge_cpu), 3),
                "redis_cpu_us_per_msg": round_to(per_msg(redis_cpu), 3),
            }));
        }
        let ratio = rates[1] / rates[0];
        let cpu_ratio = cpu_per_msg[1] / cpu_per_msg[0];
        println!(
            "  pair {}: traced/untraced {:.3}; CPU per message (bridge and Redis) traced/untraced {:.3}",
            pair + 1,
            ratio,
            cpu_ratio
        );
        ratios.push(ratio);
        cpu_ratios.push(cpu_ratio);
    }
    let cost = aurora_bench::TraceCost::of(&ratios).context("no pair measured")?;
    let cpu_median = *median_by(&cpu_ratios, |r| *r).context("no pair measured")?;
    println!(
        "tracing at ratio {}: CPU per message of the bridge and Redis, traced/untraced {cpu_median:.3} (median of {pairs} pairs)",
        trace_ratio()
    );
    println!("{}", cost.line());
    let mut out = json!({
        "what": format!("pairs of rounds, each with a fresh bridge (release binary, default flags) taking {THROUGHPUT_MESSAGES} messages from {DEVICES} distinct devices as fast as possible: untraced, and traced (OTEL_EXPORTER_OTLP_ENDPOINT to an OTLP/HTTP receiver in the bench's process, OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG={}; the devices send no trace context, so each message starts a trace), the order swapped every pair", trace_ratio()),
        "sampler": "parentbased_traceidratio",
        "sampler_arg": trace_ratio(),
        "rounds": rounds,
        "pair_ratios": ratios.iter().map(|r| round_to(*r, 3)).collect::<Vec<_>>(),
        "ratio_is": "traced msg/s over untraced msg/s of the same pair",
        "cpu_pair_ratios": cpu_ratios.iter().map(|r| round_to(*r, 3)).collect::<Vec<_>>(),
        "cpu_ratio_is": "CPU seconds per message of the bridge plus the shared Redis server (from /proc), traced over untraced, of the same pair; Redis also serves whatever else runs on the machine",
        "cpu_ratio_median": round_to(cpu_median, 3),
    });
    if let (Some(out), serde_json::Value::Object(figure)) = (out.as_object_mut(), cost.json()) {
        out.extend(figure);
    }
    Ok(out)
}

/// The pid of the Redis server (`INFO server`), when it runs on this machine.
async fn redis_server_pid(redis: &mut Conn) -> Option<u32> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(redis)
        .await
        .ok()?;
    let pid: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

/// Of the sequence numbers `0..total`, how many the stream lacks and how many it holds more
/// than once.
async fn lost_and_duplicated(redis: &mut Conn, stream: &str, total: u64) -> (u64, u64) {
    let seqs = aurora_testkit::tally(
        stream_docs(redis, stream)
            .await
            .into_iter()
            .filter_map(|(_, doc)| doc["seq"].as_u64())
            .map(|seq| seq.to_string()),
    );
    let lost = (0..total)
        .filter(|seq| !seqs.contains_key(&seq.to_string()))
        .count() as u64;
    (lost, aurora_testkit::duplicates(&seqs) as u64)
}

struct Latency {
    messages: u64,
    lost: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn latency(
    port: u16,
    names: &Names,
    redis: &mut Conn,
    stream: &str,
) -> anyhow::Result<Latency> {
    let start_id = bus::last_id(redis, stream).await?;
    let total = LATENCY_RATE * LATENCY_SECONDS;
    // The reader sees each entry as it is written and notes its age.
    let mut tail_conn = bus::connect_blocking(REDIS_URL, Duration::from_millis(200)).await?;
    let tail_stream = stream.to_string();
    let reader = tokio::spawn(async move {
        let mut cursor = start_id;
        let mut ages = Vec::with_capacity(total as usize);
        let deadline = Instant::now() + Duration::from_secs(LATENCY_SECONDS + 30);
        while (ages.len() as u64) < total && Instant::now() < deadline {
            let streams = [(tail_stream.clone(), cursor.clone())];
            let entries = bus::tail(
                &mut tail_conn,
                &streams,
                1000,
                Some(Duration::from_millis(200)),
            )
            .await?;
            let now = now_us();
            for e in entries {
                cursor = e.id.clone();
                let v: serde_json::Value =
                    serde_json::from_slice(e.data.as_deref().unwrap_or_default())?;
                if let Some(ts) = v["ts"].as_u64() {
                    ages.push(now.saturating_sub(ts) as f64);
                }
            }
        }
        anyhow::Ok(ages)
    });
    // Publishers at a fixed rate: every millisecond, each sends its share.
    let per_pub_per_ms = LATENCY_RATE as f64 / 1000.0 / PUBLISHERS as f64;
    // Connected before the clock starts: each message's age counts from its publish, and
    // the first ones must not wait for a handshake.
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS as u64 {
        let publisher = Publisher::connect(port, &format!("latency-pub-{p}"));
        publisher.wait_connected().await?;
        publishers.push(publisher);
    }
    let mut tasks = Vec::new();
    for (p, publisher) in (0u64..).zip(publishers) {
        let names = names.clone();
        let per = total / PUBLISHERS as u64;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let started = Instant::now();
            let mut sent = 0u64;
            while sent < per {
                tick.tick().await;
                let due = ((started.elapsed().as_secs_f64() * 1000.0) * per_pub_per_ms) as u64;
                while sent < due.min(per) {
                    let seq = p * per + sent;
                    let topic = names.mqtt_sensor_topic(
                        &format!("lat-{}", seq % 1000),
                        DeviceTopicKind::Telemetry,
                    );
                    publisher
                        .client
                        .publish(topic, QoS::AtLeastOnce, false, payload(seq, now_us()))
                        .await?;
                    sent += 1;
                }
            }
            publisher.wait_acked(per).await?;
            publisher.close().await;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut ages = reader.await??;
    let messages = ages.len() as u64;
    ages.sort_by(f64::total_cmp);
    // Microseconds, reported in milliseconds to two places.
    let pct = |q: f64| round_to(percentile(&ages, q) / 1000.0, 2);
    Ok(Latency {
        messages,
        lost: total.saturating_sub(messages),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    })
}
