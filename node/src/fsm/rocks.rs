//! [`RocksEngine`]: the production engine on RocksDB.
//!
//! RocksDB owns its files (its own WAL, SSTs, MANIFEST), so they do not go through the `Fs` trait;
//! [`super::SimEngine`] stands in for it under simulation and honours the same contract, which the
//! shared conformance suite and the real-process kill test check.

use std::path::{Path, PathBuf};

use rocksdb::{DB, DBCompressionType, DBRecoveryMode, Direction, IteratorMode, Options, WriteOptions};

use super::{Engine, EngineSnapshot, FsmError, KeyValues, MetaKey, Op, Visitor, WriteBatch, WriteMode, keys};

fn rocks(e: rocksdb::Error) -> FsmError {
    FsmError::Rocks(e.into_string())
}

/// RocksDB with durakv's key layout and write modes.
pub struct RocksEngine {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine").field("path", &self.path).finish_non_exhaustive()
    }
}

impl RocksEngine {
    /// Open (or create) the database in `path`.
    pub fn open(path: &Path) -> Result<RocksEngine, FsmError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // Point-in-time recovery replays RocksDB's WAL up to the first damaged record and stops: a
        // torn tail of unsynced (`NoSync`) batches is dropped as a whole suffix, and a batch is never
        // half applied. That is exactly the contract the raft log's replay relies on (D2).
        opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        // Verify checksums on open and while compacting: corruption surfaces as an error, never as
        // silently wrong data.
        opts.set_paranoid_checks(true);
        // Values are client data of unknown shape; LZ4 is cheap enough to leave on everywhere.
        opts.set_compression_type(DBCompressionType::Lz4);
        // Two background jobs: this store shares a small machine with raft and the RESP port.
        opts.set_max_background_jobs(2);
        // Write back SST data in 1 MiB steps so flushes and compactions do not stall on one huge
        // fsync at the end.
        opts.set_bytes_per_sync(1 << 20);
        let db = DB::open(&opts, path).map_err(rocks)?;
        Ok(RocksEngine { db, path: path.to_path_buf() })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
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
        self.db.write_opt(to_rocks_batch(batch), &wo).map_err(rocks)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
        self.db.get(keys::data(key)).map_err(rocks)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KeyValues, FsmError> {
        let lo = keys::data(start);
        let hi = keys::data_end(end);
        let mut out = Vec::new();
        if lo >= hi || limit == 0 {
            return Ok(out);
        }
        let iter = self.db.iterator(IteratorMode::From(&lo, Direction::Forward));
        visit_from(iter, &hi, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, FsmError> {
        self.db.get(keys::meta(key)).map_err(rocks)
    }

    fn flush(&self) -> Result<(), FsmError> {
        // fsync RocksDB's WAL: every earlier write, synced or not, is now durable.
        self.db.flush_wal(true).map_err(rocks)
    }

    fn with_snapshot(
        &self,
        f: &mut dyn FnMut(&dyn EngineSnapshot) -> Result<(), FsmError>,
    ) -> Result<(), FsmError> {
        let snap = RocksSnapshot { snap: self.db.snapshot() };
        f(&snap)
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
