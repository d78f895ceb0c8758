//! The node in a madsim world (built only with `--cfg madsim`): each server is a madsim node with its
//! own IP running the real `durakv::runtime` over its own `SimFs` (which survives its restarts) and
//! `SimEngine`; clients are madsim nodes sending Redis commands over simulated TCP. A controller
//! applies the scenario's faults on schedule, restarts what died, and at the end heals everything
//! and runs the checkers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durakv::config::{NodeConfig, Peer};
use durakv::fsm::{FsmSync, Kv, SimEngine, SimEngineOptions};
use durakv::io::{Fs, OpenOptions, SharedFs};
use durakv::limits::MAX_COMMAND_BYTES;
use durakv::runtime::{DataLayout, RuntimeOptions, bind, open_replica, serve};
use durakv::storage::RaftStorage;
use durakv::wal::WalOptions;
use durakv_faults::{CrashKind, FailAction, FaultEffect, FaultRule, OpKind, SimFs, SimFsOptions, TornWrite};
use madsim::runtime::{Handle, NodeHandle, Runtime};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::checkers::{check_convergence, check_durability, check_file_hygiene, state_digest};
use crate::client::{Reply, decode_reply, encode_command, outcome_of};
use crate::linearizability::{CheckResult, Operation, Outcome, RegisterOp};
use crate::scenario::{Action, Fault, Scenario};
use crate::{derive_seed, node_disk};

const RESP_PORT: u16 = 6379;
const PEER_PORT: u16 = 7379;
const DATA: &str = "/node";

fn server_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))
}

fn client_ip(c: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, c as u8 + 1))
}

/// What a run did, pinned by the scenario tests' snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub ops_ok: u64,
    pub ops_fail: u64,
    pub ops_unknown: u64,
    pub faults: Vec<String>,
    pub restarts: u64,
    /// What the disks report as fired, per server: failpoints (`failpoint <name> xN`) and fault
    /// paths (`fault.eio.sync xN`, `crash.power_loss xN`, …), so a test can show its faults happened.
    pub fired: Vec<String>,
    pub applied_index: u64,
    pub digest: u64,
    /// [`crate::fingerprint::history_hash`] of the whole operation history.
    pub history_hash: u64,
    /// [`crate::fingerprint::image_hash`] of each server disk's durable image at the end of the run.
    pub disk_hashes: BTreeMap<u64, u64>,
    /// The checks (`crate::checkers::CHECKS`) that ran to completion and held, in the order they did.
    pub checks_ran: Vec<&'static str>,
    /// How often each failpoint fired, summed over the servers.
    pub failpoint_fires: BTreeMap<String, u64>,
    /// How often each fault path fired (`SimFs::coverage`), summed over the servers.
    pub coverage: BTreeMap<String, u64>,
}

/// A violated invariant, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub invariant: &'static str,
    pub explanation: String,
}

/// What a run concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check ran and held.
    Pass,
    /// No invariant was violated, but a check could not decide (the linearizability search ran
    /// out of budget; the explanation says where): neither a pass nor a failure.
    Undecided(String),
    /// No invariant was violated, but no client operation succeeded either, so the history
    /// checks held vacuously: the run exercised nothing (an outage from start to heal). Neither a
    /// pass nor a failure: the liveness check after the heal still ran and held.
    Vacuous,
    /// An invariant was violated.
    Fail(Failure),
}

/// The outcome of one seed: the summary, the event trace, and the verdict.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub summary: Summary,
    pub trace: Vec<String>,
    pub verdict: Verdict,
    /// Every client operation, as the checkers saw it (for the determinism check's report).
    pub history: Vec<Operation>,
}

impl RunResult {
    /// The violated invariant, if the run failed.
    pub fn failure(&self) -> Option<&Failure> {
        match &self.verdict {
            Verdict::Fail(f) => Some(f),
            _ => None,
        }
    }

    /// Where a second run of this seed first differs from this one (its history, or which server's
    /// durable disk image), or `None` when both agree: the determinism check.
    pub fn divergence(&self, again: &RunResult) -> Option<String> {
        crate::fingerprint::divergence(
            (&self.history, &self.summary.disk_hashes),
            (&again.history, &again.summary.disk_hashes),
        )
    }
}

#[derive(Default)]
struct World {
    trace: Vec<String>,
    history: Vec<Operation>,
    /// Why each server's last run ended (a fatal error, or a refusal to start).
    exits: BTreeMap<u64, String>,
    restarts: u64,
    faults: Vec<String>,
    fired: Vec<String>,
    /// How many times each server started serving.
    started: BTreeMap<u64, u64>,
    /// Writes too large to replicate that a server did not refuse.
    violations: Vec<String>,
    /// See the fields of [`Summary`] with these names.
    checks_ran: Vec<&'static str>,
    disk_hashes: BTreeMap<u64, u64>,
    failpoint_fires: BTreeMap<String, u64>,
    coverage: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<World>>;

fn world(w: &Shared) -> std::sync::MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// Simulated milliseconds since the run began.
fn now_ms() -> u64 {
    madsim::time::TimeHandle::current().elapsed().as_millis() as u64
}

/// Check `check` (listed in `crate::checkers::CHECKS`) ran to completion and held: one line after
/// each checker, so the fuzz coverage table shows which checks ever ran.
fn ran(w: &Shared, check: &'static str) {
    world(w).ran(check);
}

impl World {
    fn ran(&mut self, check: &'static str) {
        debug_assert!(crate::checkers::CHECKS.contains(&check), "check {check} is listed in CHECKS");
        self.checks_ran.push(check);
    }
}

/// What the disks hold and saw at the end, for the summary: each durable image's hash, and the
/// failpoints and fault paths that fired, summed over the servers.
fn record_disks(disks: &BTreeMap<u64, SimFs>, w: &Shared) {
    let mut world = world(w);
    for (id, disk) in disks {
        world.disk_hashes.insert(*id, crate::fingerprint::image_hash(&disk.durable_image()));
        for (name, n) in disk.failpoint_fires() {
            *world.failpoint_fires.entry(name).or_insert(0) += n;
        }
        for (path, n) in disk.coverage() {
            *world.coverage.entry(path.to_string()).or_insert(0) += n;
        }
    }
}

fn event(w: &Shared, text: String) {
    let t = now_ms();
    world(w).trace.push(format!("{t:>8} {text}"));
}

/// What a run can change besides the scenario and the seed.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Canaries (`durakv::failpoint::CANARIES`) to switch on in every server: historic bugs the run
    /// must catch.
    pub canaries: Vec<String>,
    /// A test hook: a task on server 1 panics this many simulated milliseconds into the run, as
    /// node code with a bug would (if server 1 is still up then).
    pub panic_at_ms: Option<u64>,
}

