//! The loss ledger against a real Redis: every entry written is accounted for by each group
//! through consumers that fail, come back under their name, under a new name or never; a
//! stream trimmed past a lagging group shows the loss, named.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aurora_core::bus::{self, GroupConfig, GroupReader, OnceWrite, Producer};
use aurora_core::ledger::{self, GroupLedger, Window};
use aurora_testkit::prelude::{delete_namespace, names, REDIS_URL};

fn group(stream: &str, consumer: &str, dead: &str) -> GroupConfig {
    let mut cfg = GroupConfig::new(stream, "g", consumer, dead, "ledger-test");
    cfg.block = Duration::from_millis(50);
    cfg.claim_idle = Duration::from_millis(200);
    cfg.claim_every = Duration::from_millis(0);
    cfg.max_deliveries = 5;
    cfg
}

async fn reader(producer: &Producer, cfg: GroupConfig) -> GroupReader {
    let conn = bus::connect_blocking(REDIS_URL, cfg.block).await.unwrap();
    GroupReader::new(cfg, conn, producer.clone()).await.unwrap()
}

async fn account(conn: &bus::Conn, stream: &str) -> GroupLedger {
    ledger::group_ledger(conn, stream, "g", Window::last(Duration::from_secs(600)))
        .await
        .unwrap()
}

async fn write(p: &Producer, stream: &str, n: usize) {
    let docs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (stream.to_string(), format!("{{\"i\":{i}}}").into_bytes()))
        .collect();
    for chunk in docs.chunks(250) {
        p.publish_batch(chunk).await.unwrap();
    }
}

