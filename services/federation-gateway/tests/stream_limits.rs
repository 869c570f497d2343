//! The `AURORA` stream's limits as configuration, against the real NATS: declared by the
//! `--jetstream-*` flags (the contract's by default), an operator's change of a declared
//! limit is reported (`/readyz`, the change) and the declared value applied; a limit left at
//! `keep` and one the install never declares stay as the operator set them; the site's
//! consumer survives; a second start finds nothing to change (no false drift).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream;
use aurora_core::jetstream::StreamChange;
use aurora_core::names::Names;
use aurora_core::ops::Readiness;
use aurora_core::service::Flags;
use aurora_testkit::cleanup::cleanup;
use federation_gateway::{Args, Connected, FederationGateway, SERVICE};

const REDIS: &str = "redis://127.0.0.1:6379/3";

fn args(names: &Names, extra: &[&str]) -> Args {
    let mut argv = vec![
        "federation-gateway",
        "--namespace",
        names.namespace(),
        "--site-id",
        "site-a",
        "--redis-url",
        REDIS,
        "--nats-url",
        aurora_testkit::NATS_URL,
        "--log-format",
        "pretty",
    ];
    argv.extend_from_slice(extra);
    aurora_core::config::parse_from::<Args, _, _>(SERVICE, Args::RENAMED_ENV, argv).unwrap()
}

async fn connect(names: &Names, extra: &[&str], readiness: &Readiness) -> Connected {
    FederationGateway::new(args(names, extra))
        .unwrap()
        .connect(readiness, "site-a-1")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_limits_are_kept_and_the_operators_others_stay() {
    let names = aurora_testkit::names();
    let js = jetstream::new(async_nats::connect(aurora_testkit::NATS_URL).await.unwrap());
    let stream_name = names.nats_stream();
    let readiness = Readiness::new();
    let first = connect(&names, &[], &readiness).await;
    assert_eq!(first.stream_change(), &StreamChange::Created);
    drop(first);
    let mut stream = js.get_stream(&stream_name).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_messages, 100_000);
    assert_eq!(config.max_age, Duration::from_secs(7 * 86_400));
    assert_eq!(config.max_bytes, 2 << 30);

    // A second start: nothing drifted (the server's -1 for "unlimited" is no drift).
    let again = connect(&names, &[], &readiness).await;
    assert_eq!(again.stream_change(), &StreamChange::Unchanged);
    assert_eq!(readiness.report()["warnings"], serde_json::json!({}));
    drop(again);

    // The operator edits the stream, as `nats stream edit` would.
    let mut edited = config.clone();
    edited.max_messages = 50;
    edited.max_age = Duration::from_secs(600);
    edited.max_bytes = 1 << 20;
    edited.max_messages_per_subject = 20;
    js.update_stream(&edited).await.unwrap();

    // Declared: messages and age; the size is left to the operator (`keep`).
    let readiness = Readiness::new();
    let corrected = connect(&names, &["--jetstream-max-bytes", "keep"], &readiness).await;
    match corrected.stream_change() {
        StreamChange::Updated(changes) => assert_eq!(
            changes,
            &vec![
                "max_age: 10m -> 7d".to_string(),
                "max_messages: 50 -> 100000".to_string()
            ]
        ),
        other => panic!("drift not reported: {other:?}"),
    }
    let warning = readiness.report()["warnings"][format!("jetstream stream {stream_name}")]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(warning.contains("max_messages: 50 -> 100000"), "{warning}");
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_messages, 100_000, "declared: applied");
    assert_eq!(config.max_age, Duration::from_secs(7 * 86_400));
    assert_eq!(config.max_bytes, 1 << 20, "keep: the operator's");
    assert_eq!(config.max_messages_per_subject, 20, "never declared: kept");
    assert!(
        stream.consumer_info("site-a").await.is_ok(),
        "the site's consumer is still there"
    );
    drop(corrected);

    // Started again with the same flags, it finds nothing to change.
    let readiness = Readiness::new();
    let again = connect(&names, &["--jetstream-max-bytes", "keep"], &readiness).await;
    assert_eq!(again.stream_change(), &StreamChange::Unchanged);
    assert_eq!(readiness.report()["warnings"], serde_json::json!({}));
    drop(again);
    cleanup(&names, aurora_testkit::NATS_URL, &[REDIS]).await;
}
