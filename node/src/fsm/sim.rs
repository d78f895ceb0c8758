//! [`SimEngine`]: a deterministic storage engine whose files live on the [`Fs`](crate::io::Fs).
//!
//! It is what the simulation runs instead of RocksDB, so it honours the same contract as RocksDB with
//! its WAL at `sync=false`:
//!
//! * every batch is one entry of a journal (a [`Wal`]); `Sync` batches are appended and fsynced,
//!   `NoSync` batches are appended without an fsync. The journal's recovery treats a torn tail as the
//!   raft WAL does (repair) and corruption as a typed error, so after any crash a batch is whole or
//!   absent, and what survives is a prefix of the batches in order;
//! * the state is a sorted map in memory, shared copy-on-write with snapshots (a snapshot costs one
//!   reference; the first write after it copies the map once);
//! * once the journal grows past `checkpoint_after_bytes`, the whole state is written to `checkpoint`
//!   (tmp → fsync → rename → fsync dir) and the journal is compacted below it, which bounds the
//!   journal's disk and index memory.
//!
//! Files in its directory: `checkpoint` (format below), `journal/` (WAL segments).
//!
//! ```text
//! checkpoint := magic "DKVSIMCK" (8), version u16 = 1, reserved u16 = 0, seq u64, count u64,
//!               count × (key_len u32, value_len u32, key, value), crc32c u32 over everything before
//! ```
//! `seq` is the last journal entry the checkpoint contains. Keys are the engine's internal keys
//! (namespace byte + key), so meta values are checkpointed with the data.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    Engine, EngineSnapshot, FsmError, KeyValues, MetaKey, Op, RestoreTarget, Visitor, WriteBatch, WriteMode,
    keys, restored_metas,
};
use crate::codec::{be_u32, be_u64};
use crate::io::{SharedFs, ensure_dir_durable, read_file, write_file_durably};
use crate::wal::{Batch, Wal, WalOptions};

const CHECKPOINT_MAGIC: [u8; 8] = *b"DKVSIMCK";
const CHECKPOINT_VERSION: u16 = 1;
const CHECKPOINT_HEADER_LEN: usize = 28;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// Settings of [`SimEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEngineOptions {
    /// Write a checkpoint and compact the journal once this many journal bytes were written since the
    /// last one. Default 4 MiB; minimum 1.
    pub checkpoint_after_bytes: u64,
    /// The journal's WAL settings.
    pub journal: WalOptions,
}

impl Default for SimEngineOptions {
    fn default() -> Self {
        SimEngineOptions { checkpoint_after_bytes: 4 << 20, journal: WalOptions::default() }
    }
}

#[derive(Debug)]
struct Inner {
    fs: SharedFs,
    checkpoint_path: PathBuf,
    journal: Wal,
    state: Arc<Map>,
    /// The last journal entry written.
    seq: u64,
    bytes_since_checkpoint: u64,
    opts: SimEngineOptions,
    poisoned: bool,
}

/// The deterministic engine. See the module documentation.
#[derive(Debug)]
pub struct SimEngine {
    inner: Mutex<Inner>,
}

