//! raft-rs's [`Storage`] over the WAL: entries, hard state, conf state and snapshot metadata.
//!
//! * Entries are WAL entries whose data is the prost-encoded raft `Entry`; the WAL keeps each
//!   entry's term in memory, so `term()` never reads the disk.
//! * Hard state, conf state and the latest snapshot's metadata and token are WAL meta values, written
//!   in the same batch (and fsync) as the entries of a ready ([`RaftStorage::persist`]).
//! * `term(first_index - 1)` answers from the snapshot metadata; entries at or below the snapshot are
//!   [`StorageError::Compacted`].
//! * On load the commit index is never beyond the last durable entry. If a torn-tail repair dropped
//!   entries at or below the durable commit index, loading fails instead (D5): those entries were
//!   acknowledged, and only a peer may supply them.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::io::SharedFs;
use crate::wal::{Batch, RecoveryReport, Wal, WalError, WalOptions};

const META_HARD_STATE: u16 = 1;
const META_CONF_STATE: u16 = 2;
const META_SNAPSHOT: u16 = 3;

/// Errors of the raft storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageLoadError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("stored {what} does not decode: {source}")]
    Decode { what: &'static str, source: prost::DecodeError },
    #[error(
        "a torn-tail repair dropped entries up to the durable commit index {commit} (last entry left: {last}); \
         committed entries were lost from this node's log and must come from a peer"
    )]
    CommittedEntriesLost { commit: u64, last: u64 },
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
    hard_state: HardState,
    conf_state: ConfState,
    /// The log index of the conf change (or snapshot) `conf_state` reflects: a conf-change entry at or
    /// below it is already in `conf_state` and must not be applied to raft again on replay.
    conf_index: u64,
    snapshot: SnapshotPointer,
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
    /// Open the WAL in `dir` and load the raft state from it.
    pub fn open(
        fs: SharedFs,
        dir: &Path,
        opts: WalOptions,
    ) -> Result<(RaftStorage, RecoveryReport), StorageLoadError> {
        // The raft log is where the `wal.*` failpoints live.
        let opts = WalOptions { failpoints: true, ..opts };
        let (mut wal, report) = Wal::open(fs, dir, opts)?;
        let mut hard_state = match wal.meta(META_HARD_STATE) {
            Some(b) => HardState::decode(b)
                .map_err(|source| StorageLoadError::Decode { what: "hard state", source })?,
            None => HardState::default(),
        };
        let (conf_index, conf_state) = match wal.meta(META_CONF_STATE) {
            Some(b) => decode_conf(b)?,
            None => (0, ConfState::default()),
        };
        let snapshot = match wal.meta(META_SNAPSHOT) {
            Some(b) => decode_pointer(b)?,
            None => SnapshotPointer::default(),
        };
        // A snapshot's pointer and its compaction are one batch; finish the compaction anyway, so
        // nothing at or below the snapshot can remain part of the log.
        if snapshot.metadata.index > 0 && wal.compacted_below() <= snapshot.metadata.index {
            wal.compact(snapshot.metadata.index + 1)?;
        }
        let last = wal.last_index().unwrap_or(0).max(snapshot.metadata.index);
        if hard_state.commit > last {
            if report.repaired.is_some() {
                return Err(StorageLoadError::CommittedEntriesLost { commit: hard_state.commit, last });
            }
            tracing::warn!(
                commit = hard_state.commit,
                index = last,
                "commit index beyond the last durable entry: clamped"
            );
            hard_state.commit = last;
        }
        let inner = Inner { wal, hard_state, conf_state, conf_index, snapshot };
        Ok((RaftStorage { inner: Mutex::new(inner) }, report))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under this lock is a bug; the state is still the best record there is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persist a ready's entries and hard state with one fsync. Entries that overlap the log replace
    /// it from their first index on (a raft conflict). Returns once durable.
    pub fn persist(&self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<(), WalError> {
        let mut inner = self.lock();
        let mut batch = Batch::new();
        if let Some(first) = entries.first()
            && inner.wal.last_index().is_some_and(|last| first.index <= last)
        {
            batch.truncate_from(first.index);
        }
        for e in entries {
            batch.entry(e.index, e.term, e.encode_to_vec());
        }
        if let Some(hs) = hard_state {
            batch.set_meta(META_HARD_STATE, hs.encode_to_vec());
        }
        inner.wal.append(&batch)?;
        if let Some(hs) = hard_state {
            inner.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Give a brand-new replica its initial voters. Does nothing (returns `false`) once the replica
    /// has any conf state, log entry or snapshot: bootstrap happens exactly once per data directory.
    pub fn bootstrap(&self, voters: &[u64]) -> Result<bool, WalError> {
        let fresh = {
            let inner = self.lock();
            inner.conf_state == ConfState::default()
                && inner.wal.last_index().is_none()
                && inner.snapshot.metadata.index == 0
        };
        if !fresh {
            return Ok(false);
        }
        self.set_conf_state(&ConfState { voters: voters.to_vec(), ..ConfState::default() }, 0)?;
        Ok(true)
    }

    /// Persist a new conf state, produced by the conf change at log index `index`.
    pub fn set_conf_state(&self, cs: &ConfState, index: u64) -> Result<(), WalError> {
        let mut inner = self.lock();
        inner.wal.append(Batch::new().set_meta(META_CONF_STATE, encode_conf(index, cs)))?;
        inner.conf_state = cs.clone();
        inner.conf_index = index;
        Ok(())
    }

    /// The log index of the conf change the stored conf state reflects.
    pub fn conf_index(&self) -> u64 {
        self.lock().conf_index
    }

    /// Raise the persisted commit index to `index` if it is lower and within the log. A state machine
    /// that durably applied past the saved commit index proves those entries were committed, and raft
    /// refuses to start with an applied index beyond its commit index.
    pub fn raise_commit(&self, index: u64) -> Result<(), WalError> {
        let mut inner = self.lock();
        if index <= inner.hard_state.commit || index > inner.last_index() {
            return Ok(());
        }
        let mut hs = inner.hard_state.clone();
        hs.commit = index;
        inner.wal.append(Batch::new().set_meta(META_HARD_STATE, hs.encode_to_vec()))?;
        inner.hard_state = hs;
        Ok(())
    }

    /// Record a snapshot this node now holds (taken locally, or received and restored): its metadata
    /// becomes the log's base, entries at or below it are compacted away, and the conf state follows.
    /// The caller must have made the FSM durable at or past `metadata.index` first (D2, D9).
    pub fn apply_snapshot(&self, pointer: SnapshotPointer) -> Result<(), StorageLoadError> {
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
        batch.set_meta(META_SNAPSHOT, encode_pointer(&pointer));
        batch.set_meta(META_CONF_STATE, encode_conf(index, &conf_state));
        // A received snapshot replaces a log that disagrees with it: drop entries past it whose term
        // does not match, as raft-rs's MemStorage does by resetting.
        let keep_tail = inner.wal.term(index) == Some(pointer.metadata.term);
        if !keep_tail && inner.wal.last_index().is_some_and(|last| last > index) {
            batch.truncate_from(index + 1);
        }
        let mut hs = inner.hard_state.clone();
        hs.commit = hs.commit.max(index);
        hs.term = hs.term.max(pointer.metadata.term);
        batch.set_meta(META_HARD_STATE, hs.encode_to_vec());
        // Entries at or below the snapshot go in the same batch: after any crash the log's base and
        // its contents agree.
        batch.compact(index + 1);
        inner.wal.append(&batch)?;
        inner.hard_state = hs;
        inner.conf_state = conf_state;
        inner.conf_index = index;
        inner.snapshot = pointer;
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

impl Inner {
    fn first_index(&self) -> u64 {
        self.snapshot.metadata.index + 1
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
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let inner = self.lock();
        if low < inner.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > inner.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let stored = inner.wal.entry(index).map_err(store_err)?;
            let e = Entry::decode(&stored.data[..]).map_err(store_err)?;
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

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let inner = self.lock();
        let p = &inner.snapshot;
        if p.metadata.index == 0 || p.metadata.index < request_index {
            // The node takes snapshots on its own schedule; raft asks again later.
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(Snapshot { data: p.token.clone(), metadata: Some(p.metadata.clone()) })
    }
}
