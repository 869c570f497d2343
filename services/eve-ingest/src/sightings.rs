//! IOC sightings: every indicator on `aurora:iocs` (this site's own and those other sites
//! shared, [`crate::iocs`]) looked for in every event, and an Alert when one is seen.
//!
//! - **The set.** Loaded at start from `aurora:iocs` (XRANGE, whole) before the input takes
//!   a line, then followed (XREAD, no group: every replica needs every indicator) on a
//!   connection of its own; a document that is not a usable IOC is skipped with a warning and
//!   counted, never fatal.
//! - **What is looked at.** Only these fields are read from a line (one pass that skips the
//!   rest unbuilt): `dns.rrname`, `dns.query[].rrname`, `dns.queries[].rrname`, `tls.sni`,
//!   `http.hostname` (names: domain indicators, or IP ones when the name is an address),
//!   `src_ip`, `dest_ip` (IP indicators), `fileinfo.sha256`; and for the alert `timestamp`,
//!   `flow_id`, ports, `proto`, `app_proto`, `host`, `community_id`.
//! - **Once per indicator and flow within a window.** The alert id is a UUID v5 of the
//!   indicator's identity, the flow (`flow_id` with the sensor, else the protocol and both
//!   endpoints in a fixed order, else the event itself) and the window (`--sighting-window`,
//!   fixed windows from the epoch, by the event's own time), written through the alert sink's
//!   at-most-once script with a key that lives at least one window: replicas, retries and the
//!   other events of the flow find it written.
//! - **TLP.** The alert carries the indicator's marking as its own `tlp`, which
//!   federation-gateway's export policy reads: a sighting of a TLP:RED indicator stays home.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use aurora_core::bus::{self, Conn, Entry};
use aurora_core::model::{Alert, AlertStatus, Ioc, Severity};
use aurora_core::retry::Backoff;
use aurora_core::Names;

use crate::alert::{parse_timestamp, SOURCE};
use crate::alert_sink::{AlertSink, AlertsWritten};
use crate::error::IngestError;
use crate::event::EveEvent;
use crate::iocs::{self, Indicator, IocSet, Kind, Skipped};
use crate::telemetry;

/// The `kind` of the alerts written here.
pub const ALERT_KIND: &str = "ioc_sighting";

/// Entries of `aurora:iocs` read at once.
const PAGE: usize = 1000;
/// How long one XREAD waits for new documents.
const FOLLOW_BLOCK: Duration = Duration::from_secs(5);
/// How often expired indicators are dropped from memory (they stop matching at once anyway).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How sightings are looked for.
#[derive(Debug, Clone, PartialEq)]
pub struct SightingSettings {
    /// A sighting of one indicator in one flow is alerted once per window.
    pub window: Duration,
    /// Indicators held at most.
    pub max_iocs: usize,
    /// This site's id: `shared_by` of its own indicators.
    pub site_id: String,
}

impl Default for SightingSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3600),
            max_iocs: 1_000_000,
            site_id: "site-local".into(),
        }
    }
}

/// The live set and where its sightings go; cheap to clone.
#[derive(Clone)]
pub struct Sightings {
    pub watch: Watch,
    sink: AlertSink,
}

impl Sightings {
    /// `alert_dedup_ttl`: the sink's key lives that long, and at least one window.
    pub fn new(
        conn: Conn,
        names: Names,
        stream_maxlen: usize,
        alert_dedup_ttl: Duration,
        settings: SightingSettings,
    ) -> Self {
        let ttl = alert_dedup_ttl.max(settings.window);
        Self {
            watch: Watch::new(settings),
            sink: AlertSink::new(conn, names, stream_maxlen, ttl),
        }
    }

    /// The sighting alerts of a batch of events, each id once.
    pub fn find<'a>(&self, events: impl Iterator<Item = &'a EveEvent>) -> Vec<(Kind, Alert)> {
        self.watch.find(events)
    }

    /// Writes sighting alerts, each at most once; counts the new ones by indicator type.
    pub async fn write(&self, alerts: &[(Kind, Alert)]) -> Result<AlertsWritten, IngestError> {
        let mut total = AlertsWritten::default();
        for kind in [Kind::Domain, Kind::Ip, Kind::Sha256] {
            let group: Vec<&Alert> = alerts
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, a)| a)
                .collect();
            if group.is_empty() {
                continue;
            }
            let written = self.sink.write(&group).await?;
            telemetry::ioc_sightings(kind.as_str(), written.new as u64);
            total.new += written.new;
            total.duplicate += written.duplicate;
        }
        Ok(total)
    }
}

