//! The batched idempotent alert write against the real Redis: each alert once, whatever the
//! retries, in batches larger than one script call.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aurora_core::bus;
use aurora_core::model::{parse, Alert};
use aurora_testkit::REDIS_URL;
use bytes::Bytes;
use eve_ingest::alert_sink::AlertSink;
use eve_ingest::event::parse_line;
use eve_ingest::AlertMapping;

/// A stream entry: its id and its fields.
type Entry = (String, Vec<(String, Vec<u8>)>);

fn alert(i: usize) -> Alert {
    let line = format!(
        r#"{{"timestamp":"2024-01-15T10:30:00.000000+0000","event_type":"alert","src_ip":"8.8.8.8","alert":{{"signature":"test {i}","severity":2}},"n":{i}}}"#
    );
    let event = parse_line(Bytes::from(line)).unwrap();
    AlertMapping::default().to_alert(&event).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_alert_is_written_once_across_retries_and_script_calls() {
    let names = aurora_testkit::names();
    let mut conn = bus::connect(REDIS_URL).await.unwrap();
    let sink = AlertSink::new(
        conn.clone(),
        names.clone(),
        1_000_000,
        Duration::from_secs(60),
    );
    // More than one script call's worth, with an alert repeated inside the batch.
    let first: Vec<Alert> = (0..300).map(alert).collect();
    let mut refs: Vec<&Alert> = first.iter().collect();
    refs.push(&first[5]);
    let w = sink.write(&refs).await.unwrap();
    assert_eq!((w.new, w.duplicate), (300, 1));
    // A retry of part of it, with new ones mixed in: only the new ones are written.
    let second: Vec<Alert> = (250..400).map(alert).collect();
    let refs: Vec<&Alert> = second.iter().collect();
    let w = sink.write(&refs).await.unwrap();
    assert_eq!((w.new, w.duplicate), (100, 50));
    assert_eq!(sink.write(&[]).await.unwrap().new, 0);

    let stream = names.alerts();
    let entries: Vec<Entry> = {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        reply
            .ids
            .into_iter()
            .map(|id| {
                let fields = id
                    .map
                    .into_iter()
                    .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(v).unwrap()))
                    .collect();
                (id.id, fields)
            })
            .collect()
    };
    assert_eq!(entries.len(), 400);
    let mut ids = std::collections::HashSet::new();
    for (i, (_, fields)) in entries.iter().enumerate() {
        let (field, data) = &fields[0];
        assert_eq!(field, bus::DATA_FIELD);
        let back: Alert = parse(data).unwrap();
        assert_eq!(back.title, format!("test {i}"), "in order, each once");
        assert!(ids.insert(back.id));
    }
    // Each key holds its entry id and expires.
    let key = sink.dedup_key(&first[0]);
    let (value, ttl): (String, i64) = redis::pipe()
        .get(&key)
        .ttl(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, entries[0].0);
    assert!(ttl > 0 && ttl <= 60, "{ttl}");

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", names.namespace()))
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
