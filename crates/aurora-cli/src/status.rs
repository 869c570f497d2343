use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use futures::TryStreamExt;
use serde_json::{json, Value};

use aurora_core::bus::{GroupConfig, ReplicaWait};
use aurora_core::config::parse_duration;
use aurora_core::durability::{self, Finding};
use aurora_core::names::{DeviceTopicKind, FederatedKind};

use crate::Ctx;

#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Only the Redis streams (skip JetStream).
    #[arg(long)]
    no_nats: bool,
    /// A group consumer idle this long is shown as gone: the threshold after which the
    /// services remove a consumer that holds nothing (default: theirs, 300s).
    #[arg(long, value_parser = parse_duration)]
    forget_idle: Option<Duration>,
    /// The replicas the services' writes wait for (their --redis-wait-replicas): with 1 or
    /// more, Redis keeps what they acknowledge by replication, whatever its persistence.
    #[arg(long, env = "AURORA_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    redis_wait_replicas: u32,
}

/// The services, each of which may keep a replica registry (`<ns>:<service>:replicas`); a
/// consumer group is named after the service that reads it.
pub const SERVICES: [&str; 5] = [
    "mqtt-bridge",
    "eve-ingest",
    "federation-gateway",
    "ws-gateway",
    "device-registry",
];

/// The services' own threshold (`GroupConfig::forget_idle`).
fn default_forget_idle() -> Duration {
    GroupConfig::new("", "", "", "", "").forget_idle
}

/// Every stream of the namespace.
fn streams(ctx: &Ctx) -> Vec<String> {
    let n = &ctx.names;
    let mut keys: Vec<String> = FederatedKind::ALL
        .into_iter()
        .map(|k| n.federated_stream(k))
        .collect();
    keys.push(n.approvals());
    keys.extend(DeviceTopicKind::ALL.into_iter().map(|k| n.cps_stream(k)));
    keys.extend([
        n.cps_registrations(),
        n.cps_deadletter(),
        n.cps_commands(),
        n.cps_command_status(),
        n.cps_devices(),
        n.federation_deadletter(),
    ]);
    keys
}

