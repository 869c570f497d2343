//! The service's consumer group on its input streams, and bad input dead-lettered.

use aurora_core::bus::{self, BusError, Entry, GroupConfig, GroupReader};
use aurora_core::trace::TraceContext;

use crate::error::BatchError;
use crate::shared::Shared;
use crate::{telemetry, SERVICE};

/// The group of this service on `stream`, read as `consumer`.
pub fn group_config(shared: &Shared, stream: &str, consumer: &str) -> GroupConfig {
    let cfg = &shared.cfg;
    let mut group = GroupConfig::new(
        stream,
        SERVICE,
        consumer,
        &cfg.names.deadletter(SERVICE),
        SERVICE,
    );
    group.batch = cfg.batch_size.max(1);
    group.claim_idle = cfg.claim_idle;
    group
}

/// A reader of `stream` as `consumer`, with a connection of its own (it blocks).
pub async fn reader(
    shared: &Shared,
    stream: &str,
    consumer: &str,
) -> Result<GroupReader, BusError> {
    let group = group_config(shared, stream, consumer);
    let conn = bus::connect_blocking(&shared.cfg.redis_url, group.block).await?;
    GroupReader::new(group, conn, shared.producer.clone()).await
}

/// Counts and dead-letters an entry that is not valid input.
pub async fn reject(reader: &GroupReader, entry: &Entry, reason: &str) -> Result<(), BatchError> {
    telemetry::dead_letter(&reader.config().stream);
    reader.dead_letter(entry, reason).await?;
    Ok(())
}

/// Writes alerts to `aurora:alerts` in one pipelined round trip.
pub async fn publish_alerts(
    shared: &Shared,
    alerts: &[aurora_core::model::Alert],
) -> Result<(), BusError> {
    let stream = shared.cfg.names.alerts();
    let docs: Vec<(&str, Vec<u8>)> = alerts
        .iter()
        .map(|a| (stream.as_str(), aurora_core::model::to_bytes(a)))
        .collect();
    shared.producer.publish_batch(&docs).await?;
    Ok(())
}

/// As [`publish_alerts`], each alert carrying a trace context of its own (the span of the
/// entry it was raised for), or none.
pub async fn publish_alerts_traced(
    shared: &Shared,
    alerts: &[(aurora_core::model::Alert, Option<TraceContext>)],
) -> Result<(), BusError> {
    let stream = shared.cfg.names.alerts();
    let docs: Vec<(&str, Vec<u8>, Option<TraceContext>)> = alerts
        .iter()
        .map(|(a, trace)| {
            (
                stream.as_str(),
                aurora_core::model::to_bytes(a),
                trace.clone(),
            )
        })
        .collect();
    shared.producer.publish_batch_traced(&docs).await?;
    Ok(())
}
