//! What `/readyz` is made of: the dependencies (Redis, NATS), watched by the one dependency
//! watcher of aurora-core, and the input (recovery done, the file open).

use std::time::Duration;

use aurora_core::bus::{redacted_url, Conn};
use aurora_core::health::{Dependencies, Dependency};

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

/// NATS while start-up waits for its first connection: not ready, naming the server(s).
pub fn nats_connecting(client: async_nats::Client, urls: &str) -> Dependency {
    let url = shown_urls(urls);
    Dependency::new(NATS, move || {
        let state = client.connection_state();
        let url = url.clone();
        async move {
            match state {
                async_nats::connection::State::Connected => Ok(()),
                other => Err(format!("connecting to {url} ({other})")),
            }
        }
    })
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
