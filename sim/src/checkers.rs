//! The end-of-run checkers besides linearizability: durability (D1), replica convergence, and file
//! hygiene (D6, D11).

use std::collections::BTreeMap;

use crate::linearizability::{Operation, Outcome, RegisterOp};

/// Every check a run can make, by the name the harness records when it ran to completion and held
/// (`Summary::checks_ran`). A new check adds its name here and one `ran(w, "<name>")` where it
/// passes; `durakv-sim fuzz` lists every name here in its coverage table, with 0 when it never ran.
pub const CHECKS: &[&str] = &[
    "liveness",
    "catch_up",
    "corruption_detection",
    "recovery",
    "file_hygiene",
    "convergence",
    "durability",
    "linearizability",
    "limits",
    "list_append",
    "counter",
    "promises",
    "election_safety",
    "log_matching",
    "commit_monotonic",
    "stable_leader",
    "expiry",
    "membership",
];

/// The checks in [`CHECKS`] that run only where a scenario asks for them (`expiry`: where the
/// workload writes expiring keys).
pub const OPT_IN_CHECKS: &[&str] = &["stable_leader", "expiry"];

/// A key written last with an acknowledged `SET … PX` that nothing written later can have overtaken:
/// it must be gone once its deadline surely passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueToExpire {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// When its deadline has surely passed by every server's clock (simulated ms).
    pub gone_by: u64,
}

/// The keys the `expiry` invariant checks: for each key, the write called last, when it is an
/// acknowledged expiring write and every other write of the key returned before it was called
/// (an undecided or overlapping one could take effect after it and write the key anew).
pub fn expiry_due(history: &[Operation]) -> Vec<DueToExpire> {
    let mut by_key: BTreeMap<&[u8], Vec<(&Operation, &RegisterOp)>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.outcome != Outcome::Fail) {
        for (key, effect) in &op.effects {
            if !matches!(effect, RegisterOp::Read(_)) {
                by_key.entry(key).or_default().push((op, effect));
            }
        }
    }
    let mut due = Vec::new();
    for (key, writes) in by_key {
        let Some(&(last, effect)) = writes.iter().max_by_key(|(w, _)| w.call) else { continue };
        let RegisterOp::WriteExpiring { value, gone_by, .. } = effect else { continue };
        let alone = writes
            .iter()
            .filter(|(w, _)| !std::ptr::eq(*w, last))
            .all(|(w, _)| w.outcome == Outcome::Ok && w.ret < last.call);
        if last.outcome == Outcome::Ok && alone {
            due.push(DueToExpire { key: key.to_vec(), value: value.clone(), gone_by: *gone_by });
        }
    }
    due
}

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

/// Whether a write-like effect, if it was the last on its key, could have left `found`.
fn could_leave(op: &RegisterOp, found: &Option<Vec<u8>>) -> bool {
    match op {
        RegisterOp::Write(v) => v == found,
        // Its value, or nothing once it expired.
        RegisterOp::WriteExpiring { value, .. } => found.as_ref().is_none_or(|f| f == value),
        RegisterOp::CompareAndSet { new, .. } => found.as_ref() == Some(new),
        RegisterOp::Incr { result: Some(r), .. } => found.as_deref() == Some(r.to_string().as_bytes()),
        // Its result unknown: it leaves an integer (which one, the linearizability check decides
        // from the final read). A missing key or a non-integer it cannot explain.
        RegisterOp::Incr { result: None, .. } => {
            found.as_deref().is_some_and(|v| std::str::from_utf8(v).is_ok_and(|t| t.parse::<i64>().is_ok()))
        }
        RegisterOp::Append { suffix, len } => found.as_ref().is_some_and(|v| {
            v.ends_with(suffix) && len.is_none_or(|l| usize::try_from(l).ok() == Some(v.len()))
        }),
        RegisterOp::Read(_) => false,
    }
}

