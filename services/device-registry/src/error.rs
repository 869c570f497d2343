//! The errors of the service: why it could not start ([`StartError`]), why a batch or a sweep
//! failed and will be retried ([`BatchError`]), and why an API request failed ([`ApiError`]).

use std::net::SocketAddr;

use aurora_core::bus::BusError;
use aurora_core::consumer::BatchFailure;
use aurora_core::health::REDIS;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::health::POSTGRES;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
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

/// Why a batch (or a sweep) could not be handled; its entries stay pending and come again.
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
    /// PostgreSQL answered and refused the data (SQLSTATE class 22, data exception: text it
    /// cannot store such as NUL, a value out of range): a record's fault, not an outage.
    fn refused_data(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(e)) => {
                e.code().is_some_and(|code| code.starts_with("22"))
            }
            _ => false,
        }
    }
}

impl BatchFailure for BatchError {
    fn dependency(&self) -> Option<&'static str> {
        match self {
            _ if self.refused_data() => None,
            Self::Database(_) => Some(POSTGRES),
            Self::Bus(_) => Some(REDIS),
            Self::Internal(_) => None,
        }
    }

    fn is_input(&self) -> bool {
        self.refused_data()
    }
}

/// Why a request failed (after authorization, which answers 401/403 by itself); rendered as
/// `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
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

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        BatchError::Bus(e).into()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::BadRequest(format!("invalid query string: {}", e.body_text()))
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        (self.status(), body).into_response()
    }
}
