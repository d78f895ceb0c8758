//! Snapshot files, tokens, the spool, verify-then-restore, cold start, retention and hygiene.
//!
//! Failures injected: truncated, bit-flipped, mislabelled and missing files; wrong tokens; streams of
//! the wrong length or CRC; `EIO` on rename, directory fsync and copy; `EXDEV` between the spool and
//! the snapshot directory; a process kill or power loss at every durability operation of the writer
//! and of finalize; concurrent receives of one index where one fails.
//!
//! Invariants: every bad input is a typed error and changes no state; a snapshot name only ever holds a
//! complete file whose CRC checks; a finished snapshot survives later crashes; a failed finalize leaves
//! exactly the spool (removed by close) or the final file; a file another receive holds is never removed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use durakv::fsm::{Engine, FsmError, SimEngine, SimEngineOptions, WriteBatch, WriteMode};
use durakv::io::{Fs, OpenOptions, SharedFs, read_file};
use durakv::snapshot::{
    ColdStart, DEFAULT_SPOOL_CAP_BYTES, MIN_SNAPSHOT_LEN, SnapshotError, SnapshotFile, SnapshotHeader,
    SnapshotStore, SnapshotToken, StreamInfo, cold_start, ensure_applied_durable, restore, verify,
    write_snapshot,
};
use durakv_faults::{
    CrashKind, FaultEffect, FaultRule, OpKind, SimFs, SimFsOptions, TornWrite, is_crash_error,
};

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn disk(opts: SimFsOptions) -> SimFs {
    let fs = SimFs::new(7, opts).expect("options");
    for d in ["/snap", "/spool", "/src", "/dst"] {
        fs.create_dir_all(Path::new(d)).expect("mkdir");
    }
    fs.sync_dir(Path::new("/")).expect("sync /");
    fs
}

fn engine(fs: &SimFs, dir: &str) -> SimEngine {
    SimEngine::open(Arc::new(fs.clone()), Path::new(dir), SimEngineOptions::default()).expect("open engine")
}

/// An engine holding `n` keys, applied up to `index`.
fn filled(fs: &SimFs, dir: &str, n: u32, index: u64) -> SimEngine {
    let e = engine(fs, dir);
    let mut b = WriteBatch::new();
    for i in 0..n {
        b.put(format!("key{i:06}"), format!("value-{i}-{}", "v".repeat((i % 50) as usize)));
    }
    b.set_applied_index(index).set_meta(durakv::fsm::MetaKey::AppliedTerm, 3u64.to_be_bytes().to_vec());
    e.write(&b, WriteMode::Sync).expect("fill");
    e
}

fn all(e: &dyn Engine) -> Vec<(Vec<u8>, Vec<u8>)> {
    e.scan(b"", None, usize::MAX).expect("scan")
}

fn write(fs: &SimFs, e: &dyn Engine) -> SnapshotFile {
    write_snapshot(fs, Path::new("/snap"), e, b"conf", b"node-state").expect("write snapshot")
}

#[test]
fn write_verify_restore_round_trip() -> Result<(), SnapshotError> {
    let fs = disk(SimFsOptions::default());
    let src = filled(&fs, "/src", 5000, 42);
    let file = write(&fs, &src);
    assert_eq!((file.index, file.term), (42, 3));
    assert_eq!(file.path, p("/snap/00000000000000000042.snap"));
    let token = SnapshotToken::decode(&file.token().encode())?;
    let v = verify(&fs, &file.path, &token)?;
    assert_eq!(v.header.conf_state, b"conf");
    assert_eq!(v.header.node_state, b"node-state");
    assert_eq!(v.len, file.len);
    let dst = engine(&fs, "/dst");
    dst.write(WriteBatch::new().put("stale", "x").set_applied_index(1), WriteMode::Sync)?;
    let header = restore(&fs, &dst, &file.path, &token)?;
    assert_eq!(header.index, 42);
    assert_eq!(all(&dst), all(&src));
    assert_eq!(dst.applied_index()?, Some(42), "a received snapshot bumps the applied index");
    // Restored state survives a restart.
    drop(dst);
    assert_eq!(all(&engine(&fs, "/dst")), all(&src));
    Ok(())
}

