//! Every integration test of ws-gateway, one module per file (`common`: what they share).
//! One test binary rather than one per file, so the build links the dependency tree once.

mod approvals;
mod binary;
mod channels;
mod common;
mod console;
mod fanout;
mod hostile;
mod lifecycle;
mod traces;
