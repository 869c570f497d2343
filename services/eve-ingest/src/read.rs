//! One pass over an EVE line: everything the service reads of it at once.
//!
//! A line used to be read up to four times: to check it and find its type
//! ([`crate::event::parse_line`]), for the sightings ([`crate::sightings::Observed::scan`]),
//! for an alert's fields ([`crate::alert::alert_fields`]) and for a `stats` event's counters
//! ([`crate::sensors::stats_sample`]). [`LineRead::scan`] reads the same fields in one pass
//! that borrows the line's strings and builds no JSON values except for what an alert keeps
//! whole (the `alert` object, and a top-level field of an odd shape).
//!
//! It is at least as strict as each of those readers: where it succeeds they all do, and
//! give what it gives (repeated keys: the last one wins, as they read them). Where it fails
//! (not JSON, an `event_type` given twice, a string that is not UTF-8, a number out of range,
//! anything odd), the caller falls back to those readers, which decide as before; so the
//! fallback costs time on odd lines only, and never changes what is published, alerted or
//! dead-lettered.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::sensors::{StatsRead, StatsVisitor};
use crate::sightings::{DnsNames, Field, KeyOf, Observed, One};

/// A top-level value as read: a scalar as it is (a string borrowed from the line when it
/// holds no escapes), anything else as a JSON value (Suricata writes scalars there).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'a, str>),
    Other(Value),
}

impl<'a> Scalar<'a> {
    /// The string, else nothing (how the sightings and the sensors read it).
    pub fn text(&self) -> Option<Cow<'a, str>> {
        match self {
            Self::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A non-negative integer, else nothing.
    pub fn number(&self) -> Option<u64> {
        match self {
            Self::U64(n) => Some(*n),
            _ => None,
        }
    }

    /// The JSON value serde_json would have built of it.
    pub fn to_value(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::U64(n) => Value::Number((*n).into()),
            Self::I64(n) => Value::Number((*n).into()),
            Self::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Self::Str(s) => Value::String(s.to_string()),
            Self::Other(v) => v.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(n))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(n))
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(f))
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_string())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map)).map(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(Scalar::Other)
    }
}

/// `event_type`: the string, else nothing; a value of another shape is still read as a JSON
/// value (as the check of a line reads it, so a line it refuses is refused here too).
struct EventType<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for EventType<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(EventType(Scalar::deserialize(d)?.text()))
    }
}

/// An object's wanted fields read, every other value checked as strictly as a JSON value is
/// built (UTF-8 strings, numbers in range) without building it: what an alert reads of
/// `dns`, `tls`, `http` and `fileinfo` is read the same way whether the object is kept
/// whole or not.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Checked)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Checked)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Checked)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Checked)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Checked)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// Runs `inner` (one of the sightings' readers of an object) over a value, and checks its
/// rest: `inner` reads the value, and everything it passes over is read by [`Checked`].
///
/// serde cannot run two visitors over one value, so the value is read by a wrapper that
/// hands `inner` a map whose skipped values are checked; see [`CheckedMap`].
struct Strict<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Strict<S> {
    type Value = S::Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(StrictDeserializer(d))
    }
}

/// A deserializer whose maps and sequences check every value their reader skips.
struct StrictDeserializer<D>(D);

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for StrictDeserializer<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(StrictVisitor(visitor))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        Checked::deserialize(self.0)?;
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier
    }
}

