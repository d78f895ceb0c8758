//! Swarm fuzzing's loop (`durakv-sim fuzz`): for each seed, pick a base scenario, turn it into the
//! seed's variant ([`crate::swarm`]), run it and count its verdict. Built only with `--cfg madsim`.
//!
//! One seed never stops the loop: a panic in node code (or in the simulation) is caught by
//! [`crate::harness::run_with`] and comes back as a failure of that seed, with the panic's location
//! and message, so fuzzing goes on to the next seed.

use std::time::{Duration, Instant};

use crate::derive_seed;
use crate::harness::{RunResult, Verdict};
use crate::scenario::Scenario;
use crate::swarm::swarm;

/// What the seeds run so far concluded. Every seed counts once in `passed`, `failed`, `undecided`
/// or `vacuous`; `panicked` counts the failures that were panics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuzzCounts {
    pub ran: u64,
    pub passed: u64,
    pub failed: u64,
    pub panicked: u64,
    pub undecided: u64,
    pub vacuous: u64,
}

impl FuzzCounts {
    fn count(&mut self, verdict: &Verdict) {
        self.ran += 1;
        match verdict {
            Verdict::Pass => self.passed += 1,
            Verdict::Undecided(_) => self.undecided += 1,
            Verdict::Vacuous => self.vacuous += 1,
            Verdict::Fail(f) => {
                self.failed += 1;
                if f.invariant == crate::harness::PANIC {
                    self.panicked += 1;
                }
            }
        }
    }
}

/// The base scenario (file, scenario) that fuzz varies for `seed`.
pub fn base_for(scenarios: &[(String, Scenario)], seed: u64) -> Option<&(String, Scenario)> {
    let n = u64::try_from(scenarios.len()).ok().filter(|&n| n > 0)?;
    scenarios.get(usize::try_from(derive_seed(seed, "fuzz/scenario") % n).ok()?)
}

/// The one command that replays a seed bit for bit (`swarm`: the variant fuzz ran).
pub fn reproduce_command(file: &str, seed: u64, swarm: bool) -> String {
    format!("make sim-run SCENARIO={file} SEED={seed}{}", if swarm { " SWARM=1" } else { "" })
}

/// Run the swarm variant of each seed in `seeds` with `run` (normally [`crate::harness::run`]),
/// until the seeds or the time run out, and hand each result to `on_seed` with its base file and
/// the counts so far.
pub fn fuzz(
    scenarios: &[(String, Scenario)],
    seeds: impl IntoIterator<Item = u64>,
    time: Option<Duration>,
    mut run: impl FnMut(&Scenario, u64) -> RunResult,
    mut on_seed: impl FnMut(&str, &RunResult, &FuzzCounts),
) -> FuzzCounts {
    let started = Instant::now();
    let mut counts = FuzzCounts::default();
    for seed in seeds {
        if time.is_some_and(|t| started.elapsed() >= t) {
            break;
        }
        let Some((file, base)) = base_for(scenarios, seed) else { break };
        let r = run(&swarm(base, seed), seed);
        counts.count(&r.verdict);
        on_seed(file, &r, &counts);
    }
    counts
}
