//! The mounted simulated disk behaves as a filesystem and as the crash model: what a process does
//! through the kernel (std::fs here, RocksDB and the node elsewhere) lands in `SimFs`, and a cut
//! shows through a fresh mount exactly what the model kept.
//!
//! Failures injected: power loss with every unsynced sector dropped, a process kill, `EIO` and
//! `ENOSPC` by rule, a rename between two mounts. Invariants: synced data and synced names survive a
//! power loss and unsynced ones do not; a process kill loses nothing written; injected errors reach
//! the process as their errno; two mounts are two devices (`EXDEV`).

#![cfg(feature = "fuse")]

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use durakv_faults::fuse::{MountedDisk, fuse_or_skip};
use durakv_faults::{CrashKind, FaultEffect, FaultRule, OpKind, SectorOdds, SimFs, SimFsOptions};

fn mount(opts: SimFsOptions) -> (tempfile::TempDir, MountedDisk) {
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = MountedDisk::mount(SimFs::new(1, opts).expect("options"), dir.path()).expect("mount");
    (dir, disk)
}

fn drop_all_unsynced() -> SimFsOptions {
    SimFsOptions { power_loss: SectorOdds::new(0, 1, 0).expect("odds"), ..SimFsOptions::default() }
}

fn sync_dir(dir: &Path) {
    fs::File::open(dir).expect("open dir").sync_all().expect("fsync dir");
}

/// Failure guarded against: the mount disagreeing with POSIX on what RocksDB and the node rely on.
/// Invariant: create, write at offsets, read back, append, truncate, fallocate, rename over an
/// existing file, unlink while open (the handle keeps working), readdir and mkdir/rmdir all behave as
/// on a local filesystem.
#[test]
fn the_mount_behaves_as_a_filesystem() {
    if !fuse_or_skip("the_mount_behaves_as_a_filesystem") {
        return;
    }
    let (_tmp, m) = mount(SimFsOptions::default());
    let root = m.dir();
    fs::create_dir(root.join("d")).expect("mkdir");
    assert_eq!(fs::create_dir(root.join("d")).map_err(|e| e.raw_os_error()), Err(Some(libc::EEXIST)));
    let mut f = fs::File::create(root.join("d/a")).expect("create");
    f.write_all(b"hello world").expect("write");
    f.write_all_at(b"HELLO", 0).expect("pwrite");
    assert_eq!(fs::read(root.join("d/a")).expect("read"), b"HELLO world");
    f.set_len(5).expect("truncate");
    assert_eq!(fs::metadata(root.join("d/a")).expect("stat").len(), 5);
    let mut g = fs::OpenOptions::new().append(true).open(root.join("d/a")).expect("open append");
    g.write_all(b"!").expect("append");
    assert_eq!(fs::read(root.join("d/a")).expect("read"), b"HELLO!");
    fs::write(root.join("d/b"), b"old").expect("write b");
    fs::rename(root.join("d/a"), root.join("d/b")).expect("rename over");
    assert_eq!(fs::read(root.join("d/b")).expect("read"), b"HELLO!");
    assert!(!root.join("d/a").exists());
    // Unlinked while open: the open handle still reads and writes the file.
    let mut h = fs::OpenOptions::new().read(true).write(true).open(root.join("d/b")).expect("open");
    fs::remove_file(root.join("d/b")).expect("unlink");
    h.seek(SeekFrom::Start(0)).expect("seek");
    let mut s = String::new();
    h.read_to_string(&mut s).expect("read unlinked");
    assert_eq!(s, "HELLO!");
    h.write_all(b"more").expect("write unlinked");
    assert_eq!(h.metadata().expect("fstat unlinked").len(), 10);
    let names: Vec<_> =
        fs::read_dir(root.join("d")).expect("readdir").flatten().map(|e| e.file_name()).collect();
    assert!(names.is_empty(), "{names:?}");
    fs::write(root.join("d/c"), b"x").expect("write c");
    assert_eq!(fs::remove_dir(root.join("d")).map_err(|e| e.raw_os_error()), Err(Some(libc::ENOTEMPTY)));
    fs::remove_file(root.join("d/c")).expect("unlink c");
    fs::remove_dir(root.join("d")).expect("rmdir");
    assert_eq!(m.disk().coverage().get("fault.eio.write"), None);
}

/// Failure injected: a power loss that drops every unsynced sector and directory entry. Invariant:
/// a synced file under a synced name survives whole; unsynced bytes and a never-synced name do not.
#[test]
fn a_power_loss_keeps_exactly_what_was_synced() {
    if !fuse_or_skip("a_power_loss_keeps_exactly_what_was_synced") {
        return;
    }
    let (_tmp, mut m) = mount(drop_all_unsynced());
    let root = m.dir().to_path_buf();
    let mut f = fs::File::create(root.join("kept")).expect("create");
    f.write_all(&[7; 3000]).expect("write");
    f.sync_data().expect("fdatasync");
    sync_dir(&root);
    f.write_all(&[8; 3000]).expect("unsynced append");
    fs::write(root.join("unnamed"), b"never synced name").expect("write");
    fs::File::open(root.join("unnamed")).expect("open").sync_all().expect("fsync data, not the name");
    drop(f);
    m.disk().cut(CrashKind::PowerLoss);
    m.restart().expect("remount");
    assert_eq!(fs::read(root.join("kept")).expect("read"), vec![7; 3000]);
    assert!(!root.join("unnamed").exists(), "a name whose directory was never synced survived");
    assert_eq!(m.disk().coverage().get("crash.power_loss"), Some(&1));
}

