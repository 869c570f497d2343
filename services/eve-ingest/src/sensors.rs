//! Sensor blindness: Suricata's `stats` events say when capture drops packets, and a sensor
//! that stops sending them has stopped watching. Both become alerts (README, Sensor
//! blindness).
//!
//! - **Blind**: per sensor (the event's `host`), the drop ratio of the last `window` of
//!   stats, from the cumulative counters: `Δkernel_drops / Δkernel_packets` between the
//!   newest sample at or before the window's start and the last one (`kernel_packets`
//!   counts the dropped packets too). At or over the threshold (with enough packets) an
//!   episode opens (`new`); a higher severity band during it writes the alert again with the
//!   higher severity; below half the threshold it closes (`closed`, same alert id).
//! - **Silent**: no stats from a sensor for `silent_after` × its interval (learned from the
//!   gaps between its stats' timestamps, `stats_interval` until learned) opens an episode;
//!   its next stats close it. Every replica sweeps for silent sensors.
//!
//! The state is shared by the replicas: one hash per sensor in Redis, changed only by the
//! scripts below, so whichever replica sees an event decides the same way and an episode
//! opens once. A transition is put in the sensor's outbox in the same script; the alert is
//! then written at most once (idempotency key per alert id, status and severity) and only
//! then taken out of the outbox, so a crash in between writes it on the next look, never
//! twice. Only `stats` events do this work; other events are not read.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use aurora_core::bus::{Conn, OnceWrite, Producer};
use aurora_core::model::{to_bytes, Alert, AlertStatus, Extra, Severity};
use aurora_core::Names;

use crate::alert::parse_timestamp;
use crate::error::IngestError;
use crate::event::EveEvent;
use crate::sightings::{KeyOf, Number, Text};
use crate::telemetry;
use crate::SERVICE;

/// The `source` of sensor alerts.
pub const SOURCE: &str = "eve-ingest";
/// `extra.kind` of a drop-ratio alert.
pub const KIND_BLIND: &str = "sensor_blind";
/// `extra.kind` of a no-stats alert.
pub const KIND_SILENT: &str = "sensor_silent";
/// A drop ratio at or over this is `high` (under it, over the threshold: `medium`).
pub const HIGH_AT: f64 = 0.10;
/// A drop ratio at or over this is `critical`.
pub const CRITICAL_AT: f64 = 0.50;
/// A sensor without stats for this long is forgotten (its state expires).
pub const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longer `host` values are not used (a sensor name, not a payload).
pub const MAX_HOST_BYTES: usize = 256;
/// ATT&CK technique of a silent sensor: what disabling a security tool looks like
/// (Impair Defenses: Disable or Modify Tools). A blind one is usually load, so it has none.
pub const SILENT_TECHNIQUE: &str = "T1562.001";

/// The flags of sensor blindness.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSettings {
    /// Drop ratio (0..1) at or over which a sensor is blind.
    pub drop_ratio: f64,
    /// The span of stats the ratio is taken over.
    pub window: Duration,
    /// Packets a window must hold for an episode to open.
    pub min_packets: u64,
    /// The stats interval assumed until a sensor's own is learned.
    pub stats_interval: Duration,
    /// Intervals without stats after which a sensor is silent.
    pub silent_after: u32,
}

impl Default for SensorSettings {
    fn default() -> Self {
        Self {
            drop_ratio: 0.01,
            window: Duration::from_secs(60),
            min_packets: 1000,
            stats_interval: Duration::from_secs(8),
            silent_after: 3,
        }
    }
}

impl SensorSettings {
    /// How often a replica looks for silent sensors: half the default interval, at least
    /// 100 ms.
    pub fn sweep_every(&self) -> Duration {
        (self.stats_interval / 2).max(Duration::from_millis(100))
    }
}

/// Reads `0.01` or `1%` as a ratio in (0, 1).
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let ratio = match s.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
        None => s.parse::<f64>(),
    }
    .map_err(|e| format!("{s:?} is not a ratio (0.01 or 1%): {e}"))?;
    if ratio > 0.0 && ratio < 1.0 {
        Ok(ratio)
    } else {
        Err(format!("{s:?} is not between 0 and 1 (0% and 100%)"))
    }
}

/// What one `stats` event says, as far as blindness goes.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSample {
    pub host: String,
    /// The event's timestamp, µs since the epoch.
    pub at_us: Option<i64>,
    pub uptime: Option<u64>,
    pub kernel_packets: Option<u64>,
    pub kernel_drops: Option<u64>,
    pub event_sha256: String,
}

