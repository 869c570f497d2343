//! Import: the federation stream to this site's local streams.
//!
//! One durable pull consumer per site (replicas of a site share it), explicit acks. Each
//! message from another site lands on the local stream of its kind with its origin site added,
//! exactly once ([`Lander`]); the JetStream ack goes only after that write. Messages of this
//! site are acked and skipped. Unreadable messages go to the dead-letter stream at once; a
//! message whose write fails is redelivered after `nak_delay`, and dead-lettered at its last
//! delivery. While Redis cannot be reached at all, messages are held and retried in place
//! (their ack wait extended) instead of being naked: an outage must not use up deliveries.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind, Message};
use aurora_core::bus::Producer;
use aurora_core::model::DeadLetter;
use aurora_core::names::{FederatedKind, Names};
use aurora_core::retry::Backoff;
use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::{ConsumerError, LandError};
use crate::landing::{Landed, Lander, Landing};
use crate::policy::{ORIGIN_SITE_FIELD, ORIGIN_SITE_HEADER};
use crate::telemetry::{self, Direction};
use crate::{retry, SERVICE};

/// The longest wait between two attempts to pull again.
const PULL_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How the importer consumes.
#[derive(Debug, Clone)]
pub struct ImportSettings {
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub nak_delay: Duration,
    pub max_ack_pending: i64,
    pub batch: usize,
}

/// The consumer of one site: its own (the seed shared one name between sites, which split the
/// stream between them).
pub fn consumer_config(names: &Names, site_id: &str, settings: &ImportSettings) -> pull::Config {
    pull::Config {
        durable_name: Some(names.federation_consumer(site_id)),
        description: Some(format!("federation import of site {site_id}")),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        max_ack_pending: settings.max_ack_pending,
        ..Default::default()
    }
}

/// Creates the site's consumer, or updates it to the configured settings.
pub async fn ensure_consumer(
    stream: &jetstream::stream::Stream,
    stream_name: &str,
    config: pull::Config,
) -> Result<PullConsumer, ConsumerError> {
    let consumer = config.durable_name.clone().unwrap_or_default();
    stream
        .create_consumer(config)
        .await
        .map_err(|source| ConsumerError {
            stream: stream_name.to_string(),
            consumer,
            source,
        })
}

/// What to do with one message.
enum Plan {
    /// Published by this site: ack and skip.
    Own,
    DeadLetter(String),
    Land(Landing, FederatedKind),
}

/// Imports the federation stream into the local bus.
pub struct Importer {
    pub names: Names,
    pub site_id: String,
    pub stream: jetstream::stream::Stream,
    pub consumer_config: pull::Config,
    pub lander: Lander,
    pub producer: Producer,
    pub settings: ImportSettings,
}

