//! The flags of the bridge. The shared ones keep their `AURORA_*` variables; each of the
//! bridge's own reads `AURORA_MQTT_BRIDGE_<FLAG>` (the rule of `aurora_core::config`).

use std::path::PathBuf;
use std::time::Duration;

use aurora_core::approval::{ApproverKeys, DEFAULT_PRIVILEGED_ACTIONS};
use aurora_core::config::{parse_duration, CommonArgs};
use aurora_core::service::Flags;
use clap::Parser;

use crate::error::ConfigError;
use crate::mqtt::MqttSettings;
use crate::{MqttBridge, SERVICE};

#[derive(Debug, Clone, Parser)]
#[command(
    name = SERVICE,
    version,
    about = "Sensor devices (MQTT) to the Redis Streams bus, and device commands back"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The MQTT broker: mqtt://host:port, or mqtts://host:port for TLS.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub mqtt_url: String,
    /// The bridge's user name on the broker (e.g. aurora-bridge).
    #[arg(long)]
    pub mqtt_username: Option<String>,
    /// The bridge's password on the broker (with --mqtt-username).
    #[arg(long, hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// CA certificate (PEM) to verify the broker (mqtts://); default: the system's roots.
    #[arg(long)]
    pub mqtt_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --mqtt-client-key.
    #[arg(long, requires = "mqtt_client_key")]
    pub mqtt_client_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate, with --mqtt-client-cert.
    #[arg(long, requires = "mqtt_client_cert")]
    pub mqtt_client_key: Option<PathBuf>,
    /// MQTT keep-alive.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub mqtt_keep_alive: Duration,

    /// Shared-subscription group: replicas in one group split the devices' traffic.
    #[arg(long, default_value = SERVICE)]
    pub share_group: String,
    /// Largest device payload accepted (bytes); larger ones are dead-lettered.
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_payload: usize,
    /// A device is announced (device.seen) at most once per this interval.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub seen_interval: Duration,
    /// Device ids remembered for device.seen (an LRU: bounds memory whatever the fleet).
    #[arg(long, default_value_t = 100_000)]
    pub seen_capacity: usize,
    /// Most messages written in one pipelined round trip.
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    /// Wait this long for more messages before writing a partial batch (0: never wait).
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    pub batch_linger: Duration,
    /// Messages received and not yet written; when full, the bridge stops reading the broker.
    #[arg(long, default_value_t = 1024)]
    pub queue_capacity: usize,
    /// How long to wait for the broker's PUBACK of a command before sending it again.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub command_timeout: Duration,
    /// Largest command packet sent to the broker (bytes) when the broker does not say its own
    /// maximum (MQTT 5 CONNACK); a larger command is dead-lettered, never sent.
    #[arg(long, default_value_t = 256 * 1024)]
    pub command_max_packet: usize,
    /// This replica's lease in Redis lapses this long after its last renewal (renewed every
    /// third of it); a replica whose lease lapsed is gone and its broker session is taken over.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub lease_ttl: Duration,
    /// How often each replica looks for gone replicas to take over.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub adoption_interval: Duration,

    /// Device actions (comma separated) sent only with a valid, unused approval proof; any
    /// other command is sent as it is. Empty: no action needs an approval.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = DEFAULT_PRIVILEGED_ACTIONS.iter().map(|a| a.to_string())
    )]
    pub privileged_actions: Vec<String>,
    /// The approving service's Ed25519 public keys (base64, comma separated; two while one
    /// replaces the other). None: every privileged command is refused.
    #[arg(long, value_delimiter = ',')]
    pub approval_public_keys: Vec<String>,
}

