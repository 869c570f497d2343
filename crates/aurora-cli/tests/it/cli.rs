//! The `aurora` command against the real Redis and NATS.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use aurora_core::auth::{Permission, Verifier};
use aurora_testkit::namespace;

fn aurora(ns: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aurora"))
        .args(args)
        .env("AURORA_NAMESPACE", ns)
        .env_remove("AURORA_JWT_SECRET")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn token_mints_a_jwt_the_services_accept() {
    let out = aurora(
        "x",
        &[
            "token",
            "--sub",
            "alice",
            "--permissions",
            "ws:alerts,approvals:manage",
            "--ttl",
            "1h",
            "--secret",
            "s3cret",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let claims = Verifier::hs256(b"s3cret")
        .unwrap()
        .verify(stdout(&out).trim())
        .unwrap();
    assert_eq!(claims.sub, "alice");
    assert!(claims.has(Permission::WsAlerts) && claims.has(Permission::ApprovalsManage));
    let remaining = claims.remaining();
    assert!(remaining > Duration::from_secs(3500) && remaining <= Duration::from_secs(3600));

    let bad = aurora(
        "x",
        &[
            "token",
            "--sub",
            "a",
            "--permissions",
            "root",
            "--secret",
            "s",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("unknown permission \"root\""),
        "{}",
        stderr(&bad)
    );
    let no_key = aurora("x", &["token", "--sub", "a"]);
    assert!(!no_key.status.success());
    assert!(
        stderr(&no_key).contains("no signing key"),
        "{}",
        stderr(&no_key)
    );
}

#[test]
fn an_alert_published_is_tailed_back_from_redis() {
    let ns = namespace();
    let tail = Command::new(env!("CARGO_BIN_EXE_aurora"))
        .args([
            "tail",
            "alerts",
            "--from",
            "0",
            "--json",
            "--count",
            "2",
            "--timeout",
            "30s",
        ])
        .env("AURORA_NAMESPACE", &ns)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let published = aurora(
        &ns,
        &[
            "publish",
            "alert",
            "--title",
            "C2 beacon from workstation-042",
        ],
    );
    assert!(published.status.success(), "{}", stderr(&published));
    assert!(stdout(&published).starts_with(&format!("{ns}:alerts ")));

    let file = std::env::temp_dir().join(format!("{ns}-alert.json"));
    std::fs::write(
        &file,
        r#"{"id":"550e8400-e29b-41d4-a716-446655440000","title":"Suspicious DNS Query to Known C2 Domain","severity":"critical","status":"new","source":"suricata","iocs":[{"type":"domain","value":"t1.evil.com"}],"mitre_techniques":["T1071.004"],"timestamp":"2024-01-15T10:30:00Z","x_extra":"kept"}"#,
    )
    .unwrap();
    let published = aurora(&ns, &["publish", "alert", "--file", file.to_str().unwrap()]);
    assert!(published.status.success(), "{}", stderr(&published));

    let out = tail.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["stream"], format!("{ns}:alerts"));
    assert_eq!(lines[0]["data"]["title"], "C2 beacon from workstation-042");
    assert_eq!(lines[1]["data"]["severity"], "critical");
    assert_eq!(
        lines[1]["data"]["x_extra"], "kept",
        "unknown fields pass through"
    );

    let status = aurora(&ns, &["status", "--json", "--no-nats"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let v: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    let alerts = v["redis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == format!("{ns}:alerts"))
        .unwrap();
    assert_eq!(alerts["length"], 2);
    let _ = std::fs::remove_file(file);
}

#[test]
fn invalid_documents_are_refused_naming_the_field() {
    let ns = namespace();
    let file = std::env::temp_dir().join(format!("{ns}-bad.json"));
    std::fs::write(&file, r#"{"id":"550e8400-e29b-41d4-a716-446655440000","title":"x","severity":"apocalyptic","status":"new","source":"s","timestamp":"2024-01-15T10:30:00Z"}"#).unwrap();
    let out = aurora(&ns, &["publish", "alert", "--file", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("field `severity`"),
        "{}",
        stderr(&out)
    );
    let out = aurora(
        &ns,
        &["publish", "approval", "--file", "/nonexistent/file.json"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read /nonexistent/file.json"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_server_that_is_down_is_a_clear_error() {
    let port = aurora_testkit::free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_aurora"))
        .args(["publish", "alert"])
        .env("AURORA_REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot connect to Redis"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_aurora"))
        .args(["status"])
        .env("AURORA_NAMESPACE", namespace())
        .env("AURORA_NATS_URL", format!("nats://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("NATS"), "{}", stderr(&out));
}

#[test]
fn status_reports_jetstream() {
    let out = aurora(&namespace(), &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["jetstream"].as_array().unwrap().len(), 2);
}

#[test]
fn connection_flags_may_follow_the_subcommand() {
    let port = aurora_testkit::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let out = aurora(&namespace(), &["status", "--nats-url", &url]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("NATS at {url}")),
        "the NATS flag after the subcommand is the one used: {}",
        stderr(&out)
    );
    let out = aurora(
        &namespace(),
        &[
            "status",
            "--no-nats",
            "--redis-url",
            &format!("redis://127.0.0.1:{port}"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot connect to Redis"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_tables_keep_their_columns_apart() {
    let ns = namespace();
    for _ in 0..3 {
        let published = aurora(&ns, &["publish", "alert", "--title", "t"]);
        assert!(published.status.success(), "{}", stderr(&published));
    }
    let out = aurora(&ns, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let header = text
        .lines()
        .find(|l| l.starts_with("REDIS STREAM"))
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{ns}:alerts ")))
        .unwrap();
    let cells: Vec<&str> = line.split("  ").filter(|c| !c.is_empty()).collect();
    assert_eq!(
        cells.iter().map(|c| c.trim()).collect::<Vec<_>>(),
        [format!("{ns}:alerts"), "3".to_string()],
        "{text}"
    );
    assert_eq!(
        line.rfind('3').map(|i| i + 1),
        header.find("LENGTH").map(|i| i + "LENGTH".len()),
        "the length ends under its header: {text}"
    );
    let js = text
        .lines()
        .find(|l| l.starts_with("JETSTREAM STREAM"))
        .unwrap();
    for column in ["MESSAGES", "BYTES", "CONSUMERS"] {
        assert!(js.contains(&format!("  {column}")), "{text}");
    }
}

#[tokio::test]
async fn status_says_whether_redis_and_the_streams_keep_what_they_acknowledge() {
    let ns = namespace();
    let redis = aurora_testkit::RedisServer::start();
    let client = async_nats::connect(aurora_testkit::NATS_URL).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = aurora_core::Names::new(&ns).unwrap().nats_stream();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{stream}.>")],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let status = |extra: &[&str]| {
        let mut args = vec!["status", "--redis-url"];
        let url = redis.url();
        args.push(&url);
        args.extend_from_slice(extra);
        let out = aurora(&ns, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let text = status(&[]);
    let _ = js.delete_stream(&stream).await;
    let line = |dependency: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{dependency} ")))
            .unwrap_or_else(|| panic!("no line for {dependency}: {text}"))
            .to_string()
    };
    assert!(text.contains("DURABILITY OF"), "{text}");
    assert!(line("redis").contains("does-not-keep"), "{text}");
    let memory = line(&format!("jetstream:{stream}"));
    assert!(memory.contains("federation-gateway"), "{memory}");
    assert!(memory.contains("does-not-keep"), "{memory}");

    let waiting = status(&["--no-nats", "--json", "--redis-wait-replicas", "1"]);
    let v: serde_json::Value = serde_json::from_str(&waiting).unwrap();
    assert_eq!(v["durability"][0]["dependency"], "redis", "{v}");
    assert_eq!(v["durability"][0]["verdict"], "keeps", "{v}");
}

#[test]
fn a_switch_variable_reads_as_a_boolean_as_in_the_services() {
    for (value, ok) in [
        ("1", true),
        ("yes", true),
        ("false", true),
        ("maybe", false),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_aurora"))
            .args(["status", "--no-nats", "--json"])
            .env("AURORA_NAMESPACE", namespace())
            .env("AURORA_NATS_TLS", value)
            .output()
            .unwrap();
        assert_eq!(
            out.status.success(),
            ok,
            "AURORA_NATS_TLS={value}: {}",
            stderr(&out)
        );
    }
}

/// `XREADGROUP` of one entry as `consumer` (which creates the consumer, holding what it read).
async fn read_one(conn: &mut aurora_core::bus::Conn, stream: &str, group: &str, consumer: &str) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
}

/// The group consumers of `stream`/`group` in `aurora status --json`, by name.
fn members(
    status: &serde_json::Value,
    stream: &str,
    group: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    status["redis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == stream)
        .unwrap()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == group)
        .unwrap_or_else(|| panic!("no group {group} on {stream}: {status:#}"))["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["consumer"].as_str().unwrap().to_string(), m.clone()))
        .collect()
}

#[tokio::test]
async fn status_shows_live_and_gone_consumers_and_replicas() {
    use aurora_core::replicas::Lease;

    let names = aurora_testkit::names();
    let ns = names.namespace().to_string();
    let mut conn = aurora_testkit::redis::redis(aurora_testkit::REDIS_URL).await;
    let commands = names.cps_commands();
    let registrations = names.cps_registrations();
    for (stream, group) in [
        (&commands, "mqtt-bridge"),
        (&registrations, "device-registry"),
    ] {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for i in 0..3 {
        aurora_testkit::redis::xadd(&mut conn, &commands, format!("{{\"n\":{i}}}").as_bytes())
            .await;
    }
    // `old` read and acknowledged long ago: it holds nothing and is idle past the threshold.
    read_one(&mut conn, &commands, "mqtt-bridge", "old").await;
    let (old_id, _) = aurora_testkit::redis::stream_entries(&mut conn, &commands)
        .await
        .into_iter()
        .next()
        .unwrap();
    let _: u64 = redis::cmd("XACK")
        .arg(&commands)
        .arg("mqtt-bridge")
        .arg(&old_id)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The bridge's registry: r1 holds its lease, r2's lapses.
    let r1 = Lease::new(
        conn.clone(),
        &names,
        "mqtt-bridge",
        "r1",
        Duration::from_secs(60),
    );
    r1.renew().await.unwrap();
    let r2 = Lease::new(
        conn.clone(),
        &names,
        "mqtt-bridge",
        "r2",
        Duration::from_millis(100),
    );
    r2.renew().await.unwrap();
    let forget_idle = Duration::from_secs(3);
    tokio::time::sleep(forget_idle + Duration::from_millis(500)).await;
    read_one(&mut conn, &commands, "mqtt-bridge", "r1").await;
    read_one(&mut conn, &commands, "mqtt-bridge", "r2").await;
    // `stranger` holds nothing and is in no registry.
    let _: u64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&commands)
        .arg("mqtt-bridge")
        .arg("stranger")
        .query_async(&mut conn)
        .await
        .unwrap();
    // device-registry keeps no registry: its worker's consumer is live while it reads.
    aurora_testkit::redis::xadd(&mut conn, &registrations, b"{}").await;
    read_one(
        &mut conn,
        &registrations,
        "device-registry",
        "dr1-registration-0",
    )
    .await;

    let redis_url = aurora_testkit::REDIS_URL;
    let run = |json: bool| {
        let mut args = vec!["status", "--no-nats", "--forget-idle", "3s"];
        if json {
            args.push("--json");
        }
        Command::new(env!("CARGO_BIN_EXE_aurora"))
            .args(&args)
            .env("AURORA_NAMESPACE", &ns)
            .env("AURORA_REDIS_URL", redis_url)
            .output()
            .unwrap()
    };
    let out = run(true);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["forget_idle_ms"], 3000);
    let m = members(&v, &commands, "mqtt-bridge");
    assert_eq!(
        m.keys().collect::<Vec<_>>(),
        ["old", "r1", "r2", "stranger"],
        "{v:#}"
    );
    let state = |name: &str| {
        (
            m[name]["state"].as_str().unwrap().to_string(),
            m[name]["reason"].as_str().unwrap_or("").to_string(),
            m[name]["pending"].as_u64().unwrap(),
        )
    };
    let (s, why, pending) = state("old");
    assert_eq!((s.as_str(), pending), ("gone", 0), "{v:#}");
    assert!(why.starts_with("idle "), "{why}");
    assert!(m["old"]["idle_ms"].as_u64().unwrap() >= 3000, "{v:#}");
    assert_eq!(state("r1"), ("live".into(), String::new(), 1), "{v:#}");
    assert_eq!(
        state("r2"),
        ("gone".into(), "replica r2's lease lapsed".into(), 1),
        "{v:#}"
    );
    assert_eq!(
        state("stranger"),
        ("gone".into(), "not a registered replica".into(), 0),
        "{v:#}"
    );
    let dr = members(&v, &registrations, "device-registry");
    assert_eq!(dr["dr1-registration-0"]["state"], "live", "{v:#}");

    let registries = v["replicas"].as_array().unwrap();
    assert_eq!(registries.len(), 5, "{v:#}");
    let bridge = registries
        .iter()
        .find(|r| r["service"] == "mqtt-bridge")
        .unwrap();
    assert_eq!(bridge["registry"], format!("{ns}:mqtt-bridge:replicas"));
    let replicas = bridge["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{v:#}");
    assert_eq!(replicas[0]["instance"], "r1");
    assert_eq!(replicas[0]["state"], "live");
    let left = replicas[0]["lease_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 60_000, "{left}");
    assert_eq!(replicas[1]["instance"], "r2");
    assert_eq!(replicas[1]["state"], "gone");
    assert!(replicas[1]["lease_ms"].is_null());
    for r in registries.iter().filter(|r| r["service"] != "mqtt-bridge") {
        assert_eq!(r["replicas"].as_array().unwrap().len(), 0, "{v:#}");
    }

    // The same as tables.
    let out = run(false);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let row = |first: &str, name: &str| {
        text.lines()
            .find(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.first() == Some(&first) && cells.get(2) == Some(&name)
                    || cells.first() == Some(&first) && cells.get(1) == Some(&name)
            })
            .unwrap_or_else(|| panic!("no row {first} {name}:\n{text}"))
            .to_string()
    };
    assert!(
        row(&commands, "r2").ends_with("gone: replica r2's lease lapsed"),
        "{text}"
    );
    assert!(row(&commands, "r1").ends_with("live"), "{text}");
    assert!(
        row(&commands, "stranger").ends_with("gone: not a registered replica"),
        "{text}"
    );
    assert!(row(&commands, "old").contains("gone: idle "), "{text}");
    assert_eq!(
        row("mqtt-bridge", "r2")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["mqtt-bridge", "r2", "gone", "-", "-"],
        "{text}"
    );
    assert_eq!(
        row("mqtt-bridge", "r1").split_whitespace().nth(2),
        Some("live"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["ws-gateway", "(no", "registry)"]),
        "{text}"
    );
    aurora_testkit::redis::delete_namespace(&mut conn, &names).await;
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    let secrets = [
        (
            "AURORA_REDIS_URL",
            "redis://:redis-password-value@127.0.0.1:6379/0",
        ),
        (
            "AURORA_NATS_URL",
            "nats://user:nats-url-password@127.0.0.1:4222",
        ),
        ("AURORA_NATS_PASSWORD", "nats-password-value"),
        ("AURORA_NATS_TOKEN", "nats-token-value"),
        ("AURORA_JWT_SECRET", "jwt-secret-value-0123456789abcdef0123"),
        (
            "AURORA_SIMULATE_MQTT_URL",
            "mqtt://bridge:mqtt-password-value@127.0.0.1:1883",
        ),
    ];
    for args in [
        &["--help"][..],
        &["token", "--help"],
        &["tail", "--help"],
        &["status", "--help"],
        &["publish", "--help"],
        &["simulate", "devices", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_aurora"))
            .args(args)
            .envs(secrets)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let help = stdout(&out);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        for (_, value) in secrets {
            let secret = value
                .split([':', '@'])
                .find(|part| part.contains("value") || part.contains("password"))
                .unwrap();
            assert!(
                !help.contains(secret),
                "aurora {args:?} --help printed {secret}: {help}"
            );
        }
    }
}

#[tokio::test]
async fn ledger_balances_then_names_entries_trimmed_before_a_group_read_them() {
    use aurora_core::bus::{self, GroupConfig, GroupReader, Producer};
    let ns = namespace();
    let names = aurora_core::Names::new(&ns).unwrap();
    let conn = bus::connect(aurora_testkit::REDIS_URL).await.unwrap();
    let stream = names.alerts();
    let docs: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (stream.clone(), format!("{{\"i\":{i}}}").into_bytes()))
        .collect();
    let mut cfg = GroupConfig::new(&stream, "console", "c1", &names.deadletter("t"), "t");
    cfg.block = Duration::from_millis(50);
    let read_conn = bus::connect_blocking(aurora_testkit::REDIS_URL, cfg.block)
        .await
        .unwrap();
    let big = Producer::new(conn.clone(), 100_000);
    let mut reader = GroupReader::new(cfg, read_conn, big.clone()).await.unwrap();
    big.publish_batch(&docs).await.unwrap();
    let batch = reader.next_batch().await.unwrap();
    let ids: Vec<&str> = batch.iter().map(|e| e.id.as_str()).collect();
    reader.ack(&ids).await.unwrap();

    let ns2 = ns.clone();
    let out = tokio::task::spawn_blocking(move || aurora(&ns2, &["ledger", "--since", "10m"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("{stream} -> console")), "{text}");
    assert!(
        text.contains("every entry written in the window is handled"),
        "{text}"
    );

    // The stream kept to about 100 entries while the group does not read: 2,000 more.
    let small = Producer::new(conn.clone(), 100);
    for chunk in (0..2_000)
        .map(|i| (stream.clone(), format!("{{\"j\":{i}}}").into_bytes()))
        .collect::<Vec<_>>()
        .chunks(250)
    {
        small.publish_batch(chunk).await.unwrap();
    }
    let ns2 = ns.clone();
    let out =
        tokio::task::spawn_blocking(move || aurora(&ns2, &["ledger", "--since", "10m", "--json"]))
            .await
            .unwrap();
    assert!(!out.status.success(), "a loss fails the command");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &doc["rows"][0];
    assert_eq!(row["written"], 2_100);
    assert!(row["trimmed"].as_i64().unwrap() > 1_800, "{doc}");
    assert_eq!(row["unexplained"], 0, "{doc}");
    let findings = doc["findings"].to_string();
    assert!(
        findings.contains("trimmed by the stream's length limit before the group read them"),
        "{doc}"
    );
    aurora_testkit::prelude::delete_namespace(&mut conn.clone(), &names).await;
}
