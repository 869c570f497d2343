//! The monitoring as shipped, against the services as built: a real Prometheus (Debian's
//! `prometheus` package, on a free port) scrapes the ops ports of a whole site (the five
//! services, with traffic and one dead letter of each kind, so that the counters exist) and
//! loads the alert rules; then every query of the Grafana dashboard
//! (deploy/grafana/aurora-dashboard.json, its variables substituted), every metric selector in
//! it and in the alert rules (deploy/prometheus/aurora-rules.yaml, read back from Prometheus)
//! must return a series, and every rule must evaluate without error.
//!
//! Skipped, saying so, only when no `prometheus` binary can be found (`make services` installs
//! it; `AURORA_PROMETHEUS` names another).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aurora_core::auth::Permission;
use aurora_core::names::{Channel, DeviceTopicKind};
use aurora_e2e::{aurora_command, eve_lines, suricata_alert_line, ChildGuard};
use aurora_testkit::prelude::*;
use serde_json::{json, Value};

/// How long the series may take to appear once the traffic is sent.
const SERIES_WAIT: Duration = Duration::from_secs(40);

/// The `prometheus` binary: `AURORA_PROMETHEUS`, else on `PATH`, else Debian's.
fn prometheus_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AURORA_PROMETHEUS") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prometheus"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/bin/prometheus");
        debian.is_file().then_some(debian)
    })
}

