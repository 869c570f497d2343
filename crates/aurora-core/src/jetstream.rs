//! JetStream streams and consumers the product owns, kept as an install declares them
//! (docs/contract.md#jetstream).
//!
//! Created when missing. A declared setting that differs on the server is a **drift**: it is
//! reported (a warning naming each field `old -> new`, the counter
//! `aurora_jetstream_drift_total`, and a `/readyz` warning the service sets from
//! [`StreamChange::warning`] / [`ConsumerChange::warning`]), then the declared value is applied.
//! What the install does not declare is never touched: an update is the server's own config
//! with only the declared fields replaced, sent as JSON, so fields this client does not know
//! (a newer server's) stay too. A consumer is never deleted: a change NATS refuses in place
//! (pull to push, the deliver or ack policy) is reported and left, and
//! `aurora_jetstream_drift_unresolved` counts it until someone deletes the consumer.
//!
//! The server reports "unlimited" as `-1` (messages, bytes) where a create sends `0`: limits are
//! compared normalised ([`Limit`]), so an unlimited stream is no drift. Everything used here is
//! in NATS 2.9: `STREAM.INFO`/`STREAM.UPDATE`, `CONSUMER.INFO`/`CONSUMER.CREATE.<stream>.<name>`
//! (an existing durable is updated in place, its filter too: tested on 2.9.10).

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, response::Response, stream, ErrorCode};
use serde_json::{json, Value};

use crate::names::Names;

/// The JetStream stream could not be made to match.
#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    #[error("cannot reach JetStream for stream {name}: {source}")]
    Request {
        name: String,
        #[source]
        source: jetstream::context::RequestError,
    },
    #[error("cannot read stream {name}: {source}")]
    Get {
        name: String,
        #[source]
        source: jetstream::Error,
    },
    #[error("cannot read the config of stream {name}: {source}")]
    Decode {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot create stream {name}: {source}")]
    Refused {
        name: String,
        #[source]
        source: jetstream::Error,
    },
    #[error(
        "stream {name} exists with a config that cannot be changed in place ({changes}): {source}"
    )]
    Conflict {
        name: String,
        changes: String,
        #[source]
        source: jetstream::Error,
    },
}

/// A declared consumer could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerSetupError {
    #[error("cannot reach JetStream for consumer {consumer} of stream {stream}: {source}")]
    Request {
        stream: String,
        consumer: String,
        #[source]
        source: jetstream::context::RequestError,
    },
    #[error("cannot read consumer {consumer} of stream {stream}: {source}")]
    Get {
        stream: String,
        consumer: String,
        #[source]
        source: jetstream::Error,
    },
    #[error("cannot read the config of consumer {consumer} of stream {stream}: {source}")]
    Decode {
        stream: String,
        consumer: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot create consumer {consumer} of stream {stream}: {source}")]
    Create {
        stream: String,
        consumer: String,
        #[source]
        source: jetstream::Error,
    },
}

/// One declared setting that differs on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub field: &'static str,
    /// What the server has.
    pub old: String,
    /// What is declared.
    pub new: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.field, self.old, self.new)
    }
}

fn joined(drifts: &[Drift]) -> String {
    drifts
        .iter()
        .map(Drift::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What [`ensure_stream`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChange {
    Created,
    Unchanged,
    /// It had drifted and was updated; each string names a field with its old and new value.
    Updated(Vec<String>),
    /// Created or updated, but NATS could not reserve the declared size (its JetStream
    /// storage is smaller): the stream is bounded by `got` bytes instead of `declared`, and
    /// `changes` were applied (empty for a creation).
    Short {
        declared: u64,
        got: u64,
        changes: Vec<String>,
    },
}

impl StreamChange {
    /// The `/readyz` warning of a drift found at start (`None`: nothing to say).
    pub fn warning(&self, stream: &str) -> Option<String> {
        match self {
            Self::Updated(changes) => Some(format!(
                "stream {stream} had drifted from its declaration; the declared values were applied at start: {}",
                changes.join("; ")
            )),
            Self::Short { declared, got, .. } => Some(format!(
                "stream {stream} is bounded by {} instead of the declared {}: NATS cannot reserve that much JetStream storage (give the server more, max_file_store, or declare a smaller size)",
                show_bytes(*got),
                show_bytes(*declared)
            )),
            _ => None,
        }
    }
}

/// What [`ensure_consumer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerChange {
    Created,
    Unchanged,
    /// It had drifted and was updated: the drifts, as `field: old -> new`.
    Updated(Vec<String>),
    /// It had drifted and NATS refused some of the declared values in place: `applied` were,
    /// `not_applied` were not (the consumer is kept as it is for those).
    Diverged {
        applied: Vec<String>,
        not_applied: Vec<String>,
        reason: String,
    },
}

impl ConsumerChange {
    /// The `/readyz` warning of a drift found at start (`None`: nothing to say).
    pub fn warning(&self, stream: &str, consumer: &str) -> Option<String> {
        match self {
            Self::Updated(changes) => Some(format!(
                "consumer {consumer} of stream {stream} had drifted from its declaration; the declared values were applied at start: {}",
                changes.join("; ")
            )),
            Self::Diverged {
                not_applied,
                reason,
                ..
            } => {
                let reason = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                };
                Some(format!(
                    "consumer {consumer} of stream {stream} differs from its declaration in what NATS does not change in place{reason}: {}; delete the consumer to have it created as declared (its position is lost)",
                    not_applied.join("; ")
                ))
            }
            _ => None,
        }
    }
}

/// One limit of a stream as an install declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit<T> {
    /// Not declared: a new stream gets the base config's value, an existing one keeps its own
    /// (an operator's value stays).
    Keep,
    /// Declared without a limit.
    Unlimited,
    /// Declared at this value.
    At(T),
}

