//! The service's flags. The shared ones keep their `AURORA_<FLAG>` variables; each flag of
//! the service's own reads `AURORA_EVE_INGEST_<FLAG>` (the rule of
//! [`aurora_core::config::env_name`]), and the variables it read before are refused with
//! the name that replaced them ([`RENAMED_ENV`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use aurora_core::config::{parse_duration, CommonArgs, NatsArgs};
use aurora_core::jetstream::{DeclaredDiscard, Limit, StreamLimits};
use aurora_core::service::Flags;

use crate::alert::AlertMapping;
use crate::error::IngestError;
use crate::{EveIngest, Input, Settings, SERVICE};

/// Suricata EVE events from Redis (or an eve.json file) onto NATS JetStream by event type,
/// and alert events into Aurora alerts.
#[derive(Debug, Clone, Parser)]
#[command(name = SERVICE, version, about)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub nats: NatsArgs,

    /// The Redis list Suricata pushes to (default: `suricata`, namespaced outside `aurora`).
    #[arg(long)]
    pub list_key: Option<String>,

    /// Follow this eve.json file instead of the Redis list.
    #[arg(long, conflicts_with = "list_key")]
    pub file: Option<PathBuf>,

    /// Keep the file position in this local file instead of Redis.
    #[arg(long, requires = "file")]
    pub state_file: Option<PathBuf>,

    /// Instance ids of replicas that are gone: their processing lists are taken over at start
    /// (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub recover_from: Vec<String>,

    /// Lines taken and published at once.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,

    /// How long one blocking take from the list waits.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub block: Duration,

    /// JetStream publish acks outstanding at most.
    #[arg(long, default_value_t = 256)]
    pub publish_window: usize,

    /// Batches handled at the same time (they share the publish window). Four keep the
    /// window full while other batches are read (bench-eve: about 5 points of the raw
    /// publish ceiling more than two; six add little more).
    #[arg(long, default_value_t = 4)]
    pub inflight_batches: usize,

    /// How long to wait for one JetStream ack before retrying.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub publish_timeout: Duration,

    /// Map Suricata severity 1 to `critical` (default: `high`).
    #[arg(long)]
    pub severity_1_critical: bool,

    /// How long an alert id is remembered, so a retried event does not alert twice.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub alert_dedup_ttl: Duration,

    /// Look for no IOC sightings (the indicators of `aurora:iocs` are then not loaded).
    #[arg(long)]
    pub no_ioc_sightings: bool,

    /// One indicator seen in one flow raises one alert per window of this length.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub sighting_window: Duration,

    /// Indicators held in memory at most; newer ones beyond are skipped and counted.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_iocs: usize,

    /// Dead-letter records kept at most (older ones are trimmed).
    #[arg(long, default_value_t = 100_000)]
    pub deadletter_maxlen: usize,

    /// File input: a longer line is dead-lettered.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub max_line_bytes: usize,

    /// List input: the bytes of lines one batch holds at most (a larger line is a batch of
    /// its own); with --inflight-batches it bounds the memory of the lines in flight.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_batch_bytes: usize,

    /// File input: how often to look for new lines and rotation at the end of the file.
    #[arg(long, value_parser = parse_duration, default_value = "200ms")]
    pub poll_interval: Duration,

    /// Do not create or update the JetStream stream at start (it is managed elsewhere).
    #[arg(long)]
    pub no_stream_setup: bool,

    /// The Suricata stream's age limit (`7d`, `12h`), `unlimited`, or `keep` (not declared:
    /// the stream keeps what it has).
    #[arg(long, value_parser = aurora_core::jetstream::parse_age_limit, default_value = "7d")]
    pub jetstream_max_age: Limit<Duration>,

    /// The Suricata stream's size limit (`10GiB`, `512MiB`), `unlimited`, or `keep`.
    #[arg(long, value_parser = aurora_core::jetstream::parse_bytes_limit, default_value = "10GiB")]
    pub jetstream_max_bytes: Limit<u64>,

    /// The Suricata stream's message limit, `unlimited`, or `keep` (default: not declared).
    #[arg(long, value_parser = aurora_core::jetstream::parse_count_limit, default_value = "keep")]
    pub jetstream_max_messages: Limit<u64>,

    /// What the Suricata stream does at a limit: `old` (the oldest messages go), `new` (new
    /// ones are refused), or `keep`.
    #[arg(long, value_parser = aurora_core::jetstream::parse_discard, default_value = "old")]
    pub jetstream_discard: DeclaredDiscard,

    /// The design's JetStream consumers kept on the Suricata stream: `flow`, `stats` (comma
    /// separated), or `none`.
    #[arg(long, value_delimiter = ',', default_value = "flow,stats")]
    pub consumers: Vec<String>,

    /// More consumers kept on the Suricata stream, each
    /// `name=N[,filter=EVENT_TYPE][,push=SUBJECT][,deliver=all|new|last][,ack=explicit|none|all][,ack-wait=30s][,max-ack-pending=N][,max-deliver=N]`
    /// (repeated, or `;` between specs).
    #[arg(long, value_delimiter = ';')]
    pub consumer: Vec<String>,

    /// List input: this replica's lease in the replica registry lapses this long after its
    /// last renewal (renewed every third of it); another replica adopts what a replica whose
    /// lease lapsed holds.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub lease_ttl: Duration,

    /// Raise no sensor blindness or silence alerts (`stats` events are only published).
    #[arg(long)]
    pub no_sensor_alerts: bool,

    /// A sensor whose capture drops this share of its packets across --blindness-window is
    /// blind (`0.01` or `1%`).
    #[arg(long, value_parser = crate::sensors::parse_ratio, default_value = "1%")]
    pub blindness_drop_ratio: f64,

    /// The span of a sensor's stats its drop ratio is taken over.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub blindness_window: Duration,

    /// Packets a window must hold before a sensor can be called blind.
    #[arg(long, default_value_t = 1000)]
    pub blindness_min_packets: u64,

    /// The stats interval of a sensor until its own is learned from its stats.
    #[arg(long, value_parser = parse_duration, default_value = "8s")]
    pub stats_interval: Duration,

    /// A sensor without stats for this many of its intervals is silent.
    #[arg(long, default_value_t = 3)]
    pub silent_after: u32,
}

