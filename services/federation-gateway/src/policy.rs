//! What may leave the site, decided per document: kinds switched on or off, a minimum alert
//! severity, nothing marked TLP:RED, no imported document unless changed here (no loops, no
//! echoes: a change made here is a new revision, exported with its owner kept). Unknown
//! markings fail closed: a document whose TLP cannot be read stays home.

use aurora_core::model::{Severity, Tlp};
use aurora_core::names::FederatedKind;
use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::revision::{self, RevisionProbe, Stamp};

/// The header that carries the site a message was published by.
pub const ORIGIN_SITE_HEADER: &str = "Aurora-Origin-Site";

/// The document field an imported document carries its origin site in.
pub const ORIGIN_SITE_FIELD: &str = "origin_site";

/// The longest document id used as it is in a message id; longer ones are hashed.
const MAX_ID_LEN: usize = 128;

/// Why a document stays home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    KindDisabled,
    BelowMinSeverity,
    TlpRed,
    /// Another site's document that came before revisions were marked: never sent back.
    ForeignOrigin,
    /// An imported document no one changed here: every site had it from its publisher.
    Imported,
    /// A document whose origin no signature proved (a legacy peer's).
    UnverifiedOrigin,
}

impl Withheld {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KindDisabled => "kind_disabled",
            Self::BelowMinSeverity => "below_min_severity",
            Self::TlpRed => "tlp_red",
            Self::ForeignOrigin => "foreign_origin",
            Self::Imported => "imported",
            Self::UnverifiedOrigin => "unverified_origin",
        }
    }
}

/// What to do with one local entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Publish `payload` with this message id.
    Export {
        payload: Bytes,
        msg_id: String,
        /// IOCs marked TLP:RED (or unreadable) taken out of an alert before it left.
        iocs_withheld: usize,
        /// The document (`<owner site>:<id>`) and this revision of it.
        doc: String,
        stamp: Stamp,
        /// A change (not the document's first form): recorded in the site's revision state
        /// before it leaves.
        change: bool,
    },
    /// Acknowledge without publishing.
    Withhold(Withheld),
    /// Not a document this gateway can judge: dead-letter it with this reason.
    Reject(String),
}

/// The export policy of one site.
#[derive(Debug, Clone)]
pub struct Policy {
    site_id: String,
    enabled: [bool; 4],
    min_alert_severity: Severity,
}

fn kind_index(kind: FederatedKind) -> usize {
    match kind {
        FederatedKind::Alerts => 0,
        FederatedKind::Iocs => 1,
        FederatedKind::AgentResults => 2,
        FederatedKind::Audit => 3,
    }
}

impl Policy {
    pub fn new(
        site_id: &str,
        enabled: impl Fn(FederatedKind) -> bool,
        min_alert_severity: Severity,
    ) -> Self {
        let mut flags = [false; 4];
        for kind in FederatedKind::ALL {
            flags[kind_index(kind)] = enabled(kind);
        }
        Self {
            site_id: site_id.to_string(),
            enabled: flags,
            min_alert_severity,
        }
    }

    pub fn site_id(&self) -> &str {
        &self.site_id
    }

    pub fn exports(&self, kind: FederatedKind) -> bool {
        self.enabled[kind_index(kind)]
    }

