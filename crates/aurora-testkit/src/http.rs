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
