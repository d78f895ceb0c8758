//! The world a run records into: the trace of events, the operation history, and what servers reported.

use super::*;

#[derive(Default)]
pub(super) struct World {
    pub(super) trace: Vec<String>,
    pub(super) history: Vec<Operation>,
    /// Why each server's last run ended (a fatal error, or a refusal to start).
    pub(super) exits: BTreeMap<u64, String>,
    pub(super) restarts: u64,
    pub(super) faults: Vec<String>,
    pub(super) fired: Vec<String>,
    /// How many times each server started serving.
    pub(super) started: BTreeMap<u64, u64>,
    /// Writes too large to replicate that a server did not refuse.
    pub(super) violations: Vec<String>,
    /// Raft's own promises, election safety, log matching, commit monotonic (`crate::promises`).
    pub(super) promises: crate::promises::Checker,
}

pub(super) type Shared = Arc<Mutex<World>>;

pub(super) fn world(w: &Shared) -> std::sync::MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// Simulated milliseconds since the run began.
pub(super) fn now_ms() -> u64 {
    madsim::time::TimeHandle::current().elapsed().as_millis() as u64
}

pub(super) fn event(w: &Shared, text: String) {
    let t = now_ms();
    world(w).trace.push(format!("{t:>8} {text}"));
}