#[tokio::test]
async fn every_entry_is_accounted_for_while_in_flight_and_when_settled() {
    let n = names();
    let stream = n.alerts();
    let conn = bus::connect(REDIS_URL).await.unwrap();
    let p = Producer::new(conn.clone(), 100_000);
    let mut r = reader(&p, group(&stream, "c1", &n.deadletter("ledger-test"))).await;

    write(&p, &stream, 300).await;
    // Written at most once: a key seen again writes nothing and counts nothing.
    let once: Vec<String> = (0..20)
        .map(|i| format!("{}:once:{i}", n.namespace()))
        .collect();
    let items: Vec<OnceWrite> = once
        .iter()
        .map(|key| OnceWrite {
            key,
            stream: &stream,
            data: b"{}",
        })
        .collect();
    p.publish_once(&items, Duration::from_secs(60))
        .await
        .unwrap();
    p.publish_once(&items, Duration::from_secs(60))
        .await
        .unwrap();

    let before = account(&conn, &stream).await;
    assert_eq!(before.written, 320);
    assert_eq!(before.unread, 320);
    assert_eq!(before.unexplained, 0, "{before:?}");

    // 256 read: 200 handled, 6 dead-lettered, 50 held.
    let batch = r.next_batch().await.unwrap();
    assert_eq!(batch.len(), 256);
    let ids: Vec<&str> = batch[..200].iter().map(|e| e.id.as_str()).collect();
    r.ack(&ids).await.unwrap();
    r.ack(&ids).await.unwrap(); // a second ack of the same entries counts nothing
    for e in &batch[200..206] {
        r.dead_letter(e, "not wanted").await.unwrap();
    }
    r.dead_letter(&batch[200], "again").await.unwrap(); // settled already: nothing
    let mid = account(&conn, &stream).await;
    assert_eq!(
        (mid.done, mid.dead, mid.pending, mid.unread, mid.unexplained),
        (200, 6, 50, 64, 0),
        "{mid:?}"
    );
    let dead = bus::range(&mut conn.clone(), &n.deadletter("ledger-test"), "0-0", 100)
        .await
        .unwrap();
    assert_eq!(dead.len(), 6, "one record per dead-lettered entry");

    let rest: Vec<String> = batch[206..].iter().map(|e| e.id.clone()).collect();
    r.ack(&rest).await.unwrap();
    let more = r.next_batch().await.unwrap();
    let ids: Vec<&str> = more.iter().map(|e| e.id.as_str()).collect();
    r.ack(&ids).await.unwrap();
    let after = account(&conn, &stream).await;
    assert_eq!(
        (
            after.written,
            after.done,
            after.dead,
            after.in_flight(),
            after.unexplained
        ),
        (320, 314, 6, 0, 0),
        "{after:?}"
    );
    assert!(after.findings().is_empty());

    // The dead-letter stream counts what went to it.
    let dl = ledger::group_ledger(
        &conn,
        &n.deadletter("ledger-test"),
        "nobody",
        Window::last(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    assert_eq!(dl.written, 6);
    delete_namespace(&mut conn.clone(), &n).await;
}

#[tokio::test]
async fn consumers_that_die_come_back_or_never_do_leave_nothing_unexplained() {
    let n = names();
    let stream = n.alerts();
    let conn = bus::connect(REDIS_URL).await.unwrap();
    let p = Producer::new(conn.clone(), 100_000);
    write(&p, &stream, 600).await;

    // Three replicas each take a batch and die without acknowledging it.
    let mut cfg = group(&stream, "a", &n.deadletter("ledger-test"));
    cfg.batch = 200;
    for name in ["a", "b", "c"] {
        cfg.consumer = name.to_string();
        let mut r = reader(&p, cfg.clone()).await;
        assert_eq!(r.next_batch().await.unwrap().len(), 200);
    }
    let held = account(&conn, &stream).await;
    assert_eq!((held.pending, held.unexplained), (600, 0), "{held:?}");

    // `a` comes back under its name and handles its own entries.
    cfg.consumer = "a".into();
    let mut a = reader(&p, cfg.clone()).await;
    let own = a.next_batch().await.unwrap();
    assert_eq!(own.len(), 200);
    let ids: Vec<&str> = own.iter().map(|e| e.id.as_str()).collect();
    a.ack(&ids).await.unwrap();

    // `b` comes back as `d` (a new pod); `c` never comes back: `d` takes both over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cfg.consumer = "d".into();
    let mut d = reader(&p, cfg.clone()).await;
    let mut handled = 0;
    for _ in 0..20 {
        let batch = d.next_batch().await.unwrap();
        let ids: Vec<&str> = batch.iter().map(|e| e.id.as_str()).collect();
        handled += ids.len();
        d.ack(&ids).await.unwrap();
        if handled >= 400 {
            break;
        }
    }
    assert_eq!(handled, 400);
    let after = account(&conn, &stream).await;
    assert_eq!(
        (
            after.written,
            after.done,
            after.in_flight(),
            after.redelivered,
            after.unexplained
        ),
        (600, 600, 0, 600, 0),
        "{after:?}"
    );
    assert!(after.findings().is_empty(), "{:?}", after.findings());
    delete_namespace(&mut conn.clone(), &n).await;
}

#[tokio::test]
async fn a_stream_trimmed_past_a_lagging_group_shows_the_loss_named() {
    let n = names();
    let stream = n.alerts();
    let conn = bus::connect(REDIS_URL).await.unwrap();
    // A stream kept to about 100 entries.
    let p = Producer::new(conn.clone(), 100);
    let mut cfg = group(&stream, "slow", &n.deadletter("ledger-test"));
    cfg.batch = 50;
    let mut r = reader(&p, cfg).await;
    write(&p, &stream, 60).await;
    // The group holds 50 entries, then 2,000 more are written while it does not read.
    let held = r.next_batch().await.unwrap();
    assert_eq!(held.len(), 50);
    write(&p, &stream, 2_000).await;

    let len: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert!(len < 400, "the stream was trimmed (length {len})");
    let trimmed_unread = 2_010 - len;

    let lost = account(&conn, &stream).await;
    assert_eq!(lost.written, 2_060);
    assert_eq!(lost.trimmed as u64, trimmed_unread, "{lost:?}");
    assert_eq!(lost.pending, 50, "the held entries are still pending");
    assert_eq!(lost.unread as u64, len, "{lost:?}");
    assert_eq!(lost.unexplained, 0, "{lost:?}");
    let findings = lost.findings();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(
        findings[0].contains("trimmed by the stream's length limit before the group read them"),
        "{findings:?}"
    );
    // Counted once, however often it is looked at (every replica and the CLI look).
    assert_eq!(account(&conn, &stream).await.trimmed, lost.trimmed);
    assert_eq!(
        ledger::trimmed_total(&conn, &stream, "g").await as i64,
        lost.trimmed,
        "what the lag gauge leaves out"
    );

    // The entries it held were trimmed too: taking them over finds them gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut handled = 0;
    for _ in 0..200 {
        let batch = r.next_batch().await.unwrap();
        let ids: Vec<&str> = batch.iter().map(|e| e.id.as_str()).collect();
        handled += ids.len();
        r.ack(&ids).await.unwrap();
        let now = account(&conn, &stream).await;
        if now.in_flight() == 0 {
            break;
        }
    }
    let end = account(&conn, &stream).await;
    assert_eq!(end.vanished, 50, "{end:?}");
    assert_eq!(end.done as usize, handled);
    assert_eq!(end.unexplained, 0, "{end:?}");
    assert_eq!(end.in_flight(), 0, "{end:?}");
    assert!(
        end.findings()
            .iter()
            .any(|f| f.contains("while the group held them")),
        "{:?}",
        end.findings()
    );
    delete_namespace(&mut conn.clone(), &n).await;
}

#[tokio::test]
async fn entries_removed_or_written_outside_the_ledger_are_named_unexplained() {
    let n = names();
    let stream = n.alerts();
    let conn = bus::connect(REDIS_URL).await.unwrap();
    let p = Producer::new(conn.clone(), 100_000);
    let mut r = reader(&p, group(&stream, "c", &n.deadletter("ledger-test"))).await;
    write(&p, &stream, 10).await;
    // Two entries deleted by hand before they were read, one written by hand.
    let entries = bus::range(&mut conn.clone(), &stream, "0-0", 10)
        .await
        .unwrap();
    redis::cmd("XDEL")
        .arg(&stream)
        .arg(&entries[3].id)
        .arg(&entries[4].id)
        .query_async::<u64>(&mut conn.clone())
        .await
        .unwrap();
    let gone = account(&conn, &stream).await;
    assert_eq!(gone.unexplained, 2, "{gone:?}");
    assert!(
        gone.findings()[0].contains("neither handled"),
        "{:?}",
        gone.findings()
    );

    redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("data")
        .arg("{}")
        .query_async::<String>(&mut conn.clone())
        .await
        .unwrap();
    let batch = r.next_batch().await.unwrap();
    let ids: Vec<&str> = batch.iter().map(|e| e.id.as_str()).collect();
    r.ack(&ids).await.unwrap();
    let end = account(&conn, &stream).await;
    assert_eq!(
        (end.written, end.done, end.unexplained),
        (10, 9, 1),
        "{end:?}"
    );
    delete_namespace(&mut conn.clone(), &n).await;
}

#[tokio::test]
async fn a_replica_back_under_its_name_finds_its_trimmed_entries_counted_as_lost() {
    let n = names();
    let stream = n.alerts();
    let conn = bus::connect(REDIS_URL).await.unwrap();
    let p = Producer::new(conn.clone(), 100);
    let mut cfg = group(&stream, "same", &n.deadletter("ledger-test"));
    cfg.batch = 25; // two pages of own pending entries, both trimmed
    cfg.claim_idle = Duration::from_secs(60); // nobody takes them over: only `same` comes back
    let mut r = reader(&p, cfg.clone()).await;
    write(&p, &stream, 50).await;
    assert_eq!(r.next_batch().await.unwrap().len(), 25);
    assert_eq!(r.next_batch().await.unwrap().len(), 25);
    drop(r);
    write(&p, &stream, 2_000).await;

    let mut back = reader(&p, cfg).await;
    let mut handled = 0;
    for _ in 0..100 {
        let batch = back.next_batch().await.unwrap();
        let ids: Vec<&str> = batch.iter().map(|e| e.id.as_str()).collect();
        handled += ids.len();
        back.ack(&ids).await.unwrap();
        if account(&conn, &stream).await.in_flight() == 0 {
            break;
        }
    }
    let end = account(&conn, &stream).await;
    assert_eq!(end.vanished, 50, "{end:?}");
    assert_eq!(end.dead, 0, "{end:?}");
    assert_eq!(end.done as usize, handled);
    assert_eq!((end.in_flight(), end.unexplained), (0, 0), "{end:?}");
    delete_namespace(&mut conn.clone(), &n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_adds_up_while_entries_are_written_and_settled() {
    let n = names();
    let stream = n.alerts();
    let conn = bus::connect(REDIS_URL).await.unwrap();
    let p = Producer::new(conn.clone(), 100_000);
    let mut r = reader(&p, group(&stream, "busy", &n.deadletter("ledger-test"))).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let (p, stream, stop) = (p.clone(), stream.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                write(&p, &stream, 20).await;
            }
        })
    };
    let reading = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let batch = r.next_batch().await.unwrap();
                let ids: Vec<&str> = batch.iter().map(|e| e.id.as_str()).collect();
                r.ack(&ids).await.unwrap();
            }
        })
    };
    // Every look, taken while both run, balances.
    for _ in 0..30 {
        let now = account(&conn, &stream).await;
        assert_eq!(now.unexplained, 0, "{now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writing.await.unwrap();
    reading.await.unwrap();
    let end = account(&conn, &stream).await;
    assert!(end.written > 0 && end.done > 0, "{end:?}");
    assert_eq!(end.unexplained, 0, "{end:?}");
    delete_namespace(&mut conn.clone(), &n).await;
}
