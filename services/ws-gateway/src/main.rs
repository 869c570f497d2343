//! ws-gateway: the flags, then the gateway until SIGTERM (see the library).

fn main() -> std::process::ExitCode {
    aurora_core::service::run_main::<ws_gateway::config::Args>()
}