/// The invariant a run violates when something in it panicked.
pub const PANIC: &str = "no_panic";

thread_local! {
    /// The last panic on this thread, as "panicked at <file:line:col>: <message>".
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic whose payload is not text".to_string()
    }
}

/// Chain a panic hook (once per process) that remembers where each panic happened, which the
/// payload [`std::panic::catch_unwind`] returns does not say. The previous hook still runs.
fn remember_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info.location().map_or(String::new(), |l| format!(" at {l}"));
            let text = format!("panicked{at}: {}", panic_text(info.payload()));
            let _ = LAST_PANIC.try_with(|p| *p.borrow_mut() = Some(text));
            previous(info);
        }));
    });
}

/// Run one scenario with one seed, deterministically.
pub fn run(scenario: &Scenario, seed: u64) -> RunResult {
    run_with(scenario, seed, &RunOptions::default())
}

/// [`run`], with options.
pub fn run_with(scenario: &Scenario, seed: u64, opts: &RunOptions) -> RunResult {
    // `RUST_LOG=…` shows the nodes' own logs (simulated time is not in them; the trace has it).
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    // A panic anywhere in the world (node code, the harness, madsim's time limit) ends this seed
    // as a failure, with what the trace had recorded so far; the caller goes on to the next seed.
    // madsim re-raises a task's panic out of `block_on`, and a new runtime starts clean.
    remember_panics();
    let _ = LAST_PANIC.try_with(|p| p.borrow_mut().take());
    let w: Shared = Arc::new(Mutex::new(World::default()));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.set_time_limit(Duration::from_millis(scenario.duration_ms) + Duration::from_secs(600));
        let (scenario, opts, w) = (scenario.clone(), opts.clone(), w.clone());
        rt.block_on(async move { simulate(scenario, seed, opts, w).await })
    }));
    outcome.unwrap_or_else(|payload| {
        let what = LAST_PANIC
            .try_with(|p| p.borrow_mut().take())
            .ok()
            .flatten()
            .unwrap_or_else(|| format!("panicked: {}", panic_text(&*payload)));
        let failure = Failure { invariant: PANIC, explanation: format!("the simulation {what}") };
        finish(scenario, seed, &w, Some(failure), 0, 0)
    })
}

struct Server {
    handle: NodeHandle,
    disk: SimFs,
    /// Down on purpose until a `restart` fault (or the end) brings it back.
    held_down: bool,
    /// Refused to start at this simulated time (a typed error): the supervisor tries again after
    /// `RETRY_REFUSED_MS`, unless the disk was corrupted on purpose, where refusing is the expected
    /// outcome (D5) and the server stays down.
    refused: Option<(u64, String)>,
    /// A bit flip was injected into this server's files.
    corrupted: bool,
    /// A bit flip was injected into the body of its newest snapshot when it had started this many
    /// times: it must never start again (its cold start verifies the file, D9).
    corrupt_snapshot_at_start: Option<u64>,
    /// A `torn_tail` fault armed an OOM-kill inside this server's next WAL append.
    torn_tail_armed: bool,
    /// A `lose_acked_tail` or WAL `bit_flip` fault damaged acknowledged records of this server's log:
    /// it must have recorded the evidence (and recovered, like every server, by the end).
    log_damaged: bool,
    up: bool,
    /// When this server last started, and the earliest time the supervisor may start it again
    /// (a server that dies within `CRASH_LOOP_MS` of its start waits that long, as systemd's
    /// `RestartSec` would make it).
    started_ms: u64,
    retry_at_ms: u64,
}

/// A server that dies this soon after starting is in a crash loop: wait this long before the next
/// start.
const CRASH_LOOP_MS: u64 = 1000;

/// How long a supervisor waits before starting a server that refused to start again.
const RETRY_REFUSED_MS: u64 = 2000;

fn node_config(scenario: &Scenario, id: u64) -> NodeConfig {
    let peers = (1..=scenario.cluster.nodes)
        .map(|i| {
            let ip = server_ip(i);
            (i, Peer { peer_addr: SocketAddr::new(ip, PEER_PORT), resp_addr: SocketAddr::new(ip, RESP_PORT) })
        })
        .collect();
    NodeConfig {
        id,
        cluster_id: 1,
        data_dir: PathBuf::from(DATA),
        resp_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), RESP_PORT),
        peer_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PEER_PORT),
        peers,
        fsm_sync: if scenario.cluster.fsm_sync == "nosync" { FsmSync::NoSync } else { FsmSync::Sync },
        requirepass: None,
        snapshot_every: scenario.cluster.snapshot_every,
        max_bulk_bytes: 512 << 20,
        log_json: false,
    }
}

fn runtime_options() -> RuntimeOptions {
    RuntimeOptions { request_timeout: Duration::from_secs(3), ..RuntimeOptions::default() }
}