/// The live IOC set of this replica, and how sightings in it become alerts.
#[derive(Clone)]
pub struct Watch {
    set: Arc<RwLock<IocSet>>,
    settings: Arc<SightingSettings>,
}

impl Watch {
    pub fn new(settings: SightingSettings) -> Self {
        Self {
            set: Arc::new(RwLock::new(IocSet::new(settings.max_iocs))),
            settings: Arc::new(settings),
        }
    }

    /// Indicators held now.
    pub fn loaded(&self) -> usize {
        self.read().len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, IocSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies documents of `aurora:iocs`, in stream order.
    pub fn apply(&self, entries: &[Entry]) {
        let now = Utc::now();
        let mut skipped: Vec<(String, Skipped)> = Vec::new();
        let updates: Vec<(String, iocs::Update)> = entries
            .iter()
            .filter_map(|entry| {
                let read = match &entry.data {
                    Some(data) => iocs::read_document(data, now),
                    None => Err(Skipped::Invalid("entry has no `data` field".into())),
                };
                match read {
                    Ok(update) => Some((entry.id.clone(), update)),
                    Err(why) => {
                        skipped.push((entry.id.clone(), why));
                        None
                    }
                }
            })
            .collect();
        let held = {
            let mut set = self.set.write().unwrap_or_else(|p| p.into_inner());
            for (id, update) in updates {
                if let Err(why) = set.apply(update, now) {
                    skipped.push((id, why));
                }
            }
            set.len()
        };
        telemetry::iocs_loaded(held);
        for (id, why) in skipped {
            telemetry::ioc_skipped(why.reason());
            match &why {
                Skipped::Invalid(reason) => {
                    tracing::warn!(entry = %id, reason = %reason, "IOC document skipped")
                }
                Skipped::Limit => {
                    tracing::warn!(entry = %id, max = self.settings.max_iocs, "IOC skipped: --max-iocs indicators are held")
                }
                Skipped::UnsupportedType => {
                    tracing::debug!(entry = %id, "IOC of a type not looked for in events")
                }
            }
        }
    }

    fn sweep(&self) {
        let held = {
            let mut set = self.set.write().unwrap_or_else(|p| p.into_inner());
            set.sweep(Utc::now());
            set.len()
        };
        telemetry::iocs_loaded(held);
    }

    /// Reads `aurora:iocs` from its start; the id of the last entry read. Retried while
    /// Redis does not answer; `None` when `shutdown` came first.
    pub async fn load(
        &self,
        conn: &mut Conn,
        stream: &str,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let mut after = "0-0".to_string();
        let mut backoff = Backoff::default();
        loop {
            match bus::range(conn, stream, &after, PAGE).await {
                Ok(entries) if entries.is_empty() => return Some(after),
                Ok(entries) => {
                    backoff.reset();
                    self.apply(&entries);
                    if let Some(last) = entries.last() {
                        after = last.id.clone();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the IOCs: retrying");
                    if !backoff.wait(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Follows `aurora:iocs` after `after` until `shutdown`, on a connection of its own
    /// (made again after an error).
    pub async fn follow(
        self,
        redis_url: String,
        stream: String,
        mut after: String,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::default();
        let mut swept = Instant::now();
        'connect: while !shutdown.is_cancelled() {
            let mut conn = match bus::connect_blocking(&redis_url, FOLLOW_BLOCK).await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot connect to follow the IOCs: retrying");
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            loop {
                let from = [(stream.clone(), after.clone())];
                let read = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    read = bus::tail(&mut conn, &from, PAGE, Some(FOLLOW_BLOCK)) => read,
                };
                match read {
                    Ok(entries) => {
                        backoff.reset();
                        self.apply(&entries);
                        if let Some(last) = entries.last() {
                            after = last.id.clone();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot follow the IOCs: retrying");
                        if !backoff.wait(&shutdown).await {
                            return;
                        }
                        continue 'connect;
                    }
                }
                if swept.elapsed() >= SWEEP_EVERY {
                    self.sweep();
                    swept = Instant::now();
                }
            }
        }
    }

    /// The sighting alerts of a batch of events, each id once.
    pub fn find<'a>(&self, events: impl Iterator<Item = &'a EveEvent>) -> Vec<(Kind, Alert)> {
        let mut finder = self.finder();
        if !finder.is_active() {
            return Vec::new();
        }
        for event in events {
            if let Some(observed) = Observed::scan(&event.raw) {
                finder.look(&observed, &event.event_type, &event.hash);
            }
        }
        finder.found()
    }

    /// A search over one batch: the set held for reading until [`Finder::found`].
    pub fn finder(&self) -> Finder<'_> {
        Finder {
            watch: self,
            set: self.read(),
            now: Utc::now(),
            seen: HashSet::new(),
            flows: HashMap::new(),
            out: Vec::new(),
            hits: Vec::new(),
            name: String::new(),
        }
    }

    /// The alert of one sighting; `id` is its [`sighting_id`] (worked out first, so that a
    /// sighting already found in the batch builds nothing).
    #[allow(clippy::too_many_arguments)]
    fn alert(
        &self,
        id: Uuid,
        bucket: i64,
        timestamp: DateTime<Utc>,
        indicator: &Indicator,
        field: Field,
        observed_value: &str,
        observed: &Observed<'_>,
        event_type: &str,
        hash: &[u8; 32],
    ) -> Alert {
        let window = self.settings.window.as_secs().max(1) as i64;
        let shared_by = indicator
            .origin_site
            .clone()
            .unwrap_or_else(|| self.settings.site_id.clone());
        let value = indicator.needle.value();
        let ioc_type = &indicator.ioc.ioc_type;
        let mut extra = Map::new();
        extra.insert("kind".into(), ALERT_KIND.into());
        let mut ioc = json!({"type": ioc_type, "value": value});
        if let Some(ioc_id) = &indicator.ioc.id {
            ioc["id"] = Value::String(ioc_id.clone());
        }
        extra.insert("ioc".into(), ioc);
        extra.insert("shared_by".into(), Value::String(shared_by.clone()));
        if let Some(tlp) = indicator.tlp() {
            extra.insert("tlp".into(), tlp.as_str().into());
        }
        extra.insert("matched_field".into(), field.as_str().into());
        extra.insert("observed".into(), observed_value.into());
        extra.insert("event_type".into(), event_type.into());
        observed.context(&mut extra);
        extra.insert("event_sha256".into(), hex::encode(hash).into());
        if let Some(start) = Utc.timestamp_opt(bucket * window, 0).single() {
            extra.insert("window_start".into(), start.to_rfc3339().into());
        }
        Alert {
            id,
            title: format!(
                "IOC sighting: {ioc_type} {value} in {} (shared by {shared_by})",
                field.as_str()
            ),
            severity: severity(indicator),
            status: AlertStatus::New,
            source: SOURCE.to_string(),
            iocs: vec![shared_ioc(&indicator.ioc, value)],
            mitre_techniques: Vec::new(),
            timestamp,
            extra,
        }
    }
}

/// The sightings of one batch, event by event ([`Watch::finder`]).
pub struct Finder<'w> {
    watch: &'w Watch,
    set: std::sync::RwLockReadGuard<'w, IocSet>,
    now: DateTime<Utc>,
    seen: HashSet<Uuid>,
    /// The (indicator, window) pairs found by flow: each id is worked out once per batch.
    flows: HashMap<String, Vec<(usize, i64)>>,
    out: Vec<(Kind, Alert)>,
    /// Reused from event to event.
    hits: Vec<(Field, String, Arc<Indicator>)>,
    name: String,
}

impl Finder<'_> {
    /// Whether any indicator is held (else events need not be looked at).
    pub fn is_active(&self) -> bool {
        !self.set.is_empty()
    }

    /// Looks for the indicators in one event.
    pub fn look(&mut self, observed: &Observed<'_>, event_type: &str, hash: &[u8; 32]) {
        if self.set.is_empty() {
            return;
        }
        observed.matches(&self.set, &mut self.name, &mut self.hits);
        if self.hits.is_empty() {
            return;
        }
        let settings = &self.watch.settings;
        let timestamp = observed
            .timestamp
            .as_deref()
            .and_then(parse_timestamp)
            .unwrap_or(self.now);
        let window = settings.window.as_secs().max(1) as i64;
        let bucket = timestamp.timestamp().div_euclid(window);
        let flow = observed.flow_key(hash);
        for (field, value, indicator) in self.hits.drain(..) {
            if !indicator.is_live(self.now) {
                continue;
            }
            // The same indicator in the same flow and window as an earlier event of the batch
            // (most of a flow's events): its id is known found, nothing to work out.
            let key = (Arc::as_ptr(&indicator) as usize, bucket);
            if self
                .flows
                .get(flow.as_str())
                .is_some_and(|k| k.contains(&key))
            {
                continue;
            }
            match self.flows.get_mut(flow.as_str()) {
                Some(keys) => keys.push(key),
                None => {
                    self.flows.insert(flow.clone(), vec![key]);
                }
            }
            let id = sighting_id(&indicator.identity, &flow, bucket);
            if !self.seen.insert(id) {
                continue;
            }
            let alert = self.watch.alert(
                id, bucket, timestamp, &indicator, field, &value, observed, event_type, hash,
            );
            self.out.push((indicator.needle.kind(), alert));
        }
    }

    /// The sighting alerts found, each id once.
    pub fn found(self) -> Vec<(Kind, Alert)> {
        self.out
    }
}

/// The IOC as the alert lists it: what was shared, without the stream's own fields.
fn shared_ioc(ioc: &Ioc, value: String) -> Ioc {
    Ioc {
        id: ioc.id.clone(),
        ioc_type: ioc.ioc_type.clone(),
        value,
        confidence: ioc.confidence,
        tlp: ioc.tlp,
        valid_from: ioc.valid_from,
        valid_until: ioc.valid_until,
        extra: Map::new(),
    }
}

/// The IOC's own severity; else from its confidence (0.8 and above high, 0.5 medium, below
/// low); else medium.
pub fn severity(indicator: &Indicator) -> Severity {
    if let Some(s) = indicator.severity {
        return s;
    }
    match indicator.ioc.confidence {
        Some(c) if c >= 0.8 => Severity::High,
        Some(c) if c >= 0.5 => Severity::Medium,
        Some(_) => Severity::Low,
        None => Severity::Medium,
    }
}

/// The namespace of ioc-sighting alert ids ([`crate::alert::id_namespace_of`]).
fn id_namespace() -> Uuid {
    static NAMESPACE: LazyLock<Uuid> =
        LazyLock::new(|| crate::alert::id_namespace_of("ioc-sighting"));
    *NAMESPACE
}

/// The alert id of a sighting: the same indicator in the same flow and window, the same id.
pub fn sighting_id(identity: &str, flow: &str, bucket: i64) -> Uuid {
    Uuid::new_v5(
        &id_namespace(),
        format!("{identity}\n{flow}\n{bucket}").as_bytes(),
    )
}

/// Where in an event a value was found (`matched_field`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    DnsRrname,
    TlsSni,
    HttpHostname,
    SrcIp,
    DestIp,
    FileSha256,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DnsRrname => "dns.rrname",
            Self::TlsSni => "tls.sni",
            Self::HttpHostname => "http.hostname",
            Self::SrcIp => "src_ip",
            Self::DestIp => "dest_ip",
            Self::FileSha256 => "fileinfo.sha256",
        }
    }
}

