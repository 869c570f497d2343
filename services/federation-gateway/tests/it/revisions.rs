//! Revisions across three sites against the real Redis and NATS: an alert raised at A,
//! updated at A twice and at B once ends with the same last revision everywhere, with no
//! echo; an older revision arriving after a newer one is not applied; the revision state
//! stays bounded however many messages come.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use aurora_core::bus::{self, Conn};
use aurora_core::names::FederatedKind;
use aurora_testkit::cleanup::cleanup;
use aurora_testkit::prelude::*;
use common::*;
use federation_gateway::landing::{Landed, Lander, Landing, RevisionMemory};
use federation_gateway::revision::Stamp;
use serde_json::{json, Value};

const SITE_A: &str = "redis://127.0.0.1:6379/4";
const SITE_B: &str = "redis://127.0.0.1:6379/5";
const SITE_C: &str = "redis://127.0.0.1:6379/6";

/// Waits until the last copy of alert `id` at each site has `updated_at` `at`.
async fn converged(sites: &[(&str, &Conn)], stream: &str, id: &str, at: &str) -> Vec<Value> {
    wait_until(LONG, &format!("every site at revision {at}"), || async {
        let mut docs = Vec::new();
        for (_, conn) in sites {
            let doc = last_of(conn, stream, id).await?;
            if doc["updated_at"] != at {
                return None;
            }
            docs.push(doc);
        }
        Some(docs)
    })
    .await
}

