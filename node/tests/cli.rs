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
fn unknown_commands_print_usage() {
    let out = durakv(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("usage:"), "{}", text(&out));
    assert!(durakv(&["--help"]).status.success());
}
