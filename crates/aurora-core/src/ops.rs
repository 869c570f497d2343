//! What every service runs beside its work: `/healthz`, `/readyz` and `/metrics` on an ops
//! port, JSON logs, OpenTelemetry traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and a
//! shutdown token that SIGTERM and SIGINT cancel.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::listener::{self, GuardedListener, Limits};

/// The state of one dependency or part of a service, as `/readyz` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentState {
    pub ready: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What `/readyz` answers from: each part of the service says whether it can do its work.
/// The service is ready when every registered part is and it is not draining; with nothing
/// registered yet it is not ready.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Mutex<ReadinessInner>>,
}

#[derive(Debug, Default)]
struct ReadinessInner {
    components: BTreeMap<String, ComponentState>,
    draining: bool,
    warnings: BTreeMap<String, String>,
    durability: BTreeMap<String, serde_json::Value>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadinessInner> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a part, not ready until it says so.
    pub fn register(&self, name: &str) {
        self.lock()
            .components
            .entry(name.to_string())
            .or_insert(ComponentState {
                ready: false,
                detail: "starting".into(),
            });
    }

    pub fn set_ready(&self, name: &str) {
        self.set(name, true, "");
    }

    pub fn set_not_ready(&self, name: &str, detail: impl Into<String>) {
        self.set(name, false, detail);
    }

    pub fn set(&self, name: &str, ready: bool, detail: impl Into<String>) {
        let detail = detail.into();
        let mut inner = self.lock();
        metrics::gauge!("aurora_ops_component_ready", "component" => name.to_string())
            .set(if ready { 1.0 } else { 0.0 });
        let prev = inner.components.insert(
            name.to_string(),
            ComponentState {
                ready,
                detail: detail.clone(),
            },
        );
        if prev.as_ref().map(|p| p.ready) != Some(ready) {
            if ready {
                tracing::info!(component = name, "ready");
            } else {
                tracing::warn!(component = name, detail = %detail, "not ready");
            }
        }
    }

    /// Forgets a part (it no longer exists, e.g. start-up once it is over).
    pub fn remove(&self, name: &str) {
        self.lock().components.remove(name);
        // A part that is gone holds nothing back: its gauge must not read "not ready" for ever.
        metrics::gauge!("aurora_ops_component_ready", "component" => name.to_string()).set(1.0);
    }

    /// A warning shown in `/readyz` detail without making the service unready.
    pub fn warn(&self, name: &str, warning: Option<String>) {
        let mut inner = self.lock();
        match warning {
            Some(w) => inner.warnings.insert(name.to_string(), w),
            None => inner.warnings.remove(name),
        };
    }

    /// What a dependency keeps of what it acknowledges ([`crate::durability`]): shown in
    /// `/readyz` under `durability`, whatever the verdict, without making the service unready.
    pub fn set_durability(&self, dependency: &str, report: serde_json::Value) {
        self.lock()
            .durability
            .insert(dependency.to_string(), report);
    }

    /// Draining: `/readyz` fails from now on so the load balancer stops sending work.
    pub fn start_draining(&self) {
        self.lock().draining = true;
    }

    /// Ready when at least one part is registered, every registered part is ready, and the
    /// service is not draining (nothing registered means the service has not started yet).
    pub fn is_ready(&self) -> bool {
        let inner = self.lock();
        Self::ready(&inner)
    }

    fn ready(inner: &ReadinessInner) -> bool {
        !inner.draining
            && !inner.components.is_empty()
            && inner.components.values().all(|c| c.ready)
    }

    /// The JSON `/readyz` serves.
    pub fn report(&self) -> serde_json::Value {
        let inner = self.lock();
        let ready = Self::ready(&inner);
        serde_json::json!({
            "ready": ready,
            "draining": inner.draining,
            "components": inner.components,
            "warnings": inner.warnings,
            "durability": inner.durability,
        })
    }
}

