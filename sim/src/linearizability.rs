//! A linearizability checker for key-value histories (Wing & Gong's search with Lowe's memoization,
//! as Porcupine does it), with `unknown` outcomes handled.
//!
//! An operation is one client command: what it did to each key it touched (one key for GET, SET,
//! DEL, INCRBY and APPEND; several for MSET, all at one instant), a call time, a return time and an
//! outcome:
//!
//! * `Ok`: it took effect exactly once, somewhere between its call and its return;
//! * `Fail`: it never took effect (it is dropped before checking);
//! * `Unknown`: a timeout left it undecided: it took effect at most once, at any time after its call,
//!   or never. Nothing it would have returned was seen, so its reads are dropped and its results
//!   ignored.
//!
//! Operation `a` precedes `b` in real time when `a` returned before `b` was called (`a.ret <
//! b.call`); intervals that touch overlap. A history is linearizable iff some total order of its
//! operations that respects real-time precedence, run against a sequential key-value store that
//! starts empty, gives every `Ok` operation the results it returned.
//!
//! Keys that no operation touches together are checked apart (P-compositionality), so a history is
//! split into components: keys joined by the multi-key operations that touch them. A component of
//! one key is searched. A component of several keys (see [`check_joined`]) is first searched key by
//! key, which finds most violations cheaply; the orders found are then merged into one order of the
//! whole, their disagreements settled one at a time when they do not fit, and only as a last resort
//! is the whole component searched, since searching many keys together multiplies their independent
//! choices.
//!
//! Each search is bounded: [`DEFAULT_BUDGET`] steps and [`MEMO_BYTES_MAX`] of memo. Running out is
//! its own outcome, [`CheckResult::Undecided`], never a violation and never a pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;

/// What an operation did to (or saw of) one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOp {
    /// SET or an MSET's pair (`Some`), or DEL (`None`).
    Write(Option<Vec<u8>>),
    /// GET, and the value it returned.
    Read(Option<Vec<u8>>),
    /// INCRBY `delta`, and the value it returned when known.
    Incr { delta: i64, result: Option<i64> },
    /// APPEND `suffix`, and the length it returned when known.
    Append { suffix: Vec<u8>, len: Option<i64> },
    /// SET `value` PX `ttl_ms`: the key holds `value` until it expires, which it may do (vanish, as
    /// if deleted, at one instant) no earlier than `vanish_from`: the earliest its deadline can come
    /// by any server's clock (the call, plus the time to live, less the largest clock skew behind and
    /// ahead of true time). Once it vanished it stays gone until written again. That it is gone in
    /// the end once its deadline surely passed, `gone_by`, is the `expiry` invariant's to check.
    WriteExpiring { value: Vec<u8>, ttl_ms: u64, vanish_from: u64, gone_by: u64 },
    /// WATCH, GET (it returned `expected`), MULTI, SET `new`, EXEC: applied (EXEC answered its
    /// array, or its outcome is unknown) only if the key still held `expected` at that instant. An
    /// EXEC that aborted applied nothing and is not recorded.
    CompareAndSet { expected: Option<Vec<u8>>, new: Vec<u8> },
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// One client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    /// The server the client sent it to (0 when not known).
    pub server: u64,
    /// What it did to each key, in the command's order; all of them take effect at one instant.
    pub effects: Vec<(Vec<u8>, RegisterOp)>,
    /// Invocation time (any monotonic unit).
    pub call: u64,
    /// Return time; ignored for `Unknown`.
    pub ret: u64,
    pub outcome: Outcome,
}

impl Operation {
    /// A command on one key.
    pub fn single(
        client: u64,
        key: &[u8],
        op: RegisterOp,
        call: u64,
        ret: u64,
        outcome: Outcome,
    ) -> Operation {
        Operation { client, server: 0, effects: vec![(key.to_vec(), op)], call, ret, outcome }
    }

    /// This operation as seen by `key` alone: its effects on that key, if it has any.
    fn project(&self, key: &[u8]) -> Option<Operation> {
        let effects: Vec<_> = self.effects.iter().filter(|(k, _)| k == key).cloned().collect();
        (!effects.is_empty()).then(|| Operation { effects, ..self.clone() })
    }
}

fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

fn show_opt(v: &Option<Vec<u8>>) -> String {
    v.as_deref().map_or_else(|| "nil".to_string(), show)
}

fn show_result(r: Option<i64>) -> String {
    r.map_or_else(|| "?".to_string(), |n| n.to_string())
}

