//! The simulated disk as a real filesystem: [`MountedDisk`] serves a [`SimFs`] through FUSE, so any
//! process (RocksDB inside the production `durakv` binary, a test in this process) reads and writes
//! the same model the simulator uses: page cache against durable media, sector fates at a power loss,
//! `EIO`/`ENOSPC` by rule, bit flips.
//!
//! # What the kernel adds, and why it does not hide anything
//!
//! * Writes: the mount does not ask for FUSE's writeback cache, so every `write(2)` reaches
//!   [`SimFs`] before it returns (the kernel's copy is write-through). What is "in the page cache" is
//!   exactly what [`SimFs`] holds in its cache image.
//! * `fsync`/`fdatasync` and a directory's `fsync` arrive as FUSE `FSYNC`/`FSYNCDIR` and become
//!   [`FsFile::sync`] and [`Fs::sync_dir`]. `sync_file_range(2)` never reaches a FUSE filesystem; it
//!   promises nothing durable anyway. Both fsync flavours sync data and length (the model has no
//!   separate metadata).
//! * Reads: the kernel may keep pages it read, and entries and attributes for [`TTL`]. A crash is
//!   therefore never shown to a process through the old mount: [`MountedDisk::restart`] unmounts
//!   (after the processes using it are dead), the disk crashes, and a fresh mount starts with an empty
//!   kernel cache over what the model kept.
//! * Locks (`fcntl`/`flock`, RocksDB's `LOCK` file) are the kernel's own: the mount does not claim
//!   POSIX lock support, so the kernel keeps them locally. `mmap` works through the page cache.
//! * Two mounts are two superblocks: a `rename(2)` between them fails with `EXDEV` in the kernel.
//!
//! Inode numbers are the mount's own, kept per path; a rename moves the number with the file, and an
//! unlinked file stays readable and writable through the handles still open on it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use durakv::io::{EntryKind, Fs, FsFile, Metadata, OpenOptions};
use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::simfs::{CrashKind, SimFs, is_crash_error};

/// How long the kernel may trust an entry or attribute it was given. Only this mount changes the
/// files, and a crash is shown through a fresh mount, so caching cannot show stale state.
const TTL: Duration = Duration::from_secs(1);
/// The block size reported to `stat(2)` and `statfs(2)`.
const BLOCK: u32 = 4096;

/// Why a disk could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("FUSE is not available here: {0}")]
    Unavailable(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// `None` when this machine can mount a FUSE filesystem; otherwise what is missing and how to get it,
/// in one line (tests print it loudly instead of passing silently).
pub fn fuse_unavailable() -> Option<String> {
    let dev = Path::new("/dev/fuse");
    if !dev.exists() {
        return Some(
            "/dev/fuse is missing: load the kernel module (`modprobe fuse`), or give the container the \
             device (`--device /dev/fuse --cap-add SYS_ADMIN`)"
                .into(),
        );
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Some(format!(
            "/dev/fuse cannot be opened ({e}): run as root, or install fuse3 for fusermount3"
        ));
    }
    None
}

/// For a test that needs FUSE: `true` when it can run; otherwise one loud line naming what is
/// missing and how to get it, and `false` (the test returns) — except under `CI=true`, whose
/// machines have FUSE, where a missing device fails the test instead of passing it silently.
pub fn fuse_or_skip(test: &str) -> bool {
    match fuse_unavailable() {
        None => true,
        Some(why) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs FUSE under CI: {why}");
            eprintln!("SKIPPED {test}: {why} (install fuse3 and run as root to run it)");
            false
        }
    }
}

