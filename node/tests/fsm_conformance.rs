//! One conformance suite, the same test bodies, run against every engine: `SimEngine` on the simulated
//! disk, `SimEngine` on the real filesystem, and `RocksEngine` (with the `rocksdb` feature).
//!
//! Invariants: batches are atomic and ordered; deletes and delete-range never touch meta values;
//! iteration is ordered and honours limits and prefixes; data and the applied index survive a reopen;
//! a snapshot does not see later writes; the applied index moves with its batch, monotonically.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use durakv::fsm::{
    Command, Engine, FsmError, FsmSync, Kv, MetaKey, Reply, SetCondition, SimEngine, SimEngineOptions,
    WriteBatch, WriteMode,
};
use durakv::io::RealFs;
use durakv::wal::WalOptions;
use durakv_faults::SimFs;

/// Opens the engine under test, again and again at the same place.
trait Harness {
    fn open(&mut self) -> Box<dyn Engine>;
}

struct SimOnSimFs {
    fs: SimFs,
}

impl Harness for SimOnSimFs {
    fn open(&mut self) -> Box<dyn Engine> {
        // A tiny checkpoint threshold and segment size so the suite also crosses checkpoints.
        let opts = SimEngineOptions {
            checkpoint_after_bytes: 2048,
            journal: WalOptions { segment_size_bytes: 4096, ..WalOptions::default() },
        };
        Box::new(SimEngine::open(Arc::new(self.fs.clone()), Path::new("/fsm"), opts).expect("open SimEngine"))
    }
}

struct SimOnRealFs {
    dir: tempfile::TempDir,
}

impl Harness for SimOnRealFs {
    fn open(&mut self) -> Box<dyn Engine> {
        let path: PathBuf = self.dir.path().join("fsm");
        Box::new(SimEngine::open(Arc::new(RealFs::new()), &path, SimEngineOptions::default()).expect("open"))
    }
}

#[cfg(feature = "rocksdb")]
struct Rocks {
    dir: tempfile::TempDir,
}