impl fmt::Display for Operation {
    /// Redis-like: `GET k1 → "7"`, `SET k1 "7"`, `MSET k1 "7" k2 "7"`, `INCRBY k1 1 → 8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all_sets = self.effects.len() > 1
            && self.effects.iter().all(|(_, e)| matches!(e, RegisterOp::Write(Some(_))));
        if all_sets {
            write!(f, "MSET")?;
            for (k, e) in &self.effects {
                if let RegisterOp::Write(Some(v)) = e {
                    write!(f, " {} {}", String::from_utf8_lossy(k), show(v))?;
                }
            }
            return Ok(());
        }
        for (i, (k, e)) in self.effects.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            let k = String::from_utf8_lossy(k);
            match e {
                RegisterOp::Write(Some(v)) => write!(f, "SET {k} {}", show(v))?,
                RegisterOp::Write(None) => write!(f, "DEL {k}")?,
                RegisterOp::Read(seen) => write!(f, "GET {k} → {}", show_opt(seen))?,
                RegisterOp::Incr { delta, result } => {
                    write!(f, "INCRBY {k} {delta} → {}", show_result(*result))?
                }
                RegisterOp::Append { suffix, len } => {
                    write!(f, "APPEND {k} {} → {}", show(suffix), show_result(*len))?
                }
                RegisterOp::WriteExpiring { value, ttl_ms, vanish_from, .. } => {
                    write!(f, "SET {k} {} PX {ttl_ms} (may vanish from {vanish_from})", show(value))?
                }
                RegisterOp::CompareAndSet { expected, new } => {
                    write!(f, "WATCH {k}, EXEC SET {k} {} (if still {})", show(new), show_opt(expected))?
                }
            }
        }
        Ok(())
    }
}

/// Why a component's history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The keys checked together (one, unless multi-key operations joined them).
    pub keys: Vec<Vec<u8>>,
    /// The operations of those keys, for the report.
    pub operations: Vec<Operation>,
    /// The first operation (by return time) with which the history stops being linearizable:
    /// everything that returned before it can be explained, it cannot. `None` when the search for
    /// it ran out of budget.
    pub culprit: Option<Box<Operation>>,
}

/// A component whose search ran out of budget: neither linearizable nor a violation, as far as
/// the checker can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecided {
    pub keys: Vec<Vec<u8>>,
    /// How many operations the component had.
    pub operations: usize,
    /// What ran out.
    pub limit: Limit,
}

/// A bound on one search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// This many steps.
    Steps(u64),
    /// This many bytes of memo ([`MEMO_BYTES_MAX`]).
    MemoBytes(usize),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Steps(n) => write!(f, "{n} steps"),
            Limit::MemoBytes(n) => write!(f, "{} MiB of memo", n >> 20),
        }
    }
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    Linearizable,
    /// The first component (in key order) that cannot be linearized.
    Violation(Box<Violation>),
    /// No component is a violation, but the search gave up on this one (the first, in key order).
    Undecided(Undecided),
}

impl CheckResult {
    pub fn is_violation(&self) -> bool {
        matches!(self, CheckResult::Violation(_))
    }
}

/// Search steps before the checker gives up: far more than the simulation's
/// histories need (they check in thousands), small enough that a pathological one answers in
/// seconds.
pub const DEFAULT_BUDGET: u64 = 50_000_000;

/// The most memory one search's memo may take before the search gives up (undecided): a budget
/// of steps alone does not bound it, since an entry grows with the history.
pub const MEMO_BYTES_MAX: usize = 256 << 20;

/// Check `history` with the default budget.
pub fn check(history: &[Operation]) -> CheckResult {
    check_with_budget(history, DEFAULT_BUDGET)
}

/// Check `history`, giving each search at most `budget` steps.
pub fn check_with_budget(history: &[Operation], budget: u64) -> CheckResult {
    let mut undecided = None;
    for (keys, ops) in components(history) {
        let result = if keys.len() > 1 { check_joined(keys, ops, budget) } else { judge(keys, ops, budget) };
        match result {
            CheckResult::Linearizable => {}
            CheckResult::Violation(v) => return CheckResult::Violation(v),
            CheckResult::Undecided(u) => {
                undecided.get_or_insert(u);
            }
        }
    }
    undecided.map_or(CheckResult::Linearizable, CheckResult::Undecided)
}

/// How many conflicts between the keys' orders [`check_joined`] settles before it searches the
/// whole.
const REPAIRS: usize = 100;

