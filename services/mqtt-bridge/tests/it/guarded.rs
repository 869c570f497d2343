//! Guarded device actions, on a real broker and Redis: what an analyst approved is what
//! reaches the device, once. A privileged command without a valid proof (none, an unknown
//! key, expired, copied onto another device or other parameters) or with a proof already used
//! by another entry is dead-lettered with the reason, recorded `failed`, and never reaches the
//! device; a valid proof is delivered exactly once; a non-privileged command needs none. The
//! MQTT 5 downlink: a v5 subscriber sees the message expiry interval, a command nobody is
//! subscribed to is `not_reached`, a persistent-session device offline past a command's
//! expiry never gets it, a PUBACK refusing the command makes it `failed`. And a device's
//! receipt reaches `cps:receipt`.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use aurora_core::approval::{ActionProof, ApproverKeys, DeviceAction, SigningKey};
use aurora_core::bus::Producer;
use aurora_core::model::{CommandOutcome, CommandStatus, DeviceCommand, Extra};
use aurora_core::names::DeviceTopicKind;
use aurora_testkit::mqtt::password_file;
use chrono::Utc;
use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use serde_json::{json, Value};
use uuid::Uuid;

/// A command for `device`, expiring in an hour.
fn command(device: &str, action: &str, params: Value) -> DeviceCommand {
    let now = Utc::now();
    DeviceCommand {
        id: Uuid::new_v4(),
        device_id: device.to_string(),
        action: action.to_string(),
        params,
        issued_at: now,
        expires_at: Some(now + chrono::Duration::hours(1)),
        extra: Extra::new(),
    }
}

/// `key`'s approval of `c` (as ws-gateway signs it), void after `valid_for`, put in `c`.
fn approve(key: &SigningKey, c: &mut DeviceCommand, valid_for: chrono::Duration) -> ActionProof {
    let proof = key.sign(
        &DeviceAction::of_command(c),
        Uuid::new_v4(),
        "analyst-b",
        Utc::now() + valid_for,
    );
    proof.attach(c);
    proof
}

fn keys(key: &SigningKey) -> ApproverKeys {
    ApproverKeys::parse(&[key.public_base64()]).unwrap()
}

/// Writes each document to the commands stream, in order; their entry ids.
async fn write_commands(run: &SharedRun, docs: &[Vec<u8>]) -> Vec<String> {
    let producer = Producer::new(run.redis.clone(), 10_000);
    let mut ids = Vec::new();
    for doc in docs {
        ids.push(
            producer
                .publish(&run.names.cps_commands(), doc)
                .await
                .unwrap(),
        );
    }
    ids
}

fn doc(c: &DeviceCommand) -> Vec<u8> {
    serde_json::to_vec(c).unwrap()
}

/// The statuses recorded for the command `id`.
fn statuses_of(statuses: &[CommandStatus], id: Uuid) -> Vec<&CommandStatus> {
    statuses.iter().filter(|s| s.command_id == id).collect()
}

/// The series of `aurora_mqtt_bridge_commands_refused_total` with `reason`, in this process.
fn refused(reason: &str) -> f64 {
    metric_sum(
        &aurora_core::ops::metrics_handle().render(),
        "aurora_mqtt_bridge_commands_refused_total",
        &[("reason", reason)],
    )
}

