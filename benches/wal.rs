//! WAL group-commit throughput on the real filesystem, beside the raw `write + fdatasync` loop that
//! bounds it. Each iteration is one batch made durable with one fsync; the raw loop appends exactly the
//! bytes the WAL writes for that batch (frames included) and fdatasyncs, rolling files at the same size.
//! Throughput is reported in payload bytes for both, so their ratio is the WAL's overhead.
//!
//! Run: `make bench-wal` (`cargo bench --profile fast -p durakv-benches --bench wal`). Set
//! `DURAKV_BENCH_DIR` to measure a particular filesystem (default: the system temp dir). Building the
//! batch (which copies the record data) is setup, not measured: only `append` is timed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use durakv::io::{Fs, FsFile, OpenOptions, RealFs};
use durakv::wal::{Batch, FRAME_HEADER_LEN, Wal, WalOptions};

const SEGMENT_BYTES: u64 = 64 << 20;
/// Keep at most this many bytes of log on disk: compact (WAL) or roll over (raw) beyond it.
const RETAIN_BYTES: u64 = 256 << 20;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("DURAKV_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(PathBuf::from(d)),
        None => tempfile::tempdir(),
    }
    .expect("a temporary directory for the benchmark")
}

fn wal_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for &records in &[1usize, 8, 64, 512] {
        for &size in &[64usize, 1024, 16384] {
            let payload = (records * size) as u64;
            // An entry's frame is the frame header plus index and term plus the data.
            let framed = (records * (size + FRAME_HEADER_LEN + 16)) as u64;
            group.throughput(Throughput::Bytes(payload));
            let id = format!("{records}x{size}B");

            group.bench_function(BenchmarkId::new("wal", &id), |b| {
                let dir = bench_dir();
                let opts = WalOptions { segment_size_bytes: SEGMENT_BYTES, ..WalOptions::default() };
                let (mut wal, _) = Wal::open(Arc::new(RealFs::new()), dir.path(), opts).expect("open WAL");
                let data = vec![0xA5u8; size];
                let mut next = 1u64;
                let keep_entries = (RETAIN_BYTES / framed.max(1)).max(1) * records as u64;
                b.iter_batched(
                    || {
                        let mut batch = Batch::new();
                        for _ in 0..records {
                            batch.entry(next, 1, data.clone());
                            next += 1;
                        }
                        batch
                    },
                    |batch| {
                        wal.append(&batch).expect("append");
                        // Compact the way a node does: now and then, by a large step.
                        let last = wal.last_index().unwrap_or(0);
                        if last.saturating_sub(wal.compacted_below()) > keep_entries * 2 {
                            wal.compact(last - keep_entries).expect("compact");
                        }
                        // Hand the batch back so freeing the caller's records is not timed.
                        batch
                    },
                    BatchSize::LargeInput,
                );
            });

            group.bench_function(BenchmarkId::new("raw_write_fdatasync", &id), |b| {
                let dir = bench_dir();
                let fs = RealFs::new();
                let buf = vec![0xA5u8; framed as usize];
                let mut file_no = 0u64;
                let open = |n: u64| -> Box<dyn FsFile> {
                    fs.open(&dir.path().join(format!("raw{n}")), OpenOptions::create_truncate())
                        .expect("open")
                };
                let mut file = open(file_no);
                let mut offset = 0u64;
                b.iter(|| {
                    if offset >= SEGMENT_BYTES {
                        file_no += 1;
                        file = open(file_no);
                        offset = 0;
                        if file_no * SEGMENT_BYTES > RETAIN_BYTES {
                            let old = file_no - RETAIN_BYTES / SEGMENT_BYTES - 1;
                            let _ = fs.remove_file(&dir.path().join(format!("raw{old}")));
                        }
                    }
                    file.write_at(&buf, offset).expect("write");
                    file.sync().expect("fdatasync");
                    offset += framed;
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, wal_append);
criterion_main!(benches);