/// The fields of one event that sightings read; strings borrowed from the line when they
/// hold no escapes.
#[derive(Debug, Default)]
pub struct Observed<'a> {
    pub timestamp: Option<Cow<'a, str>>,
    pub flow_id: Option<u64>,
    pub src_ip: Option<Cow<'a, str>>,
    pub dest_ip: Option<Cow<'a, str>>,
    pub src_port: Option<u64>,
    pub dest_port: Option<u64>,
    pub proto: Option<Cow<'a, str>>,
    pub app_proto: Option<Cow<'a, str>>,
    pub host: Option<Cow<'a, str>>,
    pub community_id: Option<Cow<'a, str>>,
    /// DNS query names, TLS SNI, HTTP host.
    pub names: Vec<(Field, Cow<'a, str>)>,
    pub sha256: Option<Cow<'a, str>>,
}

impl<'a> Observed<'a> {
    /// Reads the fields of a line; `None` when it is not a JSON object. Values of another
    /// shape than expected are passed over, never an error.
    pub fn scan(raw: &'a [u8]) -> Option<Self> {
        let mut de = serde_json::Deserializer::from_slice(raw);
        let observed = de::Deserializer::deserialize_map(&mut de, TopVisitor).ok()?;
        de.end().ok()?;
        Some(observed)
    }

