//! Canaries and the platform's mutation score (`durakv-sim canaries`). Each canary in
//! `durakv::failpoint::CANARIES` re-introduces a historic bug; [`CASES`] names the scenario written
//! for it, the invariant that must catch it there and the seeds that must show it. The score runs
//! each canary against the swarm variants of a scenario until a seed catches it, and checks that the
//! same seed passes without it, so a catch is the canary's doing and not a seed that fails anyway.
//! Built only with `--cfg madsim`.

use std::time::{Duration, Instant};

use crate::harness::{RunOptions, Verdict, run_with};
use crate::scenario::Scenario;
use crate::swarm::swarm;

/// A canary, the scenario file written for it, the invariant that catches it there, and the seeds
/// of that file (run as written, not swarmed) that must each fail by that invariant with the canary
/// and pass without it.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub canary: &'static str,
    pub scenario: &'static str,
    /// The invariants that catch it there (each listed seed by one of them).
    pub invariants: &'static [&'static str],
    pub seeds: &'static [u64],
}

pub const CASES: &[Case] = &[
    Case {
        canary: "no-torn-tail-repair",
        scenario: "torn-wal-tail-at-restart.toml",
        invariants: &["liveness"],
        seeds: &[31, 32],
    },
    Case {
        canary: "skip-restore-without-crc",
        scenario: "corrupt-snapshot-at-cold-start.toml",
        invariants: &["corruption_detection"],
        seeds: &[81],
    },
    Case {
        canary: "no-exdev-fallback",
        scenario: "follower-snapshot-across-devices.toml",
        invariants: &["liveness"],
        seeds: &[21],
    },
    Case {
        canary: "keep-bytes-after-failed-fsync",
        scenario: "enospc-and-eio-on-fsync.toml",
        invariants: &["liveness"],
        seeds: &[101, 102],
    },
    Case {
        canary: "local-reads",
        scenario: "partitions-and-kills.toml",
        invariants: &["linearizability", "list_append"],
        seeds: &[51, 52],
    },
    Case {
        canary: "no-peer-recovery",
        scenario: "acknowledged-tail-lost-then-leader-dies.toml",
        invariants: &["log_matching", "liveness"],
        seeds: &[65, 68, 71, 73],
    },
    Case {
        canary: "snapshot-on-the-loop",
        scenario: "slow-disk-under-snapshots.toml",
        invariants: &["stable_leader"],
        seeds: &[181, 182],
    },
    Case {
        canary: "promise-before-fsync",
        scenario: "power-loss-inside-raft-writes.toml",
        invariants: &["promises"],
        seeds: &[162, 163],
    },
    Case {
        canary: "vote-not-persisted",
        scenario: "partitions-and-kills.toml",
        invariants: &["promises"],
        seeds: &[51, 52],
    },
    Case {
        canary: "double-vote",
        scenario: "split-votes-under-delayed-sends.toml",
        invariants: &["election_safety"],
        seeds: &[121, 122],
    },
    Case {
        canary: "apply-stale-buffer",
        scenario: "partitions-and-kills.toml",
        invariants: &["log_matching"],
        seeds: &[51, 52],
    },
    Case {
        canary: "truncate-on-any-crc-mismatch",
        scenario: "bit-flip-in-acknowledged-record.toml",
        invariants: &["fault_effect"],
        seeds: &[41],
    },
    Case {
        canary: "snapshot-file-unsynced",
        scenario: "power-loss-all-nosync.toml",
        invariants: &["liveness"],
        seeds: &[11, 12],
    },
    Case {
        canary: "expiry-by-local-clock",
        scenario: "expiry-under-clock-skew.toml",
        invariants: &["convergence", "linearizability", "expiry"],
        seeds: &[73, 74, 76],
    },
    Case {
        canary: "watch-ignored",
        scenario: "optimistic-locking-under-faults.toml",
        invariants: &["linearizability"],
        seeds: &[191, 192],
    },
    Case {
        canary: "persist-clamped-commit",
        // A durable commit index past the log needs a batch whose commit covers itself: a new
        // leader's (a follower's commit index otherwise rides on its next persist, a round behind).
        scenario: "acknowledged-tail-lost-after-a-new-leader.toml",
        invariants: &["commit_monotonic"],
        seeds: &[129, 130, 131],
    },
    Case {
        canary: "joiner-replays-from-one",
        // The joiner rebuilds a membership without the initial voters: members disagree.
        scenario: "membership-replace-a-voter-under-faults.toml",
        invariants: &[
            "membership",
            "catch_up",
            "liveness",
            "election_safety",
            "linearizability",
            "convergence",
        ],
        seeds: &[301, 302],
    },
];

