//! eve-ingest: Suricata EVE events onto NATS JetStream by event type, alerts into Aurora.
//!
//! In: Suricata's Redis list, taken with the reliable-queue pattern ([`list_source`]), or an
//! `eve.json` file followed like `tail -F` ([`file_source`]). Each line is checked
//! ([`event`]); every event goes to JetStream subject `suricata.<event_type>` with a
//! `Nats-Msg-Id` derived from its bytes ([`publish`]); every `alert` event also becomes an
//! Aurora Alert ([`alert`]) written at most once ([`alert_sink`]); a line that is not an
//! event goes to the dead-letter list ([`dead_letter`]). A line is forgotten only once all of
//! that is done ([`batch`]).

pub mod alert;
pub mod alert_sink;
pub mod batch;
pub mod config;
pub mod dead_letter;
pub mod error;
pub mod event;
pub mod file_source;
pub mod health;
pub mod list_source;
pub mod metrics;
pub mod publish;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use aurora_core::bus;
use aurora_core::config::NatsArgs;
use aurora_core::jetstream::{ensure_stream, suricata_stream_config, StreamChange};
use aurora_core::ops::Readiness;
use aurora_core::Names;

pub use crate::alert::AlertMapping;
pub use crate::error::IngestError;

/// Where events come from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Suricata's Redis list (`None`: `Names::suricata_list()`).
    List {
        key: Option<String>,
        /// Instance ids of gone replicas whose processing lists are taken over at start.
        recover_from: Vec<String>,
    },
    /// An eve.json file; its position in Redis unless `state_file` is set.
    File {
        path: PathBuf,
        state_file: Option<PathBuf>,
    },
}

/// Everything the service runs with (built from the flags by [`config::Args::settings`]).
#[derive(Debug, Clone)]
pub struct Settings {
    pub names: Names,
    /// This replica (its processing list is named after it).
    pub instance: String,
    pub redis_url: String,
    pub nats: NatsArgs,
    pub input: Input,
    pub batch: usize,
    pub block: Duration,
    pub publish_window: usize,
    pub inflight_batches: usize,
    pub publish_timeout: Duration,
    pub mapping: AlertMapping,
    pub alert_dedup_ttl: Duration,
    /// Alerts stream trimmed to about this many entries.
    pub stream_maxlen: usize,
    pub deadletter_maxlen: usize,
    pub max_line_bytes: usize,
    pub poll_interval: Duration,
    /// Create or update the JetStream stream at start.
    pub stream_setup: bool,
}

impl Settings {
    /// Defaults for a namespace and an instance, reading the Redis list (tests, benchmarks).
    pub fn new(names: Names, instance: &str, redis_url: &str, nats_url: &str) -> Self {
        Self {
            names,
            instance: instance.to_string(),
            redis_url: redis_url.to_string(),
            nats: NatsArgs {
                nats_url: nats_url.to_string(),
                ..NatsArgs::default()
            },
            input: Input::List {
                key: None,
                recover_from: Vec::new(),
            },
            batch: 500,
            block: Duration::from_secs(1),
            publish_window: 256,
            inflight_batches: 2,
            publish_timeout: Duration::from_secs(10),
            mapping: AlertMapping::default(),
            alert_dedup_ttl: Duration::from_secs(3600),
            stream_maxlen: 1_000_000,
            deadletter_maxlen: 100_000,
            max_line_bytes: 8 * 1024 * 1024,
            poll_interval: Duration::from_millis(200),
            stream_setup: true,
        }
    }

    /// The list read in list mode.
    pub fn list_key(&self) -> String {
        match &self.input {
            Input::List { key: Some(k), .. } => k.clone(),
            _ => self.names.suricata_list(),
        }
    }

    /// This replica's processing list.
    pub fn processing_key(&self) -> String {
        self.names.eve_processing_list(&self.instance)
    }
}

