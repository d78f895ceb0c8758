//! Server lifecycle: configuration, one server process, kills and restarts, the supervisor, crash loops.

use super::*;

pub(super) struct Server {
    pub(super) handle: NodeHandle,
    pub(super) disk: SimFs,
    /// Down on purpose until a `restart` fault (or the end) brings it back.
    pub(super) held_down: bool,
    /// Refused to start at this simulated time (a typed error): the supervisor tries again after
    /// `RETRY_REFUSED_MS`, unless the disk was corrupted on purpose, where refusing is the expected
    /// outcome (D5) and the server stays down.
    pub(super) refused: Option<(u64, String)>,
    /// A bit flip was injected into this server's files.
    pub(super) corrupted: bool,
    /// A bit flip was injected into the body of its newest snapshot when it had started this many
    /// times: it must never start again (its cold start verifies the file, D9).
    pub(super) corrupt_snapshot_at_start: Option<u64>,
    /// A `torn_tail` fault armed an OOM-kill inside this server's next WAL append.
    pub(super) torn_tail_armed: bool,
    /// A `torn_tail` with `after_op`: once the tear fired, the start that repairs it crashes right
    /// after its nth such operation on the path (the repair's truncation, say) in this way.
    pub(super) crash_in_repair: Option<(Option<OpKind>, String, u64, CrashKind)>,
    /// A `lose_acked_tail` or WAL `bit_flip` fault damaged acknowledged records of this server's log:
    /// it must have recorded the evidence (and recovered, like every server, by the end).
    pub(super) log_damaged: bool,
    /// A WAL `bit_flip` fault flipped a bit in an acknowledged record (what and where): the next
    /// start must find it as corruption, not cut it away as a torn tail (a lone flipped bit cannot be
    /// a torn write, and valid acknowledged records may follow it).
    /// A `bit_rot` fault may have damaged acknowledged records of its raft WAL (where and whether
    /// depends on the traffic): like `log_damaged` it excuses a log behind its promises while the
    /// server recovers them, but no evidence is required (the flip may land in bytes nobody reads
    /// again, or in a tail a conflict replaces).
    pub(super) wal_rot: bool,
    /// (When, in simulated ms, and what.)
    pub(super) wal_flip_unseen: Option<(u64, String)>,
    /// A `crash_loop` fault: until this time the server dies again and again, this way, each time
    /// `next_ms` comes (drawn after each start; 0 until then).
    pub(super) crash_loop: Option<CrashLoop>,
    pub(super) up: bool,
    /// A member of the cluster as the last check found it (a spare server not added yet, or a removed
    /// one, is not: it need not catch up, and its state machine is not compared).
    pub(super) member: bool,
    /// When this server last started, and the earliest time the supervisor may start it again
    /// (a server that dies within `CRASH_LOOP_MS` of its start waits that long, as systemd's
    /// `RestartSec` would make it).
    pub(super) started_ms: u64,
    pub(super) retry_at_ms: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct CrashLoop {
    pub(super) until_ms: u64,
    pub(super) kind: CrashKind,
    pub(super) next_ms: u64,
}

/// A server that dies this soon after starting is in a crash loop: wait this long before the next
/// start.
pub(super) const CRASH_LOOP_MS: u64 = 1000;

/// How long a supervisor waits before starting a server that refused to start again.
pub(super) const RETRY_REFUSED_MS: u64 = 2000;

pub(super) fn node_config(scenario: &Scenario, id: u64) -> NodeConfig {
    // The initial voters know each other; a spare server (waiting to join) knows them and itself.
    let spare = id > scenario.cluster.nodes;
    let last = if spare { scenario.cluster.nodes + scenario.cluster.spare } else { scenario.cluster.nodes };
    let peers = (1..=last)
        .map(|i| {
            let ip = server_ip(i);
            (i, Peer { peer_addr: SocketAddr::new(ip, PEER_PORT), resp_addr: SocketAddr::new(ip, RESP_PORT) })
        })
        .collect();
    NodeConfig {
        id,
        cluster_id: 1,
        data_dir: PathBuf::from(DATA),
        spool_dir: None,
        resp_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), RESP_PORT),
        peer_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PEER_PORT),
        peers,
        join: spare,
        fsm_sync: if scenario.cluster.fsm_sync == "nosync" { FsmSync::NoSync } else { FsmSync::Sync },
        requirepass: None,
        // Peer authentication (`cluster.peer_secret`): every handshake draws fresh nonces from the
        // seeded stream and proves the secret both ways.
        peer_secret: scenario.cluster.peer_secret.then(|| b"the simulated cluster's peer secret".to_vec()),
        snapshot_every: scenario.cluster.snapshot_every,
        snapshot_log_bytes: durakv::config::DEFAULT_SNAPSHOT_LOG_BYTES,
        snapshot_catch_up_entries: scenario.cluster.catch_up_entries,
        metrics_addr: None,
        tls: None,
        max_bulk_bytes: 512 << 20,
        maxclients: durakv::config::DEFAULT_MAXCLIENTS,
        max_in_flight: durakv::config::DEFAULT_MAX_IN_FLIGHT,
        // The simulation sets its runtime options itself (`runtime_options`).
        runtime: durakv::config::RuntimeSettings::default(),
        log_json: false,
    }
}

