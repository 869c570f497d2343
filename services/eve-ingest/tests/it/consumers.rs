//! The Suricata stream and its consumers as configuration, against the real NATS: the design's
//! `flow` and `stats` consumers exist with its settings after start and survive a restart; an
//! operator's change of a declared limit is reported (log, metric, `/readyz`) and the declared
//! value applied, while undeclared limits and the consumers' positions stay; a second start
//! finds nothing to change; a change NATS refuses in place is reported and the consumer kept.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::stream::DiscardPolicy;
use async_nats::jetstream::{self, AckKind};
use aurora_core::jetstream::Limit;
use common::*;
use eve_ingest::{stream_setup, Hooks};
use futures::StreamExt;

const WEEK: Duration = Duration::from_secs(7 * 86_400);

fn warnings(svc: &Running) -> serde_json::Value {
    svc.readiness.report()["warnings"].clone()
}

async fn consumer_config(env: &Env, name: &str) -> consumer::Config {
    let stream = env
        .js
        .get_stream(env.names.suricata_stream())
        .await
        .unwrap();
    stream.consumer_info(name).await.unwrap().config
}

/// The value of `aurora_jetstream_drift_total` for this stream (or consumer) and field.
fn drift_count(kind: &str, name: &str, field: &str) -> u64 {
    let rendered = aurora_core::ops::metrics_handle().render();
    rendered
        .lines()
        .filter(|l| l.starts_with("aurora_jetstream_drift_total{"))
        .filter(|l| {
            l.contains(&format!("kind=\"{kind}\""))
                && l.contains(&format!("name=\"{name}\""))
                && l.contains(&format!("field=\"{field}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_design_consumers_are_kept_through_restarts_and_an_operators_edit() {
    let env = Env::new().await;
    let stream_name = env.names.suricata_stream();

    let svc = start(env.settings(), "c1", Hooks::default()).await;
    let flow = consumer_config(&env, "flow").await;
    assert_eq!(flow.durable_name.as_deref(), Some("flow"));
    assert_eq!(flow.deliver_subject, None, "a pull consumer");
    assert_eq!(flow.filter_subject, env.names.suricata_subject("flow"));
    assert_eq!(flow.deliver_policy, consumer::DeliverPolicy::All);
    assert_eq!(flow.ack_policy, consumer::AckPolicy::Explicit);
    assert_eq!(flow.ack_wait, Duration::from_secs(30));
    assert_eq!(flow.max_ack_pending, 20_000);
    assert_eq!(flow.max_deliver, -1);
    let stats = consumer_config(&env, "stats").await;
    assert_eq!(
        stats.deliver_subject,
        Some(format!("{}.stats.suricata", env.names.namespace()))
    );
    assert_eq!(stats.filter_subject, env.names.suricata_subject("stats"));
    assert_eq!(stats.deliver_policy, consumer::DeliverPolicy::New);
    assert_eq!(stats.ack_policy, consumer::AckPolicy::None);
    let mut stream = env.js.get_stream(&stream_name).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, WEEK);
    assert_eq!(config.max_bytes, TEST_STREAM_BYTES as i64);
    assert_eq!(config.max_messages, -1, "not declared: the server's");
    assert_eq!(config.discard, DiscardPolicy::Old);
    assert_eq!(warnings(&svc), serde_json::json!({}), "nothing drifted");

    // A reader of `flow` takes and acknowledges one message: the consumer has a position.
    for i in 0..3 {
        env.js
            .publish(env.names.suricata_subject("flow"), format!("{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let flow_consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer("flow").await.unwrap();
    let mut batch = flow_consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .unwrap();
    let msg = batch.next().await.unwrap().unwrap();
    msg.ack_with(AckKind::Ack).await.unwrap();
    svc.stop().await.unwrap();

    // Restarted as it was: no drift, no warning, the consumers as they were.
    let svc = start(env.settings(), "c1", Hooks::default()).await;
    assert_eq!(warnings(&svc), serde_json::json!({}), "no false drift");
    assert_eq!(drift_count("stream", &stream_name, "max_messages"), 0);
    assert_eq!(consumer_config(&env, "flow").await.max_ack_pending, 20_000);
    svc.stop().await.unwrap();

    // An operator edits the stream (as `nats stream edit` would) and the flow consumer.
    let mut edited = stream.info().await.unwrap().config.clone();
    edited.max_age = Duration::from_secs(3600);
    edited.max_bytes = 1 << 30;
    edited.max_messages = 5000;
    edited.max_messages_per_subject = 1000;
    env.js.update_stream(&edited).await.unwrap();
    let mut flow_edit = consumer_config(&env, "flow").await;
    flow_edit.ack_wait = Duration::from_secs(5);
    flow_edit.description = Some("the operator's".into());
    stream.create_consumer(flow_edit).await.unwrap();

    let svc = start(env.settings(), "c1", Hooks::default()).await;
    let w = warnings(&svc);
    let on_stream = w[format!("jetstream stream {stream_name}")]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(on_stream.contains("max_age: 1h -> 7d"), "{w}");
    assert!(on_stream.contains("max_bytes: 1GiB -> 256MiB"), "{w}");
    assert!(!on_stream.contains("max_messages"), "{w}");
    let on_flow = w[format!("jetstream consumer {stream_name}/flow")]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(on_flow.contains("ack_wait: 5s -> 30s"), "{w}");
    assert_eq!(drift_count("stream", &stream_name, "max_age"), 1);
    assert!(drift_count("consumer", "flow", "ack_wait") >= 1);
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, WEEK, "the declared age applied");
    assert_eq!(config.max_bytes, TEST_STREAM_BYTES as i64);
    assert_eq!(
        config.max_messages, 5000,
        "undeclared: the operator's stays"
    );
    assert_eq!(
        config.max_messages_per_subject, 1000,
        "the operator's stays"
    );
    let info = stream.consumer_info("flow").await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(30));
    assert_eq!(info.config.description.as_deref(), Some("the operator's"));
    assert_eq!(
        info.ack_floor.stream_sequence, 1,
        "the same consumer: its position kept"
    );
    assert!(stream.consumer_info("stats").await.is_ok());
    svc.stop().await.unwrap();

    // Once applied, the next start finds nothing to change.
    let svc = start(env.settings(), "c1", Hooks::default()).await;
    assert_eq!(warnings(&svc), serde_json::json!({}));
    assert_eq!(drift_count("stream", &stream_name, "max_age"), 1);
    svc.stop().await.unwrap();
}

/// The operator's `flow` reads another subject from the newest message with a short ack wait,
/// and `stats` pushes elsewhere: the ack wait is corrected; the deliver policy NATS never
/// changes in place is reported in `/readyz` and left, and the consumer is not deleted. The
/// filter and the push subject are applied where the server changes them in place (2.9.10 and
/// later do), else reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_nats_refuses_in_place_is_reported_and_the_consumer_kept() {
    let env = Env::new().await;
    let stream_name = env.names.suricata_stream();
    let svc = start(env.settings(), "c2", Hooks::default()).await;
    svc.stop().await.unwrap();
    let stream = env.js.get_stream(&stream_name).await.unwrap();
    stream.delete_consumer("flow").await.unwrap();
    stream
        .create_consumer(pull::Config {
            durable_name: Some("flow".into()),
            filter_subject: env.names.suricata_subject("dns"),
            deliver_policy: consumer::DeliverPolicy::New,
            ack_wait: Duration::from_secs(5),
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .unwrap();
    stream.delete_consumer("stats").await.unwrap();
    stream
        .create_consumer(consumer::push::Config {
            durable_name: Some("stats".into()),
            deliver_subject: "elsewhere.stats".into(),
            filter_subject: env.names.suricata_subject("stats"),
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();

    let svc = start(env.settings(), "c2", Hooks::default()).await;
    let w = warnings(&svc);
    let on_flow = w[format!("jetstream consumer {stream_name}/flow")]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(on_flow.contains("deliver_policy: New -> All"), "{w}");
    assert!(on_flow.contains("delete the consumer"), "{w}");
    let info = stream.consumer_info("flow").await.unwrap();
    assert_eq!(
        info.config.deliver_policy,
        consumer::DeliverPolicy::New,
        "kept"
    );
    assert_eq!(info.config.ack_wait, Duration::from_secs(30), "applied");
    let filter_applied = info.config.filter_subject == env.names.suricata_subject("flow");
    assert_eq!(
        !filter_applied,
        on_flow.contains("filter_subject:"),
        "the filter is applied (NATS 2.10+) or reported (2.9): {w}"
    );
    let on_stats = w[format!("jetstream consumer {stream_name}/stats")]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let stats = stream.consumer_info("stats").await.unwrap().config;
    let pushed_back = stats.deliver_subject == Some(env.names.suricata_delivery_subject("stats"));
    let reported = if pushed_back {
        "were applied at start: delivery: push to elsewhere.stats"
    } else {
        "does not change in place: delivery: push to elsewhere.stats"
    };
    assert!(
        on_stats.contains(reported),
        "the push subject is applied or reported: {w}"
    );
    let unresolved = aurora_core::ops::metrics_handle()
        .render()
        .lines()
        .any(|l| {
            l.starts_with("aurora_jetstream_drift_unresolved{")
                && l.contains("name=\"flow\"")
                && !l.ends_with(" 0")
        });
    assert!(unresolved);
    svc.stop().await.unwrap();
}

/// `--consumers none` and a `--consumer` spec: only the declared consumer is made; limits
/// left at `keep` are not touched, the others are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_declared_consumers_and_limits_are_managed() {
    let env = Env::new().await;
    let stream_name = env.names.suricata_stream();
    let mut settings = env.settings();
    settings.consumers = stream_setup::declared_consumers(
        &env.names,
        &["none".to_string()],
        &["name=alerts,filter=alert,max-deliver=5,ack-wait=1m".to_string()],
    )
    .unwrap();
    settings.stream_limits.max_bytes = Limit::Keep;
    settings.stream_limits.max_messages = Limit::At(1_000_000);
    let svc = start(settings.clone(), "c3", Hooks::default()).await;
    let stream = env.js.get_stream(&stream_name).await.unwrap();
    assert!(stream.consumer_info("flow").await.is_err());
    assert!(stream.consumer_info("stats").await.is_err());
    let alerts = stream.consumer_info("alerts").await.unwrap().config;
    assert_eq!(alerts.filter_subject, env.names.suricata_subject("alert"));
    assert_eq!(
        (alerts.max_deliver, alerts.ack_wait),
        (5, Duration::from_secs(60))
    );
    svc.stop().await.unwrap();

    // An operator's consumer and size limit stay; the declared message limit is put back.
    stream
        .create_consumer(pull::Config {
            durable_name: Some("analyst".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut edited = env.js.get_stream(&stream_name).await.unwrap();
    let mut config = edited.info().await.unwrap().config.clone();
    config.max_bytes = 1 << 20;
    config.max_messages = 10;
    env.js.update_stream(&config).await.unwrap();
    let svc = start(settings, "c3", Hooks::default()).await;
    let config = edited.info().await.unwrap().config.clone();
    assert_eq!(config.max_bytes, 1 << 20);
    assert_eq!(config.max_messages, 1_000_000);
    assert!(stream.consumer_info("analyst").await.is_ok());
    svc.stop().await.unwrap();
}

/// A NATS whose JetStream storage is smaller than the declared size (a small disk): the
/// stream is created bounded by a size the server can reserve, eve-ingest starts and says so
/// (`/readyz` warning), events flow, and the next start keeps it running the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_with_less_storage_than_declared_still_gets_a_bounded_stream() {
    let env = Env::new().await;
    let nats = aurora_testkit::NatsServer::start_with_file_store(300 << 20);
    let mut settings = env.settings();
    settings.nats.nats_url = nats.url();
    settings.stream_limits.max_bytes = Limit::At(10 << 30);
    let stream_name = env.names.suricata_stream();

    let svc = start(settings.clone(), "s1", Hooks::default()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let bytes = js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .max_bytes;
    assert!(
        (64 << 20..=300 << 20).contains(&bytes),
        "bounded by what the server holds: {bytes}"
    );
    let w = warnings(&svc).to_string();
    assert!(w.contains("instead of the declared 10GiB"), "{w}");
    env.push(&[
        br#"{"event_type":"dns","src_ip":"10.0.0.1","dns":{"rrname":"a.example"}}"#.to_vec(),
    ])
    .await;
    aurora_testkit::wait_until(Duration::from_secs(20), "the event stored", || async {
        (stream_len(&nats.url(), &stream_name).await == 1).then_some(())
    })
    .await;
    svc.stop().await.unwrap();

    let again = start(settings, "s1", Hooks::default()).await;
    let w = warnings(&again).to_string();
    assert!(w.contains("instead of the declared 10GiB"), "{w}");
    again.stop().await.unwrap();
}