/// Corrupt a copy of a good snapshot with `f`, then check `verify` and `restore` both fail with the
/// expected error and the restore target is untouched.
fn expect_rejected(
    corrupt: impl Fn(&SimFs, &Path, &SnapshotFile) -> SnapshotToken,
    want: fn(&SnapshotError) -> bool,
) {
    expect_rejected_by(true, corrupt, want)
}

/// `verify_checks`: whether `verify` (size, footer, CRC, header) sees the damage, or only the full
/// parse of a restore does (a well-checksummed but malformed body: a writer bug).
fn expect_rejected_by(
    verify_checks: bool,
    corrupt: impl Fn(&SimFs, &Path, &SnapshotFile) -> SnapshotToken,
    want: fn(&SnapshotError) -> bool,
) {
    let fs = disk(SimFsOptions::default());
    let src = filled(&fs, "/src", 300, 9);
    let file = write(&fs, &src);
    let token = corrupt(&fs, &file.path, &file);
    if verify_checks {
        let err = verify(&fs, &file.path, &token).expect_err("verify must reject");
        assert!(want(&err), "verify: unexpected error {err}");
    }
    let dst = engine(&fs, "/dst");
    dst.write(WriteBatch::new().put("keep", "me").set_applied_index(3), WriteMode::Sync).expect("write");
    let err = restore(&fs, &dst, &file.path, &token).expect_err("restore must reject");
    assert!(want(&err), "restore: unexpected error {err}");
    assert_eq!(all(&dst), vec![(b"keep".to_vec(), b"me".to_vec())], "a rejected snapshot changes nothing");
    assert_eq!(dst.applied_index().expect("applied"), Some(3));
}

fn rewrite(fs: &SimFs, path: &Path, bytes: &[u8]) {
    let mut f = fs.open(path, OpenOptions::create_truncate()).expect("open");
    f.write_at(bytes, 0).expect("write");
}

/// Recompute the footer after editing the body, so only the intended check fails.
fn refooter(bytes: &mut [u8]) -> u32 {
    let n = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_be_bytes());
    crc
}

#[test]
fn every_bad_snapshot_gets_its_typed_error() {
    expect_rejected(
        |fs, path, f| {
            rewrite(fs, path, &[0u8; 10]);
            f.token()
        },
        |e| matches!(e, SnapshotError::TooSmall { len: 10, .. }),
    );
    expect_rejected(
        |_, _, f| SnapshotToken { index: f.index, crc: f.crc ^ 1 },
        |e| matches!(e, SnapshotError::TokenCrcMismatch { .. }),
    );
    expect_rejected(
        |fs, path, f| {
            fs.flip_bit(path, f.len / 2, 3).expect("flip");
            f.token()
        },
        |e| matches!(e, SnapshotError::BodyCrcMismatch { .. }),
    );
    expect_rejected(
        |fs, path, f| {
            fs.remove_file(path).expect("remove");
            f.token()
        },
        |e| matches!(e, SnapshotError::NotFound { .. }),
    );
    expect_rejected(
        |fs, path, f| {
            let mut bytes = read_file(fs, path).expect("read");
            bytes[0] = b'X';
            let crc = refooter(&mut bytes);
            rewrite(fs, path, &bytes);
            SnapshotToken { index: f.index, crc }
        },
        |e| matches!(e, SnapshotError::BadHeader(_)),
    );
    expect_rejected(
        |fs, path, f| {
            let mut bytes = read_file(fs, path).expect("read");
            bytes[9] = 7;
            let crc = refooter(&mut bytes);
            rewrite(fs, path, &bytes);
            SnapshotToken { index: f.index, crc }
        },
        |e| matches!(e, SnapshotError::UnknownVersion(7)),
    );
    expect_rejected(
        |_, _, f| SnapshotToken { index: f.index + 1, crc: f.crc },
        |e| matches!(e, SnapshotError::BadHeader(_)),
    );
    expect_rejected_by(
        false,
        |fs, path, f| {
            // A record that claims to run past the body, with a consistent CRC.
            let mut bytes = read_file(fs, path).expect("read");
            let header_len = u32::from_be_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as usize;
            bytes[header_len..header_len + 4].copy_from_slice(&u32::MAX.to_be_bytes());
            let crc = refooter(&mut bytes);
            rewrite(fs, path, &bytes);
            SnapshotToken { index: f.index, crc }
        },
        |e| matches!(e, SnapshotError::BadBody { .. }),
    );
    assert!(matches!(SnapshotToken::decode(b"short"), Err(SnapshotError::BadToken(_))));
}

