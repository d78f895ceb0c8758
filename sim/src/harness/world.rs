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
    /// See the fields of [`Summary`] with these names.
    pub(super) checks_ran: Vec<&'static str>,
    pub(super) disk_hashes: BTreeMap<u64, u64>,
    pub(super) failpoint_fires: BTreeMap<String, u64>,
    pub(super) coverage: BTreeMap<String, u64>,
    /// (time, server, term): a server reported being leader of a term (for `explain`'s lanes).
    pub(super) leaders: Vec<(u64, u64, u64)>,
    /// The nodes' own log lines with their simulated time, when [`RunOptions::capture_logs`] is set.
    pub(super) logs: Arc<Mutex<Vec<u8>>>,
    /// Each server's wall clock, kept across its restarts (a `clock_skew` fault offsets it).
    pub(super) clocks: BTreeMap<u64, durakv::clock::WallClock>,
    /// Clients whose last operation is recorded.
    pub(super) clients_done: u64,
    /// Whether the servers' expiry sweeps may propose (`RuntimeOptions::sweeping`), shared by every
    /// run of every server.
    pub(super) sweeping: Arc<std::sync::atomic::AtomicBool>,
    /// The membership (voters, learners) the last acknowledged membership change left, as the
    /// leader answered it; whether a change may still take effect unseen (one answered with an
    /// unknown outcome), and how many are still being sent.
    pub(super) membership_acked: Option<(Vec<u64>, Vec<u64>)>,
    pub(super) membership_unknown: bool,
    pub(super) membership_sending: u64,
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

/// Check `check` (listed in `crate::checkers::CHECKS`) ran to completion and held: one line after
/// each checker, so the fuzz coverage table shows which checks ever ran.
pub(super) fn ran(w: &Shared, check: &'static str) {
    world(w).ran(check);
}

impl World {
    pub(super) fn ran(&mut self, check: &'static str) {
        debug_assert!(crate::checkers::CHECKS.contains(&check), "check {check} is listed in CHECKS");
        self.checks_ran.push(check);
    }
}

/// What the disks hold and saw at the end, for the summary: each durable image's hash, and the
/// failpoints and fault paths that fired, summed over the servers.
pub(super) fn record_disks(disks: &BTreeMap<u64, SimFs>, w: &Shared) {
    let mut world = world(w);
    for (id, disk) in disks {
        world.disk_hashes.insert(*id, crate::fingerprint::durable_hash(&disk.durable_files()));
        for (name, n) in disk.failpoint_fires() {
            *world.failpoint_fires.entry(name).or_insert(0) += n;
        }
        for (path, n) in disk.coverage() {
            *world.coverage.entry(path.to_string()).or_insert(0) += n;
        }
    }
}
