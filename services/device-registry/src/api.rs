//! The REST API (axum, JWT of SPEC.md).
//!
//! | route | permission |
//! |---|---|
//! | `GET /api/v1/devices`, `GET /api/v1/devices/{id}` | `devices:read` |
//! | `POST /api/v1/devices/{id}/quarantine`, `.../commands`, `.../attest`, `PUT .../key` | `devices:write` |
//! | `GET/POST/DELETE /api/v1/firmware` | `firmware:manage` |
//! | `GET /api/v1/openapi.json` | none |
//!
//! `{id}` is the device's UUID or its device id. Errors are `{"error": "..."}` with 401
//! (no valid token), 403 (missing permission), 400 (invalid input), 404 (unknown device),
//! 503 (PostgreSQL or Redis unavailable). The router is built from [`routes`] only, so the
//! test that compares [`routes`] with the OpenAPI document covers every route.

use std::marker::PhantomData;

use aurora_core::auth::{token_from_request, AuthError, Claims, Permission};
use aurora_core::model::{is_valid_device_id, to_bytes};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::{header, request::Parts, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::db::{self, status, DeviceFilter, DeviceRef};
use crate::records;
use crate::registration::decode_public_key;
use crate::{attestation, telemetry, BatchError, Context};

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 100;

#[derive(Clone)]
pub struct AppState {
    ctx: Context,
}

impl AppState {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

/// Every route: (method, path, handler). The router is made of these and nothing else.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (
            Method::GET,
            "/api/v1/devices",
            axum::routing::get(list_devices),
        ),
        (
            Method::GET,
            "/api/v1/devices/{id}",
            axum::routing::get(get_device),
        ),
        (
            Method::POST,
            "/api/v1/devices/{id}/quarantine",
            axum::routing::post(quarantine),
        ),
        (
            Method::POST,
            "/api/v1/devices/{id}/commands",
            axum::routing::post(send_command),
        ),
        (
            Method::POST,
            "/api/v1/devices/{id}/attest",
            axum::routing::post(attest),
        ),
        (
            Method::PUT,
            "/api/v1/devices/{id}/key",
            axum::routing::put(put_key),
        ),
        (
            Method::GET,
            "/api/v1/firmware",
            axum::routing::get(list_firmware),
        ),
        (
            Method::POST,
            "/api/v1/firmware",
            axum::routing::post(add_firmware),
        ),
        (
            Method::DELETE,
            "/api/v1/firmware",
            axum::routing::delete(delete_firmware),
        ),
        (
            Method::GET,
            "/api/v1/openapi.json",
            axum::routing::get(openapi),
        ),
    ]
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .route_layer(axum::middleware::from_fn(count))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

async fn count(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let response = next.run(req).await;
    metrics::counter!(telemetry::HTTP_REQUESTS, "route" => route, "method" => method,
        "status" => response.status().as_u16().to_string())
    .increment(1);
    response
}

// ---------------------------------------------------------------- errors and auth

/// Why a request failed; rendered as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "database error in the API");
        Self::Unavailable("database".into())
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        tracing::warn!(error = %e, "dependency error in the API");
        Self::Unavailable(e.to_string())
    }
}