    /// Every (field, value seen, indicator) of the set this event shows; `name` is a buffer
    /// reused from event to event.
    fn matches(
        &self,
        set: &IocSet,
        name: &mut String,
        out: &mut Vec<(Field, String, Arc<Indicator>)>,
    ) {
        if set.has(Kind::Domain) || set.has(Kind::Ip) {
            let mut found = Vec::new();
            for (field, raw) in &self.names {
                iocs::normalise_domain_into(raw, name);
                if let Some(addr) = iocs::ip(name) {
                    found.extend(set.ip_matches(&addr));
                } else {
                    set.domain_matches(name, &mut found);
                }
                out.extend(found.drain(..).map(|i| (*field, name.clone(), i.clone())));
            }
        }
        if set.has(Kind::Ip) {
            for (field, ip) in [(Field::SrcIp, &self.src_ip), (Field::DestIp, &self.dest_ip)] {
                if let Some(addr) = ip.as_deref().and_then(iocs::ip) {
                    out.extend(
                        set.ip_matches(&addr)
                            .iter()
                            .map(|i| (field, addr.to_string(), i.clone())),
                    );
                }
            }
        }
        if set.has(Kind::Sha256) {
            let mut hash = [0u8; 32];
            if let Some(h) = &self.sha256 {
                if hex::decode_to_slice(h.trim(), &mut hash).is_ok() {
                    out.extend(
                        set.sha256_matches(&hash)
                            .iter()
                            .map(|i| (Field::FileSha256, hex::encode(hash), i.clone())),
                    );
                }
            }
        }
    }