/// The variables read before the `AURORA_EVE_INGEST_` prefix (old -> new).
pub const RENAMED_ENV: &[(&str, &str)] = &[
    ("AURORA_EVE_LIST_KEY", "AURORA_EVE_INGEST_LIST_KEY"),
    ("AURORA_EVE_FILE", "AURORA_EVE_INGEST_FILE"),
    ("AURORA_EVE_STATE_FILE", "AURORA_EVE_INGEST_STATE_FILE"),
    ("AURORA_EVE_RECOVER_FROM", "AURORA_EVE_INGEST_RECOVER_FROM"),
    ("AURORA_EVE_BATCH", "AURORA_EVE_INGEST_BATCH"),
    ("AURORA_EVE_BLOCK", "AURORA_EVE_INGEST_BLOCK"),
    (
        "AURORA_EVE_PUBLISH_WINDOW",
        "AURORA_EVE_INGEST_PUBLISH_WINDOW",
    ),
    (
        "AURORA_EVE_INFLIGHT_BATCHES",
        "AURORA_EVE_INGEST_INFLIGHT_BATCHES",
    ),
    (
        "AURORA_EVE_PUBLISH_TIMEOUT",
        "AURORA_EVE_INGEST_PUBLISH_TIMEOUT",
    ),
    (
        "AURORA_EVE_SEVERITY_1_CRITICAL",
        "AURORA_EVE_INGEST_SEVERITY_1_CRITICAL",
    ),
    (
        "AURORA_EVE_ALERT_DEDUP_TTL",
        "AURORA_EVE_INGEST_ALERT_DEDUP_TTL",
    ),
    (
        "AURORA_EVE_DEADLETTER_MAXLEN",
        "AURORA_EVE_INGEST_DEADLETTER_MAXLEN",
    ),
    (
        "AURORA_EVE_MAX_LINE_BYTES",
        "AURORA_EVE_INGEST_MAX_LINE_BYTES",
    ),
    (
        "AURORA_EVE_POLL_INTERVAL",
        "AURORA_EVE_INGEST_POLL_INTERVAL",
    ),
    (
        "AURORA_EVE_NO_STREAM_SETUP",
        "AURORA_EVE_INGEST_NO_STREAM_SETUP",
    ),
];

