//! The one stream consumer loop: read a batch through the group, hand it to a
//! [`BatchHandler`], and when the batch fails, back off and wait until the service's
//! dependencies answer before reading the same entries again. An outage is not the entries'
//! fault: re-reading them while PostgreSQL or Redis is down would spend their deliveries and
//! dead-letter good entries.
//!
//! A batch that fails because of its input (a record a dependency refused: text PostgreSQL
//! cannot store, a value out of range) is split in halves, each handled again, until the
//! record that fails on its own is found; it is dead-lettered with the real reason and the
//! good records go on (no head-of-line blocking, see docs/contract.md, Streams). A consumer
//! whose batches keep failing for another reason is not ready (its part names the error).

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::bus::{BusError, Entry, GroupReader};
use crate::health::Dependencies;
use crate::ops::Readiness;
use crate::retry::Backoff;
use crate::trace;

/// Why a batch could not be handled: its entries stay pending and come again.
pub trait BatchFailure: std::fmt::Display + From<BusError> + Send {
    /// The readiness part (dependency) the failure says is down, if it says one.
    fn dependency(&self) -> Option<&'static str>;

    /// True when the batch failed because of a record in it (the dependency answered and
    /// refused it), not because something is down: the consumer then splits the batch to
    /// find that record and dead-letters it with this error as the reason.
    fn is_input(&self) -> bool {
        false
    }
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

    /// True when the handler opens each entry's `process` hop itself ([`process_hop`]), so
    /// that what it writes for an entry carries that entry's trace whatever the batch's size;
    /// the consumer then opens none (there would be two per entry).
    fn traces_entries(&self) -> bool {
        false
    }
}

/// The `<stream> process` hop (consumer) of one entry read through a group: the child of the
/// context the entry carried, its span (when sampled) with its id as `messaging.message.id`.
/// Free when tracing is off.
pub fn process_hop(entry: &Entry) -> trace::Hop {
    let hop = trace::message_hop(
        "redis",
        &entry.stream,
        "process",
        "consumer",
        entry.trace.as_ref(),
    );
    hop.record("messaging.message.id", entry.id.as_str());
    hop
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
        let mut stuck = false;
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return,
                batch = self.reader.next_batch() => batch,
            };
            let result = match batch {
                Ok(entries) if entries.is_empty() => Ok(()),
                Ok(entries) => self.handle_traced(entries).await,
                Err(e) => Err(H::Error::from(e)),
            };
            let Err(error) = result else {
                backoff.reset();
                if stuck {
                    stuck = false;
                    self.readiness.set_ready(self.handler.part());
                }
                continue;
            };
            tracing::warn!(
                part = self.handler.part(),
                stream = %self.reader.config().stream,
                error = %error,
                "batch failed; its entries will be delivered again"
            );
            self.handler.failed(&error);
            match error.dependency() {
                Some(dependency) => self.readiness.set_not_ready(dependency, error.to_string()),
                None => {
                    // Nothing is down and no single record is to blame: the consumer is
                    // stuck until this clears, and says so.
                    stuck = true;
                    self.readiness.set_not_ready(
                        self.handler.part(),
                        format!("batches of {} fail: {error}", self.reader.config().stream),
                    );
                }
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

    /// Handles a batch inside a `<stream> process` span per entry (when tracing is on and the
    /// handler does not open them itself, see [`BatchHandler::traces_entries`]), each the
    /// child of the context its entry carried. A batch of one entry is handled inside its
    /// span, so what the handler writes on continues the entry's trace; a larger batch's
    /// writes carry no one entry's context.
    async fn handle_traced(&self, entries: Vec<Entry>) -> Result<(), H::Error> {
        if !trace::enabled() || self.handler.traces_entries() {
            return handle_isolating(&self.handler, &self.reader, entries).await;
        }
        let hops: Vec<trace::Hop> = entries.iter().map(process_hop).collect();
        let handling = handle_isolating(&self.handler, &self.reader, entries);
        match hops.as_slice() {
            [one] => one.scope(handling).await,
            _ => handling.await,
        }
    }
}

/// Hands `entries` to `handler`; when that fails because of the input, splits them in
/// halves and hands each again, until each record that fails on its own is alone: it is
/// dead-lettered (and acknowledged) with the handler's error as the reason, and the others
/// are handled. Re-handing a part reads nothing again, so it spends no delivery. Any other
/// failure (a dependency down meanwhile) ends the search: what is not handled stays pending.
pub async fn handle_isolating<H: BatchHandler>(
    handler: &H,
    reader: &GroupReader,
    entries: Vec<Entry>,
) -> Result<(), H::Error> {
    // Parts still to hand over, last one first: entries keep their order. Each part is
    // copied before it is handed over (the handler takes it), to split it if it fails.
    let mut parts = vec![entries];
    while let Some(part) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        let copy = part.clone();
        let error = match handler.handle(reader, part).await {
            Ok(()) => continue,
            Err(e) if e.is_input() => e,
            Err(e) => return Err(e),
        };
        // What the failed attempt acknowledged or dead-lettered itself is done.
        let copy = reader.still_pending(copy).await?;
        if let [entry] = copy.as_slice() {
            tracing::warn!(
                part = handler.part(),
                stream = %reader.config().stream,
                entry = %entry.id,
                error = %error,
                "a record fails on its own; dead-lettering it"
            );
            metrics::counter!(
                "aurora_consumer_records_isolated_total",
                "part" => handler.part(),
                "stream" => reader.config().stream.clone()
            )
            .increment(1);
            reader.dead_letter(entry, &error.to_string()).await?;
            continue;
        }
        if copy.is_empty() {
            continue;
        }
        let mut first = copy;
        let second = first.split_off(first.len() / 2);
        parts.push(second);
        parts.push(first);
    }
    Ok(())
}
