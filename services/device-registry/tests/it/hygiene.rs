//! Device alert hygiene: devices that cannot answer attestation raise one fleet alert, not a
//! storm, and nothing again while they stay that way; a model's policy (required, optional,
//! off) decides whether they are challenged and whether silence is an alert; a silent device
//! is raised once and marked in the API, and cleared when it talks again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use aurora_core::auth::Permission;
use chrono::Utc;
use common::*;
use device_registry::config::AttestationPolicy;
use serde_json::{json, Value};

/// A `device.seen` record of a device of `model` at `at`.
fn seen(d: &SimDevice, model: &str, at: chrono::DateTime<Utc>) -> Value {
    let mut v = d.seen(at);
    v["metadata"]["model"] = json!(model);
    v
}

async fn alerts(conn: &aurora_core::bus::Conn, names: &aurora_core::Names) -> Vec<Value> {
    stream_values(conn, &names.alerts()).await
}

/// The device as the API shows it; `Null` while it is not registered yet (404).
async fn device(base: &str, id: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{base}/api/v1/devices/{id}"))
        .bearer_auth(token(&[Permission::DevicesRead]))
        .send()
        .await
        .unwrap();
    if resp.status() == 404 {
        return Value::Null;
    }
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_fleet_that_cannot_answer_raises_one_alert_and_not_again_every_day() {
    let reg = Registry::start(|c| {
        c.attestation_timeout = Duration::from_millis(800);
        c.reattest_interval = Some(Duration::from_secs(2));
        c.attestation_policy = [
            ("legacy-opt".to_string(), AttestationPolicy::Optional),
            ("legacy-off".to_string(), AttestationPolicy::Off),
        ]
        .into_iter()
        .collect();
        c.silent_after = 0;
    })
    .await;
    let (names, conn) = (&reg.names, &reg.conn);
    // 43 devices of a model without attestation (required by default), 3 optional, 3 off.
    let fleet: Vec<SimDevice> = (0..43).map(|_| SimDevice::new("legacy")).collect();
    let optional: Vec<SimDevice> = (0..3).map(|_| SimDevice::new("opt")).collect();
    let off: Vec<SimDevice> = (0..3).map(|_| SimDevice::new("off")).collect();
    // Written in one transaction: registered in one batch, as a fleet that comes online
    // together (the fleet alert folds the devices that enter a condition in one round).
    let now = Utc::now();
    let mut pipe = redis::pipe();
    pipe.atomic();
    let docs = fleet
        .iter()
        .map(|d| seen(d, "legacy-x", now))
        .chain(optional.iter().map(|d| seen(d, "legacy-opt", now)))
        .chain(off.iter().map(|d| seen(d, "legacy-off", now)));
    for doc in docs {
        pipe.cmd("XADD")
            .arg(names.cps_registrations())
            .arg("*")
            .arg("data")
            .arg(doc.to_string())
            .ignore();
    }
    pipe.query_async::<()>(&mut conn.clone()).await.unwrap();

    let raised = wait_matching(conn, &names.alerts(), 1, "the fleet alert", |a| {
        a["condition"] == "attestation_timeout" && a["fleet"] == true
    })
    .await;
    assert_eq!(raised[0]["device_count"], 43, "{}", raised[0]);
    assert_eq!(raised[0]["severity"], "high");
    // Re-attested twice more (every 2 s), no answer each time: nothing new.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let all = alerts(conn, names).await;
    assert_eq!(
        all.len(),
        1,
        "one alert, not one per device and day: {all:#?}"
    );
    let challenged = |d: &SimDevice| {
        let id = d.id.clone();
        async move { challenges_for(conn, names, &id).await.len() }
    };
    assert!(challenged(&fleet[0]).await >= 2, "re-attested");
    assert!(challenged(&optional[0]).await >= 1, "optional: challenged");
    for d in &off {
        assert_eq!(challenged(d).await, 0, "off: never challenged");
        assert_eq!(device(&reg.svc.base, &d.id).await["status"], "not_attested");
    }
    assert_eq!(
        device(&reg.svc.base, &optional[0].id).await["status"],
        "attestation_timeout"
    );

    // Below the storm threshold, one alert per device; and only once.
    let few: Vec<SimDevice> = (0..2).map(|_| SimDevice::new("few")).collect();
    for d in &few {
        xadd_json(
            conn,
            &names.cps_registrations(),
            &seen(d, "legacy-y", Utc::now()),
        )
        .await;
    }
    for d in &few {
        wait_matching(conn, &names.alerts(), 1, "the device's alert", |a| {
            a["device_id"] == d.id.as_str()
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = alerts(conn, names).await;
    for d in &few {
        assert_eq!(
            all.iter()
                .filter(|a| a["device_id"] == d.id.as_str())
                .count(),
            1,
            "{all:#?}"
        );
    }
}

#[tokio::test]
async fn a_silent_device_is_raised_once_marked_and_cleared_when_it_talks_again() {
    let reg = Registry::start(|c| {
        c.silent_after = 3;
        c.silent_floor = Duration::from_millis(500);
        c.alert_storm_threshold = 10;
    })
    .await;
    let (names, conn, base) = (&reg.names, &reg.conn, reg.svc.base.clone());
    // Twelve devices that talk every 300 ms and stop at once (after two messages), one that
    // goes on a little longer and then stops on its own.
    let lone = SimDevice::new("quiet");
    let crowd: Vec<SimDevice> = (0..12).map(|_| SimDevice::new("crowd")).collect();
    for round in 0..5 {
        let at = Utc::now();
        xadd_json(conn, &names.cps_registrations(), &seen(&lone, "m", at)).await;
        if round < 2 {
            for d in &crowd {
                xadd_json(conn, &names.cps_registrations(), &seen(d, "m", at)).await;
            }
        }
        // Each sighting in a batch of its own: the gaps are the usual interval.
        aurora_testkit::wait_until(LONG, "the sightings stored", || async {
            let d = device(&base, &lone.id).await;
            (d["last_seen"].as_str().is_some_and(|s| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .is_ok_and(|t| t >= at - chrono::Duration::milliseconds(1))
            }))
            .then_some(())
        })
        .await;
        if round < 4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let d = device(&base, &lone.id).await;
    assert_eq!(d["silent"], false, "{d}");
    assert!(d["seen_interval_ms"].as_i64().is_some(), "{d}");

    let lone_alert = wait_matching(conn, &names.alerts(), 1, "the silent alert", |a| {
        a["condition"] == "silent" && a["device_id"] == lone.id.as_str()
    })
    .await;
    assert_eq!(lone_alert[0]["severity"], "high");
    let crowd_alert = wait_matching(conn, &names.alerts(), 1, "the fleet's silent alert", |a| {
        a["condition"] == "silent" && a["fleet"] == true
    })
    .await;
    assert_eq!(crowd_alert[0]["device_count"], 12, "{}", crowd_alert[0]);
    let d = device(&base, &lone.id).await;
    assert_eq!(d["silent"], true, "{d}");
    assert!(d["silent_since"].is_string(), "{d}");

    // It talks again: cleared, and raised again (once) only after a new silence.
    xadd_json(
        conn,
        &names.cps_registrations(),
        &seen(&lone, "m", Utc::now()),
    )
    .await;
    aurora_testkit::wait_until(LONG, "the device no longer silent", || async {
        (device(&base, &lone.id).await["silent"] == false).then_some(())
    })
    .await;
    let silent_alerts = |all: &[Value]| {
        all.iter()
            .filter(|a| a["condition"] == "silent" && a["device_id"] == lone.id.as_str())
            .count()
    };
    assert_eq!(silent_alerts(&alerts(conn, names).await), 1);
    aurora_testkit::wait_until(LONG, "silent again, raised again", || async {
        (silent_alerts(&alerts(conn, names).await) == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(silent_alerts(&alerts(conn, names).await), 2);
}
