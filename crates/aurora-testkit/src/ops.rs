//! The ops port of a service (`/healthz`, `/readyz`, `/metrics`), asked with a plain
//! HTTP/1.0 GET over a fresh connection each time, so that "nothing listens"
//! (connection refused) is told apart from any answer.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one GET may take.
pub const GET_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer: its status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// `GET path` on `addr` within `timeout`. A timeout is an error of kind `TimedOut`; nothing
/// listening is `ConnectionRefused`.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Answer> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        parse(&raw)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("GET {path} on {addr}: no answer within {timeout:?}"),
        )),
    }
}

fn parse(raw: &[u8]) -> io::Result<Answer> {
    let text = String::from_utf8_lossy(raw);
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("not HTTP: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}

/// The ops port of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ops {
    pub addr: SocketAddr,
}

impl Ops {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// On loopback.
    pub fn port(port: u16) -> Self {
        Self::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    pub async fn get(&self, path: &str) -> io::Result<Answer> {
        get(self.addr, path, GET_TIMEOUT).await
    }

    /// The status of `GET /healthz` (None when nothing answers).
    pub async fn healthz(&self) -> Option<u16> {
        self.get("/healthz").await.ok().map(|a| a.status)
    }

    /// The status of `GET /readyz` (None when nothing answers).
    pub async fn readyz(&self) -> Option<u16> {
        self.get("/readyz").await.ok().map(|a| a.status)
    }

    /// The status of `GET /readyz` and its JSON report (`ready`, `draining`, `components`
    /// by name with `ready` and `detail`, `warnings`).
    pub async fn readyz_report(&self) -> Option<(u16, Value)> {
        let a = self.get("/readyz").await.ok()?;
        Some((a.status, a.json()))
    }

    /// The Prometheus page of `GET /metrics` (empty when nothing answers).
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .map(|a| a.body)
            .unwrap_or_default()
    }

    /// A counter or gauge, summed over the series whose labels contain every `label=value`
    /// given (0 when absent or when nothing answers).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }
}

/// Sums the samples of `name` in a Prometheus text page whose labels contain every pair.
pub fn metric_sum(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_series_with_the_labels() {
        let page = "# TYPE x counter\nx{a=\"1\",b=\"2\"} 3\nx{a=\"1\"} 4\nx_total 9\nx 1\n";
        assert_eq!(metric_sum(page, "x", &[]), 8.0);
        assert_eq!(metric_sum(page, "x", &[("a", "1")]), 7.0);
        assert_eq!(metric_sum(page, "x", &[("b", "2")]), 3.0);
        assert_eq!(metric_sum(page, "x_total", &[]), 9.0);
        assert_eq!(metric_sum(page, "y", &[]), 0.0);
    }

    #[test]
    fn parses_an_answer() {
        let a =
            parse(b"HTTP/1.0 503 Service Unavailable\r\ncontent-type: x\r\n\r\n{\"ready\":false}")
                .expect("an answer");
        assert_eq!(a.status, 503);
        assert_eq!(a.json()["ready"], false);
        assert!(parse(b"garbage").is_err());
    }
}
