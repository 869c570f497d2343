//! The bus behind Redis Sentinel: a primary SIGKILLed under writes and group reads, the
//! replica promoted, the old primary back as a replica. With the replica wait on, every
//! acknowledged write is on the new primary; the group's pending entries and its position
//! survive the failover; nothing restarts.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aurora_core::bus::{self, GroupConfig, GroupReader, Producer, ReplicaWait};
use aurora_testkit::ha::SentinelSet;
use aurora_testkit::names;
use aurora_testkit::redis::stream_entries;

const TOTAL: u64 = 6_000;
const BATCH: u64 = 50;

/// Numbers of the entries in `stream` on the node of `port`.
async fn numbers_on(port: u16, stream: &str) -> Vec<u64> {
    let mut conn = bus::connect(&SentinelSet::node_url(port)).await.unwrap();
    stream_entries(&mut conn, stream)
        .await
        .iter()
        .filter_map(|(_, data)| std::str::from_utf8(data).ok()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_loses_no_acknowledged_write_and_groups_go_on() {
    let set = SentinelSet::start().await;
    let n = names();
    let stream = n.alerts();
    let wait = Some(ReplicaWait {
        replicas: 1,
        timeout: Duration::from_secs(1),
    });
    let conn = bus::connect(&set.url())
        .await
        .unwrap()
        .with_replica_wait(wait);
    let first_primary = conn.server();
    let producer = Producer::new(conn.clone(), 1_000_000);

    // A group reader that acks what it reads, but leaves every tenth entry pending.
    let mut cfg = GroupConfig::new(
        &stream,
        "g",
        "c1",
        &n.deadletter("sentinel-test"),
        "sentinel-test",
    );
    cfg.block = Duration::from_millis(100);
    cfg.claim_idle = Duration::from_secs(3600);
    let read_conn = bus::connect_blocking(&set.url(), cfg.block).await.unwrap();
    let mut reader = GroupReader::new(cfg, read_conn, producer.clone())
        .await
        .unwrap();
    let read: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let read_errors = Arc::new(AtomicU64::new(0));
    let reading = {
        let (read, done, read_errors) = (read.clone(), done.clone(), read_errors.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let batch = match reader.next_batch().await {
                    Ok(b) => b,
                    Err(e) => {
                        assert!(e.is_connection(), "a failover error is retried: {e}");
                        read_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let mut acks = Vec::new();
                for entry in &batch {
                    let number: u64 = std::str::from_utf8(entry.data.as_deref().unwrap())
                        .unwrap()
                        .parse()
                        .unwrap();
                    *read.lock().unwrap().entry(number).or_default() += 1;
                    if !number.is_multiple_of(10) {
                        acks.push(entry.id.clone());
                    }
                }
                while let Err(e) = reader.ack(&acks).await {
                    assert!(e.is_connection(), "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            reader
        })
    };

    // Writes in batches while, on the side, the primary is SIGKILLed once a third is written;
    // the old primary comes back (empty) once the Sentinels promoted the replica, so that
    // writes find a replica to wait for again. A batch counts as acknowledged only when
    // publish_batch says so.
    let written = Arc::new(AtomicU64::new(0));
    let failover = {
        let written = written.clone();
        let mut set = set;
        tokio::spawn(async move {
            while written.load(Ordering::Relaxed) < TOTAL / 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let port = set.kill_primary().await;
            let new = set
                .wait_primary(|p| p != port, Duration::from_secs(30))
                .await;
            set.start_node(port).await;
            set.wait_replicas(new, 1, Duration::from_secs(30)).await;
            (set, port)
        })
    };
    let mut acknowledged = BTreeSet::new();
    let mut write_errors = 0u64;
    let mut next = 0u64;
    while next < TOTAL {
        let items: Vec<(String, Vec<u8>)> = (next..next + BATCH)
            .map(|i| (stream.clone(), i.to_string().into_bytes()))
            .collect();
        match producer.publish_batch(&items).await {
            Ok(_) => {
                acknowledged.extend(next..next + BATCH);
                next += BATCH;
                written.store(next, Ordering::Relaxed);
            }
            Err(e) => {
                assert!(e.is_connection(), "a failover error is retried: {e}");
                write_errors += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let (set, killed) = failover.await.unwrap();
    let new_primary = set.primary_port().await.unwrap();
    assert_ne!(new_primary, killed);
    assert_eq!(conn.server(), format!("127.0.0.1:{new_primary}"));
    assert_ne!(conn.server(), first_primary);

    // Zero lost: every acknowledged number is on the new primary.
    let on_primary = numbers_on(new_primary, &stream).await;
    let present: BTreeSet<u64> = on_primary.iter().copied().collect();
    let lost: Vec<u64> = acknowledged.difference(&present).copied().collect();
    let duplicated = on_primary.len() - present.len();
    println!(
        "failover: {} acknowledged, {} lost, {duplicated} duplicated, {write_errors} write errors, {} read errors",
        acknowledged.len(),
        lost.len(),
        read_errors.load(Ordering::Relaxed)
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");

    // The group read everything and its pending entries (every tenth) are still pending.
    aurora_testkit::wait_until(
        Duration::from_secs(20),
        "the group read every entry",
        || {
            let read = read.clone();
            async move {
                (0..TOTAL)
                    .all(|i| read.lock().unwrap().contains_key(&i))
                    .then_some(())
            }
        },
    )
    .await;
    done.store(true, Ordering::Relaxed);
    let _reader = reading.await.unwrap();
    let mut check = bus::connect(&set.url()).await.unwrap();
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("g")
        .query_async(&mut check)
        .await
        .unwrap();
    assert!(
        pending.count() as u64 >= TOTAL / 10,
        "the entries left pending before and after the failover are still pending: {}",
        pending.count()
    );
    redis::cmd("DEL")
        .arg(&stream)
        .query_async::<()>(&mut check)
        .await
        .unwrap();
}