impl<T: Copy> Limit<T> {
    fn declared(self) -> Option<Limit<T>> {
        (!matches!(self, Limit::Keep)).then_some(self)
    }
}

/// The limits of a stream an install declares: age, bytes, messages, and the discard policy
/// (`None`: not declared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub max_age: Limit<Duration>,
    pub max_bytes: Limit<u64>,
    pub max_messages: Limit<u64>,
    pub discard: Option<stream::DiscardPolicy>,
}

impl StreamLimits {
    /// Nothing declared: every limit is left as it is.
    pub const KEEP: Self = Self {
        max_age: Limit::Keep,
        max_bytes: Limit::Keep,
        max_messages: Limit::Keep,
        discard: None,
    };

    /// Every limit of `config` declared as it is.
    pub fn of(config: &stream::Config) -> Self {
        Self {
            max_age: age_limit(config.max_age),
            max_bytes: count_limit(config.max_bytes),
            max_messages: count_limit(config.max_messages),
            discard: Some(config.discard),
        }
    }

    /// `config` with the declared limits written in.
    pub fn apply(&self, mut config: stream::Config) -> stream::Config {
        match self.max_age {
            Limit::Keep => {}
            Limit::Unlimited => config.max_age = Duration::ZERO,
            Limit::At(d) => config.max_age = d,
        }
        if let Some(v) = server_count(self.max_bytes) {
            config.max_bytes = v;
        }
        if let Some(v) = server_count(self.max_messages) {
            config.max_messages = v;
        }
        if let Some(discard) = self.discard {
            config.discard = discard;
        }
        config
    }
}

/// The limit a count of the server's means (`0` and `-1` are both "unlimited").
fn count_limit(v: i64) -> Limit<u64> {
    u64::try_from(v)
        .ok()
        .filter(|v| *v > 0)
        .map_or(Limit::Unlimited, Limit::At)
}

fn age_limit(d: Duration) -> Limit<Duration> {
    if d.is_zero() {
        Limit::Unlimited
    } else {
        Limit::At(d)
    }
}

/// The server's value of a declared count (`None`: not declared).
fn server_count(limit: Limit<u64>) -> Option<i64> {
    match limit {
        Limit::Keep => None,
        Limit::Unlimited => Some(-1),
        Limit::At(v) => Some(i64::try_from(v).unwrap_or(i64::MAX)),
    }
}

/// `7d`, `1h`, `30s`, `250ms`: the largest unit that divides it.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{ms}ms")
    } else {
        format!("{d:?}")
    }
}

/// `10GiB`, `512MiB`, or the number of bytes.
pub fn show_bytes(b: u64) -> String {
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if b >= size && b.is_multiple_of(size) {
            return format!("{}{unit}", b / size);
        }
    }
    b.to_string()
}

impl fmt::Display for Limit<Duration> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Keep => f.write_str("keep"),
            Limit::Unlimited => f.write_str("unlimited"),
            Limit::At(d) => f.write_str(&show_duration(*d)),
        }
    }
}

/// Shown as a number (messages, deliveries); bytes are shown with [`show_bytes`].
impl fmt::Display for Limit<u64> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Keep => f.write_str("keep"),
            Limit::Unlimited => f.write_str("unlimited"),
            Limit::At(v) => write!(f, "{v}"),
        }
    }
}

fn show_byte_limit(l: Limit<u64>) -> String {
    match l {
        Limit::At(b) => show_bytes(b),
        other => other.to_string(),
    }
}

fn show_discard(d: stream::DiscardPolicy) -> &'static str {
    match d {
        stream::DiscardPolicy::Old => "old",
        stream::DiscardPolicy::New => "new",
    }
}

/// Parses a stream's age limit: a duration (`7d`, `12h`), `unlimited` (or `0`), or `keep`
/// (not declared).
pub fn parse_age_limit(s: &str) -> Result<Limit<Duration>, String> {
    match s.trim() {
        "keep" => Ok(Limit::Keep),
        "unlimited" => Ok(Limit::Unlimited),
        other => crate::config::parse_duration(other).map(age_limit),
    }
}

/// Parses a size limit: bytes with an optional `KiB`, `MiB`, `GiB` or `TiB` (`10GiB`),
/// `unlimited` (or `0`), or `keep` (not declared).
pub fn parse_bytes_limit(s: &str) -> Result<Limit<u64>, String> {
    let s = s.trim();
    match s {
        "keep" => return Ok(Limit::Keep),
        "unlimited" => return Ok(Limit::Unlimited),
        _ => {}
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected e.g. 10GiB, 512MiB, unlimited or keep")
    })?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => {
            return Err(format!(
                "invalid size unit in {s:?}: use KiB, MiB, GiB or TiB"
            ))
        }
    };
    let bytes = n
        .checked_mul(1u64 << shift)
        .filter(|b| i64::try_from(*b).is_ok())
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    Ok(count_limit(bytes as i64))
}

