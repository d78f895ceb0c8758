//! raft-rs `Storage` over the WAL.
//!
//! Failures injected: restarts, raft log conflicts, snapshots replacing the log, power loss after
//! persists, a torn tail that takes committed entries with it. Invariants: raft's storage contract
//! (bounds, `Compacted`/`Unavailable`, `term(first - 1)` from the snapshot, at least one entry under a
//! size limit); everything persisted survives a restart and a power loss; the loaded commit index is
//! never beyond the last entry; losing committed entries refuses to load (D5).

use std::path::Path;
use std::sync::Arc;

use durakv::io::{Fs, OpenOptions, SharedFs};
use durakv::storage::{RaftStorage, SnapshotPointer, StorageLoadError};
use durakv::wal::{Batch, Wal, WalOptions};
use durakv_faults::{CrashKind, SimFs};
use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use raft::{GetEntriesContext, Storage, StorageError};

const DIR: &str = "/n/raft";

fn disk() -> SimFs {
    let fs = SimFs::with_seed(3);
    fs.create_dir_all(Path::new("/n")).expect("mkdir");
    fs.sync_dir(Path::new("/")).expect("sync");
    fs
}

fn open(fs: &SimFs) -> Result<RaftStorage, StorageLoadError> {
    let shared: SharedFs = Arc::new(fs.clone());
    RaftStorage::open(
        shared,
        Path::new(DIR),
        WalOptions { segment_size_bytes: 4096, ..WalOptions::default() },
    )
    .map(|(s, _)| s)
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, data: format!("cmd-{index}-{term}").into_bytes(), ..Entry::default() }
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term, vote, commit }
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn indexes(es: &[Entry]) -> Vec<(u64, u64)> {
    es.iter().map(|e| (e.index, e.term)).collect()
}

fn is_store(err: raft::Error, want: StorageError) -> bool {
    matches!(err, raft::Error::Store(e) if e == want)
}

#[test]
fn a_fresh_log_follows_the_storage_contract() -> raft::Result<()> {
    let fs = disk();
    let s = open(&fs).expect("open");
    assert_eq!(s.initial_state()?.hard_state, HardState::default());
    assert_eq!((s.first_index()?, s.last_index()?), (1, 0));
    assert_eq!(s.term(0)?, 0);
    assert!(is_store(s.term(1).expect_err("nothing yet"), StorageError::Unavailable));
    assert!(is_store(
        s.snapshot(0, 2).expect_err("no snapshot"),
        StorageError::SnapshotTemporarilyUnavailable
    ));
    Ok(())
}

#[test]
fn entries_terms_bounds_and_size_limits() -> raft::Result<()> {
    let fs = disk();
    let s = open(&fs).expect("open");
    s.persist(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(), Some(&hs(1, 1, 3))).expect("persist");
    assert_eq!(indexes(&s.entries(2, 5, None, ctx())?), vec![(2, 1), (3, 1), (4, 1)]);
    assert_eq!(s.entries(2, 5, 0, ctx())?.len(), 1, "at least one entry under any limit");
    let one = prost::Message::encoded_len(&entry(2, 1)) as u64;
    assert_eq!(s.entries(2, 5, one * 2, ctx())?.len(), 2);
    assert_eq!(s.term(3)?, 1);
    assert!(is_store(s.entries(0, 2, None, ctx()).expect_err("below first"), StorageError::Compacted));
    assert!(is_store(s.entries(2, 7, None, ctx()).expect_err("past last"), StorageError::Unavailable));
    assert_eq!(s.entries(3, 4, None, ctx())?[0].data, b"cmd-3-1");
    Ok(())
}

#[test]
fn a_conflicting_append_replaces_the_tail_and_everything_survives_power_loss() -> raft::Result<()> {
    let fs = disk();
    let s = open(&fs).expect("open");
    s.persist(&(1..=6).map(|i| entry(i, 1)).collect::<Vec<_>>(), Some(&hs(1, 2, 2))).expect("persist");
    s.persist(&[entry(4, 2), entry(5, 2)], Some(&hs(2, 3, 4))).expect("conflict");
    assert_eq!(s.last_index()?, 5);
    assert_eq!(indexes(&s.entries(1, 6, None, ctx())?), vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]);
    drop(s);
    fs.crash(CrashKind::PowerLoss);
    let s = open(&fs).expect("reopen");
    assert_eq!(s.initial_state()?.hard_state, hs(2, 3, 4));
    assert_eq!(indexes(&s.entries(1, 6, None, ctx())?), vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]);
    Ok(())
}

