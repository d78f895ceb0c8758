//! Each rule of the simulated disk's durability model, proven on its own.

use std::io;
use std::path::{Path, PathBuf};

use durakv::io::{Fs, OpenOptions, is_cross_device, is_no_space, read_file, write_file_durably};
use durakv_faults::{
    CrashKind, FaultEffect, FaultRule, OpKind, Ratio, SectorOdds, SimFs, SimFsOptions, TornWrite,
    is_crash_error,
};

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn disk_with(seed: u64, opts: SimFsOptions) -> SimFs {
    SimFs::new(seed, opts).expect("test options are valid")
}

/// Create `/d` durably and return the disk.
fn disk(seed: u64) -> SimFs {
    let fs = SimFs::with_seed(seed);
    fs.create_dir_all(Path::new("/d")).expect("mkdir");
    fs.sync_dir(Path::new("/")).expect("sync /");
    fs
}

fn write_synced(fs: &SimFs, path: &str, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs.open(&p(path), OpenOptions::create_truncate())?;
    f.write_at(bytes, 0)?;
    f.sync()
}

#[test]
fn power_loss_loses_a_synced_file_whose_name_was_never_dir_synced() -> io::Result<()> {
    let fs = disk(1);
    write_synced(&fs, "/d/f", b"data")?;
    fs.crash(CrashKind::PowerLoss);
    assert!(!fs.exists(&p("/d/f"))?);
    Ok(())
}

#[test]
fn power_loss_keeps_synced_data_and_synced_names_exactly() -> io::Result<()> {
    for seed in 0..50 {
        let fs = disk(seed);
        write_synced(&fs, "/d/f", &[7u8; 5000])?;
        fs.sync_dir(&p("/d"))?;
        fs.crash(CrashKind::PowerLoss);
        assert_eq!(read_file(&fs, &p("/d/f"))?, vec![7u8; 5000], "seed {seed}");
    }
    Ok(())
}

#[test]
fn process_kill_keeps_the_page_cache() -> io::Result<()> {
    let fs = disk(2);
    let mut f = fs.open(&p("/d/f"), OpenOptions::create_new())?;
    f.write_at(b"unsynced", 0)?;
    fs.crash(CrashKind::ProcessKill);
    assert_eq!(read_file(&fs, &p("/d/f"))?, b"unsynced");
    // The handle from before the crash is dead.
    assert!(f.write_at(b"x", 0).is_err_and(|e| is_crash_error(&e)));
    Ok(())
}

#[test]
fn rename_is_durable_only_after_dir_sync() -> io::Result<()> {
    let fs = disk(3);
    write_synced(&fs, "/d/a", b"old")?;
    fs.sync_dir(&p("/d"))?;
    write_synced(&fs, "/d/b", b"new")?;
    fs.rename(&p("/d/b"), &p("/d/a"))?;
    fs.crash(CrashKind::PowerLoss);
    assert_eq!(read_file(&fs, &p("/d/a"))?, b"old", "unsynced rename rolled back");
    assert!(!fs.exists(&p("/d/b"))?);

    write_durably_and_check(&fs)
}

fn write_durably_and_check(fs: &SimFs) -> io::Result<()> {
    write_file_durably(fs, &p("/d/a"), b"new")?;
    fs.crash(CrashKind::PowerLoss);
    assert_eq!(read_file(fs, &p("/d/a"))?, b"new", "synced rename survives");
    assert!(!fs.exists(&p("/d/a.tmp"))?);
    Ok(())
}

#[test]
fn unsynced_remove_comes_back_after_power_loss() -> io::Result<()> {
    let fs = disk(4);
    write_synced(&fs, "/d/f", b"keep me")?;
    fs.sync_dir(&p("/d"))?;
    fs.remove_file(&p("/d/f"))?;
    assert!(!fs.exists(&p("/d/f"))?);
    fs.crash(CrashKind::PowerLoss);
    assert_eq!(read_file(&fs, &p("/d/f"))?, b"keep me");
    Ok(())
}