/// Parses a count limit (messages): a number, `unlimited` (or `0`), or `keep` (not declared).
pub fn parse_count_limit(s: &str) -> Result<Limit<u64>, String> {
    match s.trim() {
        "keep" => Ok(Limit::Keep),
        "unlimited" => Ok(Limit::Unlimited),
        other => other
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(count_limit)
            .ok_or_else(|| format!("invalid count {other:?}: a number, unlimited or keep")),
    }
}

/// A declared discard policy (`None`: not declared). A flag's type under this name, since clap
/// reads an `Option` field as an optional flag.
pub type DeclaredDiscard = Option<stream::DiscardPolicy>;

/// Parses a discard policy: `old` (the oldest messages go when a limit is reached), `new` (new
/// messages are refused), or `keep` (not declared).
pub fn parse_discard(s: &str) -> Result<DeclaredDiscard, String> {
    match s.trim() {
        "old" => Ok(Some(stream::DiscardPolicy::Old)),
        "new" => Ok(Some(stream::DiscardPolicy::New)),
        "keep" => Ok(None),
        other => Err(format!(
            "invalid discard policy {other:?}: old, new or keep"
        )),
    }
}

/// The federation stream's limits by default (docs/contract.md#jetstream): 100,000 messages,
/// 7 days, 2 GiB (100,000 messages of 20 KiB; an alert is a few KiB), the oldest discarded.
pub const FEDERATION_LIMITS: StreamLimits = StreamLimits {
    max_age: Limit::At(Duration::from_secs(7 * 86_400)),
    max_bytes: Limit::At(2 << 30),
    max_messages: Limit::At(100_000),
    discard: Some(stream::DiscardPolicy::Old),
};

/// The Suricata stream's limits by default: 7 days and 10 GiB, the oldest discarded; the
/// message count is not declared (age and bytes bound the disk).
pub const SURICATA_LIMITS: StreamLimits = StreamLimits {
    max_age: Limit::At(Duration::from_secs(7 * 86_400)),
    max_bytes: Limit::At(10 << 30),
    max_messages: Limit::Keep,
    discard: Some(stream::DiscardPolicy::Old),
};

/// The federation stream (docs/contract.md#jetstream): `AURORA.*` subjects, limits retention,
/// [`FEDERATION_LIMITS`], file storage, 2-minute duplicate window.
pub fn federation_stream_config(names: &Names) -> stream::Config {
    FEDERATION_LIMITS.apply(stream::Config {
        name: names.nats_stream(),
        subjects: names.nats_subjects(),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        description: Some("Aurora cross-site federation".into()),
        ..Default::default()
    })
}

/// The Suricata stream (docs/contract.md#jetstream): `suricata.*`, limits retention,
/// [`SURICATA_LIMITS`], file storage, 2-minute duplicate window.
pub fn suricata_stream_config(names: &Names) -> stream::Config {
    SURICATA_LIMITS.apply(stream::Config {
        name: names.suricata_stream(),
        subjects: vec![names.suricata_subjects()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        description: Some("Suricata EVE events by event type".into()),
        ..Default::default()
    })
}

/// A stream as an install declares it: `config` gives the name, subjects, retention, storage,
/// duplicate window and replica count (0: not managed), `limits` the limits (its `Keep` ones
/// are not managed; `config`'s values are what a new stream gets).
#[derive(Debug, Clone)]
pub struct DeclaredStream {
    pub config: stream::Config,
    pub limits: StreamLimits,
}

impl DeclaredStream {
    pub fn new(config: stream::Config, limits: StreamLimits) -> Self {
        Self { config, limits }
    }

    /// What a missing stream is created with.
    pub fn creation_config(&self) -> stream::Config {
        let mut config = self.limits.apply(self.config.clone());
        // 0 in a create: unlimited; -1 is what the server reports.
        config.max_bytes = config.max_bytes.max(0);
        config.max_messages = config.max_messages.max(0);
        config
    }
}

/// A plain config declares every limit it carries.
impl From<&stream::Config> for DeclaredStream {
    fn from(config: &stream::Config) -> Self {
        Self::new(config.clone(), StreamLimits::of(config))
    }
}

impl From<stream::Config> for DeclaredStream {
    fn from(config: stream::Config) -> Self {
        Self::from(&config)
    }
}

impl From<&DeclaredStream> for DeclaredStream {
    fn from(d: &DeclaredStream) -> Self {
        d.clone()
    }
}

/// The declared settings of `desired` that differ in `actual`, normalised (unlimited is `0`
/// or `-1` alike; subjects in any order).
pub fn config_diff(actual: &stream::Config, desired: &DeclaredStream) -> Vec<Drift> {
    let want = &desired.config;
    let mut drifts = Vec::new();
    let mut check = |field: &'static str, old: String, new: String| {
        if old != new {
            drifts.push(Drift { field, old, new });
        }
    };
    let mut old_subjects = actual.subjects.clone();
    let mut new_subjects = want.subjects.clone();
    old_subjects.sort();
    new_subjects.sort();
    check(
        "subjects",
        format!("{old_subjects:?}"),
        format!("{new_subjects:?}"),
    );
    check(
        "retention",
        format!("{:?}", actual.retention),
        format!("{:?}", want.retention),
    );
    check(
        "storage",
        format!("{:?}", actual.storage),
        format!("{:?}", want.storage),
    );
    check(
        "duplicate_window",
        show_duration(actual.duplicate_window),
        show_duration(want.duplicate_window),
    );
    // 0 in `desired`: the replica count is not managed (kept as it is).
    if want.num_replicas > 0 {
        check(
            "num_replicas",
            actual.num_replicas.max(1).to_string(),
            want.num_replicas.to_string(),
        );
    }
    let limits = &desired.limits;
    if let Some(age) = limits.max_age.declared() {
        check(
            "max_age",
            age_limit(actual.max_age).to_string(),
            age.to_string(),
        );
    }
    if let Some(bytes) = limits.max_bytes.declared() {
        check(
            "max_bytes",
            show_byte_limit(count_limit(actual.max_bytes)),
            show_byte_limit(bytes),
        );
    }
    if let Some(messages) = limits.max_messages.declared() {
        check(
            "max_messages",
            count_limit(actual.max_messages).to_string(),
            messages.to_string(),
        );
    }
    if let Some(discard) = limits.discard {
        check(
            "discard",
            show_discard(actual.discard).into(),
            show_discard(discard).into(),
        );
    }
    drifts
}

