//! What the benchmarks share beyond the test harness.
//!
//! The harness ([`aurora_testkit`]) starts the servers of a benchmark's own, runs the service
//! binaries as processes and waits for their readiness, reads the ops ports and Redis, and
//! deletes what a namespace left. What only the benchmarks need is here: the release
//! binaries, polling at a measurement's own resolution, services launched in this process,
//! the arithmetic of the figures (percentiles, the median round, rounding), the figure of
//! the rounds that measure the cost of tracing and the trace contexts they send, readings of
//! `/proc`, and the results file.

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use aurora_core::ops::Readiness;
use aurora_core::service::{launch, LaunchOptions, Launched, Service, Stopped};
use aurora_core::trace::{Sampler, TraceContext};
use tokio_util::sync::CancellationToken;

// ---- results ----------------------------------------------------------------------------

/// `bench/results/<name>.json`, read by `scripts/bench_report.py` into BENCHMARKS.md.
pub fn result_path(name: &str) -> PathBuf {
    aurora_testkit::workspace_path(&format!("bench/results/{name}.json"))
}

/// Writes `report` (pretty JSON) to [`result_path`] and says where.
pub fn write_result(name: &str, report: &serde_json::Value) -> anyhow::Result<PathBuf> {
    let path = result_path(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(path)
}

/// The last result of `name` as written (`None`: none, or not JSON).
pub fn last_result(name: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(result_path(name)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The `measured_at` of a result: now, UTC, to the second.
pub fn measured_at() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The machine's cores, as the results record them.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

// ---- settings ---------------------------------------------------------------------------

/// A benchmark setting from the environment (`BENCH_*`), else `default`; a value that does
/// not parse is an error, not the default.
pub fn env_or<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        Err(_) => Ok(default),
    }
}

// ---- time -------------------------------------------------------------------------------

/// Microseconds since the epoch: a send time carried in a message, compared with the time
/// of its receipt.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Polls `check` every `every` until it holds, and returns when that was seen: the interval
/// is the resolution of a timed phase that ends with it (the harness's
/// [`aurora_testkit::wait_until`] polls every 20 ms and panics). An error of `check`, or
/// `timeout` passing, is an error.
pub async fn poll_until<F, Fut>(
    every: Duration,
    timeout: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<Instant>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

// ---- figures ----------------------------------------------------------------------------

/// The `q` quantile (0 to 1) of sorted samples, nearest rank (`(len - 1) * q`, rounded);
/// NaN when there is none.
pub fn percentile<T: Copy + Into<f64>>(sorted: &[T], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)].into()
}

/// The median of `items` by `key` (of an even count, the upper one): the round a benchmark
/// measured in rounds reports.
pub fn median_by<T>(items: &[T], key: impl Fn(&T) -> f64) -> Option<&T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted.get(sorted.len() / 2).copied()
}

/// `x` rounded to `decimals` places.
pub fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

// ---- the cost of tracing ------------------------------------------------------------------

/// The sampling ratio of the traced rounds (`OTEL_TRACES_SAMPLER_ARG`): tracing at 1%.
pub const TRACE_SAMPLING: &str = "0.01";

/// The traced rounds' target: at least this share of the untraced rounds' throughput (1%
/// sampling costs at most 3%).
pub const TRACE_TARGET_RATIO: f64 = 0.97;

/// The two kinds of a trace round's site: untraced, and traced (exporting its spans to
/// `receiver`, `OTEL_TRACES_SAMPLER=parentbased_traceidratio` at `ratio`). Both let the exported
/// spans' target through the log filter: the bench's `warn` would leave nothing to export, and
/// an untraced service makes no span.
pub fn trace_sites(
    site: &aurora_testkit::process::Site,
    receiver: &aurora_testkit::otlp::OtlpReceiver,
    ratio: &str,
) -> (aurora_testkit::process::Site, aurora_testkit::process::Site) {
    let mut untraced = site.clone();
    untraced.log_filter = format!(
        "{},{}=info",
        site.log_filter,
        aurora_core::trace::SPAN_TARGET
    );
    let mut traced = untraced.clone();
    traced.extra_env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()),
        (
            "OTEL_TRACES_SAMPLER".into(),
            "parentbased_traceidratio".into(),
        ),
        ("OTEL_TRACES_SAMPLER_ARG".into(), ratio.to_string()),
    ];
    (untraced, traced)
}

/// Whether each round of pair `pair` is traced, in order: untraced first in even pairs,
/// traced first in odd ones (the machine's load drifts within a run).
pub fn pair_order(pair: usize) -> [bool; 2] {
    if pair.is_multiple_of(2) {
        [false, true]
    } else {
        [true, false]
    }
}