#[test]
fn a_new_directory_needs_its_parent_synced() -> io::Result<()> {
    let fs = SimFs::with_seed(5);
    fs.create_dir_all(&p("/x/y"))?;
    write_synced(&fs, "/x/y/f", b"1")?;
    fs.sync_dir(&p("/x/y"))?;
    fs.sync_dir(&p("/x"))?;
    // `/x` itself was never synced into `/`.
    fs.crash(CrashKind::PowerLoss);
    assert!(!fs.exists(&p("/x"))?);
    Ok(())
}

#[test]
fn rename_across_mounts_fails_with_exdev() -> io::Result<()> {
    let opts = SimFsOptions { mounts: vec![p("/spool"), p("/snap")], ..SimFsOptions::default() };
    let fs = disk_with(6, opts);
    fs.create_dir_all(&p("/spool"))?;
    fs.create_dir_all(&p("/snap"))?;
    write_synced(&fs, "/spool/s", b"snapshot")?;
    let err = fs.rename(&p("/spool/s"), &p("/snap/s")).expect_err("different devices");
    assert!(is_cross_device(&err), "{err}");
    assert_ne!(fs.device(&p("/spool/s"))?, fs.device(&p("/snap/s"))?);
    assert_eq!(fs.device(&p("/spool/a/b"))?, fs.device(&p("/spool"))?);
    // Same mount: fine.
    fs.rename(&p("/spool/s"), &p("/spool/t"))?;
    assert_eq!(fs.coverage().get("fault.exdev"), Some(&1));
    Ok(())
}

#[test]
fn enospc_at_capacity_writes_nothing() -> io::Result<()> {
    let opts = SimFsOptions { capacity_bytes: Some(100), ..SimFsOptions::default() };
    let fs = disk_with(7, opts);
    let mut f = fs.open(&p("/f"), OpenOptions::create_new())?;
    f.write_at(&[1u8; 60], 0)?;
    let err = f.write_at(&[2u8; 60], 60).expect_err("over capacity");
    assert!(is_no_space(&err));
    assert_eq!(f.len()?, 60);
    // Overwriting in place needs no new space.
    f.write_at(&[3u8; 60], 0)?;
    Ok(())
}

#[test]
fn eio_rules_follow_path_op_and_count() -> io::Result<()> {
    let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Sync])
        .on_path("/d/*.wal")
        .expect("pattern")
        .max_fires(1);
    let opts = SimFsOptions { rules: vec![rule], ..SimFsOptions::default() };
    let fs = disk_with(8, opts);
    fs.create_dir_all(&p("/d"))?;
    let mut other = fs.open(&p("/d/x.snap"), OpenOptions::create_new())?;
    other.write_at(b"a", 0)?;
    other.sync()?;
    let mut wal = fs.open(&p("/d/1.wal"), OpenOptions::create_new())?;
    wal.write_at(b"a", 0)?;
    assert_eq!(wal.sync().map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
    // It fired once; the next sync "succeeds" but the fsyncgate model may have forgotten the data.
    wal.sync()?;
    assert_eq!(fs.coverage().get("fault.eio.sync"), Some(&1));
    Ok(())
}

#[test]
fn eio_on_write_writes_nothing() -> io::Result<()> {
    let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Write]).after_ops(2);
    let fs = disk_with(9, SimFsOptions { rules: vec![rule], ..SimFsOptions::default() });
    let mut f = fs.open(&p("/f"), OpenOptions::create_new())?; // op 0
    f.write_at(b"one", 0)?; // op 1
    assert!(f.write_at(b"two", 3).is_err()); // op 2: after_ops reached
    assert_eq!(read_file(&fs, &p("/f"))?, b"one");
    Ok(())
}

#[test]
fn probability_rules_fire_at_about_their_rate() -> io::Result<()> {
    let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Read])
        .with_probability(Ratio::new(1, 4).expect("ratio"));
    let fs = disk_with(10, SimFsOptions { rules: vec![rule], ..SimFsOptions::default() });
    write_synced(&fs, "/f", b"abc")?;
    let f = fs.open(&p("/f"), OpenOptions::read_only())?;
    let mut failures = 0;
    for _ in 0..4000 {
        let mut b = [0u8; 3];
        if f.read_at(&mut b, 0).is_err() {
            failures += 1;
        }
    }
    assert!((800..1200).contains(&failures), "{failures} of 4000 at 1/4");
    Ok(())
}

