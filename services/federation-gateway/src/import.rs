//! Import: the federation stream to this site's local streams.
//!
//! One durable pull consumer per site (replicas of a site share it), explicit acks. Each
//! message from another site lands on the local stream of its kind with its origin site added,
//! exactly once ([`Lander`]); the JetStream ack goes only after that write. Messages of this
//! site are acked and skipped. Unreadable messages go to the dead-letter stream at once; a
//! message whose write fails is redelivered after `nak_delay`, and dead-lettered at its last
//! delivery. While Redis cannot be reached at all, messages are held and retried in place
//! (their ack wait extended) instead of being naked: an outage must not use up deliveries.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind, Message};
use aurora_core::bus::Producer;
use aurora_core::model::DeadLetter;
use aurora_core::names::{FederatedKind, Names};
use aurora_core::retry::Backoff;
use aurora_core::trace::{self, TraceContext};
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::{ConsumerError, LandError};
use crate::landing::{Landed, Lander, Landing};
use crate::policy::{document_id, ORIGIN_SITE_FIELD, ORIGIN_SITE_HEADER};
use crate::revision::{self, RevisionProbe, Stamp, IMPORTED_REVISION_FIELD, ORIGIN_VERIFIED_FIELD};
use crate::signing::{
    Claim, PeerKeys, KEY_ID_HEADER, PROOF_HEADER, SIGNATURE_HEADER, SIGNED_AT_HEADER,
};
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

/// The dead-letter reason label of a message that is not what it should be.
const INVALID: &str = "invalid_message";

/// Whom the importer believes.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Set: only messages signed by a key of their origin site are imported.
    pub peers: Option<PeerKeys>,
    pub max_signature_age: Duration,
    /// Subjects on which unsigned design-format messages are imported, marked unverified.
    pub legacy_subjects: HashSet<String>,
    pub legacy_site: String,
}

impl Trust {
    fn is_legacy(&self, subject: &str) -> bool {
        self.legacy_subjects.contains(subject)
    }
}

