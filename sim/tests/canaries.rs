//! Canaries: each historic bug in `durakv::failpoint::CANARIES` is switched back on in every server,
//! and the scenario written for it must catch it, by the invariant named for it, on every listed
//! seed; each of those seeds must pass without the canary. The swarm must catch each one too
//! (`durakv-sim canaries` prints the table). A platform that passes a scenario with the bug in place
//! would be testing nothing.
//!
//! Failures injected: the scenario's own faults, with the canary's bug re-introduced. Invariants:
//! the one each case names.
#![cfg(madsim)]

use durakv_sim::canaries::{CASES, score, table};
use durakv_sim::harness::{RunOptions, Verdict, run_with};
use durakv_sim::scenario::Scenario;

/// Swarm seeds within which every canary must be caught.
const SWARM_BUDGET: u64 = 100;

fn load(file: &str) -> Scenario {
    let path = durakv_sim::repo_root().join("scenarios").join(file);
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_canary_is_listed_once_and_has_a_case() {
    let names: Vec<&str> = durakv::failpoint::CANARIES.iter().map(|(n, _)| *n).collect();
    for (name, _) in durakv::failpoint::CANARIES {
        assert!(CASES.iter().any(|c| c.canary == *name), "canary {name} has no scenario that catches it");
    }
    for c in CASES {
        assert_eq!(
            names.iter().filter(|n| **n == c.canary).count(),
            1,
            "{} is listed once in CANARIES",
            c.canary
        );
        assert!(!c.seeds.is_empty(), "{} lists seeds", c.canary);
    }
}

#[test]
fn every_canary_is_caught_by_its_invariant_on_every_seed_that_passes_without_it() {
    let mut wrong = Vec::new();
    for case in CASES {
        let scenario = load(case.scenario);
        let with = RunOptions { canaries: vec![case.canary.to_string()], ..RunOptions::default() };
        for &seed in case.seeds {
            let clean = run_with(&scenario, seed, &RunOptions::default());
            if clean.verdict != Verdict::Pass {
                wrong.push(format!(
                    "{} seed {seed} does not pass without {}: {:?}",
                    case.scenario, case.canary, clean.verdict
                ));
            }
            match run_with(&scenario, seed, &with).verdict {
                Verdict::Fail(f) if case.invariants.contains(&f.invariant) => {
                    println!(
                        "{} caught by {} seed {seed}: {}: {}",
                        case.canary, case.scenario, f.invariant, f.explanation
                    );
                }
                other => wrong.push(format!(
                    "{} seed {seed} with {}: expected a violation of {:?}, got {other:?}",
                    case.scenario, case.canary, case.invariants
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_swarm_catches_every_canary_within_its_budget() {
    let scores: Vec<_> = CASES
        .iter()
        .map(|case| {
            let base = load(case.scenario);
            score(case.canary, case.scenario, 0..SWARM_BUDGET, |_| Some((case.scenario, &base)))
        })
        .collect();
    let table = table(&scores, SWARM_BUDGET);
    println!("{table}");
    let missed: Vec<&str> = scores.iter().filter(|s| s.caught.is_none()).map(|s| s.canary).collect();
    assert!(missed.is_empty(), "not caught within {SWARM_BUDGET} swarm seeds: {missed:?}\n{table}");
}