/// The stream a sender sends for `file`: its bytes without the footer.
fn stream_of(fs: &SimFs, file: &SnapshotFile) -> (StreamInfo, Vec<u8>) {
    let bytes = read_file(fs, &file.path).expect("read");
    let body = bytes[..bytes.len() - 4].to_vec();
    (StreamInfo { index: file.index, len: body.len() as u64, crc: file.crc }, body)
}

fn store(fs: &SimFs, keep: usize) -> SnapshotStore {
    let shared: SharedFs = Arc::new(fs.clone());
    SnapshotStore::open(shared, Path::new("/snap"), Path::new("/spool"), keep).expect("store").0
}

fn files_in(fs: &SimFs, dir: &str) -> Vec<String> {
    fs.read_dir(Path::new(dir)).expect("list").into_iter().map(|e| e.name).collect()
}

/// A snapshot written on one disk, to be received on another.
fn sent(n: u32, index: u64) -> (StreamInfo, Vec<u8>, SnapshotFile) {
    let fs = disk(SimFsOptions::default());
    let src = filled(&fs, "/src", n, index);
    let file = write(&fs, &src);
    let (info, body) = stream_of(&fs, &file);
    (info, body, file)
}

#[test]
fn spool_receives_in_chunks_and_finalizes_an_identical_file() -> Result<(), SnapshotError> {
    let (info, body, file) = sent(2000, 77);
    let fs = disk(SimFsOptions::default());
    let store = store(&fs, 3);
    let guard = store.begin_receive(77);
    let mut spool = store.spool(&guard, info, DEFAULT_SPOOL_CAP_BYTES)?;
    for chunk in body.chunks(4096) {
        spool.push(chunk)?;
    }
    let done = spool.finalize()?;
    spool.close()?;
    spool.close()?;
    assert_eq!(done.token(), file.token());
    assert!(files_in(&fs, "/spool").is_empty());
    let bytes = read_file(&fs, &done.path).expect("read");
    assert_eq!(&bytes[..bytes.len() - 4], &body[..]);
    verify(&fs, &done.path, &file.token())?;
    Ok(())
}

#[test]
fn spool_rejects_wrong_length_crc_and_oversize_and_removes_itself() {
    let (info, body, _) = sent(100, 5);
    let fs = disk(SimFsOptions::default());
    let store = store(&fs, 3);
    let guard = store.begin_receive(5);
    // Too many bytes.
    let mut s = store
        .spool(&guard, StreamInfo { len: info.len - 1, ..info }, DEFAULT_SPOOL_CAP_BYTES)
        .expect("spool");
    assert!(matches!(s.push(&body), Err(SnapshotError::LengthMismatch { .. })));
    assert!(files_in(&fs, "/spool").is_empty(), "spool removed after the mismatch");
    assert!(matches!(s.push(b"x"), Err(SnapshotError::SpoolClosed)));
    // Too few bytes.
    let mut s = store.spool(&guard, info, DEFAULT_SPOOL_CAP_BYTES).expect("spool");
    s.push(&body[..10]).expect("push");
    assert!(matches!(s.finalize(), Err(SnapshotError::LengthMismatch { received: 10, .. })));
    assert!(files_in(&fs, "/spool").is_empty());
    // Wrong CRC.
    let mut s = store
        .spool(&guard, StreamInfo { crc: info.crc ^ 0xFF, ..info }, DEFAULT_SPOOL_CAP_BYTES)
        .expect("spool");
    s.push(&body).expect("push");
    assert!(matches!(s.finalize(), Err(SnapshotError::StreamCrcMismatch { .. })));
    assert!(files_in(&fs, "/spool").is_empty());
    assert!(files_in(&fs, "/snap").is_empty(), "nothing reached the snapshot directory");
    // Over the cap, and a length near u64::MAX, without overflow.
    assert!(matches!(store.spool(&guard, info, 100), Err(SnapshotError::TooLarge { .. })));
    let huge = StreamInfo { len: u64::MAX, ..info };
    assert!(matches!(store.spool(&guard, huge, u64::MAX), Err(SnapshotError::TooLarge { .. })));
    assert!(matches!(
        store.spool(&guard, StreamInfo { len: 3, ..info }, 100),
        Err(SnapshotError::TooSmall { .. })
    ));
    // A stream for another index than the one held.
    assert!(store.spool(&guard, StreamInfo { index: 6, ..info }, DEFAULT_SPOOL_CAP_BYTES).is_err());
}

