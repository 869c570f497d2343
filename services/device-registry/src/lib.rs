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
//! - [`actions`]: device commands from the request (an approval first for a privileged
//!   action) to the device's receipt, every step an audit event.
//! - [`cps_alerts`]: device alerts enriched with the device's identity and trust.
//! - [`api`]: the REST API (JWT).
//!
//! The plumbing: [`config`] (flags, [`Config`]), [`health`] (PostgreSQL and Redis on
//! `/readyz`), [`streams`] (the consumer group), [`shared`] (what the parts share), [`db`]
//! (every statement), [`records`] (what goes on the bus), [`error`], [`telemetry`] (every
//! metric). [`DeviceRegistry`] is the service: its [`Service::start`] connects and spawns the
//! parts; `main.rs` only runs `aurora_core::service::run_main`.

pub mod actions;
pub mod api;
pub mod attestation;
pub mod config;
pub mod cps_alerts;
pub mod db;
pub mod error;
pub mod health;
pub mod records;
pub mod registration;
pub mod shared;
pub mod streams;
pub mod sweeper;
pub mod telemetry;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use aurora_core::bus::{self, GroupReader, Producer};
use aurora_core::consumer::{BatchHandler, Consumer};
use aurora_core::durability::SelfCheck;
use aurora_core::health::{connect_at_start, redis_at_start, Dependencies, REDIS};
use aurora_core::listener::GuardedListener;
use aurora_core::service::{Context, Running, Service};
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::error::StartError;
use crate::health::POSTGRES;
use crate::shared::Shared;

/// The service's name: logs, consumer group, dead letters, `AURORA_DEVICE_REGISTRY_*`.
pub const SERVICE: &str = "device-registry";

/// The ops port (`/healthz`, `/readyz`, `/metrics`) when `--ops-addr` is not given.
pub const OPS_PORT: u16 = 9102;

/// The service: a [`Config`] to start from, and where its API ends up listening.
pub struct DeviceRegistry {
    config: Config,
    api_addr: ApiAddr,
}

impl DeviceRegistry {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            api_addr: ApiAddr::default(),
        }
    }

    /// Where the REST API listens, known once the service has started (with port 0 in
    /// `--http-addr`, the port it was given).
    pub fn api_addr(&self) -> ApiAddr {
        self.api_addr.clone()
    }
}

/// The bound address of the REST API, set by [`Service::start`].
#[derive(Debug, Clone, Default)]
pub struct ApiAddr(Arc<OnceLock<SocketAddr>>);

impl ApiAddr {
    pub fn get(&self) -> Option<SocketAddr> {
        self.0.get().copied()
    }
}

impl Service for DeviceRegistry {
    const NAME: &'static str = SERVICE;
    const OPS_PORT: u16 = OPS_PORT;

