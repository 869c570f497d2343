//! A Suricata `alert` event as an Aurora [`Alert`].
//!
//! - title: `alert.signature` (else `Suricata signature <sid>`).
//! - severity: Suricata's 1 is high (critical with `--severity-1-critical`), 2 medium, 3 low,
//!   4 and above info; a missing or unreadable severity is low (an alert fired, so it is kept
//!   visible).
//! - iocs: external source/destination IPs, the DNS query names, TLS SNI and HTTP host as
//!   domains, file hashes; each once.
//! - mitre_techniques: valid technique ids found in `alert.metadata` under `mitre_technique*`
//!   or `mitre_subtechnique*` keys (ET rules: `"mitre_technique_id": ["T1071"]`).
//! - timestamp: the event's own (`+0000`/`+0100` offsets), else the time it was read.
//! - id: UUID v5 of the event's hash, so one event always gives the same alert id.
//! - extra: the Suricata context an analyst pivots on (signature id, category, addresses,
//!   ports, protocol, flow id, sensor).

use std::fmt;
use std::net::IpAddr;
use std::sync::LazyLock;

use chrono::format::{Item, Parsed, StrftimeItems};
use chrono::{DateTime, Utc};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use uuid::Uuid;

use aurora_core::model::{is_mitre_technique, Alert, AlertStatus, Extra, Ioc, Severity};

use crate::event::EveEvent;
use crate::read::{LineRead, Scalar};
use crate::sightings::Field;
use crate::SERVICE;

/// The `source` of every alert this service writes.
pub const SOURCE: &str = "suricata";

/// How Suricata severities map to Aurora's.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertMapping {
    /// Map Suricata severity 1 to `critical` instead of `high`.
    pub severity_1_critical: bool,
}

/// The namespace of one kind of eve-ingest's alert ids: UUID v5 (OID) of
/// `aurora:eve-ingest:<kind>` (`alert`, `sensor`, `ioc-sighting`). Each kind keeps its own in
/// a `LazyLock`, worked out once.
pub(crate) fn id_namespace_of(kind: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("aurora:{SERVICE}:{kind}").as_bytes(),
    )
}

/// The namespace of the ids of alerts mapped from `alert` events.
fn id_namespace() -> Uuid {
    static NAMESPACE: LazyLock<Uuid> = LazyLock::new(|| id_namespace_of("alert"));
    *NAMESPACE
}

/// The alert id of an event: the same event always gives the same id.
pub fn alert_id(hash: &[u8; 32]) -> Uuid {
    Uuid::new_v5(&id_namespace(), hash)
}

impl AlertMapping {
    pub fn severity(&self, suricata: Option<&Value>) -> Severity {
        match suricata.and_then(Value::as_i64) {
            Some(1) if self.severity_1_critical => Severity::Critical,
            Some(1) => Severity::High,
            Some(2) => Severity::Medium,
            Some(3) => Severity::Low,
            Some(n) if n >= 4 => Severity::Info,
            _ => Severity::Low,
        }
    }

    /// The alert of an `alert` event; `None` when the line is not a JSON object.
    pub fn to_alert(&self, event: &EveEvent) -> Option<Alert> {
        let doc = alert_fields(&event.raw)?;
        Some(self.alert_from(&doc, &event.hash))
    }

    pub fn alert_from(&self, doc: &Map<String, Value>, hash: &[u8; 32]) -> Alert {
        let alert = doc.get("alert").and_then(Value::as_object);
        let timestamp = doc.get("timestamp").and_then(Value::as_str);
        let sensor = doc.get("host").and_then(Value::as_str);
        let context = |key: &str| doc.get(key).filter(|v| !v.is_null()).cloned();
        self.assemble(alert, timestamp, context, sensor, iocs(doc), hash)
    }

    /// The alert of an `alert` event read in one pass ([`LineRead`]): the same as
    /// [`AlertMapping::alert_from`] gives for the whole object.
    pub fn alert_of_read(&self, read: &LineRead<'_>, hash: &[u8; 32]) -> Alert {
        let timestamp = read.timestamp.as_ref().and_then(Scalar::as_str);
        let sensor = read.host.as_ref().and_then(Scalar::as_str);
        let context = |key: &str| {
            read.scalar(key)
                .map(Scalar::to_value)
                .filter(|v| !v.is_null())
        };
        let dns: Vec<&str> = read.names_of(Field::DnsRrname).collect();
        let named = IocFields {
            src_ip: read.src_ip.as_ref().and_then(Scalar::as_str),
            dest_ip: read.dest_ip.as_ref().and_then(Scalar::as_str),
            dns: &dns,
            sni: read.names_of(Field::TlsSni).next(),
            hostname: read.names_of(Field::HttpHostname).next(),
            sha256: read.file.sha256.as_deref(),
            sha1: read.file.sha1.as_deref(),
            md5: read.file.md5.as_deref(),
        };
        self.assemble(
            read.alert_object(),
            timestamp,
            context,
            sensor,
            iocs_of(&named),
            hash,
        )
    }

