//! Auto-registration: `aurora:cps:registrations` (`device.seen` records from mqtt-bridge) →
//! one upsert per batch. A new device gets a UUID, its first message as metadata, status
//! `pending_attestation`, an attestation challenge and a `device.registered` record.
//!
//! Order of writes: ONE PostgreSQL statement (devices, challenges and the batch's outbox row,
//! committed durably), then the records on the bus, then the outbox row deleted, then XACK. A
//! crash between the commit and the bus leaves the outbox row, and the [`crate::sweeper`] sends
//! the batch's records later; nothing is acknowledged before it is durable.

use std::collections::BTreeMap;
use std::time::Instant;

use aurora_core::bus::{BusError, Entry, GroupReader};
use aurora_core::consumer::{process_hop, BatchHandler};
use aurora_core::model::{parse, to_bytes, DeviceSeen};
use aurora_core::trace::TraceContext;
use base64::Engine;
use serde_json::Value;

use crate::db::{self, Sighting};
use crate::error::BatchError;
use crate::records::{attest_command, DeviceRegistered};
use crate::shared::Shared;
use crate::streams;
use crate::telemetry::{self, Trigger};

/// The reader of registration worker `worker` of replica `instance`.
pub async fn reader(
    shared: &Shared,
    instance: &str,
    worker: usize,
) -> Result<GroupReader, BusError> {
    let name = format!("{instance}-registration-{worker}");
    streams::reader(shared, &shared.cfg.names.cps_registrations(), &name).await
}

/// Registers the devices of each batch of `device.seen` records.
pub struct Registration(pub Shared);

impl BatchHandler for Registration {
    type Error = BatchError;

    fn part(&self) -> &'static str {
        "registration"
    }

    /// Each entry is handled in its `process` span (when tracing is on); a new device's
    /// records carry the span of the first entry of the batch that named it.
    async fn handle(&self, reader: &GroupReader, entries: Vec<Entry>) -> Result<(), BatchError> {
        let shared = &self.0;
        let started = Instant::now();
        let mut handled = Vec::with_capacity(entries.len());
        let mut devices: BTreeMap<String, Sighting> = BTreeMap::new();
        let mut traces = Traces::new();
        // They end once what the batch writes is written.
        let mut spans = Vec::new();
        for entry in &entries {
            let hop = process_hop(entry);
            let seen = match parse::<DeviceSeen>(entry.data.as_deref().unwrap_or_default()) {
                Ok(seen) => seen,
                Err(e) => {
                    hop.scope(streams::reject(reader, entry, &e.to_string()))
                        .await?;
                    continue;
                }
            };
            if let Some(context) = hop.context() {
                traces
                    .entry(seen.device_id.clone())
                    .or_insert_with(|| context.clone());
                spans.push(hop);
            }
            fold(&mut devices, seen, shared.cfg.trust_on_first_use);
            handled.push(entry.id.clone());
        }
        telemetry::sightings(handled.len());
        let sightings: Vec<Sighting> = devices.into_values().collect();
        if !sightings.is_empty() {
            register(shared, &sightings, &traces).await?;
        }
        reader.ack(&handled).await?;
        drop(spans);
        telemetry::registration_batch(started.elapsed());
        Ok(())
    }

    fn traces_entries(&self) -> bool {
        true
    }

    fn failed(&self, _error: &BatchError) {
        telemetry::batch_failed(self.part());
    }
}

/// The trace context of each device's records (the `process` span of the entry that named
/// it), by device id; empty when tracing is off.
pub type Traces = BTreeMap<String, TraceContext>;

/// Upserts the sightings; announces and challenges the new devices, each device's records
/// carrying its context in `traces`.
///
/// One statement (one round trip, one durable commit) upserts the devices, stores a challenge
/// per new device and one outbox row for the batch; then one XADD pipeline puts the
/// `device.registered` records and `attest` commands on the bus; then the outbox row goes
/// (a non-critical write: if it is lost, the sweeper sends the records again).
pub async fn register(
    shared: &Shared,
    sightings: &[Sighting],
    traces: &Traces,
) -> Result<usize, BatchError> {
    let outbox = uuid::Uuid::new_v4();
    let new = db::register_batch(
        &shared.pool,
        sightings,
        shared.cfg.attestation_timeout,
        outbox,
        &shared.cfg.not_challenged_models(),
    )
    .await?;
    if new.is_empty() {
        return Ok(0);
    }

    let by_id: BTreeMap<&str, &Sighting> = sightings
        .iter()
        .map(|s| (s.device_id.as_str(), s))
        .collect();
    let devices_stream = shared.cfg.names.cps_devices();
    let commands_stream = shared.cfg.names.cps_commands();
    let trace = |device_id: &str| traces.get(device_id).cloned();
    let mut docs: Vec<(&str, Vec<u8>, Option<TraceContext>)> = Vec::with_capacity(2 * new.len());
    for row in &new {
        if let Some(s) = by_id.get(row.device_id.as_str()) {
            let record = DeviceRegistered::new(
                row.id,
                &row.device_id,
                s.model.clone(),
                s.firmware_version.clone(),
                s.metadata.clone(),
                s.first_seen,
            );
            docs.push((
                devices_stream.as_str(),
                to_bytes(&record),
                trace(&row.device_id),
            ));
        }
    }
    for row in &new {
        docs.push((
            commands_stream.as_str(),
            to_bytes(&attest_command(&row.challenge())),
            trace(&row.device_id),
        ));
    }
    shared.producer.publish_batch_traced(&docs).await?;
    if let Err(e) = db::outbox_done(&shared.pool, outbox).await {
        // The records are on the bus; the sweeper will send them once more.
        tracing::warn!(error = %e, %outbox, "could not clear the outbox row of a sent batch");
    }

    telemetry::registered(new.len());
    telemetry::challenges_issued(Trigger::Registration, new.len());
    tracing::debug!(count = new.len(), "registered new devices");
    Ok(new.len())
}

/// Folds one sighting into the batch: the earliest message stays the metadata, `last_seen`
/// is the latest.
fn fold(devices: &mut BTreeMap<String, Sighting>, seen: DeviceSeen, trust_on_first_use: bool) {
    if let Some(s) = devices.get_mut(&seen.device_id) {
        if seen.seen_at < s.first_seen {
            s.first_seen = seen.seen_at;
        }
        if seen.seen_at > s.last_seen {
            s.last_seen = seen.seen_at;
        }
        return;
    }
    let text = |key: &str| match seen.metadata.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    };
    let model = text("model");
    let firmware_version = text("firmware_version");
    let public_key = if trust_on_first_use {
        text("public_key").and_then(|k| decode_public_key(&k).ok())
    } else {
        None
    };
    devices.insert(
        seen.device_id.clone(),
        Sighting {
            device_id: seen.device_id,
            first_seen: seen.seen_at,
            last_seen: seen.seen_at,
            metadata: Value::Object(seen.metadata),
            model,
            firmware_version,
            public_key,
        },
    );
}

/// A device public key: base64 (standard or URL-safe) of the 32 bytes of an Ed25519 key.
pub fn decode_public_key(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(t)
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.trim_end_matches('='))
        })
        .map_err(|_| "public_key is not base64".to_string())?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("public_key must be 32 bytes, got {}", bytes.len()))?;
    ed25519_dalek::VerifyingKey::from_bytes(&arr)
        .map_err(|_| "public_key is not a valid Ed25519 point".to_string())?;
    Ok(bytes)
}
