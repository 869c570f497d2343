//! The live IOC set each replica keeps in memory (what `aurora:iocs` says now), and the
//! lookups that find an indicator in a value an event carries.
//!
//! - Kinds matched: domains (`domain`, `domain-name`, `hostname`), IP addresses (`ipv4`,
//!   `ipv6`, `ipv4-addr`, `ipv6-addr`, `ip`) and SHA-256 hashes (`sha256`, `sha-256`); the
//!   type is read case-insensitively. Other types (`url`, `md5`, `email`, ...) are skipped and
//!   counted (`unsupported_type`).
//! - Domains: lower case (ASCII), one trailing dot dropped, at least two labels (a bare `com`
//!   would match half the Internet); an indicator matches the name itself and every name below
//!   it, label by label (`evil.com` matches `evil.com` and `a.b.evil.com`, never
//!   `notevil.com`). A domain indicator whose value is an IP address is an IP indicator.
//! - IP addresses: exact, as addresses (`2001:DB8::1` = `2001:db8:0:0:0:0:0:1`; an IPv4-mapped
//!   IPv6 address is its IPv4 address). CIDR ranges are not indicators here (skipped,
//!   `invalid`).
//! - SHA-256: exactly 64 hex digits, any case.
//!
//! An indicator is (origin site, kind, normalised value): not its document's `id`, since a
//! document id crosses federation once (`Nats-Msg-Id` `<site>:<id>`, and the importer's
//! 7-day key), so a later word about an indicator is a new document. A later document about
//! the same indicator replaces it; one with `"revoked": true`, or a `valid_until` in the
//! past, removes it. An indicator matches only between `valid_from` and `valid_until`. One
//! value shared by two sites (or by another site and this one) is two indicators: each is
//! its own sighting. The set holds at most `max` indicators: a new one beyond that is skipped
//! (`limit`) after expired ones were swept out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use aurora_core::model::{self, Ioc, Severity, Tlp};

type Hasher = foldhash::fast::RandomState;

/// What an indicator is looked for in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Domain,
    Ip,
    Sha256,
}

impl Kind {
    /// The `type` label of the sightings metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Domain => "domain",
            Self::Ip => "ip",
            Self::Sha256 => "sha256",
        }
    }

    fn of_type(ioc_type: &str) -> Option<Self> {
        match ioc_type.trim().to_ascii_lowercase().as_str() {
            "domain" | "domain-name" | "hostname" => Some(Self::Domain),
            "ipv4" | "ipv6" | "ipv4-addr" | "ipv6-addr" | "ip" => Some(Self::Ip),
            "sha256" | "sha-256" => Some(Self::Sha256),
            _ => None,
        }
    }
}

/// A value an indicator is looked up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Needle {
    Domain(Box<str>),
    Ip(IpAddr),
    Sha256([u8; 32]),
}

impl Needle {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Domain(_) => Kind::Domain,
            Self::Ip(_) => Kind::Ip,
            Self::Sha256(_) => Kind::Sha256,
        }
    }

    /// The normalised value, as alerts show it.
    pub fn value(&self) -> String {
        match self {
            Self::Domain(d) => d.to_string(),
            Self::Ip(ip) => ip.to_string(),
            Self::Sha256(h) => hex::encode(h),
        }
    }
}

/// One indicator, as its newest document says.
#[derive(Debug, Clone, PartialEq)]
pub struct Indicator {
    /// `<origin site>|<kind>|<normalised value>`: what a later document about it is
    /// recognised by.
    pub identity: String,
    pub needle: Needle,
    /// The IOC as shared (its `type`, `value`, `id`, `tlp`, `confidence`, validity), for the
    /// alert's `iocs`.
    pub ioc: Ioc,
    /// The site that shared it (`origin_site` of an imported IOC); `None`: this site's own.
    pub origin_site: Option<String>,
    /// The IOC's own `severity`, when it carries a valid one.
    pub severity: Option<Severity>,
}

impl Indicator {
    pub fn tlp(&self) -> Option<Tlp> {
        self.ioc.tlp
    }

