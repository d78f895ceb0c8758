//! Shrinking, tested on every canary: the failure each canary causes in its scenario (first listed
//! seed) shrinks to a smaller scenario file that, read back from its text, still fails the same
//! invariant with the canary on and passes with it off: a ready-to-commit regression test.
//!
//! Failures injected: each canary's historic bug, in its own scenario. Invariants: the shrunk
//! scenario is no larger in any dimension and smaller in one, it round-trips through its file, it
//! is red with the canary by the same invariant and green without it.
#![cfg(madsim)]

use std::path::Path;

use durakv_sim::canaries::{CASES, Case};
use durakv_sim::harness::{RunOptions, Verdict, run_with};
use durakv_sim::scenario::Scenario;
use durakv_sim::shrink::{scenario_file, shrink};

/// Runs each shrink may make (a pair per candidate with a canary): enough to drop what is plainly
/// unrelated, small enough for `make test`.
const RUNS: u64 = 40;

fn shrinks(case: &Case) {
    let path = durakv_sim::repo_root().join("scenarios").join(case.scenario);
    let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let seed = case.seeds[0];
    let with = RunOptions { canaries: vec![case.canary.to_string()], ..RunOptions::default() };
    let s = shrink(&scenario, seed, &with, RUNS, |_| {}).unwrap_or_else(|e| panic!("{}: {e}", case.canary));
    let (b, a) = (s.before, s.after);
    // The scenario's own dimensions never grow. The operations the run executed are an outcome, not
    // a dimension: a run with fewer faults and clients may get more done in its (shorter) time.
    assert!(
        a.faults <= b.faults
            && a.servers <= b.servers
            && a.clients <= b.clients
            && a.keys <= b.keys
            && a.simulated_ms <= b.simulated_ms,
        "{}: nothing grows: {b:?} -> {a:?}",
        case.canary
    );
    assert!(a != b, "{}: the shrink took nothing away ({a:?})", case.canary);
    let text = scenario_file(&s, case.scenario);
    let back = Scenario::parse(&text, Path::new("shrunk.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back.seeds, vec![seed]);
    match run_with(&back, seed, &with).verdict {
        Verdict::Fail(f) => assert_eq!(f.invariant, s.invariant, "{}: {}", case.canary, f.explanation),
        other => {
            panic!("{}: the shrunk scenario no longer fails with the canary: {other:?}\n{text}", case.canary)
        }
    }
    let clean = run_with(&back, seed, &RunOptions::default()).verdict;
    assert_eq!(
        clean,
        Verdict::Pass,
        "{}: the shrunk scenario must pass without the canary\n{text}",
        case.canary
    );
}

/// Split over a few tests so they run in parallel.
fn shrink_part(part: usize, parts: usize) {
    for case in CASES.iter().skip(part).step_by(parts) {
        shrinks(case);
    }
}

#[test]
fn canary_failures_shrink_to_regression_tests_part_1() {
    shrink_part(0, 3);
}

#[test]
fn canary_failures_shrink_to_regression_tests_part_2() {
    shrink_part(1, 3);
}

#[test]
fn canary_failures_shrink_to_regression_tests_part_3() {
    shrink_part(2, 3);
}

/// Failure guarded against: a shrunk scenario file that does not read back as the scenario that
/// was run. Invariant: every scenario file in `scenarios/`, written out and read back, is itself.
#[test]
fn every_scenario_round_trips_through_its_file() {
    let dir = durakv_sim::repo_root().join("scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("scenarios/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let back = Scenario::parse(&s.to_toml(), &path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, s, "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 10, "found {n} scenario files");
}
