//! The gateway's flags. The shared ones keep their `AURORA_<FLAG>` variables; each of the
//! gateway's own reads `AURORA_FEDERATION_GATEWAY_<FLAG>` (the rule of
//! `aurora_core::config::env_name`). Every kind and direction is on unless switched off with
//! a `--no-...` switch.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use aurora_core::config::{parse_duration, CommonArgs, NatsArgs};
use aurora_core::jetstream::{DeclaredDiscard, Limit, StreamLimits};
use aurora_core::model::Severity;
use aurora_core::names::FederatedKind;
use aurora_core::service::Flags;
use clap::Parser;

use crate::signing::{PeerKeys, SiteKey};
use crate::{FederationGateway, SERVICE};

/// federation-gateway: shares alerts, IOCs, agent results and audit between sites through
/// NATS JetStream.
#[derive(Debug, Clone, Parser)]
#[command(name = SERVICE, version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub nats: NatsArgs,

    /// Export nothing at all: this site only imports.
    #[arg(long)]
    pub no_export: bool,

    /// Keep local alerts home (they are exported unless this is set).
    #[arg(long)]
    pub no_export_alerts: bool,

    /// Keep local IOCs home (TLP:RED ones never leave anyway).
    #[arg(long)]
    pub no_export_iocs: bool,

    /// Keep local agent results home.
    #[arg(long)]
    pub no_export_agent_results: bool,

    /// Keep the local audit stream home.
    #[arg(long)]
    pub no_export_audit: bool,

    /// Alerts below this severity stay home (info, low, medium, high, critical).
    #[arg(long, default_value = "info")]
    pub min_alert_severity: Severity,

    /// Import nothing: this site only exports.
    #[arg(long)]
    pub no_import: bool,

    /// Most JetStream publish acks outstanding per exported stream.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub publish_window: u32,

    /// How long to wait for a JetStream publish ack before publishing again.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub publish_timeout: Duration,

    /// Entries read from a local stream at a time.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub export_batch: u32,

    /// A local entry pending this long on a replica is taken over by another.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub export_claim_idle: Duration,

    /// A local entry read this many times without being exported is dead-lettered.
    #[arg(long, default_value_t = 50)]
    pub export_max_deliveries: u64,

    /// How long JetStream waits for this site's ack before delivering a message again.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub ack_wait: Duration,

    /// Deliveries of one message before it goes to the dead-letter stream.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_deliver: i64,

    /// Delay of a redelivery after a failed import.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub nak_delay: Duration,

    /// Most messages delivered to this site and not yet acknowledged.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_ack_pending: i64,

    /// Messages pulled from JetStream and written to Redis at a time.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub import_batch: u32,

    /// Documents per kind whose latest revision the site remembers (the importer's
    /// idempotency and last-writer state; about 270 bytes each). Keep it at least the
    /// stream's message limit.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub revision_memory: u64,

    /// This site's Ed25519 signing key: a file holding its 32-byte seed in base64 (`aurora
    /// approval-key --out FILE` writes one). Every publish is signed with it.
    #[arg(long)]
    pub signing_key: Option<PathBuf>,

    /// The peer sites' public keys: a file of lines `<site> <public key base64>`, or a
    /// directory with a file per site (named after it) holding one or two keys (a mounted
    /// Secret). Set: only messages signed by a key of their origin site are imported.
    #[arg(long)]
    pub peer_keys: Option<PathBuf>,

    /// A signed message stored longer than this after its signature is a replay.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub max_signature_age: Duration,

    /// Import unsigned messages in the original design's format (only `Nats-Msg-Id`, no
    /// origin header) published on these subjects (comma-separated, e.g. `AURORA.alerts`),
    /// marked `origin_verified: false` and never exported again. Empty: refused.
    #[arg(long, value_delimiter = ',')]
    pub legacy_subjects: Vec<String>,

    /// The `origin_site` given to what legacy peers publish.
    #[arg(long, default_value = "legacy")]
    pub legacy_site_id: String,

    /// How often the consumer's lag is measured.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub lag_interval: Duration,

    /// Warn when the lag reaches this fraction of the stream's limits (messages or age).
    #[arg(long, default_value_t = 0.8)]
    pub lag_warn_ratio: f64,

    /// The federation stream's age limit (`7d`, `12h`), `unlimited`, or `keep` (not declared:
    /// the stream keeps what it has).
    #[arg(long, value_parser = aurora_core::jetstream::parse_age_limit, default_value = "7d")]
    pub jetstream_max_age: Limit<Duration>,

    /// The federation stream's size limit (`2GiB`, `512MiB`), `unlimited`, or `keep`.
    /// Unlimited by default, as the original design creates the stream: a size limit makes its
    /// own `add_stream` fail against this stream.
    #[arg(long, value_parser = aurora_core::jetstream::parse_bytes_limit, default_value = "unlimited")]
    pub jetstream_max_bytes: Limit<u64>,

    /// The federation stream's message limit, `unlimited`, or `keep`.
    #[arg(long, value_parser = aurora_core::jetstream::parse_count_limit, default_value = "100000")]
    pub jetstream_max_messages: Limit<u64>,

    /// What the federation stream does at a limit: `old` (the oldest messages go), `new` (new
    /// ones are refused), or `keep`.
    #[arg(long, value_parser = aurora_core::jetstream::parse_discard, default_value = "old")]
    pub jetstream_discard: DeclaredDiscard,
}

