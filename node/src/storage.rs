//! raft-rs's [`Storage`] over the WAL: entries, hard state, conf state and snapshot metadata.
//!
//! * Entries are WAL entries whose data is the prost-encoded raft `Entry`; the WAL keeps each
//!   entry's term in memory, so `term()` never reads the disk.
//! * Term, vote and commit live in the hard-state file ([`crate::hardstate`]), outside the log, with the
//!   highest index this node may have acknowledged: damage to the log's tail cannot roll them back.
//!   [`RaftStorage::persist`] fsyncs a ready's entries to the WAL first, then the new hard state and
//!   acknowledged index to the file; raft's persisted messages (votes, append responses) leave only
//!   after both.
//! * Conf state and the latest snapshot's metadata and token are WAL meta values.
//! * `term(first_index - 1)` answers from the snapshot metadata; entries at or below the snapshot are
//!   [`StorageError::Compacted`].
//! * **Recovery from peers** (Protocol-Aware Recovery, FAST'18): when the log ends below the highest
//!   index the node may have acknowledged (or below its durable commit index) — a repaired tail that
//!   held acknowledged records, records lost any other way — the node neither refuses to start nor
//!   silently rejoins. Before the WAL cuts anything, the evidence (segment, offset, bytes, the index the
//!   node may have acknowledged) goes durably into the hard-state file, with `recover_to`, the index
//!   the log must reach again. Until it does, every start sees it, and the replica votes only for
//!   candidates at least as up to date as that mark and never campaigns ([`RaftStorage::recover_to`]); the leader refills the log. The commit index raft
//!   sees is clamped to the log; the durable one is kept.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::hardstate::{self, DurableState, HardStateError, HardStateFile, RepairEvidence, RepairKind};
use crate::io::SharedFs;
use crate::members::Book;
use crate::probe::{Observation, Recovered};
use crate::wal::{Batch, RecoveryMode, RecoveryReport, Wal, WalError, WalOptions};

/// The hard state as the log kept it before the hard-state file existed: read once, to migrate.
const META_HARD_STATE: u16 = 1;
const META_CONF_STATE: u16 = 2;
const META_SNAPSHOT: u16 = 3;
/// Set once the hard-state file exists: from then on a missing file is a refusal, never a silent
/// fall-back to the (stale) hard state in the log.
const META_HARD_STATE_IN_FILE: u16 = 4;
/// The members' addresses ([`crate::members`]), written with every conf state from the first
/// membership change on (absent: the configuration's `peers`).
const META_BOOK: u16 = 5;

/// Errors of the raft storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageLoadError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("stored {what} does not decode: {source}")]
    Decode { what: &'static str, source: prost::DecodeError },
    #[error(transparent)]
    HardState(#[from] HardStateError),
    #[error(
        "the hard-state file {} is missing but the log says it was created: refusing to start with the \
         log's stale term and vote (restore the file, or rebuild this node from its peers)",
        path.display()
    )]
    HardStateMissing { path: std::path::PathBuf },
    #[error(
        "this node lost log entries up to index {index} that it may have acknowledged ({evidence}), and no \
         other member exists to recover them from: refusing to start (restore the data directory from a \
         backup)"
    )]
    Unrecoverable { index: u64, evidence: String },
    #[error("invalid raft storage write: {0}")]
    InvalidArgument(String),
}

/// The latest snapshot this node holds: raft's metadata and our token for its file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotPointer {
    pub metadata: SnapshotMetadata,
    /// The snapshot token (`crate::snapshot::SnapshotToken`) raft carries instead of the data.
    pub token: Vec<u8>,
}

