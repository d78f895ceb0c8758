//! The disk behind durakv: the [`Fs`] trait.
//!
//! # Durability model (what every implementation must honour, and what callers may rely on)
//!
//! * A write lands in a page cache. It survives the death of the *process* but not a power loss until
//!   [`FsFile::sync`] (fdatasync: data plus the metadata needed to read it back, such as the size) has
//!   returned for that file.
//! * A directory entry — a file created, renamed or removed — survives a power loss only after
//!   [`Fs::sync_dir`] of its parent directory has returned. A synced file whose name was never
//!   synced into its directory is lost.
//! * A failed `sync` leaves the page cache in an unknown state (some pages may have been written back,
//!   the error may have been cleared). Callers must treat it as fatal for the file and never retry.
//! * [`Fs::rename`] across two devices fails with `EXDEV` (see [`is_cross_device`]); callers that
//!   may meet two mounts (the snapshot spool) fall back to copy → fsync → rename → fsync(dir).
//!
//! Node code never calls `std::fs`/`tokio::fs` for data it must keep: everything goes through this
//! trait, so the simulated disk (`durakv-faults`' `SimFs`) sees every write, fsync and rename.
//!
//! The trait is synchronous on purpose: every implementation is either a real syscall (which blocks
//! anyway) or an in-memory model. Callers on an async runtime run storage work on a dedicated thread.

mod real;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use real::RealFs;

/// How to open a file. Mirrors the subset of `std::fs::OpenOptions` durakv uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenOptions {
    pub read: bool,
    pub write: bool,
    /// Create the file if it does not exist.
    pub create: bool,
    /// Fail with `AlreadyExists` if the file exists (implies `create`).
    pub create_new: bool,
    /// Truncate an existing file to length 0 on open.
    pub truncate: bool,
}

impl OpenOptions {
    /// Open an existing file for reading.
    pub fn read_only() -> Self {
        Self { read: true, ..Self::default() }
    }

    /// Open an existing file for reading and writing.
    pub fn read_write() -> Self {
        Self { read: true, write: true, ..Self::default() }
    }

    /// Create a file that must not exist yet, for reading and writing.
    pub fn create_new() -> Self {
        Self { read: true, write: true, create: true, create_new: true, truncate: false }
    }

    /// Create the file or truncate an existing one, for reading and writing.
    pub fn create_truncate() -> Self {
        Self { read: true, write: true, create: true, create_new: false, truncate: true }
    }
}

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    File,
    Dir,
}

/// One entry of [`Fs::read_dir`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirEntry {
    /// The entry's file name (not the full path).
    pub name: String,
    pub kind: EntryKind,
}

/// What [`Fs::metadata`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub len: u64,
    pub kind: EntryKind,
}

/// Identifies the device (mount) a path lives on: two paths with different ids cannot be renamed
/// into each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u64);

/// An open file.
pub trait FsFile: Send + Sync + fmt::Debug {
    /// Read up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Write all of `buf` at `offset`, extending the file if needed. Lands in the page cache only.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Make this file's data and size durable (fdatasync). An error is fatal for the file.
    fn sync(&mut self) -> io::Result<()>;

    /// Set the file's length (truncate or extend with zeros). Durable only after [`FsFile::sync`].
    fn set_len(&mut self, len: u64) -> io::Result<()>;

    /// The file's current length as the process sees it (page cache included).
    fn len(&self) -> io::Result<u64>;

    /// Is the file empty?
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Append `buf` at the current end of the file and return the offset it was written at.
    fn append(&mut self, buf: &[u8]) -> io::Result<u64> {
        let offset = self.len()?;
        self.write_at(buf, offset)?;
        Ok(offset)
    }

    /// `len` bytes from `offset` in a new buffer, or fail with `UnexpectedEof` (as
    /// [`FsFile::read_exact_at`] into a zeroed buffer; a file may skip the zeroing).
    fn read_exact_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Fill `buf` exactly from `offset`, or fail with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(buf, offset)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"));
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

/// A filesystem: the real one ([`RealFs`]) or a simulated disk.
pub trait Fs: Send + Sync + fmt::Debug {
    /// Open (and maybe create) a file. A created file's name is durable only after `sync_dir` of its
    /// parent.
    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Box<dyn FsFile>>;

    /// Create a directory and its missing parents. Each new directory's name is durable only after
    /// `sync_dir` of its parent.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Make the directory's entries (creations, renames, removals) durable (fsync on the directory).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// Atomically replace `to` with `from`. Fails with `EXDEV` across devices. Durable only after
    /// `sync_dir` of both parents.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Remove a file. Durable only after `sync_dir` of its parent.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Remove an empty directory. Durable only after `sync_dir` of its parent.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;

