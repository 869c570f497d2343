//! What may leave the site, decided per document: kinds switched on or off, a minimum alert
//! severity, nothing marked TLP:RED, nothing that came from another site (no loops, no
//! echoes). Unknown markings fail closed: a document whose TLP cannot be read stays home.

use aurora_core::model::{Severity, Tlp};
use aurora_core::names::FederatedKind;
use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

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
    ForeignOrigin,
}

impl Withheld {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KindDisabled => "kind_disabled",
            Self::BelowMinSeverity => "below_min_severity",
            Self::TlpRed => "tlp_red",
            Self::ForeignOrigin => "foreign_origin",
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
        match &probe.origin_site {
            None => {}
            Some(Value::String(origin)) if origin == &self.site_id => {}
            Some(Value::String(_)) => return Decision::Withhold(Withheld::ForeignOrigin),
            Some(_) => return Decision::Reject(format!("`{ORIGIN_SITE_FIELD}` is not a string")),
        }
        match marking(probe.tlp.as_ref()) {
            Ok(Some(Tlp::Red)) => return Decision::Withhold(Withheld::TlpRed),
            Ok(_) => {}
            Err(reason) => return Decision::Reject(reason),
        }
        let msg_id = message_id(&self.site_id, probe.id.as_ref(), data);
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
                    return strip_red_iocs(data, msg_id);
                }
            }
            FederatedKind::AgentResults | FederatedKind::Audit => {}
        }
        Decision::Export {
            payload: Bytes::copy_from_slice(data),
            msg_id,
            iocs_withheld: 0,
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

/// The alert without its IOCs marked TLP:RED (or marked unreadably).
fn strip_red_iocs(data: &[u8], msg_id: String) -> Decision {
    let mut doc: Map<String, Value> = match serde_json::from_slice(data) {
        Ok(doc) => doc,
        Err(e) => return Decision::Reject(format!("invalid JSON: {e}")),
    };
    let mut withheld = 0;
    if let Some(Value::Array(iocs)) = doc.get_mut("iocs") {
        let before = iocs.len();
        iocs.retain(may_leave);
        withheld = before - iocs.len();
    }
    Decision::Export {
        payload: Bytes::from(aurora_core::model::to_bytes(&doc)),
        msg_id,
        iocs_withheld: withheld,
    }
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

/// `<site>:<document id>`; without a usable `id` field, a SHA-256 of the document's bytes.
/// Deterministic, so a retry after a crash is deduplicated by JetStream and by the importer.
pub fn message_id(site_id: &str, id: Option<&Value>, data: &[u8]) -> String {
    let id = match id {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let id = match id {
        // A header value must stay one printable line.
        Some(id) if id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()) => id,
        Some(id) => format!("sha256:{}", hex::encode(Sha256::digest(id.as_bytes()))),
        None => format!("sha256:{}", hex::encode(Sha256::digest(data))),
    };
    format!("{site_id}:{id}")
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
        } = policy(Severity::Info).decide(FederatedKind::Alerts, ALERT.as_bytes())
        else {
            panic!("alert not exported");
        };
        assert_eq!(msg_id, "site-a:550e8400-e29b-41d4-a716-446655440000");
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
        assert_eq!(id_of(br#"{"id":42}"#), "site-a:42");
        let nasty = id_of(b"{\"id\":\"a\\r\\nNats-Msg-Id: b\"}");
        assert!(nasty.starts_with("site-a:sha256:"), "{nasty}");
        assert!(nasty.bytes().all(|b| b.is_ascii_graphic()));
    }
}
