//! The running node: the replica's raft loop, the peer transport and the Redis-protocol client port,
//! wired together on tokio. The tokio here is `madsim-tokio`: in a normal build it is tokio itself, and
//! under `--cfg madsim` it is madsim's simulated runtime, so the simulation runs this same code.
//!
//! ```text
//!  clients ──RESP──▶ server::conn ──Input (propose / read)──▶ ┐
//!  peers ──frames──▶ peer::serve_incoming ──PeerInput──────▶  ├─ raft_loop (owns the Replica:
//!  peer senders / snapshot streams ──Feedback──────────────▶  ┘   WAL, state machine, snapshots)
//!                                raft_loop ──messages──▶ peer::Transport (one queue per peer)
//! ```

mod expiry;
pub mod peer;
mod raft_loop;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{ConfigError, NodeConfig};
use crate::fsm::{Engine, FsmError, Kv};
use crate::io::{SharedFs, ensure_dir_durable};
use crate::limits::{DEFAULT_SNAPSHOT_CHUNK_BYTES, check_snapshot_chunk_bytes};
use crate::replica::{Replica, ReplicaConfig, ReplicaError, SnapshotSettings};
use crate::server::conn::{ClientContext, accept_clients};
use crate::server::resp::Limits;
use crate::snapshot::{DEFAULT_SPOOL_CAP_BYTES, SnapshotError, SnapshotStore};
use crate::storage::{RaftStorage, StorageLoadError};
use crate::wal::WalOptions;

pub(crate) use raft_loop::{Input, ReadFn, Refusal};

/// Accept connections until `shutdown` turns true (or its sender is dropped), serving each on a task
/// of its own. A failed accept (out of file descriptors, say) is logged and retried shortly.
pub(crate) async fn accept_until_shutdown<F, Fut>(
    listener: TcpListener,
    node: u64,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    tokio::spawn(serve(stream, addr));
                }
                Err(e) => {
                    tracing::warn!(node, error = %e, "accepting a {what} connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Write all of `bytes` and flush. A real TCP stream sends on write, but madsim's simulated stream
/// buffers until flushed, and the node's code is the same for both.
pub(crate) async fn write_flushed<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    w.write_all(bytes).await?;
    w.flush().await
}

/// Timing and sizing of the running node. The defaults suit a LAN or loopback cluster.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// One raft tick. Elections start after 10 ticks without a leader, heartbeats go every 3.
    pub tick: Duration,
    /// How long a client waits for its write to apply or its read to be confirmed.
    pub request_timeout: Duration,
    /// Snapshot stream chunk size. Default 4 MiB; at most `limits::MAX_SNAPSHOT_CHUNK_BYTES`, so a
    /// chunk always fits a peer frame ([`RuntimeOptions::validate`]).
    pub snapshot_chunk_bytes: usize,
    /// Messages queued per peer; beyond it messages are dropped and raft retransmits.
    pub peer_queue: usize,
    /// Snapshots kept on disk (the newest ones).
    pub keep_snapshots: usize,
    /// The most a snapshot being received may occupy in the spool.
    pub spool_cap_bytes: u64,
    /// Seeds the node's randomness (election timeouts, request-id prefix). `None`: a random seed.
    /// The simulation sets it so a run replays exactly.
    pub seed: Option<u64>,
    /// The clock this node stamps entries with as leader (expiry); the simulation skews it.
    pub clock: crate::clock::WallClock,
    /// Whether the leader's expiry sweep may propose (on by default). The simulation turns it off
    /// while it waits for the replicas to agree and stop, since the sweep is the one writer that
    /// acts on its own.
    pub sweeping: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            tick: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
            snapshot_chunk_bytes: DEFAULT_SNAPSHOT_CHUNK_BYTES,
            peer_queue: 4096,
            keep_snapshots: 2,
            spool_cap_bytes: DEFAULT_SPOOL_CAP_BYTES,
            seed: None,
            clock: crate::clock::WallClock::system(),
            sweeping: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }
}

impl RuntimeOptions {
    /// The options a node configuration asks for (`tick_ms`, `request_timeout_ms`, …); the seed and
    /// the clock keep their defaults.
    pub fn of(cfg: &NodeConfig) -> RuntimeOptions {
        let r = &cfg.runtime;
        RuntimeOptions {
            tick: Duration::from_millis(r.tick_ms),
            request_timeout: Duration::from_millis(r.request_timeout_ms),
            snapshot_chunk_bytes: r.snapshot_chunk_bytes,
            peer_queue: r.peer_queue,
            keep_snapshots: r.keep_snapshots,
            spool_cap_bytes: r.spool_cap_bytes,
            ..RuntimeOptions::default()
        }
    }

