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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

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
    /// The live database. Readers clone the `Arc` and release the lock at once, so a long snapshot
    /// stream never holds up a restore's swap (nor the writes queued behind it).
    db: RwLock<Arc<LiveDb>>,
    root: PathBuf,
    /// Set when a restore failed after it began to swap the pointer: which database the pointer
    /// names is unknown, so this process must not acknowledge another write (like a failed fsync).
    poisoned: AtomicBool,
}

/// An open database; once replaced by a restore it is marked obsolete and its directory is removed
/// when the last reader lets go of it.
struct LiveDb {
    db: Option<DB>,
    obsolete: AtomicBool,
}

impl LiveDb {
    fn new(db: DB) -> Arc<LiveDb> {
        Arc::new(LiveDb { db: Some(db), obsolete: AtomicBool::new(false) })
    }

    fn db(&self) -> &DB {
        self.db.as_ref().expect("a LiveDb holds its database until it is dropped")
    }
}

impl Drop for LiveDb {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            let path = db.path().to_path_buf();
            drop(db);
            if self.obsolete.load(Ordering::Acquire) {
                // Unreachable since the swap; a crash before this removal is cleaned up at open.
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
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
    // The same for its WAL under `nosync` applies: never a large unsynced tail for the flush before a
    // snapshot (or a shutdown) to write back at once, in front of the raft WAL's fsyncs.
    opts.set_wal_bytes_per_sync(1 << 20);
    opts
}

/// Write bandwidth a snapshot restore may take (its memtable flushes and compactions). Unthrottled,
/// restoring a large snapshot writes as fast as the disk takes it, and the raft WAL's fsyncs (on the
/// raft loop, in front of its ticks and heartbeats) queue behind hundreds of MiB of writeback: a
/// 4 MiB append took over a second while a 1 GiB snapshot was restored (`make test-large-snapshot`).
const RESTORE_WRITE_BYTES_PER_SEC: i64 = 64 << 20;

/// The options of the fresh database a restore fills: [`options`], rate-limited.
fn restore_options() -> Options {
    let mut opts = options();
    opts.set_ratelimiter(RESTORE_WRITE_BYTES_PER_SEC, 100_000, 10);
    opts
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FsmError + '_ {
    move |source| FsmError::Io { path: path.to_path_buf(), source }
}

/// The number of a `db-<n>` directory name.
fn db_number(name: &str) -> Option<u64> {
    name.strip_prefix("db-")?.parse().ok()
}

/// Cut each of RocksDB's logs in `db_dir` at the first record header its reader would spin on forever
/// (see [`super::rocks_wal`]): a power loss's garbage in the unsynced tail. Each log is read one
/// block at a time. The bytes cut are kept in `root` (`<db>-<log>.cut`) for forensics, durably
/// before the log is cut, and the cut is logged.
fn cut_wal_where_rocksdb_would_spin(fs: &RealFs, root: &Path, db_dir: &Path) -> Result<(), FsmError> {
    use super::rocks_wal::{BLOCK_BYTES, stuck_in_block};
    use crate::io::OpenOptions;
    let mut logs: Vec<String> = fs
        .read_dir(db_dir)
        .map_err(io(db_dir))?
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.ends_with(".log"))
        .collect();
    logs.sort();
    for name in logs {
        let path = db_dir.join(&name);
        let mut file = fs.open(&path, OpenOptions::read_write()).map_err(io(&path))?;
        let len = file.len().map_err(io(&path))?;
        let mut stuck = None;
        let mut block_at = 0u64;
        while block_at < len && stuck.is_none() {
            let want = (len - block_at).min(BLOCK_BYTES as u64) as usize;
            let block = file.read_exact_vec_at(want, block_at).map_err(io(&path))?;
            stuck = stuck_in_block(&block).map(|at| block_at + at as u64);
            block_at += want as u64;
        }
        let Some(at) = stuck else { continue };
        let db = db_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let evidence = root.join(format!("{db}-{name}.cut"));
        copy_range_durably(fs, &*file, at..len, &evidence).map_err(io(&evidence))?;
        file.set_len(at).map_err(io(&path))?;
        // The cut is durable before RocksDB reads the log: a crash here repeats the same cut.
        file.sync().map_err(io(&path))?;
        tracing::warn!(
            path = %path.display(),
            offset = at,
            bytes = len - at,
            evidence = %evidence.display(),
            "RocksDB's log had a header its reader would spin on forever (unsynced bytes a power loss \
             left as garbage); cut it there"
        );
    }
    Ok(())
}

/// Copy `range` of `src` to `dest` in bounded chunks, durably (tmp, fsync, rename, fsync dir), so the
/// evidence exists whole before the bytes it keeps are cut from their log.
fn copy_range_durably(
    fs: &RealFs,
    src: &dyn crate::io::FsFile,
    range: std::ops::Range<u64>,
    dest: &Path,
) -> std::io::Result<()> {
    let tmp = crate::io::tmp_path(dest);
    let mut out = fs.open(&tmp, crate::io::OpenOptions::create_truncate())?;
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(1 << 20) as usize;
        let chunk = src.read_exact_vec_at(n, at)?;
        out.write_at(&chunk, at - range.start)?;
        at += n as u64;
    }
    // The copy's bytes are durable before its name points at them.
    out.sync()?;
    fs.rename(&tmp, dest)?;
    // The name is durable before the log is cut.
    fs.sync_dir(crate::io::parent_dir(dest))
}