/// Hands the inner visitor maps and sequences that read through [`StrictDeserializer`].
struct StrictVisitor<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for StrictVisitor<V> {
    type Value = V::Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.0.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.0.visit_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.0.visit_u64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.0.visit_f64(v)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.0.visit_borrowed_str(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.0.visit_str(v)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.0.visit_string(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit()
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_none()
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(CheckedMap(map))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(CheckedSeq(seq))
    }
}

/// A map whose values are read through [`StrictDeserializer`] (keys are read as strings by
/// every reader, checked as such).
struct CheckedMap<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for CheckedMap<A> {
    type Error = A::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.0.next_key_seed(seed)
    }
    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        self.0.next_value_seed(Strict(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// A sequence whose elements are read through [`StrictDeserializer`].
struct CheckedSeq<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for CheckedSeq<A> {
    type Error = A::Error;
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Self::Error> {
        self.0.next_element_seed(Strict(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// `fileinfo`'s hashes: `sha256` (sightings, alerts), `sha1` and `md5` (alerts).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FileHashes<'a> {
    pub sha256: Option<Cow<'a, str>>,
    pub sha1: Option<Cow<'a, str>>,
    pub md5: Option<Cow<'a, str>>,
}

impl<'de> Deserialize<'de> for FileHashes<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FileHashesVisitor)
    }
}

struct FileHashesVisitor;

impl<'de> Visitor<'de> for FileHashesVisitor {
    type Value = FileHashes<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const KEYS: &[(&str, u8)] = &[("sha256", 0), ("sha1", 1), ("md5", 2)];
        let mut hashes = FileHashes::default();
        while let Some(key) = map.next_key_seed(KeyOf(KEYS))? {
            let slot = match key {
                Some(0) => &mut hashes.sha256,
                Some(1) => &mut hashes.sha1,
                Some(2) => &mut hashes.md5,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value::<Scalar>()?.text();
        }
        Ok(hashes)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(FileHashes::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(FileHashes::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(FileHashes::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(FileHashes::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(FileHashes::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FileHashes::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(FileHashes::default())
    }
}

/// The top-level keys read.
#[derive(Clone, Copy)]
enum Top {
    EventType,
    Timestamp,
    FlowId,
    SrcIp,
    DestIp,
    SrcPort,
    DestPort,
    Proto,
    AppProto,
    InIface,
    CommunityId,
    Host,
    Dns,
    Tls,
    Http,
    Fileinfo,
    Alert,
    Stats,
}

const TOP_KEYS: &[(&str, Top)] = &[
    ("event_type", Top::EventType),
    ("timestamp", Top::Timestamp),
    ("flow_id", Top::FlowId),
    ("src_ip", Top::SrcIp),
    ("dest_ip", Top::DestIp),
    ("src_port", Top::SrcPort),
    ("dest_port", Top::DestPort),
    ("proto", Top::Proto),
    ("app_proto", Top::AppProto),
    ("in_iface", Top::InIface),
    ("community_id", Top::CommunityId),
    ("host", Top::Host),
    ("dns", Top::Dns),
    ("tls", Top::Tls),
    ("http", Top::Http),
    ("fileinfo", Top::Fileinfo),
    ("alert", Top::Alert),
    ("stats", Top::Stats),
];

/// Everything the service reads of one line.
#[derive(Debug, Default)]
pub struct LineRead<'a> {
    /// The string `event_type` (`None`: missing, null or of another type).
    pub event_type: Option<Cow<'a, str>>,
    pub timestamp: Option<Scalar<'a>>,
    pub flow_id: Option<Scalar<'a>>,
    pub src_ip: Option<Scalar<'a>>,
    pub dest_ip: Option<Scalar<'a>>,
    pub src_port: Option<Scalar<'a>>,
    pub dest_port: Option<Scalar<'a>>,
    pub proto: Option<Scalar<'a>>,
    pub app_proto: Option<Scalar<'a>>,
    pub in_iface: Option<Scalar<'a>>,
    pub community_id: Option<Scalar<'a>>,
    pub host: Option<Scalar<'a>>,
    /// DNS query names, TLS SNI, HTTP host, as the sightings list them (in line order).
    pub names: Vec<(Field, Cow<'a, str>)>,
    pub file: FileHashes<'a>,
    /// The `alert` object, whole (any shape: the mapping takes an object only).
    pub alert: Option<Value>,
    /// `stats.uptime`, `stats.capture.kernel_packets` and `.kernel_drops`.
    pub uptime: Option<u64>,
    pub kernel_packets: Option<u64>,
    pub kernel_drops: Option<u64>,
}

impl<'a> LineRead<'a> {
    /// Reads a line; `None` when the one pass cannot decide, and the readers of each part
    /// must read it as they did (see the module's documentation).
    pub fn scan(raw: &'a [u8]) -> Option<Self> {
        // Anything but an object is for the line's check to name (an array, a string, ...).
        if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        let mut de = serde_json::Deserializer::from_slice(raw);
        let read = de::Deserializer::deserialize_map(&mut de, LineVisitor).ok()?;
        de.end().ok()?;
        Some(read)
    }

    /// The value of a top-level field an alert keeps in its context.
    pub fn scalar(&self, key: &str) -> Option<&Scalar<'a>> {
        match key {
            "timestamp" => self.timestamp.as_ref(),
            "flow_id" => self.flow_id.as_ref(),
            "src_ip" => self.src_ip.as_ref(),
            "dest_ip" => self.dest_ip.as_ref(),
            "src_port" => self.src_port.as_ref(),
            "dest_port" => self.dest_port.as_ref(),
            "proto" => self.proto.as_ref(),
            "app_proto" => self.app_proto.as_ref(),
            "in_iface" => self.in_iface.as_ref(),
            "community_id" => self.community_id.as_ref(),
            "host" => self.host.as_ref(),
            _ => None,
        }
    }

    /// The names of one field, in order.
    pub fn names_of(&self, field: Field) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .filter(move |(f, _)| *f == field)
            .map(|(_, n)| n.as_ref())
    }

    /// What the sightings read of the line.
    pub fn observed(&self) -> Observed<'a> {
        let text = |s: &Option<Scalar<'a>>| s.as_ref().and_then(Scalar::text);
        let number = |s: &Option<Scalar<'a>>| s.as_ref().and_then(Scalar::number);
        Observed {
            timestamp: text(&self.timestamp),
            flow_id: number(&self.flow_id),
            src_ip: text(&self.src_ip),
            dest_ip: text(&self.dest_ip),
            src_port: number(&self.src_port),
            dest_port: number(&self.dest_port),
            proto: text(&self.proto),
            app_proto: text(&self.app_proto),
            host: text(&self.host),
            community_id: text(&self.community_id),
            names: self.names.clone(),
            sha256: self.file.sha256.clone(),
        }
    }

    /// What the sensors read of a `stats` event.
    pub(crate) fn stats(&self) -> StatsRead<'a> {
        let text = |s: &Option<Scalar<'a>>| s.as_ref().and_then(Scalar::text);
        StatsRead {
            timestamp: text(&self.timestamp),
            host: text(&self.host),
            uptime: self.uptime,
            kernel_packets: self.kernel_packets,
            kernel_drops: self.kernel_drops,
        }
    }

    /// The `alert` object, when it is one.
    pub fn alert_object(&self) -> Option<&Map<String, Value>> {
        self.alert.as_ref().and_then(Value::as_object)
    }
}

struct LineVisitor;

impl<'de> Visitor<'de> for LineVisitor {
    type Value = LineRead<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an EVE event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut r = LineRead::default();
        let mut typed = false;
        while let Some(key) = map.next_key_seed(KeyOf(TOP_KEYS))? {
            let Some(key) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            match key {
                Top::EventType => {
                    // The line's check refuses a repeated `event_type`; so must this.
                    if typed {
                        return Err(de::Error::duplicate_field("event_type"));
                    }
                    typed = true;
                    r.event_type = map.next_value::<EventType>()?.0;
                }
                Top::Timestamp => r.timestamp = Some(map.next_value()?),
                Top::FlowId => r.flow_id = Some(map.next_value()?),
                Top::SrcIp => r.src_ip = Some(map.next_value()?),
                Top::DestIp => r.dest_ip = Some(map.next_value()?),
                Top::SrcPort => r.src_port = Some(map.next_value()?),
                Top::DestPort => r.dest_port = Some(map.next_value()?),
                Top::Proto => r.proto = Some(map.next_value()?),
                Top::AppProto => r.app_proto = Some(map.next_value()?),
                Top::InIface => r.in_iface = Some(map.next_value()?),
                Top::CommunityId => r.community_id = Some(map.next_value()?),
                Top::Host => r.host = Some(map.next_value()?),
                Top::Dns => {
                    r.names.retain(|(f, _)| *f != Field::DnsRrname);
                    let names = map.next_value_seed(Strict(NamesOf::<DnsNames>::new()))?.0;
                    r.names
                        .extend(names.into_iter().map(|n| (Field::DnsRrname, n)));
                }
                Top::Tls => {
                    let sni = map.next_value_seed(Strict(One("sni")))?;
                    set_name(&mut r.names, Field::TlsSni, sni);
                }
                Top::Http => {
                    let host = map.next_value_seed(Strict(One("hostname")))?;
                    set_name(&mut r.names, Field::HttpHostname, host);
                }
                Top::Fileinfo => {
                    r.file = map.next_value_seed(Strict(NamesOf::<FileHashes>::new()))?
                }
                Top::Alert => r.alert = Some(map.next_value()?),
                Top::Stats => {
                    let stats = map.next_value_seed(StatsVisitor::stats())?;
                    r.uptime = stats.uptime;
                    r.kernel_packets = stats.kernel_packets;
                    r.kernel_drops = stats.kernel_drops;
                }
            }
        }
        Ok(r)
    }
}

/// A repeated key: the last one wins, as when the whole object is read.
fn set_name<'a>(names: &mut Vec<(Field, Cow<'a, str>)>, field: Field, value: Option<Cow<'a, str>>) {
    names.retain(|(f, _)| *f != field);
    if let Some(v) = value {
        names.push((field, v));
    }
}

/// A `Deserialize` type as a seed (so that [`Strict`] can wrap it).
struct NamesOf<T>(std::marker::PhantomData<T>);

impl<T> NamesOf<T> {
    fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for NamesOf<T> {
    type Value = T;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::alert::AlertMapping;
    use crate::event::{event_type, parse_line, Rejection};
    use crate::sensors::StatsRead;
    use aurora_core::model::Alert;
    use bytes::Bytes;
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    /// What the readers of each part make of a line, before the one pass.
    #[derive(Debug, PartialEq)]
    struct Apart {
        event: Result<(String, [u8; 32]), Rejection>,
        alert: Option<Alert>,
        observed: Option<String>,
        stats: Option<String>,
    }

    fn apart(line: &[u8]) -> Apart {
        let event = parse_line(Bytes::copy_from_slice(line));
        let alert = match &event {
            Ok(e) if e.is_alert() => AlertMapping::default().to_alert(e),
            _ => None,
        };
        Apart {
            event: event
                .as_ref()
                .map(|e| (e.event_type.to_string(), e.hash))
                .map_err(|(r, _)| *r),
            alert,
            observed: crate::sightings::Observed::scan(line).map(|o| format!("{o:?}")),
            stats: StatsRead::scan(line).map(|s| format!("{s:?}")),
        }
    }

    /// What the one pass makes of it; `None` when it leaves the line to the readers apart.
    fn at_once(line: &[u8]) -> Option<Apart> {
        let read = LineRead::scan(line)?;
        let t = event_type(read.event_type.as_deref()?)?;
        let hash: [u8; 32] = Sha256::digest(line).into();
        Some(Apart {
            alert: (t == "alert").then(|| AlertMapping::default().alert_of_read(&read, &hash)),
            event: Ok((t.to_string(), hash)),
            observed: Some(format!("{:?}", read.observed())),
            stats: Some(format!("{:?}", read.stats())),
        })
    }

    /// An alert's time is the time it was read when the event has none that parses.
    fn received_time_aside(a: &mut Apart) {
        if let Some(alert) = &mut a.alert {
            if alert.extra.contains_key("timestamp_source") {
                alert.timestamp = chrono::DateTime::UNIX_EPOCH;
            }
        }
    }

    /// Where the one pass decides, it decides as the readers apart do.
    fn same(line: &[u8]) -> bool {
        let Some(mut once) = at_once(line) else {
            return false;
        };
        let mut before = apart(line);
        received_time_aside(&mut once);
        received_time_aside(&mut before);
        assert_eq!(once, before, "{}", String::from_utf8_lossy(line));
        true
    }

    fn fixture_lines() -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let shared =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/suricata");
        let mut lines = Vec::new();
        for dir in [dir, shared] {
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            for file in files {
                let path = file.unwrap().path();
                if path.extension().is_some_and(|e| e == "jsonl") {
                    let text = std::fs::read(path).unwrap();
                    lines.extend(
                        text.split(|b| *b == b'\n')
                            .filter(|l| !l.trim_ascii().is_empty())
                            .map(<[u8]>::to_vec),
                    );
                }
            }
        }
        lines
    }

