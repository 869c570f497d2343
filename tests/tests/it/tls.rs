//! TLS end to end: servers of the test's own speaking only TLS, with certificates the test
//! makes (aurora-testkit's `tls`): the services connect with the flags an operator gives
//! them, move a message through, and refuse a server whose certificate a wrong CA would have
//! to vouch for, saying why in `/readyz` (not ready, the certificate's issuer unknown).
//!
//! - mqtt-bridge to a Mosquitto with a TLS listener requiring client certificates
//!   (`mqtts://`, `--mqtt-ca-file`, `--mqtt-client-cert`, `--mqtt-client-key`); the device
//!   publishes over TLS with its own client certificate.
//! - eve-ingest to a NATS with TLS verifying client certificates (`--nats-tls-ca`,
//!   `--nats-tls-cert`, `--nats-tls-key`), an EVE line read back from the stream there; and
//!   to a NATS with user/password authorization (a wrong password refused, said so).
//! - mqtt-bridge to a Redis on `--tls-port` only (`rediss://`, the CA in `SSL_CERT_FILE`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use aurora_core::names::DeviceTopicKind;
use aurora_e2e::suricata_alert_line;
use aurora_testkit::prelude::*;
use aurora_testkit::process::binary;
use aurora_testkit::tls::{mosquitto_tls, path_str, TestCerts, TlsServer};

/// How long a service given a wrong CA is watched: it must say why well within this.
const REFUSAL: Duration = Duration::from_secs(20);

/// What a refusal of the server's certificate reads like, from rustls.
fn says_why(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("certificate") && (t.contains("unknownissuer") || t.contains("unknown issuer"))
}