/// The process-wide Prometheus recorder; installed once, shared by every caller (a test
/// process may build several services). Metrics recorded before its first call are lost;
/// [`init_telemetry`] calls it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only when another recorder was installed first; then ours stays unused.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The ops routes: `/healthz`, `/readyz`, `/metrics`.
pub fn router(readiness: Readiness) -> Router {
    let handle = metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let report = readiness.report();
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

/// Serves the ops routes until `shutdown` is cancelled, under the ops port's limits
/// ([`Limits::OPS`]). Binds first, so a taken port is an error at start, not later.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(addr, readiness, shutdown, Limits::OPS).await
}

/// [`serve`] with other limits (tests).
pub async fn serve_with(
    addr: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
    limits: Limits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = GuardedListener::bind(addr, "ops", limits).await?;
    let local = axum::serve::Listener::local_addr(&listener)?;
    let app = listener::app(router(readiness));
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "ops server failed");
        }
    });
    tracing::info!(%local, "ops endpoints at /healthz /readyz /metrics");
    Ok((local, task))
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received: draining");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Keeps the trace exporter alive; flushes it when dropped.
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Sets up logging (`RUST_LOG` filters it, default `info`) and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP/HTTP trace export of the spans of
/// [`crate::trace`] (their target, [`crate::trace::SPAN_TARGET`], passes whatever `RUST_LOG`
/// says). The sampler (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`; parent-based
/// always-on by default) is [`crate::trace::Sampler`], applied before spans are made; the SDK
/// reads the batch export's variables (`OTEL_BSP_SCHEDULE_DELAY`, ...) itself.
pub fn init_telemetry(service: &'static str, format: LogFormat) -> TelemetryGuard {
    // Metrics recorded before the recorder exists are lost: install it first.
    let _ = metrics_handle();
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .and_then(|_| build_tracer_provider(service));
    if provider.is_some() {
        // The exported spans pass whatever `RUST_LOG` says: an operator who quiets the log
        // to `warn` keeps the traces. Their target logs nothing at `info`.
        if let Ok(spans) = format!("{}=info", crate::trace::SPAN_TARGET).parse() {
            filter = filter.add_directive(spans);
        }
    }
    let otel_layer = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider;
        crate::trace::enable();
        tracing_opentelemetry::layer().with_tracer(p.tracer(service))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_target(true),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer()).try_init(),
    };
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
    TelemetryGuard { provider }
}

fn build_tracer_provider(
    service: &'static str,
) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build();
    match exporter {
        Ok(exporter) => {
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build();
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    // The sampling variables are read by [`crate::trace::Sampler`], which
                    // decides before a span exists: every span made is to be recorded.
                    .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        Err(e) => {
            eprintln!("OpenTelemetry export disabled: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_part_and_no_drain() {
        let r = Readiness::new();
        assert!(!r.is_ready(), "nothing registered yet: not started");
        r.register("redis");
        assert!(!r.is_ready());
        r.set_ready("redis");
        assert!(r.is_ready());
        r.warn("lag", Some("behind".into()));
        assert!(r.is_ready());
        assert_eq!(r.report()["warnings"]["lag"], "behind");
        r.start_draining();
        assert!(!r.is_ready());
    }

    #[tokio::test]
    async fn ops_endpoints_answer() {
        let r = Readiness::new();
        r.register("redis");
        let token = CancellationToken::new();
        let (addr, task) = serve(
            "127.0.0.1:0".parse().expect("addr"),
            r.clone(),
            token.clone(),
        )
        .await
        .expect("bind");
        metrics::counter!("aurora_test_ops_total").increment(3);
        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            stream.read_to_string(&mut out).await.expect("read");
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.0 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.0 503"));
        r.set_ready("redis");
        assert!(get("/readyz").await.starts_with("HTTP/1.0 200"));
        assert!(get("/metrics").await.contains("aurora_test_ops_total 3"));
        token.cancel();
        task.await.expect("server task");
    }
}
