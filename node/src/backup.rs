//! Backups: a consistent snapshot of a running cluster taken through any node's client port, and a
//! new cluster seeded from one.
//!
//! * `BACKUP START` (client port) confirms a read index as any linearizable read does, then writes
//!   the state machine's point-in-time view, at or past that index, as a snapshot file in the
//!   existing checksummed format (`docs/formats.md`) under `<data_dir>/backups/`. Every write
//!   acknowledged before the command is in it. `BACKUP READ` streams the file out a chunk at a time,
//!   `BACKUP DONE` removes it; a start-up removes whatever an interrupted backup left.
//! * `durakv admin backup FILE` drives the three ([`crate::admin`]), checks the bytes end to end
//!   (length and CRC32C as announced, then the whole file as a snapshot), and makes `FILE` durable.
//! * `durakv restore FILE --data-dir DIR --voters 1,2,3` ([`restore`]) seeds an empty data
//!   directory: the file becomes the node's snapshot (its header's membership replaced by the new
//!   voters) and the raft log starts at its index, so the node restores it at start as after any
//!   snapshot install (D8, D9).

use std::path::{Path, PathBuf};

use prost::Message as _;

use crate::fsm::Engine;
use crate::io::{Fs, OpenOptions, SharedFs, ensure_dir_durable};
use crate::runtime::DataLayout;
use crate::snapshot::{
    SnapshotError, SnapshotFile, copy_with_conf_state, parse_snapshot_name, snapshot_name, token_of, verify,
    write_snapshot,
};
use crate::storage::{RaftStorage, SnapshotPointer, StorageLoadError};
use crate::wal::WalOptions;

/// The most one `BACKUP READ` returns.
pub const MAX_READ_BYTES: u64 = 4 << 20;

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("backup I/O on {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no backup named {0:?} on this node (BACKUP START names it)")]
    Unknown(String),
    #[error("a backup of the same index is being written on this node; retry shortly")]
    Busy,
    #[error("count {0} is outside 1..={MAX_READ_BYTES}")]
    BadCount(u64),
    #[error(
        "{} already holds a node's data ({what}): restore seeds only an empty data directory",
        path.display()
    )]
    NotEmpty { path: PathBuf, what: String },
    #[error("voters: {0}")]
    Voters(String),
    #[error("raft storage in {}: {source}", path.display())]
    Storage { path: PathBuf, source: StorageLoadError },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_path_buf(), source }
}

/// Where a node keeps backups being taken.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("backups")
}

/// Start-up: create the backup directory, durably, and remove what an earlier run left in it (a
/// backup nobody finished reading, or one cut short by a crash). Returns how many files went.
pub fn clear(fs: &dyn Fs, dir: &Path) -> Result<usize, BackupError> {
    ensure_dir_durable(fs, dir).map_err(io_err(dir))?;
    let mut removed = 0;
    for entry in fs.read_dir(dir).map_err(io_err(dir))? {
        let path = dir.join(&entry.name);
        fs.remove_file(&path).map_err(io_err(&path))?;
        removed += 1;
    }
    if removed > 0 {
        // Not needed for safety (a leftover is only ever removed again), but it keeps the directory
        // from filling up again after a crash.
        fs.sync_dir(dir).map_err(io_err(dir))?;
    }
    Ok(removed)
}

/// Write the engine's point-in-time view as `<dir>/<applied index>.snap` (tmp, fsync, rename,
/// directory fsync, as every snapshot). The header carries no membership: a restore names the new
/// cluster's. Synchronous: run it off the async runtime's threads.
pub fn take(fs: &dyn Fs, dir: &Path, engine: &dyn Engine) -> Result<SnapshotFile, BackupError> {
    write_snapshot(fs, dir, engine, &[], &[]).map_err(|e| match e {
        // The writer's temporary name is taken: a backup at the same index is being written.
        SnapshotError::Fsm(crate::fsm::FsmError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            BackupError::Busy
        }
        e => BackupError::Snapshot(e),
    })
}

/// The path of the backup `name`, if `name` is one a `BACKUP START` could have given (never a path
/// outside `dir`).
fn named(dir: &Path, name: &str) -> Result<PathBuf, BackupError> {
    parse_snapshot_name(name).map(|_| dir.join(name)).ok_or_else(|| BackupError::Unknown(name.to_string()))
}

/// Up to `count` bytes of backup `name` from `offset` (empty at or past its end).
pub fn read(fs: &dyn Fs, dir: &Path, name: &str, offset: u64, count: u64) -> Result<Vec<u8>, BackupError> {
    if count == 0 || count > MAX_READ_BYTES {
        return Err(BackupError::BadCount(count));
    }
    let path = named(dir, name)?;
    let file = fs.open(&path, OpenOptions::read_only()).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BackupError::Unknown(name.to_string()),
        _ => BackupError::Io { path: path.clone(), source: e },
    })?;
    let len = file.len().map_err(io_err(&path))?;
    let n = len.saturating_sub(offset).min(count);
    if n == 0 {
        return Ok(Vec::new());
    }
    file.read_exact_vec_at(n as usize, offset).map_err(io_err(&path))
}

/// Remove backup `name` (its reader is done with it).
pub fn remove(fs: &dyn Fs, dir: &Path, name: &str) -> Result<(), BackupError> {
    let path = named(dir, name)?;
    fs.remove_file(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BackupError::Unknown(name.to_string()),
        _ => BackupError::Io { path: path.clone(), source: e },
    })
}

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The backup's log index and term: the new cluster's log starts after them.
    pub index: u64,
    pub term: u64,
    /// The snapshot the node restores at its first start.
    pub snapshot: PathBuf,
    pub len: u64,
}

