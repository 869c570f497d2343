//! federation-gateway: sites share alerts, IOCs, agent results and audit through NATS
//! JetStream.
//!
//! - [`config`]: the flags ([`Args`]) and their checks.
//! - [`export`]: local streams to `AURORA.*`, as [`policy`] allows, XACK after JetStream's ack.
//! - [`import`]: `AURORA.*` to the local streams through the site's own durable consumer,
//!   exactly once ([`landing`]).
//! - [`health`]: the dependencies (Redis, NATS) and the consumer's lag.
//! - [`telemetry`]: every metric; [`error`]: what goes wrong.
//!
//! [`FederationGateway`] is the service: [`FederationGateway::connect_until`] runs the start-up
//! steps in order (Redis, NATS, the stream, the consumer) and [`Connected::spawn`] puts the
//! work on the shared lifecycle's [`Running`], which drains it (see docs/contract.md).

pub mod config;
pub mod error;
pub mod export;
pub mod health;
pub mod import;
pub mod landing;
pub mod loss;
pub mod policy;
pub mod revision;
pub mod signing;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream as JsStream};
use aurora_core::bus::{Conn, Producer};
use aurora_core::health::{redis_at_start, NATS, REDIS};
use aurora_core::jetstream::{
    ensure_stream, federation_stream_config, DeclaredStream, StreamChange,
};
use aurora_core::names::{FederatedKind, Names};
use aurora_core::ops::Readiness;
use aurora_core::retry::Backoff;
use aurora_core::service::{Context, Running, Service};
use tokio_util::sync::CancellationToken;

pub use config::Args;
pub use error::GatewayError;
pub use policy::ORIGIN_SITE_HEADER;

use crate::export::{ExportSettings, Exporter};
use crate::import::{ImportSettings, Importer, Trust};
use crate::landing::{Lander, RevisionMemory};
use crate::policy::Policy;
use crate::signing::{PeerKeys, SiteKey};

/// The service's name in logs, consumer groups, dead letters, client names and the
/// `AURORA_FEDERATION_GATEWAY_` prefix of its variables.
pub const SERVICE: &str = "federation-gateway";

/// The ops port (`/healthz`, `/readyz`, `/metrics`) unless `--ops-addr` says otherwise.
pub const OPS_PORT: u16 = 9104;

/// How long a NATS flush may take once the work has stopped.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The back-off of every retry in place (publish, XACK, landing, dead letter): 100 ms
/// doubling to 2 s, so a held JetStream message is told "in progress" well within its ack
/// wait.
pub(crate) fn retry() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}

/// The gateway of one site, as configured.
#[derive(Debug, Clone)]
pub struct FederationGateway {
    args: Args,
    names: Names,
    signing_key: Option<SiteKey>,
    peer_keys: Option<PeerKeys>,
}

impl FederationGateway {
    /// Checks the flags.
    pub fn new(args: Args) -> anyhow::Result<Self> {
        args.check()?;
        let names = args.common.names()?;
        let (signing_key, peer_keys) = args.keys()?;
        Ok(Self {
            args,
            names,
            signing_key,
            peer_keys,
        })
    }

    /// [`FederationGateway::connect_until`] without a stop of its own: drop the future to
    /// stop it (tests, tools).
    pub async fn connect(
        self,
        readiness: &Readiness,
        instance: &str,
    ) -> Result<Connected, GatewayError> {
        self.connect_until(readiness, &CancellationToken::new(), instance)
            .await
    }