fn revised(doc: &Value, status: &str, at: &str) -> Value {
    let mut doc = doc.clone();
    doc["status"] = json!(status);
    doc["updated_at"] = json!(at);
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_updated_at_two_sites_converges_everywhere_to_its_last_revision() {
    let names = aurora_testkit::names();
    let nats = aurora_testkit::NATS_URL;
    let keys = Keys::new(&[("site-a", 1), ("site-b", 2), ("site-c", 3)]);
    let start = |site: &'static str, redis: &'static str| {
        let flags = keys.flags(site);
        let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
        Gateway::start(args(&names, site, redis, nats, &extra))
    };
    let a = start("site-a", SITE_A).await;
    let b = start("site-b", SITE_B).await;
    let c = start("site-c", SITE_C).await;
    let (ra, rb, rc) = (
        redis(SITE_A).await,
        redis(SITE_B).await,
        redis(SITE_C).await,
    );
    let sites = [("a", &ra), ("b", &rb), ("c", &rc)];
    let alerts = names.alerts();
    let id = uid("converge");

    // Raised at A, then updated at A twice.
    let raised = alert("converge");
    xadd_json(&ra, &alerts, &raised).await;
    wait_until(LONG, "the alert at B and C", || async {
        let b = last_of(&rb, &alerts, &id).await?;
        let c = last_of(&rc, &alerts, &id).await?;
        (b["origin_site"] == "site-a" && c["origin_site"] == "site-a").then_some(())
    })
    .await;
    let at1 = "2024-01-15T10:40:00Z";
    xadd_json(&ra, &alerts, &revised(&raised, "acknowledged", at1)).await;
    converged(&sites, &alerts, &id, at1).await;
    let at2 = "2024-01-15T10:50:00Z";
    xadd_json(&ra, &alerts, &revised(&raised, "investigating", at2)).await;
    let docs = converged(&sites, &alerts, &id, at2).await;

    // Updated at B, on B's copy (an imported alert, owner A): it goes to A and C as a
    // revision of A's alert.
    let at3 = "2024-01-15T11:00:00Z";
    xadd_json(&rb, &alerts, &revised(&docs[1], "closed", at3)).await;
    let docs = converged(&sites, &alerts, &id, at3).await;
    for doc in &docs[1..] {
        assert_eq!(doc["status"], "closed");
        assert_eq!(
            doc["origin_site"], "site-a",
            "the owner stays the origin: {doc}"
        );
    }
    assert_eq!(docs[0]["status"], "closed", "A has B's change: {}", docs[0]);

    // Settled: on the wire A's three revisions and B's one; nothing echoed.
    wait_until(LONG, "every exporter settled", || async {
        let mut total = 0;
        for (_, conn) in &sites {
            total += pending(conn, &alerts, federation_gateway::SERVICE).await;
        }
        (total == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stream_len(nats, &names.nats_stream()).await, 4);
    for (site, conn) in &sites {
        let copies = stream_values(conn, &alerts)
            .await
            .into_iter()
            .filter(|d| d["id"] == id.as_str())
            .count();
        assert_eq!(copies, 4, "site {site}: each revision once");
    }

    for g in [a, b, c] {
        g.stop().await;
    }
    cleanup(&names, nats, &[SITE_A, SITE_B, SITE_C]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_revision_arriving_late_never_overwrites_a_newer_one() {
    let names = aurora_testkit::names();
    let nats = aurora_testkit::NATS_URL;
    let keys = Keys::new(&[("site-b", 2), ("site-x", 9)]);
    let flags = keys.flags("site-b");
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.push("--no-export");
    let b = Gateway::start(args(&names, "site-b", SITE_B, nats, &extra)).await;
    let rb = redis(SITE_B).await;
    let js = jetstream_ctx(nats).await;
    let key = Keys::key(9);
    let subject = names.nats_subject(FederatedKind::Alerts);
    let id = uid("late");
    let newer = revised(&alert("late"), "closed", "2024-01-15T12:00:00Z");
    let older = revised(&alert("late"), "investigating", "2024-01-15T11:00:00Z");

    Outgoing::signed(subject.clone(), "site-x", &newer, &key)
        .publish(&js)
        .await;
    Outgoing::signed(subject.clone(), "site-x", &older, &key)
        .publish(&js)
        .await;
    // A sentinel after both: once it landed, the older revision was judged.
    let sentinel = alert("late-sentinel");
    Outgoing::signed(subject.clone(), "site-x", &sentinel, &key)
        .publish(&js)
        .await;
    wait_until(LONG, "the sentinel at B", || async {
        last_of(&rb, &names.alerts(), &uid("late-sentinel")).await
    })
    .await;
    let copies: Vec<Value> = stream_values(&rb, &names.alerts())
        .await
        .into_iter()
        .filter(|d| d["id"] == id.as_str())
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "the older revision was not applied: {copies:?}"
    );
    assert_eq!(copies[0]["status"], "closed");
    let stale = b
        .ops()
        .metric(
            "aurora_federation_gateway_stale_revisions_total",
            &[("subject", "alerts")],
        )
        .await;
    assert!(stale >= 1.0, "the stale revision is counted: {stale}");

    b.stop().await;
    cleanup(&names, nats, &[SITE_B]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_here_is_not_overwritten_by_an_older_revision_arriving_later() {
    let names = aurora_testkit::names();
    let nats = aurora_testkit::NATS_URL;
    let keys = Keys::new(&[("site-b", 2), ("site-x", 9)]);
    let flags = keys.flags("site-b");
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let b = Gateway::start(args(&names, "site-b", SITE_B, nats, &extra)).await;
    let rb = redis(SITE_B).await;
    let js = jetstream_ctx(nats).await;
    let key = Keys::key(9);
    let subject = names.nats_subject(FederatedKind::Alerts);
    let id = uid("mine-last");
    let alerts = names.alerts();

    let first = revised(&alert("mine-last"), "acknowledged", "2024-01-15T11:00:00Z");
    Outgoing::signed(subject.clone(), "site-x", &first, &key)
        .publish(&js)
        .await;
    let landed = wait_until(LONG, "site-x's alert at B", || async {
        last_of(&rb, &alerts, &id).await
    })
    .await;
    // Changed at B, and exported (so recorded as B's).
    xadd_json(
        &rb,
        &alerts,
        &revised(&landed, "closed", "2024-01-15T13:00:00Z"),
    )
    .await;
    wait_until(LONG, "B's change on the wire", || async {
        (stream_len(nats, &names.nats_stream()).await == 2).then_some(())
    })
    .await;
    // site-x's own later change, made before it saw B's: older than B's.
    let crossing = revised(&alert("mine-last"), "investigating", "2024-01-15T12:00:00Z");
    Outgoing::signed(subject.clone(), "site-x", &crossing, &key)
        .publish(&js)
        .await;
    let sentinel = alert("mine-last-sentinel");
    Outgoing::signed(subject.clone(), "site-x", &sentinel, &key)
        .publish(&js)
        .await;
    wait_until(LONG, "the sentinel at B", || async {
        last_of(&rb, &alerts, &uid("mine-last-sentinel")).await
    })
    .await;
    let last = last_of(&rb, &alerts, &id).await.unwrap();
    assert_eq!(last["status"], "closed", "B's change stays: {last}");
    assert_eq!(last["updated_at"], "2024-01-15T13:00:00Z");

    b.stop().await;
    cleanup(&names, nats, &[SITE_B]).await;
}

/// `INFO memory`'s used_memory and the number of keys of a Redis, the ledger's left out.
async fn memory(conn: &Conn) -> (u64, u64) {
    let mut conn = conn.clone();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    // The loss ledger's counts are one hash per stream and minute (they expire): their
    // number grows with the minutes a run spans, not with the messages, so they are left out.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let keys = keys.iter().filter(|k| !k.contains(":ledger:")).count() as u64;
    (used, keys)
}

const PAYLOAD: &[u8] =
    br#"{"id":"x","agent":"hunter","summary":"s","timestamp":"2024-01-15T10:30:00Z"}"#;

fn landing(i: u64) -> Landing {
    Landing {
        kind: FederatedKind::AgentResults,
        doc: format!("site-a:result-{i}"),
        stamp: Stamp {
            revision: i as i64,
            site: "site-a".into(),
            hash: "00".into(),
        },
        data: PAYLOAD.to_vec(),
        trace: None,
    }
}

/// Lands messages `from..to`, each a document of its own, a batch at a time; returns how
/// many were written.
async fn land(lander: &Lander, from: u64, to: u64) -> u64 {
    let mut written = 0;
    let mut i = from;
    while i < to {
        let end = (i + 4_096).min(to);
        let batch: Vec<Landing> = (i..end).map(landing).collect();
        let out = lander.land_batch(&batch).await.unwrap();
        written += out
            .iter()
            .filter(|l| matches!(l, Landed::Written(_)))
            .count() as u64;
        i = end;
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_imported_messages_leave_redis_memory_flat() {
    let server = RedisServer::start();
    let url = server.url();
    let conn = bus::connect(&url).await.unwrap();
    let names = aurora_testkit::names();
    // The local stream is trimmed to 1,000 entries and 10,000 documents' revisions are kept:
    // what is left to grow would be per-message state.
    let lander = Lander::new(
        conn.clone(),
        names.clone(),
        1_000,
        RevisionMemory {
            max_documents: 10_000,
            ttl: Duration::from_secs(7 * 86_400),
        },
    );
    const BATCH: u64 = 4_096;
    const WARM: u64 = 25 * BATCH;
    const TOTAL: u64 = 1_000_000;
    // Warm up past the bounds, then measure.
    let mut written = land(&lander, 0, WARM).await;
    let before = memory(&conn).await;
    written += land(&lander, WARM, TOTAL).await;
    let after = memory(&conn).await;
    let sent = TOTAL;
    assert_eq!(written, sent, "every message landed once");
    // A redelivery of a recent message is still recognised.
    assert_eq!(
        lander.land(&landing(sent - 1)).await.unwrap(),
        Landed::Duplicate
    );
    println!(
        "before: used_memory {} B, {} keys; after {} more messages: used_memory {} B, {} keys",
        before.0,
        before.1,
        TOTAL - WARM,
        after.0,
        after.1
    );
    assert_eq!(before.1, after.1, "no key per message");
    // A key per message would be some 90 MB here; allow 1 MiB of allocator noise (about
    // a byte per message).
    assert!(
        after.0 < before.0 + (1 << 20),
        "used_memory grew: {before:?} -> {after:?}"
    );
}
