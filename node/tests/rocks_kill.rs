//! RocksDB under real SIGKILLs.
//!
//! Failure injected: a child process applies numbered batches with `WriteMode::Sync` and reports each
//! acknowledged number to the parent over a pipe; the parent SIGKILLs it at seeded random moments,
//! for 24 rounds on the same database.
//!
//! Invariants after each kill: the database reopens; every acknowledged batch is present; no batch is
//! partial; the applied index equals the last batch present (and nothing past it exists).
#![cfg(feature = "rocksdb")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use durakv::fsm::{Engine, RocksEngine, WriteBatch, WriteMode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CHILD_ENV: &str = "DURAKV_ROCKS_KILL_CHILD_DIR";
const KEYS_PER_BATCH: u64 = 8;

fn batch(n: u64) -> WriteBatch {
    let mut b = WriteBatch::new();
    for k in 0..KEYS_PER_BATCH {
        b.put(format!("b{n:08}/{k}"), format!("{n}:{k}:{}", "x".repeat(64)));
    }
    b.set_applied_index(n);
    b
}

/// The child's side: runs only when the parent re-executes this test binary with `CHILD_ENV` set.
#[test]
fn child_applies_batches_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let engine = RocksEngine::open(Path::new(&dir)).expect("child opens RocksDB");
    let mut n = engine.applied_index().expect("applied index").unwrap_or(0);
    loop {
        n += 1;
        engine.write(&batch(n), WriteMode::Sync).expect("child write");
        // Only after the synced write returned is the batch acknowledged.
        println!("ack {n}");
    }
}

fn check(engine: &RocksEngine, acked: u64, round: usize) -> u64 {
    let applied = engine.applied_index().expect("applied index").unwrap_or(0);
    assert!(applied >= acked, "round {round}: acknowledged batch {acked} lost (applied {applied})");
    for n in 1..=applied + 1 {
        let present = (0..KEYS_PER_BATCH)
            .filter(|k| engine.get(format!("b{n:08}/{k}").as_bytes()).expect("get").is_some())
            .count() as u64;
        let want = if n <= applied { KEYS_PER_BATCH } else { 0 };
        assert_eq!(present, want, "round {round}: batch {n} is partial or past the applied index {applied}");
    }
    applied
}

#[test]
fn sigkill_never_loses_an_acknowledged_sync_batch() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("rocks");
    let exe = std::env::current_exe().expect("test binary path");
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0001);
    let mut acked = 0u64;
    for round in 0..24 {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_applies_batches_until_killed", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ack ").and_then(|s| s.parse::<u64>().ok())
                    && tx.send(n).is_err()
                {
                    break;
                }
            }
        });
        // Wait for the child to get going, then kill it at a random moment.
        let first = rx.recv_timeout(Duration::from_secs(60)).expect("child acknowledges a batch");
        acked = acked.max(first);
        std::thread::sleep(Duration::from_millis(rng.random_range(1..60)));
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        reader.join().expect("reader thread");
        while let Ok(n) = rx.try_recv() {
            acked = acked.max(n);
        }
        let engine = RocksEngine::open(&db).expect("reopen after SIGKILL");
        let applied = check(&engine, acked, round);
        acked = applied;
    }
    assert!(acked > 24, "the child made progress across rounds ({acked} batches)");
}
