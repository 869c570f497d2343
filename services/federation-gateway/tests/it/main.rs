//! Every integration test of federation-gateway, one module per file (`common`: what they share).
//! One test binary rather than one per file, so the build links the dependency tree once.

mod common;
mod federation;
mod import_proptest;
mod revisions;
mod signatures;
mod stream_limits;
mod time_to_loss;
mod traces;
