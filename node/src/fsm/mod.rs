//! The state machine's storage: the [`Engine`] trait, its two engines, and the KV state machine.
//!
//! # Contract
//!
//! * A [`WriteBatch`] is atomic: after any crash it is entirely present or entirely absent.
//! * [`WriteMode::Sync`]: the batch is durable when `write` returns. [`WriteMode::NoSync`]: the batch
//!   survives a process kill but may be lost on power loss — only ever as a suffix of the unsynced
//!   batches, so what survives is always a prefix of the writes in order. Only the raft-apply path may
//!   use `NoSync`, because the raft log can replay what it loses (D2); every other write syncs (D3).
//! * Meta values (the applied index above all) live in a reserved namespace no client key can reach,
//!   and are written in the same atomic batch as the data, so the applied index always matches the
//!   data present.
//! * [`Engine::flush`] makes every earlier write durable; callers run it before compacting the raft log
//!   past the applied index (D2).
//!
//! Engines: [`RocksEngine`] (production, behind the `rocksdb` feature; RocksDB owns its files) and
//! [`SimEngine`] (deterministic, its files on the [`crate::io::Fs`] so the simulated disk sees every
//! write). One conformance suite (`node/tests/fsm_conformance.rs`) runs against both.

mod batch;
mod kv;
#[cfg(feature = "rocksdb")]
mod rocks;
#[cfg(feature = "rocksdb")]
mod rocks_wal;
mod sim;
pub mod value;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use batch::{DecodeError, Op, WriteBatch};
pub use kv::{
    Command, ExpireCondition, FsmSync, Kv, ReadKind, Reply, SWEEP_MAX_KEYS, SetCondition, command,
    format_redis_float, parse_redis_float, parse_redis_int,
};
#[cfg(feature = "rocksdb")]
pub use rocks::RocksEngine;
pub use sim::{SimEngine, SimEngineOptions};

/// Write `applied_index` (and term) into `batch`'s meta values.
fn restored_metas(batch: &mut WriteBatch, applied_index: u64, applied_term: u64) {
    batch
        .set_applied_index(applied_index)
        .set_meta(MetaKey::AppliedTerm, applied_term.to_be_bytes().to_vec())
        // A snapshot's records carry values in this build's format (the snapshot version says so).
        .set_meta(MetaKey::ValueFormat, vec![value::VALUE_FORMAT]);
}

use crate::wal::WalError;

/// Client key-value pairs, in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// Called for each key-value pair of an iteration; returns whether to go on.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, FsmError> + 'a;

/// Whether a write must be durable before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteMode {
    Sync,
    NoSync,
}

/// A named value in the engine's reserved namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetaKey {
    /// The index of the last raft entry applied (8 bytes, big-endian).
    AppliedIndex,
    /// The term of that entry (8 bytes, big-endian).
    AppliedTerm,
    /// How many client keys the engine holds (8 bytes, big-endian), kept by [`Kv`] in every applied
    /// batch so `DBSIZE` is O(1). Missing (an engine from before it, or a restored one): counted
    /// once at open.
    KeyCount,
    /// The state machine's clock (8 bytes, big-endian, unix milliseconds): the latest leader
    /// timestamp any applied entry carried. Expiry is judged against it, so every replica and every
    /// replay expires the same keys at the same entry.
    Clock,
    /// The format of stored values ([`value::VALUE_FORMAT`], one byte).
    ValueFormat,
    /// The index of the last applied entry that deleted a key (8 bytes, big-endian): what a WATCH
    /// of an absent key is compared with.
    LastDelete,
}

impl MetaKey {
    pub(crate) fn id(self) -> u8 {
        match self {
            MetaKey::AppliedIndex => 1,
            MetaKey::AppliedTerm => 2,
            MetaKey::KeyCount => 3,
            MetaKey::Clock => 4,
            MetaKey::ValueFormat => 5,
            MetaKey::LastDelete => 6,
        }
    }

    pub(crate) fn from_id(id: u8) -> Option<MetaKey> {
        match id {
            1 => Some(MetaKey::AppliedIndex),
            2 => Some(MetaKey::AppliedTerm),
            3 => Some(MetaKey::KeyCount),
            4 => Some(MetaKey::Clock),
            5 => Some(MetaKey::ValueFormat),
            6 => Some(MetaKey::LastDelete),
            _ => None,
        }
    }
}

/// Errors of the FSM and its engines.
#[derive(Debug, thiserror::Error)]
pub enum FsmError {
    #[error("FSM I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("FSM journal: {0}")]
    Journal(#[from] WalError),
    #[error("corrupt FSM file {path} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("RocksDB: {0}")]
    Rocks(String),
    #[error("the engine is poisoned by an earlier failed write; restart the node to recover")]
    Poisoned,
    #[error("raft entry {index} applied out of order: the applied index is {applied}")]
    OutOfOrder { index: u64, applied: u64 },
    #[error("invalid FSM setting: {0}")]
    InvalidConfig(String),
    #[error("applying raft entry {index} failed: {source}")]
    Apply { index: u64, source: io::Error },
}

/// A storage engine for the state machine.
pub trait Engine: Send + Sync + fmt::Debug {
    /// Apply `batch` atomically; with [`WriteMode::Sync`] it is durable when this returns.
    fn write(&self, batch: &WriteBatch, mode: WriteMode) -> Result<(), FsmError>;

