//! Simulated traffic for a local run: a device fleet over MQTT (telemetry, alerts, answers to
//! attestation challenges, a few devices with tampered firmware), the SOC's agents (thoughts,
//! approval requests, IOCs, results) and a replay of Suricata EVE lines.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use chrono::Utc;
use clap::{Args, Subcommand};
use ed25519_dalek::{Signer, SigningKey};
use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use sha2::{Digest, Sha256};

use aurora_core::bus::Producer;
use aurora_core::model::{self, AttestationReport, DeviceCommand};
use aurora_core::names::DeviceTopicKind;

use crate::Ctx;

/// The model every simulated device reports.
pub const DEVICE_MODEL: &str = "nRF52840-DK";
/// The firmware version every simulated device reports.
pub const FIRMWARE_VERSION: &str = "1.4.2";

/// SHA-256 (hex) of the genuine firmware image of the simulated fleet.
pub fn genuine_firmware_sha256() -> String {
    hex::encode(Sha256::digest(b"aurora simulated firmware 1.4.2 (genuine)"))
}

fn tampered_firmware_sha256() -> String {
    hex::encode(Sha256::digest(b"aurora simulated firmware 1.4.2 (implant)"))
}

#[derive(Args)]
pub struct SimulateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// A device fleet publishing over MQTT and answering attestation challenges.
    Devices(DevicesArgs),
    /// Agent thoughts, approval requests, IOCs and results on the site bus.
    Agents(AgentsArgs),
    /// Push Suricata EVE lines into the Redis list, as Suricata's redis output does.
    Suricata(SuricataArgs),
    /// Print the SHA-256 of the fleet's genuine firmware (for the registry's allow-list).
    FirmwareHash,
}

#[derive(Args)]
struct DevicesArgs {
    /// The MQTT broker.
    #[arg(
        long,
        env = "AURORA_SIMULATE_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1883",
        hide_env_values = true
    )]
    mqtt_url: String,
    /// The simulator's user name on the broker (one user publishes for the whole fleet, so its
    /// ACL must allow every device's topics: deploy/mosquitto/acl, user aurora-simulator).
    #[arg(long, env = "AURORA_SIMULATE_MQTT_USERNAME")]
    mqtt_username: Option<String>,
    /// The simulator's password on the broker (with --mqtt-username; prefer the variable,
    /// as a command line is visible to every user of the machine).
    #[arg(long, env = "AURORA_SIMULATE_MQTT_PASSWORD", hide_env_values = true)]
    mqtt_password: Option<String>,
    /// How many devices.
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// How many of them run tampered firmware.
    #[arg(long, default_value_t = 2)]
    tampered: usize,
    /// Telemetry messages per second, for the whole fleet.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// One device alert on average every this many telemetry messages.
    #[arg(long, default_value_t = 50)]
    alert_every: u64,
    /// Device id prefix.
    #[arg(long, default_value = "sim-sensor")]
    prefix: String,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = aurora_core::config::parse_duration)]
    duration: Option<Duration>,
}

#[derive(Args)]
struct AgentsArgs {
    /// Seconds between two agent thoughts.
    #[arg(long, default_value_t = 2.0)]
    thought_every: f64,
    /// Seconds between two approval requests.
    #[arg(long, default_value_t = 20.0)]
    approval_every: f64,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = aurora_core::config::parse_duration)]
    duration: Option<Duration>,
}

#[derive(Args)]
struct SuricataArgs {
    /// EVE JSON files (one event per line).
    #[arg(required = true)]
    files: Vec<String>,
    /// The list to push to (default: the namespace's Suricata list).
    #[arg(long)]
    list_key: Option<String>,
    /// Events per second (0: as fast as possible).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Replay the files this many times (each pass makes the events unique).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

pub async fn run(ctx: &Ctx, args: SimulateArgs) -> Result<()> {
    match args.what {
        What::Devices(a) => devices(ctx, a).await,
        What::Agents(a) => agents(ctx, a).await,
        What::Suricata(a) => suricata(ctx, a).await,
        What::FirmwareHash => {
            println!(
                "{} {} {}",
                DEVICE_MODEL,
                FIRMWARE_VERSION,
                genuine_firmware_sha256()
            );
            Ok(())
        }
    }
}

struct Device {
    id: String,
    key: SigningKey,
    tampered: bool,
    introduced: bool,
    seq: u64,
}

impl Device {
    fn telemetry(&mut self, rng: &mut impl Rng) -> serde_json::Value {
        self.seq += 1;
        let mut doc = json!({
            "seq": self.seq,
            "temperature_c": (rng.gen_range(180..260) as f64) / 10.0,
            "battery_mv": rng.gen_range(2700..3300),
            "rssi_dbm": rng.gen_range(-90..-40),
        });
        if !self.introduced {
            // The first message carries what registration needs (trust on first use).
            doc["model"] = json!(DEVICE_MODEL);
            doc["firmware_version"] = json!(FIRMWARE_VERSION);
            doc["public_key"] = json!(base64::engine::general_purpose::STANDARD
                .encode(self.key.verifying_key().as_bytes()));
            self.introduced = true;
        }
        doc
    }

