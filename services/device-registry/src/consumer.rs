//! The loop every stream consumer of the service runs: read a batch through the group,
//! hand it to its handler, and on failure back off and read the same entries again (they
//! stay pending until the handler acknowledges them after its durable writes).

use std::future::Future;

use aurora_core::bus::{self, Entry, GroupConfig, GroupReader};
use tokio_util::sync::CancellationToken;

use crate::{back_off, report_failure, BatchError, Context};

/// What a consumer does with a batch. It acknowledges (or dead-letters) each entry itself,
/// only after what it wrote is durable; an error leaves the rest pending.
pub trait BatchHandler: Send + Sync + 'static {
    /// Its name in logs and metrics.
    const PART: &'static str;

    fn handle(
        &self,
        ctx: &Context,
        reader: &GroupReader,
        entries: Vec<Entry>,
    ) -> impl Future<Output = Result<(), BatchError>> + Send;
}

/// The group of this service on `stream`, read as `consumer`.
pub fn group_config(ctx: &Context, stream: &str, consumer: &str) -> GroupConfig {
    let mut cfg = GroupConfig::new(
        stream,
        crate::SERVICE,
        consumer,
        &ctx.cfg.names.deadletter(crate::SERVICE),
        crate::SERVICE,
    );
    cfg.batch = ctx.cfg.batch_size.max(1);
    cfg.claim_idle = ctx.cfg.claim_idle;
    cfg
}

/// A reader with a connection of its own.
pub async fn reader(ctx: &Context, cfg: GroupConfig) -> Result<GroupReader, bus::BusError> {
    let conn = bus::connect_blocking(&ctx.cfg.redis_url, cfg.block).await?;
    GroupReader::new(cfg, conn, ctx.producer.clone()).await
}

/// Runs `handler` on every batch until `shutdown`; a batch being handled is finished first.
pub async fn run<H: BatchHandler>(
    ctx: Context,
    mut reader: GroupReader,
    handler: H,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = reader.next_batch() => batch,
        };
        let result = match batch {
            Ok(entries) if entries.is_empty() => continue,
            Ok(entries) => handler.handle(&ctx, &reader, entries).await,
            Err(e) => Err(BatchError::Bus(e)),
        };
        match result {
            Ok(()) => attempt = 0,
            Err(e) => {
                report_failure(&ctx, H::PART, &e);
                // An outage is not the entries' fault: wait until PostgreSQL and Redis answer
                // before delivering them again, so they do not run out of deliveries and end
                // up dead-lettered.
                loop {
                    if !back_off(&mut attempt, &shutdown).await {
                        return;
                    }
                    if dependencies_up(&ctx).await {
                        break;
                    }
                }
                // A fresh reader reads this consumer's pending entries first: the failed
                // batch comes again now, not after the claim timeout.
                let cfg = reader.config().clone();
                match self::reader(&ctx, cfg).await {
                    Ok(r) => reader = r,
                    Err(e) => report_failure(&ctx, H::PART, &BatchError::Bus(e)),
                }
            }
        }
    }
}

async fn dependencies_up(ctx: &Context) -> bool {
    let mut conn = ctx.producer.conn();
    crate::db::ping(&ctx.pool).await.is_ok() && bus::ping(&mut conn).await.is_ok()
}

/// Counts and dead-letters an entry that is not valid input.
pub async fn reject(reader: &GroupReader, entry: &Entry, reason: &str) -> Result<(), BatchError> {
    metrics::counter!(crate::telemetry::DEAD_LETTERS, "stream" => reader.config().stream.clone())
        .increment(1);
    reader.dead_letter(entry, reason).await?;
    Ok(())
}
