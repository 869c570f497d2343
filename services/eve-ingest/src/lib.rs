//! eve-ingest: Suricata EVE events onto NATS JetStream by event type, alerts into Aurora.
//!
//! In: Suricata's Redis list, taken with the reliable-queue pattern ([`list_source`]), or an
//! `eve.json` file followed like `tail -F` ([`file_source`]). Each line is checked
//! ([`event`]); every event goes to JetStream subject `suricata.<event_type>` with a
//! `Nats-Msg-Id` derived from its bytes ([`publish`]); every `alert` event also becomes an
//! Aurora Alert ([`alert`]) written at most once ([`alert_sink`]); a line that is not an
//! event goes to the dead-letter list ([`dead_letter`]); `stats` events tell which sensors are
//! blind or silent ([`sensors`]); every event is searched for the indicators of `aurora:iocs`
//! ([`iocs`], [`sightings`]). A line is forgotten only once all of that is done ([`batch`]).
//! At start the `suricata` stream and the declared consumers are kept as configured
//! ([`stream_setup`]).
//!
//! [`EveIngest`] is the service: its flags are [`config::Args`], its metrics
//! [`telemetry`], its readiness parts [`health`]; it runs under the shared lifecycle of
//! [`aurora_core::service`] (on shutdown nothing more is taken and the batches at hand are
//! finished; at the drain deadline they are given up and stay held for the next start).
//! Replicas reading the list hold leases; a live one adopts what a gone one held, and one
//! that leaves cleanly hands back what it still holds ([`replica`]).

pub mod alert;
pub mod alert_sink;
pub mod batch;
pub mod config;
pub mod dead_letter;
pub mod error;
pub mod event;
pub mod file_source;
pub mod health;
pub mod hooks;
pub mod iocs;
pub mod list_source;
pub mod publish;
pub mod read;
pub mod replica;
pub mod sensors;
pub mod sightings;
pub mod stream_setup;
pub mod telemetry;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aurora_core::bus;
use aurora_core::config::NatsArgs;
use aurora_core::durability::SelfCheck;
use aurora_core::jetstream::{DeclaredConsumer, StreamLimits, SURICATA_LIMITS};
use aurora_core::service::{Context, Running, Service};
use aurora_core::Names;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::batch::{Processor, Stop};
use crate::health::{INPUT, NATS, REDIS};

pub use crate::alert::AlertMapping;
pub use crate::error::IngestError;
pub use crate::hooks::Hooks;

/// The service's name: logs, the NATS client name, dead-letter records, its state keys, and
/// the `AURORA_EVE_INGEST_` prefix of its variables.
pub const SERVICE: &str = "eve-ingest";

/// The ops port (`/healthz`, `/readyz`, `/metrics`) when `--ops-addr` is not given.
pub const OPS_PORT: u16 = 9105;

/// Where events come from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Suricata's Redis list (`None`: `Names::suricata_list()`).
    List {
        key: Option<String>,
        /// Instance ids of gone replicas whose processing lists are taken over at start
        /// (gone replicas are adopted without it once their lease lapses).
        recover_from: Vec<String>,
    },
    /// An eve.json file; its position in Redis unless `state_file` is set.
    File {
        path: PathBuf,
        state_file: Option<PathBuf>,
    },
}

/// Everything the service runs with (built from the flags by [`config::Args::settings`]).
/// The replica's name (its processing list is named after it) is the launch's instance.
#[derive(Debug, Clone)]
pub struct Settings {
    pub names: Names,
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
    /// IOC sightings (`None`: off).
    pub sightings: Option<sightings::SightingSettings>,
    /// Alerts stream trimmed to about this many entries.
    pub stream_maxlen: usize,
    pub deadletter_maxlen: usize,
    pub max_line_bytes: usize,
    /// List input: the bytes of lines one batch holds at most.
    pub max_batch_bytes: usize,
    pub poll_interval: Duration,
    /// Create or update the JetStream stream at start.
    pub stream_setup: bool,
    /// The Suricata stream's limits as declared (`--jetstream-max-*`, `--jetstream-discard`).
    pub stream_limits: StreamLimits,
    /// The JetStream consumers kept on the Suricata stream (`--consumers`, `--consumer`).
    pub consumers: Vec<DeclaredConsumer>,
    /// List input: this replica's lease in the replica registry lapses this long after its
    /// last renewal (renewed every third of it); a gone replica is adopted after it lapsed.
    pub lease_ttl: Duration,
    /// Sensor blindness and silence alerts from `stats` events (`None`: off).
    pub sensors: Option<sensors::SensorSettings>,
}