pub async fn run(ctx: &Ctx, args: StatusArgs) -> Result<()> {
    let forget_idle = args.forget_idle.unwrap_or_else(default_forget_idle);
    let mut conn = ctx.redis().await?;
    let registries = replica_status(ctx, &mut conn).await?;
    let redis = redis_status(ctx, &mut conn, &registries, forget_idle).await?;
    let mut durable = vec![redis_durability(&conn, args.redis_wait_replicas).await];
    let nats = if args.no_nats {
        None
    } else {
        Some(nats_status(ctx).await)
    };
    if let Some(Ok(streams)) = &nats {
        durable.extend(
            streams
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.get("durability").cloned()),
        );
    }
    if args.json {
        let nats_json = match &nats {
            Some(Ok(v)) => v.clone(),
            Some(Err(e)) => json!({"error": format!("{e:#}")}),
            None => Value::Null,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "redis": redis,
                "replicas": registries,
                "forget_idle_ms": millis(forget_idle),
                "jetstream": nats_json,
                "durability": durable,
            }))?
        );
    } else {
        print_redis(&redis);
        print_consumers(&redis, forget_idle);
        print_replicas(&registries);
        if let Some(Ok(v)) = &nats {
            print_nats(v);
        }
        println!();
        print!("{}", durability_table(&durable));
    }
    match nats {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The replica registry of every service: each member with its lease (`live` while the lease
/// key exists, `gone` once it lapsed), the time left on it and who adopts it.
async fn replica_status(ctx: &Ctx, conn: &mut aurora_core::bus::Conn) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for service in SERVICES {
        let key = ctx.names.state_key(service, "replicas");
        let mut members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(conn)
            .await
            .with_context(|| format!("SMEMBERS {key}"))?;
        members.sort();
        let mut replicas = Vec::with_capacity(members.len());
        for instance in members {
            let lease = ctx.names.state_key(service, &format!("replica:{instance}"));
            let (ttl, adopter): (i64, Option<String>) = redis::pipe()
                .cmd("PTTL")
                .arg(&lease)
                .cmd("GET")
                .arg(format!("{lease}:adopter"))
                .query_async(conn)
                .await
                .with_context(|| format!("PTTL {lease}"))?;
            // -2: no such key (the lease lapsed); -1: a key without expiry (still a lease).
            let live = ttl != -2;
            replicas.push(json!({
                "instance": instance,
                "state": if live { "live" } else { "gone" },
                "lease_ms": (ttl >= 0).then_some(ttl),
                "adopter": adopter,
            }));
        }
        out.push(json!({"service": service, "registry": key, "replicas": replicas}));
    }
    Ok(out)
}

/// Whether a group consumer is live or gone, and why it is gone. A consumer is gone when it
/// has been idle for `forget_idle` or longer, or when the service it reads for (the group is
/// named after it) keeps a replica registry and the consumer belongs to no replica of it with
/// a lease. A consumer belongs to replica `r` when it is named `r` or `r-<anything>` (one
/// service's replica may read a stream with several consumers, e.g. `r-registration-0`).
fn consumer_state(
    name: &str,
    idle: Duration,
    registry: Option<&Value>,
    forget_idle: Duration,
) -> (&'static str, Option<String>) {
    if idle >= forget_idle {
        return (
            "gone",
            Some(format!("idle {} (>= {})", human(idle), human(forget_idle))),
        );
    }
    let Some(replicas) = registry.and_then(|r| r["replicas"].as_array()) else {
        return ("live", None);
    };
    if replicas.is_empty() {
        return ("live", None);
    }
    let owner = replicas
        .iter()
        .filter_map(|r| Some((r["instance"].as_str()?, r["state"] == "live")))
        .filter(|(instance, _)| {
            name == *instance
                || name
                    .strip_prefix(instance)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
        // The longest matching name: `r1-a` before `r1` for the consumer `r1-a-x`.
        .max_by_key(|(instance, _)| instance.len());
    match owner {
        Some((_, true)) => ("live", None),
        Some((instance, false)) => ("gone", Some(format!("replica {instance}'s lease lapsed"))),
        None => ("gone", Some("not a registered replica".to_string())),
    }
}

/// A duration for people: `850 ms`, `42 s`, `7 min`.
fn human(d: Duration) -> String {
    let ms = millis(d);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{} s", ms / 1000)
    } else {
        format!("{} min", ms / 60_000)
    }
}

async fn redis_status(
    ctx: &Ctx,
    conn: &mut aurora_core::bus::Conn,
    registries: &[Value],
    forget_idle: Duration,
) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for key in streams(ctx) {
        let len: u64 = redis::cmd("XLEN")
            .arg(&key)
            .query_async(conn)
            .await
            .with_context(|| format!("XLEN {key}"))?;
        // A stream that does not exist has no groups (XINFO refuses it); an empty stream may.
        let infos: Vec<redis::streams::StreamInfoGroup> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async::<redis::streams::StreamInfoGroupsReply>(conn)
            .await
            .map(|r| r.groups)
            .unwrap_or_default();
        let mut groups = Vec::with_capacity(infos.len());
        for g in infos {
            let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&key)
                .arg(&g.name)
                .query_async(conn)
                .await
                .with_context(|| format!("XINFO CONSUMERS {key} {}", g.name))?;
            let registry = registries.iter().find(|r| r["service"] == g.name.as_str());
            let members: Vec<Value> = reply
                .consumers
                .into_iter()
                .map(|c| {
                    let idle = Duration::from_millis(c.idle as u64);
                    let (state, reason) = consumer_state(&c.name, idle, registry, forget_idle);
                    json!({
                        "consumer": c.name,
                        "pending": c.pending,
                        "idle_ms": c.idle,
                        "state": state,
                        "reason": reason,
                    })
                })
                .collect();
            groups.push(json!({
                "group": g.name,
                "consumers": g.consumers,
                "pending": g.pending,
                "lag": g.lag,
                "members": members,
            }));
        }
        out.push(json!({"stream": key, "length": len, "groups": groups}));
    }
    Ok(out)
}

/// Whether Redis keeps what the services acknowledge (the services' own self-check,
/// `aurora_core::durability`), as the services would see it with `wait_replicas`.
async fn redis_durability(conn: &aurora_core::bus::Conn, wait_replicas: u32) -> Value {
    let wait = (wait_replicas > 0).then_some(ReplicaWait {
        replicas: wait_replicas,
        timeout: Duration::from_secs(2),
    });
    let mut conn = conn.clone().with_replica_wait(wait);
    match durability::check_redis(&mut conn).await {
        Ok(finding) => durability_json(&finding, "every service"),
        Err(e) => json!({
            "dependency": e.dependency,
            "used_by": "every service",
            "verdict": "unchecked",
            "why": e.reason,
        }),
    }
}

