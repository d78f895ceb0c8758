//! The checker checked. A brute-force reference tries every order of a small history; a proptest
//! compares it with [`super::check`] on random histories of up to eight operations over three keys
//! (SET, GET, DEL, INCR, MSET, APPEND; acknowledged, failed and undecided outcomes), correct ones
//! and corrupted ones, and with any budget: the checker must agree with the reference, or say it
//! gave up.
//!
//! The reference follows the definition in the parent module's documentation and nothing of the
//! checker's machinery (no events, no memo, no components).

use std::collections::BTreeMap;

use proptest::collection::vec;
use proptest::prelude::*;

use super::{CheckResult, Operation, Outcome, RegisterOp, check, check_with_budget};

type Store = BTreeMap<Vec<u8>, Vec<u8>>;

/// The integer a value holds, for INCR (absent is 0).
fn integer(v: Option<&Vec<u8>>) -> Option<i64> {
    match v {
        None => Some(0),
        Some(v) => durakv::fsm::parse_redis_int(v),
    }
}

/// Apply `op` to a sequential store; `false` if it could not take effect, or could not have
/// returned what it returned (an acknowledged operation's results are known, an undecided one's
/// are not).
fn apply(store: &mut Store, op: &Operation) -> bool {
    let seen = op.outcome == Outcome::Ok;
    for (key, effect) in &op.effects {
        match effect {
            RegisterOp::Write(Some(v)) => {
                store.insert(key.clone(), v.clone());
            }
            RegisterOp::Write(None) => {
                store.remove(key);
            }
            RegisterOp::Read(v) => {
                if seen && store.get(key) != v.as_ref() {
                    return false;
                }
            }
            RegisterOp::Incr { delta, result } => {
                let Some(n) = integer(store.get(key)).and_then(|c| c.checked_add(*delta)) else {
                    return false;
                };
                if seen && result.is_some_and(|r| r != n) {
                    return false;
                }
                store.insert(key.clone(), n.to_string().into_bytes());
            }
            // The generator never draws expiring writes: the reference has no clock to model them.
            RegisterOp::WriteExpiring { .. } | RegisterOp::CompareAndSet { .. } => return false,
            RegisterOp::Append { suffix, len } => {
                let value = store.entry(key.clone()).or_default();
                value.extend_from_slice(suffix);
                if seen && len.is_some_and(|l| usize::try_from(l).ok() != Some(value.len())) {
                    return false;
                }
            }
        }
    }
    true
}

/// Whether some total order of the history explains it: every acknowledged operation placed, each
/// undecided one placed or left out (it never took effect), failed ones left out; an operation
/// placed only after every operation that returned before it was called.
pub(super) fn brute_force(history: &[Operation]) -> bool {
    let ops: Vec<&Operation> = history.iter().filter(|o| o.outcome != Outcome::Fail).collect();
    let returned = |o: &Operation| if o.outcome == Outcome::Unknown { u64::MAX } else { o.ret.max(o.call) };
    // before[i]: the operations that must precede operation i.
    let before: Vec<Vec<usize>> =
        ops.iter().map(|b| (0..ops.len()).filter(|&a| returned(ops[a]) < b.call).collect()).collect();
    fn extend(ops: &[&Operation], before: &[Vec<usize>], placed: &mut Vec<bool>, store: &Store) -> bool {
        let done = ops.iter().zip(placed.iter()).all(|(o, &p)| p || o.outcome == Outcome::Unknown);
        if done {
            return true;
        }
        for i in 0..ops.len() {
            if placed[i] || before[i].iter().any(|&a| !placed[a]) {
                continue;
            }
            let mut next = store.clone();
            if !apply(&mut next, ops[i]) {
                continue;
            }
            placed[i] = true;
            if extend(ops, before, placed, &next) {
                return true;
            }
            placed[i] = false;
        }
        false
    }
    extend(&ops, &before, &mut vec![false; ops.len()], &Store::new())
}

const KEYS: [&str; 3] = ["a", "b", "c"];

/// One operation of a generated history, before it is run.
#[derive(Debug, Clone)]
struct Planned {
    kind: Kind,
    key: usize,
    /// MSET's second key (another one than `key`).
    other: usize,
    call: u64,
    /// Return time minus call time.
    span: u64,
    /// Where in its interval it takes effect, in percent.
    at: u64,
    fate: Fate,
    /// Whether its value is an integer (INCR fails on anything else).
    integer: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Set,
    Get,
    Del,
    Incr,
    MSet,
    Append,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ok,
    /// A timeout: it took effect, or not.
    Unknown {
        applied: bool,
    },
    Fail,
}