/// A Prometheus server of the test's own, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `binary` scraping `targets` (job, ops port) every second with the labels
    /// `namespace` and `site`, and loading `rules`.
    fn start(
        binary: &Path,
        targets: &[(&str, u16)],
        namespace: &str,
        site: &str,
        rules: &Path,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\nscrape_configs:\n",
            rules = rules.display().to_string()
        );
        for (job, port) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n        \
                 labels: {{namespace: {namespace:?}, site: {site:?}}}\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = http().get(format!("{}/-/ready", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in {WAIT:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The result of an instant query (fails on an error answer: a query Prometheus refuses).
    async fn query(&self, promql: &str) -> Vec<Value> {
        let r = http()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .expect("GET /api/v1/query");
        let body: Value = r.json().await.expect("a JSON answer");
        assert_eq!(body["status"], "success", "query {promql}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The loaded rules: (name, query, health, last error).
    async fn rules(&self) -> Vec<(String, String, String, String)> {
        let r = http()
            .get(format!("{}/api/v1/rules", self.url))
            .send()
            .await
            .expect("GET /api/v1/rules");
        let body: Value = r.json().await.expect("a JSON answer");
        let mut rules = Vec::new();
        for group in body["data"]["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let s = |k: &str| rule[k].as_str().unwrap_or_default().to_string();
                rules.push((s("name"), s("query"), s("health"), s("lastError")));
            }
        }
        rules
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The vector selectors of a PromQL expression that name a metric of Aurora's (or `up`), with
/// their label matchers: `aurora_x_total{a="b"}`.
fn selectors(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            // Skip string literals (matcher values).
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_') || (i > 0 && ident(chars[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && ident(chars[i]) {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        let is_call = j < chars.len() && chars[j] == '(';
        if (name.starts_with("aurora_") || name == "up") && !is_call {
            let mut sel = name;
            if i < chars.len() && chars[i] == '{' {
                let close = chars[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .map(|p| i + p)
                    .unwrap_or_else(|| panic!("unclosed matcher in {expr}"));
                sel.extend(&chars[i..=close]);
                i = close + 1;
            }
            found.insert(sel);
        }
    }
    found
}

/// A dashboard query with Grafana's variables replaced as Grafana would for this site.
fn substitute(expr: &str, namespace: &str, site: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$__range", "5m")
        .replace("$__interval", "15s")
        .replace("${namespace}", namespace)
        .replace("$namespace", namespace)
        .replace("${site}", site)
        .replace("$site", site)
}

/// A query that has to answer.
struct Check {
    what: String,
    promql: String,
    /// Labels some series of the answer must carry (those the panel's legend prints).
    labels: Vec<String>,
    /// A label one series must hold with this value.
    want: Option<(String, String)>,
}

impl Check {
    fn new(what: String, promql: String) -> Self {
        Self {
            what,
            promql,
            labels: Vec::new(),
            want: None,
        }
    }
}

fn dashboard_checks(namespace: &str, site: &str) -> Vec<Check> {
    let path = workspace_path("deploy/grafana/aurora-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard"))
        .expect("the dashboard is JSON");
    let mut checks = Vec::new();
    for var in dash["templating"]["list"].as_array().expect("variables") {
        if var["type"] != "query" {
            continue;
        }
        let q = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .expect("a variable query");
        // label_values(<selector>, <label>)
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: {q} is not label_values", var["name"]));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let label = label.trim().to_string();
        let want = match label.as_str() {
            "namespace" => namespace,
            "site" => site,
            other => panic!("a variable of label {other}: add it to this test"),
        };
        let mut check = Check::new(
            format!("variable {}", var["name"]),
            format!(
                "count by ({label}) ({})",
                substitute(selector.trim(), namespace, site)
            ),
        );
        check.want = Some((label, want.to_string()));
        checks.push(check);
    }
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = substitute(target["expr"].as_str().expect("a query"), namespace, site);
            let what = format!(
                "panel {:?} {}",
                panel["title"].as_str().unwrap_or_default(),
                target["refId"].as_str().unwrap_or_default()
            );
            for sel in selectors(&expr) {
                checks.push(Check::new(format!("{what}: selector"), sel));
            }
            let mut check = Check::new(what, expr);
            check.labels = legend_labels(target["legendFormat"].as_str().unwrap_or_default());
            checks.push(check);
        }
    }
    checks
}

/// One pass over `checks`: those that do not answer as they should.
async fn failing(prom: &Prometheus, checks: &[Check]) -> Vec<String> {
    let mut failed = Vec::new();
    for check in checks {
        let result = prom.query(&check.promql).await;
        let mut ok = !result.is_empty();
        if let Some((label, want)) = &check.want {
            ok &= result
                .iter()
                .any(|s| s["metric"][label.as_str()] == want.as_str());
        }
        for label in &check.labels {
            ok &= result.iter().any(|s| {
                s["metric"][label.as_str()]
                    .as_str()
                    .is_some_and(|v| !v.is_empty())
            });
        }
        if !ok {
            let labels = if check.labels.is_empty() {
                String::new()
            } else {
                format!(" (with labels {:?})", check.labels)
            };
            failed.push(format!("{}: {}{labels}", check.what, check.promql));
        }
    }
    failed
}

/// The labels a legend prints: `{{channel}} {{code}}`.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(label, _)| label.trim().to_string())
        .collect()
}

/// A WebSocket client that never reads.
async fn stalled_client(url: &str) -> aurora_testkit::console::Socket {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"));
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_finds_a_series_for_every_dashboard_query_and_alert_selector() {
    let Some(prometheus) = prometheus_binary() else {
        eprintln!(
            "SKIPPED: no prometheus binary (not on PATH, not /usr/bin/prometheus, no \
             AURORA_PROMETHEUS): `make services` installs Debian's prometheus package"
        );
        return;
    };
    let started = Instant::now();
    let names = aurora_testkit::names();
    let db = TestDb::create().await;
    let site = Site::new(&names, "site-a", 11).with_database(&db);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let gone_eve = format!("eve-ingest-gone-{}", names.namespace());
    let eve_flags = [("recover-from", gone_eve.as_str())];
    let approver = aurora_core::approval::SigningKey::generate().public_base64();
    let registry_flags = [("approval-public-keys", approver.as_str())];
    let (bridge, registry, gateway, federation, eve) = tokio::join!(
        site.start(Svc::MqttBridge, &[]),
        site.start(Svc::DeviceRegistry, &registry_flags),
        // A console that does not read is closed fast.
        site.start(
            Svc::WsGateway,
            &[("client-queue", "2"), ("send-timeout", "1s")]
        ),
        site.start(Svc::FederationGateway, &[]),
        // Adopts a replica that is gone (there is nothing to take over: the counters exist).
        site.start(Svc::EveIngest, &eve_flags),
    );
    let services = [&bridge, &registry, &gateway, &federation, &eve];
    let targets: Vec<(&str, u16)> = services
        .iter()
        .map(|s| (s.svc.name(), s.ops_port))
        .collect();
    let rules = workspace_path("deploy/prometheus/aurora-rules.yaml")
        .canonicalize()
        .expect("deploy/prometheus/aurora-rules.yaml");
    let mut prom = Prometheus::start(
        &prometheus,
        &targets,
        names.namespace(),
        &site.site_id,
        &rules,
    );
    prom.wait_ready().await;

    // Traffic: a fleet (one device tampered with: an attestation failure), Suricata lines with
    // an alert (exported, fanned out), consoles.
    let prefix = format!("prom-{}", names.namespace());
    let _fleet = ChildGuard(
        aurora_command(&site)
            .args([
                "simulate",
                "devices",
                "--devices",
                "2",
                "--tampered",
                "1",
                "--rate",
                "4",
                "--alert-every",
                "1",
                "--prefix",
                &prefix,
                "--duration",
                "90s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aurora simulate devices"),
    );
    let mut conn = redis(&site.redis_url).await;
    let mut lines: Vec<Vec<u8>> = eve_lines(20).into_iter().map(String::into_bytes).collect();
    lines.push(suricata_alert_line().into_bytes());
    // One dead letter of each kind: eve-ingest (not JSON), device-registry and the stream
    // consumer (a registration that is not JSON), federation-gateway (an alert that is not
    // one), mqtt-bridge (a device message that is not JSON).
    lines.push(b"{not json".to_vec());
    lpush(&mut conn, &names.suricata_list(), &lines).await;
    xadd(&mut conn, &names.cps_registrations(), b"{not json").await;
    xadd(&mut conn, &names.alerts(), b"not json").await;
    let device = MqttDevice::shared(&format!("prom-bad-{}", names.namespace()));
    device.wait_connected().await;
    device
        .publish(
            &names.mqtt_sensor_topic("prom-bad", DeviceTopicKind::Telemetry),
            b"{not json".to_vec(),
        )
        .await;

    // Device actions: a privileged command written by hand (refused by the bridge), a plain
    // command (queued, then sent or not reached), a reboot approved without a proof (refused
    // by the registry, with an action alert).
    xadd_json(
        &conn,
        &names.cps_commands(),
        &json!({"id": uuid::Uuid::new_v4(), "device_id": "prom-dev", "action": "quarantine", "issued_at": chrono::Utc::now()}),
    )
    .await;
    let fleet_device = format!("{prefix}-0000");
    let write = token_for("prom-analyst", &[Permission::DevicesWrite]);
    let request = |action: &'static str| {
        http()
            .post(registry.http_url(&format!("/api/v1/devices/{fleet_device}/commands")))
            .bearer_auth(&write)
            .json(&json!({"action": action, "ttl_seconds": 5}))
            .send()
    };
    wait_until(WAIT, "the fleet's first device registered", || async {
        (request("blink").await.unwrap().status().as_u16() == 202).then_some(())
    })
    .await;
    let (status, body) = json_response(request("reboot").await.unwrap()).await;
    assert_eq!(status, 202, "{body}");
    let approval_id = body["approval_id"].as_str().unwrap().to_string();
    let pending = wait_matching(&conn, &names.approvals(), 1, "the reboot's approval", |v| {
        v["id"] == approval_id.as_str()
    })
    .await;
    let mut approved = pending[0].clone();
    approved["status"] = json!("approved");
    approved["decided_by"] = json!("prom-other");
    approved["decided_at"] = json!(chrono::Utc::now());
    xadd_json(&conn, &names.approvals(), &approved).await;

    let query = format!("token={}", token(&[Permission::WsAlerts]));
    let mut closing = Console::connect(&gateway.ws_url(Channel::Alerts, &query)).await;
    close_normally(&mut closing.ws, WAIT).await;
    // A console that reads nothing while large alerts arrive: closed as a slow client.
    let _stalled = stalled_client(&gateway.ws_url(Channel::Alerts, &query)).await;
    let pad = "p".repeat(256 * 1024);
    for n in 0..60 {
        xadd_json(
            &conn,
            &names.alerts(),
            &json!({"id": format!("pad-{n}"), "title": "padding", "pad": pad}),
        )
        .await;
    }

    let mut checks = dashboard_checks(names.namespace(), &site.site_id);
    let loaded = wait_until(WAIT, "Prometheus to load the alert rules", || async {
        let rules = prom.rules().await;
        (!rules.is_empty()).then_some(rules)
    })
    .await;
    let mut rule_selectors = BTreeSet::new();
    for (name, query, _, _) in &loaded {
        for sel in selectors(query) {
            rule_selectors.insert(sel.clone());
            checks.push(Check::new(format!("rule {name}: selector"), sel));
        }
    }
    println!(
        "{} checks: {} rules loaded, {} distinct rule selectors",
        checks.len(),
        loaded.len(),
        rule_selectors.len()
    );

    let deadline = Instant::now() + SERIES_WAIT;
    let mut missing = failing(&prom, &checks).await;
    while !missing.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        missing = failing(&prom, &checks).await;
    }
    assert!(
        missing.is_empty(),
        "{} of {} queries and selectors return no series after {SERIES_WAIT:?}:\n  {}\n\
         prometheus log:\n{}",
        missing.len(),
        checks.len(),
        missing.join("\n  "),
        prom.log_tail()
    );

    // Every rule evaluates (health "ok" once evaluated, never "err").
    let rules = wait_until(WAIT, "every rule evaluated", || async {
        let rules = prom.rules().await;
        rules
            .iter()
            .all(|(_, _, health, _)| health != "unknown")
            .then_some(rules)
    })
    .await;
    for (name, query, health, error) in &rules {
        assert_eq!(health, "ok", "rule {name} ({query}): {error}");
    }
    println!(
        "every dashboard query and alert selector returned a series ({} checks, {:.1} s in all)",
        checks.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn selectors_are_found_with_their_matchers_and_not_in_strings_or_calls() {
    let found = selectors(
        r#"sum by (a) (increase(aurora_x_total{job=~"aurora_y.*", b="c"}[5m])) > 0 or aurora_z unless up{job="j"} offset 5m"#,
    );
    let want: BTreeSet<String> = [
        r#"aurora_x_total{job=~"aurora_y.*", b="c"}"#,
        "aurora_z",
        r#"up{job="j"}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(found, want);
}
