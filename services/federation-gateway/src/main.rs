//! The federation-gateway binary: the shared lifecycle around [`federation_gateway`].

fn main() -> std::process::ExitCode {
    aurora_core::service::run_main::<federation_gateway::config::Args>()
}