impl Args {
    /// Checks the flags and builds the settings.
    pub fn settings(&self) -> Result<Settings, IngestError> {
        let names = self
            .common
            .names()
            .map_err(|e| IngestError::Config(e.to_string()))?;
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(IngestError::Config(
                "--lease-ttl must be at least 300ms (it is renewed every third of it)".into(),
            ));
        }
        if self.sighting_window < Duration::from_secs(1) || self.max_iocs == 0 {
            return Err(IngestError::Config(
                "--sighting-window must be at least 1s and --max-iocs at least 1".into(),
            ));
        }
        if self.batch == 0 || self.publish_window == 0 || self.inflight_batches == 0 {
            return Err(IngestError::Config(
                "--batch, --publish-window and --inflight-batches must be at least 1".into(),
            ));
        }
        if self.silent_after == 0 || self.stats_interval < Duration::from_millis(10) {
            return Err(IngestError::Config(
                "--silent-after must be at least 1 and --stats-interval at least 10ms".into(),
            ));
        }
        if self.blindness_window.is_zero() {
            return Err(IngestError::Config(
                "--blindness-window must be longer than 0".into(),
            ));
        }
        let sensors = (!self.no_sensor_alerts).then_some(crate::sensors::SensorSettings {
            drop_ratio: self.blindness_drop_ratio,
            window: self.blindness_window,
            min_packets: self.blindness_min_packets,
            stats_interval: self.stats_interval,
            silent_after: self.silent_after,
        });
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
            sightings: (!self.no_ioc_sightings).then(|| crate::sightings::SightingSettings {
                window: self.sighting_window,
                max_iocs: self.max_iocs,
                site_id: self.common.site_id.clone(),
            }),
            stream_maxlen: self.common.stream_maxlen,
            deadletter_maxlen: self.deadletter_maxlen,
            max_line_bytes: self.max_line_bytes,
            max_batch_bytes: self.max_batch_bytes,
            poll_interval: self.poll_interval,
            stream_setup: !self.no_stream_setup,
            stream_limits: StreamLimits {
                max_age: self.jetstream_max_age,
                max_bytes: self.jetstream_max_bytes,
                max_messages: self.jetstream_max_messages,
                discard: self.jetstream_discard,
            },
            consumers: crate::stream_setup::declared_consumers(
                &names,
                &self.consumers,
                &self.consumer,
            )?,
            lease_ttl: self.lease_ttl,
            sensors,
            names,
        })
    }
}

