//! A trace collector of the test's own: a real OTLP/HTTP receiver (`POST /v1/traces`,
//! protobuf, decoded with the OpenTelemetry protocol definitions) on a free loopback port.
//! A service started with `OTEL_EXPORTER_OTLP_ENDPOINT` = [`OtlpReceiver::endpoint`] exports
//! its spans here ([`OtlpReceiver::service_env`] also shortens the export delay).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

/// One span as received, ids in lowercase hex (the parent empty for a root).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// The OTLP span kind (2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// String, integer and boolean attributes, as text.
    pub attributes: HashMap<String, String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// The messaging attributes of a message hop's span: `messaging.system`,
    /// `messaging.operation.type` and `messaging.destination.name`.
    pub fn messaging(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        (
            self.attribute("messaging.system"),
            self.attribute("messaging.operation.type"),
            self.attribute("messaging.destination.name"),
        )
    }
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

/// The receiver; stops when dropped.
pub struct OtlpReceiver {
    port: u16,
    spans: Received,
    requests: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Shared {
    spans: Received,
    requests: Arc<Mutex<u64>>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let port = listener.local_addr().expect("its address").port();
        let shared = Shared {
            spans: Arc::default(),
            requests: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            port,
            spans: shared.spans,
            requests: shared.requests,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`, what `OTEL_EXPORTER_OTLP_ENDPOINT` is set to.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variables that make a service export here, every span, within 100 ms.
    pub fn service_env(&self) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), self.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            ("OTEL_TRACES_SAMPLER".into(), "parentbased_always_on".into()),
        ]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.spans).clone()
    }

    /// How many export requests came (a service that exports nothing sends none).
    pub fn requests(&self) -> u64 {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a span that `matches`.
    pub async fn wait_span(
        &self,
        what: &str,
        matches: impl Fn(&ReceivedSpan) -> bool,
    ) -> ReceivedSpan {
        crate::wait_until(crate::WAIT, what, || {
            let found = self.spans().into_iter().find(|s| matches(s));
            async move { found }
        })
        .await
    }

    /// Waits `quiet` and returns the spans of `trace_id`.
    pub async fn trace(&self, trace_id: &str, quiet: Duration) -> Vec<ReceivedSpan> {
        tokio::time::sleep(quiet).await;
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

fn lock(spans: &Received) -> std::sync::MutexGuard<'_, Vec<ReceivedSpan>> {
    spans.lock().unwrap_or_else(|p| p.into_inner())
}

async fn receive(State(shared): State<Shared>, body: Bytes) -> impl IntoResponse {
    *shared.requests.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .and_then(|mut a| a.remove("service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    lock(&shared.spans).extend(received);
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
