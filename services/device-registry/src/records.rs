//! The documents this service writes to the bus: `device.registered` records, commands for
//! devices, and alerts. Alert ids are UUID v5 of what the alert is about, so a retried write
//! repeats the same alert instead of making a second one.

use aurora_core::model::{Alert, AlertStatus, DeviceCommand, Extra, Severity};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::db::{Challenge, Device};

/// The `source` of every alert this service raises.
pub const ALERT_SOURCE: &str = "device-registry";

/// MITRE ATT&CK: Pre-OS Boot: System Firmware.
const MITRE_SYSTEM_FIRMWARE: &str = "T1542.001";

/// A new device (`aurora:cps:devices`): `event` is `device.registered`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRegistered {
    pub event: String,
    pub id: Uuid,
    pub device_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    pub status: String,
    pub metadata: Value,
    pub first_seen: DateTime<Utc>,
    pub registered_at: DateTime<Utc>,
}

impl DeviceRegistered {
    pub const EVENT: &'static str = "device.registered";

    pub fn new(
        id: Uuid,
        device_id: &str,
        model: Option<String>,
        firmware_version: Option<String>,
        metadata: Value,
        first_seen: DateTime<Utc>,
    ) -> Self {
        Self {
            event: Self::EVENT.to_string(),
            id,
            device_id: device_id.to_string(),
            model,
            firmware_version,
            status: crate::db::status::PENDING.to_string(),
            metadata,
            first_seen,
            registered_at: Utc::now(),
        }
    }

    pub fn from_device(d: &Device) -> Self {
        Self::new(
            d.id,
            &d.device_id,
            d.model.clone(),
            d.firmware_version.clone(),
            d.metadata.clone(),
            d.first_seen,
        )
    }
}

/// The `attest` command that carries a challenge: params `{"nonce": "<64 hex>"}`.
pub fn attest_command(c: &Challenge) -> DeviceCommand {
    DeviceCommand {
        id: c.command_id,
        device_id: c.device_id.clone(),
        action: "attest".to_string(),
        params: json!({ "nonce": c.nonce }),
        issued_at: Utc::now(),
        expires_at: Some(c.expires_at),
        extra: Extra::new(),
    }
}

/// A command an operator sends.
pub fn command(
    device_id: &str,
    action: &str,
    params: Value,
    expires_at: Option<DateTime<Utc>>,
) -> DeviceCommand {
    DeviceCommand {
        id: Uuid::new_v4(),
        device_id: device_id.to_string(),
        action: action.to_string(),
        params,
        issued_at: Utc::now(),
        expires_at,
        extra: Extra::new(),
    }
}

/// UUID v5 of a key, in the URL namespace with a prefix of ours.
pub fn stable_id(key: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("aurora:device-registry:{key}").as_bytes(),
    )
}

fn device_fields(extra: &mut Extra, device_id: &str, uuid: Option<Uuid>, model: Option<&str>) {
    extra.insert("device_id".into(), json!(device_id));
    if let Some(u) = uuid {
        extra.insert("device_uuid".into(), json!(u));
    }
    if let Some(m) = model {
        extra.insert("device_model".into(), json!(m));
    }
}

/// A new high-severity alert of this service: its id is UUID v5 of `key` (what it is about).
pub fn high_alert(key: &str, title: String, mitre: Vec<String>, extra: Extra) -> Alert {
    Alert {
        id: stable_id(key),
        title,
        severity: Severity::High,
        status: AlertStatus::New,
        source: ALERT_SOURCE.to_string(),
        iocs: Vec::new(),
        mitre_techniques: mitre,
        timestamp: Utc::now(),
        extra,
    }
}

/// What a failed attestation is about.
pub struct FailedAttestation<'a> {
    pub device_id: &'a str,
    pub device_uuid: Option<Uuid>,
    pub model: Option<&'a str>,
    pub nonce: &'a str,
    pub firmware_version: &'a str,
    pub firmware_sha256: &'a str,
    pub reason: &'a str,
    /// The stream entry of the answer (part of the alert id: a replay is a new alert, a
    /// redelivery of the same entry is not).
    pub entry_id: &'a str,
}

