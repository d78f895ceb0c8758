//! What the hard-state file costs a ready round: `RaftStorage::persist` of a batch of entries with a
//! new hard state (one WAL fsync, then one fsync of the hard-state file) beside the WAL append of the
//! same entries alone (one fsync), on the real filesystem.
//!
//! Run: `cargo bench --profile fast -p durakv-benches --bench storage` (`DURAKV_BENCH_DIR` picks the
//! filesystem, default the system temp dir). Only the persist or append is timed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use durakv::io::RealFs;
use durakv::storage::RaftStorage;
use durakv::wal::{Batch, Wal, WalOptions};
use prost::Message as _;
use raft::eraftpb::{Entry, HardState};

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("DURAKV_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(PathBuf::from(d)),
        None => tempfile::tempdir(),
    }
    .expect("a temporary directory for the benchmark")
}

fn entries(from: u64, n: usize, size: usize) -> Vec<Entry> {
    (0..n as u64)
        .map(|i| Entry { index: from + i, term: 1, data: vec![0xA5; size], ..Entry::default() })
        .collect()
}

fn persist(c: &mut Criterion) {
    let mut group = c.benchmark_group("persist");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for &records in &[1usize, 64] {
        let size = 256usize;
        group.throughput(Throughput::Elements(records as u64));
        let id = format!("{records}x{size}B");
        group.bench_function(BenchmarkId::new("raft_storage_with_hard_state", &id), |b| {
            let dir = bench_dir();
            let (storage, _) =
                RaftStorage::open(Arc::new(RealFs::new()), dir.path(), WalOptions::default()).expect("open");
            let mut next = 1u64;
            b.iter_batched(
                || {
                    let es = entries(next, records, size);
                    next += records as u64;
                    es
                },
                |es| {
                    let last = es.last().map_or(0, |e| e.index);
                    let hs = HardState { term: 1, vote: 1, commit: last };
                    storage.persist(&es, Some(&hs)).expect("persist");
                    es
                },
                BatchSize::LargeInput,
            );
        });
        group.bench_function(BenchmarkId::new("wal_entries_only", &id), |b| {
            let dir = bench_dir();
            let (mut wal, _) =
                Wal::open(Arc::new(RealFs::new()), dir.path(), WalOptions::default()).expect("open WAL");
            let mut next = 1u64;
            b.iter_batched(
                || {
                    let mut batch = Batch::new();
                    for e in entries(next, records, size) {
                        batch.entry(e.index, e.term, e.encode_to_vec());
                    }
                    next += records as u64;
                    batch
                },
                |batch| {
                    wal.append(&batch).expect("append");
                    batch
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, persist);
criterion_main!(benches);
