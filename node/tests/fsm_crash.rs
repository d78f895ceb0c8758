//! Crash tests of the FSM on the simulated disk.
//!
//! Failures injected: a process kill or a power loss at every durability operation (write, fsync,
//! directory fsync, rename, remove, create) of a workload of mixed `Sync`/`NoSync` batches, flushes,
//! checkpoints and journal compactions; `EIO` on the journal; power loss after a snapshot install.
//!
//! Invariants: recovery needs no operator; no `Sync` batch (or batch before a returned flush) is lost;
//! a process kill loses nothing; no batch is torn; the applied index always equals the data present;
//! a snapshot install is durable under `fsm_sync = "nosync"` (D3); an apply error never advances the
//! applied index and the entry is re-applied after restart (D10).

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use durakv::fsm::{
    Command, Engine, FsmError, FsmSync, Kv, Reply, SetCondition, SimEngine, SimEngineOptions, WriteBatch,
    WriteMode,
};
use durakv::io::Fs;
use durakv::snapshot::{restore, write_snapshot};
use durakv::wal::WalOptions;
use durakv_faults::{
    CrashKind, FaultEffect, FaultRule, OpKind, SectorOdds, SimFs, SimFsOptions, TornWrite, is_crash_error,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DIR: &str = "/n/fsm";

fn opts() -> SimEngineOptions {
    SimEngineOptions {
        checkpoint_after_bytes: 1500,
        journal: WalOptions { segment_size_bytes: 4096, ..WalOptions::default() },
    }
}

fn disk(seed: u64, odds: SectorOdds) -> SimFs {
    let fs = SimFs::new(seed, SimFsOptions { power_loss: odds, ..SimFsOptions::default() }).expect("options");
    fs.create_dir_all(Path::new("/n")).expect("mkdir");
    fs.sync_dir(Path::new("/")).expect("sync");
    fs
}

fn open(fs: &SimFs) -> Result<SimEngine, FsmError> {
    SimEngine::open(Arc::new(fs.clone()), Path::new(DIR), opts())
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Write(u64, WriteMode),
    Flush,
}

fn workload(seed: u64) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut steps = Vec::new();
    let mut i = 0;
    while steps.len() < 24 {
        if rng.random_range(0..8) == 0 {
            steps.push(Step::Flush);
        } else {
            i += 1;
            let mode = if rng.random_range(0..3) == 0 { WriteMode::Sync } else { WriteMode::NoSync };
            steps.push(Step::Write(i, mode));
        }
    }
    steps
}

fn batch(i: u64) -> WriteBatch {
    let mut b = WriteBatch::new();
    // Values span sectors so torn writes cut through batches.
    b.put(format!("b{i}"), vec![i as u8; 150 + (i as usize * 37) % 300]).put("last", i.to_string());
    if i.is_multiple_of(5) {
        b.delete(format!("b{}", i - 1));
    }
    b.set_applied_index(i);
    b
}

/// What the engine must hold after exactly `n` batches.
fn check_state(e: &SimEngine, n: u64, ctx: &str) {
    for j in 1..=n + 1 {
        let want = (j <= n && !(j % 5 == 4 && j < n)).then(|| vec![j as u8; 150 + (j as usize * 37) % 300]);
        assert_eq!(
            e.get(format!("b{j}").as_bytes()).expect("get"),
            want,
            "{ctx}: key b{j} after {n} batches"
        );
    }
    let last = (n > 0).then(|| n.to_string().into_bytes());
    assert_eq!(e.get(b"last").expect("get"), last, "{ctx}: applied index {n} does not match the data");
}

/// Run the workload; returns (last batch acknowledged, last batch made durable by Sync or flush).
fn run(fs: &SimFs, steps: &[Step]) -> (u64, u64) {
    let (mut acked, mut durable) = (0, 0);
    let e = match open(fs) {
        Ok(e) => e,
        Err(err) => {
            assert!(crashed(&err), "open failed without a crash: {err}");
            return (0, 0);
        }
    };
    for step in steps {
        let result = match *step {
            Step::Write(i, mode) => e.write(&batch(i), mode).map(|()| {
                acked = i;
                if mode == WriteMode::Sync {
                    durable = i;
                }
            }),
            Step::Flush => e.flush().map(|()| durable = acked),
        };
        if let Err(err) = result {
            assert!(crashed(&err), "a step failed without a crash: {err}");
            break;
        }
    }
    (acked, durable)
}