/// Failure injected: a process kill (the disk's processes die, the page cache survives). Invariant:
/// every write that returned is there after the remount, synced or not.
#[test]
fn a_process_kill_loses_no_write() {
    if !fuse_or_skip("a_process_kill_loses_no_write") {
        return;
    }
    let (_tmp, mut m) = mount(drop_all_unsynced());
    let root = m.dir().to_path_buf();
    fs::write(root.join("f"), b"unsynced but written").expect("write");
    m.disk().cut(CrashKind::ProcessKill);
    m.restart().expect("remount");
    assert_eq!(fs::read(root.join("f")).expect("read"), b"unsynced but written");
}

/// Failures injected: `EIO` on the first fsync of `*.log`, `ENOSPC` on the next write to it. Invariant:
/// the process sees exactly those errnos, once each, and the disk counts them.
#[test]
fn injected_errors_reach_the_process_as_their_errno() {
    if !fuse_or_skip("injected_errors_reach_the_process_as_their_errno") {
        return;
    }
    let eio =
        FaultRule::always(FaultEffect::Eio, &[OpKind::Sync]).on_path("*.log").expect("glob").max_fires(1);
    let enospc =
        FaultRule::always(FaultEffect::Enospc, &[OpKind::Write]).on_path("*.log").expect("glob").max_fires(1);
    let (_tmp, m) = mount(SimFsOptions { rules: vec![eio, enospc], ..SimFsOptions::default() });
    let mut f = fs::File::create(m.dir().join("a.log")).expect("create");
    assert_eq!(f.write_all(b"x").map_err(|e| e.raw_os_error()), Err(Some(libc::ENOSPC)));
    f.write_all(b"x").expect("second write");
    assert_eq!(f.sync_all().map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
    f.sync_all().expect("second fsync");
    let c = m.disk().coverage();
    assert_eq!((c.get("fault.eio.sync"), c.get("fault.enospc")), (Some(&1), Some(&1)));
}

/// Failure injected: a rename from one mounted disk to another (the snapshot spool on its own
/// device). Invariant: the kernel refuses it with `EXDEV` and both files stay as they were.
#[test]
fn two_mounts_are_two_devices() {
    if !fuse_or_skip("two_mounts_are_two_devices") {
        return;
    }
    let (_a, a) = mount(SimFsOptions::default());
    let (_b, b) = mount(SimFsOptions::default());
    fs::write(a.dir().join("snap"), b"data").expect("write");
    let err = fs::rename(a.dir().join("snap"), b.dir().join("snap")).expect_err("cross-device rename");
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
    assert_eq!(fs::read(a.dir().join("snap")).expect("still there"), b"data");
    assert!(!b.dir().join("snap").exists());
}

/// Failure guarded against (found by `make powercut`): a process that looked a name up just before
/// a rename replaced the file (or an unlink removed it) opening or stat-ing the inode it got: the
/// mount answered ENOENT where every filesystem opens the file the name pointed at, and the node
/// took a snapshot that two receives had just written as missing. Invariant: an inode that lost its
/// name stays openable and stat-able while the kernel holds it.
#[test]
fn an_inode_that_lost_its_name_can_still_be_opened() {
    if !fuse_or_skip("an_inode_that_lost_its_name_can_still_be_opened") {
        return;
    }
    let (_tmp, m) = mount(SimFsOptions::default());
    let root = m.dir();
    fs::write(root.join("snap"), b"first receive").expect("write");
    // O_PATH: a lookup and no FUSE open, like the first half of an open(2) that races a rename.
    let held =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(root.join("snap")).expect("O_PATH");
    fs::write(root.join("snap.copy-2.tmp"), b"second receive").expect("write");
    fs::rename(root.join("snap.copy-2.tmp"), root.join("snap")).expect("rename over");
    let by_inode = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&held));
    assert_eq!(fs::read(&by_inode).expect("open the replaced inode"), b"first receive");
    assert_eq!(fs::metadata(&by_inode).expect("stat the replaced inode").len(), 13);
    assert_eq!(fs::read(root.join("snap")).expect("read the name"), b"second receive");
    let held2 =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(root.join("snap")).expect("O_PATH");
    fs::remove_file(root.join("snap")).expect("unlink");
    let by_inode = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&held2));
    assert_eq!(fs::read(&by_inode).expect("open the unlinked inode"), b"second receive");
}
