//! Redis as a test sees it: documents of streams and lists read and written, dead-letter
//! records, and a namespace's keys deleted.

use aurora_core::bus::{self, Conn};
use aurora_core::model::DeadLetter;
use aurora_core::Names;
use serde_json::Value;

use crate::{wait_until, WAIT};

/// A connection to `url` (with its database index).
pub async fn redis(url: &str) -> Conn {
    bus::connect(url)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url}: {e}"))
}

/// Every entry of a stream, oldest first: (entry id, document). An entry whose `data` is not
/// JSON is returned as a JSON string of its lossy text.
pub async fn stream_docs(conn: &mut Conn, stream: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut after = "0-0".to_string();
    loop {
        let batch = bus::range(conn, stream, &after, 1000)
            .await
            .expect("XRANGE");
        let Some(last) = batch.last() else { break };
        after = last.id.clone();
        for e in batch {
            let data = e.data.unwrap_or_default();
            let doc = serde_json::from_slice(&data)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&data).into_owned()));
            out.push((e.id, doc));
        }
    }
    out
}

/// Waits (up to [`WAIT`]) until `stream` holds at least `n` entries; returns them all.
pub async fn wait_stream_docs(
    conn: &Conn,
    stream: &str,
    n: usize,
    what: &str,
) -> Vec<(String, Value)> {
    wait_until(WAIT, what, || {
        let mut conn = conn.clone();
        async move {
            let docs = stream_docs(&mut conn, stream).await;
            (docs.len() >= n).then_some(docs)
        }
    })
    .await
}

/// Waits (up to [`WAIT`]) until `stream` holds at least `n` entries; its length.
pub async fn wait_xlen(conn: &Conn, stream: &str, n: u64, what: &str) -> u64 {
    wait_until(WAIT, what, || {
        let mut conn = conn.clone();
        async move {
            let len = xlen(&mut conn, stream).await;
            (len >= n).then_some(len)
        }
    })
    .await
}

/// The records of a dead-letter stream, oldest first.
pub async fn dead_letters(conn: &mut Conn, stream: &str) -> Vec<DeadLetter> {
    stream_docs(conn, stream)
        .await
        .into_iter()
        .map(|(_, d)| {
            serde_json::from_value(d.clone())
                .unwrap_or_else(|e| panic!("not a DeadLetter record ({e}): {d}"))
        })
        .collect()
}

pub async fn xlen(conn: &mut Conn, stream: &str) -> u64 {
    ::redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .expect("XLEN")
}

pub async fn llen(conn: &mut Conn, key: &str) -> u64 {
    ::redis::cmd("LLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("LLEN")
}

/// Every element of a list, as JSON (left to right); one that is not JSON as a JSON string
/// of its lossy text.
pub async fn list_docs(conn: &mut Conn, key: &str) -> Vec<Value> {
    let items: Vec<Vec<u8>> = ::redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("LRANGE");
    items
        .iter()
        .map(|b| {
            serde_json::from_slice(b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
        })
        .collect()
}

/// LPUSH, as Suricata's redis output does.
pub async fn lpush(conn: &mut Conn, key: &str, items: &[Vec<u8>]) {
    if items.is_empty() {
        return;
    }
    let mut cmd = ::redis::cmd("LPUSH");
    cmd.arg(key);
    for i in items {
        cmd.arg(i.as_slice());
    }
    cmd.query_async::<u64>(conn).await.expect("LPUSH");
}

/// XADD one document (`data` field); its entry id.
pub async fn xadd(conn: &mut Conn, stream: &str, doc: &[u8]) -> String {
    ::redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(bus::DATA_FIELD)
        .arg(doc)
        .query_async(conn)
        .await
        .expect("XADD")
}

/// Deletes every key of the namespace (`<namespace>:*`, found with SCAN) on this connection's
/// database; errors are ignored (a clean-up never fails a test).
pub async fn delete_namespace(conn: &mut Conn, names: &Names) {
    let pattern = format!("{}:*", names.namespace());
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async::<(u64, Vec<String>)>(conn)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _ = ::redis::cmd("DEL")
                .arg(&keys)
                .query_async::<u64>(conn)
                .await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}