impl Importer {
    /// Pulls and imports until `shutdown`; finishes the batch at hand unless `abort`.
    ///
    /// Not the shared stream consumer loop: that one reads a Redis stream through a group;
    /// this one pulls from a JetStream consumer, whose acks, naks and redeliveries do what
    /// the group's pending list does there.
    pub async fn run(self, shutdown: CancellationToken, abort: CancellationToken) {
        let stream_name = self.names.nats_stream();
        let consumer_name = self
            .consumer_config
            .durable_name
            .clone()
            .unwrap_or_default();
        let mut backoff = Backoff::new(Duration::from_millis(200), PULL_BACKOFF_MAX);
        while !shutdown.is_cancelled() {
            let consumer =
                match ensure_consumer(&self.stream, &stream_name, self.consumer_config.clone())
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach the site's consumer; retrying");
                        if !backoff.wait(&shutdown).await {
                            break;
                        }
                        continue;
                    }
                };
            let messages = consumer
                .stream()
                .max_messages_per_batch(self.settings.batch)
                .expires(Duration::from_secs(30))
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await;
            let messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull from the site's consumer; retrying");
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            tracing::info!(consumer = %consumer_name, "importing");
            let mut chunks = messages.ready_chunks(self.settings.batch);
            loop {
                let chunk = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    chunk = chunks.next() => chunk,
                };
                let Some(chunk) = chunk else { break };
                let mut batch = Vec::with_capacity(chunk.len());
                let mut broken = None;
                for item in chunk {
                    match item {
                        Ok(msg) => batch.push(msg),
                        Err(e) => broken = Some(e),
                    }
                }
                self.handle(batch, &abort).await;
                if let Some(e) = broken {
                    // Pull again: after a reconnect, a missed heartbeat or a deleted consumer.
                    tracing::warn!(error = %e, "pull interrupted; pulling again");
                    break;
                }
                backoff.reset();
            }
            if !backoff.wait(&shutdown).await {
                break;
            }
        }
    }

    /// Imports one batch: dead letters and own messages first, then every landing in one
    /// round trip to Redis, then the acks.
    async fn handle(&self, batch: Vec<Message>, abort: &CancellationToken) {
        let mut landings = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for msg in batch {
            match self.plan(&msg) {
                Plan::Own => {
                    telemetry::own_skipped(1);
                    ack(&msg, AckKind::Ack).await;
                }
                Plan::DeadLetter(reason) => {
                    telemetry::dead_letter(Direction::Import, "invalid_message");
                    self.dead_letter(&msg, &reason, abort).await;
                }
                Plan::Land(landing, kind) => {
                    landings.push(landing);
                    waiting.push((msg, kind));
                }
            }
        }
        if landings.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut backoff = retry();
        let results = loop {
            match self.lander.land_batch(&landings).await {
                Ok(results) => break results,
                Err(e) if e.is_connection() => {
                    tracing::warn!(error = %e, "Redis unreachable; holding the batch");
                    for (msg, _) in &waiting {
                        ack(msg, AckKind::Progress).await;
                    }
                    if !backoff.wait(abort).await {
                        return; // unacked: redelivered after the ack wait
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "batch write refused; writing one by one");
                    for ((msg, kind), landing) in waiting.iter().zip(&landings) {
                        self.land_alone(msg, *kind, landing, abort).await;
                    }
                    return;
                }
            }
        };
        telemetry::import_write_latency(started.elapsed());
        for ((msg, kind), landed) in waiting.iter().zip(results) {
            self.count(*kind, &landed);
            ack(msg, AckKind::Ack).await;
        }
    }

    fn count(&self, kind: FederatedKind, landed: &Landed) {
        match landed {
            Landed::Written(_) => telemetry::messages(Direction::Import, kind, 1),
            Landed::Duplicate => telemetry::duplicates(Direction::Import, 1),
        }
    }

    /// Lands one message whose batch was refused; naks or dead-letters it when its own
    /// write is refused.
    async fn land_alone(
        &self,
        msg: &Message,
        kind: FederatedKind,
        landing: &Landing,
        abort: &CancellationToken,
    ) {
        let mut backoff = retry();
        let refused: LandError = loop {
            match self.lander.land(landing).await {
                Ok(landed) => {
                    self.count(kind, &landed);
                    ack(msg, AckKind::Ack).await;
                    return;
                }
                Err(e) if e.is_connection() => {
                    ack(msg, AckKind::Progress).await;
                    if !backoff.wait(abort).await {
                        return;
                    }
                }
                Err(e) => break e,
            }
        };
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
        if delivered >= self.settings.max_deliver {
            telemetry::dead_letter(Direction::Import, "max_deliveries");
            let reason =
                format!("delivered {delivered} times, every write failed; last: {refused}");
            self.dead_letter(msg, &reason, abort).await;
        } else {
            tracing::warn!(error = %refused, delivered, "import failed; redelivery after the nak delay");
            telemetry::nak();
            ack(msg, AckKind::Nak(Some(self.settings.nak_delay))).await;
        }
    }

    /// Decides about one message from its subject, headers and payload.
    fn plan(&self, msg: &Message) -> Plan {
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let origin = header(ORIGIN_SITE_HEADER);
        if origin.as_deref() == Some(self.site_id.as_str()) {
            return Plan::Own;
        }
        let stream_name = self.names.nats_stream();
        let kind = msg
            .subject
            .as_str()
            .strip_prefix(stream_name.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .and_then(FederatedKind::from_subject_token);
        let Some(kind) = kind else {
            return Plan::DeadLetter(format!("unknown subject {}", msg.subject));
        };
        let Some(origin) = origin.filter(|o| !o.is_empty()) else {
            return Plan::DeadLetter(format!("no {ORIGIN_SITE_HEADER} header"));
        };
        let data = match with_origin(&msg.payload, &origin) {
            Ok(data) => data,
            Err(reason) => return Plan::DeadLetter(reason),
        };
        if let Err(reason) = validate(kind, &msg.payload) {
            return Plan::DeadLetter(reason);
        }
        let msg_id = header(async_nats::header::NATS_MESSAGE_ID.as_ref())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| {
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
                format!("seq:{seq}")
            });
        Plan::Land(
            Landing {
                key: idempotency_key(&self.names, &msg_id),
                stream: self.names.federated_stream(kind),
                data,
            },
            kind,
        )
    }

    /// Writes the dead-letter record (retrying while Redis is unreachable), then terminates
    /// the message: it is never both lost and acknowledged.
    async fn dead_letter(&self, msg: &Message, reason: &str, abort: &CancellationToken) {
        let info = msg.info().ok();
        let mut record = DeadLetter::new(SERVICE, msg.subject.as_str(), reason, &msg.payload);
        record.source_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string())
            .or_else(|| info.as_ref().map(|i| format!("seq:{}", i.stream_sequence)));
        record.deliveries = info.as_ref().map(|i| i.delivered.max(0) as u64);
        tracing::warn!(subject = %msg.subject, reason, "dead-lettered a federation message");
        let stream = self.names.federation_deadletter();
        let mut backoff = retry();
        while let Err(e) = self.producer.dead_letter(&stream, &record).await {
            tracing::warn!(error = %e, "cannot write the dead letter; retrying");
            ack(msg, AckKind::Progress).await;
            if !backoff.wait(abort).await {
                return;
            }
        }
        ack(msg, AckKind::Term).await;
    }
}