fn crashed(err: &FsmError) -> bool {
    match err {
        FsmError::Io { source, .. } => is_crash_error(source),
        FsmError::Journal(durakv::wal::WalError::Io { source, .. }) => is_crash_error(source),
        _ => false,
    }
}

#[test]
fn crash_at_every_point_keeps_sync_batches_whole_and_in_order() {
    let mut states = BTreeSet::new();
    let mut runs = 0;
    for seq in 0..8u64 {
        let steps = workload(seq);
        let clean = disk(0, SectorOdds::default());
        let base = clean.ops_done();
        let (acked, _) = run(&clean, &steps);
        let total = clean.ops_done() - base;
        check_state(&open(&clean).expect("clean reopen"), acked, "clean run");
        for k in 0..total {
            for (kind, seed) in
                [(CrashKind::ProcessKill, 0), (CrashKind::PowerLoss, 1), (CrashKind::PowerLoss, 2)]
            {
                let fs = disk(seq * 100_000 + k * 10 + seed, SectorOdds::default());
                fs.arm_crash(base + k, kind, TornWrite::Random);
                let (acked, durable) = run(&fs, &steps);
                assert!(fs.is_halted());
                fs.resume();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                fs.cached_image().hash(&mut h);
                states.insert(h.finish());
                let ctx = format!(
                    "workload {seq}, {kind:?} at op {k} (disk seed {seed}), acked {acked}, durable {durable}"
                );
                let e = open(&fs).unwrap_or_else(|err| panic!("{ctx}: recovery failed: {err}"));
                let n = e.applied_index().expect("applied index").unwrap_or(0);
                assert!(n >= durable, "{ctx}: a synced batch was lost (applied {n})");
                if kind == CrashKind::ProcessKill {
                    assert!(n >= acked, "{ctx}: a process kill lost an acknowledged batch (applied {n})");
                }
                assert!(n <= acked + 1, "{ctx}: applied {n} is past anything written");
                check_state(&e, n, &ctx);
                // The engine goes on after recovery.
                e.write(&batch(n + 1), WriteMode::Sync)
                    .unwrap_or_else(|err| panic!("{ctx}: write after recovery: {err}"));
                runs += 1;
            }
        }
    }
    println!("explored {runs} FSM crashes, {} distinct post-crash disk images", states.len());
    assert!(states.len() >= 300, "only {} distinct states", states.len());
}

/// Failure injected: a power loss that drops every unsynced sector, right after a snapshot install
/// on a state machine running `nosync`. Invariant (D3): the install, the node's one write to the
/// state machine that does not come from raft apply, is durable when it returns; nothing replays it.
#[test]
fn a_snapshot_install_under_nosync_survives_power_loss() -> Result<(), Box<dyn std::error::Error>> {
    let fs = disk(1, SectorOdds::new(0, 1, 0).expect("odds"));
    fs.create_dir_all(Path::new("/n/snap"))?;
    // The snapshot comes from another engine, at index 40.
    let source = SimEngine::open(Arc::new(fs.clone()), Path::new("/n/source"), opts())?;
    let mut b = WriteBatch::new();
    // Values as the state machine stores them (the expiry header).
    b.put("installed", durakv::fsm::value::encode(b"v1", None, Some(40))).set_applied_index(40);
    source.write(&b, WriteMode::Sync)?;
    let file = write_snapshot(&fs, Path::new("/n/snap"), &source, b"", b"")?;
    let mut kv = Kv::new(open(&fs)?, FsmSync::NoSync)?;
    for i in 1..=5 {
        kv.apply_raft(i, &Command::set(format!("raft{i}"), "x", SetCondition::Always).to_bytes())?;
    }
    restore(&fs, kv.engine(), &file.path, &file.token())?;
    assert_eq!(kv.reload_applied_index()?, 40);
    drop(kv);
    fs.crash(CrashKind::PowerLoss);
    let kv = Kv::new(open(&fs)?, FsmSync::NoSync)?;
    assert_eq!(kv.applied_index(), 40, "the install has no log to replay: it must be durable");
    assert_eq!(kv.get(b"installed")?, Some(b"v1".to_vec()));
    assert_eq!(kv.get(b"raft1")?, None, "an install replaces the state machine");
    Ok(())
}

