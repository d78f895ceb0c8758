//! Receiving a snapshot costs O(chunk) memory, not O(snapshot) (D7).
//!
//! Failure it guards against: a follower that buffers a received snapshot in memory and is OOM-killed
//! by one larger than its RAM. A counting allocator measures the peak heap growth while 8 MiB and
//! 64 MiB streams go through the spool on the real filesystem; the peak must stay under a few chunks
//! and must not grow with the snapshot's size. (The full-size run, 1 GiB under RSS measurement, is the
//! `snapshot_rss` bench.)
#![allow(unsafe_code)] // The counting allocator below; nothing else in this file is unsafe.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use durakv::io::RealFs;
use durakv::snapshot::{
    DEFAULT_SPOOL_CAP_BYTES, HEADER_FIXED_LEN, SnapshotHeader, SnapshotStore, StreamInfo, verify,
};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const CHUNK: usize = 1 << 20;

/// Receive a synthetic `size`-byte snapshot through the spool; returns the peak heap growth.
fn receive(dir: &Path, index: u64, size: usize) -> usize {
    let header = SnapshotHeader { index, term: 1, ..SnapshotHeader::default() }.encode();
    assert_eq!(header.len(), HEADER_FIXED_LEN);
    // The stream: header, then records of 64 KiB values. Generated chunk by chunk, never whole.
    let record_len = 8 + 16 + 65536;
    let records = (size - header.len()) / record_len;
    let make_record = |i: usize, out: &mut Vec<u8>| {
        out.extend_from_slice(&16u32.to_be_bytes());
        out.extend_from_slice(&65536u32.to_be_bytes());
        out.extend_from_slice(format!("key{i:013}").as_bytes());
        out.extend(std::iter::repeat_n((i % 251) as u8, 65536));
    };
    // First pass: the CRC and length the sender announces.
    let mut crc = crc32c::crc32c(&header);
    let mut len = header.len() as u64;
    let mut rec = Vec::with_capacity(record_len);
    for i in 0..records {
        rec.clear();
        make_record(i, &mut rec);
        crc = crc32c::crc32c_append(crc, &rec);
        len += rec.len() as u64;
    }
    let (store, _) = SnapshotStore::open(Arc::new(RealFs::new()), &dir.join("snap"), &dir.join("spool"), 3)
        .expect("store");
    let mut chunk = Vec::with_capacity(CHUNK + record_len);
    let guard = store.begin_receive(index);
    let info = StreamInfo { index, len, crc };

    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut spool = store.spool(&guard, info, DEFAULT_SPOOL_CAP_BYTES).expect("spool");
    spool.push(&header).expect("push header");
    for i in 0..records {
        make_record(i, &mut chunk);
        if chunk.len() >= CHUNK {
            spool.push(&chunk).expect("push");
            chunk.clear();
        }
    }
    spool.push(&chunk).expect("push tail");
    let file = spool.finalize().expect("finalize");
    let peak = PEAK.load(Ordering::Relaxed) - base;
    drop(spool);
    verify(&RealFs::new(), &file.path, &file.token()).expect("the received file verifies");
    peak
}

#[test]
fn spool_memory_does_not_grow_with_snapshot_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let small = receive(dir.path(), 1, 8 << 20);
    let large = receive(dir.path(), 2, 64 << 20);
    println!("peak heap growth while receiving: 8 MiB -> {small} bytes, 64 MiB -> {large} bytes");
    assert!(large < 2 * CHUNK, "receiving 64 MiB grew the heap by {large} bytes");
    assert!(large <= small + 64 * 1024, "peak grew with the snapshot size: {small} -> {large}");
}
