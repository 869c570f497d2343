use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use futures::TryStreamExt;
use serde_json::{json, Value};

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
    let redis = redis_status(ctx).await?;
    let nats = if args.no_nats {
        None
    } else {
        Some(nats_status(ctx).await)
    };
    if args.json {
        let nats_json = match &nats {
            Some(Ok(v)) => v.clone(),
            Some(Err(e)) => json!({"error": format!("{e:#}")}),
            None => Value::Null,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"redis": redis, "jetstream": nats_json}))?
        );
    } else {
        print_redis(&redis);
        if let Some(Ok(v)) = &nats {
            print_nats(v);
        }
    }
    match nats {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

async fn redis_status(ctx: &Ctx) -> Result<Vec<Value>> {
    let mut conn = ctx.redis().await?;
    let mut out = Vec::new();
    for key in streams(ctx) {
        let len: u64 = redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .with_context(|| format!("XLEN {key}"))?;
        let groups: Vec<Value> = if len > 0 {
            let reply: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await;
            reply
                .map(|r| {
                    r.groups
                        .into_iter()
                        .map(|g| {
                            json!({"group": g.name, "consumers": g.consumers, "pending": g.pending, "lag": g.lag})
                        })
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        out.push(json!({"stream": key, "length": len, "groups": groups}));
    }
    Ok(out)
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
    for name in [ctx.names.nats_stream(), ctx.names.suricata_stream()] {
        let mut stream = match js.get_stream(&name).await {
            Ok(s) => s,
            Err(_) => {
                out.push(json!({"stream": name, "exists": false}));
                continue;
            }
        };
        let info = stream.info().await?.clone();
        let consumers: Vec<Value> = stream
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
        out.push(json!({
            "stream": name,
            "exists": true,
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "first_seq": info.state.first_sequence,
            "last_seq": info.state.last_sequence,
            "consumers": consumers,
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

fn nats_table(streams: &Value) -> String {
    let mut table = Table::new(&[
        ("JETSTREAM STREAM", false),
        ("MESSAGES", true),
        ("BYTES", true),
        ("CONSUMERS (pending / ack pending)", false),
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
            .map(|c| {
                format!(
                    "{} ({} / {})",
                    cell(&c["consumer"]),
                    cell(&c["pending"]),
                    cell(&c["ack_pending"])
                )
            })
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

fn print_redis(streams: &[Value]) {
    print!("{}", redis_table(streams));
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
}
