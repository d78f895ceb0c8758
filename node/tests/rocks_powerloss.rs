//! The production engine, RocksDB, under power loss: [`RocksEngine`] opened in this process on the
//! simulated disk mounted through FUSE (`durakv_faults::fuse`), so every write, fsync, rename and
//! directory fsync RocksDB and the `CURRENT_DB` swap make goes through the simulator's crash model.
//!
//! Failures injected: a process kill or a power loss (three sets of sector fates: the default mix,
//! every unsynced sector dropped, every unsynced sector garbage) during every durability operation
//! (write, fsync, directory fsync, rename, remove, create, truncate) of a workload of mixed
//! `Sync`/`NoSync` batches carrying the applied index, `flush`es, and a snapshot restore (a fresh
//! database swapped in by the `CURRENT_DB` pointer). RocksDB's diagnostics log (`LOG`) is written on
//! every event; crashes inside it are not explored (it holds nothing recovery reads).
//!
//! Invariants, the ones `fsm_crash.rs` holds `SimEngine` to: recovery needs no operator; the
//! applied index always equals the data present (nothing torn, nothing half-restored); no `Sync`
//! batch, no batch before a returned `flush` and no returned restore is lost; a process kill loses
//! nothing acknowledged; nothing appears that was never written.

#![cfg(feature = "rocksdb")]

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::Path;

use durakv::fsm::{Engine, FsmError, RocksEngine, WriteBatch, WriteMode};
use durakv_faults::fuse::{MountedDisk, fuse_or_skip};
use durakv_faults::{CrashKind, SectorOdds, SimFs, SimFsOptions, TornWrite};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Crashes are never armed on RocksDB's diagnostics log.
const NOT_EXPLORED: &str = "*/LOG*";

#[derive(Debug, Clone, Copy)]
enum Step {
    Write(u64, WriteMode),
    Flush,
    /// Replace the state with a snapshot at this applied index.
    Restore(u64),
}

fn workload(seed: u64) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut steps = Vec::new();
    let mut i = 0;
    while steps.len() < 16 {
        if steps.len() == 8 {
            i += 100;
            steps.push(Step::Restore(i));
        } else if rng.random_range(0..6) == 0 {
            steps.push(Step::Flush);
        } else {
            i += 1;
            let mode = if rng.random_range(0..3) == 0 { WriteMode::Sync } else { WriteMode::NoSync };
            steps.push(Step::Write(i, mode));
        }
    }
    steps
}

fn value(i: u64) -> Vec<u8> {
    // Values span sectors, so torn writes cut through batches.
    vec![i as u8; 150 + (i as usize * 37) % 700]
}

fn batch(i: u64) -> WriteBatch {
    let mut b = WriteBatch::new();
    b.put(format!("b{i}"), value(i)).put("last", i.to_string());
    if i.is_multiple_of(5) {
        b.delete(format!("b{}", i - 1));
    }
    b.set_applied_index(i);
    b
}

/// The snapshot a restore at index `r` installs.
fn restored(r: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m: BTreeMap<Vec<u8>, Vec<u8>> =
        (0..40u64).map(|j| (format!("r{j:02}").into_bytes(), value(j + r))).collect();
    m.insert(b"last".to_vec(), r.to_string().into_bytes());
    m
}

/// The client keys the engine must hold at applied index `n`.
fn expected(steps: &[Step], n: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for step in steps {
        match *step {
            Step::Write(i, _) if i <= n => {
                m.insert(format!("b{i}").into_bytes(), value(i));
                m.insert(b"last".to_vec(), i.to_string().into_bytes());
                if i.is_multiple_of(5) {
                    m.remove(format!("b{}", i - 1).as_bytes());
                }
            }
            Step::Restore(r) if r <= n => m = restored(r),
            _ => {}
        }
    }
    m
}

/// What a run got acknowledged: the last applied index returned, and the last one made durable by a
/// `Sync` write, a `flush` or a restore.
#[derive(Debug, Clone, Copy, Default)]
struct Acked {
    acked: u64,
    durable: u64,
}

