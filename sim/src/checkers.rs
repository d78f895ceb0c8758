//! The end-of-run checkers besides linearizability: durability (D1) and replica convergence.

use std::collections::BTreeMap;

use crate::linearizability::{Operation, Outcome, RegisterOp};

/// An acknowledged write that the final state does not reflect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "key {key:?}: the write of {acknowledged:?} acknowledged at {acknowledged_at} is lost; the final value {found:?} \
     was written by no operation that could follow it"
)]
pub struct LostWrite {
    pub key: String,
    pub acknowledged: Option<String>,
    pub acknowledged_at: u64,
    pub found: Option<String>,
}

fn show(v: &Option<Vec<u8>>) -> Option<String> {
    v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The value a write-like operation leaves, if it is known.
fn written(op: &RegisterOp) -> Option<Option<Vec<u8>>> {
    match op {
        RegisterOp::Write(v) => Some(v.clone()),
        RegisterOp::Incr { result: Some(r), .. } => Some(Some(r.to_string().into_bytes())),
        RegisterOp::Incr { result: None, .. } | RegisterOp::Read(_) => None,
    }
}

/// D1: for every key, the final value must come from the last acknowledged write, or from a write
/// (acknowledged or undecided) that could have taken effect after it — one that had not returned
/// before the acknowledged write was invoked. `final_state` holds every key's value at the end (a key
/// missing from it is absent).
pub fn check_durability(
    history: &[Operation],
    final_state: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), LostWrite> {
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if op.outcome != Outcome::Fail && !matches!(op.op, RegisterOp::Read(_)) {
            by_key.entry(&op.key).or_default().push(op);
        }
    }
    for (key, writes) in by_key {
        // The acknowledged write that returned last: no acknowledged write can be ordered after it
        // without overlapping it.
        let Some(last) = writes.iter().filter(|w| w.outcome == Outcome::Ok).max_by_key(|w| w.ret) else {
            continue;
        };
        let found = final_state.get(key).cloned();
        let explained = writes.iter().any(|w| {
            let could_follow = w.outcome == Outcome::Unknown || w.ret >= last.call;
            could_follow && written(&w.op).is_none_or(|v| v == found)
        });
        if !explained {
            return Err(LostWrite {
                key: String::from_utf8_lossy(key).into_owned(),
                acknowledged: written(&last.op).and_then(|v| show(&v)),
                acknowledged_at: last.ret,
                found: show(&found),
            });
        }
    }
    Ok(())
}

/// Replicas that did not converge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replicas diverge: {0:?} (node, applied index, state digest)")]
pub struct Divergence(pub Vec<(u64, u64, u64)>);

/// After faults heal, every replica must reach the same state digest at the same applied index.
pub fn check_convergence(replicas: &[(u64, u64, u64)]) -> Result<(), Divergence> {
    let same = replicas.windows(2).all(|w| (w[0].1, w[0].2) == (w[1].1, w[1].2));
    if same { Ok(()) } else { Err(Divergence(replicas.to_vec())) }
}

/// A stable digest of a replica's state (FNV-1a over keys and values in order), for convergence.
pub fn state_digest<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in (bytes.len() as u64).to_be_bytes().iter().chain(bytes) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (k, v) in pairs {
        eat(k);
        eat(v);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(v: Option<&str>, call: u64, ret: u64, outcome: Outcome) -> Operation {
        Operation {
            client: 1,
            key: b"k".to_vec(),
            op: RegisterOp::Write(v.map(|s| s.as_bytes().to_vec())),
            call,
            ret,
            outcome,
        }
    }

    fn state(v: Option<&str>) -> BTreeMap<Vec<u8>, Vec<u8>> {
        v.map(|s| (b"k".to_vec(), s.as_bytes().to_vec())).into_iter().collect()
    }

    #[test]
    fn the_last_acknowledged_write_must_survive() {
        let h = [write(Some("a"), 0, 1, Outcome::Ok), write(Some("b"), 2, 3, Outcome::Ok)];
        assert_eq!(check_durability(&h, &state(Some("b"))), Ok(()));
        let lost = check_durability(&h, &state(Some("a"))).expect_err("b was acknowledged after a");
        assert_eq!(lost.acknowledged.as_deref(), Some("b"));
        assert!(check_durability(&h, &state(None)).is_err());
    }

    #[test]
    fn later_or_concurrent_writes_may_replace_it() {
        // c overlaps b, so either may be last; an undecided d may have landed after both.
        let h = [
            write(Some("b"), 2, 5, Outcome::Ok),
            write(Some("c"), 3, 4, Outcome::Ok),
            write(Some("d"), 6, 7, Outcome::Unknown),
            write(Some("x"), 0, 1, Outcome::Fail),
        ];
        for v in ["b", "c", "d"] {
            assert_eq!(check_durability(&h, &state(Some(v))), Ok(()), "{v}");
        }
        assert!(check_durability(&h, &state(Some("x"))).is_err(), "a failed write never happened");
        let del = [write(Some("b"), 0, 1, Outcome::Ok), write(None, 2, 3, Outcome::Ok)];
        assert_eq!(check_durability(&del, &state(None)), Ok(()));
    }

    #[test]
    fn convergence_needs_equal_digests_at_equal_indexes() {
        let d = state_digest([(&b"k"[..], &b"v"[..])]);
        assert_eq!(check_convergence(&[(1, 10, d), (2, 10, d), (3, 10, d)]), Ok(()));
        assert!(check_convergence(&[(1, 10, d), (2, 9, d)]).is_err());
        assert!(check_convergence(&[(1, 10, d), (2, 10, d ^ 1)]).is_err());
        assert_ne!(state_digest([(&b"ab"[..], &b"c"[..])]), state_digest([(&b"a"[..], &b"bc"[..])]));
    }
}