    /// The flow an event belongs to: `flow_id` (with the sensor), else the protocol and both
    /// endpoints in a fixed order (either direction is one flow), else the event itself.
    pub fn flow_key(&self, event_hash: &[u8; 32]) -> String {
        let host = self.host.as_deref().unwrap_or("");
        if let Some(id) = self.flow_id {
            return format!("flow:{host}:{id}");
        }
        match (&self.src_ip, &self.dest_ip) {
            (Some(src), Some(dest)) => {
                let a = format!("{}:{}", src, self.src_port.unwrap_or(0));
                let b = format!("{}:{}", dest, self.dest_port.unwrap_or(0));
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let proto = self.proto.as_deref().unwrap_or("");
                format!("tuple:{host}:{proto}|{lo}|{hi}")
            }
            _ => format!("event:{}", hex::encode(event_hash)),
        }
    }

    fn context(&self, extra: &mut Map<String, Value>) {
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                extra.insert(key.to_string(), v);
            }
        };
        let text = |v: &Option<Cow<'_, str>>| v.as_deref().map(|s| Value::String(s.to_string()));
        put("flow_id", self.flow_id.map(Value::from));
        put("src_ip", text(&self.src_ip));
        put("src_port", self.src_port.map(Value::from));
        put("dest_ip", text(&self.dest_ip));
        put("dest_port", self.dest_port.map(Value::from));
        put("proto", text(&self.proto));
        put("app_proto", text(&self.app_proto));
        put("community_id", text(&self.community_id));
        put("sensor", text(&self.host));
    }
}

// ---- the one-pass reader ------------------------------------------------------------------

/// A top-level key sightings read.
#[derive(Clone, Copy)]
enum Top {
    Timestamp,
    FlowId,
    SrcIp,
    DestIp,
    SrcPort,
    DestPort,
    Proto,
    AppProto,
    Host,
    CommunityId,
    Dns,
    Tls,
    Http,
    Fileinfo,
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Observed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an EVE event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut o = Observed::default();
        while let Some(key) = map.next_key_seed(KeyOf(TOP_KEYS))? {
            let Some(key) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            match key {
                Top::Timestamp => o.timestamp = map.next_value::<Text>()?.0,
                Top::FlowId => o.flow_id = map.next_value::<Number>()?.0,
                Top::SrcIp => o.src_ip = map.next_value::<Text>()?.0,
                Top::DestIp => o.dest_ip = map.next_value::<Text>()?.0,
                Top::SrcPort => o.src_port = map.next_value::<Number>()?.0,
                Top::DestPort => o.dest_port = map.next_value::<Number>()?.0,
                Top::Proto => o.proto = map.next_value::<Text>()?.0,
                Top::AppProto => o.app_proto = map.next_value::<Text>()?.0,
                Top::Host => o.host = map.next_value::<Text>()?.0,
                Top::CommunityId => o.community_id = map.next_value::<Text>()?.0,
                Top::Dns => {
                    o.names.retain(|(f, _)| *f != Field::DnsRrname);
                    let names = map.next_value::<DnsNames>()?.0;
                    o.names
                        .extend(names.into_iter().map(|n| (Field::DnsRrname, n)));
                }
                Top::Tls => set_name(&mut o, Field::TlsSni, map.next_value_seed(One("sni"))?),
                Top::Http => set_name(
                    &mut o,
                    Field::HttpHostname,
                    map.next_value_seed(One("hostname"))?,
                ),
                Top::Fileinfo => o.sha256 = map.next_value_seed(One("sha256"))?,
            }
        }
        Ok(o)
    }
}

/// A repeated key: the last one wins, as when the whole object is read.
fn set_name<'a>(o: &mut Observed<'a>, field: Field, value: Option<Cow<'a, str>>) {
    o.names.retain(|(f, _)| *f != field);
    if let Some(v) = value {
        o.names.push((field, v));
    }
}