/// Receive `body` on `fs` and finalize; returns the finalize result and the spool for inspection.
fn receive(
    fs: &SimFs,
    info: StreamInfo,
    body: &[u8],
) -> (Result<SnapshotFile, SnapshotError>, durakv::snapshot::Spool) {
    let store = store(fs, 3);
    let guard = store.begin_receive(info.index);
    let mut spool = store.spool(&guard, info, DEFAULT_SPOOL_CAP_BYTES).expect("spool");
    spool.push(body).expect("push");
    let r = spool.finalize();
    (r, spool)
}

#[test]
fn finalize_rename_failure_leaves_only_the_spool_for_close() {
    let (info, body, _) = sent(100, 5);
    let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Rename]).on_path("/spool/*").expect("pattern");
    let fs = disk(SimFsOptions { rules: vec![rule], ..SimFsOptions::default() });
    let (r, mut spool) = receive(&fs, info, &body);
    assert!(matches!(r, Err(SnapshotError::Io { .. })), "{r:?}");
    assert_eq!(files_in(&fs, "/spool").len(), 1, "the spool is still there");
    assert!(files_in(&fs, "/snap").is_empty(), "no final file");
    spool.close().expect("close removes the spool");
    assert!(files_in(&fs, "/spool").is_empty());
    spool.close().expect("a second close is a no-op");
}

#[test]
fn finalize_dir_sync_failure_leaves_only_the_final_file_and_close_is_a_no_op() {
    let (info, body, file) = sent(100, 5);
    let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::SyncDir])
        .on_path("/snap")
        .expect("pattern")
        .after_ops(8);
    let fs = disk(SimFsOptions { rules: vec![rule], ..SimFsOptions::default() });
    let (r, mut spool) = receive(&fs, info, &body);
    assert!(matches!(r, Err(SnapshotError::Io { .. })), "{r:?}");
    assert!(files_in(&fs, "/spool").is_empty());
    assert_eq!(files_in(&fs, "/snap"), vec!["00000000000000000005.snap".to_string()]);
    // No misleading "spool not found" from close: the real error was the directory fsync.
    spool.close().expect("close after the spool became the final file is a no-op");
    verify(&fs, Path::new("/snap/00000000000000000005.snap"), &file.token()).expect("the file is complete");
}

#[test]
fn finalize_across_devices_copies_and_removes_the_spool() {
    let (info, body, file) = sent(3000, 5);
    let fs = disk(SimFsOptions { mounts: vec![p("/spool"), p("/snap")], ..SimFsOptions::default() });
    let (r, mut spool) = receive(&fs, info, &body);
    let done = r.expect("EXDEV falls back to a copy");
    spool.close().expect("no-op");
    assert_eq!(fs.coverage().get("fault.exdev"), Some(&1), "the rename really crossed devices");
    assert!(files_in(&fs, "/spool").is_empty());
    assert_eq!(files_in(&fs, "/snap"), vec!["00000000000000000005.snap".to_string()]);
    verify(&fs, &done.path, &file.token()).expect("the copy is complete");
    // And it is durable: a power loss keeps it.
    fs.crash(CrashKind::PowerLoss);
    verify(&fs, &done.path, &file.token()).expect("the copy survives a power loss");
}

