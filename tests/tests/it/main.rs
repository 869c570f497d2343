//! Every integration test of aurora-e2e, one module per file.
//! One test binary rather than one per file, so the build links the dependency tree once.

mod bad_input_device_registry;
mod bad_input_eve_ingest;
mod bad_input_federation_gateway;
mod bad_input_mqtt_bridge;
mod bad_input_ws_gateway;
mod device_actions;
mod e2e;
mod faults;
mod ha;
mod lifecycle;
mod prometheus;
mod rolling;
mod tls;
mod traces;
mod variables;
