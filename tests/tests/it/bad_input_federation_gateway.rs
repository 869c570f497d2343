//! Bad input where it enters federation-gateway (its site's alerts stream, and the wire:
//! JetStream messages from other sites), sent to the binary as built: dead-lettered with the
//! reason, never exported or imported, and both gateways keep serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aurora_testkit::prelude::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_gateway_dead_letters_bad_documents_from_its_site_and_from_the_wire() {
    let names = aurora_testkit::names();
    let a = Site::new(&names, "site-a", 9);
    let b = Site::new(&names, "site-b", 10);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&a.redis_url, &b.redis_url]);
    let fed_a = a.start(Svc::FederationGateway, &[]).await;
    let fed_b = b.start(Svc::FederationGateway, &[]).await;
    let mut conn_a = redis(&a.redis_url).await;
    let conn_b = redis(&b.redis_url).await;

    // Bad entries on A's own alerts stream: dead-lettered at A, never exported.
    xadd(&mut conn_a, &names.alerts(), b"not json").await;
    xadd(&mut conn_a, &names.alerts(), b"[1, 2]").await;
    // Junk on the wire, as a rogue or broken site would send it.
    let client = async_nats::connect(NATS_URL).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = names.nats_subject(aurora_core::names::FederatedKind::Alerts);
    let wire: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("garbage", Some("site-x"), b"\xff\xfe garbage"),
        ("array", Some("site-x"), b"[1,2,3]"),
        ("no origin", None, br#"{"id":"x","title":"t"}"#),
    ];
    for (id, origin, payload) in &wire {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("junk-{id}").as_str());
        if let Some(o) = origin {
            headers.insert("Aurora-Origin-Site", *o);
        }
        js.publish_with_headers(subject.clone(), headers, payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let dl = names.federation_deadletter();
    let n_wire = wire.len();
    let at_a = wait_until(WAIT, "A's dead letters", || {
        let mut conn = conn_a.clone();
        let dl = dl.clone();
        async move {
            let r = dead_letters(&mut conn, &dl).await;
            (r.len() >= 2 + n_wire).then_some(r)
        }
    })
    .await;
    let at_b = wait_until(WAIT, "B's dead letters", || {
        let mut conn = conn_b.clone();
        let dl = dl.clone();
        async move {
            let r = dead_letters(&mut conn, &dl).await;
            (r.len() >= n_wire).then_some(r)
        }
    })
    .await;
    for (_, _, payload) in &wire {
        for (site, records) in [("A", &at_a), ("B", &at_b)] {
            let r = records
                .iter()
                .find(|r| r.raw().as_deref() == Some(*payload))
                .unwrap_or_else(|| {
                    panic!("no dead letter at {site} for {payload:?}: {records:#?}")
                });
            assert!(!r.reason.is_empty());
            assert_eq!(r.service, "federation-gateway");
        }
    }
    assert_eq!(
        at_b.len(),
        wire.len(),
        "A's bad entries never left A: {at_b:#?}"
    );

    // Both keep serving: a good alert crosses, and nothing bad landed at B.
    let id = uuid::Uuid::new_v4().to_string();
    let alert = json!({"id": id, "title": "good", "severity": "high", "status": "new",
        "source": "e2e", "timestamp": chrono::Utc::now()});
    xadd(&mut conn_a, &names.alerts(), alert.to_string().as_bytes()).await;
    let landed = wait_stream_docs(&conn_b, &names.alerts(), 1, "the good alert at B").await;
    assert_eq!(landed.len(), 1, "{landed:?}");
    assert_eq!(landed[0].1["id"], id.as_str());
    assert_eq!(fed_a.readyz().await, Some(200));
    assert_eq!(fed_b.readyz().await, Some(200));
}