impl Flags for Args {
    type Service = EveIngest;
    const RENAMED_ENV: &'static [(&'static str, &'static str)] = RENAMED_ENV;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn into_service(self) -> anyhow::Result<EveIngest> {
        Ok(EveIngest::new(self.settings()?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aurora_core::config::{parse_args, rule_violations};

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        parse_args::<Args>(args)
    }

    #[test]
    fn defaults_read_the_suricata_list_and_flags_choose_a_file() {
        let args = parse(&["--instance-id", "r1"]).unwrap();
        let s = args.settings().unwrap();
        assert!(matches!(s.input, Input::List { key: None, .. }));
        assert_eq!(s.list_key(), "suricata");
        assert_eq!(
            s.processing_key(&args.common.instance()),
            "aurora:eve:processing:r1"
        );
        assert_eq!(args.common.ops_addr_or(crate::OPS_PORT).port(), 9105);
        let args = parse(&[
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
        assert!(parse(&["--file", "x", "--list-key", "y"]).is_err());
        assert!(parse(&["--batch", "0"]).unwrap().settings().is_err());
        assert!(parse(&["--batch", "0"]).unwrap().into_service().is_err());
        assert_eq!(s.lease_ttl, Duration::from_secs(15));
        let s = parse(&["--lease-ttl", "2s"]).unwrap().settings().unwrap();
        assert_eq!(s.lease_ttl, Duration::from_secs(2));
        assert!(parse(&["--lease-ttl", "100ms"])
            .unwrap()
            .settings()
            .is_err());
    }

    #[test]
    fn the_flags_keep_the_configuration_rule() {
        let violations = rule_violations::<Args>();
        assert!(violations.is_empty(), "{violations:?}");
        // Every flag of the service's own before the rename had an AURORA_EVE_* variable.
        assert_eq!(RENAMED_ENV.len(), 15);
        for (old, new) in RENAMED_ENV {
            assert_eq!(old.replace("AURORA_EVE_", "AURORA_EVE_INGEST_"), *new);
        }
    }

    #[test]
    fn sensor_flags_set_blindness_and_silence() {
        let s = parse(&[]).unwrap().settings().unwrap();
        assert_eq!(s.sensors, Some(crate::sensors::SensorSettings::default()));
        let s = parse(&[
            "--blindness-drop-ratio",
            "5%",
            "--blindness-window",
            "2s",
            "--stats-interval",
            "250ms",
            "--silent-after",
            "4",
            "--blindness-min-packets",
            "10",
        ])
        .unwrap()
        .settings()
        .unwrap();
        let sensors = s.sensors.unwrap();
        assert_eq!(sensors.drop_ratio, 0.05);
        assert_eq!(sensors.window, Duration::from_secs(2));
        assert_eq!(sensors.stats_interval, Duration::from_millis(250));
        assert_eq!((sensors.silent_after, sensors.min_packets), (4, 10));
        assert!(parse(&["--no-sensor-alerts"])
            .unwrap()
            .settings()
            .unwrap()
            .sensors
            .is_none());
        assert!(parse(&["--blindness-drop-ratio", "1.5"]).is_err());
        assert!(parse(&["--silent-after", "0"]).unwrap().settings().is_err());
    }

    #[test]
    fn sighting_flags() {
        let s = parse(&["--site-id", "site-a"]).unwrap().settings().unwrap();
        let sightings = s.sightings.unwrap();
        assert_eq!(sightings.window, Duration::from_secs(3600));
        assert_eq!(sightings.max_iocs, 1_000_000);
        assert_eq!(sightings.site_id, "site-a");
        let s = parse(&["--sighting-window", "10m", "--max-iocs", "5"])
            .unwrap()
            .settings()
            .unwrap()
            .sightings
            .unwrap();
        assert_eq!((s.window, s.max_iocs), (Duration::from_secs(600), 5));
        assert!(parse(&["--no-ioc-sightings"])
            .unwrap()
            .settings()
            .unwrap()
            .sightings
            .is_none());
        assert!(parse(&["--max-iocs", "0"]).unwrap().settings().is_err());
        assert!(parse(&["--sighting-window", "10ms"])
            .unwrap()
            .settings()
            .is_err());
    }

    #[test]
    fn stream_limits_and_consumers() {
        use async_nats::jetstream::stream::DiscardPolicy;
        use aurora_core::jetstream::SURICATA_LIMITS;
        let s = parse(&[]).unwrap().settings().unwrap();
        assert_eq!(s.stream_limits, SURICATA_LIMITS);
        let names: Vec<&str> = s.consumers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["flow", "stats"]);
        let s = parse(&[
            "--jetstream-max-age",
            "keep",
            "--jetstream-max-bytes",
            "1GiB",
            "--jetstream-max-messages",
            "5000000",
            "--jetstream-discard",
            "new",
            "--consumers",
            "stats",
            "--consumer",
            "name=dns,filter=dns;name=tls,filter=tls,push=feeds.tls",
        ])
        .unwrap()
        .settings()
        .unwrap();
        assert_eq!(s.stream_limits.max_age, Limit::Keep);
        assert_eq!(s.stream_limits.max_bytes, Limit::At(1 << 30));
        assert_eq!(s.stream_limits.max_messages, Limit::At(5_000_000));
        assert_eq!(s.stream_limits.discard, Some(DiscardPolicy::New));
        let names: Vec<&str> = s.consumers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["stats", "dns", "tls"]);
        let none = parse(&["--consumers", "none"]).unwrap().settings().unwrap();
        assert!(none.consumers.is_empty());
        assert!(parse(&["--consumers", "flow,bogus"])
            .unwrap()
            .settings()
            .is_err());
        assert!(parse(&["--consumer", "filter=dns"])
            .unwrap()
            .settings()
            .is_err());
        assert!(parse(&["--jetstream-max-bytes", "lots"]).is_err());
    }

    #[test]
    fn switches_are_switches() {
        let args = parse(&["--no-stream-setup"]).unwrap();
        assert!(!args.settings().unwrap().stream_setup);
        assert!(parse(&[]).unwrap().settings().unwrap().stream_setup);
        assert!(parse(&["--no-stream-setup", "false"]).is_err());
    }
}