#[derive(Debug)]
struct Inner {
    wal: Wal,
    hs_file: HardStateFile,
    /// The hard state as raft sees it: the durable one, with the commit index clamped to the log
    /// while the node recovers lost entries.
    hard_state: HardState,
    conf_state: ConfState,
    /// The log index of the conf change (or snapshot) `conf_state` reflects: a conf-change entry at or
    /// below it is already in `conf_state` and must not be applied to raft again on replay.
    conf_index: u64,
    /// The members' addresses as of `conf_state` (`None`: never changed; the configuration's).
    book: Option<Book>,
    snapshot: SnapshotPointer,
    /// raft asked for a snapshot to send (a peer needs one) that this node does not hold yet: a
    /// snapshot is due now ([`RaftStorage::take_snapshot_wanted`]).
    snapshot_wanted: bool,
    /// A read of the log failed (an I/O error, a record that no longer decodes) while raft-rs asked
    /// for entries. raft-rs treats such an error as fatal and panics; the replica contains that
    /// panic and fail-stops with this reason instead (D10).
    read_failure: Option<String>,
}

/// Conf state as a meta value: the index it reflects (u64), then the encoded `ConfState`.
fn encode_conf(index: u64, cs: &ConfState) -> Vec<u8> {
    let mut out = index.to_be_bytes().to_vec();
    out.extend_from_slice(&cs.encode_to_vec());
    out
}

fn decode_conf(bytes: &[u8]) -> Result<(u64, ConfState), StorageLoadError> {
    let bad = |source| StorageLoadError::Decode { what: "conf state", source };
    let index = bytes
        .get(0..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| bad(prost::DecodeError::new("shorter than its index")))?;
    Ok((index, ConfState::decode(&bytes[8..]).map_err(bad)?))
}

/// raft-rs storage backed by the WAL. Shared between the raft node (reads, through [`Storage`]) and
/// the ready loop (writes).
#[derive(Debug)]
pub struct RaftStorage {
    inner: Mutex<Inner>,
}

fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// Snapshot metadata and token as one meta value: u32 length + metadata, then the token.
fn encode_pointer(p: &SnapshotPointer) -> Vec<u8> {
    let meta = p.metadata.encode_to_vec();
    let mut out = Vec::with_capacity(4 + meta.len() + p.token.len());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&p.token);
    out
}

fn decode_pointer(bytes: &[u8]) -> Result<SnapshotPointer, StorageLoadError> {
    let bad = |source| StorageLoadError::Decode { what: "snapshot pointer", source };
    let len = bytes
        .get(0..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| bad(prost::DecodeError::new("shorter than its length prefix")))?;
    let meta =
        bytes.get(4..4usize.saturating_add(len)).ok_or_else(|| bad(prost::DecodeError::new("truncated")))?;
    let metadata = SnapshotMetadata::decode(meta).map_err(bad)?;
    Ok(SnapshotPointer { metadata, token: bytes[4 + len..].to_vec() })
}

