//! Bad input where it enters eve-ingest (Suricata's EVE lines on the Redis list), sent to the
//! binary as built: each bad line is a dead-letter record with its reason code and raw
//! bytes, and eve-ingest keeps serving (the good line after them is in JetStream and its
//! alert written). Random lines are counted out: published or dead-lettered, never lost, and
//! every alert made of them valid (the seed is printed; `E2E_SEED` replays a run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aurora_core::model::DeadLetter;
use aurora_e2e::suricata_alert_line;
use aurora_testkit::prelude::*;
use aurora_testkit::random::{
    random_bytes, random_json, random_object, random_text, randomize_fields, seeded_rng,
};
use rand::Rng;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eve_ingest_dead_letters_bad_lines_and_keeps_serving() {
    let names = aurora_testkit::names();
    let site = Site::new(&names, "site-a", 9);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let mut eve = site.start(Svc::EveIngest, &[]).await;
    let mut conn = redis(&site.redis_url).await;

    // Larger than NATS's default max_payload (1 MiB): it cannot be published.
    let huge = format!(
        r#"{{"event_type":"dns","timestamp":"2024-01-15T10:30:00.000000+0000","pad":"{}"}}"#,
        "x".repeat(1_200_000)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"event_type\": \"alert\", ".to_vec(), "invalid_json"),
        (b"[\"event_type\", \"alert\"]".to_vec(), "not_an_object"),
        (
            b"{\"timestamp\": \"2024-01-15T10:30:00Z\"}".to_vec(),
            "no_event_type",
        ),
        (b"{\"event_type\": \"\"}".to_vec(), "no_event_type"),
        (vec![b'{', 0xc3, 0x28, b'}'], "invalid_json"),
        (huge.into_bytes(), "too_large_for_nats"),
    ];
    let lines: Vec<Vec<u8>> = cases.iter().map(|(l, _)| l.clone()).collect();
    lpush(&mut conn, &names.suricata_list(), &lines).await;
    let good = suricata_alert_line();
    lpush(
        &mut conn,
        &names.suricata_list(),
        &[good.clone().into_bytes()],
    )
    .await;

    let records = wait_until(WAIT, "every bad line dead-lettered", || {
        let mut conn = conn.clone();
        let key = names.eve_deadletter();
        let want = cases.len();
        async move {
            let docs = list_docs(&mut conn, &key).await;
            (docs.len() >= want).then_some(docs)
        }
    })
    .await;
    assert_eq!(records.len(), cases.len(), "{records:#?}");
    for (line, code) in &cases {
        let r = records
            .iter()
            .find(|r| {
                let dl: DeadLetter = serde_json::from_value((*r).clone()).unwrap();
                dl.describes(line)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no dead letter for {:?}",
                    String::from_utf8_lossy(&line[..line.len().min(60)])
                )
            });
        assert_eq!(r["reason_code"], *code, "{r}");
        assert!(!r["reason"].as_str().unwrap_or("").is_empty(), "{r}");
    }
    // The good line still went through, once, and its alert too.
    wait_until(WAIT, "the good event in JetStream", || async {
        let m = jetstream_messages(NATS_URL, &names.suricata_stream()).await;
        (m.len() == 1).then_some(())
    })
    .await;
    let m = jetstream_messages(NATS_URL, &names.suricata_stream()).await;
    assert_eq!(m[0].2, good.as_bytes());
    // A hostile event type (NATS wildcards and a separator) lands on one safe subject.
    let hostile = br#"{"event_type":"dns.*>","timestamp":"2024-01-15T10:30:00.000000+0000"}"#;
    lpush(&mut conn, &names.suricata_list(), &[hostile.to_vec()]).await;
    wait_until(WAIT, "the hostile-typed event in JetStream", || async {
        let m = jetstream_messages(NATS_URL, &names.suricata_stream()).await;
        (m.len() == 2).then_some(())
    })
    .await;
    let m = jetstream_messages(NATS_URL, &names.suricata_stream()).await;
    assert_eq!(m[1].1, names.suricata_subject("dns.*>"));
    assert_eq!(
        m[1].1,
        format!("{}.dns___", names.suricata_subject_prefix())
    );
    assert_eq!(m[1].2, hostile);
    wait_until(WAIT, "its alert", || {
        let mut conn = conn.clone();
        let stream = names.alerts();
        async move { (xlen(&mut conn, &stream).await == 1).then_some(()) }
    })
    .await;
    assert_eq!(llen(&mut conn, &names.suricata_list()).await, 0);
    assert_eq!(eve.readyz().await, Some(200));
    assert!(eve.exited().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eve_ingest_random_lines_are_all_published_or_dead_lettered_and_alerts_valid() {
    const N: usize = 200;
    let mut rng = seeded_rng("eve_ingest_random");
    let names = aurora_testkit::names();
    let site = Site::new(&names, "site-a", 9);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let eve = site.start(Svc::EveIngest, &[]).await;

    let (mut valid, mut alerts) = (0, 0);
    let mut lines = Vec::new();
    for seq in 0..N {
        let line: Vec<u8> = match rng.gen_range(0..4) {
            0 => random_bytes(&mut rng, 500),
            1 => random_json(&mut rng, 3).to_string().into_bytes(),
            2 => {
                let mut o = random_object(&mut rng, 2);
                o["event_type"] = if rng.gen_bool(0.8) {
                    json!(random_text(&mut rng, 0..10))
                } else {
                    random_json(&mut rng, 1)
                };
                o.to_string().into_bytes()
            }
            _ => {
                // Alert-shaped, every field hostile.
                let mut o = random_object(&mut rng, 1);
                o["event_type"] = json!("alert");
                randomize_fields(
                    &mut rng,
                    &mut o,
                    &["timestamp", "src_ip", "dest_ip", "proto", "flow_id", "host"],
                    0.7,
                    1,
                );
                let mut alert = random_object(&mut rng, 2);
                randomize_fields(
                    &mut rng,
                    &mut alert,
                    &[
                        "signature",
                        "signature_id",
                        "severity",
                        "category",
                        "metadata",
                    ],
                    0.7,
                    2,
                );
                o["alert"] = alert;
                for field in ["dns", "tls", "http", "fileinfo"] {
                    if rng.gen_bool(0.3) {
                        o[field] = random_object(&mut rng, 2);
                    }
                }
                o.to_string().into_bytes()
            }
        };
        // Distinct lines (identical ones are one event to JetStream): a unique prefix keeps an
        // invalid line invalid and a valid one valid.
        let line = if line.first() == Some(&b'{') && line.len() > 2 {
            let mut l = format!("{{\"e2e_seq\":{seq},").into_bytes();
            l.extend_from_slice(&line[1..]);
            if line == b"{}" {
                l = format!("{{\"e2e_seq\":{seq}}}").into_bytes();
            }
            l
        } else {
            let mut l = format!("#{seq}#").into_bytes();
            l.extend_from_slice(&line);
            l
        };
        if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&line) {
            if let Some(Value::String(t)) = o.get("event_type") {
                if !t.trim().is_empty() {
                    valid += 1;
                    alerts += usize::from(t == "alert");
                }
            }
        }
        lines.push(line);
    }
    let mut conn = redis(&site.redis_url).await;
    lpush(&mut conn, &names.suricata_list(), &lines).await;

    let dl = names.eve_deadletter();
    let (published, dead) = wait_until(WAIT, "every line published or dead-lettered", || {
        let mut conn = conn.clone();
        let (dl, stream) = (dl.clone(), names.suricata_stream());
        async move {
            let dead = llen(&mut conn, &dl).await as usize;
            let published = jetstream_messages(NATS_URL, &stream).await.len();
            (published + dead >= N).then_some((published, dead))
        }
    })
    .await;
    assert_eq!(published, valid, "published");
    assert_eq!(dead, N - valid, "dead-lettered");
    let written = wait_stream_docs(&conn, &names.alerts(), alerts, "every alert").await;
    assert_eq!(written.len(), alerts);
    for (_, doc) in &written {
        let bytes = serde_json::to_vec(doc).unwrap();
        if let Err(e) = aurora_core::model::parse::<aurora_core::model::Alert>(&bytes) {
            panic!("not a valid Alert ({e}): {doc}");
        }
    }
    assert_eq!(eve.readyz().await, Some(200));
    eprintln!(
        "eve random: {valid} published ({alerts} alerts), {} dead-lettered",
        N - valid
    );
}