fn run(root: &Path, steps: &[Step]) -> Acked {
    let mut a = Acked::default();
    let Ok(e) = RocksEngine::open(root) else { return a };
    for step in steps {
        let result = match *step {
            Step::Write(i, mode) => e.write(&batch(i), mode).map(|()| {
                a.acked = i;
                if mode == WriteMode::Sync {
                    a.durable = i;
                }
            }),
            Step::Flush => e.flush().map(|()| a.durable = a.acked),
            Step::Restore(r) => (|| -> Result<(), FsmError> {
                let mut target = e.begin_restore()?;
                for (k, v) in restored(r) {
                    target.put(&k, &v)?;
                }
                target.commit(r, 1)?;
                a.acked = r;
                a.durable = r;
                Ok(())
            })(),
        };
        if result.is_err() {
            // The disk crashed under the engine: everything after fails the same way.
            break;
        }
    }
    a
}

fn state_of(e: &RocksEngine) -> BTreeMap<Vec<u8>, Vec<u8>> {
    e.scan(b"", None, usize::MAX).expect("scan after recovery").into_iter().collect()
}

struct Mount {
    _dir: tempfile::TempDir,
    disk: MountedDisk,
}

fn mount(seed: u64, odds: SectorOdds) -> Mount {
    let dir = tempfile::tempdir().expect("temp dir");
    let fs = SimFs::new(seed, SimFsOptions { power_loss: odds, ..SimFsOptions::default() }).expect("options");
    let disk = MountedDisk::mount(fs, dir.path()).expect("mount the simulated disk");
    Mount { _dir: dir, disk }
}

/// Failure injected: a process kill or a power loss (three kinds of sector fates) inside every
/// durability operation RocksDB and the restore swap make in the workload. Invariants: see the
/// module docs. Prints the number of crash states explored and of distinct disk images.
#[test]
fn rocksdb_survives_a_crash_at_every_durability_operation() {
    if !fuse_or_skip("rocksdb_survives_a_crash_at_every_durability_operation") {
        return;
    }
    let kinds = [
        ("process kill", CrashKind::ProcessKill, SectorOdds::default()),
        ("power loss (mixed fates)", CrashKind::PowerLoss, SectorOdds::default()),
        ("power loss (unsynced dropped)", CrashKind::PowerLoss, SectorOdds::new(0, 1, 0).expect("odds")),
        ("power loss (unsynced garbage)", CrashKind::PowerLoss, SectorOdds::new(0, 0, 1).expect("odds")),
    ];
    let mut images = BTreeSet::new();
    let mut states = 0u64;
    let mut per_kind = BTreeMap::new();
    let mut lost_to_tail = 0u64;
    for seq in 0..2u64 {
        let steps = workload(seq);
        // A clean run: the model must agree with RocksDB before any crash is judged.
        {
            let m = mount(0, SectorOdds::default());
            let root = m.disk.dir().join("fsm");
            let a = run(&root, &steps);
            let e = RocksEngine::open(&root).expect("clean reopen");
            assert_eq!(e.applied_index().expect("applied index"), Some(a.acked));
            assert_eq!(state_of(&e), expected(&steps, a.acked), "clean run of workload {seq}");
        }
        for (ki, (name, kind, odds)) in kinds.into_iter().enumerate() {
            let mut k = 0u64;
            // Explore until a crash point lies past everything the workload does.
            loop {
                let mut m = mount(seq * 1_000_003 + k * 7 + ki as u64, odds);
                let root = m.disk.dir().join("fsm");
                m.disk.disk().arm_crash_skipping(k, NOT_EXPLORED, kind, TornWrite::Random);
                m.disk.disk().set_trace(
                    std::env::var("DURAKV_TRACE_CRASH").is_ok_and(|v| v == format!("{seq}/{ki}/{k}")),
                );
                let a = run(&root, &steps);
                if !m.disk.disk().is_halted() {
                    break;
                }
                m.disk.restart().expect("remount after the crash");
                let mut h = std::collections::hash_map::DefaultHasher::new();
                m.disk.disk().durable_image().hash(&mut h);
                images.insert(h.finish());
                let ctx = format!("workload {seq}, {name} at operation {k}, acked {a:?}");
                let e =
                    RocksEngine::open(&root).unwrap_or_else(|err| panic!("{ctx}: recovery failed: {err}"));
                let n = e.applied_index().expect("applied index").unwrap_or(0);
                assert!(n >= a.durable, "{ctx}: durable index {} lost (applied {n})", a.durable);
                if kind == CrashKind::ProcessKill {
                    assert!(n >= a.acked, "{ctx}: a process kill lost an acknowledged write (applied {n})");
                }
                let in_flight = steps.iter().any(|s| match *s {
                    Step::Write(i, _) | Step::Restore(i) => i == n,
                    Step::Flush => false,
                });
                assert!(n == 0 || in_flight, "{ctx}: applied index {n} names nothing written");
                assert!(
                    n <= a.acked.max(next_after(&steps, a.acked)),
                    "{ctx}: applied {n} is past anything written"
                );
                assert_eq!(
                    state_of(&e),
                    expected(&steps, n),
                    "{ctx}: the data does not match applied index {n}"
                );
                lost_to_tail += u64::from(n < a.acked);
                // The engine goes on after recovery.
                e.write(&batch(n + 1), WriteMode::Sync)
                    .unwrap_or_else(|err| panic!("{ctx}: write after recovery: {err}"));
                drop(e);
                states += 1;
                *per_kind.entry(name).or_insert(0u64) += 1;
                k += 1;
            }
        }
    }
    println!(
        "RocksDB: {states} crash states explored ({per_kind:?}), {} distinct post-crash disk images, \
         {lost_to_tail} recovered to an unsynced tail's start (allowed: nothing synced was lost)",
        images.len()
    );
    assert!(states >= 200, "only {states} crash states: the exploration did not reach the workload");
}

