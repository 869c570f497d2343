//! The gateway's flags. Its own flags read `AURORA_WS_GATEWAY_<FLAG>` (the rule of
//! `aurora_core::config::env_name`), the shared ones `AURORA_<FLAG>`; the defaults run the
//! gateway as it is on a developer's machine (with `--dev-insecure-auth`).

use std::net::SocketAddr;
use std::time::Duration;

use aurora_core::config::{parse_duration, CommonArgs, JwtArgs, ListenerArgs};
use aurora_core::service::Flags;
use clap::Parser;

use crate::error::ConfigError;
use crate::Gateway;

/// Variables read under another name before; set, they stop the start with an error naming
/// the new one.
pub const RENAMED_ENV: &[(&str, &str)] = &[
    ("AURORA_HTTP_ADDR", "AURORA_WS_GATEWAY_HTTP_ADDR"),
    (
        "AURORA_MAX_CONNECTIONS_PER_CHANNEL",
        "AURORA_WS_GATEWAY_MAX_CONNECTIONS_PER_CHANNEL",
    ),
    ("AURORA_CLIENT_QUEUE", "AURORA_WS_GATEWAY_CLIENT_QUEUE"),
    ("AURORA_FANOUT_LINGER", "AURORA_WS_GATEWAY_FANOUT_LINGER"),
    ("AURORA_SEND_TIMEOUT", "AURORA_WS_GATEWAY_SEND_TIMEOUT"),
    ("AURORA_MAX_REPLAY", "AURORA_WS_GATEWAY_MAX_REPLAY"),
    ("AURORA_PING_INTERVAL", "AURORA_WS_GATEWAY_PING_INTERVAL"),
    ("AURORA_PONG_TIMEOUT", "AURORA_WS_GATEWAY_PONG_TIMEOUT"),
    (
        "AURORA_EXPIRY_SWEEP_INTERVAL",
        "AURORA_WS_GATEWAY_EXPIRY_SWEEP_INTERVAL",
    ),
    (
        "AURORA_APPROVAL_STATE_RETENTION",
        "AURORA_WS_GATEWAY_APPROVAL_STATE_RETENTION",
    ),
    ("AURORA_DRAIN_GRACE", "AURORA_WS_GATEWAY_DRAIN_GRACE"),
];

#[derive(Debug, Clone, Parser)]
#[command(
    name = crate::SERVICE,
    version,
    about = "Live alerts, agent thoughts and approvals over WebSocket, and the approval decision API"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub jwt: JwtArgs,

    #[command(flatten)]
    pub listener: ListenerArgs,

    /// Address of the WebSocket and REST API and of the console.
    #[arg(long, default_value = "0.0.0.0:8000")]
    pub http_addr: SocketAddr,

    /// Connections one channel accepts on this replica; the next is closed with 1013.
    #[arg(long, default_value_t = 500)]
    pub max_connections_per_channel: usize,

    /// Connections one token subject (`sub`) may hold on one channel of this replica; the next
    /// is closed with 1013. 0: no limit but the channel's.
    #[arg(long, default_value_t = 0)]
    pub max_connections_per_subject: usize,

    /// Origins (`scheme://host[:port]`, comma separated) whose pages may open a WebSocket,
    /// besides the gateway's own (an Origin whose host is the request's Host); `*` allows
    /// every origin. A request without Origin (not from a browser) is always allowed.
    #[arg(long, value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// After the gateway sends a close frame, how long it waits for the client's reply
    /// before dropping the connection (so a browser sees a clean close).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub close_timeout: Duration,

    /// Messages a client may fall behind the live stream before it is closed with 1013.
    #[arg(long, default_value_t = 1024)]
    pub client_queue: usize,

    /// After a read that found entries, the stream reader waits this long before the next one,
    /// so entries written close together reach each client in one write (one syscall for
    /// several frames) instead of one each. Adds at most this much latency, and only when
    /// entries arrive faster than this; `0s` reads again at once.
    #[arg(long, value_parser = parse_duration, default_value = "10ms")]
    pub fanout_linger: Duration,

    /// A client whose socket accepts nothing for this long is closed.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub send_timeout: Duration,

    /// At most this many missed entries are replayed to a client reconnecting with `?since=`.
    #[arg(long, default_value_t = 1000)]
    pub max_replay: usize,

    /// Interval of WebSocket pings.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub ping_interval: Duration,

    /// A client that answers no ping for this long is dropped.
    #[arg(long, value_parser = parse_duration, default_value = "45s")]
    pub pong_timeout: Duration,

    /// How often each replica looks for approvals past their `expires_at`.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub expiry_sweep_interval: Duration,

    /// How long an approval's state is kept in Redis after its `expires_at`.
    #[arg(long, value_parser = parse_duration, default_value = "7d")]
    pub approval_state_retention: Duration,

    /// The Ed25519 key this gateway signs approved device actions with: a file holding the
    /// 32-byte seed in base64 (`aurora approval-key` writes one). Without it, an approval of a
    /// device action (a quarantine, a reboot...) is refused with 503: mqtt-bridge and
    /// device-registry carry out only what such a key signed.
    #[arg(long)]
    pub approval_signing_key: Option<std::path::PathBuf>,

    /// How long an approved device action stays valid: the command is not sent to its device
    /// after this (its `expires_at`, and the proof's `not_after`).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub approval_action_ttl: Duration,

    /// On SIGTERM, time between `/readyz` failing and clients being closed with 1001, so the
    /// load balancer stops sending new connections first. Part of `--shutdown-timeout`.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub drain_grace: Duration,
}

