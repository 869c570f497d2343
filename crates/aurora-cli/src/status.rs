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

fn print_redis(streams: &[Value]) {
    println!(
        "{:<36} {:>9}  groups (consumers / pending / lag)",
        "REDIS STREAM", "LENGTH"
    );
    for s in streams {
        let groups: Vec<String> = s["groups"]
            .as_array()
            .map(|gs| {
                gs.iter()
                    .map(|g| {
                        format!(
                            "{} ({} / {} / {})",
                            g["group"].as_str().unwrap_or("?"),
                            g["consumers"],
                            g["pending"],
                            g["lag"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<36} {:>9}  {}",
            s["stream"].as_str().unwrap_or("?"),
            s["length"],
            groups.join(", ")
        );
    }
}

fn print_nats(streams: &Value) {
    println!();
    println!(
        "{:<36} {:>9} {:>12}  consumers (pending / ack pending)",
        "JETSTREAM STREAM", "MESSAGES", "BYTES"
    );
    for s in streams.as_array().into_iter().flatten() {
        if s["exists"] == false {
            println!(
                "{:<36} {:>9}",
                s["stream"].as_str().unwrap_or("?"),
                "absent"
            );
            continue;
        }
        let consumers: Vec<String> = s["consumers"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        format!(
                            "{} ({} / {})",
                            c["consumer"].as_str().unwrap_or("?"),
                            c["pending"],
                            c["ack_pending"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<36} {:>9} {:>12}  {}",
            s["stream"].as_str().unwrap_or("?"),
            s["messages"],
            s["bytes"],
            consumers.join(", ")
        );
    }
}
