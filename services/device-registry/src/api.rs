//! The REST API (axum; JWT as in docs/contract.md).
//!
//! | route | permission |
//! |---|---|
//! | `GET /api/v1/devices`, `GET /api/v1/devices/{id}`, `GET .../commands`, `GET /api/v1/commands/{id}` | `devices:read` |
//! | `POST /api/v1/devices/{id}/quarantine`, `.../commands`, `.../attest`, `PUT .../key` | `devices:write` |
//!
//! A privileged action (`--privileged-actions`: quarantine, a command such as `reboot`, a key
//! change) is answered 202 `awaiting_approval` with its `approval_id`: it runs once another
//! analyst approves it ([`crate::actions`]).
//! | `GET/POST/DELETE /api/v1/firmware` | `firmware:manage` |
//! | `GET /api/v1/openapi.json` | none |
//!
//! `{id}` is the device's UUID or its device id. Errors are `{"error": "..."}` with 401
//! (no valid token) or 403 (missing permission) from `aurora_core::auth::http::Authorized`,
//! and 400 (invalid input, text with a NUL character anywhere: PostgreSQL cannot store it),
//! 404 (unknown device), 413 (a command larger than the broker accepts), 503 (PostgreSQL or
//! Redis unavailable) from [`ApiError`]. The router is built from [`routes`] only, so the
//! test that compares [`routes`] with the OpenAPI document covers every route.

use aurora_core::auth::http::{Authorized, DevicesRead, DevicesWrite, FirmwareManage};
use aurora_core::auth::Verifier;
use aurora_core::model::{is_valid_device_id, to_bytes};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, MatchedPath, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actions;
use crate::attestation;
use crate::db::{self, status, DeviceFilter, DeviceRef};
pub use crate::error::ApiError;
use crate::records;
use crate::registration::decode_public_key;
use crate::shared::Shared;
use crate::telemetry::{self, Trigger};

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 100;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    shared: Shared,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Self {
        state.shared.cfg.verifier.clone()
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
            Method::GET,
            "/api/v1/devices/{id}/commands",
            axum::routing::get(list_commands),
        ),
        (
            Method::GET,
            "/api/v1/commands/{id}",
            axum::routing::get(get_command),
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
        .route_layer(axum::middleware::from_fn(refuse_nul))
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
    telemetry::http_request(route, method, response.status().as_u16());
    response
}

// ---------------------------------------------------------------- input

/// What a client is told for text PostgreSQL cannot store.
const NUL_REFUSED: &str = "text must not contain the NUL character (\\u0000)";

/// Refuses a path or query string with a NUL (`%00`) before any handler sees it.
async fn refuse_nul(req: Request, next: Next) -> Response {
    let uri = req.uri();
    if percent_decoded_has_nul(uri.path()) || uri.query().is_some_and(percent_decoded_has_nul) {
        return ApiError::BadRequest(NUL_REFUSED.into()).into_response();
    }
    next.run(req).await
}

/// A NUL byte, or `%00`, in a path or query string as sent.
fn percent_decoded_has_nul(s: &str) -> bool {
    let b = s.as_bytes();
    b.contains(&0)
        || b.windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// A string with a NUL anywhere in a JSON document (keys too).
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let parsed = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")));
    // Only a body that may hold an escaped NUL is read twice.
    if body.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        let doc: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
        if has_nul(&doc) {
            return Err(ApiError::BadRequest(NUL_REFUSED.into()));
        }
    }
    parsed
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
    db::get_device(&state.shared.pool, &r)
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

