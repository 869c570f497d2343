//! Every metric of the service, named `aurora_device_registry_<what>_<unit>` (listed in the
//! README).

/// Device sightings read from the registrations stream.
pub const SIGHTINGS: &str = "aurora_device_registry_sightings_total";
/// Devices registered for the first time.
pub const REGISTERED: &str = "aurora_device_registry_devices_registered_total";
/// Seconds one registration batch took (upsert, challenges, records, ack).
pub const REGISTRATION_BATCH_SECONDS: &str = "aurora_device_registry_registration_batch_seconds";
/// Attestation challenges issued, by `trigger` (registration, schedule, api).
pub const CHALLENGES: &str = "aurora_device_registry_challenges_issued_total";
/// Attestation answers checked, by `result` (pass, fail).
pub const ATTESTATIONS: &str = "aurora_device_registry_attestations_total";
/// Failed attestations by `reason`.
pub const ATTESTATION_FAILURES: &str = "aurora_device_registry_attestation_failures_total";
/// Challenges that expired unanswered.
pub const ATTESTATION_TIMEOUTS: &str = "aurora_device_registry_attestation_timeouts_total";
/// Alerts written to `aurora:alerts`, by `kind` (attestation, timeout, cps).
pub const ALERTS: &str = "aurora_device_registry_alerts_total";
/// Stream entries dead-lettered for bad input, by `stream`.
pub const DEAD_LETTERS: &str = "aurora_device_registry_dead_letters_total";
/// Records the outbox sweeper had to send again, by `kind` (challenge, registered).
pub const RESENT: &str = "aurora_device_registry_outbox_resent_total";
/// Failed batches or sweeps, by `part` (retried).
pub const BATCH_ERRORS: &str = "aurora_device_registry_batch_errors_total";
/// API requests by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "aurora_device_registry_http_requests_total";
