//! What the trace tests share: a consumer's handler that writes every entry on to another
//! stream.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use aurora_core::bus::{self, BusError, Entry, GroupConfig, GroupReader, Producer};
use aurora_core::consumer::{process_hop, BatchFailure, BatchHandler, Consumer};
use aurora_core::health::Dependencies;
use aurora_core::ops::Readiness;
use aurora_testkit::REDIS_URL;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Failure(#[from] BusError);

impl BatchFailure for Failure {
    fn dependency(&self) -> Option<&'static str> {
        Some("redis")
    }
}

/// Writes every entry on to `out`, then acknowledges it. With `own_hops` each entry is
/// written inside a `process` hop the handler opens for it; else inside the consumer's (for a
/// batch of one).
pub struct Forward {
    pub producer: Producer,
    pub out: String,
    pub own_hops: bool,
}

impl BatchHandler for Forward {
    type Error = Failure;

    fn part(&self) -> &'static str {
        "forward"
    }

    async fn handle(&self, reader: &GroupReader, entries: Vec<Entry>) -> Result<(), Failure> {
        for entry in &entries {
            let data = entry.data.clone().unwrap_or_default();
            let write = self.producer.publish(&self.out, &data);
            if self.own_hops {
                process_hop(entry).scope(write).await?;
            } else {
                write.await?;
            }
            reader.ack(&[&entry.id]).await?;
        }
        Ok(())
    }

    fn traces_entries(&self) -> bool {
        self.own_hops
    }
}

/// A consumer of `stream` (group `g`) forwarding to `out` ([`Forward`]), running until the
/// token is cancelled.
pub async fn spawn_forward(
    producer: &Producer,
    stream: &str,
    out: &str,
    own_hops: bool,
) -> (CancellationToken, JoinHandle<()>) {
    let mut cfg = GroupConfig::new(stream, "g", "c", &format!("{stream}:dead"), "trace-test");
    cfg.block = Duration::from_millis(50);
    let reader = GroupReader::new(
        cfg,
        bus::connect_blocking(REDIS_URL, Duration::from_millis(50))
            .await
            .unwrap(),
        producer.clone(),
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        Consumer {
            reader,
            handler: Forward {
                producer: producer.clone(),
                out: out.to_string(),
                own_hops,
            },
            dependencies: Dependencies::new(),
            readiness: Readiness::new(),
        }
        .run(shutdown.clone()),
    );
    (shutdown, task)
}