#[test]
fn finalize_across_devices_with_a_failing_copy_leaves_only_the_spool() {
    let (info, body, _) = sent(100, 5);
    let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Write]).on_path("/snap/*.tmp").expect("pattern");
    let fs = disk(SimFsOptions {
        mounts: vec![p("/spool"), p("/snap")],
        rules: vec![rule],
        ..SimFsOptions::default()
    });
    let (r, mut spool) = receive(&fs, info, &body);
    assert!(matches!(r, Err(SnapshotError::Io { .. })), "{r:?}");
    assert!(files_in(&fs, "/snap").is_empty(), "neither the temp copy nor a final file");
    assert_eq!(files_in(&fs, "/spool").len(), 1);
    spool.close().expect("close");
    assert!(files_in(&fs, "/spool").is_empty());
}

#[test]
fn concurrent_receives_of_one_index_where_one_fails() -> Result<(), SnapshotError> {
    let (info, body, file) = sent(500, 7);
    let fs = disk(SimFsOptions::default());
    let store = store(&fs, 1);
    let a = store.begin_receive(7);
    let b = store.begin_receive(7);
    let mut sa = store.spool(&a, info, DEFAULT_SPOOL_CAP_BYTES)?;
    let mut sb = store.spool(&b, info, DEFAULT_SPOOL_CAP_BYTES)?;
    for (x, y) in body.chunks(1000).zip(body.chunks(1000)) {
        sa.push(x)?;
        sb.push(y)?;
    }
    sa.finalize()?;
    sb.finalize()?;
    // B gives up (its apply failed), and a newer snapshot is taken: retention keeps one file, but
    // never the one A still holds.
    drop(b);
    write(&fs, &filled(&fs, "/src", 10, 9));
    assert!(store.gc()?.is_empty(), "the held index is kept past the retention");
    let dst = engine(&fs, "/dst");
    restore(&fs, &dst, &store.path(7), &file.token())?;
    assert_eq!(dst.applied_index()?, Some(7));
    // Once A is done with it, retention removes it.
    drop(a);
    assert_eq!(store.gc()?, vec![store.path(7)]);
    Ok(())
}

#[test]
fn retention_keeps_the_newest_and_open_removes_leftovers() -> Result<(), FsmError> {
    let fs = disk(SimFsOptions::default());
    let e = engine(&fs, "/src");
    let st = store(&fs, 3);
    for i in 1..=5u64 {
        e.write(WriteBatch::new().put(format!("k{i}"), "v").set_applied_index(i * 10), WriteMode::Sync)?;
        write(&fs, &e);
    }
    let held = st.begin_receive(10);
    let removed = st.gc().expect("gc");
    assert_eq!(
        removed,
        vec![p("/snap/00000000000000000020.snap")],
        "10 is held, 30..50 are the newest three"
    );
    drop(held);
    assert_eq!(st.gc().expect("gc"), vec![p("/snap/00000000000000000010.snap")]);
    let names: Vec<u64> = st.list().expect("list").into_iter().map(|(i, _)| i).collect();
    assert_eq!(names, vec![30, 40, 50]);
    // Leftovers of interrupted work are removed at open; real snapshots are not.
    rewrite(&fs, Path::new("/snap/00000000000000000060.snap.tmp"), b"partial");
    rewrite(&fs, Path::new("/spool/00000000000000000070.snap.spool-3"), b"partial");
    let shared: SharedFs = Arc::new(fs.clone());
    let (_, removed) = SnapshotStore::open(shared, Path::new("/snap"), Path::new("/spool"), 3).expect("open");
    assert_eq!(removed.len(), 2);
    assert_eq!(files_in(&fs, "/snap").len(), 3);
    assert!(files_in(&fs, "/spool").is_empty());
    Ok(())
}

