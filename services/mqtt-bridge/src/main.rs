//! mqtt-bridge: parses the flags and wires the parts; the work is in the library.

use anyhow::Context;
use aurora_core::ops;
use clap::Parser;
use mqtt_bridge::cli::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = ops::init_telemetry("mqtt-bridge", args.common.log_format);
    let cfg = args.config().context("invalid configuration")?;
    let shutdown = ops::shutdown_token();
    let readiness = ops::Readiness::new();
    mqtt_bridge::register_components(&readiness);
    let ops_addr = args.common.ops_addr_or(mqtt_bridge::OPS_PORT);
    let (_, ops_task) = ops::serve(ops_addr, readiness.clone(), shutdown.clone())
        .await
        .with_context(|| format!("cannot serve the ops endpoints on {ops_addr}"))?;
    mqtt_bridge::run(cfg, readiness, shutdown.clone())
        .await
        .context("mqtt-bridge failed")?;
    shutdown.cancel();
    let _ = ops_task.await;
    Ok(())
}
