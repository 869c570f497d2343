//! Every metric of the service, in one place (listed in the README): each is written through
//! the function named after it, never by its name elsewhere.

use std::time::Duration;

/// Events stored in JetStream, by event type.
pub const EVENTS: &str = "aurora_eve_ingest_events_total";
/// Events JetStream reported as duplicates of one it already stored (a retry, a replay).
pub const EVENTS_DUPLICATE: &str = "aurora_eve_ingest_events_duplicate_total";
/// Alerts written to the alerts stream.
pub const ALERTS: &str = "aurora_eve_ingest_alerts_total";
/// Alerts not written again because their id was already written (a retry after a crash).
pub const ALERTS_DUPLICATE: &str = "aurora_eve_ingest_alerts_duplicate_total";
/// Indicators held in memory for sightings (this replica's live IOC set).
pub const IOCS_LOADED: &str = "aurora_eve_ingest_iocs_loaded";
/// IOC documents of `aurora:iocs` not taken into the set, by reason.
pub const IOC_SKIPPED: &str = "aurora_eve_ingest_ioc_documents_skipped_total";
/// Sighting alerts written (new ones), by indicator type (`domain`, `ip`, `sha256`).
pub const IOC_SIGHTINGS: &str = "aurora_eve_ingest_ioc_sightings_total";
/// Lines that went to the dead-letter list, by reason.
pub const DEAD_LETTERS: &str = "aurora_eve_ingest_dead_letters_total";
/// Failed attempts (publish, ack, Redis write) that were retried, by stage.
pub const RETRIES: &str = "aurora_eve_ingest_retries_total";
/// Lines found held (processing list and chunks) at start (left by a crash) or after a
/// failed take.
pub const RECOVERED: &str = "aurora_eve_ingest_recovered_lines_total";
/// Gone replicas adopted (their processing list and chunks taken over).
pub const ADOPTED_REPLICAS: &str = "aurora_eve_ingest_adopted_replicas_total";
/// Lines of gone replicas' processing lists taken over (their chunks' lines are counted by
/// [`RECOVERED`] when found).
pub const ADOPTED_LINES: &str = "aurora_eve_ingest_adopted_lines_total";
/// Chunks of gone replicas taken over.
pub const ADOPTED_CHUNKS: &str = "aurora_eve_ingest_adopted_chunks_total";
/// Lines given back to the shared list by a replica leaving cleanly.
pub const HANDED_BACK: &str = "aurora_eve_ingest_handed_back_lines_total";
/// Lines read from the input (list or file).
pub const LINES: &str = "aurora_eve_ingest_lines_total";
/// Seconds from taking a batch to removing it from the processing list / saving the position.
pub const BATCH_SECONDS: &str = "aurora_eve_ingest_batch_seconds";
/// File input: rotations followed, by kind (`rename`, `truncate`).
pub const FILE_ROTATIONS: &str = "aurora_eve_ingest_file_rotations_total";
/// Blank lines of a file skipped.
pub const BLANK_LINES: &str = "aurora_eve_ingest_blank_lines_total";
/// Sensor alerts written, by kind (`blind`, `silent`) and status (`new`, `closed`).
pub const SENSOR_ALERTS: &str = "aurora_eve_ingest_sensor_alerts_total";
/// Suricata `stats` events looked at for sensor blindness, by result.
pub const SENSOR_STATS: &str = "aurora_eve_ingest_sensor_stats_total";
/// Sensors blind or silent at the last sweep (the shared state: every replica reports it).
pub const SENSORS: &str = "aurora_eve_ingest_sensors";

/// What was being done when an attempt failed and was retried (the `stage` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStage {
    /// A JetStream publish or its ack.
    Publish,
    /// The alerts' write.
    Alerts,
    /// The dead-letter write.
    DeadLetter,
    /// Forgetting lines that are out (processing list, chunk).
    Release,
    /// Saving the file position.
    Position,
    /// Sensor state and its alerts (`stats` events).
    Sensors,
}

impl RetryStage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Alerts => "alerts",
            Self::DeadLetter => "dead_letter",
            Self::Release => "release",
            Self::Position => "position",
            Self::Sensors => "sensors",
        }
    }
}

/// How far a batch got when its time is recorded (the `stage` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStage {
    /// Every line is out (published, alerted, dead-lettered).
    Handled,
    /// Its lines were forgotten by the input.
    Released,
}