/// A component of several keys.
///
/// Each key's projection is searched first: one that cannot be linearized is a violation of the
/// whole. When every one can, the orders found usually fit together ([`merge`]): one total order
/// that respects real time and has each of them as its projection, which is a linearization of the
/// whole, found without searching the whole. When they do not (each key's search placed the
/// multi-key operations where it first could, and they disagree), the first disagreement
/// ([`conflict`]) is settled by narrowing the operations involved one way or the other (whichever
/// keeps their keys linearizable) and searching those keys again, up to [`REPAIRS`] times. Every
/// repair only removes possibilities, so an order found then is an order of the original
/// operations. Only when that does not settle it is the component searched as a whole, which on
/// long histories can run out of budget: the keys' independent choices multiply.
fn check_joined(keys: Vec<Vec<u8>>, ops: Vec<Operation>, budget: u64) -> CheckResult {
    // The orders of the keys numbered `which` (as indexes into `ops`), or why there is none: a
    // violation, or no answer.
    let orders_of = |ops: &[Operation], before: &BTreeSet<(usize, usize)>, which: &[usize]| {
        let mut orders = Vec::with_capacity(which.len());
        for &k in which {
            let key = &keys[k];
            let (index, projected): (Vec<usize>, Vec<Operation>) =
                ops.iter().enumerate().filter_map(|(i, o)| o.project(key).map(|p| (i, p))).unzip();
            let at: BTreeMap<usize, usize> = index.iter().enumerate().map(|(j, &i)| (i, j)).collect();
            let before: Vec<(usize, usize)> =
                before.iter().filter_map(|(a, b)| Some((*at.get(a)?, *at.get(b)?))).collect();
            match search(&projected, std::slice::from_ref(key), budget, &before) {
                Search::Linearizable(order) => orders.push(order.into_iter().map(|j| index[j]).collect()),
                Search::NotLinearizable => return Err(Some(judge(vec![key.clone()], projected, budget))),
                Search::Exhausted(_) => return Err(None),
            }
        }
        Ok(orders)
    };
    let all: Vec<usize> = (0..keys.len()).collect();
    let mut orders: Vec<Vec<usize>> = match orders_of(&ops, &BTreeSet::new(), &all) {
        Ok(orders) => orders,
        // Nothing narrowed yet: the key alone is a violation.
        Err(Some(violation)) => return violation,
        Err(None) => return judge(keys, ops, budget),
    };
    let (mut narrowed, mut before) = (ops.clone(), BTreeSet::new());
    for _ in 0..REPAIRS {
        if merge(&narrowed, &orders).is_ok() {
            return CheckResult::Linearizable;
        }
        let Some((involved, repairs)) = conflict(&narrowed, &orders) else { break };
        let which: Vec<usize> = (0..keys.len())
            .filter(|&k| involved.iter().any(|&i| narrowed[i].effects.iter().any(|(key, _)| *key == keys[k])))
            .collect();
        let settled = repairs.into_iter().find_map(|repair| {
            let (mut ops, mut before) = (narrowed.clone(), before.clone());
            repair.apply(&mut ops, &mut before);
            orders_of(&ops, &before, &which).ok().map(|o| (ops, before, o))
        });
        let Some((ops, b, new)) = settled else { break };
        (narrowed, before) = (ops, b);
        for (k, order) in which.into_iter().zip(new) {
            orders[k] = order;
        }
    }
    judge(keys, ops, budget)
}

/// One way to settle a disagreement between the keys' orders. Each removes possibilities.
#[derive(Debug, Clone, Copy)]
enum Repair {
    /// Operation `b` goes after operation `a`, on every key.
    Before(usize, usize),
    /// The operation is called no earlier than this.
    CallFrom(usize, u64),
    /// The operation takes effect by this time (an undecided one now must; what it returned stays
    /// unknown).
    DoneBy(usize, u64),
    /// The undecided operation never took effect (it counts as failed, and keeps its index).
    LeftOut(usize),
}

impl Repair {
    fn apply(self, ops: &mut [Operation], before: &mut BTreeSet<(usize, usize)>) {
        match self {
            Repair::Before(a, b) => {
                before.insert((a, b));
            }
            Repair::CallFrom(i, t) => ops[i].call = ops[i].call.max(t),
            Repair::DoneBy(i, t) => {
                let o = &mut ops[i];
                if o.outcome == Outcome::Unknown {
                    o.effects.retain(|(_, e)| !matches!(e, RegisterOp::Read(_)));
                    o.outcome = Outcome::Ok;
                    o.ret = t;
                } else {
                    o.ret = o.ret.min(t);
                }
            }
            Repair::LeftOut(i) => ops[i].outcome = Outcome::Fail,
        }
    }
}

/// The first thing the keys' orders (indexes into `ops`) disagree on, as the operations involved
/// and the repairs to try in turn: an undecided operation placed on some of its keys but not all
/// (left out, or made to take effect); a multi-key operation that one key places after something
/// called later than what another key places after it returned ([`window`]: moved later, or
/// earlier); two multi-key operations in opposite orders on two keys (either order, everywhere).
fn conflict(ops: &[Operation], orders: &[Vec<usize>]) -> Option<(Vec<usize>, Vec<Repair>)> {
    let n = ops.len();
    let mut placed = vec![0usize; n];
    for &i in orders.iter().flatten() {
        placed[i] += 1;
    }
    let end = ops.iter().filter(|o| o.outcome == Outcome::Ok).map(returned).max().unwrap_or(0);
    if let Some(i) = (0..n).find(|&i| placed[i] != 0 && placed[i] != distinct_keys(&ops[i])) {
        return Some((vec![i], vec![Repair::LeftOut(i), Repair::DoneBy(i, end.max(ops[i].call))]));
    }
    let (earliest, latest) = window(ops, orders);
    if let Some(i) = (0..n).find(|&i| distinct_keys(&ops[i]) > 1 && earliest[i] > latest[i]) {
        return Some((vec![i], vec![Repair::CallFrom(i, earliest[i]), Repair::DoneBy(i, latest[i])]));
    }
    let positions: Vec<BTreeMap<usize, usize>> = orders
        .iter()
        .map(|order| {
            order
                .iter()
                .enumerate()
                .filter(|(_, i)| distinct_keys(&ops[**i]) > 1)
                .map(|(p, &i)| (i, p))
                .collect()
        })
        .collect();
    for x in 0..positions.len() {
        for y in x + 1..positions.len() {
            let mut common: Vec<(usize, usize, usize)> =
                positions[x].iter().filter_map(|(&i, &p)| positions[y].get(&i).map(|&q| (p, q, i))).collect();
            common.sort_unstable();
            for (u, &(_, q1, a)) in common.iter().enumerate() {
                if let Some(&(_, _, b)) = common[u + 1..].iter().find(|&&(_, q2, _)| q2 < q1) {
                    return Some((vec![a, b], vec![Repair::Before(a, b), Repair::Before(b, a)]));
                }
            }
        }
    }
    None
}