impl Settings {
    /// Defaults for a namespace, reading the Redis list (tests, benchmarks).
    pub fn new(names: Names, redis_url: &str, nats_url: &str) -> Self {
        Self {
            consumers: stream_setup::design_consumers(&names),
            names,
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
            inflight_batches: 4,
            publish_timeout: Duration::from_secs(10),
            mapping: AlertMapping::default(),
            alert_dedup_ttl: Duration::from_secs(3600),
            sightings: Some(sightings::SightingSettings::default()),
            stream_maxlen: 1_000_000,
            deadletter_maxlen: 100_000,
            max_line_bytes: 8 * 1024 * 1024,
            max_batch_bytes: 16 * 1024 * 1024,
            poll_interval: Duration::from_millis(200),
            stream_setup: true,
            stream_limits: SURICATA_LIMITS,
            lease_ttl: Duration::from_secs(15),
            sensors: Some(sensors::SensorSettings::default()),
        }
    }

    /// The list read in list mode.
    pub fn list_key(&self) -> String {
        match &self.input {
            Input::List { key: Some(k), .. } => k.clone(),
            _ => self.names.suricata_list(),
        }
    }

    /// The sensor a `stats` event without `host` is counted for: the input's name (the list
    /// key, shared by the replicas, or the file's path).
    pub fn default_sensor(&self) -> String {
        match &self.input {
            Input::File { path, .. } => path.display().to_string(),
            Input::List { .. } => self.list_key(),
        }
    }

    /// The processing list of the replica `instance`.
    pub fn processing_key(&self, instance: &str) -> String {
        self.names.eve_processing_list(instance)
    }
}

/// The service: its settings and (in tests) its hooks.
#[derive(Clone)]
pub struct EveIngest {
    settings: Settings,
    hooks: Hooks,
}

impl EveIngest {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            hooks: Hooks::default(),
        }
    }

    /// With test hooks (fault injection).
    pub fn with_hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

type InputWork = Pin<Box<dyn Future<Output = Result<(), IngestError>> + Send>>;

impl Service for EveIngest {
    const NAME: &'static str = SERVICE;
    const OPS_PORT: u16 = OPS_PORT;

