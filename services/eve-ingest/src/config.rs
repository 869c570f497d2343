//! The service's flags; each has an `AURORA_*` environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sha2::{Digest, Sha256};

use aurora_core::config::{parse_duration, CommonArgs, NatsArgs};

use crate::alert::AlertMapping;
use crate::error::IngestError;
use crate::{Input, Settings};

/// The ops port of eve-ingest.
pub const DEFAULT_OPS_PORT: u16 = 9105;

/// Suricata EVE events from Redis (or an eve.json file) onto NATS JetStream by event type,
/// and alert events into Aurora alerts.
#[derive(Debug, Clone, Parser)]
#[command(name = "eve-ingest", version, about)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub nats: NatsArgs,

    /// The Redis list Suricata pushes to (default: `suricata`, namespaced outside `aurora`).
    #[arg(long, env = "AURORA_EVE_LIST_KEY")]
    pub list_key: Option<String>,

    /// Follow this eve.json file instead of the Redis list.
    #[arg(long, env = "AURORA_EVE_FILE", conflicts_with = "list_key")]
    pub file: Option<PathBuf>,

    /// Keep the file position in this local file instead of Redis.
    #[arg(long, env = "AURORA_EVE_STATE_FILE", requires = "file")]
    pub state_file: Option<PathBuf>,

    /// Instance ids of replicas that are gone: their processing lists are taken over at start
    /// (comma separated).
    #[arg(long, env = "AURORA_EVE_RECOVER_FROM", value_delimiter = ',')]
    pub recover_from: Vec<String>,

    /// Lines taken and published at once.
    #[arg(long, env = "AURORA_EVE_BATCH", default_value_t = 500)]
    pub batch: usize,

    /// How long one blocking take from the list waits.
    #[arg(long, env = "AURORA_EVE_BLOCK", value_parser = parse_duration, default_value = "1s")]
    pub block: Duration,

    /// JetStream publish acks outstanding at most.
    #[arg(long, env = "AURORA_EVE_PUBLISH_WINDOW", default_value_t = 256)]
    pub publish_window: usize,

    /// Batches handled at the same time (they share the publish window).
    #[arg(long, env = "AURORA_EVE_INFLIGHT_BATCHES", default_value_t = 2)]
    pub inflight_batches: usize,

    /// How long to wait for one JetStream ack before retrying.
    #[arg(long, env = "AURORA_EVE_PUBLISH_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub publish_timeout: Duration,

    /// Map Suricata severity 1 to `critical` (default: `high`).
    #[arg(long, env = "AURORA_EVE_SEVERITY_1_CRITICAL", default_value_t = false)]
    pub severity_1_critical: bool,

    /// How long an alert id is remembered, so a retried event does not alert twice.
    #[arg(long, env = "AURORA_EVE_ALERT_DEDUP_TTL", value_parser = parse_duration, default_value = "1h")]
    pub alert_dedup_ttl: Duration,

    /// Dead-letter records kept at most (older ones are trimmed).
    #[arg(long, env = "AURORA_EVE_DEADLETTER_MAXLEN", default_value_t = 100_000)]
    pub deadletter_maxlen: usize,

    /// File input: a longer line is dead-lettered.
    #[arg(long, env = "AURORA_EVE_MAX_LINE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_line_bytes: usize,

    /// File input: how often to look for new lines and rotation at the end of the file.
    #[arg(long, env = "AURORA_EVE_POLL_INTERVAL", value_parser = parse_duration, default_value = "200ms")]
    pub poll_interval: Duration,

    /// Do not create or update the JetStream stream at start (it is managed elsewhere).
    #[arg(long, env = "AURORA_EVE_NO_STREAM_SETUP", default_value_t = false)]
    pub no_stream_setup: bool,
}

/// The Redis key (under the service's state) of the position of one file.
pub fn file_state_what(path: &std::path::Path) -> String {
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    format!("file:{}", &hex::encode(digest)[..16])
}

impl Args {
    pub fn settings(&self) -> Result<Settings, IngestError> {
        let names = self
            .common
            .names()
            .map_err(|e| IngestError::Config(e.to_string()))?;
        if self.batch == 0 || self.publish_window == 0 || self.inflight_batches == 0 {
            return Err(IngestError::Config(
                "--batch, --publish-window and --inflight-batches must be at least 1".into(),
            ));
        }
        let input = match &self.file {
            Some(path) => Input::File {
                path: std::path::absolute(path).unwrap_or_else(|_| path.clone()),
                state_file: self.state_file.clone(),
            },
            None => Input::List {
                key: self.list_key.clone(),
                recover_from: self.recover_from.clone(),
            },
        };
        Ok(Settings {
            instance: self.common.instance(),
            redis_url: self.common.redis_url.clone(),
            nats: self.nats.clone(),
            input,
            batch: self.batch,
            block: self.block,
            publish_window: self.publish_window,
            inflight_batches: self.inflight_batches,
            publish_timeout: self.publish_timeout,
            mapping: AlertMapping {
                severity_1_critical: self.severity_1_critical,
            },
            alert_dedup_ttl: self.alert_dedup_ttl,
            stream_maxlen: self.common.stream_maxlen,
            deadletter_maxlen: self.deadletter_maxlen,
            max_line_bytes: self.max_line_bytes,
            poll_interval: self.poll_interval,
            stream_setup: !self.no_stream_setup,
            names,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_read_the_suricata_list_and_flags_choose_a_file() {
        let args = Args::try_parse_from(["eve-ingest", "--instance-id", "r1"]).unwrap();
        let s = args.settings().unwrap();
        assert!(matches!(s.input, Input::List { key: None, .. }));
        assert_eq!(s.list_key(), "suricata");
        assert_eq!(s.processing_key(), "aurora:eve:processing:r1");
        assert_eq!(args.common.ops_addr_or(DEFAULT_OPS_PORT).port(), 9105);
        let args = Args::try_parse_from([
            "eve-ingest",
            "--file",
            "/var/log/suricata/eve.json",
            "--severity-1-critical",
            "--recover-from",
            "a,b",
        ])
        .unwrap();
        let s = args.settings().unwrap();
        assert!(matches!(s.input, Input::File { .. }));
        assert!(s.mapping.severity_1_critical);
        assert_eq!(args.recover_from, vec!["a", "b"]);
        assert!(Args::try_parse_from(["eve-ingest", "--file", "x", "--list-key", "y"]).is_err());
        assert!(Args::try_parse_from(["eve-ingest", "--batch", "0"])
            .unwrap()
            .settings()
            .is_err());
    }
}