    #[test]
    fn the_one_pass_reads_the_fixtures_as_the_readers_apart_do() {
        let lines = fixture_lines();
        assert!(lines.len() >= 370, "{} fixture lines", lines.len());
        let mut alerts = 0;
        for line in &lines {
            assert!(
                same(line),
                "left to the readers apart: {}",
                String::from_utf8_lossy(line)
            );
            alerts += usize::from(at_once(line).unwrap().alert.is_some());
        }
        assert!(alerts >= 70, "{alerts} alerts");
    }

    #[test]
    fn odd_lines_are_left_to_the_readers_apart() {
        for line in [
            &b"not json"[..],
            b"[1,2]",
            b"\"alert\"",
            b"",
            b"{}",
            br#"{"event_type":"dns""#,
            br#"{"event_type":5}"#,
            br#"{"event_type":"  "}"#,
            br#"{"event_type":null}"#,
            // Refused by the line's check: a repeated event_type.
            br#"{"event_type":"dns","event_type":"dns"}"#,
            // Not UTF-8 in a value the check passes over but the sightings read.
            b"{\"event_type\":\"tls\",\"tls\":{\"sni\":\"\xff\"}}",
            // Not UTF-8 where only an alert reads (the whole `dns` object).
            b"{\"event_type\":\"alert\",\"dns\":{\"answers\":[\"\xfe\"]}}",
            // A number out of range where only an alert reads.
            br#"{"event_type":"alert","http":{"length":1e400}}"#,
            br#"{"event_type":"alert","alert":{"severity":1e999}}"#,
            br#"{"event_type":"flow","src_ip":-1e999}"#,
            b"\x0c{\"event_type\":\"dns\"}",
            br#"{"event_type":"dns"} x"#,
        ] {
            assert!(!same(line), "{}", String::from_utf8_lossy(line));
            // ... and the line is handled as before (nothing to compare: it is the same code).
            let _ = apart(line);
        }
    }