    /// In order: PostgreSQL (and the migrations), Redis, the consumers, the sweeper and the
    /// dependency watcher, the API.
    async fn start(self, ctx: Context) -> anyhow::Result<Running> {
        let Self {
            config: cfg,
            api_addr,
        } = self;
        let readiness = &ctx.readiness;
        readiness.register(POSTGRES);
        readiness.register(REDIS);
        let pool = connect_at_start(
            readiness,
            &ctx.shutdown,
            POSTGRES,
            &bus::redacted_url(&cfg.database_url),
            |e: &sqlx::Error| matches!(e, sqlx::Error::Configuration(_)),
            || db::connect(&cfg.database_url, cfg.db_max_connections),
        )
        .await?;
        match cfg.migrations {
            config::Migrations::Apply | config::Migrations::Only => {
                readiness.set_not_ready(POSTGRES, "applying the migrations");
                db::migrate(&pool).await.map_err(StartError::Migrate)?;
            }
            config::Migrations::Skip => {
                readiness.set_not_ready(POSTGRES, "checking the migrations");
                check_migrations(&pool).await?;
            }
        }
        if cfg.migrations == config::Migrations::Only {
            tracing::info!("--migrate-only: the migrations are applied, exiting");
            pool.close().await;
            // Nothing to run: the process drains at once and exits 0.
            return Ok(Running::new(&ctx));
        }
        readiness.set_ready(POSTGRES);
        let conn = redis_at_start(readiness, &ctx.shutdown, &cfg.redis_url).await?;

        let dependencies = health::dependencies(pool.clone(), conn.clone());
        let shared = Shared {
            producer: Producer::new(conn, cfg.stream_maxlen),
            pool: pool.clone(),
            cfg,
        };

        let mut running = Running::new(&ctx);
        for worker in 0..shared.cfg.registration_workers.max(1) {
            let reader = registration::reader(&shared, &ctx.instance, worker)
                .await
                .map_err(StartError::Bus)?;
            let handler = registration::Registration(shared.clone());
            running.spawn(consume(&ctx, reader, handler, &dependencies));
        }
        for worker in 0..shared.cfg.attestation_workers.max(1) {
            let reader = attestation::reader(&shared, &ctx.instance, worker)
                .await
                .map_err(StartError::Bus)?;
            let handler = attestation::Attestation(shared.clone());
            running.spawn(consume(&ctx, reader, handler, &dependencies));
        }
        let reader = actions::decisions_reader(&shared, &ctx.instance)
            .await
            .map_err(StartError::Bus)?;
        running.spawn(consume(
            &ctx,
            reader,
            actions::Decisions(shared.clone()),
            &dependencies,
        ));
        let reader = actions::outcomes_reader(&shared, &ctx.instance)
            .await
            .map_err(StartError::Bus)?;
        running.spawn(consume(
            &ctx,
            reader,
            actions::Outcomes(shared.clone()),
            &dependencies,
        ));
        let reader = actions::receipts_reader(&shared, &ctx.instance)
            .await
            .map_err(StartError::Bus)?;
        running.spawn(consume(
            &ctx,
            reader,
            actions::Receipts(shared.clone()),
            &dependencies,
        ));
        let reader = cps_alerts::reader(&shared, &ctx.instance)
            .await
            .map_err(StartError::Bus)?;
        running.spawn(consume(
            &ctx,
            reader,
            cps_alerts::CpsAlerts(shared.clone()),
            &dependencies,
        ));
        running.spawn(until_aborted(
            &ctx,
            sweeper::run(shared.clone(), ctx.readiness.clone(), ctx.shutdown.clone()),
        ));
        running.spawn(dependencies.watch(
            ctx.readiness.clone(),
            health::WATCH_INTERVAL,
            ctx.shutdown.clone(),
        ));
        running.spawn(
            SelfCheck::redis(shared.producer.conn())
                .watch(ctx.readiness.clone(), ctx.shutdown.clone()),
        );

        let http_addr = shared.cfg.http_addr;
        let bind_error = |source| StartError::Bind {
            what: "the API",
            addr: http_addr,
            source,
        };
        let listener = GuardedListener::bind(http_addr, "api", shared.cfg.listener)
            .await
            .map_err(bind_error)?;
        let bound = axum::serve::Listener::local_addr(&listener).map_err(bind_error)?;
        // Set once: `start` takes the service by value.
        let _ = api_addr.0.set(bound);
        let app = api::router(api::AppState::new(shared));
        running.spawn_fallible(serve_api(
            listener,
            app,
            ctx.shutdown.clone(),
            ctx.abort.clone(),
        ));
        tracing::info!(%bound, "device API listening");

        running.after(async move { pool.close().await });
        Ok(running)
    }
}

/// With `--skip-migrations`: fails, naming them, while migrations this binary knows are not
/// applied to the database (run `device-registry --migrate-only` first). Reads only.
async fn check_migrations(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
        .await
        .context("cannot read the applied migrations")?;
    let applied: Vec<i64> = match table {
        Some(_) => sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
            .context("cannot read the applied migrations")?,
        None => Vec::new(),
    };
    let missing: Vec<String> = db::MIGRATOR
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "--skip-migrations: the database lacks the migrations {}: apply them first \
             (device-registry --migrate-only, or the chart's migration Job)",
            missing.join(", ")
        )
    }
}

/// A consumer of the service that reads until shutdown, finishes the batch it holds, and
/// gives it up (it stays pending) when the drain deadline passes.
fn consume<H: BatchHandler>(
    ctx: &Context,
    reader: GroupReader,
    handler: H,
    dependencies: &Dependencies,
) -> impl Future<Output = ()> + Send + 'static {
    let consumer = Consumer {
        reader,
        handler,
        dependencies: dependencies.clone(),
        readiness: ctx.readiness.clone(),
    };
    until_aborted(ctx, consumer.run(ctx.shutdown.clone()))
}

/// `work`, dropped where it is when the drain deadline passes.
fn until_aborted<F>(ctx: &Context, work: F) -> impl Future<Output = ()> + Send + 'static
where
    F: Future<Output = ()> + Send + 'static,
{
    let abort = ctx.abort.clone();
    async move {
        tokio::select! {
            _ = work => {}
            _ = abort.cancelled() => {}
        }
    }
}

/// Serves the API until shutdown, lets the requests in flight finish, and closes what is
/// still open when the drain deadline passes. The listener is aurora-core's guarded one:
/// idle and header timeouts, caps per listener and per client address.
async fn serve_api(
    listener: GuardedListener,
    app: axum::Router,
    shutdown: CancellationToken,
    abort: CancellationToken,
) -> std::io::Result<()> {
    let served = axum::serve(listener, aurora_core::listener::app(app))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .into_future();
    tokio::select! {
        served = served => served,
        _ = abort.cancelled() => {
            tracing::warn!("API requests still open at the drain deadline: closing them");
            Ok(())
        }
    }
}
