//! The product as a user first meets it: the binaries as built, against the real servers.
//! Each test has its own namespace, Redis database index and PostgreSQL database, so they run
//! in parallel and can repeat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use aurora_core::auth::Permission;
use aurora_core::names::Channel;
use aurora_core::Names;
use aurora_e2e::{aurora_cli, aurora_command, suricata_alert_line, ChildGuard};
use aurora_testkit::prelude::*;
use serde_json::{json, Value};

/// `model version sha256` of the simulated fleet's genuine firmware, from the CLI.
fn genuine_firmware(site: &Site) -> (String, String, String) {
    let out = aurora_cli(site, &["simulate", "firmware-hash"]);
    let parts: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "unexpected firmware-hash output {out:?}");
    (parts[0].into(), parts[1].into(), parts[2].into())
}

/// `aurora simulate devices` for a fleet of `devices` (the last `tampered` with an implant),
/// ids `<prefix>-0000`, ...
fn simulate_devices(site: &Site, prefix: &str, devices: usize, tampered: usize) -> ChildGuard {
    let child = aurora_command(site)
        .args([
            "simulate",
            "devices",
            "--devices",
            &devices.to_string(),
            "--tampered",
            &tampered.to_string(),
            "--rate",
            "4",
            "--alert-every",
            "1",
            "--prefix",
            prefix,
            "--duration",
            "120s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aurora simulate devices");
    ChildGuard(child)
}

async fn allow_firmware(registry: &Service, site: &Site) {
    let (model, version, sha256) = genuine_firmware(site);
    let r = http()
        .post(registry.http_url("/api/v1/firmware"))
        .bearer_auth(token(&[Permission::FirmwareManage]))
        .json(&json!({"model": model, "version": version, "sha256": sha256}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_response(r).await;
    assert_eq!(status, 201, "POST /api/v1/firmware: {body}");
}

async fn device_status(pool: &sqlx::PgPool, device_id: &str) -> Option<String> {
    sqlx::query_scalar::<_, String>("SELECT status FROM devices WHERE device_id = $1")
        .bind(device_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn wait_status(pool: &sqlx::PgPool, device_id: &str, want: &str) {
    wait_until(
        WAIT,
        &format!("{device_id} {want} in PostgreSQL"),
        || async { (device_status(pool, device_id).await.as_deref() == Some(want)).then_some(()) },
    )
    .await;
}

/// Site "site-a" with a database of its own, the MQTT bridge and the device registry
/// running, the simulator's genuine firmware on the allow-list. The fields drop in their
/// order: the services first, the database and the names last.
struct DeviceSite {
    registry: Service,
    _bridge: Service,
    _cleanup: Cleanup,
    site: Site,
    db: TestDb,
    names: Names,
}

impl DeviceSite {
    async fn start() -> Self {
        let names = aurora_testkit::names();
        let db = TestDb::create().await;
        let site = Site::new(&names, "site-a", 5).with_database(&db);
        let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
        let _bridge = site.start(Svc::MqttBridge, &[]).await;
        let registry = site.start(Svc::DeviceRegistry, &[]).await;
        allow_firmware(&registry, &site).await;
        Self {
            registry,
            _bridge,
            _cleanup,
            site,
            db,
            names,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_device_is_registered_attested_trusted_and_listed() {
    // Held to the end of the test: the services keep running.
    let device_site = DeviceSite::start().await;
    let DeviceSite {
        registry,
        site,
        db,
        names,
        ..
    } = &device_site;

    let prefix = format!("dev-{}", names.namespace());
    let device = format!("{prefix}-0000");
    let _fleet = simulate_devices(site, &prefix, 1, 0);

    let pool = db.pool().await;
    wait_status(&pool, &device, "trusted").await;
    let (challenges, passed): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state = 'passed') FROM attestation_challenges WHERE device_id = $1",
    )
    .bind(&device)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        challenges >= 1 && passed >= 1,
        "challenges {challenges}, passed {passed}"
    );
    let (model, key_len): (Option<String>, Option<i32>) =
        sqlx::query_as("SELECT model, length(public_key) FROM devices WHERE device_id = $1")
            .bind(&device)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(model.as_deref(), Some("nRF52840-DK"));
    assert_eq!(key_len, Some(32), "key taken on first use");

    // The registry's API lists it as trusted.
    let read = token(&[Permission::DevicesRead]);
    let get = |path: String| {
        http()
            .get(registry.http_url(&path))
            .bearer_auth(&read)
            .send()
    };
    let r = get(format!("/api/v1/devices/{device}")).await.unwrap();
    let (status, body) = json_response(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "trusted", "{body}");
    let r = get("/api/v1/devices?status=trusted".to_string())
        .await
        .unwrap();
    let (status, body) = json_response(r).await;
    assert_eq!(status, 200, "{body}");
    let listed: Vec<&str> = body["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["device_id"].as_str())
        .collect();
    assert_eq!(listed, vec![device.as_str()]);

    // Its telemetry is on the bus too.
    let mut conn = redis(&site.redis_url).await;
    let telemetry = stream_docs(&mut conn, &names.cps_telemetry()).await;
    assert!(telemetry
        .iter()
        .any(|(_, d)| d["device_id"] == device.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_device_is_untrusted_and_its_alert_reaches_the_console() {
    // Held to the end of the test: the services keep running.
    let device_site = DeviceSite::start().await;
    let DeviceSite {
        site, db, names, ..
    } = &device_site;
    let gateway = site.start(Svc::WsGateway, &[]).await;
    let mut console = Console::connect(&gateway.ws_url(
        Channel::Alerts,
        &format!("token={}", token(&[Permission::WsAlerts])),
    ))
    .await;

    let prefix = format!("imp-{}", names.namespace());
    let device = format!("{prefix}-0000");
    let _fleet = simulate_devices(site, &prefix, 1, 1);

    let alert = console
        .wait_for(WAIT, "the attestation-failure alert", |v| {
            v["device_id"] == device.as_str() && v["source"] == "device-registry"
        })
        .await;
    assert_eq!(alert["severity"], "high", "{alert}");
    assert!(alert["stream_id"].is_string(), "{alert}");
    // The signature is genuine (the device's own key): what gives it away is its firmware.
    let reason = alert["reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("firmware not on the allow-list"),
        "{alert}"
    );
    let (_, _, genuine) = genuine_firmware(site);
    let reported = alert["firmware_sha256"].as_str().unwrap_or("");
    assert!(reported.len() == 64 && reported != genuine, "{alert}");
    assert!(reason.contains(reported), "{alert}");
    assert_eq!(alert["device_trust"], "untrusted", "{alert}");
    let pool = db.pool().await;
    wait_status(&pool, &device, "untrusted").await;

    // The device's own alerts now reach analysts marked as coming from an untrusted device.
    let cps = console
        .wait_for(WAIT, "the device's own alert, marked untrusted", |v| {
            v["device_id"] == device.as_str()
                && v["source"] == "cps"
                && v["device_trust"] == "untrusted"
        })
        .await;
    assert!(
        cps["title"]
            .as_str()
            .unwrap_or("")
            .starts_with("[UNTRUSTED DEVICE]"),
        "{cps}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suricata_alert_reaches_the_console_at_both_sites_exactly_once() {
    let names = aurora_testkit::names();
    let a = Site::new(&names, "site-a", 6);
    let b = Site::new(&names, "site-b", 7);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&a.redis_url, &b.redis_url]);
    let _eve = a.start(Svc::EveIngest, &[]).await;
    let _fed_a = a.start(Svc::FederationGateway, &[]).await;
    let _fed_b = b.start(Svc::FederationGateway, &[]).await;
    let gw_a = a.start(Svc::WsGateway, &[]).await;
    let gw_b = b.start(Svc::WsGateway, &[]).await;
    let query = format!("token={}", token(&[Permission::WsAlerts]));
    let mut console_a = Console::connect(&gw_a.ws_url(Channel::Alerts, &query)).await;
    let mut console_b = Console::connect(&gw_b.ws_url(Channel::Alerts, &query)).await;

    let line = suricata_alert_line();
    let event: Value = serde_json::from_str(&line).unwrap();
    let signature = event["alert"]["signature"].as_str().unwrap().to_string();
    let mut conn_a = redis(&a.redis_url).await;
    lpush(
        &mut conn_a,
        &names.suricata_list(),
        &[line.clone().into_bytes()],
    )
    .await;

    let at_a = console_a
        .wait_for(WAIT, "the alert at site A", |v| v["source"] == "suricata")
        .await;
    assert_eq!(at_a["title"], signature.as_str(), "{at_a}");
    let id = at_a["id"].as_str().expect("alert id").to_string();
    let at_b = console_b
        .wait_for(WAIT, "the alert at site B", |v| v["id"] == id.as_str())
        .await;
    assert_eq!(at_b["origin_site"], "site-a", "{at_b}");
    assert_eq!(at_b["title"], signature.as_str());

    // Exactly once at each site: nothing more arrives.
    let settle = Duration::from_secs(4);
    tokio::join!(console_a.drain_for(settle), console_b.drain_for(settle));
    assert_eq!(console_a.count("id", &id), 1, "at A: {:?}", console_a.seen);
    assert_eq!(console_b.count("id", &id), 1, "at B: {:?}", console_b.seen);
    assert_eq!(
        console_a.seen.len(),
        1,
        "nothing else at A: {:?}",
        console_a.seen
    );
    assert_eq!(
        console_b.seen.len(),
        1,
        "nothing else at B: {:?}",
        console_b.seen
    );

    // And on the buses: the event once in JetStream, the alert once per site.
    let events = jetstream_messages(NATS_URL, &names.suricata_stream()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].2,
        line.as_bytes(),
        "the line exactly as Suricata wrote it"
    );
    let mut conn_b = redis(&b.redis_url).await;
    assert_eq!(xlen(&mut conn_a, &names.alerts()).await, 1);
    assert_eq!(xlen(&mut conn_b, &names.alerts()).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_seen_by_every_console_and_decided_once() {
    let names = aurora_testkit::names();
    let site = Site::new(&names, "site-a", 8);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let gw1 = site.start(Svc::WsGateway, &[]).await;
    let gw2 = site.start(Svc::WsGateway, &[]).await;
    let manage = token_for("alice", &[Permission::ApprovalsManage]);
    let query = format!("token={manage}");
    let mut c1 = Console::connect(&gw1.ws_url(Channel::Approvals, &query)).await;
    let mut c2 = Console::connect(&gw2.ws_url(Channel::Approvals, &query)).await;

    let id = uuid::Uuid::new_v4().to_string();
    let now = chrono::Utc::now();
    let approval = json!({
        "id": id,
        "action": "Isolate workstation-042 from network",
        "case_id": "case-e2e",
        "risk_level": "high",
        "status": "pending",
        "requested_by": "incident_responder",
        "context": {"reason": "Active C2 beacon detected", "affected_users": 3, "confidence": 0.87},
        "requested_at": now,
        "expires_at": now + chrono::Duration::hours(1),
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("approval.json");
    std::fs::write(&file, approval.to_string()).unwrap();
    let out = aurora_cli(
        &site,
        &["publish", "approval", "--file", file.to_str().unwrap()],
    );
    assert!(out.starts_with(&names.approvals()), "{out}");

    for c in [&mut c1, &mut c2] {
        let seen = c
            .wait_for(WAIT, "the pending approval", |v| {
                v["id"] == id.as_str() && v["status"] == "pending"
            })
            .await;
        assert_eq!(seen["action"], "Isolate workstation-042 from network");
    }

    // The decision API refuses until the gateway has registered it (it reads the stream):
    // wait for a 200 or a 409, never anything else once registered.
    let decide = |gw: &Service, decision: &str| {
        http()
            .post(gw.http_url(&format!("/api/v1/approvals/{id}/decision")))
            .bearer_auth(&manage)
            .json(&json!({"decision": decision, "comment": "confirmed C2"}))
            .send()
    };
    let (status, body) = json_response(decide(&gw1, "approve").await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "approved");
    assert_eq!(body["decided_by"], "alice");

    for c in [&mut c1, &mut c2] {
        let decided = c
            .wait_for(WAIT, "the decision", |v| {
                v["id"] == id.as_str() && v["status"] == "approved"
            })
            .await;
        assert_eq!(decided["decided_by"], "alice", "{decided}");
        assert_eq!(decided["comment"], "confirmed C2");
    }

    // A second decision, on the other replica: 409 with the current status.
    let (status, body) = json_response(decide(&gw2, "reject").await.unwrap()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["status"], "approved", "{body}");
    // And nothing more reaches the consoles.
    let settle = Duration::from_secs(2);
    tokio::join!(c1.drain_for(settle), c2.drain_for(settle));
    for c in [&c1, &c2] {
        assert_eq!(c.count("id", &id), 2, "pending then approved: {:?}", c.seen);
    }
}
