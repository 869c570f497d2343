//! Every name of the product (Redis keys, MQTT topics, NATS streams and subjects), built from
//! one namespace so that tenants and tests can share one Redis, one broker and one NATS.
//!
//! With the default namespace `aurora` the names are exactly those of docs/contract.md#names. Any other
//! namespace `ns` gives `ns:…` Redis keys, `ns/…` MQTT topics, the JetStream stream `NS` with
//! subjects `NS.…`, and a Suricata stream `NS_SURICATA` with subjects `ns.suricata.…` (the
//! default `suricata` / `suricata.*` cannot be shared by two namespaces on one NATS).

use std::fmt;

/// The namespace every service runs in unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "aurora";

/// A namespace that is not safe to build names from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid namespace {0:?}: use 1 to 32 characters of a-z, 0-9, '_' or '-', starting with a letter")]
pub struct InvalidNamespace(pub String);

/// What a device publishes, the last level of its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceTopicKind {
    Telemetry,
    Alerts,
    Attestation,
    /// A device's answer to a command: `{"command_id", "outcome": "done" | "failed", "detail"?}`.
    Receipt,
}

impl DeviceTopicKind {
    pub const ALL: [DeviceTopicKind; 4] = [
        Self::Telemetry,
        Self::Alerts,
        Self::Attestation,
        Self::Receipt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Telemetry => "telemetry",
            Self::Alerts => "alerts",
            Self::Attestation => "attestation",
            Self::Receipt => "receipt",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for DeviceTopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The four kinds of document that sites share through JetStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FederatedKind {
    Alerts,
    Iocs,
    AgentResults,
    Audit,
}

impl FederatedKind {
    pub const ALL: [FederatedKind; 4] = [Self::Alerts, Self::Iocs, Self::AgentResults, Self::Audit];

    /// The last token of its JetStream subject.
    pub fn subject_token(self) -> &'static str {
        match self {
            Self::Alerts => "alerts",
            Self::Iocs => "ioc_sharing",
            Self::AgentResults => "agent_results",
            Self::Audit => "audit",
        }
    }

    /// The last part of its local Redis stream key.
    pub fn stream_suffix(self) -> &'static str {
        match self {
            Self::Alerts => "alerts",
            Self::Iocs => "iocs",
            Self::AgentResults => "agent_results",
            Self::Audit => "audit",
        }
    }

    pub fn from_subject_token(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.subject_token() == token)
    }
}

/// The WebSocket channels of ws-gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Alerts,
    AgentThoughts,
    Approvals,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Self::Alerts, Self::AgentThoughts, Self::Approvals];

    /// The HTTP path clients connect to.
    pub fn path(self) -> &'static str {
        match self {
            Self::Alerts => "/api/v1/ws/alerts",
            Self::AgentThoughts => "/api/v1/ws/agent-thoughts",
            Self::Approvals => "/api/v1/ws/approvals",
        }
    }

    /// The permission a token needs to open it.
    pub fn permission(self) -> crate::auth::Permission {
        use crate::auth::Permission;
        match self {
            Self::Alerts => Permission::WsAlerts,
            Self::AgentThoughts => Permission::WsAgentThoughts,
            Self::Approvals => Permission::ApprovalsManage,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alerts => "alerts",
            Self::AgentThoughts => "agent-thoughts",
            Self::Approvals => "approvals",
        }
    }
}

/// The names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    ns: String,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            ns: DEFAULT_NAMESPACE.to_string(),
        }
    }
}

impl Names {
    pub fn new(namespace: &str) -> Result<Self, InvalidNamespace> {
        let valid = (1..=32).contains(&namespace.len())
            && namespace.starts_with(|c: char| c.is_ascii_lowercase())
            && namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if valid {
            Ok(Self {
                ns: namespace.to_string(),
            })
        } else {
            Err(InvalidNamespace(namespace.to_string()))
        }
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn is_default(&self) -> bool {
        self.ns == DEFAULT_NAMESPACE
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.ns)
    }

