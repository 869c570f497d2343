use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;

use aurora_core::bus;
use aurora_core::Names;

use crate::Ctx;

#[derive(Args)]
pub struct TailArgs {
    /// A stream: `alerts`, `audit`, `approvals`, `iocs`, `agent_results`, `cps:telemetry`,
    /// `cps:deadletter`... (the namespace is added), or a full key.
    stream: String,
    /// Start after this entry id: `$` for new entries only, `0` for the whole stream.
    #[arg(long, default_value = "$")]
    from: String,
    /// One JSON object per line (`{"stream","id","data"}`) instead of pretty output.
    #[arg(long)]
    json: bool,
    /// Stop after this many entries.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this long without reaching --count (exit code 1 if it was not reached).
    #[arg(long, value_parser = aurora_core::config::parse_duration)]
    timeout: Option<Duration>,
}

/// `alerts` -> `aurora:alerts`; a key that already starts with the namespace is kept.
fn stream_key(names: &Names, stream: &str) -> String {
    let prefix = format!("{}:", names.namespace());
    if stream.starts_with(&prefix) || stream.contains(' ') {
        stream.to_string()
    } else {
        format!("{prefix}{stream}")
    }
}

pub async fn run(ctx: &Ctx, args: TailArgs) -> Result<()> {
    let key = stream_key(&ctx.names, &args.stream);
    let block = Duration::from_millis(500);
    let mut conn = bus::connect_blocking(&ctx.redis_url, block)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (is Redis running? `make services` starts it)"))?;
    let mut last = if args.from == "$" {
        bus::last_id(&mut conn, &key).await?
    } else {
        args.from.clone()
    };
    let started = Instant::now();
    let mut seen = 0usize;
    let stdout = std::io::stdout();
    loop {
        if args.count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
        if args.timeout.is_some_and(|t| started.elapsed() >= t) {
            bail!("timed out after {seen} entries");
        }
        let entries =
            bus::tail(&mut conn, &[(key.clone(), last.clone())], 100, Some(block)).await?;
        let mut out = stdout.lock();
        for entry in entries {
            last = entry.id.clone();
            let text = entry
                .data
                .as_deref()
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .unwrap_or_default();
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"stream": entry.stream, "id": entry.id, "data": value})
                )?;
            } else {
                writeln!(out, "── {} {}", entry.stream, entry.id)?;
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            }
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                break;
            }
        }
        out.flush()?;
    }
}
