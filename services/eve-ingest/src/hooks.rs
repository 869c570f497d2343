//! Test hooks: points where a test can make the service stop as if the process had died, and
//! see why the input stopped.

use std::sync::{Arc, Mutex};

use crate::error::IngestError;

/// Decides, from the batch number, whether to stop right there.
pub type CrashHook = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// Nothing is set in production ([`Hooks::default`]).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called with the batch number (0 during recovery of what the replica holds) after a
    /// batch is out and before its lines leave the processing list; `true` stops the service
    /// right there ([`IngestError::FaultInjected`]).
    pub crash_before_release: Option<CrashHook>,
    /// Where the error that stopped the input is put (the service still fails with its
    /// message).
    pub failure: Option<Arc<Mutex<Option<IngestError>>>>,
}

impl Hooks {
    pub(crate) fn crash_before_release(&self, batch: u64) -> bool {
        self.crash_before_release
            .as_ref()
            .is_some_and(|hook| hook(batch))
    }

    /// The error for the service's tasks: `error` itself, or its message when a test keeps
    /// the error.
    pub(crate) fn failed(&self, error: IngestError) -> anyhow::Error {
        match &self.failure {
            Some(slot) => {
                let report = anyhow::Error::msg(chain(&error));
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                report
            }
            None => error.into(),
        }
    }
}

/// The error and its sources, as one line.
fn chain(error: &IngestError) -> String {
    let mut out = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