    /// Whether it matches at `now` (within `valid_from` .. `valid_until`).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.ioc.valid_from.is_none_or(|from| from <= now)
            && self.ioc.valid_until.is_none_or(|until| until > now)
    }

    fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.ioc.valid_until.is_some_and(|until| until <= now)
    }
}

/// What one `aurora:iocs` document means for the set.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Add the indicator, or replace the one of the same identity.
    Upsert(Box<Indicator>),
    /// Remove the indicator of this identity (revoked, or expired already).
    Remove(String),
}

/// Why a document was not taken into the set (the `reason` label of its metric).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// Not a valid IOC document, or a value that cannot be an indicator of its type.
    Invalid(String),
    /// A type this service does not look for.
    UnsupportedType,
    /// The set is full (`--max-iocs`).
    Limit,
}

impl Skipped {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::UnsupportedType => "unsupported_type",
            Self::Limit => "limit",
        }
    }
}

/// Reads one document of `aurora:iocs`.
pub fn read_document(data: &[u8], now: DateTime<Utc>) -> Result<Update, Skipped> {
    let ioc: Ioc = model::parse(data).map_err(|e| Skipped::Invalid(e.to_string()))?;
    let kind = Kind::of_type(&ioc.ioc_type).ok_or(Skipped::UnsupportedType)?;
    let needle = needle(kind, &ioc.value).map_err(Skipped::Invalid)?;
    let origin_site = match ioc.extra.get("origin_site") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(other) => {
            return Err(Skipped::Invalid(format!(
                "`origin_site` is not a site id: {other}"
            )))
        }
    };
    let revoked = match ioc.extra.get("revoked") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(Skipped::Invalid(format!(
                "`revoked` is not true or false: {other}"
            )))
        }
    };
    let severity = ioc
        .extra
        .get("severity")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Severity>().ok());
    let identity = format!(
        "{}|{}|{}",
        origin_site.as_deref().unwrap_or(""),
        needle.kind().as_str(),
        needle.value()
    );
    // What the set keeps of the document is read above: its other fields are not held.
    let ioc = Ioc {
        extra: Default::default(),
        ..ioc
    };
    let indicator = Indicator {
        identity,
        needle,
        ioc,
        origin_site,
        severity,
    };
    if revoked || indicator.is_expired(now) {
        return Ok(Update::Remove(indicator.identity));
    }
    Ok(Update::Upsert(Box::new(indicator)))
}

/// The needle of a value of `kind`, or why it cannot be one.
pub fn needle(kind: Kind, value: &str) -> Result<Needle, String> {
    let value = value.trim();
    match kind {
        Kind::Ip => ip(value)
            .map(Needle::Ip)
            .ok_or_else(|| format!("{value:?} is not an IP address (ranges are not supported)")),
        Kind::Sha256 => {
            let mut hash = [0u8; 32];
            match hex::decode_to_slice(value, &mut hash) {
                Ok(()) => Ok(Needle::Sha256(hash)),
                Err(_) => Err(format!("{value:?} is not 64 hex digits")),
            }
        }
        Kind::Domain => {
            if let Some(addr) = ip(value) {
                return Ok(Needle::Ip(addr));
            }
            let name = normalise_domain(value);
            let valid = name.len() <= 253
                && name.contains('.')
                && name.split('.').all(|label| !label.is_empty())
                && !name.contains(|c: char| c.is_whitespace() || c == '/' || c == ':');
            if valid {
                Ok(Needle::Domain(name.into()))
            } else {
                Err(format!(
                    "{value:?} is not a domain name of at least two labels"
                ))
            }
        }
    }
}

/// Lower case (ASCII), one trailing dot removed.
pub fn normalise_domain(name: &str) -> String {
    let mut out = String::new();
    normalise_domain_into(name, &mut out);
    out
}

/// [`normalise_domain`] into a buffer (cleared first), so that looking up every name of every
/// event does not allocate.
pub fn normalise_domain_into(name: &str, out: &mut String) {
    let name = name.trim();
    out.clear();
    out.push_str(name.strip_suffix('.').unwrap_or(name));
    out.make_ascii_lowercase();
}

