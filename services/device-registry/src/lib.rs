//! device-registry: every CPS device of a site known, attested and visible to analysts.
//!
//! - [`registration`]: `aurora:cps:registrations` → one upsert per batch in PostgreSQL; a new
//!   device gets a UUID, its first message as metadata, a `device.registered` record and an
//!   attestation challenge.
//! - [`attestation`]: challenges out as `attest` commands, answers from
//!   `aurora:cps:attestation` checked against the nonce, the firmware allow-list and the
//!   device's Ed25519 key; failures raise high-severity alerts.
//! - [`sweeper`]: expired challenges, re-attestation on schedule, and the outbox (records that
//!   were committed in PostgreSQL but not yet on the bus are sent again).
//! - [`cps_alerts`]: device alerts enriched with the device's identity and trust.
//! - [`api`]: the REST API (JWT).
//!
//! [`Service::start`] wires them; `main.rs` only parses flags.

pub mod api;
pub mod attestation;
pub mod consumer;
pub mod cps_alerts;
pub mod db;
pub mod records;
pub mod registration;
pub mod sweeper;
pub mod telemetry;

use std::net::SocketAddr;
use std::time::Duration;

use aurora_core::auth::Verifier;
use aurora_core::bus::{self, BusError, Producer};
use aurora_core::ops::{self, Readiness};
use aurora_core::Names;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The service name in logs, dead letters and consumer groups.
pub const SERVICE: &str = "device-registry";

/// Everything the service needs, already parsed.
#[derive(Debug, Clone)]
pub struct Config {
    pub names: Names,
    pub redis_url: String,
    pub database_url: String,
    /// This replica's name (consumer names).
    pub instance: String,
    pub http_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub verifier: Verifier,
    /// Take a device's public key from its first message (`public_key`, base64).
    pub trust_on_first_use: bool,
    /// How long a challenge stays answerable.
    pub attestation_timeout: Duration,
    /// Re-attest every device this often; `None` turns scheduled re-attestation off.
    pub reattest_interval: Option<Duration>,
    /// How often the sweeper looks for expired challenges, due re-attestations and unsent records.
    pub sweep_interval: Duration,
    /// A committed record not on the bus after this long is sent again by the sweeper.
    pub resend_after: Duration,
    /// Stream entries read per batch.
    pub batch_size: usize,
    /// Registration consumers in this replica (each its own consumer in the group).
    pub registration_workers: usize,
    /// Attestation consumers in this replica (default 1). More overlap batches like more
    /// replicas do, but then two answers of one device may be settled out of stream order.
    pub attestation_workers: usize,
    pub stream_maxlen: usize,
    pub db_max_connections: u32,
    /// An entry pending this long with another consumer is taken over.
    pub claim_idle: Duration,
}

