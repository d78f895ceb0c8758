//! The `durakv` binary: the replicated node (`durakv --id 1 --peers … --data-dir …`) and the operator
//! tools for a WAL directory (`durakv wal check|dump|repair <dir>`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use durakv::io::{Fs, RealFs, read_file};
use durakv::wal::{RecoveryMode, Wal, WalOptions, scan_segment};

const USAGE: &str = "usage:
  durakv [--config FILE] [--FLAG VALUE]...   run a node (flags override the file)
      --id N                 this node's id (one of --peers)
      --peers LIST           every member: '1=PEER_ADDR,RESP_ADDR;2=...;3=...'
      --data-dir DIR         where the raft log, state machine and snapshots live
      --spool-dir DIR        where received snapshots stream to (default DATA_DIR/spool; may be
                             another filesystem)
      --resp-addr ADDR       the Redis-protocol port (default: this node's entry in --peers)
      --peer-addr ADDR       the raft transport port (default: this node's entry in --peers)
      --cluster-id N         peers of another cluster are refused (default 1)
      --fsm-sync sync|nosync whether raft applies fsync the state machine (default nosync)
      --requirepass PASS     clients must AUTH
      --snapshot-log-bytes N snapshot once N bytes of entries were applied since the last (default 64 MiB)
      --snapshot-every N     ... or after N applied entries (default 0: by bytes only)
      --snapshot-catch-up-entries N  entries kept in the log below each snapshot (default 5000)
      --metrics-addr ADDR    serve Prometheus metrics at http://ADDR/metrics (default: off)
      --max-bulk-bytes N     largest RESP bulk string (default 536870912)
      --log-json true|false  JSON log lines (level from RUST_LOG, default info)
  durakv wal check <dir>   verify every segment without changing anything (exit 1 if damaged)
  durakv wal dump <dir>    list every record of every segment
  durakv wal repair <dir>  open the WAL as the node would: repair a torn tail, refuse corruption";

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    durakv::replica::quiet_contained_panics();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a.starts_with("--"))
        && !matches!(args[0].as_str(), "--help" | "--version")
    {
        return match node::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("durakv: {}", describe(&e));
                ExitCode::from(1)
            }
        };
    }
    init_logging(false);
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

/// An error and its causes on one line. The library's errors already print their cause in their own
/// message (so a log line is complete); a cause whose text is already there is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
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
            for tmp in &report.removed_tmp {
                println!("leftover (a start-up removes it): {}", tmp.display());
            }
            // The hard-state file beside the segments, read without changing it.
            let hs_path = PathBuf::from(dir).join(durakv::hardstate::FILE_NAME);
            if RealFs::new().exists(&hs_path).unwrap_or(false) {
                let bytes = read_file(&RealFs::new(), &hs_path)
                    .with_context(|| format!("reading {}", hs_path.display()))?;
                match durakv::hardstate::decode_file(&bytes) {
                    Ok((seq, st)) => {
                        println!(
                            "hard state (slot seq {seq}): term {}, vote {}, commit {}, acknowledged {}",
                            st.term, st.vote, st.commit, st.acknowledged
                        );
                        if st.recover_to > 0 {
                            println!("recovering from peers up to index {}", st.recover_to);
                        }
                        if let Some(r) = st.repair {
                            println!("last repair: {r}");
                        }
                    }
                    Err(reason) => bail!("corrupt hard-state file {}: {reason}", hs_path.display()),
                }
            }
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
        ["--version"] => {
            println!("durakv {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        [] | ["help"] | ["--help"] | ["-h"] => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("unknown command {:?}\n{USAGE}", args.join(" ")),
    }
}

/// The node: configuration, logging, the runtime, signals.
mod node {
    use std::path::PathBuf;
    use std::sync::Arc;

    use anyhow::{Context, bail};
    use durakv::config::NodeConfig;
    use durakv::io::{RealFs, SharedFs};
    use durakv::runtime::{RuntimeOptions, bind, open_replica, serve};

    /// `--name value` pairs, in order.
    type Flags = Vec<(String, String)>;

    /// `--flag value` or `--flag=value` pairs; `--config FILE` names the file.
    fn parse_flags(args: &[String]) -> anyhow::Result<(Option<PathBuf>, Flags)> {
        let mut file = None;
        let mut flags = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(name) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?} (flags are --name value)\n{}", super::USAGE);
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let value = it.next().with_context(|| format!("--{name} needs a value"))?;
                    (name.to_string(), value.clone())
                }
            };
            if name == "config" {
                file = Some(PathBuf::from(value));
            } else {
                flags.push((name, value));
            }
        }
        Ok((file, flags))
    }

    pub fn main(args: &[String]) -> anyhow::Result<()> {
        let (file, flags) = parse_flags(args)?;
        let cfg = NodeConfig::load(file.as_deref(), &flags).context("configuration")?;
        super::init_logging(cfg.log_json);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("durakv")
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(run(cfg))
    }

    async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
        let fs: SharedFs = Arc::new(RealFs::new());
        let opts = RuntimeOptions::default();
        #[cfg(feature = "rocksdb")]
        let replica = open_replica(&cfg, fs.clone(), &opts, durakv::fsm::RocksEngine::open)?;
        // Without RocksDB (a build for the simulation), the deterministic engine on the same disk.
        #[cfg(not(feature = "rocksdb"))]
        let replica = open_replica(&cfg, fs.clone(), &opts, |dir| {
            durakv::fsm::SimEngine::open(fs.clone(), dir, durakv::fsm::SimEngineOptions::default())
        })?;
        let listeners = bind(&cfg).await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let id = cfg.id;
        tokio::spawn(async move {
            let signal = wait_for_signal().await;
            tracing::info!(node = id, signal, "stopping");
            let _ = stop_tx.send(true);
        });
        let served = serve(&cfg, replica, fs, listeners, opts, stop_rx).await;
        // As it stopped, the raft loop answered every write it still held (most with "may or may not
        // have been applied"); give the connection tasks a moment to send those replies before the
        // process exits and closes their sockets.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        served?;
        Ok(())
    }

    #[cfg(unix)]
    async fn wait_for_signal() -> &'static str {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                // Without signal handlers the process still dies on the default action.
                std::future::pending::<()>().await;
                "none"
            }
        }
    }
}