    /// Connects to Redis and NATS, sets up the JetStream stream, then runs the input, the
    /// dependency watcher, and (after both) a last flush of the NATS client. `/readyz` gets
    /// the parts `redis`, `nats` and `input`.
    async fn start(self, ctx: Context) -> anyhow::Result<Running> {
        let Self { settings, hooks } = self;
        let readiness = ctx.readiness.clone();
        for part in [REDIS, NATS, INPUT] {
            readiness.register(part);
        }
        readiness.set_not_ready(INPUT, "waiting for Redis and NATS");

        let conn =
            aurora_core::health::redis_at_start(&readiness, &ctx.shutdown, &settings.redis_url)
                .await?;
        let client_name = format!("{SERVICE}-{}", ctx.instance);
        let client =
            health::nats_at_start(&readiness, &ctx.shutdown, &settings.nats, &client_name).await?;
        let publisher = publish::EventPublisher::new(
            client.clone(),
            settings.names.clone(),
            settings.publish_window,
            settings.publish_timeout,
        );
        // The indicators are in memory before the first line is taken.
        let sightings = match settings.sightings.clone() {
            Some(sighting_settings) => {
                readiness.set_not_ready(INPUT, "loading the IOCs");
                let sightings = sightings::Sightings::new(
                    conn.clone(),
                    settings.names.clone(),
                    settings.stream_maxlen,
                    settings.alert_dedup_ttl,
                    sighting_settings,
                );
                let iocs = settings.names.iocs();
                let Some(after) = sightings
                    .watch
                    .load(&mut conn.clone(), &iocs, &ctx.shutdown)
                    .await
                else {
                    anyhow::bail!("stopped while loading the IOCs");
                };
                tracing::info!(iocs = sightings.watch.loaded(), "IOCs loaded for sightings");
                Some((sightings, after))
            }
            None => None,
        };
        if settings.stream_setup {
            stream_setup::setup(publisher.context(), &settings, &readiness).await?;
        }
        let sensors = settings.sensors.clone().map(|sensor_settings| {
            sensors::Sensors::new(
                conn.clone(),
                settings.names.clone(),
                sensor_settings,
                &settings.default_sensor(),
                settings.stream_maxlen,
                settings.alert_dedup_ttl,
            )
        });
        let processor = Processor {
            publisher,
            sightings: sightings.as_ref().map(|(s, _)| s.clone()),
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
            sensors: sensors.clone(),
            readiness: readiness.clone(),
        };
        let stop = Stop {
            shutdown: ctx.shutdown.clone(),
            abort: ctx.abort.clone(),
        };
        let mut running = Running::new(&ctx);
        if let Some((sightings, after)) = sightings {
            running.spawn(sightings.watch.follow(
                settings.redis_url.clone(),
                settings.names.iocs(),
                after,
                ctx.shutdown.clone(),
            ));
        }
        let input: InputWork = match &settings.input {
            Input::List { recover_from, .. } => {
                let replica = replica::Replica::new(
                    conn.clone(),
                    &settings.names,
                    &ctx.instance,
                    settings.lease_ttl,
                    &settings.list_key(),
                    settings.batch,
                );
                readiness.set_not_ready(INPUT, "joining the replicas");
                if !replica.join(&readiness, &ctx.shutdown).await? {
                    anyhow::bail!("stopped while joining the replicas");
                }
                // The lease is kept until the input has ended and what it held is handed
                // back (or given up): a drain longer than the ttl does not let another
                // replica adopt lines still being finished here.
                let keep = CancellationToken::new();
                let (kept, keeper_done) = oneshot::channel::<()>();
                let keeper = replica.lease().clone().keep(keep.clone());
                running.spawn(async move {
                    keeper.await;
                    drop(kept);
                });
                // (A start that fails from here on drops `running`, which ends its tasks.)
                let recovered = replica.recover_from(recover_from).await?;
                if recovered > 0 {
                    tracing::info!(
                        lines = recovered,
                        "adopted the replicas given by --recover-from"
                    );
                }
                // Gone replicas are looked for until shutdown.
                let look_again = Arc::new(Notify::new());
                let watching = ctx.shutdown.child_token();
                let (watched, watcher_done) = oneshot::channel::<()>();
                let watcher = replica.clone().watch(look_again.clone(), watching.clone());
                running.spawn(async move {
                    watcher.await;
                    drop(watched);
                });
                let blocking = bus::connect_blocking(&settings.redis_url, settings.block)
                    .await
                    .map_err(IngestError::from)?;
                let source = list_source::ListSource::new(
                    list_source::ListConfig {
                        list: settings.list_key(),
                        processing: settings.processing_key(&ctx.instance),
                        batch: settings.batch,
                        block: settings.block,
                        inflight_batches: settings.inflight_batches,
                        max_batch_bytes: settings.max_batch_bytes,
                    },
                    blocking,
                    conn.clone(),
                )
                .measure_slices(list_source::lists_measurable(&mut conn.clone()).await);
                readiness.set_not_ready(INPUT, "looking at the lines this replica holds");
                let abort = ctx.abort.clone();
                let (readiness, hooks) = (readiness.clone(), hooks.clone());
                Box::pin(async move {
                    let ended = list_source::run(
                        source,
                        processor,
                        readiness,
                        hooks,
                        stop,
                        Some(look_again),
                    )
                    .await;
                    // Nothing is adopted any more (an adoption under way ends first).
                    watching.cancel();
                    let _ = watcher_done.await;
                    let leave =
                        matches!(ended, Ok(list_source::Ended::Drained)) && !abort.is_cancelled();
                    // No renewal after this point: the release below is the last word.
                    keep.cancel();
                    let _ = keeper_done.await;
                    if leave {
                        if let Err(e) = replica.leave().await {
                            tracing::warn!(error = %e, "cannot hand back what this replica holds: it is adopted once its lease lapses");
                        }
                    }
                    ended.map(|_| ())
                })
            }
            Input::File { path, state_file } => {
                let store = match state_file {
                    Some(file) => file_source::PositionStore::File(file.clone()),
                    None => file_source::PositionStore::Redis {
                        conn: conn.clone(),
                        key: file_source::PositionStore::redis_key(&settings.names, path),
                    },
                };
                let cfg = file_source::FileConfig {
                    path: path.clone(),
                    batch: settings.batch,
                    max_line_bytes: settings.max_line_bytes,
                    poll: settings.poll_interval,
                };
                readiness.set_not_ready(INPUT, format!("opening {}", path.display()));
                Box::pin(file_source::run(
                    cfg,
                    store,
                    processor,
                    readiness.clone(),
                    stop,
                ))
            }
        };

        if let Some(sensors) = sensors {
            running.spawn(sensors.sweep_until(ctx.shutdown.clone()));
        }
        running.spawn(
            SelfCheck::redis(conn.clone())
                .with_streams(&client, [settings.names.suricata_stream()])
                .watch(readiness.clone(), ctx.shutdown.clone()),
        );
        running.spawn(health::dependencies(conn, client.clone()).watch(
            readiness,
            health::WATCH_INTERVAL,
            ctx.shutdown.clone(),
        ));
        running.spawn_fallible(async move { input.await.map_err(|e| hooks.failed(e)) });
        running.after(async move {
            // Acks of what was published are in; make sure nothing is left in the client's
            // buffer.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        });
        Ok(running)
    }
}
