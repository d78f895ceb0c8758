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
];

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
        RegisterOp::Incr { result: Some(r), .. } => found.as_deref() == Some(r.to_string().as_bytes()),
        RegisterOp::Incr { result: None, .. } => true,
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
