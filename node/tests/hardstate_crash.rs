//! Crash-state exploration of the hard-state file, alone and under raft storage.
//!
//! Failure injected: a process kill or a power loss at every durability operation (write, fsync,
//! directory fsync, rename, create) of generated sequences; for power loss, several seeds of sector
//! fates (each unsynced sector kept, dropped or torn).
//!
//! Invariants checked after every crash:
//! * the hard-state file alone: it opens (never both slots lost), and holds either the last state whose
//!   store returned or the one in flight: never an older one (no vote or term rollback);
//! * raft storage: it opens without an operator; term and vote are the last persisted ones or the ones
//!   in flight; every entry the last returned persist acknowledged is still in the log unless the
//!   persist in flight legitimately replaced it; and a crash alone never starts a recovery from peers
//!   (no false alarm: only lost acknowledged records may).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use durakv::hardstate::{DurableState, HardStateError, HardStateFile};
use durakv::io::{Fs, SharedFs};
use durakv::storage::{RaftStorage, StorageLoadError};
use durakv::wal::{WalError, WalOptions};
use durakv_faults::{CrashKind, SimFs, SimFsOptions, TornWrite, is_crash_error};
use raft::Storage as _;
use raft::eraftpb::{Entry, HardState};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn new_disk(seed: u64) -> SimFs {
    let fs = SimFs::new(seed, SimFsOptions::default()).expect("default options are valid");
    fs.create_dir_all(Path::new("/n/raft")).expect("mkdir");
    fs.sync_dir(Path::new("/n")).expect("sync /n");
    fs.sync_dir(Path::new("/")).expect("sync /");
    fs
}

const HS_PATH: &str = "/n/raft/hardstate";

/// Generated hard states: terms never go down, a vote within a term is set once, commit grows.
fn states(seed: u64, len: usize) -> Vec<DurableState> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut st = DurableState::default();
    let mut out = Vec::new();
    for _ in 0..len {
        match rng.random_range(0..3) {
            0 => {
                st.term += rng.random_range(1..3);
                st.vote = rng.random_range(0..4);
            }
            1 => st.commit += rng.random_range(1..5),
            _ => st.acknowledged += rng.random_range(1..5),
        }
        out.push(st);
    }
    out
}

fn is_crash_hs(e: &HardStateError) -> bool {
    matches!(e, HardStateError::Io { source, .. } if is_crash_error(source))
}

/// Create the file with the first state, then store the rest. Returns the last state whose call
/// returned, and the one in flight when the disk crashed.
fn run_hs(fs: &SimFs, seq: &[DurableState]) -> (Option<DurableState>, Option<DurableState>) {
    let shared: SharedFs = Arc::new(fs.clone());
    let mut file = match HardStateFile::create(&shared, Path::new(HS_PATH), seq[0]) {
        Ok(f) => f,
        Err(e) => {
            assert!(is_crash_hs(&e), "create failed without a crash: {e}");
            return (None, Some(seq[0]));
        }
    };
    let mut acked = seq[0];
    for st in &seq[1..] {
        if let Err(e) = file.store(*st) {
            assert!(is_crash_hs(&e), "store failed without a crash: {e}");
            return (Some(acked), Some(*st));
        }
        acked = *st;
    }
    (Some(acked), None)
}

