//! Every integration test of aurora-cli, one module per file.
//! One test binary rather than one per file, so the build links the dependency tree once.

mod cli;
mod simulate_mqtt;
