//! What can stop the bridge. Bad input never appears here: it is dead-lettered.

use aurora_core::bus::BusError;

/// An error that ends [`crate::run`].
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The MQTT connection settings cannot work (URL, TLS files).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Redis could not be reached at start or refused a command that retrying cannot fix.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// MQTT connection settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid MQTT URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot read {what} {path}: {reason}")]
    TlsFile {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("no {what} found in {path}")]
    TlsEmpty { what: &'static str, path: String },
    #[error("TLS configuration refused: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Invalid(String),
}
