//! FSM apply throughput: `Sync` against `NoSync` writes, for `SimEngine` (on the real filesystem) and
//! `RocksEngine`, with 1 and 100 puts per batch (each batch also carries the applied index, as a raft
//! apply does). Keys cycle over 10,000 so the state stays bounded while the bench runs.
//!
//! Run: `make bench-fsm` (`cargo bench --profile fast -p durakv-benches --bench fsm`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use durakv::fsm::{Engine, RocksEngine, SimEngine, SimEngineOptions, WriteBatch, WriteMode};
use durakv::io::RealFs;

const KEYSPACE: u64 = 10_000;

fn bench_engine(c: &mut Criterion, name: &str, open: &dyn Fn(&Path) -> Box<dyn Engine>) {
    let mut group = c.benchmark_group(format!("fsm_apply/{name}"));
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for &puts in &[1u64, 100] {
        for (mode, label) in [(WriteMode::Sync, "sync"), (WriteMode::NoSync, "nosync")] {
            group.throughput(Throughput::Elements(puts));
            group.bench_function(BenchmarkId::new(label, format!("{puts}_puts")), |b| {
                let dir = tempfile::tempdir().expect("temp dir");
                let engine = open(dir.path());
                let value = vec![0x5Au8; 100];
                let mut index = 0u64;
                b.iter(|| {
                    index += 1;
                    let mut batch = WriteBatch::new();
                    for p in 0..puts {
                        batch.put(format!("key{:06}", (index * puts + p) % KEYSPACE), value.clone());
                    }
                    batch.set_applied_index(index);
                    engine.write(&batch, mode).expect("write");
                });
            });
        }
    }
    group.finish();
}

fn fsm_apply(c: &mut Criterion) {
    bench_engine(c, "sim_engine", &|dir| {
        Box::new(
            SimEngine::open(Arc::new(RealFs::new()), &dir.join("sim"), SimEngineOptions::default())
                .expect("open SimEngine"),
        )
    });
    bench_engine(c, "rocks_engine", &|dir| {
        Box::new(RocksEngine::open(&dir.join("rocks")).expect("open RocksDB"))
    });
}

criterion_group!(benches, fsm_apply);
criterion_main!(benches);