/// Parse `1,2,3` into voter ids: at least one, each non-zero, no repeats.
pub fn parse_voters(text: &str) -> Result<Vec<u64>, BackupError> {
    let mut voters = Vec::new();
    for part in text.split(',').map(str::trim) {
        let id: u64 =
            part.parse().ok().filter(|&id| id > 0).ok_or_else(|| {
                BackupError::Voters(format!("{part:?} is not a node id (a positive integer)"))
            })?;
        if voters.contains(&id) {
            return Err(BackupError::Voters(format!("{id} is named twice")));
        }
        voters.push(id);
    }
    voters.sort_unstable();
    Ok(voters)
}

/// Seed the empty data directory `data_dir` from `backup` as a member of a new cluster of `voters`.
/// The file is verified whole before anything is written; the snapshot is copied in with the new
/// membership in its header, then the raft log is created with that snapshot as its base (commit at
/// its index). Run it for every node of the new cluster, with the same file and voters; then start
/// the nodes as usual (they restore the snapshot at start).
pub fn restore(
    fs: SharedFs,
    backup: &Path,
    data_dir: &Path,
    voters: &[u64],
) -> Result<Restored, BackupError> {
    if voters.is_empty() {
        return Err(BackupError::Voters("a cluster needs at least one voter".into()));
    }
    let layout = DataLayout::new(data_dir);
    for (what, path) in
        [("raft log", &layout.raft), ("state machine", &layout.fsm), ("snapshots", &layout.snapshots)]
    {
        let holds = match fs.read_dir(path) {
            Ok(entries) => !entries.is_empty(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(BackupError::Io { path: path.clone(), source: e }),
        };
        if holds {
            return Err(BackupError::NotEmpty { path: data_dir.to_path_buf(), what: what.to_string() });
        }
    }
    let token = token_of(&*fs, backup)?;
    // The whole file, before anything is written: a damaged backup leaves the directory untouched.
    let checked = verify(&*fs, backup, &token)?;
    ensure_dir_durable(&*fs, data_dir).map_err(io_err(data_dir))?;
    ensure_dir_durable(&*fs, &layout.snapshots).map_err(io_err(&layout.snapshots))?;
    let conf_state = raft::eraftpb::ConfState { voters: voters.to_vec(), ..Default::default() };
    let dst = layout.snapshots.join(snapshot_name(token.index));
    let file = copy_with_conf_state(&*fs, backup, &token, &dst, &conf_state.encode_to_vec())?;
    let storage_err = |source| BackupError::Storage { path: layout.raft.clone(), source };
    let (storage, _) =
        RaftStorage::open(fs.clone(), &layout.raft, WalOptions::default()).map_err(storage_err)?;
    let pointer = SnapshotPointer {
        metadata: raft::eraftpb::SnapshotMetadata {
            conf_state: Some(conf_state),
            index: file.index,
            term: file.term,
        },
        token: file.token().encode().to_vec(),
    };
    // The pointer and the log's base are one durable WAL batch; the snapshot file it names was made
    // durable (file and directory) above, so no crash leaves a pointer to a missing file.
    storage.apply_snapshot(pointer).map_err(storage_err)?;
    tracing::info!(
        index = file.index,
        term = file.term,
        path = %dst.display(),
        bytes = checked.len,
        "restored a backup: the node restores this snapshot at its first start"
    );
    Ok(Restored { index: file.index, term: file.term, snapshot: dst, len: file.len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::RealFs;

    #[test]
    fn voters_are_positive_distinct_ids() {
        assert_eq!(parse_voters("3,1, 2").expect("valid"), vec![1, 2, 3]);
        for bad in ["", "0", "1,1", "1,x", "-2"] {
            assert!(matches!(parse_voters(bad), Err(BackupError::Voters(_))), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_read_names_only_backups_in_its_directory_and_reads_bounded_chunks() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let fs = RealFs::new();
        let dir = dir(tmp.path());
        assert_eq!(clear(&fs, &dir).expect("create"), 0);
        let name = snapshot_name(7);
        crate::io::write_file_durably(&fs, &dir.join(&name), b"0123456789").expect("write");
        std::fs::write(tmp.path().join("secret"), b"not a backup").expect("write");
        assert_eq!(read(&fs, &dir, &name, 2, 3).expect("read"), b"234");
        assert_eq!(read(&fs, &dir, &name, 8, 100).expect("read"), b"89");
        assert!(read(&fs, &dir, &name, 10, 1).expect("read").is_empty());
        for bad in ["../secret", "secret", "00000000000000000007.snap/..", ""] {
            assert!(matches!(read(&fs, &dir, bad, 0, 1), Err(BackupError::Unknown(_))), "{bad:?} read");
        }
        assert!(matches!(read(&fs, &dir, &snapshot_name(8), 0, 1), Err(BackupError::Unknown(_))));
        assert!(matches!(read(&fs, &dir, &name, 0, 0), Err(BackupError::BadCount(0))));
        assert!(matches!(read(&fs, &dir, &name, 0, MAX_READ_BYTES + 1), Err(BackupError::BadCount(_))));
        // A start-up removes what was left.
        assert_eq!(clear(&fs, &dir).expect("clear"), 1);
        assert!(matches!(remove(&fs, &dir, &name), Err(BackupError::Unknown(_))));
    }
}
