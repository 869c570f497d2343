//! An analyst's console: a WebSocket client of a ws-gateway channel (tokio-tungstenite).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An analyst's console connected to one channel of a ws-gateway.
pub struct Console {
    pub ws: Socket,
    /// Every JSON frame received so far.
    pub seen: Vec<Value>,
}

impl Console {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"));
        Self {
            ws,
            seen: Vec::new(),
        }
    }

    /// Reads frames until one matches `pred` (returned), or fails after `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what}; frames seen: {:?}",
                    self.seen
                ),
                Ok(None) => panic!("connection ended while waiting for {what}"),
                Ok(Some(Err(e))) => panic!("socket error while waiting for {what}: {e}"),
                Ok(Some(Ok(Message::Close(f)))) => {
                    panic!("closed ({f:?}) while waiting for {what}")
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("a JSON frame");
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Keeps reading for `period`, collecting frames; fails if the connection ends.
    pub async fn drain_for(&mut self, period: Duration) {
        let deadline = tokio::time::Instant::now() + period;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => {
                    self.seen
                        .push(serde_json::from_str(t.as_str()).expect("a JSON frame"));
                }
                Ok(Some(Ok(Message::Close(f)))) => panic!("closed while draining: {f:?}"),
                Ok(None) | Ok(Some(Err(_))) => panic!("connection ended while draining"),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Frames seen whose `field` equals `value`.
    pub fn count(&self, field: &str, value: &str) -> usize {
        self.seen
            .iter()
            .filter(|v| v.get(field).and_then(Value::as_str) == Some(value))
            .count()
    }

    pub async fn send(
        &mut self,
        msg: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(msg).await
    }
}

/// The next text frame of `ws` as JSON, other frames skipped; fails on a close, an error,
/// a frame that is not JSON, or after `timeout`.
pub async fn next_json(ws: &mut Socket, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no frame within {timeout:?}"),
            Ok(None) => panic!("connection ended while waiting for a frame"),
            Ok(Some(Err(e))) => panic!("socket error while waiting for a frame: {e}"),
            Ok(Some(Ok(Message::Close(f)))) => panic!("closed while waiting for a frame: {f:?}"),
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("not a JSON frame ({e}): {t}"))
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Sends a normal close (1000) and reads until the server's close: its code and reason.
pub async fn close_normally(ws: &mut Socket, timeout: Duration) -> Option<(u16, String)> {
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap_or_else(|e| panic!("send a close frame: {e}"));
    close_frame(ws, timeout).await.0
}

/// Reads until the server closes: the close code (None when the connection ended without a
/// close frame). Fails after `timeout`.
pub async fn close_code(ws: &mut Socket, timeout: Duration) -> Option<u16> {
    close_frame(ws, timeout).await.0.map(|(code, _)| code)
}

/// Reads until the server closes: its close code and reason (None when the connection ended
/// without a close frame), and how many text frames came before. Fails after `timeout`.
pub async fn close_frame(ws: &mut Socket, timeout: Duration) -> (Option<(u16, String)>, usize) {
    let mut texts = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close within {timeout:?}"),
            Ok(None) | Ok(Some(Err(_))) => return (None, texts),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    texts,
                )
            }
            Ok(Some(Ok(Message::Text(_)))) => texts += 1,
            Ok(Some(Ok(_))) => {}
        }
    }
}
