//! Revisions of federated documents (docs/contract.md#jetstream): one rule for every kind.
//!
//! A document's revision is the first of its `updated_at`, `timestamp` and `created_at` that
//! is an RFC 3339 instant, in microseconds since the Unix epoch; 0 when it has none. A writer
//! that changes a document (an alert's status, an IOC's TLP or confidence) sets `updated_at`:
//! that is what makes the change a new revision. Two revisions of one document are ordered
//! by revision, then by the site that published them, then by the SHA-256 of their payload,
//! so every site picks the same last writer.

use std::cmp::Ordering;

use chrono::DateTime;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The fields a revision is read from, in order.
pub const REVISION_FIELDS: [&str; 3] = ["updated_at", "timestamp", "created_at"];

/// The field an imported document carries the revision it was landed with; a local change
/// (a new `updated_at`) makes the document's revision differ from it.
pub const IMPORTED_REVISION_FIELD: &str = "imported_revision";

/// The field that marks a document whose origin no signature proves (legacy peers).
pub const ORIGIN_VERIFIED_FIELD: &str = "origin_verified";

/// Hex digits of the payload's SHA-256 kept in a message id and a stamp.
const HASH_LEN: usize = 16;

/// The fields of a document the revision rules read.
#[derive(Debug, Default, serde::Deserialize)]
pub struct RevisionProbe {
    #[serde(default)]
    pub updated_at: Option<Value>,
    #[serde(default)]
    pub timestamp: Option<Value>,
    #[serde(default)]
    pub created_at: Option<Value>,
    #[serde(default)]
    pub imported_revision: Option<Value>,
    #[serde(default)]
    pub origin_verified: Option<Value>,
}

impl RevisionProbe {
    /// The document's revision by the rule above.
    pub fn revision(&self) -> i64 {
        [&self.updated_at, &self.timestamp, &self.created_at]
            .into_iter()
            .find_map(|v| instant(v.as_ref()))
            .unwrap_or(0)
    }

    /// Whether the revision is a change (`updated_at`), not a document's first form: only a
    /// change can meet an older revision of its document later.
    pub fn is_change(&self) -> bool {
        instant(self.updated_at.as_ref()).is_some()
    }

    /// Whether this is an imported document no one has changed since it landed.
    pub fn unchanged_import(&self) -> bool {
        self.imported_revision.as_ref().and_then(Value::as_i64) == Some(self.revision())
    }

    /// Whether the document is marked as coming from an unverified origin.
    pub fn unverified(&self) -> bool {
        matches!(self.origin_verified, Some(Value::Bool(false)))
    }
}

fn instant(v: Option<&Value>) -> Option<i64> {
    let s = v?.as_str()?;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// The short SHA-256 of a payload, hex.
pub fn content_hash(payload: &[u8]) -> String {
    let digest = Sha256::digest(payload);
    hex::encode(&digest[..HASH_LEN / 2])
}

/// One revision of one document, as the last-writer rule orders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub revision: i64,
    /// The site that published this revision.
    pub site: String,
    pub hash: String,
}

impl Stamp {
    /// `revision|site|hash`: what the revision state holds.
    pub fn encode(&self) -> String {
        format!("{}|{}|{}", self.revision, self.site, self.hash)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '|');
        let revision = parts.next()?.parse().ok()?;
        let site = parts.next()?.to_string();
        let hash = parts.next()?.to_string();
        Some(Self {
            revision,
            site,
            hash,
        })
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.revision, &self.site, &self.hash).cmp(&(other.revision, &other.site, &other.hash))
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `<site>:<document id>@<revision>.<hash>`: each revision of a document, and each content
/// of one revision, crosses once.
pub fn message_id(site: &str, doc_id: &str, stamp_revision: i64, hash: &str) -> String {
    format!("{site}:{doc_id}@{stamp_revision}.{hash}")
}

/// The revision and hash a message id carries (`None` for ids of another form).
pub fn of_message_id(msg_id: &str) -> Option<(i64, &str)> {
    let (_, tail) = msg_id.rsplit_once('@')?;
    let (revision, hash) = tail.split_once('.')?;
    Some((revision.parse().ok()?, hash))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn probe(doc: &str) -> RevisionProbe {
        serde_json::from_str(doc).unwrap()
    }

    #[test]
    fn one_rule_for_every_kind() {
        let alert =
            probe(r#"{"timestamp":"2024-01-15T10:30:00Z","updated_at":"2024-01-15T10:31:00.5Z"}"#);
        assert_eq!(alert.revision(), 1_705_314_660_500_000);
        let created = probe(r#"{"timestamp":"2024-01-15T10:30:00Z"}"#);
        assert_eq!(created.revision(), 1_705_314_600_000_000);
        let ioc = probe(r#"{"created_at":"2024-01-15T10:30:00+01:00"}"#);
        assert_eq!(ioc.revision(), 1_705_311_000_000_000);
        assert_eq!(probe(r#"{"updated_at":"yesterday"}"#).revision(), 0);
        assert_eq!(probe("{}").revision(), 0);
    }

    #[test]
    fn stamps_order_by_revision_then_site_then_hash() {
        let s = |r, site: &str, h: &str| Stamp {
            revision: r,
            site: site.into(),
            hash: h.into(),
        };
        assert!(s(2, "a", "0") > s(1, "z", "f"));
        assert!(s(1, "b", "0") > s(1, "a", "f"));
        assert!(s(1, "a", "1") > s(1, "a", "0"));
        let x = s(-5, "site-a", "00ff");
        assert_eq!(Stamp::decode(&x.encode()), Some(x));
        assert_eq!(Stamp::decode("nope"), None);
    }

    #[test]
    fn message_ids_carry_the_revision() {
        let id = message_id("site-a", "x@y", 42, "abcd");
        assert_eq!(id, "site-a:x@y@42.abcd");
        assert_eq!(of_message_id(&id), Some((42, "abcd")));
        assert_eq!(of_message_id("site-a:old-form"), None);
    }

    #[test]
    fn an_import_is_unchanged_until_its_revision_moves() {
        let landed = probe(r#"{"timestamp":"1970-01-01T00:00:01Z","imported_revision":1000000}"#);
        assert!(landed.unchanged_import());
        let changed = probe(
            r#"{"timestamp":"1970-01-01T00:00:01Z","updated_at":"1970-01-01T00:00:02Z","imported_revision":1000000}"#,
        );
        assert!(!changed.unchanged_import());
    }
}