impl BatchStage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Released => "released",
        }
    }
}

/// How an eve file was rotated (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// The path names another file (renamed away, a new one created).
    Rename,
    /// The file became shorter than what was read (copytruncate).
    Truncate,
}

impl Rotation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rename => "rename",
            Self::Truncate => "truncate",
        }
    }
}

/// `n` events of one type stored in JetStream (`event_type`: a known type, else `other`).
pub fn events_stored(event_type: &'static str, n: u64) {
    metrics::counter!(EVENTS, "event_type" => event_type).increment(n);
}

/// `n` events JetStream already had.
pub fn events_duplicate(n: u64) {
    metrics::counter!(EVENTS_DUPLICATE).increment(n);
}

/// `n` alerts written to the alerts stream.
pub fn alerts_written(n: u64) {
    metrics::counter!(ALERTS).increment(n);
}

/// `n` alerts that were already written.
pub fn alerts_duplicate(n: u64) {
    metrics::counter!(ALERTS_DUPLICATE).increment(n);
}

/// The indicators held now.
pub fn iocs_loaded(n: usize) {
    metrics::gauge!(IOCS_LOADED).set(n as f64);
}

/// One IOC document skipped (`reason`: `invalid`, `unsupported_type`, `limit`).
pub fn ioc_skipped(reason: &'static str) {
    metrics::counter!(IOC_SKIPPED, "reason" => reason).increment(1);
}

/// `n` sighting alerts written for indicators of `kind` (`domain`, `ip`, `sha256`).
pub fn ioc_sightings(kind: &'static str, n: u64) {
    metrics::counter!(IOC_SIGHTINGS, "type" => kind).increment(n);
}

/// One line dead-lettered, for `reason` (a [`crate::event::Rejection`] code).
pub fn dead_letter(reason: &'static str) {
    metrics::counter!(DEAD_LETTERS, "reason" => reason).increment(1);
}

/// One failed attempt that will be retried.
pub fn retry(stage: RetryStage) {
    metrics::counter!(RETRIES, "stage" => stage.as_str()).increment(1);
}

/// `n` lines found held by this replica (at start or after a failed take).
pub fn recovered_lines(n: u64) {
    metrics::counter!(RECOVERED).increment(n);
}

/// `n` lines read from the input.
pub fn lines(n: u64) {
    metrics::counter!(LINES).increment(n);
}

/// The time a batch took from being taken to `stage`.
pub fn batch_time(stage: BatchStage, elapsed: Duration) {
    metrics::histogram!(BATCH_SECONDS, "stage" => stage.as_str()).record(elapsed.as_secs_f64());
}

/// One rotation of the eve file followed.
pub fn file_rotation(kind: Rotation) {
    metrics::counter!(FILE_ROTATIONS, "kind" => kind.as_str()).increment(1);
}

/// One blank line of the eve file skipped.
pub fn blank_line() {
    metrics::counter!(BLANK_LINES).increment(1);
}

/// One gone replica adopted: `lines` of its processing list and `chunks` taken over.
pub fn adopted(lines: u64, chunks: u64) {
    metrics::counter!(ADOPTED_REPLICAS).increment(1);
    metrics::counter!(ADOPTED_LINES).increment(lines);
    metrics::counter!(ADOPTED_CHUNKS).increment(chunks);
}

/// `n` lines given back to the shared list on a clean leave.
pub fn handed_back(n: u64) {
    metrics::counter!(HANDED_BACK).increment(n);
}

/// One sensor alert written (`kind`: `blind`, `silent`; `status`: `new`, `closed`).
pub fn sensor_alert(kind: &'static str, status: &'static str) {
    metrics::counter!(SENSOR_ALERTS, "kind" => kind, "status" => status).increment(1);
}

/// One `stats` event looked at (`result`: `used`, `restart`, `stale`, `no_counters`,
/// `unusable`).
pub fn sensor_stats(result: &'static str) {
    metrics::counter!(SENSOR_STATS, "result" => result).increment(1);
}

/// `n` sensors in `state` (`blind`, `silent`) at the last sweep.
pub fn sensors_in_state(state: &'static str, n: u64) {
    metrics::gauge!(SENSORS, "state" => state).set(n as f64);
}
