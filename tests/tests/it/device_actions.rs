//! Guarded device actions, end to end with the binaries as built: Mosquitto with the shipped
//! password file and ACL, two device-registry replicas, two ws-gateway replicas (one key), the
//! bridge, PostgreSQL, a Redis of the test's own (the shipped ACL names the default namespace's
//! topics). A quarantine request reaches the device only once another analyst approved it, and
//! then exactly once; its requester cannot approve it; a rejected request and an expired one
//! never reach it; a command written to Redis by hand is dead-lettered; the device's receipt
//! closes the command; the console's agent-thoughts channel shows the trail in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aurora_core::approval::SigningKey;
use aurora_core::auth::Permission;
use aurora_core::names::{Channel, DeviceTopicKind};
use aurora_core::Names;
use aurora_testkit::mqtt::{password_file, shipped_broker_config, MqttDevice};
use aurora_testkit::prelude::*;
use serde_json::{json, Value};

const DEVICE: &str = "dev-guarded-1";

async fn call(
    url: String,
    method: reqwest::Method,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http().request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    json_response(req.send().await.unwrap()).await
}

/// Decides on `gw` as the token's subject, once the gateway knows the approval (it reads the
/// approvals stream: 404 until then).
async fn decide(gw: &Service, approval_id: &str, token: &str, decision: &str) -> (u16, Value) {
    let url = gw.http_url(&format!("/api/v1/approvals/{approval_id}/decision"));
    wait_until(WAIT, "the gateway knows the approval", || async {
        let (s, b) = call(
            url.clone(),
            reqwest::Method::POST,
            token,
            Some(json!({"decision": decision})),
        )
        .await;
        (s != 404).then_some((s, b))
    })
    .await
}

/// The next command the device receives other than its attestation challenges.
async fn next_command(device: &MqttDevice, timeout: Duration) -> Option<Value> {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        let message = device.next_message(left).await?;
        let doc: Value = serde_json::from_slice(&message.payload).unwrap();
        if doc["action"] != "attest" {
            return Some(doc);
        }
    }
}

