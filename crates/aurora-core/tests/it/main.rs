//! Every integration test of aurora-core, one module per file (`common`: what they share).
//! One test binary rather than one per file, so the build links the dependency tree once.

mod auth_keys;
mod bus;
mod common;
mod consumer_proptest;
mod durability;
mod ledger;
mod listener;
mod parsers_proptest;
mod replicas;
mod schemas;
mod sentinel;
mod trace;
mod trace_sampling;