/// The variables the bridge read before they followed `AURORA_MQTT_BRIDGE_<FLAG>`.
pub const RENAMED_ENV: &[(&str, &str)] = &[
    ("AURORA_MQTT_URL", "AURORA_MQTT_BRIDGE_MQTT_URL"),
    ("AURORA_MQTT_USERNAME", "AURORA_MQTT_BRIDGE_MQTT_USERNAME"),
    ("AURORA_MQTT_PASSWORD", "AURORA_MQTT_BRIDGE_MQTT_PASSWORD"),
    ("AURORA_MQTT_CA_FILE", "AURORA_MQTT_BRIDGE_MQTT_CA_FILE"),
    (
        "AURORA_MQTT_CLIENT_CERT",
        "AURORA_MQTT_BRIDGE_MQTT_CLIENT_CERT",
    ),
    (
        "AURORA_MQTT_CLIENT_KEY",
        "AURORA_MQTT_BRIDGE_MQTT_CLIENT_KEY",
    ),
    (
        "AURORA_MQTT_KEEP_ALIVE",
        "AURORA_MQTT_BRIDGE_MQTT_KEEP_ALIVE",
    ),
    ("AURORA_MQTT_SHARE_GROUP", "AURORA_MQTT_BRIDGE_SHARE_GROUP"),
    ("AURORA_MQTT_MAX_PAYLOAD", "AURORA_MQTT_BRIDGE_MAX_PAYLOAD"),
    (
        "AURORA_MQTT_SEEN_INTERVAL",
        "AURORA_MQTT_BRIDGE_SEEN_INTERVAL",
    ),
    (
        "AURORA_MQTT_SEEN_CAPACITY",
        "AURORA_MQTT_BRIDGE_SEEN_CAPACITY",
    ),
    ("AURORA_MQTT_BATCH_SIZE", "AURORA_MQTT_BRIDGE_BATCH_SIZE"),
    (
        "AURORA_MQTT_BATCH_LINGER",
        "AURORA_MQTT_BRIDGE_BATCH_LINGER",
    ),
    (
        "AURORA_MQTT_QUEUE_CAPACITY",
        "AURORA_MQTT_BRIDGE_QUEUE_CAPACITY",
    ),
    (
        "AURORA_MQTT_COMMAND_TIMEOUT",
        "AURORA_MQTT_BRIDGE_COMMAND_TIMEOUT",
    ),
];

impl Flags for Args {
    type Service = MqttBridge;
    const RENAMED_ENV: &'static [(&'static str, &'static str)] = RENAMED_ENV;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn into_service(self) -> anyhow::Result<MqttBridge> {
        Ok(self.bridge()?)
    }
}