/// The sample of a `stats` event; `None` when it is not one, is not readable, or names a
/// sensor too long to be one. A sensor without `host` is `default_sensor`. Fields of the
/// wrong type count as missing: a stats event without both capture counters only says
/// the sensor is alive.
pub fn stats_sample(event: &EveEvent, default_sensor: &str) -> Option<StatsSample> {
    if event.event_type != "stats" {
        return None;
    }
    sample_of(StatsRead::scan(&event.raw)?, &event.hash, default_sensor)
}

/// The sample of what was read of a `stats` event whose SHA-256 is `hash` (see
/// [`stats_sample`]).
pub(crate) fn sample_of(
    doc: StatsRead<'_>,
    hash: &[u8; 32],
    default_sensor: &str,
) -> Option<StatsSample> {
    let host = match doc.host.as_deref().map(str::trim) {
        Some(h) if !h.is_empty() => h,
        _ => default_sensor,
    };
    if host.len() > MAX_HOST_BYTES {
        return None;
    }
    let at_us = doc
        .timestamp
        .as_deref()
        .and_then(parse_timestamp)
        .map(|t| t.timestamp_micros())
        .filter(|t| *t > 0);
    Some(StatsSample {
        host: host.to_string(),
        at_us,
        uptime: doc.uptime,
        kernel_packets: doc.kernel_packets,
        kernel_drops: doc.kernel_drops,
        event_sha256: crate::event::hex_of(hash),
    })
}

/// What blindness reads of a `stats` event, in one pass that builds nothing of the rest (a
/// stats event is several KiB of counters): `timestamp`, `host`, `stats.uptime`,
/// `stats.capture.kernel_packets` and `.kernel_drops`. A value of another shape counts as
/// missing; a repeated key: the last one wins, as when the whole object is read.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct StatsRead<'a> {
    pub(crate) timestamp: Option<Cow<'a, str>>,
    pub(crate) host: Option<Cow<'a, str>>,
    pub(crate) uptime: Option<u64>,
    pub(crate) kernel_packets: Option<u64>,
    pub(crate) kernel_drops: Option<u64>,
}

impl<'a> StatsRead<'a> {
    pub(crate) fn scan(raw: &'a [u8]) -> Option<Self> {
        let mut de = serde_json::Deserializer::from_slice(raw);
        let read = de::Deserializer::deserialize_map(&mut de, StatsVisitor(Level::Top)).ok()?;
        de.end().ok()?;
        Some(read)
    }
}

/// Which object the visitor is in.
#[derive(Clone, Copy)]
enum Level {
    Top,
    Stats,
    Capture,
}

/// Reads the fields of its level into a [`StatsRead`]; any other shape reads as nothing.
pub(crate) struct StatsVisitor(Level);

impl StatsVisitor {
    /// The reader of a `stats` object (the top level's `stats` value).
    pub(crate) fn stats() -> Self {
        Self(Level::Stats)
    }
}

/// The keys the visitor looks for, at any level.
#[derive(Clone, Copy)]
enum StatsKey {
    Timestamp,
    Host,
    Stats,
    Uptime,
    Capture,
    KernelPackets,
    KernelDrops,
}

const STATS_KEYS: &[(&str, StatsKey)] = &[
    ("timestamp", StatsKey::Timestamp),
    ("host", StatsKey::Host),
    ("stats", StatsKey::Stats),
    ("uptime", StatsKey::Uptime),
    ("capture", StatsKey::Capture),
    ("kernel_packets", StatsKey::KernelPackets),
    ("kernel_drops", StatsKey::KernelDrops),
];