pub(super) fn runtime_options() -> RuntimeOptions {
    RuntimeOptions { request_timeout: Duration::from_secs(3), ..RuntimeOptions::default() }
}

/// One server process: open storage (repairing what a crash left), serve until a fatal error.
pub(super) async fn run_server(disk: SimFs, cfg: NodeConfig, seed: u64, w: Shared) {
    let fs: SharedFs = Arc::new(disk.clone());
    let (clock, sweeping) = {
        let mut world = world(&w);
        (world.clocks.entry(cfg.id).or_default().clone(), Arc::clone(&world.sweeping))
    };
    let opts = RuntimeOptions { seed: Some(seed), clock, sweeping, ..runtime_options() };
    let engine_fs = fs.clone();
    let replica = match open_replica(&cfg, fs.clone(), &opts, move |dir| {
        SimEngine::open(engine_fs.clone(), dir, SimEngineOptions::default())
    }) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(node = cfg.id, error = %e, "refused to start");
            event(&w, format!("server {} refused to start: {e}", cfg.id));
            world(&w).exits.insert(cfg.id, format!("refused to start: {e}"));
            return;
        }
    };
    let listeners = match bind(&cfg).await {
        Ok(l) => l,
        Err(e) => {
            world(&w).exits.insert(cfg.id, format!("bind: {e}"));
            return;
        }
    };
    event(&w, format!("server {} up at applied index {}", cfg.id, replica.applied_index()));
    *world(&w).started.entry(cfg.id).or_insert(0) += 1;
    let (_keep, stop) = tokio::sync::watch::channel(false);
    if let Err(e) = serve(&cfg, replica, fs, listeners, opts, stop).await {
        event(&w, format!("server {} stopped: {e}", cfg.id));
        world(&w).exits.insert(cfg.id, format!("fatal: {e}"));
    }
}

pub(super) fn kill(handle: &Handle, s: &mut Server, kind: CrashKind, w: &Shared, id: u64) {
    handle.kill(s.handle.id());
    s.disk.crash(kind);
    torn_tail_preempted(s, w, id);
    s.disk.resume();
    s.up = false;
    event(w, format!("server {id} {}", if kind == CrashKind::PowerLoss { "lost power" } else { "killed" }));
}

/// The server dies of something else (another fault, a full disk) while a torn-tail kill is still
/// armed, and the restart clears it: the torn tail never had its chance. Not the node's fault.
pub(super) fn torn_tail_preempted(s: &mut Server, w: &Shared, id: u64) {
    if s.torn_tail_armed && s.disk.is_armed() {
        s.torn_tail_armed = false;
        event(w, format!("server {id}: the armed torn-tail kill was preempted by another death"));
    }
}