/// The figure of pairs of rounds, one untraced and one traced each: the median of the pairs'
/// traced/untraced ratios (of an even count, the upper one) and their spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceCost {
    pub pairs: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl TraceCost {
    /// `None` when there is no pair.
    pub fn of(ratios: &[f64]) -> Option<Self> {
        let median = *median_by(ratios, |r| *r)?;
        Some(Self {
            pairs: ratios.len(),
            median,
            min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
            max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }

    /// The traced rounds at least [`TRACE_TARGET_RATIO`] of the untraced.
    pub fn met(&self) -> bool {
        self.median >= TRACE_TARGET_RATIO
    }

    /// The line a benchmark prints.
    pub fn line(&self) -> String {
        format!(
            "tracing at 1%: traced/untraced {:.3} (median of {} pairs; {:.3} to {:.3}), cost {:.1}%; target (cost at most 3%) {}",
            self.median,
            self.pairs,
            self.min,
            self.max,
            100.0 * (1.0 - self.median),
            if self.met() { "met" } else { "NOT met" }
        )
    }

    /// The figure's fields of a result (`ratio_median`, `ratio_min`, `ratio_max`, `target`,
    /// `met`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ratio_median": round_to(self.median, 3),
            "ratio_min": round_to(self.min, 3),
            "ratio_max": round_to(self.max, 3),
            "target": "the traced rounds at least 97% of the untraced (1% sampling costs at most 3%)",
            "met": self.met(),
        })
    }
}

/// What one round of a trace pair measured, for [`trace_pairs`].
pub struct PairRound {
    /// Messages per second: a pair's figure is its traced round's over its untraced one's.
    pub rate: f64,
    /// The service's CPU seconds per message.
    pub cpu_per_message: f64,
    /// The round as recorded (the pair and whether it was traced are added).
    pub json: serde_json::Value,
}

/// What pairs of rounds measured: each round, and each pair's traced/untraced ratios of
/// throughput and of the service's CPU per message.
pub struct TracePairs {
    pub rounds: Vec<serde_json::Value>,
    pub ratios: Vec<f64>,
    pub cpu_ratios: Vec<f64>,
}

impl TracePairs {
    /// The figure, with its line printed.
    pub fn cost(&self) -> anyhow::Result<TraceCost> {
        let cost = TraceCost::of(&self.ratios).context("no pair measured")?;
        println!("{}", cost.line());
        Ok(cost)
    }

    /// The fields of the record every such benchmark writes: `rounds`, `pair_ratios`,
    /// `service_cpu_per_message_pair_ratios` and their median, and the figure's
    /// ([`TraceCost::json`]).
    pub fn json(&self, cost: &TraceCost) -> serde_json::Map<String, serde_json::Value> {
        let rounded = |v: &[f64]| v.iter().map(|r| round_to(*r, 3)).collect::<Vec<_>>();
        let cpu_median = median_by(&self.cpu_ratios, |r| *r)
            .copied()
            .unwrap_or(f64::NAN);
        let mut out = serde_json::Map::new();
        out.insert("rounds".into(), serde_json::json!(self.rounds));
        out.insert(
            "pair_ratios".into(),
            serde_json::json!(rounded(&self.ratios)),
        );
        out.insert(
            "service_cpu_per_message_pair_ratios".into(),
            serde_json::json!(rounded(&self.cpu_ratios)),
        );
        out.insert(
            "service_cpu_per_message_ratio_median".into(),
            serde_json::json!(round_to(cpu_median, 3)),
        );
        if let serde_json::Value::Object(figure) = cost.json() {
            out.extend(figure);
        }
        out
    }
}

/// Runs `pairs` pairs of rounds, one untraced and one traced each, in the order of
/// [`pair_order`]; `round(pair, traced)` measures one (`pair` from 0).
pub async fn trace_pairs(
    pairs: usize,
    mut round: impl AsyncFnMut(usize, bool) -> anyhow::Result<PairRound>,
) -> anyhow::Result<TracePairs> {
    let mut out = TracePairs {
        rounds: Vec::with_capacity(2 * pairs),
        ratios: Vec::with_capacity(pairs),
        cpu_ratios: Vec::with_capacity(pairs),
    };
    for pair in 0..pairs {
        let (mut rates, mut cpu) = ([0.0f64; 2], [0.0f64; 2]);
        for traced in pair_order(pair) {
            let r = round(pair, traced).await?;
            rates[usize::from(traced)] = r.rate;
            cpu[usize::from(traced)] = r.cpu_per_message;
            let mut json = serde_json::json!({"pair": pair + 1, "traced": traced});
            if let (Some(json), serde_json::Value::Object(fields)) = (json.as_object_mut(), r.json)
            {
                json.extend(fields);
            }
            out.rounds.push(json);
        }
        let (ratio, cpu_ratio) = (rates[1] / rates[0], cpu[1] / cpu[0]);
        println!(
            "  pair {}: traced/untraced {ratio:.3}, the service's CPU per message {cpu_ratio:.3}",
            pair + 1
        );
        out.ratios.push(ratio);
        out.cpu_ratios.push(cpu_ratio);
    }
    Ok(out)
}