    #[test]
    fn odd_shapes_the_one_pass_decides_are_read_as_before() {
        for line in [
            r#"{"event_type":"alert","timestamp":{"a":[1,2.5,"x"]},"src_ip":1,"dest_ip":null,"flow_id":-3,"src_port":1.5,"host":["s"],"in_iface":true,"community_id":"1:x"}"#,
            r#"{"event_type":"alert","alert":"not an object","dns":[1],"tls":"x","http":null,"fileinfo":{"sha256":"AB","sha1":5,"md5":"cd"}}"#,
            r#"{"event_type":"alert","host":"a","host":"b","dns":{"rrname":"a.example"},"tls":{"sni":"b.example"},"dns":{"query":[{"rrname":"c.example"},{"rrname":"C.example."}]},"tls":{"sni":"d.example"},"alert":{"signature_id":7},"alert":{"signature":" T ","severity":2,"metadata":{"mitre_technique_id":"t1071"}}}"#,
            r#"{"event_type":"alert","src_ip":"8.8.8.8","dest_ip":"2001:4860:4860::8888","http":{"hostname":"Evil.Example."},"timestamp":"2024-01-15T11:30:00.123456+0100"}"#,
            r#"{"event_type":"stats","host":"s1","stats":{"uptime":5,"capture":{"kernel_packets":10,"kernel_drops":1}},"stats":{"uptime":"x"}}"#,
            r#"{"event_type":"a.b*>c","dns":{"rrname":"x\u002eexample"}}"#,
            r#"{"timestamp":"t","event_type":"alert","flow_id":18446744073709551615,"src_port":-9223372036854775808}"#,
        ] {
            assert!(same(line.as_bytes()), "{line}");
        }
    }