/// A device subscribed to its command topics, the subscription proven by a probe.
async fn listening(run: &SharedRun, name: &str, devices: &[&str]) -> MqttDevice {
    let device = run.device(name).await;
    for d in devices {
        device.subscribe(&run.names.mqtt_command_topic(d)).await;
    }
    device.wait_subacked(devices.len() as u64).await;
    let probe = run.device(&format!("{name}-probe")).await;
    probe
        .publish(&run.names.mqtt_command_topic(devices[0]), "probe")
        .await;
    let first = device
        .next_message(LONG)
        .await
        .expect("the probe delivered");
    assert_eq!(&first.payload[..], b"probe");
    probe.disconnect().await;
    device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privileged_command_reaches_the_device_only_with_a_valid_unused_proof() {
    let approver = SigningKey::generate();
    let stranger = SigningKey::generate();
    let run = SharedRun::start(|cfg| cfg.approver_keys = keys(&approver)).await;
    let names = run.names.clone();
    let device = listening(&run, "dev", &["dev-1", "dev-2"]).await;
    let before: Vec<f64> = [
        "missing",
        "unknown_key",
        "expired",
        "bad_signature",
        "replayed",
    ]
    .iter()
    .map(|r| refused(r))
    .collect();

    let params = json!({"vlan": 999, "ports": [1, 2]});
    let unproven = command("dev-1", "quarantine", params.clone());
    let mut by_stranger = command("dev-1", "quarantine", params.clone());
    approve(&stranger, &mut by_stranger, chrono::Duration::minutes(5));
    let mut expired = command("dev-1", "reboot", Value::Null);
    approve(&approver, &mut expired, chrono::Duration::seconds(-1));
    // A valid proof copied onto a command for another device, and onto other parameters.
    let mut original = command("dev-1", "isolate", params.clone());
    approve(&approver, &mut original, chrono::Duration::minutes(5));
    let mut other_device = original.clone();
    other_device.device_id = "dev-2".into();
    let mut other_params = original.clone();
    other_params.params = json!({"vlan": 1, "ports": [1, 2]});
    let mut valid = command("dev-1", "quarantine", params.clone());
    let valid_proof = approve(&approver, &mut valid, chrono::Duration::minutes(5));
    // Not privileged: no proof needed.
    let attest = command("dev-1", "attest", json!({"nonce": "n-1"}));

    let refusals = [
        (&unproven, "a privileged action without an approval proof"),
        (&by_stranger, "signed by an unknown key"),
        (&expired, "the approval proof expired at"),
        (&other_device, "signature does not match this command"),
        (&other_params, "signature does not match this command"),
    ];
    let mut docs: Vec<Vec<u8>> = refusals.iter().map(|(c, _)| doc(c)).collect();
    docs.push(doc(&valid));
    // The same valid command written a second time: a replay of its approval.
    docs.push(doc(&valid));
    docs.push(doc(&attest));
    let ids = write_commands(&run, &docs).await;
    let (valid_entry, replay_entry) = (&ids[5], &ids[6]);

    // The device gets exactly the valid privileged command and the attest, in order.
    for want in [&valid, &attest] {
        let got = device
            .next_message(LONG)
            .await
            .expect("a command delivered");
        assert_eq!(got.topic, names.mqtt_command_topic("dev-1"));
        let got: DeviceCommand = aurora_core::model::parse(&got.payload).unwrap();
        assert_eq!(got.id, want.id, "{} delivered", want.action);
    }

    let status_stream = names.cps_command_status();
    wait_xlen(&run.redis, &status_stream, 8, "8 outcomes").await;
    let statuses: Vec<CommandStatus> = stream_records(&run.redis, &status_stream).await;
    for (c, why) in &refusals {
        let s = statuses_of(&statuses, c.id);
        let s = s
            .iter()
            .find(|s| s.device_id == c.device_id)
            .unwrap_or_else(|| panic!("a status for {why}: {statuses:?}"));
        assert_eq!(s.status, CommandOutcome::Failed, "{why}");
        let reason = s.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(why), "{why}: {reason}");
    }
    let valid_statuses = statuses_of(&statuses, valid.id);
    assert_eq!(valid_statuses.len(), 2, "{valid_statuses:?}");
    assert_eq!(valid_statuses[0].status, CommandOutcome::Sent);
    assert_eq!(valid_statuses[1].status, CommandOutcome::Failed);
    let replayed = format!(
        "approval {} was already used by entry {valid_entry}",
        valid_proof.approval_id
    );
    assert_eq!(valid_statuses[1].reason.as_deref(), Some(replayed.as_str()));
    let attest_status = statuses_of(&statuses, attest.id);
    assert_eq!(attest_status[0].status, CommandOutcome::Sent);

    // Each refused entry is dead-lettered with its reason; the delivered ones are not.
    let dead = wait_matching(
        &run.redis,
        &names.cps_deadletter(),
        6,
        "6 dead letters",
        |_| true,
    )
    .await;
    let reason_of = |entry: &str| {
        dead.iter()
            .find(|d| d["source_id"] == entry)
            .map(|d| d["reason"].as_str().unwrap().to_string())
    };
    for (i, (_, why)) in refusals.iter().enumerate() {
        let reason = reason_of(&ids[i]).unwrap_or_else(|| panic!("{why} dead-lettered"));
        assert!(reason.contains(why), "{why}: {reason}");
    }
    assert_eq!(reason_of(replay_entry), Some(replayed));
    assert_eq!(reason_of(valid_entry), None);
    assert_eq!(dead.len(), 6, "nothing else dead-lettered");
    assert!(dead.iter().all(|d| d["source"] == names.cps_commands()));

    // The approval's use is recorded with the entry that used it.
    let used: Option<String> = redis::cmd("GET")
        .arg(names.state_key(
            mqtt_bridge::SERVICE,
            &format!("approval-used:{}", valid_proof.approval_id),
        ))
        .query_async(&mut run.redis.clone())
        .await
        .unwrap();
    assert_eq!(used.as_ref(), Some(valid_entry));

    let after: Vec<f64> = [
        "missing",
        "unknown_key",
        "expired",
        "bad_signature",
        "replayed",
    ]
    .iter()
    .map(|r| refused(r))
    .collect();
    for (i, want) in [1.0, 1.0, 1.0, 2.0, 1.0].iter().enumerate() {
        assert!(
            after[i] - before[i] >= *want,
            "refusals counted by reason: {before:?} -> {after:?}"
        );
    }

    wait_no_pending(
        &run.redis,
        &names.cps_commands(),
        mqtt_bridge::downlink::GROUP,
    )
    .await;
    let extra = device.next_message(Duration::from_millis(500)).await;
    assert!(extra.is_none(), "nothing else reached a device: {extra:?}");
    device.disconnect().await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_approver_keys_every_privileged_command_is_refused() {
    let run = SharedRun::start(|_| {}).await;
    let names = run.names.clone();
    let device = listening(&run, "dev", &["dev-1"]).await;
    let mut reboot = command("dev-1", "reboot", Value::Null);
    approve(
        &SigningKey::generate(),
        &mut reboot,
        chrono::Duration::minutes(5),
    );
    let config = command("dev-1", "update_config", json!({"interval": 5}));
    write_commands(&run, &[doc(&reboot), doc(&config)]).await;

    let got = device
        .next_message(LONG)
        .await
        .expect("update_config delivered");
    let got: DeviceCommand = aurora_core::model::parse(&got.payload).unwrap();
    assert_eq!(
        got.id, config.id,
        "only the non-privileged command is delivered"
    );
    let statuses = wait_matching(
        &run.redis,
        &names.cps_command_status(),
        2,
        "both outcomes",
        |_| true,
    )
    .await;
    let of = |id: Uuid| statuses.iter().find(|s| s["command_id"] == id.to_string());
    let reboot_status = of(reboot.id).unwrap();
    assert_eq!(reboot_status["status"], "failed");
    assert!(reboot_status["reason"]
        .as_str()
        .unwrap()
        .contains("no approver public key is configured"));
    assert_eq!(of(config.id).unwrap()["status"], "sent");
    wait_no_pending(
        &run.redis,
        &names.cps_commands(),
        mqtt_bridge::downlink::GROUP,
    )
    .await;
    assert!(device
        .next_message(Duration::from_millis(500))
        .await
        .is_none());
    device.disconnect().await;
    run.stop().await;
}

/// An MQTT 5 device (rumqttc's v5 client): its CONNACKs and the publishes it receives.
struct V5Device {
    client: rumqttc::v5::AsyncClient,
    received: tokio::sync::mpsc::UnboundedReceiver<Publish>,
    subacked: tokio::sync::mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl V5Device {
    /// Connected; with `session_expiry` a persistent session (clean start off).
    async fn online(port: u16, client_id: &str, session_expiry: Option<u32>) -> (Self, bool) {
        let mut opts = rumqttc::v5::MqttOptions::new(client_id, MQTT_HOST, port);
        opts.set_clean_start(session_expiry.is_none())
            .set_session_expiry_interval(session_expiry)
            .set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
        let (pub_tx, received) = tokio::sync::mpsc::unbounded_channel();
        let (sub_tx, subacked) = tokio::sync::mpsc::unbounded_channel();
        let (conn_tx, mut connacked) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            use rumqttc::v5::Event;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        let _ = conn_tx.send(ack.session_present);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = pub_tx.send(p);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let session_present = tokio::time::timeout(LONG, connacked.recv())
            .await
            .expect("CONNACK in time")
            .expect("CONNACK");
        let device = Self {
            client,
            received,
            subacked,
            task,
        };
        (device, session_present)
    }

    async fn subscribe(&mut self, topic: &str) {
        self.client
            .subscribe(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(LONG, self.subacked.recv())
            .await
            .expect("SUBACK in time");
    }

    async fn next_message(&mut self, timeout: Duration) -> Option<Publish> {
        tokio::time::timeout(timeout, self.received.recv())
            .await
            .ok()
            .flatten()
    }

    /// DISCONNECT (the session, if any, is kept for its expiry).
    async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn command_id(p: &Publish) -> Uuid {
    aurora_core::model::parse::<DeviceCommand>(&p.payload)
        .unwrap()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_device_sees_the_expiry_and_a_command_nobody_subscribed_to_is_not_reached() {
    let run = SharedRun::start(|_| {}).await;
    let names = run.names.clone();
    let client_id = format!("{}-v5", names.namespace());
    let (mut device, _) = V5Device::online(MQTT_PORT, &client_id, None).await;
    device.subscribe(&names.mqtt_command_topic("dev-5")).await;

    let expiring = command("dev-5", "attest", json!({"nonce": "a"}));
    let mut forever = command("dev-5", "attest", json!({"nonce": "b"}));
    forever.expires_at = None;
    let nobody = command("dev-offline", "attest", json!({"nonce": "c"}));
    write_commands(&run, &[doc(&expiring), doc(&forever), doc(&nobody)]).await;

    let got = device
        .next_message(LONG)
        .await
        .expect("the expiring command");
    assert_eq!(command_id(&got), expiring.id);
    let expiry = got
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("a message expiry interval");
    assert!(
        (3500..=3600).contains(&expiry),
        "the seconds left of the hour: {expiry}"
    );
    let got = device.next_message(LONG).await.expect("the other command");
    assert_eq!(command_id(&got), forever.id);
    let expiry = got
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval);
    assert_eq!(expiry, None, "no expires_at, no expiry");

    let statuses: Vec<CommandStatus> = {
        wait_xlen(&run.redis, &names.cps_command_status(), 3, "3 outcomes").await;
        stream_records(&run.redis, &names.cps_command_status()).await
    };
    let outcome = |id: Uuid| statuses_of(&statuses, id)[0].clone();
    assert_eq!(outcome(expiring.id).status, CommandOutcome::Sent);
    assert_eq!(outcome(forever.id).status, CommandOutcome::Sent);
    let not_reached = outcome(nobody.id);
    assert_eq!(not_reached.status, CommandOutcome::NotReached);
    assert!(
        not_reached
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("no subscriber"),
        "{not_reached:?}"
    );
    assert!(
        stream_values(&run.redis, &names.cps_deadletter())
            .await
            .is_empty(),
        "a command not reached is not bad input"
    );
    wait_no_pending(
        &run.redis,
        &names.cps_commands(),
        mqtt_bridge::downlink::GROUP,
    )
    .await;
    device.disconnect().await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_past_a_commands_expiry_never_gets_it() {
    let run = SharedRun::start(|_| {}).await;
    let names = run.names.clone();
    let client_id = format!("{}-sleeper", names.namespace());
    let (mut device, _) = V5Device::online(MQTT_PORT, &client_id, Some(600)).await;
    device.subscribe(&names.mqtt_command_topic("dev-s")).await;
    device.disconnect().await;

    // While it is away: one command for the next hour, one for the next 3 seconds.
    let lasting = command("dev-s", "attest", json!({"nonce": "lasting"}));
    let mut short = command("dev-s", "attest", json!({"nonce": "short"}));
    short.expires_at = Some(Utc::now() + chrono::Duration::seconds(3));
    write_commands(&run, &[doc(&lasting), doc(&short)]).await;
    wait_xlen(&run.redis, &names.cps_command_status(), 2, "2 outcomes").await;
    let statuses: Vec<CommandStatus> =
        stream_records(&run.redis, &names.cps_command_status()).await;
    for c in [&lasting, &short] {
        assert_eq!(
            statuses_of(&statuses, c.id)[0].status,
            CommandOutcome::Sent,
            "the broker keeps it for the device's session"
        );
    }
    let past_expiry = short.expires_at.unwrap() + chrono::Duration::milliseconds(1500);
    tokio::time::sleep((past_expiry - Utc::now()).to_std().unwrap_or_default()).await;

    let (mut device, session_present) = V5Device::online(MQTT_PORT, &client_id, Some(600)).await;
    assert!(session_present, "the device's session was kept");
    let got = device
        .next_message(LONG)
        .await
        .expect("the lasting command");
    assert_eq!(command_id(&got), lasting.id);
    let stale = device.next_message(Duration::from_secs(2)).await;
    assert!(
        stale.is_none(),
        "the expired command is dropped by the broker: {stale:?}"
    );
    device.disconnect().await;
    forget_session(MQTT_HOST, MQTT_PORT, &client_id).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_broker_refuses_is_failed_and_dead_lettered() {
    // A broker whose ACL lets the bridge read the devices but not command them.
    let names = aurora_testkit::names();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[REDIS_URL]);
    let auth_dir = tempfile::tempdir().unwrap();
    let passwd = password_file(auth_dir.path(), &[("bridge", "bridge-pw")]);
    let acl = auth_dir.path().join("acl");
    std::fs::write(
        &acl,
        format!("user bridge\ntopic read {}/sensors/#\n", names.namespace()),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&acl, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let broker = MosquittoServer::start_with_config(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwd.display(),
        acl.display()
    ));
    let mut cfg = config(&names, broker.port(), REDIS_URL, "refused");
    cfg.mqtt.username = Some("bridge".into());
    cfg.mqtt.password = Some("bridge-pw".into());
    let bridge = Bridge::start(cfg).await;
    bridge.ready().await;
    let redis = redis(REDIS_URL).await;

    let attest = command("dev-1", "attest", Value::Null);
    let entry = Producer::new(redis.clone(), 10_000)
        .publish(&names.cps_commands(), &doc(&attest))
        .await
        .unwrap();
    let status = wait_matching(
        &redis,
        &names.cps_command_status(),
        1,
        "the outcome",
        |_| true,
    )
    .await;
    assert_eq!(status[0]["status"], "failed");
    let reason = status[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("NotAuthorized") && reason.contains("0x87"),
        "the reason code is named: {reason}"
    );
    let dead = wait_matching(
        &redis,
        &names.cps_deadletter(),
        1,
        "the dead letter",
        |_| true,
    )
    .await;
    assert_eq!(dead[0]["source_id"], entry.as_str());
    assert_eq!(dead[0]["reason"].as_str(), Some(reason));
    wait_no_pending(&redis, &names.cps_commands(), mqtt_bridge::downlink::GROUP).await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_receipt_reaches_the_receipt_stream_with_its_device_id() {
    let run = SharedRun::start(|_| {}).await;
    let names = run.names.clone();
    let device = run.device("dev-r").await;
    let command_id = Uuid::new_v4();
    let receipt = json!({"command_id": command_id, "outcome": "done", "detail": "rebooted"});
    device
        .publish(
            &names.mqtt_sensor_topic("dev-r", DeviceTopicKind::Receipt),
            receipt.to_string(),
        )
        .await;
    device.wait_acked(1).await;
    let stream = names.cps_receipts();
    assert!(stream.ends_with("cps:receipt"), "{stream}");
    let docs = wait_matching(&run.redis, &stream, 1, "the receipt", |_| true).await;
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(d["device_id"], "dev-r");
    assert_eq!(d["message_type"], "receipt");
    assert_eq!(d["command_id"], command_id.to_string());
    assert_eq!(d["outcome"], "done");
    assert_eq!(d["detail"], "rebooted");
    device.disconnect().await;
    run.stop().await;
}
