//! What the Aurora event-transport services share: the names of every stream, topic and
//! subject ([`names`]), the messages ([`model`]), the Redis Streams bus ([`bus`]), JWT auth
//! ([`auth`]), the guard of every listener ([`listener`]), JetStream stream setup ([`jetstream`]), the ops endpoints and telemetry
//! ([`ops`]), the shared flags ([`config`]), and the one lifecycle of a service ([`service`]):
//! start-up, dependency health ([`health`]), back-off ([`retry`]), the stream consumer
//! ([`consumer`]) and the drain; whether Redis and JetStream keep what they acknowledge
//! ([`durability`]); W3C trace context across hops ([`trace`]); the
//! loss ledger of every stream and consumer group ([`ledger`]).

pub mod approval;
pub mod auth;
pub mod bus;
pub mod config;
pub mod consumer;
pub mod durability;
pub mod health;
pub mod jetstream;
pub mod ledger;
pub mod listener;
pub mod model;
pub mod names;
pub mod ops;
pub mod redis_link;
pub mod replicas;
pub mod retry;
pub mod service;
pub mod trace;

pub use names::Names;