/// An address, IPv4-mapped IPv6 as IPv4.
pub fn ip(value: &str) -> Option<IpAddr> {
    let addr: IpAddr = value.trim().parse().ok()?;
    Some(match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    })
}

/// The indicators held, by value and by identity.
#[derive(Debug)]
pub struct IocSet {
    domains: HashMap<Box<str>, Vec<Arc<Indicator>>, Hasher>,
    ips: HashMap<IpAddr, Vec<Arc<Indicator>>, Hasher>,
    hashes: HashMap<[u8; 32], Vec<Arc<Indicator>>, Hasher>,
    by_identity: HashMap<String, Needle, Hasher>,
    max: usize,
}

impl IocSet {
    pub fn new(max: usize) -> Self {
        Self {
            domains: HashMap::default(),
            ips: HashMap::default(),
            hashes: HashMap::default(),
            by_identity: HashMap::default(),
            max,
        }
    }

    /// Indicators held.
    pub fn len(&self) -> usize {
        self.by_identity.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_identity.is_empty()
    }

    /// Applies one document's update; `Err(Limit)` when a new indicator does not fit.
    pub fn apply(&mut self, update: Update, now: DateTime<Utc>) -> Result<(), Skipped> {
        match update {
            Update::Remove(identity) => {
                self.remove(&identity);
                Ok(())
            }
            Update::Upsert(indicator) => {
                let known = self.by_identity.contains_key(&indicator.identity);
                if !known && self.len() >= self.max {
                    self.sweep(now);
                    if self.len() >= self.max {
                        return Err(Skipped::Limit);
                    }
                }
                self.remove(&indicator.identity);
                self.by_identity
                    .insert(indicator.identity.clone(), indicator.needle.clone());
                let indicator: Arc<Indicator> = Arc::from(indicator);
                match &indicator.needle {
                    Needle::Domain(d) => self.domains.entry(d.clone()).or_default(),
                    Needle::Ip(ip) => self.ips.entry(*ip).or_default(),
                    Needle::Sha256(h) => self.hashes.entry(*h).or_default(),
                }
                .push(indicator.clone());
                Ok(())
            }
        }
    }

