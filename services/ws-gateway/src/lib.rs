//! ws-gateway: pushes alerts, agent thoughts and approval requests to analysts over
//! WebSocket, takes their approval decisions, and serves a live console.
//!
//! Start-up, in order: names and JWT key from the flags, a Redis connection, one hub per
//! channel, the stream readers (fan-out) and the approval expiry sweeper, the ops endpoints,
//! the HTTP API. Shutdown, in order: `/readyz` fails, a grace period for the load balancer,
//! every client closed with 1001 (waited for, within the deadline), the readers stopped.

pub mod approvals;
pub mod config;
pub mod fanout;
pub mod http;
pub mod session;
pub mod telemetry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use aurora_core::bus;
use aurora_core::names::Channel;
use aurora_core::ops::{self, Readiness};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Args;

use approvals::ApprovalStore;
use fanout::Hub;
use session::{SessionConfig, SessionContext};

/// The service's name in logs and traces.
pub const SERVICE: &str = "ws-gateway";

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Namespace(#[from] aurora_core::names::InvalidNamespace),
    #[error(transparent)]
    Key(#[from] aurora_core::auth::KeyError),
    #[error(transparent)]
    Redis(#[from] bus::BusError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running gateway.
pub struct Gateway {
    /// Where the WebSocket/REST API and console listen.
    pub http_addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub ops_addr: SocketAddr,
    pub readiness: Readiness,
    task: JoinHandle<bool>,
}

impl Gateway {
    /// Waits until the gateway has shut down; `false` when the drain deadline cut it short.
    pub async fn wait(self) -> bool {
        self.task.await.unwrap_or(false)
    }
}

/// Starts the gateway; it runs until `shutdown` is cancelled, then drains.
pub async fn start(args: Args, shutdown: CancellationToken) -> Result<Gateway, StartError> {
    let names = args.common.names()?;
    let verifier = Arc::new(args.jwt.verifier()?);
    let conn = bus::connect(&args.common.redis_url).await?;
    let readiness = Readiness::new();

    let approvals = ApprovalStore::new(
        names.clone(),
        conn.clone(),
        args.common.stream_maxlen,
        args.approval_state_retention,
    );
    // Cancelled after the grace period: closes every session and stops the HTTP server.
    let sessions_token = CancellationToken::new();
    // Cancelled last: stops the readers, the sweeper and the ops endpoints.
    let background = CancellationToken::new();
    let session_config = SessionConfig {
        max_replay: args.max_replay,
        ping_interval: args.ping_interval,
        pong_timeout: args.pong_timeout,
        send_timeout: args.send_timeout,
    };

    let mut sessions = HashMap::new();
    let mut background_tasks = Vec::new();
    for channel in Channel::ALL {
        let hub = Hub::new(
            channel,
            names.channel_stream(channel),
            args.client_queue,
            args.max_connections_per_channel,
        );
        // Registered before the reader runs, so the gateway is not ready until it reads.
        readiness.register(&fanout::readiness_component(channel));
        let hook = (channel == Channel::Approvals).then(|| approvals.clone());
        background_tasks.push(tokio::spawn(fanout::run_reader(
            hub.clone(),
            args.common.redis_url.clone(),
            readiness.clone(),
            hook,
            args.fanout_linger,
            background.clone(),
        )));
        sessions.insert(
            channel.as_str(),
            SessionContext {
                hub,
                conn: conn.clone(),
                config: session_config.clone(),
                shutdown: sessions_token.clone(),
            },
        );
    }
    background_tasks.push(tokio::spawn(approvals::run_sweeper(
        approvals.clone(),
        args.expiry_sweep_interval,
        background.clone(),
    )));

    let ops_addr = args.common.ops_addr_or(config::DEFAULT_OPS_PORT);
    let (ops_addr, ops_task) = ops::serve(ops_addr, readiness.clone(), background.clone())
        .await
        .map_err(|source| StartError::Bind {
            addr: ops_addr,
            source,
        })?;

    let tracker = TaskTracker::new();
    let state = http::AppState {
        verifier,
        sessions,
        approvals,
        tracker: tracker.clone(),
    };
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.http_addr,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: args.http_addr,
        source,
    })?;
    let server_stop = sessions_token.clone();
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, http::router(state))
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%http_addr, %ops_addr, namespace = names.namespace(), "ws-gateway listening");

    let drain_readiness = readiness.clone();
    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        drain_readiness.start_draining();
        tracing::info!(grace = ?args.drain_grace, "draining: /readyz fails; closing clients after the grace period");
        tokio::time::sleep(args.drain_grace).await;
        sessions_token.cancel();
        tracker.close();
        // The deadline runs from the signal: the grace period is part of it.
        let left = args
            .common
            .shutdown_timeout
            .saturating_sub(args.drain_grace);
        let clean = tokio::time::timeout(left, async {
            tracker.wait().await;
            let _ = server.await;
        })
        .await
        .is_ok();
        if !clean {
            tracing::warn!(
                open = tracker.len(),
                "drain deadline passed with clients still open"
            );
        }
        background.cancel();
        for t in background_tasks {
            let _ = t.await;
        }
        let _ = ops_task.await;
        tracing::info!(clean, "ws-gateway stopped");
        clean
    });
    Ok(Gateway {
        http_addr,
        ops_addr,
        readiness,
        task,
    })
}
