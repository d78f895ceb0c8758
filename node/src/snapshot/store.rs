//! The snapshot directory: listing, retention, start-up hygiene, and receive guards (D11).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::spool::{Spool, StreamInfo};
use super::{SnapshotError, io_err, parse_snapshot_name, snapshot_name};
use crate::io::{SharedFs, ensure_dir_durable};

#[derive(Debug, Default)]
struct Held {
    /// Receives in progress (or holding their finalized file) per snapshot index.
    by_index: BTreeMap<u64, usize>,
}

/// The snapshot directory and its spool directory.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    fs: SharedFs,
    dir: PathBuf,
    spool_dir: PathBuf,
    keep: usize,
    held: Arc<Mutex<Held>>,
    /// Names concurrent spools of one index apart; a plain counter, so runs stay deterministic.
    next_spool: Arc<AtomicU64>,
}

/// Holds a snapshot index while a receive (and the apply after it) is under way, or while a file is
/// sent, so retention never removes the file it needs.
#[derive(Debug)]
pub struct ReceiveGuard {
    index: u64,
    held: Arc<Mutex<Held>>,
}

impl ReceiveGuard {
    pub fn index(&self) -> u64 {
        self.index
    }
}

impl Drop for ReceiveGuard {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(n) = held.by_index.get_mut(&self.index) {
            *n -= 1;
            if *n == 0 {
                held.by_index.remove(&self.index);
            }
        }
    }
}

fn lock(held: &Mutex<Held>) -> MutexGuard<'_, Held> {
    // The counts stay meaningful even if a holder panicked.
    held.lock().unwrap_or_else(|p| p.into_inner())
}

impl SnapshotStore {
    /// Open the store, creating the directories, and remove leftovers of interrupted work: `.tmp`
    /// files and spool files in either directory. Keeps the newest `keep` snapshots (minimum 1).
    /// Returns the store and the paths it removed.
    pub fn open(
        fs: SharedFs,
        dir: &Path,
        spool_dir: &Path,
        keep: usize,
    ) -> Result<(SnapshotStore, Vec<PathBuf>), SnapshotError> {
        for d in [dir, spool_dir] {
            // The directory's name must survive a power loss before files in it are relied on.
            ensure_dir_durable(&*fs, d).map_err(io_err(d))?;
        }
        let mut removed = Vec::new();
        for d in [dir, spool_dir] {
            let mut any = false;
            for entry in fs.read_dir(d).map_err(io_err(d))? {
                if entry.name.ends_with(".tmp") || entry.name.contains(".spool-") {
                    let path = d.join(&entry.name);
                    fs.remove_file(&path).map_err(io_err(&path))?;
                    removed.push(path);
                    any = true;
                }
            }
            if any {
                // Not required for safety (a leftover that comes back is removed again), but it keeps
                // the disk from refilling with them after a power loss.
                fs.sync_dir(d).map_err(io_err(d))?;
            }
        }
        for path in &removed {
            tracing::info!(path = %path.display(), "removed a leftover of an interrupted snapshot write or receive");
        }
        let store = SnapshotStore {
            fs,
            dir: dir.to_path_buf(),
            spool_dir: spool_dir.to_path_buf(),
            keep: keep.max(1),
            held: Arc::new(Mutex::new(Held::default())),
            next_spool: Arc::new(AtomicU64::new(0)),
        };
        Ok((store, removed))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the snapshot at `index`.
    pub fn path(&self, index: u64) -> PathBuf {
        self.dir.join(snapshot_name(index))
    }

    /// Every snapshot file, oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
        let mut out: Vec<(u64, PathBuf)> = self
            .fs
            .read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .into_iter()
            .filter_map(|e| parse_snapshot_name(&e.name).map(|i| (i, self.dir.join(&e.name))))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The newest snapshot.
    pub fn latest(&self) -> Result<Option<(u64, PathBuf)>, SnapshotError> {
        Ok(self.list()?.pop())
    }

    /// Hold `index` for a receive (and its apply).
    pub fn begin_receive(&self, index: u64) -> ReceiveGuard {
        *lock(&self.held).by_index.entry(index).or_insert(0) += 1;
        ReceiveGuard { index, held: Arc::clone(&self.held) }
    }

    /// A spool for a receive held by `guard`.
    pub fn spool(
        &self,
        guard: &ReceiveGuard,
        info: StreamInfo,
        cap_bytes: u64,
    ) -> Result<Spool, SnapshotError> {
        if guard.index != info.index {
            return Err(SnapshotError::BadHeader(format!(
                "stream index {} does not match the held index {}",
                info.index, guard.index
            )));
        }
        let nonce = self.next_spool.fetch_add(1, Ordering::Relaxed);
        Spool::create(self.fs.clone(), &self.spool_dir, &self.dir, info, cap_bytes, nonce)
    }

    /// Keep the newest `keep` snapshots; remove the rest, except any index a receive holds.
    pub fn gc(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        self.gc_keeping(None)
    }

    /// Like [`SnapshotStore::gc`], and never remove the snapshot at `base` (the one the raft log is
    /// based on), even when newer received files outnumber the retention.
    pub fn gc_keeping(&self, base: Option<u64>) -> Result<Vec<PathBuf>, SnapshotError> {
        let all = self.list()?;
        let held = lock(&self.held);
        let doomed: Vec<PathBuf> = all
            .iter()
            .take(all.len().saturating_sub(self.keep))
            .filter(|(i, _)| !held.by_index.contains_key(i) && Some(*i) != base)
            .map(|(_, p)| p.clone())
            .collect();
        for path in &doomed {
            match self.fs.remove_file(path) {
                // Another retention pass (one runs off the raft loop) removed it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                removed => removed.map_err(io_err(path))?,
            }
        }
        drop(held);
        if !doomed.is_empty() {
            // Removals are made durable together; if they are lost, the next gc removes them again.
            self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        }
        Ok(doomed)
    }
}