    /// Lines of any shape built from the fields the readers look at.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[ -~]{0,10}".prop_map(Value::from),
            Just(Value::from("8.8.4.4")),
            Just(Value::from("www.Google.com.")),
            Just(Value::from("2024-01-15T11:30:00.123456+0100")),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("rrname".to_string()),
                            Just("query".to_string()),
                            Just("queries".to_string()),
                            Just("sni".to_string()),
                            Just("hostname".to_string()),
                            Just("sha256".to_string()),
                            Just("md5".to_string()),
                            Just("signature".to_string()),
                            Just("signature_id".to_string()),
                            Just("severity".to_string()),
                            Just("metadata".to_string()),
                            Just("mitre_technique_id".to_string()),
                            Just("capture".to_string()),
                            Just("kernel_drops".to_string()),
                            "[a-z]{1,4}",
                        ],
                        inner,
                    ),
                    0..5,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn top_key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("event_type".to_string()),
            Just("timestamp".to_string()),
            Just("flow_id".to_string()),
            Just("src_ip".to_string()),
            Just("dest_ip".to_string()),
            Just("src_port".to_string()),
            Just("proto".to_string()),
            Just("in_iface".to_string()),
            Just("host".to_string()),
            Just("dns".to_string()),
            Just("tls".to_string()),
            Just("http".to_string()),
            Just("fileinfo".to_string()),
            Just("alert".to_string()),
            Just("stats".to_string()),
            "[a-z]{1,4}",
        ]
    }

    proptest! {
        #[test]
        fn any_line_the_one_pass_decides_is_read_as_before(
            t in prop_oneof![Just("alert"), Just("stats"), Just("dns"), Just("x.y")],
            fields in proptest::collection::vec((top_key(), json_value()), 0..10),
        ) {
            // Written by hand so that keys may repeat.
            let mut line = format!("{{\"event_type\":\"{t}\"");
            for (k, v) in &fields {
                if k != "event_type" {
                    line.push_str(&format!(",\"{k}\":{v}"));
                }
            }
            line.push('}');
            prop_assert!(same(line.as_bytes()), "{}", line);
        }

        #[test]
        fn any_bytes_read_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = at_once(&bytes);
        }
    }
}
