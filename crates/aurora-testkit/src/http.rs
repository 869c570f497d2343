//! An HTTP client for a service's API, and its answers as JSON.

use std::time::Duration;

use serde_json::Value;

/// A client with a 20 s timeout.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTP client")
}

/// Status and JSON body (Null when the body is not JSON).
pub async fn json_response(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Sends a request carrying an oversized body and checks that it is refused: an answer of
/// 400 or 413, or a send error when the server answered and closed before the client had
/// written the whole body (the client then sees a broken pipe). `what` names the case.
pub async fn assert_body_refused(request: reqwest::RequestBuilder, what: &str) {
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            assert!(matches!(status, 400 | 413), "{what}: {status}");
        }
        Err(e) => assert!(e.is_request(), "{what}: {e}"),
    }
}

/// Sends each body of `bodies` (what it is, its bytes) as JSON with the request `request`
/// makes, and checks that each is refused with 400 and a non-empty `error`.
pub async fn assert_bodies_refused_with_400(
    request: impl Fn() -> reqwest::RequestBuilder,
    bodies: Vec<(&str, Vec<u8>)>,
) {
    for (what, body) in bodies {
        let r = request()
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (status, body) = json_response(r).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
    }
}
