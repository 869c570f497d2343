//! The durability self-check against real servers: a Redis without append-only does not keep
//! what it acknowledges (in `/readyz`, the gauge) until `CONFIG SET appendonly yes`, which the
//! next check sees; a Redis with it keeps; one that refuses `CONFIG` (renamed away, or an ACL
//! user without it) is unknown with the reason; waiting for replicas keeps without
//! persistence; a memory-storage JetStream stream does not keep, a file one does, a missing
//! one is unknown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use aurora_core::bus::{self, ReplicaWait};
use aurora_core::durability::{self, SelfCheck, Verdict, REDIS, STATE_METRIC};
use aurora_core::service::{launch, Context, LaunchOptions, Running, Service};
use aurora_testkit::ops::Ops;
use aurora_testkit::{names, wait_until, RedisServer, NATS_URL};
use tokio_util::sync::CancellationToken;

/// A service that does nothing but run the self-check, under the real lifecycle and ops port.
struct Checked(SelfCheck);

impl Service for Checked {
    const NAME: &'static str = "durability-test";
    const OPS_PORT: u16 = 0;

    async fn start(self, ctx: Context) -> anyhow::Result<Running> {
        ctx.readiness.register("work");
        ctx.readiness.set_ready("work");
        let mut running = Running::new(&ctx);
        running.spawn(self.0.watch(ctx.readiness.clone(), ctx.shutdown.clone()));
        Ok(running)
    }
}

async fn verdict_in_readyz(ops: &Ops, dependency: &str) -> Option<(u16, String, String)> {
    let (status, report) = ops.readyz_report().await?;
    let entry = &report["durability"][dependency];
    Some((
        status,
        entry["verdict"].as_str()?.to_string(),
        entry["why"].as_str()?.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_without_append_only_is_reported_until_it_is_turned_on() {
    let redis = RedisServer::start();
    let conn = bus::connect(&redis.url()).await.unwrap();
    let check = SelfCheck::redis(conn.clone()).every(Duration::from_millis(200));
    let shutdown = CancellationToken::new();
    let launched = launch(Checked(check), LaunchOptions::local("d1"), shutdown.clone())
        .await
        .unwrap();
    let ops = Ops::new(launched.ops_addr);

    let (status, verdict, why) = wait_until(Duration::from_secs(10), "a verdict", || {
        verdict_in_readyz(&ops, REDIS)
    })
    .await;
    assert_eq!(status, 200, "a warning, not unready");
    assert_eq!(verdict, "does-not-keep");
    assert!(why.contains("appendonly no"), "{why}");
    let state = |s: &'static str| [("dependency", REDIS), ("state", s)];
    assert_eq!(ops.metric(STATE_METRIC, &state("does_not_keep")).await, 1.0);
    assert_eq!(ops.metric(STATE_METRIC, &state("keeps")).await, 0.0);

    // The operator turns the append-only file on: the next check sees it.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("yes")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    let (_, verdict, why) = wait_until(Duration::from_secs(10), "keeps", || async {
        verdict_in_readyz(&ops, REDIS)
            .await
            .filter(|(_, v, _)| v == "keeps")
    })
    .await;
    assert_eq!(verdict, "keeps");
    assert!(why.contains("appendfsync everysec"), "{why}");
    assert_eq!(ops.metric(STATE_METRIC, &state("keeps")).await, 1.0);
    assert_eq!(ops.metric(STATE_METRIC, &state("does_not_keep")).await, 0.0);

    shutdown.cancel();
    launched.stopped().await;
}

#[tokio::test]
async fn redis_with_append_only_keeps_and_without_fsync_does_not() {
    let redis = RedisServer::start_with(&["--appendonly", "yes"]);
    let mut conn = bus::connect(&redis.url()).await.unwrap();
    let found = durability::check_redis(&mut conn).await.unwrap();
    assert_eq!(found.verdict, Verdict::Keeps, "{found:?}");

    let lazy = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "no"]);
    let mut conn = bus::connect(&lazy.url()).await.unwrap();
    let found = durability::check_redis(&mut conn).await.unwrap();
    assert_eq!(found.verdict, Verdict::DoesNotKeep, "{found:?}");
    assert!(found.why.contains("appendfsync no"), "{}", found.why);
}