/// The index the step after the one that made `acked` would apply (a step in flight may land).
fn next_after(steps: &[Step], acked: u64) -> u64 {
    let idx = |s: &Step| match *s {
        Step::Write(i, _) | Step::Restore(i) => Some(i),
        Step::Flush => None,
    };
    steps.iter().filter_map(idx).find(|&i| i > acked).unwrap_or(acked)
}

/// Failure injected: a power loss that drops every unsynced sector and directory entry, right after
/// the first `Sync` write to a freshly created engine. Invariant: the synced write survives. It did
/// not: RocksDB never fsyncs the directory that names its database, so `db-0` vanished and
/// `create_if_missing` opened an empty database in its place.
#[test]
fn a_synced_write_to_a_new_engine_survives_power_loss() {
    if !fuse_or_skip("a_synced_write_to_a_new_engine_survives_power_loss") {
        return;
    }
    let mut m = mount(9, SectorOdds::new(0, 1, 0).expect("odds"));
    let root = m.disk.dir().join("fsm");
    let e = RocksEngine::open(&root).expect("open");
    e.write(&batch(1), WriteMode::Sync).expect("synced write");
    m.disk.disk().cut(CrashKind::PowerLoss);
    drop(e);
    m.disk.restart().expect("remount");
    let e = RocksEngine::open(&root).expect("recovery");
    assert_eq!(e.applied_index().expect("applied index"), Some(1), "the synced write was lost");
    assert_eq!(e.get(b"b1").expect("get"), Some(value(1)));
}

