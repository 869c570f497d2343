//! The Redis Streams bus against a real Redis.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aurora_core::bus::{self, GroupConfig, GroupReader, Producer};
use aurora_core::model::{self, DeadLetter};
use aurora_testkit::{names, RedisServer, REDIS_URL};

async fn producer(url: &str) -> Producer {
    Producer::new(bus::connect(url).await.unwrap(), 10_000)
}

fn group(stream: &str, consumer: &str, dead: &str) -> GroupConfig {
    let mut cfg = GroupConfig::new(stream, "g", consumer, dead, "bus-test");
    cfg.block = Duration::from_millis(100);
    cfg.claim_idle = Duration::from_millis(200);
    cfg.claim_every = Duration::from_millis(0);
    cfg.max_deliveries = 3;
    cfg
}

/// Entries of `stream` pending in group `g`.
async fn pending_in_group(conn: &mut bus::Conn, stream: &str) -> usize {
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg("g")
        .query_async(conn)
        .await
        .unwrap();
    pending.count()
}

/// Deletes what a test wrote.
async fn delete(conn: &mut bus::Conn, keys: &[&str]) {
    redis::cmd("DEL")
        .arg(keys)
        .query_async::<()>(conn)
        .await
        .unwrap();
}

async fn reader(url: &str, cfg: GroupConfig) -> GroupReader {
    let conn = bus::connect_blocking(url, cfg.block).await.unwrap();
    GroupReader::new(cfg, conn, producer(url).await)
        .await
        .unwrap()
}

#[tokio::test]
async fn batches_keep_order_and_readers_without_a_group_see_everything() {
    let n = names();
    let p = producer(REDIS_URL).await;
    let docs: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| (n.alerts(), format!("{{\"i\":{i}}}").into_bytes()))
        .chain([(n.audit(), b"{\"a\":1}".to_vec())])
        .collect();
    let ids = p.publish_batch(&docs).await.unwrap();
    assert_eq!(ids.len(), 51);

    let mut conn = bus::connect(REDIS_URL).await.unwrap();
    let all = bus::range(&mut conn, &n.alerts(), "0-0", 1000)
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = all.iter().map(|e| e.data.clone().unwrap()).collect();
    let want: Vec<Vec<u8>> = docs[..50].iter().map(|d| d.1.clone()).collect();
    assert_eq!(got, want, "entries of one stream keep their order");

    let after = bus::range(&mut conn, &n.alerts(), &ids[47], 1000)
        .await
        .unwrap();
    assert_eq!(after.len(), 2, "range is strictly after the given id");

    let tailed = bus::tail(
        &mut conn,
        &[(n.alerts(), ids[48].clone()), (n.audit(), "0-0".into())],
        100,
        None,
    )
    .await
    .unwrap();
    assert_eq!(tailed.len(), 2);
    assert_eq!(tailed[0].id, ids[49]);
    assert_eq!(tailed[1].stream, n.audit());
    assert_eq!(bus::last_id(&mut conn, &n.alerts()).await.unwrap(), ids[49]);
    assert_eq!(bus::last_id(&mut conn, &n.iocs()).await.unwrap(), "0-0");
    delete(&mut conn, &[&n.alerts(), &n.audit()]).await;
}

#[tokio::test]
async fn streams_are_trimmed_to_about_maxlen() {
    let n = names();
    let p = Producer::new(bus::connect(REDIS_URL).await.unwrap(), 100);
    let docs: Vec<(String, Vec<u8>)> = (0..2000).map(|_| (n.alerts(), b"{}".to_vec())).collect();
    p.publish_batch(&docs).await.unwrap();
    let mut conn = bus::connect(REDIS_URL).await.unwrap();
    let len: u64 = redis::cmd("XLEN")
        .arg(n.alerts())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(len < 400, "stream kept {len} entries with MAXLEN ~ 100");
    delete(&mut conn, &[&n.alerts()]).await;
}

