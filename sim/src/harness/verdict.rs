//! A run's verdict: counts, the history checks, and what outranks what.

use super::*;

pub(super) fn setup_failure(scenario: &Scenario, seed: u64, w: &Shared, text: String) -> RunResult {
    finish(scenario, seed, w, Some(Failure { invariant: "setup", explanation: text }), 0, 0)
}

pub(super) fn finish(
    scenario: &Scenario,
    seed: u64,
    w: &Shared,
    failure: Option<Failure>,
    applied_index: u64,
    digest: u64,
) -> RunResult {
    let mut world = world(w);
    let count = |o: Outcome| {
        world.history.iter().filter(|op| op.outcome == o && op.client != FINAL_READ_CLIENT).count() as u64
    };
    let mut summary = Summary {
        scenario: scenario.name.clone(),
        seed,
        ops_ok: count(Outcome::Ok),
        ops_fail: count(Outcome::Fail),
        ops_unknown: count(Outcome::Unknown),
        faults: world.faults.clone(),
        restarts: world.restarts,
        fired: world.fired.clone(),
        applied_index,
        digest,
        history_hash: crate::fingerprint::history_hash(&world.history),
        disk_hashes: world.disk_hashes.clone(),
        checks_ran: Vec::new(),
        failpoint_fires: world.failpoint_fires.clone(),
        coverage: world.coverage.clone(),
    };
    let mut verdict = failure.map_or(Verdict::Pass, Verdict::Fail);
    if verdict == Verdict::Pass && scenario.invariants.linearizability {
        // List keys are left to `check_lists` (element order against real time, every APPEND's
        // reply, every read's prefix, timing and growth), which never runs out of budget; the
        // general search can, on a long list with undecided APPENDs (found by fuzz).
        let history: Vec<Operation> = world
            .history
            .iter()
            .filter(|o| !o.effects.iter().all(|(k, _)| special_key(k, b'l')))
            .cloned()
            .collect();
        match crate::linearizability::check(&history) {
            CheckResult::Linearizable => world.ran("linearizability"),
            CheckResult::Violation(v) => {
                let culprit = v.culprit.as_ref().map_or(String::new(), |o| {
                    format!(
                        "; the first operation that cannot be explained is {o} by client {} on server {}, {}–{} ms",
                        o.client, o.server, o.call, o.ret
                    )
                });
                verdict = Verdict::Fail(Failure {
                    invariant: "linearizability",
                    explanation: format!(
                        "{}: no order of their {} operations explains what the clients saw{culprit}",
                        show_keys(&v.keys),
                        v.operations.len()
                    ),
                });
            }
            CheckResult::Undecided(u) => {
                verdict = Verdict::Undecided(format!(
                    "linearizability: the search over the {} operations of {} gave up after {}",
                    u.operations,
                    show_keys(&u.keys),
                    u.limit
                ));
            }
        }
    }
    // A write over the limit that was not refused outranks the history checks: the node broke its
    // size contract (#11).
    if !matches!(verdict, Verdict::Fail(_))
        && let Some(v) = world.violations.first()
    {
        verdict = Verdict::Fail(Failure {
            invariant: "limits",
            explanation: format!("{v} ({} such writes in all)", world.violations.len()),
        });
    } else if world.violations.is_empty() {
        world.ran("limits");
    }
    summary.checks_ran = world.checks_ran.clone();
    if summary.ops_ok == 0 && verdict == Verdict::Pass {
        verdict = Verdict::Vacuous;
    }
    let logs = std::mem::take(&mut *world.logs.lock().unwrap_or_else(|p| p.into_inner()));
    RunResult {
        summary,
        trace: std::mem::take(&mut world.trace),
        verdict,
        history: std::mem::take(&mut world.history),
        leaders: std::mem::take(&mut world.leaders),
        logs: String::from_utf8_lossy(&logs)
            .lines()
            .filter_map(|l| {
                let (t, rest) = l.trim_start().split_once(' ')?;
                Some((t.parse().ok()?, rest.to_string()))
            })
            .collect(),
    }
}

/// `key "k1"`, or `keys "k1", "k2"` when multi-key operations joined them.
pub(super) fn show_keys(keys: &[Vec<u8>]) -> String {
    let names: Vec<String> = keys.iter().map(|k| format!("{:?}", String::from_utf8_lossy(k))).collect();
    format!("key{} {}", if names.len() == 1 { "" } else { "s" }, names.join(", "))
}