pub(super) fn restart(handle: &Handle, s: &mut Server, w: &Shared, id: u64) {
    torn_tail_preempted(s, w, id);
    let tore = s.torn_tail_armed && !s.disk.is_armed();
    s.disk.resume();
    // An arm lives for one process; this one is for the start after the tear, which repairs it.
    if tore && let Some((op, path, nth, kind)) = s.crash_in_repair.take() {
        s.disk.arm_crash_after(s.disk.ops_done(), op, &path, nth, kind);
        let op = op.map_or("any operation".to_string(), |o| format!("{o:?}"));
        event(
            w,
            format!("server {id}: crash armed right after {op} #{nth} on {path} of the repairing start"),
        );
    }
    handle.restart(s.handle.id());
    s.up = true;
    s.held_down = false;
    s.refused = None;
    s.started_ms = now_ms();
    world(w).restarts += 1;
    event(w, format!("server {id} restarted"));
}

/// The last file named `*<suffix>` in `dir` of a server's disk (names sort by index or sequence):
/// its newest WAL segment or snapshot.
pub(super) fn newest_file(disk: &SimFs, dir: &Path, suffix: &str) -> Option<PathBuf> {
    let names = disk.read_dir(dir).ok()?.into_iter().map(|e| e.name).filter(|n| n.ends_with(suffix));
    names.max().map(|n| dir.join(n))
}

pub(super) fn last_segment(disk: &SimFs) -> Option<PathBuf> {
    newest_file(disk, &DataLayout::new(Path::new(DATA)).raft, ".wal")
}

/// Lift every disk fault of a server: rules, capacity, failpoints and a stall nobody served.
pub(super) fn heal_disk(disk: &SimFs) {
    disk.crash_together_with(Vec::new());
    disk.clear_rules();
    disk.set_capacity(None);
    for name in durakv::failpoint::NAMES {
        disk.detach_failpoint(name);
    }
    if disk.is_armed() {
        disk.resume();
    }
}

/// Servers in a crash loop die a random 200–1500 ms after each start, until the loop ends; the
/// supervisor restarts them (with its crash-loop backoff).
pub(super) fn crash_loops(
    handle: &Handle,
    servers: &mut BTreeMap<u64, Server>,
    rng: &mut ChaCha8Rng,
    w: &Shared,
) {
    for (id, s) in servers.iter_mut() {
        let Some(mut cl) = s.crash_loop else { continue };
        if now_ms() >= cl.until_ms {
            s.crash_loop = None;
            event(w, format!("server {id}: crash loop over"));
            continue;
        }
        if !s.up {
            cl.next_ms = 0;
        } else if cl.next_ms == 0 {
            cl.next_ms = s.started_ms.max(now_ms().saturating_sub(50)) + rng.random_range(200..=1500);
        } else if now_ms() >= cl.next_ms {
            kill(handle, s, cl.kind, w, *id);
            cl.next_ms = 0;
        }
        s.crash_loop = Some(cl);
    }
}

/// Restart servers that died on their own (a fatal error, or a crash that fired inside a write or
/// at a failpoint), as a process supervisor would; servers held down by the schedule wait for their
/// `restart`; a server that refused to start is tried again after `RETRY_REFUSED_MS`, unless its disk
/// was corrupted on purpose.
pub(super) fn supervise(handle: &Handle, servers: &mut BTreeMap<u64, Server>, w: &Shared) {
    for (id, s) in servers.iter_mut() {
        if s.up && s.disk.is_halted() {
            // The crash fired inside a write, after an operation, at a failpoint, or came with
            // another server's correlated crash: the process is dead. A torn-tail kill still armed
            // then never had its chance.
            handle.kill(s.handle.id());
            torn_tail_preempted(s, w, *id);
            s.disk.resume();
            s.up = false;
            event(w, format!("server {id} died inside a write or at a failpoint"));
        }
        let exit = world(w).exits.remove(id);
        if let Some(why) = exit {
            handle.kill(s.handle.id());
            s.up = false;
            if let Some(reason) = why.strip_prefix("refused to start: ") {
                s.refused = Some((now_ms(), reason.to_string()));
                s.retry_at_ms = now_ms() + RETRY_REFUSED_MS;
            } else if now_ms() < s.started_ms + CRASH_LOOP_MS {
                s.retry_at_ms = now_ms() + CRASH_LOOP_MS;
            }
        }
        let retry = now_ms() >= s.retry_at_ms && !(s.corrupted && s.refused.is_some());
        if !s.up && !s.held_down && retry {
            restart(handle, s, w, *id);
        }
    }
}
