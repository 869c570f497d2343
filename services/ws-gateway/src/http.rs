//! The HTTP side: the three WebSocket channels, the approval decision API and the console,
//! and the drain of the connections (axum does not wait for upgraded sockets: the gateway
//! tracks them itself).
//!
//! No request logging layer: the token may be in the query string, so only
//! [`aurora_core::auth::redact_query`]'s version of a path is ever logged.
//!
//! The listener is aurora-core's guarded one (idle and header timeouts, caps per listener
//! and per address): an accepted session marks its connection established, so only the
//! connections that never authenticate are cut by the idle timeout. A WebSocket upgrade from
//! a page of another origin than the allowed ones ([`Origins`]) is refused with 403.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aurora_core::auth::http::{authorize, ApprovalsManage, Authorized};
use aurora_core::auth::{self, Verifier};
use aurora_core::bus;
use aurora_core::listener::{self, Conn, GuardedListener};
use aurora_core::names::Channel;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRef, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::approvals::{ApprovalStore, Verdict, MAX_COMMENT_CHARS};
use crate::error::DecideError;
use crate::session::{self, Admission, SessionContext, CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER};

/// The console page (plain HTML and JavaScript).
const CONSOLE: &str = include_str!("../static/console.html");

/// Largest message a client may send (clients only answer pings and close).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Per-connection read buffer: small, since clients send almost nothing.
const READ_BUFFER: usize = 4 * 1024;
/// Bytes written in one go; frames beyond this are flushed.
const WRITE_BUFFER: usize = 16 * 1024;
/// A client whose unsent frames exceed this is failed.
const MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub verifier: Arc<Verifier>,
    pub sessions: HashMap<&'static str, SessionContext>,
    pub approvals: ApprovalStore,
    /// Every upgraded socket, so a drain can wait for them (axum does not).
    pub tracker: TaskTracker,
    /// Cancelled at the drain deadline: the sessions still open are dropped.
    pub abort: CancellationToken,
    /// The pages that may open a WebSocket.
    pub origins: Origins,
}

/// Which browser pages may open a WebSocket (`--allowed-origins`): the gateway's own (an
/// `Origin` whose host is the request's `Host`), the listed ones, or all with `*`. A request
/// without `Origin` is not from a browser page and is allowed (its token decides).
#[derive(Debug, Clone, Default)]
pub struct Origins {
    any: bool,
    listed: Vec<String>,
}

impl Origins {
    pub fn new(allowed: &[String]) -> Self {
        let listed: Vec<String> = allowed
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        Self {
            any: listed.iter().any(|o| o == "*"),
            listed,
        }
    }

    /// `Ok` when the request's Origin may connect; otherwise why not.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        if self.any {
            return Ok(());
        }
        let origin = origin
            .to_str()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .map_err(|_| "origin not allowed".to_string())?;
        if self.listed.contains(&origin) {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.trim().to_ascii_lowercase());
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default().to_string());
        match (host, origin_host) {
            (Some(host), Some(origin_host)) if host == origin_host => Ok(()),
            _ => Err(format!(
                "origin {origin:?} not allowed: only the gateway's own pages and --allowed-origins may connect"
            )),
        }
    }
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        Verifier::clone(&state.verifier)
    }
}

/// When the connections stop: `shutdown` starts the drain, `grace` later `closing` is
/// cancelled (the listener stops, every session closes with 1001, the stream readers stop),
/// `abort` gives up whatever is still open.
pub struct Drain {
    pub shutdown: CancellationToken,
    pub grace: Duration,
    pub closing: CancellationToken,
    pub abort: CancellationToken,
}

/// Serves the API until the drain, then waits for every session to end (or for the abort).
pub async fn serve(listener: GuardedListener, state: AppState, drain: Drain) -> anyhow::Result<()> {
    let tracker = state.tracker.clone();
    // However this ends (a failed server too), the readers and the sessions are told to stop.
    let _closing = drain.closing.clone().drop_guard();
    let server = axum::serve(listener, listener::app(router(state)))
        .with_graceful_shutdown(drain.closing.clone().cancelled_owned())
        .into_future();
    tokio::pin!(server);
    let grace = async {
        drain.shutdown.cancelled().await;
        tracing::info!(grace = ?drain.grace, open = tracker.len(), "draining: closing clients after the grace period");
        tokio::select! {
            _ = tokio::time::sleep(drain.grace) => {}
            _ = drain.abort.cancelled() => {}
        }
        drain.closing.cancel();
    };
    tokio::select! {
        served = &mut server => {
            served.context("the HTTP server failed")?;
            anyhow::bail!("the HTTP server stopped by itself");
        }
        _ = grace => {}
    }
    tokio::select! {
        served = &mut server => served.context("the HTTP server failed")?,
        _ = drain.abort.cancelled() => {}
    }
    tracker.close();
    tokio::select! {
        _ = tracker.wait() => tracing::info!("every client closed"),
        _ = drain.abort.cancelled() => {
            tracing::warn!(open = tracker.len(), "drain deadline passed with clients still open: dropping them");
        }
    }
    Ok(())
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/", get(console))
        .route("/api/v1/approvals/{id}/decision", post(decide));
    for channel in Channel::ALL {
        router = router.route(
            channel.path(),
            get(
                move |state: State<AppState>, ws: WebSocketUpgrade, parts: Parts| {
                    connect(channel, state, ws, parts)
                },
            ),
        );
    }
    router.with_state(state)
}