/// Waits until `/readyz` of `service` shows `component` not ready with a detail that says
/// the certificate was refused, never ready meanwhile; returns the detail.
async fn refused(service: &mut Service, component: &str) -> String {
    let deadline = Instant::now() + REFUSAL;
    let mut last = String::new();
    loop {
        if let Some(status) = service.exited() {
            panic!(
                "{} exited ({status}) instead of waiting; log:\n{}",
                service.instance,
                service.log_tail(30)
            );
        }
        if let Some((status, report)) = service.ops().readyz_report().await {
            assert_ne!(status, 200, "ready with a wrong CA: {report}");
            let detail = report["components"][component]["detail"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert_eq!(
                report["components"][component]["ready"], false,
                "{component} ready with a wrong CA: {report}"
            );
            if says_why(&detail) {
                return detail;
            }
            last = report.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{}: /readyz never said why {component} is refused within {REFUSAL:?}: {last}\nlog:\n{}",
            service.instance,
            service.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `svc` of `site` with its own `flags` and extra variables (`SSL_CERT_FILE`), not waited for.
fn spawn_with_env(
    site: &Site,
    svc: Svc,
    flags: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> Service {
    let instance = format!(
        "{}-{}-{}",
        svc.name(),
        site.site_id,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let (ops, http) = (free_port(), free_port());
    let mut env = site.env(svc, &instance, ops, http, flags);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Service::spawn(svc, binary(svc.name()), &instance, env, ops, http)
}

/// `mosquitto_pub` over TLS to `port`, QoS 1; with `client_cert`, presenting the test's
/// client certificate. Whether the broker took it, and what the tool said.
fn publish_tls(
    certs: &TestCerts,
    port: u16,
    topic: &str,
    payload: &str,
    client_cert: bool,
) -> (bool, String) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["--cafile", path_str(&certs.ca)])
        .args(["-t", topic, "-m", payload]);
    if client_cert {
        cmd.args(["--cert", path_str(&certs.client_cert)])
            .args(["--key", path_str(&certs.client_key)]);
    }
    let out = cmd.output().expect("mosquitto_pub (apt mosquitto-clients)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_bridge_bridges_a_device_over_mutual_tls_and_refuses_a_wrong_ca() {
    let names = aurora_testkit::names();
    let certs = TestCerts::make();
    let broker = mosquitto_tls(&certs);
    let mut site = Site::new(&names, "site-a", 7);
    site.mqtt_url = format!("mqtts://127.0.0.1:{}", broker.port());
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let (ca, cert, key) = (
        path_str(&certs.ca),
        path_str(&certs.client_cert),
        path_str(&certs.client_key),
    );
    let _bridge = site
        .start(
            Svc::MqttBridge,
            &[
                ("mqtt-ca-file", ca),
                ("mqtt-client-cert", cert),
                ("mqtt-client-key", key),
            ],
        )
        .await;

    // The broker refuses a device without a client certificate.
    let topic = names.mqtt_sensor_topic("tls-dev-1", DeviceTopicKind::Telemetry);
    let (ok, said) = publish_tls(&certs, broker.port(), &topic, r#"{"seq":0}"#, false);
    assert!(
        !ok,
        "the broker took a device without a certificate: {said}"
    );

    // A device with its certificate: its message reaches the telemetry stream.
    let (ok, said) = publish_tls(
        &certs,
        broker.port(),
        &topic,
        r#"{"seq":1,"temperature_c":21.5}"#,
        true,
    );
    assert!(ok, "mosquitto_pub over TLS: {said}");
    let conn = redis(&site.redis_url).await;
    let docs = wait_stream_docs(&conn, &names.cps_telemetry(), 1, "the device's message").await;
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(docs[0].1["device_id"], "tls-dev-1", "{}", docs[0].1);
    assert_eq!(docs[0].1["seq"], 1, "{}", docs[0].1);

    // A bridge told to trust another CA does not connect, and says why.
    let wrong = path_str(&certs.wrong_ca);
    let mut refusing = site.spawn(
        Svc::MqttBridge,
        &[
            ("mqtt-ca-file", wrong),
            ("mqtt-client-cert", cert),
            ("mqtt-client-key", key),
        ],
    );
    let report = loop {
        let (_, report) = refusing
            .ops()
            .readyz_report()
            .await
            .unwrap_or((0, serde_json::Value::Null));
        if report["components"].is_object() {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let parts: Vec<String> = report["components"]
        .as_object()
        .map(|c| {
            c.keys()
                .filter(|k| k.starts_with("mqtt"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    assert!(!parts.is_empty(), "no MQTT part in {report}");
    for part in &parts {
        let detail = refused(&mut refusing, part).await;
        eprintln!("mqtt-bridge, wrong CA, {part}: {detail}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eve_ingest_uses_nats_over_mutual_tls_and_refuses_a_wrong_ca() {
    let names = aurora_testkit::names();
    let certs = TestCerts::make();
    let nats = TlsServer::nats_tls(&certs, true);
    let mut site = Site::new(&names, "site-a", 7);
    site.nats_url = nats.url();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let (ca, cert, key) = (
        path_str(&certs.ca),
        path_str(&certs.client_cert),
        path_str(&certs.client_key),
    );
    let ingest = site
        .start(
            Svc::EveIngest,
            &[
                ("nats-tls-ca", ca),
                ("nats-tls-cert", cert),
                ("nats-tls-key", key),
            ],
        )
        .await;
    let (status, report) = ingest.ops().readyz_report().await.expect("readyz");
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["components"]["nats"]["ready"], true, "{report}");

    // An EVE line goes through the TLS connection into the stream on that server, read back
    // by the test over TLS with its own client certificate.
    let mut conn = redis(&site.redis_url).await;
    lpush(
        &mut conn,
        &names.suricata_list(),
        &[suricata_alert_line().into_bytes()],
    )
    .await;
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(certs.ca.clone())
        .add_client_certificate(certs.client_cert.clone(), certs.client_key.clone())
        .require_tls(true)
        .connect(nats.url())
        .await
        .expect("the test's own TLS connection to NATS");
    let js = async_nats::jetstream::new(client);
    let stream = names.suricata_stream();
    wait_until(WAIT, "the EVE line in the stream on the TLS NATS", || {
        let js = js.clone();
        let stream = stream.clone();
        async move {
            let mut s = js.get_stream(&stream).await.ok()?;
            let n = s.info().await.ok()?.state.messages;
            (n == 1).then_some(())
        }
    })
    .await;

    let wrong = path_str(&certs.wrong_ca);
    let mut refusing = site.spawn(
        Svc::EveIngest,
        &[
            ("nats-tls-ca", wrong),
            ("nats-tls-cert", cert),
            ("nats-tls-key", key),
        ],
    );
    let detail = refused(&mut refusing, "nats").await;
    eprintln!("eve-ingest, wrong CA: {detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eve_ingest_logs_in_to_nats_with_user_and_password() {
    let names = aurora_testkit::names();
    let nats = TlsServer::nats_with_password("aurora", "s3cret-pass");
    let mut site = Site::new(&names, "site-a", 7);
    site.nats_url = nats.url();
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let ingest = site
        .start(
            Svc::EveIngest,
            &[("nats-user", "aurora"), ("nats-password", "s3cret-pass")],
        )
        .await;
    let (status, report) = ingest.ops().readyz_report().await.expect("readyz");
    assert_eq!(status, 200, "{report}");
    assert!(
        !ingest.log().contains("s3cret-pass"),
        "the password is in the log"
    );

    // A wrong password: not ready, and /readyz says the server refused it.
    let refusing = site.spawn(
        Svc::EveIngest,
        &[("nats-user", "aurora"), ("nats-password", "wrong-pass")],
    );
    let deadline = Instant::now() + REFUSAL;
    let detail = loop {
        let (status, report) = refusing
            .ops()
            .readyz_report()
            .await
            .unwrap_or((0, serde_json::Value::Null));
        assert_ne!(status, 200, "ready with a wrong password: {report}");
        let detail = report["components"]["nats"]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if detail.contains("authorization violation") {
            break detail;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said the password was refused: {report}\nlog:\n{}",
            refusing.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !detail.contains("wrong-pass"),
        "the password shown: {detail}"
    );
    assert!(
        !refusing.log().contains("wrong-pass"),
        "the password in the log"
    );
    eprintln!("eve-ingest, wrong NATS password: {detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_bridge_writes_to_redis_over_tls_and_refuses_a_wrong_ca() {
    let names = aurora_testkit::names();
    let certs = TestCerts::make();
    let redis_tls = TlsServer::redis_tls(&certs);
    let mut site = Site::new(&names, "site-a", 0);
    site.redis_url = format!("{}/0", redis_tls.url());
    let ca = path_str(&certs.ca);
    let mut bridge = spawn_with_env(&site, Svc::MqttBridge, &[], &[("SSL_CERT_FILE", ca)]);
    bridge.wait_ready().await;

    // A device message goes through the TLS connection into the stream.
    let device = MqttDevice::shared(&format!("e2e-tls-{}", names.namespace()));
    device.wait_connected().await;
    let topic = names.mqtt_sensor_topic("tls-dev-2", DeviceTopicKind::Telemetry);
    device.publish(&topic, r#"{"seq":2}"#).await;
    let stream = names.cps_telemetry();
    let port = redis_tls.port().to_string();
    wait_until(WAIT, "one entry in the TLS Redis's stream", || {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", ca, "-h", "127.0.0.1", "-p", &port])
            .args(["XLEN", &stream])
            .output();
        async move {
            let out = out.ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == "1").then_some(())
        }
    })
    .await;

    let wrong = path_str(&certs.wrong_ca);
    let mut refusing = spawn_with_env(&site, Svc::MqttBridge, &[], &[("SSL_CERT_FILE", wrong)]);
    let detail = refused(&mut refusing, "redis").await;
    eprintln!("mqtt-bridge, Redis, wrong CA: {detail}");
}
