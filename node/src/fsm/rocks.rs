//! [`RocksEngine`]: the production engine on RocksDB.
//!
//! RocksDB owns its files (its own WAL, SSTs, MANIFEST), so they do not go through the `Fs` trait;
//! [`super::SimEngine`] stands in for it under simulation and honours the same contract, which the
//! shared conformance suite and the real-process kill test check.
//!
//! Layout of the engine's directory: one or more RocksDB directories `db-<n>` and the file `CURRENT_DB`
//! naming the live one. A restore builds a fresh `db-<n+1>`, flushes it, and swaps by rewriting
//! `CURRENT_DB` (tmp → fsync → rename → fsync dir): after any crash the pointer names a complete
//! database, old or new. Directories it does not name are leftovers and are removed at open.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use rocksdb::{DB, DBCompressionType, DBRecoveryMode, Direction, IteratorMode, Options, WriteOptions};

use super::{
    Engine, EngineSnapshot, FsmError, KeyValues, MetaKey, Op, RestoreTarget, Visitor, WriteBatch, WriteMode,
    keys, restored_metas,
};
use crate::io::{Fs, RealFs, read_file, write_file_durably};

fn rocks(e: rocksdb::Error) -> FsmError {
    FsmError::Rocks(e.into_string())
}

const POINTER: &str = "CURRENT_DB";
/// Flush a restore's write batch to RocksDB every this many bytes (bounded memory).
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// RocksDB with durakv's key layout and write modes.
pub struct RocksEngine {
    db: RwLock<DB>,
    root: PathBuf,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine").field("root", &self.root).finish_non_exhaustive()
    }
}

fn options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    // Point-in-time recovery replays RocksDB's WAL up to the first damaged record and stops: a torn
    // tail of unsynced (`NoSync`) batches is dropped as a whole suffix, and a batch is never half
    // applied. That is exactly the contract the raft log's replay relies on (D2).
    opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    // Verify checksums on open and while compacting: corruption surfaces as an error, never as
    // silently wrong data.
    opts.set_paranoid_checks(true);
    // Values are client data of unknown shape; LZ4 is cheap enough to leave on everywhere.
    opts.set_compression_type(DBCompressionType::Lz4);
    // Two background jobs: this store shares a small machine with raft and the RESP port.
    opts.set_max_background_jobs(2);
    // Write back SST data in 1 MiB steps so flushes and compactions do not stall on one huge fsync at
    // the end.
    opts.set_bytes_per_sync(1 << 20);
    opts
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FsmError + '_ {
    move |source| FsmError::Io { path: path.to_path_buf(), source }
}

/// The number of a `db-<n>` directory name.
fn db_number(name: &str) -> Option<u64> {
    name.strip_prefix("db-")?.parse().ok()
}

impl RocksEngine {
    /// Open (or create) the engine in the directory `root`.
    pub fn open(root: &Path) -> Result<RocksEngine, FsmError> {
        let fs = RealFs::new();
        if !fs.exists(root).map_err(io(root))? {
            fs.create_dir_all(root).map_err(io(root))?;
            // The engine's directory must survive a power loss before anything in it is acknowledged.
            fs.sync_dir(crate::io::parent_dir(root)).map_err(io(root))?;
        }
        let pointer = root.join(POINTER);
        let live = if fs.exists(&pointer).map_err(io(&pointer))? {
            let name = read_file(&fs, &pointer).map_err(io(&pointer))?;
            String::from_utf8(name).ok().filter(|n| db_number(n).is_some()).ok_or_else(|| {
                FsmError::Corrupt { path: pointer.clone(), offset: 0, reason: "not a db-<n> name".into() }
            })?
        } else {
            "db-0".to_string()
        };
        // Remove databases the pointer does not name: restores that crashed before their swap, and
        // the database a completed swap replaced.
        for entry in fs.read_dir(root).map_err(io(root))? {
            if entry.name != live && db_number(&entry.name).is_some() {
                let _ = std::fs::remove_dir_all(root.join(&entry.name));
            }
        }
        let db = DB::open(&options(), root.join(&live)).map_err(rocks)?;
        Ok(RocksEngine { db: RwLock::new(db), root: root.to_path_buf() })
    }

    /// Where the engine lives.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn db(&self) -> RwLockReadGuard<'_, DB> {
        // A panic while swapping databases is a bug; the lock still guards a usable handle.
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// A restore into a fresh RocksDB directory, swapped in by rewriting the pointer on commit.
struct RocksRestore<'a> {
    engine: &'a RocksEngine,
    db: Option<DB>,
    dir: PathBuf,
    name: String,
    batch: rocksdb::WriteBatch,
}

impl RocksRestore<'_> {
    fn flush_batch(&mut self) -> Result<(), FsmError> {
        let batch = std::mem::take(&mut self.batch);
        let mut wo = WriteOptions::default();
        // The fresh database is made durable as a whole by the flush in `commit`; until the pointer
        // names it, a crash simply discards it.
        wo.disable_wal(true);
        match &self.db {
            Some(db) => db.write_opt(batch, &wo).map_err(rocks),
            None => Err(FsmError::Rocks("restore target already closed".into())),
        }
    }
}

