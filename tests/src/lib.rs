//! What Aurora's whole-system tests need beyond the shared harness ([`aurora_testkit`]): the
//! `aurora` CLI configured for a site, and the site's sample input.
//!
//! Everything else (the service-process runner, ops, PostgreSQL, Redis, JetStream, MQTT,
//! WebSocket, HTTP, tokens) is in aurora-testkit; the tests import it from there.

use std::process::{Child, Command, Stdio};

use aurora_testkit::auth::SECRET;
use aurora_testkit::process::{binary, Site};
use aurora_testkit::workspace_path;
use serde_json::Value;

/// Runs `aurora` with `args` in `site`'s namespace and Redis; fails on a non-zero exit.
pub fn aurora_cli(site: &Site, args: &[&str]) -> String {
    let out = aurora_command(site)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run aurora");
    assert!(
        out.status.success(),
        "aurora {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `aurora` configured for `site`, not yet started.
pub fn aurora_command(site: &Site) -> Command {
    let mut cmd = Command::new(binary("aurora"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AURORA_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AURORA_NAMESPACE", site.names.namespace())
        .env("AURORA_REDIS_URL", &site.redis_url)
        .env("AURORA_NATS_URL", &site.nats_url)
        .env("AURORA_SIMULATE_MQTT_URL", &site.mqtt_url)
        .env("AURORA_JWT_SECRET", SECRET);
    cmd
}

/// A child process killed when dropped (the device simulator).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first line of an eve-ingest sample whose `event_type` is `alert`.
pub fn suricata_alert_line() -> String {
    let path = workspace_path("services/eve-ingest/tests/fixtures/eve-suricata-verify.jsonl");
    let text = std::fs::read_to_string(&path).expect("the Suricata samples");
    text.lines()
        .find(|l| {
            serde_json::from_str::<Value>(l)
                .map(|v| v["event_type"] == "alert")
                .unwrap_or(false)
        })
        .expect("an alert event in the samples")
        .to_string()
}

/// `n` distinct EVE lines made from the samples (a field of our own makes each unique).
pub fn eve_lines(n: usize) -> Vec<String> {
    let mut samples = Vec::new();
    for f in [
        "eve-suricata-verify.jsonl",
        "eve-surevego.jsonl",
        "eve-telegraf.jsonl",
    ] {
        let path = workspace_path(&format!("services/eve-ingest/tests/fixtures/{f}"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("the Suricata samples {}: {e}", path.display()));
        samples.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v.is_object()),
        );
    }
    (0..n)
        .map(|i| {
            let mut v = samples[i % samples.len()].clone();
            v["e2e_seq"] = serde_json::json!(i);
            v.to_string()
        })
        .collect()
}
