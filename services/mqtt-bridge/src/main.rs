//! mqtt-bridge: the flags make the service; `aurora_core::service` runs it.

fn main() -> std::process::ExitCode {
    aurora_core::service::run_main::<mqtt_bridge::config::Args>()
}
