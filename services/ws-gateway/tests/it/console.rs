//! The console in a real browser: headless Chromium (Debian's `chromium`), driven over the
//! DevTools protocol. It connects with a pasted token, shows an alert published to the stream,
//! and a click on "Approve" changes the approval's state in Redis.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aurora_core::auth::Permission;
use chrono::Utc;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools session on one page.
struct Page {
    ws: Socket,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::Text(request.to_string().into()))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("DevTools answer")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    async fn wait_true(&mut self, what: &str, expression: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.eval(expression).await == Value::Bool(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn launch() -> (Browser, Page) {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} not found: run `make services` (it installs Debian's chromium) to run the console test"
    );
    let port = aurora_testkit::free_port();
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-dev-shm-usage",
            &format!("--remote-debugging-port={port}"),
            &format!("--user-data-dir={}", profile.path().display()),
            "about:blank",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let browser = Browser {
        child,
        _profile: profile,
    };
    let url = aurora_testkit::wait_until(Duration::from_secs(30), "chromium DevTools", || async {
        let list: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        list.as_array()?
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(String::from))
    })
    .await;
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    (browser, Page { ws, next_id: 0 })
}

#[tokio::test]
async fn the_console_shows_live_alerts_and_approves_with_a_click() {
    let gw = TestGateway::start(|_| {}).await;
    let (_browser, mut page) = launch().await;
    let token = token_valid_for(
        "analyst-console",
        &[
            Permission::WsAlerts,
            Permission::WsAgentThoughts,
            Permission::ApprovalsManage,
        ],
        Duration::from_secs(600),
    );

    page.call("Page.enable", json!({})).await;
    page.call(
        "Page.navigate",
        json!({"url": format!("http://{}/", gw.http)}),
    )
    .await;
    page.wait_true(
        "the console page",
        "document.readyState === 'complete' && !!document.getElementById('connect')",
    )
    .await;
    page.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('connect').click(); true",
        json!(token)
    ))
    .await;
    page.wait_true(
        "three live channels",
        "['alerts','agent-thoughts','approvals'].every(c => document.getElementById('state-' + c).textContent === 'live')",
    )
    .await;

    // An alert written to the stream appears, in its severity's colour.
    let p = redis(REDIS_URL).await;
    let title = format!("C2 beacon {}", uuid::Uuid::new_v4());
    let mut doc = alert(1);
    doc["title"] = json!(title);
    doc["severity"] = json!("critical");
    xadd_json(&p, &gw.names.alerts(), &doc).await;
    page.wait_true(
        "the alert on the page",
        &format!(
            "[...document.querySelectorAll('#alerts li')].some(li => li.textContent.includes({}) && li.querySelector('.sev-critical'))",
            json!(title)
        ),
    )
    .await;

    // An approval appears with its buttons; a click approves it.
    let id = uuid::Uuid::new_v4();
    let approval = json!({
        "id": id, "action": "Isolate workstation-042", "risk_level": "high", "status": "pending",
        "requested_by": "incident_responder", "requested_at": Utc::now(),
        "expires_at": Utc::now() + chrono::Duration::hours(1),
    });
    xadd_json(&p, &gw.names.approvals(), &approval).await;
    let button =
        format!("document.querySelector('#approvals li[data-id=\"{id}\"] button.approve')");
    page.wait_true("the approve button", &format!("!!{button}"))
        .await;
    page.eval(&format!("{button}.click(); true")).await;

    let key = gw.names.state_key("ws-gateway", &format!("approval:{id}"));
    let mut conn = redis(REDIS_URL).await;
    let doc = aurora_testkit::wait_until(WAIT, "the approval approved in Redis", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            let (status, doc): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(&key)
                .arg("status")
                .arg("doc")
                .query_async(&mut conn)
                .await
                .ok()?;
            (status.as_deref() == Some("approved")).then_some(doc?)
        }
    })
    .await;
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["decided_by"], "analyst-console");
    // The page shows the new state (from the approvals stream).
    page.wait_true(
        "the approved state on the page",
        &format!("document.querySelector('#approvals li[data-id=\"{id}\"]').dataset.status === 'approved'"),
    )
    .await;
    let _: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
}
