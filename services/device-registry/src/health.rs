//! The dependencies of the service as `/readyz` reports them: PostgreSQL (`postgres`) and
//! Redis (`redis`). One watcher keeps them true; a consumer whose batch failed waits on them
//! before it reads the batch again.

use std::time::Duration;

use aurora_core::bus::Conn;
use aurora_core::health::{Dependencies, Dependency};
use sqlx::PgPool;

use crate::db;

/// The readiness name of PostgreSQL.
pub const POSTGRES: &str = "postgres";

/// How often the watcher looks at the dependencies.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// PostgreSQL answers `SELECT 1` through the pool.
pub fn postgres(pool: PgPool) -> Dependency {
    Dependency::new(POSTGRES, move || {
        let pool = pool.clone();
        async move { db::ping(&pool).await.map_err(|e| e.to_string()) }
    })
}

/// PostgreSQL and Redis.
pub fn dependencies(pool: PgPool, redis: Conn) -> Dependencies {
    Dependencies::new()
        .with(postgres(pool))
        .with(Dependency::redis(redis))
}