fn durability_json(finding: &Finding, used_by: &str) -> Value {
    json!({
        "dependency": finding.dependency,
        "used_by": used_by,
        "verdict": finding.verdict,
        "why": finding.why,
    })
}

async fn nats_status(ctx: &Ctx) -> Result<Value> {
    let client = tokio::time::timeout(Duration::from_secs(3), ctx.nats.connect("aurora-cli"))
        .await
        .map_err(|_| anyhow!("NATS at {} did not answer within 3 s", ctx.nats.nats_url))?
        .with_context(|| format!("cannot connect to NATS at {}", ctx.nats.nats_url))?;
    tokio::time::timeout(Duration::from_secs(3), client.flush())
        .await
        .map_err(|_| anyhow!("NATS at {} is not reachable", ctx.nats.nats_url))?
        .context("NATS flush")?;
    let js = async_nats::jetstream::new(client);
    let mut out = Vec::new();
    for (name, used_by) in [
        (ctx.names.nats_stream(), "federation-gateway"),
        (ctx.names.suricata_stream(), "eve-ingest"),
    ] {
        let mut stream = match js.get_stream(&name).await {
            Ok(s) => s,
            Err(_) => {
                out.push(json!({"stream": name, "exists": false}));
                continue;
            }
        };
        let info = stream.info().await?.clone();
        let mut consumers: Vec<Value> = stream
            .consumers()
            .map_ok(|c| {
                json!({
                    "consumer": c.name,
                    "pending": c.num_pending,
                    "ack_pending": c.num_ack_pending,
                    "redelivered": c.num_redelivered,
                })
            })
            .try_collect()
            .await
            .unwrap_or_default();
        if name == ctx.names.nats_stream() {
            time_to_loss(&stream, &mut consumers).await;
        }
        out.push(json!({
            "stream": name,
            "exists": true,
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "first_seq": info.state.first_sequence,
            "last_seq": info.state.last_sequence,
            "consumers": consumers,
            "durability": durability_json(&durability::judge_stream(&info), used_by),
        }));
    }
    Ok(Value::Array(out))
}

