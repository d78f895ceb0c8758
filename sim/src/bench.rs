//! `durakv-sim bench` (`make bench-sim`): how fast the simulator runs, in the two units that decide
//! how many bugs an hour of fuzzing finds. Built only with `--cfg madsim`.
//!
//! * simulated seconds per wall second on the standard scenario (its own seeds, unswarmed);
//! * swarm seeds per second over every scenario, from a fixed seed range, as `fuzz` runs them.
//!
//! Both are also given per CPU second of this thread (the simulation is single-threaded), which
//! stays meaningful on a machine shared with other work, where wall time is noise. A fingerprint of
//! every run's summary is printed too: a speed change must leave it alone, so a benchmark run also
//! shows that what each seed means did not change.

use std::time::{Duration, Instant};

use crate::harness::{RunResult, Verdict, run};
use crate::scenario::Scenario;

/// The CPU time this thread has used, from `/proc/thread-self/schedstat` (nanoseconds on CPU);
/// `None` where that file does not exist.
pub fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The simulated time a run covered: the time of its last trace event (the final power cycle's
/// kills come last), in milliseconds.
pub fn simulated_ms(r: &RunResult) -> u64 {
    r.trace.last().and_then(|e| e.split_whitespace().next()).and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// What one timed batch of runs measured.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub runs: u64,
    pub passed: u64,
    pub simulated: Duration,
    pub wall: Duration,
    /// `None` where the thread's CPU time cannot be read.
    pub cpu: Option<Duration>,
    /// FNV-1a over every run's seed, operation counts, applied index, digest and verdict kind.
    pub fingerprint: u64,
}

impl Batch {
    fn fold(&mut self, r: &RunResult) {
        let s = &r.summary;
        let verdict = match r.verdict {
            Verdict::Pass => 0u64,
            Verdict::Vacuous => 1,
            Verdict::Undecided(_) => 2,
            Verdict::Fail(_) => 3,
        };
        for v in [s.seed, s.ops_ok, s.ops_fail, s.ops_unknown, s.restarts, s.applied_index, s.digest, verdict]
        {
            for b in v.to_le_bytes() {
                self.fingerprint = (self.fingerprint ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        self.runs += 1;
        self.passed += u64::from(r.verdict == Verdict::Pass);
        self.simulated += Duration::from_millis(simulated_ms(r));
    }

    /// Simulated seconds per wall second, and per CPU second.
    pub fn speedup(&self) -> (f64, Option<f64>) {
        let sim = self.simulated.as_secs_f64();
        (sim / self.wall.as_secs_f64().max(1e-9), self.cpu.map(|c| sim / c.as_secs_f64().max(1e-9)))
    }

    /// Runs per wall second, and per CPU second.
    pub fn rate(&self) -> (f64, Option<f64>) {
        let n = self.runs as f64;
        (n / self.wall.as_secs_f64().max(1e-9), self.cpu.map(|c| n / c.as_secs_f64().max(1e-9)))
    }
}

/// Time `runs` (scenario, seed) pairs, each run with [`run`].
pub fn time<'a>(runs: impl IntoIterator<Item = (Scenario, u64)> + 'a) -> Batch {
    let mut batch = Batch { fingerprint: 0xcbf2_9ce4_8422_2325, ..Batch::default() };
    let (wall, cpu) = (Instant::now(), thread_cpu());
    for (scenario, seed) in runs {
        batch.fold(&run(&scenario, seed));
    }
    batch.wall = wall.elapsed();
    batch.cpu = cpu.zip(thread_cpu()).map(|(a, b)| b.saturating_sub(a));
    batch
}

/// Every `scenarios/*.toml` of the repository, sorted, as `fuzz scenarios/*.toml` loads them.
pub fn all_scenarios() -> Result<Vec<(String, Scenario)>, String> {
    let dir = crate::repo_root().join("scenarios");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Scenario::load(&f).map(|s| (format!("scenarios/{name}"), s)).map_err(|e| e.to_string())
        })
        .collect()
}
