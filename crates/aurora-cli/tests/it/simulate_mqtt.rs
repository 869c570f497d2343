//! `aurora simulate devices` against a Mosquitto of the test's own configured as the compose
//! stack's broker: no anonymous clients, a password file, and the ACL shipped in
//! deploy/mosquitto/acl (user aurora-simulator for the simulator, aurora-bridge for the bridge).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use aurora_core::names::{DeviceTopicKind, Names};
use aurora_testkit::MosquittoServer;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const SIMULATOR: (&str, &str) = ("aurora-simulator", "simulator-password-value");
const BRIDGE: (&str, &str) = ("aurora-bridge", "bridge-password-value");
/// deploy/mosquitto/acl grants the topics of this namespace.
const NAMESPACE: &str = "aurora";

fn acl_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mosquitto/acl")
}

/// The broker, and the directory of its password file (removed at the end).
struct Broker {
    server: MosquittoServer,
    dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.server.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Mosquitto that refuses anonymous clients, with the two users and the shipped ACL.
fn broker() -> Broker {
    let dir =
        std::env::temp_dir().join(format!("aurora-simulate-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = dir.join("passwd");
    for (user, password) in [SIMULATOR, BRIDGE] {
        let mut cmd = Command::new("mosquitto_passwd");
        if !passwd.exists() {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&passwd)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd (Debian package mosquitto)");
        assert!(status.success(), "mosquitto_passwd failed");
    }
    // Started as root, Mosquitto reads the files as its own user.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let acl = std::fs::canonicalize(acl_file()).unwrap();
    let server = MosquittoServer::start_with_config(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwd.display(),
        acl.display()
    ));
    Broker { server, dir }
}

fn simulate(port: u16, env: &[(&str, &str)], extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aurora"));
    cmd.args([
        "simulate",
        "devices",
        "--mqtt-url",
        &format!("mqtt://127.0.0.1:{port}"),
    ])
    .args(extra)
    .env("AURORA_NAMESPACE", NAMESPACE)
    .env_remove("AURORA_SIMULATE_MQTT_USERNAME")
    .env_remove("AURORA_SIMULATE_MQTT_PASSWORD")
    .env_remove("AURORA_SIMULATE_MQTT_URL")
    .envs(env.iter().copied())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a simulation that must fail quickly (a refused login never succeeds on a retry).
fn refused(port: u16, env: &[(&str, &str)], extra: &[&str]) -> String {
    let mut child = simulate(port, env, extra)
        .args(["--duration", "30s"])
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("aurora simulate devices kept running against a broker that refuses it");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a refused login must fail");
    stderr(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_log_in_to_a_broker_that_refuses_anonymous_clients() {
    let broker = broker();
    let port = broker.server.port();
    let names = Names::new(NAMESPACE).unwrap();

    // The bridge's view: every device message, and a command back to one device.
    let mut opts = MqttOptions::new("test-bridge", "127.0.0.1", port);
    opts.set_credentials(BRIDGE.0, BRIDGE.1);
    let (bridge, mut events) = AsyncClient::new(opts, 100);
    bridge
        .subscribe(format!("{NAMESPACE}/sensors/#"), QoS::AtLeastOnce)
        .await
        .unwrap();

    let child = simulate(
        port,
        &[
            ("AURORA_SIMULATE_MQTT_USERNAME", SIMULATOR.0),
            ("AURORA_SIMULATE_MQTT_PASSWORD", SIMULATOR.1),
        ],
        &[
            "--devices",
            "3",
            "--tampered",
            "0",
            "--rate",
            "20",
            "--alert-every",
            "0",
            "--duration",
            "8s",
        ],
    )
    .spawn()
    .unwrap();

    let mut telemetry = 0u32;
    let mut attested: Option<String> = None;
    let mut asked: Option<String> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while attested.is_none() && tokio::time::Instant::now() < deadline {
        let event = tokio::time::timeout(Duration::from_secs(5), events.poll())
            .await
            .expect("the bridge's connection went quiet")
            .expect("the bridge logs in with its password");
        let Event::Incoming(Packet::Publish(p)) = event else {
            continue;
        };
        let Some((device, kind)) = names.parse_sensor_topic(&p.topic) else {
            panic!("a message on {} from the simulator", p.topic);
        };
        match kind {
            DeviceTopicKind::Telemetry => {
                telemetry += 1;
                if asked.is_none() && telemetry >= 5 {
                    // The simulator reads the commands of every device through its ACL.
                    let command = serde_json::json!({
                        "id": uuid::Uuid::new_v4(),
                        "device_id": device,
                        "action": "attest",
                        "params": {"nonce": "nonce-from-the-test"},
                        "issued_at": chrono::Utc::now(),
                    });
                    bridge
                        .publish(
                            names.mqtt_command_topic(device),
                            QoS::AtLeastOnce,
                            false,
                            serde_json::to_vec(&command).unwrap(),
                        )
                        .await
                        .unwrap();
                    asked = Some(device.to_string());
                }
            }
            DeviceTopicKind::Attestation => {
                let report: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                assert_eq!(report["nonce"], "nonce-from-the-test");
                attested = Some(device.to_string());
            }
            _ => {}
        }
    }
    assert!(
        telemetry >= 5,
        "telemetry messages seen by the bridge: {telemetry}"
    );
    assert!(asked.is_some(), "no command was sent");
    assert_eq!(attested, asked, "the asked device answered its challenge");

    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("answered 1 attestation"), "{err}");
    assert!(
        !err.contains(SIMULATOR.1),
        "the password was printed: {err}"
    );
}

#[test]
fn a_refused_login_stops_the_simulator_and_says_why() {
    let broker = broker();
    let port = broker.server.port();

    // Anonymous: the compose stack's broker refuses it.
    let err = refused(port, &[], &[]);
    assert!(err.contains("refused the connection"), "{err}");
    assert!(err.contains("--mqtt-username"), "{err}");

    // A wrong password, given as a flag this time: named, but never printed.
    let err = refused(
        port,
        &[("AURORA_SIMULATE_MQTT_USERNAME", SIMULATOR.0)],
        &["--mqtt-password", "wrong-password-value"],
    );
    assert!(err.contains("refused the connection"), "{err}");
    assert!(
        err.contains("check --mqtt-username and --mqtt-password"),
        "{err}"
    );
    assert!(!err.contains("wrong-password-value"), "{err}");

    // A password without a user name is a usage error, before any connection.
    let err = refused(port, &[("AURORA_SIMULATE_MQTT_PASSWORD", SIMULATOR.1)], &[]);
    assert!(err.contains("needs a user name"), "{err}");
    assert!(!err.contains(SIMULATOR.1), "{err}");

    // Credentials in the URL are refused rather than silently dropped.
    let out = Command::new(env!("CARGO_BIN_EXE_aurora"))
        .args([
            "simulate",
            "devices",
            "--mqtt-url",
            &format!("mqtt://{}:{}@127.0.0.1:{port}", SIMULATOR.0, SIMULATOR.1),
            "--duration",
            "1s",
        ])
        .env("AURORA_NAMESPACE", NAMESPACE)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--mqtt-username and --mqtt-password"), "{err}");
    assert!(!err.contains(SIMULATOR.1), "{err}");
}
