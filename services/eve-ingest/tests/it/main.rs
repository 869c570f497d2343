//! Every integration test of eve-ingest, one module per file (`common`: what they share).
//! One test binary rather than one per file, so the build links the dependency tree once.

mod alert_sink;
mod binary;
mod common;
mod consumers;
mod file;
mod large_lines;
mod lifecycle;
mod list;
mod replicas;
mod sensors;
mod sightings;
mod slices;
mod traces;