async fn command(registry: &Service, id: &str) -> Value {
    let read = token(&[Permission::DevicesRead]);
    let (s, b) = call(
        registry.http_url(&format!("/api/v1/commands/{id}")),
        reqwest::Method::GET,
        &read,
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b
}

async fn wait_command(registry: &Service, id: &str, status: &str) -> Value {
    wait_until(WAIT, &format!("command {id} {status}"), || async {
        let c = command(registry, id).await;
        (c["status"] == status).then_some(c)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_quarantine_reaches_the_device_once_and_nothing_else_does() {
    let names = Names::default();
    let redis_server = RedisServer::start();
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let passwd = password_file(
        dir.path(),
        &[("aurora-bridge", "bridge-pw"), (DEVICE, "dev-pw")],
    );
    let broker = MosquittoServer::start_with_config(&shipped_broker_config(&passwd));
    let key = SigningKey::generate();
    let key_file = dir.path().join("approval.key");
    std::fs::write(&key_file, key.to_base64()).unwrap();
    let public = key.public_base64();

    let mut site = Site::new(&names, "site-a", 0).with_database(&db);
    site.redis_url = redis_server.url();
    site.mqtt_url = format!("mqtt://127.0.0.1:{}", broker.port());
    let _bridge = site
        .start(
            Svc::MqttBridge,
            &[
                ("mqtt-username", "aurora-bridge"),
                ("mqtt-password", "bridge-pw"),
                ("approval-public-keys", &public),
            ],
        )
        .await;
    let registry_flags = [
        ("approval-public-keys", public.as_str()),
        ("approval-timeout", "12s"),
    ];
    let registry = site.start(Svc::DeviceRegistry, &registry_flags).await;
    let _registry2 = site.start(Svc::DeviceRegistry, &registry_flags).await;
    let key_path = key_file.to_str().unwrap();
    let gw1 = site
        .start(Svc::WsGateway, &[("approval-signing-key", key_path)])
        .await;
    let gw2 = site
        .start(Svc::WsGateway, &[("approval-signing-key", key_path)])
        .await;
    let conn = redis(&site.redis_url).await;

    // The device: registered by its first message, subscribed to its commands.
    let device =
        MqttDevice::online("127.0.0.1", broker.port(), DEVICE, Some((DEVICE, "dev-pw"))).await;
    device.subscribe(&names.mqtt_command_topic(DEVICE)).await;
    device.wait_subacked(1).await;
    device
        .publish(
            &names.mqtt_sensor_topic(DEVICE, DeviceTopicKind::Telemetry),
            br#"{"temperature": 21.5}"#.to_vec(),
        )
        .await;
    let read = token(&[Permission::DevicesRead]);
    wait_until(WAIT, "the device registered", || async {
        let (s, _) = call(
            registry.http_url(&format!("/api/v1/devices/{DEVICE}")),
            reqwest::Method::GET,
            &read,
            None,
        )
        .await;
        (s == 200).then_some(())
    })
    .await;
    let mut thoughts = Console::connect(&gw2.ws_url(
        Channel::AgentThoughts,
        &format!("token={}", token(&[Permission::WsAgentThoughts])),
    ))
    .await;

    let alice_writes = token_for("alice", &[Permission::DevicesWrite]);
    let alice = token_for("alice", &[Permission::ApprovalsManage]);
    let bob = token_for("bob", &[Permission::ApprovalsManage]);
    let quarantine = || async {
        let (s, b) = call(
            registry.http_url(&format!("/api/v1/devices/{DEVICE}/quarantine")),
            reqwest::Method::POST,
            &alice_writes,
            Some(json!({"reason": "beaconing to a known C2"})),
        )
        .await;
        assert_eq!(s, 202, "{b}");
        assert_eq!(b["status"], "awaiting_approval");
        (
            b["command_id"].as_str().unwrap().to_string(),
            b["approval_id"].as_str().unwrap().to_string(),
        )
    };

    // Requested: nothing reaches the device; alice cannot approve her own request.
    let (cmd, approval) = quarantine().await;
    assert!(
        next_command(&device, Duration::from_secs(2))
            .await
            .is_none(),
        "sent before any approval"
    );
    let (s, b) = decide(&gw1, &approval, &alice, "approve").await;
    assert_eq!(s, 403, "{b}");
    assert!(device
        .next_message(Duration::from_millis(500))
        .await
        .is_none());

    // Bob approves on the other replica: the device gets it exactly once, with the proof.
    let (s, b) = decide(&gw2, &approval, &bob, "approve").await;
    assert_eq!(s, 200, "{b}");
    let delivered = device
        .next_message(WAIT)
        .await
        .expect("the approved quarantine");
    let doc: Value = serde_json::from_slice(&delivered.payload).unwrap();
    assert_eq!(doc["id"], cmd.as_str());
    assert_eq!(doc["action"], "quarantine");
    assert_eq!(doc["approval"]["approved_by"], "bob");
    assert!(
        next_command(&device, Duration::from_secs(2))
            .await
            .is_none(),
        "delivered twice"
    );
    wait_command(&registry, &cmd, "sent").await;

    // The device's receipt closes it.
    device
        .publish(
            &names.mqtt_sensor_topic(DEVICE, DeviceTopicKind::Receipt),
            json!({"command_id": cmd, "outcome": "done"})
                .to_string()
                .into_bytes(),
        )
        .await;
    let done = wait_command(&registry, &cmd, "done").await;
    assert_eq!(done["decided_by"], "bob");
    assert_eq!(done["requested_by"], "alice");
    let (_, dev) = call(
        registry.http_url(&format!("/api/v1/devices/{DEVICE}")),
        reqwest::Method::GET,
        &read,
        None,
    )
    .await;
    assert_eq!(dev["status"], "quarantined");

    // The trail on the console, in order.
    thoughts
        .wait_for(WAIT, "the command's last audit event", |v| {
            v["details"]["command_id"] == cmd.as_str() && v["action"] == "device_action.done"
        })
        .await;
    let trail: Vec<&str> = thoughts
        .seen
        .iter()
        .filter(|v| v["details"]["command_id"] == cmd.as_str())
        .map(|v| v["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        trail,
        [
            "device_action.requested",
            "device_action.approved",
            "device_action.sent",
            "device_action.done"
        ]
    );

    // Rejected, and left to expire: never sent.
    let (rejected, approval) = quarantine().await;
    let (s, b) = decide(&gw1, &approval, &bob, "reject").await;
    assert_eq!(s, 200, "{b}");
    wait_command(&registry, &rejected, "rejected").await;
    let (expired, _) = quarantine().await;
    wait_until(Duration::from_secs(40), "the request expired", || async {
        (command(&registry, &expired).await["status"] == "approval_expired").then_some(())
    })
    .await;

    // A quarantine written to Redis by hand, without a proof: dead-lettered, never sent.
    let forged = uuid::Uuid::new_v4();
    xadd_json(
        &conn,
        &names.cps_commands(),
        &json!({"id": forged, "device_id": DEVICE, "action": "quarantine", "issued_at": chrono::Utc::now()}),
    )
    .await;
    let dead = wait_matching(
        &conn,
        &names.cps_deadletter(),
        1,
        "the forged command dead-lettered",
        |d| {
            let raw = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                d["raw_base64"].as_str().unwrap_or_default(),
            )
            .unwrap_or_default();
            String::from_utf8_lossy(&raw).contains(&forged.to_string())
        },
    )
    .await;
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("proof"),
        "{}",
        dead[0]
    );
    assert!(
        next_command(&device, Duration::from_secs(1))
            .await
            .is_none(),
        "a rejected, expired or forged command reached the device"
    );
}