/// How one canary fared against the swarm.
#[derive(Debug, Clone)]
pub struct Score {
    pub canary: &'static str,
    /// The scenario whose variants ran.
    pub scenario: String,
    /// The first seed that caught it (and passes without it), and how many seeds that took.
    pub caught: Option<(u64, u64)>,
    /// The invariant that caught it, and what it said.
    pub invariant: Option<&'static str>,
    pub explanation: String,
    /// Seeds that failed with the canary but also without it: not counted as catches.
    pub failing_anyway: Vec<u64>,
    pub elapsed: Duration,
}

/// Run `canary` on the swarm variants of `base_of(seed)` (a scenario file and the scenario) for
/// `seeds`, stopping at the first seed that fails with it and passes without it. `label` names the
/// scenarios in the table.
pub fn score<'a>(
    canary: &'static str,
    label: &str,
    seeds: impl IntoIterator<Item = u64>,
    base_of: impl Fn(u64) -> Option<(&'a str, &'a Scenario)>,
) -> Score {
    let started = Instant::now();
    let with = RunOptions { canaries: vec![canary.to_string()], ..RunOptions::default() };
    let mut out = Score {
        canary,
        scenario: label.to_string(),
        caught: None,
        invariant: None,
        explanation: String::new(),
        failing_anyway: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for (n, seed) in seeds.into_iter().enumerate() {
        let Some((file, base)) = base_of(seed) else { break };
        let variant = swarm(base, seed);
        let r = run_with(&variant, seed, &with);
        let Verdict::Fail(f) = r.verdict else { continue };
        let clean = run_with(&variant, seed, &RunOptions::default());
        if clean.verdict != Verdict::Pass {
            out.failing_anyway.push(seed);
            continue;
        }
        out.caught = Some((seed, n as u64 + 1));
        out.invariant = Some(f.invariant);
        out.explanation = format!("{file} seed {seed} (--swarm): {}", f.explanation);
        break;
    }
    out.elapsed = started.elapsed();
    out
}

/// The mutation-score table: canary, caught, seeds to first detection, invariant, time.
pub fn table(scores: &[Score], budget: u64) -> String {
    let mut rows = vec![[
        "canary".to_string(),
        "scenario (swarm)".to_string(),
        "caught".to_string(),
        "seeds to first detection".to_string(),
        "invariant".to_string(),
        "time".to_string(),
    ]];
    for s in scores {
        rows.push([
            s.canary.to_string(),
            s.scenario.clone(),
            if s.caught.is_some() { "yes".into() } else { "NO".into() },
            s.caught.map_or(format!("> {budget}"), |(seed, n)| format!("{n} (seed {seed})")),
            s.invariant.unwrap_or("-").to_string(),
            format!("{:.1} s", s.elapsed.as_secs_f64()),
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let caught = scores.iter().filter(|s| s.caught.is_some()).count();
    let mut text = String::new();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        text.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            text.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        }
    }
    text.push_str(&format!(
        "mutation score: {caught} of {} canaries caught within {budget} swarm seeds\n",
        scores.len()
    ));
    text
}
