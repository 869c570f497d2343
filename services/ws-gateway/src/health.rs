//! What the gateway depends on and how `/readyz` says so: Redis (`redis`, watched by the
//! one dependency watcher) and one part per stream reader (`stream:alerts`,
//! `stream:agent-thoughts`, `stream:approvals`), ready only while its XREAD works.

use std::time::Duration;

use aurora_core::bus::Conn;
use aurora_core::health::{Dependencies, Dependency};
use aurora_core::names::Channel;

/// How often the dependency watcher pings Redis.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The gateway's dependencies: the site's Redis.
pub fn dependencies(conn: Conn) -> Dependencies {
    Dependencies::new().with(Dependency::redis(conn))
}

/// The readiness part of a channel's stream reader.
pub fn stream_part(channel: Channel) -> String {
    format!("stream:{}", channel.as_str())
}
