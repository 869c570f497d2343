//! What `/readyz` is made of: the dependencies (Redis, NATS), watched by the one dependency
//! watcher of aurora-core, and the input (recovery done, the file open).

use std::time::Duration;

use aurora_core::bus::Conn;
use aurora_core::health::{Dependencies, Dependency};

pub use aurora_core::health::{NATS, REDIS};

/// The readiness part of the input: ready once what this replica held at start was looked
/// at (list) or the file is open (file).
pub const INPUT: &str = "input";

/// How often Redis is pinged and the NATS connection looked at.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// NATS while start-up waits for its first connection: not ready, naming the server(s).
pub fn nats_connecting(client: async_nats::Client, url: String) -> Dependency {
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