    /// List a directory, sorted by name (so callers never depend on the platform's order).
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;

    /// Does the path exist?
    fn exists(&self, path: &Path) -> io::Result<bool>;

    /// Length and kind of a path.
    fn metadata(&self, path: &Path) -> io::Result<Metadata>;

    /// The device a path lives on; for a path that does not exist yet, the device of its nearest
    /// existing ancestor (where it would be created).
    fn device(&self, path: &Path) -> io::Result<DeviceId>;

    /// Pass the failpoint `name` (see [`crate::failpoint`]; node code calls it through
    /// [`crate::failpoint::hit`]). An attached error comes back as `Err`, an attached pause or delay
    /// as the time to stall. Only a simulated disk attaches anything; the default passes.
    fn failpoint(&self, _name: &'static str) -> io::Result<Option<std::time::Duration>> {
        Ok(None)
    }

    /// Is the canary `name` (`crate::failpoint::CANARIES`) switched on? Only a simulated disk
    /// switches one on.
    fn canary(&self, _name: &str) -> bool {
        false
    }

    /// Leave a stall that synchronous code cannot serve for the node's loop ([`Fs::take_stall`]).
    fn defer_stall(&self, _stall: std::time::Duration) {}

    /// The stall left by [`Fs::defer_stall`], if any, now served by the caller.
    fn take_stall(&self) -> Option<std::time::Duration> {
        None
    }

    /// Record what the node on this disk did ([`crate::probe`]; node code calls it through
    /// [`crate::probe::observe`]). Only a simulated disk keeps anything; the default forgets it.
    fn observe(&self, _what: crate::probe::Observation) {}
}

/// A shared handle to a filesystem, as node components hold it.
pub type SharedFs = Arc<dyn Fs>;

/// Is this the error a rename across two devices gives?
pub fn is_cross_device(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EXDEV)
}

/// Is this the error a full disk gives?
pub fn is_no_space(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOSPC)
}

/// Read a whole file into memory. For small files only (headers, metadata, test checks).
pub fn read_file(fs: &dyn Fs, path: &Path) -> io::Result<Vec<u8>> {
    let file = fs.open(path, OpenOptions::read_only())?;
    let len = usize::try_from(file.len()?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file larger than memory"))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

/// The temporary name used while writing `path` durably: `<path>.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// The parent directory of `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Make sure `dir` exists and that its name, and the name of every directory this call creates on the
/// way, is durable: each new directory's parent is fsynced, and so is `dir`'s parent every time (a run
/// that created `dir` may have crashed before syncing it, leaving a name that only the page cache
/// holds). Storage components call this at open, before anything in `dir` is acknowledged.
pub fn ensure_dir_durable(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut probe = Some(dir);
    while let Some(d) = probe {
        if d.as_os_str().is_empty() || fs.exists(d)? {
            break;
        }
        missing.push(d);
        probe = d.parent();
    }
    fs.create_dir_all(dir)?;
    // Top down, so a parent's entry is durable before its child's.
    for d in missing.iter().rev() {
        fs.sync_dir(parent_dir(d))?;
    }
    if missing.is_empty() {
        // `dir` existed: a crash may still have kept its name only in the page cache.
        fs.sync_dir(parent_dir(dir))?;
    }
    Ok(())
}

/// Write `bytes` to `path` so that after any crash `path` holds either its previous content (or is
/// absent) or exactly `bytes`: write `<path>.tmp`, fsync it, rename over `path`, fsync the directory.
pub fn write_file_durably(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let mut file = fs.open(&tmp, OpenOptions::create_truncate())?;
    file.write_at(bytes, 0)?;
    // The data must be durable before the name points at it, or a power loss could leave `path`
    // naming a file with missing sectors.
    file.sync()?;
    drop(file);
    fs.rename(&tmp, path)?;
    // The rename is durable only once the directory is synced.
    fs.sync_dir(parent_dir(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_path_appends_suffix() {
        assert_eq!(tmp_path(Path::new("/a/b.snap")), PathBuf::from("/a/b.snap.tmp"));
    }

    #[test]
    fn parent_dir_of_bare_name_is_dot() {
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/d/x")), Path::new("/d"));
    }

    #[test]
    fn error_classifiers_match_raw_os_errors() {
        assert!(is_cross_device(&io::Error::from_raw_os_error(libc::EXDEV)));
        assert!(!is_cross_device(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
    }
}