#[test]
fn nosync_raft_apply_may_lose_the_tail_but_never_before_the_last_flush() -> Result<(), FsmError> {
    let fs = disk(2, SectorOdds::new(0, 1, 0).expect("odds"));
    let mut kv = Kv::new(open(&fs)?, FsmSync::NoSync)?;
    for i in 1..=10 {
        kv.apply_raft(i, &Command::set(format!("k{i}"), "x", SetCondition::Always).to_bytes())?;
    }
    kv.engine().flush()?;
    for i in 11..=20 {
        kv.apply_raft(i, &Command::set(format!("k{i}"), "x", SetCondition::Always).to_bytes())?;
    }
    drop(kv);
    fs.crash(CrashKind::PowerLoss);
    let mut kv = Kv::new(open(&fs)?, FsmSync::NoSync)?;
    let applied = kv.applied_index();
    assert!(applied >= 10, "entries before the flush were lost: applied {applied}");
    assert!(
        applied < 20,
        "with every unsynced sector dropped, the unsynced tail must be gone (applied {applied})"
    );
    for i in 1..=applied {
        assert!(kv.get(format!("k{i}").as_bytes())?.is_some(), "k{i} missing below applied index {applied}");
    }
    assert_eq!(kv.get(format!("k{}", applied + 1).as_bytes())?, None);
    // The raft log re-delivers what was lost; the FSM re-applies it from applied + 1.
    for i in applied + 1..=20 {
        kv.apply_raft(i, &Command::set(format!("k{i}"), "x", SetCondition::Always).to_bytes())?;
    }
    assert_eq!(kv.applied_index(), 20);
    Ok(())
}

#[test]
fn a_sync_fsm_loses_no_applied_entry_on_power_loss() -> Result<(), FsmError> {
    let fs = disk(3, SectorOdds::new(0, 1, 0).expect("odds"));
    let mut kv = Kv::new(open(&fs)?, FsmSync::Sync)?;
    for i in 1..=20 {
        kv.apply_raft(i, &Command::incr_by("n", 1).to_bytes())?;
    }
    drop(kv);
    fs.crash(CrashKind::PowerLoss);
    let kv = Kv::new(open(&fs)?, FsmSync::Sync)?;
    assert_eq!(kv.applied_index(), 20);
    assert_eq!(kv.get(b"n")?, Some(b"20".to_vec()));
    Ok(())
}

#[test]
fn an_apply_error_never_advances_the_index_and_the_entry_is_reapplied_after_restart() -> Result<(), FsmError>
{
    // EIO on journal writes once some entries went through.
    let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Write])
        .on_path("/n/fsm/journal/*.wal")
        .expect("pattern")
        .after_ops(20)
        .max_fires(1);
    let fs = SimFs::new(4, SimFsOptions { rules: vec![rule], ..SimFsOptions::default() }).expect("options");
    fs.create_dir_all(Path::new("/n")).expect("mkdir");
    let mut kv = Kv::new(open(&fs)?, FsmSync::Sync)?;
    let mut failed_at = None;
    for i in 1..=20 {
        match kv.apply_raft(i, &Command::incr_by("n", 1).to_bytes()) {
            Ok(Reply::Int(_)) => {}
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(e) => {
                assert!(matches!(e, FsmError::Journal(_)), "{e}");
                failed_at = Some(i);
                break;
            }
        }
    }
    let failed_at = failed_at.expect("the injected EIO fired");
    assert_eq!(kv.applied_index(), failed_at - 1, "the failed entry did not advance the index");
    // Fail-stop: the engine refuses further writes rather than skipping the entry.
    assert!(kv.apply_raft(failed_at, &Command::incr_by("n", 1).to_bytes()).is_err());
    assert!(kv.apply_raft(failed_at + 1, &[]).is_err());
    drop(kv);
    // Restart: the entry is applied again, exactly once.
    fs.crash(CrashKind::ProcessKill);
    let mut kv = Kv::new(open(&fs)?, FsmSync::Sync)?;
    assert_eq!(kv.applied_index(), failed_at - 1);
    assert_eq!(kv.apply_raft(failed_at, &Command::incr_by("n", 1).to_bytes())?, Reply::Int(failed_at as i64));
    assert_eq!(fs.coverage().get("fault.eio.write"), Some(&1));
    Ok(())
}

#[test]
fn a_corrupt_checkpoint_is_a_typed_error() -> Result<(), FsmError> {
    let fs = disk(5, SectorOdds::default());
    let e = open(&fs)?;
    for i in 1..=30 {
        e.write(&batch(i), WriteMode::Sync)?;
    }
    e.checkpoint()?;
    drop(e);
    fs.flip_bit(Path::new("/n/fsm/checkpoint"), 40, 2).expect("flip");
    match open(&fs) {
        Err(FsmError::Corrupt { path, .. }) => assert_eq!(path, Path::new("/n/fsm/checkpoint")),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    Ok(())
}
