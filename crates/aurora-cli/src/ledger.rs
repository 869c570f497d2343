//! `aurora ledger`: for a window of time, every stream of the namespace and each of its
//! consumer groups: what was written, handled, dead-lettered, dropped by a limit, what is in
//! flight, and every difference named; what the federation stream's limits dropped before a
//! site imported it; and what the MQTT broker says its queue limits dropped
//! (aurora_core::ledger).

use std::time::Duration;

use anyhow::{bail, Result};
use chrono::{DateTime, TimeZone, Utc};
use clap::Args;

use aurora_core::config::parse_duration;
use aurora_core::ledger::{self, BrokerLoss, GroupLedger, JetStreamLoss, Window};

use crate::Ctx;

#[derive(Args)]
pub struct LedgerArgs {
    /// The window: this long up to now (whole minutes, the current one included).
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    since: Duration,
    /// The window's start instead (RFC 3339, e.g. `2026-12-01T22:00:00Z`).
    #[arg(long)]
    from: Option<DateTime<Utc>>,
    /// The window's end with --from (RFC 3339); now when omitted.
    #[arg(long, requires = "from")]
    to: Option<DateTime<Utc>>,
    /// One JSON document: the window and a row per stream and group, with its findings.
    #[arg(long)]
    json: bool,
}

fn minute(bucket: u64) -> String {
    Utc.timestamp_opt((bucket * ledger::BUCKET_MS / 1000) as i64, 0)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| bucket.to_string())
}

/// Prints the ledger; fails (exit status 1) when anything is lost or unexplained.
pub async fn run(ctx: &Ctx, args: LedgerArgs) -> Result<()> {
    let window = match args.from {
        Some(from) => {
            let to = args.to.unwrap_or_else(Utc::now);
            if to < from {
                bail!("--to is before --from");
            }
            Window::between(from.timestamp_millis() as u64, to.timestamp_millis() as u64)
        }
        None => Window::last(args.since),
    };
    let conn = ctx.redis().await?;
    let prefix = format!("{}:", ctx.names.namespace());
    let rows = ledger::report(&conn, &prefix, window).await?;
    let stream = ctx.names.nats_stream();
    let jetstream =
        ledger::jetstream_losses(&conn, &ctx.names.ledger_jetstream(&stream), &stream, window)
            .await?;
    let broker = ledger::broker_losses(&conn, &ctx.names.ledger_mqtt(), window).await?;
    let findings: Vec<String> = rows
        .iter()
        .flat_map(GroupLedger::findings)
        .chain(jetstream.iter().map(JetStreamLoss::finding))
        .chain(broker.iter().map(BrokerLoss::finding))
        .collect();
    if args.json {
        let doc = serde_json::json!({
            "from": minute(window.from),
            "to": minute(window.to),
            "rows": rows,
            "jetstream": jetstream,
            "mqtt_broker": broker,
            "findings": findings,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print(&rows, window, &findings);
    }
    if findings.is_empty() {
        Ok(())
    } else {
        bail!("{} finding(s): entries lost or unexplained", findings.len())
    }
}

fn print(rows: &[GroupLedger], window: Window, findings: &[String]) {
    println!(
        "Ledger from {} to {} ({} minutes): in = done + dead-lettered + dropped + in flight",
        minute(window.from),
        minute(window.to),
        window.to - window.from
    );
    if rows.is_empty() {
        println!("no stream of this namespace has a consumer group");
    }
    let hop = |r: &GroupLedger| format!("{} -> {}", r.stream, r.group);
    let width = rows.iter().map(|r| hop(r).len()).max().unwrap_or(0).max(4);
    if !rows.is_empty() {
        println!(
            "{:<width$} {:>9} {:>9} {:>7} {:>8} {:>10} {:>12} {:>12}",
            "HOP", "IN", "DONE", "DEAD", "DROPPED", "IN FLIGHT", "REDELIVERED", "UNEXPLAINED"
        );
    }
    for r in rows {
        println!(
            "{:<width$} {:>9} {:>9} {:>7} {:>8} {:>10} {:>12} {:>12}",
            hop(r),
            r.written,
            r.done,
            r.dead,
            r.dropped(),
            r.in_flight(),
            r.redelivered,
            r.unexplained
        );
    }
    if findings.is_empty() {
        println!(
            "every entry written in the window is handled, dead-lettered or in flight; no federated message was dropped unimported; the MQTT broker reported no drop"
        );
    } else {
        for f in findings {
            println!("LOST OR UNEXPLAINED: {f}");
        }
    }
}