impl Args {
    /// Whether this kind may leave the site (when the site exports at all).
    pub fn exports(&self, kind: FederatedKind) -> bool {
        !match kind {
            FederatedKind::Alerts => self.no_export_alerts,
            FederatedKind::Iocs => self.no_export_iocs,
            FederatedKind::AgentResults => self.no_export_agent_results,
            FederatedKind::Audit => self.no_export_audit,
        }
    }

    /// The federation stream's limits as declared by the `--jetstream-*` flags.
    pub fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            max_age: self.jetstream_max_age,
            max_bytes: self.jetstream_max_bytes,
            max_messages: self.jetstream_max_messages,
            discard: self.jetstream_discard,
        }
    }

    /// Whether the site exports at all.
    pub fn exporting(&self) -> bool {
        !self.no_export
    }

    /// Whether the site imports at all.
    pub fn importing(&self) -> bool {
        !self.no_import
    }

    /// The checks clap cannot make.
    pub fn check(&self) -> anyhow::Result<()> {
        let site = &self.common.site_id;
        if !valid_site_id(site) {
            bail!(
                "invalid --site-id {site:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'"
            );
        }
        if !(self.lag_warn_ratio.is_finite() && self.lag_warn_ratio > 0.0) {
            bail!(
                "invalid --lag-warn-ratio {}: a fraction above 0 (0.8 warns at 80% of the stream's limits)",
                self.lag_warn_ratio
            );
        }
        if !valid_site_id(&self.legacy_site_id) || self.legacy_site_id == *site {
            bail!(
                "invalid --legacy-site-id {:?}: a site id (1 to 64 of A-Z, a-z, 0-9, '_', '-') other than this site's",
                self.legacy_site_id
            );
        }
        Ok(())
    }

    /// The signing key and the peers' keys, read from their files.
    pub fn keys(&self) -> anyhow::Result<(Option<SiteKey>, Option<PeerKeys>)> {
        let own = match &self.signing_key {
            Some(path) => Some(SiteKey::read(path).with_context(|| "--signing-key")?),
            None => None,
        };
        let peers = match &self.peer_keys {
            Some(path) => Some(PeerKeys::load(path).with_context(|| "--peer-keys")?),
            None => None,
        };
        Ok((own, peers))
    }
}

