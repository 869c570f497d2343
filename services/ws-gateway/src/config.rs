//! The gateway's flags. Every flag has an `AURORA_*` environment variable; the defaults run
//! the gateway as it is on a developer's machine (with `--dev-insecure-auth`).

use std::net::SocketAddr;
use std::time::Duration;

use aurora_core::config::{parse_duration, CommonArgs, JwtArgs};
use clap::Parser;

/// The ops port of ws-gateway (README of the workspace).
pub const DEFAULT_OPS_PORT: u16 = 9103;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ws-gateway",
    version,
    about = "Live alerts, agent thoughts and approvals over WebSocket, and the approval decision API"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub jwt: JwtArgs,

    /// Address of the WebSocket and REST API and of the console.
    #[arg(long, env = "AURORA_HTTP_ADDR", default_value = "0.0.0.0:8000")]
    pub http_addr: SocketAddr,

    /// Connections one channel accepts on this replica; the next is closed with 1013.
    #[arg(
        long,
        env = "AURORA_MAX_CONNECTIONS_PER_CHANNEL",
        default_value_t = 500
    )]
    pub max_connections_per_channel: usize,

    /// Messages a client may fall behind the live stream before it is closed with 1013.
    #[arg(long, env = "AURORA_CLIENT_QUEUE", default_value_t = 1024)]
    pub client_queue: usize,

    /// After a read that found entries, the stream reader waits this long before the next one,
    /// so entries written close together reach each client in one write (one syscall for
    /// several frames) instead of one each. Adds at most this much latency, and only when
    /// entries arrive faster than this; `0s` reads again at once.
    #[arg(long, env = "AURORA_FANOUT_LINGER", value_parser = parse_duration, default_value = "10ms")]
    pub fanout_linger: Duration,

    /// A client whose socket accepts nothing for this long is closed.
    #[arg(long, env = "AURORA_SEND_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub send_timeout: Duration,

    /// At most this many missed entries are replayed to a client reconnecting with `?since=`.
    #[arg(long, env = "AURORA_MAX_REPLAY", default_value_t = 1000)]
    pub max_replay: usize,

    /// Interval of WebSocket pings.
    #[arg(long, env = "AURORA_PING_INTERVAL", value_parser = parse_duration, default_value = "20s")]
    pub ping_interval: Duration,

    /// A client that answers no ping for this long is dropped.
    #[arg(long, env = "AURORA_PONG_TIMEOUT", value_parser = parse_duration, default_value = "45s")]
    pub pong_timeout: Duration,

    /// How often each replica looks for approvals past their `expires_at`.
    #[arg(long, env = "AURORA_EXPIRY_SWEEP_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub expiry_sweep_interval: Duration,

    /// How long an approval's state is kept in Redis after its `expires_at`.
    #[arg(long, env = "AURORA_APPROVAL_STATE_RETENTION", value_parser = parse_duration, default_value = "7d")]
    pub approval_state_retention: Duration,

    /// On SIGTERM, time between `/readyz` failing and clients being closed with 1001, so the
    /// load balancer stops sending new connections first.
    #[arg(long, env = "AURORA_DRAIN_GRACE", value_parser = parse_duration, default_value = "2s")]
    pub drain_grace: Duration,
}

impl Args {
    /// Defaults for a namespace and a Redis, on ephemeral ports: for tests and the benchmark.
    pub fn for_test(namespace: &str, redis_url: &str, jwt_secret: &str) -> Self {
        let mut args = Self::parse_from(["ws-gateway"]);
        args.common.namespace = namespace.to_string();
        args.common.redis_url = redis_url.to_string();
        args.common.ops_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        args.common.instance_id = Some(format!("test-{}", uuid::Uuid::new_v4().simple()));
        args.common.shutdown_timeout = Duration::from_secs(10);
        args.jwt.jwt_secret = Some(jwt_secret.to_string());
        args.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        args.drain_grace = Duration::ZERO;
        args
    }
}
