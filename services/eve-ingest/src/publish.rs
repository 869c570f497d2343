//! Events onto JetStream with a bounded window of outstanding acks.
//!
//! An event counts as out only when its `PublishAckFuture` resolves (the server stored it, or
//! reported it a duplicate of one it stored): a flush proves nothing. The window is one
//! semaphore shared by every batch in flight, so the acks outstanding never exceed it
//! whatever the number of batches; a batch waiting for a permit keeps collecting its own
//! acks, so it cannot starve itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, context::ContextBuilder};
use async_nats::Subject;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Semaphore;

use aurora_core::trace;
use aurora_core::Names;

use crate::event::{EveEvent, SURICATA_EVENT_TYPES};

/// What happened to one event.
#[derive(Debug)]
pub enum Published {
    /// Stored (or already stored: `duplicate`).
    Stored { duplicate: bool },
    /// Larger than the server accepts: it will never go, it is dead-lettered instead.
    TooLarge,
}

/// Publishes events to their subjects.
#[derive(Clone)]
pub struct EventPublisher {
    js: jetstream::Context,
    names: Names,
    window: Arc<Semaphore>,
    /// The subjects of Suricata's event types, made once (a subject shares its bytes).
    subjects: Arc<HashMap<&'static str, Subject, foldhash::fast::RandomState>>,
}

impl EventPublisher {
    /// `window`: acks outstanding at most; `ack_timeout`: how long to wait for one.
    pub fn new(
        client: async_nats::Client,
        names: Names,
        window: usize,
        ack_timeout: Duration,
    ) -> Self {
        let window = window.max(1);
        // The context's own limit sits above ours so that it never blocks a send while we
        // hold the acks that would free it.
        let js = ContextBuilder::new()
            .timeout(ack_timeout)
            .max_ack_inflight(window + 1)
            .build(client);
        let subjects = SURICATA_EVENT_TYPES
            .iter()
            .map(|t| (*t, Subject::from(names.suricata_subject(t))))
            .collect();
        Self {
            js,
            names,
            window: Arc::new(Semaphore::new(window)),
            subjects: Arc::new(subjects),
        }
    }

    /// The subject of an event type.
    fn subject(&self, event_type: &str) -> Subject {
        match self.subjects.get(event_type) {
            Some(subject) => subject.clone(),
            None => Subject::from(self.names.suricata_subject(event_type)),
        }
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publishes every event; one result per event, in input order. An `Err` is worth
    /// retrying (timeout, connection lost, no stream). When tracing is on, the batch is one
    /// `<stream> publish` hop (one per batch: a span per event would cost more than the
    /// publish), whose context every message carries in its headers.
    pub async fn publish_all(&self, events: &[&EveEvent]) -> Vec<Result<Published, PublishError>> {
        let hop = trace::message_hop(
            "nats",
            &self.names.suricata_stream(),
            "publish",
            "producer",
            None,
        );
        hop.record("messaging.batch.message_count", events.len());
        let context = hop.context().cloned();
        let mut results: Vec<Option<Result<Published, PublishError>>> =
            (0..events.len()).map(|_| None).collect();
        let mut inflight = FuturesUnordered::new();
        for (i, event) in events.iter().enumerate() {
            let permit = loop {
                tokio::select! {
                    biased;
                    Some((j, r)) = inflight.next(), if !inflight.is_empty() => results[j] = Some(r),
                    permit = self.window.clone().acquire_owned() => break permit,
                }
            };
            let Ok(permit) = permit else {
                // The semaphore is never closed; treat it as a failed send all the same.
                results[i] = Some(Err(PublishError::new(PublishErrorKind::Other)));
                continue;
            };
            // The id's string becomes the header value as it is (`message_id` copies it).
            let mut message = PublishMessage::build()
                .payload(event.raw.clone())
                .header(NATS_MESSAGE_ID, HeaderValue::from(event.msg_id()));
            if let Some(context) = &context {
                message = message.header(trace::TRACEPARENT_FIELD, context.traceparent.as_str());
            }
            match self
                .js
                .send_publish(self.subject(&event.event_type), message)
                .await
            {
                Ok(ack) => inflight.push(wait_ack(i, ack, permit)),
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    results[i] = Some(Ok(Published::TooLarge));
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        while let Some((j, r)) = inflight.next().await {
            results[j] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(PublishError::new(PublishErrorKind::Other))))
            .collect()
    }
}

async fn wait_ack(
    index: usize,
    ack: PublishAckFuture,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> (usize, Result<Published, PublishError>) {
    let result = ack.await.map(|a| Published::Stored {
        duplicate: a.duplicate,
    });
    drop(permit);
    (index, result)
}