/// A site id is part of message ids, headers and the consumer's name: keep it plain, so two
/// sites never map to one consumer.
pub fn valid_site_id(site: &str) -> bool {
    (1..=64).contains(&site.len())
        && site
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Flags for Args {
    type Service = FederationGateway;

    const RENAMED_ENV: &'static [(&'static str, &'static str)] = &[
        // The on/off flags became `--no-...` switches: the new variable says the opposite.
        (
            "AURORA_FEDERATION_EXPORT",
            "AURORA_FEDERATION_GATEWAY_NO_EXPORT",
        ),
        (
            "AURORA_FEDERATION_EXPORT_ALERTS",
            "AURORA_FEDERATION_GATEWAY_NO_EXPORT_ALERTS",
        ),
        (
            "AURORA_FEDERATION_EXPORT_IOCS",
            "AURORA_FEDERATION_GATEWAY_NO_EXPORT_IOCS",
        ),
        (
            "AURORA_FEDERATION_EXPORT_AGENT_RESULTS",
            "AURORA_FEDERATION_GATEWAY_NO_EXPORT_AGENT_RESULTS",
        ),
        (
            "AURORA_FEDERATION_EXPORT_AUDIT",
            "AURORA_FEDERATION_GATEWAY_NO_EXPORT_AUDIT",
        ),
        (
            "AURORA_FEDERATION_IMPORT",
            "AURORA_FEDERATION_GATEWAY_NO_IMPORT",
        ),
        (
            "AURORA_FEDERATION_MIN_ALERT_SEVERITY",
            "AURORA_FEDERATION_GATEWAY_MIN_ALERT_SEVERITY",
        ),
        (
            "AURORA_FEDERATION_PUBLISH_WINDOW",
            "AURORA_FEDERATION_GATEWAY_PUBLISH_WINDOW",
        ),
        (
            "AURORA_FEDERATION_PUBLISH_TIMEOUT",
            "AURORA_FEDERATION_GATEWAY_PUBLISH_TIMEOUT",
        ),
        (
            "AURORA_FEDERATION_EXPORT_BATCH",
            "AURORA_FEDERATION_GATEWAY_EXPORT_BATCH",
        ),
        (
            "AURORA_FEDERATION_EXPORT_CLAIM_IDLE",
            "AURORA_FEDERATION_GATEWAY_EXPORT_CLAIM_IDLE",
        ),
        (
            "AURORA_FEDERATION_EXPORT_MAX_DELIVERIES",
            "AURORA_FEDERATION_GATEWAY_EXPORT_MAX_DELIVERIES",
        ),
        (
            "AURORA_FEDERATION_ACK_WAIT",
            "AURORA_FEDERATION_GATEWAY_ACK_WAIT",
        ),
        (
            "AURORA_FEDERATION_MAX_DELIVER",
            "AURORA_FEDERATION_GATEWAY_MAX_DELIVER",
        ),
        (
            "AURORA_FEDERATION_NAK_DELAY",
            "AURORA_FEDERATION_GATEWAY_NAK_DELAY",
        ),
        (
            "AURORA_FEDERATION_MAX_ACK_PENDING",
            "AURORA_FEDERATION_GATEWAY_MAX_ACK_PENDING",
        ),
        (
            "AURORA_FEDERATION_IMPORT_BATCH",
            "AURORA_FEDERATION_GATEWAY_IMPORT_BATCH",
        ),
        (
            "AURORA_FEDERATION_LAG_INTERVAL",
            "AURORA_FEDERATION_GATEWAY_LAG_INTERVAL",
        ),
        (
            "AURORA_FEDERATION_LAG_WARN_RATIO",
            "AURORA_FEDERATION_GATEWAY_LAG_WARN_RATIO",
        ),
    ];

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn into_service(self) -> anyhow::Result<FederationGateway> {
        FederationGateway::new(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aurora_core::config::{command, env_name, parse_args, rule_violations};

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        parse_args::<Args>(argv)
    }

    #[test]
    fn defaults_and_policy_flags() {
        let args = parse(&[]).unwrap();
        assert!(FederatedKind::ALL.iter().all(|k| args.exports(*k)));
        assert!(args.exporting() && args.importing());
        assert_eq!(args.publish_window, 256);
        assert_eq!(args.nak_delay, Duration::from_secs(5));
        assert_eq!(args.min_alert_severity, Severity::Info);
        let args = parse(&["--no-export-audit", "--min-alert-severity", "HIGH"]).unwrap();
        assert!(!args.exports(FederatedKind::Audit));
        assert!(args.exports(FederatedKind::Alerts));
        assert_eq!(args.min_alert_severity, Severity::High);
        assert!(parse(&["--publish-window", "0"]).is_err());
        let args = parse(&["--no-export", "--no-import"]).unwrap();
        assert!(!args.exporting() && !args.importing());
        assert!(
            parse(&["--no-export", "false"]).is_err(),
            "a switch takes no value"
        );
    }

    #[test]
    fn the_flags_keep_the_configuration_rule() {
        let violations = rule_violations::<Args>();
        assert!(violations.is_empty(), "{violations:?}");
        // Every flag of the gateway's own had an old variable, but those added since.
        const ADDED: &[&str] = &[
            "jetstream-max-age",
            "jetstream-max-bytes",
            "jetstream-max-messages",
            "jetstream-discard",
            "revision-memory",
            "signing-key",
            "peer-keys",
            "max-signature-age",
            "legacy-subjects",
            "legacy-site-id",
        ];
        let cmd = command::<Args>(SERVICE);
        for arg in cmd.get_arguments() {
            let (Some(long), Some(env)) = (arg.get_long(), arg.get_env().and_then(|e| e.to_str()))
            else {
                continue;
            };
            if env == env_name(SERVICE, long) && !ADDED.contains(&long) {
                assert!(
                    Args::RENAMED_ENV.iter().any(|(_, new)| *new == env),
                    "{env} has no old name listed"
                );
            }
        }
    }

    #[test]
    fn stream_limits_default_to_the_contract_and_can_be_left_alone() {
        use async_nats::jetstream::stream::DiscardPolicy;
        use aurora_core::jetstream::FEDERATION_LIMITS;
        // The contract's, but for the size: unlimited, as the design creates the stream.
        let defaults = parse(&[]).unwrap().stream_limits();
        assert_eq!(
            defaults,
            StreamLimits {
                max_bytes: Limit::Unlimited,
                ..FEDERATION_LIMITS
            }
        );
        let args = parse(&[
            "--jetstream-max-age",
            "30d",
            "--jetstream-max-bytes",
            "keep",
            "--jetstream-max-messages",
            "unlimited",
            "--jetstream-discard",
            "new",
        ])
        .unwrap();
        let limits = args.stream_limits();
        assert_eq!(limits.max_age, Limit::At(Duration::from_secs(30 * 86_400)));
        assert_eq!(limits.max_bytes, Limit::Keep);
        assert_eq!(limits.max_messages, Limit::Unlimited);
        assert_eq!(limits.discard, Some(DiscardPolicy::New));
        assert!(parse(&["--jetstream-max-bytes", "2GB"]).is_err());
        assert!(parse(&["--jetstream-discard", "oldest"]).is_err());
    }

    #[test]
    fn checks_refuse_what_clap_cannot() {
        let ok = parse(&["--site-id", "site-a"]).unwrap();
        assert!(ok.check().is_ok());
        let bad = parse(&["--site-id", "site a"]).unwrap();
        assert!(bad.check().is_err());
        let bad = parse(&["--lag-warn-ratio", "0"]).unwrap();
        assert!(bad.check().is_err());
    }
}