impl RocksEngine {
    /// Open (or create) the engine in the directory `root`.
    pub fn open(root: &Path) -> Result<RocksEngine, FsmError> {
        let fs = RealFs::new();
        // The engine's directory must survive a power loss before anything in it is acknowledged.
        crate::io::ensure_dir_durable(&fs, root).map_err(io(root))?;
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
        // RocksDB fsyncs the files and the directory of a database, never the directory that names
        // it: a power loss after the first synced write could take `db-0` itself away, and
        // `create_if_missing` would then open an empty database in its place (found by
        // rocks_powerloss.rs). Its name is made durable here, before anything in it is acknowledged.
        let live_dir = root.join(&live);
        crate::io::ensure_dir_durable(&fs, &live_dir).map_err(io(&live_dir))?;
        cut_wal_where_rocksdb_would_spin(&fs, root, &live_dir)?;
        tracing::info!(path = %live_dir.display(), "opening the state machine's RocksDB");
        let db = DB::open(&options(), &live_dir).map_err(rocks)?;
        Ok(RocksEngine {
            db: RwLock::new(LiveDb::new(db)),
            root: root.to_path_buf(),
            poisoned: AtomicBool::new(false),
        })
    }

    /// Where the engine lives.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The live database, unless a failed restore poisoned the engine.
    fn live(&self) -> Result<Arc<LiveDb>, FsmError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(FsmError::Poisoned);
        }
        // A panic while swapping databases is a bug; the lock still guards a usable handle.
        Ok(Arc::clone(&self.db.read().unwrap_or_else(|p| p.into_inner())))
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

    fn put_index(&mut self, key: &[u8]) -> Result<(), FsmError> {
        self.batch.put(keys::index(key), []);
        if self.batch.size_in_bytes() >= RESTORE_BATCH_BYTES {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn put_meta(&mut self, key: MetaKey, value: &[u8]) -> Result<(), FsmError> {
        self.batch.put(keys::meta(key), value);
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
        // The swap: after any crash the pointer names the old database or the complete new one. From
        // here on a failure leaves it unknown which one the next open will use, so poison the engine.
        let swapped = write_file_durably(&RealFs::new(), &pointer, self.name.as_bytes())
            .map_err(io(&pointer))
            .and_then(|()| DB::open(&options(), &self.dir).map_err(rocks));
        let fresh = match swapped {
            Ok(db) => db,
            Err(e) => {
                self.engine.poisoned.store(true, Ordering::Release);
                return Err(e);
            }
        };
        let mut live = self.engine.db.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *live, LiveDb::new(fresh));
        drop(live);
        old.obsolete.store(true, Ordering::Release);
        drop(old);
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
            Op::PutIndex { key } => wb.put(keys::index(key), []),
            Op::DeleteIndex { key } => wb.delete(keys::index(key)),
            Op::ClearIndex => wb.delete_range([keys::INDEX], [keys::INDEX_END]),
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
        self.live()?.db().write_opt(to_rocks_batch(batch), &wo).map_err(rocks)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
        self.live()?.db().get(keys::data(key)).map_err(rocks)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KeyValues, FsmError> {
        let lo = keys::data(start);
        let hi = keys::data_end(end);
        let mut out = Vec::new();
        if lo >= hi || limit == 0 {
            return Ok(out);
        }
        let live = self.live()?;
        let iter = live.db().iterator(IteratorMode::From(&lo, Direction::Forward));
        visit_from(iter, &hi, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, FsmError> {
        self.live()?.db().get(keys::meta(key)).map_err(rocks)
    }

    fn flush(&self) -> Result<(), FsmError> {
        // fsync RocksDB's WAL: every earlier write, synced or not, is now durable.
        self.live()?.db().flush_wal(true).map_err(rocks)
    }

    fn with_snapshot(
        &self,
        f: &mut dyn FnMut(&dyn EngineSnapshot) -> Result<(), FsmError>,
    ) -> Result<(), FsmError> {
        let live = self.live()?;
        let snap = RocksSnapshot { snap: live.db().snapshot() };
        f(&snap)
    }

    fn begin_restore(&self) -> Result<Box<dyn RestoreTarget + '_>, FsmError> {
        self.live()?;
        let fs = RealFs::new();
        let mut next = 0;
        for entry in fs.read_dir(&self.root).map_err(io(&self.root))? {
            if let Some(n) = db_number(&entry.name) {
                next = next.max(n + 1);
            }
        }
        let name = format!("db-{next}");
        let dir = self.root.join(&name);
        let db = DB::open(&restore_options(), &dir).map_err(rocks)?;
        Ok(Box::new(RocksRestore {
            engine: self,
            db: Some(db),
            dir,
            name,
            batch: rocksdb::WriteBatch::default(),
        }))
    }

    fn index_scan(&self, start: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, FsmError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let live = self.live()?;
        let lo = keys::index(start);
        let iter = live.db().iterator(IteratorMode::From(&lo, Direction::Forward));
        visit_from(iter, &[keys::INDEX_END], &mut |k, _| {
            out.push(k.to_vec());
            Ok(out.len() < limit)
        })?;
        Ok(out)
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
