//! raft-rs `Storage` over the WAL.
//!
//! Failures injected: restarts, raft log conflicts, snapshots replacing the log, power loss after
//! persists, acknowledged bytes cut off the log, a missing or doubly damaged hard-state file.
//! Invariants: raft's storage contract (bounds, `Compacted`/`Unavailable`, `term(first - 1)` from the
//! snapshot, at least one entry under a size limit); everything persisted survives a restart and a
//! power loss; raft's commit index is never beyond the last entry; term and vote never roll back;
//! losing acknowledged entries starts a recovery from peers that every later start sees (D5).

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

/// Failure injected: power loss after a snapshot that kept a trailing window, then a received
/// snapshot ahead of the log. Invariant: the window's entries below the snapshot stay readable
/// (raft serves a lagging follower from them) across the power loss; `term` answers inside it and
/// `Compacted` below it; a received snapshot that replaces the log keeps no window.
#[test]
fn a_snapshot_taken_here_keeps_a_trailing_window_of_entries_for_lagging_followers() -> raft::Result<()> {
    let fs = disk();
    let s = open(&fs).expect("open");
    s.persist(&(1..=20).map(|i| entry(i, 2)).collect::<Vec<_>>(), Some(&hs(2, 1, 20))).expect("persist");
    let cs = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
    let meta = SnapshotMetadata { conf_state: Some(cs.clone()), index: 15, term: 2 };
    s.apply_snapshot_keeping(SnapshotPointer { metadata: meta.clone(), token: vec![7] }, 11)
        .expect("snapshot keeping entries 11..=15");
    assert_eq!((s.first_index()?, s.last_index()?), (11, 20));
    assert_eq!(indexes(&s.entries(11, 14, None, ctx())?), vec![(11, 2), (12, 2), (13, 2)]);
    assert_eq!((s.term(10).ok(), s.term(12)?, s.term(15)?), (None, 2, 2));
    assert!(is_store(s.entries(10, 12, None, ctx()).expect_err("below the window"), StorageError::Compacted));
    drop(s);
    fs.crash(CrashKind::PowerLoss);
    let s = open(&fs).expect("reopen");
    assert_eq!((s.first_index()?, s.last_index()?), (11, 20), "the window survives a power loss");
    assert_eq!(s.snapshot_pointer().metadata, meta);
    // A window asked of a snapshot the log does not hold the entry of is no window.
    let ahead = SnapshotMetadata { conf_state: Some(cs), index: 30, term: 3 };
    s.apply_snapshot_keeping(SnapshotPointer { metadata: ahead, token: vec![1] }, 12)
        .expect("snapshot ahead");
    assert_eq!((s.first_index()?, s.last_index()?), (31, 30));
    Ok(())
}

#[test]
fn a_log_written_before_the_hard_state_file_migrates_and_recovers_entries_its_commit_names()
-> raft::Result<()> {
    // Failure: none; a data directory from before the hard-state file, whose log's hard state names a
    // commit index (9) past its last entry (1). Invariant: the hard state moves into the file
    // unchanged; raft sees a commit index within the log; the missing committed entries are to be
    // recovered from peers, not forgotten.
    let fs = disk();
    {
        let shared: SharedFs = Arc::new(fs.clone());
        let (mut wal, _) = Wal::open(shared, Path::new(DIR), WalOptions::default()).expect("wal");
        let mut b = Batch::new();
        b.entry(1, 1, entry(1, 1).encode_to_vec()).set_meta(1, hs(4, 2, 9).encode_to_vec());
        wal.append(&b).expect("append");
    }
    let s = open(&fs).expect("open");
    assert_eq!(s.initial_state()?.hard_state, hs(4, 2, 1));
    let durable = s.durable_state();
    assert_eq!((durable.term, durable.vote, durable.commit), (4, 2, 9));
    assert_eq!(s.recover_to(), 9);
    drop(s);
    fs.crash(CrashKind::PowerLoss);
    let s = open(&fs).expect("reopen after power loss");
    assert_eq!((s.durable_state().term, s.durable_state().vote, s.recover_to()), (4, 2, 9));
    Ok(())
}

