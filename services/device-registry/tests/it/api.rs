//! Every API route with and without permission, with bad input and unknown devices, and the
//! OpenAPI document against the router.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeSet;

use aurora_core::auth::Permission;
use chrono::Utc;
use common::*;
use device_registry::api;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[test]
fn the_openapi_document_lists_exactly_the_routes_of_the_router() {
    let doc: Value = serde_json::from_str(api::OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = api::routes()
        .into_iter()
        .map(|(m, p, _)| (m.as_str().to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routed);
}

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn every_route_checks_identity_permission_input_and_existence() {
    // No privileged actions: every route acts at once (tests/it/actions.rs has the approvals).
    let (_db, names, svc, pool, conn) = Registry::start(|c| c.privileged_actions.clear())
        .await
        .parts();
    let api = Api {
        client: reqwest::Client::new(),
        base: svc.base.clone(),
    };

    let devices: Vec<SimDevice> = (0..5).map(|_| SimDevice::new("api")).collect();
    for d in &devices {
        xadd_json(&conn, &names.cps_registrations(), &d.seen(Utc::now())).await;
    }
    aurora_testkit::wait_until(LONG, "5 devices", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
            .fetch_one(&pool)
            .await
            .unwrap();
        (n == 5).then_some(())
    })
    .await;
    let dev = &devices[0].id;

    let read = token(&[Permission::DevicesRead]);
    let write = token(&[Permission::DevicesWrite]);
    let firmware = token(&[Permission::FirmwareManage]);
    let none = token(&[Permission::WsAlerts]);
    let forged = aurora_core::auth::Minter::hs256(b"other").token(
        "eve",
        &Permission::ALL,
        std::time::Duration::from_secs(60),
    );

    let sha = GOOD_SHA;
    let routes: Vec<(Method, String, &str, Option<Value>)> = vec![
        (Method::GET, "/api/v1/devices".into(), &read, None),
        (Method::GET, format!("/api/v1/devices/{dev}"), &read, None),
        (
            Method::GET,
            format!("/api/v1/devices/{dev}/commands"),
            &read,
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{dev}/quarantine"),
            &write,
            Some(json!({"reason": "test"})),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{dev}/commands"),
            &write,
            Some(json!({"action": "reboot"})),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{dev}/attest"),
            &write,
            None,
        ),
        (
            Method::PUT,
            format!("/api/v1/devices/{dev}/key"),
            &write,
            Some(json!({"public_key": devices[0].public_key_b64()})),
        ),
        (Method::GET, "/api/v1/firmware".into(), &firmware, None),
        (
            Method::POST,
            "/api/v1/firmware".into(),
            &firmware,
            Some(json!({"model": MODEL, "version": VERSION, "sha256": sha})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/firmware?model={MODEL}&version={VERSION}&sha256={sha}"),
            &firmware,
            None,
        ),
    ];
    for (method, path, good, body) in &routes {
        let (s, b) = api.call(method.clone(), path, None, body.clone()).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        assert!(b["error"].is_string());
        let (s, _) = api
            .call(method.clone(), path, Some(&forged), body.clone())
            .await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a forged token"
        );
        let (s, b) = api
            .call(method.clone(), path, Some(&none), body.clone())
            .await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "{method} {path} without the permission"
        );
        assert!(b["error"].as_str().unwrap().contains("permission"));
        let (s, b) = api
            .call(method.clone(), path, Some(good), body.clone())
            .await;
        assert!(s.is_success(), "{method} {path}: {s} {b}");
    }
    // The token may also come as ?token= (and then never in logs).
    let (s, _) = api
        .call(
            Method::GET,
            &format!("/api/v1/devices?token={read}"),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // Unknown devices: 404 on every device route.
    for (method, path, tok, body) in [
        (Method::GET, "/api/v1/devices/nope-404", &read, None),
        (
            Method::POST,
            "/api/v1/devices/nope-404/quarantine",
            &write,
            None,
        ),
        (
            Method::POST,
            "/api/v1/devices/nope-404/commands",
            &write,
            Some(json!({"action": "reboot"})),
        ),
        (
            Method::POST,
            "/api/v1/devices/nope-404/attest",
            &write,
            None,
        ),
        (
            Method::PUT,
            "/api/v1/devices/nope-404/key",
            &write,
            Some(json!({"public_key": devices[0].public_key_b64()})),
        ),
    ] {
        let (s, b) = api.call(method.clone(), path, Some(tok), body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {b}");
        assert!(b["error"].as_str().unwrap().contains("unknown device"));
    }
    let (s, _) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/firmware?model=x&version=y&sha256={sha}"),
            Some(&firmware),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Bad input: 400 with a message.
    for (method, path, tok, body) in [
        (
            Method::GET,
            "/api/v1/devices?status=bogus".to_string(),
            &read,
            None,
        ),
        (
            Method::GET,
            "/api/v1/devices?limit=0".to_string(),
            &read,
            None,
        ),
        (
            Method::GET,
            "/api/v1/devices?seen_after=yesterday".to_string(),
            &read,
            None,
        ),
        (
            Method::GET,
            "/api/v1/devices?cursor=%%%".to_string(),
            &read,
            None,
        ),
        (
            Method::GET,
            "/api/v1/devices/bad%20id".to_string(),
            &read,
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{dev}/quarantine"),
            &write,
            Some(json!({"reason": 5})),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{dev}/commands"),
            &write,
            Some(json!({"action": "Rm -rf"})),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{dev}/commands"),
            &write,
            Some(json!({"action": "attest"})),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{dev}/commands"),
            &write,
            Some(json!({"action": "x", "params": [1]})),
        ),
        (
            Method::PUT,
            format!("/api/v1/devices/{dev}/key"),
            &write,
            Some(json!({"public_key": "c2hvcnQ="})),
        ),
        (
            Method::PUT,
            format!("/api/v1/devices/{dev}/key"),
            &write,
            Some(json!({"key": "x"})),
        ),
        (
            Method::POST,
            "/api/v1/firmware".to_string(),
            &firmware,
            Some(json!({"model": "m", "version": "1", "sha256": "zz"})),
        ),
        (
            Method::DELETE,
            "/api/v1/firmware?model=m".to_string(),
            &firmware,
            None,
        ),
    ] {
        let (s, b) = api.call(method.clone(), &path, Some(tok), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path}: {b}");
        assert!(!b["error"].as_str().unwrap().is_empty());
    }

    // What the successful calls did.
    let (_, d) = api
        .call(
            Method::GET,
            &format!("/api/v1/devices/{dev}"),
            Some(&read),
            None,
        )
        .await;
    assert_eq!(d["status"], "quarantined");
    assert_eq!(d["has_public_key"], true);
    let (s, by_uuid) = api
        .call(
            Method::GET,
            &format!("/api/v1/devices/{}", d["id"].as_str().unwrap()),
            Some(&read),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(by_uuid["device_id"], dev.as_str());
    let commands = stream_values(&conn, &names.cps_commands()).await;
    let actions: Vec<&str> = commands
        .iter()
        .filter(|c| c["device_id"] == dev.as_str())
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"quarantine") && actions.contains(&"reboot"),
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "attest").count(),
        2,
        "registration + on demand"
    );

    // Cursor pagination walks every device once; filters apply.
    let mut seen = Vec::new();
    let mut path = "/api/v1/devices?limit=2".to_string();
    loop {
        let (s, page) = api.call(Method::GET, &path, Some(&read), None).await;
        assert_eq!(s, StatusCode::OK);
        seen.extend(
            page["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["device_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/devices?limit=2&cursor={c}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    let (_, q) = api
        .call(
            Method::GET,
            "/api/v1/devices?status=quarantined",
            Some(&read),
            None,
        )
        .await;
    assert_eq!(q["devices"].as_array().unwrap().len(), 1);
    let (_, m) = api
        .call(
            Method::GET,
            "/api/v1/devices?model=other&seen_after=2000-01-01T00:00:00Z",
            Some(&read),
            None,
        )
        .await;
    assert!(m["devices"].as_array().unwrap().is_empty());

    // The allow-list round trip (added, then deleted above): add again, list, idempotent add.
    let fw = json!({"model": MODEL, "version": VERSION, "sha256": sha.to_uppercase()});
    let (s, _) = api
        .call(
            Method::POST,
            "/api/v1/firmware",
            Some(&firmware),
            Some(fw.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = api
        .call(Method::POST, "/api/v1/firmware", Some(&firmware), Some(fw))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = api
        .call(
            Method::GET,
            &format!("/api/v1/firmware?model={MODEL}"),
            Some(&firmware),
            None,
        )
        .await;
    assert_eq!(list["firmware"][0]["sha256"], sha, "stored lower case");

    // The document itself is served without a token.
    let (s, doc) = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    // Ops endpoints.
    assert_eq!(svc.ops.readyz().await, Some(200));
    let metrics = svc.ops.metrics().await;
    assert!(metrics.contains("aurora_device_registry_http_requests_total"));
    svc.stop().await;
}