/// The JSON keys of a stream config an install declares (`max_msgs` is `max_messages`).
fn declared_stream_keys(desired: &DeclaredStream) -> Vec<&'static str> {
    let mut keys = vec!["subjects", "retention", "storage", "duplicate_window"];
    let limits = &desired.limits;
    if desired.config.num_replicas > 0 {
        keys.push("num_replicas");
    }
    for (key, declared) in [
        ("max_age", limits.max_age.declared().is_some()),
        ("max_bytes", limits.max_bytes.declared().is_some()),
        ("max_msgs", limits.max_messages.declared().is_some()),
        ("discard", limits.discard.is_some()),
    ] {
        if declared {
            keys.push(key);
        }
    }
    keys
}

/// `actual` (the server's JSON) with the `keys` of `declared` written in; every other field is
/// the server's.
fn patched(mut actual: Value, declared: &Value, keys: &[&str]) -> Value {
    if let (Some(target), Some(source)) = (actual.as_object_mut(), declared.as_object()) {
        for key in keys {
            match source.get(*key) {
                Some(v) => target.insert((*key).to_string(), v.clone()),
                None => target.remove(*key),
            };
        }
    }
    actual
}

/// Counts and logs a drift found.
fn report_drift(kind: &'static str, name: &str, drifts: &[Drift]) {
    for d in drifts {
        metrics::counter!("aurora_jetstream_drift_total", "kind" => kind, "name" => name.to_string(), "field" => d.field).increment(1);
    }
    tracing::warn!(kind, name = %name, drift = %joined(drifts), "JetStream {kind} differs from its declaration");
}

/// Declared settings the server still does not have after start (a consumer change NATS
/// refuses in place).
fn set_unresolved(kind: &'static str, name: &str, n: usize) {
    metrics::gauge!("aurora_jetstream_drift_unresolved", "kind" => kind, "name" => name.to_string())
        .set(n as f64);
}

/// Creates the stream, or, when a declared setting has drifted, reports it and applies the
/// declared value (leaving every undeclared setting as the server has it).
pub async fn ensure_stream(
    js: &jetstream::Context,
    desired: impl Into<DeclaredStream>,
) -> Result<StreamChange, StreamSetupError> {
    let desired = desired.into();
    let name = desired.config.name.clone();
    let info: Response<Value> = js
        .request(format!("STREAM.INFO.{name}"), &json!({}))
        .await
        .map_err(|source| StreamSetupError::Request {
            name: name.clone(),
            source,
        })?;
    let info = match info {
        Response::Ok(info) => info,
        Response::Err { error } if error.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            return create_stream(js, &desired).await;
        }
        Response::Err { error } => {
            return Err(StreamSetupError::Get {
                name,
                source: error,
            })
        }
    };
    let raw = info.get("config").cloned().unwrap_or(Value::Null);
    let actual: stream::Config =
        serde_json::from_value(raw.clone()).map_err(|source| StreamSetupError::Decode {
            name: name.clone(),
            source,
        })?;
    let drifts = config_diff(&actual, &desired);
    if drifts.is_empty() {
        set_unresolved("stream", &name, 0);
        return Ok(StreamChange::Unchanged);
    }
    report_drift("stream", &name, &drifts);
    let declared =
        serde_json::to_value(desired.limits.apply(desired.config.clone())).map_err(|source| {
            StreamSetupError::Decode {
                name: name.clone(),
                source,
            }
        })?;
    let update = patched(raw, &declared, &declared_stream_keys(&desired));
    let applied = match with_room(js, "UPDATE", &name, update).await {
        Ok(applied) => applied,
        Err(Refusal::Request(source)) => return Err(StreamSetupError::Request { name, source }),
        Err(Refusal::Server(source)) => {
            return Err(StreamSetupError::Conflict {
                name,
                changes: joined(&drifts),
                source,
            })
        }
    };
    tracing::warn!(stream = %name, changes = %joined(&drifts), "stream config had drifted: the declared values were applied");
    let changes = drifts.iter().map(Drift::to_string).collect();
    Ok(match applied {
        Some(got) => short(&name, &desired, got, changes),
        None => {
            set_unresolved("stream", &name, 0);
            StreamChange::Updated(changes)
        }
    })
}

