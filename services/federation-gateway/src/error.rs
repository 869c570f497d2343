//! What goes wrong in the gateway, by the step it goes wrong in.

use async_nats::jetstream;
use aurora_core::bus::BusError;
use aurora_core::consumer::BatchFailure;
use aurora_core::health;
use aurora_core::jetstream::StreamSetupError;
use aurora_core::names::InvalidNamespace;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Namespace(#[from] InvalidNamespace),
    /// A dependency cannot be used (an unusable URL), or the start was stopped while
    /// waiting for it.
    #[error(transparent)]
    Connect(anyhow::Error),
    #[error(transparent)]
    Stream(#[from] StreamSetupError),
    #[error("cannot open stream {name}: {source}")]
    OpenStream {
        name: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// The site's durable consumer could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the durable consumer {consumer} on stream {stream}: {source}")]
pub struct ConsumerError {
    pub stream: String,
    pub consumer: String,
    #[source]
    pub source: jetstream::stream::ConsumerError,
}

/// An exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the exporter of {stream}: {source}")]
pub struct ExportError {
    pub stream: String,
    #[source]
    pub source: BusError,
}

/// An exporter could not read its local stream: the entries come again once Redis answers.
/// (Publishing and acknowledging retry in place; only the read fails a batch.)
#[derive(Debug, thiserror::Error)]
#[error("cannot read the local stream: {0}")]
pub struct ReadError(#[from] pub BusError);

impl BatchFailure for ReadError {
    fn dependency(&self) -> Option<&'static str> {
        self.0.is_connection().then_some(health::REDIS)
    }
}

/// A write to the local bus failed.
#[derive(Debug, thiserror::Error)]
#[error("writing imported messages to Redis failed: {source}")]
pub struct LandError {
    #[source]
    pub source: BusError,
}

impl LandError {
    /// Redis could not be reached: worth retrying in place, not a fault of the message.
    pub fn is_connection(&self) -> bool {
        self.source.is_connection()
    }
}