/// What an acknowledged write-like effect is known to have written, for the report.
fn acknowledged(op: &RegisterOp) -> Option<String> {
    match op {
        RegisterOp::Write(v) => show(v),
        RegisterOp::WriteExpiring { value, ttl_ms, .. } => {
            Some(format!("{} (expiring after {ttl_ms} ms)", String::from_utf8_lossy(value)))
        }
        RegisterOp::CompareAndSet { new, .. } => {
            Some(format!("{} (WATCH … EXEC)", String::from_utf8_lossy(new)))
        }
        RegisterOp::Incr { result, .. } => result.map(|r| r.to_string()),
        RegisterOp::Append { suffix, .. } => Some(format!("…{}", String::from_utf8_lossy(suffix))),
        RegisterOp::Read(_) => None,
    }
}

/// D1: for every key, the final value must come from the last acknowledged write, or from a write
/// (acknowledged or undecided) that could have taken effect after it — one that had not returned
/// before the acknowledged write was invoked. `final_state` holds every key's value at the end (a key
/// missing from it is absent). A write is any effect that changes its key: SET, DEL, INCRBY,
/// APPEND, and each pair of an MSET.
pub fn check_durability(
    history: &[Operation],
    final_state: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), LostWrite> {
    let mut by_key: BTreeMap<&[u8], Vec<(&Operation, &RegisterOp)>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.outcome != Outcome::Fail) {
        for (key, effect) in &op.effects {
            if !matches!(effect, RegisterOp::Read(_)) {
                by_key.entry(key).or_default().push((op, effect));
            }
        }
    }
    for (key, writes) in by_key {
        // The acknowledged write that returned last: no acknowledged write can be ordered after it
        // without overlapping it.
        let Some(&(last, last_effect)) =
            writes.iter().filter(|(w, _)| w.outcome == Outcome::Ok).max_by_key(|(w, _)| w.ret)
        else {
            continue;
        };
        let found = final_state.get(key).cloned();
        let explained = writes.iter().any(|(w, effect)| {
            let could_follow = w.outcome == Outcome::Unknown || w.ret >= last.call;
            could_follow && could_leave(effect, &found)
        });
        if !explained {
            return Err(LostWrite {
                key: String::from_utf8_lossy(key).into_owned(),
                acknowledged: acknowledged(last_effect),
                acknowledged_at: last.ret,
                found: show(&found),
            });
        }
    }
    Ok(())
}

/// An append-only list key or an increment-only counter key whose history its final value (or a
/// read) contradicts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key:?}: {problem}")]
pub struct ExactlyOnceViolation {
    pub key: String,
    pub problem: String,
}

/// The tokens of a list value (`a;b;c;`), or why it is not one.
fn tokens(value: &[u8]) -> Result<Vec<&[u8]>, String> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = value.strip_suffix(b";") else {
        return Err(format!("{:?} does not end with a whole element", String::from_utf8_lossy(value)));
    };
    Ok(body.split(|&b| b == b';').collect())
}

