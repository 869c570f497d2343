//! What can go wrong in the gateway, one enum per kind of failure.

use std::net::SocketAddr;
use std::time::Duration;

use aurora_core::bus::BusError;

/// Flags that cannot work together (checked before anything starts).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--{flag} must be at least 1")]
    Zero { flag: &'static str },
    #[error("{message}")]
    Listener { message: String },
    #[error(
        "--pong-timeout ({pong_timeout:?}) must be longer than --ping-interval ({ping_interval:?}): \
         a client would be dropped before it could answer a ping"
    )]
    PongBeforePing {
        ping_interval: Duration,
        pong_timeout: Duration,
    },
    #[error(
        "--drain-grace ({grace:?}) must be shorter than --shutdown-timeout ({deadline:?}): the \
         clients are closed within the drain deadline, after the grace"
    )]
    GraceOverDeadline { grace: Duration, deadline: Duration },
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Namespace(#[from] aurora_core::names::InvalidNamespace),
    #[error(transparent)]
    Key(#[from] aurora_core::auth::KeyError),
    #[error("--approval-signing-key: {0}")]
    SigningKey(#[from] aurora_core::approval::KeyError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A Redis command of the approval store failed.
#[derive(Debug, thiserror::Error)]
#[error("approval store: {what} failed: {source}")]
pub struct StoreError {
    pub what: &'static str,
    #[source]
    pub source: redis::RedisError,
}

impl From<StoreError> for BusError {
    fn from(e: StoreError) -> Self {
        BusError::Command {
            command: e.what,
            key: crate::SERVICE.to_string(),
            source: e.source,
        }
    }
}

/// Why a decision was not made.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no pending or decided approval with this id")]
    NotFound,
    #[error("the approval is already {0}")]
    Conflict(String),
    #[error("the stored approval cannot be read: {0}")]
    Corrupt(String),
    #[error("you requested this action: another analyst must approve it")]
    OwnRequest,
    #[error("this gateway has no approval signing key (--approval-signing-key): device actions cannot be approved here")]
    NoSigningKey,
    #[error("{0}")]
    BadAction(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an entry cannot be sent to clients.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("entry {0} has no `data` field")]
    NoData(String),
    #[error("entry {0} is not a JSON object: {1}")]
    NotAnObject(String, String),
    #[error("entry id {0:?} is not a stream entry id")]
    BadId(String),
}
