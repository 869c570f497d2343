//! The shared stream consumer against a real Redis stream, with random mixes of good and
//! bad records in random batch sizes: every good record is handled exactly once, and every
//! bad one is dead-lettered exactly once, alone, with its own reason, whether the handler
//! refuses the whole batch because of it (the way a database refuses a statement) or
//! dead-letters it itself while reading the batch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aurora_core::bus::{self, BusError, Entry, GroupConfig, GroupReader, Producer};
use aurora_core::consumer::{BatchFailure, BatchHandler, Consumer};
use aurora_core::health::Dependencies;
use aurora_core::model::DeadLetter;
use aurora_core::ops::Readiness;
use aurora_testkit::REDIS_URL;
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    /// Refused with its batch (the whole batch fails, nothing of it is kept).
    Refused,
    /// Not readable: the handler dead-letters it itself and goes on.
    Unreadable,
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("refused record {0}")]
    Refused(String),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl BatchFailure for Failure {
    fn dependency(&self) -> Option<&'static str> {
        match self {
            Self::Refused(_) => None,
            Self::Bus(_) => Some("redis"),
        }
    }

    fn is_input(&self) -> bool {
        matches!(self, Self::Refused(_))
    }
}

/// Handles a batch as one statement: all its good records are kept, or none.
struct Handler {
    handled: Arc<Mutex<Vec<String>>>,
}

impl BatchHandler for Handler {
    type Error = Failure;

    fn part(&self) -> &'static str {
        "proptest"
    }

    async fn handle(&self, reader: &GroupReader, entries: Vec<Entry>) -> Result<(), Failure> {
        let mut good = Vec::new();
        let mut ids = Vec::new();
        for entry in &entries {
            let data = String::from_utf8(entry.data.clone().unwrap_or_default()).unwrap();
            if data.starts_with("unreadable") {
                reader
                    .dead_letter(entry, &format!("cannot read {data}"))
                    .await?;
                continue;
            }
            if data.starts_with("refused") {
                return Err(Failure::Refused(data));
            }
            good.push(data);
            ids.push(entry.id.clone());
        }
        self.handled.lock().unwrap().extend(good);
        reader.ack(&ids).await?;
        Ok(())
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => Just(Kind::Good),
        2 => Just(Kind::Refused),
        1 => Just(Kind::Unreadable),
    ]
}

async fn run_case(kinds: Vec<Kind>, batch: usize) {
    let names = aurora_testkit::names();
    let stream = format!("{}:consumer:proptest", names.namespace());
    let dead = format!("{stream}:dead");
    let conn = bus::connect(REDIS_URL).await.unwrap();
    let producer = Producer::new(conn.clone(), 100_000);
    let mut records = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        let data = match k {
            Kind::Good => format!("good-{i}"),
            Kind::Refused => format!("refused-{i}"),
            Kind::Unreadable => format!("unreadable-{i}"),
        };
        producer.publish(&stream, data.as_bytes()).await.unwrap();
        records.push(data);
    }
    let mut cfg = GroupConfig::new(&stream, "g", "c", &dead, "proptest");
    cfg.batch = batch;
    cfg.block = Duration::from_millis(50);
    let read_conn = bus::connect_blocking(REDIS_URL, cfg.block).await.unwrap();
    let reader = GroupReader::new(cfg, read_conn, producer.clone())
        .await
        .unwrap();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let readiness = Readiness::new();
    // The consumer's part is ready; a stuck consumer would say otherwise.
    readiness.set_ready("proptest");
    let shutdown = CancellationToken::new();
    let consumer = Consumer {
        reader,
        handler: Handler {
            handled: handled.clone(),
        },
        dependencies: Dependencies::new(),
        readiness: readiness.clone(),
    };
    let task = tokio::spawn(consumer.run(shutdown.clone()));

    let want_good: Vec<&String> = records.iter().filter(|r| r.starts_with("good")).collect();
    let want_dead = records.len() - want_good.len();
    let mut redis = conn.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let letters: Vec<DeadLetter> = aurora_testkit::redis::stream_records(&redis, &dead).await;
        let done = handled.lock().unwrap().len() >= want_good.len() && letters.len() >= want_dead;
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not done: handled {:?}, dead {}, records {records:?}",
            handled.lock().unwrap(),
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing more comes after a moment (no duplicate handling or dead letter).
    tokio::time::sleep(Duration::from_millis(150)).await;
    shutdown.cancel();
    task.await.unwrap();

    let mut got: Vec<String> = handled.lock().unwrap().clone();
    got.sort();
    let mut want: Vec<String> = want_good.into_iter().cloned().collect();
    want.sort();
    assert_eq!(got, want, "each good record handled exactly once");

    let letters: Vec<DeadLetter> = aurora_testkit::redis::stream_records(&redis, &dead).await;
    let mut by_record: BTreeMap<String, Vec<DeadLetter>> = BTreeMap::new();
    for l in letters {
        let raw = String::from_utf8(l.raw().unwrap()).unwrap();
        by_record.entry(raw).or_default().push(l);
    }
    for r in records.iter().filter(|r| !r.starts_with("good")) {
        let ls = by_record.remove(r).unwrap_or_default();
        assert_eq!(ls.len(), 1, "{r} dead-lettered once: {ls:?}");
        assert!(
            ls[0].reason.contains(r.as_str()),
            "{r} has its own reason: {}",
            ls[0].reason
        );
        assert_eq!(ls[0].deliveries, Some(1), "found on its first delivery");
    }
    assert!(by_record.is_empty(), "only bad records: {by_record:?}");
    assert_eq!(
        aurora_testkit::redis::pending(&redis, &stream, "g").await,
        0
    );
    assert!(readiness.is_ready(), "{}", readiness.report());
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .arg(&dead)
        .query_async(&mut redis)
        .await
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn good_records_go_on_and_each_bad_one_is_dead_lettered_alone(
        kinds in prop::collection::vec(kind(), 1..40),
        batch in 1usize..16,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_case(kinds, batch));
    }
}
