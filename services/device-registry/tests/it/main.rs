//! Every integration test of device-registry, one module per file (`common`: what they share).
//! One test binary rather than one per file, so the build links the dependency tree once.

mod actions;
mod api;
mod attestation;
mod binary;
mod common;
mod cps_alerts;
mod hostile;
mod hygiene;
mod isolation;
mod migrations;
mod parsers_proptest;
mod registration;
mod traces;