impl RaftStorage {
    /// Open the WAL and the hard-state file in `dir` and load the raft state from them, deciding
    /// whether this node must recover lost entries from its peers (module documentation).
    pub fn open(
        fs: SharedFs,
        dir: &Path,
        opts: WalOptions,
    ) -> Result<(RaftStorage, RecoveryReport), StorageLoadError> {
        // The raft log is where the `wal.*` failpoints live. Corruption of acknowledged records is
        // opened past and recovered from peers, unless a strict (read-only) check was asked for.
        let recovery = match opts.recovery {
            RecoveryMode::Strict => RecoveryMode::Strict,
            _ => RecoveryMode::RecoverFromPeers,
        };
        let hs_path = dir.join(hardstate::FILE_NAME);
        let mut hs_file = HardStateFile::load(&fs, &hs_path)?;
        // What this node acknowledged was fsynced before it said so: an fsync failing at open must
        // not cut it (`WalOptions::durable_entry`).
        let durable_entry = hs_file
            .as_ref()
            .map(|f| (f.state().acknowledged, f.state().acknowledged_term))
            .filter(|&(index, _)| index > 0);
        let opts = WalOptions { failpoints: true, recovery, durable_entry, ..opts };
        let mut legacy_evidence = None;
        let (mut wal, report) = Wal::open_with(fs.clone(), dir, opts, &mut |plan| {
            let evidence = |acknowledged| RepairEvidence {
                kind: RepairKind::TornTailRepaired,
                segment: plan.seq,
                offset: plan.offset,
                bytes_dropped: plan.bytes_dropped,
                acknowledged,
            };
            let Some(file) = hs_file.as_mut() else {
                // A log from before the hard-state file: nothing records what it acknowledged.
                legacy_evidence = Some(evidence(0));
                return Ok(());
            };
            let mut st = *file.state();
            st.repair = Some(evidence(st.acknowledged.max(st.commit)));
            // Durable before the WAL cuts a byte, so a crash after the cut still finds it. Whether the
            // cut lost anything acknowledged is decided once the whole log is read.
            file.store(st).map_err(|e| WalError::Evidence(Box::new(e)))
        })?;
        let in_file = wal.meta(META_HARD_STATE_IN_FILE).is_some();
        let hs_file = match hs_file {
            Some(f) => f,
            None if in_file => return Err(StorageLoadError::HardStateMissing { path: hs_path }),
            None => {
                // A new data directory, or one whose hard state is still in the log: move it out.
                let legacy = match wal.meta(META_HARD_STATE) {
                    Some(b) => HardState::decode(b)
                        .map_err(|source| StorageLoadError::Decode { what: "hard state", source })?,
                    None => HardState::default(),
                };
                let state = DurableState {
                    term: legacy.term,
                    vote: legacy.vote,
                    commit: legacy.commit,
                    acknowledged: wal.last_index().unwrap_or(0),
                    acknowledged_term: wal.last_index().and_then(|i| wal.term(i)).unwrap_or(0),
                    recover_to: 0,
                    recover_term: 0,
                    repair: legacy_evidence,
                };
                HardStateFile::create(&fs, &hs_path, state)?
            }
        };
        if !in_file {
            wal.append(Batch::new().set_meta(META_HARD_STATE_IN_FILE, vec![1]))?;
        }
        let (conf_index, conf_state) = match wal.meta(META_CONF_STATE) {
            Some(b) => decode_conf(b)?,
            None => (0, ConfState::default()),
        };
        let book = match wal.meta(META_BOOK) {
            Some(b) => Some(
                crate::members::decode_book(b)
                    .map_err(|e| StorageLoadError::InvalidArgument(e.to_string()))?,
            ),
            None => None,
        };
        let snapshot = match wal.meta(META_SNAPSHOT) {
            Some(b) => decode_pointer(b)?,
            None => SnapshotPointer::default(),
        };
        // A snapshot's pointer and its compaction are one batch. Entries at or below the snapshot
        // stay part of the log only as the trailing window kept for lagging followers
        // ([`RaftStorage::apply_snapshot_keeping`]): the log must then run unbroken up to the
        // snapshot's entry, of its term. Anything else (a log damaged or cut below the snapshot, a
        // log from before the window) is compacted up to the snapshot, as it always was.
        if snapshot.metadata.index > 0
            && wal.compacted_below() <= snapshot.metadata.index
            && wal.term(snapshot.metadata.index) != Some(snapshot.metadata.term)
        {
            wal.compact(snapshot.metadata.index + 1)?;
        }
        let mut inner = Inner {
            wal,
            hs_file,
            hard_state: HardState::default(),
            conf_state,
            conf_index,
            book,
            snapshot,
            snapshot_wanted: false,
            read_failure: None,
        };
        let (last, last_term) = inner.log_end();
        let mut durable = *inner.hs_file.state();
        let must_have = durable.acknowledged.max(durable.commit);
        if let Some(d) = &report.damaged {
            // The damage stays on disk and is found at every open; record it once.
            let seen = durable.repair.is_some_and(|r| {
                (r.kind, r.segment, r.offset) == (RepairKind::CorruptRecord, d.seq, d.offset)
            });
            if !seen {
                durable.repair = Some(RepairEvidence {
                    segment: d.seq,
                    offset: d.offset,
                    ..RepairEvidence::found(RepairKind::CorruptRecord, must_have)
                });
            }
        }
        if !holds((last, last_term), (must_have, durable.acknowledged_term))
            && !holds((durable.recover_to, durable.recover_term), (must_have, durable.acknowledged_term))
        {
            durable.recover_to = durable.recover_to.max(must_have);
            durable.recover_term = durable.recover_term.max(durable.acknowledged_term);
            if report.repaired.is_none() && report.damaged.is_none() {
                durable.repair = Some(RepairEvidence::found(RepairKind::LogBelowAcknowledged, must_have));
            }
        }
        if crate::failpoint::canary(&**inner.hs_file.fs(), "persist-clamped-commit") {
            durable.commit = durable.commit.min(last);
        }
        // Ends a recovery whose mark the log has reached (a crash after the refill, before the clear).
        inner.store(durable)?;
        let durable = *inner.hs_file.state();
        if durable.recover_to > 0 {
            let evidence = durable.repair.map(|r| r.kind.to_string()).unwrap_or_default();
            tracing::error!(
                index = last,
                recover_to = durable.recover_to,
                commit = durable.commit,
                acknowledged = durable.acknowledged,
                evidence,
                "this node lost log entries it may have acknowledged: it votes only for candidates holding \
                 them and never campaigns until the leader has sent it everything up to recover_to"
            );
        }
        inner.hard_state =
            HardState { term: durable.term, vote: durable.vote, commit: durable.commit.min(last) };
        Ok((RaftStorage { inner: Mutex::new(inner) }, report))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under this lock is a bug; the state is still the best record there is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persist a ready's entries (one WAL fsync), then its hard state and the acknowledged index (one
    /// fsync of the hard-state file). Entries that overlap the log replace it from their first index on
    /// (a raft conflict). Returns once both are durable.
    pub fn persist(&self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<(), StorageLoadError> {
        let mut inner = self.lock();
        let mut batch = Batch::new();
        // A raft conflict: these entries replace the log from their first index on.
        let conflict = entries
            .first()
            .map(|first| first.index)
            .filter(|&first| inner.wal.last_index().is_some_and(|last| first <= last));
        if let Some(first) = conflict {
            batch.truncate_from(first);
            // Whatever prefix of this batch a crash keeps, the log still reaches `first - 1`.
            inner.lower_acknowledged(first - 1)?;
        }
        for e in entries {
            batch.entry(e.index, e.term, e.encode_to_vec());
        }
        let new_last = entries.last().map(|e| (e.index, e.term));
        inner.wal.append(&batch)?;
        let mut durable = *inner.hs_file.state();
        if let Some((index, term)) = new_last {
            // These entries are acknowledged once this returns: the log's new end.
            (durable.acknowledged, durable.acknowledged_term) = (index, term);
        }
        if let Some(hs) = hard_state {
            durable.term = hs.term;
            durable.vote = hs.vote;
            if crate::failpoint::canary(&**inner.hs_file.fs(), "vote-not-persisted") {
                durable.vote = 0;
            }
            // While recovering, raft's commit index is the clamped one; never lower the durable one.
            durable.commit = durable.commit.max(hs.commit);
        }
        // A commit index noted without an fsync ([`RaftStorage::note_commit`]) rides on this one.
        durable.commit = durable.commit.max(inner.hard_state.commit);
        inner.store(durable)?;
        if let Some(hs) = hard_state {
            let noted = inner.hard_state.commit;
            inner.hard_state = hs.clone();
            inner.hard_state.commit = inner.hard_state.commit.max(noted);
        }
        Ok(())
    }

    /// Does `hs` change the term or the vote the hard-state file holds? Only those need an fsync
    /// before raft's persisted messages leave; a new commit index alone does not
    /// ([`RaftStorage::note_commit`]).
    pub fn changes_term_or_vote(&self, hs: &HardState) -> bool {
        let inner = self.lock();
        (hs.term, hs.vote) != (inner.hard_state.term, inner.hard_state.vote)
    }

    /// Take raft's new commit index in memory, without an fsync: the next [`RaftStorage::persist`]
    /// writes it. Losing it in a crash is harmless: raft learns the commit index again from the
    /// leader, and start-up raises it to what the state machine durably applied
    /// ([`RaftStorage::raise_commit`]). Nothing is promised on it (votes and append responses
    /// promise the term, vote and entries, which are fsynced before they leave).
    pub fn note_commit(&self, commit: u64) {
        let mut inner = self.lock();
        inner.hard_state.commit = inner.hard_state.commit.max(commit);
    }

    /// Give a brand-new replica its initial voters. Does nothing (returns `false`) once the replica
    /// has any conf state, log entry or snapshot: bootstrap happens exactly once per data directory.
    pub fn bootstrap(&self, voters: &[u64]) -> Result<bool, StorageLoadError> {
        let fresh = {
            let inner = self.lock();
            inner.conf_state == ConfState::default()
                && inner.wal.last_index().is_none()
                && inner.snapshot.metadata.index == 0
        };
        if !fresh {
            return Ok(false);
        }
        self.set_conf_state(&ConfState { voters: voters.to_vec(), ..ConfState::default() }, 0, None)?;
        Ok(true)
    }

    /// Persist a new conf state, produced by the conf change at log index `index`, with the members'
    /// addresses after it (`None`: unchanged). One batch, the book first: a torn write of the batch
    /// (the WAL keeps the whole frames before a torn one) can leave the book ahead of the conf state,
    /// which the next start's retake of the change mends, never a conf state naming a member whose
    /// address is lost.
    pub fn set_conf_state(&self, cs: &ConfState, index: u64, book: Option<&Book>) -> Result<(), WalError> {
        let mut inner = self.lock();
        let mut batch = Batch::new();
        if let Some(book) = book {
            batch.set_meta(META_BOOK, crate::members::encode_book(book));
        }
        batch.set_meta(META_CONF_STATE, encode_conf(index, cs));
        inner.wal.append(&batch)?;
        inner.conf_state = cs.clone();
        inner.conf_index = index;
        if let Some(book) = book {
            inner.book = Some(book.clone());
        }
        Ok(())
    }

    /// The members' addresses as stored (`None`: no membership change or received snapshot has set
    /// them; the configuration's `peers` hold).
    pub fn book(&self) -> Option<Book> {
        self.lock().book.clone()
    }

    /// The conf state as stored.
    pub fn conf_state(&self) -> ConfState {
        self.lock().conf_state.clone()
    }

    /// The membership changes the log holds from `from` through `to` (entries it cannot read are
    /// skipped: damage is found, and the entries recovered, elsewhere).
    pub fn conf_changes_between(&self, from: u64, to: u64) -> Vec<Entry> {
        let inner = self.lock();
        let from = from.max(inner.first_index());
        let to = to.min(inner.last_index());
        (from..=to)
            .filter_map(|index| inner.wal.entry(index).ok())
            .filter_map(|stored| Entry::decode(&stored.data[..]).ok())
            .filter(|e| matches!(e.entry_type(), EntryType::EntryConfChange | EntryType::EntryConfChangeV2))
            .collect()
    }

    /// Did raft ask for a snapshot this node does not hold yet (for a peer that needs one)? Cleared
    /// by asking.
    pub fn take_snapshot_wanted(&self) -> bool {
        std::mem::take(&mut self.lock().snapshot_wanted)
    }

    /// The log index of the conf change the stored conf state reflects.
    pub fn conf_index(&self) -> u64 {
        self.lock().conf_index
    }

    /// Raise the persisted commit index to `index` if it is lower and within the log. A state machine
    /// that durably applied past the saved commit index proves those entries were committed, and raft
    /// refuses to start with an applied index beyond its commit index.
    pub fn raise_commit(&self, index: u64) -> Result<(), StorageLoadError> {
        let mut inner = self.lock();
        if index <= inner.hard_state.commit || index > inner.last_index() {
            return Ok(());
        }
        let mut durable = *inner.hs_file.state();
        durable.commit = durable.commit.max(index);
        inner.store(durable)?;
        inner.hard_state.commit = index;
        Ok(())
    }

    /// Index the log must reach again before this node votes or campaigns (0: not recovering).
    pub fn recover_to(&self) -> u64 {
        self.lock().hs_file.state().recover_to
    }

    /// Refuse to go on if this node must recover lost entries but no other member exists to supply
    /// them (a single-node cluster): waiting would be forever, so say which index is lost, and where.
    pub fn check_recoverable(&self, self_id: u64, dir: &Path) -> Result<(), StorageLoadError> {
        let inner = self.lock();
        let st = inner.hs_file.state();
        let cs = &inner.conf_state;
        let has_peer = cs.voters.iter().chain(&cs.learners).chain(&cs.voters_outgoing).any(|&v| v != self_id);
        if st.recover_to == 0 || has_peer {
            return Ok(());
        }
        let evidence = match st.repair {
            Some(r) if r.segment > 0 => format!(
                "{}: {} at offset {}",
                r.kind,
                dir.join(crate::wal::segment_name(r.segment)).display(),
                r.offset
            ),
            Some(r) => r.kind.to_string(),
            None => "no evidence recorded".into(),
        };
        Err(StorageLoadError::Unrecoverable { index: st.recover_to, evidence })
    }

    /// What the hard-state file holds.
    pub fn durable_state(&self) -> DurableState {
        *self.lock().hs_file.state()
    }

    /// The read failure raft-rs met in [`Storage::entries`], if any, taken (see `Inner::read_failure`).
    pub fn take_read_failure(&self) -> Option<String> {
        self.lock().read_failure.take()
    }

    /// The state this storage opened with, as the simulation's checkers see it ([`crate::probe`]).
    pub fn recovered(&self) -> Recovered {
        let inner = self.lock();
        let durable = inner.hs_file.state();
        let (last_index, last_term) = inner.log_end();
        Recovered {
            term: durable.term,
            vote: durable.vote,
            commit: durable.commit,
            last_index,
            last_term,
            recover_to: durable.recover_to,
            recover_term: durable.recover_term,
            wal: crate::probe::WalFinding::Clean,
        }
    }

    /// A promise turned out broken while running (a leader believed this node held entries up to
    /// `upto`, past its log): record the evidence durably and recover those entries from the leader.
    pub fn begin_recovery(&self, upto: u64, kind: RepairKind) -> Result<(), StorageLoadError> {
        let mut inner = self.lock();
        let mut durable = *inner.hs_file.state();
        if durable.recover_to >= upto || inner.last_index() >= upto {
            return Ok(());
        }
        durable.recover_to = upto;
        durable.recover_term = durable.recover_term.max(durable.acknowledged_term);
        durable.repair = Some(RepairEvidence::found(kind, upto));
        inner.hs_file.store(durable)?;
        Ok(())
    }

    /// Record a snapshot this node now holds (taken locally, or received and restored): its metadata
    /// becomes the log's base, entries at or below it are compacted away, and the conf state follows.
    /// The caller must have made the FSM durable at or past `metadata.index` first (D2, D9).
    pub fn apply_snapshot(&self, pointer: SnapshotPointer) -> Result<(), StorageLoadError> {
        let index = pointer.metadata.index;
        self.apply_snapshot_keeping(pointer, index + 1)
    }

    /// [`RaftStorage::apply_snapshot`] for a snapshot this node took from its own log: entries from
    /// `keep_from` up to the snapshot stay in the log (the trailing window), so a follower a little
    /// behind catches up from the log instead of receiving the whole snapshot. They are kept only
    /// where the log holds the snapshot's own entry (of its term); a received snapshot replaces the
    /// log below it entirely.
    pub fn apply_snapshot_keeping(
        &self,
        pointer: SnapshotPointer,
        keep_from: u64,
    ) -> Result<(), StorageLoadError> {
        self.apply_snapshot_with_book(pointer, keep_from, None)
    }

    /// [`RaftStorage::apply_snapshot_keeping`], recording the members' addresses the snapshot carried
    /// (a received snapshot's header) in the same batch.
    pub fn apply_snapshot_with_book(
        &self,
        pointer: SnapshotPointer,
        keep_from: u64,
        book: Option<&Book>,
    ) -> Result<(), StorageLoadError> {
        let mut inner = self.lock();
        let index = pointer.metadata.index;
        if index < inner.snapshot.metadata.index {
            return Err(StorageLoadError::InvalidArgument(format!(
                "snapshot {index} is older than the current one {}",
                inner.snapshot.metadata.index
            )));
        }
        let conf_state = pointer.metadata.conf_state.clone().unwrap_or_default();
        let mut batch = Batch::new();
        // The book first (see `set_conf_state`).
        if let Some(book) = book {
            batch.set_meta(META_BOOK, crate::members::encode_book(book));
        }
        batch.set_meta(META_SNAPSHOT, encode_pointer(&pointer));
        batch.set_meta(META_CONF_STATE, encode_conf(index, &conf_state));
        // A received snapshot replaces a log that disagrees with it: drop entries past it whose term
        // does not match, as raft-rs's MemStorage does by resetting.
        let keep_tail = inner.wal.term(index) == Some(pointer.metadata.term);
        if !keep_tail && inner.wal.last_index().is_some_and(|last| last > index) {
            batch.truncate_from(index + 1);
        }
        if !keep_tail {
            inner.lower_acknowledged(index)?;
        }
        // Entries at or below the snapshot go in the same batch (but for the trailing window, which
        // only a log holding the snapshot's own entry keeps): after any crash the log's base and its
        // contents agree.
        let compact_to = if keep_tail { keep_from.clamp(1, index + 1) } else { index + 1 };
        batch.compact(compact_to);
        inner.wal.append(&batch)?;
        let mut hs = inner.hard_state.clone();
        hs.commit = hs.commit.max(index);
        hs.term = hs.term.max(pointer.metadata.term);
        let mut durable = *inner.hs_file.state();
        durable.commit = durable.commit.max(index);
        durable.term = durable.term.max(pointer.metadata.term);
        // The snapshot is acknowledged once this returns; the log's end is the snapshot or past it.
        if !keep_tail || (pointer.metadata.term, index) > (durable.acknowledged_term, durable.acknowledged) {
            (durable.acknowledged, durable.acknowledged_term) = (index, pointer.metadata.term);
        }
        // The snapshot is the log's new base (set before `store`, which sees the log's new end).
        inner.snapshot = pointer;
        inner.store(durable)?;
        inner.hard_state = hs;
        inner.conf_state = conf_state;
        inner.conf_index = index;
        if let Some(book) = book {
            inner.book = Some(book.clone());
        }
        Ok(())
    }

    /// The hard state last persisted.
    pub fn hard_state(&self) -> HardState {
        self.lock().hard_state.clone()
    }

    /// The latest snapshot pointer.
    pub fn snapshot_pointer(&self) -> SnapshotPointer {
        self.lock().snapshot.clone()
    }

    /// The index of the latest snapshot (0 before the first), without copying the pointer: the raft
    /// loop reads it every round.
    pub fn snapshot_index(&self) -> u64 {
        self.lock().snapshot.metadata.index
    }
}

/// Does a log ending at `(last, last_term)` hold everything up to the mark `(index, term)`: at least
/// that long, and (raft's up-to-date order) its last term no older? A log that kept entries an
/// acknowledged conflict had replaced is long enough but ends in an older term.
fn holds((last, last_term): (u64, u64), (index, term): (u64, u64)) -> bool {
    last >= index && last_term >= term
}

impl Inner {
    /// Before a raft conflict replaces uncommitted entries from `new_last + 1` on: the promise about
    /// them is void, and lowering the acknowledged index first means a crash between this and the WAL
    /// write is never mistaken for lost entries (the log still reaches `new_last`).
    fn lower_acknowledged(&mut self, new_last: u64) -> Result<(), HardStateError> {
        let mut durable = *self.hs_file.state();
        if new_last < durable.acknowledged {
            let term = self.term_at(new_last);
            (durable.acknowledged, durable.acknowledged_term) = (new_last, term);
            self.hs_file.store(durable)?;
            crate::probe::observe(&**self.hs_file.fs(), || Observation::Voided { index: new_last, term });
        }
        Ok(())
    }

    /// The term of a log index this node holds: from the WAL, or the snapshot's at its base.
    fn term_at(&self, index: u64) -> u64 {
        self.wal.term(index).unwrap_or(self.snapshot.metadata.term)
    }

    /// The log's last index and its term.
    fn log_end(&self) -> (u64, u64) {
        let last = self.last_index();
        (last, self.term_at(last))
    }

    /// Make `durable` the hard-state file's content, ending recovery once the log reached its mark.
    fn store(&mut self, mut durable: DurableState) -> Result<(), HardStateError> {
        let (last, last_term) = self.log_end();
        if durable.recover_to > 0 && holds((last, last_term), (durable.recover_to, durable.recover_term)) {
            tracing::info!(
                index = last,
                recover_to = durable.recover_to,
                "recovered from peers: the log holds everything this node may have acknowledged again"
            );
            (durable.recover_to, durable.recover_term) = (0, 0);
        }
        self.hs_file.store(durable)
    }

    /// The first entry raft may read: the snapshot's successor, or the first entry of the trailing
    /// window kept below it, where the log runs unbroken from there through the snapshot's entry.
    fn first_index(&self) -> u64 {
        let base = self.snapshot.metadata.index;
        match (self.wal.first_index(), self.wal.last_index()) {
            (Some(first), Some(last)) if first <= base && last >= base && base > 0 => first,
            _ => base + 1,
        }
    }

    fn last_index(&self) -> u64 {
        self.wal.last_index().unwrap_or(0).max(self.snapshot.metadata.index)
    }
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let inner = self.lock();
        Ok(RaftState { hard_state: inner.hard_state.clone(), conf_state: inner.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let mut inner = self.lock();
        if low < inner.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        // The log from its first entry, sent to a peer (raft's only asynchronous-capable reader is an
        // append to a peer), once the membership has changed (a member book is stored): the initial voters are in no entry
        // (bootstrap sets them at index 0), so a node that joined later and replayed the log from
        // there would rebuild a membership without them (and, promoted, could elect itself alone).
        // Such a peer gets a snapshot instead, whose header names the whole membership. An initial
        // voter that lost its log gets one too, which is as good.
        if low == 1
            && context.can_async()
            && inner.book.is_some()
            && !crate::failpoint::canary(&**inner.hs_file.fs(), "joiner-replays-from-one")
        {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > inner.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let read = inner.wal.entry(index).map_err(|e| e.to_string()).and_then(|stored| {
                Entry::decode(&stored.data[..]).map_err(|e| format!("entry {index}: {e}"))
            });
            let e = match read {
                Ok(e) => e,
                Err(reason) => {
                    // Remembered for the replica, which stops the node on it (raft-rs will panic).
                    inner.read_failure = Some(reason.clone());
                    // raft-rs panics on this error right away; the replica contains that panic.
                    crate::replica::note_contained_read_failure(true);
                    return Err(store_err(std::io::Error::other(reason)));
                }
            };
            size += u64::from(prost::Message::encoded_len(&e) as u32);
            // At least one entry, then stop before passing the limit (raft's `limit_size`).
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let inner = self.lock();
        let snap = &inner.snapshot.metadata;
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < inner.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > inner.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        inner.wal.term(idx).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.lock().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.lock().last_index())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut inner = self.lock();
        let p = &inner.snapshot;
        let names_peer =
            p.metadata.conf_state.as_ref().is_some_and(|cs| crate::members::ids_of(cs).contains(&to));
        if p.metadata.index == 0 || p.metadata.index < request_index || !names_peer {
            // None yet, too old, or from before the peer was a member (it would refuse to restore a
            // snapshot whose membership leaves it out): a snapshot is due now; raft asks again later.
            inner.snapshot_wanted = true;
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(Snapshot { data: p.token.clone(), metadata: Some(p.metadata.clone()) })
    }
}