impl From<aurora_core::bus::BusError> for ApiError {
    fn from(e: aurora_core::bus::BusError) -> Self {
        BatchError::Bus(e).into()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::BadRequest(format!("invalid query string: {}", e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Auth(e) if e.is_unauthenticated() => StatusCode::UNAUTHORIZED,
            Self::Auth(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = Json(json!({ "error": self.to_string() }));
        if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

/// A permission a route needs.
pub trait Needs: Send + Sync + 'static {
    const PERMISSION: Permission;
}
pub struct DevicesRead;
pub struct DevicesWrite;
pub struct FirmwareManage;
impl Needs for DevicesRead {
    const PERMISSION: Permission = Permission::DevicesRead;
}
impl Needs for DevicesWrite {
    const PERMISSION: Permission = Permission::DevicesWrite;
}
impl Needs for FirmwareManage {
    const PERMISSION: Permission = Permission::FirmwareManage;
}

/// The claims of a request whose token is valid and grants `P` (else 401 or 403). First in
/// every handler's arguments, so identity is checked before input.
pub struct Authorized<P: Needs>(pub Claims, PhantomData<P>);

impl<P: Needs> FromRequestParts<AppState> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = token_from_request(authorization, parts.uri.query());
        let claims = state
            .ctx
            .cfg
            .verifier
            .authorize(token.as_deref(), P::PERMISSION)?;
        Ok(Self(claims, PhantomData))
    }
}

fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn device_ref(id: &str) -> Result<DeviceRef, ApiError> {
    if let Ok(u) = uuid::Uuid::parse_str(id) {
        Ok(DeviceRef::Uuid(u))
    } else if is_valid_device_id(id) {
        Ok(DeviceRef::DeviceId(id.to_string()))
    } else {
        Err(ApiError::BadRequest(
            "invalid device id: use the device's UUID or its id (1 to 128 characters of A-Z, a-z, 0-9, '_', '.', ':' or '-')".into(),
        ))
    }
}

async fn existing_device(state: &AppState, id: &str) -> Result<db::Device, ApiError> {
    let r = device_ref(id)?;
    db::get_device(&state.ctx.pool, &r)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown device {id:?}")))
}

// ---------------------------------------------------------------- devices

#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    model: Option<String>,
    seen_after: Option<String>,
    seen_before: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn timestamp(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "{name} must be an RFC 3339 time, e.g. 2024-01-15T10:30:00Z"
                    ))
                })
        })
        .transpose()
}

fn encode_cursor(device_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(device_id)
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| is_valid_device_id(s))
        .ok_or_else(|| {
            ApiError::BadRequest(
                "invalid cursor: pass next_cursor of the previous page as it is".into(),
            )
        })
}

async fn list_devices(
    _auth: Authorized<DevicesRead>,
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params?;
    if let Some(s) = &p.status {
        if !status::ALL.contains(&s.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown status {s:?} (one of {})",
                status::ALL.join(", ")
            )));
        }
    }
    let limit = match &p.limit {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be a number from 1 to {MAX_PAGE}"))
            })?,
    };
    let filter = DeviceFilter {
        status: p.status,
        model: p.model,
        seen_after: timestamp("seen_after", p.seen_after.as_deref())?,
        seen_before: timestamp("seen_before", p.seen_before.as_deref())?,
        after: p.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: limit + 1,
    };
    let mut devices = db::list_devices(&state.ctx.pool, &filter).await?;
    let next_cursor = if devices.len() as i64 > limit {
        devices.truncate(limit as usize);
        devices.last().map(|d| encode_cursor(&d.device_id))
    } else {
        None
    };
    Ok(Json(
        json!({ "devices": devices, "next_cursor": next_cursor }),
    ))
}

