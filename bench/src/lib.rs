//! What the benchmarks share beyond the test harness ([`aurora_testkit`]): where results go.

use std::path::PathBuf;

/// `bench/results/<name>.json`, read by `scripts/bench_report.py` into BENCHMARKS.md.
pub fn result_path(name: &str) -> PathBuf {
    aurora_testkit::workspace_path(&format!("bench/results/{name}.json"))
}