/// What to do with one message.
enum Plan {
    /// Published by this site: ack and skip.
    Own,
    /// Dead-letter it: the metric's reason label, the reason.
    DeadLetter(&'static str, String),
    Land(Landing),
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
    pub trust: Trust,
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
        // Each imported message's span ends once the batch is landed (or given up).
        let mut spans = Vec::new();
        for msg in batch {
            match self.plan(&msg) {
                Plan::Own => {
                    telemetry::own_skipped(1);
                    ack(&msg, AckKind::Ack).await;
                }
                Plan::DeadLetter(label, reason) => {
                    telemetry::dead_letter(Direction::Import, label);
                    self.dead_letter(&msg, &reason, abort).await;
                }
                Plan::Land(mut landing) => {
                    if let Some(hop) = process_hop(&msg) {
                        landing.trace = hop.context().cloned();
                        spans.push(hop);
                    }
                    waiting.push((msg, landing.kind));
                    landings.push(landing);
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
            Landed::Stale => telemetry::stale_revision(kind),
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
            return Plan::DeadLetter(INVALID, format!("unknown subject {}", msg.subject));
        };
        let msg_id = header(async_nats::header::NATS_MESSAGE_ID.as_ref()).unwrap_or_default();
        let signature = header(SIGNATURE_HEADER);
        if origin.is_none() && signature.is_none() && self.trust.is_legacy(&msg.subject) {
            return match landing(kind, &msg.payload, &self.trust.legacy_site, "", true) {
                Ok(landing) => {
                    telemetry::legacy_imported(kind);
                    Plan::Land(landing)
                }
                Err(reason) => Plan::DeadLetter(INVALID, reason),
            };
        }
        let Some(origin) = origin.filter(|o| !o.is_empty()) else {
            return Plan::DeadLetter(
                "no_origin",
                format!("no {ORIGIN_SITE_HEADER} header (not a legacy subject)"),
            );
        };
        if let Some(peers) = &self.trust.peers {
            let stored_at_ms = msg
                .info()
                .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as i64)
                .unwrap_or_else(|_| chrono::Utc::now().timestamp_millis());
            let key_id = header(KEY_ID_HEADER);
            let signed_at = header(SIGNED_AT_HEADER);
            let proof = header(PROOF_HEADER);
            let claim = Claim {
                subject: msg.subject.as_str(),
                msg_id: &msg_id,
                origin: &origin,
                key_id: key_id.as_deref(),
                signed_at: signed_at.as_deref(),
                signature: signature.as_deref(),
                proof: proof.as_deref(),
                payload: &msg.payload,
                stored_at_ms,
            };
            if let Err(refusal) = peers.verify(&claim, self.trust.max_signature_age) {
                return Plan::DeadLetter(refusal.label(), refusal.to_string());
            }
        }
        match landing(kind, &msg.payload, &origin, &msg_id, false) {
            Ok(landing) => Plan::Land(landing),
            Err(reason) => Plan::DeadLetter(INVALID, reason),
        }
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

/// What lands of a message from `origin` (the site that published it): the document with
/// its owner (`origin_site`, set to `origin` unless the document names one: a revision
/// another site made of a document keeps its owner), the revision it lands with
/// (`imported_revision`) and, for a legacy peer's, `origin_verified: false`; its stamp, checked
/// against the revision and hash the message id carries.
pub fn landing(
    kind: FederatedKind,
    payload: &[u8],
    origin: &str,
    msg_id: &str,
    unverified: bool,
) -> Result<Landing, String> {
    let start = payload.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start.filter(|&i| payload[i] == b'{') else {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
                Ok(_) => "payload is not a JSON object".into(),
                Err(e) => format!("invalid JSON: {e}"),
            },
        );
    };
    let probe: LandingProbe =
        serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
    validate(kind, payload)?;
    let revisions = RevisionProbe {
        updated_at: probe.updated_at,
        timestamp: probe.timestamp,
        created_at: probe.created_at,
        ..Default::default()
    };
    let revision = revisions.revision();
    let hash = revision::content_hash(payload);
    if let Some((claimed, claimed_hash)) = revision::of_message_id(msg_id) {
        if claimed != revision || claimed_hash != hash {
            return Err(format!(
                "message id {msg_id:?} names revision {claimed}.{claimed_hash}, the payload is {revision}.{hash}"
            ));
        }
    }
    let owner = match &probe.origin_site {
        None => origin.to_string(),
        Some(Value::String(owner)) if !owner.is_empty() => owner.clone(),
        Some(_) => return Err(format!("`{ORIGIN_SITE_FIELD}` is not a site id")),
    };
    let doc = format!("{owner}:{}", document_id(probe.id.as_ref(), payload));
    let plain = probe.origin_site.is_none()
        && probe.imported_revision.is_none()
        && probe.origin_verified.is_none();
    let data = if plain {
        spliced(payload, start, &owner, revision, unverified)
    } else {
        let mut doc: serde_json::Map<String, Value> =
            serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
        doc.entry(ORIGIN_SITE_FIELD)
            .or_insert_with(|| Value::String(owner.clone()));
        doc.insert(IMPORTED_REVISION_FIELD.to_string(), Value::from(revision));
        if unverified {
            doc.insert(ORIGIN_VERIFIED_FIELD.to_string(), Value::Bool(false));
        }
        aurora_core::model::to_bytes(&doc)
    };
    Ok(Landing {
        kind,
        doc,
        stamp: Stamp {
            revision,
            site: origin.to_string(),
            hash,
        },
        data,
        trace: None,
    })
}

/// The fields [`landing`] reads.
#[derive(serde::Deserialize)]
struct LandingProbe {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    origin_site: Option<Value>,
    #[serde(default)]
    updated_at: Option<Value>,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    created_at: Option<Value>,
    #[serde(default)]
    imported_revision: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    origin_verified: Option<serde::de::IgnoredAny>,
}

/// The fields spliced in front of the others, without rebuilding the document.
fn spliced(payload: &[u8], start: usize, owner: &str, revision: i64, unverified: bool) -> Vec<u8> {
    let rest = &payload[start + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(payload.len() + owner.len() + 64);
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(ORIGIN_SITE_FIELD.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(&aurora_core::model::to_bytes(&owner));
    out.extend_from_slice(b",\"");
    out.extend_from_slice(IMPORTED_REVISION_FIELD.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(revision.to_string().as_bytes());
    if unverified {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(ORIGIN_VERIFIED_FIELD.as_bytes());
        out.extend_from_slice(b"\":false");
    }
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

/// The `<subject> process` hop of an imported message (when tracing is on): the child of
/// the context its NATS headers carry (the exporting site's publish hop).
fn process_hop(msg: &Message) -> Option<trace::Hop> {
    if !trace::enabled() {
        return None;
    }
    let parent = TraceContext::from_nats_headers(msg.headers.as_ref());
    Some(trace::message_hop(
        "nats",
        msg.subject.as_str(),
        "process",
        "consumer",
        parent.as_ref(),
    ))
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

    const DOC: &str = r#"{"id":"a","agent":"hunter","summary":"s","timestamp":"1970-01-01T00:00:01Z","x":{"y":[1,2]}}"#;

    fn landed(payload: &str, origin: &str) -> Value {
        let landing = landing(
            FederatedKind::AgentResults,
            payload.as_bytes(),
            origin,
            "",
            false,
        )
        .unwrap();
        serde_json::from_slice::<Value>(&landing.data).unwrap()
    }

    #[test]
    fn the_origin_and_revision_are_added_and_everything_else_kept() {
        let doc = landed(&format!(" {DOC} "), "site-a");
        assert_eq!(doc["origin_site"], "site-a");
        assert_eq!(doc["imported_revision"], 1_000_000);
        assert_eq!(doc["x"]["y"][1], 2);
        assert_eq!(doc["id"], "a");
        // A revision another site made of site-a's document keeps its owner.
        let revised = DOC.replace(
            r#""id":"a""#,
            r#""id":"a","origin_site":"site-a","imported_revision":7"#,
        );
        let doc = landed(&revised, "site-b");
        assert_eq!(doc["origin_site"], "site-a");
        assert_eq!(doc["imported_revision"], 1_000_000);
        let l = landing(
            FederatedKind::AgentResults,
            revised.as_bytes(),
            "site-b",
            "",
            true,
        )
        .unwrap();
        assert_eq!(l.doc, "site-a:a");
        assert_eq!(l.stamp.site, "site-b");
        let doc: Value = serde_json::from_slice(&l.data).unwrap();
        assert_eq!(doc["origin_verified"], false);
        let weird = DOC.replace(r#""id":"a""#, r#""id":"we\"ird""#);
        assert_eq!(landed(&weird, "s")["id"], "we\"ird");
    }

    #[test]
    fn a_message_id_must_name_the_payloads_revision() {
        let hash = revision::content_hash(DOC.as_bytes());
        let good = revision::message_id("site-a", "a", 1_000_000, &hash);
        assert!(landing(
            FederatedKind::AgentResults,
            DOC.as_bytes(),
            "site-a",
            &good,
            false
        )
        .is_ok());
        let older = revision::message_id("site-a", "a", 999, &hash);
        assert!(landing(
            FederatedKind::AgentResults,
            DOC.as_bytes(),
            "site-a",
            &older,
            false
        )
        .is_err());
    }

    #[test]
    fn what_is_not_a_json_object_is_refused() {
        for bad in [&b"[1]"[..], b"{nope", b"", b"42", b"{\"a\":1} trailing"] {
            assert!(
                landing(FederatedKind::AgentResults, bad, "s", "", false).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