#[test]
fn a_crash_anywhere_in_hard_state_writes_never_rolls_back_term_vote_or_commit() {
    let mut runs = 0u64;
    let mut kept_in_flight = 0u64;
    let mut fell_back = 0u64;
    let mut outcomes = BTreeSet::new();
    for seq_seed in 0..16u64 {
        let seq = states(seq_seed, 12);
        let clean = new_disk(0);
        let base = clean.ops_done();
        let (acked, in_flight) = run_hs(&clean, &seq);
        assert_eq!((acked, in_flight), (seq.last().copied(), None));
        let total = clean.ops_done() - base;
        for k in 0..total {
            for (kind, variants) in [(CrashKind::ProcessKill, 1u64), (CrashKind::PowerLoss, 4)] {
                for variant in 0..variants {
                    let fs = new_disk(seq_seed * 10_000 + k * 10 + variant);
                    fs.arm_crash(base + k, kind, TornWrite::Random);
                    let (acked, in_flight) = run_hs(&fs, &seq);
                    assert!(fs.is_halted(), "the crash at op {k} fired");
                    fs.resume();
                    runs += 1;
                    let ctx = format!("sequence {seq_seed}, {kind:?} at op {k}, variant {variant}");
                    let shared: SharedFs = Arc::new(fs.clone());
                    let loaded = HardStateFile::load(&shared, Path::new(HS_PATH))
                        .unwrap_or_else(|e| panic!("{ctx}: the file does not open after a crash alone: {e}"));
                    let Some(file) = loaded else {
                        assert_eq!(acked, None, "{ctx}: a created file vanished");
                        continue;
                    };
                    let got = *file.state();
                    assert!(
                        Some(got) == acked || Some(got) == in_flight,
                        "{ctx}: loaded {got:?}, acknowledged {acked:?}, in flight {in_flight:?}"
                    );
                    if Some(got) == in_flight && in_flight != acked {
                        kept_in_flight += 1;
                    } else if in_flight.is_some() {
                        fell_back += 1;
                    }
                    outcomes.insert(format!("{got:?}"));
                }
            }
        }
    }
    println!(
        "hard-state file: {runs} crashes explored, {} distinct recovered states, {kept_in_flight} kept the write \
         in flight, {fell_back} fell back to the previous slot",
        outcomes.len()
    );
    assert!(runs >= 1500, "only {runs} crashes explored");
    assert!(kept_in_flight >= 100 && fell_back >= 100, "both outcomes of a crash mid-store are exercised");
}

#[derive(Debug, Clone)]
enum Op {
    Persist { entries: Vec<(u64, u64)>, hs: HardState },
    Reopen,
}

/// Generated raft storage traffic: appends, conflicts above the commit index, term and vote changes,
/// commit advances, restarts.
fn storage_ops(seed: u64, len: usize) -> Vec<Op> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut log: BTreeMap<u64, u64> = BTreeMap::new();
    let mut hs = HardState::default();
    let mut ops = Vec::new();
    for _ in 0..len {
        if rng.random_range(0..8) == 0 {
            ops.push(Op::Reopen);
            continue;
        }
        if rng.random_range(0..4) == 0 {
            hs.term += 1;
            hs.vote = rng.random_range(1..4);
        }
        let last = log.keys().next_back().copied().unwrap_or(0);
        let mut next = last + 1;
        if last > hs.commit && rng.random_range(0..4) == 0 {
            // A raft conflict: never below the commit index.
            next = rng.random_range(hs.commit + 1..=last);
        }
        let mut entries = Vec::new();
        for _ in 0..rng.random_range(0..4) {
            entries.push((next, hs.term.max(1)));
            next += 1;
        }
        if let Some((first, _)) = entries.first() {
            log.split_off(first);
        }
        for (i, t) in &entries {
            log.insert(*i, *t);
        }
        let last = log.keys().next_back().copied().unwrap_or(0);
        hs.commit = rng.random_range(hs.commit..=last.max(hs.commit));
        ops.push(Op::Persist { entries, hs: hs.clone() });
    }
    ops
}

fn open_storage(fs: &SimFs) -> Result<RaftStorage, StorageLoadError> {
    let shared: SharedFs = Arc::new(fs.clone());
    let opts = WalOptions { segment_size_bytes: 4096, ..WalOptions::default() };
    RaftStorage::open(shared, Path::new("/n/raft"), opts).map(|(s, _)| s)
}

fn is_crash_storage(e: &StorageLoadError) -> bool {
    match e {
        StorageLoadError::Wal(WalError::Io { source, .. }) => is_crash_error(source),
        StorageLoadError::Wal(WalError::Evidence(inner)) => {
            inner.downcast_ref::<HardStateError>().is_some_and(is_crash_hs)
        }
        StorageLoadError::HardState(h) => is_crash_hs(h),
        _ => false,
    }
}

fn raft_entry(index: u64, term: u64) -> Entry {
    Entry { index, term, data: vec![index as u8; 40 + (index % 7) as usize * 90], ..Entry::default() }
}

/// What the last returned op left acknowledged, and the op in flight.
struct Outcome {
    log: BTreeMap<u64, u64>,
    hs: HardState,
    in_flight: Option<Op>,
}