/// For each operation, from the keys' orders: the latest call among what precedes it in any of
/// them, and the earliest return among the acknowledged operations that follow it. A total order
/// with every key's order in it places the operation after the one and before the other, so an
/// operation whose first exceeds its second cannot be placed: its keys disagree.
fn window(ops: &[Operation], orders: &[Vec<usize>]) -> (Vec<u64>, Vec<u64>) {
    let n = ops.len();
    let (mut earliest, mut latest) = (vec![0u64; n], vec![u64::MAX; n]);
    for order in orders {
        let mut calls = 0u64;
        for &i in order {
            earliest[i] = earliest[i].max(calls);
            calls = calls.max(ops[i].call);
        }
        let mut returns = u64::MAX;
        for &i in order.iter().rev() {
            latest[i] = latest[i].min(returns);
            if ops[i].outcome == Outcome::Ok {
                returns = returns.min(returned(&ops[i]));
            }
        }
    }
    (earliest, latest)
}

/// When an operation returns, for real-time order: never, if it is undecided.
fn returned(o: &Operation) -> u64 {
    if o.outcome == Outcome::Unknown { u64::MAX } else { o.ret.max(o.call) }
}

fn distinct_keys(o: &Operation) -> usize {
    o.effects.iter().map(|(k, _)| k).collect::<BTreeSet<_>>().len()
}

/// Whether the keys' orders (each a linearization of one key's projection of `ops`, as indexes
/// into `ops`) are the projections of one total order that respects real time: then that order,
/// with each multi-key operation at one instant, is a linearization of the whole, since an
/// operation's effect on a key depends on that key alone. An undecided operation must have taken
/// effect on all of its keys or on none.
fn merge(ops: &[Operation], orders: &[Vec<usize>]) -> Result<(), ()> {
    use std::cmp::Reverse;
    let n = ops.len();
    let mut placed = vec![0usize; n];
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut waiting = vec![0usize; n];
    for order in orders {
        for &i in order {
            placed[i] += 1;
        }
        for pair in order.windows(2) {
            after[pair[0]].push(pair[1]);
            waiting[pair[1]] += 1;
        }
    }
    if (0..n).any(|i| placed[i] != 0 && placed[i] != distinct_keys(&ops[i])) {
        return Err(());
    }
    // Kahn's algorithm over the keys' order edges and the real-time edges (a before b when a
    // returned before b was called), the latter implicit: b may go once every operation still
    // unplaced returned at or after b's call.
    let mut unplaced_returns: BTreeMap<u64, usize> = BTreeMap::new();
    let mut ready = std::collections::BinaryHeap::new();
    for i in (0..n).filter(|&i| placed[i] > 0) {
        *unplaced_returns.entry(returned(&ops[i])).or_default() += 1;
        if waiting[i] == 0 {
            ready.push(Reverse((ops[i].call, i)));
        }
    }
    while let Some(Reverse((call, i))) = ready.pop() {
        if unplaced_returns.keys().next().is_some_and(|&earliest| earliest < call) {
            // Something still unplaced returned before the earliest ready operation was called.
            return Err(());
        }
        let r = returned(&ops[i]);
        if let Some(count) = unplaced_returns.get_mut(&r) {
            *count -= 1;
            if *count == 0 {
                unplaced_returns.remove(&r);
            }
        }
        for &j in &after[i] {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push(Reverse((ops[j].call, j)));
            }
        }
    }
    if unplaced_returns.is_empty() { Ok(()) } else { Err(()) }
}