fn errno(e: &io::Error) -> Errno {
    if is_crash_error(e) {
        // The process this disk served is dead (or the power is off): nothing reaches the disk.
        return Errno::EIO;
    }
    if let Some(code) = e.raw_os_error() {
        return Errno::from_i32(code);
    }
    match e.kind() {
        io::ErrorKind::NotFound => Errno::ENOENT,
        io::ErrorKind::AlreadyExists => Errno::EEXIST,
        io::ErrorKind::InvalidInput => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

/// An open file of the mount.
#[derive(Debug)]
struct Handle {
    /// `None`: the file had lost its last name when it was opened; it lives in `Tables::orphans`.
    file: Option<Box<dyn FsFile>>,
    ino: u64,
}

/// The mount's inode numbers and open handles.
#[derive(Debug, Default)]
struct Tables {
    /// Inode number → the path it has now (absent once unlinked).
    paths: BTreeMap<u64, PathBuf>,
    inos: BTreeMap<PathBuf, u64>,
    next_ino: u64,
    handles: BTreeMap<u64, Handle>,
    next_fh: u64,
    /// Files that lost their last name (unlinked, or replaced by a rename) while the kernel may still
    /// hold their inode: a process that looked the name up just before can still open and stat it,
    /// as on any filesystem. Dropped when the kernel forgets the inode.
    orphans: BTreeMap<u64, Box<dyn FsFile>>,
}

impl Tables {
    fn new() -> Tables {
        let mut t = Tables { next_ino: INodeNo::ROOT.0 + 1, next_fh: 1, ..Tables::default() };
        t.paths.insert(INodeNo::ROOT.0, PathBuf::from("/"));
        t.inos.insert(PathBuf::from("/"), INodeNo::ROOT.0);
        t
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        Ok(self.path(parent)?.join(name))
    }

    fn ino_for(&mut self, path: &Path) -> u64 {
        if let Some(&ino) = self.inos.get(path) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.paths.insert(ino, path.to_path_buf());
        self.inos.insert(path.to_path_buf(), ino);
        ino
    }

    fn forget_path(&mut self, path: &Path) {
        if let Some(ino) = self.inos.remove(path) {
            self.paths.remove(&ino);
        }
    }

    /// `from` (and everything under it) is now at `to`.
    fn renamed(&mut self, from: &Path, to: &Path) {
        self.forget_path(to);
        let moved: Vec<(PathBuf, u64)> =
            self.inos.iter().filter(|(p, _)| p.starts_with(from)).map(|(p, &ino)| (p.clone(), ino)).collect();
        for (old, ino) in moved {
            let rest = old.strip_prefix(from).map(Path::to_path_buf).unwrap_or_default();
            let new = if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) };
            self.inos.remove(&old);
            self.inos.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
    }

    /// The file behind an open handle.
    fn handle(&mut self, fh: FileHandle) -> Result<&mut Box<dyn FsFile>, Errno> {
        let h = self.handles.get_mut(&fh.0).ok_or(Errno::EBADF)?;
        match &mut h.file {
            Some(file) => Ok(file),
            None => self.orphans.get_mut(&h.ino).ok_or(Errno::EBADF),
        }
    }

    /// Keep the file about to lose the name `path` reachable by its inode (see `orphans`).
    fn keep_orphan(&mut self, orphan: Option<(u64, Box<dyn FsFile>)>) {
        if let Some((ino, file)) = orphan {
            self.orphans.insert(ino, file);
        }
    }

    fn add_handle(&mut self, file: Option<Box<dyn FsFile>>, ino: u64) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { file, ino });
        fh
    }
}

/// The FUSE side of a mounted [`SimFs`].
struct SimFuse {
    disk: SimFs,
    tables: Mutex<Tables>,
    uid: u32,
    gid: u32,
}