async fn create_stream(
    js: &jetstream::Context,
    desired: &DeclaredStream,
) -> Result<StreamChange, StreamSetupError> {
    let name = desired.config.name.clone();
    let config = serde_json::to_value(desired.creation_config()).map_err(|source| {
        StreamSetupError::Decode {
            name: name.clone(),
            source,
        }
    })?;
    let applied = match with_room(js, "CREATE", &name, config).await {
        Ok(applied) => applied,
        Err(Refusal::Request(source)) => return Err(StreamSetupError::Request { name, source }),
        Err(Refusal::Server(source)) => return Err(StreamSetupError::Refused { name, source }),
    };
    tracing::info!(stream = %name, "stream created");
    Ok(match applied {
        Some(got) => short(&name, desired, got, Vec::new()),
        None => {
            set_unresolved("stream", &name, 0);
            StreamChange::Created
        }
    })
}

/// The smallest size a stream is shrunk to when NATS cannot reserve the declared one.
const SMALLEST_RESERVATION: u64 = 64 << 20;

enum Refusal {
    Request(jetstream::context::RequestError),
    Server(jetstream::Error),
}

/// Sends `STREAM.<verb>.<name>` with `config`. When the server cannot reserve the config's
/// `max_bytes` (its JetStream storage is smaller: a small disk, other streams' reservations),
/// the size is halved until it fits, down to [`SMALLEST_RESERVATION`]: a bounded stream that
/// runs beats a service that cannot start. `Some(bytes)`: the size applied instead.
async fn with_room(
    js: &jetstream::Context,
    verb: &str,
    name: &str,
    mut config: Value,
) -> Result<Option<u64>, Refusal> {
    let mut shrunk = None;
    loop {
        let answer: Response<Value> = js
            .request(format!("STREAM.{verb}.{name}"), &config)
            .await
            .map_err(Refusal::Request)?;
        let error = match answer {
            Response::Ok(_) => return Ok(shrunk),
            Response::Err { error } => error,
        };
        let size = config.get("max_bytes").and_then(Value::as_i64).unwrap_or(0);
        let storage_short = [
            ErrorCode::STORAGE_RESOURCES_EXCEEDED,
            ErrorCode::INSUFFICIENT_RESOURCES,
        ]
        .contains(&error.error_code());
        let half = (size.max(0) as u64) / 2;
        if !storage_short || half < SMALLEST_RESERVATION {
            return Err(Refusal::Server(error));
        }
        config["max_bytes"] = Value::from(half);
        shrunk = Some(half);
    }
}

/// Logs and counts a stream bounded below its declared size.
fn short(name: &str, desired: &DeclaredStream, got: u64, changes: Vec<String>) -> StreamChange {
    let declared = match desired.limits.max_bytes {
        Limit::At(bytes) => bytes,
        _ => got,
    };
    tracing::warn!(
        stream = %name,
        declared = %show_bytes(declared),
        applied = %show_bytes(got),
        "NATS cannot reserve the stream's declared size: it is bounded by a smaller one (give the server more JetStream storage, or declare a smaller size)"
    );
    set_unresolved("stream", name, 1);
    StreamChange::Short {
        declared,
        got,
        changes,
    }
}

/// How a declared consumer delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Clients fetch from it.
    Pull,
    /// It pushes to this subject (which must not be one of the stream's).
    Push { subject: String },
}

/// A durable consumer as an install declares it. Settings not named here (description,
/// replay, max waiting, backoff, a newer server's fields) are left as the server has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredConsumer {
    /// Its durable name.
    pub name: String,
    /// Empty: every subject of the stream.
    pub filter_subject: String,
    pub delivery: Delivery,
    pub deliver_policy: consumer::DeliverPolicy,
    pub ack_policy: consumer::AckPolicy,
    /// `None`: not declared (a new consumer gets the server's, 30 s).
    pub ack_wait: Option<Duration>,
    pub max_ack_pending: Limit<u64>,
    pub max_deliver: Limit<u64>,
}

impl DeclaredConsumer {
    /// What a missing consumer is created with.
    pub fn creation_config(&self) -> consumer::Config {
        consumer::Config {
            durable_name: Some(self.name.clone()),
            filter_subject: self.filter_subject.clone(),
            deliver_subject: match &self.delivery {
                Delivery::Pull => None,
                Delivery::Push { subject } => Some(subject.clone()),
            },
            deliver_policy: self.deliver_policy,
            ack_policy: self.ack_policy,
            ack_wait: self.ack_wait.unwrap_or_default(),
            max_ack_pending: server_count(self.max_ack_pending).unwrap_or(0),
            max_deliver: server_count(self.max_deliver).unwrap_or(0),
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        }
    }
}

/// Whether NATS changes a consumer's setting in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InPlace {
    /// Every version (ack wait, max ack pending, max deliver, a push consumer's subject).
    Always,
    /// By the servers this runs on (the filter: NATS 2.9.10 and 2.10+ change it in place); an
    /// older server's refusal is reported like [`InPlace::Never`].
    Recent,
    /// Never (pull to push, deliver policy, ack policy): only a new consumer has it.
    Never,
}

/// A consumer drift with the JSON key it is written to.
struct ConsumerDrift {
    drift: Drift,
    key: &'static str,
    in_place: InPlace,
}

fn delivery_of(config: &consumer::Config) -> Delivery {
    match config.deliver_subject.as_deref() {
        None | Some("") => Delivery::Pull,
        Some(subject) => Delivery::Push {
            subject: subject.to_string(),
        },
    }
}

fn show_delivery(d: &Delivery) -> String {
    match d {
        Delivery::Pull => "pull".into(),
        Delivery::Push { subject } => format!("push to {subject}"),
    }
}

