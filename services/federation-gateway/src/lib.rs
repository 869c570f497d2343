//! federation-gateway: sites share alerts, IOCs, agent results and audit through NATS
//! JetStream.
//!
//! - [`export`]: local streams to `AURORA.*`, as [`policy`] allows, XACK after JetStream's ack.
//! - [`import`]: `AURORA.*` to the local streams through the site's own durable consumer,
//!   exactly once ([`landing`]).
//! - [`health`]: readiness and the consumer's lag.
//!
//! [`start`] runs the start-up steps in order (ops endpoints, Redis, NATS, the stream, the
//! consumer) and [`Gateway::run`] does the work until shutdown, then drains.

pub mod config;
pub mod export;
pub mod health;
pub mod import;
pub mod landing;
pub mod policy;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream as JsStream};
use aurora_core::bus::{self, BusError, Conn, Producer};
use aurora_core::jetstream::{
    ensure_stream, federation_stream_config, StreamChange, StreamSetupError,
};
use aurora_core::names::{FederatedKind, InvalidNamespace, Names};
use aurora_core::ops::{self, Readiness};
use tokio_util::sync::CancellationToken;

pub use config::Args;

use crate::export::{ExportSettings, Exporter};
use crate::import::{ConsumerError, ImportSettings, Importer};
use crate::landing::Lander;
use crate::policy::Policy;

/// The service's name in logs, dead letters and client names.
pub const SERVICE: &str = "federation-gateway";