/// Whether and how a benchmark runs its trace rounds: `AURORA_BENCH_TRACE=1` with the whole
/// run, `only` alone (recorded into the last whole run's result), else not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceRounds {
    Off,
    WithRun,
    Only,
}

impl TraceRounds {
    pub fn from_env() -> Self {
        match std::env::var("AURORA_BENCH_TRACE").as_deref() {
            Ok("1") => Self::WithRun,
            Ok("only") => Self::Only,
            _ => Self::Off,
        }
    }
}

/// The trace rounds of a result, `details.trace_sampling_rounds`, as every benchmark records
/// them.
fn trace_rounds_of(report: &serde_json::Value) -> Option<&serde_json::Value> {
    report
        .get("details")?
        .get("trace_sampling_rounds")
        .filter(|t| t.is_object())
}

/// Puts the trace rounds into a whole run's `report` of `name`: `measured` (dated now) when
/// the run measured them, else those of the last result, carried over with the date they
/// were measured (a whole run without `AURORA_BENCH_TRACE` keeps them rather than drop
/// them).
pub fn set_trace_rounds(
    name: &str,
    report: &mut serde_json::Value,
    measured: Option<serde_json::Value>,
) {
    let rounds = match measured {
        Some(mut rounds) => {
            rounds["measured_at"] = serde_json::json!(measured_at());
            rounds
        }
        None => {
            let Some(last) = last_result(name) else {
                return;
            };
            let Some(mut rounds) = trace_rounds_of(&last).cloned() else {
                return;
            };
            if rounds.get("measured_at").is_none() {
                rounds["measured_at"] = last["measured_at"].clone();
            }
            println!(
                "trace rounds of {} carried over from the last result",
                rounds["measured_at"]
            );
            rounds
        }
    };
    report["details"]["trace_sampling_rounds"] = rounds;
}

/// Records trace rounds run alone (`AURORA_BENCH_TRACE=only`) into the last whole run's
/// result of `name`, dated now, with a note saying so; the rest of the file is unchanged.
pub fn record_trace_rounds_alone(
    name: &str,
    mut rounds: serde_json::Value,
) -> anyhow::Result<PathBuf> {
    let mut report = last_result(name).with_context(|| {
        format!(
            "the trace rounds alone go into bench/results/{name}.json: run the whole bench first"
        )
    })?;
    if !report
        .get("details")
        .is_some_and(serde_json::Value::is_object)
    {
        bail!("bench/results/{name}.json has no details to put the trace rounds in");
    }
    let run_at = report["measured_at"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    rounds["measured_at"] = serde_json::json!(measured_at());
    rounds["note"] = serde_json::json!(format!(
        "the trace rounds alone (AURORA_BENCH_TRACE=only); the rest of this file is the whole run of {run_at}"
    ));
    report["details"]["trace_sampling_rounds"] = rounds;
    write_result(name, &report)
}

/// The spans `receiver` got since it held `before`, once what a stopped service flushed as it
/// stopped has come in.
pub async fn spans_since(
    receiver: &aurora_testkit::otlp::OtlpReceiver,
    before: usize,
) -> Vec<aurora_testkit::otlp::ReceivedSpan> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    receiver.spans().split_off(before)
}

/// How many of `spans` bear each name, the round's namespace `namespace` written `<ns>` (a
/// message hop's span is named after its stream or subject, a JetStream stream's name in
/// upper case): which hops made spans.
pub fn span_names(
    spans: &[aurora_testkit::otlp::ReceivedSpan],
    namespace: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut names = std::collections::BTreeMap::new();
    for span in spans {
        *names
            .entry(
                span.name
                    .replace(namespace, "<ns>")
                    .replace(&namespace.to_uppercase(), "<NS>"),
            )
            .or_default() += 1;
    }
    names
}

/// The trace context a traced writer upstream leaves on a message it starts: a new trace
/// when `sampler`'s rule samples it as a root (the trace-id ratio rule every hop applies
/// alike), else none: an unsampled message carries no context, and a parent-based hop
/// downstream keeps the decision by sampling nothing that came without one.
pub fn upstream_trace(sampler: &Sampler) -> Option<TraceContext> {
    TraceContext::new_root(sampler)
}