    fn assemble(
        &self,
        alert: Option<&Map<String, Value>>,
        timestamp: Option<&str>,
        context_of: impl Fn(&str) -> Option<Value>,
        sensor: Option<&str>,
        iocs: Vec<Ioc>,
        hash: &[u8; 32],
    ) -> Alert {
        let empty = Map::new();
        let alert = alert.unwrap_or(&empty);
        let title = alert
            .get("signature")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| match alert.get("signature_id") {
                Some(sid) => format!("Suricata signature {sid}"),
                None => "Suricata alert".to_string(),
            });
        let (timestamp, from_event) = match timestamp {
            Some(ts) => match parse_timestamp(ts) {
                Some(t) => (t, true),
                None => (Utc::now(), false),
            },
            None => (Utc::now(), false),
        };
        let mut extra = context(alert, context_of, sensor);
        extra.insert(
            "event_sha256".into(),
            Value::String(crate::event::hex_of(hash)),
        );
        if !from_event {
            extra.insert("timestamp_source".into(), Value::String("received".into()));
        }
        Alert {
            id: alert_id(hash),
            title,
            severity: self.severity(alert.get("severity")),
            status: AlertStatus::New,
            source: SOURCE.to_string(),
            iocs,
            mitre_techniques: mitre_techniques(alert),
            timestamp,
            extra,
        }
    }
}

/// The top-level fields of an event that its alert reads; nothing else is kept.
const ALERT_FIELDS: &[&str] = &[
    "alert",
    "timestamp",
    "src_ip",
    "src_port",
    "dest_ip",
    "dest_port",
    "proto",
    "app_proto",
    "flow_id",
    "in_iface",
    "community_id",
    "host",
    "dns",
    "tls",
    "http",
    "fileinfo",
];

/// The fields of an event line its alert reads ([`ALERT_FIELDS`]), as [`AlertMapping::alert_from`]
/// takes them; `None` when the line is not a JSON object. The same as parsing the whole
/// object (a repeated key: the last one wins) without building the parts no alert uses
/// (payloads, packets, flow counters, HTTP bodies are skipped as they are read).
pub fn alert_fields(raw: &[u8]) -> Option<Map<String, Value>> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let doc = de::Deserializer::deserialize_map(&mut de, FieldsVisitor).ok()?;
    de.end().ok()?;
    Some(doc)
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an EVE event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut doc = Map::new();
        while let Some(key) = access.next_key_seed(FieldKey)? {
            match key {
                Some(key) => {
                    doc.insert(key.to_string(), access.next_value::<Value>()?);
                }
                None => {
                    access.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(doc)
    }
}

/// A key, as the `ALERT_FIELDS` entry it names, without allocating.
struct FieldKey;

impl<'de> DeserializeSeed<'de> for FieldKey {
    type Value = Option<&'static str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldKey {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(ALERT_FIELDS.iter().copied().find(|f| *f == key))
    }
}

/// Suricata's timestamp format, read once: `DateTime::parse_from_str` reads its format string
/// again at every call (a few percent of eve-ingest's CPU when every alert and sighting is
/// stamped).
static SURICATA_TIME: LazyLock<Vec<Item<'static>>> = LazyLock::new(|| {
    StrftimeItems::new("%Y-%m-%dT%H:%M:%S%.f%z")
        .parse_to_owned()
        .unwrap_or_default()
});

