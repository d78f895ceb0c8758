//! The `durakv` binary: the replicated node (`durakv --id 1 --peers … --data-dir …`) and the operator
//! tools for a WAL directory (`durakv wal check|dump|repair <dir>`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use durakv::io::{Fs, RealFs, read_file};
use durakv::wal::{RecoveryMode, Wal, WalOptions, scan_segment};

/// durakv: a replicated key-value database that speaks the Redis protocol and keeps every write it
/// acknowledged through process kills and power loss.
///
/// Run a node with flags (or a config file, or DURAKV_* environment variables: a flag beats the
/// environment, which beats the file), or use a storage tool (`durakv wal …`).
#[derive(Debug, Parser)]
#[command(name = "durakv", version, args_conflicts_with_subcommands = true, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    tool: Option<Tool>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Subcommand)]
enum Tool {
    /// Operate a running cluster through one node's client port
    Admin {
        /// A node's Redis-protocol address (any node of the cluster)
        #[arg(long, env = "DURAKV_ADDR", value_name = "HOST:PORT", default_value = "127.0.0.1:6379")]
        addr: String,
        /// The cluster's requirepass, when it has one (as redis-cli, from REDISCLI_AUTH too)
        #[arg(long, env = "REDISCLI_AUTH", value_name = "PASS", hide_env_values = true)]
        password: Option<String>,
        /// How long to wait for the node, per request, in seconds (BACKUP START writes the whole
        /// data set before it answers)
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        timeout: u64,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Seed an empty data directory from a backup, as one member of a new cluster (run it for every
    /// member with the same file and --voters, then start the members as usual)
    Restore {
        /// A file written by `durakv admin backup`
        file: PathBuf,
        /// The new member's data directory (must hold no node yet)
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Every voter of the new cluster, by id: 1,2,3 (the ids of its --peers)
        #[arg(long, value_name = "IDS")]
        voters: String,
    },
    /// Inspect or repair a raft WAL directory (the node must be stopped)
    Wal {
        #[command(subcommand)]
        action: WalAction,
    },
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// List the members, their roles and addresses (CLUSTER MEMBERS)
    Members,
    /// Add a new node as a learner (it receives the data, does not vote); then start it with
    /// --join and its own --id, and promote it once it caught up
    AddLearner {
        /// The new node's id (never used before in this cluster)
        id: u64,
        /// Its raft transport address
        peer_addr: String,
        /// Its Redis-protocol address
        resp_addr: String,
    },
    /// Make a learner a voter; with --replacing, remove that voter in the same (joint) change
    Promote {
        id: u64,
        #[arg(long, value_name = "ID")]
        replacing: Option<u64>,
    },
    /// Remove a member (a leader hands its leadership over first); then stop that node
    Remove { id: u64 },
    /// Download a consistent snapshot of the cluster's data into FILE: every write acknowledged
    /// before the command started is in it
    Backup { file: PathBuf },
    /// Hand raft leadership to another member (FAILOVER): the one serving clients at --to, or the
    /// most up-to-date follower; returns once it leads
    Failover {
        /// The new leader's client address (its resp_addr, HOST:PORT) [default: the leader chooses]
        #[arg(long, value_name = "HOST:PORT")]
        to: Option<String>,
        /// How long to wait for it to lead, in ms
        #[arg(long, value_name = "MS", default_value_t = 5000)]
        timeout_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum WalAction {
    /// Verify every segment without changing anything (exit 1 if damaged); print the hard state
    Check { dir: String },
    /// List every record of every segment
    Dump { dir: String },
    /// Open the WAL as the node would: repair a torn tail, refuse corruption
    Repair { dir: String },
}

/// The node's settings. Values are checked by the configuration (`durakv::config`), whose errors
/// name the field; docs/operations.md, "Configuration", says what each does.
#[derive(Debug, Args)]
struct NodeArgs {
    /// TOML configuration file; flags and DURAKV_* variables override it
    #[arg(long, env = "DURAKV_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's id (one of --peers)
    #[arg(long, env = "DURAKV_ID", value_name = "N")]
    id: Option<String>,
    /// Every member: '1=PEER_ADDR,RESP_ADDR;2=…;3=…'
    #[arg(long, env = "DURAKV_PEERS", value_name = "LIST")]
    peers: Option<String>,
    /// Join a running cluster as a new member (after CLUSTER ADDLEARNER): a new data directory
    /// waits for the leader's snapshot instead of bootstrapping --peers as the voters
    #[arg(long, env = "DURAKV_JOIN", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    join: Option<String>,
    /// Where the raft log, state machine and snapshots live
    #[arg(long, env = "DURAKV_DATA_DIR", value_name = "DIR")]
    data_dir: Option<String>,
    /// Where received snapshots stream to [default: DATA_DIR/spool; may be another filesystem]
    #[arg(long, env = "DURAKV_SPOOL_DIR", value_name = "DIR")]
    spool_dir: Option<String>,
    /// The Redis-protocol port [default: this node's entry in --peers]
    #[arg(long, env = "DURAKV_RESP_ADDR", value_name = "ADDR")]
    resp_addr: Option<String>,
    /// The raft transport port [default: this node's entry in --peers]
    #[arg(long, env = "DURAKV_PEER_ADDR", value_name = "ADDR")]
    peer_addr: Option<String>,
    /// Peers of another cluster are refused [default: 1]
    #[arg(long, env = "DURAKV_CLUSTER_ID", value_name = "N")]
    cluster_id: Option<String>,
    /// Whether raft apply fsyncs the state machine: sync or nosync [default: nosync]
    #[arg(long, env = "DURAKV_FSM_SYNC", value_name = "MODE")]
    fsm_sync: Option<String>,
    /// Clients must AUTH with this password
    #[arg(long, env = "DURAKV_REQUIREPASS", value_name = "PASS", hide_env_values = true)]
    requirepass: Option<String>,
    /// Peers must prove they know this secret (every member the same; at least 16 bytes)
    #[arg(long, env = "DURAKV_PEER_SECRET", value_name = "SECRET", hide_env_values = true)]
    peer_secret: Option<String>,
    /// … or read it from FILE (trailing whitespace ignored)
    #[arg(long, env = "DURAKV_PEER_SECRET_FILE", value_name = "FILE")]
    peer_secret_file: Option<String>,
    /// Snapshot once this many bytes of entries were applied since the last [default: 64 MiB]
    #[arg(long, env = "DURAKV_SNAPSHOT_LOG_BYTES", value_name = "N")]
    snapshot_log_bytes: Option<String>,
    /// … or after this many applied entries [default: 0, by bytes only]
    #[arg(long, env = "DURAKV_SNAPSHOT_EVERY", value_name = "N")]
    snapshot_every: Option<String>,
    /// Entries kept in the log below each snapshot for lagging followers [default: 5000]
    #[arg(long, env = "DURAKV_SNAPSHOT_CATCH_UP_ENTRIES", value_name = "N")]
    snapshot_catch_up_entries: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off]
    #[arg(long, env = "DURAKV_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Serve the Redis protocol inside TLS here too (Redis's tls-port) [default: off]
    #[arg(long, env = "DURAKV_TLS_RESP_ADDR", value_name = "ADDR")]
    tls_resp_addr: Option<String>,
    /// The TLS port's certificate chain (PEM)
    #[arg(long, env = "DURAKV_TLS_CERT_FILE", value_name = "FILE")]
    tls_cert_file: Option<String>,
    /// The TLS port's private key (PEM)
    #[arg(long, env = "DURAKV_TLS_KEY_FILE", value_name = "FILE")]
    tls_key_file: Option<String>,
    /// TLS clients must present a certificate this CA signed (PEM) [default: no client certificates]
    #[arg(long, env = "DURAKV_TLS_CA_CERT_FILE", value_name = "FILE")]
    tls_ca_cert_file: Option<String>,
    /// The largest RESP bulk string [default: 536870912]
    #[arg(long, env = "DURAKV_MAX_BULK_BYTES", value_name = "N")]
    max_bulk_bytes: Option<String>,
    /// Client connections served at once [default: 10000]
    #[arg(long, env = "DURAKV_MAXCLIENTS", value_name = "N")]
    maxclients: Option<String>,
    /// Requests waiting for raft, all connections together; beyond it -BUSY [default: 16384]
    #[arg(long, env = "DURAKV_MAX_IN_FLIGHT", value_name = "N")]
    max_in_flight: Option<String>,
    /// One raft tick in ms: elections after 10-20 ticks, heartbeats every 3 [default: 100]
    #[arg(long, env = "DURAKV_TICK_MS", value_name = "MS")]
    tick_ms: Option<String>,
    /// How long a client waits for its write or read, in ms [default: 5000]
    #[arg(long, env = "DURAKV_REQUEST_TIMEOUT_MS", value_name = "MS")]
    request_timeout_ms: Option<String>,
    /// Snapshot files kept, the newest [default: 2]
    #[arg(long, env = "DURAKV_KEEP_SNAPSHOTS", value_name = "N")]
    keep_snapshots: Option<String>,
    /// The most a snapshot being received may take in the spool [default: 16 GiB]
    #[arg(long, env = "DURAKV_SPOOL_CAP_BYTES", value_name = "N")]
    spool_cap_bytes: Option<String>,
    /// Messages queued per peer before they are dropped (raft resends) [default: 4096]
    #[arg(long, env = "DURAKV_PEER_QUEUE", value_name = "N")]
    peer_queue: Option<String>,
    /// Snapshot stream chunk size [default: 4 MiB]
    #[arg(long, env = "DURAKV_SNAPSHOT_CHUNK_BYTES", value_name = "N")]
    snapshot_chunk_bytes: Option<String>,
    /// JSON log lines: true or false (level from RUST_LOG, default info) [default: false]
    #[arg(long, env = "DURAKV_LOG_JSON", value_name = "BOOL")]
    log_json: Option<String>,
}

impl NodeArgs {
    /// The flags given (or taken from the environment), by their configuration names, for
    /// [`durakv::config::NodeConfig::load`].
    fn flags(&self) -> Vec<(String, String)> {
        let all = [
            ("id", &self.id),
            ("peers", &self.peers),
            ("join", &self.join),
            ("data-dir", &self.data_dir),
            ("spool-dir", &self.spool_dir),
            ("resp-addr", &self.resp_addr),
            ("peer-addr", &self.peer_addr),
            ("cluster-id", &self.cluster_id),
            ("fsm-sync", &self.fsm_sync),
            ("requirepass", &self.requirepass),
            ("peer-secret", &self.peer_secret),
            ("peer-secret-file", &self.peer_secret_file),
            ("snapshot-log-bytes", &self.snapshot_log_bytes),
            ("snapshot-every", &self.snapshot_every),
            ("snapshot-catch-up-entries", &self.snapshot_catch_up_entries),
            ("metrics-addr", &self.metrics_addr),
            ("tls-resp-addr", &self.tls_resp_addr),
            ("tls-cert-file", &self.tls_cert_file),
            ("tls-key-file", &self.tls_key_file),
            ("tls-ca-cert-file", &self.tls_ca_cert_file),
            ("max-bulk-bytes", &self.max_bulk_bytes),
            ("maxclients", &self.maxclients),
            ("max-in-flight", &self.max_in_flight),
            ("tick-ms", &self.tick_ms),
            ("request-timeout-ms", &self.request_timeout_ms),
            ("keep-snapshots", &self.keep_snapshots),
            ("spool-cap-bytes", &self.spool_cap_bytes),
            ("peer-queue", &self.peer_queue),
            ("snapshot-chunk-bytes", &self.snapshot_chunk_bytes),
            ("log-json", &self.log_json),
        ];
        all.into_iter().filter_map(|(name, v)| Some((name.to_string(), v.clone()?))).collect()
    }
}

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
    // Usage errors, --help and --version print and exit here (a usage error with code 2).
    let cli = Cli::parse();
    let result = match cli.tool {
        Some(Tool::Wal { action }) => {
            init_logging(false);
            wal_tool(action)
        }
        Some(Tool::Admin { addr, password, timeout, action }) => {
            init_logging(false);
            admin_tool(&addr, password.as_deref(), timeout, action)
        }
        Some(Tool::Restore { file, data_dir, voters }) => {
            init_logging(false);
            restore_tool(&file, &data_dir, &voters)
        }
        None => {
            let flags = cli.node.flags();
            node::main(cli.node.config, flags).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("durakv: {}", describe(&e));
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

fn admin_tool(
    addr: &str,
    password: Option<&str>,
    timeout: u64,
    action: AdminAction,
) -> anyhow::Result<ExitCode> {
    use durakv::admin::{AdminClient, backup};
    let mut client = AdminClient::connect(addr, password, std::time::Duration::from_secs(timeout.max(1)))?;
    let wait = std::time::Duration::from_secs(timeout.max(1));
    let mut change = |args: &[&[u8]]| -> anyhow::Result<ExitCode> {
        let lines = durakv::admin::membership(&mut client, args, password, wait)
            .with_context(|| format!("CLUSTER {} through {addr}", String::from_utf8_lossy(args[1])))?;
        for line in lines {
            println!("{line}");
        }
        Ok(ExitCode::SUCCESS)
    };
    match action {
        AdminAction::Members => {
            let lines = durakv::admin::lines(client.call_ok(&[b"CLUSTER", b"MEMBERS"])?)?;
            for line in lines {
                println!("{line}");
            }
        }
        AdminAction::AddLearner { id, peer_addr, resp_addr } => {
            let id = id.to_string();
            return change(&[
                b"CLUSTER",
                b"ADDLEARNER",
                id.as_bytes(),
                peer_addr.as_bytes(),
                resp_addr.as_bytes(),
            ]);
        }
        AdminAction::Promote { id, replacing } => {
            let id = id.to_string();
            return match replacing.map(|r| r.to_string()) {
                Some(old) => change(&[b"CLUSTER", b"PROMOTE", id.as_bytes(), b"REPLACING", old.as_bytes()]),
                None => change(&[b"CLUSTER", b"PROMOTE", id.as_bytes()]),
            };
        }
        AdminAction::Remove { id } => {
            let id = id.to_string();
            return change(&[b"CLUSTER", b"REMOVE", id.as_bytes()]);
        }
        AdminAction::Failover { to, timeout_ms } => {
            let timeout = timeout_ms.to_string();
            let mut args: Vec<Vec<u8>> = vec![b"FAILOVER".to_vec()];
            if let Some(to) = &to {
                let (host, port) = to.rsplit_once(':').context("--to must be HOST:PORT")?;
                args.extend([b"TO".to_vec(), host.as_bytes().to_vec(), port.as_bytes().to_vec()]);
            }
            args.extend([b"TIMEOUT".to_vec(), timeout.into_bytes()]);
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            client.call_ok(&args).with_context(|| format!("FAILOVER through {addr}"))?;
            match to {
                Some(to) => println!("the member at {to} leads"),
                None => println!("leadership handed to the most up-to-date follower"),
            }
        }
        AdminAction::Backup { file } => {
            let started = std::time::Instant::now();
            let mut last_report = std::time::Instant::now();
            let mut progress = |done: u64, total: u64| {
                if last_report.elapsed() >= std::time::Duration::from_secs(2) {
                    last_report = std::time::Instant::now();
                    eprintln!("durakv admin backup: {done} of {total} bytes");
                }
            };
            let report = backup(&mut client, &RealFs::new(), &file, &mut progress)
                .with_context(|| format!("backing up {addr} into {}", file.display()))?;
            println!(
                "backup {}: index {}, term {}, {} bytes, crc32c {:#010x}, {:.1} s",
                report.path.display(),
                report.index,
                report.term,
                report.len,
                report.crc,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn restore_tool(
    file: &std::path::Path,
    data_dir: &std::path::Path,
    voters: &str,
) -> anyhow::Result<ExitCode> {
    let voters = durakv::backup::parse_voters(voters)?;
    let restored = durakv::backup::restore(Arc::new(RealFs::new()), file, data_dir, &voters)
        .with_context(|| format!("restoring {} into {}", file.display(), data_dir.display()))?;
    println!(
        "restored {} into {}: index {}, term {}, voters {:?}; start the node with --data-dir {}",
        file.display(),
        data_dir.display(),
        restored.index,
        restored.term,
        voters,
        data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
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

fn wal_tool(action: WalAction) -> anyhow::Result<ExitCode> {
    match action {
        WalAction::Check { dir } => {
            let dir = dir.as_str();
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
        WalAction::Repair { dir } => {
            let dir = dir.as_str();
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
        WalAction::Dump { dir } => {
            let fs = RealFs::new();
            let dir = existing_dir(&dir)?;
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
    }
}

/// The node: configuration, logging, the runtime, signals.
mod node {
    use std::path::PathBuf;
    use std::sync::Arc;

    use anyhow::Context;
    use durakv::config::NodeConfig;
    use durakv::io::{RealFs, SharedFs};
    use durakv::runtime::{RuntimeOptions, bind, open_replica, serve};

    pub fn main(file: Option<PathBuf>, flags: Vec<(String, String)>) -> anyhow::Result<()> {
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
        let opts = RuntimeOptions::of(&cfg);
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
