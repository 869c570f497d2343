//! What the Aurora event-transport services share: the names of every stream, topic and
//! subject ([`names`]), the messages ([`model`]), the Redis Streams bus ([`bus`]), JWT auth
//! ([`auth`]), JetStream stream setup ([`jetstream`]), the ops endpoints and telemetry
//! ([`ops`]) and the shared flags ([`config`]).

pub mod auth;
pub mod bus;
pub mod config;
pub mod jetstream;
pub mod model;
pub mod names;
pub mod ops;

pub use names::Names;
