//! Start-up: the ops endpoints answer while the gateway waits for Redis, `/readyz` names what
//! it waits for, and a stop while it waits ends the launch.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use aurora_core::service::{launch, Flags, LaunchError, LaunchOptions, Stopped};
use common::*;
use tokio_util::sync::CancellationToken;

fn options(ops: SocketAddr) -> LaunchOptions {
    let mut options = LaunchOptions::local("lifecycle");
    options.ops_addr = ops;
    options.drain_deadline = Duration::from_secs(10);
    options
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], aurora_testkit::free_port()))
}

#[tokio::test]
async fn start_up_waits_for_redis_and_readyz_names_it() {
    let mut redis = aurora_testkit::RedisServer::not_started();
    let names = aurora_testkit::names();
    let mut gateway = test_args(names.namespace(), &redis.url())
        .into_service()
        .unwrap();
    let http = gateway.bind_http().unwrap();
    let ops = free_addr();
    let shutdown = CancellationToken::new();
    let launching = tokio::spawn(launch(gateway, options(ops), shutdown.clone()));

    let port = redis.port().to_string();
    let ops = Ops::new(ops);
    aurora_testkit::wait_until(WAIT, "/readyz naming Redis", || {
        let port = port.clone();
        async move {
            let (status, report) = ops.readyz_report().await?;
            let parts = &report["components"];
            (status == 503
                && parts["redis"]["ready"] == false
                && parts["redis"]["detail"].as_str()?.contains(&port)
                && parts["start-up"]["ready"] == false)
                .then_some(())
        }
    })
    .await;
    assert_eq!(ops.healthz().await, Some(200), "alive while starting");

    redis.start_again();
    let launched = launching.await.unwrap().unwrap();
    let readiness = launched.readiness.clone();
    aurora_testkit::wait_until(WAIT, "gateway ready", || {
        let ready = readiness.is_ready();
        async move { ready.then_some(()) }
    })
    .await;
    let report = readiness.report();
    assert!(report["components"].get("start-up").is_none(), "{report}");
    assert_eq!(report["components"]["redis"]["ready"], true);
    let console = aurora_testkit::http::http()
        .get(format!("http://{http}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(console.status().as_u16(), 200);
    let stopped = tokio::spawn(launched.stopped());
    shutdown.cancel();
    assert_eq!(stopped.await.unwrap(), Stopped::Drained);
}

#[tokio::test]
async fn a_stop_while_waiting_for_redis_ends_the_launch() {
    let redis = aurora_testkit::RedisServer::not_started();
    let names = aurora_testkit::names();
    let gateway = test_args(names.namespace(), &redis.url())
        .into_service()
        .unwrap();
    let shutdown = CancellationToken::new();
    let launching = tokio::spawn(launch(gateway, options(free_addr()), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    assert_stopped_while_starting(launching, WAIT).await;
}

#[tokio::test]
async fn an_unusable_redis_url_ends_the_start() {
    let names = aurora_testkit::names();
    let gateway = test_args(names.namespace(), "not-a-redis-url")
        .into_service()
        .unwrap();
    let launched = tokio::time::timeout(
        WAIT,
        launch(gateway, options(free_addr()), CancellationToken::new()),
    )
    .await
    .unwrap();
    assert!(
        matches!(launched, Err(LaunchError::Start { .. })),
        "{:?}",
        launched.err()
    );
}
