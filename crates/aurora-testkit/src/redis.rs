//! Redis as a test sees it: documents of streams and lists read and written, dead-letter
//! records, and a namespace's keys deleted.

use aurora_core::bus::{self, Conn};
use aurora_core::model::{parse, DeadLetter, Message};
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
    stream_entries(conn, stream)
        .await
        .into_iter()
        .map(|(id, data)| {
            let doc = serde_json::from_slice(&data)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&data).into_owned()));
            (id, doc)
        })
        .collect()
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

/// The documents of a stream, oldest first, without their entry ids (see [`stream_docs`]).
pub async fn stream_values(conn: &Conn, stream: &str) -> Vec<Value> {
    stream_docs(&mut conn.clone(), stream)
        .await
        .into_iter()
        .map(|(_, doc)| doc)
        .collect()
}

/// Every entry of a stream, oldest first: (entry id, its `data` bytes).
pub async fn stream_entries(conn: &mut Conn, stream: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut after = "0-0".to_string();
    loop {
        let batch = bus::range(conn, stream, &after, 1000)
            .await
            .expect("XRANGE");
        let Some(last) = batch.last() else { break };
        after = last.id.clone();
        out.extend(
            batch
                .into_iter()
                .map(|e| (e.id, e.data.unwrap_or_default())),
        );
    }
    out
}

/// The documents of a stream parsed (and validated) as messages of type `T`, oldest first;
/// fails the test on one that is not a valid `T`.
pub async fn stream_records<T: Message>(conn: &Conn, stream: &str) -> Vec<T> {
    stream_entries(&mut conn.clone(), stream)
        .await
        .into_iter()
        .map(|(id, data)| {
            parse(&data).unwrap_or_else(|e| {
                panic!("{stream} {id}: {e}: {}", String::from_utf8_lossy(&data))
            })
        })
        .collect()
}

/// Waits (up to [`WAIT`]) until `stream` holds at least `n` documents for which `pred`
/// holds; returns those documents, oldest first.
pub async fn wait_matching(
    conn: &Conn,
    stream: &str,
    n: usize,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    wait_until(WAIT, what, || async {
        let found: Vec<Value> = stream_values(conn, stream)
            .await
            .into_iter()
            .filter(|d| pred(d))
            .collect();
        (found.len() >= n).then_some(found)
    })
    .await
}

/// Waits (up to [`WAIT`]) until `stream` holds at least `n` entries; its length.
pub async fn wait_xlen(conn: &Conn, stream: &str, n: u64, what: &str) -> u64 {
    wait_xlen_within(conn, stream, n, WAIT, what).await
}

/// [`wait_xlen`] with a deadline of the test's choosing (a flood takes longer).
pub async fn wait_xlen_within(
    conn: &Conn,
    stream: &str,
    n: u64,
    timeout: std::time::Duration,
    what: &str,
) -> u64 {
    wait_until(timeout, what, || {
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

/// Entries of `stream` that `group` read and did not acknowledge (XPENDING); 0 when the
/// stream or the group does not exist (yet).
pub async fn pending(conn: &Conn, stream: &str, group: &str) -> u64 {
    ::redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async::<::redis::streams::StreamPendingReply>(&mut conn.clone())
        .await
        .map(|r| r.count() as u64)
        .unwrap_or(0)
}

/// Waits (up to [`WAIT`]) until `group` holds nothing unacknowledged of `stream`.
pub async fn wait_no_pending(conn: &Conn, stream: &str, group: &str) {
    wait_until(
        WAIT,
        &format!("nothing pending in {stream} for {group}"),
        || async { (pending(conn, stream, group).await == 0).then_some(()) },
    )
    .await
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

/// XADD KEYS[1] with field ARGV[1] ARGV[2], counted in the stream's ledger as the services'
/// writes are.
const XADD_COUNTED: &str = concat!(
    aurora_core::ledger_lua!(),
    r"
local id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
local written = {}
ledger_add(written, KEYS[1], id, 1)
ledger_flush(written, 'in')
return id
"
);

/// XADD one document (`data` field), counted in the ledger like a service's write; its entry
/// id.
pub async fn xadd(conn: &mut Conn, stream: &str, doc: &[u8]) -> String {
    ::redis::Script::new(XADD_COUNTED)
        .key(stream)
        .arg(bus::DATA_FIELD)
        .arg(doc)
        .invoke_async(conn)
        .await
        .expect("XADD")
}

/// XADD one JSON document (`data` field); its entry id.
pub async fn xadd_json(conn: &Conn, stream: &str, doc: &Value) -> String {
    xadd(&mut conn.clone(), stream, doc.to_string().as_bytes()).await
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

/// The loss ledger of every stream and consumer group of the namespace over the last
/// `span`; panics naming each group that lost or cannot account for an entry (in flight is
/// fine: pending or unread entries are accounted for). Returns the rows.
pub async fn assert_ledger_accounts_for_everything(
    conn: &Conn,
    names: &Names,
    span: std::time::Duration,
) -> Vec<aurora_core::ledger::GroupLedger> {
    let prefix = format!("{}:", names.namespace());
    let rows = aurora_core::ledger::report(conn, &prefix, aurora_core::ledger::Window::last(span))
        .await
        .expect("the ledger");
    let findings: Vec<String> = rows
        .iter()
        .flat_map(aurora_core::ledger::GroupLedger::findings)
        .collect();
    assert!(
        findings.is_empty(),
        "the ledger names losses or differences: {findings:#?}\n{rows:#?}"
    );
    rows
}

/// One entry of a stream with the trace context its writer left.
#[derive(Debug, Clone)]
pub struct TracedEntry {
    pub id: String,
    /// The `data` document (JSON null when it is missing or not JSON).
    pub data: Value,
    /// The entry's `traceparent` field.
    pub traceparent: Option<String>,
}

/// Every entry of a stream with its `traceparent`, oldest first.
pub async fn traced_entries(conn: &Conn, stream: &str) -> Vec<TracedEntry> {
    let reply: ::redis::streams::StreamRangeReply = ::redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn.clone())
        .await
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|sid| TracedEntry {
            data: sid
                .get::<String>(bus::DATA_FIELD)
                .and_then(|d| serde_json::from_str(&d).ok())
                .unwrap_or_default(),
            traceparent: sid.get::<String>(aurora_core::trace::TRACEPARENT_FIELD),
            id: sid.id,
        })
        .collect()
}