/// `?limit=`: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when absent.
fn page_limit(limit: Option<&str>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be a number from 1 to {MAX_PAGE}"))
            }),
    }
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
    let limit = page_limit(p.limit.as_deref())?;
    let filter = DeviceFilter {
        status: p.status,
        model: p.model,
        seen_after: timestamp("seen_after", p.seen_after.as_deref())?,
        seen_before: timestamp("seen_before", p.seen_before.as_deref())?,
        after: p.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: limit + 1,
    };
    let mut devices = db::list_devices(&state.shared.pool, &filter).await?;
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
    auth: Authorized<DevicesWrite>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = device_ref(&id)?;
    let b: QuarantineBody = if body.iter().all(u8::is_ascii_whitespace) {
        QuarantineBody::default()
    } else {
        json_body(&body)?
    };
    let reason = b
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| format!("quarantined by {}", auth.0.sub));
    if reason.len() > 1000 {
        return Err(ApiError::BadRequest(
            "reason must be at most 1000 characters".into(),
        ));
    }
    let shared = &state.shared;
    // Privileged (the default): only requested; else the device is quarantined at once.
    let privileged = actions::is_privileged(shared, "quarantine");
    let device = if privileged {
        existing_device(&state, &id).await?
    } else {
        let mut tx = shared.pool.begin().await?;
        let device = db::quarantine(&mut tx, &r, &reason)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("unknown device {id:?}")))?;
        tx.commit().await?;
        device
    };
    let requested = actions::request(
        shared,
        actions::Request {
            device_id: &device.device_id,
            action: "quarantine",
            params: json!({ "reason": reason }),
            reason: Some(reason.clone()),
            requested_by: &auth.0.sub,
            ttl: shared.cfg.command_ttl,
        },
    )
    .await?;
    if privileged {
        tracing::warn!(device = %device.device_id, by = %auth.0.sub, %reason, approval = ?requested.approval_id, "quarantine requested: it waits for an approval");
        return Ok((
            StatusCode::ACCEPTED,
            Json(requested.to_json(&device.device_id, "quarantine")),
        )
            .into_response());
    }
    tracing::warn!(device = %device.device_id, by = %auth.0.sub, %reason, "device quarantined");
    Ok(Json(
        json!({ "device": device, "command_id": requested.command_id, "status": requested.status }),
    )
    .into_response())
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
    auth: Authorized<DevicesWrite>,
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
    let params = if b.params.is_null() {
        json!({})
    } else {
        b.params
    };
    let probe = records::command(&device.device_id, &b.action, params.clone(), expires_at);
    let size = to_bytes(&probe).len() + PROOF_ROOM;
    let max = state.shared.cfg.max_command_bytes;
    if size > max {
        return Err(ApiError::TooLarge(format!(
            "the command is {size} bytes: devices accept at most {max} (the MQTT broker's limit)"
        )));
    }
    let shared = &state.shared;
    let requested = actions::request(
        shared,
        actions::Request {
            device_id: &device.device_id,
            action: &b.action,
            params,
            reason: None,
            requested_by: &auth.0.sub,
            ttl: b
                .ttl_seconds
                .map(std::time::Duration::from_secs)
                .unwrap_or(shared.cfg.command_ttl),
        },
    )
    .await?;
    tracing::info!(device = %device.device_id, action = %b.action, by = %auth.0.sub, status = requested.status, "command requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(requested.to_json(&device.device_id, &b.action)),
    ))
}

/// Room for the approval proof (and the expiry) a command may carry on its way to the device.
const PROOF_ROOM: usize = 512;

async fn attest(
    _auth: Authorized<DevicesWrite>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let device = existing_device(&state, &id).await?;
    let challenges = attestation::challenge(
        &state.shared,
        std::slice::from_ref(&device.device_id),
        Trigger::Api,
    )
    .await?;
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
    auth: Authorized<DevicesWrite>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = device_ref(&id)?;
    let b: KeyBody = json_body(&body)?;
    let key = decode_public_key(&b.public_key).map_err(ApiError::BadRequest)?;
    let shared = &state.shared;
    if actions::is_privileged(shared, "key_change") {
        let device = existing_device(&state, &id).await?;
        let public_key = base64::engine::general_purpose::STANDARD.encode(&key);
        let requested = actions::request(
            shared,
            actions::Request {
                device_id: &device.device_id,
                action: "key_change",
                params: json!({ "public_key": public_key }),
                reason: None,
                requested_by: &auth.0.sub,
                ttl: shared.cfg.command_ttl,
            },
        )
        .await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(requested.to_json(&device.device_id, "key_change")),
        )
            .into_response());
    }
    db::set_public_key(&shared.pool, &r, &key)
        .await?
        .map(|d| Json(d).into_response())
        .ok_or_else(|| ApiError::NotFound(format!("unknown device {id:?}")))
}

// ---------------------------------------------------------------- commands

#[derive(Debug, Deserialize)]
pub struct CommandListParams {
    limit: Option<String>,
}

async fn list_commands(
    _auth: Authorized<DevicesRead>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<CommandListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params?;
    let limit = page_limit(p.limit.as_deref())?;
    let device = existing_device(&state, &id).await?;
    let rows = db::commands_of_device(&state.shared.pool, &device.device_id, limit).await?;
    Ok(Json(
        json!({ "commands": rows.iter().map(db::CommandRow::to_json).collect::<Vec<_>>() }),
    ))
}

async fn get_command(
    _auth: Authorized<DevicesRead>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let command_id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::BadRequest("a command id is a UUID".into()))?;
    let mut conn = state.shared.pool.acquire().await?;
    db::get_command(&mut conn, command_id, false)
        .await?
        .map(|row| Json(row.to_json()))
        .ok_or_else(|| ApiError::NotFound(format!("unknown command {id:?}")))
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
    let firmware = db::list_firmware(&state.shared.pool, q.model.as_deref()).await?;
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
    auth: Authorized<FirmwareManage>,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let f = json_body::<FirmwareEntry>(&body)?.validated()?;
    let created = db::add_firmware(
        &state.shared.pool,
        &f.model,
        &f.version,
        &f.sha256,
        &auth.0.sub,
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
    if db::delete_firmware(&state.shared.pool, &f.model, &f.version, &f.sha256).await? {
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
