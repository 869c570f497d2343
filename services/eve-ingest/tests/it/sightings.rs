//! IOC sightings end to end, against the real Redis and NATS: site B shares indicators
//! through its federation-gateway, site A's gateway lands them on its `aurora:iocs` with
//! `origin_site`, site A's eve-ingest follows them and finds them in the sample events. Site
//! A's own TLP:RED indicator is found too, and its sighting does not leave the site.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use aurora_core::model::Alert;
use aurora_core::service::{launch, Flags, LaunchOptions, Launched, Stopped};
use common::*;
use federation_gateway::{Args, FederationGateway};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const SITE_A_REDIS: &str = "redis://127.0.0.1:6379/1";
const SITE_B_REDIS: &str = "redis://127.0.0.1:6379/2";

/// A federation-gateway of `site`, in-process.
async fn gateway(names: &aurora_core::Names, site: &str, redis_url: &str) -> Launched {
    let instance = format!("{site}-1");
    let argv = vec![
        "federation-gateway",
        "--namespace",
        names.namespace(),
        "--site-id",
        site,
        "--redis-url",
        redis_url,
        "--nats-url",
        NATS_URL,
        "--ops-addr",
        "127.0.0.1:0",
        "--instance-id",
        &instance,
        "--log-format",
        "pretty",
        "--shutdown-timeout",
        "5s",
    ];
    let args: Args = aurora_core::config::parse_from::<Args, _, _>(
        federation_gateway::SERVICE,
        Args::RENAMED_ENV,
        argv,
    )
    .unwrap();
    let service: FederationGateway = args.into_service().unwrap();
    launch(
        service,
        LaunchOptions::local(&instance),
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

/// The gauge of indicators eve-ingest holds (one test per process: the recorder is ours).
fn iocs_loaded() -> f64 {
    let text = aurora_core::ops::metrics_handle().render();
    text.lines()
        .find_map(|l| l.strip_prefix("aurora_eve_ingest_iocs_loaded "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

fn is_sighting(doc: &Value) -> bool {
    doc["kind"] == "ioc_sighting"
}

/// The alert schema of proto-schemas (with the ioc_sighting kind's rules).
fn alert_schema() -> jsonschema::Validator {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto-schemas");
    let read = |f: &str| -> Value {
        serde_json::from_slice(&std::fs::read(dir.join(f)).unwrap()).unwrap()
    };
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .with_resource(
            "https://schemas.aurora-soc.dev/transport/ioc.schema.json",
            jsonschema::Resource::from_contents(read("ioc.schema.json")).unwrap(),
        )
        .build(&read("alert.schema.json"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_iocs_seen_in_the_samples_raise_one_alert_each() {
    let env = Env::with_redis(SITE_A_REDIS).await;
    let _site_b_cleanup = Cleanup::new(&env.names, NATS_URL, &[SITE_B_REDIS]);
    let names = env.names.clone();
    let site_a = redis(SITE_A_REDIS).await;
    let site_b = redis(SITE_B_REDIS).await;

    // Site A's own indicator, TLP:RED, on its stream before eve-ingest starts (the load).
    xadd_json(
        &site_a,
        &names.iocs(),
        &json!({"id": "ioc-red", "type": "ipv4", "value": "82.165.177.154", "tlp": "TLP:RED",
                "severity": "critical"}),
    )
    .await;
    let gw_a = gateway(&names, "site-a", SITE_A_REDIS).await;
    let gw_b = gateway(&names, "site-b", SITE_B_REDIS).await;
    let mut settings = env.settings();
    let mut sighting_settings = settings.sightings.clone().unwrap();
    sighting_settings.site_id = "site-a".into();
    settings.sightings = Some(sighting_settings);
    let service = start(settings, "a-1", Default::default()).await;
    wait_until(LONG, "eve-ingest ready", || async {
        service.readiness.is_ready().then_some(())
    })
    .await;
    assert_eq!(iocs_loaded(), 1.0);

    // Site B shares indicators (followed by eve-ingest once they land at site A): a domain
    // matched by suffix, an IP, the TLS SNI's name, one expired and one revoked.
    for doc in [
        json!({"id": "ioc-domain", "type": "domain", "value": "g1.dropbox.com", "tlp": "TLP:AMBER", "confidence": 0.9}),
        json!({"id": "ioc-ip", "type": "ipv4", "value": "8.8.4.4", "tlp": "TLP:GREEN", "confidence": 0.6}),
        json!({"id": "ioc-sni", "type": "domain", "value": "WWW.Google.com.", "tlp": "TLP:GREEN"}),
        json!({"id": "ioc-expired", "type": "domain", "value": "reddit.com", "valid_until": "2020-01-01T00:00:00Z"}),
        json!({"id": "ioc-revoked", "type": "domain", "value": "suricon.net"}),
        json!({"id": "ioc-revoked-2", "type": "domain", "value": "suricon.net", "revoked": true}),
        json!({"type": "url", "value": "http://not-looked-for.example/x"}),
    ] {
        xadd_json(&site_b, &names.iocs(), &doc).await;
    }
    let landed = wait_matching(&site_a, &names.iocs(), 7, "site B's IOCs at site A", |d| {
        d["origin_site"] == "site-b"
    })
    .await;
    assert_eq!(landed.len(), 7);
    // Red, domain, ip, sni: the expired and revoked ones are out, the url is not looked for.
    wait_until(LONG, "4 indicators held", || async {
        (iocs_loaded() == 4.0).then_some(())
    })
    .await;

    let lines = fixture_lines();
    let distinct = distinct_by_type(&lines).values().sum::<usize>() as u64;
    env.push(&lines).await;
    env.wait_stream_len(distinct).await;
    let sightings = wait_matching(&site_a, &names.alerts(), 5, "5 sightings", is_sighting).await;
    // What was found: each indicator once per flow it was seen in.
    let found: BTreeSet<(String, String, u64, String)> = sightings
        .iter()
        .map(|a| {
            (
                a["ioc"]["id"].as_str().unwrap().to_string(),
                a["matched_field"].as_str().unwrap().to_string(),
                a["flow_id"].as_u64().unwrap(),
                a["shared_by"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, u64, String)> = [
        ("ioc-domain", "dns.rrname", 542660046009438, "site-b"),
        ("ioc-ip", "dest_ip", 358186737135978, "site-b"),
        ("ioc-sni", "tls.sni", 1880489165303449, "site-b"),
        ("ioc-sni", "dns.rrname", 358186737135978, "site-b"),
        ("ioc-red", "src_ip", 1842518484266121, "site-a"),
    ]
    .into_iter()
    .map(|(i, f, flow, s)| (i.into(), f.into(), flow, s.into()))
    .collect();
    assert_eq!(found, expected);
    assert_eq!(sightings.len(), 5, "one alert per indicator and flow");

    let schema = alert_schema();
    for doc in &sightings {
        let errors: Vec<String> = schema.iter_errors(doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{doc}: {errors:?}");
        let alert: Alert = aurora_core::model::from_value(doc.clone()).unwrap();
        assert!(alert.title.starts_with("IOC sighting: "), "{}", alert.title);
        assert_eq!(alert.iocs.len(), 1);
    }
    let by_id =
        |id: &str| -> Vec<&Value> { sightings.iter().filter(|a| a["ioc"]["id"] == id).collect() };
    let domain = by_id("ioc-domain")[0];
    assert_eq!(domain["observed"], "block.g1.dropbox.com");
    assert_eq!(domain["tlp"], "TLP:AMBER");
    assert_eq!(domain["severity"], "high");
    assert_eq!(
        domain["title"],
        "IOC sighting: domain g1.dropbox.com in dns.rrname (shared by site-b)"
    );
    assert_eq!(by_id("ioc-ip")[0]["severity"], "medium");
    assert_eq!(by_id("ioc-sni")[0]["ioc"]["value"], "www.google.com");
    let red = by_id("ioc-red")[0];
    assert_eq!(red["tlp"], "TLP:RED");
    assert_eq!(red["iocs"][0]["tlp"], "TLP:RED");
    assert_eq!(red["severity"], "critical");
    // No document about the expired or revoked indicators, nor for any other value.
    assert!(sightings
        .iter()
        .all(|a| !["ioc-expired", "ioc-revoked", "ioc-revoked-2"]
            .contains(&a["ioc"]["id"].as_str().unwrap())));

    // The same lines again (a retry, another replica): the same ids, nothing new.
    env.push(&lines).await;
    wait_until(LONG, "the lines handled again", || async {
        let held = env.held("a-1").await;
        let left = llen(&mut env.conn(), &names.suricata_list()).await;
        let dup = aurora_core::ops::metrics_handle()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("aurora_eve_ingest_events_duplicate_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        (held == 0 && left == 0 && dup >= distinct as f64).then_some(())
    })
    .await;
    let again: Vec<Value> = stream_values(&site_a, &names.alerts())
        .await
        .into_iter()
        .filter(is_sighting)
        .collect();
    assert_eq!(again.len(), 5, "a retried line raises no second alert");

    // Site A's sightings reach site B, except the TLP:RED one. A marker written after them
    // shows site A's export has decided about everything before it.
    let marker = json!({"id": uuid::Uuid::new_v4().to_string(), "title": "marker", "severity": "high",
                        "status": "new", "source": "test", "timestamp": "2024-01-15T10:30:00Z"});
    xadd_json(&site_a, &names.alerts(), &marker).await;
    wait_matching(&site_b, &names.alerts(), 1, "the marker at site B", |d| {
        d["id"] == marker["id"]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_b: BTreeSet<String> = stream_values(&site_b, &names.alerts())
        .await
        .into_iter()
        .filter(is_sighting)
        .map(|a| a["ioc"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        at_b,
        ["ioc-domain", "ioc-ip", "ioc-sni"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );

    service.stop().await.unwrap();
    for gw in [gw_a, gw_b] {
        gw.shutdown();
        assert_eq!(gw.stopped().await, Stopped::Drained);
    }
}
