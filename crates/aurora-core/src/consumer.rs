//! The one stream consumer loop: read a batch through the group, hand it to a
//! [`BatchHandler`], and when the batch fails, back off and wait until the service's
//! dependencies answer before reading the same entries again. An outage is not the entries'
//! fault: re-reading them while PostgreSQL or Redis is down would spend their deliveries and
//! dead-letter good entries.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::bus::{BusError, Entry, GroupReader};
use crate::health::Dependencies;
use crate::ops::Readiness;
use crate::retry::Backoff;

/// Why a batch could not be handled: its entries stay pending and come again.
pub trait BatchFailure: std::fmt::Display + From<BusError> + Send {
    /// The readiness part (dependency) the failure says is down, if it says one.
    fn dependency(&self) -> Option<&'static str>;
}

/// What a consumer does with a batch. It acknowledges (or dead-letters) each entry itself,
/// after what it wrote is durable; an error leaves the rest pending.
pub trait BatchHandler: Send + Sync + 'static {
    type Error: BatchFailure;

    /// Its name in logs and the `part` label of the batch-failure metric.
    fn part(&self) -> &'static str;

    fn handle(
        &self,
        reader: &GroupReader,
        entries: Vec<Entry>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Called after a failed batch (a metric of the service's own).
    fn failed(&self, _error: &Self::Error) {}
}

/// A reader, its handler, and what it waits for after a failure.
pub struct Consumer<H> {
    pub reader: GroupReader,
    pub handler: H,
    pub dependencies: Dependencies,
    pub readiness: Readiness,
}

impl<H: BatchHandler> Consumer<H> {
    /// Runs until `shutdown`; a batch being handled is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return,
                batch = self.reader.next_batch() => batch,
            };
            let result = match batch {
                Ok(entries) if entries.is_empty() => continue,
                Ok(entries) => self.handler.handle(&self.reader, entries).await,
                Err(e) => Err(H::Error::from(e)),
            };
            let Err(error) = result else {
                backoff.reset();
                continue;
            };
            tracing::warn!(
                part = self.handler.part(),
                stream = %self.reader.config().stream,
                error = %error,
                "batch failed; its entries will be delivered again"
            );
            self.handler.failed(&error);
            if let Some(dependency) = error.dependency() {
                self.readiness.set_not_ready(dependency, error.to_string());
            }
            if !backoff.wait(&shutdown).await
                || !self.dependencies.wait_up(&self.readiness, &shutdown).await
            {
                return;
            }
            // This consumer's pending entries are read first again: the failed batch comes
            // back now, not after the claim timeout.
            self.reader.rewind();
        }
    }
}