    /// Decides about the `data` of one entry of the local stream of `kind`.
    ///
    /// Reads only the fields the policy needs (the rest is skipped, not built), and passes
    /// the bytes on as they are unless IOCs had to be taken out of an alert.
    pub fn decide(&self, kind: FederatedKind, data: &[u8]) -> Decision {
        if !self.exports(kind) {
            return Decision::Withhold(Withheld::KindDisabled);
        }
        if first_byte(data) != Some(b'{') {
            return match serde_json::from_slice::<serde::de::IgnoredAny>(data) {
                Ok(_) => Decision::Reject("document is not a JSON object".into()),
                Err(e) => Decision::Reject(format!("invalid JSON: {e}")),
            };
        }
        let probe: Probe = match serde_json::from_slice(data) {
            Ok(p) => p,
            Err(e) => return Decision::Reject(format!("invalid JSON: {e}")),
        };
        let revisions = probe.revisions();
        if revisions.unverified() {
            return Decision::Withhold(Withheld::UnverifiedOrigin);
        }
        let owner = match &probe.origin_site {
            None => self.site_id.as_str(),
            Some(Value::String(origin)) if origin == &self.site_id => origin,
            Some(Value::String(_)) if revisions.imported_revision.is_none() => {
                return Decision::Withhold(Withheld::ForeignOrigin)
            }
            Some(Value::String(origin)) => origin,
            Some(_) => return Decision::Reject(format!("`{ORIGIN_SITE_FIELD}` is not a string")),
        };
        if revisions.unchanged_import() {
            return Decision::Withhold(Withheld::Imported);
        }
        let revision = revisions.revision();
        let change = revisions.is_change();
        match marking(probe.tlp.as_ref()) {
            Ok(Some(Tlp::Red)) => return Decision::Withhold(Withheld::TlpRed),
            Ok(_) => {}
            Err(reason) => return Decision::Reject(reason),
        }
        let doc_id = document_id(probe.id.as_ref(), data);
        let doc = format!("{owner}:{doc_id}");
        match kind {
            FederatedKind::Iocs => {
                let doc: Value = match serde_json::from_slice(data) {
                    Ok(doc) => doc,
                    Err(e) => return Decision::Reject(format!("invalid JSON: {e}")),
                };
                if let Err(e) = aurora_core::model::from_value::<aurora_core::model::Ioc>(doc) {
                    return Decision::Reject(e.to_string());
                }
            }
            FederatedKind::Alerts => {
                let severity = match probe.severity.as_ref().and_then(Value::as_str) {
                    Some(s) => match s.parse::<Severity>() {
                        Ok(s) => s,
                        Err(e) => return Decision::Reject(format!("alert severity: {e}")),
                    },
                    None => return Decision::Reject("alert has no `severity`".into()),
                };
                if severity < self.min_alert_severity {
                    return Decision::Withhold(Withheld::BelowMinSeverity);
                }
                let leaks = match &probe.iocs {
                    Some(Value::Array(iocs)) => iocs.iter().any(|ioc| !may_leave(ioc)),
                    _ => false,
                };
                if leaks {
                    return match strip_red_iocs(data) {
                        Ok((payload, withheld)) => {
                            self.export(payload, withheld, doc, &doc_id, (revision, change))
                        }
                        Err(reason) => Decision::Reject(reason),
                    };
                }
            }
            FederatedKind::AgentResults | FederatedKind::Audit => {}
        }
        self.export(
            Bytes::copy_from_slice(data),
            0,
            doc,
            &doc_id,
            (revision, change),
        )
    }

    fn export(
        &self,
        payload: Bytes,
        iocs_withheld: usize,
        doc: String,
        doc_id: &str,
        (revision, change): (i64, bool),
    ) -> Decision {
        let hash = revision::content_hash(&payload);
        let msg_id = revision::message_id(&self.site_id, doc_id, revision, &hash);
        Decision::Export {
            payload,
            msg_id,
            iocs_withheld,
            doc,
            stamp: Stamp {
                revision,
                site: self.site_id.clone(),
                hash,
            },
            change,
        }
    }
}

/// The fields the policy reads; everything else is skipped unparsed.
#[derive(serde::Deserialize)]
struct Probe {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    origin_site: Option<Value>,
    #[serde(default)]
    tlp: Option<Value>,
    #[serde(default)]
    severity: Option<Value>,
    #[serde(default)]
    iocs: Option<Value>,
    #[serde(default)]
    updated_at: Option<Value>,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    created_at: Option<Value>,
    #[serde(default)]
    imported_revision: Option<Value>,
    #[serde(default)]
    origin_verified: Option<Value>,
}

impl Probe {
    fn revisions(&self) -> RevisionProbe {
        RevisionProbe {
            updated_at: self.updated_at.clone(),
            timestamp: self.timestamp.clone(),
            created_at: self.created_at.clone(),
            imported_revision: self.imported_revision.clone(),
            origin_verified: self.origin_verified.clone(),
        }
    }
}

