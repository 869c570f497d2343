//! What can go wrong in the bridge. Bad input never appears here: it is dead-lettered.

use aurora_core::bus::BusError;
use aurora_core::consumer::BatchFailure;

use crate::health;

/// Settings that cannot work (flags, MQTT URL, TLS files): the bridge does not start.
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

/// Why a batch of device commands could not be finished: its entries stay pending and are
/// read again once the commands stream answers (see docs/contract.md, Streams).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Reading the commands, dead-lettering one, or recording the outcomes and acknowledging.
    #[error("commands stream: {0}")]
    Bus(#[from] BusError),
}

impl BatchFailure for CommandError {
    fn dependency(&self) -> Option<&'static str> {
        match self {
            Self::Bus(_) => Some(health::COMMANDS),
        }
    }
}