#[test]
fn cold_start_skips_only_after_verifying_and_restores_on_any_doubt() -> Result<(), SnapshotError> {
    let fs = disk(SimFsOptions::default());
    let src = filled(&fs, "/src", 1000, 50);
    let file = write(&fs, &src);
    ensure_applied_durable(&src, 50)?;
    assert!(matches!(ensure_applied_durable(&src, 51), Err(SnapshotError::AppliedBehind { .. })));
    let mut headers = Vec::new();
    let mut apply = |h: &SnapshotHeader| {
        headers.push(h.node_state.clone());
        Ok(())
    };
    // Applied index at the snapshot: skip, but the header state is applied.
    let path = cold_start(&fs, &src, &file.path, &file.token(), &mut apply)?;
    assert_eq!(path, ColdStart::Skipped { index: 50, applied: 50 });
    // Applied index missing: full restore.
    let fresh = engine(&fs, "/dst");
    let path = cold_start(&fs, &fresh, &file.path, &file.token(), &mut apply)?;
    assert!(matches!(path, ColdStart::Restored { index: 50, ref reason } if reason.contains("missing")));
    assert_eq!(all(&fresh), all(&src));
    // Applied index behind: full restore.
    let behind = engine(&fs, "/behind");
    behind.write(WriteBatch::new().put("old", "x").set_applied_index(10), WriteMode::Sync)?;
    assert!(matches!(
        cold_start(&fs, &behind, &file.path, &file.token(), &mut apply)?,
        ColdStart::Restored { .. }
    ));
    assert_eq!(headers, vec![b"node-state".to_vec(); 3]);
    // A corrupt body is refused even when the skip would apply: no skip without the CRC check.
    fs.flip_bit(&file.path, 200, 1).expect("flip");
    let err = cold_start(&fs, &src, &file.path, &file.token(), &mut |_| Ok(())).expect_err("corrupt");
    assert!(matches!(err, SnapshotError::BodyCrcMismatch { .. }));
    Ok(())
}

/// Everything that must hold on the snapshot directory after a crash: every snapshot name holds a
/// complete file whose CRC checks, and every snapshot finished before the crash is there.
fn check_dir(fs: &SimFs, finished: &[SnapshotFile], ctx: &str) {
    let (st, _) = SnapshotStore::open(Arc::new(fs.clone()), Path::new("/snap"), Path::new("/spool"), 10)
        .unwrap_or_else(|e| panic!("{ctx}: store open: {e}"));
    for (index, path) in st.list().expect("list") {
        let bytes = read_file(fs, &path).expect("read");
        assert!(bytes.len() as u64 >= MIN_SNAPSHOT_LEN, "{ctx}: {} is truncated", path.display());
        let footer = u32::from_be_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"));
        verify(fs, &path, &SnapshotToken { index, crc: footer })
            .unwrap_or_else(|e| panic!("{ctx}: {} holds an incomplete file: {e}", path.display()));
    }
    for f in finished {
        verify(fs, &f.path, &f.token())
            .unwrap_or_else(|e| panic!("{ctx}: finished snapshot {} lost: {e}", f.index));
    }
    assert!(files_in(fs, "/spool").is_empty(), "{ctx}: spool leftovers survived hygiene");
}

