//! The node's metrics, in Prometheus's text format (`--metrics-addr`, off by default). One
//! [`Metrics`] per node, its own registry (several nodes share a process in tests and in the
//! simulation), every series labelled with `node`. Timings use `tokio::time`, so the simulation
//! keeps its clock; nothing here feeds back into what the node does.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Latency buckets from 50 µs to 10 s: an fsync on a fast disk to a snapshot of a large database.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A metric could not be registered (a name used twice: a bug in this module).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Every series a node exports.
pub struct Metrics {
    registry: Registry,
    /// One persist of a ready: the WAL append and its fsync, then the hard-state file's fsync.
    pub persist_seconds: Histogram,
    /// Applying one ready's committed entries to the state machine.
    pub apply_seconds: Histogram,
    /// Writing a snapshot on the worker, from the request to the recorded pointer.
    pub snapshot_write_seconds: Histogram,
    /// Reading a received snapshot file whole to verify it, off the loop.
    pub snapshot_verify_seconds: Histogram,
    /// Restoring the state machine from a received snapshot, on the applier.
    pub snapshot_restore_seconds: Histogram,
    /// Time between two ticks of the raft loop: the tick interval, unless something held the loop
    /// up (then heartbeats and elections wait too).
    pub tick_gap_seconds: Histogram,
    /// The longest gap between two ticks since the node started, in milliseconds: above the election
    /// timeout, a leader could have lost its followers for a while.
    pub tick_gap_max_ms: IntGauge,
    pub entries_persisted: IntCounter,
    pub persisted_bytes: IntCounter,
    pub entries_applied: IntCounter,
    pub snapshots_taken: IntCounter,
    pub snapshots_installed: IntCounter,
    /// Terms this node won an election in.
    pub leader_terms: IntCounter,
    /// Messages for a peer dropped because its queue was full or its connection gone (raft resends).
    pub peer_messages_dropped: IntCounter,
    pub reads_served: IntCounter,
    /// Keys the expiry sweeps this node proposed (as leader) removed.
    pub keys_expired: IntCounter,
    pub term: IntGauge,
    pub commit_index: IntGauge,
    pub applied_index: IntGauge,
    pub snapshot_index: IntGauge,
    /// 1 while this node leads.
    pub is_leader: IntGauge,
    /// Writes proposed and not yet answered.
    pub pending_writes: IntGauge,
    /// 1 while this node recovers log entries it lost from its peers (D5).
    pub recovering: IntGauge,
    /// While recovering: the index the log must reach, and how many entries it still lacks.
    pub recover_to: IntGauge,
    pub recovery_remaining: IntGauge,
    /// The raft log's last index.
    pub last_index: IntGauge,
    /// The membership as this node's raft sees it: voters (both halves of a joint configuration
    /// counted once), learners, and 1 once a change removed this node.
    pub voters: IntGauge,
    pub learners: IntGauge,
    pub removed: IntGauge,
    /// Membership changes this node took into raft (applied from the log).
    pub membership_changes: IntCounter,
    /// What the start found and repaired, by `finding`: `torn_tail_repaired`, `corrupt_record`,
    /// `lost_entries` (counted once per start; a process that refused to start exports nothing, its
    /// exit code and log line say why).
    pub start_findings: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(node: u64) -> Result<Arc<Metrics>, MetricsError> {
        let registry = Registry::new_custom(None, Some([("node".to_string(), node.to_string())].into()))?;
        let histogram = |name: &str, help: &str| -> Result<Histogram, MetricsError> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, MetricsError> {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, MetricsError> {
            let g = IntGauge::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Arc::new(Metrics {
            persist_seconds: histogram(
                "durakv_raft_persist_seconds",
                "One ready's persist: WAL append and fsync, then the hard-state file's fsync",
            )?,
            apply_seconds: histogram("durakv_fsm_apply_seconds", "Applying one ready's committed entries")?,
            snapshot_write_seconds: histogram(
                "durakv_snapshot_write_seconds",
                "Writing a snapshot off the raft loop, from its start to the recorded pointer",
            )?,
            snapshot_verify_seconds: histogram(
                "durakv_snapshot_verify_seconds",
                "Reading a received snapshot file whole to verify it, off the raft loop",
            )?,
            snapshot_restore_seconds: histogram(
                "durakv_snapshot_restore_seconds",
                "Restoring the state machine from a received snapshot, on the applier",
            )?,
            tick_gap_seconds: histogram(
                "durakv_raft_tick_gap_seconds",
                "Time between two ticks of the raft loop (the tick interval unless the loop was held up)",
            )?,
            tick_gap_max_ms: gauge(
                "durakv_raft_tick_gap_max_milliseconds",
                "The longest gap between two raft loop ticks since start",
            )?,
            entries_persisted: counter("durakv_raft_entries_persisted_total", "Raft entries made durable")?,
            persisted_bytes: counter(
                "durakv_raft_persisted_bytes_total",
                "Bytes of raft entry data made durable",
            )?,
            entries_applied: counter("durakv_fsm_entries_applied_total", "Raft entries applied")?,
            snapshots_taken: counter("durakv_snapshots_taken_total", "Snapshots this node wrote")?,
            snapshots_installed: counter(
                "durakv_snapshots_installed_total",
                "Snapshots received and installed",
            )?,
            leader_terms: counter("durakv_raft_leader_terms_total", "Terms this node won an election in")?,
            peer_messages_dropped: counter(
                "durakv_peer_messages_dropped_total",
                "Messages for a peer dropped (queue full or connection gone); raft resends",
            )?,
            reads_served: counter("durakv_reads_served_total", "Linearizable reads answered")?,
            keys_expired: counter(
                "durakv_keys_expired_total",
                "Keys removed by the expiry sweeps this node proposed as leader",
            )?,
            term: gauge("durakv_raft_term", "Current raft term")?,
            commit_index: gauge("durakv_raft_commit_index", "Raft commit index")?,
            applied_index: gauge("durakv_fsm_applied_index", "Index the state machine applied")?,
            snapshot_index: gauge("durakv_snapshot_index", "Index of the snapshot the log is based on")?,
            is_leader: gauge("durakv_raft_is_leader", "1 while this node leads")?,
            pending_writes: gauge("durakv_pending_writes", "Writes proposed and not yet answered")?,
            recovering: gauge(
                "durakv_recovering",
                "1 while this node recovers lost log entries from its peers",
            )?,
            recover_to: gauge(
                "durakv_raft_recover_to_index",
                "While recovering lost entries: the index the log must reach (0 otherwise)",
            )?,
            recovery_remaining: gauge(
                "durakv_raft_recovery_remaining_entries",
                "While recovering lost entries: how many the log still lacks (0 otherwise)",
            )?,
            last_index: gauge("durakv_raft_last_index", "The raft log's last index")?,
            voters: gauge("durakv_raft_voters", "Voters in the membership as this node sees it")?,
            learners: gauge("durakv_raft_learners", "Learners in the membership as this node sees it")?,
            removed: gauge("durakv_raft_removed", "1 once a membership change removed this node")?,
            membership_changes: counter(
                "durakv_membership_changes_total",
                "Membership changes this node took into raft from the log",
            )?,
            start_findings: {
                let v = IntCounterVec::new(
                    Opts::new(
                        "durakv_start_findings_total",
                        "What this start found and repaired: torn_tail_repaired, corrupt_record, lost_entries",
                    ),
                    &["finding"],
                )?;
                registry.register(Box::new(v.clone()))?;
                // Every finding is exported from the start, at 0 until seen.
                for f in ["torn_tail_repaired", "corrupt_record", "lost_entries"] {
                    v.with_label_values(&[f]);
                }
                v
            },
            registry,
        }))
    }

    /// Every series, in Prometheus's text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into memory fails only on a metric family the encoder cannot write: none here.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The largest request head the metrics port reads.
const MAX_REQUEST_BYTES: usize = 8192;

/// Serve `GET /metrics` on `listener` until `shutdown`: one response per connection, then close.
/// Anything else gets a 404 (another path), a 405 (another method) or a 400 (not HTTP, or a head
/// past 8 KiB), never a panic.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let metrics = Arc::clone(&metrics);
                    tokio::spawn(async move { answer(stream, &metrics).await });
                }
                Err(e) => tracing::warn!(error = %e, "metrics port: accept failed"),
            },
        }
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if head.len() > MAX_REQUEST_BYTES {
            break false;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break false,
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
        }
    };
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (status, body) = match (complete, words.next(), words.next(), words.next()) {
        (true, Some(b"GET"), Some(b"/metrics"), Some(v)) if v.starts_with(b"HTTP/1.") => {
            ("200 OK", metrics.render())
        }
        (true, Some(b"GET"), Some(_), Some(v)) if v.starts_with(b"HTTP/1.") => {
            ("404 Not Found", "only /metrics is served here\n".to_string())
        }
        (true, Some(_), Some(_), Some(v)) if v.starts_with(b"HTTP/1.") => {
            ("405 Method Not Allowed", "only GET /metrics is served here\n".to_string())
        }
        _ => ("400 Bad Request", "not an HTTP/1 request head of at most 8 KiB\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Bind the metrics port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