impl Args {
    /// Checks the flags and builds the bridge.
    pub fn bridge(&self) -> Result<MqttBridge, ConfigError> {
        let names = self
            .common
            .names()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.batch_size == 0 || self.queue_capacity == 0 || self.seen_capacity == 0 {
            return Err(ConfigError::Invalid(
                "--batch-size, --queue-capacity and --seen-capacity must be at least 1".into(),
            ));
        }
        if self.lease_ttl < Duration::from_millis(300) || self.adoption_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "--lease-ttl must be at least 300ms and --adoption-interval above 0".into(),
            ));
        }
        if self.share_group.is_empty() || self.share_group.contains(['/', '+', '#']) {
            return Err(ConfigError::Invalid(
                "--share-group must be non-empty without '/', '+' or '#'".into(),
            ));
        }
        let mqtt = MqttSettings {
            url: self.mqtt_url.clone(),
            username: self.mqtt_username.clone(),
            password: self.mqtt_password.clone(),
            ca_file: self.mqtt_ca_file.clone(),
            client_cert: self.mqtt_client_cert.clone(),
            client_key: self.mqtt_client_key.clone(),
            keep_alive: self.mqtt_keep_alive,
        };
        let approver_keys = ApproverKeys::parse(&self.approval_public_keys)
            .map_err(|e| ConfigError::Invalid(format!("--approval-public-keys: {e}")))?;
        let mut bridge = MqttBridge::new(names, mqtt, &self.common.redis_url);
        bridge.privileged_actions = self
            .privileged_actions
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        bridge.approver_keys = approver_keys;
        bridge.stream_maxlen = self.common.stream_maxlen;
        bridge.share_group = self.share_group.clone();
        bridge.max_payload = self.max_payload;
        bridge.batch_size = self.batch_size;
        bridge.batch_linger = self.batch_linger;
        bridge.queue_capacity = self.queue_capacity;
        bridge.seen_capacity = self.seen_capacity;
        bridge.seen_interval = self.seen_interval;
        bridge.command_timeout = self.command_timeout;
        bridge.command_max_packet = self.command_max_packet;
        bridge.lease_ttl = self.lease_ttl;
        bridge.adoption_interval = self.adoption_interval;
        // The broker settings are checked now (URL, credentials, TLS files), not at the first
        // connection.
        bridge.check_broker_settings()?;
        Ok(bridge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aurora_core::config::{command, parse_args, rule_violations};

    fn parse(args: &[&str]) -> Args {
        parse_args::<Args>(args).expect("parse")
    }

    #[test]
    fn defaults_run_out_of_the_box() {
        let args = parse(&["--instance-id", "r1"]);
        let bridge = args.bridge().expect("config");
        assert_eq!(bridge.mqtt.url, "mqtt://127.0.0.1:1883");
        assert_eq!(bridge.max_payload, 262_144);
        assert_eq!(bridge.seen_interval, Duration::from_secs(60));
        assert_eq!(bridge.share_group, "mqtt-bridge");
        assert_eq!(bridge.lease_ttl, Duration::from_secs(15));
        assert_eq!(bridge.adoption_interval, Duration::from_secs(5));
        assert_eq!(bridge.privileged_actions, DEFAULT_PRIVILEGED_ACTIONS);
        assert!(bridge.approver_keys.is_empty());
        assert_eq!(args.common.instance(), "r1");
        assert_eq!(
            crate::uplink_client_id(&args.common.instance()),
            "mqtt-bridge-r1-up"
        );
        assert_eq!(args.common.ops_addr_or(crate::OPS_PORT).port(), 9101);
    }

    #[test]
    fn bad_settings_are_refused() {
        let args = parse(&["--share-group", "a/b"]);
        assert!(args.bridge().is_err());
        let args = parse(&["--batch-size", "0"]);
        assert!(args.bridge().is_err());
        let args = parse(&["--mqtt-url", "http://broker"]);
        assert!(matches!(args.bridge(), Err(ConfigError::Url { .. })));
        let args = parse(&["--lease-ttl", "0s"]);
        assert!(args.bridge().is_err());
        let args = parse(&["--adoption-interval", "0s"]);
        assert!(args.bridge().is_err());
        let args = parse(&["--mqtt-password", "pw"]);
        assert!(args.bridge().is_err(), "a password needs a user name");
        let args = parse(&["--approval-public-keys", "not-a-key"]);
        assert!(args.bridge().is_err(), "a key that is not one");
    }

    #[test]
    fn privileged_actions_and_approver_keys_are_comma_lists() {
        let old = aurora_core::approval::SigningKey::generate();
        let new = aurora_core::approval::SigningKey::generate();
        let keys = format!("{},{}", old.public_base64(), new.public_base64());
        let args = parse(&[
            "--privileged-actions",
            "reboot, wipe",
            "--approval-public-keys",
            &keys,
        ]);
        let bridge = args.bridge().expect("config");
        assert_eq!(bridge.privileged_actions, ["reboot", "wipe"]);
        assert_eq!(
            bridge.approver_keys.ids(),
            [old.id().to_string(), new.id().to_string()]
        );
        let none = parse(&["--privileged-actions", ""])
            .bridge()
            .expect("config");
        assert!(none.privileged_actions.is_empty());
    }

    #[test]
    fn the_flags_keep_the_configuration_rule() {
        let violations = rule_violations::<Args>();
        assert!(violations.is_empty(), "{violations:?}");
        let cmd = command::<Args>(SERVICE);
        let secret = cmd
            .get_arguments()
            .find(|a| a.get_id() == "mqtt_password")
            .expect("--mqtt-password");
        assert!(secret.is_hide_env_values_set(), "the password is not shown");
    }
}