async fn simulate(scenario: Scenario, seed: u64, run_opts: RunOptions, w: Shared) -> RunResult {
    let handle = Handle::current();
    let mut servers: BTreeMap<u64, Server> = BTreeMap::new();
    for id in 1..=scenario.cluster.nodes {
        let opts = SimFsOptions {
            mounts: scenario.mounts.iter().map(|m| PathBuf::from(&m.path)).collect(),
            ..SimFsOptions::default()
        };
        let disk = match node_disk(seed, id, opts) {
            Ok(d) => d,
            Err(e) => return setup_failure(&scenario, seed, &w, format!("disk options: {e}")),
        };
        for canary in &run_opts.canaries {
            disk.enable_canary(canary);
        }
        let cfg = node_config(&scenario, id);
        let (disk2, w2) = (disk.clone(), w.clone());
        // Each start of this server gets its own seed, derived from the run's.
        let starts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let node = handle
            .create_node()
            .name(format!("server-{id}"))
            .ip(server_ip(id))
            .init(move || {
                let (disk, cfg, w) = (disk2.clone(), cfg.clone(), w2.clone());
                let start = starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let node_seed = derive_seed(seed, &format!("node/{id}/start/{start}"));
                async move { run_server(disk, cfg, node_seed, w).await }
            })
            .build();
        servers.insert(
            id,
            Server {
                handle: node,
                disk,
                held_down: false,
                refused: None,
                corrupted: false,
                corrupt_snapshot_at_start: None,
                torn_tail_armed: false,
                log_damaged: false,
                up: true,
                started_ms: 0,
                retry_at_ms: 0,
            },
        );
    }
    if let (Some(at), Some(server)) = (run_opts.panic_at_ms, servers.get(&1)) {
        server.handle.spawn(async move {
            madsim::time::sleep(Duration::from_millis(at)).await;
            panic!("injected by RunOptions::panic_at_ms at {at} ms");
        });
    }
    let end_ms = scenario.duration_ms;
    let mut clients = Vec::new();
    for c in 0..scenario.workload.clients {
        let (sc, w2) = (scenario.clone(), w.clone());
        let node = handle.create_node().name(format!("client-{c}")).ip(client_ip(c)).build();
        clients.push(node.spawn(async move { client_loop(sc, seed, c, end_ms, w2).await }));
    }
    // The controller runs on a node of its own so it can reach the servers over the network.
    let controller =
        handle.create_node().name("controller").ip(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1))).build();
    let disks: BTreeMap<u64, SimFs> = servers.iter().map(|(id, s)| (*id, s.disk.clone())).collect();
    let (sc, w2) = (scenario.clone(), w.clone());
    let outcome = controller
        .spawn(async move {
            let mut servers = servers;
            control(&sc, seed, &mut servers, &w2).await
        })
        .await;
    for c in clients {
        let _ = c.await;
    }
    record_disks(&disks, &w);
    let (failure, applied_index, digest) = match outcome {
        Ok(Ok((applied, digest))) => (None, applied, digest),
        Ok(Err(f)) => (Some(f), 0, 0),
        Err(e) => {
            (Some(Failure { invariant: "harness", explanation: format!("controller task: {e}") }), 0, 0)
        }
    };
    finish(&scenario, seed, &w, failure, applied_index, digest)
}

fn setup_failure(scenario: &Scenario, seed: u64, w: &Shared, text: String) -> RunResult {
    finish(scenario, seed, w, Some(Failure { invariant: "setup", explanation: text }), 0, 0)
}

fn finish(
    scenario: &Scenario,
    seed: u64,
    w: &Shared,
    failure: Option<Failure>,
    applied_index: u64,
    digest: u64,
) -> RunResult {
    let mut world = world(w);
    let count = |o: Outcome| world.history.iter().filter(|op| op.outcome == o).count() as u64;
    let mut summary = Summary {
        scenario: scenario.name.clone(),
        seed,
        ops_ok: count(Outcome::Ok),
        ops_fail: count(Outcome::Fail),
        ops_unknown: count(Outcome::Unknown),
        faults: world.faults.clone(),
        restarts: world.restarts,
        fired: world.fired.clone(),
        applied_index,
        digest,
        history_hash: crate::fingerprint::history_hash(&world.history),
        disk_hashes: world.disk_hashes.clone(),
        checks_ran: Vec::new(),
        failpoint_fires: world.failpoint_fires.clone(),
        coverage: world.coverage.clone(),
    };
    let mut verdict = failure.map_or(Verdict::Pass, Verdict::Fail);
    if verdict == Verdict::Pass && scenario.invariants.linearizability {
        match crate::linearizability::check(&world.history) {
            CheckResult::Linearizable => world.ran("linearizability"),
            CheckResult::Violation(v) => {
                let culprit = v.culprit.as_ref().map_or(String::new(), |o| {
                    format!(
                        "; the first operation that cannot be explained is {o} by client {} on server {}, {}–{} ms",
                        o.client, o.server, o.call, o.ret
                    )
                });
                verdict = Verdict::Fail(Failure {
                    invariant: "linearizability",
                    explanation: format!(
                        "{}: no order of their {} operations explains what the clients saw{culprit}",
                        show_keys(&v.keys),
                        v.operations.len()
                    ),
                });
            }
            CheckResult::Undecided(u) => {
                verdict = Verdict::Undecided(format!(
                    "linearizability: the search over the {} operations of {} gave up after {}",
                    u.operations,
                    show_keys(&u.keys),
                    u.limit
                ));
            }
        }
    }
    // A write over the limit that was not refused outranks the history checks: the node broke its
    // size contract (#11).
    if !matches!(verdict, Verdict::Fail(_))
        && let Some(v) = world.violations.first()
    {
        verdict = Verdict::Fail(Failure {
            invariant: "limits",
            explanation: format!("{v} ({} such writes in all)", world.violations.len()),
        });
    } else if world.violations.is_empty() {
        world.ran("limits");
    }
    summary.checks_ran = world.checks_ran.clone();
    if summary.ops_ok == 0 && verdict == Verdict::Pass {
        verdict = Verdict::Vacuous;
    }
    RunResult {
        summary,
        trace: std::mem::take(&mut world.trace),
        verdict,
        history: std::mem::take(&mut world.history),
    }
}

/// `key "k1"`, or `keys "k1", "k2"` when multi-key operations joined them.
fn show_keys(keys: &[Vec<u8>]) -> String {
    let names: Vec<String> = keys.iter().map(|k| format!("{:?}", String::from_utf8_lossy(k))).collect();
    format!("key{} {}", if names.len() == 1 { "" } else { "s" }, names.join(", "))
}