// ---- /proc ------------------------------------------------------------------------------

/// A `kB` field of `/proc/<pid>/status` (`"VmRSS"`, `"VmHWM"`), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) a process has used, in seconds (`/proc/<pid>/stat`, clock ticks
/// of 1/100 s, Linux's USER_HZ).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start after the last ')';
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

// ---- the services -------------------------------------------------------------------------

/// The release binary `name` of the workspace, beside this benchmark's own: built first
/// (`cargo build --release -p <name>`) unless `AURORA_BENCH_SKIP_BUILD` is set (as `make
/// bench-*` does after one workspace build).
pub fn release_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory for the bench binary")?;
    let path = dir.join(name);
    if std::env::var_os("AURORA_BENCH_SKIP_BUILD").is_none() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        println!("building {name} (release)...");
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", name, "--bin", name])
            .status()
            .context("cargo build")?;
        if !status.success() {
            bail!("building {name} failed");
        }
    }
    if !path.is_file() {
        bail!("{} not found: `make bench-build` builds it", path.display());
    }
    Ok(path)
}

/// A service launched in this process (its ops port on an ephemeral loopback port), for a
/// benchmark that drives it without a process in between.
pub struct InProcess {
    launched: Launched,
    shutdown: CancellationToken,
}

impl InProcess {
    pub async fn launch<S: Service>(service: S, options: LaunchOptions) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let launched = launch(service, options, shutdown.clone()).await?;
        Ok(Self { launched, shutdown })
    }

    pub fn readiness(&self) -> &Readiness {
        &self.launched.readiness
    }

    /// Asks it to stop without waiting (several at once: then [`InProcess::stopped`]).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for its drain after [`InProcess::shutdown`].
    pub async fn stopped(self) -> Stopped {
        self.launched.stopped().await
    }

    /// Asks it to stop and waits for its drain.
    pub async fn stop(self) -> Stopped {
        self.shutdown();
        self.stopped().await
    }
}

// ---- JetStream ----------------------------------------------------------------------------

/// How many messages a JetStream stream holds (0 when it does not exist), on a connection
/// the benchmark keeps (the harness's `nats::stream_len` connects each time, too costly for
/// a poll inside a timed phase).
pub async fn jetstream_len(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert!(percentile::<f64>(&[], 0.5).is_nan());
        assert_eq!(percentile(&[7u32], 0.99), 7.0);
    }

    #[test]
    fn the_median_round_is_the_middle_one_by_its_key() {
        let rounds = [(1, 0.9), (2, 0.7), (3, 0.8)];
        assert_eq!(median_by(&rounds, |r| r.1).map(|r| r.0), Some(3));
        let two = [(1, 0.9), (2, 0.7)];
        assert_eq!(median_by(&two, |r| r.1).map(|r| r.0), Some(1));
        assert!(median_by(&[] as &[(i32, f64)], |r| r.1).is_none());
    }

    #[test]
    fn rounds_to_places() {
        assert_eq!(round_to(0.94567, 3), 0.946);
        assert_eq!(round_to(23.34, 1), 23.3);
        assert_eq!(round_to(97405.4, 0), 97405.0);
    }

    #[test]
    fn the_trace_cost_is_the_median_pair_with_its_spread() {
        let cost = TraceCost::of(&[0.99, 0.95, 1.01]).expect("three pairs");
        assert_eq!((cost.median, cost.min, cost.max), (0.99, 0.95, 1.01));
        assert!(cost.met());
        assert!(!TraceCost::of(&[0.9, 0.96]).expect("two pairs").met());
        assert!(TraceCost::of(&[]).is_none());
    }

    #[test]
    fn upstream_traces_are_well_formed_and_sampled_at_the_ratio() {
        let sampler = Sampler::parse("parentbased_traceidratio", Some(TRACE_SAMPLING))
            .expect("a known sampler");
        let traces: Vec<TraceContext> = (0..100_000)
            .filter_map(|_| upstream_trace(&sampler))
            .collect();
        assert!(traces
            .iter()
            .all(|t| t.sampled() && TraceContext::parse(&t.traceparent, None).as_ref() == Some(t)));
        let sampled = traces.len();
        assert!(
            (700..1300).contains(&sampled),
            "{sampled} of 100,000 sampled"
        );
    }

    #[test]
    fn reads_its_own_process() {
        let pid = std::process::id();
        assert!(proc_status_kib(pid, "VmRSS").is_some_and(|k| k > 0));
        assert!(proc_status_kib(pid, "VmHWM").is_some());
        assert!(proc_status_kib(pid, "NoSuchField").is_none());
        assert!(cpu_secs(pid).is_some());
    }
}
