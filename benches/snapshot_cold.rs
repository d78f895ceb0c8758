//! Cold start with the restore skipped (verify the file, apply the header) against a full restore,
//! for FSM sizes of 10 MB, 100 MB and 1 GB on `RocksEngine`; and the peak RSS of receiving a 1 GiB
//! snapshot through the spool. One timed run per size (1 GB is too slow to repeat), printed as a table.
//!
//! Run: `make bench-snapshot` (`cargo bench --profile fast -p durakv-benches --bench snapshot_cold`).
//! Set `DURAKV_BENCH_MAX_MB` to stop earlier (default 1000).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use durakv::fsm::{Engine, RocksEngine, WriteBatch, WriteMode};
use durakv::io::RealFs;
use durakv::snapshot::{
    ColdStart, DEFAULT_SPOOL_CAP_BYTES, HEADER_FIXED_LEN, SnapshotHeader, SnapshotStore, StreamInfo,
    cold_start, write_snapshot,
};

const VALUE_BYTES: usize = 1000;

fn fill(e: &RocksEngine, bytes: usize, index: u64) {
    let value = vec![0x42u8; VALUE_BYTES];
    let mut b = WriteBatch::new();
    for i in 0..bytes / VALUE_BYTES {
        b.put(format!("key{i:012}"), value.clone());
        if b.ops().len() == 4096 {
            e.write(&b, WriteMode::NoSync).expect("fill");
            b = WriteBatch::new();
        }
    }
    b.set_applied_index(index);
    e.write(&b, WriteMode::Sync).expect("fill");
    e.flush().expect("flush");
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Receive a synthetic 1 GiB snapshot through the spool, generated chunk by chunk.
fn rss_of_1gib_receive(dir: &Path) {
    const SIZE: u64 = 1 << 30;
    let header = SnapshotHeader { index: 1, term: 1, ..SnapshotHeader::default() }.encode();
    assert_eq!(header.len(), HEADER_FIXED_LEN);
    let chunk_len = 4usize << 20;
    let record = |i: u64| {
        let mut r = Vec::with_capacity(8 + 16 + 65536);
        r.extend_from_slice(&16u32.to_be_bytes());
        r.extend_from_slice(&65536u32.to_be_bytes());
        r.extend_from_slice(format!("key{i:013}").as_bytes());
        r.extend(std::iter::repeat_n((i % 251) as u8, 65536));
        r
    };
    let records = (SIZE - header.len() as u64) / (8 + 16 + 65536);
    let mut crc = crc32c::crc32c(&header);
    let mut len = header.len() as u64;
    for i in 0..records {
        let r = record(i);
        crc = crc32c::crc32c_append(crc, &r);
        len += r.len() as u64;
    }
    let (store, _) = SnapshotStore::open(Arc::new(RealFs::new()), &dir.join("snap"), &dir.join("spool"), 1)
        .expect("store");
    let before = vm_hwm_kib();
    let guard = store.begin_receive(1);
    let mut spool =
        store.spool(&guard, StreamInfo { index: 1, len, crc }, DEFAULT_SPOOL_CAP_BYTES).expect("spool");
    spool.push(&header).expect("push");
    let mut chunk = Vec::with_capacity(chunk_len + 70_000);
    for i in 0..records {
        chunk.extend_from_slice(&record(i));
        if chunk.len() >= chunk_len {
            spool.push(&chunk).expect("push");
            chunk.clear();
        }
    }
    spool.push(&chunk).expect("push");
    let file = spool.finalize().expect("finalize");
    let after = vm_hwm_kib();
    println!(
        "receive 1 GiB ({} bytes) through the spool in 4 MiB chunks: peak RSS {} MiB before, {} MiB after",
        file.len,
        before / 1024,
        after / 1024
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let max_mb: usize =
        std::env::var("DURAKV_BENCH_MAX_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir().expect("temp dir");
    rss_of_1gib_receive(&dir.path().join("rss"));
    println!("| FSM size | cold start, restore skipped | cold start, full restore | ratio |");
    println!("|---|---|---|---|");
    for mb in [10usize, 100, 1000] {
        if mb > max_mb {
            break;
        }
        let root = dir.path().join(format!("cold{mb}"));
        let fs = RealFs::new();
        let src = RocksEngine::open(&root.join("src")).expect("open");
        fill(&src, mb * 1_000_000, 100);
        std::fs::create_dir_all(root.join("snap")).expect("mkdir");
        let file = write_snapshot(&fs, &root.join("snap"), &src, b"", b"").expect("snapshot");
        let t = Instant::now();
        let skipped = cold_start(&fs, &src, &file.path, &file.token(), &mut |_| Ok(())).expect("skip");
        let skip = t.elapsed();
        assert!(matches!(skipped, ColdStart::Skipped { .. }));
        let dst = RocksEngine::open(&root.join("dst")).expect("open");
        let t = Instant::now();
        let restored = cold_start(&fs, &dst, &file.path, &file.token(), &mut |_| Ok(())).expect("restore");
        let full = t.elapsed();
        assert!(matches!(restored, ColdStart::Restored { .. }));
        println!(
            "| {mb} MB ({} MB file) | {:.3} s | {:.3} s | {:.1}x |",
            file.len / 1_000_000,
            skip.as_secs_f64(),
            full.as_secs_f64(),
            full.as_secs_f64() / skip.as_secs_f64()
        );
        drop(dst);
        drop(src);
        let _ = std::fs::remove_dir_all(&root);
    }
}