/// Test hooks: points where a test can make the service stop as if the process had died.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called with the batch number (0 during start-up recovery) after a batch is out and
    /// before its lines leave the processing list; `true` stops the service right there.
    #[allow(clippy::type_complexity)]
    pub crash_before_release: Option<Arc<dyn Fn(u64) -> bool + Send + Sync>>,
}

impl Hooks {
    fn crash_before_release(&self, batch: u64) -> bool {
        self.crash_before_release
            .as_ref()
            .is_some_and(|hook| hook(batch))
    }
}

/// Runs the service until `shutdown` is cancelled (then drains what it took) or a dependency
/// fails at start. `readiness` gets the parts `redis`, `nats` and `input`.
pub async fn run(
    settings: Settings,
    readiness: Readiness,
    shutdown: CancellationToken,
    hooks: Hooks,
) -> Result<(), IngestError> {
    for part in ["redis", "nats", "input"] {
        readiness.register(part);
    }
    let conn = bus::connect(&settings.redis_url).await?;
    let client = settings
        .nats
        .connect(&format!("eve-ingest-{}", settings.instance))
        .await?;
    let publisher = publish::EventPublisher::new(
        client.clone(),
        settings.names.clone(),
        settings.publish_window,
        settings.publish_timeout,
    );
    if settings.stream_setup {
        let config = suricata_stream_config(&settings.names);
        match ensure_stream(publisher.context(), &config).await? {
            StreamChange::Created => {
                tracing::info!(stream = %config.name, "JetStream stream created")
            }
            StreamChange::Unchanged => {}
            StreamChange::Updated(changes) => {
                tracing::warn!(stream = %config.name, changes = %changes.join("; "), "JetStream stream updated")
            }
        }
    }
    let health = AbortOnDropHandle::new(tokio::spawn(health::watch(
        conn.clone(),
        client.clone(),
        readiness.clone(),
        Duration::from_secs(2),
        shutdown.clone(),
    )));
    let processor = batch::Processor {
        publisher,
        alerts: alert_sink::AlertSink::new(
            conn.clone(),
            settings.names.clone(),
            settings.stream_maxlen,
            settings.alert_dedup_ttl,
        ),
        dead_letters: dead_letter::DeadLetters::new(
            conn.clone(),
            settings.names.eve_deadletter(),
            settings.deadletter_maxlen,
        ),
        mapping: settings.mapping,
        readiness: readiness.clone(),
    };
    let result = match &settings.input {
        Input::List { recover_from, .. } => {
            let blocking = bus::connect_blocking(&settings.redis_url, settings.block).await?;
            let source = list_source::ListSource::new(
                list_source::ListConfig {
                    list: settings.list_key(),
                    processing: settings.processing_key(),
                    adopt: recover_from
                        .iter()
                        .filter(|id| **id != settings.instance)
                        .map(|id| settings.names.eve_processing_list(id))
                        .collect(),
                    batch: settings.batch,
                    block: settings.block,
                    inflight_batches: settings.inflight_batches,
                },
                blocking,
                conn.clone(),
            );
            list_source::run(
                source,
                processor,
                readiness.clone(),
                hooks,
                shutdown.clone(),
            )
            .await
        }
        Input::File { path, state_file } => {
            let store = match state_file {
                Some(file) => file_source::PositionStore::File(file.clone()),
                None => file_source::PositionStore::Redis {
                    conn: conn.clone(),
                    key: settings
                        .names
                        .state_key("eve-ingest", &config::file_state_what(path)),
                },
            };
            let cfg = file_source::FileConfig {
                path: path.clone(),
                batch: settings.batch,
                max_line_bytes: settings.max_line_bytes,
                poll: settings.poll_interval,
            };
            file_source::run(cfg, store, processor, readiness.clone(), shutdown.clone()).await
        }
    };
    readiness.start_draining();
    drop(health);
    // Acks of what was published are in; make sure nothing is left in the client's buffer.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    result
}