async fn console() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(CONSOLE))
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn connect(
    channel: Channel,
    State(state): State<AppState>,
    ws: WebSocketUpgrade,
    parts: Parts,
) -> Response {
    let uri = &parts.uri;
    let Some(ctx) = state.sessions.get(channel.as_str()).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Err(reason) = state.origins.check(&parts.headers) {
        crate::telemetry::origin_refused(channel);
        tracing::info!(channel = channel.as_str(), reason = %reason, "WebSocket from another origin refused");
        return (StatusCode::FORBIDDEN, Json(json!({ "error": reason }))).into_response();
    }
    let since = query_param(uri, "since");
    if let Some(s) = &since {
        if bus::parse_id(s).is_none() {
            return (
                StatusCode::BAD_REQUEST,
                "since must be a stream position (e.g. 1700000000000-0)",
            )
                .into_response();
        }
    }
    let path = format!(
        "{}?{}",
        uri.path(),
        auth::redact_query(uri.query().unwrap_or_default())
    );
    let admission = admit(&state, &ctx, channel, &parts, since);
    if let Admission::Refused { code, reason } = &admission {
        tracing::info!(channel = channel.as_str(), %path, code, reason = %reason, "connection refused");
    }
    let tracker = state.tracker.clone();
    let abort = state.abort.clone();
    // An accepted session has its own liveness checks (pings, token expiry): the listener's
    // idle timeout is for the connections that never authenticate.
    let conn: Option<Conn> = matches!(admission, Admission::Accepted { .. })
        .then(|| {
            parts
                .extensions
                .get::<ConnectInfo<Conn>>()
                .map(|ConnectInfo(c)| c.clone())
        })
        .flatten();
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_failed_upgrade(move |e| {
            tracing::info!(channel = channel.as_str(), error = %e, "WebSocket upgrade failed")
        })
        .on_upgrade(move |socket| async move {
            if let Some(conn) = conn {
                conn.establish();
            }
            tracker
                .track_future(async move {
                    // At the drain deadline the session is dropped with its socket.
                    tokio::select! {
                        _ = session::run(socket, admission, ctx) => {}
                        _ = abort.cancelled() => {}
                    }
                })
                .await
        })
}

fn admit(
    state: &AppState,
    ctx: &SessionContext,
    channel: Channel,
    parts: &Parts,
    since: Option<String>,
) -> Admission {
    if ctx.shutdown.is_cancelled() {
        return Admission::Refused {
            code: session::CLOSE_GOING_AWAY,
            reason: "server shutting down: reconnect".into(),
        };
    }
    // Refused after the upgrade, with a close code a browser can see (not a 401 or 403).
    let claims = match authorize(parts, &state.verifier, channel.permission()) {
        Ok(claims) => claims,
        Err(e) => {
            return Admission::Refused {
                code: CLOSE_POLICY,
                reason: e.to_string(),
            }
        }
    };
    let Some(subject_slot) = ctx.subjects.try_take(&claims.sub) else {
        return Admission::Refused {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: "too many connections for this subject on this server: try again later".into(),
        };
    };
    match ctx.hub.slots.clone().try_acquire_owned() {
        Ok(permit) => Admission::Accepted {
            token_valid_for: claims.remaining(),
            subject: claims.sub,
            since,
            permit,
            subject_slot,
        },
        Err(_) => Admission::Refused {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: "channel full on this server: try again later".into(),
        },
    }
}

/// The body of a decision.
#[derive(Debug, serde::Deserialize)]
struct DecisionRequest {
    decision: Verdict,
    #[serde(default)]
    comment: Option<String>,
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn decide(
    authorized: Authorized<ApprovalsManage>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return error(StatusCode::NOT_FOUND, "no approval with this id");
    };
    let request: DecisionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"decision\":\"approve\"|\"reject\",\"comment\":...}}: {e}"),
            )
        }
    };
    if request
        .comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("comment longer than {MAX_COMMENT_CHARS} characters"),
        );
    }
    match state
        .approvals
        .decide(&id, request.decision, &authorized.0.sub, request.comment)
        .await
    {
        Ok(approval) => (StatusCode::OK, Json(approval)).into_response(),
        Err(DecideError::NotFound) => error(StatusCode::NOT_FOUND, DecideError::NotFound),
        Err(DecideError::Conflict(status)) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": format!("the approval is already {status}"), "status": status })),
        )
            .into_response(),
        Err(e @ DecideError::OwnRequest) => error(StatusCode::FORBIDDEN, e),
        Err(e @ DecideError::NoSigningKey) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e @ DecideError::BadAction(_)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e @ DecideError::Corrupt(_)) => {
            tracing::error!(approval = %id, error = %e, "stored approval unreadable");
            error(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
        Err(e @ DecideError::Store(_)) => {
            tracing::warn!(approval = %id, error = %e, "decision failed: Redis unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "approval store unavailable: retry",
            )
        }
    }
}
