//! The `durakv` binary's WAL tools, as an operator runs them.
//!
//! Failures injected: a missing directory, a flipped byte in a middle record, a torn tail, an
//! unknown command. Invariants: `check` changes nothing and exits non-zero on damage, naming the file
//! and offset; `repair` fixes a torn tail and refuses corruption; errors are clear, never panics.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use durakv::io::RealFs;
use durakv::wal::{Batch, Wal, WalOptions};

fn durakv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_durakv"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run durakv")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn wal_with_entries(dir: &Path, n: u64) -> Vec<std::path::PathBuf> {
    let (mut wal, _) = Wal::open(Arc::new(RealFs::new()), dir, WalOptions::default()).expect("open");
    for i in 1..=n {
        wal.append(Batch::new().entry(i, 1, vec![i as u8; 100])).expect("append");
    }
    wal.segment_paths()
}

#[test]
fn check_on_a_missing_directory_fails_and_creates_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let missing = tmp.path().join("nope");
    let out = durakv(&["wal", "check", missing.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nope"), "{}", text(&out));
    assert!(!missing.exists(), "check must not create the directory");
}

#[test]
fn check_dump_and_repair_report_what_they_find() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("wal");
    let segments = wal_with_entries(&dir, 5);
    let d = dir.to_str().expect("utf-8 path");
    let ok = durakv(&["wal", "check", d]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("ok: 1 segments, 5 records"), "{}", text(&ok));
    let dump = durakv(&["wal", "dump", d]);
    assert!(dump.status.success());
    assert_eq!(text(&dump).matches("entry index=").count(), 5, "{}", text(&dump));

    // A torn tail: check refuses (strict), repair fixes it, check then passes.
    let seg = &segments[0];
    let len = std::fs::metadata(seg).expect("metadata").len();
    std::fs::OpenOptions::new().write(true).open(seg).expect("open").set_len(len - 10).expect("cut");
    let strict = durakv(&["wal", "check", d]);
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict));
    let repaired = durakv(&["wal", "repair", d]);
    assert!(repaired.status.success(), "{}", text(&repaired));
    assert!(text(&repaired).contains("repaired torn tail"), "{}", text(&repaired));
    assert!(durakv(&["wal", "check", d]).status.success());

    // A flipped byte in a middle record: corruption, named by file and offset, never repaired.
    let mut bytes = std::fs::read(seg).expect("read");
    bytes[32 + 24 + 16 + 30 + 140] ^= 0xFF;
    std::fs::write(seg, &bytes).expect("write");
    for tool in ["check", "repair"] {
        let out = durakv(&["wal", tool, d]);
        assert_eq!(out.status.code(), Some(1), "{tool}: {}", text(&out));
        assert!(
            text(&out).contains("corrupt WAL segment") && text(&out).contains("at offset"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(std::fs::read(seg).expect("read"), bytes, "a corrupt segment is never changed");
}

#[test]
fn unknown_commands_and_flags_print_usage_and_help_lists_every_flag() {
    // A usage error: the usage, exit 2 (clap's convention), nothing started.
    for bad in [&["frobnicate"][..], &["--frobnicate", "1"], &["wal", "check"]] {
        let out = durakv(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
        assert!(text(&out).contains("Usage:"), "{}", text(&out));
    }
    let help = durakv(&["--help"]);
    assert!(help.status.success());
    for flag in ["--data-dir", "--tick-ms", "--max-in-flight", "DURAKV_PEERS", "wal"] {
        assert!(text(&help).contains(flag), "{flag} missing from --help: {}", text(&help));
    }
    let version = durakv(&["--version"]);
    assert!(text(&version).contains(env!("CARGO_PKG_VERSION")), "{}", text(&version));
}

/// A setting from the environment: DURAKV_<FLAG> is read like the flag, and its errors name the
/// field (a bad tick refused before anything starts).
#[test]
fn settings_come_from_the_environment_too() {
    let out = Command::new(env!("CARGO_BIN_EXE_durakv"))
        .args(["--id", "1", "--peers", "1=127.0.0.1:1,127.0.0.1:2", "--data-dir", "/nonexistent-durakv"])
        .env("DURAKV_TICK_MS", "0")
        .output()
        .expect("run durakv");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("tick_ms"), "{}", text(&out));
}

#[test]
fn check_is_read_only_and_prints_the_hard_state() {
    // Failure: a leftover `.tmp` from an interrupted segment creation, beside a raft log with its
    // hard-state file. Invariants: `check` removes nothing, creates nothing, and prints term, vote,
    // commit and the acknowledged index from the hard-state file.
    use durakv::io::SharedFs;
    use durakv::storage::RaftStorage;
    use raft::eraftpb::{Entry, HardState};
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("raft");
    let fs: SharedFs = Arc::new(RealFs::new());
    let (storage, _) = RaftStorage::open(fs, &dir, WalOptions::default()).expect("open");
    let entry = Entry { index: 1, term: 3, ..Entry::default() };
    storage.persist(&[entry], Some(&HardState { term: 3, vote: 2, commit: 1 })).expect("persist");
    drop(storage);
    let leftover = dir.join("00000000000000000009.wal.tmp");
    std::fs::write(&leftover, b"half a segment").expect("leftover");
    let listing = |d: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing(&dir);
    let out = durakv(&["wal", "check", dir.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("term 3, vote 2, commit 1, acknowledged 1"), "{}", text(&out));
    assert!(text(&out).contains("leftover"), "{}", text(&out));
    assert_eq!(listing(&dir), before, "check changed the directory");
    assert!(leftover.exists());
}