#[tokio::test]
async fn snapshots_alone_do_not_keep_but_waiting_for_replicas_does() {
    let redis = RedisServer::start_with(&["--save", "3600 1"]);
    let conn = bus::connect(&redis.url()).await.unwrap();
    let found = durability::check_redis(&mut conn.clone()).await.unwrap();
    assert_eq!(found.verdict, Verdict::DoesNotKeep, "{found:?}");
    assert!(found.why.contains("save \"3600 1\""), "{}", found.why);

    let waiting = conn.with_replica_wait(Some(ReplicaWait {
        replicas: 1,
        timeout: Duration::from_secs(2),
    }));
    let found = durability::check_redis(&mut waiting.clone()).await.unwrap();
    assert_eq!(found.verdict, Verdict::Keeps, "{found:?}");
    assert!(
        found.why.contains("AURORA_REDIS_WAIT_REPLICAS"),
        "{}",
        found.why
    );
}

#[tokio::test]
async fn a_redis_that_refuses_config_is_unknown_with_the_reason() {
    let renamed = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    let mut conn = bus::connect(&renamed.url()).await.unwrap();
    let found = durability::check_redis(&mut conn).await.unwrap();
    assert_eq!(found.verdict, Verdict::Unknown, "{found:?}");
    assert!(found.why.contains("unknown command"), "{}", found.why);

    let acl = RedisServer::start_with(&[
        "--user", "aurora", "on", ">secret", "~*", "&*", "+@all", "-config",
    ]);
    let url = format!("redis://aurora:secret@127.0.0.1:{}", acl.port());
    let mut conn = bus::connect(&url).await.unwrap();
    bus::ping(&mut conn).await.unwrap();
    let found = durability::check_redis(&mut conn).await.unwrap();
    assert_eq!(found.verdict, Verdict::Unknown, "{found:?}");
    assert!(found.why.contains("no permissions"), "{}", found.why);
}

#[tokio::test]
async fn a_memory_stream_does_not_keep_a_file_stream_does_a_missing_one_is_unknown() {
    let names = names();
    let client = async_nats::connect(NATS_URL).await.unwrap();
    let js = jetstream::new(client.clone());
    let memory = names.nats_stream();
    let file = names.suricata_stream();
    for (name, storage) in [
        (&memory, stream::StorageType::Memory),
        (&file, stream::StorageType::File),
    ] {
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            storage,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let missing = format!("{}_MISSING", names.nats_stream());
    let redis = bus::connect(aurora_testkit::REDIS_URL).await.unwrap();
    let found = SelfCheck::redis(redis)
        .with_streams(&client, [memory.clone(), file.clone(), missing.clone()])
        .check()
        .await;
    aurora_testkit::nats::delete_streams(NATS_URL, &names).await;
    let found: Vec<_> = found.into_iter().map(Result::unwrap).collect();
    assert_eq!(found.len(), 4, "{found:?}");
    let of = |stream: &str| {
        found
            .iter()
            .find(|f| f.dependency == durability::stream_dependency(stream))
            .unwrap()
            .clone()
    };
    let m = of(&memory);
    assert_eq!(m.verdict, Verdict::DoesNotKeep, "{m:?}");
    assert!(m.why.contains("in memory"), "{}", m.why);
    let f = of(&file);
    assert_eq!(f.verdict, Verdict::Keeps, "{f:?}");
    assert!(f.why.contains("file storage (R1)"), "{}", f.why);
    let x = of(&missing);
    assert_eq!(x.verdict, Verdict::Unknown, "{x:?}");
    assert!(x.why.contains("does not exist"), "{}", x.why);
}
