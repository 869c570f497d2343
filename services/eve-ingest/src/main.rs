//! eve-ingest: the flags make the service; the lifecycle (ops endpoints, signals, drain) is
//! the shared one of aurora-core.

fn main() -> std::process::ExitCode {
    aurora_core::service::run_main::<eve_ingest::config::Args>()
}