/// How a generated history is made wrong. Indexes wrap around the candidates.
#[derive(Debug, Clone, Copy)]
enum Corruption {
    None,
    /// An acknowledged GET returns something else: nil, or the value operation `to` writes.
    Read {
        at: usize,
        to: Option<usize>,
    },
    /// An acknowledged write is recorded (with its results) but never takes effect.
    Drop {
        at: usize,
    },
    /// An acknowledged INCR or APPEND returns one more than it should.
    Result {
        at: usize,
    },
}

fn value_of(i: usize, plan: &Planned) -> Vec<u8> {
    if plan.integer { format!("{}", i + 1) } else { format!("v{i}") }.into_bytes()
}

/// Run the plan against a sequential store, each operation at its point in its interval, and
/// record what each returned: a correct history, unless `drop` names one that never takes effect.
fn run(plan: &[Planned], drop: Option<usize>) -> Vec<Operation> {
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&i| (plan[i].call + plan[i].span * plan[i].at / 100, i));
    let mut store = Store::new();
    let mut history: Vec<Option<Operation>> = vec![None; plan.len()];
    for i in order {
        let p = &plan[i];
        let key = KEYS[p.key].as_bytes().to_vec();
        let value = value_of(i, p);
        let mut outcome = match p.fate {
            Fate::Ok => Outcome::Ok,
            Fate::Unknown { .. } => Outcome::Unknown,
            Fate::Fail => Outcome::Fail,
        };
        let mut next = store.clone();
        let effects = match p.kind {
            Kind::Set => vec![(key, RegisterOp::Write(Some(value)))],
            Kind::Del => vec![(key, RegisterOp::Write(None))],
            Kind::Get => vec![(key.clone(), RegisterOp::Read(store.get(&key).cloned()))],
            Kind::Incr => {
                let n = integer(store.get(&key)).and_then(|c| c.checked_add(1));
                if n.is_none() && outcome == Outcome::Ok {
                    // The server answers with an error: it certainly did not happen.
                    outcome = Outcome::Fail;
                }
                vec![(key, RegisterOp::Incr { delta: 1, result: n })]
            }
            Kind::MSet => {
                let other = KEYS[p.other].as_bytes().to_vec();
                vec![(key, RegisterOp::Write(Some(value.clone()))), (other, RegisterOp::Write(Some(value)))]
            }
            Kind::Append => {
                let len = store.get(&key).map_or(0, Vec::len) + value.len();
                vec![(key, RegisterOp::Append { suffix: value, len: i64::try_from(len).ok() })]
            }
        };
        let op =
            Operation { client: i as u64, server: 0, effects, call: p.call, ret: p.call + p.span, outcome };
        let takes_effect = match p.fate {
            Fate::Ok => outcome == Outcome::Ok,
            Fate::Unknown { applied } => applied,
            Fate::Fail => false,
        };
        if takes_effect && drop != Some(i) && apply(&mut next, &op) {
            store = next;
        }
        history[i] = Some(op);
    }
    let mut history: Vec<Operation> = history.into_iter().flatten().collect();
    // What nobody saw is not recorded: an undecided or failed operation returned nothing.
    for o in history.iter_mut().filter(|o| o.outcome != Outcome::Ok) {
        for (_, e) in &mut o.effects {
            match e {
                RegisterOp::Incr { result, .. } => *result = None,
                RegisterOp::Append { len, .. } => *len = None,
                RegisterOp::Read(v) => *v = None,
                RegisterOp::Write(_)
                | RegisterOp::WriteExpiring { .. }
                | RegisterOp::CompareAndSet { .. } => {}
            }
        }
    }
    history
}

