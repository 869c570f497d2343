//! The gateway's flags. Every flag has an `AURORA_*` environment variable.

use std::time::Duration;

use aurora_core::config::{parse_duration, CommonArgs, NatsArgs};
use aurora_core::model::Severity;
use aurora_core::names::FederatedKind;
use clap::{ArgAction, Parser};

/// The ops port of this service unless `--ops-addr` says otherwise.
pub const DEFAULT_OPS_PORT: u16 = 9104;

/// federation-gateway: shares alerts, IOCs, agent results and audit between sites through
/// NATS JetStream.
#[derive(Debug, Clone, Parser)]
#[command(name = "federation-gateway", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub nats: NatsArgs,

    /// Export anything at all (off: this site only imports).
    #[arg(long, env = "AURORA_FEDERATION_EXPORT", default_value_t = true, action = ArgAction::Set)]
    pub export: bool,

    /// Export local alerts to other sites.
    #[arg(long, env = "AURORA_FEDERATION_EXPORT_ALERTS", default_value_t = true, action = ArgAction::Set)]
    pub export_alerts: bool,

    /// Export local IOCs to other sites (TLP:RED ones never leave).
    #[arg(long, env = "AURORA_FEDERATION_EXPORT_IOCS", default_value_t = true, action = ArgAction::Set)]
    pub export_iocs: bool,

    /// Export local agent results to other sites.
    #[arg(long, env = "AURORA_FEDERATION_EXPORT_AGENT_RESULTS", default_value_t = true, action = ArgAction::Set)]
    pub export_agent_results: bool,

    /// Export the local audit stream to other sites.
    #[arg(long, env = "AURORA_FEDERATION_EXPORT_AUDIT", default_value_t = true, action = ArgAction::Set)]
    pub export_audit: bool,

    /// Alerts below this severity stay home (info, low, medium, high, critical).
    #[arg(
        long,
        env = "AURORA_FEDERATION_MIN_ALERT_SEVERITY",
        default_value = "info"
    )]
    pub min_alert_severity: Severity,

    /// Import what other sites publish (off: this site only exports).
    #[arg(long, env = "AURORA_FEDERATION_IMPORT", default_value_t = true, action = ArgAction::Set)]
    pub import: bool,

    /// Most JetStream publish acks outstanding per exported stream.
    #[arg(long, env = "AURORA_FEDERATION_PUBLISH_WINDOW", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub publish_window: u32,

    /// How long to wait for a JetStream publish ack before publishing again.
    #[arg(long, env = "AURORA_FEDERATION_PUBLISH_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub publish_timeout: Duration,

    /// Entries read from a local stream at a time.
    #[arg(long, env = "AURORA_FEDERATION_EXPORT_BATCH", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub export_batch: u32,

    /// A local entry pending this long on a replica is taken over by another.
    #[arg(long, env = "AURORA_FEDERATION_EXPORT_CLAIM_IDLE", value_parser = parse_duration, default_value = "60s")]
    pub export_claim_idle: Duration,

    /// A local entry read this many times without being exported is dead-lettered.
    #[arg(
        long,
        env = "AURORA_FEDERATION_EXPORT_MAX_DELIVERIES",
        default_value_t = 50
    )]
    pub export_max_deliveries: u64,

    /// How long JetStream waits for this site's ack before delivering a message again.
    #[arg(long, env = "AURORA_FEDERATION_ACK_WAIT", value_parser = parse_duration, default_value = "30s")]
    pub ack_wait: Duration,

    /// Deliveries of one message before it goes to the dead-letter stream.
    #[arg(long, env = "AURORA_FEDERATION_MAX_DELIVER", default_value_t = 5,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub max_deliver: i64,

    /// Delay of a redelivery after a failed import.
    #[arg(long, env = "AURORA_FEDERATION_NAK_DELAY", value_parser = parse_duration, default_value = "5s")]
    pub nak_delay: Duration,

    /// Most messages delivered to this site and not yet acknowledged.
    #[arg(long, env = "AURORA_FEDERATION_MAX_ACK_PENDING", default_value_t = 1024,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub max_ack_pending: i64,

    /// Messages pulled from JetStream and written to Redis at a time.
    #[arg(long, env = "AURORA_FEDERATION_IMPORT_BATCH", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub import_batch: u32,

    /// How often the consumer's lag is measured.
    #[arg(long, env = "AURORA_FEDERATION_LAG_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub lag_interval: Duration,

    /// Warn when the lag reaches this fraction of the stream's limits (messages or age).
    #[arg(long, env = "AURORA_FEDERATION_LAG_WARN_RATIO", default_value_t = 0.8)]
    pub lag_warn_ratio: f64,
}

impl Args {
    /// Whether this kind may leave the site.
    pub fn exports(&self, kind: FederatedKind) -> bool {
        match kind {
            FederatedKind::Alerts => self.export_alerts,
            FederatedKind::Iocs => self.export_iocs,
            FederatedKind::AgentResults => self.export_agent_results,
            FederatedKind::Audit => self.export_audit,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_and_policy_flags() {
        let args = Args::try_parse_from(["federation-gateway"]).unwrap();
        assert!(FederatedKind::ALL.iter().all(|k| args.exports(*k)));
        assert_eq!(args.publish_window, 256);
        assert_eq!(args.nak_delay, Duration::from_secs(5));
        assert_eq!(args.min_alert_severity, Severity::Info);
        let args = Args::try_parse_from([
            "federation-gateway",
            "--export-audit",
            "false",
            "--min-alert-severity",
            "HIGH",
        ])
        .unwrap();
        assert!(!args.exports(FederatedKind::Audit));
        assert!(args.exports(FederatedKind::Alerts));
        assert_eq!(args.min_alert_severity, Severity::High);
        assert!(Args::try_parse_from(["x", "--publish-window", "0"]).is_err());
    }
}
