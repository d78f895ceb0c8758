//! Shrinking a failure (`durakv-sim shrink`): delta debugging over the scenario a failing seed ran
//! (usually a swarm variant), keeping the seed and the options, until no smaller scenario fails the
//! same invariant. Every candidate is a whole deterministic run, so what the shrink returns fails
//! exactly as reported whenever it is run again, and it is written out as a scenario file.
//!
//! The reductions, tried in rounds until a round changes nothing: drop faults (halves, then
//! quarters, down to one at a time, as ddmin does), end the run earlier, fewer clients, fewer keys,
//! a lower request rate, fewer servers, fewer kinds of operation in the mix, no large values, fewer
//! list and counter keys. A candidate that is not a valid scenario is never run. Changing anything
//! changes what the seed draws, so a reduction can also lose the failure; it is then simply not taken.
//! When the failure is a canary's, a candidate is also run without the canary and taken only if it
//! then passes, so the result is that canary's regression test: red with it, green without.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{RunOptions, RunResult, Verdict, run_with};
use crate::scenario::Scenario;

/// How big a failing run is, for the before/after table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub faults: usize,
    pub operations: u64,
    pub servers: u64,
    pub clients: u64,
    pub keys: u64,
    pub simulated_ms: u64,
}

impl Size {
    fn of(scenario: &Scenario, r: &RunResult) -> Size {
        Size {
            faults: scenario.faults.len(),
            operations: r.summary.ops_ok + r.summary.ops_fail + r.summary.ops_unknown,
            servers: scenario.cluster.nodes,
            clients: scenario.workload.clients,
            keys: scenario.workload.keys,
            simulated_ms: scenario.duration_ms,
        }
    }
}

/// What a shrink found.
#[derive(Debug, Clone)]
pub struct Shrunk {
    pub scenario: Scenario,
    pub seed: u64,
    /// The invariant the original run and the shrunk one both violate.
    pub invariant: &'static str,
    /// What the shrunk run says.
    pub explanation: String,
    pub before: Size,
    pub after: Size,
    /// Runs made (the first, which must fail, included).
    pub runs: u64,
    pub elapsed: Duration,
}

/// Why a shrink could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShrinkError {
    #[error("seed {seed} of {scenario} passes: there is no failure to shrink")]
    Passes { scenario: String, seed: u64 },
    #[error("seed {seed} of {scenario} did not fail an invariant ({verdict}): nothing to shrink")]
    NotAFailure { scenario: String, seed: u64, verdict: String },
}

/// Shrink `scenario` (run as written, with `seed` and `opts`), making at most `budget` runs.
pub fn shrink(
    scenario: &Scenario,
    seed: u64,
    opts: &RunOptions,
    budget: u64,
    mut progress: impl FnMut(&str),
) -> Result<Shrunk, ShrinkError> {
    let started = Instant::now();
    let first = run_with(scenario, seed, opts);
    let failure = match &first.verdict {
        Verdict::Fail(f) => f.clone(),
        Verdict::Pass => return Err(ShrinkError::Passes { scenario: scenario.name.clone(), seed }),
        other => {
            return Err(ShrinkError::NotAFailure {
                scenario: scenario.name.clone(),
                seed,
                verdict: format!("{other:?}"),
            });
        }
    };
    let invariant = failure.invariant;
    let mut s = Shrinker {
        best: scenario.clone(),
        best_result: first.clone(),
        seed,
        opts,
        invariant,
        runs: 1,
        budget: budget.max(1),
    };
    let before = Size::of(scenario, &first);
    loop {
        let at_start = s.best.clone();
        s.drop_faults(&mut progress);
        s.reduce(&mut progress);
        if s.best == at_start || s.runs >= s.budget {
            break;
        }
    }
    let explanation = match &s.best_result.verdict {
        Verdict::Fail(f) => f.explanation.clone(),
        _ => failure.explanation.clone(),
    };
    let mut shrunk = s.best.clone();
    shrunk.seeds = vec![seed];
    Ok(Shrunk {
        after: Size::of(&shrunk, &s.best_result),
        scenario: shrunk,
        seed,
        invariant,
        explanation,
        before,
        runs: s.runs,
        elapsed: started.elapsed(),
    })
}

struct Shrinker<'a> {
    best: Scenario,
    best_result: RunResult,
    seed: u64,
    opts: &'a RunOptions,
    invariant: &'static str,
    runs: u64,
    budget: u64,
}

