//! A linearizability checker for per-key register histories (Wing & Gong's search with Lowe's
//! memoization, as Porcupine does it), with `unknown` outcomes handled.
//!
//! Each key is checked on its own (P-compositionality): a history is linearizable iff every key's
//! sub-history is. An operation is a call time, a return time and an outcome:
//!
//! * `Ok`: it took effect exactly once, somewhere between its call and its return;
//! * `Fail`: it never took effect (it is dropped before checking);
//! * `Unknown`: a timeout left it undecided: it took effect at most once, at any time after its call.
//!   It is given a return time of infinity, so it may be placed anywhere after its call, including
//!   after every observation, which is the same as never.
//!
//! The search is bounded ([`DEFAULT_BUDGET`] steps per key): running out is its own outcome,
//! [`CheckResult::Undecided`], never a violation and never a pass.

use std::collections::{BTreeMap, BTreeSet};

/// What an operation did to (or saw of) a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOp {
    /// SET (`Some`) or DEL (`None`).
    Write(Option<Vec<u8>>),
    /// GET, and the value it returned.
    Read(Option<Vec<u8>>),
    /// INCRBY `delta`, and the value it returned when known.
    Incr { delta: i64, result: Option<i64> },
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// One client operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    /// The server the client sent it to (0 when not known).
    pub server: u64,
    pub key: Vec<u8>,
    pub op: RegisterOp,
    /// Invocation time (any monotonic unit).
    pub call: u64,
    /// Return time; ignored for `Unknown`.
    pub ret: u64,
    pub outcome: Outcome,
}

/// Why a key's history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: Vec<u8>,
    /// The operations of that key, for the report.
    pub operations: Vec<Operation>,
    /// The first operation (by return time) with which the key's history stops being linearizable:
    /// everything that returned before it can be explained, it cannot.
    pub culprit: Option<Box<Operation>>,
}

/// A key whose search ran out of budget: neither linearizable nor a violation, as far as the
/// checker can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecided {
    pub key: Vec<u8>,
    /// How many operations the key had.
    pub operations: usize,
    /// The budget (search steps) that ran out.
    pub budget: u64,
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    Linearizable,
    /// The first key (in key order) whose history cannot be linearized.
    Violation(Box<Violation>),
    /// No key is a violation, but the search gave up on this one (the first, in key order).
    Undecided(Undecided),
}

impl CheckResult {
    pub fn is_violation(&self) -> bool {
        matches!(self, CheckResult::Violation(_))
    }
}

/// Search steps per key before the checker gives up: far more than the simulation's histories
/// need, small enough that a pathological one answers in seconds rather than hanging the run.
pub const DEFAULT_BUDGET: u64 = 50_000_000;

/// The register's state: absent, or a value.
type State = Option<Vec<u8>>;

fn step(state: &State, op: &RegisterOp) -> Option<State> {
    match op {
        RegisterOp::Write(v) => Some(v.clone()),
        RegisterOp::Read(seen) => (seen == state).then(|| state.clone()),
        RegisterOp::Incr { delta, result } => {
            let current = match state {
                None => 0,
                Some(v) => std::str::from_utf8(v).ok()?.parse::<i64>().ok()?,
            };
            let next = current.checked_add(*delta)?;
            if result.is_some_and(|r| r != next) {
                return None;
            }
            Some(Some(next.to_string().into_bytes()))
        }
    }
}

/// Check every key of `history` with the default budget.
pub fn check(history: &[Operation]) -> CheckResult {
    check_with_budget(history, DEFAULT_BUDGET)
}

/// Check every key of `history`, giving each key's search at most `budget` steps. A violation in
/// any key wins over an undecided one.
pub fn check_with_budget(history: &[Operation], budget: u64) -> CheckResult {
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if op.outcome != Outcome::Fail {
            by_key.entry(&op.key).or_default().push(op);
        }
    }
    let mut undecided = None;
    for (key, ops) in by_key {
        match check_key(&ops, budget) {
            Search::Linearizable => {}
            Search::Exhausted => {
                undecided.get_or_insert(Undecided { key: key.to_vec(), operations: ops.len(), budget });
            }
            Search::NotLinearizable => {
                let culprit = first_unexplained(&ops, budget);
                return CheckResult::Violation(Box::new(Violation {
                    key: key.to_vec(),
                    operations: ops.into_iter().cloned().collect(),
                    culprit,
                }));
            }
        }
    }
    undecided.map_or(CheckResult::Linearizable, CheckResult::Undecided)
}

