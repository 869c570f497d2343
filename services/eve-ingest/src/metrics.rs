//! Every metric of the service, in one place (listed in the README).

/// Events stored in JetStream, by event type (`duplicate` = JetStream already had it).
pub const EVENTS: &str = "aurora_eve_ingest_events_total";
/// Events JetStream reported as duplicates of one it already stored (a retry, a replay).
pub const EVENTS_DUPLICATE: &str = "aurora_eve_ingest_events_duplicate_total";
/// Alerts written to the alerts stream.
pub const ALERTS: &str = "aurora_eve_ingest_alerts_total";
/// Alerts not written again because their id was already written (a retry after a crash).
pub const ALERTS_DUPLICATE: &str = "aurora_eve_ingest_alerts_duplicate_total";
/// Lines that went to the dead-letter list, by reason.
pub const DEAD_LETTERS: &str = "aurora_eve_ingest_dead_letters_total";
/// Failed attempts (publish, ack, Redis write) that were retried, by stage.
pub const RETRIES: &str = "aurora_eve_ingest_retries_total";
/// Lines found held (processing list and chunks) at start (left by a crash) or after a
/// failed take.
pub const RECOVERED: &str = "aurora_eve_ingest_recovered_lines_total";
/// Lines read from the input (list or file).
pub const LINES: &str = "aurora_eve_ingest_lines_total";
/// Seconds from taking a batch to removing it from the processing list / saving the position.
pub const BATCH_SECONDS: &str = "aurora_eve_ingest_batch_seconds";
/// File input: rotations followed, by kind (`rename`, `truncate`).
pub const FILE_ROTATIONS: &str = "aurora_eve_ingest_file_rotations_total";
/// Blank lines of a file skipped.
pub const BLANK_LINES: &str = "aurora_eve_ingest_blank_lines_total";