impl SimEngine {
    /// Open (or create) the engine in `dir`: load the checkpoint, replay the journal past it.
    pub fn open(fs: SharedFs, dir: &Path, opts: SimEngineOptions) -> Result<SimEngine, FsmError> {
        if opts.checkpoint_after_bytes == 0 {
            return Err(FsmError::InvalidConfig("checkpoint_after_bytes must be at least 1".into()));
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FsmError::Io { path, source }
        };
        // The engine's directory must survive a power loss before anything in it is acknowledged.
        ensure_dir_durable(&*fs, dir).map_err(io(dir))?;
        let checkpoint_path = dir.join("checkpoint");
        let (mut state, checkpoint_seq) = if fs.exists(&checkpoint_path).map_err(io(&checkpoint_path))? {
            let bytes = read_file(&*fs, &checkpoint_path).map_err(io(&checkpoint_path))?;
            decode_checkpoint(&bytes).map_err(|(offset, reason)| FsmError::Corrupt {
                path: checkpoint_path.clone(),
                offset,
                reason: reason.to_string(),
            })?
        } else {
            (Map::new(), 0)
        };
        if checkpoint_seq == u64::MAX {
            return Err(FsmError::Corrupt {
                path: checkpoint_path,
                offset: 12,
                reason: "checkpoint sequence number is at its maximum".into(),
            });
        }
        let (mut journal, _report) = Wal::open(fs.clone(), &dir.join("journal"), opts.journal.clone())?;
        let mut seq = checkpoint_seq;
        if let (Some(first), Some(last)) = (journal.first_index(), journal.last_index())
            && last > checkpoint_seq
        {
            if first > checkpoint_seq + 1 {
                return Err(FsmError::Corrupt {
                    path: dir.join("journal"),
                    offset: 0,
                    reason: format!(
                        "journal starts at entry {first}, after a gap past checkpoint {checkpoint_seq}"
                    ),
                });
            }
            for index in first.max(checkpoint_seq + 1)..=last {
                let entry = journal.entry(index)?;
                let batch = WriteBatch::decode(&entry.data).map_err(|e| FsmError::Corrupt {
                    path: dir.join("journal"),
                    offset: e.at as u64,
                    reason: format!("journal entry {index}: {e}"),
                })?;
                apply(&mut state, &batch);
                seq = index;
            }
        }
        if checkpoint_seq > 0 && journal.last_index().is_none_or(|last| last < checkpoint_seq) {
            // The journal lost entries the checkpoint already holds (or was never written): restart
            // its numbering after the checkpoint so no new entry reuses a checkpointed index.
            journal.compact(checkpoint_seq + 1)?;
        }
        Ok(SimEngine {
            inner: Mutex::new(Inner {
                fs,
                checkpoint_path,
                journal,
                state: Arc::new(state),
                seq,
                bytes_since_checkpoint: 0,
                opts,
                poisoned: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under this lock is a bug; the state it left is still the best we have.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write a checkpoint now and compact the journal below it.
    pub fn checkpoint(&self) -> Result<(), FsmError> {
        let mut inner = self.lock();
        inner.checkpoint()
    }
}

impl Inner {
    fn checkpoint(&mut self) -> Result<(), FsmError> {
        // Everything the checkpoint will claim is made durable in the journal first, so a checkpoint
        // never holds a batch the journal could still lose (the replay order stays a prefix).
        self.journal.sync()?;
        let bytes = encode_checkpoint(&self.state, self.seq);
        // tmp → fsync → rename → fsync(dir): `checkpoint` is always a complete old or new file.
        write_file_durably(&*self.fs, &self.checkpoint_path, &bytes)
            .map_err(|source| FsmError::Io { path: self.checkpoint_path.clone(), source })?;
        // Only once the checkpoint is durable may the journal forget what it holds.
        self.journal.compact(self.seq + 1)?;
        self.bytes_since_checkpoint = 0;
        Ok(())
    }
}

fn apply(state: &mut Map, batch: &WriteBatch) {
    for op in batch.ops() {
        match op {
            Op::Put { key, value } => {
                state.insert(keys::data(key), value.clone());
            }
            Op::Delete { key } => {
                state.remove(&keys::data(key));
            }
            Op::DeleteRange { start, end } => {
                let lo = keys::data(start);
                let hi = keys::data_end(end.as_deref());
                if lo < hi {
                    let doomed: Vec<Vec<u8>> = state.range(lo..hi).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        state.remove(&k);
                    }
                }
            }
            Op::PutIndex { key } => {
                state.insert(keys::index(key), Vec::new());
            }
            Op::DeleteIndex { key } => {
                state.remove(&keys::index(key));
            }
            Op::ClearIndex => {
                let doomed: Vec<Vec<u8>> =
                    state.range(vec![keys::INDEX]..vec![keys::INDEX_END]).map(|(k, _)| k.clone()).collect();
                for k in doomed {
                    state.remove(&k);
                }
            }
        }
    }
    for (key, value) in batch.metas() {
        state.insert(keys::meta(*key), value.clone());
    }
}

fn scan_map(state: &Map, start: &[u8], end: Option<&[u8]>, limit: usize) -> KeyValues {
    let lo = keys::data(start);
    let hi = keys::data_end(end);
    if lo >= hi {
        return Vec::new();
    }
    state.range(lo..hi).take(limit).map(|(k, v)| (k[1..].to_vec(), v.clone())).collect()
}

impl Engine for SimEngine {
    fn write(&self, batch: &WriteBatch, mode: WriteMode) -> Result<(), FsmError> {
        let mut inner = self.lock();
        if inner.poisoned {
            return Err(FsmError::Poisoned);
        }
        let data = batch.encode();
        let len = data.len() as u64;
        let next = inner.seq + 1;
        let mut entry = Batch::new();
        entry.entry(next, 0, data);
        let result = match mode {
            WriteMode::Sync => inner.journal.append(&entry),
            WriteMode::NoSync => inner.journal.append_unsynced(&entry),
        };
        if let Err(e) = result {
            inner.poisoned = true;
            return Err(e.into());
        }
        inner.seq = next;
        apply(Arc::make_mut(&mut inner.state), batch);
        inner.bytes_since_checkpoint += len;
        if inner.bytes_since_checkpoint >= inner.opts.checkpoint_after_bytes
            && let Err(e) = inner.checkpoint()
        {
            // The batch itself is written; a failed checkpoint leaves the files in a state recovery
            // handles, but this process must not write on.
            inner.poisoned = true;
            return Err(e);
        }
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
        Ok(self.lock().state.get(&keys::data(key)).cloned())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KeyValues, FsmError> {
        Ok(scan_map(&self.lock().state, start, end, limit))
    }

    fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, FsmError> {
        Ok(self.lock().state.get(&keys::meta(key)).cloned())
    }

    fn flush(&self) -> Result<(), FsmError> {
        let mut inner = self.lock();
        if inner.poisoned {
            return Err(FsmError::Poisoned);
        }
        // Every earlier batch, `NoSync` ones included, becomes durable: the caller may now compact
        // the raft log up to the applied index (D2).
        inner.journal.sync().map_err(|e| {
            inner.poisoned = true;
            e.into()
        })
    }

    fn with_snapshot(
        &self,
        f: &mut dyn FnMut(&dyn EngineSnapshot) -> Result<(), FsmError>,
    ) -> Result<(), FsmError> {
        let state = Arc::clone(&self.lock().state);
        f(&SimSnapshot { state })
    }

    fn begin_restore(&self) -> Result<Box<dyn RestoreTarget + '_>, FsmError> {
        Ok(Box::new(SimRestore { engine: self, state: Map::new() }))
    }

    fn index_scan(&self, start: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, FsmError> {
        let inner = self.lock();
        let range = inner.state.range(keys::index(start)..vec![keys::INDEX_END]);
        Ok(range.take(limit).map(|(k, _)| k[1..].to_vec()).collect())
    }
}

/// A restore into a fresh map; `commit` checkpoints it and swaps it in.
struct SimRestore<'a> {
    engine: &'a SimEngine,
    state: Map,
}

impl RestoreTarget for SimRestore<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), FsmError> {
        self.state.insert(keys::data(key), value.to_vec());
        Ok(())
    }

    fn put_index(&mut self, key: &[u8]) -> Result<(), FsmError> {
        self.state.insert(keys::index(key), Vec::new());
        Ok(())
    }

    fn put_meta(&mut self, key: MetaKey, value: &[u8]) -> Result<(), FsmError> {
        self.state.insert(keys::meta(key), value.to_vec());
        Ok(())
    }

    fn commit(mut self: Box<Self>, applied_index: u64, applied_term: u64) -> Result<(), FsmError> {
        let mut metas = WriteBatch::new();
        restored_metas(&mut metas, applied_index, applied_term);
        apply(&mut self.state, &metas);
        let mut inner = self.engine.lock();
        if inner.poisoned {
            return Err(FsmError::Poisoned);
        }
        // The restored state becomes a checkpoint at a journal position no entry used yet, so replay
        // after a crash never applies a pre-restore batch on top of it. The checkpoint's rename is the
        // atomic swap on disk; the in-memory swap is kept only once it is durable.
        let restored_seq = inner.seq + 1;
        let previous = std::mem::replace(&mut inner.state, Arc::new(std::mem::take(&mut self.state)));
        let previous_seq = std::mem::replace(&mut inner.seq, restored_seq);
        if let Err(e) = inner.checkpoint() {
            inner.state = previous;
            inner.seq = previous_seq;
            // Whether the new checkpoint reached the disk is unknown: stop writing until a restart.
            inner.poisoned = true;
            return Err(e);
        }
        Ok(())
    }
}

struct SimSnapshot {
    state: Arc<Map>,
}

impl EngineSnapshot for SimSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
        Ok(self.state.get(&keys::data(key)).cloned())
    }

    fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, FsmError> {
        Ok(self.state.get(&keys::meta(key)).cloned())
    }

    fn for_each(&self, start: &[u8], visit: &mut Visitor<'_>) -> Result<(), FsmError> {
        let lo = keys::data(start);
        let hi = keys::data_end(None);
        for (k, v) in self.state.range::<Vec<u8>, _>((Bound::Included(lo), Bound::Excluded(hi))) {
            if !visit(&k[1..], v)? {
                break;
            }
        }
        Ok(())
    }
}

fn encode_checkpoint(state: &Map, seq: u64) -> Vec<u8> {
    let body: usize = state.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(CHECKPOINT_HEADER_LEN + body + 4);
    out.extend_from_slice(&CHECKPOINT_MAGIC);
    out.extend_from_slice(&CHECKPOINT_VERSION.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(state.len() as u64).to_be_bytes());
    for (k, v) in state {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Decode a checkpoint; on error, the offset and what is wrong. Never panics.
fn decode_checkpoint(bytes: &[u8]) -> Result<(Map, u64), (u64, &'static str)> {
    if bytes.len() < CHECKPOINT_HEADER_LEN + 4 {
        return Err((0, "shorter than header and footer"));
    }
    let (body, footer) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body).to_be_bytes() != footer {
        return Err(((bytes.len() - 4) as u64, "checksum mismatch"));
    }
    if body[0..8] != CHECKPOINT_MAGIC {
        return Err((0, "bad magic"));
    }
    if body[8..10] != CHECKPOINT_VERSION.to_be_bytes() {
        return Err((8, "unsupported version"));
    }
    let seq = be_u64(body, 12);
    let count = be_u64(body, 20);
    let mut state = Map::new();
    let mut at = CHECKPOINT_HEADER_LEN;
    for _ in 0..count {
        let lens = body.get(at..at + 8).ok_or((at as u64, "truncated entry header"))?;
        let klen = be_u32(lens, 0) as usize;
        let vlen = be_u32(lens, 4) as usize;
        let k_at = at + 8;
        let v_at = k_at.checked_add(klen).ok_or((at as u64, "key length overflows"))?;
        let end = v_at.checked_add(vlen).ok_or((at as u64, "value length overflows"))?;
        if end > body.len() {
            return Err((at as u64, "entry runs past the end"));
        }
        state.insert(body[k_at..v_at].to_vec(), body[v_at..end].to_vec());
        at = end;
    }
    if at != body.len() {
        return Err((at as u64, "trailing bytes"));
    }
    Ok((state, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_and_typed_errors() {
        let mut state = Map::new();
        state.insert(b"dk".to_vec(), b"v".to_vec());
        state.insert(keys::meta(MetaKey::AppliedIndex), 9u64.to_be_bytes().to_vec());
        let bytes = encode_checkpoint(&state, 9);
        assert_eq!(decode_checkpoint(&bytes), Ok((state, 9)));
        for cut in 0..bytes.len() {
            assert!(decode_checkpoint(&bytes[..cut]).is_err());
        }
        let mut flipped = bytes;
        flipped[30] ^= 1;
        assert_eq!(decode_checkpoint(&flipped).map_err(|e| e.1), Err("checksum mismatch"));
    }
}