    /// A client key's value.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError>;

    /// Client keys in `[start, end)` (`end = None`: to the last key), in order, at most `limit`.
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KeyValues, FsmError>;

    /// A meta value.
    fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, FsmError>;

    /// Make every earlier write durable.
    fn flush(&self) -> Result<(), FsmError>;

    /// Run `f` over a consistent point-in-time view; writes may go on meanwhile without showing in it.
    fn with_snapshot(
        &self,
        f: &mut dyn FnMut(&dyn EngineSnapshot) -> Result<(), FsmError>,
    ) -> Result<(), FsmError>;

    /// Start replacing the whole state (a snapshot restore). Nothing is visible until
    /// [`RestoreTarget::commit`] swaps the restored state in; dropping the target discards it (D8).
    fn begin_restore(&self) -> Result<Box<dyn RestoreTarget + '_>, FsmError>;

    /// Keys of the expiry index ([`value::index_key`]) from `start`, in order, at most `limit`.
    fn index_scan(&self, start: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, FsmError>;

    /// Client keys starting with `prefix`, in order, at most `limit`.
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<KeyValues, FsmError> {
        let end = prefix_end(prefix);
        self.scan(prefix, end.as_deref(), limit)
    }

    /// The durable-or-not applied index: `None` when it is missing or not exactly 8 bytes (treat as
    /// "unknown", never as 0 of a fresh store by accident).
    fn applied_index(&self) -> Result<Option<u64>, FsmError> {
        Ok(self.meta(MetaKey::AppliedIndex)?.as_deref().and_then(decode_u64))
    }
}

impl<E: Engine + ?Sized> Engine for Box<E> {
    fn write(&self, batch: &WriteBatch, mode: WriteMode) -> Result<(), FsmError> {
        (**self).write(batch, mode)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
        (**self).get(key)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KeyValues, FsmError> {
        (**self).scan(start, end, limit)
    }

    fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, FsmError> {
        (**self).meta(key)
    }

    fn flush(&self) -> Result<(), FsmError> {
        (**self).flush()
    }

    fn with_snapshot(
        &self,
        f: &mut dyn FnMut(&dyn EngineSnapshot) -> Result<(), FsmError>,
    ) -> Result<(), FsmError> {
        (**self).with_snapshot(f)
    }

    fn begin_restore(&self) -> Result<Box<dyn RestoreTarget + '_>, FsmError> {
        (**self).begin_restore()
    }

    fn index_scan(&self, start: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, FsmError> {
        (**self).index_scan(start, limit)
    }
}

/// A restore in progress: a fresh location filled key by key, swapped in only on commit.
pub trait RestoreTarget {
    /// Add a client key (keys arrive in ascending order).
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), FsmError>;

    /// Add an expiry index key (rebuilt from the values' deadlines as they arrive).
    fn put_index(&mut self, key: &[u8]) -> Result<(), FsmError>;

    /// Set a meta value of the restored state (its clock).
    fn put_meta(&mut self, key: MetaKey, value: &[u8]) -> Result<(), FsmError>;

    /// Replace the engine's whole state with what was put, recording `applied_index` and
    /// `applied_term`, atomically and durably.
    fn commit(self: Box<Self>, applied_index: u64, applied_term: u64) -> Result<(), FsmError>;
}

/// A point-in-time view of an engine.
pub trait EngineSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError>;

    fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, FsmError>;

    /// Visit client keys from `start` in order until `visit` returns `false`.
    fn for_each(&self, start: &[u8], visit: &mut Visitor<'_>) -> Result<(), FsmError>;
}

/// The smallest key greater than every key that starts with `prefix` (`None`: no such key).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Decode an 8-byte big-endian integer; anything else is `None`.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// Internal key layout shared by the engines: one byte of namespace, then the key.
pub(crate) mod keys {
    use super::MetaKey;

    pub const META: u8 = b'm';
    pub const DATA: u8 = b'd';
    /// One past the data namespace: the exclusive end of "every client key".
    pub const DATA_END: u8 = b'e';
    /// The expiry index ([`super::value::index_key`]), after the metas.
    pub const INDEX: u8 = b'x';
    pub const INDEX_END: u8 = b'y';

    pub fn index(key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(INDEX);
        k.extend_from_slice(key);
        k
    }

    pub fn data(key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(DATA);
        k.extend_from_slice(key);
        k
    }

    pub fn data_end(end: Option<&[u8]>) -> Vec<u8> {
        match end {
            Some(e) => data(e),
            None => vec![DATA_END],
        }
    }

    pub fn meta(key: MetaKey) -> Vec<u8> {
        vec![META, key.id()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_skips_ff_bytes() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn applied_index_needs_exactly_eight_bytes() {
        assert_eq!(decode_u64(&7u64.to_be_bytes()), Some(7));
        assert_eq!(decode_u64(&[0, 1]), None);
    }

    #[test]
    fn namespaces_do_not_overlap() {
        // Every client key sorts inside [data(""), data_end(None)); meta keys sort outside it.
        assert!(keys::meta(MetaKey::AppliedIndex) >= keys::data_end(None));
        assert!(keys::data(b"") < keys::data_end(None));
        assert!(keys::data(&[0xFF; 64]) < keys::data_end(None));
        assert_eq!(MetaKey::from_id(MetaKey::AppliedTerm.id()), Some(MetaKey::AppliedTerm));
    }
}