/// Checks that a document from another site is what its subject says (an Alert on
/// `alerts`, ...): a site never lands on its bus what its analysts would take for an alert
/// and is not one. The audit subject carries agent thoughts and audit events.
pub fn validate(kind: FederatedKind, payload: &[u8]) -> Result<(), String> {
    use aurora_core::model::{self, AgentResult, AgentThought, Alert, AuditEvent, Ioc};
    let result = match kind {
        FederatedKind::Alerts => model::parse::<Alert>(payload).map(drop),
        FederatedKind::Iocs => model::parse::<Ioc>(payload).map(drop),
        FederatedKind::AgentResults => model::parse::<AgentResult>(payload).map(drop),
        FederatedKind::Audit => model::parse::<AgentThought>(payload)
            .map(drop)
            .or_else(|_| model::parse::<AuditEvent>(payload).map(drop)),
    };
    result.map_err(|e| e.to_string())
}

/// The document with `origin_site` set. The field is spliced in front of the others without
/// rebuilding the document, unless the document already has one (then it is replaced).
pub fn with_origin(payload: &[u8], origin: &str) -> Result<Vec<u8>, String> {
    #[derive(serde::Deserialize)]
    struct OriginProbe {
        #[serde(default)]
        origin_site: Option<serde::de::IgnoredAny>,
    }
    let start = payload.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start.filter(|&i| payload[i] == b'{') else {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
                Ok(_) => "payload is not a JSON object".into(),
                Err(e) => format!("invalid JSON: {e}"),
            },
        );
    };
    let probe: OriginProbe =
        serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
    if probe.origin_site.is_some() {
        let mut doc: serde_json::Map<String, Value> =
            serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
        doc.insert(
            ORIGIN_SITE_FIELD.to_string(),
            Value::String(origin.to_string()),
        );
        return Ok(aurora_core::model::to_bytes(&doc));
    }
    let rest = &payload[start + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(payload.len() + origin.len() + 20);
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(ORIGIN_SITE_FIELD.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(&aurora_core::model::to_bytes(&origin));
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Ok(out)
}

/// The idempotency key of a message id (long ids hashed, so keys stay small).
pub fn idempotency_key(names: &Names, msg_id: &str) -> String {
    let id = if msg_id.len() > 200 {
        format!("sha256:{}", hex::encode(Sha256::digest(msg_id.as_bytes())))
    } else {
        msg_id.to_string()
    };
    names.state_key("federation", &format!("imported:{id}"))
}

async fn ack(msg: &Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        // Not fatal: an ack that did not arrive means a redelivery, which lands as a duplicate.
        tracing::warn!(error = %e, subject = %msg.subject, "cannot ack");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn origin_of(out: &[u8]) -> Value {
        serde_json::from_slice::<Value>(out).unwrap()
    }

    #[test]
    fn the_origin_is_added_and_everything_else_kept() {
        let out = with_origin(br#" {"id":"a","x":{"y":[1,2]}} "#, "site-a").unwrap();
        let doc = origin_of(&out);
        assert_eq!(doc["origin_site"], "site-a");
        assert_eq!(doc["x"]["y"][1], 2);
        assert_eq!(doc["id"], "a");
        let out = with_origin(b"{ }", "s").unwrap();
        assert_eq!(origin_of(&out), serde_json::json!({"origin_site": "s"}));
        let out = with_origin(br#"{"origin_site":"old","id":1}"#, "new").unwrap();
        let doc = origin_of(&out);
        assert_eq!(doc["origin_site"], "new");
        assert_eq!(doc.as_object().unwrap().len(), 2);
        let out = with_origin(br#"{"a":1}"#, "we\"ird").unwrap();
        assert_eq!(origin_of(&out)["origin_site"], "we\"ird");
    }

    #[test]
    fn what_is_not_a_json_object_is_refused() {
        for bad in [&b"[1]"[..], b"{nope", b"", b"42", b"{\"a\":1} trailing"] {
            assert!(
                with_origin(bad, "s").is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
