//! W3C trace context carried across every hop (docs/contract.md, "Trace context"): in a
//! Redis entry (the fields [`TRACEPARENT_FIELD`] and [`TRACESTATE_FIELD`] beside `data`), in
//! NATS headers, and in MQTT 5 user properties. Parsing and formatting are the OpenTelemetry
//! [`TraceContextPropagator`]'s; a malformed `traceparent` is ignored (the hop starts a new
//! trace).
//!
//! Tracing is on only when [`crate::ops::init_telemetry`] set up an exporter
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`). Off, nothing here allocates or creates a span: every
//! helper first checks [`enabled`], one atomic load. Sampling is the SDK's, from the standard
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (parent-based, always on by default);
//! an unsampled context is carried on all the same, so the next hop keeps the decision.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every exported span: it passes the log filter (`RUST_LOG`) whatever it says,
/// and nothing logs to it at `info`. A span made outside this module names it
/// (`tracing::info_span!(target: SPAN_TARGET, ...)`).
pub const SPAN_TARGET: &str = "aurora_core::trace";

/// The Redis entry field, NATS header and MQTT 5 user property of the W3C `traceparent`.
pub const TRACEPARENT_FIELD: &str = "traceparent";
/// The same for the W3C `tracestate` (sent only when the context has one).
pub const TRACESTATE_FIELD: &str = "tracestate";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// True when spans are exported (an OTLP endpoint is set up).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// One hop's W3C trace context, as carried between processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

#[derive(Default)]
struct Fields {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT_FIELD => self.traceparent = Some(value),
            TRACESTATE_FIELD if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

struct Parts<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Parts<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT_FIELD => Some(self.traceparent),
            TRACESTATE_FIELD => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT_FIELD, TRACESTATE_FIELD]
    }
}

impl TraceContext {
    /// The context of `span`, when tracing is on and the span belongs to a trace.
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        if !enabled() || span.is_disabled() {
            return None;
        }
        Self::of_context(&span.context())
    }

    /// The context of the current span (see [`Self::of_span`]).
    pub fn current() -> Option<Self> {
        if !enabled() {
            return None;
        }
        Self::of_span(&tracing::Span::current())
    }

    fn of_context(cx: &opentelemetry::Context) -> Option<Self> {
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut fields = Fields::default();
        TraceContextPropagator::new().inject_context(cx, &mut fields);
        Some(Self {
            traceparent: fields.traceparent?,
            tracestate: fields.tracestate,
        })
    }

    /// A context received from elsewhere; `None` when `traceparent` is malformed.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let cx = Self::extract(traceparent, tracestate)?;
        Self::of_context(&cx)
    }

    fn extract(traceparent: &str, tracestate: Option<&str>) -> Option<opentelemetry::Context> {
        let parts = Parts {
            traceparent,
            tracestate,
        };
        let cx = TraceContextPropagator::new()
            .extract_with_context(&opentelemetry::Context::new(), &parts);
        cx.span().span_context().is_valid().then_some(cx)
    }

    /// The OpenTelemetry context this carries (a remote parent).
    pub fn context(&self) -> opentelemetry::Context {
        Self::extract(&self.traceparent, self.tracestate.as_deref()).unwrap_or_default()
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// The id of the span that sent it (the parent of the next hop), 16 lowercase hex digits.
    pub fn span_id(&self) -> &str {
        self.traceparent.get(36..52).unwrap_or_default()
    }

    /// Makes this context the parent of `span` (before the span is first entered).
    pub fn set_parent_of(&self, span: &tracing::Span) {
        if span.is_disabled() {
            return;
        }
        // Only fails when the span has started already: it then keeps its parent.
        let _ = span.set_parent(self.context());
    }

    /// The context from an MQTT 5 publish's user properties (`traceparent`, `tracestate`),
    /// when tracing is on and the device sent a well-formed one.
    pub fn from_user_properties(properties: &[(String, String)]) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let get = |name: &str| {
            properties
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        Self::parse(get(TRACEPARENT_FIELD)?, get(TRACESTATE_FIELD))
    }

    /// As MQTT 5 user properties.
    pub fn user_properties(&self) -> Vec<(String, String)> {
        let mut out = vec![(TRACEPARENT_FIELD.to_string(), self.traceparent.clone())];
        if let Some(state) = &self.tracestate {
            out.push((TRACESTATE_FIELD.to_string(), state.clone()));
        }
        out
    }

    /// The context in NATS headers, when tracing is on and they carry a well-formed one.
    pub fn from_nats_headers(headers: Option<&async_nats::HeaderMap>) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let headers = headers?;
        let traceparent = headers.get(TRACEPARENT_FIELD)?.as_str();
        let tracestate = headers.get(TRACESTATE_FIELD).map(|v| v.as_str());
        Self::parse(traceparent, tracestate)
    }

    /// Adds this context to NATS headers.
    pub fn to_nats_headers(&self, headers: &mut async_nats::HeaderMap) {
        headers.insert(TRACEPARENT_FIELD, self.traceparent.as_str());
        if let Some(state) = &self.tracestate {
            headers.insert(TRACESTATE_FIELD, state.as_str());
        }
    }
}

/// A span of one message handled at a hop, after the OpenTelemetry messaging semantic
/// conventions: named `<destination> <operation>`, with `messaging.system`,
/// `messaging.destination.name` and `messaging.operation.type`, and `parent` (the context the
/// message carried) as its parent. Disabled (free) when tracing is off.
pub fn message_span(
    system: &'static str,
    destination: &str,
    operation: &'static str,
    kind: &'static str,
    parent: Option<&TraceContext>,
) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let name = format!("{destination} {operation}");
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "message",
        otel.name = name.as_str(),
        otel.kind = kind,
        messaging.system = system,
        messaging.destination.name = destination,
        messaging.operation.type = operation,
        messaging.message.id = tracing::field::Empty,
        messaging.batch.message_count = tracing::field::Empty,
    );
    if let Some(parent) = parent {
        parent.set_parent_of(&span);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_well_formed_traceparent_round_trips() {
        let cx = TraceContext::parse(PARENT, Some("vendor=x")).expect("valid");
        assert_eq!(cx.traceparent, PARENT);
        assert_eq!(cx.tracestate.as_deref(), Some("vendor=x"));
        assert_eq!(cx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.span_id(), "00f067aa0ba902b7");
    }

    #[test]
    fn a_malformed_traceparent_is_ignored() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47€€-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
    }

    #[test]
    fn off_it_reads_nothing() {
        // Nothing in this test binary turns tracing on.
        let props = vec![(TRACEPARENT_FIELD.to_string(), PARENT.to_string())];
        assert_eq!(TraceContext::from_user_properties(&props), None);
        assert_eq!(TraceContext::current(), None);
        assert!(message_span("redis", "s", "process", "consumer", None).is_disabled());
    }
}
