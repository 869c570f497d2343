//! The flags of the bridge; each has an `AURORA_*` environment variable.

use std::path::PathBuf;
use std::time::Duration;

use aurora_core::config::{parse_duration, CommonArgs};
use clap::Parser;

use crate::error::ConfigError;
use crate::{BridgeConfig, MqttSettings};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "mqtt-bridge",
    version,
    about = "Sensor devices (MQTT) to the Redis Streams bus, and device commands back"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The MQTT broker: mqtt://host:port, or mqtts://host:port for TLS.
    #[arg(long, env = "AURORA_MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    pub mqtt_url: String,
    /// The bridge's user name on the broker (e.g. aurora-bridge).
    #[arg(long, env = "AURORA_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    #[arg(long, env = "AURORA_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// CA certificate (PEM) to verify the broker (mqtts://); default: the system's roots.
    #[arg(long, env = "AURORA_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --mqtt-client-key.
    #[arg(long, env = "AURORA_MQTT_CLIENT_CERT", requires = "mqtt_client_key")]
    pub mqtt_client_cert: Option<PathBuf>,
    #[arg(long, env = "AURORA_MQTT_CLIENT_KEY", requires = "mqtt_client_cert")]
    pub mqtt_client_key: Option<PathBuf>,
    /// MQTT keep-alive.
    #[arg(long, env = "AURORA_MQTT_KEEP_ALIVE", value_parser = parse_duration, default_value = "30s")]
    pub mqtt_keep_alive: Duration,

    /// Shared-subscription group: replicas in one group split the devices' traffic.
    #[arg(long, env = "AURORA_MQTT_SHARE_GROUP", default_value = "mqtt-bridge")]
    pub share_group: String,
    /// Largest device payload accepted (bytes); larger ones are dead-lettered.
    #[arg(long, env = "AURORA_MQTT_MAX_PAYLOAD", default_value_t = 256 * 1024)]
    pub max_payload: usize,
    /// A device is announced (device.seen) at most once per this interval.
    #[arg(long, env = "AURORA_MQTT_SEEN_INTERVAL", value_parser = parse_duration, default_value = "60s")]
    pub seen_interval: Duration,
    /// Device ids remembered for device.seen (an LRU: bounds memory whatever the fleet).
    #[arg(long, env = "AURORA_MQTT_SEEN_CAPACITY", default_value_t = 100_000)]
    pub seen_capacity: usize,
    /// Most messages written in one pipelined round trip.
    #[arg(long, env = "AURORA_MQTT_BATCH_SIZE", default_value_t = 512)]
    pub batch_size: usize,
    /// Wait this long for more messages before writing a partial batch (0: never wait).
    #[arg(long, env = "AURORA_MQTT_BATCH_LINGER", value_parser = parse_duration, default_value = "0ms")]
    pub batch_linger: Duration,
    /// Messages received and not yet written; when full, the bridge stops reading the broker.
    #[arg(long, env = "AURORA_MQTT_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// How long to wait for the broker's PUBACK of a command before sending it again.
    #[arg(long, env = "AURORA_MQTT_COMMAND_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub command_timeout: Duration,
}

impl Args {
    pub fn config(&self) -> Result<BridgeConfig, ConfigError> {
        let names = self
            .common
            .names()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.batch_size == 0 || self.queue_capacity == 0 || self.seen_capacity == 0 {
            return Err(ConfigError::Invalid(
                "--batch-size, --queue-capacity and --seen-capacity must be at least 1".into(),
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
        let mut cfg =
            BridgeConfig::new(names, &self.common.instance(), mqtt, &self.common.redis_url);
        cfg.stream_maxlen = self.common.stream_maxlen;
        cfg.share_group = self.share_group.clone();
        cfg.max_payload = self.max_payload;
        cfg.batch_size = self.batch_size;
        cfg.batch_linger = self.batch_linger;
        cfg.queue_capacity = self.queue_capacity;
        cfg.seen_capacity = self.seen_capacity;
        cfg.seen_interval = self.seen_interval;
        cfg.command_timeout = self.command_timeout;
        cfg.shutdown_timeout = self.common.shutdown_timeout;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_out_of_the_box() {
        let args = Args::try_parse_from(["mqtt-bridge", "--instance-id", "r1"]).expect("parse");
        let cfg = args.config().expect("config");
        assert_eq!(cfg.mqtt.url, "mqtt://127.0.0.1:1883");
        assert_eq!(cfg.max_payload, 262_144);
        assert_eq!(cfg.seen_interval, Duration::from_secs(60));
        assert_eq!(cfg.uplink_client_id(), "mqtt-bridge-r1-up");
        assert_eq!(args.common.ops_addr_or(crate::OPS_PORT).port(), 9101);
    }

    #[test]
    fn bad_settings_are_refused() {
        let args = Args::try_parse_from(["mqtt-bridge", "--share-group", "a/b"]).expect("parse");
        assert!(args.config().is_err());
        let args = Args::try_parse_from(["mqtt-bridge", "--batch-size", "0"]).expect("parse");
        assert!(args.config().is_err());
    }
}
