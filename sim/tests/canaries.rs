//! Canaries: each historic bug in `durakv::failpoint::CANARIES` is switched back on in every server,
//! and the scenario written for that failure must catch it. A platform that passes a scenario with
//! the bug in place would be testing nothing.
//!
//! Failures injected: the scenario's own faults, with the canary's bug re-introduced. Invariant: the
//! run fails (any invariant, or for a canary written for one checker, every listed seed by that
//! checker's invariant), and the same scenario passes without the canary (`scenarios.rs`).
#![cfg(madsim)]

use durakv_sim::harness::{RunOptions, run_with};
use durakv_sim::scenario::Scenario;

/// (canary, scenario file, seeds to try: at least one must catch it, and every one that runs to the
/// end with the bug must be caught).
const CASES: &[(&str, &str, &[u64])] = &[
    ("no-torn-tail-repair", "torn-wal-tail-at-restart.toml", &[31, 32]),
    ("skip-restore-without-crc", "corrupt-snapshot-at-cold-start.toml", &[81]),
    ("no-exdev-fallback", "follower-snapshot-across-devices.toml", &[21]),
    ("keep-bytes-after-failed-fsync", "enospc-and-eio-on-fsync.toml", &[101, 102, 103, 104]),
    ("local-reads", "partitions-and-kills.toml", &[51, 52]),
    ("no-peer-recovery", "acknowledged-tail-lost-then-leader-dies.toml", &[61, 62, 63, 64]),
    ("vote-not-persisted", "partitions-and-kills.toml", &[51, 52]),
    ("double-vote", "split-votes-under-delayed-sends.toml", &[121, 122]),
    ("apply-stale-buffer", "partitions-and-kills.toml", &[51, 52]),
    ("persist-clamped-commit", "acknowledged-tail-lost-on-a-follower.toml", &[51, 52]),
];

/// Canaries written for one checker: every seed listed for them must fail, and by that invariant
/// (another checker catching the bug first would leave the checker untested).
const CAUGHT_BY: &[(&str, &str)] = &[
    ("vote-not-persisted", "promises"),
    ("double-vote", "election_safety"),
    ("apply-stale-buffer", "log_matching"),
    ("persist-clamped-commit", "commit_monotonic"),
];

#[test]
fn every_canary_is_listed_once_and_has_a_case() {
    let names: Vec<&str> = durakv::failpoint::CANARIES.iter().map(|(n, _)| *n).collect();
    for (name, _) in durakv::failpoint::CANARIES {
        assert!(CASES.iter().any(|(c, _, _)| c == name), "canary {name} has no scenario that catches it");
    }
    for (c, _, _) in CASES {
        assert_eq!(names.iter().filter(|n| *n == c).count(), 1, "{c} is listed once in CANARIES");
    }
}

#[test]
fn every_canary_is_caught_by_its_scenario() {
    let dir = durakv_sim::repo_root().join("scenarios");
    let mut missed = Vec::new();
    for (canary, file, seeds) in CASES {
        let scenario = Scenario::load(&dir.join(file)).unwrap_or_else(|e| panic!("{e}"));
        let opts = RunOptions { canaries: vec![canary.to_string()], ..RunOptions::default() };
        let expected = CAUGHT_BY.iter().find(|(c, _)| c == canary).map(|(_, invariant)| *invariant);
        let mut caught = Vec::new();
        for &seed in *seeds {
            let failure = run_with(&scenario, seed, &opts).failure().cloned();
            match (&failure, expected) {
                (Some(f), Some(invariant)) if f.invariant != invariant => missed.push(format!(
                    "{canary}: {file} seed {seed} failed {} ({}), not {invariant}",
                    f.invariant, f.explanation
                )),
                (None, Some(invariant)) => {
                    missed.push(format!("{canary}: {file} seed {seed} passed; {invariant} must catch it"))
                }
                _ => {}
            }
            if let Some(f) = failure {
                caught.push(format!("seed {seed}: {}: {}", f.invariant, f.explanation));
            }
        }
        if caught.is_empty() {
            missed.push(format!("{canary}: {file} passed with the bug in place for seeds {seeds:?}"));
        } else {
            println!("{canary} caught by {file}: {}", caught[0]);
        }
    }
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}