/// A JSON object that is not an Alert, published on the federation subject by another site,
/// must not reach analysts as an alert: bad input goes to a dead-letter stream with the
/// reason (see docs/contract.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_gateway_does_not_import_an_invalid_alert() {
    let names = aurora_testkit::names();
    let b = Site::new(&names, "site-b", 10);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&b.redis_url]);
    let _fed_b = b.start(Svc::FederationGateway, &[]).await;
    let mut conn_b = redis(&b.redis_url).await;
    let client = async_nats::connect(NATS_URL).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = names.nats_subject(aurora_core::names::FederatedKind::Alerts);
    let not_an_alert = br#"{"hello": "world", "severity": "apocalyptic"}"#;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "site-x:not-an-alert");
    headers.insert("Aurora-Origin-Site", "site-x");
    js.publish_with_headers(subject, headers, not_an_alert.to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();

    let dl = names.federation_deadletter();
    let records = wait_until(WAIT, "a dead letter or an import", || {
        let mut conn = conn_b.clone();
        let (dl, alerts) = (dl.clone(), names.alerts());
        async move {
            let r = dead_letters(&mut conn, &dl).await;
            let imported = xlen(&mut conn, &alerts).await;
            (!r.is_empty() || imported > 0).then_some(r)
        }
    })
    .await;
    let imported = stream_docs(&mut conn_b, &names.alerts()).await;
    assert!(
        imported.is_empty(),
        "an invalid alert from another site was imported into {}: {imported:?}",
        names.alerts()
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].raw().as_deref(), Some(&not_an_alert[..]));
}

/// A message JetStream refuses for what it is (larger than the stream's maximum message size,
/// set by an operator) is dead-lettered alone with JetStream's reason; the alerts before and
/// after it are exported (no head-of-line blocking in the exporter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_jetstream_refuses_is_dead_lettered_alone_and_the_others_go_out() {
    let names = aurora_testkit::names();
    let a = Site::new(&names, "site-a", 9);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&a.redis_url]);
    let client = async_nats::connect(NATS_URL).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut config = aurora_core::jetstream::federation_stream_config(&names);
    config.max_message_size = 4096;
    js.create_stream(config).await.unwrap();
    let fed_a = a.start(Svc::FederationGateway, &[]).await;
    let mut conn_a = redis(&a.redis_url).await;

    let alert = |title: String| {
        let id = uuid::Uuid::new_v4().to_string();
        let doc = json!({"id": id, "title": title, "severity": "high", "status": "new",
            "source": "e2e", "timestamp": chrono::Utc::now()});
        (id, doc.to_string())
    };
    let (first, first_doc) = alert("before".into());
    let (big, big_doc) = alert("x".repeat(8_000));
    let (last, last_doc) = alert("after".into());
    for doc in [&first_doc, &big_doc, &last_doc] {
        xadd(&mut conn_a, &names.alerts(), doc.as_bytes()).await;
    }

    let stream = names.nats_stream();
    let exported = wait_until(WAIT, "the two other alerts in JetStream", || {
        let stream = stream.clone();
        async move {
            let m = jetstream_messages(NATS_URL, &stream).await;
            (m.len() >= 2).then_some(m)
        }
    })
    .await;
    let ids: Vec<String> = exported
        .iter()
        .filter_map(|(_, _, p)| serde_json::from_slice::<serde_json::Value>(p).ok())
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect();
    assert!(ids.contains(&first) && ids.contains(&last), "{ids:?}");
    assert!(!ids.contains(&big));
    let dl = names.federation_deadletter();
    let records = wait_until(WAIT, "the refused alert dead-lettered", || {
        let mut conn = conn_a.clone();
        let dl = dl.clone();
        async move {
            let r = dead_letters(&mut conn, &dl).await;
            (!r.is_empty()).then_some(r)
        }
    })
    .await;
    assert_eq!(records.len(), 1, "{records:#?}");
    assert!(
        records[0].reason.contains("refused by JetStream"),
        "{}",
        records[0].reason
    );
    assert_eq!(records[0].raw().as_deref(), Some(big_doc.as_bytes()));
    // Nothing left pending: the exporter's group holds no entry.
    assert_eq!(fed_a.readyz().await, Some(200));
}