    // ---- Redis streams of the site bus ----

    pub fn alerts(&self) -> String {
        self.key("alerts")
    }
    pub fn audit(&self) -> String {
        self.key("audit")
    }
    pub fn approvals(&self) -> String {
        self.key("approvals")
    }
    pub fn iocs(&self) -> String {
        self.key("iocs")
    }
    pub fn agent_results(&self) -> String {
        self.key("agent_results")
    }
    /// The local stream of one federated kind.
    pub fn federated_stream(&self, kind: FederatedKind) -> String {
        self.key(kind.stream_suffix())
    }
    /// The stream behind a WebSocket channel.
    pub fn channel_stream(&self, channel: Channel) -> String {
        match channel {
            Channel::Alerts => self.alerts(),
            Channel::AgentThoughts => self.audit(),
            Channel::Approvals => self.approvals(),
        }
    }
    /// The stream a device message of this kind is written to.
    pub fn cps_stream(&self, kind: DeviceTopicKind) -> String {
        self.key(&format!("cps:{kind}"))
    }
    pub fn cps_telemetry(&self) -> String {
        self.cps_stream(DeviceTopicKind::Telemetry)
    }
    pub fn cps_alerts(&self) -> String {
        self.cps_stream(DeviceTopicKind::Alerts)
    }
    pub fn cps_attestation(&self) -> String {
        self.cps_stream(DeviceTopicKind::Attestation)
    }
    pub fn cps_receipts(&self) -> String {
        self.cps_stream(DeviceTopicKind::Receipt)
    }
    pub fn cps_registrations(&self) -> String {
        self.key("cps:registrations")
    }
    pub fn cps_deadletter(&self) -> String {
        self.key("cps:deadletter")
    }
    pub fn cps_commands(&self) -> String {
        self.key("cps:commands")
    }
    pub fn cps_command_status(&self) -> String {
        self.key("cps:command_status")
    }
    pub fn cps_devices(&self) -> String {
        self.key("cps:devices")
    }
    /// Where the federation gateway puts what it could not import.
    pub fn federation_deadletter(&self) -> String {
        self.key("federation:deadletter")
    }
    /// Where a service puts bus entries it gave up on (delivered too many times, unreadable).
    pub fn deadletter(&self, service: &str) -> String {
        self.key(&format!("{service}:deadletter"))
    }
    /// A key of a service's own state (idempotency keys, locks, cursors).
    pub fn state_key(&self, service: &str, what: &str) -> String {
        self.key(&format!("{service}:{what}"))
    }

    // ---- Suricata input (Redis lists) ----

    /// The list Suricata's redis output pushes to (`suricata` in the default namespace).
    pub fn suricata_list(&self) -> String {
        if self.is_default() {
            "suricata".to_string()
        } else {
            self.key("suricata")
        }
    }
    /// The processing list of one eve-ingest consumer (the reliable-queue pattern).
    pub fn eve_processing_list(&self, consumer: &str) -> String {
        self.key(&format!("eve:processing:{consumer}"))
    }
    /// Where eve-ingest puts lines it cannot read.
    pub fn eve_deadletter(&self) -> String {
        self.key("eve:deadletter")
    }

    // ---- MQTT ----