async fn get_device(
    _auth: Authorized<DevicesRead>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<db::Device>, ApiError> {
    Ok(Json(existing_device(&state, &id).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineBody {
    reason: Option<String>,
}

async fn quarantine(
    Authorized(claims, _): Authorized<DevicesWrite>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let r = device_ref(&id)?;
    let b: QuarantineBody = if body.iter().all(u8::is_ascii_whitespace) {
        QuarantineBody::default()
    } else {
        json_body(&body)?
    };
    let reason = b
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| format!("quarantined by {}", claims.sub));
    if reason.len() > 1000 {
        return Err(ApiError::BadRequest(
            "reason must be at most 1000 characters".into(),
        ));
    }
    let mut tx = state.ctx.pool.begin().await?;
    let device = db::quarantine(&mut tx, &r, &reason)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown device {id:?}")))?;
    let cmd = records::command(
        &device.device_id,
        "quarantine",
        json!({ "reason": reason }),
        None,
    );
    state
        .ctx
        .producer
        .publish(&state.ctx.cfg.names.cps_commands(), &to_bytes(&cmd))
        .await?;
    tx.commit().await?;
    tracing::warn!(device = %device.device_id, by = %claims.sub, %reason, "device quarantined");
    Ok(Json(json!({ "device": device, "command_id": cmd.id })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    action: String,
    #[serde(default)]
    params: Value,
    /// The command is not delivered after this many seconds.
    ttl_seconds: Option<u64>,
}

fn valid_action(a: &str) -> bool {
    (1..=64).contains(&a.len())
        && a.starts_with(|c: char| c.is_ascii_lowercase())
        && a.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

async fn send_command(
    Authorized(claims, _): Authorized<DevicesWrite>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    device_ref(&id)?;
    let b: CommandBody = json_body(&body)?;
    if !valid_action(&b.action) {
        return Err(ApiError::BadRequest(
            "action must be 1 to 64 characters of a-z, 0-9 or '_', starting with a letter".into(),
        ));
    }
    if b.action == "attest" {
        return Err(ApiError::BadRequest(
            "use POST /api/v1/devices/{id}/attest to challenge a device".into(),
        ));
    }
    if !(b.params.is_object() || b.params.is_null()) {
        return Err(ApiError::BadRequest("params must be a JSON object".into()));
    }
    let expires_at = match b.ttl_seconds {
        None => None,
        Some(s) if (1..=7 * 86_400).contains(&s) => {
            Some(Utc::now() + chrono::Duration::seconds(s as i64))
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "ttl_seconds must be from 1 to 604800".into(),
            ))
        }
    };
    let device = existing_device(&state, &id).await?;
    let cmd = records::command(&device.device_id, &b.action, b.params, expires_at);
    state
        .ctx
        .producer
        .publish(&state.ctx.cfg.names.cps_commands(), &to_bytes(&cmd))
        .await?;
    tracing::info!(device = %device.device_id, action = %cmd.action, by = %claims.sub, "command queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "command_id": cmd.id, "device_id": device.device_id, "action": cmd.action })),
    ))
}

async fn attest(
    _auth: Authorized<DevicesWrite>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let device = existing_device(&state, &id).await?;
    let challenges =
        attestation::challenge(&state.ctx, std::slice::from_ref(&device.device_id), "api").await?;
    let c = challenges
        .first()
        .ok_or_else(|| ApiError::Unavailable("the challenge was not stored".into()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({ "device_id": device.device_id, "command_id": c.command_id, "expires_at": c.expires_at }),
        ),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    public_key: String,
}

async fn put_key(
    _auth: Authorized<DevicesWrite>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<db::Device>, ApiError> {
    let r = device_ref(&id)?;
    let b: KeyBody = json_body(&body)?;
    let key = decode_public_key(&b.public_key).map_err(ApiError::BadRequest)?;
    db::set_public_key(&state.ctx.pool, &r, &key)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("unknown device {id:?}")))
}

// ---------------------------------------------------------------- firmware

#[derive(Debug, Deserialize)]
struct FirmwareQuery {
    model: Option<String>,
}

async fn list_firmware(
    _auth: Authorized<FirmwareManage>,
    State(state): State<AppState>,
    q: Result<Query<FirmwareQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q?;
    let firmware = db::list_firmware(&state.ctx.pool, q.model.as_deref()).await?;
    Ok(Json(json!({ "firmware": firmware })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FirmwareEntry {
    model: String,
    version: String,
    sha256: String,
}

impl FirmwareEntry {
    fn validated(mut self) -> Result<Self, ApiError> {
        for (name, v) in [("model", &self.model), ("version", &self.version)] {
            if v.trim().is_empty() || v.len() > 128 {
                return Err(ApiError::BadRequest(format!(
                    "{name} must be 1 to 128 characters"
                )));
            }
        }
        self.sha256 = self.sha256.trim().to_ascii_lowercase();
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::BadRequest("sha256 must be 64 hex digits".into()));
        }
        Ok(self)
    }
}

async fn add_firmware(
    Authorized(claims, _): Authorized<FirmwareManage>,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let f = json_body::<FirmwareEntry>(&body)?.validated()?;
    let created = db::add_firmware(
        &state.ctx.pool,
        &f.model,
        &f.version,
        &f.sha256,
        &claims.sub,
    )
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(
            json!({ "model": f.model, "version": f.version, "sha256": f.sha256, "created": created }),
        ),
    ))
}

#[derive(Debug, Deserialize)]
struct FirmwareKey {
    model: Option<String>,
    version: Option<String>,
    sha256: Option<String>,
}

async fn delete_firmware(
    _auth: Authorized<FirmwareManage>,
    State(state): State<AppState>,
    q: Result<Query<FirmwareKey>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) = q?;
    let (Some(model), Some(version), Some(sha256)) = (q.model, q.version, q.sha256) else {
        return Err(ApiError::BadRequest(
            "model, version and sha256 are required query parameters".into(),
        ));
    };
    let f = FirmwareEntry {
        model,
        version,
        sha256,
    }
    .validated()?;
    if db::delete_firmware(&state.ctx.pool, &f.model, &f.version, &f.sha256).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(
            "no such firmware on the allow-list".into(),
        ))
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
