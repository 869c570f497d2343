//! eve-ingest: parses the flags and wires the parts; the work is in the library.

use anyhow::Context;
use clap::Parser;

use aurora_core::ops;
use eve_ingest::config::{Args, DEFAULT_OPS_PORT};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = ops::init_telemetry("eve-ingest", args.common.log_format);
    let _ = ops::metrics_handle();
    let settings = args.settings().context("invalid configuration")?;
    let shutdown = ops::shutdown_token();
    let readiness = ops::Readiness::new();
    let ops_shutdown = tokio_util::sync::CancellationToken::new();
    let (_addr, ops_task) = ops::serve(
        args.common.ops_addr_or(DEFAULT_OPS_PORT),
        readiness.clone(),
        ops_shutdown.clone(),
    )
    .await
    .context("cannot bind the ops address")?;

    let work = eve_ingest::run(
        settings,
        readiness.clone(),
        shutdown.clone(),
        Default::default(),
    );
    tokio::pin!(work);
    let result = tokio::select! {
        r = &mut work => Some(r),
        _ = shutdown.cancelled() => None,
    };
    let result = match result {
        Some(r) => r,
        None => {
            readiness.start_draining();
            match tokio::time::timeout(args.common.shutdown_timeout, work).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(timeout = ?args.common.shutdown_timeout, "drain deadline passed: what was taken stays in processing and is handled at the next start");
                    Ok(())
                }
            }
        }
    };
    ops_shutdown.cancel();
    let _ = ops_task.await;
    result.context("eve-ingest stopped")?;
    tracing::info!("stopped cleanly");
    Ok(())
}
