//! device-registry: the whole binary is the shared lifecycle run with this service's flags
//! (see the library for what the service does).

fn main() -> std::process::ExitCode {
    aurora_core::service::run_main::<device_registry::config::Args>()
}
