//! W3C trace context carried across every hop (docs/contract.md, "Trace context"): in a
//! Redis entry (the fields [`TRACEPARENT_FIELD`] and [`TRACESTATE_FIELD`] beside `data`), in
//! NATS headers, and in MQTT 5 user properties. A malformed `traceparent` is ignored (the hop
//! starts a new trace).
//!
//! Tracing is on only when [`crate::ops::init_telemetry`] set up an exporter
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`). Off, nothing here allocates or creates a span: every
//! helper first checks [`enabled`], one atomic load.
//!
//! Sampling is decided at the head of each hop, before any span exists ([`Hop::start`]), by
//! the standard `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (parent-based always-on
//! by default). A sampled hop opens a span (the SDK then records every span it is given) and
//! what it sends on carries its context; an unsampled hop opens none and sends nothing on. A
//! message that an Aurora hop wrote and that carries no context was not sampled by that hop:
//! under a parent-based sampler the next hop does not sample it either, so an unsampled
//! message costs a flag test, not a span nor a field in every entry. Traces start at the
//! edges ([`Hop::root`]): a device's publish, a batch of Suricata lines, a write made outside
//! any hop ([`write_hop`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

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
static SAMPLER: OnceLock<Sampler> = OnceLock::new();

tokio::task_local! {
    /// The context of the hop a future runs in ([`Hop::scope`]), `None` when that hop is not
    /// sampled: what [`TraceContext::current`] gives the writes made there.
    static CARRIED: Option<TraceContext>;
}

/// True when spans are exported (an OTLP endpoint is set up).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns tracing on with the sampler of the standard variables ([`Sampler::from_env`]).
pub(crate) fn enable() {
    let _ = SAMPLER.set(Sampler::from_env());
    ENABLED.store(true, Ordering::Relaxed);
}

/// What decides whether a hop is sampled: the OpenTelemetry samplers of
/// `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`, `traceidratio` and their `parentbased_`
/// forms), with the same trace-id ratio rule as the SDK's, so every hop of a trace that
/// decides by ratio decides alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// A hop with a parent follows the parent's sampled flag.
    pub parent_based: bool,
    /// The decision for a root (and for every hop when not parent-based).
    pub root: Rule,
}

/// A sampler's own decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    AlwaysOn,
    AlwaysOff,
    /// Sampled when the trace id's low 63 bits are under this bound (ratio × 2^63).
    Ratio(u64),
}

impl Default for Sampler {
    fn default() -> Self {
        Self {
            parent_based: true,
            root: Rule::AlwaysOn,
        }
    }
}

impl Sampler {
    /// From `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`; an unknown sampler is the
    /// default (parent-based always-on), as the specification says, and is logged.
    pub fn from_env() -> Self {
        let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
        Self::parse(&name, arg.as_deref()).unwrap_or_else(|| {
            eprintln!("OTEL_TRACES_SAMPLER={name:?} is not a sampler this service knows: parentbased_always_on");
            Self::default()
        })
    }

    /// `None` for an unknown name. The ratio defaults to 1 and is clamped to 0..=1.
    pub fn parse(name: &str, arg: Option<&str>) -> Option<Self> {
        let ratio = || {
            let r = arg
                .and_then(|a| a.trim().parse::<f64>().ok())
                .filter(|r| r.is_finite())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            Rule::Ratio((r * (1u64 << 63) as f64) as u64)
        };
        let (parent_based, root) = match name.trim() {
            "" | "parentbased_always_on" => (true, Rule::AlwaysOn),
            "parentbased_always_off" => (true, Rule::AlwaysOff),
            "parentbased_traceidratio" => (true, ratio()),
            "always_on" => (false, Rule::AlwaysOn),
            "always_off" => (false, Rule::AlwaysOff),
            "traceidratio" => (false, ratio()),
            _ => return None,
        };
        Some(Self { parent_based, root })
    }

    /// Whether a hop of trace `trace_id` with this `parent` (its sampled flag) is sampled.
    pub fn sampled(&self, parent_sampled: Option<bool>, trace_id: u128) -> bool {
        match parent_sampled {
            Some(flag) if self.parent_based => flag,
            _ => match self.root {
                Rule::AlwaysOn => true,
                Rule::AlwaysOff => false,
                Rule::Ratio(bound) => ((trace_id as u64) >> 1) < bound,
            },
        }
    }
}