/// The declared settings of `desired` that differ in `actual` (`raw_filters`: the server's
/// `filter_subjects`, NATS 2.10's several filters, which this client's config does not read).
fn consumer_diff(
    actual: &consumer::Config,
    raw_filters: &[String],
    desired: &DeclaredConsumer,
) -> Vec<ConsumerDrift> {
    let mut drifts = Vec::new();
    let mut check = |field: &'static str, key: &'static str, in_place, old: String, new: String| {
        if old != new {
            drifts.push(ConsumerDrift {
                drift: Drift { field, old, new },
                key,
                in_place,
            });
        }
    };
    let (old_delivery, new_delivery) = (delivery_of(actual), &desired.delivery);
    let delivery_in_place = match (&old_delivery, new_delivery) {
        (Delivery::Push { .. }, Delivery::Push { .. }) => InPlace::Always,
        _ => InPlace::Never,
    };
    check(
        "delivery",
        "deliver_subject",
        delivery_in_place,
        show_delivery(&old_delivery),
        show_delivery(new_delivery),
    );
    let old_filter = if actual.filter_subject.is_empty() {
        raw_filters.join(",")
    } else {
        actual.filter_subject.clone()
    };
    check(
        "filter_subject",
        "filter_subject",
        InPlace::Recent,
        old_filter,
        desired.filter_subject.clone(),
    );
    check(
        "deliver_policy",
        "deliver_policy",
        InPlace::Never,
        format!("{:?}", actual.deliver_policy),
        format!("{:?}", desired.deliver_policy),
    );
    check(
        "ack_policy",
        "ack_policy",
        InPlace::Never,
        format!("{:?}", actual.ack_policy),
        format!("{:?}", desired.ack_policy),
    );
    if let Some(wait) = desired.ack_wait {
        check(
            "ack_wait",
            "ack_wait",
            InPlace::Always,
            show_duration(actual.ack_wait),
            show_duration(wait),
        );
    }
    if let Some(pending) = desired.max_ack_pending.declared() {
        check(
            "max_ack_pending",
            "max_ack_pending",
            InPlace::Always,
            count_limit(actual.max_ack_pending).to_string(),
            pending.to_string(),
        );
    }
    if let Some(deliver) = desired.max_deliver.declared() {
        check(
            "max_deliver",
            "max_deliver",
            InPlace::Always,
            count_limit(actual.max_deliver).to_string(),
            deliver.to_string(),
        );
    }
    drifts
}

/// Creates the durable consumer `declared` on `stream` when it is missing; when a declared
/// setting has drifted, reports it and applies what NATS changes in place. What it refuses
/// (pull to push, the deliver or ack policy; the filter on a server older than 2.9.10) is reported as
/// [`ConsumerChange::Diverged`] and left: the consumer is never deleted here, since a new one
/// loses its position (what was acknowledged) and a deliver-all consumer would hand every
/// message out again. Consumers that are not declared are never touched.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    stream: &str,
    declared: &DeclaredConsumer,
) -> Result<ConsumerChange, ConsumerSetupError> {
    let name = declared.name.clone();
    let request_error = |source| ConsumerSetupError::Request {
        stream: stream.to_string(),
        consumer: name.clone(),
        source,
    };
    let decode_error = |source| ConsumerSetupError::Decode {
        stream: stream.to_string(),
        consumer: name.clone(),
        source,
    };
    let info: Response<Value> = js
        .request(format!("CONSUMER.INFO.{stream}.{name}"), &json!({}))
        .await
        .map_err(request_error)?;
    let info = match info {
        Response::Ok(info) => info,
        Response::Err { error } if error.error_code() == ErrorCode::CONSUMER_NOT_FOUND => {
            let config = serde_json::to_value(declared.creation_config()).map_err(decode_error)?;
            return match write_consumer(js, stream, &name, &config).await {
                Ok(Ok(())) => {
                    set_unresolved("consumer", &name, 0);
                    tracing::info!(stream, consumer = %name, "consumer created");
                    Ok(ConsumerChange::Created)
                }
                Ok(Err(source)) => Err(ConsumerSetupError::Create {
                    stream: stream.to_string(),
                    consumer: name.clone(),
                    source,
                }),
                Err(source) => Err(request_error(source)),
            };
        }
        Response::Err { error } => {
            return Err(ConsumerSetupError::Get {
                stream: stream.to_string(),
                consumer: name.clone(),
                source: error,
            })
        }
    };
    let raw = info.get("config").cloned().unwrap_or(Value::Null);
    let actual: consumer::Config = serde_json::from_value(raw.clone()).map_err(decode_error)?;
    let raw_filters: Vec<String> = raw
        .get("filter_subjects")
        .and_then(|f| serde_json::from_value(f.clone()).ok())
        .unwrap_or_default();
    let drifts = consumer_diff(&actual, &raw_filters, declared);
    if drifts.is_empty() {
        set_unresolved("consumer", &name, 0);
        return Ok(ConsumerChange::Unchanged);
    }
    let all: Vec<Drift> = drifts.iter().map(|d| d.drift.clone()).collect();
    report_drift("consumer", &name, &all);
    let wanted = serde_json::to_value(declared.creation_config()).map_err(decode_error)?;
    // Everything NATS may change in place, then (refused: an older server) what every
    // version changes.
    let attempts: [&[InPlace]; 2] = [&[InPlace::Always, InPlace::Recent], &[InPlace::Always]];
    let mut reason = String::new();
    let mut applied: Vec<&ConsumerDrift> = Vec::new();
    let mut tried = 0;
    for attempt in attempts {
        let chosen: Vec<&ConsumerDrift> = drifts
            .iter()
            .filter(|d| attempt.contains(&d.in_place))
            .collect();
        // The second set is part of the first: the same size is the same set.
        if chosen.is_empty() || chosen.len() == tried {
            continue;
        }
        tried = chosen.len();
        let keys: Vec<&str> = chosen.iter().map(|d| d.key).collect();
        let mut update = patched(raw.clone(), &wanted, &keys);
        if keys.contains(&"filter_subject") {
            // One filter replaces NATS 2.10's several.
            if let Some(config) = update.as_object_mut() {
                config.remove("filter_subjects");
            }
        }
        match write_consumer(js, stream, &name, &update).await {
            Ok(Ok(())) => {
                applied = chosen;
                break;
            }
            Ok(Err(refused)) => reason = format!("NATS refused the update: {refused}"),
            Err(source) => return Err(request_error(source)),
        }
    }
    let shown = |pick: &dyn Fn(&ConsumerDrift) -> bool| -> Vec<String> {
        drifts
            .iter()
            .filter(|d| pick(d))
            .map(|d| d.drift.to_string())
            .collect()
    };
    let is_applied = |d: &ConsumerDrift| applied.iter().any(|a| a.key == d.key);
    let applied_shown = shown(&is_applied);
    let not_applied = shown(&|d| !is_applied(d));
    set_unresolved("consumer", &name, not_applied.len());
    if not_applied.is_empty() {
        tracing::warn!(stream, consumer = %name, changes = %applied_shown.join("; "), "consumer config had drifted: the declared values were applied");
        return Ok(ConsumerChange::Updated(applied_shown));
    }
    tracing::error!(stream, consumer = %name, applied = %applied_shown.join("; "), not_applied = %not_applied.join("; "), reason = %reason,
        "consumer differs from its declaration and NATS does not change it in place: delete it to have it created as declared");
    Ok(ConsumerChange::Diverged {
        applied: applied_shown,
        not_applied,
        reason,
    })
}