fn run_storage(fs: &SimFs, ops: &[Op]) -> Outcome {
    let mut out = Outcome { log: BTreeMap::new(), hs: HardState::default(), in_flight: None };
    let mut s = match open_storage(fs) {
        Ok(s) => s,
        Err(e) => {
            assert!(is_crash_storage(&e), "open failed without a crash: {e}");
            out.in_flight = Some(Op::Reopen);
            return out;
        }
    };
    for op in ops {
        let result = match op {
            Op::Persist { entries, hs } => {
                let es: Vec<Entry> = entries.iter().map(|(i, t)| raft_entry(*i, *t)).collect();
                s.persist(&es, Some(hs))
            }
            // A restarted process: the new handle replaces (drops) the old one.
            Op::Reopen => open_storage(fs).map(|n| s = n),
        };
        if let Err(e) = result {
            assert!(is_crash_storage(&e), "an op failed without a crash: {e}");
            out.in_flight = Some(op.clone());
            return out;
        }
        if let Op::Persist { entries, hs } = op {
            if let Some((first, _)) = entries.first() {
                out.log.split_off(first);
            }
            out.log.extend(entries.iter().copied());
            out.hs = hs.clone();
        }
    }
    out
}

#[test]
fn a_crash_anywhere_in_raft_storage_loses_no_promise_and_raises_no_false_alarm() {
    let mut runs = 0u64;
    for seq_seed in 0..12u64 {
        let ops = storage_ops(seq_seed, 12);
        let clean = new_disk(0);
        let base = clean.ops_done();
        let done = run_storage(&clean, &ops);
        assert!(done.in_flight.is_none(), "sequence {seq_seed} runs clean");
        let total = clean.ops_done() - base;
        for k in 0..total {
            for (kind, variants) in [(CrashKind::ProcessKill, 1u64), (CrashKind::PowerLoss, 3)] {
                for variant in 0..variants {
                    let fs = new_disk(seq_seed * 100_000 + k * 10 + variant);
                    fs.arm_crash(base + k, kind, TornWrite::Random);
                    let acked = run_storage(&fs, &ops);
                    fs.resume();
                    runs += 1;
                    let ctx = format!("sequence {seq_seed}, {kind:?} at op {k}, variant {variant}");
                    let s = open_storage(&fs)
                        .unwrap_or_else(|e| panic!("{ctx}: no open after a crash alone: {e}"));
                    assert_eq!(s.recover_to(), 0, "{ctx}: a crash alone started a recovery from peers");
                    let got = s.initial_state().expect("initial state").hard_state;
                    let in_flight_hs = match &acked.in_flight {
                        Some(Op::Persist { hs, .. }) => Some(hs.clone()),
                        _ => None,
                    };
                    let tv = |h: &HardState| (h.term, h.vote);
                    assert!(
                        tv(&got) == tv(&acked.hs) || in_flight_hs.as_ref().is_some_and(|h| tv(h) == tv(&got)),
                        "{ctx}: term/vote {:?}, acknowledged {:?}, in flight {:?}",
                        tv(&got),
                        tv(&acked.hs),
                        in_flight_hs.as_ref().map(tv)
                    );
                    assert!(got.commit >= acked.hs.commit, "{ctx}: commit went back");
                    // Entries the last returned persist acknowledged are all there, unless the persist
                    // in flight was replacing them (a conflict from `first` on).
                    let replaced_from = match &acked.in_flight {
                        Some(Op::Persist { entries, .. }) => entries.first().map(|(i, _)| *i),
                        _ => None,
                    };
                    for (&index, &term) in &acked.log {
                        if replaced_from.is_some_and(|f| index >= f) {
                            continue;
                        }
                        assert_eq!(s.term(index).ok(), Some(term), "{ctx}: acknowledged entry {index} lost");
                    }
                }
            }
        }
    }
    println!("raft storage: {runs} crashes explored");
    assert!(runs >= 1000, "only {runs} crashes explored");
}

#[test]
fn a_failed_hard_state_fsync_poisons_the_file() {
    // Failure: the fsync of a new slot fails (EIO through the `hardstate.sync` failpoint). Invariant:
    // the store reports it, every later store fails (D10: never retried), and the previous state is
    // what a restart finds.
    let fs = new_disk(1);
    let shared: SharedFs = Arc::new(fs.clone());
    let first = DurableState { term: 3, vote: 1, ..DurableState::default() };
    let mut file = HardStateFile::create(&shared, Path::new(HS_PATH), first).expect("create");
    fs.attach_failpoint("hardstate.sync", durakv_faults::FailAction::Error, Some(1));
    let next = DurableState { term: 4, vote: 2, ..first };
    assert!(matches!(file.store(next), Err(HardStateError::Io { .. })));
    assert!(matches!(file.store(next), Err(HardStateError::Poisoned)));
    drop(file);
    fs.crash(CrashKind::PowerLoss);
    let loaded = HardStateFile::load(&shared, Path::new(HS_PATH)).expect("load").expect("exists");
    assert_eq!(*loaded.state(), first);
}