#[cfg(feature = "rocksdb")]
impl Harness for Rocks {
    fn open(&mut self) -> Box<dyn Engine> {
        Box::new(durakv::fsm::RocksEngine::open(&self.dir.path().join("rocks")).expect("open RocksDB"))
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

fn keys_of(kvs: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    kvs.iter().map(|(k, _)| k.clone()).collect()
}

fn atomic_ordered_batches(h: &mut dyn Harness) -> Result<(), FsmError> {
    let e = h.open();
    let mut b = WriteBatch::new();
    for i in (0..100).rev() {
        b.put(key(i), format!("v{i}"));
    }
    b.delete(key(50)).set_applied_index(1);
    e.write(&b, WriteMode::Sync)?;
    let all = e.scan(b"", None, usize::MAX)?;
    let want: Vec<Vec<u8>> = (0..100).filter(|&i| i != 50).map(key).collect();
    assert_eq!(keys_of(&all), want, "ordered, the delete in the same batch applied after the put");
    assert_eq!(e.get(&key(7))?, Some(b"v7".to_vec()));
    assert_eq!(e.get(&key(50))?, None);
    // Later ops in a batch win over earlier ones on the same key.
    let mut b = WriteBatch::new();
    b.put("dup", "first").put("dup", "second");
    e.write(&b, WriteMode::NoSync)?;
    assert_eq!(e.get(b"dup")?, Some(b"second".to_vec()));
    Ok(())
}

fn deletes_and_ranges_spare_meta(h: &mut dyn Harness) -> Result<(), FsmError> {
    let e = h.open();
    let mut b = WriteBatch::new();
    for c in b'a'..=b'z' {
        b.put(vec![c], vec![c]);
    }
    b.put(vec![0xFF, 0xFF], "high")
        .set_applied_index(3)
        .set_meta(MetaKey::AppliedTerm, 2u64.to_be_bytes().to_vec());
    e.write(&b, WriteMode::Sync)?;
    let mut b = WriteBatch::new();
    b.delete_range("c", Some(b"f".to_vec())).delete("k").delete("not-there");
    e.write(&b, WriteMode::Sync)?;
    assert_eq!(e.get(b"c")?, None);
    assert_eq!(e.get(b"e")?, None);
    assert_eq!(e.get(b"f")?, Some(b"f".to_vec()), "range end is exclusive");
    assert_eq!(e.get(b"k")?, None);
    // Delete everything from "x" on, through the 0xFF keys, but never the meta namespace.
    e.write(WriteBatch::new().delete_range("x", None), WriteMode::Sync)?;
    assert_eq!(e.get(&[0xFF, 0xFF])?, None);
    assert_eq!(e.get(b"w")?, Some(b"w".to_vec()));
    assert_eq!(e.applied_index()?, Some(3));
    assert_eq!(e.meta(MetaKey::AppliedTerm)?, Some(2u64.to_be_bytes().to_vec()));
    // Delete every client key: the meta values stay.
    e.write(WriteBatch::new().delete_range("", None), WriteMode::Sync)?;
    assert!(e.scan(b"", None, 10)?.is_empty());
    assert_eq!(e.applied_index()?, Some(3));
    // An empty or inverted range deletes nothing.
    e.write(WriteBatch::new().put("m", "1").delete_range("z", Some(b"a".to_vec())), WriteMode::Sync)?;
    assert_eq!(e.get(b"m")?, Some(b"1".to_vec()));
    Ok(())
}

fn iteration_limits_and_prefixes(h: &mut dyn Harness) -> Result<(), FsmError> {
    let e = h.open();
    let mut b = WriteBatch::new();
    for k in ["user:1", "user:2", "user:3", "userx", "usr", "a", "user:\u{ff}"] {
        b.put(k, k);
    }
    b.put(vec![b'u', b's', b'e', b'r', b':', 0xFF, 0xFF], "ff");
    e.write(&b, WriteMode::Sync)?;
    let users = e.scan_prefix(b"user:", usize::MAX)?;
    assert_eq!(users.len(), 5);
    assert!(users.iter().all(|(k, _)| k.starts_with(b"user:")));
    assert_eq!(keys_of(&e.scan(b"user:", None, 2)?), vec![b"user:1".to_vec(), b"user:2".to_vec()]);
    assert_eq!(keys_of(&e.scan(b"a", Some(b"user:2"), 10)?), vec![b"a".to_vec(), b"user:1".to_vec()]);
    assert!(e.scan(b"b", Some(b"a"), 10)?.is_empty());
    assert!(e.scan(b"", None, 0)?.is_empty());
    Ok(())
}

fn reopen_keeps_data_and_applied_index(h: &mut dyn Harness) -> Result<(), FsmError> {
    {
        let e = h.open();
        for i in 1..=200u32 {
            let mut b = WriteBatch::new();
            b.put(key(i), vec![i as u8; 40]).set_applied_index(u64::from(i));
            let mode = if i % 2 == 0 { WriteMode::Sync } else { WriteMode::NoSync };
            e.write(&b, mode)?;
        }
        e.flush()?;
    }
    let e = h.open();
    assert_eq!(e.applied_index()?, Some(200));
    assert_eq!(e.scan(b"", None, usize::MAX)?.len(), 200);
    assert_eq!(e.get(&key(123))?, Some(vec![123u8; 40]));
    drop(e);
    // And again, after more writes on top of the reopened state.
    let e = h.open();
    e.write(WriteBatch::new().delete(key(1)).set_applied_index(201), WriteMode::Sync)?;
    drop(e);
    let e = h.open();
    assert_eq!(e.applied_index()?, Some(201));
    assert_eq!(e.get(&key(1))?, None);
    Ok(())
}

fn snapshots_are_isolated(h: &mut dyn Harness) -> Result<(), FsmError> {
    let e = h.open();
    let mut b = WriteBatch::new();
    for i in 0..10 {
        b.put(key(i), "old");
    }
    b.set_applied_index(10);
    e.write(&b, WriteMode::Sync)?;
    let mut seen = Vec::new();
    e.with_snapshot(&mut |snap| {
        // Writes after the snapshot was taken...
        let mut later = WriteBatch::new();
        later.put(key(3), "new").delete(key(4)).put(key(99), "new").set_applied_index(11);
        e.write(&later, WriteMode::Sync)?;
        // ...are invisible to it.
        assert_eq!(snap.get(&key(3))?, Some(b"old".to_vec()));
        assert_eq!(snap.get(&key(4))?, Some(b"old".to_vec()));
        assert_eq!(snap.meta(MetaKey::AppliedIndex)?, Some(10u64.to_be_bytes().to_vec()));
        snap.for_each(b"", &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
    })?;
    assert_eq!(seen.len(), 10);
    assert!(seen.iter().all(|(_, v)| v == b"old"));
    assert_eq!(e.get(&key(3))?, Some(b"new".to_vec()));
    // for_each stops when asked.
    let mut n = 0;
    e.with_snapshot(&mut |snap| {
        snap.for_each(&key(5), &mut |_, _| {
            n += 1;
            Ok(n < 2)
        })
    })?;
    assert_eq!(n, 2);
    Ok(())
}

fn applied_index_moves_with_its_batch(h: &mut dyn Harness) -> Result<(), FsmError> {
    let mut kv = Kv::new(h.open(), FsmSync::NoSync)?;
    assert_eq!(kv.applied_index(), 0);
    assert_eq!(kv.apply_raft(1, &Command::set("a", "1", SetCondition::Always).to_bytes())?, Reply::Ok);
    assert_eq!(kv.apply_raft(2, &[])?, Reply::Ok, "an empty entry only advances the index");
    assert!(matches!(kv.apply_raft(4, &[]), Err(FsmError::OutOfOrder { index: 4, applied: 2 })));
    assert_eq!(kv.apply_raft(2, &[])?, Reply::AlreadyApplied, "replay after restart is a no-op");
    assert_eq!(kv.engine().applied_index()?, Some(2));
    kv.engine().flush()?;
    drop(kv);
    let kv = Kv::new(h.open(), FsmSync::Sync)?;
    assert_eq!(kv.applied_index(), 2);
    assert_eq!(kv.get(b"a")?, Some(b"1".to_vec()));
    Ok(())
}

fn kv_commands(h: &mut dyn Harness) -> Result<(), FsmError> {
    let mut kv = Kv::new(h.open(), FsmSync::Sync)?;
    let mut i = 0;
    let mut apply = |kv: &mut Kv<Box<dyn Engine>>, c: Command| {
        i += 1;
        kv.apply_raft(i, &c.to_bytes())
    };
    assert_eq!(apply(&mut kv, Command::set("k", "v", SetCondition::IfPresent))?, Reply::NotWritten);
    assert_eq!(apply(&mut kv, Command::set("k", "v", SetCondition::IfAbsent))?, Reply::Ok);
    assert_eq!(apply(&mut kv, Command::set("k", "w", SetCondition::IfAbsent))?, Reply::NotWritten);
    assert_eq!(apply(&mut kv, Command::set("k", "w", SetCondition::IfPresent))?, Reply::Ok);
    assert_eq!(apply(&mut kv, Command::incr_by("n", 5))?, Reply::Int(5));
    assert_eq!(apply(&mut kv, Command::incr_by("n", -7))?, Reply::Int(-2));
    assert!(matches!(apply(&mut kv, Command::incr_by("k", 1))?, Reply::Error(_)), "not an integer");
    apply(&mut kv, Command::set("big", i64::MAX.to_string(), SetCondition::Always))?;
    assert!(matches!(apply(&mut kv, Command::incr_by("big", 1))?, Reply::Error(_)), "overflow");
    assert_eq!(apply(&mut kv, Command::append("s", "ab"))?, Reply::Int(2));
    assert_eq!(apply(&mut kv, Command::append("s", "cd"))?, Reply::Int(4));
    assert_eq!(
        apply(&mut kv, Command::mset(vec![(b"x".to_vec(), b"1".to_vec()), (b"y".to_vec(), b"2".to_vec())]))?,
        Reply::Ok
    );
    assert_eq!(
        apply(&mut kv, Command::del(vec![b"x".to_vec(), b"x".to_vec(), b"nope".to_vec()]))?,
        Reply::Int(1)
    );
    assert!(
        matches!(kv.apply_raft(i + 1, b"\xff\xff\xff")?, Reply::Error(_)),
        "malformed payload is a reply"
    );
    assert_eq!(kv.applied_index(), i + 1, "command errors still advance the index");
    assert_eq!(kv.get(b"k")?, Some(b"w".to_vec()));
    assert_eq!(kv.get(b"s")?, Some(b"abcd".to_vec()));
    assert_eq!(kv.get(b"n")?, Some(b"-2".to_vec()));
    assert_eq!(kv.get(b"x")?, None);
    assert_eq!(kv.get(b"y")?, Some(b"2".to_vec()));
    // FLUSHALL: every data key in one batch; the applied index (a meta value) moves with it.
    let applied = kv.applied_index();
    assert_eq!(kv.apply_raft(applied + 1, &Command::flush_all().to_bytes())?, Reply::Ok);
    assert!(kv.engine().scan(b"", None, 10)?.is_empty(), "no data key is left");
    assert_eq!(kv.engine().applied_index()?, Some(applied + 1), "the metas survive a flush");
    assert_eq!(
        kv.apply_raft(applied + 2, &Command::set("k", "again", SetCondition::IfAbsent).to_bytes())?,
        Reply::Ok
    );
    Ok(())
}

fn restore_replaces_everything_only_on_commit(h: &mut dyn Harness) -> Result<(), FsmError> {
    let e = h.open();
    let mut b = WriteBatch::new();
    b.put("a", "1").put("b", "2").set_applied_index(5);
    e.write(&b, WriteMode::Sync)?;
    // An abandoned restore changes nothing.
    {
        let mut r = e.begin_restore()?;
        r.put(b"c", b"3")?;
    }
    assert_eq!(keys_of(&e.scan(b"", None, 10)?), vec![b"a".to_vec(), b"b".to_vec()]);
    // A committed one replaces all client data and sets the applied index and term.
    let mut r = e.begin_restore()?;
    for i in 0..1000 {
        r.put(&key(i), &[7u8; 100])?;
    }
    assert_eq!(e.get(b"a")?, Some(b"1".to_vec()), "nothing is visible before commit");
    r.commit(9, 2)?;
    assert_eq!(e.get(b"a")?, None);
    assert_eq!(e.scan(b"", None, usize::MAX)?.len(), 1000);
    assert_eq!(e.applied_index()?, Some(9));
    assert_eq!(e.meta(MetaKey::AppliedTerm)?, Some(2u64.to_be_bytes().to_vec()));
    // Writes go on after it, and all of it survives a reopen.
    e.write(WriteBatch::new().put("after", "x").set_applied_index(10), WriteMode::Sync)?;
    drop(e);
    let e = h.open();
    assert_eq!(e.applied_index()?, Some(10));
    assert_eq!(e.get(&key(999))?, Some(vec![7u8; 100]));
    assert_eq!(e.get(b"after")?, Some(b"x".to_vec()));
    assert_eq!(e.get(b"b")?, None);
    Ok(())
}

fn a_missing_applied_index_on_a_store_with_data_is_refused(h: &mut dyn Harness) -> Result<(), FsmError> {
    let e = h.open();
    e.write(WriteBatch::new().put("k", "v"), WriteMode::Sync)?;
    assert!(
        matches!(Kv::new(e, FsmSync::Sync), Err(FsmError::Corrupt { .. })),
        "data without an applied index"
    );
    // After a restore, the state machine continues from the snapshot's index.
    let e = h.open();
    let mut r = e.begin_restore()?;
    r.put(b"a", b"1")?;
    r.commit(40, 3)?;
    let mut kv = Kv::new(e, FsmSync::Sync)?;
    assert_eq!(kv.applied_index(), 40);
    kv.engine().begin_restore()?.commit(50, 4)?;
    assert_eq!(kv.reload_applied_index()?, 50);
    assert_eq!(kv.apply_raft(51, &[])?, Reply::Ok);
    Ok(())
}

macro_rules! conformance {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn atomic_ordered_batches() -> Result<(), FsmError> {
                super::atomic_ordered_batches(&mut $make)
            }

            #[test]
            fn deletes_and_ranges_spare_meta() -> Result<(), FsmError> {
                super::deletes_and_ranges_spare_meta(&mut $make)
            }

            #[test]
            fn iteration_limits_and_prefixes() -> Result<(), FsmError> {
                super::iteration_limits_and_prefixes(&mut $make)
            }

            #[test]
            fn reopen_keeps_data_and_applied_index() -> Result<(), FsmError> {
                super::reopen_keeps_data_and_applied_index(&mut $make)
            }

            #[test]
            fn snapshots_are_isolated() -> Result<(), FsmError> {
                super::snapshots_are_isolated(&mut $make)
            }

            #[test]
            fn applied_index_moves_with_its_batch() -> Result<(), FsmError> {
                super::applied_index_moves_with_its_batch(&mut $make)
            }

            #[test]
            fn kv_commands() -> Result<(), FsmError> {
                super::kv_commands(&mut $make)
            }

            #[test]
            fn a_missing_applied_index_on_a_store_with_data_is_refused() -> Result<(), FsmError> {
                super::a_missing_applied_index_on_a_store_with_data_is_refused(&mut $make)
            }

            #[test]
            fn restore_replaces_everything_only_on_commit() -> Result<(), FsmError> {
                super::restore_replaces_everything_only_on_commit(&mut $make)
            }
        }
    };
}

conformance!(sim_engine_on_sim_fs, SimOnSimFs { fs: SimFs::with_seed(1) });
conformance!(sim_engine_on_real_fs, SimOnRealFs { dir: tempfile::tempdir().expect("temp dir") });
#[cfg(feature = "rocksdb")]
conformance!(rocks_engine, Rocks { dir: tempfile::tempdir().expect("temp dir") });

#[test]
fn fsm_sync_parses_and_rejects() {
    assert_eq!("sync".parse::<FsmSync>().ok(), Some(FsmSync::Sync));
    assert_eq!("nosync".parse::<FsmSync>().ok(), Some(FsmSync::NoSync));
    assert!(matches!("fast".parse::<FsmSync>(), Err(FsmError::InvalidConfig(_))));
}

/// Failure: the pointer swap of a RocksDB restore fails (its temporary file cannot be created).
/// Invariant: the engine stops acknowledging writes, since which database the next open uses is
/// unknown.
#[cfg(feature = "rocksdb")]
#[test]
fn a_failed_rocksdb_swap_poisons_the_engine() -> Result<(), FsmError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("rocks");
    let e = durakv::fsm::RocksEngine::open(&root)?;
    e.write(WriteBatch::new().put("k", "v").set_applied_index(1), WriteMode::Sync)?;
    let mut r = e.begin_restore()?;
    r.put(b"a", b"1")?;
    // A directory where the pointer's temporary file must go makes the pointer write fail.
    std::fs::create_dir(root.join("CURRENT_DB.tmp")).expect("block the pointer write");
    assert!(r.commit(2, 1).is_err());
    assert!(matches!(e.write(WriteBatch::new().put("x", "y"), WriteMode::Sync), Err(FsmError::Poisoned)));
    assert!(matches!(e.get(b"k"), Err(FsmError::Poisoned)));
    // A restart recovers: the pointer still names the old database.
    drop(e);
    std::fs::remove_dir(root.join("CURRENT_DB.tmp")).expect("unblock");
    let e = durakv::fsm::RocksEngine::open(&root)?;
    assert_eq!(e.get(b"k")?, Some(b"v".to_vec()));
    Ok(())
}
