//! Signed origin against the real Redis and NATS: site B imports only what a key of the
//! claimed origin site signed. A forged origin, an unsigned message, a wrong key, an unknown
//! site and a replayed old message are each dead-lettered with their reason; a signed one
//! lands. With legacy subjects listed, an unsigned design-format alert lands marked
//! unverified and is never exported again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use aurora_core::model::DeadLetter;
use aurora_core::names::FederatedKind;
use aurora_testkit::cleanup::cleanup;
use aurora_testkit::prelude::*;
use common::*;
use federation_gateway::SERVICE;
use serde_json::Value;

const SITE_B: &str = "redis://127.0.0.1:6379/7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_what_the_claimed_origin_signed_is_imported() {
    let names = aurora_testkit::names();
    let nats = aurora_testkit::NATS_URL;
    let keys = Keys::new(&[("site-a", 1), ("site-b", 2), ("site-c", 3)]);
    let flags = keys.flags("site-b");
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(["--no-export", "--max-signature-age", "1m"]);
    let b = Gateway::start(args(&names, "site-b", SITE_B, nats, &extra)).await;
    let rb = redis(SITE_B).await;
    let js = jetstream_ctx(nats).await;
    let subject = names.nats_subject(FederatedKind::Alerts);
    let (key_a, key_c, key_x) = (Keys::key(1), Keys::key(3), Keys::key(42));

    let good = alert("signed");
    Outgoing::signed(subject.clone(), "site-a", &good, &key_a)
        .publish(&js)
        .await;
    let unsigned = alert("unsigned");
    let mut msg = Outgoing::signed(subject.clone(), "site-a", &unsigned, &key_a);
    msg.key = None;
    let unsigned_id = msg.publish(&js).await;
    // C's own signed message, its origin header rewritten to A.
    let forged = alert("forged");
    let forged_id = Outgoing::signed(subject.clone(), "site-a", &forged, &key_c)
        .publish(&js)
        .await;
    // Claims A and A's key id, signed with another key.
    let wrong = alert("wrong-key");
    let mut msg = Outgoing::signed(subject.clone(), "site-a", &wrong, &key_x);
    msg.key = Some((&key_x, key_a.id()));
    let wrong_id = msg.publish(&js).await;
    let stranger = alert("stranger");
    let stranger_id = Outgoing::signed(subject.clone(), "site-z", &stranger, &key_x)
        .publish(&js)
        .await;
    // A's real message, signed ten minutes before it is stored: captured and replayed.
    let replayed = alert("replayed");
    let mut msg = Outgoing::signed(subject.clone(), "site-a", &replayed, &key_a);
    msg.signed_at_ms -= 600_000;
    let replayed_id = msg.publish(&js).await;

    let dead = wait_until(LONG, "five dead letters", || async {
        let dead = stream_values(&rb, &names.federation_deadletter()).await;
        (dead.len() >= 5).then_some(dead)
    })
    .await;
    let by_id: HashMap<String, String> = dead
        .into_iter()
        .map(|d| serde_json::from_value::<DeadLetter>(d).unwrap())
        .map(|d| (d.source_id.unwrap_or_default(), d.reason))
        .collect();
    let reason = |id: &str| by_id.get(id).cloned().unwrap_or_default();
    assert!(reason(&unsigned_id).starts_with("unsigned"), "{by_id:?}");
    assert!(
        reason(&forged_id).contains(&format!(
            "key \"{}\" is not a key of site \"site-a\"",
            key_c.id()
        )),
        "{by_id:?}"
    );
    assert!(
        reason(&wrong_id).contains("signature does not match its claimed origin"),
        "{by_id:?}"
    );
    assert!(
        reason(&stranger_id).contains("unknown site \"site-z\""),
        "{by_id:?}"
    );
    assert!(reason(&replayed_id).starts_with("replayed"), "{by_id:?}");
    let landed = wait_until(LONG, "the signed alert at B", || async {
        last_of(&rb, &names.alerts(), &uid("signed")).await
    })
    .await;
    assert_eq!(landed["origin_site"], "site-a");
    assert_eq!(stream_values(&rb, &names.alerts()).await.len(), 1);
    let ops = b.ops();
    for reason in [
        "unsigned",
        "unknown_key",
        "bad_signature",
        "unknown_site",
        "replayed",
    ] {
        let n = ops
            .metric(
                "aurora_federation_gateway_dead_letters_total",
                &[("direction", "import"), ("reason", reason)],
            )
            .await;
        assert!(n >= 1.0, "{reason}: {n}");
    }

    b.stop().await;
    cleanup(&names, nats, &[SITE_B]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_peers_land_unverified_and_are_never_exported_again() {
    let names = aurora_testkit::names();
    let nats = aurora_testkit::NATS_URL;
    let keys = Keys::new(&[("site-b", 2)]);
    let alerts_subject = names.nats_subject(FederatedKind::Alerts);
    let flags = keys.flags("site-b");
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(["--legacy-subjects", alerts_subject.as_str()]);
    let b = Gateway::start(args(&names, "site-b", SITE_B, nats, &extra)).await;
    let rb = redis(SITE_B).await;
    let js = jetstream_ctx(nats).await;

    // As the design publishes: only `Nats-Msg-Id: uuid4`.
    let design = |doc: &Value, subject: String| {
        let js = js.clone();
        let payload = serde_json::to_vec(doc).unwrap();
        async move {
            let msg = async_nats::jetstream::message::PublishMessage::build()
                .message_id(uuid::Uuid::new_v4().to_string().as_str())
                .payload(payload.into());
            js.send_publish(subject, msg).await.unwrap().await.unwrap();
        }
    };
    design(&alert("legacy"), alerts_subject.clone()).await;
    let ioc = serde_json::json!({"id": "legacy-ioc", "type": "domain", "value": "evil.example"});
    design(&ioc, names.nats_subject(FederatedKind::Iocs)).await;

    let landed = wait_until(LONG, "the legacy alert at B", || async {
        last_of(&rb, &names.alerts(), &uid("legacy")).await
    })
    .await;
    assert_eq!(landed["origin_site"], "legacy");
    assert_eq!(landed["origin_verified"], false);
    let dead = wait_until(LONG, "the unsigned IOC dead-lettered", || async {
        let dead = stream_values(&rb, &names.federation_deadletter()).await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not a legacy subject"),
        "{dead:?}"
    );
    // B read its landed alert and kept it home.
    wait_until(LONG, "B's exporter settled", || async {
        (pending(&rb, &names.alerts(), SERVICE).await == 0
            && xlen(&mut rb.clone(), &names.alerts()).await == 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stream_len(nats, &names.nats_stream()).await,
        2,
        "nothing re-exported"
    );
    let ops = b.ops();
    let counted = ops
        .metric(
            "aurora_federation_gateway_legacy_imported_total",
            &[("subject", "alerts")],
        )
        .await;
    assert!(counted >= 1.0);
    let withheld = ops
        .metric(
            "aurora_federation_gateway_withheld_total",
            &[("subject", "alerts"), ("reason", "unverified_origin")],
        )
        .await;
    assert!(withheld >= 1.0);

    b.stop().await;
    cleanup(&names, nats, &[SITE_B]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_under_one_signature_lands_whole() {
    let names = aurora_testkit::names();
    let nats = aurora_testkit::NATS_URL;
    let keys = Keys::new(&[("site-a", 1), ("site-b", 2)]);
    let start = |site: &'static str, redis: &'static str| {
        let flags = keys.flags(site);
        let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
        Gateway::start(args(&names, site, redis, nats, &extra))
    };
    const SITE_A: &str = "redis://127.0.0.1:6379/10";
    let a = start("site-a", SITE_A).await;
    let b = start("site-b", SITE_B).await;
    let ra = redis(SITE_A).await;
    let rb = redis(SITE_B).await;
    // Written at once: the exporter reads them in batches (256 at most) and signs each once.
    let producer = aurora_core::bus::Producer::new(ra.clone(), 1_000_000);
    let docs: Vec<Vec<u8>> = (0..300)
        .map(|i| serde_json::to_vec(&alert(&format!("batch-{i}"))).unwrap())
        .collect();
    let alerts = names.alerts();
    let items: Vec<(&str, &[u8])> = docs.iter().map(|d| (alerts.as_str(), &d[..])).collect();
    producer.publish_batch(&items).await.unwrap();
    wait_xlen(&rb, &alerts, 300, "the 300 alerts at B").await;
    // Those that went out in a batch carry their paths to the batch's root.
    let js = jetstream_ctx(nats).await;
    let stream = js.get_stream(names.nats_stream()).await.unwrap();
    let mut with_path = 0;
    for seq in 1..=300 {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let proof = federation_gateway::signing::PROOF_HEADER;
        with_path += usize::from(msg.headers.get(proof).is_some());
    }
    assert!(with_path > 100, "{with_path} of 300 signed in batches");
    assert!(stream_values(&rb, &names.federation_deadletter())
        .await
        .is_empty());

    a.stop().await;
    b.stop().await;
    cleanup(&names, nats, &[SITE_A, SITE_B]).await;
}