    /// The subscription filter of one device message kind: `aurora/sensors/+/telemetry`.
    pub fn mqtt_sensor_filter(&self, kind: DeviceTopicKind) -> String {
        format!("{}/sensors/+/{kind}", self.ns)
    }
    /// The topic a device publishes on.
    pub fn mqtt_sensor_topic(&self, device_id: &str, kind: DeviceTopicKind) -> String {
        format!("{}/sensors/{device_id}/{kind}", self.ns)
    }
    /// The topic a device receives its commands on.
    pub fn mqtt_command_topic(&self, device_id: &str) -> String {
        format!("{}/command/{device_id}/action", self.ns)
    }
    /// Splits a device topic into device id and kind; `None` when it is not one of ours.
    pub fn parse_sensor_topic<'t>(&self, topic: &'t str) -> Option<(&'t str, DeviceTopicKind)> {
        let rest = topic
            .strip_prefix(self.ns.as_str())?
            .strip_prefix("/sensors/")?;
        let (device, kind) = rest.split_once('/')?;
        Some((device, DeviceTopicKind::parse(kind)?))
    }

    // ---- NATS JetStream ----

    /// The federation stream: `AURORA`.
    pub fn nats_stream(&self) -> String {
        self.ns.to_ascii_uppercase()
    }
    /// The subject of one federated kind: `AURORA.alerts`.
    pub fn nats_subject(&self, kind: FederatedKind) -> String {
        format!("{}.{}", self.nats_stream(), kind.subject_token())
    }
    /// All subjects of the federation stream.
    pub fn nats_subjects(&self) -> Vec<String> {
        FederatedKind::ALL
            .into_iter()
            .map(|k| self.nats_subject(k))
            .collect()
    }
    /// The stream Suricata events go to: `suricata`.
    pub fn suricata_stream(&self) -> String {
        if self.is_default() {
            "suricata".to_string()
        } else {
            format!("{}_SURICATA", self.ns.to_ascii_uppercase())
        }
    }
    /// The subject prefix of Suricata events: `suricata`.
    pub fn suricata_subject_prefix(&self) -> String {
        if self.is_default() {
            "suricata".to_string()
        } else {
            format!("{}.suricata", self.ns)
        }
    }
    /// The subject of one Suricata event type; the type is made a safe subject token.
    pub fn suricata_subject(&self, event_type: &str) -> String {
        format!(
            "{}.{}",
            self.suricata_subject_prefix(),
            subject_token(event_type)
        )
    }
    /// The wildcard of every Suricata subject: `suricata.*`.
    pub fn suricata_subjects(&self) -> String {
        format!("{}.*", self.suricata_subject_prefix())
    }
    /// Where a push consumer of the Suricata stream delivers one event type: `stats.suricata`
    /// (the design's `stats` consumer), `ns.stats.suricata` in namespace `ns`; never one of
    /// the stream's own subjects.
    pub fn suricata_delivery_subject(&self, event_type: &str) -> String {
        let subject = format!("{}.suricata", subject_token(event_type));
        if self.is_default() {
            subject
        } else {
            format!("{}.{subject}", self.ns)
        }
    }
    /// The durable consumer of one site on the federation stream: the site id itself (`site-a`
    /// gets `site-a`). A site id is already `[A-Za-z0-9_-]{1,64}`, which is a valid durable
    /// name and keeps two sites apart; anything else is made one with [`subject_token`].
    pub fn federation_consumer(&self, site_id: &str) -> String {
        subject_token(site_id)
    }
    /// Where the loss ledger keeps what a JetStream stream's limits dropped before a consumer
    /// took it (`aurora_core::ledger`): `aurora:ledger:jetstream:AURORA`.
    pub fn ledger_jetstream(&self, stream: &str) -> String {
        self.key(&format!("ledger:jetstream:{stream}"))
    }
    /// Where the loss ledger keeps what the MQTT broker says it dropped by its queue limits
    /// (`aurora_core::ledger::record_broker_dropped`): `aurora:ledger:mqtt`.
    pub fn ledger_mqtt(&self) -> String {
        self.key("ledger:mqtt")
    }
}

