//! device-registry: parses flags and runs the service (see the library for what it does).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use aurora_core::config::{parse_duration, CommonArgs, JwtArgs};
use aurora_core::ops;
use clap::Parser;
use device_registry::{Config, Service, SERVICE};

/// Registers, attests and exposes the CPS devices of an Aurora site.
#[derive(Debug, Parser)]
#[command(name = "device-registry", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    jwt: JwtArgs,
    /// PostgreSQL.
    #[arg(
        long,
        env = "AURORA_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    database_url: String,
    /// Address of the REST API.
    #[arg(long, env = "AURORA_HTTP_ADDR", default_value = "0.0.0.0:8081")]
    http_addr: SocketAddr,
    /// Take a new device's Ed25519 public key from its first message (`public_key`).
    #[arg(long, env = "AURORA_TRUST_ON_FIRST_USE", default_value_t = false)]
    trust_on_first_use: bool,
    /// How long a device has to answer an attestation challenge.
    #[arg(long, env = "AURORA_ATTESTATION_TIMEOUT", value_parser = parse_duration, default_value = "5m")]
    attestation_timeout: Duration,
    /// Re-attest every device this often (0 turns it off).
    #[arg(long, env = "AURORA_REATTEST_INTERVAL", value_parser = parse_duration, default_value = "24h")]
    reattest_interval: Duration,
    /// How often to look for expired challenges, due re-attestations and unsent records.
    #[arg(long, env = "AURORA_SWEEP_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    sweep_interval: Duration,
    /// A record committed in PostgreSQL but not on the bus after this long is sent again.
    #[arg(long, env = "AURORA_RESEND_AFTER", value_parser = parse_duration, default_value = "30s")]
    resend_after: Duration,
    /// Stream entries per batch.
    #[arg(long, env = "AURORA_BATCH_SIZE", default_value_t = 1000)]
    batch_size: usize,
    /// Registration consumers in this replica.
    #[arg(long, env = "AURORA_REGISTRATION_WORKERS", default_value_t = 2)]
    registration_workers: usize,
    /// Attestation consumers in this replica.
    #[arg(long, env = "AURORA_ATTESTATION_WORKERS", default_value_t = 1)]
    attestation_workers: usize,
    /// PostgreSQL connections at most.
    #[arg(long, env = "AURORA_DB_MAX_CONNECTIONS", default_value_t = 10)]
    db_max_connections: u32,
    /// A stream entry pending this long with another (dead) consumer is taken over.
    #[arg(long, env = "AURORA_CLAIM_IDLE", value_parser = parse_duration, default_value = "30s")]
    claim_idle: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = ops::init_telemetry(SERVICE, args.common.log_format);
    let names = args.common.names()?;
    let verifier = args.jwt.verifier()?;
    let cfg = Config {
        names,
        redis_url: args.common.redis_url.clone(),
        database_url: args.database_url.clone(),
        instance: args.common.instance(),
        http_addr: args.http_addr,
        ops_addr: args.common.ops_addr_or(9102),
        verifier,
        trust_on_first_use: args.trust_on_first_use,
        attestation_timeout: args.attestation_timeout,
        reattest_interval: Some(args.reattest_interval).filter(|d| !d.is_zero()),
        sweep_interval: args.sweep_interval,
        resend_after: args.resend_after,
        batch_size: args.batch_size,
        registration_workers: args.registration_workers,
        attestation_workers: args.attestation_workers,
        stream_maxlen: args.common.stream_maxlen,
        db_max_connections: args.db_max_connections,
        claim_idle: args.claim_idle,
    };
    let shutdown = ops::shutdown_token();
    let service = Service::start(cfg, shutdown.clone())
        .await
        .context("device-registry could not start")?;
    let drained = ops::drain_within(service.wait(), shutdown, args.common.shutdown_timeout).await;
    tracing::info!(drained, "stopped");
    Ok(())
}