    /// Check the options against the limits every peer enforces ([`crate::limits`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_snapshot_chunk_bytes(self.snapshot_chunk_bytes)
    }
}

/// Why a node could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("runtime options: {0}")]
    Options(#[from] ConfigError),
    #[error("data directory {}: {source}", path.display())]
    DataDir { path: PathBuf, source: io::Error },
    #[error("raft log in {}: {source}", path.display())]
    Storage { path: PathBuf, source: StorageLoadError },
    #[error("snapshot directory {}: {source}", path.display())]
    Snapshots { path: PathBuf, source: SnapshotError },
    #[error("state machine in {}: {source}", path.display())]
    Fsm { path: PathBuf, source: FsmError },
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: io::Error },
    #[error("TLS client port: {0}")]
    Tls(String),
    #[error("backup directory {}: {source}", path.display())]
    Backups { path: PathBuf, source: Box<crate::backup::BackupError> },
    #[error("{0}")]
    Replica(#[from] ReplicaError),
}

/// Where a node keeps its files under its data directory.
#[derive(Debug, Clone)]
pub struct DataLayout {
    pub raft: PathBuf,
    pub fsm: PathBuf,
    pub snapshots: PathBuf,
    pub spool: PathBuf,
}

impl DataLayout {
    /// Everything under `data_dir`, the spool included.
    pub fn new(data_dir: &Path) -> DataLayout {
        DataLayout {
            raft: data_dir.join("raft"),
            fsm: data_dir.join("fsm"),
            snapshots: data_dir.join("snapshots"),
            spool: data_dir.join("spool"),
        }
    }

    /// The layout a configuration asks for: `cfg.spool_dir` when set (it may be another filesystem; a
    /// received snapshot is then copied into the snapshot directory), else `<data_dir>/spool`.
    pub fn of(cfg: &NodeConfig) -> DataLayout {
        let mut layout = DataLayout::new(&cfg.data_dir);
        if let Some(spool) = &cfg.spool_dir {
            layout.spool = spool.clone();
        }
        layout
    }
}

/// What the node reports about itself (INFO, logs, tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub role: &'static str,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub snapshots_installed: u64,
    /// Non-zero while the node recovers log entries it lost: the index its log must reach before it
    /// votes or campaigns again.
    pub recover_to: u64,
    /// Non-zero once a membership change removed this node: that change's index.
    pub removed_at: u64,
    /// The membership as this node's raft sees it.
    pub conf: crate::members::View,
}

