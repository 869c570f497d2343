//! Bad input where it enters device-registry (tokens and bodies of its API, entries of the
//! streams it reads), sent to the binary as built: 401/400 with an error message, or a
//! dead-letter record naming the reason and source stream, and the registry keeps serving.
//! Random requests get a clear 4xx, never a 5xx (the seed is printed; `E2E_SEED` replays a
//! run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aurora_core::auth::Permission;
use aurora_testkit::prelude::*;
use aurora_testkit::random::{
    path_segment, random_bytes, random_json, random_object, random_text, randomize_fields,
    seeded_rng,
};
use rand::Rng;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_registry_refuses_bad_tokens_and_bodies_and_dead_letters_bad_entries() {
    let names = aurora_testkit::names();
    let db = TestDb::create().await;
    let site = Site::new(&names, "site-a", 9).with_database(&db);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let registry = site.start(Svc::DeviceRegistry, &[]).await;

    for (what, t) in [
        ("forged", forged_token()),
        ("expired", expired_token()),
        ("alg none", alg_none_token()),
        ("garbage", "a.b.c".to_string()),
    ] {
        for path in ["/api/v1/devices", "/api/v1/firmware"] {
            let r = http()
                .get(registry.http_url(path))
                .bearer_auth(&t)
                .send()
                .await
                .unwrap();
            let (status, body) = json_response(r).await;
            assert_eq!(status, 401, "{what} token on {path}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
    }
    let r = http()
        .get(registry.http_url("/api/v1/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "no token");

    let fw = token(&[Permission::FirmwareManage]);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"model\": ".to_vec()),
        ("not an object", b"[]".to_vec()),
        ("missing fields", br#"{"model": "m"}"#.to_vec()),
        (
            "sha256 not hex",
            br#"{"model": "m", "version": "1", "sha256": "zz"}"#.to_vec(),
        ),
        ("invalid UTF-8", vec![b'{', 0xff, b'}']),
    ];
    assert_bodies_refused_with_400(
        || {
            http()
                .post(registry.http_url("/api/v1/firmware"))
                .bearer_auth(&fw)
        },
        bodies,
    )
    .await;
    // A huge body: refused (400 or 413), never taken in.
    let huge = json!({"model": "m".repeat(4 << 20), "version": "1", "sha256": "a".repeat(64)});
    // (An answer before the whole body was written shows as a broken pipe: also a refusal.)
    assert_body_refused(
        http()
            .post(registry.http_url("/api/v1/firmware"))
            .bearer_auth(&fw)
            .json(&huge),
        "a 4 MiB body",
    )
    .await;
    let r = http()
        .get(registry.http_url("/api/v1/devices?limit=-5"))
        .bearer_auth(token(&[Permission::DevicesRead]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "a bad query");

    // Bad entries on the streams it reads: dead-lettered with the reason.
    let mut conn = redis(&site.redis_url).await;
    xadd(&mut conn, &names.cps_registrations(), b"{not json").await;
    xadd(&mut conn, &names.cps_attestation(), b"[1,2]").await;
    xadd(&mut conn, &names.cps_alerts(), &[0xff, 0xfe, 0x00, 0x01]).await;
    let stream = names.deadletter("device-registry");
    let records = wait_until(WAIT, "three dead letters", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move {
            let r = dead_letters(&mut conn, &stream).await;
            (r.len() >= 3).then_some(r)
        }
    })
    .await;
    assert_eq!(records.len(), 3, "{records:#?}");
    for r in &records {
        assert!(!r.reason.is_empty(), "{r:?}");
        assert_eq!(r.service, "device-registry");
    }
    let sources: Vec<&str> = records.iter().map(|r| r.source.as_str()).collect();
    for s in [
        names.cps_registrations(),
        names.cps_attestation(),
        names.cps_alerts(),
    ] {
        assert!(sources.contains(&s.as_str()), "{s} in {sources:?}");
    }

    // Still serving: a good request works.
    let r = http()
        .post(registry.http_url("/api/v1/firmware"))
        .bearer_auth(&fw)
        .json(&json!({"model": "m", "version": "1", "sha256": "a".repeat(64)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(registry.readyz().await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_registry_answers_random_requests_with_a_clear_4xx_never_a_5xx() {
    const N: usize = 150;
    let mut rng = seeded_rng("device_registry_random");
    let names = aurora_testkit::names();
    let db = TestDb::create().await;
    let site = Site::new(&names, "site-a", 9).with_database(&db);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    // With an approver key, so that a well-formed privileged request is taken (202), as in
    // production, and not refused for want of one.
    let approver = aurora_core::approval::SigningKey::generate().public_base64();
    let registry = site
        .start(Svc::DeviceRegistry, &[("approval-public-keys", &approver)])
        .await;
    let all = token(&[
        Permission::DevicesRead,
        Permission::DevicesWrite,
        Permission::FirmwareManage,
    ]);
    let client = http();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..N {
        let id = if rng.gen_bool(0.5) {
            format!("dev-{}", rng.gen_range(0..5))
        } else {
            path_segment(&random_text(&mut rng, 0..140))
        };
        let body: Vec<u8> = match rng.gen_range(0..3) {
            0 => random_bytes(&mut rng, 300),
            1 => random_json(&mut rng, 3).to_string().into_bytes(),
            _ => {
                let mut o = random_object(&mut rng, 2);
                randomize_fields(
                    &mut rng,
                    &mut o,
                    &[
                        "model",
                        "version",
                        "sha256",
                        "public_key",
                        "action",
                        "params",
                        "ttl_seconds",
                        "reason",
                    ],
                    0.5,
                    1,
                );
                o.to_string().into_bytes()
            }
        };
        let query = if rng.gen_bool(0.3) {
            rng.gen_range(1..50).to_string()
        } else {
            path_segment(&random_text(&mut rng, 0..20))
        };
        let (method, path) = match rng.gen_range(0..8) {
            0 => (reqwest::Method::POST, "/api/v1/firmware".to_string()),
            1 => (reqwest::Method::PUT, format!("/api/v1/devices/{id}/key")),
            2 => (
                reqwest::Method::POST,
                format!("/api/v1/devices/{id}/commands"),
            ),
            3 => (
                reqwest::Method::POST,
                format!("/api/v1/devices/{id}/quarantine"),
            ),
            4 => (
                reqwest::Method::POST,
                format!("/api/v1/devices/{id}/attest"),
            ),
            5 => (reqwest::Method::GET, format!("/api/v1/devices/{id}")),
            6 => (
                reqwest::Method::GET,
                format!("/api/v1/devices?status={query}&limit={query}&cursor={id}"),
            ),
            _ => (
                reqwest::Method::DELETE,
                format!("/api/v1/firmware?model={query}&version={id}&sha256={query}"),
            ),
        };
        let r = client
            .request(method.clone(), registry.http_url(&path))
            .bearer_auth(&all)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert!(
            status < 500,
            "{method} {path} with {:?}: {status} {text}",
            String::from_utf8_lossy(&body)
        );
        if status >= 400 && status != 405 {
            let err: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            assert!(
                err["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{method} {path}: {status} without an error message: {text:?}"
            );
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(registry.readyz().await, Some(200));
    eprintln!("registry random: statuses {statuses:?}");
}
