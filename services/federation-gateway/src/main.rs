//! The federation-gateway binary: parses its configuration and runs the library.

use anyhow::Context;
use aurora_core::ops::{self, Readiness};
use clap::Parser;
use federation_gateway::{Args, SERVICE};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = ops::init_telemetry(SERVICE, args.common.log_format);
    let shutdown = ops::shutdown_token();
    let _metrics = ops::metrics_handle();
    federation_gateway::run(args, Readiness::new(), shutdown)
        .await
        .context("federation-gateway failed")
}
