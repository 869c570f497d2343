//! What the parts of the running service share: the configuration, the PostgreSQL pool and
//! the producer of the bus.

use aurora_core::bus::Producer;
use sqlx::PgPool;

use crate::config::Config;

/// Cheap to clone: the pool and the producer are handles.
#[derive(Clone)]
pub struct Shared {
    pub cfg: Config,
    pub pool: PgPool,
    pub producer: Producer,
}