fn first_byte(data: &[u8]) -> Option<u8> {
    data.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Whether an IOC inside an alert may leave: unmarked or marked below TLP:RED.
fn may_leave(ioc: &Value) -> bool {
    let tlp = ioc.as_object().and_then(|o| o.get("tlp"));
    matches!(
        marking(tlp),
        Ok(None | Some(Tlp::Clear | Tlp::Green | Tlp::Amber | Tlp::AmberStrict))
    )
}

/// The alert without its IOCs marked TLP:RED (or marked unreadably), and how many went.
fn strip_red_iocs(data: &[u8]) -> Result<(Bytes, usize), String> {
    let mut doc: Map<String, Value> =
        serde_json::from_slice(data).map_err(|e| format!("invalid JSON: {e}"))?;
    let mut withheld = 0;
    if let Some(Value::Array(iocs)) = doc.get_mut("iocs") {
        let before = iocs.len();
        iocs.retain(may_leave);
        withheld = before - iocs.len();
    }
    Ok((Bytes::from(aurora_core::model::to_bytes(&doc)), withheld))
}

/// The TLP marking of a document or IOC: `Ok(None)` when unmarked, `Err` when unreadable.
fn marking(value: Option<&Value>) -> Result<Option<Tlp>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Tlp::parse(s)
            .map(Some)
            .ok_or_else(|| format!("unknown TLP marking {s:?}: cannot tell whether it may leave")),
        Some(other) => Err(format!("TLP marking is not a string: {other}")),
    }
}