/// Jepsen's list-append idea, on the keys only APPEND (of unique tokens) and GET ever touch: the
/// final value holds every acknowledged append's token exactly once, no token of a failed append and
/// nothing no append wrote; two appends that did not overlap in time appear in the order they ran;
/// and every read returned a prefix of the final value that holds every append acknowledged before
/// the read was invoked. Any duplicate is an effect applied twice, any gap a lost write.
pub fn check_lists(
    history: &[Operation],
    final_state: &BTreeMap<Vec<u8>, Vec<u8>>,
    is_list: impl Fn(&[u8]) -> bool,
) -> Result<(), ExactlyOnceViolation> {
    let mut appends: BTreeMap<&[u8], BTreeMap<&[u8], &Operation>> = BTreeMap::new();
    let mut reads: BTreeMap<&[u8], Vec<(&Operation, &[u8])>> = BTreeMap::new();
    for op in history {
        for (key, effect) in op.effects.iter().filter(|(k, _)| is_list(k)) {
            match effect {
                RegisterOp::Append { suffix, .. } => {
                    let token = suffix.strip_suffix(b";").unwrap_or(suffix);
                    appends.entry(key).or_default().insert(token, op);
                }
                RegisterOp::Read(v) if op.outcome == Outcome::Ok => {
                    reads.entry(key).or_default().push((op, v.as_deref().unwrap_or_default()));
                }
                _ => {}
            }
        }
    }
    let keys: std::collections::BTreeSet<&[u8]> = appends
        .keys()
        .chain(reads.keys())
        .copied()
        .chain(final_state.keys().map(Vec::as_slice).filter(|k| is_list(k)))
        .collect();
    let empty = BTreeMap::new();
    for key in keys {
        let fail = |problem: String| ExactlyOnceViolation {
            key: String::from_utf8_lossy(key).into_owned(),
            problem,
        };
        let ops = appends.get(key).unwrap_or(&empty);
        let value = final_state.get(key).map(Vec::as_slice).unwrap_or_default();
        let list = tokens(value).map_err(|e| fail(format!("the final value is not a list: {e}")))?;
        let mut position: BTreeMap<&[u8], usize> = BTreeMap::new();
        for (i, t) in list.iter().enumerate() {
            let shown = String::from_utf8_lossy(t);
            match ops.get(t) {
                None => return Err(fail(format!("the final value holds {shown:?}, which no APPEND wrote"))),
                Some(op) if op.outcome == Outcome::Fail => {
                    return Err(fail(format!(
                        "the final value holds {shown:?}, whose APPEND failed at {} ms",
                        op.ret
                    )));
                }
                Some(_) => {}
            }
            if let Some(first) = position.insert(t, i) {
                return Err(fail(format!(
                    "the final value holds {shown:?} twice (elements {first} and {i}): an APPEND applied twice"
                )));
            }
        }
        for (t, op) in ops {
            if op.outcome == Outcome::Ok && !position.contains_key(t) {
                return Err(fail(format!(
                    "the APPEND of {:?} acknowledged at {} ms is missing from the final value ({} elements)",
                    String::from_utf8_lossy(t),
                    op.ret,
                    list.len()
                )));
            }
        }
        // Real-time order: no element may come before one whose APPEND was acknowledged before its
        // own APPEND was invoked. Walk from the end, keeping the acknowledged element that
        // returned first among those after the current one.
        let mut first_returned_after: Option<(&[u8], u64)> = None;
        for a in list.iter().rev() {
            let op_a = ops[a];
            if let Some((b, ret_b)) = first_returned_after
                && ret_b < op_a.call
            {
                return Err(fail(format!(
                    "{:?} comes before {:?} in the final value, but its APPEND was invoked at {} ms, after the other was acknowledged at {ret_b} ms",
                    String::from_utf8_lossy(a),
                    String::from_utf8_lossy(b),
                    op_a.call,
                )));
            }
            if op_a.outcome == Outcome::Ok && first_returned_after.is_none_or(|(_, r)| op_a.ret < r) {
                first_returned_after = Some((a, op_a.ret));
            }
        }
        // An APPEND's reply is the length after it: its token must end exactly there.
        let mut end = 0usize;
        let mut ends: BTreeMap<&[u8], usize> = BTreeMap::new();
        for t in &list {
            end += t.len() + 1;
            ends.insert(t, end);
        }
        for (t, op) in ops {
            let Some(RegisterOp::Append { len: Some(len), .. }) =
                op.effects.iter().find(|(k, _)| k.as_slice() == key).map(|(_, e)| e)
            else {
                continue;
            };
            if let Some(&at) = ends.get(t)
                && usize::try_from(*len).ok() != Some(at)
            {
                return Err(fail(format!(
                    "the APPEND of {:?} returned length {len}, but its element ends at byte {at} of the final value",
                    String::from_utf8_lossy(t)
                )));
            }
        }
        let key_reads = reads.get(key).map(Vec::as_slice).unwrap_or_default();
        // Reads in real-time order see the list grow: one that returned before another began saw no
        // more than it.
        let mut by_call: Vec<&(&Operation, &[u8])> = key_reads.iter().collect();
        by_call.sort_by_key(|(r, _)| r.call);
        let mut by_ret: Vec<&(&Operation, &[u8])> = key_reads.iter().collect();
        by_ret.sort_by_key(|(r, _)| r.ret);
        let mut longest_done: Option<&(&Operation, &[u8])> = None;
        let mut i = 0;
        for later in &by_call {
            while i < by_ret.len() && by_ret[i].0.ret < later.0.call {
                if longest_done.is_none_or(|l| by_ret[i].1.len() > l.1.len()) {
                    longest_done = Some(by_ret[i]);
                }
                i += 1;
            }
            if let Some(earlier) = longest_done
                && earlier.1.len() > later.1.len()
            {
                return Err(fail(format!(
                    "a GET at {}–{} ms saw {} bytes, after a GET that returned at {} ms had seen {}: the list shrank",
                    later.0.call,
                    later.0.ret,
                    later.1.len(),
                    earlier.0.ret,
                    earlier.1.len()
                )));
            }
        }
        for (read, got) in key_reads {
            let get = format!("a GET at {}–{} ms by client {}", read.call, read.ret, read.client);
            if !value.starts_with(got) {
                return Err(fail(format!(
                    "{get} returned {:?}, which is not a prefix of the final value",
                    String::from_utf8_lossy(got)
                )));
            }
            let seen =
                tokens(got).map_err(|e| fail(format!("a GET returned a value that is not a list: {e}")))?;
            // A read that saw an element whose APPEND began only after the read returned.
            for t in &seen {
                if let Some(op) = ops.get(t)
                    && op.call > read.ret
                {
                    return Err(fail(format!(
                        "{get} saw {:?}, whose APPEND was invoked later, at {} ms",
                        String::from_utf8_lossy(t),
                        op.call
                    )));
                }
            }
            // The read is a prefix of the final value (checked above), so it holds exactly the
            // elements placed before its length.
            for (t, op) in ops {
                let in_read = position.get(t).is_some_and(|&i| i < seen.len());
                if op.outcome == Outcome::Ok && op.ret < read.call && !in_read {
                    return Err(fail(format!(
                        "{get} misses {:?}, whose APPEND was acknowledged at {} ms",
                        String::from_utf8_lossy(t),
                        op.ret
                    )));
                }
            }
        }
    }
    Ok(())
}