/// Makes any string a single safe NATS subject token: characters outside
/// `[A-Za-z0-9_-]` become `_`; an empty string becomes `_`; at most 64 characters.
pub fn subject_token(raw: &str) -> String {
    let token: String = raw
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_string()
    } else {
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_those_of_the_spec() {
        let n = Names::default();
        assert_eq!(n.alerts(), "aurora:alerts");
        assert_eq!(n.audit(), "aurora:audit");
        assert_eq!(n.approvals(), "aurora:approvals");
        assert_eq!(n.cps_telemetry(), "aurora:cps:telemetry");
        assert_eq!(n.cps_alerts(), "aurora:cps:alerts");
        assert_eq!(n.cps_attestation(), "aurora:cps:attestation");
        assert_eq!(n.cps_registrations(), "aurora:cps:registrations");
        assert_eq!(n.cps_deadletter(), "aurora:cps:deadletter");
        assert_eq!(n.cps_command_status(), "aurora:cps:command_status");
        assert_eq!(n.cps_commands(), "aurora:cps:commands");
        assert_eq!(n.cps_devices(), "aurora:cps:devices");
        assert_eq!(
            n.mqtt_sensor_filter(DeviceTopicKind::Attestation),
            "aurora/sensors/+/attestation"
        );
        assert_eq!(n.mqtt_command_topic("d1"), "aurora/command/d1/action");
        assert_eq!(n.nats_stream(), "AURORA");
        assert_eq!(
            n.nats_subjects(),
            vec![
                "AURORA.alerts",
                "AURORA.ioc_sharing",
                "AURORA.agent_results",
                "AURORA.audit"
            ]
        );
        assert_eq!(n.suricata_stream(), "suricata");
        assert_eq!(n.suricata_subjects(), "suricata.*");
        assert_eq!(n.suricata_subject("dns"), "suricata.dns");
        assert_eq!(n.suricata_list(), "suricata");
        assert_eq!(n.suricata_delivery_subject("stats"), "stats.suricata");
    }

    #[test]
    fn other_namespaces_do_not_collide() {
        let n = Names::new("t1").expect("valid");
        assert_eq!(n.alerts(), "t1:alerts");
        assert_eq!(n.nats_subject(FederatedKind::Iocs), "T1.ioc_sharing");
        assert_eq!(n.suricata_stream(), "T1_SURICATA");
        assert_eq!(n.suricata_subject("tls"), "t1.suricata.tls");
        assert_eq!(n.suricata_delivery_subject("stats"), "t1.stats.suricata");
        assert_eq!(
            n.mqtt_sensor_topic("x", DeviceTopicKind::Alerts),
            "t1/sensors/x/alerts"
        );
    }

    #[test]
    fn bad_namespaces_are_refused() {
        for bad in ["", "A", "a.b", "a b", "1a", "a*", &"a".repeat(33)] {
            assert!(Names::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sensor_topics_parse() {
        let n = Names::default();
        assert_eq!(
            n.parse_sensor_topic("aurora/sensors/dev-1/telemetry"),
            Some(("dev-1", DeviceTopicKind::Telemetry))
        );
        assert_eq!(n.parse_sensor_topic("aurora/sensors/dev-1/other"), None);
        assert_eq!(n.parse_sensor_topic("other/sensors/dev-1/alerts"), None);
        assert_eq!(
            n.parse_sensor_topic("aurora/sensors/a/b/alerts"),
            None,
            "a device id never holds a slash"
        );
    }

    #[test]
    fn a_site_consumer_is_named_after_the_site() {
        let n = Names::default();
        assert_eq!(n.federation_consumer("site-a"), "site-a");
        assert_eq!(n.federation_consumer("eu_1"), "eu_1");
        assert_ne!(
            n.federation_consumer("a"),
            n.federation_consumer("site-a"),
            "two sites never share a consumer"
        );
        assert_eq!(
            Names::new("t1")
                .expect("valid")
                .federation_consumer("site-b"),
            "site-b",
            "the stream is the namespace's, the consumer is the site's"
        );
        // Durable names must not hold `.`, `*`, `>`, white space or path separators.
        let long = "x".repeat(80);
        for raw in ["a.b", "a*b>c", "a b", "a/b\\c", "", long.as_str()] {
            let name = n.federation_consumer(raw);
            assert!(
                (1..=64).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{raw:?} -> {name:?}"
            );
        }
    }

    #[test]
    fn subject_tokens_are_safe() {
        assert_eq!(subject_token("dns"), "dns");
        assert_eq!(subject_token("a.b*>c d"), "a_b__c_d");
        assert_eq!(subject_token(""), "_");
    }
}