/// Open the node's storage and state machine and start its replica (no network yet). A new data
/// directory is bootstrapped as a member of `cfg.peers`.
pub fn open_replica<E: Engine>(
    cfg: &NodeConfig,
    fs: SharedFs,
    opts: &RuntimeOptions,
    open_engine: impl FnOnce(&Path) -> Result<E, FsmError>,
) -> Result<Replica<E>, NodeError> {
    let layout = DataLayout::of(cfg);
    // The data directory's own name must be durable before anything inside it is relied on.
    ensure_dir_durable(&*fs, &cfg.data_dir)
        .map_err(|source| NodeError::DataDir { path: cfg.data_dir.clone(), source })?;
    let (store, removed) =
        SnapshotStore::open(fs.clone(), &layout.snapshots, &layout.spool, opts.keep_snapshots)
            .map_err(|source| NodeError::Snapshots { path: layout.snapshots.clone(), source })?;
    if !removed.is_empty() {
        tracing::info!(node = cfg.id, removed = removed.len(), "cleaned up interrupted snapshot work");
    }
    // A backup nobody finished reading, or cut short by a crash, goes (`crate::backup`).
    let backups = crate::backup::dir(&cfg.data_dir);
    match crate::backup::clear(&*fs, &backups) {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(node = cfg.id, removed = n, path = %backups.display(), "removed unfinished backups")
        }
        Err(source) => return Err(NodeError::Backups { path: backups, source: Box::new(source) }),
    }
    let storage_err = |source| NodeError::Storage { path: layout.raft.clone(), source };
    let (storage, report) =
        RaftStorage::open(fs.clone(), &layout.raft, WalOptions::default()).map_err(storage_err)?;
    let wal_finding = match (&report.damaged, &report.repaired) {
        (Some(_), _) => crate::probe::WalFinding::Corrupt,
        (None, Some(_)) => crate::probe::WalFinding::TornTailRepaired,
        (None, None) => crate::probe::WalFinding::Clean,
    };
    crate::probe::observe(&*fs, || {
        crate::probe::Observation::Recovered(crate::probe::Recovered {
            wal: wal_finding,
            ..storage.recovered()
        })
    });
    if let Some(torn) = &report.repaired {
        tracing::warn!(
            node = cfg.id,
            path = %torn.segment.display(),
            offset = torn.offset,
            bytes = torn.bytes_dropped,
            kept = %torn.broken_copy.display(),
            "repaired a torn WAL tail (a write interrupted by a crash); the cluster re-sends what it held"
        );
    }
    if storage.recover_to() > 0 {
        let durable = storage.durable_state();
        let evidence = durable.repair.map(|r| r.to_string()).unwrap_or_default();
        tracing::warn!(
            node = cfg.id,
            recover_to = durable.recover_to,
            evidence,
            "recovering lost log entries from the leader: votes only for candidates holding them, no campaigns, until the log reaches recover_to"
        );
    }
    // A node joining a running cluster starts with no membership and waits for the leader's
    // snapshot, which names the whole membership (`crate::members`).
    if !cfg.join {
        let voters: Vec<u64> = cfg.peers.keys().copied().collect();
        storage.bootstrap(&voters).map_err(storage_err)?;
    }
    storage.check_recoverable(cfg.id, &layout.raft).map_err(storage_err)?;
    let engine =
        open_engine(&layout.fsm).map_err(|source| NodeError::Fsm { path: layout.fsm.clone(), source })?;
    let kv = Kv::new(engine, cfg.fsm_sync)
        .map_err(|source| NodeError::Fsm { path: layout.fsm.clone(), source })?;
    let snapshots = SnapshotSettings {
        fs,
        store,
        every_entries: cfg.snapshot_every,
        every_bytes: cfg.snapshot_log_bytes,
        catch_up_entries: cfg.snapshot_catch_up_entries,
    };
    let seed = opts.seed.unwrap_or_else(rand::random);
    let mut replica =
        Replica::new(&ReplicaConfig { seed, ..ReplicaConfig::new(cfg.id) }, storage, kv, snapshots)?;
    replica.note_start(wal_finding);
    // As the replica left them (it takes again a change whose conf state a torn tail took).
    let (stored_book, conf) = (replica.storage().book(), replica.storage().conf_state());
    replica.set_directory(directory(cfg, stored_book, &conf));
    if let Some(index) = replica.removed_at() {
        tracing::warn!(
            node = cfg.id,
            index,
            "this node was removed from the cluster; it serves nothing (stop it, or wipe its data directory to join again under a new id)"
        );
    }
    Ok(replica)
}

/// The members' addresses this node starts with: the stored book (from the first membership change
/// or received snapshot on), else the configuration's `peers`; this node's own entry from its
/// configuration while the book has none (a node waiting to join). Only members of the conf state
/// are in it (a node the configuration lists but no change added is not one), unless this node has
/// no membership yet (it waits to join, and must reach the members its configuration names).
fn directory(
    cfg: &NodeConfig,
    stored: Option<crate::members::Book>,
    conf: &raft::eraftpb::ConfState,
) -> crate::members::Directory {
    let members = crate::members::ids_of(conf);
    let mut book = stored.unwrap_or_else(|| cfg.peers.clone());
    if !members.is_empty() {
        book.retain(|id, _| members.contains(id));
    }
    if let Some(me) = cfg.peers.get(&cfg.id) {
        book.entry(cfg.id).or_insert(*me);
    }
    crate::members::Directory::new(book)
}

/// Bind the node's two ports. Separate from [`serve`] so a caller learns of a port in use before
/// it reports the node as started.
pub async fn bind(cfg: &NodeConfig) -> Result<(TcpListener, TcpListener), NodeError> {
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { what, addr, source })
    };
    let peers = bind("raft peers (peer_addr)", cfg.peer_addr).await?;
    let clients = bind("clients (resp_addr)", cfg.resp_addr).await?;
    Ok((peers, clients))
}