#[test]
fn bit_flips_persist_across_rereads_and_crashes() -> io::Result<()> {
    let fs = disk(11);
    write_synced(&fs, "/d/f", &[0u8; 64])?;
    fs.sync_dir(&p("/d"))?;
    fs.flip_bit(&p("/d/f"), 10, 3)?;
    let mut want = vec![0u8; 64];
    want[10] = 8;
    assert_eq!(read_file(&fs, &p("/d/f"))?, want);
    fs.crash(CrashKind::PowerLoss);
    assert_eq!(read_file(&fs, &p("/d/f"))?, want, "a re-read never heals corruption");
    let (off, bit) = fs.flip_random_bit(&p("/d/f"))?;
    want[off as usize] ^= 1 << bit;
    assert_eq!(read_file(&fs, &p("/d/f"))?, want);
    Ok(())
}

#[test]
fn bit_flip_rule_on_read_is_latent() -> io::Result<()> {
    let rule = FaultRule::always(FaultEffect::BitFlip, &[OpKind::Read]).max_fires(1);
    let fs = disk_with(12, SimFsOptions { rules: vec![rule], ..SimFsOptions::default() });
    write_synced(&fs, "/f", &[0u8; 32])?;
    let first = read_file(&fs, &p("/f"))?;
    let second = read_file(&fs, &p("/f"))?;
    assert_eq!(first.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
    assert_eq!(first, second);
    Ok(())
}

/// Unsynced sectors after a power loss, under odds that force one fate each.
fn after_power_loss(odds: SectorOdds, seed: u64) -> io::Result<Vec<u8>> {
    let fs = disk_with(seed, SimFsOptions { power_loss: odds, ..SimFsOptions::default() });
    fs.create_dir_all(&p("/d"))?;
    fs.sync_dir(&p("/"))?;
    write_synced(&fs, "/d/f", &[1u8; 512])?;
    fs.sync_dir(&p("/d"))?;
    let mut f = fs.open(&p("/d/f"), OpenOptions::read_write())?;
    f.write_at(&[2u8; 1024], 512)?;
    fs.crash(CrashKind::PowerLoss);
    read_file(&fs, &p("/d/f"))
}

#[test]
fn garbage_sectors_differ_from_dropped_and_kept_ones() -> io::Result<()> {
    let keep = after_power_loss(SectorOdds::new(1, 0, 0).expect("odds"), 13)?;
    let drop = after_power_loss(SectorOdds::new(0, 1, 0).expect("odds"), 13)?;
    let garbage = after_power_loss(SectorOdds::new(0, 0, 1).expect("odds"), 13)?;
    assert_eq!(&keep[..512], &[1u8; 512]);
    assert_eq!(&keep[512..], &[2u8; 1024]);
    assert_eq!(drop, vec![1u8; 512], "dropped growth leaves the synced length");
    assert_eq!(&garbage[..512], &[1u8; 512], "synced bytes untouched by garbage");
    assert_eq!(garbage.len(), 1536);
    assert!(garbage[512..].iter().any(|&b| b != 2) && garbage[512..].iter().any(|&b| b != 0));
    Ok(())
}

#[test]
fn a_dropped_sector_before_a_kept_one_reads_as_zeros() -> io::Result<()> {
    // Sector 1 dropped, sector 2 kept: the hole reads as never-written zeros.
    for seed in 0..200 {
        let out = after_power_loss(SectorOdds::new(1, 1, 0).expect("odds"), seed)?;
        if out.len() == 1536 && out[512..1024].iter().all(|&b| b == 0) {
            assert_eq!(&out[1024..], &[2u8; 512]);
            return Ok(());
        }
    }
    panic!("no seed in 0..200 dropped the first sector and kept the second");
}

#[test]
fn partial_sector_garbage_spares_the_synced_prefix() -> io::Result<()> {
    let fs = disk_with(
        14,
        SimFsOptions { power_loss: SectorOdds::new(0, 0, 1).expect("odds"), ..SimFsOptions::default() },
    );
    write_synced(&fs, "/f", &[9u8; 100])?;
    fs.sync_dir(&p("/"))?;
    let mut f = fs.open(&p("/f"), OpenOptions::read_write())?;
    f.write_at(&[5u8; 100], 100)?;
    fs.crash(CrashKind::PowerLoss);
    let out = read_file(&fs, &p("/f"))?;
    assert_eq!(&out[..100], &[9u8; 100]);
    Ok(())
}

#[test]
fn armed_crash_tears_a_write_at_a_sector_boundary() -> io::Result<()> {
    let fs = disk(15);
    let mut f = fs.open(&p("/d/f"), OpenOptions::create_new())?;
    let at = fs.ops_done();
    fs.arm_crash(at, CrashKind::ProcessKill, TornWrite::Sectors(1));
    let err = f.write_at(&[4u8; 1500], 100).expect_err("crashed");
    assert!(is_crash_error(&err));
    assert!(fs.is_halted());
    assert!(fs.open(&p("/d/f"), OpenOptions::read_only()).is_err(), "dead until resume");
    fs.resume();
    let out = read_file(&fs, &p("/d/f"))?;
    // One sector piece landed: bytes 100..512.
    assert_eq!(out.len(), 512);
    assert_eq!(&out[100..], &[4u8; 412][..]);
    Ok(())
}

#[test]
fn armed_crash_on_sync_leaves_data_unsynced() -> io::Result<()> {
    let fs = disk_with(
        16,
        SimFsOptions { power_loss: SectorOdds::new(0, 1, 0).expect("odds"), ..SimFsOptions::default() },
    );
    write_synced(&fs, "/f", b"v1")?;
    fs.sync_dir(&p("/"))?;
    let mut f = fs.open(&p("/f"), OpenOptions::read_write())?;
    f.write_at(b"v2", 0)?;
    fs.arm_crash(fs.ops_done(), CrashKind::PowerLoss, TornWrite::Random);
    assert!(f.sync().is_err());
    fs.resume();
    assert_eq!(read_file(&fs, &p("/f"))?, b"v1");
    Ok(())
}

/// Run a fixed script of writes, renames, syncs and a power loss; return the disk image.
fn script(seed: u64) -> io::Result<std::collections::BTreeMap<PathBuf, Vec<u8>>> {
    let fs = disk(seed);
    for i in 0..20u8 {
        let path = format!("/d/f{}", i % 5);
        let mut f = fs.open(
            &p(&path),
            OpenOptions { read: true, write: true, create: true, ..OpenOptions::default() },
        )?;
        f.write_at(&vec![i; 700 + i as usize * 37], u64::from(i) * 300)?;
        if i % 3 == 0 {
            f.sync()?;
        }
        if i % 4 == 0 {
            fs.sync_dir(&p("/d"))?;
        }
    }
    fs.rename(&p("/d/f1"), &p("/d/g"))?;
    fs.crash(CrashKind::PowerLoss);
    Ok(fs.durable_image())
}

#[test]
fn same_seed_gives_identical_disk_image() -> io::Result<()> {
    assert_eq!(script(42)?, script(42)?);
    assert_ne!(script(42)?, script(43)?, "different seeds draw different fates");
    Ok(())
}

#[test]
fn an_unsynced_shrink_never_brings_back_more_than_was_written() -> io::Result<()> {
    // Failure: write, shrink without sync, power loss with every sector torn.
    for seed in 0..20 {
        let fs = disk_with(
            100 + seed,
            SimFsOptions { power_loss: SectorOdds::new(0, 0, 1).expect("odds"), ..SimFsOptions::default() },
        );
        write_synced(&fs, "/f", &[1u8; 512])?;
        fs.sync_dir(&p("/"))?;
        let mut f = fs.open(&p("/f"), OpenOptions::read_write())?;
        f.write_at(&[2u8; 2048], 512)?;
        f.set_len(256)?;
        fs.crash(CrashKind::PowerLoss);
        let out = read_file(&fs, &p("/f"))?;
        assert!(
            out.len() <= 512,
            "seed {seed}: {} bytes after a shrink to 256 of a 512-byte durable file",
            out.len()
        );
        assert_eq!(&out[..256], &[1u8; 256]);
    }
    Ok(())
}

#[test]
fn a_crash_armed_on_a_path_lands_inside_the_first_matching_write_only() -> io::Result<()> {
    // Failure injected: an OOM-kill armed for writes to `*.wal`, while other files are written first.
    // Invariant: it passes over operations on other paths, fires inside the first matching write
    // (which lands part way), and every later operation fails until the process resumes.
    let fs = disk(11);
    fs.create_dir_all(&p("/d"))?;
    fs.arm_crash_on_write(0, "*/raft/*.wal", CrashKind::ProcessKill, TornWrite::Sectors(1));
    write_synced(&fs, "/d/other", b"not this one")?;
    assert!(fs.is_armed() && !fs.is_halted());
    fs.create_dir_all(&p("/d/raft"))?;
    let mut f = fs.open(&p("/d/raft/1.wal"), OpenOptions::create_new())?;
    let err = f.write_at(&[7u8; 2048], 0).expect_err("the crash lands inside this write");
    assert!(is_crash_error(&err), "{err}");
    assert!(fs.is_halted() && !fs.is_armed());
    assert!(fs.sync_dir(&p("/d")).is_err(), "dead until resumed");
    fs.resume();
    let len = fs.metadata(&p("/d/raft/1.wal"))?.len;
    assert_eq!(len, 512, "exactly the one sector that landed before the kill");
    Ok(())
}

#[test]
fn a_partial_tear_waits_for_a_write_that_crosses_a_sector_and_lands_a_strict_prefix() -> io::Result<()> {
    // Failure injected: a kill armed with `TornWrite::Partial` on a path pattern.
    // Invariant: writes inside one sector pass untouched (they cannot be torn); the first write that
    // crosses a sector boundary is cut after at least one piece and before its end, and the disk
    // records a partial tear.
    for seed in 0..20u64 {
        let fs = disk(100 + seed);
        fs.create_dir_all(&p("/d/raft"))?;
        let mut f = fs.open(&p("/d/raft/1.wal"), OpenOptions::create_new())?;
        fs.arm_crash_on_write(0, "*/raft/*.wal", CrashKind::ProcessKill, TornWrite::Partial);
        f.write_at(&[1u8; 300], 0)?;
        assert!(fs.is_armed(), "a write inside one sector is not the one");
        let err = f.write_at(&[2u8; 1500], 300).expect_err("this write crosses sector boundaries");
        assert!(is_crash_error(&err), "{err}");
        fs.resume();
        let len = fs.metadata(&p("/d/raft/1.wal"))?.len;
        assert!(len > 300 && len < 1800, "seed {seed}: a strict prefix landed ({len})");
        assert_eq!(len % 512, 0, "seed {seed}: the cut is at a sector boundary ({len})");
        assert_eq!(fs.coverage().get("crash.torn_write.partial"), Some(&1));
    }
    Ok(())
}

#[test]
fn failpoints_fire_their_action_for_the_hits_they_were_attached_for() -> io::Result<()> {
    // Failure injected: an error attached to `wal.sync` for two hits, a stall to `transport.send`,
    // and a kill with power loss to `snapshot.write`.
    // Invariant: each fires exactly as attached and only on this disk; the kill halts the disk with
    // unsynced data gone, as an armed crash does; a restart clears a pending stall.
    use durakv_faults::FailAction;
    use std::time::Duration;
    let fs = disk(12);
    let other = disk(13);
    fs.attach_failpoint("wal.sync", FailAction::Error, Some(2));
    for _ in 0..2 {
        let err = fs.failpoint("wal.sync").expect_err("attached for two hits");
        assert!(durakv::failpoint::is_injected(&err), "{err}");
    }
    assert_eq!(fs.failpoint("wal.sync")?, None, "spent after two hits");
    assert_eq!(other.failpoint("wal.sync")?, None, "another server's disk has nothing attached");
    fs.attach_failpoint("transport.send", FailAction::Stall(Duration::from_millis(300)), None);
    assert_eq!(fs.failpoint("transport.send")?, Some(Duration::from_millis(300)));
    fs.defer_stall(Duration::from_millis(300));
    assert_eq!(fs.take_stall(), Some(Duration::from_millis(300)));
    assert_eq!(fs.take_stall(), None, "a stall is served once");
    fs.detach_failpoint("transport.send");
    assert_eq!(fs.failpoint("transport.send")?, None);

    fs.create_dir_all(&p("/d"))?;
    fs.sync_dir(&p("/"))?;
    let mut f = fs.open(&p("/d/unsynced"), OpenOptions::create_new())?;
    f.write_at(b"lost at power loss", 0)?;
    fs.attach_failpoint("snapshot.write", FailAction::Kill(CrashKind::PowerLoss), Some(1));
    let err = fs.failpoint("snapshot.write").expect_err("killed here");
    assert!(is_crash_error(&err), "{err}");
    assert!(fs.is_halted());
    fs.defer_stall(Duration::from_millis(5));
    fs.resume();
    assert_eq!(fs.take_stall(), None, "the dead process's stall is gone");
    assert!(!fs.exists(&p("/d/unsynced"))?, "the power loss took the never-synced file");
    assert_eq!(fs.failpoint_fires().get("wal.sync"), Some(&2));
    assert_eq!(fs.failpoint_fires().get("snapshot.write"), Some(&1));
    Ok(())
}

#[test]
fn rules_and_capacity_change_while_the_disk_runs() -> io::Result<()> {
    // Failure injected: EIO on fsync of WAL files added at run time, then ENOSPC by shrinking the
    // capacity to what is used. Invariant: each fault starts when set and stops when lifted.
    let fs = disk(14);
    fs.create_dir_all(&p("/raft"))?;
    let mut f = fs.open(&p("/raft/1.wal"), OpenOptions::create_new())?;
    f.write_at(b"entry", 0)?;
    f.sync()?;
    let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Sync]).on_path("*.wal").expect("pattern");
    fs.add_rule(rule).expect("valid rule");
    f.write_at(b"entry", 5)?;
    let err = f.sync().expect_err("EIO from now on");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    fs.clear_rules();
    let mut g = fs.open(&p("/raft/2.wal"), OpenOptions::create_new())?;
    g.write_at(b"x", 0)?;
    g.sync()?;
    fs.set_capacity(Some(fs.used_bytes()));
    let err = g.write_at(b"more", 1).expect_err("full");
    assert!(is_no_space(&err), "{err}");
    g.write_at(b"y", 0)?;
    fs.set_capacity(None);
    g.write_at(b"more", 1)?;
    Ok(())
}

