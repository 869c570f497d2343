//! What can stop the service. Per-event problems never do: they go to the dead-letter list.

use aurora_core::bus::BusError;
use aurora_core::jetstream::StreamSetupError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("Redis {command} on {key} failed: {source}")]
    Redis {
        command: &'static str,
        key: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(transparent)]
    StreamSetup(#[from] StreamSetupError),
    #[error("eve file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("position of {path} cannot be read or saved: {reason}")]
    Position { path: String, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A batch task panicked (a bug): its lines stay in processing for the next start.
    #[error("a batch task failed: {0}")]
    BatchTask(String),
    /// A test hook asked the service to stop as if the process had died at this point.
    #[error("fault injected: {0}")]
    FaultInjected(&'static str),
}

impl IngestError {
    pub(crate) fn redis<'a>(
        command: &'static str,
        key: &'a str,
    ) -> impl FnOnce(redis::RedisError) -> Self + 'a {
        move |source| Self::Redis {
            command,
            key: key.to_string(),
            source,
        }
    }
}
