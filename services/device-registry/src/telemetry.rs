//! Every metric of the service, named `aurora_device_registry_<what>_<unit>` (listed in the
//! README), and the one function that records each.

use std::time::Duration;

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
/// Device commands of the API moved to a `status` (awaiting_approval, queued, sent, done, ...).
pub const DEVICE_ACTIONS: &str = "aurora_device_registry_device_actions_total";
/// API requests by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "aurora_device_registry_http_requests_total";

/// `n` `device.seen` records handled.
pub fn sightings(n: usize) {
    metrics::counter!(SIGHTINGS).increment(n as u64);
}

/// `n` devices registered for the first time.
pub fn registered(n: usize) {
    metrics::counter!(REGISTERED).increment(n as u64);
}

/// One registration batch took `elapsed`.
pub fn registration_batch(elapsed: Duration) {
    metrics::histogram!(REGISTRATION_BATCH_SECONDS).record(elapsed.as_secs_f64());
}

/// What made the service challenge a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Its first sighting.
    Registration,
    /// `--reattest-interval`.
    Schedule,
    /// `POST /api/v1/devices/{id}/attest`.
    Api,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::Schedule => "schedule",
            Self::Api => "api",
        }
    }
}

/// `n` challenges issued.
pub fn challenges_issued(trigger: Trigger, n: usize) {
    metrics::counter!(CHALLENGES, "trigger" => trigger.as_str()).increment(n as u64);
}

/// One answer checked: passed or failed.
pub fn attestation_checked(passed: bool) {
    let result = if passed { "pass" } else { "fail" };
    metrics::counter!(ATTESTATIONS, "result" => result).increment(1);
}

/// One answer failed for `reason` (a label: `bad_signature`, ...).
pub fn attestation_failed(reason: &'static str) {
    metrics::counter!(ATTESTATION_FAILURES, "reason" => reason).increment(1);
}

/// `n` challenges expired unanswered.
pub fn attestation_timeouts(n: usize) {
    metrics::counter!(ATTESTATION_TIMEOUTS).increment(n as u64);
}

/// What an alert of the service is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// A failed attestation.
    Attestation,
    /// A challenge that expired unanswered.
    Timeout,
    /// A device's own alert, enriched.
    Cps,
    /// A privileged device action that did not end `done`.
    Action,
    /// A device (or a fleet of them) fell silent.
    Silent,
}

impl AlertKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Attestation => "attestation",
            Self::Timeout => "timeout",
            Self::Cps => "cps",
            Self::Action => "action",
            Self::Silent => "silent",
        }
    }
}

/// `n` alerts written.
pub fn alerts(kind: AlertKind, n: usize) {
    metrics::counter!(ALERTS, "kind" => kind.as_str()).increment(n as u64);
}

/// A device command moved to `status`.
pub fn device_action(status: &str) {
    metrics::counter!(DEVICE_ACTIONS, "status" => status.to_string()).increment(1);
}

/// One entry of `stream` dead-lettered for bad input.
pub fn dead_letter(stream: &str) {
    metrics::counter!(DEAD_LETTERS, "stream" => stream.to_string()).increment(1);
}

/// What the sweeper sent again from the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resent {
    /// An `attest` command.
    Challenge,
    /// A `device.registered` record.
    Registered,
}

impl Resent {
    fn as_str(self) -> &'static str {
        match self {
            Self::Challenge => "challenge",
            Self::Registered => "registered",
        }
    }
}

/// `n` records sent again by the sweeper.
pub fn resent(kind: Resent, n: usize) {
    metrics::counter!(RESENT, "kind" => kind.as_str()).increment(n as u64);
}

/// A batch or a sweep of `part` failed (it is retried).
pub fn batch_failed(part: &'static str) {
    metrics::counter!(BATCH_ERRORS, "part" => part).increment(1);
}

/// One API request answered.
pub fn http_request(route: String, method: String, status: u16) {
    metrics::counter!(HTTP_REQUESTS, "route" => route, "method" => method,
        "status" => status.to_string())
    .increment(1);
}