impl Sampler {
    /// Whether a hop is sampled: one whose message carried `parent`, or with none, an edge
    /// (a message from outside: decided as a root) or not (the hop before did not sample the
    /// message: unsampled under a parent-based sampler, decided as a root otherwise). The
    /// trace id is read or made only when the rule needs it (an unsampled message costs as
    /// little as it can).
    pub fn samples_hop(&self, parent: Option<&TraceContext>, edge: bool) -> bool {
        match parent {
            Some(p) if self.parent_based => p.sampled(),
            Some(p) => self.sampled(None, p.trace_id_bits()),
            None if edge || !self.parent_based => self.sampled(None, new_trace_id()),
            None => false,
        }
    }
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

    /// The context of the hop the caller runs in ([`Hop::scope`]; `None` when it is not
    /// sampled), else that of the current span (see [`Self::of_span`]).
    pub fn current() -> Option<Self> {
        if !enabled() {
            return None;
        }
        if let Ok(carried) = CARRIED.try_with(Clone::clone) {
            return carried;
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

    /// A context received from elsewhere; `None` when `traceparent` is malformed (W3C Trace
    /// Context: version 00 exactly, a later version by its first four fields; ids not all
    /// zeros; lowercase hex). It is checked here, not parsed into a context: an unsampled
    /// message is only passed on. A `tracestate` longer than the specification's 512
    /// characters is dropped.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        if !well_formed(traceparent) {
            return None;
        }
        Some(Self {
            // Passed on as version 00, the version this hop speaks.
            traceparent: format!("00{}", traceparent.get(2..55)?),
            tracestate: tracestate
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.len() <= 512)
                .map(str::to_string),
        })
    }

    /// The `sampled` flag of the sender (the lowest bit of the flags' second hex digit).
    pub fn sampled(&self) -> bool {
        self.traceparent
            .as_bytes()
            .get(54)
            .is_some_and(|d| matches!(d, b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f'))
    }

    /// The context of a new trace started by a writer that records no span (a writer
    /// outside the services, a benchmark's upstream), when `sampler`'s rule samples it as a
    /// root; `None` otherwise (an unsampled message carries no context).
    pub fn new_root(sampler: &Sampler) -> Option<Self> {
        let trace_id = new_trace_id();
        sampler.sampled(None, trace_id).then(|| Self {
            traceparent: traceparent_of(trace_id, new_span_id(), true),
            tracestate: None,
        })
    }

    fn trace_id_bits(&self) -> u128 {
        u128::from_str_radix(self.trace_id(), 16).unwrap_or_default()
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

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn well_formed(traceparent: &str) -> bool {
    let b = traceparent.as_bytes();
    let fields_ok = b.len() >= 55
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && traceparent.is_char_boundary(55);
    if !fields_ok {
        return false;
    }
    let (version, trace_id, span_id, flags) = (
        &traceparent[..2],
        &traceparent[3..35],
        &traceparent[36..52],
        &traceparent[53..55],
    );
    let version_ok = lower_hex(version) && version != "ff";
    // Version 00 has exactly four fields; a later one may add fields after a dash.
    let length_ok = b.len() == 55 || (version != "00" && b[55] == b'-');
    version_ok
        && length_ok
        && lower_hex(trace_id)
        && lower_hex(span_id)
        && lower_hex(flags)
        && trace_id.bytes().any(|c| c != b'0')
        && span_id.bytes().any(|c| c != b'0')
}

/// One hop of a message: its span and the context what it sends on carries, both only when
/// the hop is sampled. The default is an unsampled hop (no span, no context), as with tracing
/// off.
#[derive(Debug, Clone, Default)]
pub struct Hop {
    span: Option<tracing::Span>,
    context: Option<TraceContext>,
    /// Tracing was on when the hop started: [`Hop::scope`] then marks the hop it runs (so a
    /// write inside an unsampled hop is not taken for one made outside any hop).
    traced: bool,
}

impl Hop {
    /// A hop of a message an Aurora hop wrote (a stream entry, a NATS message of a peer's
    /// gateway) or made (a write inside the hop the caller runs in): `parent` is the context
    /// the message carried; `None` is that of the hop the caller runs in
    /// ([`TraceContext::current`]), if any. No context means the hop before did not sample
    /// the message: a parent-based sampler then does not sample this one either (its span is
    /// not opened); a sampler that is not parent-based decides as at a root. A sampled hop
    /// opens its span with `open` (a root span: its parent is set here) as the child of the
    /// parent. Tracing off, nothing is done.
    pub fn start(parent: Option<&TraceContext>, open: impl FnOnce() -> tracing::Span) -> Self {
        Self::begin(parent, false, open)
    }

    /// The first hop of a message from outside (a device's publish, a batch of Suricata
    /// lines, a write made outside any hop): as [`Hop::start`], except that with no context
    /// it is the root of a new trace, sampled as the sampler's rule decides for a root.
    pub fn root(parent: Option<&TraceContext>, open: impl FnOnce() -> tracing::Span) -> Self {
        Self::begin(parent, true, open)
    }

    fn begin(
        parent: Option<&TraceContext>,
        edge: bool,
        open: impl FnOnce() -> tracing::Span,
    ) -> Self {
        if !enabled() {
            return Self::default();
        }
        let current;
        let parent = match parent {
            Some(p) => Some(p),
            None => {
                current = TraceContext::current();
                current.as_ref()
            }
        };
        let sampler = SAMPLER.get().copied().unwrap_or_default();
        if !sampler.samples_hop(parent, edge) {
            return Self {
                traced: true,
                ..Self::default()
            };
        }
        let span = open();
        if let Some(parent) = parent {
            parent.set_parent_of(&span);
        }
        let context = TraceContext::of_span(&span);
        Self {
            span: Some(span),
            context,
            traced: true,
        }
    }

    /// The context what the hop sends on carries (`None` unsampled, or with tracing off).
    pub fn context(&self) -> Option<&TraceContext> {
        self.context.as_ref()
    }

    /// The hop's span; a disabled one when it is not sampled.
    pub fn span(&self) -> tracing::Span {
        self.span.clone().unwrap_or_else(tracing::Span::none)
    }

    /// True when the hop has a span (it is sampled).
    pub fn sampled(&self) -> bool {
        self.span.is_some()
    }

    /// Records a field of the span (nothing when unsampled).
    pub fn record<V: tracing::Value>(&self, field: &str, value: V) {
        if let Some(span) = &self.span {
            span.record(field, value);
        }
    }

    /// Runs `fut` inside the hop: in its span when sampled, and with its context (none when
    /// unsampled) as the one [`TraceContext::current`] gives, so that what it writes carries
    /// the hop's context or nothing. Tracing off, `fut` runs as it is.
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        use tracing::Instrument;
        match &self.span {
            Some(span) => {
                CARRIED
                    .scope(self.context.clone(), fut.instrument(span.clone()))
                    .await
            }
            None if self.traced => CARRIED.scope(None, fut).await,
            None => fut.await,
        }
    }
}

/// `00-<trace id>-<span id>-<flags>`, written digit by digit (the formatting machinery costs
/// more than the rest of an unsampled hop).
fn traceparent_of(trace_id: u128, span_id: u64, sampled: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(55);
    out.extend_from_slice(b"00-");
    out.extend(
        (0..32)
            .rev()
            .map(|i| HEX[((trace_id >> (i * 4)) & 0xf) as usize]),
    );
    out.push(b'-');
    out.extend(
        (0..16)
            .rev()
            .map(|i| HEX[((span_id >> (i * 4)) & 0xf) as usize]),
    );
    out.extend_from_slice(if sampled { b"-01" } else { b"-00" });
    // Only ASCII digits and dashes were written.
    String::from_utf8(out).unwrap_or_default()
}

fn new_trace_id() -> u128 {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

fn new_span_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// The hop of one message an Aurora hop wrote, after the OpenTelemetry messaging semantic
/// conventions: its span (when sampled, see [`Hop::start`]) is named `<destination>
/// <operation>`, with `messaging.system`, `messaging.destination.name` and
/// `messaging.operation.type`, and `parent` (the context the message carried; `None`: the hop
/// the caller runs in) as its parent. Free when tracing is off.
pub fn message_hop(
    system: &'static str,
    destination: &str,
    operation: &'static str,
    kind: &'static str,
    parent: Option<&TraceContext>,
) -> Hop {
    Hop::start(parent, || {
        message_span(system, destination, operation, kind)
    })
}

/// As [`message_hop`], for the first hop of a message from outside ([`Hop::root`]): with no
/// context, the root of a new trace.
pub fn message_root(
    system: &'static str,
    destination: &str,
    operation: &'static str,
    kind: &'static str,
    parent: Option<&TraceContext>,
) -> Hop {
    Hop::root(parent, || {
        message_span(system, destination, operation, kind)
    })
}

/// The context a write carries, in a hop to keep until the write is done: inside a hop
/// ([`Hop::scope`]), that hop's (none when it is not sampled); outside any hop, the
/// `<destination> publish` hop (producer) of the write, the root of a new trace
/// ([`message_root`]). Free when tracing is off.
pub fn write_hop(destination: &str) -> Hop {
    if !enabled() {
        return Hop::default();
    }
    match CARRIED.try_with(Clone::clone) {
        Ok(context) => Hop {
            span: None,
            context,
            traced: true,
        },
        Err(_) => match TraceContext::of_span(&tracing::Span::current()) {
            Some(context) => Hop {
                span: None,
                context: Some(context),
                traced: true,
            },
            None => message_root("redis", destination, "publish", "producer", None),
        },
    }
}

fn message_span(
    system: &'static str,
    destination: &str,
    operation: &'static str,
    kind: &'static str,
) -> tracing::Span {
    let name = format!("{destination} {operation}");
    tracing::info_span!(
        target: SPAN_TARGET,
        parent: None,
        "message",
        otel.name = name.as_str(),
        otel.kind = kind,
        messaging.system = system,
        messaging.destination.name = destination,
        messaging.operation.type = operation,
        messaging.message.id = tracing::field::Empty,
        messaging.batch.message_count = tracing::field::Empty,
    )
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
    fn a_later_version_is_read_by_its_first_fields_and_passed_on_as_00() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later";
        let cx = TraceContext::parse(later, None).expect("valid");
        assert_eq!(cx.traceparent, PARENT);
        assert_eq!(
            TraceContext::parse(
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None
            ),
            None
        );
        assert_eq!(TraceContext::parse(&PARENT.to_uppercase(), None), None);
        let long_state = "a=".to_string() + &"x".repeat(600);
        assert_eq!(
            TraceContext::parse(PARENT, Some(&long_state))
                .expect("known")
                .tracestate,
            None
        );
    }

    #[test]
    fn an_unsampled_traceparent_is_well_formed_and_says_unsampled() {
        let id = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128;
        let tp = traceparent_of(id, 0x00f0_67aa_0ba9_02b7, false);
        assert_eq!(tp, PARENT.replace("-01", "-00"));
        assert_eq!(
            traceparent_of(1, 1, false),
            format!("00-{:032x}-{:016x}-00", 1, 1)
        );
        let cx = TraceContext::parse(&tp, None).expect("well formed");
        assert!(!cx.sampled());
        assert_eq!(cx.trace_id_bits(), id);
    }

    #[test]
    fn the_sampled_flag_is_read_from_the_flags() {
        assert!(TraceContext::parse(PARENT, None).expect("known").sampled());
        let unsampled = PARENT.replace("-01", "-00");
        assert!(!TraceContext::parse(&unsampled, None)
            .expect("known")
            .sampled());
        let other_flags = PARENT.replace("-01", "-03");
        assert!(TraceContext::parse(&other_flags, None)
            .expect("known")
            .sampled());
    }

    #[test]
    fn samplers_are_read_as_the_specification_names_them() {
        let on = Sampler::parse("", None).expect("known");
        assert_eq!(on, Sampler::default());
        assert!(on.sampled(None, 7) && on.sampled(Some(true), 7) && !on.sampled(Some(false), 7));
        let off = Sampler::parse("always_off", None).expect("known");
        assert!(!off.sampled(Some(true), 7) && !off.sampled(None, 7));
        let all = Sampler::parse("traceidratio", Some("1")).expect("known");
        assert!(all.sampled(Some(false), u128::MAX));
        let none = Sampler::parse("parentbased_traceidratio", Some("0")).expect("known");
        assert!(!none.sampled(None, 0) && none.sampled(Some(true), 0));
        assert_eq!(Sampler::parse("jaeger_remote", None), None);
        // Out of range and garbage: clamped, or the default ratio 1.
        assert_eq!(
            Sampler::parse("traceidratio", Some("7")),
            Sampler::parse("traceidratio", Some("1"))
        );
        assert_eq!(
            Sampler::parse("traceidratio", Some("x")),
            Sampler::parse("traceidratio", None)
        );
    }

    #[test]
    fn a_ratio_keeps_about_its_share_and_decides_alike_for_one_trace_id() {
        let sampler = Sampler::parse("parentbased_traceidratio", Some("0.01")).expect("known");
        let kept = (0..100_000)
            .filter(|_| sampler.sampled(None, new_trace_id()))
            .count();
        assert!((700..1300).contains(&kept), "{kept} of 100,000 at 1%");
        // The SDK's rule: the trace id's low 64 bits, shifted right once, under ratio × 2^63.
        let Rule::Ratio(bound) = sampler.root else {
            panic!("a ratio: {sampler:?}");
        };
        assert_eq!(bound, (0.01 * (1u64 << 63) as f64) as u64);
        let low = |bits: u64| u128::from(bits) | (0xdead_beef_u128 << 64);
        assert!(sampler.sampled(None, low((bound - 1) << 1)));
        assert!(sampler.sampled(None, low(((bound - 1) << 1) | 1)));
        assert!(!sampler.sampled(None, low(bound << 1)));
    }

    #[test]
    fn a_message_without_context_is_sampled_only_at_an_edge_or_by_its_own_rule() {
        let sampled = TraceContext::parse(PARENT, None).expect("known");
        let unsampled = TraceContext::parse(&PARENT.replace("-01", "-00"), None).expect("known");
        let parent_based = Sampler::default();
        // Parent-based: the parent's flag, and nothing sampled after a hop that sent nothing.
        assert!(parent_based.samples_hop(Some(&sampled), false));
        assert!(!parent_based.samples_hop(Some(&unsampled), false));
        assert!(!parent_based.samples_hop(Some(&unsampled), true));
        assert!(!parent_based.samples_hop(None, false));
        // An edge with nothing is a root: always-on samples it, ratio 0 does not.
        assert!(parent_based.samples_hop(None, true));
        let never = Sampler::parse("parentbased_traceidratio", Some("0")).expect("known");
        assert!(!never.samples_hop(None, true));
        // Not parent-based: the hop's own rule, whatever came.
        let own = Sampler::parse("always_on", None).expect("known");
        assert!(own.samples_hop(None, false) && own.samples_hop(Some(&unsampled), false));
        let off = Sampler::parse("always_off", None).expect("known");
        assert!(!off.samples_hop(Some(&sampled), false) && !off.samples_hop(None, true));
    }

    #[test]
    fn a_new_root_carries_a_context_only_when_sampled() {
        let on = Sampler::default();
        let root = TraceContext::new_root(&on).expect("always-on samples every root");
        assert!(root.sampled());
        assert_eq!(TraceContext::parse(&root.traceparent, None), Some(root));
        let never = Sampler::parse("parentbased_traceidratio", Some("0")).expect("known");
        assert!((0..1000).all(|_| TraceContext::new_root(&never).is_none()));
    }

    #[test]
    fn off_it_reads_nothing() {
        // Nothing in this test binary turns tracing on.
        let props = vec![(TRACEPARENT_FIELD.to_string(), PARENT.to_string())];
        assert_eq!(TraceContext::from_user_properties(&props), None);
        assert_eq!(TraceContext::current(), None);
        let hop = message_hop("redis", "s", "process", "consumer", None);
        assert!(hop.context().is_none() && !hop.sampled());
    }
}