#[test]
fn a_crash_after_a_rename_keeps_the_rename_but_not_the_unsynced_directory_entry() -> io::Result<()> {
    // Failure injected: power loss right *after* a rename completes, before the caller can fsync the
    // directory (the window between two synchronous calls that no `.await` reaches).
    // Invariant: the rename itself ran (a process kill would see it), the operation reports the
    // crash, every later operation fails until resume, and the power loss reverts the directory to
    // its durable entries: the renamed file is back under its old name.
    let fs = disk(21);
    write_synced(&fs, "/d/a.tmp", b"body")?;
    fs.sync_dir(&p("/d"))?;
    fs.arm_crash_after(fs.ops_done(), Some(OpKind::Rename), "/d/*", 1, CrashKind::PowerLoss);
    write_synced(&fs, "/d/other", b"x")?;
    assert!(fs.is_armed(), "writes and syncs are not renames");
    let err = fs.rename(&p("/d/a.tmp"), &p("/d/a")).expect_err("the crash lands after the rename");
    assert!(is_crash_error(&err), "{err}");
    assert!(fs.is_halted() && !fs.is_armed());
    assert!(fs.sync_dir(&p("/d")).is_err(), "dead until resumed");
    fs.resume();
    assert!(fs.exists(&p("/d/a.tmp"))? && !fs.exists(&p("/d/a"))?, "the rename was never made durable");
    assert_eq!(fs.coverage().get("crash.after.rename"), Some(&1));
    Ok(())
}