/// A document's id in message ids and the revision state: its `id`, or a SHA-256 of the
/// document's bytes when it has no usable one (then each content is a document of its own).
/// Deterministic, so a retry after a crash is deduplicated by JetStream and by the importer.
pub fn document_id(id: Option<&Value>, data: &[u8]) -> String {
    let id = match id {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match id {
        // A header value must stay one printable line.
        Some(id) if id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()) => id,
        Some(id) => format!("sha256:{}", hex::encode(Sha256::digest(id.as_bytes()))),
        None => format!("sha256:{}", hex::encode(Sha256::digest(data))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(min: Severity) -> Policy {
        Policy::new("site-a", |k| k != FederatedKind::Audit, min)
    }

    const ALERT: &str = r#"{"id":"550e8400-e29b-41d4-a716-446655440000","title":"C2","severity":"high","status":"new","source":"suricata","iocs":[{"type":"domain","value":"t1.evil.com","tlp":"TLP:RED"},{"type":"ipv4","value":"10.0.0.1","tlp":"green"}],"timestamp":"2024-01-15T10:30:00Z"}"#;

    #[test]
    fn alerts_leave_without_their_red_iocs() {
        let Decision::Export {
            payload,
            msg_id,
            iocs_withheld,
            doc,
            stamp,
            change,
        } = policy(Severity::Info).decide(FederatedKind::Alerts, ALERT.as_bytes())
        else {
            panic!("alert not exported");
        };
        assert_eq!(doc, "site-a:550e8400-e29b-41d4-a716-446655440000");
        assert_eq!(stamp.revision, 1_705_314_600_000_000);
        assert!(!change, "a first form, not a change");
        assert_eq!(stamp.hash, crate::revision::content_hash(&payload));
        assert_eq!(
            msg_id,
            format!(
                "site-a:550e8400-e29b-41d4-a716-446655440000@1705314600000000.{}",
                stamp.hash
            )
        );
        assert_eq!(iocs_withheld, 1);
        let out: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(out["iocs"].as_array().unwrap().len(), 1);
        assert_eq!(out["iocs"][0]["value"], "10.0.0.1");
        assert!(!String::from_utf8_lossy(&payload).contains("t1.evil.com"));
    }

    #[test]
    fn severity_threshold() {
        assert_eq!(
            policy(Severity::Critical).decide(FederatedKind::Alerts, ALERT.as_bytes()),
            Decision::Withhold(Withheld::BelowMinSeverity)
        );
        let bad = ALERT.replace("\"high\"", "\"apocalyptic\"");
        assert!(matches!(
            policy(Severity::Info).decide(FederatedKind::Alerts, bad.as_bytes()),
            Decision::Reject(_)
        ));
    }

    #[test]
    fn red_iocs_stay_home_and_unknown_markings_fail_closed() {
        let p = policy(Severity::Info);
        let red = br#"{"id":"i1","type":"domain","value":"evil.com","tlp":"TLP:RED"}"#;
        assert_eq!(
            p.decide(FederatedKind::Iocs, red),
            Decision::Withhold(Withheld::TlpRed)
        );
        let amber = br#"{"id":"i2","type":"domain","value":"evil.com","tlp":"amber"}"#;
        assert!(matches!(
            p.decide(FederatedKind::Iocs, amber),
            Decision::Export { .. }
        ));
        let purple = br#"{"id":"i3","type":"domain","value":"evil.com","tlp":"purple"}"#;
        assert!(matches!(
            p.decide(FederatedKind::Iocs, purple),
            Decision::Reject(_)
        ));
        let result_red = br#"{"id":"r1","tlp":"red"}"#;
        assert_eq!(
            p.decide(FederatedKind::AgentResults, result_red),
            Decision::Withhold(Withheld::TlpRed)
        );
    }

    #[test]
    fn no_echoes_and_switched_off_kinds() {
        let p = policy(Severity::Info);
        let foreign = br#"{"id":"x","origin_site":"site-b"}"#;
        assert_eq!(
            p.decide(FederatedKind::AgentResults, foreign),
            Decision::Withhold(Withheld::ForeignOrigin)
        );
        let own = br#"{"id":"x","origin_site":"site-a"}"#;
        assert!(matches!(
            p.decide(FederatedKind::AgentResults, own),
            Decision::Export { .. }
        ));
        // Imported, unchanged: not sent back; changed here (a new revision): exported, its
        // owner kept.
        let landed = br#"{"id":"x","origin_site":"site-b","timestamp":"2024-01-15T10:30:00Z","imported_revision":1705314600000000}"#;
        assert_eq!(
            p.decide(FederatedKind::AgentResults, landed),
            Decision::Withhold(Withheld::Imported)
        );
        let changed = br#"{"id":"x","origin_site":"site-b","timestamp":"2024-01-15T10:30:00Z","updated_at":"2024-01-15T11:00:00Z","imported_revision":1705314600000000}"#;
        let Decision::Export {
            doc,
            msg_id,
            change,
            ..
        } = p.decide(FederatedKind::AgentResults, changed)
        else {
            panic!("a change made here stays home");
        };
        assert!(change);
        assert_eq!(doc, "site-b:x");
        assert!(msg_id.starts_with("site-a:x@1705316400000000."), "{msg_id}");
        let legacy =
            br#"{"id":"x","origin_site":"legacy","origin_verified":false,"imported_revision":1}"#;
        assert_eq!(
            p.decide(FederatedKind::AgentResults, legacy),
            Decision::Withhold(Withheld::UnverifiedOrigin)
        );
        assert_eq!(
            p.decide(FederatedKind::Audit, b"{}"),
            Decision::Withhold(Withheld::KindDisabled)
        );
        assert!(matches!(
            p.decide(FederatedKind::AgentResults, b"[1]"),
            Decision::Reject(_)
        ));
        assert!(matches!(
            p.decide(FederatedKind::AgentResults, b"{nope"),
            Decision::Reject(_)
        ));
    }

    #[test]
    fn message_ids_are_deterministic_and_header_safe() {
        let p = policy(Severity::Info);
        let id_of = |data: &[u8]| match p.decide(FederatedKind::AgentResults, data) {
            Decision::Export { msg_id, .. } => msg_id,
            other => panic!("{other:?}"),
        };
        let anon = br#"{"agent":"hunter","summary":"x"}"#;
        assert_eq!(id_of(anon), id_of(anon));
        assert!(id_of(anon).starts_with("site-a:sha256:"));
        assert!(id_of(br#"{"id":42}"#).starts_with("site-a:42@0."));
        let nasty = id_of(b"{\"id\":\"a\\r\\nNats-Msg-Id: b\"}");
        assert!(nasty.starts_with("site-a:sha256:"), "{nasty}");
        assert!(nasty.bytes().all(|b| b.is_ascii_graphic()));
    }
}