/// One server process: open storage (repairing what a crash left), serve until a fatal error.
async fn run_server(disk: SimFs, cfg: NodeConfig, seed: u64, w: Shared) {
    let fs: SharedFs = Arc::new(disk.clone());
    let opts = RuntimeOptions { seed: Some(seed), ..runtime_options() };
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

/// Send one command to a server and wait for its reply.
async fn call(addr: SocketAddr, args: &[&[u8]], timeout: Duration) -> Result<Reply, CallError> {
    let connect = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await;
    let mut stream = match connect {
        Ok(Ok(s)) => s,
        _ => return Err(CallError::NotSent),
    };
    // madsim's stream sends on flush.
    if stream.write_all(&encode_command(args)).await.is_err() || stream.flush().await.is_err() {
        return Err(CallError::NotSent);
    }
    let read = async {
        let mut buf = Vec::new();
        loop {
            if let Ok(Some((reply, _))) = decode_reply(&buf) {
                return Some(reply);
            }
            buf.reserve(4096);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Some(reply)) => Ok(reply),
        _ => Err(CallError::NoReply),
    }
}

enum CallError {
    /// The request never left: the operation certainly did not happen.
    NotSent,
    /// Sent, but no reply: it may or may not have happened.
    NoReply,
}

/// A client: operations from the scenario's mix on its key space, at its rate, until the end.
async fn client_loop(scenario: Scenario, seed: u64, c: u64, end_ms: u64, w: Shared) {
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &format!("client/{c}")));
    // Value sizes come from a stream of their own, so the choice of operations, servers and keys
    // does not depend on them.
    let mut sizes = ChaCha8Rng::seed_from_u64(derive_seed(seed, &format!("client/{c}/sizes")));
    let wl = &scenario.workload;
    let per_client = (wl.rate_per_sec / wl.clients.max(1)).max(1);
    let gap = Duration::from_micros(1_000_000 / per_client);
    let mix = [
        ("set", wl.mix.set),
        ("get", wl.mix.get),
        ("del", wl.mix.del),
        ("incr", wl.mix.incr),
        ("mset", wl.mix.mset),
        ("append", wl.mix.append),
    ];
    let total: u32 = mix.iter().map(|(_, n)| n).sum();
    let timeout = Duration::from_millis(wl.timeout_ms);
    let mut seq = 0u64;
    while now_ms() < end_ms {
        tokio::time::sleep(gap).await;
        seq += 1;
        let mut pick = rng.random_range(0..total.max(1));
        let kind = mix
            .iter()
            .find(|(_, n)| {
                if pick < *n {
                    true
                } else {
                    pick -= n;
                    false
                }
            })
            .map_or("get", |(k, _)| *k);
        let server = rng.random_range(1..=scenario.cluster.nodes);
        let addr = SocketAddr::new(server_ip(server), RESP_PORT);
        let key = format!("k{}", rng.random_range(0..wl.keys.max(1))).into_bytes();
        // Values are unique integers, so INCR applies to any key and every write is identifiable.
        // Some are padded with leading zeros to a large size (still integers); rarely a SET's is just
        // over the largest write a node takes, which the node must refuse.
        let size = match kind {
            "set" | "mset" => draw_size(&mut sizes, wl.large_values_per_mille, kind == "set"),
            _ => ValueSize::Small,
        };
        let n = c * 1_000_000_000 + seq;
        let value = match size {
            ValueSize::Small => n.to_string().into_bytes(),
            ValueSize::Large(len) => zero_padded(n, len),
            ValueSize::TooLarge => zero_padded(n, MAX_COMMAND_BYTES + 1),
        };
        let call_t = now_ms();
        let (effects, reply): (Vec<(Vec<u8>, RegisterOp)>, _) = match kind {
            "set" => (
                vec![(key.clone(), RegisterOp::Write(Some(value.clone())))],
                call(addr, &[b"SET", &key, &value], timeout).await,
            ),
            "del" => {
                (vec![(key.clone(), RegisterOp::Write(None))], call(addr, &[b"DEL", &key], timeout).await)
            }
            "incr" => (
                vec![(key.clone(), RegisterOp::Incr { delta: 1, result: None })],
                call(addr, &[b"INCR", &key], timeout).await,
            ),
            "mset" => {
                let key2 = format!("k{}", rng.random_range(0..wl.keys.max(1))).into_bytes();
                if key2 == key {
                    continue;
                }
                (
                    vec![
                        (key.clone(), RegisterOp::Write(Some(value.clone()))),
                        (key2.clone(), RegisterOp::Write(Some(value.clone()))),
                    ],
                    call(addr, &[b"MSET", &key, &value, &key2, &value], timeout).await,
                )
            }
            "append" => (
                vec![(key.clone(), RegisterOp::Append { suffix: value.clone(), len: None })],
                call(addr, &[b"APPEND", &key, &value], timeout).await,
            ),
            _ => (vec![(key.clone(), RegisterOp::Read(None))], call(addr, &[b"GET", &key], timeout).await),
        };
        let ret = now_ms();
        let outcome = match &reply {
            Ok(r) => outcome_of(r),
            Err(CallError::NotSent) => Outcome::Fail,
            Err(CallError::NoReply) => Outcome::Unknown,
        };
        if size == ValueSize::TooLarge {
            match &reply {
                Ok(Reply::Error(e)) if e.starts_with("ERR write too large to replicate") => event(
                    &w,
                    format!("client {c}: a {}-byte SET to server {server} refused as too large", value.len()),
                ),
                // Anything else (an OK, a TIMEOUT, another error) means the write reached raft, or the
                // node answered for another reason than its size.
                Ok(r) => world(&w).violations.push(format!(
                    "client {c}: a SET of a {}-byte value to server {server} at {call_t} ms was answered {r:?}, not refused as too large to replicate",
                    value.len()
                )),
                // Not sent, or no reply (the server went down): nothing learned about its limits.
                Err(_) => {}
            }
        }
        let effects: Vec<(Vec<u8>, RegisterOp)> = effects
            .into_iter()
            .map(|(key, op)| {
                let op = match (op, &reply) {
                    (RegisterOp::Read(_), Ok(Reply::Bulk(v))) => RegisterOp::Read(v.clone()),
                    (RegisterOp::Incr { delta, .. }, Ok(Reply::Integer(n))) => {
                        RegisterOp::Incr { delta, result: Some(*n) }
                    }
                    (RegisterOp::Append { suffix, .. }, Ok(Reply::Integer(n))) => {
                        RegisterOp::Append { suffix, len: Some(*n) }
                    }
                    (op, _) => op,
                };
                (key, op)
            })
            .collect();
        // A read with no answer says nothing.
        if effects.iter().all(|(_, op)| matches!(op, RegisterOp::Read(_))) && outcome != Outcome::Ok {
            continue;
        }
        world(&w).history.push(Operation { client: c, server, effects, call: call_t, ret, outcome });
    }
}