const TOP_KEYS: &[(&str, Top)] = &[
    ("timestamp", Top::Timestamp),
    ("flow_id", Top::FlowId),
    ("src_ip", Top::SrcIp),
    ("dest_ip", Top::DestIp),
    ("src_port", Top::SrcPort),
    ("dest_port", Top::DestPort),
    ("proto", Top::Proto),
    ("app_proto", Top::AppProto),
    ("host", Top::Host),
    ("community_id", Top::CommunityId),
    ("dns", Top::Dns),
    ("tls", Top::Tls),
    ("http", Top::Http),
    ("fileinfo", Top::Fileinfo),
];

/// A key, as the entry of the table it names, without allocating.
pub(crate) struct KeyOf<T: 'static>(pub(crate) &'static [(&'static str, T)]);

impl<'de, T: Copy> DeserializeSeed<'de> for KeyOf<T> {
    type Value = Option<T>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, T: Copy> Visitor<'de> for KeyOf<T> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
    }
}

/// Values of a shape a visitor does not want are read and dropped: `Default` instead.
macro_rules! pass_over_scalars {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

macro_rules! pass_over_strings {
    () => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

macro_rules! pass_over_u64 {
    () => {
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

macro_rules! pass_over_seq {
    () => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

macro_rules! pass_over_map {
    () => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

/// A string, else nothing.
#[derive(Default)]
pub(crate) struct Text<'a>(pub(crate) Option<Cow<'a, str>>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Borrowed(s))))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Owned(s.to_string()))))
    }
    pass_over_scalars!();
    pass_over_u64!();
    pass_over_seq!();
    pass_over_map!();
}

/// A non-negative integer, else nothing.
#[derive(Default)]
pub(crate) struct Number(pub(crate) Option<u64>);

impl<'de> de::Deserialize<'de> for Number {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberVisitor)
    }
}

struct NumberVisitor;

impl<'de> Visitor<'de> for NumberVisitor {
    type Value = Number;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Number(Some(n)))
    }
    pass_over_scalars!();
    pass_over_strings!();
    pass_over_seq!();
    pass_over_map!();
}

/// One string field of an object (`tls.sni`), else nothing.
pub(crate) struct One(pub(crate) &'static str);

impl<'de> DeserializeSeed<'de> for One {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for One {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key_seed(Named(self.0))? {
            if key {
                found = map.next_value::<Text>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    pass_over_scalars!();
    pass_over_u64!();
    pass_over_strings!();
    pass_over_seq!();
}

/// Whether a key is the one wanted.
struct Named(&'static str);

impl<'de> DeserializeSeed<'de> for Named {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Named {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(key == self.0)
    }
}

/// The query names of a `dns` object: `rrname`, and the `rrname` of each entry of `query`
/// (EVE v1) and `queries` (Suricata 8).
#[derive(Default)]
pub(crate) struct DnsNames<'a>(pub(crate) Vec<Cow<'a, str>>);

impl<'de> de::Deserialize<'de> for DnsNames<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DnsVisitor)
    }
}

struct DnsVisitor;

impl<'de> Visitor<'de> for DnsVisitor {
    type Value = DnsNames<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const KEYS: &[(&str, u8)] = &[("rrname", 0), ("query", 1), ("queries", 2)];
        let mut rrname = None;
        let mut lists: [Vec<Cow<'de, str>>; 2] = [Vec::new(), Vec::new()];
        while let Some(key) = map.next_key_seed(KeyOf(KEYS))? {
            match key {
                Some(0) => rrname = map.next_value::<Text>()?.0,
                Some(n) => lists[usize::from(n - 1)] = map.next_value::<Questions>()?.0,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let [query, queries] = lists;
        let mut names: Vec<Cow<'de, str>> =
            rrname.into_iter().chain(query).chain(queries).collect();
        names.dedup();
        Ok(DnsNames(names))
    }
    pass_over_scalars!();
    pass_over_u64!();
    pass_over_strings!();
    pass_over_seq!();
}

/// The `rrname` of each question of a list.
#[derive(Default)]
struct Questions<'a>(Vec<Cow<'a, str>>);

impl<'de> de::Deserialize<'de> for Questions<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuestionsVisitor)
    }
}

struct QuestionsVisitor;