/// On the keys only INCR (by 1) and GET ever touch: the final count lies between the number of
/// acknowledged increments and that plus the increments whose outcome is unknown (a doubled
/// increment overshoots, a lost one undershoots); no two increments returned the same count, and
/// none returned more than the final count.
pub fn check_counters(
    history: &[Operation],
    final_state: &BTreeMap<Vec<u8>, Vec<u8>>,
    is_counter: impl Fn(&[u8]) -> bool,
) -> Result<(), ExactlyOnceViolation> {
    let mut incrs: BTreeMap<&[u8], Vec<(&Operation, Option<i64>)>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.outcome != Outcome::Fail) {
        for (key, effect) in op.effects.iter().filter(|(k, _)| is_counter(k)) {
            if let RegisterOp::Incr { result, .. } = effect {
                incrs.entry(key).or_default().push((op, *result));
            }
        }
    }
    for (key, ops) in incrs {
        let fail = |problem: String| ExactlyOnceViolation {
            key: String::from_utf8_lossy(key).into_owned(),
            problem,
        };
        let final_count = match final_state.get(key) {
            None => 0,
            Some(v) => std::str::from_utf8(v).ok().and_then(|t| t.parse::<i64>().ok()).ok_or_else(|| {
                fail(format!("the final value {:?} is not a count", String::from_utf8_lossy(v)))
            })?,
        };
        let acked = ops.iter().filter(|(o, _)| o.outcome == Outcome::Ok).count() as i64;
        let unknown = ops.len() as i64 - acked;
        if final_count < acked {
            return Err(fail(format!(
                "the final count is {final_count}, but {acked} increments were acknowledged: an increment was lost"
            )));
        }
        if final_count > acked + unknown {
            return Err(fail(format!(
                "the final count is {final_count}, but only {acked} increments were acknowledged and {unknown} may have happened: an increment was applied twice"
            )));
        }
        let mut seen: BTreeMap<i64, &Operation> = BTreeMap::new();
        for (op, result) in ops.iter().filter_map(|(o, r)| r.map(|r| (*o, r))) {
            if let Some(other) = seen.insert(result, op) {
                return Err(fail(format!(
                    "two increments returned {result} (clients {} and {}, at {} and {} ms)",
                    other.client, op.client, other.ret, op.ret
                )));
            }
            if result > final_count {
                return Err(fail(format!(
                    "an increment returned {result}, more than the final count {final_count}"
                )));
            }
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

/// A file a server should not have at the end of a run, or a snapshot that does not match its
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server {node}: {path}: {problem}")]
pub struct HygieneViolation {
    pub node: u64,
    pub path: String,
    pub problem: String,
}

/// File hygiene of one server whose last run ended quietly (no receive in flight), checked on its
/// disk after it stopped:
/// * the spool holds nothing: every receive was finalized or removed (D7, D11);
/// * the snapshot directory holds only finished snapshot files (`<index>.snap`), no more than
///   `keep` of them (retention ran after every new snapshot, taken or received);
/// * every snapshot file's body matches the CRC of its footer, and the snapshot the raft log is based
///   on (`pointer`, its token) exists and matches its token's CRC (D6).
pub fn check_file_hygiene(
    node: u64,
    fs: &dyn durakv::io::Fs,
    layout: &durakv::runtime::DataLayout,
    pointer: Option<&[u8]>,
    keep: usize,
) -> Result<(), HygieneViolation> {
    use durakv::snapshot::{SnapshotToken, parse_snapshot_name, verify};
    let bad = |path: &std::path::Path, problem: String| HygieneViolation {
        node,
        path: path.display().to_string(),
        problem,
    };
    let list = |dir: &std::path::Path| -> Result<Vec<String>, HygieneViolation> {
        match fs.read_dir(dir) {
            Ok(entries) => Ok(entries.into_iter().map(|e| e.name).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(bad(dir, format!("cannot list: {e}"))),
        }
    };
    if let Some(name) = list(&layout.spool)?.first() {
        return Err(bad(&layout.spool.join(name), "orphan spool file: no receive is in flight".into()));
    }
    let mut snapshots = Vec::new();
    for name in list(&layout.snapshots)? {
        let path = layout.snapshots.join(&name);
        let Some(index) = parse_snapshot_name(&name) else {
            return Err(bad(&path, "orphan file in the snapshot directory".into()));
        };
        let bytes = durakv::io::read_file(fs, &path).map_err(|e| bad(&path, format!("unreadable: {e}")))?;
        let Some(footer) = bytes.len().checked_sub(4).map(|at| &bytes[at..]) else {
            return Err(bad(&path, "shorter than its footer".into()));
        };
        let crc = u32::from_be_bytes([footer[0], footer[1], footer[2], footer[3]]);
        verify(fs, &path, &SnapshotToken { index, crc })
            .map_err(|e| bad(&path, format!("body does not match its footer: {e}")))?;
        snapshots.push(index);
    }
    if snapshots.len() > keep {
        return Err(bad(
            &layout.snapshots,
            format!("{} snapshot files {snapshots:?} past retention (keep {keep})", snapshots.len()),
        ));
    }
    if let Some(token) = pointer {
        let token = SnapshotToken::decode(token)
            .map_err(|e| bad(&layout.raft, format!("the log's snapshot token does not decode: {e}")))?;
        let path = layout.snapshots.join(durakv::snapshot::snapshot_name(token.index));
        verify(fs, &path, &token)
            .map_err(|e| bad(&path, format!("the log's snapshot token does not match its file: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(v: Option<&str>, call: u64, ret: u64, outcome: Outcome) -> Operation {
        Operation::single(1, b"k", RegisterOp::Write(v.map(|s| s.as_bytes().to_vec())), call, ret, outcome)
    }

    fn state(v: Option<&str>) -> BTreeMap<Vec<u8>, Vec<u8>> {
        v.map(|s| (b"k".to_vec(), s.as_bytes().to_vec())).into_iter().collect()
    }

    fn append(key: &str, token: &str, call: u64, ret: u64, outcome: Outcome) -> Operation {
        let suffix = format!("{token};").into_bytes();
        Operation::single(1, key.as_bytes(), RegisterOp::Append { suffix, len: None }, call, ret, outcome)
    }

    fn value(key: &str, v: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        [(key.as_bytes().to_vec(), v.as_bytes().to_vec())].into_iter().collect()
    }

    fn is_l(k: &[u8]) -> bool {
        k.starts_with(b"l")
    }

    #[test]
    fn a_list_holds_every_acknowledged_append_once_in_real_time_order() {
        // a and b overlap (either order), c ran after both returned; d's outcome is unknown; e failed.
        let h = [
            append("l0", "a", 0, 5, Outcome::Ok),
            append("l0", "b", 1, 4, Outcome::Ok),
            append("l0", "c", 6, 7, Outcome::Ok),
            append("l0", "d", 8, 9, Outcome::Unknown),
            append("l0", "e", 8, 9, Outcome::Fail),
        ];
        for ok in ["a;b;c;", "b;a;c;", "a;b;c;d;", "b;a;c;d;"] {
            assert_eq!(check_lists(&h, &value("l0", ok), is_l), Ok(()), "{ok}");
        }
        // Failure: an acknowledged append lost. Invariant: every acknowledged token is present.
        let e = check_lists(&h, &value("l0", "a;b;"), is_l).expect_err("c is lost");
        assert!(e.problem.contains("\"c\"") && e.problem.contains("missing"), "{e}");
        // Failure: an append applied twice (a retried command).
        let e = check_lists(&h, &value("l0", "a;b;a;c;"), is_l).expect_err("a twice");
        assert!(e.problem.contains("twice"), "{e}");
        // Failure: a failed append took effect.
        assert!(check_lists(&h, &value("l0", "a;b;c;e;"), is_l).is_err());
        // Failure: an element nobody appended.
        assert!(check_lists(&h, &value("l0", "a;b;c;zz;"), is_l).is_err());
        // Failure: d (unknown outcome, invoked after c returned) placed before c.
        assert!(check_lists(&h, &value("l0", "a;b;d;c;"), is_l).is_err());
        // Failure: c before a, though a returned before c was invoked.
        let e = check_lists(&h, &value("l0", "c;a;b;"), is_l).expect_err("order");
        assert!(e.problem.contains("comes before"), "{e}");
        // Failure: a value that is not a list.
        assert!(check_lists(&h, &value("l0", "a;b;c"), is_l).is_err());
    }

    #[test]
    fn a_list_read_is_a_prefix_of_the_final_value_with_everything_acknowledged_before_it() {
        let read = |v: &str, call, ret| {
            Operation::single(2, b"l0", RegisterOp::Read(Some(v.as_bytes().to_vec())), call, ret, Outcome::Ok)
        };
        let h = vec![append("l0", "a", 0, 1, Outcome::Ok), append("l0", "b", 2, 3, Outcome::Ok)];
        let fin = value("l0", "a;b;");
        let mut ok = h.clone();
        ok.push(read("a;", 2, 2));
        assert_eq!(check_lists(&ok, &fin, is_l), Ok(()));
        // Failure: a read that saw something the final value lost or reordered.
        let mut bad = h.clone();
        bad.push(read("b;", 2, 2));
        assert!(check_lists(&bad, &fin, is_l).is_err());
        // Failure: a stale read, missing an append acknowledged before it began.
        let mut stale = h;
        stale.push(read("a;", 4, 5));
        let e = check_lists(&stale, &fin, is_l).expect_err("stale");
        assert!(e.problem.contains("misses"), "{e}");
    }

    #[test]
    fn a_list_read_never_sees_the_future_or_shrinks_and_an_append_ends_where_it_said() {
        let read = |v: &str, call, ret| {
            Operation::single(2, b"l0", RegisterOp::Read(Some(v.as_bytes().to_vec())), call, ret, Outcome::Ok)
        };
        let fin = value("l0", "a;b;");
        let h = vec![append("l0", "a", 0, 1, Outcome::Ok), append("l0", "b", 5, 6, Outcome::Ok)];
        // Failure: a read returned at 3 ms saw b, whose APPEND was invoked at 5 ms.
        let mut future = h.clone();
        future.push(read("a;b;", 2, 3));
        assert!(check_lists(&future, &fin, is_l).expect_err("future").problem.contains("invoked later"));
        // Failure: a read that began after another returned saw less.
        let mut shrink = h.clone();
        shrink.push(read("a;b;", 7, 8));
        shrink.push(read("a;", 9, 10));
        let e = check_lists(&shrink, &fin, is_l).expect_err("shrank");
        assert!(e.problem.contains("shrank") || e.problem.contains("misses"), "{e}");
        // Failure: an APPEND that said the list was 4 bytes long after it, where its element ends at 2.
        let said = Operation::single(
            1,
            b"l0",
            RegisterOp::Append { suffix: b"a;".to_vec(), len: Some(4) },
            0,
            1,
            Outcome::Ok,
        );
        let wrong = vec![said, append("l0", "b", 5, 6, Outcome::Ok)];
        assert!(check_lists(&wrong, &fin, is_l).expect_err("length").problem.contains("returned length"));
        // The same with the true lengths passes.
        let right = Operation::single(
            1,
            b"l0",
            RegisterOp::Append { suffix: b"a;".to_vec(), len: Some(2) },
            0,
            1,
            Outcome::Ok,
        );
        assert_eq!(check_lists(&[right, append("l0", "b", 5, 6, Outcome::Ok)], &fin, is_l), Ok(()));
    }

    fn incr(result: Option<i64>, call: u64, ret: u64, outcome: Outcome) -> Operation {
        Operation::single(1, b"c0", RegisterOp::Incr { delta: 1, result }, call, ret, outcome)
    }

    #[test]
    fn a_counter_counts_every_acknowledged_increment_once() {
        let h = [
            incr(Some(1), 0, 1, Outcome::Ok),
            incr(Some(2), 2, 3, Outcome::Ok),
            incr(None, 4, 5, Outcome::Unknown),
            incr(None, 4, 5, Outcome::Fail),
        ];
        let is_c = |k: &[u8]| k.starts_with(b"c");
        assert_eq!(check_counters(&h, &value("c0", "2"), is_c), Ok(()));
        assert_eq!(check_counters(&h, &value("c0", "3"), is_c), Ok(()));
        // Failure: a lost increment (or a lost key). Invariant: count >= acknowledged.
        assert!(check_counters(&h, &value("c0", "1"), is_c).expect_err("lost").problem.contains("lost"));
        assert!(check_counters(&h, &BTreeMap::new(), is_c).is_err());
        // Failure: an increment applied twice. Invariant: count <= acknowledged + unknown.
        assert!(check_counters(&h, &value("c0", "4"), is_c).expect_err("twice").problem.contains("twice"));
        // Failure: two increments that returned the same count.
        let dup = [incr(Some(1), 0, 1, Outcome::Ok), incr(Some(1), 2, 3, Outcome::Ok)];
        assert!(check_counters(&dup, &value("c0", "2"), is_c).is_err());
    }

    #[test]
    fn an_increment_of_unknown_outcome_does_not_excuse_a_missing_key() {
        // Failure injected: the last acknowledged write of an integer is followed only by an INCR
        // whose outcome is unknown, and the key is gone. Invariant: an unknown INCR leaves an
        // integer; it cannot explain a missing key.
        let h = [
            write(Some("5"), 0, 1, Outcome::Ok),
            Operation::single(1, b"k", RegisterOp::Incr { delta: 1, result: None }, 2, 3, Outcome::Unknown),
        ];
        assert!(check_durability(&h, &state(None)).is_err());
        assert_eq!(check_durability(&h, &state(Some("6"))), Ok(()));
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
    fn mset_pairs_and_appends_are_writes() {
        // An MSET's pair on k, then an acknowledged APPEND: the final value must end with it.
        let mset = Operation {
            effects: vec![
                (b"j".to_vec(), RegisterOp::Write(Some(b"1".to_vec()))),
                (b"k".to_vec(), RegisterOp::Write(Some(b"1".to_vec()))),
            ],
            ..write(None, 0, 1, Outcome::Ok)
        };
        let append = RegisterOp::Append { suffix: b"23".to_vec(), len: Some(3) };
        let h = [mset.clone(), Operation::single(1, b"k", append, 2, 3, Outcome::Ok)];
        let both = |k: &str| -> BTreeMap<Vec<u8>, Vec<u8>> {
            [(b"j".to_vec(), b"1".to_vec()), (b"k".to_vec(), k.as_bytes().to_vec())].into_iter().collect()
        };
        assert_eq!(check_durability(&h, &both("123")), Ok(()));
        let lost = check_durability(&h, &both("1")).expect_err("the append is lost");
        assert_eq!(lost.acknowledged.as_deref(), Some("…23"));
        assert!(check_durability(&h, &both("0023")).is_err(), "the append's length says 3 bytes");
        assert!(check_durability(&[mset], &state(Some("1"))).is_err(), "the MSET's pair on j is lost");
    }

    #[test]
    fn convergence_needs_equal_digests_at_equal_indexes() {
        let d = state_digest([(&b"k"[..], &b"v"[..])]);
        assert_eq!(check_convergence(&[(1, 10, d), (2, 10, d), (3, 10, d)]), Ok(()));
        assert!(check_convergence(&[(1, 10, d), (2, 9, d)]).is_err());
        assert!(check_convergence(&[(1, 10, d), (2, 10, d ^ 1)]).is_err());
        assert_ne!(state_digest([(&b"ab"[..], &b"c"[..])]), state_digest([(&b"a"[..], &b"bc"[..])]));
    }

    #[test]
    fn file_hygiene_finds_orphans_retention_and_crc_mismatches() {
        // Failure injected: leftovers a buggy node could leave (a spool file, a stray tmp, one
        // snapshot too many) and a flipped bit in a snapshot body. Invariant: each is reported,
        // naming the server and the file; a clean directory passes.
        use durakv::fsm::{Command, FsmSync, Kv, SetCondition, SimEngine, SimEngineOptions};
        use durakv::io::SharedFs;
        use durakv::runtime::DataLayout;
        use durakv::snapshot::write_snapshot;
        use std::path::Path;
        use std::sync::Arc;
        let disk = durakv_faults::SimFs::with_seed(3);
        let fs: SharedFs = Arc::new(disk.clone());
        let layout = DataLayout::new(Path::new("/node"));
        for d in [&layout.snapshots, &layout.spool] {
            fs.create_dir_all(d).expect("mkdir");
        }
        let engine = SimEngine::open(fs.clone(), &layout.fsm, SimEngineOptions::default()).expect("engine");
        let mut kv = Kv::new(engine, FsmSync::Sync).expect("kv");
        let mut tokens = Vec::new();
        for i in 1..=3u64 {
            let cmd = Command::set(format!("k{i}"), "v", SetCondition::Always).to_bytes();
            kv.apply_raft(i, &cmd).expect("apply");
            let file = write_snapshot(&*fs, &layout.snapshots, kv.engine(), &[], &[]).expect("snapshot");
            tokens.push(file.token().encode().to_vec());
        }
        let last = tokens.last().map(Vec::as_slice);
        let e = check_file_hygiene(7, &*fs, &layout, last, 2).expect_err("three files, keep two");
        assert!(e.node == 7 && e.problem.contains("past retention"), "{e}");
        assert_eq!(check_file_hygiene(7, &*fs, &layout, last, 3), Ok(()));
        let wrong = durakv::snapshot::SnapshotToken { index: 3, crc: 1 }.encode();
        let e = check_file_hygiene(7, &*fs, &layout, Some(&wrong), 3).expect_err("token CRC");
        assert!(e.problem.contains("token does not match"), "{e}");
        durakv::io::write_file_durably(&*fs, &layout.spool.join("00000000000000000004.spool-0"), b"x")
            .expect("write");
        let e = check_file_hygiene(7, &*fs, &layout, last, 3).expect_err("spool file");
        assert!(e.problem.contains("orphan spool"), "{e}");
        fs.remove_file(&layout.spool.join("00000000000000000004.spool-0")).expect("rm");
        let first = layout.snapshots.join(durakv::snapshot::snapshot_name(1));
        disk.flip_bit(&first, 40, 3).expect("flip");
        let e = check_file_hygiene(7, &*fs, &layout, last, 3).expect_err("flipped bit");
        assert!(e.problem.contains("does not match its footer") && e.path.ends_with(".snap"), "{e}");
    }
}