impl RestoreTarget for RocksRestore<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), FsmError> {
        self.batch.put(keys::data(key), value);
        if self.batch.size_in_bytes() >= RESTORE_BATCH_BYTES {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>, applied_index: u64, applied_term: u64) -> Result<(), FsmError> {
        let mut metas = WriteBatch::new();
        restored_metas(&mut metas, applied_index, applied_term);
        for (key, value) in metas.metas() {
            self.batch.put(keys::meta(*key), value);
        }
        self.flush_batch()?;
        let db = self.db.take().ok_or_else(|| FsmError::Rocks("restore target already closed".into()))?;
        // Memtables to SST files, fsynced: the fresh database is complete on disk before anything
        // points at it.
        db.flush().map_err(rocks)?;
        drop(db);
        let pointer = self.engine.root.join(POINTER);
        // The swap: after any crash the pointer names the old database or the complete new one.
        write_file_durably(&RealFs::new(), &pointer, self.name.as_bytes()).map_err(io(&pointer))?;
        let fresh = DB::open(&options(), &self.dir).map_err(rocks)?;
        let mut live = self.engine.db.write().unwrap_or_else(|p| p.into_inner());
        let old_path = live.path().to_path_buf();
        *live = fresh;
        drop(live);
        // The old database is unreachable now; a crash before this removal is cleaned up at open.
        let _ = std::fs::remove_dir_all(old_path);
        self.dir = PathBuf::new();
        Ok(())
    }
}

impl Drop for RocksRestore<'_> {
    fn drop(&mut self) {
        // Not committed: discard the fresh database.
        if let Some(db) = self.db.take() {
            drop(db);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn to_rocks_batch(batch: &WriteBatch) -> rocksdb::WriteBatch {
    let mut wb = rocksdb::WriteBatch::default();
    for op in batch.ops() {
        match op {
            Op::Put { key, value } => wb.put(keys::data(key), value),
            Op::Delete { key } => wb.delete(keys::data(key)),
            Op::DeleteRange { start, end } => {
                let lo = keys::data(start);
                let hi = keys::data_end(end.as_deref());
                if lo < hi {
                    wb.delete_range(lo, hi);
                }
            }
        }
    }
    for (key, value) in batch.metas() {
        wb.put(keys::meta(*key), value);
    }
    wb
}

/// Iterate client keys from `start` (internal iterator mode) while `visit` says so.
fn visit_from<'a, I>(iter: I, end: &[u8], visit: &mut Visitor<'_>) -> Result<(), FsmError>
where
    I: Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + 'a,
{
    for item in iter {
        let (k, v) = item.map_err(rocks)?;
        if &*k >= end {
            break;
        }
        if !visit(&k[1..], &v)? {
            break;
        }
    }
    Ok(())
}

impl Engine for RocksEngine {
    fn write(&self, batch: &WriteBatch, mode: WriteMode) -> Result<(), FsmError> {
        let mut wo = WriteOptions::default();
        // Sync: fsync RocksDB's WAL before returning. NoSync: the write reaches the OS (survives a
        // process kill) but not necessarily the media.
        wo.set_sync(mode == WriteMode::Sync);
        self.db().write_opt(to_rocks_batch(batch), &wo).map_err(rocks)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
        self.db().get(keys::data(key)).map_err(rocks)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KeyValues, FsmError> {
        let lo = keys::data(start);
        let hi = keys::data_end(end);
        let mut out = Vec::new();
        if lo >= hi || limit == 0 {
            return Ok(out);
        }
        let db = self.db();
        let iter = db.iterator(IteratorMode::From(&lo, Direction::Forward));
        visit_from(iter, &hi, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, FsmError> {
        self.db().get(keys::meta(key)).map_err(rocks)
    }

    fn flush(&self) -> Result<(), FsmError> {
        // fsync RocksDB's WAL: every earlier write, synced or not, is now durable.
        self.db().flush_wal(true).map_err(rocks)
    }

    fn with_snapshot(
        &self,
        f: &mut dyn FnMut(&dyn EngineSnapshot) -> Result<(), FsmError>,
    ) -> Result<(), FsmError> {
        let db = self.db();
        let snap = RocksSnapshot { snap: db.snapshot() };
        f(&snap)
    }

    fn begin_restore(&self) -> Result<Box<dyn RestoreTarget + '_>, FsmError> {
        let fs = RealFs::new();
        let mut next = 0;
        for entry in fs.read_dir(&self.root).map_err(io(&self.root))? {
            if let Some(n) = db_number(&entry.name) {
                next = next.max(n + 1);
            }
        }
        let name = format!("db-{next}");
        let dir = self.root.join(&name);
        let db = DB::open(&options(), &dir).map_err(rocks)?;
        Ok(Box::new(RocksRestore {
            engine: self,
            db: Some(db),
            dir,
            name,
            batch: rocksdb::WriteBatch::default(),
        }))
    }
}

struct RocksSnapshot<'a> {
    snap: rocksdb::Snapshot<'a>,
}

impl EngineSnapshot for RocksSnapshot<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
        self.snap.get(keys::data(key)).map_err(rocks)
    }

    fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, FsmError> {
        self.snap.get(keys::meta(key)).map_err(rocks)
    }

    fn for_each(&self, start: &[u8], visit: &mut Visitor<'_>) -> Result<(), FsmError> {
        let lo = keys::data(start);
        let iter = self.snap.iterator(IteratorMode::From(&lo, Direction::Forward));
        visit_from(iter, &keys::data_end(None), visit)
    }
}