/// Persist entries 1..=3 with `hard` through the real writer, then cut `cut` bytes off the end of the
/// last WAL segment: records that were fsynced and acknowledged are gone (not a torn write).
fn lose_acknowledged_tail(fs: &SimFs, hard: HardState, cut: u64) {
    let s = open(fs).expect("open");
    s.persist(&(1..=3).map(|i| entry(i, hard.term)).collect::<Vec<_>>(), Some(&hard)).expect("persist");
    drop(s);
    let dir = Path::new(DIR);
    let last =
        fs.read_dir(dir).expect("list").into_iter().rfind(|e| e.name.ends_with(".wal")).expect("a segment");
    let mut f = fs.open(&dir.join(last.name), OpenOptions::read_write()).expect("open segment");
    let len = f.len().expect("len");
    f.set_len(len - cut).expect("cut acknowledged bytes");
    f.sync().expect("sync");
}

#[test]
fn losing_acknowledged_entries_starts_a_recovery_that_every_later_start_sees() -> raft::Result<()> {
    // Failure: the WAL loses the end of its last, acknowledged batch (3 bytes cut from entry 3), which
    // start-up cannot tell from a torn write. Invariants: the node neither refuses nor forgets: the
    // evidence is durable before the cut; raft's commit index stays within the log; a second start
    // (a supervisor restart) still sees the recovery; it ends once the log holds index 3 again.
    let fs = disk();
    lose_acknowledged_tail(&fs, hs(1, 1, 3), 3);
    let s = open(&fs).expect("a damaged tail does not refuse");
    assert_eq!(s.last_index()?, 2);
    assert_eq!(s.initial_state()?.hard_state.commit, 2);
    assert_eq!(s.recover_to(), 3);
    let evidence = s.durable_state().repair.expect("evidence recorded");
    assert_eq!(evidence.kind, durakv::hardstate::RepairKind::TornTailRepaired);
    assert_eq!(evidence.acknowledged, 3);
    assert!(evidence.bytes_dropped > 0);
    drop(s);
    let s = open(&fs).expect("second start");
    assert_eq!(s.recover_to(), 3, "the recovery is sticky across starts");
    assert_eq!(s.durable_state().repair, Some(evidence));
    // The leader re-sends entry 3: the log is whole again and the recovery ends, durably.
    s.persist(&[entry(3, 1)], Some(&hs(1, 1, 3))).expect("refill");
    assert_eq!(s.recover_to(), 0);
    drop(s);
    fs.crash(CrashKind::PowerLoss);
    let s = open(&fs).expect("third start");
    assert_eq!(s.recover_to(), 0);
    assert_eq!(s.durable_state().repair, Some(evidence), "the evidence stays for operators");
    Ok(())
}

#[test]
fn term_and_vote_survive_the_loss_of_the_batch_that_carried_them() -> raft::Result<()> {
    // Failure: the batch that moved the node to term 7 and recorded its vote for node 3 loses its
    // bytes from the log (a zeroed sector, multi-bit damage). Invariant: the vote is not forgotten, so
    // the node cannot vote twice in term 7 (the double-vote path of FAST'18).
    let fs = disk();
    lose_acknowledged_tail(&fs, hs(7, 3, 0), 40);
    let s = open(&fs).expect("open");
    let st = s.initial_state()?.hard_state;
    assert_eq!((st.term, st.vote), (7, 3));
    Ok(())
}

#[test]
fn a_conflict_that_truncates_uncommitted_entries_is_not_mistaken_for_loss() -> raft::Result<()> {
    // Failure: a power loss after a raft conflict shortened the log. Invariant: a legitimately
    // shortened log starts no recovery (the acknowledged index went down with it).
    let fs = disk();
    let s = open(&fs).expect("open");
    s.persist(&(1..=6).map(|i| entry(i, 1)).collect::<Vec<_>>(), Some(&hs(1, 1, 2))).expect("persist");
    s.persist(&[entry(3, 2)], Some(&hs(2, 2, 2))).expect("conflict");
    assert_eq!(s.durable_state().acknowledged, 3);
    drop(s);
    fs.crash(CrashKind::PowerLoss);
    let s = open(&fs).expect("reopen");
    assert_eq!((s.last_index()?, s.recover_to()), (3, 0));
    Ok(())
}