impl Shrinker<'_> {
    /// Run `candidate` if it is a valid scenario and the budget allows; keep it when it fails the
    /// same invariant.
    fn try_take(&mut self, candidate: Scenario, what: &str, progress: &mut impl FnMut(&str)) -> bool {
        if self.runs >= self.budget || candidate == self.best {
            return false;
        }
        // Only what a scenario file can say: a candidate must read back as itself.
        match Scenario::parse(&candidate.to_toml(), Path::new("<shrink candidate>")) {
            Ok(parsed) if parsed == candidate => {}
            _ => return false,
        }
        self.runs += 1;
        let r = run_with(&candidate, self.seed, self.opts);
        let mut same = matches!(&r.verdict, Verdict::Fail(f) if f.invariant == self.invariant);
        // With a canary, the shrunk scenario is that canary's regression test: it must also pass
        // without it (not merely fail less, and not be vacuous).
        if same && !self.opts.canaries.is_empty() && self.runs < self.budget {
            self.runs += 1;
            let clean = RunOptions { canaries: Vec::new(), ..self.opts.clone() };
            same = run_with(&candidate, self.seed, &clean).verdict == Verdict::Pass;
        }
        if same {
            progress(&format!(
                "run {}: {what}: still fails {} ({} faults, {} ms)",
                self.runs,
                self.invariant,
                candidate.faults.len(),
                candidate.duration_ms
            ));
            self.best = candidate;
            self.best_result = r;
        }
        same
    }

    /// ddmin over the fault list: remove chunks, from halves down to single faults.
    fn drop_faults(&mut self, progress: &mut impl FnMut(&str)) {
        let mut chunk = self.best.faults.len().div_ceil(2).max(1);
        loop {
            let mut start = 0;
            while start < self.best.faults.len() {
                let mut candidate = self.best.clone();
                let end = (start + chunk).min(candidate.faults.len());
                candidate.faults.drain(start..end);
                let label = format!("without faults {}..{}", start + 1, end);
                if !self.try_take(candidate, &label, progress) {
                    start += chunk;
                }
            }
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }

    /// Every other reduction, each taken as far as it goes.
    fn reduce(&mut self, progress: &mut impl FnMut(&str)) {
        // An earlier end: just past the last fault plus what the heal and the checks need.
        loop {
            let last_fault =
                self.best.faults.iter().map(|f| f.at_ms + f.for_ms.unwrap_or(0)).max().unwrap_or(0);
            let floor = last_fault + 1000;
            let d = self.best.duration_ms;
            let target = (d / 2).max(floor);
            if target >= d {
                break;
            }
            let mut c = self.best.clone();
            c.duration_ms = target;
            if !self.try_take(c, &format!("{target} ms instead of {d}"), progress) {
                break;
            }
        }
        self.halve(|s| &mut s.workload.clients, 1, "clients", progress);
        self.halve(|s| &mut s.workload.keys, 1, "keys", progress);
        self.halve(|s| &mut s.workload.rate_per_sec, 10, "requests per second", progress);
        self.halve(|s| &mut s.workload.lists, 0, "list keys", progress);
        self.halve(|s| &mut s.workload.counters, 0, "counter keys", progress);
        if self.best.cluster.nodes > 3 {
            let mut c = self.best.clone();
            c.cluster.nodes = 3;
            self.try_take(c, "3 servers", progress);
        }
        if self.best.workload.large_values_per_mille > 0 {
            let mut c = self.best.clone();
            c.workload.large_values_per_mille = 0;
            self.try_take(c, "no large values", progress);
        }
        type Weight = fn(&mut Scenario) -> &mut u32;
        let kinds: [(&str, Weight); 8] = [
            ("set", |s| &mut s.workload.mix.set),
            ("get", |s| &mut s.workload.mix.get),
            ("del", |s| &mut s.workload.mix.del),
            ("incr", |s| &mut s.workload.mix.incr),
            ("mset", |s| &mut s.workload.mix.mset),
            ("append", |s| &mut s.workload.mix.append),
            ("list", |s| &mut s.workload.mix.list),
            ("counter", |s| &mut s.workload.mix.counter),
        ];
        for (name, weight) in kinds {
            let mut c = self.best.clone();
            if *weight(&mut c) == 0 {
                continue;
            }
            *weight(&mut c) = 0;
            self.try_take(c, &format!("no {name} operations"), progress);
        }
    }

    /// Halve one number while the failure holds, not below `floor`.
    fn halve(
        &mut self,
        field: impl Fn(&mut Scenario) -> &mut u64,
        floor: u64,
        what: &str,
        progress: &mut impl FnMut(&str),
    ) {
        loop {
            let mut c = self.best.clone();
            let v = *field(&mut c);
            let target = (v / 2).max(floor);
            if target >= v {
                return;
            }
            *field(&mut c) = target;
            if !self.try_take(c, &format!("{target} {what} instead of {v}"), progress) {
                return;
            }
        }
    }
}

/// The before/after table of a shrink, as Markdown.
pub fn table(s: &Shrunk) -> String {
    let (b, a) = (s.before, s.after);
    let row = |name: &str, x: String, y: String| format!("| {name} | {x} | {y} |\n");
    let mut out = String::from("| | before | after |\n|---|---:|---:|\n");
    out += &row("faults", b.faults.to_string(), a.faults.to_string());
    out += &row("client operations", b.operations.to_string(), a.operations.to_string());
    out += &row("servers", b.servers.to_string(), a.servers.to_string());
    out += &row("clients", b.clients.to_string(), a.clients.to_string());
    out += &row("keys", b.keys.to_string(), a.keys.to_string());
    out += &row(
        "simulated seconds",
        format!("{:.1}", b.simulated_ms as f64 / 1000.0),
        format!("{:.1}", a.simulated_ms as f64 / 1000.0),
    );
    out
}

/// The shrunk scenario as a ready-to-commit file: a header saying where it came from, then the
/// scenario (`seeds` holds the one seed).
pub fn scenario_file(s: &Shrunk, origin: &str) -> String {
    let mut out = String::new();
    out += &format!("# Shrunk by `durakv-sim shrink` from {origin}, seed {}, in {} runs.\n", s.seed, s.runs);
    out += &format!("# It fails {}: {}\n", s.invariant, s.explanation.replace('\n', " "));
    out += &s.scenario.to_toml();
    out
}
