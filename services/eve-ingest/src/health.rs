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

pub use aurora_core::health::{nats_at_start, shown_urls};

/// Redis (a `PING`) and NATS (the client's connection state).
pub fn dependencies(redis: Conn, nats: async_nats::Client) -> Dependencies {
    Dependencies::new()
        .with(Dependency::redis(redis))
        .with(Dependency::nats(nats))
}