/// The size of a write's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueSize {
    /// The bare integer.
    Small,
    /// Padded to this many bytes.
    Large(usize),
    /// Just over the largest write a node takes.
    TooLarge,
}

/// `n` in decimal, with leading zeros up to `len` bytes: still an integer to INCR and to the checker.
fn zero_padded(n: u64, len: usize) -> Vec<u8> {
    let digits = n.to_string();
    let mut out = vec![b'0'; len.saturating_sub(digits.len())];
    out.extend_from_slice(digits.as_bytes());
    out
}

/// Draw a value size: `per_mille` of them large, and one in 64 of those too large when allowed.
fn draw_size(rng: &mut ChaCha8Rng, per_mille: u32, too_large_allowed: bool) -> ValueSize {
    if rng.random_range(0..1000) >= per_mille {
        return ValueSize::Small;
    }
    if too_large_allowed && rng.random_range(0..64) == 0 {
        return ValueSize::TooLarge;
    }
    ValueSize::Large(rng.random_range(1 << 10..=256 << 10))
}

/// Which servers a fault's target names, resolved now.
async fn resolve(target: &str, servers: &BTreeMap<u64, Server>, rng: &mut ChaCha8Rng) -> Vec<u64> {
    let up: Vec<u64> = servers.iter().filter(|(_, s)| s.up).map(|(id, _)| *id).collect();
    let leader = find_leader(&up).await;
    match target {
        "all" => servers.keys().copied().collect(),
        "leader" => leader.into_iter().collect(),
        "follower" => {
            let f: Vec<u64> = up.iter().copied().filter(|id| Some(*id) != leader).collect();
            f.get(rng.random_range(0..f.len().max(1))).copied().into_iter().collect()
        }
        "any" => up.get(rng.random_range(0..up.len().max(1))).copied().into_iter().collect(),
        other => other
            .strip_prefix("node:")
            .and_then(|n| n.parse().ok())
            .filter(|id| servers.contains_key(id))
            .into_iter()
            .collect(),
    }
}

async fn info(id: u64) -> Option<BTreeMap<String, String>> {
    match call(SocketAddr::new(server_ip(id), RESP_PORT), &[b"INFO"], Duration::from_secs(1)).await {
        Ok(Reply::Bulk(Some(text))) => Some(
            String::from_utf8_lossy(&text)
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
        ),
        _ => None,
    }
}

async fn find_leader(up: &[u64]) -> Option<u64> {
    for &id in up {
        if info(id).await.is_some_and(|i| i.get("role").map(String::as_str) == Some("leader")) {
            return Some(id);
        }
    }
    None
}

fn kill(handle: &Handle, s: &mut Server, kind: CrashKind, w: &Shared, id: u64) {
    handle.kill(s.handle.id());
    s.disk.crash(kind);
    torn_tail_preempted(s, w, id);
    s.disk.resume();
    s.up = false;
    event(w, format!("server {id} {}", if kind == CrashKind::PowerLoss { "lost power" } else { "killed" }));
}

/// The server dies of something else (another fault, a full disk) while a torn-tail kill is still
/// armed, and the restart clears it: the torn tail never had its chance. Not the node's fault.
fn torn_tail_preempted(s: &mut Server, w: &Shared, id: u64) {
    if s.torn_tail_armed && s.disk.is_armed() {
        s.torn_tail_armed = false;
        event(w, format!("server {id}: the armed torn-tail kill was preempted by another death"));
    }
}

