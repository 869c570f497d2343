//! How many lines a batch takes from a chunk, against real Redis: measuring a slice whole
//! (`SORT … STORE`, `MEMORY USAGE`) decides exactly as counting its lines one by one, under
//! a budget that lets the whole slice in and under one that cuts it; and a Redis whose lists
//! may be compressed is not measured whole.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use aurora_core::bus;
use aurora_testkit::servers::RedisServer;
use common::*;
use eve_ingest::list_source::{lists_measurable, ListConfig, ListSource};

/// The sizes of the batches `ListSource::take` hands out for `lines`, until none is left.
async fn batch_sizes(env: &Env, lines: &[Vec<u8>], budget: usize, measurable: bool) -> Vec<usize> {
    env.push(lines).await;
    let processing = format!("{}:slices:{measurable}:{budget}", env.names.suricata_list());
    let cfg = ListConfig {
        list: env.names.suricata_list(),
        processing: processing.clone(),
        batch: 10,
        block: Duration::from_millis(100),
        inflight_batches: 1,
        max_batch_bytes: budget,
    };
    let blocking = bus::connect_blocking(&env.redis_url, cfg.block)
        .await
        .unwrap();
    let mut source = ListSource::new(cfg, blocking, env.conn()).measure_slices(measurable);
    let mut sizes = Vec::new();
    let mut taken = 0;
    while taken < lines.len() {
        let batch = source.take().await.unwrap().unwrap();
        taken += batch.lines.len();
        sizes.push(batch.lines.len());
        ListSource::release(&env.conn(), &processing, &batch.held)
            .await
            .unwrap();
    }
    sizes
}

/// How many `SORT` commands a Redis has run (the measuring script's copy).
async fn sorts(env: &Env) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut env.conn())
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_sort:calls="))
        .and_then(|v| v.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_measured_whole_is_cut_where_counting_line_by_line_cuts_it() {
    // A Redis of the test's own: its count of SORT commands says which way a slice went.
    let own = RedisServer::start();
    let env = Env::with_redis(&own.url()).await;
    // 25 lines of 1,000 bytes, with a 100 kB line among them.
    let mut lines: Vec<Vec<u8>> = (0..25)
        .map(|i| {
            let mut line = format!("{{\"event_type\":\"flow\",\"n\":{i},\"pad\":\"").into_bytes();
            line.resize(998, b'x');
            line.extend_from_slice(b"\"}");
            line
        })
        .collect();
    lines[13].resize(100_000, b' ');
    for budget in [3_500, 50_000, 16 << 20] {
        let before = sorts(&env).await;
        let counted = batch_sizes(&env, &lines, budget, false).await;
        assert_eq!(sorts(&env).await, before, "counting measures nothing whole");
        let measured = batch_sizes(&env, &lines, budget, true).await;
        assert!(
            sorts(&env).await > before,
            "budget {budget}: slices measured whole"
        );
        assert_eq!(measured, counted, "budget {budget}");
        assert_eq!(counted.iter().sum::<usize>(), lines.len());
        if budget == 16 << 20 {
            // The line BLMOVE takes and 9 of the chunk, then whole slices of the batch size.
            assert_eq!(counted, vec![10, 10, 5], "budget {budget}");
        }
        if budget == 3_500 {
            assert!(
                counted.iter().all(|n| *n <= 3),
                "budget {budget}: {counted:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_compress_its_lists_is_not_measured_whole() {
    let plain = RedisServer::start();
    let compressing = RedisServer::start_with(&["--list-compress-depth", "1"]);
    let mut conn = bus::connect(&plain.url()).await.unwrap();
    assert!(lists_measurable(&mut conn).await);
    let mut conn = bus::connect(&compressing.url()).await.unwrap();
    assert!(!lists_measurable(&mut conn).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_to_measure_still_gets_its_slices_counted() {
    // An ACL that denies SORT: the script fails, measuring is given up, lines are counted.
    let own = RedisServer::start_with(&[
        "--user", "default", "on", "nopass", "~*", "&*", "+@all", "-sort",
    ]);
    let env = Env::with_redis(&own.url()).await;
    let lines: Vec<Vec<u8>> = (0..25)
        .map(|i| format!("{{\"event_type\":\"flow\",\"n\":{i}}}").into_bytes())
        .collect();
    assert_eq!(
        batch_sizes(&env, &lines, 16 << 20, true).await,
        vec![10, 10, 5]
    );
    assert_eq!(batch_sizes(&env, &lines, 40, true).await.len(), 25);
}