/// A text table: each column as wide as its widest cell, two spaces between columns.
struct Table {
    header: Vec<String>,
    /// Which columns are right-aligned (numbers).
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

/// The space between two columns.
const GAP: &str = "  ";

impl Table {
    /// Columns named by `(header, right-aligned)`.
    fn new(columns: &[(&str, bool)]) -> Self {
        Self {
            header: columns.iter().map(|(h, _)| h.to_string()).collect(),
            right: columns.iter().map(|(_, r)| *r).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (width, right)) in widths.iter().zip(&self.right).enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    line.push_str(GAP);
                }
                let pad = width.saturating_sub(cell.chars().count());
                if *right {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A JSON value as a cell: numbers and strings as they are, `-` for what is missing.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn redis_table(streams: &[Value]) -> String {
    let mut table = Table::new(&[
        ("REDIS STREAM", false),
        ("LENGTH", true),
        ("GROUPS (consumers / pending / lag)", false),
    ]);
    for s in streams {
        let groups: Vec<String> = s["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| {
                format!(
                    "{} ({} / {} / {})",
                    cell(&g["group"]),
                    cell(&g["consumers"]),
                    cell(&g["pending"]),
                    cell(&g["lag"])
                )
            })
            .collect();
        table.row(vec![
            cell(&s["stream"]),
            cell(&s["length"]),
            groups.join(", "),
        ]);
    }
    table.render()
}

/// Each site's time to loss on the federation stream (federation-gateway's rule, at the
/// stream's average arrival rate): `time_to_loss_s` (null: nothing bounds it) and `lost`.
async fn time_to_loss(stream: &async_nats::jetstream::stream::Stream, consumers: &mut [Value]) {
    let Ok((view, sites)) = federation_gateway::loss::read(stream).await else {
        return;
    };
    let rate = view.average_rate();
    for c in consumers.iter_mut() {
        let Some((_, next, age)) = sites
            .iter()
            .find(|(name, _, _)| c["consumer"] == name.as_str())
        else {
            continue;
        };
        let seconds = federation_gateway::loss::seconds_to_loss(&view, *next, *age, rate);
        c["time_to_loss_s"] = if seconds.is_finite() {
            json!(seconds.round() as u64)
        } else {
            Value::Null
        };
        c["lost"] = json!(federation_gateway::loss::lost(&view, *next));
    }
}

/// `(pending / ack pending)`, and the time to loss where it is known.
fn consumer_cell(c: &Value) -> String {
    let mut cell_text = format!(
        "{} ({} / {}",
        cell(&c["consumer"]),
        cell(&c["pending"]),
        cell(&c["ack_pending"])
    );
    match (&c["lost"], &c["time_to_loss_s"]) {
        (Value::Number(lost), _) if lost.as_u64() > Some(0) => {
            cell_text.push_str(&format!(" / {lost} LOST"))
        }
        (_, Value::Number(s)) => cell_text.push_str(&format!(" / loss in {s}s")),
        _ => {}
    }
    cell_text.push(')');
    cell_text
}

fn nats_table(streams: &Value) -> String {
    let mut table = Table::new(&[
        ("JETSTREAM STREAM", false),
        ("MESSAGES", true),
        ("BYTES", true),
        ("CONSUMERS (pending / ack pending / time to loss)", false),
    ]);
    for s in streams.as_array().into_iter().flatten() {
        if s["exists"] == false {
            table.row(vec![cell(&s["stream"]), "absent".to_string()]);
            continue;
        }
        let consumers: Vec<String> = s["consumers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(consumer_cell)
            .collect();
        table.row(vec![
            cell(&s["stream"]),
            cell(&s["messages"]),
            cell(&s["bytes"]),
            consumers.join(", "),
        ]);
    }
    table.render()
}

/// Every consumer of every group: pending entries, idle time, live or gone (and why).
fn consumers_table(streams: &[Value], forget_idle: Duration) -> String {
    let mut table = Table::new(&[
        ("STREAM", false),
        ("GROUP", false),
        ("CONSUMER", false),
        ("PENDING", true),
        ("IDLE", true),
        (
            &format!("STATE (gone: idle >= {}, or no lease)", human(forget_idle)),
            false,
        ),
    ]);
    for s in streams {
        for g in s["groups"].as_array().into_iter().flatten() {
            for c in g["members"].as_array().into_iter().flatten() {
                let idle = Duration::from_millis(c["idle_ms"].as_u64().unwrap_or(0));
                let state = match c["reason"].as_str() {
                    Some(why) => format!("{}: {why}", cell(&c["state"])),
                    None => cell(&c["state"]),
                };
                table.row(vec![
                    cell(&s["stream"]),
                    cell(&g["group"]),
                    cell(&c["consumer"]),
                    cell(&c["pending"]),
                    human(idle),
                    state,
                ]);
            }
        }
    }
    table.render()
}

/// A line per dependency: whether it keeps what the services acknowledge, and why.
fn durability_table(rows: &[Value]) -> String {
    let mut table = Table::new(&[
        ("DURABILITY OF", false),
        ("USED BY", false),
        ("VERDICT", false),
        ("WHY", false),
    ]);
    for r in rows {
        table.row(vec![
            cell(&r["dependency"]),
            cell(&r["used_by"]),
            cell(&r["verdict"]),
            cell(&r["why"]),
        ]);
    }
    table.render()
}

/// Every service's replica registry.
fn replicas_table(registries: &[Value]) -> String {
    let mut table = Table::new(&[
        ("SERVICE", false),
        ("REPLICA", false),
        ("STATE", false),
        ("LEASE LEFT", true),
        ("ADOPTED BY", false),
    ]);
    for r in registries {
        let replicas = r["replicas"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if replicas.is_empty() {
            table.row(vec![cell(&r["service"]), "(no registry)".to_string()]);
        }
        for m in replicas {
            let lease = m["lease_ms"]
                .as_u64()
                .map(|ms| human(Duration::from_millis(ms)))
                .unwrap_or_else(|| "-".to_string());
            table.row(vec![
                cell(&r["service"]),
                cell(&m["instance"]),
                cell(&m["state"]),
                lease,
                cell(&m["adopter"]),
            ]);
        }
    }
    table.render()
}

fn print_redis(streams: &[Value]) {
    print!("{}", redis_table(streams));
}

fn print_consumers(streams: &[Value], forget_idle: Duration) {
    println!();
    print!("{}", consumers_table(streams, forget_idle));
}

fn print_replicas(registries: &[Value]) {
    println!();
    print!("{}", replicas_table(registries));
}

fn print_nats(streams: &Value) {
    println!();
    print!("{}", nats_table(streams));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte offsets where the columns of a line start (after runs of two spaces or more).
    fn column_starts(line: &str) -> Vec<usize> {
        let mut starts = vec![0];
        let bytes = line.as_bytes();
        for i in 2..bytes.len() {
            if bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ' {
                starts.push(i);
            }
        }
        starts
    }

    #[test]
    fn a_sites_time_to_loss_and_its_loss_are_shown() {
        let streams = json!([
            {"stream": "AURORA", "exists": true, "messages": 40, "bytes": 4000,
             "consumers": [
                {"consumer": "site-a", "pending": 0, "ack_pending": 0, "time_to_loss_s": 3600, "lost": 0},
                {"consumer": "site-b", "pending": 40, "ack_pending": 0, "time_to_loss_s": 0, "lost": 15},
                {"consumer": "site-c", "pending": 0, "ack_pending": 0, "time_to_loss_s": null, "lost": 0}
             ]},
        ]);
        let text = nats_table(&streams);
        assert!(text.contains("site-a (0 / 0 / loss in 3600s)"), "{text}");
        assert!(text.contains("site-b (40 / 0 / 15 LOST)"), "{text}");
        assert!(text.contains("site-c (0 / 0)"), "{text}");
    }

    #[test]
    fn jetstream_columns_are_separated_and_aligned() {
        let streams = json!([
            {"stream": "AURORA", "exists": true, "messages": 13768, "bytes": 4677747,
             "consumers": [{"consumer": "site-a", "pending": 0, "ack_pending": 12}]},
            {"stream": "A_VERY_LONG_NAMESPACE_OF_FORTY_CHARACTERS_SURICATA", "exists": true,
             "messages": 123456789012_u64, "bytes": 98765432109876_u64, "consumers": []},
            {"stream": "suricata", "exists": false},
        ]);
        let text = nats_table(&streams);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(!text.contains("13768 4677747"), "{text}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["AURORA", "13768", "4677747", "site-a", "(0", "/", "12)"],
            "{text}"
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "A_VERY_LONG_NAMESPACE_OF_FORTY_CHARACTERS_SURICATA",
                "123456789012",
                "98765432109876"
            ],
            "{text}"
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["suricata", "absent"],
            "{text}"
        );
        // Columns start where the header's do; numbers end where their header ends.
        let header = column_starts(lines[0]);
        assert_eq!(header.len(), 4, "{text}");
        assert_eq!(column_starts(lines[1]).first(), Some(&0));
        assert_eq!(lines[1].find("site-a"), Some(header[3]), "{text}");
        for line in &lines[1..3] {
            let end_of = |needle: &str, l: &str| l.find(needle).map(|i| i + needle.len());
            let messages_end = end_of("MESSAGES", lines[0]);
            let bytes_end = end_of("BYTES", lines[0]);
            let numbers: Vec<&str> = line.split_whitespace().skip(1).take(2).collect();
            assert_eq!(end_of(numbers[0], line), messages_end, "{text}");
            assert_eq!(end_of(numbers[1], line), bytes_end, "{text}");
        }
        for line in &lines {
            assert_eq!(line.trim_end(), *line, "no trailing spaces");
        }
    }

    #[test]
    fn redis_columns_are_separated_and_aligned() {
        let streams = vec![
            json!({"stream": "aurora:alerts", "length": 13768, "groups": [
                {"group": "ws-gateway", "consumers": 2, "pending": 4677747, "lag": 0},
                {"group": "federation-gateway", "consumers": 1, "pending": 0, "lag": null},
            ]}),
            json!({"stream": "a-long-namespace-for-a-test-run:cps:command_status", "length": 4677747, "groups": []}),
        ];
        let text = redis_table(&streams);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "aurora:alerts",
                "13768",
                "ws-gateway",
                "(2",
                "/",
                "4677747",
                "/",
                "0),",
                "federation-gateway",
                "(1",
                "/",
                "0",
                "/",
                "-)"
            ],
            "{text}"
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "a-long-namespace-for-a-test-run:cps:command_status",
                "4677747"
            ],
            "{text}"
        );
        let header = column_starts(lines[0]);
        assert_eq!(header.len(), 3, "{text}");
        assert_eq!(column_starts(lines[1]).len(), 3, "{text}");
        assert_eq!(lines[1].find("ws-gateway"), Some(header[2]), "{text}");
        let length_end = lines[0].find("LENGTH").map(|i| i + "LENGTH".len());
        assert_eq!(lines[1].find("13768").map(|i| i + 5), length_end, "{text}");
        assert_eq!(
            lines[2].find("4677747").map(|i| i + 7),
            length_end,
            "{text}"
        );
    }

    fn registry(members: &[(&str, bool)]) -> Value {
        let replicas: Vec<Value> = members
            .iter()
            .map(|(i, live)| json!({"instance": i, "state": if *live { "live" } else { "gone" }}))
            .collect();
        json!({"service": "mqtt-bridge", "replicas": replicas})
    }

    #[test]
    fn consumers_are_gone_when_idle_past_the_threshold_or_without_a_lease() {
        let forget = Duration::from_secs(300);
        let fresh = Duration::from_secs(2);
        let reg = registry(&[("r1", true), ("r2", false), ("r1-a", false)]);
        // No registry (or an empty one): only the idle time counts.
        assert_eq!(consumer_state("x", fresh, None, forget), ("live", None));
        assert_eq!(
            consumer_state("x", fresh, Some(&registry(&[])), forget),
            ("live", None)
        );
        let (state, why) = consumer_state("x", Duration::from_secs(300), None, forget);
        assert_eq!(state, "gone");
        assert_eq!(why.as_deref(), Some("idle 5 min (>= 5 min)"));
        // With a registry: the consumer of a replica with a lease is live, its workers too.
        assert_eq!(consumer_state("r1", fresh, Some(&reg), forget).0, "live");
        assert_eq!(
            consumer_state("r1-registration-0", fresh, Some(&reg), forget).0,
            "live"
        );
        let (state, why) = consumer_state("r2", fresh, Some(&reg), forget);
        assert_eq!(state, "gone");
        assert_eq!(why.as_deref(), Some("replica r2's lease lapsed"));
        // The longest matching replica name decides: `r1-a` lapsed, `r1` did not.
        assert_eq!(
            consumer_state("r1-a-x", fresh, Some(&reg), forget).0,
            "gone"
        );
        // `r10` is not a consumer of `r1`.
        let (state, why) = consumer_state("r10", fresh, Some(&reg), forget);
        assert_eq!(state, "gone");
        assert_eq!(why.as_deref(), Some("not a registered replica"));
        // Idle past the threshold is gone even with a lease.
        assert_eq!(
            consumer_state("r1", Duration::from_secs(301), Some(&reg), forget).0,
            "gone"
        );
    }

    #[test]
    fn the_default_threshold_is_the_services_own() {
        assert_eq!(default_forget_idle(), Duration::from_secs(300));
    }

    #[test]
    fn consumer_and_replica_tables_show_state_and_reason() {
        let streams = vec![
            json!({"stream": "aurora:cps:commands", "length": 3, "groups": [
                {"group": "mqtt-bridge", "consumers": 2, "pending": 1, "lag": 0, "members": [
                    {"consumer": "r1", "pending": 0, "idle_ms": 120, "state": "live", "reason": null},
                    {"consumer": "r2", "pending": 1, "idle_ms": 42_000, "state": "gone",
                     "reason": "replica r2's lease lapsed"},
                ]},
            ]}),
        ];
        let text = consumers_table(&streams, Duration::from_secs(300));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains("gone: idle >= 5 min, or no lease"),
            "{text}"
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "aurora:cps:commands",
                "mqtt-bridge",
                "r1",
                "0",
                "120",
                "ms",
                "live"
            ],
            "{text}"
        );
        assert!(
            lines[2].ends_with("42 s  gone: replica r2's lease lapsed"),
            "{text}"
        );
        let registries = vec![
            json!({"service": "mqtt-bridge", "replicas": [
                {"instance": "r1", "state": "live", "lease_ms": 8000, "adopter": null},
                {"instance": "r2", "state": "gone", "lease_ms": null, "adopter": "r1"},
            ]}),
            json!({"service": "ws-gateway", "replicas": []}),
        ];
        let text = replicas_table(&registries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["mqtt-bridge", "r1", "live", "8", "s", "-"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["mqtt-bridge", "r2", "gone", "-", "r1"]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["ws-gateway", "(no", "registry)"]
        );
    }
}