/// The history's operations that may have taken effect, grouped by the keys they connect, in order
/// of each component's smallest key.
fn components(history: &[Operation]) -> Vec<(Vec<Vec<u8>>, Vec<Operation>)> {
    let live: Vec<&Operation> =
        history.iter().filter(|o| o.outcome != Outcome::Fail && !o.effects.is_empty()).collect();
    let index: BTreeMap<&[u8], usize> = {
        let keys: BTreeSet<&[u8]> =
            live.iter().flat_map(|o| o.effects.iter().map(|(k, _)| k.as_slice())).collect();
        keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect()
    };
    // Union-find over key indexes; the root of a set is its smallest index (its smallest key).
    let mut parent: Vec<usize> = (0..index.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for o in &live {
        let mut ids = o.effects.iter().map(|(k, _)| index[k.as_slice()]);
        if let Some(first) = ids.next() {
            for other in ids {
                let (a, b) = (root(&mut parent, first), root(&mut parent, other));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut groups: BTreeMap<usize, (Vec<Vec<u8>>, Vec<Operation>)> = BTreeMap::new();
    for (key, &i) in &index {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().0.push(key.to_vec());
    }
    for o in live {
        let r = root(&mut parent, index[o.effects[0].0.as_slice()]);
        groups.entry(r).or_default().1.push(o.clone());
    }
    groups.into_values().collect()
}

/// Check one set of keys with its operations; find the culprit of a violation.
fn judge(keys: Vec<Vec<u8>>, ops: Vec<Operation>, budget: u64) -> CheckResult {
    match search(&ops, &keys, budget, &[]) {
        Search::Linearizable(_) => CheckResult::Linearizable,
        Search::Exhausted(limit) => CheckResult::Undecided(Undecided { keys, operations: ops.len(), limit }),
        Search::NotLinearizable => {
            let culprit = first_unexplained(&ops, &keys, budget);
            CheckResult::Violation(Box::new(Violation { keys, operations: ops, culprit }))
        }
    }
}

/// The history as it stood at time `t`: every operation invoked by then, those that had not
/// returned counted as undecided.
fn prefix(ops: &[Operation], t: u64) -> Vec<Operation> {
    ops.iter()
        .filter(|o| o.call <= t)
        .map(|o| {
            let mut o = o.clone();
            if o.outcome == Outcome::Ok && o.ret > t {
                o.outcome = Outcome::Unknown;
            }
            o
        })
        .collect()
}

/// The operation that breaks a non-linearizable history: the first acknowledged one, in return
/// order, at whose return the history so far cannot be explained. Histories only gain constraints as
/// time goes on, so a binary search finds it; `None` if a probe runs out of budget.
fn first_unexplained(ops: &[Operation], keys: &[Vec<u8>], budget: u64) -> Option<Box<Operation>> {
    let mut by_ret: Vec<&Operation> = ops.iter().filter(|o| o.outcome == Outcome::Ok).collect();
    by_ret.sort_by_key(|o| (o.ret, o.call));
    let (mut lo, mut hi) = (0, by_ret.len());
    // Invariant: the histories at the returns before `lo` are explained; the one at `hi` is not.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match search(&prefix(ops, by_ret[mid].ret), keys, budget, &[]) {
            Search::Linearizable(_) => lo = mid + 1,
            Search::NotLinearizable => hi = mid,
            Search::Exhausted(_) => return None,
        }
    }
    by_ret.get(lo).map(|o| Box::new((*o).clone()))
}

/// An effect as the search uses it: on the component's key number `usize`.
#[derive(Debug, Clone, Copy)]
enum Effect<'a> {
    Write(Option<&'a [u8]>),
    /// A value and the earliest time it may vanish.
    WriteExpiring(&'a [u8], u64),
    /// Write the second only if the key holds the first.
    CompareAndSet(Option<&'a [u8]>, &'a [u8]),
    Read(Option<&'a [u8]>),
    Incr(i64, Option<i64>),
    Append(&'a [u8], Option<i64>),
}

/// An operation's effects, each on the searched keys' number `usize`.
type Effects<'a> = Vec<(usize, Effect<'a>)>;

/// Every key's value: absent, or a value (shared, so a state costs the memo one pointer per key)
/// with the earliest time it may vanish (`u64::MAX`: it never expires).
type State = Vec<Option<(Rc<[u8]>, u64)>>;

/// A value that never expires.
const NEVER: u64 = u64::MAX;

/// The integer INCR reads (absent is 0), by Redis's rules as the node applies them: `007` or `+5` is
/// no integer, and an INCR of it fails.
fn integer(v: Option<&[u8]>) -> Option<i64> {
    match v {
        None => Some(0),
        Some(v) => durakv::fsm::parse_redis_int(v),
    }
}

/// Apply one operation's effects at one instant, an operation that returned at `ret`; `None` if it
/// could not have returned what it did.
fn step(state: &State, effects: &[(usize, Effect<'_>)], ret: u64) -> Option<State> {
    let mut next = state.clone();
    for &(k, e) in effects {
        let value = |next: &State| next[k].as_ref().map(|(v, _)| v.clone());
        match e {
            Effect::Write(v) => next[k] = v.map(|v| (Rc::from(v), NEVER)),
            Effect::WriteExpiring(v, from) => next[k] = Some((Rc::from(v), from)),
            Effect::CompareAndSet(expected, new) => {
                if value(&next).as_deref() != expected {
                    return None;
                }
                next[k] = Some((Rc::from(new), NEVER));
            }
            Effect::Read(seen) => match (&next[k], seen) {
                (Some((v, _)), Some(s)) if **v == *s => {}
                (None, None) => {}
                // The key expired before this read took effect: it can have, if its earliest
                // deadline came before the read returned. It stays gone.
                (Some((_, from)), None) if *from <= ret => next[k] = None,
                _ => return None,
            },
            Effect::Incr(delta, result) => {
                let n = integer(value(&next).as_deref())?.checked_add(delta)?;
                if result.is_some_and(|r| r != n) {
                    return None;
                }
                // As Redis: INCR keeps the key's expiry.
                let from = next[k].as_ref().map_or(NEVER, |(_, f)| *f);
                next[k] = Some((Rc::from(n.to_string().into_bytes()), from));
            }
            Effect::Append(suffix, len) => {
                let mut v = value(&next).as_deref().unwrap_or_default().to_vec();
                v.extend_from_slice(suffix);
                if len.is_some_and(|l| usize::try_from(l).ok() != Some(v.len())) {
                    return None;
                }
                let from = next[k].as_ref().map_or(NEVER, |(_, f)| *f);
                next[k] = Some((Rc::from(v), from));
            }
        }
    }
    Some(next)
}

/// Undecided SETs and MSETs whose values nobody can have seen: no acknowledged GET of a key they
/// write returned their value, and no INCR or APPEND of that key can have come after them (it
/// would have built on the value). Leaving such a write out never breaks an order that has it,
/// since nothing observes it before the key is written again, so the search can skip it. With
/// unique values (the simulation's workload), this is most undecided writes, and it saves the
/// search from trying each of them at every point.
fn unseen_writes(ops: &[Operation], keys: &[Vec<u8>]) -> BTreeSet<usize> {
    let mut seen: BTreeSet<(usize, &[u8])> = BTreeSet::new();
    // Per key, the latest return of an INCR or APPEND (infinity when undecided).
    let mut builds_on: BTreeMap<usize, u64> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.outcome != Outcome::Fail) {
        for (key, e) in &o.effects {
            let Ok(k) = keys.binary_search(key) else { continue };
            match e {
                RegisterOp::Read(Some(v)) if o.outcome == Outcome::Ok => {
                    seen.insert((k, v.as_slice()));
                }
                RegisterOp::Incr { .. } | RegisterOp::Append { .. } => {
                    let latest = builds_on.entry(k).or_insert(0);
                    *latest = (*latest).max(returned(o));
                }
                _ => {}
            }
        }
    }
    (0..ops.len())
        .filter(|&i| {
            let o = &ops[i];
            o.outcome == Outcome::Unknown
                && o.effects.iter().all(|(key, e)| {
                    let Ok(k) = keys.binary_search(key) else { return true };
                    match e {
                        RegisterOp::Write(Some(v)) => {
                            !seen.contains(&(k, v.as_slice()))
                                && builds_on.get(&k).is_none_or(|&r| r < o.call)
                        }
                        _ => false,
                    }
                })
        })
        .collect()
}

/// The effects the search must honour: an undecided operation's reads and results were never seen.
fn effects_of<'a>(o: &'a Operation, keys: &[Vec<u8>]) -> Effects<'a> {
    let seen = o.outcome == Outcome::Ok;
    o.effects
        .iter()
        .filter_map(|(key, e)| {
            let k = keys.binary_search(key).ok()?;
            let e = match e {
                RegisterOp::Write(v) => Effect::Write(v.as_deref()),
                RegisterOp::WriteExpiring { value, vanish_from, .. } => {
                    Effect::WriteExpiring(value, *vanish_from)
                }
                // Its condition holds whether or not the client heard back: an EXEC that applied
                // found the key as WATCH and GET had.
                RegisterOp::CompareAndSet { expected, new } => {
                    Effect::CompareAndSet(expected.as_deref(), new)
                }
                RegisterOp::Read(v) if seen => Effect::Read(v.as_deref()),
                RegisterOp::Read(_) => return None,
                RegisterOp::Incr { delta, result } => Effect::Incr(*delta, result.filter(|_| seen)),
                RegisterOp::Append { suffix, len } => Effect::Append(suffix, len.filter(|_| seen)),
            };
            Some((k, e))
        })
        .collect()
}

enum Search {
    /// With the order found: indexes into the operations searched, those that took effect.
    Linearizable(Vec<usize>),
    NotLinearizable,
    Exhausted(Limit),
}

#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    time: u64,
}

/// Wing & Gong search over the operations of `keys` (sorted), at most `budget` steps. Each pair
/// `(a, b)` in `before` (indexes into `all`) keeps `b` out until `a` is placed.
fn search(all: &[Operation], keys: &[Vec<u8>], budget: u64, before: &[(usize, usize)]) -> Search {
    let unseen = unseen_writes(all, keys);
    // Operations with nothing left to check (an undecided GET, an unseen write) are dropped; each
    // keeps its index in `all`.
    let ops: Vec<(usize, &Operation, Effects<'_>)> = all
        .iter()
        .enumerate()
        .filter(|(i, o)| o.outcome != Outcome::Fail && !unseen.contains(i))
        .map(|(i, o)| (i, o, effects_of(o, keys)))
        .filter(|(_, _, e)| !e.is_empty())
        .collect();
    let n = ops.len();
    let mut needs: Vec<Vec<usize>> = vec![Vec::new(); n];
    if !before.is_empty() {
        let at: BTreeMap<usize, usize> = ops.iter().enumerate().map(|(j, (i, _, _))| (*i, j)).collect();
        for (a, b) in before {
            if let (Some(&a), Some(&b)) = (at.get(a), at.get(b)) {
                needs[b].push(a);
            }
        }
    }
    let mut events: Vec<Event> = Vec::with_capacity(2 * n);
    for (i, (_, o, _)) in ops.iter().enumerate() {
        events.push(Event { op: i, is_call: true, time: o.call });
        events.push(Event { op: i, is_call: false, time: returned(o) });
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
    let mut state: State = vec![None; keys.len()];
    let mut cursor = next[head];
    let mut steps: u64 = 0;
    // What the memo holds, roughly: each entry is its bitset and one pointer per key.
    let entry_bytes = (words + keys.len() * 2 + 8) * 8;
    let mut memo_bytes = 0;
    while next[head] < len {
        steps += 1;
        if steps > budget {
            return Search::Exhausted(Limit::Steps(budget));
        }
        if memo_bytes > MEMO_BYTES_MAX {
            return Search::Exhausted(Limit::MemoBytes(MEMO_BYTES_MAX));
        }
        let Some(&e) = events.get(cursor) else {
            // Unreachable: the list always ends with a return, where the cursor stops.
            return Search::NotLinearizable;
        };
        if e.is_call {
            let op = e.op;
            let ready = needs[op].iter().all(|&a| linearized[a / 64] & (1 << (a % 64)) != 0);
            if ready && let Some(new_state) = step(&state, &ops[op].2, returned(ops[op].1)) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), new_state.clone())) {
                    memo_bytes += entry_bytes;
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
        } else if ops[e.op].1.outcome == Outcome::Unknown {
            // Returns at infinity come last: every acknowledged operation is placed, and the
            // undecided ones left never took effect (whether or not they could have).
            break;
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
    Search::Linearizable(stack.iter().map(|(op, _)| ops[*op].0).collect())
}

#[cfg(test)]
mod reference;

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
        Operation::single(client, b"k", RegisterOp::Write(Some(v.into())), call, ret, Outcome::Ok)
    }

    fn r(client: u64, v: Option<&str>, call: u64, ret: u64) -> Operation {
        let seen = v.map(|s| s.as_bytes().to_vec());
        Operation::single(client, b"k", RegisterOp::Read(seen), call, ret, Outcome::Ok)
    }

    /// The same operation on key `key`.
    fn on(key: &str, mut op: Operation) -> Operation {
        for (k, _) in &mut op.effects {
            *k = key.as_bytes().to_vec();
        }
        op
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
        let del = Operation::single(1, b"k", RegisterOp::Write(None), 2, 3, Outcome::Ok);
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
        // An undecided INCR that fits nowhere (the value is never an integer after its call) never
        // happened. Found by the brute-force comparison: it used to be reported as a violation.
        let incr =
            Operation::single(2, b"k", RegisterOp::Incr { delta: 1, result: None }, 2, 3, Outcome::Unknown);
        assert_eq!(check(&[w(1, "x", 0, 1), incr, r(3, Some("x"), 4, 5)]), CheckResult::Linearizable);
        // Failed writes never happened.
        let failed = Operation { outcome: Outcome::Fail, ..w(1, "b", 2, 3) };
        assert!(check(&[w(1, "a", 0, 1), failed, r(2, Some("b"), 10, 11)]).is_violation());
    }

    #[test]
    fn increments_are_read_modify_writes() {
        let incr = |client, delta, result: Option<i64>, call, ret| {
            Operation::single(client, b"k", RegisterOp::Incr { delta, result }, call, ret, Outcome::Ok)
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
        let bad = [
            on("j", w(1, "a", 0, 1)),
            w(1, "b", 0, 1),
            r(2, Some("b"), 2, 3),
            on("j", w(1, "c", 2, 3)),
            on("j", r(2, Some("a"), 4, 5)),
        ];
        let v = violation(check(&bad), "key j has a stale read");
        assert_eq!(v.keys, vec![b"j".to_vec()]);
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
                history.push(Operation::single(
                    client,
                    b"k",
                    RegisterOp::Write(value.clone()),
                    call,
                    ret,
                    Outcome::Ok,
                ));
            } else {
                history.push(Operation::single(
                    client,
                    b"k",
                    RegisterOp::Read(value.clone()),
                    call,
                    ret,
                    Outcome::Ok,
                ));
            }
        }
        assert_eq!(check(&history), CheckResult::Linearizable);
        // The same history with one read in the middle seeing a value nobody wrote fails.
        let at = history
            .iter()
            .position(|o| matches!(o.effects[0].1, RegisterOp::Read(_)) && o.call > 300)
            .expect("a read");
        history[at].effects[0].1 = RegisterOp::Read(Some(b"never written".to_vec()));
        assert!(check(&history).is_violation());
    }

    #[test]
    fn running_out_of_budget_is_undecided_never_a_violation_or_a_pass() {
        // Failure injected: a budget too small for the search. Invariant: the answer says so
        // (naming the key), for a linearizable history and for a violating one alike; a violation
        // in a later key still wins, since it was decided.
        let fine = [w(1, "a", 0, 10), w(2, "b", 0, 10), r(3, Some("a"), 11, 12)];
        let expected = Undecided { keys: vec![b"k".to_vec()], operations: 3, limit: Limit::Steps(2) };
        assert_eq!(check_with_budget(&fine, 2), CheckResult::Undecided(expected.clone()));
        let stale = [w(1, "a", 0, 10), w(2, "b", 11, 12), r(3, Some("a"), 13, 14)];
        assert_eq!(check_with_budget(&stale, 2), CheckResult::Undecided(expected));
        assert!(check_with_budget(&stale, 1000).is_violation());
        // Eight concurrent writes, then a read of the first: many orders to try before the one.
        let mut hard: Vec<Operation> = (0..8).map(|i| w(i, &format!("a{i}"), 0, 10)).collect();
        hard.push(r(9, Some("a0"), 11, 12));
        assert!(matches!(check_with_budget(&hard, 20), CheckResult::Undecided(_)));
        assert_eq!(check(&hard), CheckResult::Linearizable);
        let mixed = [hard.as_slice(), &[on("l", r(3, Some("z"), 0, 1))]].concat();
        assert_eq!(
            violation(check_with_budget(&mixed, 20), "l reads a value nobody wrote").keys,
            vec![b"l".to_vec()]
        );
    }

    fn mset(client: u64, pairs: &[(&str, &str)], call: u64, ret: u64) -> Operation {
        let effects = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), RegisterOp::Write(Some(v.as_bytes().to_vec()))))
            .collect();
        Operation { client, server: 0, effects, call, ret, outcome: Outcome::Ok }
    }

    #[test]
    fn mset_is_atomic_across_its_keys() {
        // Failure injected: a reader sees MSET's new value on one key, then the old value on the
        // other, both while the MSET is in flight. Each key alone is linearizable; together they
        // are not, since MSET takes effect on both keys at one instant.
        let torn = [
            mset(1, &[("a", "1"), ("b", "1")], 0, 10),
            on("a", r(2, Some("1"), 1, 2)),
            on("b", r(2, None, 3, 4)),
        ];
        let v = violation(check(&torn), "a torn MSET");
        assert_eq!(v.keys, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(v.culprit, Some(Box::new(on("b", r(2, None, 3, 4)))));
        // Both new, or both old, is fine; so is an unrelated key between them.
        let whole = [
            mset(1, &[("a", "1"), ("b", "1")], 0, 10),
            on("b", r(2, None, 1, 2)),
            on("a", r(2, Some("1"), 3, 4)),
            on("c", w(3, "x", 0, 1)),
        ];
        assert_eq!(check(&whole), CheckResult::Linearizable);
        // An undecided MSET took effect on both keys or on neither: seen on a, so on b too.
        let half = [
            unknown(mset(1, &[("a", "1"), ("b", "1")], 0, 10)),
            on("a", r(2, Some("1"), 1, 2)),
            on("b", r(2, None, 3, 4)),
        ];
        assert!(check(&half).is_violation());
        assert_eq!(mset(1, &[("a", "1"), ("b", "2")], 0, 10).to_string(), r#"MSET a "1" b "2""#);
    }

    #[test]
    fn append_returns_the_new_length() {
        let append = |client, suffix: &str, len: Option<i64>, call, ret| {
            let op = RegisterOp::Append { suffix: suffix.as_bytes().to_vec(), len };
            Operation::single(client, b"k", op, call, ret, Outcome::Ok)
        };
        // Two concurrent appends: either order, as long as the lengths and the final value agree.
        let h = [append(1, "ab", Some(2), 0, 5), append(2, "c", Some(3), 0, 5), r(3, Some("abc"), 6, 7)];
        assert_eq!(check(&h), CheckResult::Linearizable);
        let h = [append(1, "ab", Some(3), 0, 5), append(2, "c", Some(1), 0, 5), r(3, Some("cab"), 6, 7)];
        assert_eq!(check(&h), CheckResult::Linearizable);
        let lost = [append(1, "ab", Some(2), 0, 1), append(2, "c", Some(3), 2, 3), r(3, Some("c"), 6, 7)];
        assert!(check(&lost).is_violation(), "the first append was lost");
        assert!(check(&[w(1, "x", 0, 1), append(2, "y", Some(1), 2, 3)]).is_violation(), "a wrong length");
        assert_eq!(append(2, "y", Some(2), 2, 3).to_string(), r#"APPEND k "y" → 2"#);
    }
}