    /// Start-up, in order: Redis, NATS (each waited for until it answers or `shutdown`), the
    /// federation stream (created or corrected), the site's consumer. `/readyz` names the step
    /// it waits for.
    pub async fn connect_until(
        self,
        readiness: &Readiness,
        shutdown: &CancellationToken,
        instance: &str,
    ) -> Result<Connected, GatewayError> {
        readiness.register(REDIS);
        readiness.register(NATS);
        let redis = redis_at_start(readiness, shutdown, &self.args.common.redis_url)
            .await
            .map_err(GatewayError::Connect)?;
        let producer = Producer::new(redis.clone(), self.args.common.stream_maxlen);
        let client_name = format!("{SERVICE}-{instance}");
        let nats = health::nats_at_start(readiness, shutdown, &self.args.nats, &client_name)
            .await
            .map_err(GatewayError::Connect)?;
        let nats_at = health::shown_urls(&self.args.nats.nats_url);
        let window = self.args.publish_window as usize;
        let js = jetstream::ContextBuilder::new()
            .timeout(self.args.publish_timeout)
            .max_ack_inflight(window * FederatedKind::ALL.len() + 64)
            .backpressure_on_inflight(true)
            .build(nats.clone());

        let desired = DeclaredStream::new(
            self.args.nats.stream(design_stream_config(&self.names)),
            self.args.stream_limits(),
        );
        let stream_name = desired.config.name.clone();
        readiness.set_not_ready(
            NATS,
            format!("setting up stream {stream_name} on {nats_at}"),
        );
        let stream_change = ensure_stream(&js, &desired).await?;
        readiness.warn(
            &format!("jetstream stream {stream_name}"),
            stream_change.warning(&stream_name),
        );
        // A stream bounded below its declared size is logged where it is found.
        if let StreamChange::Updated(changes) = &stream_change {
            tracing::warn!(
                stream = %stream_name,
                changes = %changes.join("; "),
                "federation stream config had drifted: corrected"
            );
        } else if stream_change == StreamChange::Created {
            tracing::info!(stream = %stream_name, "federation stream created");
        } else if stream_change == StreamChange::Unchanged {
            tracing::info!(stream = %stream_name, "federation stream config as expected");
        }
        let stream =
            js.get_stream(&stream_name)
                .await
                .map_err(|source| GatewayError::OpenStream {
                    name: stream_name.clone(),
                    source,
                })?;
        let connected = Connected {
            gateway: self,
            instance: instance.to_string(),
            redis,
            producer,
            nats,
            js,
            stream,
            stream_change,
        };
        if connected.gateway.args.importing() {
            let config = connected.consumer_config();
            let consumer = config.durable_name.clone().unwrap_or_default();
            readiness.set_not_ready(
                NATS,
                format!("setting up consumer {consumer} on stream {stream_name} on {nats_at}"),
            );
            import::ensure_consumer(&connected.stream, &stream_name, config).await?;
        }
        readiness.set_ready(NATS);
        Ok(connected)
    }
}

/// The federation stream as the original design creates it (name, subjects, limits retention,
/// its limits; everything else the server's defaults: file storage, a 2-minute duplicate
/// window, the oldest discarded) and no description: the design's own `add_stream` of an
/// `AURORA` stream this gateway created then finds the same configuration, not "stream name
/// already in use with a different configuration", while nodes of both run side by side.
pub fn design_stream_config(names: &Names) -> async_nats::jetstream::stream::Config {
    let mut config = federation_stream_config(names);
    config.description = None;
    config.max_bytes = -1;
    config
}

impl Service for FederationGateway {
    const NAME: &'static str = SERVICE;
    const OPS_PORT: u16 = OPS_PORT;

    async fn start(self, ctx: Context) -> anyhow::Result<Running> {
        let connected = self
            .connect_until(&ctx.readiness, &ctx.shutdown, &ctx.instance)
            .await?;
        let durability = aurora_core::durability::SelfCheck::redis(connected.redis.clone())
            .with_streams(&connected.nats, [connected.names().nats_stream()]);
        let mut running = connected.spawn(&ctx).await?;
        running.spawn(durability.watch(ctx.readiness.clone(), ctx.shutdown.clone()));
        Ok(running)
    }
}

/// A gateway connected, with its stream and consumer in place.
pub struct Connected {
    gateway: FederationGateway,
    instance: String,
    redis: Conn,
    producer: Producer,
    nats: async_nats::Client,
    js: jetstream::Context,
    stream: JsStream,
    stream_change: StreamChange,
}

impl Connected {
    /// What start-up did to the federation stream.
    pub fn stream_change(&self) -> &StreamChange {
        &self.stream_change
    }

    /// How much revision state the site keeps: `--revision-memory` documents per kind, for
    /// as long as the stream keeps messages (its max age as the server has it, the contract's
    /// 7 days when unlimited) once nothing is written.
    fn revision_memory(&self) -> RevisionMemory {
        let max_age = self.stream.cached_info().config.max_age;
        let ttl = if max_age.is_zero() {
            federation_stream_config(self.names()).max_age
        } else {
            max_age
        };
        RevisionMemory {
            max_documents: self.args().revision_memory,
            ttl,
        }
    }

    fn lander(&self) -> Lander {
        Lander::new(
            self.redis.clone(),
            self.names().clone(),
            self.args().common.stream_maxlen,
            self.revision_memory(),
        )
    }

    fn names(&self) -> &Names {
        &self.gateway.names
    }

    fn args(&self) -> &Args {
        &self.gateway.args
    }

    fn trust(&self) -> Trust {
        let args = self.args();
        Trust {
            peers: self.gateway.peer_keys.clone(),
            max_signature_age: args.max_signature_age,
            legacy_subjects: args.legacy_subjects.iter().cloned().collect(),
            legacy_site: args.legacy_site_id.clone(),
        }
    }