impl Args {
    /// Refuses flags that cannot work together.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_connections_per_channel == 0 {
            return Err(ConfigError::Zero {
                flag: "max-connections-per-channel",
            });
        }
        if self.client_queue == 0 {
            return Err(ConfigError::Zero {
                flag: "client-queue",
            });
        }
        self.listener
            .check()
            .map_err(|message| ConfigError::Listener { message })?;
        if self.pong_timeout <= self.ping_interval {
            return Err(ConfigError::PongBeforePing {
                ping_interval: self.ping_interval,
                pong_timeout: self.pong_timeout,
            });
        }
        if self.drain_grace >= self.common.shutdown_timeout {
            return Err(ConfigError::GraceOverDeadline {
                grace: self.drain_grace,
                deadline: self.common.shutdown_timeout,
            });
        }
        Ok(())
    }
}

impl Flags for Args {
    type Service = Gateway;
    const RENAMED_ENV: &'static [(&'static str, &'static str)] = RENAMED_ENV;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn into_service(self) -> anyhow::Result<Gateway> {
        self.check()?;
        Ok(Gateway::new(self)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::SERVICE;
    use aurora_core::config;

    fn parse(extra: &[&str]) -> Args {
        config::parse_args::<Args>(extra).unwrap()
    }

    #[test]
    fn the_flags_keep_the_configuration_rule() {
        let violations = config::rule_violations::<Args>();
        assert!(violations.is_empty(), "{violations:?}");
        let cmd = config::command::<Args>(SERVICE);
        assert_eq!(
            config::flag_env(&cmd, "drain_grace").as_deref(),
            Some("AURORA_WS_GATEWAY_DRAIN_GRACE")
        );
    }

    #[test]
    fn the_defaults_pass_the_checks_and_impossible_combinations_do_not() {
        let args = parse(&[]);
        assert_eq!(args.check(), Ok(()));
        assert_eq!(args.http_addr.port(), 8000);
        assert_eq!(
            parse(&["--client-queue", "0"]).check(),
            Err(ConfigError::Zero {
                flag: "client-queue"
            })
        );
        assert_eq!(
            parse(&["--max-connections-per-channel", "0"]).check(),
            Err(ConfigError::Zero {
                flag: "max-connections-per-channel"
            })
        );
        assert!(matches!(
            parse(&["--ping-interval", "30s", "--pong-timeout", "30s"]).check(),
            Err(ConfigError::PongBeforePing { .. })
        ));
        assert!(matches!(
            parse(&["--drain-grace", "20s", "--shutdown-timeout", "20s"]).check(),
            Err(ConfigError::GraceOverDeadline { .. })
        ));
    }
}