#[tokio::test]
async fn a_dead_consumers_entries_are_taken_over_and_a_restarted_one_finds_its_own() {
    let n = names();
    let stream = n.cps_alerts();
    let dead = n.deadletter("bus-test");
    let p = producer(REDIS_URL).await;
    let mut a = reader(REDIS_URL, group(&stream, "a", &dead)).await;
    for i in 0..5 {
        p.publish(&stream, format!("{{\"i\":{i}}}").as_bytes())
            .await
            .unwrap();
    }
    let first = a.next_batch().await.unwrap();
    assert_eq!(first.len(), 5);
    assert!(first.iter().all(|e| e.deliveries == 1));
    drop(a); // "a" dies holding five unacknowledged entries.

    // "a" restarted under the same name reads its own pending entries first.
    let mut a_again = reader(REDIS_URL, group(&stream, "a", &dead)).await;
    let own = a_again.next_batch().await.unwrap();
    assert_eq!(own.len(), 5);
    assert!(own.iter().all(|e| e.deliveries == 2), "{own:?}");
    drop(a_again);

    // "b" takes them over once they have been idle long enough.
    let mut b = reader(REDIS_URL, group(&stream, "b", &dead)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let claimed = b.next_batch().await.unwrap();
    assert_eq!(claimed.len(), 5, "{claimed:?}");
    assert!(claimed.iter().all(|e| e.deliveries == 3));
    let ids: Vec<String> = claimed.iter().map(|e| e.id.clone()).collect();
    b.ack(&ids).await.unwrap();
    assert!(b.next_batch().await.unwrap().is_empty());

    let mut conn = bus::connect(REDIS_URL).await.unwrap();
    assert_eq!(pending_in_group(&mut conn, &stream).await, 0);
    delete(&mut conn, &[&stream, &dead]).await;
}

#[tokio::test]
async fn poison_entries_and_entries_without_data_are_dead_lettered_with_the_reason() {
    let n = names();
    let stream = n.cps_telemetry();
    let dead = n.deadletter("bus-test");
    let p = producer(REDIS_URL).await;
    let mut conn = bus::connect(REDIS_URL).await.unwrap();
    let poison_id = p.publish(&stream, b"{\"poison\":true}").await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("other")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();

    let mut r = reader(REDIS_URL, group(&stream, "c", &dead)).await;
    let mut deliveries = Vec::new();
    // Never acknowledged: delivered, reclaimed after 200 ms idle, ... until dead-lettered.
    for _ in 0..40 {
        for e in r.next_batch().await.unwrap() {
            assert_eq!(
                e.id, poison_id,
                "the entry without data is never handed out"
            );
            deliveries.push(e.deliveries);
        }
        let len: u64 = redis::cmd("XLEN")
            .arg(&dead)
            .query_async(&mut conn)
            .await
            .unwrap();
        if len == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(deliveries, vec![1, 2, 3], "handed out max_deliveries times");
    let dl = bus::range(&mut conn, &dead, "0-0", 10).await.unwrap();
    assert_eq!(dl.len(), 2);
    let records: Vec<DeadLetter> = dl
        .iter()
        .map(|e| model::parse(e.data.as_deref().unwrap()).unwrap())
        .collect();
    assert!(records[0].reason.contains("no `data` field"), "{records:?}");
    assert!(
        records[1].reason.contains("delivered 4 times"),
        "{records:?}"
    );
    assert_eq!(records[1].source_id.as_deref(), Some(poison_id.as_str()));
    assert_eq!(records[1].raw().unwrap(), b"{\"poison\":true}");
    assert_eq!(records[1].source, stream);
    assert_eq!(
        pending_in_group(&mut conn, &stream).await,
        0,
        "dead letters are acknowledged"
    );
    delete(&mut conn, &[&stream, &dead]).await;
}

#[tokio::test]
async fn a_reader_survives_a_redis_restart_that_loses_its_group() {
    let mut server = RedisServer::start();
    let url = server.url();
    let n = names();
    let stream = n.alerts();
    let dead = n.deadletter("bus-test");
    let mut r = reader(&url, group(&stream, "d", &dead)).await;
    let p = producer(&url).await;
    p.publish(&stream, b"{\"before\":1}").await.unwrap();
    let got = r.next_batch().await.unwrap();
    assert_eq!(got.len(), 1);
    r.ack(&[got[0].id.clone()]).await.unwrap();

    // The server keeps nothing on disk: after the restart stream and group are gone.
    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut published = false;
    let mut after = Vec::new();
    while after.is_empty() && std::time::Instant::now() < deadline {
        if !published {
            published = p.publish(&stream, b"{\"after\":1}").await.is_ok();
        }
        match r.next_batch().await {
            Ok(batch) => after.extend(batch),
            Err(e) => {
                assert!(e.is_connection(), "unexpected error {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(after.len(), 1, "the reader recreated its group and read on");
    assert_eq!(after[0].data.as_deref(), Some(&b"{\"after\":1}"[..]));
}

#[tokio::test]
async fn publish_once_writes_each_key_once_even_after_scripts_are_flushed() {
    let n = names();
    let p = producer(REDIS_URL).await;
    let k1 = n.state_key("bus-test", "once:1");
    let k2 = n.state_key("bus-test", "once:2");
    let stream = n.alerts();
    let batch = [
        bus::OnceWrite {
            key: &k1,
            stream: &stream,
            data: b"{\"n\":1}",
        },
        bus::OnceWrite {
            key: &k2,
            stream: &stream,
            data: b"{\"n\":2}",
        },
        bus::OnceWrite {
            key: &k1,
            stream: &stream,
            data: b"{\"n\":1}",
        },
    ];
    let ids = p
        .publish_once(&batch, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(ids[0].is_some() && ids[1].is_some());
    assert_eq!(ids[2], None, "the same key twice in one batch writes once");
    let mut conn = bus::connect(REDIS_URL).await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let again = p
        .publish_once(&batch[..2], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(again, vec![None, None], "a retry writes nothing");
    let entries = bus::range(&mut conn, &stream, "0-0", 10).await.unwrap();
    assert_eq!(entries.len(), 2);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&k1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60, "keys expire ({ttl})");
    delete(&mut conn, &[&stream, &k1, &k2]).await;
}

#[tokio::test]
async fn own_pending_entries_are_handed_out_once_per_pass_even_when_acked_late() {
    let n = names();
    let stream = n.cps_commands();
    let dead = n.deadletter("bus-test");
    let p = producer(REDIS_URL).await;
    let mut cfg = group(&stream, "e", &dead);
    cfg.batch = 2;
    cfg.claim_every = Duration::from_secs(3600);
    let mut first = reader(REDIS_URL, cfg.clone()).await;
    for i in 0..5 {
        p.publish(&stream, format!("{{\"i\":{i}}}").as_bytes())
            .await
            .unwrap();
    }
    let mut got = 0;
    while got < 5 {
        got += first.next_batch().await.unwrap().len();
    }
    drop(first); // Dies with five unacknowledged entries.

    // The restarted consumer pipelines: it acknowledges only after reading everything.
    let mut again = reader(REDIS_URL, cfg).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.extend(again.next_batch().await.unwrap());
    }
    let ids: Vec<&str> = seen.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        5,
        "each pending entry once, not again and again: {ids:?}"
    );
    assert!(seen.iter().all(|e| e.deliveries == 2), "{seen:?}");
    let acker = again.acker();
    acker.ack(&ids).await.unwrap();
    let mut conn = bus::connect(REDIS_URL).await.unwrap();
    assert_eq!(pending_in_group(&mut conn, &stream).await, 0);
    delete(&mut conn, &[&stream]).await;
}

#[tokio::test]
async fn publish_once_spans_several_script_calls_and_streams() {
    let n = names();
    let p = producer(REDIS_URL).await;
    let keys: Vec<String> = (0..600)
        .map(|i| n.state_key("bus-test", &format!("many:{i}")))
        .collect();
    let streams = [n.alerts(), n.iocs()];
    let docs: Vec<Vec<u8>> = (0..600)
        .map(|i| format!("{{\"i\":{i}}}").into_bytes())
        .collect();
    let items: Vec<bus::OnceWrite<'_>> = (0..600)
        .map(|i| bus::OnceWrite {
            key: &keys[i],
            stream: &streams[i % 2],
            data: &docs[i],
        })
        .collect();
    let ids = p
        .publish_once(&items, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ids.len(), 600);
    assert!(ids.iter().all(Option::is_some));
    let again = p
        .publish_once(&items[250..300], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(again.iter().all(Option::is_none));
    let mut conn = bus::connect(REDIS_URL).await.unwrap();
    for s in &streams {
        let len: u64 = redis::cmd("XLEN")
            .arg(s)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 300);
    }
    let mut del = redis::cmd("DEL");
    del.arg(&streams[0]).arg(&streams[1]);
    for k in &keys {
        del.arg(k);
    }
    del.query_async::<()>(&mut conn).await.unwrap();
}

/// The consumer names of group `g`.
async fn consumers_of(conn: &mut bus::Conn, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg("g")
        .query_async(conn)
        .await
        .unwrap();
    let mut names: Vec<String> = reply.consumers.into_iter().map(|c| c.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_gone_consumer_has_its_entries_taken_over_and_is_then_removed_from_the_group() {
    let n = names();
    let stream = n.cps_telemetry();
    let dead = n.deadletter("bus-test");
    let p = producer(REDIS_URL).await;
    let mut conn = bus::connect(REDIS_URL).await.unwrap();
    let mut cfg = group(&stream, "replaced", &dead);
    cfg.forget_idle = Duration::from_millis(300);
    // A replica read two entries and was replaced under a new name before acknowledging.
    let mut gone = reader(REDIS_URL, cfg.clone()).await;
    let ids = [
        p.publish(&stream, b"{\"n\":1}").await.unwrap(),
        p.publish(&stream, b"{\"n\":2}").await.unwrap(),
    ];
    assert_eq!(gone.next_batch().await.unwrap().len(), 2);
    drop(gone);
    // An idle consumer that holds nothing (a scaled-down replica) is gone too.
    let mut idle_cfg = cfg.clone();
    idle_cfg.consumer = "scaled-down".into();
    let mut idle = reader(REDIS_URL, idle_cfg).await;
    assert!(idle.next_batch().await.unwrap().is_empty());
    drop(idle);
    assert_eq!(
        consumers_of(&mut conn, &stream).await,
        vec!["replaced".to_string(), "scaled-down".to_string()]
    );

    let mut live_cfg = cfg.clone();
    live_cfg.consumer = "new-pod".into();
    let mut live = reader(REDIS_URL, live_cfg).await;
    let mut taken = Vec::new();
    for _ in 0..40 {
        let batch = live.next_batch().await.unwrap();
        let batch_ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        live.ack(&batch_ids).await.unwrap();
        taken.extend(batch_ids);
        if taken.len() == 2 && consumers_of(&mut conn, &stream).await == vec!["new-pod".to_string()]
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        taken,
        ids.to_vec(),
        "the gone consumer's entries were taken over"
    );
    assert_eq!(
        consumers_of(&mut conn, &stream).await,
        vec!["new-pod".to_string()],
        "only the live consumer is left"
    );
    assert_eq!(pending_in_group(&mut conn, &stream).await, 0);
    delete(&mut conn, &[&stream, &dead]).await;
}
