//! ws-gateway: parses the flags and runs the gateway until SIGTERM.

use anyhow::Context;
use clap::Parser;
use ws_gateway::{Args, SERVICE};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = aurora_core::ops::init_telemetry(SERVICE, args.common.log_format);
    let _ = aurora_core::ops::metrics_handle();
    let shutdown = aurora_core::ops::shutdown_token();
    let gateway = ws_gateway::start(args, shutdown)
        .await
        .context("ws-gateway could not start")?;
    if !gateway.wait().await {
        anyhow::bail!("drain deadline passed: some clients were not closed cleanly");
    }
    Ok(())
}
