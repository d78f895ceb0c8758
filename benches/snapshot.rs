//! Snapshot write and spool-receive throughput, beside the raw `write + fdatasync` loop that bounds
//! them (1 MiB writes of the same total size, one fsync at the end, as the snapshot paths do).
//!
//! Run: `make bench-snapshot` (`cargo bench --profile fast -p durakv-benches --bench snapshot`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use durakv::fsm::{Engine, SimEngine, SimEngineOptions, WriteBatch, WriteMode};
use durakv::io::{Fs, OpenOptions, RealFs, read_file};
use durakv::snapshot::{DEFAULT_SPOOL_CAP_BYTES, SnapshotStore, StreamInfo, write_snapshot};

const STATE_BYTES: usize = 64 << 20;
const VALUE_BYTES: usize = 4096;

fn filled_engine(dir: &Path) -> SimEngine {
    let e = SimEngine::open(
        Arc::new(RealFs::new()),
        dir,
        SimEngineOptions { checkpoint_after_bytes: u64::MAX, ..SimEngineOptions::default() },
    )
    .expect("open");
    let value = vec![0x3Cu8; VALUE_BYTES];
    let mut b = WriteBatch::new();
    for i in 0..STATE_BYTES / VALUE_BYTES {
        b.put(format!("key{i:012}"), value.clone());
        if b.ops().len() == 1024 {
            e.write(&b, WriteMode::NoSync).expect("fill");
            b = WriteBatch::new();
        }
    }
    b.set_applied_index(1);
    e.write(&b, WriteMode::Sync).expect("fill");
    e
}

fn raw_loop(dir: &Path, total: usize) {
    let fs = RealFs::new();
    let mut f = fs.open(&dir.join("raw"), OpenOptions::create_truncate()).expect("open");
    let chunk = vec![0x3Cu8; 1 << 20];
    let mut at = 0;
    while at < total {
        let n = chunk.len().min(total - at);
        f.write_at(&chunk[..n], at as u64).expect("write");
        at += n;
    }
    f.sync().expect("fdatasync");
}

fn snapshot(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = filled_engine(&dir.path().join("fsm"));
    let snap_dir = dir.path().join("snap");
    RealFs::new().create_dir_all(&snap_dir).expect("mkdir");
    let file = write_snapshot(&RealFs::new(), &snap_dir, &engine, b"", b"").expect("snapshot");
    let bytes = read_file(&RealFs::new(), &file.path).expect("read");
    let body = &bytes[..bytes.len() - 4];
    let info = StreamInfo { index: file.index, len: body.len() as u64, crc: file.crc };

    let mut group = c.benchmark_group("snapshot_64MiB");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Bytes(file.len));
    group.bench_function(BenchmarkId::new("write_snapshot", "64MiB"), |b| {
        b.iter(|| write_snapshot(&RealFs::new(), &snap_dir, &engine, b"", b"").expect("snapshot"));
    });
    group.bench_function(BenchmarkId::new("spool_receive_4MiB_chunks", "64MiB"), |b| {
        let recv = tempfile::tempdir_in(dir.path()).expect("temp dir");
        let (store, _) = SnapshotStore::open(
            Arc::new(RealFs::new()),
            &recv.path().join("snap"),
            &recv.path().join("spool"),
            1,
        )
        .expect("store");
        b.iter(|| {
            let guard = store.begin_receive(info.index);
            let mut spool = store.spool(&guard, info, DEFAULT_SPOOL_CAP_BYTES).expect("spool");
            for chunk in body.chunks(4 << 20) {
                spool.push(chunk).expect("push");
            }
            spool.finalize().expect("finalize")
        });
    });
    group.bench_function(BenchmarkId::new("raw_write_fdatasync", "64MiB"), |b| {
        b.iter(|| raw_loop(dir.path(), file.len as usize));
    });
    group.finish();
    engine.flush().expect("flush");
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