/// Suricata's `2017-01-30T16:12:36.066011+0100`, or RFC 3339.
pub fn parse_timestamp(ts: &str) -> Option<DateTime<Utc>> {
    let mut parsed = Parsed::new();
    chrono::format::parse(&mut parsed, ts, SURICATA_TIME.iter())
        .and_then(|()| parsed.to_datetime())
        .or_else(|_| DateTime::parse_from_rfc3339(ts))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The top-level fields an alert keeps in its `extra`, in order.
const CONTEXT_FIELDS: &[&str] = &[
    "src_ip",
    "src_port",
    "dest_ip",
    "dest_port",
    "proto",
    "app_proto",
    "flow_id",
    "in_iface",
    "community_id",
];

fn context(
    alert: &Map<String, Value>,
    context_of: impl Fn(&str) -> Option<Value>,
    sensor: Option<&str>,
) -> Extra {
    let mut extra = Extra::new();
    for key in ["signature_id", "gid", "rev", "category", "action"] {
        if let Some(v) = alert.get(key).filter(|v| !v.is_null()) {
            extra.insert(key.to_string(), v.clone());
        }
    }
    for key in CONTEXT_FIELDS {
        if let Some(v) = context_of(key) {
            extra.insert(key.to_string(), v);
        }
    }
    // Suricata's `host` (sensor-name) names the sensor that saw it.
    if let Some(sensor) = sensor {
        extra.insert("sensor".into(), Value::String(sensor.to_string()));
    }
    extra
}

/// True for addresses that say something outside the site: not private (RFC 1918, unique
/// local), loopback, link-local, multicast, unspecified, broadcast or shared (RFC 6598).
pub fn is_external(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (64..128).contains(&o[1])))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_external(IpAddr::V4(v4)),
            None => {
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local())
            }
        },
    }
}

struct IocSet(Vec<Ioc>);

impl IocSet {
    fn add(&mut self, ioc_type: &str, value: &str) {
        let value = value.trim();
        if value.is_empty() || value.len() > 512 {
            return;
        }
        if !self
            .0
            .iter()
            .any(|i| i.ioc_type == ioc_type && i.value == value)
        {
            self.0.push(Ioc::new(ioc_type, value));
        }
    }

    fn add_ip(&mut self, raw: &str) {
        if let Ok(ip) = raw.trim().parse::<IpAddr>() {
            if is_external(ip) {
                let kind = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
                self.add(kind, &ip.to_string());
            }
        }
    }

    fn add_domain(&mut self, raw: &str) {
        let host = raw.trim().trim_end_matches('.');
        if host.parse::<IpAddr>().is_ok() {
            self.add_ip(host);
        } else if !host.is_empty()
            && host.len() <= 253
            && !host.contains(|c: char| c.is_whitespace() || c == '/')
        {
            self.add("domain", &host.to_ascii_lowercase());
        }
    }
}

fn str_at<'a>(doc: &'a Map<String, Value>, object: &str, field: &str) -> Option<&'a str> {
    doc.get(object)?.as_object()?.get(field)?.as_str()
}

/// The values of an event its alert's indicators come from.
struct IocFields<'a> {
    src_ip: Option<&'a str>,
    dest_ip: Option<&'a str>,
    /// `dns.rrname`, then the `rrname` of each of `dns.query` and `dns.queries`.
    dns: &'a [&'a str],
    sni: Option<&'a str>,
    hostname: Option<&'a str>,
    sha256: Option<&'a str>,
    sha1: Option<&'a str>,
    md5: Option<&'a str>,
}

/// The indicators an alert event names.
pub fn iocs(doc: &Map<String, Value>) -> Vec<Ioc> {
    let mut dns: Vec<&str> = Vec::new();
    if let Some(object) = doc.get("dns").and_then(Value::as_object) {
        dns.extend(object.get("rrname").and_then(Value::as_str));
        // EVE v1 `query` and Suricata 8 `queries` hold lists of questions.
        for list in ["query", "queries"] {
            for q in object
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                dns.extend(q.get("rrname").and_then(Value::as_str));
            }
        }
    }
    iocs_of(&IocFields {
        src_ip: doc.get("src_ip").and_then(Value::as_str),
        dest_ip: doc.get("dest_ip").and_then(Value::as_str),
        dns: &dns,
        sni: str_at(doc, "tls", "sni"),
        hostname: str_at(doc, "http", "hostname"),
        sha256: str_at(doc, "fileinfo", "sha256"),
        sha1: str_at(doc, "fileinfo", "sha1"),
        md5: str_at(doc, "fileinfo", "md5"),
    })
}

fn iocs_of(fields: &IocFields<'_>) -> Vec<Ioc> {
    let mut set = IocSet(Vec::new());
    for ip in [fields.src_ip, fields.dest_ip].into_iter().flatten() {
        set.add_ip(ip);
    }
    for name in fields.dns {
        set.add_domain(name);
    }
    if let Some(sni) = fields.sni {
        set.add_domain(sni);
    }
    if let Some(host) = fields.hostname {
        set.add_domain(host);
    }
    for (h, kind) in [
        (fields.sha256, "sha256"),
        (fields.sha1, "sha1"),
        (fields.md5, "md5"),
    ] {
        if let Some(h) = h {
            if !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                set.add(kind, &h.to_ascii_lowercase());
            }
        }
    }
    set.0
}