/// The header that carries the site a message was published by.
pub const ORIGIN_SITE_HEADER: &str = "Aurora-Origin-Site";

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Namespace(#[from] InvalidNamespace),
    #[error("invalid site id {0:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
    SiteId(String),
    #[error("cannot serve the ops endpoints on {addr}: {source}")]
    Ops {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Redis(#[from] BusError),
    #[error("cannot connect to NATS: {0}")]
    Nats(#[from] async_nats::ConnectError),
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
    Export(#[from] export::ExportError),
}

/// A site id is part of message ids, headers and the consumer's name: keep it plain, so two
/// sites never map to one consumer.
pub fn valid_site_id(site: &str) -> bool {
    (1..=64).contains(&site.len())
        && site
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Stops the ops server when the gateway goes away.
struct OpsGuard(CancellationToken);

impl Drop for OpsGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A started gateway, connected and with its stream and consumer in place.
pub struct Gateway {
    args: Args,
    names: Names,
    readiness: Readiness,
    redis: Conn,
    producer: Producer,
    nats: async_nats::Client,
    js: jetstream::Context,
    stream: JsStream,
    stream_change: StreamChange,
    ops_addr: SocketAddr,
    _ops: OpsGuard,
}

/// Start-up, in order: ops endpoints, Redis, NATS, the federation stream (created or
/// corrected), the site's consumer.
pub async fn start(args: Args, readiness: Readiness) -> Result<Gateway, GatewayError> {
    let names = args.common.names()?;
    let site = args.common.site_id.clone();
    if !valid_site_id(&site) {
        return Err(GatewayError::SiteId(site));
    }
    for part in [health::REDIS, health::NATS] {
        readiness.register(part);
    }
    let ops_stop = CancellationToken::new();
    let addr = args.common.ops_addr_or(config::DEFAULT_OPS_PORT);
    let (ops_addr, _task) = ops::serve(addr, readiness.clone(), ops_stop.clone())
        .await
        .map_err(|source| GatewayError::Ops { addr, source })?;
    let ops = OpsGuard(ops_stop);

    let redis = bus::connect(&args.common.redis_url).await?;
    readiness.set_ready(health::REDIS);
    let producer = Producer::new(redis.clone(), args.common.stream_maxlen);

    let nats = args
        .nats
        .connect(&format!("{SERVICE}-{}", args.common.instance()))
        .await?;
    let window = args.publish_window as usize;
    let js = jetstream::ContextBuilder::new()
        .timeout(args.publish_timeout)
        .max_ack_inflight(window * FederatedKind::ALL.len() + 64)
        .backpressure_on_inflight(true)
        .build(nats.clone());

    let desired = federation_stream_config(&names);
    let stream_change = ensure_stream(&js, &desired).await?;
    match &stream_change {
        StreamChange::Created => {
            tracing::info!(stream = %desired.name, "federation stream created")
        }
        StreamChange::Unchanged => {
            tracing::info!(stream = %desired.name, "federation stream config as expected")
        }
        StreamChange::Updated(changes) => tracing::warn!(
            stream = %desired.name,
            changes = %changes.join("; "),
            "federation stream config had drifted: corrected"
        ),
    }
    let stream = js
        .get_stream(&desired.name)
        .await
        .map_err(|source| GatewayError::OpenStream {
            name: desired.name.clone(),
            source,
        })?;
    readiness.set_ready(health::NATS);

    let gateway = Gateway {
        args,
        names,
        readiness,
        redis,
        producer,
        nats,
        js,
        stream,
        stream_change,
        ops_addr,
        _ops: ops,
    };
    if gateway.args.import {
        import::ensure_consumer(&gateway.stream, &desired.name, gateway.consumer_config()).await?;
    }
    Ok(gateway)
}

/// Starts and runs until `shutdown`.
pub async fn run(
    args: Args,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    start(args, readiness).await?.run(shutdown).await
}

impl Gateway {
    /// What start-up did to the federation stream.
    pub fn stream_change(&self) -> &StreamChange {
        &self.stream_change
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    fn import_settings(&self) -> ImportSettings {
        ImportSettings {
            ack_wait: self.args.ack_wait,
            max_deliver: self.args.max_deliver,
            nak_delay: self.args.nak_delay,
            max_ack_pending: self.args.max_ack_pending,
            batch: self.args.import_batch as usize,
        }
    }

    fn consumer_config(&self) -> async_nats::jetstream::consumer::pull::Config {
        import::consumer_config(
            &self.names,
            &self.args.common.site_id,
            &self.import_settings(),
        )
    }

    /// Exports and imports until `shutdown`; then settles what is in flight within
    /// `--shutdown-timeout`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let abort = CancellationToken::new();
        let site = self.args.common.site_id.clone();
        let policy = Arc::new(Policy::new(
            &site,
            |k| self.args.exports(k),
            self.args.min_alert_severity,
        ));
        let settings = ExportSettings {
            redis_url: self.args.common.redis_url.clone(),
            consumer: self.args.common.instance(),
            window: self.args.publish_window as usize,
            batch: self.args.export_batch as usize,
            claim_idle: self.args.export_claim_idle,
            max_deliveries: self.args.export_max_deliveries,
            publish_timeout: self.args.publish_timeout,
        };
        let mut work = Vec::new();
        let exported = if self.args.export {
            FederatedKind::ALL.as_slice()
        } else {
            &[]
        };
        for &kind in exported {
            let exporter = Exporter::new(
                kind,
                &self.names,
                self.producer.clone(),
                self.js.clone(),
                policy.clone(),
                &settings,
                abort.clone(),
            )
            .await?;
            work.push(tokio::spawn(exporter.run(shutdown.clone())));
        }
        let stream_name = self.names.nats_stream();
        if self.args.import {
            let importer = Importer {
                names: self.names.clone(),
                site_id: site.clone(),
                stream: self.stream.clone(),
                consumer_config: self.consumer_config(),
                lander: Lander::new(
                    self.redis.clone(),
                    self.args.common.stream_maxlen,
                    federation_stream_config(&self.names).max_age,
                ),
                producer: self.producer.clone(),
                settings: self.import_settings(),
            };
            work.push(tokio::spawn(importer.run(shutdown.clone(), abort.clone())));
            tokio::spawn(health::watch_lag(
                self.stream.clone(),
                stream_name.clone(),
                self.names.federation_consumer(&site),
                self.readiness.clone(),
                self.args.lag_interval,
                self.args.lag_warn_ratio,
                shutdown.clone(),
            ));
        }
        tokio::spawn(health::watch_connections(
            self.redis.clone(),
            self.nats.clone(),
            self.readiness.clone(),
            shutdown.clone(),
        ));
        tracing::info!(site = %site, namespace = %self.names.namespace(), stream = %stream_name, "federation gateway running");

        shutdown.cancelled().await;
        self.readiness.start_draining();
        let all = futures::future::join_all(work);
        tokio::pin!(all);
        let timeout = self.args.common.shutdown_timeout;
        if tokio::time::timeout(timeout, &mut all).await.is_err() {
            tracing::warn!(
                ?timeout,
                "drain deadline passed: giving up on unsettled messages (they are redelivered)"
            );
            abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut all).await;
        }
        if let Err(e) = self.nats.flush().await {
            tracing::warn!(error = %e, "cannot flush the last acks to NATS");
        }
        tracing::info!("drained");
        Ok(())
    }
}