/// The history as it stood at time `t`: every operation invoked by then, those that had not
/// returned counted as undecided.
fn prefix(ops: &[&Operation], t: u64) -> Vec<Operation> {
    ops.iter()
        .filter(|o| o.call <= t)
        .map(|o| {
            let mut o = (*o).clone();
            if o.outcome == Outcome::Ok && o.ret > t {
                o.outcome = Outcome::Unknown;
            }
            o
        })
        .collect()
}

/// The operation that breaks a non-linearizable key history: the first acknowledged one, in return
/// order, at whose return the history so far cannot be explained. Histories only gain constraints as
/// time goes on, so a binary search finds it; `None` if a probe runs out of budget.
fn first_unexplained(ops: &[&Operation], budget: u64) -> Option<Box<Operation>> {
    let mut by_ret: Vec<&Operation> = ops.iter().copied().filter(|o| o.outcome == Outcome::Ok).collect();
    by_ret.sort_by_key(|o| (o.ret, o.call));
    let (mut lo, mut hi) = (0, by_ret.len());
    // Invariant: the histories at the returns before `lo` are explained; the one at `hi` is not.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let p = prefix(ops, by_ret[mid].ret);
        match check_key(&p.iter().collect::<Vec<_>>(), budget) {
            Search::Linearizable => lo = mid + 1,
            Search::NotLinearizable => hi = mid,
            Search::Exhausted => return None,
        }
    }
    by_ret.get(lo).map(|o| Box::new((*o).clone()))
}

/// What one search found.
enum Search {
    Linearizable,
    NotLinearizable,
    /// The budget ran out first.
    Exhausted,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    time: u64,
}

