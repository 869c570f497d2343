//! Device alerts become Alerts enriched with the device's identity and trust.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use aurora_core::model::{parse, Alert};
use chrono::Utc;
use common::*;
use serde_json::json;

#[tokio::test]
async fn device_alerts_are_enriched_and_untrusted_devices_are_flagged() {
    let (_db, names, svc, pool, conn) = Registry::start(|_| {}).await.parts();
    allow_firmware(&pool).await;

    let good = SimDevice::new("good");
    let bad = SimDevice::new("bad");
    for d in [&good, &bad] {
        xadd_json(&conn, &names.cps_registrations(), &d.seen(Utc::now())).await;
    }
    let n1 = wait_challenge(&conn, &names, &good.id, 1).await;
    let n2 = wait_challenge(&conn, &names, &bad.id, 1).await;
    xadd_json(&conn, &names.cps_attestation(), &good.answer(&n1, GOOD_SHA)).await;
    xadd_json(&conn, &names.cps_attestation(), &bad.answer(&n2, BAD_SHA)).await;
    wait_status(&pool, &good.id, "trusted").await;
    wait_status(&pool, &bad.id, "untrusted").await;
    let attestation_alerts = stream_values(&conn, &names.alerts()).await.len();

    let msg = |d: &SimDevice, id: &str| {
        json!({"device_id": d.id, "message_type": "alerts", "id": id, "title": "Tamper switch opened",
               "severity": "critical", "mitre_techniques": ["T1200", "bogus"], "battery": 0.71})
    };
    xadd_json(&conn, &names.cps_alerts(), &msg(&good, "m-1")).await;
    xadd_json(&conn, &names.cps_alerts(), &msg(&bad, "m-1")).await;
    // A redelivered/duplicated device message keeps its alert id.
    xadd_json(&conn, &names.cps_alerts(), &msg(&good, "m-1")).await;
    xadd_json(
        &conn,
        &names.cps_alerts(),
        &json!({"device_id": "never-registered", "message_type": "alerts"}),
    )
    .await;
    xadd_json(&conn, &names.cps_alerts(), &json!({"no_device": true})).await;

    let alerts = wait_matching(
        &conn,
        &names.alerts(),
        attestation_alerts + 4,
        "enriched alerts",
        |_| true,
    )
    .await;
    let cps: Vec<_> = alerts.iter().filter(|a| a["source"] == "cps").collect();
    assert_eq!(cps.len(), 4);
    let from_good: Vec<_> = cps
        .iter()
        .filter(|a| a["device_id"] == good.id.as_str())
        .collect();
    assert_eq!(from_good.len(), 2);
    assert_eq!(
        from_good[0]["id"], from_good[1]["id"],
        "same device message, same alert id"
    );
    let g = from_good[0];
    assert_eq!(g["title"], "Tamper switch opened");
    assert_eq!(g["severity"], "critical");
    assert_eq!(g["device_trust"], "trusted");
    assert_eq!(g["device_model"], MODEL);
    assert!(g["device_uuid"].is_string());
    assert_eq!(g["mitre_techniques"], json!(["T1200"]));
    assert_eq!(
        g["device_message"]["battery"], 0.71,
        "the device's own fields are kept"
    );
    parse::<Alert>(&serde_json::to_vec(g).unwrap()).expect("a valid Alert");

    let b = cps
        .iter()
        .find(|a| a["device_id"] == bad.id.as_str())
        .unwrap();
    assert_eq!(b["device_trust"], "untrusted");
    assert!(
        b["title"]
            .as_str()
            .unwrap()
            .starts_with("[UNTRUSTED DEVICE]"),
        "{b}"
    );
    assert_ne!(b["id"], g["id"]);

    let unknown = cps
        .iter()
        .find(|a| a["device_id"] == "never-registered")
        .unwrap();
    assert_eq!(unknown["device_trust"], "unregistered");
    assert!(unknown["title"]
        .as_str()
        .unwrap()
        .starts_with("[UNVERIFIED DEVICE]"));

    assert_dead_letter_names(&conn, &names, "device_id").await;
    svc.stop().await;
}