#[test]
fn a_snapshot_becomes_the_base_of_the_log() -> raft::Result<()> {
    let fs = disk();
    let s = open(&fs).expect("open");
    s.persist(&(1..=8).map(|i| entry(i, 2)).collect::<Vec<_>>(), Some(&hs(2, 1, 8))).expect("persist");
    let cs = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
    let meta = SnapshotMetadata { conf_state: Some(cs.clone()), index: 5, term: 2 };
    s.apply_snapshot(SnapshotPointer { metadata: meta.clone(), token: b"token-17-bytes!!!".to_vec() })
        .expect("snapshot");
    assert_eq!((s.first_index()?, s.last_index()?), (6, 8));
    assert_eq!(s.term(5)?, 2, "term(first - 1) answers from the snapshot");
    assert!(is_store(s.term(4).expect_err("compacted"), StorageError::Compacted));
    assert!(is_store(s.entries(5, 7, None, ctx()).expect_err("compacted"), StorageError::Compacted));
    assert_eq!(indexes(&s.entries(6, 9, None, ctx())?), vec![(6, 2), (7, 2), (8, 2)]);
    let snap = s.snapshot(5, 2)?;
    assert_eq!(snap.data, b"token-17-bytes!!!");
    assert_eq!(snap.metadata, Some(meta.clone()));
    assert_eq!(s.initial_state()?.conf_state, cs);
    drop(s);
    fs.crash(CrashKind::PowerLoss);
    let s = open(&fs).expect("reopen");
    assert_eq!((s.first_index()?, s.last_index()?, s.term(5)?), (6, 8, 2));
    assert_eq!(s.snapshot_pointer().metadata, meta);
    // A received snapshot past the log resets it: entries continue from the snapshot.
    let ahead = SnapshotMetadata { conf_state: Some(cs), index: 20, term: 3 };
    s.apply_snapshot(SnapshotPointer { metadata: ahead, token: vec![1] }).expect("snapshot ahead");
    assert_eq!((s.first_index()?, s.last_index()?), (21, 20));
    s.persist(&[entry(21, 3)], Some(&hs(3, 1, 21))).expect("append after the snapshot");
    assert_eq!(s.last_index()?, 21);
    assert!(s.initial_state()?.hard_state.commit >= 20, "the snapshot advanced the commit index");
    Ok(())
}

#[test]
fn the_loaded_commit_index_is_never_past_the_last_entry() -> raft::Result<()> {
    let fs = disk();
    {
        let shared: SharedFs = Arc::new(fs.clone());
        let (mut wal, _) = Wal::open(shared, Path::new(DIR), WalOptions::default()).expect("wal");
        let mut b = Batch::new();
        b.entry(1, 1, entry(1, 1).encode_to_vec()).set_meta(1, hs(1, 1, 9).encode_to_vec());
        wal.append(&b).expect("append");
    }
    let s = open(&fs).expect("open");
    assert_eq!(s.initial_state()?.hard_state.commit, 1);
    Ok(())
}

#[test]
fn a_repair_that_drops_committed_entries_refuses_to_load() {
    // The hard state (commit 3) precedes the entries in the last batch, and the tail is cut inside the
    // last entry: the repair keeps the hard state but drops entry 3.
    let fs = disk();
    let shared: SharedFs = Arc::new(fs.clone());
    let (mut wal, _) = Wal::open(shared, Path::new(DIR), WalOptions::default()).expect("wal");
    let mut b = Batch::new();
    b.set_meta(1, hs(1, 1, 3).encode_to_vec());
    for i in 1..=3 {
        b.entry(i, 1, entry(i, 1).encode_to_vec());
    }
    wal.append(&b).expect("append");
    let segment = wal.segment_paths().pop().expect("a segment");
    drop(wal);
    let mut f = fs.open(&segment, OpenOptions::read_write()).expect("open segment");
    let len = f.len().expect("len");
    f.set_len(len - 3).expect("cut inside the last entry");
    drop(f);
    match open(&fs) {
        Err(StorageLoadError::CommittedEntriesLost { commit: 3, last: 2 }) => {}
        other => panic!("expected CommittedEntriesLost, got {other:?}"),
    }
}