/// Run the node until `shutdown` turns true (or its sender is dropped), or until a fatal error
/// (D10: a failed fsync or apply stops the node; it recovers by restarting).
pub async fn serve<E: Engine + Send + 'static>(
    cfg: &NodeConfig,
    replica: Replica<E>,
    fs: SharedFs,
    listeners: (TcpListener, TcpListener),
    opts: RuntimeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    opts.validate()?;
    let (peer_listener, client_listener) = listeners;
    let (inputs_tx, inputs_rx) = mpsc::channel(8192);
    let (peer_tx, peer_rx) = mpsc::channel(8192);
    let (feedback_tx, feedback_rx) = mpsc::channel(peer::FEEDBACK_QUEUE);
    let (status_tx, status_rx) = watch::channel(Status::default());
    let store = replica.snapshot_store().clone();
    let members = replica.directory().ok_or_else(|| {
        NodeError::Options(ConfigError::Invalid {
            field: "peers".into(),
            message: "the replica was opened without a member directory (open_replica sets one)".into(),
        })
    })?;
    let link = Arc::new(peer::LinkContext {
        id: cfg.id,
        cluster_id: cfg.cluster_id,
        members: members.clone(),
        fs: fs.clone(),
        store,
        spool_cap_bytes: opts.spool_cap_bytes,
        snapshot_chunk_bytes: opts.snapshot_chunk_bytes,
        inbound: peer_tx,
        feedback: feedback_tx,
        receiving: Arc::default(),
        secret: cfg.peer_secret.clone(),
    });
    let transport = peer::Transport::start(link.clone(), opts.peer_queue);
    let metrics = crate::metrics::Metrics::new(cfg.id).map_err(|e| {
        NodeError::Options(ConfigError::Invalid { field: "metrics".into(), message: e.to_string() })
    })?;
    if let Some(addr) = cfg.metrics_addr {
        let listener = crate::metrics::bind(addr).await.map_err(|source| NodeError::Bind {
            what: "metrics (metrics_addr)",
            addr,
            source,
        })?;
        tokio::spawn(crate::metrics::serve(listener, Arc::clone(&metrics), shutdown.clone()));
    }
    let mut replica = replica;
    replica.set_metrics(Arc::clone(&metrics));
    replica.set_clock(opts.clock.clone());
    tokio::spawn(expiry::sweep(
        replica.kv().read_view(),
        inputs_tx.clone(),
        status_rx.clone(),
        Arc::clone(&metrics),
        opts.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(peer::accept_peers(peer_listener, link, shutdown.clone()));
    let clients = Arc::new(ClientContext {
        node_id: cfg.id,
        metrics: Arc::clone(&metrics),
        cluster_id: cfg.cluster_id,
        inputs: inputs_tx,
        status: status_rx,
        requirepass: cfg.requirepass.clone().map(String::into_bytes),
        limits: Limits { max_bulk_bytes: cfg.max_bulk_bytes, ..Limits::default() },
        request_timeout: opts.request_timeout,
        peers: members,
        clients: std::sync::Mutex::new(BTreeMap::new()),
        next_client_id: std::sync::atomic::AtomicU64::new(0),
        total_connections: std::sync::atomic::AtomicU64::new(0),
        total_commands: std::sync::atomic::AtomicU64::new(0),
        started: tokio::time::Instant::now(),
        resp_port: cfg.resp_addr.port(),
        fsm_sync: match cfg.fsm_sync {
            crate::fsm::FsmSync::Sync => "sync",
            crate::fsm::FsmSync::NoSync => "nosync",
        },
        clock: opts.clock.clone(),
        maxclients: cfg.maxclients,
        in_flight: Arc::default(),
        max_in_flight: cfg.max_in_flight,
        rejected_connections: std::sync::atomic::AtomicU64::new(0),
        busy_replies: std::sync::atomic::AtomicU64::new(0),
        fs: fs.clone(),
        backups: crate::backup::dir(&cfg.data_dir),
    });
    // The TLS client port (Redis's tls-port): its files are read and checked before the node serves.
    #[cfg(not(madsim))]
    if let Some(tls) = &cfg.tls {
        let acceptor = crate::server::tls::ReloadingAcceptor::new(tls, cfg.id)
            .map_err(|e| NodeError::Tls(e.to_string()))?;
        let listener = TcpListener::bind(tls.addr).await.map_err(|source| NodeError::Bind {
            what: "TLS clients (tls_resp_addr)",
            addr: tls.addr,
            source,
        })?;
        tokio::spawn(crate::server::conn::accept_tls_clients(
            listener,
            acceptor,
            Arc::clone(&clients),
            shutdown.clone(),
        ));
        tracing::info!(node = cfg.id, tls = %tls.addr, client_certificates = tls.ca_cert_file.is_some(), "TLS client port open");
    }
    #[cfg(madsim)]
    if cfg.tls.is_some() {
        return Err(NodeError::Tls("TLS is not available in the simulation build".into()));
    }
    tokio::spawn(accept_clients(client_listener, clients, shutdown.clone()));
    tracing::info!(
        node = cfg.id,
        resp = %cfg.resp_addr,
        peer = %cfg.peer_addr,
        fsm_sync = ?cfg.fsm_sync,
        "durakv node serving"
    );
    raft_loop::run(
        replica,
        raft_loop::Channels { inputs: inputs_rx, peers: peer_rx, feedback: feedback_rx, status: status_tx },
        transport,
        metrics,
        &opts,
        shutdown,
    )
    .await
}
