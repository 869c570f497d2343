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
    assert_eq!(config.max_bytes, -1, "unlimited, as the design creates it");
    assert_eq!(config.description, None);

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

/// What the original design's `add_stream` asks for (nats.py drops the fields it does not
/// set; the server fills in its defaults).
fn design_add_stream(names: &Names) -> serde_json::Value {
    serde_json::json!({
        "name": names.nats_stream(),
        "subjects": names.nats_subjects(),
        "retention": "limits",
        "max_msgs": 100_000,
        "max_age": 7u64 * 24 * 3600 * 1_000_000_000,
    })
}

async fn add_stream(js: &jetstream::Context, names: &Names) -> Result<(), String> {
    let answer: jetstream::response::Response<serde_json::Value> = js
        .request(
            format!("STREAM.CREATE.{}", names.nats_stream()),
            &design_add_stream(names),
        )
        .await
        .map_err(|e| e.to_string())?;
    match answer {
        jetstream::response::Response::Ok(_) => Ok(()),
        jetstream::response::Response::Err { error } => Err(error.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_design_and_the_gateway_each_accept_the_stream_the_other_created() {
    let js = jetstream::new(async_nats::connect(aurora_testkit::NATS_URL).await.unwrap());
    // The gateway first: the design's add_stream finds the same configuration.
    let names = aurora_testkit::names();
    let gateway = connect(&names, &[], &Readiness::new()).await;
    assert_eq!(gateway.stream_change(), &StreamChange::Created);
    drop(gateway);
    add_stream(&js, &names)
        .await
        .expect("the design's add_stream against the gateway's stream");
    // What the product did before: a description (or a size limit) the design does not set.
    let mut described = design_add_stream(&names);
    described["description"] = "Aurora cross-site federation".into();
    let refused: jetstream::response::Response<serde_json::Value> = js
        .request(format!("STREAM.CREATE.{}", names.nats_stream()), &described)
        .await
        .unwrap();
    match refused {
        jetstream::response::Response::Err { error } => {
            assert!(error.to_string().contains("already in use"), "{error}")
        }
        jetstream::response::Response::Ok(_) => panic!("the server compares the configuration"),
    }
    cleanup(&names, aurora_testkit::NATS_URL, &[REDIS]).await;

    // The design first: the gateway finds nothing to change.
    let names = aurora_testkit::names();
    add_stream(&js, &names).await.unwrap();
    let readiness = Readiness::new();
    let gateway = connect(&names, &[], &readiness).await;
    assert_eq!(gateway.stream_change(), &StreamChange::Unchanged);
    assert_eq!(readiness.report()["warnings"], serde_json::json!({}));
    drop(gateway);
    add_stream(&js, &names).await.expect("and again");
    cleanup(&names, aurora_testkit::NATS_URL, &[REDIS]).await;
}