#[test]
fn a_crash_after_an_fsync_keeps_what_it_synced() -> io::Result<()> {
    // Failure injected: power loss right after the 2nd fsync of a file, with every unsynced sector
    // dropped. Invariant: the bytes both fsyncs covered survive; a write after the last fsync never
    // happens (the process is dead), and the crash landed after the 2nd sync, not the 1st.
    let fs = disk_with(
        22,
        SimFsOptions { power_loss: SectorOdds::new(0, 1, 0).expect("odds"), ..SimFsOptions::default() },
    );
    fs.create_dir_all(&p("/d"))?;
    fs.sync_dir(&p("/"))?;
    let mut f = fs.open(&p("/d/log"), OpenOptions::create_new())?;
    fs.sync_dir(&p("/d"))?;
    fs.arm_crash_after(fs.ops_done(), Some(OpKind::Sync), "*", 2, CrashKind::PowerLoss);
    f.write_at(&[1u8; 512], 0)?;
    f.sync()?;
    f.write_at(&[2u8; 512], 512)?;
    let err = f.sync().expect_err("the crash lands after the second fsync");
    assert!(is_crash_error(&err), "{err}");
    assert!(f.write_at(&[3u8; 512], 1024).is_err(), "a dead process writes nothing");
    fs.resume();
    let out = read_file(&fs, &p("/d/log"))?;
    assert_eq!(out.len(), 1024);
    assert!(out[..512].iter().all(|&b| b == 1) && out[512..].iter().all(|&b| b == 2));
    Ok(())
}