    fn attestation(&self, nonce: &str) -> serde_json::Value {
        let sha = if self.tampered {
            tampered_firmware_sha256()
        } else {
            genuine_firmware_sha256()
        };
        let signature = self.key.sign(&AttestationReport::signed_bytes(
            nonce,
            FIRMWARE_VERSION,
            &sha,
        ));
        json!({
            "nonce": nonce,
            "firmware_version": FIRMWARE_VERSION,
            "firmware_sha256": sha,
            "signature": base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
        })
    }
}

/// `mqtt://host:port` to host and port (the simulator speaks plain MQTT only).
fn broker(url: &str) -> Result<(String, u16)> {
    // Parse errors can quote the URL: never print it, it may carry a password.
    let u = url::Url::parse(url).map_err(|e| anyhow::anyhow!("invalid MQTT URL: {e}"))?;
    if u.scheme() != "mqtt" {
        bail!(
            "the simulator speaks plain MQTT only: --mqtt-url must be mqtt://host:port, not {}://",
            u.scheme()
        );
    }
    if !u.username().is_empty() || u.password().is_some() {
        bail!("put the MQTT credentials in --mqtt-username and --mqtt-password, not in --mqtt-url");
    }
    let host = u.host_str().context("MQTT URL without host")?.to_string();
    Ok((host, u.port().unwrap_or(1883)))
}

/// The user name and password to log in with, as mqtt-bridge takes them: a password needs a
/// user name; a user name alone logs in with an empty password.
fn credentials(user: Option<&str>, password: Option<&str>) -> Result<Option<(String, String)>> {
    match (user, password) {
        (Some(user), password) => Ok(Some((
            user.to_string(),
            password.unwrap_or_default().to_string(),
        ))),
        (None, Some(_)) => {
            bail!("an MQTT password needs a user name (--mqtt-username, AURORA_SIMULATE_MQTT_USERNAME)")
        }
        (None, None) => Ok(None),
    }
}

async fn devices(ctx: &Ctx, args: DevicesArgs) -> Result<()> {
    if args.tampered > args.devices {
        bail!(
            "--tampered {} is more than --devices {}",
            args.tampered,
            args.devices
        );
    }
    let names = ctx.names.clone();
    let (host, port) = broker(&args.mqtt_url)?;
    let login = credentials(args.mqtt_username.as_deref(), args.mqtt_password.as_deref())?;
    let client_id = format!(
        "aurora-sim-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut opts = MqttOptions::new(client_id, host.clone(), port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    if let Some((user, password)) = login {
        opts.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);

    let mut rng = rand::thread_rng();
    let mut fleet: HashMap<String, Device> = (0..args.devices)
        .map(|i| {
            let id = format!("{}-{i:04}", args.prefix);
            let device = Device {
                id: id.clone(),
                key: SigningKey::generate(&mut rand::rngs::OsRng),
                tampered: i >= args.devices - args.tampered,
                introduced: false,
                seq: 0,
            };
            (id, device)
        })
        .collect();
    let mut order: Vec<String> = fleet.keys().cloned().collect();
    order.sort();
    let tampered: Vec<&String> = order.iter().filter(|id| fleet[*id].tampered).collect();
    eprintln!(
        "simulating {} devices ({} tampered: {:?}) at {} msg/s",
        args.devices, args.tampered, tampered, args.rate
    );

    let command_filter = names.mqtt_command_topic("+");
    client.subscribe(&command_filter, QoS::AtLeastOnce).await?;

    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut next = 0usize;
    let (mut sent, mut answered) = (0u64, 0u64);
    loop {
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {
                let Some(id) = order.get(next % order.len().max(1)).cloned() else { break };
                next += 1;
                let Some(device) = fleet.get_mut(&id) else { continue };
                let doc = device.telemetry(&mut rng);
                let topic = names.mqtt_sensor_topic(&id, DeviceTopicKind::Telemetry);
                client.publish(topic, QoS::AtLeastOnce, false, serde_json::to_vec(&doc)?).await?;
                sent += 1;
                if args.alert_every > 0 && rng.gen_range(0..args.alert_every) == 0 {
                    let alert = json!({
                        "alert_type": "tamper_switch",
                        "severity": if device.tampered { "high" } else { "medium" },
                        "message": "enclosure opened",
                    });
                    let topic = names.mqtt_sensor_topic(&id, DeviceTopicKind::Alerts);
                    client.publish(topic, QoS::AtLeastOnce, false, serde_json::to_vec(&alert)?).await?;
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(command) = model::parse::<DeviceCommand>(&p.payload) else { continue };
                    let Some(device) = fleet.get(&command.device_id) else { continue };
                    if command.action == "attest" {
                        let Some(nonce) = command.params.get("nonce").and_then(|n| n.as_str()) else { continue };
                        let report = device.attestation(nonce);
                        let topic = names.mqtt_sensor_topic(&device.id, DeviceTopicKind::Attestation);
                        client.publish(topic, QoS::AtLeastOnce, false, serde_json::to_vec(&report)?).await?;
                        answered += 1;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe(&command_filter, QoS::AtLeastOnce).await?;
                }
                Ok(_) => {}
                // A broker that refuses these credentials (or anonymous clients) refuses them
                // again on every retry: stop and say why.
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    bail!(
                        "the MQTT broker at {host}:{port} refused the connection ({code:?}): {}",
                        match (&args.mqtt_username, code) {
                            (None, _) => "it needs a user name and password (--mqtt-username, --mqtt-password)",
                            (Some(_), rumqttc::ConnectReturnCode::BadUserNamePassword | rumqttc::ConnectReturnCode::NotAuthorized) =>
                                "check --mqtt-username and --mqtt-password",
                            (Some(_), _) => "see the broker's log",
                        }
                    );
                }
                Err(e) => {
                    eprintln!("MQTT: {e}; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    eprintln!("sent {sent} telemetry messages, answered {answered} attestation challenges");
    Ok(())
}

async fn agents(ctx: &Ctx, args: AgentsArgs) -> Result<()> {
    let names = &ctx.names;
    let producer = Producer::new(ctx.redis().await?, 1_000_000);
    let mut thoughts = tokio::time::interval(Duration::from_secs_f64(args.thought_every.max(0.01)));
    let mut approvals =
        tokio::time::interval(Duration::from_secs_f64(args.approval_every.max(0.01)));
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let agents = [
        "threat_hunter",
        "incident_responder",
        "malware_analyst",
        "network_analyst",
    ];
    let actions = [
        "Running YARA scan on endpoint",
        "Correlating DNS logs with threat intel",
        "Pulling process tree from EDR",
        "Checking IOC reputation",
        "Summarising lateral movement evidence",
    ];
    let case_id = uuid::Uuid::new_v4();
    let mut n = 0u64;
    loop {
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Ok(());
        }
        tokio::select! {
            _ = thoughts.tick() => {
                n += 1;
                let (agent, action) = {
                    let mut rng = rand::thread_rng();
                    (agents[rng.gen_range(0..agents.len())], actions[rng.gen_range(0..actions.len())])
                };
                let thought = json!({
                    "id": uuid::Uuid::new_v4().to_string(),
                    "agent": agent,
                    "action": action,
                    "case_id": case_id,
                    "details": {"tool": "yara_scan", "target": format!("workstation-{:03}", n % 50), "step": n},
                    "duration_ms": 250 + (n % 7) * 150,
                    "timestamp": Utc::now(),
                });
                producer.publish(&names.audit(), &serde_json::to_vec(&thought)?).await?;
                if n.is_multiple_of(5) {
                    let ioc = json!({
                        "id": uuid::Uuid::new_v4().to_string(),
                        "type": "domain",
                        "value": format!("c2-{n}.evil.example"),
                        "confidence": 0.8,
                        "tlp": if n.is_multiple_of(10) { "TLP:RED" } else { "TLP:AMBER" },
                        "valid_from": Utc::now(),
                    });
                    producer.publish(&names.iocs(), &serde_json::to_vec(&ioc)?).await?;
                    let result = json!({
                        "id": uuid::Uuid::new_v4().to_string(),
                        "agent": agent,
                        "case_id": case_id,
                        "summary": format!("Step {n}: beaconing pattern confirmed"),
                        "verdict": "suspicious",
                        "confidence": 0.7,
                        "timestamp": Utc::now(),
                    });
                    producer.publish(&names.agent_results(), &serde_json::to_vec(&result)?).await?;
                }
            }
            _ = approvals.tick() => {
                let now = Utc::now();
                let approval = json!({
                    "id": uuid::Uuid::new_v4(),
                    "action": format!("Isolate workstation-{:03} from network", n % 50),
                    "case_id": case_id,
                    "risk_level": "high",
                    "status": "pending",
                    "requested_by": "incident_responder",
                    "context": {"reason": "Active C2 beacon detected, lateral movement in progress", "affected_users": 3, "confidence": 0.87},
                    "requested_at": now,
                    "expires_at": now + chrono::Duration::minutes(10),
                });
                producer.publish(&names.approvals(), &serde_json::to_vec(&approval)?).await?;
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn suricata(ctx: &Ctx, args: SuricataArgs) -> Result<()> {
    let key = args
        .list_key
        .clone()
        .unwrap_or_else(|| ctx.names.suricata_list());
    let mut lines = Vec::new();
    for f in &args.files {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {f}"))?;
        lines.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    let mut conn = ctx.redis().await?;
    let mut pushed = 0u64;
    let pause = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    for pass in 0..args.repeat.max(1) {
        for line in &lines {
            let line = unique(line, pass);
            redis::cmd("LPUSH")
                .arg(&key)
                .arg(line)
                .query_async::<u64>(&mut conn)
                .await?;
            pushed += 1;
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
        }
    }
    eprintln!("pushed {pushed} events to {key}");
    Ok(())
}

/// Replays after the first make each event distinct (a field of their own), so that event-derived
/// ids do not deduplicate them.
fn unique(line: &str, pass: usize) -> String {
    if pass == 0 {
        return line.to_string();
    }
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("replay_pass".into(), json!(pass));
            serde_json::Value::Object(m).to_string()
        }
        _ => line.to_string(),
    }
}