/// A history from the plan, made wrong as `corruption` says (when it finds something to corrupt).
fn history(plan: &[Planned], corruption: Corruption) -> Vec<Operation> {
    let acked = |kinds: &[Kind]| -> Vec<usize> {
        (0..plan.len()).filter(|&i| plan[i].fate == Fate::Ok && kinds.contains(&plan[i].kind)).collect()
    };
    let pick = |candidates: &[usize], at: usize| candidates.get(at % candidates.len().max(1)).copied();
    match corruption {
        Corruption::None => run(plan, None),
        Corruption::Drop { at } => {
            let writes = acked(&[Kind::Set, Kind::Del, Kind::Incr, Kind::MSet, Kind::Append]);
            run(plan, pick(&writes, at))
        }
        Corruption::Read { at, to } => {
            let mut h = run(plan, None);
            if let Some(i) = pick(&acked(&[Kind::Get]), at) {
                let seen = to.map(|j| value_of(j, &plan[j % plan.len()]));
                h[i].effects[0].1 = RegisterOp::Read(seen);
            }
            h
        }
        Corruption::Result { at } => {
            let mut h = run(plan, None);
            if let Some(i) = pick(&acked(&[Kind::Incr, Kind::Append]), at) {
                match &mut h[i].effects[0].1 {
                    RegisterOp::Incr { result: Some(n), .. } | RegisterOp::Append { len: Some(n), .. } => {
                        *n += 1
                    }
                    _ => {}
                }
            }
            h
        }
    }
}

fn planned() -> impl Strategy<Value = Planned> {
    let kind = prop_oneof![
        Just(Kind::Set),
        Just(Kind::Get),
        Just(Kind::Get),
        Just(Kind::Del),
        Just(Kind::Incr),
        Just(Kind::MSet),
        Just(Kind::Append),
    ];
    let fate = prop_oneof![
        6 => Just(Fate::Ok),
        1 => Just(Fate::Unknown { applied: true }),
        1 => Just(Fate::Unknown { applied: false }),
        1 => Just(Fate::Fail),
    ];
    (kind, 0..KEYS.len(), 1..KEYS.len(), 0..20u64, 0..10u64, 0..=100u64, fate, proptest::bool::weighted(0.8))
        .prop_map(|(kind, key, shift, call, span, at, fate, integer)| Planned {
            kind,
            key,
            other: (key + shift) % KEYS.len(),
            call,
            span,
            at,
            fate,
            integer,
        })
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        2 => Just(Corruption::None),
        1 => (0..8usize, proptest::option::of(0..8usize)).prop_map(|(at, to)| Corruption::Read { at, to }),
        1 => (0..8usize).prop_map(|at| Corruption::Drop { at }),
        1 => (0..8usize).prop_map(|at| Corruption::Result { at }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn the_checker_agrees_with_brute_force(
        plan in vec(planned(), 1..=8),
        corruption in corruption(),
        budget in 1..200u64,
    ) {
        let h = history(&plan, corruption);
        let expected = brute_force(&h);
        match check(&h) {
            CheckResult::Linearizable => prop_assert!(expected, "the checker accepts what no order explains: {h:#?}"),
            CheckResult::Violation(v) => {
                prop_assert!(!expected, "the checker rejects an explainable history: {h:#?}");
                // The culprit, when found, is one of the history's acknowledged operations.
                if let Some(c) = &v.culprit {
                    prop_assert!(c.outcome == Outcome::Ok, "{c:?}");
                }
            }
            CheckResult::Undecided(u) => prop_assert!(false, "eight operations exhaust the default budget: {u:?}"),
        }
        // Whatever the budget, the checker is right or says it gave up.
        match check_with_budget(&h, budget) {
            CheckResult::Linearizable => prop_assert!(expected),
            CheckResult::Violation(_) => prop_assert!(!expected),
            CheckResult::Undecided(_) => {}
        }
    }
}

#[test]
fn correct_histories_pass_and_corruptions_are_caught() {
    // The generator's own check, by the reference: what `run` makes without corruption is
    // linearizable, and corruptions yield violations often enough for the comparison to mean
    // something.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let (mut caught, mut corrupted) = (0, 0);
    for _ in 0..2000 {
        let plan = vec(planned(), 1..=8).new_tree(&mut runner).expect("a plan").current();
        assert!(brute_force(&history(&plan, Corruption::None)), "{plan:#?}");
        let c = corruption().new_tree(&mut runner).expect("a corruption").current();
        if !matches!(c, Corruption::None) {
            corrupted += 1;
            caught += usize::from(!brute_force(&history(&plan, c)));
        }
    }
    assert!(caught * 4 > corrupted, "only {caught} of {corrupted} corrupted histories are violations");
}