/// Failure injected: `EIO` on one fsync of RocksDB's WAL (fsyncgate: the failed sync forgets some of
/// its dirty sectors while the page cache still shows them), then a process kill, more synced writes,
/// and a power loss that drops every unsynced sector. Invariants (D10 on RocksDB): the failed write
/// is an error and the engine refuses every later write (fail-stop, never skipping the entry); after
/// the restart the applied index equals the data and is the failed entry or the one before (the raft
/// log re-delivers it); what was synced after the restart survives the power loss with no hole below
/// it.
#[test]
fn a_failed_wal_fsync_stops_rocksdb_and_leaves_no_hole_after_power_loss() {
    if !fuse_or_skip("a_failed_wal_fsync_stops_rocksdb_and_leaves_no_hole_after_power_loss") {
        return;
    }
    let mut m = mount(11, SectorOdds::new(0, 1, 0).expect("odds"));
    let root = m.disk.dir().join("fsm");
    let e = RocksEngine::open(&root).expect("open");
    for i in 1..=3 {
        e.write(&batch(i), WriteMode::Sync).expect("write before the fault");
    }
    let rule =
        durakv_faults::FaultRule::always(durakv_faults::FaultEffect::Eio, &[durakv_faults::OpKind::Sync])
            .on_path("*.log")
            .expect("glob")
            .after_ops(m.disk.disk().ops_done())
            .max_fires(1);
    m.disk.disk().add_rule(rule).expect("rule");
    let mut failed_at = None;
    for i in 4..=20 {
        // NoSync writes reach the page cache; the Sync one after them fails its fsync.
        let mode = if i % 3 == 0 { WriteMode::Sync } else { WriteMode::NoSync };
        if e.write(&batch(i), mode).is_err() {
            failed_at = Some(i);
            break;
        }
    }
    let failed_at = failed_at.expect("the injected EIO reached the engine");
    assert!(
        e.write(&batch(failed_at + 1), WriteMode::Sync).is_err(),
        "RocksDB took a write after a failed fsync"
    );
    drop(e);
    assert_eq!(m.disk.disk().coverage().get("fault.eio.sync.lost_pages"), Some(&1));
    m.disk.disk().cut(CrashKind::ProcessKill);
    m.disk.restart().expect("remount");
    let steps: Vec<Step> = (1..=40).map(|i| Step::Write(i, WriteMode::Sync)).collect();
    let e = RocksEngine::open(&root).expect("restart after the failed fsync");
    let n = e.applied_index().expect("applied index").unwrap_or(0);
    assert!(n == failed_at || n == failed_at - 1, "applied {n} after a failure at {failed_at}");
    assert_eq!(state_of(&e), expected(&steps, n), "the data does not match applied index {n}");
    for i in n + 1..=n + 5 {
        e.write(&batch(i), WriteMode::Sync).expect("write after the restart");
    }
    drop(e);
    m.disk.disk().cut(CrashKind::PowerLoss);
    m.disk.restart().expect("remount");
    let e = RocksEngine::open(&root).expect("recovery after the power loss");
    let after = e.applied_index().expect("applied index").unwrap_or(0);
    assert_eq!(after, n + 5, "a synced write after the restart was lost (applied {after})");
    assert_eq!(state_of(&e), expected(&steps, after), "a hole below applied index {after}");
}

/// Failure injected: what a power loss leaves under `nosync` once in about 40 garbage sectors: the
/// unsynced tail of RocksDB's log starts, at a record boundary, with a header of a *recyclable* type,
/// on which RocksDB 11.8's log reader spins forever (facebook/rocksdb#13333; found by `make
/// powercut`: the node sat at 100 % CPU at every start). Invariant: the engine opens, keeps every
/// record before the garbage (the applied index equals the data), keeps the cut bytes as evidence, and
/// takes writes again.
#[test]
fn garbage_rocksdb_would_spin_on_is_cut_from_its_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("fsm");
    {
        let e = RocksEngine::open(&root).expect("open");
        for i in 1..=5 {
            e.write(&batch(i), WriteMode::NoSync).expect("write");
        }
    }
    let db = root.join("db-0");
    let mut logs: Vec<_> = std::fs::read_dir(&db)
        .expect("db dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let log = logs.pop().expect("RocksDB's log");
    let mut garbage = std::fs::OpenOptions::new().append(true).open(&log).expect("open the log");
    std::io::Write::write_all(
        &mut garbage,
        &[0x5a, 0x17, 0xc3, 0x08, 0x40, 0x00, 7, 0x99, 0x12, 0x77, 0x01, 0xee],
    )
    .expect("garbage");
    drop(garbage);
    // A hang is the failure: open on a thread and give up waiting after a generous bound.
    let (tx, rx) = std::sync::mpsc::channel();
    let open_root = root.clone();
    std::thread::spawn(move || {
        let _ = tx.send(RocksEngine::open(&open_root).map(|e| {
            let n = e.applied_index().expect("applied index");
            (n, state_of(&e), e.write(&batch(6), WriteMode::Sync).is_ok())
        }));
    });
    let (n, state, writable) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("RocksDB hung opening a log with a recyclable-type header in its unsynced tail")
        .expect("recovery");
    let steps: Vec<Step> = (1..=5).map(|i| Step::Write(i, WriteMode::NoSync)).collect();
    assert_eq!(n, Some(5), "records before the garbage were lost");
    assert_eq!(state, expected(&steps, 5));
    assert!(writable, "the engine refused a write after the cut");
    let evidence: Vec<_> = std::fs::read_dir(&root)
        .expect("root")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cut"))
        .collect();
    assert_eq!(evidence.len(), 1, "the cut bytes are kept as evidence");
}