/// Valid MITRE technique ids of the rule's metadata, each once, in order.
pub fn mitre_techniques(alert: &Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Some(meta) = alert.get("metadata").and_then(Value::as_object) else {
        return out;
    };
    for (key, values) in meta {
        if !(key.starts_with("mitre_technique") || key.starts_with("mitre_subtechnique")) {
            continue;
        }
        let values: Vec<&Value> = match values {
            Value::Array(list) => list.iter().collect(),
            other => vec![other],
        };
        for v in values {
            if let Some(id) = v.as_str().map(|s| s.trim().to_ascii_uppercase()) {
                if is_mitre_technique(&id) && !out.contains(&id) {
                    out.push(id);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aurora_core::model::{parse, to_bytes, Message};
    use bytes::Bytes;
    use proptest::prelude::*;

    /// Alert ids are part of the contract (the same event gives the same id in every
    /// version): the namespace must not move.
    #[test]
    fn the_alert_id_namespace_is_stable() {
        assert_eq!(
            id_namespace(),
            Uuid::new_v5(&Uuid::NAMESPACE_OID, b"aurora:eve-ingest:alert")
        );
    }

    fn event(line: &str) -> EveEvent {
        crate::event::parse_line(Bytes::copy_from_slice(line.as_bytes())).unwrap()
    }

    /// The format read once reads what `DateTime::parse_from_str` with it reads.
    #[test]
    fn timestamps_read_as_with_the_format_string() {
        for ts in [
            "2017-01-30T16:12:36.066011+0100",
            "2024-01-15T11:30:00+0000",
            "2024-01-15T11:30:00.1-0530",
            "2024-01-15T11:30:00.123Z",
            "2024-01-15T11:30:00.123+01:00",
            "2024-02-30T11:30:00+0000",
            "2024-01-15 11:30:00+0000",
            "",
            "not a time",
        ] {
            let expected = DateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.f%z")
                .or_else(|_| DateTime::parse_from_rfc3339(ts))
                .ok()
                .map(|t| t.with_timezone(&Utc));
            assert_eq!(parse_timestamp(ts), expected, "{ts}");
        }
        assert_eq!(
            parse_timestamp("2017-01-30T16:12:36.066011+0100").map(|t| t.timestamp_micros()),
            Some(1_485_789_156_066_011)
        );
    }

    const ET_ALERT: &str = r#"{"timestamp":"2024-01-15T11:30:00.123456+0100","flow_id":42,"host":"sensor-7","event_type":"alert","src_ip":"10.0.0.5","src_port":5353,"dest_ip":"198.51.100.7","dest_port":53,"proto":"UDP","app_proto":"dns","alert":{"action":"allowed","gid":1,"signature_id":2027863,"rev":3,"signature":"ET DNS Query to Known C2 Domain","category":"A Network Trojan was detected","severity":1,"metadata":{"mitre_tactic_id":["TA0011"],"mitre_technique_id":["T1071","t1071.004","bogus"],"signature_severity":["Major"]}},"dns":{"query":[{"type":"query","rrname":"t1.evil.com.","rrtype":"A"}]},"tls":{"sni":"Evil.example"},"fileinfo":{"sha256":"AB12","md5":"zz"}}"#;

    #[test]
    fn an_et_alert_maps_field_by_field() {
        let ev = event(ET_ALERT);
        let alert = AlertMapping::default().to_alert(&ev).unwrap();
        let back: Alert = parse(&to_bytes(&alert)).unwrap();
        assert_eq!(back, alert);
        assert_eq!(alert.title, "ET DNS Query to Known C2 Domain");
        assert_eq!(alert.severity, Severity::High);
        assert_eq!(alert.source, "suricata");
        assert_eq!(alert.status, AlertStatus::New);
        assert_eq!(alert.mitre_techniques, vec!["T1071", "T1071.004"]);
        assert_eq!(
            alert.timestamp.to_rfc3339(),
            "2024-01-15T10:30:00.123456+00:00"
        );
        assert_eq!(alert.id, alert_id(&ev.hash));
        let iocs: Vec<(&str, &str)> = alert
            .iocs
            .iter()
            .map(|i| (i.ioc_type.as_str(), i.value.as_str()))
            .collect();
        assert_eq!(
            iocs,
            vec![
                ("ipv4", "198.51.100.7"),
                ("domain", "t1.evil.com"),
                ("domain", "evil.example"),
                ("sha256", "ab12"),
            ]
        );
        assert_eq!(alert.extra["signature_id"], 2027863);
        assert_eq!(alert.extra["category"], "A Network Trojan was detected");
        assert_eq!(alert.extra["src_ip"], "10.0.0.5");
        assert_eq!(alert.extra["dest_port"], 53);
        assert_eq!(alert.extra["flow_id"], 42);
        assert_eq!(alert.extra["sensor"], "sensor-7");
        assert_eq!(alert.extra["event_sha256"], ev.msg_id());
        let critical = AlertMapping {
            severity_1_critical: true,
        }
        .to_alert(&ev)
        .unwrap();
        assert_eq!(critical.severity, Severity::Critical);
        assert_eq!(critical.id, alert.id, "the id depends on the event only");
    }

    #[test]
    fn only_the_alert_fields_are_read_and_they_match_the_whole_object() {
        let line = ET_ALERT.replace(
            r#""event_type":"alert","#,
            r#""event_type":"alert","payload":"AAAA","packet_info":{"linktype":1},"flow":{"pkts_toserver":3},"host":"first","#,
        );
        let doc: Map<String, Value> = serde_json::from_str(&line).unwrap();
        let slim = alert_fields(line.as_bytes()).unwrap();
        assert!(slim.keys().all(|k| ALERT_FIELDS.contains(&k.as_str())));
        assert!(!slim.contains_key("payload") && !slim.contains_key("flow"));
        // A repeated key (`host` comes before and after `event_type`): the last one wins,
        // as when the whole object is read.
        assert_eq!(slim["host"], "first");
        assert_eq!(doc["host"], "first");
        let m = AlertMapping::default();
        let hash = [9u8; 32];
        assert_eq!(m.alert_from(&slim, &hash), m.alert_from(&doc, &hash));
        assert!(alert_fields(b"[1]").is_none());
        assert!(alert_fields(br#"{"alert":{}} x"#).is_none());
        assert!(alert_fields(br#"{"alert":{"#).is_none());
    }

    #[test]
    fn severities() {
        let m = AlertMapping::default();
        let s = |v: Value| m.severity(Some(&v));
        assert_eq!(s(1.into()), Severity::High);
        assert_eq!(s(2.into()), Severity::Medium);
        assert_eq!(s(3.into()), Severity::Low);
        assert_eq!(s(4.into()), Severity::Info);
        assert_eq!(s(255.into()), Severity::Info);
        assert_eq!(s(0.into()), Severity::Low);
        assert_eq!(s("1".into()), Severity::Low);
        assert_eq!(m.severity(None), Severity::Low);
    }

    #[test]
    fn internal_addresses_are_not_indicators() {
        for ip in [
            "10.1.2.3",
            "172.17.0.2",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.251",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "ff02::fb",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_external(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "54.230.202.37",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_external(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn a_bare_alert_still_makes_a_valid_alert() {
        let ev = event(r#"{"event_type":"alert","timestamp":"yesterday"}"#);
        let alert = AlertMapping::default().to_alert(&ev).unwrap();
        assert_eq!(alert.title, "Suricata alert");
        assert_eq!(alert.extra["timestamp_source"], "received");
        assert!(alert.validate().is_ok());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::from),
            Just(Value::from("8.8.8.8")),
            Just(Value::from("T1071.001")),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("signature".to_string()),
                        Just("severity".to_string()),
                        Just("metadata".to_string()),
                        Just("mitre_technique_id".to_string()),
                        Just("rrname".to_string()),
                        Just("query".to_string()),
                        Just("sni".to_string()),
                        Just("hostname".to_string()),
                        Just("sha256".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_alert_shaped_json_maps_to_a_valid_alert(
            alert in json_value(),
            dns in json_value(),
            tls in json_value(),
            http in json_value(),
            fileinfo in json_value(),
            src in json_value(),
            ts in json_value(),
        ) {
            let mut doc = Map::new();
            doc.insert("event_type".into(), "alert".into());
            doc.insert("alert".into(), alert);
            doc.insert("dns".into(), dns);
            doc.insert("tls".into(), tls);
            doc.insert("http".into(), http);
            doc.insert("fileinfo".into(), fileinfo);
            doc.insert("src_ip".into(), src);
            doc.insert("timestamp".into(), ts);
            let alert = AlertMapping::default().alert_from(&doc, &[7u8; 32]);
            prop_assert!(alert.validate().is_ok(), "{:?}", alert.validate());
            let back: Result<Alert, _> = parse(&to_bytes(&alert));
            prop_assert!(back.is_ok(), "{:?}", back);
        }
    }
}