/// Creates or updates a durable consumer with `config` (the server's create-or-update, in
/// NATS 2.9 and later): the outer error is the request's, the inner the server's answer.
async fn write_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    config: &Value,
) -> Result<Result<(), jetstream::Error>, jetstream::context::RequestError> {
    let filter = config
        .get("filter_subject")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty());
    let subject = match filter {
        Some(f) => format!("CONSUMER.CREATE.{stream}.{name}.{f}"),
        None => format!("CONSUMER.CREATE.{stream}.{name}"),
    };
    let answer: Response<Value> = js
        .request(subject, &json!({"stream_name": stream, "config": config}))
        .await?;
    Ok(match answer {
        Response::Ok(_) => Ok(()),
        Response::Err { error } => Err(error),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What a NATS server reports for a stream created from `config`: unlimited as -1.
    fn as_reported(mut config: stream::Config) -> stream::Config {
        for v in [&mut config.max_bytes, &mut config.max_messages] {
            if *v == 0 {
                *v = -1;
            }
        }
        config.max_messages_per_subject = -1;
        config.max_consumers = -1;
        config.max_message_size = -1;
        config.num_replicas = 1;
        config
    }

    #[test]
    fn the_spec_config_and_its_drift() {
        let names = Names::default();
        let desired = federation_stream_config(&names);
        assert_eq!(desired.name, "AURORA");
        assert_eq!(desired.max_messages, 100_000);
        assert_eq!(desired.max_bytes, 2 << 30);
        let declared = DeclaredStream::from(&desired);
        assert!(config_diff(&desired, &declared).is_empty());
        let mut drifted = desired.clone();
        drifted.max_messages = 10;
        drifted.subjects.pop();
        let diff: Vec<String> = config_diff(&drifted, &declared)
            .iter()
            .map(Drift::to_string)
            .collect();
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff.contains(&"max_messages: 10 -> 100000".to_string()));
    }

    #[test]
    fn unlimited_reported_as_minus_one_is_no_drift() {
        let names = Names::new("t1").unwrap();
        let no_limits = DeclaredStream::new(
            suricata_stream_config(&names),
            StreamLimits {
                max_age: Limit::Unlimited,
                max_bytes: Limit::Unlimited,
                max_messages: Limit::Unlimited,
                discard: Some(stream::DiscardPolicy::Old),
            },
        );
        let created = no_limits.creation_config();
        assert_eq!((created.max_bytes, created.max_messages), (0, 0));
        assert_eq!(created.max_age, Duration::ZERO);
        let reported = as_reported(created);
        assert_eq!(reported.max_messages, -1);
        assert!(config_diff(&reported, &no_limits).is_empty());
        // The suricata stream by default: age and bytes, messages not declared.
        let declared = DeclaredStream::new(suricata_stream_config(&names), SURICATA_LIMITS);
        let reported = as_reported(declared.creation_config());
        assert_eq!(reported.max_bytes, 10 << 30);
        assert!(config_diff(&reported, &declared).is_empty());
        // The stream of before this change (no limits at all) drifts in age and bytes only.
        let before = as_reported(no_limits.creation_config());
        let diff: Vec<String> = config_diff(&before, &declared)
            .iter()
            .map(Drift::to_string)
            .collect();
        assert_eq!(
            diff,
            vec![
                "max_age: unlimited -> 7d".to_string(),
                "max_bytes: unlimited -> 10GiB".to_string()
            ]
        );
    }

    #[test]
    fn undeclared_limits_are_not_compared_nor_written() {
        let names = Names::default();
        let declared = DeclaredStream::new(
            suricata_stream_config(&names),
            StreamLimits {
                max_age: Limit::At(Duration::from_secs(3600)),
                ..StreamLimits::KEEP
            },
        );
        let mut operator = as_reported(declared.creation_config());
        operator.max_messages = 5;
        operator.max_bytes = 1 << 20;
        operator.discard = stream::DiscardPolicy::New;
        operator.max_messages_per_subject = 7;
        assert!(config_diff(&operator, &declared).is_empty());
        operator.max_age = Duration::from_secs(60);
        let drifts = config_diff(&operator, &declared);
        assert_eq!(drifts.len(), 1);
        assert_eq!(drifts[0].to_string(), "max_age: 1m -> 1h");
        let keys = declared_stream_keys(&declared);
        assert!(keys.contains(&"max_age"));
        assert!(!keys.contains(&"max_msgs") && !keys.contains(&"max_bytes"));
        assert!(!keys.contains(&"discard") && !keys.contains(&"num_replicas"));
        // The update is the server's config with the declared keys only written in.
        let raw = serde_json::to_value(&operator).unwrap();
        let mut raw = raw.as_object().unwrap().clone();
        raw.insert("a_newer_servers_field".into(), json!("kept"));
        let wanted = serde_json::to_value(declared.limits.apply(declared.config.clone())).unwrap();
        let update = patched(Value::Object(raw), &wanted, &keys);
        assert_eq!(update["max_age"], json!(3_600_000_000_000u64));
        assert_eq!(update["max_msgs"], json!(5));
        assert_eq!(update["max_msgs_per_subject"], json!(7));
        assert_eq!(update["discard"], json!("new"));
        assert_eq!(update["a_newer_servers_field"], json!("kept"));
    }

    #[test]
    fn limits_parse_and_show() {
        assert_eq!(
            parse_age_limit("7d"),
            Ok(Limit::At(Duration::from_secs(604_800)))
        );
        assert_eq!(parse_age_limit("0"), Ok(Limit::Unlimited));
        assert_eq!(parse_age_limit("keep"), Ok(Limit::Keep));
        assert!(parse_age_limit("7 days").is_err());
        assert_eq!(parse_bytes_limit("10GiB"), Ok(Limit::At(10 << 30)));
        assert_eq!(parse_bytes_limit("512MiB"), Ok(Limit::At(512 << 20)));
        assert_eq!(parse_bytes_limit("1000"), Ok(Limit::At(1000)));
        assert_eq!(parse_bytes_limit("unlimited"), Ok(Limit::Unlimited));
        assert!(parse_bytes_limit("10GB").is_err());
        assert!(parse_bytes_limit("99999999TiB").is_err());
        assert_eq!(parse_count_limit("100000"), Ok(Limit::At(100_000)));
        assert_eq!(parse_count_limit("0"), Ok(Limit::Unlimited));
        assert!(parse_count_limit("-5").is_err());
        assert_eq!(parse_discard("new"), Ok(Some(stream::DiscardPolicy::New)));
        assert_eq!(parse_discard("keep"), Ok(None));
        assert!(parse_discard("oldest").is_err());
        assert_eq!(show_duration(Duration::from_secs(120)), "2m");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_bytes(2 << 30), "2GiB");
        assert_eq!(show_bytes(1000), "1000");
        assert_eq!(count_limit(-1), Limit::Unlimited);
        assert_eq!(count_limit(0), Limit::Unlimited);
    }

    fn flow() -> DeclaredConsumer {
        DeclaredConsumer {
            name: "flow".into(),
            filter_subject: "suricata.flow".into(),
            delivery: Delivery::Pull,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Some(Duration::from_secs(30)),
            max_ack_pending: Limit::At(20_000),
            max_deliver: Limit::Keep,
        }
    }

    #[test]
    fn consumer_drift_is_normalised_and_classified() {
        let declared = flow();
        let mut actual = declared.creation_config();
        // As the server reports it: its defaults filled in.
        actual.max_deliver = -1;
        actual.max_waiting = 512;
        assert!(consumer_diff(&actual, &[], &declared).is_empty());
        actual.ack_wait = Duration::from_secs(5);
        actual.deliver_policy = consumer::DeliverPolicy::New;
        actual.filter_subject = String::new();
        let drifts = consumer_diff(&actual, &["suricata.dns".into()], &declared);
        let shown: Vec<(String, InPlace)> = drifts
            .iter()
            .map(|d| (d.drift.to_string(), d.in_place))
            .collect();
        assert_eq!(
            shown,
            vec![
                (
                    "filter_subject: suricata.dns -> suricata.flow".to_string(),
                    InPlace::Recent
                ),
                ("deliver_policy: New -> All".to_string(), InPlace::Never),
                ("ack_wait: 5s -> 30s".to_string(), InPlace::Always),
            ]
        );
        let push = DeclaredConsumer {
            delivery: Delivery::Push {
                subject: "stats.suricata".into(),
            },
            ..flow()
        };
        let drifts = consumer_diff(&declared.creation_config(), &[], &push);
        assert_eq!(drifts.len(), 1);
        assert_eq!(drifts[0].in_place, InPlace::Never);
        assert_eq!(
            drifts[0].drift.to_string(),
            "delivery: pull -> push to stats.suricata"
        );
    }
}
