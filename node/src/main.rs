//! The `durakv` binary. The replicated node lands with the Raft layer; until then the binary offers the
//! operator tools that already exist: inspecting and verifying a WAL directory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use durakv::io::{Fs, RealFs, read_file};
use durakv::wal::{RecoveryMode, Wal, WalOptions, scan_segment};

const USAGE: &str = "usage:
  durakv wal check <dir>   verify every segment without changing anything (exit 1 if damaged)
  durakv wal dump <dir>    list every record of every segment
  durakv wal repair <dir>  open the WAL as the node would: repair a torn tail, refuse corruption";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The tools inspect an existing WAL; opening one would otherwise create a missing directory.
fn existing_dir(dir: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(dir);
    match RealFs::new().metadata(&path) {
        Ok(md) if md.kind == durakv::io::EntryKind::Dir => Ok(path),
        Ok(_) => bail!("{dir} is not a directory"),
        Err(e) => bail!("{dir}: {e}"),
    }
}

fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    match strs.as_slice() {
        ["wal", "check", dir] => {
            let opts = WalOptions { recovery: RecoveryMode::Strict, ..WalOptions::default() };
            let (wal, report) = Wal::open(Arc::new(RealFs::new()), &existing_dir(dir)?, opts)
                .with_context(|| format!("checking WAL in {dir}"))?;
            println!(
                "ok: {} segments, {} records, entries {:?}..={:?}, compacted below {}",
                report.segments,
                report.records,
                wal.first_index(),
                wal.last_index(),
                wal.compacted_below()
            );
            Ok(ExitCode::SUCCESS)
        }
        ["wal", "repair", dir] => {
            let (_, report) = Wal::open(Arc::new(RealFs::new()), &existing_dir(dir)?, WalOptions::default())
                .with_context(|| format!("opening WAL in {dir}"))?;
            match report.repaired {
                Some(t) => println!(
                    "repaired torn tail: {} at offset {}, {} bytes moved to {}",
                    t.segment.display(),
                    t.offset,
                    t.bytes_dropped,
                    t.broken_copy.display()
                ),
                None => println!("ok: nothing to repair"),
            }
            Ok(ExitCode::SUCCESS)
        }
        ["wal", "dump", dir] => {
            let fs = RealFs::new();
            let dir = existing_dir(dir)?;
            let mut damaged = false;
            for entry in fs.read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                if !entry.name.ends_with(".wal") {
                    continue;
                }
                let path = dir.join(&entry.name);
                let bytes = read_file(&fs, &path).with_context(|| format!("reading {}", path.display()))?;
                let scan = match scan_segment(&bytes) {
                    Ok(scan) => scan,
                    Err(problem) => {
                        println!("{}: bad header: {problem}", path.display());
                        damaged = true;
                        continue;
                    }
                };
                println!("{} (seq {}, {} bytes)", path.display(), scan.seq, bytes.len());
                for f in &scan.frames {
                    println!("  @{:<10} batch@{:<10} {}", f.offset, f.durable_upto, f.record);
                }
                if let Some((offset, problem)) = scan.stopped {
                    println!("  @{offset:<10} STOP: {problem} ({} bytes after)", bytes.len() as u64 - offset);
                    damaged = true;
                }
            }
            Ok(if damaged { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        [] | ["help"] | ["--help"] | ["-h"] => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("unknown command {:?}\n{USAGE}", args.join(" ")),
    }
}
