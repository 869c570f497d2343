//! Every integration test of mqtt-bridge, one module per file (`common`: what they share).
//! One test binary rather than one per file, so the build links the dependency tree once.

mod broker_drops;
mod common;
mod decode_proptest;
mod downlink;
mod faults;
mod flags;
mod flood;
mod guarded;
mod hostile;
mod replicas;
mod security;
mod startup;
mod traces;
mod uplink;
