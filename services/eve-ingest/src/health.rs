//! What `/readyz` is made of: the dependencies (Redis, NATS), watched by the one dependency
//! watcher of aurora-core, and the input (recovery done, the file open).

use std::time::Duration;

use anyhow::Context as _;
use aurora_core::bus::{redacted_url, Conn};
use aurora_core::config::NatsArgs;
use aurora_core::health::{connect_at_start, Dependencies, Dependency};
use aurora_core::ops::Readiness;
use tokio_util::sync::CancellationToken;

pub use aurora_core::health::{NATS, REDIS};

/// The readiness part of the input: ready once what this replica held at start was looked
/// at (list) or the file is open (file).
pub const INPUT: &str = "input";

/// How often Redis is pinged and the NATS connection looked at.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Server URLs (comma separated) as `/readyz` and logs show them: without passwords.
pub fn shown_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| redacted_url(url.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

/// NATS at start-up ([`connect_at_start`]): the client once connected (it connects in the
/// background); settings it cannot use (URL, credentials) end the start.
pub async fn nats_at_start(
    ready: &Readiness,
    stop: &CancellationToken,
    nats: &NatsArgs,
    name: &str,
) -> anyhow::Result<async_nats::Client> {
    let (at, client) = (shown_urls(&nats.nats_url), nats.connect(name).await);
    let client = client.with_context(|| format!("cannot use {NATS} at {at}"))?;
    let up = || async {
        Dependency::nats(client.clone())
            .check()
            .await
            .map_err(anyhow::Error::msg)
    };
    connect_at_start(ready, stop, NATS, &at, |_| false, up)
        .await
        .map(|()| client)
}

/// Redis (a `PING`) and NATS (the client's connection state).
pub fn dependencies(redis: Conn, nats: async_nats::Client) -> Dependencies {
    Dependencies::new()
        .with(Dependency::redis(redis))
        .with(Dependency::nats(nats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_keep_no_password() {
        assert_eq!(
            shown_urls("nats://a:secret@n1:4222, nats://n2:4222"),
            "nats://a:***@n1:4222,nats://n2:4222"
        );
        assert_eq!(
            shown_urls("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
