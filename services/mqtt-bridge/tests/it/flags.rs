//! The binary's variables: a variable the bridge read before it was renamed stops the start
//! with an error naming its replacement, and bad settings are refused before anything
//! connects.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

fn bridge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqtt-bridge"));
    for (old, new) in mqtt_bridge::config::RENAMED_ENV {
        cmd.env_remove(old).env_remove(new);
    }
    cmd.env("AURORA_OPS_ADDR", "127.0.0.1:0")
        .env("AURORA_REDIS_URL", "redis://127.0.0.1:1")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

#[test]
fn a_renamed_variable_is_refused_naming_the_new_one() {
    let out = bridge()
        .env("AURORA_MQTT_URL", "mqtt://127.0.0.1:1883")
        .env("AURORA_MQTT_SHARE_GROUP", "g")
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with a renamed variable");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("AURORA_MQTT_URL is no longer read: set AURORA_MQTT_BRIDGE_MQTT_URL instead"),
        "{stderr}"
    );
    assert!(
        stderr.contains("AURORA_MQTT_BRIDGE_SHARE_GROUP"),
        "{stderr}"
    );
}

#[test]
fn bad_settings_stop_the_start() {
    let out = bridge()
        .env("AURORA_MQTT_BRIDGE_MQTT_URL", "http://broker")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid MQTT URL"), "{stderr}");
}
