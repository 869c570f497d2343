//! ws-gateway: pushes alerts, agent thoughts and approval requests to analysts over
//! WebSocket, takes their approval decisions, and serves a live console.
//!
//! Start-up ([`Gateway::start`]), in order: Redis (readiness part `redis`, waited for), one
//! hub per channel and its stream reader (`stream:<channel>`, ready once it reads), the
//! approval expiry sweeper, the dependency watcher, the HTTP API. Shutdown: `/readyz` fails
//! at once (the shared drain), the clients still get the live streams for `--drain-grace`,
//! then every client is closed with 1001 and waited for; the stream readers and the sweeper
//! stop; at the drain deadline (`--shutdown-timeout`) the sessions still open are dropped.
//!
//! Modules, from the bottom up: [`telemetry`], [`error`], [`health`], [`frame`] (what a
//! client is sent), [`approvals`] (the approval state), [`fanout`] (the stream readers and
//! hubs), [`session`] (one connection), [`http`] (routes and the connections' drain),
//! [`config`] (flags).

pub mod approvals;
pub mod config;
pub mod error;
pub mod fanout;
pub mod frame;
pub mod health;
pub mod http;
pub mod session;
pub mod telemetry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use aurora_core::auth::Verifier;
use aurora_core::durability::SelfCheck;
use aurora_core::names::Channel;
use aurora_core::service::{Context, Running, Service};
use aurora_core::Names;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Args;

use approvals::ApprovalStore;
use aurora_core::listener::GuardedListener;
use error::StartError;
use fanout::{Hub, Reader};
use session::{SessionConfig, SessionContext, SubjectSlots};

/// The service's name: logs, state keys, the `AURORA_WS_GATEWAY_` variables.
pub const SERVICE: &str = "ws-gateway";

/// The ops port (`/healthz`, `/readyz`, `/metrics`) when `--ops-addr` is not given.
pub const OPS_PORT: u16 = 9103;

/// The gateway, configured and not started yet.
pub struct Gateway {
    args: Args,
    names: Names,
    verifier: Arc<Verifier>,
    signer: Option<aurora_core::approval::SigningKey>,
    listener: Option<std::net::TcpListener>,
}

impl Gateway {
    /// Checks the namespace and the JWT key.
    pub fn new(args: Args) -> Result<Self, StartError> {
        let names = args.common.names()?;
        let verifier = Arc::new(args.jwt.verifier()?);
        let signer = args
            .approval_signing_key
            .as_deref()
            .map(aurora_core::approval::SigningKey::read)
            .transpose()?;
        match &signer {
            Some(key) => {
                tracing::info!(key_id = key.id(), "approved device actions are signed")
            }
            None => tracing::warn!(
                "no --approval-signing-key: approvals of device actions are refused (503)"
            ),
        }
        Ok(Self {
            args,
            names,
            verifier,
            signer,
            listener: None,
        })
    }

    /// Binds the API's address now (before the launch) and returns it: for tests and tools
    /// that listen on port 0. Without it, [`Service::start`] binds `--http-addr`.
    pub fn bind_http(&mut self) -> Result<SocketAddr, StartError> {
        let addr = self.args.http_addr;
        let bind_error = |source| StartError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        self.listener = Some(listener);
        Ok(bound)
    }

    async fn listener(&mut self) -> Result<tokio::net::TcpListener, StartError> {
        let addr = self.args.http_addr;
        let bind_error = |source| StartError::Bind { addr, source };
        match self.listener.take() {
            Some(listener) => tokio::net::TcpListener::from_std(listener).map_err(bind_error),
            None => tokio::net::TcpListener::bind(addr)
                .await
                .map_err(bind_error),
        }
    }
}

impl Service for Gateway {
    const NAME: &'static str = SERVICE;
    const OPS_PORT: u16 = OPS_PORT;

    async fn start(mut self, ctx: Context) -> anyhow::Result<Running> {
        for channel in Channel::ALL {
            // Registered before anything runs, so the gateway is not ready until each reads.
            ctx.readiness.register(&health::stream_part(channel));
        }
        // Retried until Redis answers or the gateway is stopped; an unusable URL ends the start.
        let conn = aurora_core::health::redis_at_start(
            &ctx.readiness,
            &ctx.shutdown,
            &self.args.common.redis_url,
        )
        .await?;
        let listener = self.listener().await?;
        let http_addr = listener.local_addr()?;
        let Gateway {
            args,
            names,
            verifier,
            signer,
            ..
        } = self;
        let dependencies = health::dependencies(conn.clone());
        let approvals = ApprovalStore::new(
            names.clone(),
            conn.clone(),
            args.common.stream_maxlen,
            args.approval_state_retention,
        )
        .with_signer(signer, args.approval_action_ttl);
        // Cancelled `--drain-grace` after the shutdown: the listener stops, every session
        // closes with 1001, the readers and the sweeper stop.
        let closing = CancellationToken::new();
        let session_config = SessionConfig {
            max_replay: args.max_replay,
            ping_interval: args.ping_interval,
            pong_timeout: args.pong_timeout,
            send_timeout: args.send_timeout,
            close_timeout: args.close_timeout,
        };

        let mut running = Running::new(&ctx);
        let mut sessions = HashMap::new();
        for channel in Channel::ALL {
            let hub = Hub::new(
                channel,
                names.channel_stream(channel),
                args.client_queue,
                args.max_connections_per_channel,
            );
            let reader = Reader {
                hub: hub.clone(),
                redis_url: args.common.redis_url.clone(),
                readiness: ctx.readiness.clone(),
                dependencies: dependencies.clone(),
                approvals: (channel == Channel::Approvals).then(|| approvals.clone()),
                linger: args.fanout_linger,
            };
            running.spawn(reader.run(closing.clone()));
            sessions.insert(
                channel.as_str(),
                SessionContext {
                    hub,
                    conn: conn.clone(),
                    config: session_config.clone(),
                    subjects: SubjectSlots::new(args.max_connections_per_subject),
                    shutdown: closing.clone(),
                },
            );
        }
        running.spawn(approvals::run_sweeper(
            approvals.clone(),
            args.expiry_sweep_interval,
            closing.clone(),
        ));
        running.spawn(dependencies.watch(
            ctx.readiness.clone(),
            health::WATCH_INTERVAL,
            ctx.shutdown.clone(),
        ));
        running.spawn(
            SelfCheck::redis(conn.clone()).watch(ctx.readiness.clone(), ctx.shutdown.clone()),
        );
        let state = http::AppState {
            verifier,
            sessions,
            approvals,
            tracker: TaskTracker::new(),
            abort: ctx.abort.clone(),
            origins: http::Origins::new(&args.allowed_origins),
        };
        let drain = http::Drain {
            shutdown: ctx.shutdown.clone(),
            grace: args.drain_grace,
            closing,
            abort: ctx.abort.clone(),
        };
        let listener = GuardedListener::new(listener, "ws", args.listener.limits());
        running.spawn_fallible(http::serve(listener, state, drain));
        tracing::info!(service = SERVICE, %http_addr, ops_addr = %ctx.ops_addr, namespace = names.namespace(), "listening");
        Ok(running)
    }
}