/// High-severity alert: a device failed attestation.
pub fn attestation_failed_alert(f: &FailedAttestation<'_>) -> Alert {
    let mut extra = Extra::new();
    device_fields(&mut extra, f.device_id, f.device_uuid, f.model);
    extra.insert("device_trust".into(), json!("untrusted"));
    extra.insert("reason".into(), json!(f.reason));
    extra.insert("nonce".into(), json!(f.nonce));
    extra.insert("firmware_version".into(), json!(f.firmware_version));
    extra.insert("firmware_sha256".into(), json!(f.firmware_sha256));
    high_alert(
        &format!("attestation:{}:{}:{}", f.device_id, f.nonce, f.entry_id),
        format!(
            "Device {} failed firmware attestation: {}",
            f.device_id, f.reason
        ),
        vec![MITRE_SYSTEM_FIRMWARE.to_string()],
        extra,
    )
}

/// High-severity alert: a device did not answer its challenge in time.
pub fn attestation_timeout_alert(
    device_id: &str,
    uuid: Uuid,
    model: Option<&str>,
    nonce: &str,
) -> Alert {
    let mut extra = Extra::new();
    device_fields(&mut extra, device_id, Some(uuid), model);
    extra.insert("device_trust".into(), json!(crate::db::status::TIMEOUT));
    extra.insert("condition".into(), json!(crate::db::status::TIMEOUT));
    extra.insert(
        "reason".into(),
        json!("no answer to the attestation challenge before it expired"),
    );
    extra.insert("nonce".into(), json!(nonce));
    high_alert(
        &format!("attestation-timeout:{device_id}:{nonce}"),
        format!("Device {device_id} did not answer its firmware attestation challenge"),
        Vec::new(),
        extra,
    )
}

/// High-severity alert: a device fell silent (no message for `--silent-after` times its usual
/// interval). One per silence: the id is the device and the last time it was heard.
pub fn device_silent_alert(s: &crate::db::SilenceChange) -> Alert {
    let mut extra = Extra::new();
    device_fields(&mut extra, &s.device_id, Some(s.id), s.model.as_deref());
    extra.insert("condition".into(), json!("silent"));
    extra.insert("last_seen".into(), json!(s.last_seen));
    extra.insert("usual_interval_ms".into(), json!(s.seen_interval_ms));
    high_alert(
        &format!("silent:{}:{}", s.device_id, s.last_seen.timestamp_millis()),
        format!(
            "Device {} is silent: nothing since {}",
            s.device_id,
            s.last_seen.to_rfc3339()
        ),
        Vec::new(),
        extra,
    )
}

/// Devices of one condition in one round, folded into one alert.
pub struct Fleet<'a> {
    /// `attestation_timeout` or `silent`.
    pub condition: &'a str,
    /// What the title says of them ("did not answer their attestation challenge").
    pub what: &'a str,
    /// (device id, model, a key of this device's episode: its nonce, its last message).
    pub devices: Vec<(String, Option<String>, String)>,
}

/// Most device ids an alert of the fleet lists.
const FLEET_LISTED: usize = 200;

/// One alert for many devices entering one condition at once (instead of a storm of alerts,
/// each federated to every site). Its id is the set of devices and their episodes: a retried
/// round repeats it.
pub fn fleet_alert(f: &Fleet<'_>) -> Alert {
    let mut keys: Vec<String> = f
        .devices
        .iter()
        .map(|(d, _, episode)| format!("{d}:{episode}"))
        .collect();
    keys.sort();
    let mut models: Vec<&str> = f
        .devices
        .iter()
        .filter_map(|(_, m, _)| m.as_deref())
        .collect();
    models.sort_unstable();
    models.dedup();
    let mut ids: Vec<&str> = f.devices.iter().map(|(d, _, _)| d.as_str()).collect();
    ids.sort_unstable();
    let mut extra = Extra::new();
    extra.insert("condition".into(), json!(f.condition));
    extra.insert("fleet".into(), json!(true));
    extra.insert("device_count".into(), json!(f.devices.len()));
    extra.insert(
        "device_ids".into(),
        json!(ids.iter().take(FLEET_LISTED).collect::<Vec<_>>()),
    );
    extra.insert(
        "device_ids_truncated".into(),
        json!(ids.len() > FLEET_LISTED),
    );
    extra.insert("device_models".into(), json!(models));
    high_alert(
        &format!("fleet:{}:{}", f.condition, keys.join(",")),
        format!("{} devices {}", f.devices.len(), f.what),
        Vec::new(),
        extra,
    )
}