#[test]
fn a_failpoint_kill_after_lets_the_guarded_operation_complete_then_halts() -> io::Result<()> {
    // Failure injected: `wal.sync` with a kill placed *after* the operation it guards.
    // Invariant: the failpoint itself passes, the next operation (the fsync) completes on the media
    // and reports the crash; a companion disk loses power at the same instant (a correlated fault)
    // and the halt hooks of both run once.
    use durakv_faults::FailAction;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let fs = disk_with(
        23,
        SimFsOptions { power_loss: SectorOdds::new(0, 1, 0).expect("odds"), ..SimFsOptions::default() },
    );
    let other = disk(24);
    let halts = Arc::new(AtomicU64::new(0));
    for d in [&fs, &other] {
        let h = halts.clone();
        d.set_on_halt(Arc::new(move || {
            h.fetch_add(1, Ordering::Relaxed);
        }));
    }
    write_synced(&other, "/d/unsynced-name", b"y")?;
    fs.crash_together_with(vec![other.clone()]);
    fs.attach_failpoint("wal.sync", FailAction::KillAfter(CrashKind::PowerLoss), Some(1));
    write_synced(&fs, "/f", b"v1")?;
    fs.sync_dir(&p("/"))?;
    let mut f = fs.open(&p("/f"), OpenOptions::read_write())?;
    f.write_at(b"v2", 0)?;
    assert_eq!(fs.failpoint("wal.sync")?, None, "the code at the failpoint goes on");
    let err = f.sync().expect_err("the guarded fsync completes, then the process dies");
    assert!(is_crash_error(&err), "{err}");
    assert!(fs.is_halted() && other.is_halted());
    assert_eq!(halts.load(Ordering::Relaxed), 2);
    fs.resume();
    other.resume();
    assert_eq!(read_file(&fs, &p("/f"))?, b"v2", "the fsync reached the media before the crash");
    assert!(!other.exists(&p("/d/unsynced-name"))?, "the companion lost power too");
    assert_eq!(other.coverage().get("crash.correlated"), Some(&1));
    Ok(())
}