fn restart(handle: &Handle, s: &mut Server, w: &Shared, id: u64) {
    torn_tail_preempted(s, w, id);
    s.disk.resume();
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
fn newest_file(disk: &SimFs, dir: &Path, suffix: &str) -> Option<PathBuf> {
    let names = disk.read_dir(dir).ok()?.into_iter().map(|e| e.name).filter(|n| n.ends_with(suffix));
    names.max().map(|n| dir.join(n))
}

fn last_segment(disk: &SimFs) -> Option<PathBuf> {
    newest_file(disk, &DataLayout::new(Path::new(DATA)).raft, ".wal")
}

/// Run `f` after `after` of simulated time (a fault healing itself).
fn later(after: Duration, f: impl FnOnce() + Send + 'static) {
    madsim::task::spawn(async move {
        madsim::time::sleep(after).await;
        f();
    });
}

/// The servers' madsim node ids, for network faults.
fn node_ids(servers: &BTreeMap<u64, Server>) -> BTreeMap<u64, madsim::task::NodeId> {
    servers.iter().map(|(id, s)| (*id, s.handle.id())).collect()
}

async fn apply_fault(
    f: &Fault,
    servers: &mut BTreeMap<u64, Server>,
    rng: &mut ChaCha8Rng,
    w: &Shared,
) -> Result<(), Failure> {
    let handle = Handle::current();
    let targets = resolve(&f.target, servers, rng).await;
    let ids = node_ids(servers);
    let bad_scenario = |explanation: String| Failure { invariant: "scenario", explanation };
    for id in targets {
        let Some(s) = servers.get_mut(&id) else { continue };
        world(w).faults.push(format!("{:?}@{}:{}", f.action, f.at_ms, id));
        let heal_after = f.for_ms.map(Duration::from_millis);
        match f.action {
            Action::Kill | Action::PowerLoss => {
                let kind =
                    if f.action == Action::Kill { CrashKind::ProcessKill } else { CrashKind::PowerLoss };
                if !s.up {
                    continue;
                }
                match &f.mid_write {
                    // Land inside the next write to a matching file; the node dies of it.
                    Some(pattern) => {
                        s.disk.arm_crash_on_write(s.disk.ops_done(), pattern, kind, TornWrite::Random);
                        event(w, format!("server {id}: crash armed inside the next write to {pattern}"));
                    }
                    None => kill(&handle, s, kind, w, id),
                }
                s.held_down = true;
            }
            Action::Restart => {
                if !s.up {
                    restart(&handle, s, w, id);
                }
            }
            Action::TornTail => {
                // A torn tail is a write interrupted by a crash: OOM-kill the server inside its next
                // raft WAL append (never-fsynced, never-acknowledged bytes); the supervisor restarts
                // it, and start-up repairs the tail.
                if s.up {
                    s.disk.arm_crash_on_write(
                        s.disk.ops_done(),
                        "*/raft/*.wal",
                        CrashKind::ProcessKill,
                        TornWrite::Partial,
                    );
                    s.torn_tail_armed = true;
                    event(w, format!("server {id}: OOM-kill armed inside the next raft WAL append"));
                }
            }
            Action::LoseAckedTail => {
                // Not a torn write: records the server fsynced and acknowledged vanish from the end
                // of its log while it is down (a zeroed sector, a lost write-back). It must recover
                // them from its peers before it votes again.
                if s.up {
                    kill(&handle, s, CrashKind::ProcessKill, w, id);
                }
                if let Some(seg) = last_segment(&s.disk) {
                    let len = s.disk.metadata(&seg).map(|m| m.len).unwrap_or(0);
                    let cut = len.saturating_sub(rng.random_range(1..=16u64));
                    if let Ok(mut file) = s.disk.open(&seg, OpenOptions::read_write()) {
                        let _ = file.set_len(cut).and_then(|_| file.sync());
                    }
                    s.log_damaged = true;
                    event(w, format!("server {id}: acknowledged WAL tail cut to {cut} of {len} bytes"));
                }
                restart(&handle, s, w, id);
            }
            Action::BitFlip => {
                if s.up {
                    kill(&handle, s, CrashKind::ProcessKill, w, id);
                }
                // A flipped bit in an acknowledged WAL record: the node cuts its log there and
                // recovers the rest from its peers (D5). In a snapshot body: it must refuse to start
                // with a typed error (D8), and the cluster go on without it.
                let file = match f.at.as_deref() {
                    Some("snapshot") => {
                        newest_file(&s.disk, &DataLayout::new(Path::new(DATA)).snapshots, ".snap")
                    }
                    _ => last_segment(&s.disk),
                };
                match file {
                    Some(file) => {
                        let len = s.disk.metadata(&file).map(|m| m.len).unwrap_or(0);
                        let offset = len / 2;
                        let _ = s.disk.flip_bit(&file, offset, rng.random_range(0..8));
                        if f.at.as_deref() == Some("snapshot") {
                            s.corrupted = true;
                            let started = world(w).started.get(&id).copied().unwrap_or(0);
                            s.corrupt_snapshot_at_start = Some(started);
                        } else {
                            // A damaged acknowledged WAL record: the server recovers it from peers.
                            s.log_damaged = true;
                        }
                        event(w, format!("server {id}: bit flipped at {offset} of {}", file.display()));
                    }
                    None => event(w, format!("server {id}: no file to flip a bit in")),
                }
                restart(&handle, s, w, id);
            }
            Action::Partition => {
                // Cut this server off from the other servers, both ways; clients still reach it (so
                // they meet a minority that must not answer as if it were the cluster).
                let net = madsim::net::NetSim::current();
                let me = ids[&id];
                let others: Vec<_> = ids.iter().filter(|(o, _)| **o != id).map(|(_, n)| *n).collect();
                for &o in &others {
                    net.clog_link(me, o);
                    net.clog_link(o, me);
                }
                event(
                    w,
                    format!(
                        "server {id} partitioned from the other servers for {} ms",
                        f.for_ms.unwrap_or(0)
                    ),
                );
                let w2 = w.clone();
                later(heal_after.unwrap_or_default(), move || {
                    let net = madsim::net::NetSim::current();
                    for &o in &others {
                        net.unclog_link(me, o);
                        net.unclog_link(o, me);
                    }
                    event(&w2, format!("server {id} partition healed"));
                });
            }
            Action::Clog => {
                // Nothing in or out, clients included: a hung host or a dead switch port.
                madsim::net::NetSim::current().clog_node(ids[&id]);
                event(w, format!("server {id} clogged for {} ms", f.for_ms.unwrap_or(0)));
                let (node, w2) = (ids[&id], w.clone());
                later(heal_after.unwrap_or_default(), move || {
                    madsim::net::NetSim::current().unclog_node(node);
                    event(&w2, format!("server {id} unclogged"));
                });
            }
            Action::Eio => {
                let op = match f.op.as_deref() {
                    Some("write") => OpKind::Write,
                    Some("read") => OpKind::Read,
                    _ => OpKind::Sync,
                };
                let pattern = f.at.clone().unwrap_or_else(|| "*".into());
                let mut rule = FaultRule::always(FaultEffect::Eio, &[op])
                    .on_path(&pattern)
                    .map_err(|e| bad_scenario(format!("eio at {pattern:?}: {e}")))?;
                if let Some(n) = f.times {
                    rule = rule.max_fires(n);
                }
                s.disk.add_rule(rule).map_err(|e| bad_scenario(format!("eio: {e}")))?;
                event(w, format!("server {id}: EIO on {op:?} of {pattern}"));
                if let Some(after) = heal_after {
                    let (disk, w2) = (s.disk.clone(), w.clone());
                    later(after, move || {
                        disk.clear_rules();
                        event(&w2, format!("server {id}: EIO healed"));
                    });
                }
            }
            Action::Enospc => {
                let capacity = s.disk.used_bytes() + f.free_bytes.unwrap_or(0);
                s.disk.set_capacity(Some(capacity));
                event(w, format!("server {id}: disk full at {capacity} bytes"));
                if let Some(after) = heal_after {
                    let (disk, w2) = (s.disk.clone(), w.clone());
                    later(after, move || {
                        disk.set_capacity(None);
                        event(&w2, format!("server {id}: disk space freed"));
                    });
                }
            }
            Action::ApplyFailure | Action::Failpoint => {
                let (name, effect) = match f.action {
                    Action::ApplyFailure => ("fsm.apply", "error"),
                    _ => (f.at.as_deref().unwrap_or(""), f.effect.as_deref().unwrap_or("")),
                };
                let stall = Duration::from_millis(f.stall_ms.unwrap_or(0));
                let (action, default_times) = match effect {
                    "error" => (FailAction::Error, Some(1)),
                    "kill" => (FailAction::Kill(CrashKind::ProcessKill), Some(1)),
                    "power_loss" => (FailAction::Kill(CrashKind::PowerLoss), Some(1)),
                    "pause" => (FailAction::Stall(stall), Some(1)),
                    "delay" => (FailAction::Stall(stall), None),
                    other => return Err(bad_scenario(format!("failpoint effect {other:?}"))),
                };
                let name = name.to_string();
                s.disk.attach_failpoint(&name, action, f.times.or(default_times));
                event(w, format!("server {id}: failpoint {name} attached: {effect}"));
                if let Some(after) = heal_after {
                    let (disk, w2) = (s.disk.clone(), w.clone());
                    later(after, move || {
                        disk.detach_failpoint(&name);
                        event(&w2, format!("server {id}: failpoint {name} detached"));
                    });
                }
            }
        }
    }
    Ok(())
}

/// A server whose snapshot body was corrupted on purpose must refuse to start (D9 verifies the file
/// even when it skips the restore): starting means corrupt state may be served or sent to peers.
fn check_corruption_noticed(servers: &BTreeMap<u64, Server>, w: &Shared) -> Result<(), Failure> {
    for (id, s) in servers {
        let started = world(w).started.get(id).copied().unwrap_or(0);
        if s.corrupt_snapshot_at_start.is_some_and(|before| started > before) {
            return Err(Failure {
                invariant: "corruption_detection",
                explanation: format!(
                    "server {id} started from a snapshot file whose body no longer matches its CRC, without noticing"
                ),
            });
        }
    }
    Ok(())
}

/// Lift every disk fault of a server: rules, capacity, failpoints and a stall nobody served.
fn heal_disk(disk: &SimFs) {
    disk.clear_rules();
    disk.set_capacity(None);
    for name in durakv::failpoint::NAMES {
        disk.detach_failpoint(name);
    }
    if disk.is_armed() {
        disk.resume();
    }
}

/// Apply the schedule, supervise, then heal and check. Returns the final applied index and digest.
async fn control(
    scenario: &Scenario,
    seed: u64,
    servers: &mut BTreeMap<u64, Server>,
    w: &Shared,
) -> Result<(u64, u64), Failure> {
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, "faults"));
    let mut faults = scenario.faults.clone();
    faults.sort_by_key(|f| f.at_ms);
    let mut next = 0;
    let handle = Handle::current();
    while now_ms() < scenario.duration_ms {
        while next < faults.len() && faults[next].at_ms <= now_ms() {
            apply_fault(&faults[next], servers, &mut rng, w).await?;
            next += 1;
        }
        supervise(&handle, servers, w);
        check_corruption_noticed(servers, w)?;
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
    // Heal: the network, every disk fault; everything that is down starts (a server whose disk
    // was corrupted on purpose is expected to refuse, and stays down).
    event(w, "faults over: healing".into());
    let net = madsim::net::NetSim::current();
    let ids = node_ids(servers);
    for (&a, &na) in &ids {
        net.unclog_node(na);
        for (&b, &nb) in &ids {
            if a != b {
                net.unclog_link(na, nb);
            }
        }
    }
    for (id, s) in servers.iter_mut() {
        torn_tail_preempted(s, w, *id);
        heal_disk(&s.disk);
        let refuses_as_expected = s.corrupted && s.refused.is_some();
        if !s.up && !refuses_as_expected {
            restart(&handle, s, w, *id);
        }
    }
    // Liveness: a write commits within the bound.
    let deadline = now_ms() + scenario.invariants.liveness_ms;
    loop {
        supervise(&handle, servers, w);
        check_corruption_noticed(servers, w)?;
        let up: Vec<u64> = servers.iter().filter(|(_, s)| s.up).map(|(id, _)| *id).collect();
        if let Some(l) = find_leader(&up).await {
            let addr = SocketAddr::new(server_ip(l), RESP_PORT);
            if let Ok(Reply::Simple(_)) =
                call(addr, &[b"SET", b"liveness", b"1"], Duration::from_secs(2)).await
            {
                break;
            }
        }
        if now_ms() > deadline {
            return Err(Failure {
                invariant: "liveness",
                explanation: format!(
                    "no write committed within {} ms after the faults ended",
                    scenario.invariants.liveness_ms
                ),
            });
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    ran(w, "liveness");
    // Every server restarts without an operator and applies up to the leader's commit index; only
    // a server whose disk was corrupted on purpose may stay down (refusing is correct there).
    let expected: Vec<u64> =
        servers.iter().filter(|(_, s)| !(s.corrupted && s.refused.is_some())).map(|(id, _)| *id).collect();
    // Quiet means: every expected server answers, all have committed and applied the same index,
    // and nothing moved since the previous poll (an election's no-op entry can still commit after
    // the workload stops; the servers are stopped only once they agree and are still).
    let mut target = 0;
    let mut previous = BTreeMap::new();
    let deadline = now_ms() + scenario.invariants.liveness_ms;
    loop {
        supervise(&handle, servers, w);
        check_corruption_noticed(servers, w)?;
        let mut applied = BTreeMap::new();
        let mut commits = Vec::new();
        for &id in &expected {
            if servers[&id].up
                && let Some(i) = info(id).await
            {
                let commit = i.get("commit_index").and_then(|v| v.parse().ok()).unwrap_or(0);
                target = target.max(commit);
                commits.push(commit);
                applied.insert(id, i.get("applied_index").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0));
            }
        }
        let agreed = applied.len() == expected.len()
            && applied.values().all(|&a| a == target)
            && commits.iter().all(|&c| c == target);
        if agreed && applied == previous {
            break;
        }
        previous = applied.clone();
        if now_ms() > deadline {
            let down: Vec<String> = expected
                .iter()
                .filter(|id| !applied.contains_key(id))
                .map(|id| match &servers[id].refused {
                    Some((_, why)) => format!("server {id} refuses to start: {why}"),
                    None => format!("server {id} does not answer"),
                })
                .collect();
            return Err(Failure {
                invariant: "liveness",
                explanation: format!(
                    "within {} ms after the faults ended, servers did not all catch up to commit index {target}: applied {applied:?}{}{}",
                    scenario.invariants.liveness_ms,
                    if down.is_empty() { "" } else { "; " },
                    down.join("; ")
                ),
            });
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    ran(w, "catch_up");
    ran(w, "corruption_detection");
    // Stop every server (a process kill keeps the page cache) and read its state machine directly.
    let mut replicas = Vec::new();
    let mut final_state = BTreeMap::new();
    let mut fired = Vec::new();
    for (id, s) in servers.iter() {
        for (name, n) in s.disk.failpoint_fires() {
            fired.push(format!("server {id}: failpoint {name} x{n}"));
        }
        for (path, n) in s.disk.coverage() {
            fired.push(format!("server {id}: {path} x{n}"));
        }
    }
    world(w).fired = fired;
    check_recoveries(servers, w)?;
    ran(w, "recovery");
    let layout = DataLayout::new(Path::new(DATA));
    for (id, s) in servers.iter_mut() {
        if !s.up {
            continue;
        }
        kill(&handle, s, CrashKind::ProcessKill, w, *id);
        let fs: SharedFs = Arc::new(s.disk.clone());
        if scenario.invariants.file_hygiene {
            let (storage, _) =
                RaftStorage::open(fs.clone(), &layout.raft, WalOptions::default()).map_err(|e| Failure {
                    invariant: "file_hygiene",
                    explanation: format!("server {id}: raft log: {e}"),
                })?;
            let pointer = storage.snapshot_pointer();
            let token = (pointer.metadata.index > 0).then_some(pointer.token.as_slice());
            check_file_hygiene(*id, &*fs, &layout, token, runtime_options().keep_snapshots)
                .map_err(|e| Failure { invariant: "file_hygiene", explanation: e.to_string() })?;
        }
        let engine = SimEngine::open(fs, &DataLayout::new(Path::new(DATA)).fsm, SimEngineOptions::default())
            .map_err(|e| Failure { invariant: "convergence", explanation: format!("server {id}: {e}") })?;
        let kv = Kv::new(engine, FsmSync::Sync)
            .map_err(|e| Failure { invariant: "convergence", explanation: format!("server {id}: {e}") })?;
        let pairs = durakv::fsm::Engine::scan(kv.engine(), b"", None, usize::MAX)
            .map_err(|e| Failure { invariant: "convergence", explanation: format!("server {id}: {e}") })?;
        let digest = state_digest(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        replicas.push((*id, kv.applied_index(), digest));
        if final_state.is_empty() {
            final_state = pairs.into_iter().collect();
        }
    }
    if scenario.invariants.file_hygiene {
        ran(w, "file_hygiene");
    }
    if scenario.invariants.convergence {
        check_convergence(&replicas).map_err(|d| Failure {
            invariant: "convergence",
            explanation: format!("replicas (id, applied index, digest) differ: {:?}", d.0),
        })?;
        ran(w, "convergence");
    }
    if scenario.invariants.durability {
        let history = world(w).history.clone();
        let read_on = replicas.first().map_or(0, |r| r.0);
        check_durability(&history, &final_state).map_err(|e| Failure {
            invariant: "durability",
            explanation: format!("{e} (the final value as server {read_on}'s state machine holds it)"),
        })?;
        ran(w, "durability");
    }
    let (applied, digest) = replicas.first().map_or((0, 0), |r| (r.1, r.2));
    Ok((applied, digest))
}

/// Every fault that damages a log proved it had its effect, and every recovery from peers ended:
/// a server that lost acknowledged records recorded the evidence in its hard-state file before the
/// repair; a torn-tail kill tore (or cleanly stopped) a WAL append; and no server is still waiting
/// for entries it lost once the cluster is quiet (a leader lacking them would be a lost write).
fn check_recoveries(servers: &BTreeMap<u64, Server>, w: &Shared) -> Result<(), Failure> {
    let layout = DataLayout::new(Path::new(DATA));
    for (id, s) in servers {
        if s.corrupted && s.refused.is_some() {
            continue;
        }
        let path = layout.raft.join(durakv::hardstate::FILE_NAME);
        let state = durakv::io::read_file(&s.disk, &path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| durakv::hardstate::decode_file(&bytes))
            .map(|(_, st)| st)
            .map_err(|e| Failure {
                invariant: "recovery",
                explanation: format!("server {id}: hard-state file {}: {e}", path.display()),
            })?;
        if s.log_damaged && state.repair.is_none() {
            return Err(Failure {
                invariant: "fault_effect",
                explanation: format!(
                    "server {id}'s acknowledged WAL records were damaged but it recorded no repair evidence"
                ),
            });
        }
        // Still armed at the end: no multi-sector append came before the run ended (no chance, not
        // a failure). Fired without a partial tear: the fault did not do what it names.
        let fired = s.torn_tail_armed && !s.disk.is_armed();
        if fired && !s.disk.coverage().contains_key("crash.torn_write.partial") {
            return Err(Failure {
                invariant: "fault_effect",
                explanation: format!("server {id}: the torn-tail kill never tore a WAL append"),
            });
        }
        if state.recover_to > 0 {
            return Err(Failure {
                invariant: "recovery",
                explanation: format!(
                    "server {id} is still recovering entries up to index {} it lost ({}) after the cluster went quiet",
                    state.recover_to,
                    state.repair.map(|r| r.to_string()).unwrap_or_default()
                ),
            });
        }
        if let Some(r) = state.repair {
            event(w, format!("server {id}: recovered from peers after: {r}"));
        }
    }
    Ok(())
}

/// Restart servers that died on their own (a fatal error, or a crash that fired inside a write or
/// at a failpoint), as a process supervisor would; servers held down by the schedule wait for their
/// `restart`; a server that refused to start is tried again after `RETRY_REFUSED_MS`, unless its disk
/// was corrupted on purpose.
fn supervise(handle: &Handle, servers: &mut BTreeMap<u64, Server>, w: &Shared) {
    for (id, s) in servers.iter_mut() {
        if s.up && s.disk.is_halted() {
            // The crash fired inside a write or at a failpoint: the process is dead.
            handle.kill(s.handle.id());
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