impl<'de> Visitor<'de> for QuestionsVisitor {
    type Value = Questions<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut names = Vec::new();
        while let Some(name) = seq.next_element_seed(One("rrname"))? {
            names.extend(name);
        }
        Ok(Questions(names))
    }
    pass_over_scalars!();
    pass_over_u64!();
    pass_over_strings!();
    pass_over_map!();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aurora_core::model::{parse, to_bytes, Message, Tlp};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn event(line: &str) -> EveEvent {
        crate::event::parse_line(Bytes::copy_from_slice(line.as_bytes())).unwrap()
    }

    /// The id namespace is part of the contract (the same sighting, the same id, in every
    /// version).
    #[test]
    fn the_sighting_id_namespace_is_stable() {
        assert_eq!(
            id_namespace(),
            Uuid::new_v5(&Uuid::NAMESPACE_OID, b"aurora:eve-ingest:ioc-sighting")
        );
    }

    #[test]
    fn only_the_fields_sightings_read_are_taken_and_odd_shapes_pass() {
        let line = r#"{"timestamp":"2024-01-15T10:30:00.000000+0000","flow_id":42,"event_type":"dns","src_ip":"10.0.0.5","src_port":5353,"dest_ip":"198.51.100.7","dest_port":53,"proto":"UDP","payload":"AAAA","dns":{"type":"query","rrname":"A.Evil.com.","query":[{"rrname":"q1.example"},5,{"x":1}],"queries":{"not":"a list"}},"tls":{"sni":"sni.example","ja3":{"hash":"x"}},"http":"not an object","fileinfo":{"sha256":"AB","md5":"x"},"host":"s1"}"#;
        let o = Observed::scan(line.as_bytes()).unwrap();
        assert_eq!(o.flow_id, Some(42));
        assert_eq!(o.src_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(o.dest_port, Some(53));
        assert_eq!(o.host.as_deref(), Some("s1"));
        let names: Vec<(&str, &str)> = o
            .names
            .iter()
            .map(|(f, n)| (f.as_str(), n.as_ref()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("dns.rrname", "A.Evil.com."),
                ("dns.rrname", "q1.example"),
                ("tls.sni", "sni.example")
            ]
        );
        assert_eq!(o.sha256.as_deref(), Some("AB"));
        let odd = Observed::scan(br#"{"flow_id":"7","src_ip":1,"dns":[1,2],"tls":null}"#).unwrap();
        assert!(odd.flow_id.is_none() && odd.src_ip.is_none() && odd.names.is_empty());
        assert!(Observed::scan(b"[1]").is_none());
        // Escaped strings are read too.
        let esc = Observed::scan(br#"{"tls":{"sni":"a\u002eevil.com"}}"#).unwrap();
        assert_eq!(esc.names[0].1, "a.evil.com");
    }

    fn sightings(docs: &[&str], window: Duration) -> Watch {
        let sightings = Watch::new(SightingSettings {
            window,
            site_id: "site-a".into(),
            max_iocs: 100,
        });
        let entries: Vec<Entry> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| Entry {
                stream: "iocs".into(),
                id: format!("{i}-0"),
                data: Some(d.as_bytes().to_vec()),
                deliveries: 0,
                trace: None,
            })
            .collect();
        sightings.apply(&entries);
        sightings
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_sighting_names_the_indicator_the_event_and_the_site_that_shared_it() {
        let s = sightings(
            &[
                r#"{"id":"ioc-1","type":"domain","value":"evil.com","tlp":"TLP:RED","confidence":0.9,"origin_site":"site-b"}"#,
                r#"{"id":"ioc-2","type":"ipv4","value":"198.51.100.7"}"#,
                r#"not json"#,
            ],
            HOUR,
        );
        assert_eq!(s.loaded(), 2);
        let ev = event(
            r#"{"timestamp":"2024-01-15T10:30:00.000000+0000","flow_id":42,"event_type":"tls","src_ip":"10.0.0.5","src_port":40000,"dest_ip":"198.51.100.7","dest_port":443,"proto":"TCP","tls":{"sni":"c2.EVIL.com"},"host":"sensor-1"}"#,
        );
        let found = s.find([&ev].into_iter());
        assert_eq!(found.len(), 2);
        let (kind, alert) = &found[0];
        assert_eq!(*kind, Kind::Domain);
        assert!(alert.validate().is_ok());
        let back: Alert = parse(&to_bytes(alert)).unwrap();
        assert_eq!(&back, alert);
        assert_eq!(
            alert.title,
            "IOC sighting: domain evil.com in tls.sni (shared by site-b)"
        );
        assert_eq!(alert.severity, Severity::High);
        assert_eq!(alert.source, "suricata");
        assert_eq!(alert.iocs[0].tlp, Some(Tlp::Red));
        assert_eq!(alert.extra["kind"], "ioc_sighting");
        assert_eq!(
            alert.extra["ioc"],
            json!({"type": "domain", "value": "evil.com", "id": "ioc-1"})
        );
        assert_eq!(alert.extra["shared_by"], "site-b");
        assert_eq!(alert.extra["tlp"], "TLP:RED");
        assert_eq!(alert.extra["matched_field"], "tls.sni");
        assert_eq!(alert.extra["observed"], "c2.evil.com");
        assert_eq!(alert.extra["flow_id"], 42);
        assert_eq!(alert.extra["dest_ip"], "198.51.100.7");
        assert_eq!(alert.extra["sensor"], "sensor-1");
        assert_eq!(alert.extra["window_start"], "2024-01-15T10:00:00+00:00");
        assert_eq!(alert.timestamp.to_rfc3339(), "2024-01-15T10:30:00+00:00");
        let (kind, local) = &found[1];
        assert_eq!(*kind, Kind::Ip);
        assert_eq!(local.extra["shared_by"], "site-a");
        assert_eq!(local.extra["matched_field"], "dest_ip");
        assert!(local.extra.get("tlp").is_none());
        assert_eq!(local.severity, Severity::Medium);
    }

    #[test]
    fn one_alert_per_indicator_flow_and_window() {
        let s = sightings(&[r#"{"id":"d","type":"domain","value":"evil.com"}"#], HOUR);
        let line = |flow: &str, ts: &str, dir: ((&str, u16), (&str, u16))| {
            let ((src, sport), (dest, dport)) = dir;
            event(&format!(
                r#"{{"timestamp":"{ts}",{flow}"event_type":"dns","src_ip":"{src}","src_port":{sport},"dest_ip":"{dest}","dest_port":{dport},"proto":"UDP","dns":{{"rrname":"x.evil.com"}}}}"#
            ))
        };
        let fwd = (("10.0.0.1", 1000), ("10.0.0.2", 53));
        let rev = (("10.0.0.2", 53), ("10.0.0.1", 1000));
        let ts = "2024-01-15T10:30:00.000000+0000";
        let a = line(r#""flow_id":1,"#, ts, fwd);
        let b = line(r#""flow_id":1,"#, "2024-01-15T10:59:00.000000+0000", rev);
        let c = line(r#""flow_id":2,"#, ts, fwd);
        let d = line(r#""flow_id":1,"#, "2024-01-15T11:00:01.000000+0000", fwd);
        let found = s.find([&a, &b].into_iter());
        assert_eq!(found.len(), 1, "the same flow within the window");
        let id = found[0].1.id;
        assert_eq!(
            s.find([&b].into_iter())[0].1.id,
            id,
            "a later batch: same id"
        );
        assert_ne!(s.find([&c].into_iter())[0].1.id, id, "another flow");
        assert_ne!(s.find([&d].into_iter())[0].1.id, id, "the next window");
        // Without flow ids, the endpoints in either direction are the flow.
        let e = line("", ts, fwd);
        let f = line("", ts, rev);
        assert_eq!(s.find([&e, &f].into_iter()).len(), 1);
    }

    #[test]
    fn ips_hashes_and_names_that_are_addresses_match() {
        let hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let s = sightings(
            &[
                r#"{"id":"i","type":"ipv6","value":"2001:DB8::1"}"#,
                &format!(r#"{{"id":"h","type":"sha256","value":"{hash}"}}"#),
                r#"{"id":"old","type":"domain","value":"old.example","valid_until":"2020-01-01T00:00:00Z"}"#,
            ],
            HOUR,
        );
        let ev = event(&format!(
            r#"{{"event_type":"fileinfo","flow_id":9,"src_ip":"2001:0db8:0:0:0:0:0:1","http":{{"hostname":"[2001:db8::1]"}},"fileinfo":{{"sha256":"{}"}},"dns":{{"rrname":"old.example"}}}}"#,
            hash.to_ascii_uppercase()
        ));
        let fields: Vec<String> = s
            .find([&ev].into_iter())
            .iter()
            .map(|(_, a)| a.extra["matched_field"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(fields, vec!["src_ip", "fileinfo.sha256"]);
        let host_ip = event(r#"{"event_type":"http","http":{"hostname":"2001:db8::1"}}"#);
        assert_eq!(
            s.find([&host_ip].into_iter())[0].1.extra["matched_field"],
            "http.hostname"
        );
    }

    proptest! {
        #[test]
        fn any_line_scans_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Observed::scan(&bytes);
        }
    }
}