impl<'de> DeserializeSeed<'de> for StatsVisitor {
    type Value = StatsRead<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StatsVisitor {
    type Value = StatsRead<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut read = StatsRead::default();
        // Keys are compared where they lie in the line, never copied (a stats event has
        // hundreds).
        while let Some(key) = map.next_key_seed(KeyOf(STATS_KEYS))? {
            match (self.0, key) {
                (Level::Top, Some(StatsKey::Timestamp)) => {
                    read.timestamp = map.next_value::<Text>()?.0
                }
                (Level::Top, Some(StatsKey::Host)) => read.host = map.next_value::<Text>()?.0,
                (Level::Top, Some(StatsKey::Stats)) => {
                    let stats = map.next_value_seed(StatsVisitor(Level::Stats))?;
                    read.uptime = stats.uptime;
                    read.kernel_packets = stats.kernel_packets;
                    read.kernel_drops = stats.kernel_drops;
                }
                (Level::Stats, Some(StatsKey::Uptime)) => {
                    read.uptime = map.next_value::<Number>()?.0
                }
                (Level::Stats, Some(StatsKey::Capture)) => {
                    let capture = map.next_value_seed(StatsVisitor(Level::Capture))?;
                    read.kernel_packets = capture.kernel_packets;
                    read.kernel_drops = capture.kernel_drops;
                }
                (Level::Capture, Some(StatsKey::KernelPackets)) => {
                    read.kernel_packets = map.next_value::<Number>()?.0
                }
                (Level::Capture, Some(StatsKey::KernelDrops)) => {
                    read.kernel_drops = map.next_value::<Number>()?.0
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(read)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(StatsRead::default())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(StatsRead::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(StatsRead::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(StatsRead::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(StatsRead::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(StatsRead::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(StatsRead::default())
    }
}

/// A sensor's stats events of one batch, in order, against its state; puts the transitions
/// in its outbox and returns `{result of each event..., outbox entries...}`. ARGV[1..10]: the
/// sensor and the settings; then five per event from ARGV[11]: its time, uptime, kernel
/// packets, kernel drops and SHA-256. One call per sensor and batch: the clock, the sensor
/// set, the keys' lifetimes and the outbox are seen to once, whatever the events' number.
/// Times are µs; large integers travel as strings (Lua's numbers are doubles: exact to 2^53,
/// but `tostring` keeps only 14 digits).
const OBSERVE: &str = r#"
local function s(x) return string.format('%.0f', x) end
local state, samples, outbox = KEYS[1], KEYS[2], KEYS[3]
local host = ARGV[1]
local window, threshold, clear = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local min_packets, default, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local high_at, critical_at, silent_after = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local t = redis.call('TIME')
local now = s(tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('SADD', KEYS[4], host)
local results = {}
for at = 11, #ARGV, 5 do
  local a_ts, a_up, a_p, a_d, a_sha = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local f = redis.call('HMGET', state, 'silent', 'silent_since', 'seen', 'ts', 'up', 'p', 'd',
    'ivl', 'blind', 'blind_since', 'blind_rank')
  if f[1] == '1' then
    redis.call('RPUSH', outbox, cjson.encode({kind='silent', status='closed', host=host,
      since=f[2], at=now, last_seen=f[3], interval=f[8] or ARGV[6], silent_after=silent_after}))
    redis.call('HSET', state, 'silent', '0')
  end
  redis.call('HSET', state, 'seen', now)
  local result = 'alive'
  local ts, last_ts = tonumber(a_ts), tonumber(f[4])
  if ts and last_ts and ts <= last_ts then
    result = 'stale'
  elseif ts then
    if last_ts then
      local gap = ts - last_ts
      local ivl = tonumber(f[8])
      if ivl then ivl = 0.75 * ivl + 0.25 * math.min(gap, 2 * ivl)
      else ivl = math.min(gap, 2 * default) end
      redis.call('HSET', state, 'ivl', s(ivl))
    end
    redis.call('HSET', state, 'ts', a_ts)
    local p, d, up = tonumber(a_p), tonumber(a_d), tonumber(a_up)
    if p and d then
      result = 'used'
      local lp, ld, lup = tonumber(f[6]), tonumber(f[7]), tonumber(f[5])
      if (lp and p < lp) or (ld and d < ld) or (up and lup and up < lup) then
        redis.call('DEL', samples)
        result = 'restart'
      end
      redis.call('HSET', state, 'p', a_p, 'd', a_d)
      redis.call('RPUSH', samples, a_ts .. ' ' .. a_p .. ' ' .. a_d)
      local from = ts - window
      while redis.call('LLEN', samples) >= 2 do
        local st = tonumber(string.match(redis.call('LINDEX', samples, 1), '^(%S+)'))
        if st and st <= from then redis.call('LPOP', samples) else break end
      end
      local bt, bp, bd = string.match(redis.call('LINDEX', samples, 0), '^(%S+) (%S+) (%S+)$')
      bt, bp, bd = tonumber(bt), tonumber(bp), tonumber(bd)
      if bt and bp and bd and bt <= from then
        local dp, dd = p - bp, d - bd
        local ratio = 0
        if dp > 0 then ratio = math.min(dd / dp, 1) elseif dd > 0 then ratio = 1 end
        local rank = 1
        if ratio >= critical_at then rank = 3 elseif ratio >= high_at then rank = 2 end
        local enough = dp >= min_packets
        local entry = {kind='blind', host=host, at=a_ts, ratio=ratio, rank=rank,
          packets_delta=s(dp), drops_delta=s(dd), packets=a_p, drops=a_d,
          window=s(ts - bt), event_sha256=a_sha}
        local blind_rank = tonumber(f[11]) or 1
        if f[9] ~= '1' then
          if enough and ratio >= threshold then
            entry.status = 'new'
            entry.since = a_ts
            redis.call('HSET', state, 'blind', '1', 'blind_since', a_ts, 'blind_rank', rank)
            redis.call('RPUSH', outbox, cjson.encode(entry))
          end
        elseif ratio < clear then
          entry.status = 'closed'
          entry.since = f[10]
          entry.rank = blind_rank
          redis.call('HSET', state, 'blind', '0')
          redis.call('RPUSH', outbox, cjson.encode(entry))
        elseif enough and rank > blind_rank then
          entry.status = 'new'
          entry.since = f[10]
          redis.call('HSET', state, 'blind_rank', rank)
          redis.call('RPUSH', outbox, cjson.encode(entry))
        end
      end
      if up then redis.call('HSET', state, 'up', a_up) end
    end
  end
  results[#results + 1] = result
end
redis.call('EXPIRE', state, ttl)
redis.call('EXPIRE', samples, ttl)
redis.call('EXPIRE', outbox, ttl)
for _, entry in ipairs(redis.call('LRANGE', outbox, 0, -1)) do
  results[#results + 1] = entry
end
return results
"#;

/// One sensor in the sweep: opens a silence episode when its last stats are older than
/// `silent_after` intervals; returns `{state, blind, silent, outbox entries...}` (state
/// `gone` when the sensor was forgotten).
const SWEEP: &str = r#"
local function s(x) return string.format('%.0f', x) end
local state, outbox = KEYS[1], KEYS[2]
if redis.call('EXISTS', state) == 0 then return {'gone', '0', '0'} end
local f = redis.call('HMGET', state, 'silent', 'seen', 'ivl', 'blind')
local silent = f[1] == '1'
local seen = tonumber(f[2])
if not silent and seen then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local ivl = tonumber(f[3]) or tonumber(ARGV[3])
  if now - seen > tonumber(ARGV[2]) * ivl then
    silent = true
    redis.call('HSET', state, 'silent', '1', 'silent_since', s(now))
    redis.call('RPUSH', outbox, cjson.encode({kind='silent', status='new', host=ARGV[1],
      since=s(now), at=s(now), last_seen=f[2], interval=s(ivl), silent_after=ARGV[2]}))
    local ttl = redis.call('PTTL', state)
    if ttl > 0 then redis.call('PEXPIRE', outbox, ttl) end
  end
end
local reply = redis.call('LRANGE', outbox, 0, -1)
table.insert(reply, 1, 'ok')
table.insert(reply, 2, f[4] == '1' and '1' or '0')
table.insert(reply, 3, silent and '1' or '0')
return reply
"#;

static OBSERVE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(OBSERVE));
static SWEEP_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SWEEP));

/// A transition of a sensor's condition, as the scripts put it in the outbox.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Transition {
    pub kind: String,
    pub status: String,
    pub host: String,
    /// The episode's start (µs): with the host and kind, it names the episode.
    #[serde(deserialize_with = "int")]
    pub since: i64,
    #[serde(deserialize_with = "int")]
    pub at: i64,
    #[serde(default)]
    pub ratio: Option<f64>,
    #[serde(default)]
    pub rank: Option<u8>,
    #[serde(default, deserialize_with = "opt_int")]
    pub packets_delta: Option<i64>,
    #[serde(default, deserialize_with = "opt_int")]
    pub drops_delta: Option<i64>,
    #[serde(default, deserialize_with = "opt_int")]
    pub packets: Option<i64>,
    #[serde(default, deserialize_with = "opt_int")]
    pub drops: Option<i64>,
    #[serde(default, deserialize_with = "opt_int")]
    pub window: Option<i64>,
    #[serde(default, deserialize_with = "opt_int")]
    pub last_seen: Option<i64>,
    #[serde(default, deserialize_with = "opt_int")]
    pub interval: Option<i64>,
    #[serde(default, deserialize_with = "opt_int")]
    pub silent_after: Option<i64>,
    #[serde(default)]
    pub event_sha256: Option<String>,
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        _ => None,
    }
}

fn int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = <Value as serde::Deserialize>::deserialize(d)?;
    as_int(&v).ok_or_else(|| serde::de::Error::custom("not an integer"))
}

fn opt_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(as_int(&<Value as serde::Deserialize>::deserialize(d)?))
}

/// The namespace of sensor alert ids ([`crate::alert::id_namespace_of`]).
fn id_namespace() -> Uuid {
    static NAMESPACE: LazyLock<Uuid> = LazyLock::new(|| crate::alert::id_namespace_of("sensor"));
    *NAMESPACE
}

/// The alert id of one episode: the same sensor, condition and start give the same id.
pub fn episode_id(kind: &str, host: &str, since_us: i64) -> Uuid {
    Uuid::new_v5(
        &id_namespace(),
        format!("{kind}:{host}:{since_us}").as_bytes(),
    )
}

fn time_of(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_else(Utc::now)
}

fn seconds(us: i64) -> Value {
    json!(us as f64 / 1e6)
}

fn severity_of(rank: Option<u8>) -> Severity {
    match rank {
        Some(3) => Severity::Critical,
        Some(2) => Severity::High,
        _ => Severity::Medium,
    }
}

impl Transition {
    fn is_blind(&self) -> bool {
        self.kind == "blind"
    }

    fn status(&self) -> AlertStatus {
        if self.status == "closed" {
            AlertStatus::Closed
        } else {
            AlertStatus::New
        }
    }

    /// The metric label of its kind.
    pub fn kind_label(&self) -> &'static str {
        if self.is_blind() {
            "blind"
        } else {
            "silent"
        }
    }

    /// The alert this transition writes.
    pub fn to_alert(&self, settings: &SensorSettings) -> Alert {
        let host = &self.host;
        let closed = self.status() == AlertStatus::Closed;
        let kind = if self.is_blind() {
            KIND_BLIND
        } else {
            KIND_SILENT
        };
        let mut extra = Extra::new();
        extra.insert("kind".into(), json!(kind));
        extra.insert("sensor".into(), json!(host));
        extra.insert(
            "episode_start".into(),
            json!(time_of(self.since).to_rfc3339()),
        );
        let (title, severity) = if self.is_blind() {
            let ratio = self.ratio.unwrap_or(0.0);
            let pct = ratio * 100.0;
            extra.insert("drop_ratio".into(), json!(ratio));
            extra.insert("threshold".into(), json!(settings.drop_ratio));
            extra.insert(
                "window_seconds".into(),
                seconds(self.window.unwrap_or_default()),
            );
            for (key, value) in [
                ("kernel_packets_delta", self.packets_delta),
                ("kernel_drops_delta", self.drops_delta),
                ("kernel_packets", self.packets),
                ("kernel_drops", self.drops),
            ] {
                extra.insert(key.into(), json!(value.unwrap_or_default()));
            }
            if let Some(sha) = &self.event_sha256 {
                extra.insert("event_sha256".into(), json!(sha));
            }
            let title = if closed {
                format!("Sensor {host} captures again: {pct:.2}% of packets dropped")
            } else {
                format!("Sensor {host} is blind to {pct:.1}% of its packets")
            };
            (title, severity_of(self.rank))
        } else {
            let interval = self.interval.unwrap_or_default();
            extra.insert("interval_seconds".into(), seconds(interval));
            if let Some(n) = self.silent_after {
                extra.insert("silent_after".into(), json!(n));
            }
            if let Some(seen) = self.last_seen {
                extra.insert("last_stats_at".into(), json!(time_of(seen).to_rfc3339()));
                extra.insert(
                    "silent_seconds".into(),
                    seconds(self.at.saturating_sub(seen)),
                );
            }
            let title = if closed {
                format!("Sensor {host} sends stats again")
            } else {
                let secs = self.at.saturating_sub(self.last_seen.unwrap_or(self.at)) / 1_000_000;
                format!("Sensor {host} is silent: no stats for {secs} s")
            };
            (title, Severity::High)
        };
        Alert {
            id: episode_id(kind, host, self.since),
            title,
            severity,
            status: self.status(),
            source: SOURCE.to_string(),
            iocs: Vec::new(),
            mitre_techniques: if self.is_blind() {
                Vec::new()
            } else {
                vec![SILENT_TECHNIQUE.to_string()]
            },
            timestamp: time_of(self.at),
            extra,
        }
    }
}

/// The shared sensor state and the alerts it raises.
#[derive(Clone)]
pub struct Sensors {
    conn: Conn,
    producer: Producer,
    names: Names,
    alerts: String,
    settings: SensorSettings,
    default_sensor: String,
    dedup_ttl: Duration,
}

impl Sensors {
    pub fn new(
        conn: Conn,
        names: Names,
        settings: SensorSettings,
        default_sensor: &str,
        maxlen: usize,
        dedup_ttl: Duration,
    ) -> Self {
        Self {
            producer: Producer::new(conn.clone(), maxlen),
            alerts: names.alerts(),
            conn,
            names,
            settings,
            default_sensor: default_sensor.to_string(),
            dedup_ttl,
        }
    }

    /// The set of known sensors.
    pub fn set_key(&self) -> String {
        self.names.state_key(SERVICE, "sensors")
    }

    /// The state hash of one sensor.
    pub fn state_key(&self, host: &str) -> String {
        self.names.state_key(SERVICE, &format!("sensor:{host}"))
    }

    fn samples_key(&self, host: &str) -> String {
        self.names
            .state_key(SERVICE, &format!("sensor:{host}:samples"))
    }

    fn outbox_key(&self, host: &str) -> String {
        self.names
            .state_key(SERVICE, &format!("sensor:{host}:outbox"))
    }

    /// Feeds the `stats` events among `events`, in order; their transitions are written as
    /// alerts before it returns. Other events cost a comparison.
    pub async fn observe(&self, events: &[&EveEvent]) -> Result<(), IngestError> {
        let samples: Vec<Option<StatsSample>> = events
            .iter()
            .filter(|e| e.event_type == "stats")
            .map(|e| stats_sample(e, &self.default_sensor))
            .collect();
        let samples: Vec<Option<&StatsSample>> = samples.iter().map(Option::as_ref).collect();
        self.observe_samples(&samples).await
    }

    /// Feeds the samples of a batch's `stats` events, in order (`None`: a stats event that
    /// gave no sample, counted as unusable); their transitions are written as alerts before
    /// it returns.
    pub async fn observe_samples(
        &self,
        samples: &[Option<&StatsSample>],
    ) -> Result<(), IngestError> {
        let mut usable: Vec<&StatsSample> = Vec::with_capacity(samples.len());
        for sample in samples {
            match sample {
                Some(sample) => usable.push(sample),
                None => telemetry::sensor_stats("unusable"),
            }
        }
        if usable.is_empty() {
            return Ok(());
        }
        // One round trip for the batch's stats events, one script call per sensor with its
        // events in order (sensors' states are apart, so only each sensor's own order
        // matters). A call's transitions stay in the sensor's outbox until they are settled,
        // and the call answers with the whole outbox.
        let mut sensors: Vec<(&str, Vec<&StatsSample>)> = Vec::new();
        for sample in usable {
            match sensors.iter_mut().find(|(h, _)| *h == sample.host) {
                Some((_, samples)) => samples.push(sample),
                None => sensors.push((&sample.host, vec![sample])),
            }
        }
        let keys: Vec<[String; 3]> = sensors
            .iter()
            .map(|(host, _)| {
                [
                    self.state_key(host),
                    self.samples_key(host),
                    self.outbox_key(host),
                ]
            })
            .collect();
        let set_key = self.set_key();
        let invocations: Vec<redis::ScriptInvocation<'_>> = sensors
            .iter()
            .zip(&keys)
            .map(|((host, samples), keys)| self.invocation(host, samples, keys, &set_key))
            .collect();
        let mut pipe = redis::pipe();
        // The script is loaded once per connection's server: this makes sure it is there.
        pipe.load_script(&OBSERVE_SCRIPT).ignore();
        for invocation in &invocations {
            pipe.invoke_script(invocation);
        }
        let replies: Vec<Vec<String>> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(IngestError::redis("EVALSHA sensor stats", &keys[0][0]))?;
        let mut outboxes: Vec<(&str, Vec<String>)> = Vec::with_capacity(sensors.len());
        for ((host, samples), mut reply) in sensors.iter().zip(replies) {
            let entries = reply.split_off(samples.len().min(reply.len()));
            for result in &reply {
                telemetry::sensor_stats(match result.as_str() {
                    "used" => "used",
                    "restart" => "restart",
                    "stale" => "stale",
                    _ => "no_counters",
                });
            }
            outboxes.push((host, entries));
        }
        for (host, entries) in outboxes {
            self.settle(host, entries).await?;
        }
        Ok(())
    }

    /// The sensor named when a stats event has no `host`.
    pub fn default_sensor(&self) -> &str {
        &self.default_sensor
    }

    /// The script call of one sensor's samples, in order; `keys`: its state, samples and
    /// outbox keys.
    fn invocation(
        &self,
        host: &str,
        samples: &[&StatsSample],
        keys: &[String; 3],
        set_key: &str,
    ) -> redis::ScriptInvocation<'static> {
        let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
        let mut invocation = OBSERVE_SCRIPT.prepare_invoke();
        invocation
            .key(&keys[0])
            .key(&keys[1])
            .key(&keys[2])
            .key(set_key)
            .arg(host)
            .arg(self.settings.window.as_micros().to_string())
            .arg(self.settings.drop_ratio)
            .arg(self.settings.drop_ratio / 2.0)
            .arg(self.settings.min_packets)
            .arg(self.settings.stats_interval.as_micros().to_string())
            .arg(FORGET_AFTER.as_secs())
            .arg(HIGH_AT)
            .arg(CRITICAL_AT)
            .arg(self.settings.silent_after);
        for sample in samples {
            invocation
                .arg(sample.at_us.map(|t| t.to_string()).unwrap_or_default())
                .arg(opt(sample.uptime))
                .arg(opt(sample.kernel_packets))
                .arg(opt(sample.kernel_drops))
                .arg(&sample.event_sha256);
        }
        invocation
    }

    /// Writes the outbox entries of `host` as alerts (each at most once), then takes them out.
    async fn settle(&self, host: &str, entries: Vec<String>) -> Result<(), IngestError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut docs = Vec::with_capacity(entries.len());
        for entry in &entries {
            match serde_json::from_str::<Transition>(entry) {
                Ok(t) => {
                    let alert = t.to_alert(&self.settings);
                    let key = self.names.state_key(
                        SERVICE,
                        &format!(
                            "alert:{}:{}:{}",
                            alert.id.simple(),
                            t.status,
                            alert.severity.as_str()
                        ),
                    );
                    docs.push((key, to_bytes(&alert), t.kind_label(), alert.status));
                }
                Err(e) => {
                    tracing::warn!(error = %e, %entry, "unreadable sensor transition: dropped")
                }
            }
        }
        let items: Vec<OnceWrite<'_>> = docs
            .iter()
            .map(|(key, data, _, _)| OnceWrite {
                key,
                stream: &self.alerts,
                data,
            })
            .collect();
        let written = self.producer.publish_once(&items, self.dedup_ttl).await?;
        for ((_, _, kind, status), id) in docs.iter().zip(&written) {
            if id.is_some() {
                let status = if *status == AlertStatus::Closed {
                    "closed"
                } else {
                    "new"
                };
                tracing::info!(sensor = %host, kind, status, "sensor alert written");
                telemetry::sensor_alert(kind, status);
            }
        }
        let outbox = self.outbox_key(host);
        let mut pipe = redis::pipe();
        for entry in &entries {
            pipe.cmd("LREM").arg(&outbox).arg(1).arg(entry).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(IngestError::redis("LREM", &outbox))?;
        Ok(())
    }

    /// One look at every known sensor: opens silence episodes, writes pending transitions,
    /// forgets sensors whose state expired, and sets the blind and silent gauges.
    pub async fn sweep(&self) -> Result<(), IngestError> {
        let set = self.set_key();
        let hosts: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(IngestError::redis("SMEMBERS", &set))?;
        let (mut blind, mut silent) = (0u64, 0u64);
        for host in hosts {
            let state = self.state_key(&host);
            let reply: Vec<String> = SWEEP_SCRIPT
                .key(&state)
                .key(self.outbox_key(&host))
                .arg(&host)
                .arg(self.settings.silent_after)
                .arg(self.settings.stats_interval.as_micros().to_string())
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(IngestError::redis("EVALSHA sensor sweep", &state))?;
            let mut reply = reply.into_iter();
            if reply.next().as_deref() == Some("gone") {
                let _: () = redis::cmd("SREM")
                    .arg(&set)
                    .arg(&host)
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(IngestError::redis("SREM", &set))?;
                continue;
            }
            blind += u64::from(reply.next().as_deref() == Some("1"));
            silent += u64::from(reply.next().as_deref() == Some("1"));
            self.settle(&host, reply.collect()).await?;
        }
        telemetry::sensors_in_state("blind", blind);
        telemetry::sensors_in_state("silent", silent);
        Ok(())
    }

    /// Sweeps every [`SensorSettings::sweep_every`] until `shutdown`, the first time after
    /// `silent_after` default intervals (a backlog taken at start has its stats handled
    /// first). A failed sweep is logged and tried at the next tick.
    pub async fn sweep_until(self, shutdown: CancellationToken) {
        let first = self.settings.stats_interval * self.settings.silent_after;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(first) => {}
        }
        let mut tick = tokio::time::interval(self.settings.sweep_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "cannot look for silent sensors: trying at the next tick");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn event(line: &str) -> EveEvent {
        crate::event::parse_line(Bytes::copy_from_slice(line.as_bytes())).unwrap()
    }

    #[test]
    fn a_stats_event_gives_its_counters() {
        let ev = event(
            r#"{"timestamp":"2019-08-08T16:26:33.000244+0200","event_type":"stats","host":"s1","stats":{"uptime":15,"capture":{"kernel_packets":135,"kernel_drops":2}}}"#,
        );
        let s = stats_sample(&ev, "suricata").unwrap();
        assert_eq!(s.host, "s1");
        assert_eq!(s.uptime, Some(15));
        assert_eq!((s.kernel_packets, s.kernel_drops), (Some(135), Some(2)));
        assert_eq!(s.at_us, Some(1_565_274_393_000_244));
    }

    /// What the whole object, read as JSON values, says: the reader must agree with it.
    fn by_value(line: &str) -> (Option<String>, Option<u64>, Option<u64>, Option<u64>) {
        let v: Value = serde_json::from_str(line).unwrap();
        let text = |v: &Value| v.as_str().map(str::to_string);
        (
            text(&v["host"]),
            v["stats"]["uptime"].as_u64(),
            v["stats"]["capture"]["kernel_packets"].as_u64(),
            v["stats"]["capture"]["kernel_drops"].as_u64(),
        )
    }

    #[test]
    fn the_one_pass_reader_reads_what_the_whole_object_says() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let mut seen = 0;
        for file in std::fs::read_dir(fixtures).unwrap() {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap_or_default();
            for line in text
                .lines()
                .filter(|l| l.contains(r#""event_type":"stats""#))
            {
                let read = StatsRead::scan(line.as_bytes()).unwrap();
                let (host, uptime, packets, drops) = by_value(line);
                assert_eq!(read.host.map(|h| h.into_owned()), host, "{line}");
                assert_eq!(
                    (read.uptime, read.kernel_packets, read.kernel_drops),
                    (uptime, packets, drops)
                );
                seen += 1;
            }
        }
        assert!(seen > 0, "the fixtures hold stats events");
        // A repeated key: the last one wins, as for the whole object.
        let line = r#"{"event_type":"stats","stats":{"uptime":1,"capture":{"kernel_drops":1}},"stats":{"uptime":2},"host":"a","host":"b"}"#;
        let read = StatsRead::scan(line.as_bytes()).unwrap();
        assert_eq!((read.uptime, read.kernel_drops), (Some(2), None));
        assert_eq!(read.host.as_deref(), Some("b"));
        assert_eq!(by_value(line), (Some("b".into()), Some(2), None, None));
    }

    #[test]
    fn odd_stats_events_are_not_used_and_other_events_not_read() {
        let ev = event(r#"{"event_type":"stats","stats":{"capture":{"kernel_packets":"x"}}}"#);
        let s = stats_sample(&ev, "suricata").unwrap();
        assert_eq!(s.host, "suricata");
        assert_eq!((s.kernel_packets, s.at_us), (None, None));
        let ev = event(r#"{"event_type":"stats","stats":[1],"host":7}"#);
        let s = stats_sample(&ev, "x").unwrap();
        assert_eq!(
            (s.host.as_str(), s.uptime, s.kernel_packets),
            ("x", None, None)
        );
        let ev = event(r#"{"event_type":"stats","stats":{"capture":[135,2]}}"#);
        assert_eq!(stats_sample(&ev, "x").unwrap().kernel_packets, None);
        let long = format!(
            r#"{{"event_type":"stats","host":"{}"}}"#,
            "h".repeat(MAX_HOST_BYTES + 1)
        );
        assert!(stats_sample(&event(&long), "x").is_none());
        assert!(stats_sample(&event(r#"{"event_type":"flow"}"#), "x").is_none());
    }

    #[test]
    fn ratios_read_as_fractions_or_percentages() {
        assert_eq!(parse_ratio("0.05").unwrap(), 0.05);
        assert_eq!(parse_ratio("2%").unwrap(), 0.02);
        assert!(parse_ratio("0").is_err());
        assert!(parse_ratio("100%").is_err());
        assert!(parse_ratio("x").is_err());
    }

    #[test]
    fn transitions_become_alerts_with_one_id_per_episode() {
        let settings = SensorSettings::default();
        let open: Transition = serde_json::from_str(
            r#"{"kind":"blind","status":"new","host":"s1","since":"1700000000000001","at":"1700000000000001","ratio":0.2,"rank":2,"packets_delta":"1000","drops_delta":"200","packets":"5000","drops":"300","window":"60000000","event_sha256":"ab"}"#,
        )
        .unwrap();
        let mut close = open.clone();
        close.status = "closed".into();
        close.at += 5;
        let (a, b) = (open.to_alert(&settings), close.to_alert(&settings));
        assert_eq!(a.id, b.id);
        assert_eq!(
            (a.status, b.status),
            (AlertStatus::New, AlertStatus::Closed)
        );
        assert_eq!(a.severity, Severity::High);
        assert_eq!(a.extra["kind"], KIND_BLIND);
        assert_eq!(a.extra["window_seconds"], 60.0);
        assert!(a.mitre_techniques.is_empty());
        let silent: Transition = serde_json::from_str(
            r#"{"kind":"silent","status":"new","host":"s1","since":"1700000000000001","at":"1700000000000001","last_seen":"1699999970000001","interval":"8000000","silent_after":"3"}"#,
        )
        .unwrap();
        let s = silent.to_alert(&settings);
        assert_ne!(s.id, a.id);
        assert_eq!(s.extra["silent_seconds"], 30.0);
        assert_eq!(s.mitre_techniques, vec![SILENT_TECHNIQUE]);
        assert_eq!(s.title, "Sensor s1 is silent: no stats for 30 s");
    }

    proptest! {
        #[test]
        fn any_stats_shaped_json_never_panics(
            host in proptest::option::of("[a-z0-9.-]{0,20}"),
            p in proptest::option::of(any::<i64>()),
            d in proptest::option::of(any::<f64>()),
            ts in "[0-9T:.+-]{0,30}",
        ) {
            let line = json!({"event_type":"stats","timestamp":ts,"host":host,
                "stats":{"uptime":p,"capture":{"kernel_packets":p,"kernel_drops":d}}});
            let _ = stats_sample(&event(&line.to_string()), "suricata");
        }
    }
}