/// Wing & Gong search over one key's operations, at most `budget` steps.
fn check_key(ops: &[&Operation], budget: u64) -> Search {
    // Reads whose outcome is unknown observed nothing: drop them.
    let ops: Vec<&Operation> = ops
        .iter()
        .copied()
        .filter(|o| !(o.outcome == Outcome::Unknown && matches!(o.op, RegisterOp::Read(_))))
        .collect();
    let n = ops.len();
    let ret_time = |o: &Operation| if o.outcome == Outcome::Unknown { u64::MAX } else { o.ret.max(o.call) };
    let mut events: Vec<Event> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push(Event { op: i, is_call: true, time: o.call });
        events.push(Event { op: i, is_call: false, time: ret_time(o) });
    }
    // Calls before returns at equal times: intervals that touch overlap (the permissive reading).
    events.sort_by_key(|e| (e.time, !e.is_call, e.op));
    // A doubly linked list over the events, so lifting and unlifting are O(1).
    let len = events.len();
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| if i == 0 { usize::MAX } else { i - 1 }).collect();
    let head = len; // sentinel index
    next.push(0);
    prev.push(usize::MAX);
    if len > 0 {
        prev[0] = head;
    }
    let mut pos_call = vec![0usize; n];
    let mut pos_ret = vec![0usize; n];
    for (p, e) in events.iter().enumerate() {
        if e.is_call {
            pos_call[e.op] = p;
        } else {
            pos_ret[e.op] = p;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        let (a, b) = (prev[p], next[p]);
        next[a] = b;
        if b < len {
            prev[b] = a;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        let (a, b) = (prev[p], next[p]);
        next[a] = p;
        if b < len {
            prev[b] = p;
        }
    };
    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: BTreeSet<(Vec<u64>, State)> = BTreeSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut cursor = next[head];
    let mut steps: u64 = 0;
    while next[head] < len {
        steps += 1;
        if steps > budget {
            return Search::Exhausted;
        }
        if cursor >= len {
            // Only reachable when every remaining event is a return we could not satisfy.
            return Search::NotLinearizable;
        }
        let e = events[cursor];
        if e.is_call {
            let op = e.op;
            if let Some(new_state) = step(&state, &ops[op].op) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), new_state.clone())) {
                    stack.push((op, state));
                    state = new_state;
                    linearized = lin;
                    // Lift the call and its return out of the list.
                    unlink(&mut next, &mut prev, pos_call[op]);
                    unlink(&mut next, &mut prev, pos_ret[op]);
                    cursor = next[head];
                    continue;
                }
            }
            cursor = next[cursor];
        } else {
            // A return reached before its operation was linearized: backtrack.
            let Some((op, old_state)) = stack.pop() else { return Search::NotLinearizable };
            state = old_state;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, pos_ret[op]);
            relink(&mut next, &mut prev, pos_call[op]);
            cursor = next[pos_call[op]];
        }
    }
    Search::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(result: CheckResult, why: &str) -> Box<Violation> {
        match result {
            CheckResult::Violation(v) => v,
            other => panic!("expected a violation ({why}), got {other:?}"),
        }
    }

    fn w(client: u64, v: &str, call: u64, ret: u64) -> Operation {
        Operation {
            client,
            server: 0,
            key: b"k".to_vec(),
            op: RegisterOp::Write(Some(v.into())),
            call,
            ret,
            outcome: Outcome::Ok,
        }
    }

    fn r(client: u64, v: Option<&str>, call: u64, ret: u64) -> Operation {
        let seen = v.map(|s| s.as_bytes().to_vec());
        Operation {
            client,
            server: 0,
            key: b"k".to_vec(),
            op: RegisterOp::Read(seen),
            call,
            ret,
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn a_violation_names_the_first_operation_that_cannot_be_explained() {
        // Failure injected: a stale read (b was acknowledged before it started) among valid ones.
        // Invariant: the report points at that read, not at the whole history.
        let stale = r(3, Some("a"), 4, 5);
        let h = [w(1, "a", 0, 1), w(2, "b", 2, 3), stale.clone(), r(1, Some("b"), 6, 7), w(2, "c", 8, 9)];
        let v = violation(check(&h), "stale read");
        assert_eq!(v.culprit, Some(Box::new(stale)));
        // An undecided write that may have landed explains a later read: the culprit is elsewhere.
        let maybe = unknown(w(4, "z", 10, 11));
        let h = [w(1, "a", 0, 1), maybe, r(2, Some("z"), 12, 13), r(3, Some("a"), 14, 15)];
        let v = violation(check(&h), "a read of a after z was seen");
        assert_eq!(v.culprit, Some(Box::new(r(3, Some("a"), 14, 15))));
    }

    fn unknown(mut op: Operation) -> Operation {
        op.outcome = Outcome::Unknown;
        op
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        assert_eq!(
            check(&[w(1, "a", 0, 1), r(2, Some("a"), 2, 3), w(1, "b", 4, 5), r(2, Some("b"), 6, 7)]),
            CheckResult::Linearizable
        );
        // Overlapping writes may land in either order; each read sees one consistent order.
        assert_eq!(
            check(&[w(1, "a", 0, 10), w(2, "b", 0, 10), r(3, Some("a"), 11, 12), r(3, Some("a"), 13, 14)]),
            CheckResult::Linearizable
        );
        assert_eq!(
            check(&[w(1, "a", 0, 10), w(2, "b", 0, 10), r(3, Some("b"), 11, 12)]),
            CheckResult::Linearizable
        );
        // A read concurrent with a write may see either value.
        assert_eq!(
            check(&[w(1, "a", 0, 1), w(1, "b", 2, 10), r(2, Some("a"), 3, 4), r(2, Some("b"), 5, 6)]),
            CheckResult::Linearizable
        );
    }

    #[test]
    fn stale_and_impossible_reads_fail() {
        // After "b" was acknowledged, a later read sees "a": a lost write.
        let lost = [w(1, "a", 0, 1), w(1, "b", 2, 3), r(2, Some("a"), 4, 5)];
        assert!(check(&lost).is_violation());
        // A value nobody wrote.
        assert!(check(&[w(1, "a", 0, 1), r(2, Some("z"), 2, 3)]).is_violation());
        // Two sequential reads that see "b" then "a" with no write between: time went backwards.
        assert!(
            check(&[w(1, "a", 0, 1), w(2, "b", 2, 20), r(3, Some("b"), 3, 4), r(3, Some("a"), 5, 6)])
                .is_violation()
        );
        // An acknowledged delete, then the old value again.
        let del = Operation { op: RegisterOp::Write(None), ..w(1, "", 2, 3) };
        assert!(check(&[w(1, "a", 0, 1), del, r(2, Some("a"), 4, 5)]).is_violation());
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let timed_out = unknown(w(1, "b", 2, 3));
        assert_eq!(
            check(&[w(1, "a", 0, 1), timed_out.clone(), r(2, Some("a"), 10, 11)]),
            CheckResult::Linearizable
        );
        assert_eq!(
            check(&[w(1, "a", 0, 1), timed_out.clone(), r(2, Some("b"), 10, 11)]),
            CheckResult::Linearizable
        );
        // But not before it was even called.
        assert!(check(&[w(1, "a", 0, 1), r(2, Some("b"), 1, 2), unknown(w(1, "b", 5, 6))]).is_violation());
        // Failed writes never happened.
        let failed = Operation { outcome: Outcome::Fail, ..w(1, "b", 2, 3) };
        assert!(check(&[w(1, "a", 0, 1), failed, r(2, Some("b"), 10, 11)]).is_violation());
    }

    #[test]
    fn increments_are_read_modify_writes() {
        let incr = |client, delta, result: Option<i64>, call, ret| Operation {
            client,
            server: 0,
            key: b"k".to_vec(),
            op: RegisterOp::Incr { delta, result },
            call,
            ret,
            outcome: Outcome::Ok,
        };
        assert_eq!(check(&[incr(1, 1, Some(1), 0, 5), incr(2, 1, Some(2), 0, 5)]), CheckResult::Linearizable);
        assert!(
            check(&[incr(1, 1, Some(1), 0, 5), incr(2, 1, Some(1), 0, 5)]).is_violation(),
            "a lost increment"
        );
        assert!(
            check(&[w(1, "x", 0, 1), incr(2, 1, Some(1), 2, 3)]).is_violation(),
            "INCR of a non-integer never succeeds"
        );
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = w(1, "a", 0, 1);
        other.key = b"j".to_vec();
        let mut stale = r(2, Some("a"), 4, 5);
        stale.key = b"j".to_vec();
        let bad = [
            other,
            w(1, "b", 0, 1),
            r(2, Some("b"), 2, 3),
            {
                let mut x = w(1, "c", 2, 3);
                x.key = b"j".to_vec();
                x
            },
            stale,
        ];
        let v = violation(check(&bad), "key j has a stale read");
        assert_eq!(v.key, b"j".to_vec());
    }

    #[test]
    fn a_long_correct_concurrent_history_checks_quickly() {
        // A real register driven by 5 clients; each op takes effect at a point inside its interval.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut value: Option<Vec<u8>> = None;
        let mut history = Vec::new();
        let mut t = 0u64;
        for i in 0..300u64 {
            t += rng.random_range(1..4);
            let call = t.saturating_sub(rng.random_range(0..6));
            let ret = t + rng.random_range(0..6);
            let client = i % 5;
            if rng.random_range(0..2) == 0 {
                value = Some(format!("v{i}").into_bytes());
                history.push(Operation {
                    client,
                    server: 0,
                    key: b"k".to_vec(),
                    op: RegisterOp::Write(value.clone()),
                    call,
                    ret,
                    outcome: Outcome::Ok,
                });
            } else {
                history.push(Operation {
                    client,
                    server: 0,
                    key: b"k".to_vec(),
                    op: RegisterOp::Read(value.clone()),
                    call,
                    ret,
                    outcome: Outcome::Ok,
                });
            }
        }
        assert_eq!(check(&history), CheckResult::Linearizable);
        // The same history with one read in the middle seeing a value nobody wrote fails.
        let at =
            history.iter().position(|o| matches!(o.op, RegisterOp::Read(_)) && o.call > 300).expect("a read");
        history[at].op = RegisterOp::Read(Some(b"never written".to_vec()));
        assert!(check(&history).is_violation());
    }

    #[test]
    fn running_out_of_budget_is_undecided_never_a_violation_or_a_pass() {
        // Failure injected: a budget too small for the search. Invariant: the answer says so
        // (naming the key), for a linearizable history and for a violating one alike; a violation
        // in a later key still wins, since it was decided.
        let fine = [w(1, "a", 0, 10), w(2, "b", 0, 10), r(3, Some("a"), 11, 12)];
        let expected = Undecided { key: b"k".to_vec(), operations: 3, budget: 2 };
        assert_eq!(check_with_budget(&fine, 2), CheckResult::Undecided(expected.clone()));
        let stale = [w(1, "a", 0, 10), w(2, "b", 11, 12), r(3, Some("a"), 13, 14)];
        assert_eq!(check_with_budget(&stale, 2), CheckResult::Undecided(expected));
        assert!(check_with_budget(&stale, 1000).is_violation());
        let mut elsewhere = r(3, Some("z"), 0, 1);
        elsewhere.key = b"l".to_vec();
        let mixed = [fine.as_slice(), &[elsewhere]].concat();
        assert_eq!(
            violation(check_with_budget(&mixed, 3), "l reads a value nobody wrote").key,
            b"l".to_vec()
        );
    }
}
