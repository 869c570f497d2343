//! Device alerts (`aurora:cps:alerts`) → Alerts on `aurora:alerts`, enriched with the
//! device's UUID, model and trust status. An alert from a device that is not trusted says so
//! in its title and in `device_trust`. The alert id is UUID v5 of the device and the device's
//! own message id (or the stream entry id), so a redelivery repeats the same alert.

use std::collections::HashMap;

use aurora_core::bus::{BusError, Entry, GroupReader};
use aurora_core::consumer::BatchHandler;
use aurora_core::model::{
    is_mitre_technique, parse, to_bytes, Alert, AlertStatus, DeviceMessage, Extra, Ioc, Severity,
};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::db::{self, status, Device};
use crate::error::BatchError;
use crate::records::stable_id;
use crate::shared::Shared;
use crate::streams;
use crate::telemetry::{self, AlertKind};

/// The `source` of enriched device alerts.
pub const SOURCE: &str = "cps";

/// The reader of device alerts of replica `instance`.
pub async fn reader(shared: &Shared, instance: &str) -> Result<GroupReader, BusError> {
    let name = format!("{instance}-cps-alerts");
    streams::reader(shared, &shared.cfg.names.cps_alerts(), &name).await
}

/// Enriches each batch of device alerts.
pub struct CpsAlerts(pub Shared);

impl BatchHandler for CpsAlerts {
    type Error = BatchError;

    fn part(&self) -> &'static str {
        "cps_alerts"
    }

    async fn handle(&self, reader: &GroupReader, entries: Vec<Entry>) -> Result<(), BatchError> {
        let shared = &self.0;
        let mut messages = Vec::with_capacity(entries.len());
        for entry in entries {
            match parse::<DeviceMessage>(entry.data.as_deref().unwrap_or_default()) {
                Ok(m) => messages.push((entry, m)),
                Err(e) => streams::reject(reader, &entry, &e.to_string()).await?,
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<String> = messages.iter().map(|(_, m)| m.device_id.clone()).collect();
        ids.sort();
        ids.dedup();
        let devices: HashMap<String, Device> = db::devices_by_id(&shared.pool, &ids)
            .await?
            .into_iter()
            .map(|d| (d.device_id.clone(), d))
            .collect();
        let stream = shared.cfg.names.alerts();
        let docs: Vec<(&str, Vec<u8>)> = messages
            .iter()
            .map(|(entry, m)| {
                (
                    stream.as_str(),
                    to_bytes(&enrich(m, &entry.id, devices.get(&m.device_id))),
                )
            })
            .collect();
        shared.producer.publish_batch(&docs).await?;
        telemetry::alerts(AlertKind::Cps, docs.len());
        let acked: Vec<&str> = messages.iter().map(|(e, _)| e.id.as_str()).collect();
        reader.ack(&acked).await?;
        Ok(())
    }

    fn failed(&self, _error: &BatchError) {
        telemetry::batch_failed(self.part());
    }
}

/// How far an alert's device can be believed: its status, or `unregistered`.
pub fn trust_of(device: Option<&Device>) -> &str {
    device.map(|d| d.status.as_str()).unwrap_or("unregistered")
}

/// The Alert for one device message.
pub fn enrich(m: &DeviceMessage, entry_id: &str, device: Option<&Device>) -> Alert {
    let msg = &m.extra;
    let text = |key: &str| {
        msg.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let original_id = ["id", "message_id", "alert_id"]
        .iter()
        .find_map(|k| match msg.get(*k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
        .map(|id| format!("msg:{id}"))
        .unwrap_or_else(|| format!("entry:{entry_id}"));
    let trust = trust_of(device);
    let base_title = text("title")
        .or_else(|| text("message"))
        .or_else(|| text("alert_type"))
        .or_else(|| text("type"))
        .map(str::to_string)
        .unwrap_or_else(|| format!("Alert from device {}", m.device_id));
    let title = match trust {
        status::TRUSTED => base_title,
        status::UNTRUSTED | status::TIMEOUT | status::QUARANTINED => {
            format!("[UNTRUSTED DEVICE] {base_title}")
        }
        _ => format!("[UNVERIFIED DEVICE] {base_title}"),
    };
    let severity = text("severity")
        .and_then(|s| s.parse::<Severity>().ok())
        .unwrap_or(Severity::Medium);
    let timestamp = text("timestamp")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let iocs: Vec<Ioc> = msg
        .get("iocs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| aurora_core::model::from_value::<Ioc>(v.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    let mitre_techniques: Vec<String> = msg
        .get("mitre_techniques")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter(|t| is_mitre_technique(t))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();

    let mut extra = Extra::new();
    extra.insert("device_id".into(), json!(m.device_id));
    extra.insert("device_trust".into(), json!(trust));
    if let Some(d) = device {
        extra.insert("device_uuid".into(), json!(d.id));
        extra.insert("device_model".into(), json!(d.model));
        extra.insert("device_status_reason".into(), json!(d.status_reason));
    }
    extra.insert("source_entry".into(), json!(entry_id));
    extra.insert("device_message".into(), Value::Object(msg.clone()));
    Alert {
        id: stable_id(&format!("cps-alert:{}:{original_id}", m.device_id)),
        title,
        severity,
        status: AlertStatus::New,
        source: SOURCE.to_string(),
        iocs,
        mitre_techniques,
        timestamp,
        extra,
    }
}