impl SimFuse {
    fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic in a handler is a bug in this module; the tables are still the best record.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attr(&self, ino: u64, meta: Metadata) -> FileAttr {
        let (kind, perm, nlink) = match meta.kind {
            EntryKind::File => (FileType::RegularFile, 0o644, 1),
            EntryKind::Dir => (FileType::Directory, 0o755, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: meta.len,
            blocks: meta.len.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK,
            flags: 0,
        }
    }

    /// The attributes of `ino`: through an open handle when the caller has one (the file may be
    /// unlinked), else by path.
    fn stat(&self, t: &mut Tables, ino: INodeNo, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        let by_handle = fh.and_then(|fh| t.handles.get(&fh.0).and_then(|h| h.file.as_ref())).or_else(|| {
            // A file with no name left (unlinked, replaced): its orphan, or any handle on it.
            if t.paths.contains_key(&ino.0) {
                return None;
            }
            t.orphans
                .get(&ino.0)
                .or_else(|| t.handles.values().filter(|h| h.ino == ino.0).find_map(|h| h.file.as_ref()))
        });
        if let Some(file) = by_handle {
            let len = file.len().map_err(|e| errno(&e))?;
            return Ok(self.attr(ino.0, Metadata { len, kind: EntryKind::File }));
        }
        let path = t.path(ino)?;
        let meta = self.disk.metadata(&path).map_err(|e| errno(&e))?;
        Ok(self.attr(ino.0, meta))
    }

    fn entry(&self, t: &mut Tables, path: &Path) -> Result<FileAttr, Errno> {
        let meta = self.disk.metadata(path).map_err(|e| errno(&e))?;
        let ino = t.ino_for(path);
        Ok(self.attr(ino, meta))
    }
}

fn access_mode(flags: OpenFlags) -> (bool, bool) {
    match flags.acc_mode() {
        OpenAccMode::O_RDONLY => (true, false),
        OpenAccMode::O_WRONLY => (false, true),
        OpenAccMode::O_RDWR => (true, true),
    }
}

impl SimFuse {
    /// A handle on the file at `path` when the kernel knows its inode and the file is about to lose
    /// that name (an unlink, a rename over it): kept as an orphan the kernel can still open.
    fn orphan_of(&self, t: &Tables, path: &Path) -> Option<(u64, Box<dyn FsFile>)> {
        let ino = *t.inos.get(path)?;
        if self.disk.metadata(path).ok()?.kind != EntryKind::File {
            return None;
        }
        Some((ino, self.disk.open(path, OpenOptions::read_write()).ok()?))
    }
}

impl Filesystem for SimFuse {
    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        // The kernel let go of the inode: an orphan can no longer be reached.
        let mut t = self.tables();
        if !t.paths.contains_key(&ino.0) {
            t.orphans.remove(&ino.0);
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut t = self.tables();
        match t.child(parent, name).and_then(|path| self.entry(&mut t, &path)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut t = self.tables();
        match self.stat(&mut t, ino, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut t = self.tables();
        // Only the size is modelled (ftruncate, O_TRUNC); modes, owners and times are accepted and
        // not kept: nothing durakv or RocksDB relies on for durability.
        let result = (|| {
            if let Some(len) = size {
                match fh.filter(|fh| t.handles.contains_key(&fh.0)) {
                    Some(fh) => t.handle(fh)?.set_len(len).map_err(|e| errno(&e))?,
                    None if !t.paths.contains_key(&ino.0) => {
                        let orphan = t.orphans.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
                        orphan.set_len(len).map_err(|e| errno(&e))?;
                    }
                    None => {
                        let path = t.path(ino)?;
                        let mut f =
                            self.disk.open(&path, OpenOptions::read_write()).map_err(|e| errno(&e))?;
                        f.set_len(len).map_err(|e| errno(&e))?;
                    }
                }
            }
            self.stat(&mut t, ino, fh)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Only regular files and directories exist on this disk.
            return reply.error(Errno::EPERM);
        }
        let mut t = self.tables();
        let result = t.child(parent, name).and_then(|path| {
            self.disk.open(&path, OpenOptions::create_new()).map_err(|e| errno(&e))?;
            self.entry(&mut t, &path)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut t = self.tables();
        let result = t.child(parent, name).and_then(|path| {
            if self.disk.exists(&path).map_err(|e| errno(&e))? {
                return Err(Errno::EEXIST);
            }
            self.disk.create_dir_all(&path).map_err(|e| errno(&e))?;
            self.entry(&mut t, &path)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut t = self.tables();
        let result = t.child(parent, name).and_then(|path| {
            let orphan = self.orphan_of(&t, &path);
            self.disk.remove_file(&path).map_err(|e| errno(&e))?;
            t.keep_orphan(orphan);
            t.forget_path(&path);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut t = self.tables();
        let result = t.child(parent, name).and_then(|path| {
            self.disk.remove_dir(&path).map_err(|e| errno(&e))?;
            t.forget_path(&path);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut t = self.tables();
        let result = (|| {
            let from = t.child(parent, name)?;
            let to = t.child(newparent, newname)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
                return Err(Errno::EINVAL);
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE)
                && self.disk.exists(&to).map_err(|e| errno(&e))?
            {
                return Err(Errno::EEXIST);
            }
            let orphan = if from == to { None } else { self.orphan_of(&t, &to) };
            self.disk.rename(&from, &to).map_err(|e| errno(&e))?;
            t.keep_orphan(orphan);
            t.renamed(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut t = self.tables();
        let (read, write) = access_mode(flags);
        let truncate = flags.0 & libc::O_TRUNC != 0 && write;
        let result = match t.path(ino) {
            Ok(path) => {
                let opts = OpenOptions { read, write, truncate, ..OpenOptions::default() };
                self.disk.open(&path, opts).map_err(|e| errno(&e)).map(|file| t.add_handle(Some(file), ino.0))
            }
            // Looked up before it lost its name: open what the name pointed at, as any filesystem.
            Err(_) if t.orphans.contains_key(&ino.0) => {
                if truncate && let Some(f) = t.orphans.get_mut(&ino.0) {
                    let _ = f.set_len(0);
                }
                Ok(t.add_handle(None, ino.0))
            }
            Err(e) => Err(e),
        };
        match result {
            // No FOPEN_KEEP_CACHE: every open starts from what the model holds.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut t = self.tables();
        let result = t.handle(fh).and_then(|file| {
            let mut buf = vec![0; size as usize];
            let mut got = 0;
            while got < buf.len() {
                let n = file.read_at(&mut buf[got..], offset + got as u64).map_err(|e| errno(&e))?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            Ok(buf)
        });
        match result {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut t = self.tables();
        let result = t.handle(fh).and_then(|file| file.write_at(data, offset).map_err(|e| errno(&e)));
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.tables().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut t = self.tables();
        match t.handle(fh).and_then(|file| file.sync().map_err(|e| errno(&e))) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut t = self.tables();
        let result = t.path(ino).and_then(|path| {
            let mut entries = vec![(ino.0, FileType::Directory, ".".to_string())];
            let parent = path.parent().map_or(INodeNo::ROOT.0, |p| t.ino_for(p));
            entries.push((parent, FileType::Directory, "..".to_string()));
            for e in self.disk.read_dir(&path).map_err(|e| errno(&e))? {
                let kind = match e.kind {
                    EntryKind::File => FileType::RegularFile,
                    EntryKind::Dir => FileType::Directory,
                };
                entries.push((t.ino_for(&path.join(&e.name)), kind, e.name));
            }
            Ok(entries)
        });
        match result {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let t = self.tables();
        match t.path(ino).and_then(|path| self.disk.sync_dir(&path).map_err(|e| errno(&e))) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let block = u64::from(BLOCK);
        let total = self.disk.capacity().unwrap_or(1 << 40).div_ceil(block);
        let used = self.disk.used_bytes().div_ceil(block);
        let free = total.saturating_sub(used);
        reply.statfs(total, free, free, 1 << 20, 1 << 20, BLOCK, 255, BLOCK);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut t = self.tables();
        let (read, write) = access_mode(OpenFlags(flags));
        let result = t.child(parent, name).and_then(|path| {
            let opts = OpenOptions {
                read,
                write,
                create: true,
                create_new: flags & libc::O_EXCL != 0,
                truncate: flags & libc::O_TRUNC != 0,
            };
            let file = self.disk.open(&path, opts).map_err(|e| errno(&e))?;
            let attr = self.entry(&mut t, &path)?;
            let fh = t.add_handle(Some(file), attr.ino.0);
            Ok((attr, fh))
        });
        match result {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut t = self.tables();
        let result = t.handle(fh).and_then(|file| {
            let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
            match mode {
                // Reserve and extend: the new length is unsynced like any other change.
                0 => {
                    if end > file.len().map_err(|e| errno(&e))? {
                        file.set_len(end).map_err(|e| errno(&e))?;
                    }
                    Ok(())
                }
                // Reserve without changing the size (RocksDB's preallocation): nothing a process can
                // see or lose; space is not modelled per block.
                libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                _ => Err(Errno::EOPNOTSUPP),
            }
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// A [`SimFs`] mounted at a directory.
#[derive(Debug)]
pub struct MountedDisk {
    disk: SimFs,
    dir: PathBuf,
    session: Option<BackgroundSession>,
}

impl MountedDisk {
    /// Mount `disk` at `dir` (created if missing). Needs FUSE ([`fuse_unavailable`]) and root, or
    /// `fusermount3`.
    pub fn mount(disk: SimFs, dir: &Path) -> Result<MountedDisk, MountError> {
        if let Some(why) = fuse_unavailable() {
            return Err(MountError::Unavailable(why));
        }
        std::fs::create_dir_all(dir).map_err(|source| MountError::Io { path: dir.to_path_buf(), source })?;
        let dir = std::fs::canonicalize(dir)
            .map_err(|source| MountError::Io { path: dir.to_path_buf(), source })?;
        let mut m = MountedDisk { disk, dir, session: None };
        m.start()?;
        Ok(m)
    }

    fn start(&mut self) -> Result<(), MountError> {
        use std::os::unix::fs::MetadataExt;
        // Right after an unmount the kernel may still be detaching the old mount: a stat of its
        // directory then fails with ECONNABORTED or ENOTCONN for a moment (seen once in
        // `rocks_powerloss.rs`'s remounts). Wait for it, a bounded while.
        let mut tries = 0;
        let owner = loop {
            match std::fs::metadata(&self.dir) {
                Err(e)
                    if tries < 100
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::NotConnected
                        ) =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.map_err(|source| MountError::Io { path: self.dir.clone(), source })?,
            }
        };
        let fs = SimFuse {
            disk: self.disk.clone(),
            tables: Mutex::new(Tables::new()),
            uid: owner.uid(),
            gid: owner.gid(),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("durakv-disk".into()),
            MountOption::Subtype("durakv".into()),
            MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount(fs, &self.dir, &config)
            .map_err(|source| MountError::Io { path: self.dir.clone(), source })?;
        self.session = Some(session);
        Ok(())
    }

    /// The disk behind the mount.
    pub fn disk(&self) -> &SimFs {
        &self.disk
    }

    /// Where it is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unmount (no-op when not mounted). Fails with `EBUSY` while a process still has a file open.
    pub fn unmount(&mut self) -> Result<(), MountError> {
        if let Some(session) = self.session.take() {
            match session.umount_and_join() {
                // The kernel may end the session loop's read of /dev/fuse with ECONNABORTED instead of
                // ENODEV when the unmount races it (seen once in `rocks_powerloss.rs`, not reproduced in
                // hundreds of remounts): either way the connection, and with it the mount, is gone,
                // which is all an unmount is for.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
                other => other.map_err(|source| MountError::Io { path: self.dir.clone(), source })?,
            }
        }
        Ok(())
    }

    /// The machine comes back after a crash the disk already took ([`SimFs::cut`], or an armed crash
    /// that fired): the old mount (and every page the kernel cached through it) goes, the disk
    /// resumes, and a fresh mount shows only what the model kept. The processes that used the mount
    /// must be gone ([`kill_users`]).
    pub fn restart(&mut self) -> Result<(), MountError> {
        self.unmount()?;
        // A crash that had not fired, or no crash at all: the restart is a process kill at least.
        self.disk.cut(CrashKind::ProcessKill);
        self.disk.resume();
        self.start()
    }
}

impl Drop for MountedDisk {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// The processes (other than this one) that hold a file, a working directory, a root or a mapping
/// under `dir`, by pid, sorted.
pub fn users_of(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut pids = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let base = p.path();
        let under = |link: PathBuf| std::fs::read_link(link).is_ok_and(|t| t.starts_with(dir));
        let mut uses = under(base.join("cwd")) || under(base.join("root"));
        if !uses && let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            uses = fds.flatten().any(|fd| under(fd.path()));
        }
        if !uses && let Ok(maps) = std::fs::read_to_string(base.join("maps")) {
            let needle = dir.to_string_lossy();
            uses = maps.lines().any(|l| l.split_whitespace().nth(5).is_some_and(|f| f.starts_with(&*needle)));
        }
        if uses {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// SIGKILL every process that uses `dir` and wait (up to `patience`) until none does. Returns the
/// pids it killed; an error names the ones that would not let go.
pub fn kill_users(dir: &Path, patience: Duration) -> io::Result<Vec<u32>> {
    let mut killed = Vec::new();
    let deadline = std::time::Instant::now() + patience;
    loop {
        let pids = users_of(dir);
        if pids.is_empty() {
            return Ok(killed);
        }
        for &pid in &pids {
            // `kill(1)`: the one signal this crate sends, without unsafe code.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
            if !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "processes {pids:?} still use {} after SIGKILL",
                dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