impl Config {
    /// Defaults for a test or a tool: everything on loopback, ephemeral ports.
    pub fn local(names: Names, redis_url: &str, database_url: &str, verifier: Verifier) -> Self {
        Self {
            names,
            redis_url: redis_url.to_string(),
            database_url: database_url.to_string(),
            instance: "local".to_string(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ops_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            verifier,
            trust_on_first_use: false,
            attestation_timeout: Duration::from_secs(300),
            reattest_interval: None,
            sweep_interval: Duration::from_secs(5),
            resend_after: Duration::from_secs(30),
            batch_size: 1000,
            registration_workers: 2,
            attestation_workers: 1,
            stream_maxlen: 1_000_000,
            db_max_connections: 10,
            claim_idle: Duration::from_secs(30),
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Database(#[source] sqlx::Error),
    #[error("cannot apply the database migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the loops share.
#[derive(Clone)]
pub struct Context {
    pub cfg: Config,
    pub pool: sqlx::PgPool,
    pub producer: Producer,
    pub readiness: Readiness,
}

/// A running service.
pub struct Service {
    pub http_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub readiness: Readiness,
    pub pool: sqlx::PgPool,
    tasks: JoinSet<()>,
}

impl Service {
    /// Starts in order: PostgreSQL (and migrations), Redis, the consumers and the sweeper, the
    /// API, the ops endpoints. Everything stops when `shutdown` is cancelled.
    pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        let readiness = Readiness::new();
        readiness.register("postgres");
        readiness.register("redis");

        let pool = db::connect(&cfg.database_url, cfg.db_max_connections)
            .await
            .map_err(StartError::Database)?;
        db::migrate(&pool).await.map_err(StartError::Migrate)?;
        readiness.set_ready("postgres");

        let conn = bus::connect(&cfg.redis_url).await?;
        readiness.set_ready("redis");
        let producer = Producer::new(conn, cfg.stream_maxlen);

        let ctx = Context {
            cfg: cfg.clone(),
            pool: pool.clone(),
            producer,
            readiness: readiness.clone(),
        };

        let mut tasks = JoinSet::new();
        for worker in 0..cfg.registration_workers.max(1) {
            let reader = registration::reader(&ctx, worker).await?;
            tasks.spawn(registration::run(ctx.clone(), reader, shutdown.clone()));
        }
        for worker in 0..cfg.attestation_workers.max(1) {
            let reader = attestation::reader(&ctx, worker).await?;
            tasks.spawn(attestation::run(ctx.clone(), reader, shutdown.clone()));
        }
        let reader = cps_alerts::reader(&ctx).await?;
        tasks.spawn(cps_alerts::run(ctx.clone(), reader, shutdown.clone()));
        tasks.spawn(sweeper::run(ctx.clone(), shutdown.clone()));
        tasks.spawn(watch_dependencies(ctx.clone(), shutdown.clone()));

        let listener = tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "the API",
                addr: cfg.http_addr,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
            what: "the API",
            addr: cfg.http_addr,
            source,
        })?;
        let app = api::router(api::AppState::new(ctx.clone()));
        let http_shutdown = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "API server failed");
            }
        });
        tracing::info!(%http_addr, "device API listening");

        let (ops_addr, ops_task) = ops::serve(cfg.ops_addr, readiness.clone(), shutdown.clone())
            .await
            .map_err(|source| StartError::Bind {
                what: "the ops endpoints",
                addr: cfg.ops_addr,
                source,
            })?;
        tasks.spawn(async move {
            let _ = ops_task.await;
        });

        let drain_readiness = readiness.clone();
        let drain_signal = shutdown.clone();
        tasks.spawn(async move {
            drain_signal.cancelled().await;
            drain_readiness.start_draining();
        });

        Ok(Self {
            http_addr,
            ops_addr,
            readiness,
            pool,
            tasks,
        })
    }

    /// Waits until every part has stopped (after the shutdown token is cancelled), then
    /// closes the database pool.
    pub async fn wait(mut self) {
        while let Some(res) = self.tasks.join_next().await {
            if let Err(e) = res {
                tracing::error!(error = %e, "a task of the service panicked");
            }
        }
        self.pool.close().await;
    }
}

/// Keeps `/readyz` true to the state of PostgreSQL and Redis.
async fn watch_dependencies(ctx: Context, shutdown: CancellationToken) {
    let mut conn = ctx.producer.conn();
    loop {
        match db::ping(&ctx.pool).await {
            Ok(()) => ctx.readiness.set_ready("postgres"),
            Err(e) => ctx.readiness.set_not_ready("postgres", e.to_string()),
        }
        match bus::ping(&mut conn).await {
            Ok(()) => ctx.readiness.set_ready("redis"),
            Err(e) => ctx.readiness.set_not_ready("redis", e.to_string()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Why a batch could not be handled; its entries stay pending and come again.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("internal: {0}")]
    Internal(String),
}

impl BatchError {
    /// The readiness component a failure says is down.
    fn component(&self) -> Option<&'static str> {
        match self {
            Self::Database(_) => Some("postgres"),
            Self::Bus(_) => Some("redis"),
            Self::Internal(_) => None,
        }
    }
}

/// Waits before retrying after a failed batch: 100 ms doubling to 5 s. Returns false when
/// shutting down.
async fn back_off(attempt: &mut u32, shutdown: &CancellationToken) -> bool {
    let delay = Duration::from_millis(100u64.saturating_mul(1 << (*attempt).min(6)))
        .min(Duration::from_secs(5));
    *attempt = attempt.saturating_add(1);
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Reports a failed step of a loop: log, metric, readiness.
fn report_failure(ctx: &Context, part: &'static str, err: &BatchError) {
    tracing::warn!(part, error = %err, "batch failed; its entries will be delivered again");
    metrics::counter!(telemetry::BATCH_ERRORS, "part" => part).increment(1);
    if let Some(component) = err.component() {
        ctx.readiness.set_not_ready(component, err.to_string());
    }
}