#[test]
fn crash_at_every_point_of_write_and_finalize_leaves_only_complete_snapshots() {
    // The data sources live on a disk that never crashes; the snapshot directories on one that does.
    let src_fs = disk(SimFsOptions::default());
    let src10 = filled(&src_fs, "/src10", 1500, 10);
    let src20 = filled(&src_fs, "/src20", 1600, 20);
    let src30 = filled(&src_fs, "/src30", 1700, 30);
    let (info30, body30) = {
        let f = write_snapshot(&src_fs, Path::new("/snap"), &src30, b"", b"").expect("source snapshot");
        stream_of(&src_fs, &f)
    };
    let run = |fs: &SimFs| -> Vec<SnapshotFile> {
        let mut done = Vec::new();
        let crashed = |e: &SnapshotError| match e {
            SnapshotError::Io { source, .. } => is_crash_error(source),
            SnapshotError::Fsm(FsmError::Io { source, .. }) => is_crash_error(source),
            _ => false,
        };
        for src in [&src10, &src20] {
            match write_snapshot(fs, Path::new("/snap"), src, b"", b"") {
                Ok(f) => done.push(f),
                Err(e) => {
                    assert!(crashed(&e), "write failed without a crash: {e}");
                    return done;
                }
            }
        }
        let st = match SnapshotStore::open(Arc::new(fs.clone()), Path::new("/snap"), Path::new("/spool"), 10)
        {
            Ok((st, _)) => st,
            Err(e) => {
                assert!(crashed(&e), "store open failed without a crash: {e}");
                return done;
            }
        };
        let guard = st.begin_receive(30);
        let mut spool = match st.spool(&guard, info30, DEFAULT_SPOOL_CAP_BYTES) {
            Ok(s) => s,
            Err(e) => {
                assert!(crashed(&e), "spool failed without a crash: {e}");
                return done;
            }
        };
        for chunk in body30.chunks(700) {
            if let Err(e) = spool.push(chunk) {
                assert!(crashed(&e), "push failed without a crash: {e}");
                return done;
            }
        }
        match spool.finalize() {
            Ok(f) => done.push(f),
            Err(e) => assert!(crashed(&e), "finalize failed without a crash: {e}"),
        }
        done
    };
    let mut states = BTreeSet::new();
    let mut runs = 0;
    for exdev in [false, true] {
        let mounts = if exdev { vec![p("/spool"), p("/snap")] } else { Vec::new() };
        let clean_fs = disk(SimFsOptions { mounts: mounts.clone(), ..SimFsOptions::default() });
        let base = clean_fs.ops_done();
        assert_eq!(run(&clean_fs).len(), 3, "the clean run finishes every step");
        let total = clean_fs.ops_done() - base;
        for k in 0..total {
            for (kind, seed) in
                [(CrashKind::ProcessKill, 0u64), (CrashKind::PowerLoss, 1), (CrashKind::PowerLoss, 2)]
            {
                let fs = SimFs::new(
                    k * 10 + seed,
                    SimFsOptions { mounts: mounts.clone(), ..SimFsOptions::default() },
                )
                .expect("options");
                // The same set-up as the clean run, so operation numbers line up.
                for d in ["/snap", "/spool", "/src", "/dst"] {
                    fs.create_dir_all(Path::new(d)).expect("mkdir");
                }
                fs.sync_dir(Path::new("/")).expect("sync");
                fs.arm_crash(base + k, kind, TornWrite::Random);
                let finished = run(&fs);
                assert!(fs.is_halted(), "the crash at op {k} fired");
                fs.resume();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&fs.cached_image(), &mut h);
                states.insert(std::hash::Hasher::finish(&h));
                check_dir(&fs, &finished, &format!("exdev={exdev} {kind:?} at op {k}"));
                runs += 1;
            }
        }
    }
    println!("explored {runs} snapshot crashes, {} distinct post-crash directories", states.len());
    assert!(states.len() >= 100, "only {} distinct states", states.len());
}

#[test]
fn two_receives_of_one_index_copying_across_devices_do_not_clobber_each_other() -> Result<(), SnapshotError> {
    // Failure: both receives fall back to the EXDEV copy at once. Invariant: the final name holds a
    // complete file (each copy has its own temporary name, opened create-new).
    let (info, body, file) = sent(800, 9);
    let fs = disk(SimFsOptions { mounts: vec![p("/spool"), p("/snap")], ..SimFsOptions::default() });
    let store = store(&fs, 3);
    let (a, b) = (store.begin_receive(9), store.begin_receive(9));
    let mut sa = store.spool(&a, info, DEFAULT_SPOOL_CAP_BYTES)?;
    let mut sb = store.spool(&b, info, DEFAULT_SPOOL_CAP_BYTES)?;
    sa.push(&body)?;
    sb.push(&body)?;
    sa.finalize()?;
    sb.finalize()?;
    verify(&fs, &store.path(9), &file.token())?;
    assert_eq!(files_in(&fs, "/snap"), vec!["00000000000000000009.snap".to_string()]);
    assert!(files_in(&fs, "/spool").is_empty());
    Ok(())
}