#[test]
fn a_missing_hard_state_file_is_refused_not_replaced_by_the_logs_stale_copy() {
    // Failure: the hard-state file disappears (an operator's rm, a bad restore). Invariant: the node
    // refuses with a typed error naming the file, rather than restarting from term 0.
    let fs = disk();
    let s = open(&fs).expect("open");
    s.persist(&[entry(1, 5)], Some(&hs(5, 1, 1))).expect("persist");
    drop(s);
    fs.remove_file(&Path::new(DIR).join(durakv::hardstate::FILE_NAME)).expect("remove");
    match open(&fs) {
        Err(StorageLoadError::HardStateMissing { path }) => assert!(path.ends_with("hardstate")),
        other => panic!("expected HardStateMissing, got {other:?}"),
    }
}

#[test]
fn a_hard_state_file_with_both_slots_damaged_is_refused() {
    // Failure: both slots of the hard-state file are damaged (no crash can do this: only one slot is
    // ever written at a time). Invariant: a typed refusal naming the file, never a reset to term 0.
    let fs = disk();
    let s = open(&fs).expect("open");
    s.persist(&[entry(1, 5)], Some(&hs(5, 1, 1))).expect("persist");
    drop(s);
    let path = Path::new(DIR).join(durakv::hardstate::FILE_NAME);
    fs.flip_bit(&path, 20, 1).expect("flip slot 0");
    fs.flip_bit(&path, 512 + 20, 1).expect("flip slot 1");
    match open(&fs) {
        Err(StorageLoadError::HardState(durakv::hardstate::HardStateError::Corrupt { path: p, .. })) => {
            assert_eq!(p, path)
        }
        other => panic!("expected a corrupt hard-state file, got {other:?}"),
    }
}

/// Failure injected: a node acknowledges a batch (its WAL write and fsync returned), the process
/// dies, and the fsync the next start makes of the last segment fails with EIO (which forgets only
/// unsynced ranges); then a start that succeeds, then a power loss. Invariant: the failed start cuts
/// nothing an fsync covered: the acknowledged entries are all there at the next starts, and no
/// recovery from peers is needed. (The last frame's own `durable_upto` predates the frame, so cutting
/// to it alone lost the last acknowledged batch: found by the swarm, `promises`.)
#[test]
fn a_failed_fsync_at_open_never_cuts_an_acknowledged_entry() {
    use durakv_faults::{FaultEffect, FaultRule, OpKind};
    for seed in 0..16 {
        let fs = SimFs::with_seed(seed);
        fs.create_dir_all(Path::new("/n")).expect("mkdir");
        fs.sync_dir(Path::new("/")).expect("sync");
        let s = open(&fs).expect("open");
        s.persist(&[entry(1, 1), entry(2, 1)], Some(&hs(1, 1, 0))).expect("persist");
        s.persist(&[entry(3, 1), entry(4, 1), entry(5, 1)], None).expect("persist");
        drop(s);
        fs.crash(CrashKind::ProcessKill);
        let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Sync])
            .on_path("*.wal")
            .expect("pattern")
            .max_fires(1);
        fs.add_rule(rule).expect("rule");
        assert!(open(&fs).is_err(), "seed {seed}: the EIO on the fsync at open fired");
        fs.crash(CrashKind::ProcessKill);
        let s = open(&fs).unwrap_or_else(|e| panic!("seed {seed}: restart: {e}"));
        assert_eq!(s.last_index().expect("last index"), 5, "seed {seed}: acknowledged entries were cut");
        assert_eq!(s.recover_to(), 0, "seed {seed}: nothing acknowledged was lost");
        drop(s);
        fs.crash(CrashKind::PowerLoss);
        let s = open(&fs).unwrap_or_else(|e| panic!("seed {seed}: after power loss: {e}"));
        assert_eq!(s.last_index().expect("last index"), 5, "seed {seed}: after power loss");
        assert_eq!(s.recover_to(), 0, "seed {seed}");
    }
}