    fn remove(&mut self, identity: &str) {
        let Some(needle) = self.by_identity.remove(identity) else {
            return;
        };
        fn drop_from<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, Vec<Arc<Indicator>>, Hasher>,
            key: &K,
            identity: &str,
        ) {
            if let Some(held) = map.get_mut(key) {
                held.retain(|i| i.identity != identity);
                if held.is_empty() {
                    map.remove(key);
                }
            }
        }
        match &needle {
            Needle::Domain(d) => drop_from(&mut self.domains, d, identity),
            Needle::Ip(ip) => drop_from(&mut self.ips, ip, identity),
            Needle::Sha256(h) => drop_from(&mut self.hashes, h, identity),
        }
    }

    /// Removes the indicators whose `valid_until` has passed; how many.
    pub fn sweep(&mut self, now: DateTime<Utc>) -> usize {
        let expired: Vec<String> = self
            .domains
            .values()
            .chain(self.ips.values())
            .chain(self.hashes.values())
            .flatten()
            .filter(|i| i.is_expired(now))
            .map(|i| i.identity.clone())
            .collect();
        for identity in &expired {
            self.remove(identity);
        }
        expired.len()
    }

    /// The indicators of a needle (live or not: the caller checks with its own `now`).
    pub fn get(&self, needle: &Needle) -> &[Arc<Indicator>] {
        let held = match needle {
            Needle::Domain(d) => self.domains.get(d),
            Needle::Ip(ip) => self.ips.get(ip),
            Needle::Sha256(h) => self.hashes.get(h),
        };
        held.map(Vec::as_slice).unwrap_or(&[])
    }

    /// The indicators of an address.
    pub fn ip_matches(&self, addr: &IpAddr) -> &[Arc<Indicator>] {
        self.ips.get(addr).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The indicators of a SHA-256.
    pub fn sha256_matches(&self, hash: &[u8; 32]) -> &[Arc<Indicator>] {
        self.hashes.get(hash).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The indicators matching a host name: the name itself and every parent domain of two
    /// labels or more, one hash lookup each. `name` must be normalised ([`normalise_domain`]).
    pub fn domain_matches<'a>(&'a self, name: &str, out: &mut Vec<&'a Arc<Indicator>>) {
        if self.domains.is_empty() {
            return;
        }
        let mut rest = name;
        // The last label alone is never an indicator (two labels at least).
        while let Some(dot) = rest.find('.') {
            if let Some(held) = self.domains.get(rest) {
                out.extend(held);
            }
            rest = &rest[dot + 1..];
        }
    }

    /// Whether any indicator of `kind` is held (events without such values skip the lookup).
    pub fn has(&self, kind: Kind) -> bool {
        match kind {
            Kind::Domain => !self.domains.is_empty(),
            Kind::Ip => !self.ips.is_empty(),
            Kind::Sha256 => !self.hashes.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::Duration;

    fn now() -> DateTime<Utc> {
        "2026-06-01T12:00:00Z".parse().unwrap()
    }

    fn set(docs: &[&str]) -> IocSet {
        let mut set = IocSet::new(100);
        for doc in docs {
            let update = read_document(doc.as_bytes(), now()).unwrap();
            set.apply(update, now()).unwrap();
        }
        set
    }

    fn domain_hits(set: &IocSet, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        set.domain_matches(&normalise_domain(name), &mut out);
        out.iter().map(|i| i.identity.clone()).collect()
    }

    #[test]
    fn domains_match_by_label_suffix_case_and_trailing_dot_aside() {
        let s = set(&[r#"{"id":"d1","type":"domain","value":"Evil.COM."}"#]);
        assert_eq!(domain_hits(&s, "evil.com"), vec!["|domain|evil.com"]);
        assert_eq!(domain_hits(&s, "a.b.EVIL.com."), vec!["|domain|evil.com"]);
        assert!(domain_hits(&s, "notevil.com").is_empty());
        assert!(domain_hits(&s, "evil.com.au").is_empty());
        assert!(domain_hits(&s, "com").is_empty());
        assert!(domain_hits(&s, "evil").is_empty());
    }

    #[test]
    fn values_are_normalised_and_bad_ones_refused() {
        let n = |k, v| needle(k, v);
        assert_eq!(
            n(Kind::Ip, "2001:DB8::1"),
            n(Kind::Ip, "2001:db8:0:0:0:0:0:1")
        );
        assert_eq!(n(Kind::Ip, "::ffff:8.8.8.8"), n(Kind::Ip, "8.8.8.8"));
        assert_eq!(
            n(Kind::Domain, "8.8.8.8"),
            Ok(Needle::Ip("8.8.8.8".parse().unwrap()))
        );
        assert!(n(Kind::Ip, "10.0.0.0/8").is_err());
        assert!(n(Kind::Domain, "com").is_err());
        assert!(n(Kind::Domain, "a..b").is_err());
        assert!(n(Kind::Domain, "http://evil.com/x").is_err());
        assert!(n(Kind::Sha256, "abc").is_err());
        let upper = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(
            n(Kind::Sha256, upper).unwrap().value(),
            upper.to_ascii_lowercase()
        );
    }

    #[test]
    fn documents_are_read_or_skipped_with_a_reason() {
        let skip = |doc: &str| read_document(doc.as_bytes(), now()).unwrap_err();
        assert_eq!(
            skip(r#"{"type":"url","value":"http://x"}"#),
            Skipped::UnsupportedType
        );
        assert_eq!(skip("not json").reason(), "invalid");
        assert_eq!(skip(r#"{"type":"domain"}"#).reason(), "invalid");
        assert_eq!(
            skip(r#"{"type":"ipv4","value":"1.2.3"}"#).reason(),
            "invalid"
        );
        assert_eq!(
            skip(r#"{"type":"domain","value":"e.com","revoked":"yes"}"#).reason(),
            "invalid"
        );
        assert_eq!(
            skip(r#"{"type":"domain","value":"e.com","origin_site":5}"#).reason(),
            "invalid"
        );
        let Update::Upsert(i) = read_document(
            br#"{"type":"IPv4","value":"8.8.4.4","origin_site":"site-b","tlp":"red","severity":"critical","confidence":0.9}"#,
            now(),
        )
        .unwrap() else {
            panic!("not an upsert");
        };
        assert_eq!(i.identity, "site-b|ip|8.8.4.4");
        assert_eq!(i.origin_site.as_deref(), Some("site-b"));
        assert_eq!(i.tlp(), Some(Tlp::Red));
        assert_eq!(i.severity, Some(Severity::Critical));
    }

    #[test]
    fn revoked_and_expired_indicators_stop_matching() {
        let mut s = set(&[
            r#"{"id":"a","type":"domain","value":"evil.com"}"#,
            r#"{"id":"b","type":"domain","value":"evil.com","origin_site":"site-b"}"#,
            r#"{"id":"c","type":"sha256","value":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","valid_until":"2026-06-01T13:00:00Z"}"#,
        ]);
        let (local, shared) = ("|domain|evil.com", "site-b|domain|evil.com");
        assert_eq!(domain_hits(&s, "x.evil.com"), vec![local, shared]);
        // A revocation is a document of its own (another id, or none) about the same value.
        let revoke = read_document(
            br#"{"id":"a-revoked","type":"domain","value":"EVIL.com","revoked":true}"#,
            now(),
        )
        .unwrap();
        assert_eq!(revoke, Update::Remove(local.into()));
        s.apply(revoke, now()).unwrap();
        assert_eq!(domain_hits(&s, "x.evil.com"), vec![shared]);
        // A later document replaces the indicator: the newest id and validity hold.
        let later = read_document(
            br#"{"id":"b2","type":"domain","value":"evil.com","origin_site":"site-b","tlp":"amber"}"#,
            now(),
        );
        s.apply(later.unwrap(), now()).unwrap();
        let held = s.get(&Needle::Domain("evil.com".into()));
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].ioc.id.as_deref(), Some("b2"));
        // Expired already: removes; expiring later: stops matching, then swept.
        let gone = read_document(
            br#"{"id":"b3","type":"domain","value":"evil.com","origin_site":"site-b","valid_until":"2026-01-01T00:00:00Z"}"#,
            now(),
        );
        s.apply(gone.unwrap(), now()).unwrap();
        assert!(domain_hits(&s, "evil.com").is_empty());
        let hash = needle(
            Kind::Sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .unwrap();
        assert!(s.get(&hash)[0].is_live(now()));
        let later = now() + Duration::hours(2);
        assert!(!s.get(&hash)[0].is_live(later));
        assert_eq!(s.sweep(later), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn not_yet_valid_indicators_wait() {
        let s = set(&[
            r#"{"id":"f","type":"domain","value":"soon.example","valid_from":"2026-06-02T00:00:00Z"}"#,
        ]);
        let held = s.get(&Needle::Domain("soon.example".into()));
        assert!(!held[0].is_live(now()));
        assert!(held[0].is_live(now() + Duration::days(1)));
    }

    #[test]
    fn the_set_is_bounded_and_makes_room_from_expired_ones() {
        let mut s = IocSet::new(2);
        let doc = |id: &str, value: &str, until: &str| {
            read_document(
                format!(
                    r#"{{"id":"{id}","type":"domain","value":"{value}","valid_until":"{until}"}}"#
                )
                .as_bytes(),
                now(),
            )
            .unwrap()
        };
        s.apply(doc("1", "a.com", "2026-06-01T12:30:00Z"), now())
            .unwrap();
        s.apply(doc("2", "b.com", "2027-01-01T00:00:00Z"), now())
            .unwrap();
        assert_eq!(
            s.apply(doc("3", "c.com", "2027-01-01T00:00:00Z"), now()),
            Err(Skipped::Limit)
        );
        // Replacing a held one is always possible.
        s.apply(doc("2b", "b.com", "2028-01-01T00:00:00Z"), now())
            .unwrap();
        let later = now() + Duration::hours(1);
        s.apply(doc("3", "c.com", "2027-01-01T00:00:00Z"), later)
            .unwrap();
        assert_eq!(s.len(), 2);
    }
}
