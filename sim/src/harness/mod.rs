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

use crate::checkers::{
    check_convergence, check_counters, check_durability, check_file_hygiene, check_lists, state_digest,
};
use crate::client::{Reply, decode_reply, encode_command, outcome_of};
use crate::linearizability::{CheckResult, Operation, Outcome, RegisterOp};
use crate::scenario::{Action, Fault, Scenario};
use crate::{derive_seed, node_disk};

mod control;
mod faults;
mod server;
mod verdict;
mod workload;
mod world;

use control::*;
use faults::*;
use server::*;
use verdict::*;
use workload::*;
use world::*;

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
    /// (simulated ms, server, term): when each server reported being leader of a term.
    pub leaders: Vec<(u64, u64, u64)>,
    /// The nodes' own log lines (simulated ms, line), with [`RunOptions::capture_logs`].
    pub logs: Vec<(u64, String)>,
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

/// What a run can change besides the scenario and the seed.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Canaries (`durakv::failpoint::CANARIES`) to switch on in every server: historic bugs the run
    /// must catch.
    pub canaries: Vec<String>,
    /// A test hook: a task on server 1 panics this many simulated milliseconds into the run, as
    /// node code with a bug would (if server 1 is still up then).
    pub panic_at_ms: Option<u64>,
    /// Keep the nodes' own log lines (info and above) with their simulated time in
    /// [`RunResult::logs`] (for `explain`). Off for fuzzing: formatting them costs time.
    pub capture_logs: bool,
}

/// The client id of the synthetic reads of the final state that end every history.
pub const FINAL_READ_CLIENT: u64 = u64::MAX;

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
        // Under ours: a failed read of the raft log that the node contains prints nothing.
        durakv::replica::quiet_contained_panics();
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
    let w: Shared = Arc::new(Mutex::new(World {
        // Sweeps run from the start, through the faults.
        sweeping: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        ..World::default()
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let sink = world(&w).logs.clone();
        let capture = opts.capture_logs.then(|| log_capture(sink));
        let (scenario, opts, w) = (scenario.clone(), opts.clone(), w.clone());
        let go = move || {
            // Made under the subscriber below, so the spans madsim makes for its nodes are its own.
            let mut rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
            rt.set_time_limit(Duration::from_millis(scenario.duration_ms) + Duration::from_secs(600));
            rt.block_on(async move { simulate(scenario, seed, opts, w).await })
        };
        // madsim runs every task on this thread, so a thread-default subscriber sees every node.
        match capture {
            Some(subscriber) => tracing::subscriber::with_default(subscriber, go),
            None => go(),
        }
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

/// A subscriber writing the nodes' log lines (info and above), each prefixed with the simulated
/// millisecond, into `sink`.
fn log_capture(sink: Arc<Mutex<Vec<u8>>>) -> impl tracing::Subscriber + Send + Sync {
    struct SimTime;
    impl tracing_subscriber::fmt::time::FormatTime for SimTime {
        fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
            // Outside the runtime (while it is built or dropped) there is no simulated clock.
            let t = madsim::time::TimeHandle::try_current().map_or(0, |t| t.elapsed().as_millis() as u64);
            write!(w, "{t}")
        }
    }
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink(sink);
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_timer(SimTime)
        .with_ansi(false)
        .with_target(false)
        .with_level(true)
        .with_writer(move || sink.clone())
        .finish()
}

async fn simulate(scenario: Scenario, seed: u64, run_opts: RunOptions, w: Shared) -> RunResult {
    let handle = Handle::current();
    let mut servers: BTreeMap<u64, Server> = BTreeMap::new();
    for id in 1..=scenario.cluster.nodes + scenario.cluster.spare {
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
        disk.record_observations(now_ms);
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
        // A crash injected into the disk kills the process there and then: nothing it does after
        // the crash point (a message sent, a reply) may leave it. The supervisor does the rest.
        let node_id = node.id();
        disk.set_on_halt(Arc::new(move || Handle::current().kill(node_id)));
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
                crash_in_repair: None,
                log_damaged: false,
                wal_flip_unseen: None,
                wal_rot: false,
                crash_loop: None,
                up: true,
                member: id <= scenario.cluster.nodes,
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
