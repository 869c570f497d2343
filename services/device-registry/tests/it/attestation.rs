//! The attestation flow end to end with a simulated device: pass, wrong hash, bad signature,
//! replayed nonce, timeout, scheduled re-attestation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use ed25519_dalek::SigningKey;
use serde_json::Value;

/// A service with the allow-list set and one registered device; returns its first nonce.
async fn flow(tune: impl FnOnce(&mut device_registry::Config)) -> (Registry, SimDevice, String) {
    let f = Registry::start(tune).await;
    allow_firmware(&f.pool).await;
    let dev = SimDevice::new("att");
    xadd_json(&f.conn, &f.names.cps_registrations(), &dev.seen(Utc::now())).await;
    let nonce = wait_challenge(&f.conn, &f.names, &dev.id, 1).await;
    (f, dev, nonce)
}

async fn alerts_for(f: &Registry, device_id: &str, n: usize) -> Vec<Value> {
    wait_matching(&f.conn, &f.names.alerts(), n, "attestation alert", |a| {
        a["device_id"] == device_id
    })
    .await
}

#[tokio::test]
async fn a_genuine_answer_makes_the_device_trusted_and_raises_nothing() {
    let (f, dev, nonce) = flow(|_| {}).await;
    xadd_json(
        &f.conn,
        &f.names.cps_attestation(),
        &dev.answer(&nonce, GOOD_SHA),
    )
    .await;
    wait_status(&f.pool, &dev.id, "trusted").await;
    let attested: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT attested_at FROM devices WHERE device_id = $1")
            .bind(&dev.id)
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert!(attested.is_some());
    wait_no_pending(&f.conn, &f.names.cps_attestation(), GROUP).await;
    assert!(
        stream_values(&f.conn, &f.names.alerts()).await.is_empty(),
        "no alert for a genuine device"
    );
    f.svc.stop().await;
}

#[tokio::test]
async fn a_firmware_hash_off_the_allow_list_makes_the_device_untrusted_with_an_alert() {
    let (f, dev, nonce) = flow(|_| {}).await;
    xadd_json(
        &f.conn,
        &f.names.cps_attestation(),
        &dev.answer(&nonce, BAD_SHA),
    )
    .await;
    wait_status(&f.pool, &dev.id, "untrusted").await;
    let alerts = alerts_for(&f, &dev.id, 1).await;
    let a = &alerts[0];
    assert_eq!(a["severity"], "high");
    assert_eq!(a["device_trust"], "untrusted");
    assert!(a["reason"].as_str().unwrap().contains("allow-list"), "{a}");
    assert!(a["title"].as_str().unwrap().contains(&dev.id));
    assert!(a["device_uuid"].is_string());
    aurora_core::model::parse::<aurora_core::model::Alert>(&serde_json::to_vec(a).unwrap())
        .expect("a valid Alert");
    f.svc.stop().await;
}

#[tokio::test]
async fn a_bad_signature_makes_the_device_untrusted_with_an_alert() {
    let (f, dev, nonce) = flow(|_| {}).await;
    let forger = SigningKey::from_bytes(&rand::random());
    xadd_json(
        &f.conn,
        &f.names.cps_attestation(),
        &dev.answer_with(&forger, &nonce, VERSION, GOOD_SHA),
    )
    .await;
    wait_status(&f.pool, &dev.id, "untrusted").await;
    let alerts = alerts_for(&f, &dev.id, 1).await;
    assert_eq!(alerts[0]["reason"], "bad signature");
    f.svc.stop().await;
}

#[tokio::test]
async fn a_replayed_answer_fails_and_a_redelivery_does_not() {
    let (f, dev, nonce) = flow(|_| {}).await;
    let answer = dev.answer(&nonce, GOOD_SHA);
    xadd_json(&f.conn, &f.names.cps_attestation(), &answer).await;
    wait_status(&f.pool, &dev.id, "trusted").await;
    // The same signed answer again, as an attacker on the network would send it.
    xadd_json(&f.conn, &f.names.cps_attestation(), &answer).await;
    wait_status(&f.pool, &dev.id, "untrusted").await;
    let alerts = alerts_for(&f, &dev.id, 1).await;
    assert_eq!(alerts[0]["reason"], "replayed nonce");
    // An unknown nonce fails too.
    xadd_json(
        &f.conn,
        &f.names.cps_attestation(),
        &dev.answer(&"ab".repeat(32), GOOD_SHA),
    )
    .await;
    let alerts = alerts_for(&f, &dev.id, 2).await;
    assert_eq!(alerts[1]["reason"], "unknown nonce");
    assert_ne!(alerts[0]["id"], alerts[1]["id"]);
    f.svc.stop().await;
}

#[tokio::test]
async fn an_unanswered_challenge_times_out_with_an_alert_and_is_retried_on_schedule() {
    let (f, dev, _nonce) = flow(|c| {
        c.attestation_timeout = Duration::from_secs(1);
        c.reattest_interval = Some(Duration::from_secs(2));
    })
    .await;
    wait_status(&f.pool, &dev.id, "attestation_timeout").await;
    let alerts = alerts_for(&f, &dev.id, 1).await;
    assert_eq!(alerts[0]["severity"], "high");
    assert!(alerts[0]["title"]
        .as_str()
        .unwrap()
        .contains("did not answer"));
    // Re-attestation on schedule sends a fresh challenge; answering it restores trust.
    let second = wait_challenge(&f.conn, &f.names, &dev.id, 2).await;
    xadd_json(
        &f.conn,
        &f.names.cps_attestation(),
        &dev.answer(&second, GOOD_SHA),
    )
    .await;
    wait_status(&f.pool, &dev.id, "trusted").await;
    // One timeout alert for the one expired challenge, whatever the number of sweeps.
    let timeouts: Vec<Value> = stream_values(&f.conn, &f.names.alerts())
        .await
        .into_iter()
        .filter(|a| {
            a["device_id"] == dev.id.as_str()
                && a["title"].as_str().unwrap_or("").contains("did not answer")
        })
        .collect();
    let mut ids: Vec<&str> = timeouts.iter().map(|a| a["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 1, "{timeouts:?}");
    f.svc.stop().await;
}