    /// Says at start whether what leaves is signed and what arrives is checked.
    fn log_trust(&self) {
        let args = self.args();
        match &self.gateway.signing_key {
            Some(key) => tracing::info!(key_id = %key.id(), "exports signed"),
            None if args.exporting() => tracing::warn!(
                "exports are NOT signed (no --signing-key): sites that check signatures dead-letter them"
            ),
            None => {}
        }
        match &self.gateway.peer_keys {
            Some(peers) => tracing::info!(keys = %peers.describe().join(","), "imports checked against the peers' keys"),
            None if args.importing() => tracing::warn!(
                "imports are NOT checked (no --peer-keys): any NATS publisher can claim any origin site"
            ),
            None => {}
        }
        if !args.legacy_subjects.is_empty() {
            tracing::warn!(subjects = %args.legacy_subjects.join(","), site = %args.legacy_site_id, "legacy peers: unsigned design-format messages on these subjects are imported, marked origin_verified: false");
        }
    }

    fn import_settings(&self) -> ImportSettings {
        let args = self.args();
        ImportSettings {
            ack_wait: args.ack_wait,
            max_deliver: args.max_deliver,
            nak_delay: args.nak_delay,
            max_ack_pending: args.max_ack_pending,
            batch: args.import_batch as usize,
        }
    }

    fn consumer_config(&self) -> async_nats::jetstream::consumer::pull::Config {
        import::consumer_config(
            self.names(),
            &self.args().common.site_id,
            &self.import_settings(),
        )
    }

    /// Puts the work on a [`Running`]: an exporter per local stream (reading and settling),
    /// the importer and its lag watcher, the dependency watcher; NATS is flushed after
    /// they all return. Exporting and importing stop taking input on `ctx.shutdown` and give
    /// up what they hold on `ctx.abort` (it is delivered again).
    pub async fn spawn(self, ctx: &Context) -> Result<Running, GatewayError> {
        let mut running = Running::new(ctx);
        let args = self.args();
        let names = self.names();
        let site = args.common.site_id.clone();
        let dependencies = health::dependencies(self.redis.clone(), self.nats.clone());
        let policy = Arc::new(Policy::new(
            &site,
            |k| args.exports(k),
            args.min_alert_severity,
        ));
        let settings = ExportSettings {
            redis_url: args.common.redis_url.clone(),
            consumer: self.instance.clone(),
            window: args.publish_window as usize,
            batch: args.export_batch as usize,
            claim_idle: args.export_claim_idle,
            max_deliveries: args.export_max_deliveries,
            publish_timeout: args.publish_timeout,
            signing_key: self.gateway.signing_key.clone(),
            lander: self.lander(),
        };
        self.log_trust();
        let exported = if args.exporting() {
            FederatedKind::ALL.as_slice()
        } else {
            &[]
        };
        for &kind in exported {
            let exporter = Exporter::new(
                kind,
                names,
                self.producer.clone(),
                self.js.clone(),
                policy.clone(),
                &settings,
                ctx.abort.clone(),
            )
            .await?;
            let (reading, settling) = exporter.into_tasks(
                dependencies.clone(),
                ctx.readiness.clone(),
                ctx.shutdown.clone(),
            );
            running.spawn(reading);
            running.spawn(settling);
        }
        let stream_name = names.nats_stream();
        let ledger = loss::LedgerSink {
            conn: self.producer.conn(),
            base: names.ledger_jetstream(&stream_name),
        };
        if args.importing() {
            loss::record_once(&self.stream, &ledger).await;
            let importer = Importer {
                names: names.clone(),
                site_id: site.clone(),
                stream: self.stream.clone(),
                consumer_config: self.consumer_config(),
                lander: self.lander(),
                producer: self.producer.clone(),
                settings: self.import_settings(),
                trust: self.trust(),
            };
            running.spawn(importer.run(ctx.shutdown.clone(), ctx.abort.clone()));
            running.spawn(health::watch_lag(
                self.stream.clone(),
                stream_name.clone(),
                names.federation_consumer(&site),
                ctx.readiness.clone(),
                args.lag_interval,
                args.lag_warn_ratio,
                ctx.shutdown.clone(),
            ));
        }
        running.spawn(loss::watch(
            self.stream.clone(),
            stream_name.clone(),
            args.lag_interval,
            ledger,
            ctx.shutdown.clone(),
        ));
        running.spawn(dependencies.watch(
            ctx.readiness.clone(),
            health::WATCH_INTERVAL,
            ctx.shutdown.clone(),
        ));
        let nats = self.nats.clone();
        running.after(async move {
            // The last acks of the importer and the exporters' last publishes.
            match tokio::time::timeout(FLUSH_TIMEOUT, nats.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot flush the last acks to NATS"),
                Err(_) => tracing::warn!(
                    timeout = ?FLUSH_TIMEOUT,
                    "NATS did not take the last acks in time"
                ),
            }
        });
        tracing::info!(site = %site, namespace = %names.namespace(), stream = %stream_name, "federation gateway running");
        Ok(running)
    }
}
