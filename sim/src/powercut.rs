//! `durakv-powercut`: power cuts of a real three-node cluster, judged by the simulation's own checkers.
//!
//! Real processes, no simulation: three `durakv` nodes on loopback, each with its data directory and
//! its snapshot spool on two mounts of `durakv-disk` (a FUSE file system whose files live in the
//! simulated disk: page cache versus durable media), so a received snapshot moves across devices for
//! real (rename fails with `EXDEV`, the node copies). A few client threads run a recorded load (SET,
//! GET, DEL on register keys, INCR on counter keys, APPEND of unique tokens on list keys) against any
//! live node while a seeded schedule cuts the power of one, two or all three nodes at once: every disk
//! of the chosen nodes halts in a power loss first (unsynced data meets its fate: kept, dropped or
//! torn), then their processes are killed, the disks come back with only their durable state, and the
//! nodes restart on it. At the end the load stops, the replicas must converge, the final value of
//! every key is read through the leader, and the history (final reads included) must pass
//! linearizability, durability (D1), the list-append and the counter checks.
//!
//! `--no-fuse` runs the same load on plain directories with SIGKILL for cuts (a process kill: the
//! page cache survives). It is a test of the harness and of process kills, never a substitute for the
//! power cuts: the FUSE run does not fall back to it. When FUSE cannot be used here the run fails, or
//! with `DURAKV_ALLOW_FUSE_SKIP=1` prints one `SKIPPED:` line naming what is missing and exits 0.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::checkers::{check_counters, check_durability, check_lists};
use crate::client::{Reply, decode_reply, encode_command, outcome_of};
use crate::linearizability::{CheckResult, Operation, Outcome, RegisterOp};

pub const USAGE: &str = "usage: durakv-powercut [OPTIONS]
  --seed N                 root seed of the cut schedule, the clients and the disks (default: random,
                           printed)
  --cuts N                 node power cuts in all, split evenly over the modes (default 60); a cut of
                           k nodes at one instant counts k
  --fsm-sync MODE          sync, nosync or both (default both: one run each, one after the other)
  --durakv-bin PATH        the node binary (default: durakv beside this binary)
  --disk-bin PATH          the disk daemon (default: durakv-disk beside this binary)
  --no-fuse                plain directories and SIGKILL instead of power cuts (harness check only)
  --work-dir DIR           where the run's directory goes (default: the temp dir); kept on failure
  --clients N              client threads (default 4)
  --snapshot-every N       the nodes' --snapshot-every (default 200)
  --sector-odds K,D,G      passed to every disk daemon (fates of unsynced sectors at a power loss)
  --keep                   keep the run's directory even when every check passes
  --failures DIR           copy a failed run's logs (and a hung node's disks) to DIR/durakv-powercut-SEED-MODE
environment: DURAKV_ALLOW_FUSE_SKIP=1 turns 'FUSE is not usable here' into a loud skip (exit 0);
             DURAKV_POWERCUT_HOLD_SECS=N keeps a failed run's processes up N s before cleanup (to debug)
exit codes: 0 every check passed (or an allowed skip); 1 a violation, a liveness or harness failure;
            2 bad usage; 3 a check could not decide (linearizability search budget)";

/// The cluster size.
pub const NODES: usize = 3;

/// How long the cluster may take to elect a leader and acknowledge writes again after a cut.
const RECOVER: Duration = Duration::from_secs(40);
/// How long a restarted node may take to answer at all (its recovery: torn-tail repair, WAL replay,
/// snapshot checks); shorter than [`RECOVER`] so a node that hangs is reported as such.
const START: Duration = Duration::from_secs(30);
/// How long the replicas may take to reach one applied index once the load stopped.
const CONVERGE: Duration = Duration::from_secs(60);
/// Acknowledged writes that show the cluster serves again after a cut.
const RECOVERED_WRITES: u64 = 5;
/// A client waits this long for a reply: longer than the node's own request timeout (5 s), so a
/// write the node cannot confirm is answered `TIMEOUT` rather than cut off.
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(8);
/// The client id of the final reads.
pub const FINAL_READ_CLIENT: u64 = u64::MAX;

/// One `fsm_sync` mode of the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Sync,
    NoSync,
}

impl SyncMode {
    pub fn flag(self) -> &'static str {
        match self {
            SyncMode::Sync => "sync",
            SyncMode::NoSync => "nosync",
        }
    }
}

/// The command line, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub seed: u64,
    /// Node power cuts in all modes together.
    pub cuts: u32,
    pub modes: Vec<SyncMode>,
    pub durakv_bin: PathBuf,
    pub disk_bin: PathBuf,
    pub no_fuse: bool,
    pub work_dir: PathBuf,
    pub clients: u64,
    pub snapshot_every: u64,
    pub sector_odds: Option<String>,
    pub keep: bool,
    /// Where a failed run's logs are copied (the run itself works under `work_dir`).
    pub failures: Option<PathBuf>,
}

/// Parse the arguments (without the program name). `beside` is the directory of this binary (the
/// default place of the node and disk binaries); `random_seed` is used when no `--seed` is given.
pub fn parse_args(args: &[String], beside: &Path, random_seed: u64) -> Result<Options, String> {
    let mut o = Options {
        seed: random_seed,
        cuts: 60,
        modes: vec![SyncMode::Sync, SyncMode::NoSync],
        durakv_bin: beside.join("durakv"),
        disk_bin: beside.join("durakv-disk"),
        no_fuse: false,
        work_dir: std::env::temp_dir(),
        clients: 4,
        snapshot_every: 200,
        sector_odds: None,
        keep: false,
        failures: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: {v:?} is not a number"));
        match flag.as_str() {
            "--seed" => o.seed = number(value()?)?,
            "--cuts" => o.cuts = u32::try_from(number(value()?)?).map_err(|_| format!("{flag}: too many"))?,
            "--fsm-sync" => {
                o.modes = match value()?.as_str() {
                    "sync" => vec![SyncMode::Sync],
                    "nosync" => vec![SyncMode::NoSync],
                    "both" => vec![SyncMode::Sync, SyncMode::NoSync],
                    other => return Err(format!("--fsm-sync: {other:?} is not sync, nosync or both")),
                }
            }
            "--durakv-bin" => o.durakv_bin = PathBuf::from(value()?),
            "--disk-bin" => o.disk_bin = PathBuf::from(value()?),
            "--no-fuse" => o.no_fuse = true,
            "--work-dir" => o.work_dir = PathBuf::from(value()?),
            "--clients" => o.clients = number(value()?)?,
            "--snapshot-every" => o.snapshot_every = number(value()?)?,
            "--sector-odds" => o.sector_odds = Some(value()?),
            "--keep" => o.keep = true,
            "--failures" => o.failures = Some(PathBuf::from(value()?)),
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.cuts < o.modes.len() as u32 {
        return Err(format!("--cuts {} is fewer than one cut per mode", o.cuts));
    }
    if o.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    if o.snapshot_every == 0 {
        return Err("--snapshot-every must be at least 1".into());
    }
    Ok(o)
}

/// The node cuts each mode gets: `total` split evenly, the first modes taking the remainder.
pub fn cuts_per_mode(total: u32, modes: usize) -> Vec<u32> {
    let modes = modes.max(1) as u32;
    (0..modes).map(|i| total / modes + u32::from(i < total % modes)).collect()
}

/// One power cut of the schedule. Who is cut is resolved when it happens ([`choose_nodes`]), from
/// the leader at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutEvent {
    /// How many nodes lose power at one instant (1 to [`NODES`]).
    pub nodes: usize,
    /// Whether the leader is among them (when not all are cut).
    pub with_leader: bool,
    /// Picks among the candidates.
    pub pick: u64,
    /// Cut without first waiting for the cluster to serve again after the previous cut: the crash
    /// lands in recovery (torn-tail repair, replay, snapshot install, election).
    pub early: bool,
    /// Milliseconds of load before the cut (after recovery, or after the restart when `early`).
    pub load_ms: u64,
    /// Milliseconds the cut nodes stay down: a lone node down while the others write falls behind
    /// the leader's compacted log and has to install a snapshot.
    pub down_ms: u64,
}

/// The cut schedule of one run: events until exactly `node_cuts` node cuts are scheduled.
pub fn plan(seed: u64, label: &str, node_cuts: u32, cluster: usize) -> Vec<CutEvent> {
    let mut rng = crate::rng_for(seed, label);
    let mut left = node_cuts as usize;
    let mut events = Vec::new();
    while left > 0 {
        let roll = rng.random_range(0..10u32);
        let wanted = if roll < 4 {
            1
        } else if roll < 7 {
            2.min(cluster)
        } else {
            cluster
        };
        let nodes = wanted.min(left).max(1);
        let early = !events.is_empty() && rng.random_bool(0.2);
        let load_ms = if early { rng.random_range(20..600) } else { rng.random_range(100..1500) };
        let down_ms = if nodes == 1 && rng.random_bool(0.4) { rng.random_range(300..3000) } else { 0 };
        events.push(CutEvent {
            nodes,
            with_leader: rng.random_bool(0.5),
            pick: rng.random(),
            early,
            load_ms,
            down_ms,
        });
        left -= nodes;
    }
    events
}

/// The nodes `event` cuts, in id order, given the leader now (if one is known) and the members.
pub fn choose_nodes(event: &CutEvent, leader: Option<u64>, ids: &[u64]) -> Vec<u64> {
    let n = event.nodes.min(ids.len());
    let rotate = |pool: &[u64], take: usize| -> Vec<u64> {
        if pool.is_empty() {
            return Vec::new();
        }
        let start = (event.pick % pool.len() as u64) as usize;
        pool.iter().cycle().skip(start).take(take.min(pool.len())).copied().collect()
    };
    let mut chosen = match leader.filter(|l| ids.contains(l)) {
        _ if n == ids.len() => ids.to_vec(),
        None => rotate(ids, n),
        Some(l) => {
            let followers: Vec<u64> = ids.iter().copied().filter(|&i| i != l).collect();
            let mut c = if event.with_leader { vec![l] } else { Vec::new() };
            c.extend(rotate(&followers, n - c.len()));
            if c.len() < n {
                // More nodes asked than followers there are: the leader too.
                c.push(l);
            }
            c
        }
    };
    chosen.sort_unstable();
    chosen
}

// ---------------------------------------------------------------------------------------------
// The workload: keys, commands and what a reply means for the history.

/// Register keys (SET, GET, DEL).
const REGISTERS: u32 = 6;
/// Counter keys (INCR and GET only).
const COUNTERS: u32 = 2;
/// List keys (APPEND of unique tokens and GET only).
const LISTS: u32 = 2;

fn key_kind(key: &[u8], prefix: u8) -> bool {
    key.len() > 1 && key[0] == prefix && key[1..].iter().all(u8::is_ascii_digit)
}

/// A key only INCR and GET touch.
pub fn is_counter(key: &[u8]) -> bool {
    key_kind(key, b'c')
}

/// A key only APPEND (of unique tokens) and GET touch.
pub fn is_list(key: &[u8]) -> bool {
    key_kind(key, b'l')
}

/// Seconds each generation of keys is written. Every generation has keys of its own, so each key's
/// history stays short however long the run: a list's reads (each the whole value, kept in the history)
/// stay small, and the linearizability search over a key (whose undecided writes and increments stay
/// open to the end) stays within its budget. Older keys are still read now and then, and all of them
/// at the end: what was acknowledged before later power cuts must still be there.
pub const GENERATION_SECS: u64 = 10;

/// The keys named `prefix` of the generations in `generations`, `n` to a generation.
fn keys_of(prefix: char, n: u32, generations: std::ops::Range<u64>) -> impl Iterator<Item = Vec<u8>> {
    let n = u64::from(n);
    (generations.start * n..generations.end * n).map(move |i| format!("{prefix}{i}").into_bytes())
}

fn keys_in(generations: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    keys_of('r', REGISTERS, generations.clone())
        .chain(keys_of('c', COUNTERS, generations.clone()))
        .chain(keys_of('l', LISTS, generations))
        .collect()
}

/// The keys the load writes in generation `generation`.
pub fn key_space(generation: u64) -> Vec<Vec<u8>> {
    keys_in(generation..generation + 1)
}

/// Every key the load may have touched up to generation `last` (the final reads).
pub fn final_keys(last: u64) -> Vec<Vec<u8>> {
    keys_in(0..last + 1)
}

/// One client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Get,
    Set(Vec<u8>),
    Del,
    Incr,
    Append(Vec<u8>),
}

/// The next command of client `client`'s `seq`-th operation, in key generation `generation`: the key
/// and the command. Writes go to the generation's keys; a read, to one of them or (one in ten) to a
/// key of an earlier generation.
pub fn pick_command(rng: &mut impl Rng, client: u64, seq: u64, generation: u64) -> (Vec<u8>, Cmd) {
    fn one(rng: &mut impl Rng, prefix: char, generation: u64, n: u32) -> Vec<u8> {
        format!("{prefix}{}", generation * u64::from(n) + u64::from(rng.random_range(0..n))).into_bytes()
    }
    match rng.random_range(0..100u32) {
        0..30 => {
            let mut keys = if generation > 0 && rng.random_bool(0.1) {
                final_keys(generation - 1)
            } else {
                key_space(generation)
            };
            let i = rng.random_range(0..keys.len());
            (keys.swap_remove(i), Cmd::Get)
        }
        30..55 => (one(rng, 'r', generation, REGISTERS), Cmd::Set(format!("v{client}.{seq}").into_bytes())),
        55..62 => (one(rng, 'r', generation, REGISTERS), Cmd::Del),
        62..80 => (one(rng, 'c', generation, COUNTERS), Cmd::Incr),
        _ => (one(rng, 'l', generation, LISTS), Cmd::Append(format!("{client}.{seq};").into_bytes())),
    }
}

impl Cmd {
    fn args<'a>(&'a self, key: &'a [u8]) -> Vec<&'a [u8]> {
        match self {
            Cmd::Get => vec![b"GET", key],
            Cmd::Set(v) => vec![b"SET", key, v],
            Cmd::Del => vec![b"DEL", key],
            Cmd::Incr => vec![b"INCR", key],
            Cmd::Append(t) => vec![b"APPEND", key, t],
        }
    }

    fn is_write(&self) -> bool {
        !matches!(self, Cmd::Get)
    }

    /// What the command did, when its reply is unknown (or said it failed).
    fn blind_effect(&self) -> RegisterOp {
        match self {
            Cmd::Get => RegisterOp::Read(None),
            Cmd::Set(v) => RegisterOp::Write(Some(v.clone())),
            Cmd::Del => RegisterOp::Write(None),
            Cmd::Incr => RegisterOp::Incr { delta: 1, result: None },
            Cmd::Append(t) => RegisterOp::Append { suffix: t.clone(), len: None },
        }
    }
}

/// The outcome and effect a reply gives `cmd`, or a description of a reply of the wrong shape (the
/// node broke the protocol: a finding, reported as such).
pub fn effect_of(cmd: &Cmd, reply: &Reply) -> Result<(Outcome, RegisterOp), String> {
    let outcome = outcome_of(reply);
    if outcome != Outcome::Ok {
        return Ok((outcome, cmd.blind_effect()));
    }
    let effect = match (cmd, reply) {
        (Cmd::Get, Reply::Bulk(v)) => RegisterOp::Read(v.clone()),
        (Cmd::Get, Reply::Null) => RegisterOp::Read(None),
        (Cmd::Set(v), Reply::Simple(s)) if s == "OK" => RegisterOp::Write(Some(v.clone())),
        (Cmd::Del, Reply::Integer(n)) if (0..=1).contains(n) => RegisterOp::Write(None),
        (Cmd::Incr, Reply::Integer(n)) => RegisterOp::Incr { delta: 1, result: Some(*n) },
        (Cmd::Append(t), Reply::Integer(n)) => RegisterOp::Append { suffix: t.clone(), len: Some(*n) },
        (cmd, reply) => return Err(format!("{cmd:?} was answered {reply:?}")),
    };
    Ok((Outcome::Ok, effect))
}

// ---------------------------------------------------------------------------------------------
// A blocking RESP connection.

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Why a call has no reply.
enum CallError {
    /// Nothing reached the node.
    NotSent,
    /// The request may have reached the node: its fate is unknown.
    Lost,
}

impl Conn {
    fn open(port: u16, read_timeout: Duration) -> io::Result<Conn> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.set_write_timeout(Some(read_timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::new() })
    }

    fn call(&mut self, args: &[&[u8]]) -> Result<Reply, CallError> {
        self.stream.write_all(&encode_command(args)).map_err(|_| CallError::Lost)?;
        let mut chunk = [0u8; 16 << 10];
        loop {
            match decode_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(_) => return Err(CallError::Lost),
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(CallError::Lost),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(CallError::Lost),
            }
        }
    }
}

/// One call on a fresh connection (INFO, final reads).
fn call_once(port: u16, args: &[&[u8]], timeout: Duration) -> Result<Reply, CallError> {
    Conn::open(port, timeout).map_err(|_| CallError::NotSent)?.call(args)
}

/// `INFO raft` of the node at `port`, as fields.
fn info(port: u16) -> Option<BTreeMap<String, String>> {
    match call_once(port, &[b"INFO", b"raft"], Duration::from_secs(2)).ok()? {
        Reply::Bulk(Some(text)) => Some(crate::client::info_fields(&text)),
        _ => None,
    }
}

/// The ports to give nodes: outside the kernel's ephemeral range (`ephemeral`, inclusive), so no
/// outgoing connection (the clients reconnect all the time) can hold a node's port while the node is
/// down and make its restart fail with "address in use".
pub fn port_window(ephemeral: (u16, u16)) -> (u16, u16) {
    let (lo, hi) = ephemeral;
    if lo >= 12_000 {
        (10_000, lo - 1)
    } else if hi <= 63_000 {
        (hi + 1, 65_535)
    } else {
        (1_024, 65_535)
    }
}

/// `n` ports that can be bound now, from [`port_window`], starting at a place of this process's.
fn node_ports(n: usize) -> io::Result<Vec<u16>> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok().and_then(|t| {
        let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    });
    let (lo, hi) = port_window(range.unwrap_or((32_768, 60_999)));
    let span = u64::from(hi - lo) + 1;
    let start = random_seed() % span;
    let mut ports = Vec::new();
    for i in 0..span {
        let port = lo + ((start + i) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
            if ports.len() == n {
                return Ok(ports);
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, format!("fewer than {n} free ports in {lo}..={hi}")))
}

// ---------------------------------------------------------------------------------------------
// The recorded load.

struct LoadShared {
    start: Instant,
    stop: AtomicBool,
    acked_writes: AtomicU64,
    history: Mutex<Vec<Operation>>,
    anomalies: Mutex<Vec<String>>,
}

impl LoadShared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// Client threads writing to the cluster until stopped.
struct Load {
    shared: Arc<LoadShared>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(start: Instant, ports: Vec<(u64, u16)>, clients: u64, seed: u64, label: &str) -> Load {
        let shared = Arc::new(LoadShared {
            start,
            stop: AtomicBool::new(false),
            acked_writes: AtomicU64::new(0),
            history: Mutex::new(Vec::new()),
            anomalies: Mutex::new(Vec::new()),
        });
        let threads = (1..=clients)
            .map(|c| {
                let (shared, ports) = (shared.clone(), ports.clone());
                let rng = crate::rng_for(seed, &format!("{label}/client/{c}"));
                thread::spawn(move || client_loop(c, &shared, &ports, rng))
            })
            .collect();
        Load { shared, threads }
    }

    fn acked_writes(&self) -> u64 {
        self.shared.acked_writes.load(Ordering::Relaxed)
    }

    /// Stop the clients, wait for their last operations, and return the history and the replies of
    /// the wrong shape.
    fn stop(mut self) -> (Vec<Operation>, Vec<String>) {
        self.halt();
        let history = std::mem::take(&mut *self.shared.history.lock().unwrap_or_else(|p| p.into_inner()));
        let anomalies = std::mem::take(&mut *self.shared.anomalies.lock().unwrap_or_else(|p| p.into_inner()));
        (history, anomalies)
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
    }
}

fn client_loop(c: u64, shared: &LoadShared, ports: &[(u64, u16)], mut rng: rand_chacha::ChaCha8Rng) {
    let mut conn: Option<(u64, Conn)> = None;
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let (server, mut open) = match conn.take() {
            Some(c) => c,
            None => {
                let (id, port) = ports[rng.random_range(0..ports.len())];
                match Conn::open(port, CLIENT_READ_TIMEOUT) {
                    Ok(open) => (id, open),
                    Err(_) => {
                        // Refused: nothing was sent, nothing to record. Try another node.
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
            }
        };
        seq += 1;
        let generation = shared.start.elapsed().as_secs() / GENERATION_SECS;
        let (key, cmd) = pick_command(&mut rng, c, seq, generation);
        let call = shared.now_us();
        let result = open.call(&cmd.args(&key));
        let ret = shared.now_us();
        let (outcome, effect, keep) = match result {
            Ok(reply) => match effect_of(&cmd, &reply) {
                Ok((outcome, effect)) => (outcome, effect, outcome == Outcome::Ok),
                Err(anomaly) => {
                    shared
                        .anomalies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("client {c} on node {server} at {call}–{ret} µs: {anomaly}"));
                    (Outcome::Unknown, cmd.blind_effect(), false)
                }
            },
            Err(CallError::NotSent) => continue,
            Err(CallError::Lost) => (Outcome::Unknown, cmd.blind_effect(), false),
        };
        if outcome == Outcome::Ok && cmd.is_write() {
            shared.acked_writes.fetch_add(1, Ordering::Relaxed);
        }
        shared.history.lock().unwrap_or_else(|p| p.into_inner()).push(Operation {
            client: c,
            server,
            effects: vec![(key, effect)],
            call,
            ret,
            outcome,
        });
        if keep {
            conn = Some((server, open));
        } else {
            // An error reply (no leader yet, a node stopping) or a lost connection: back off a little
            // and go to another node.
            thread::sleep(Duration::from_millis(30));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: the disk daemons and the nodes.

/// Set by SIGINT or SIGTERM: the run stops and cleans up (a second signal exits at once).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> Result<(), Failure> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(Failure::Harness("interrupted (SIGINT or SIGTERM): stopping the processes".into()))
    } else {
        Ok(())
    }
}

/// Why a run could not go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// FUSE cannot be used on this machine: what is missing and how to get it.
    FuseUnavailable(String),
    /// The harness could not set up or drive the run (a binary missing, a daemon that died).
    Harness(String),
    /// The cluster did not recover: a node exited, no leader, no progress, no convergence.
    Liveness(String),
    /// A checker found a violation.
    Violation { check: &'static str, detail: String },
    /// A check could not decide (its search budget ran out): never a pass.
    Undecided(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::FuseUnavailable(m) => write!(f, "FUSE is not usable: {m}"),
            Failure::Harness(m) => write!(f, "harness: {m}"),
            Failure::Liveness(m) => write!(f, "liveness: {m}"),
            Failure::Violation { check, detail } => write!(f, "VIOLATION of {check}: {detail}"),
            Failure::Undecided(m) => write!(f, "undecided: {m}"),
        }
    }
}

/// If a disk daemon's output says FUSE itself is unusable here, what is missing and how to get it.
pub fn fuse_unavailable(output: &str) -> Option<String> {
    let lower = output.to_lowercase();
    let has = |s: &str| lower.contains(s);
    if has("/dev/fuse") && (has("no such file") || has("not found") || has("enoent")) {
        return Some(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) and install fuse3, or give the \
             container the device (--device /dev/fuse --cap-add SYS_ADMIN)"
                .into(),
        );
    }
    if has("fusermount") && (has("not found") || has("no such file")) {
        return Some("fusermount3 is missing: install fuse3 (apt-get install fuse3)".into());
    }
    if has("permission denied") || has("operation not permitted") || has("eperm") || has("eacces") {
        return Some(format!(
            "mounting FUSE was refused ({}): run as root or with CAP_SYS_ADMIN and access to /dev/fuse \
             (in a container: --device /dev/fuse --cap-add SYS_ADMIN), or install fuse3 for fusermount3",
            output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim()
        ));
    }
    None
}

/// Is `dir` a mount point now (per /proc/self/mountinfo)?
fn is_mounted(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = dir.to_string_lossy().replace(' ', "\\040");
    text.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Where a process's threads are: `pid N: <state> <wait channel> xK, …`, grouped, plus the kernel
/// stack of one thread in uninterruptible sleep (`D`, typically a FUSE request or disk I/O), when
/// readable. Linux only; best effort.
fn threads_of(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("pid {pid}: gone");
    };
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut stuck_stack = None;
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stat = read("stat");
        // The state follows the parenthesised command name.
        let state =
            stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').next()).unwrap_or("?").to_string();
        let wchan = read("wchan");
        let comm = read("comm");
        *states
            .entry(format!("{} {state} {}", comm.trim(), if wchan.is_empty() { "-" } else { wchan.trim() }))
            .or_default() += 1;
        if state == "D" && stuck_stack.is_none() {
            let stack = read("stack");
            if !stack.is_empty() {
                stuck_stack = Some(stack.lines().take(8).map(str::trim).collect::<Vec<_>>().join(" < "));
            }
        }
    }
    // utime and stime (fields 14 and 15) in USER_HZ ticks, 100 a second on Linux.
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| {
        let rest = stat.rsplit_once(") ")?.1.split(' ').collect::<Vec<_>>();
        Some((rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?) as f64 / 100.0)
    });
    let mut text = format!(
        "pid {pid}, {} s of CPU: {}",
        cpu.map_or("?".into(), |c| format!("{c:.1}")),
        states.iter().map(|(s, n)| format!("[{s}] x{n}")).collect::<Vec<_>>().join(", ")
    );
    if let Some(stack) = stuck_stack {
        text.push_str(&format!("; a thread in D state waits in: {stack}"));
    }
    text
}

/// Copy the directories and regular files of the tree at `from` to `to` (created); the bytes copied.
fn copy_tree(from: &Path, to: &Path) -> io::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut bytes = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            bytes += copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            bytes += std::fs::copy(&src, &dst)?;
        }
        // Sockets (the control sockets) and the like are not evidence.
    }
    Ok(bytes)
}

fn log_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Wait up to `limit` for `child` to exit.
fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One `durakv-disk mount` daemon.
struct Disk {
    name: String,
    dir: PathBuf,
    ctl: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Disk {
    fn start(
        bin: &Path,
        name: &str,
        dir: &Path,
        ctl: &Path,
        log: &Path,
        seed: u64,
        odds: Option<&str>,
    ) -> Result<Disk, Failure> {
        let harness = |m: String| Failure::Harness(format!("disk {name}: {m}"));
        let stderr = File::create(log).map_err(|e| harness(format!("log {}: {e}", log.display())))?;
        let mut cmd = Command::new(bin);
        cmd.arg("mount").arg(dir).arg("--ctl").arg(ctl).args(["--seed", &seed.to_string()]);
        if let Some(odds) = odds {
            cmd.args(["--sector-odds", odds]);
        }
        let mut child = cmd
            // Its own process group: a Ctrl-C reaches the harness, which stops it in order.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| harness(format!("cannot start {}: {e}", bin.display())))?;
        let stdout = child.stdout.take().ok_or_else(|| harness("no stdout pipe".into()))?;
        let (tx, rx) = mpsc::channel();
        let mut copy = log_append(log).map_err(|e| harness(format!("log {}: {e}", log.display())))?;
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(copy, "{line}");
                if line.starts_with("mounted") {
                    let _ = tx.send(());
                }
            }
        });
        let mut disk =
            Disk { name: name.into(), dir: dir.into(), ctl: ctl.into(), log: log.into(), child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Err(f) = interrupted() {
                        disk.shutdown();
                        return Err(f);
                    }
                    if let Some(status) = disk.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                        return Err(disk.start_failed(format!("exited ({status}) before mounting")));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(disk.start_failed("did not print `mounted` within 30 s".into()));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = disk.child.as_mut().and_then(|c| wait_for_exit(c, Duration::from_secs(5)));
                    return Err(disk.start_failed(format!(
                        "closed its output before mounting (exit: {})",
                        status.map_or("still running".to_string(), |s| s.to_string())
                    )));
                }
            }
        }
        // The control socket answers once the mount serves; allow it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match disk.ctl("ping", Duration::from_secs(5)) {
                Ok(_) => return Ok(disk),
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    disk.shutdown();
                    return Err(harness(format!("mounted, but ping failed: {e}")));
                }
            }
        }
    }

    /// The daemon did not mount: classify (FUSE unusable, or a harness failure) and clean up.
    fn start_failed(&mut self, what: String) -> Failure {
        self.shutdown();
        let output = std::fs::read_to_string(&self.log).unwrap_or_default();
        match fuse_unavailable(&output) {
            Some(missing) => Failure::FuseUnavailable(missing),
            None => Failure::Harness(format!(
                "disk {} {what}; its log ({}):\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 20)
            )),
        }
    }

    /// One control command; the reply line if it starts with `ok`.
    fn ctl(&self, command: &str, timeout: Duration) -> Result<String, String> {
        let mut s =
            UnixStream::connect(&self.ctl).map_err(|e| format!("connect {}: {e}", self.ctl.display()))?;
        s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        s.write_all(format!("{command}\n").as_bytes()).map_err(|e| format!("send {command:?}: {e}"))?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).map_err(|e| format!("reply to {command:?}: {e}"))?;
        let line = line.trim().to_string();
        if line == "ok" || line.starts_with("ok ") {
            Ok(line)
        } else if line.is_empty() {
            Err(format!("no reply to {command:?}"))
        } else {
            Err(format!("{command:?} answered {line:?}"))
        }
    }

    /// A control command whose failure stops the run.
    fn must(&self, command: &str, timeout: Duration) -> Result<String, Failure> {
        self.ctl(command, timeout).map_err(|e| {
            Failure::Harness(format!(
                "disk {}: {e}; its log ({}):\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 20)
            ))
        })
    }

    /// Stop the daemon and make sure nothing stays mounted. Returns a problem to report, if any.
    fn shutdown(&mut self) -> Option<String> {
        let mut problem = None;
        if let Some(mut child) = self.child.take() {
            let mut exited = match child.try_wait() {
                Ok(Some(_)) => true,
                _ => {
                    let _ = self.ctl("shutdown", Duration::from_secs(10));
                    wait_for_exit(&mut child, Duration::from_secs(10)).is_some()
                }
            };
            if !exited {
                sigterm(&child);
                exited = wait_for_exit(&mut child, Duration::from_secs(5)).is_some();
            }
            if !exited {
                problem = Some(format!("disk {} ignored shutdown and SIGTERM: killed", self.name));
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).stderr(Stdio::null()).status();
            if is_mounted(&self.dir) {
                return Some(format!("{} is still mounted", self.dir.display()));
            }
            problem
                .get_or_insert_with(|| format!("{} was left mounted: unmounted lazily", self.dir.display()));
        }
        problem
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One `durakv` node process.
struct Node {
    id: u64,
    resp: u16,
    data: PathBuf,
    spool: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// When the current process was started, whether it has answered since, and when it was last
    /// asked.
    started: Instant,
    up: bool,
    probed: Instant,
    /// Running time of its processes since it last answered, and the start (number, seconds into
    /// the run) from which it has not: a node cut again and again while it hangs in recovery is
    /// still caught.
    unanswered: Duration,
    silent_since: Option<(u32, f64)>,
}

impl Node {
    /// If the process exited on its own: its status.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if !self.up {
                self.unanswered += self.started.elapsed();
            }
        }
    }

    fn exit_failure(&self, status: ExitStatus, when: &str) -> Failure {
        let log = tail(&self.log, 30);
        let text = format!(
            "node {} exited ({status}) {when}; the tail of its log ({}):\n{log}",
            self.id,
            self.log.display()
        );
        // Another process on its port is this machine's doing, not the node's.
        let last = log.lines().last().unwrap_or_default();
        if last.contains("cannot listen on") && last.contains("in use") {
            Failure::Harness(text)
        } else {
            Failure::Liveness(text)
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigterm(&child);
            if wait_for_exit(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Counts of one mode's run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Cut events by size: `events[k - 1]` cut `k` nodes at one instant.
    pub events: [u32; NODES],
    pub node_cuts: u32,
    pub early: u32,
    pub ops_ok: u64,
    pub ops_fail: u64,
    pub ops_unknown: u64,
    /// `crash.power_loss` summed over the daemons' `stats`.
    pub disk_power_losses: Option<u64>,
    pub checks: Vec<String>,
    /// Things found in the node logs, by what they mean.
    pub log_findings: Vec<(&'static str, usize)>,
}

/// Every key's final value (a missing key is absent).
type KeyValues = BTreeMap<Vec<u8>, Vec<u8>>;

/// The cluster of one mode's run.
struct Cluster {
    start: Instant,
    dir: PathBuf,
    durakv_bin: PathBuf,
    mode: SyncMode,
    snapshot_every: u64,
    fuse: bool,
    peers: String,
    nodes: Vec<Node>,
    /// Two per node when `fuse`: data, spool.
    disks: Vec<Disk>,
}

impl Cluster {
    fn new(o: &Options, mode: SyncMode, dir: &Path, start: Instant) -> Result<Cluster, Failure> {
        let harness = |m: String| Failure::Harness(m);
        std::fs::create_dir_all(dir).map_err(|e| harness(format!("{}: {e}", dir.display())))?;
        let ports = node_ports(2 * NODES).map_err(|e| harness(format!("no free ports: {e}")))?;
        let peers = (0..NODES)
            .map(|i| format!("{}=127.0.0.1:{},127.0.0.1:{}", i + 1, ports[2 * i], ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(";");
        let mut cluster = Cluster {
            start,
            dir: dir.to_path_buf(),
            durakv_bin: o.durakv_bin.clone(),
            mode,
            snapshot_every: o.snapshot_every,
            fuse: !o.no_fuse,
            peers,
            nodes: Vec::new(),
            disks: Vec::new(),
        };
        for i in 0..NODES {
            let id = i as u64 + 1;
            let home = dir.join(format!("n{id}"));
            std::fs::create_dir_all(&home).map_err(|e| harness(format!("{}: {e}", home.display())))?;
            let (data, spool) = (home.join("data"), home.join("spool"));
            if cluster.fuse {
                for (what, path) in [("data", &data), ("spool", &spool)] {
                    let name = format!("n{id}/{what}");
                    let seed = crate::derive_seed(o.seed, &format!("powercut/{}/{name}", mode.flag()));
                    let ctl = home.join(format!("{what}.ctl"));
                    let log = home.join(format!("disk-{what}.log"));
                    cluster.disks.push(Disk::start(
                        &o.disk_bin,
                        &name,
                        path,
                        &ctl,
                        &log,
                        seed,
                        o.sector_odds.as_deref(),
                    )?);
                }
            } else {
                for path in [&data, &spool] {
                    std::fs::create_dir_all(path).map_err(|e| harness(format!("{}: {e}", path.display())))?;
                }
            }
            cluster.nodes.push(Node {
                id,
                resp: ports[2 * i + 1],
                data,
                spool,
                log: home.join("node.log"),
                child: None,
                starts: 0,
                started: Instant::now(),
                up: false,
                probed: Instant::now(),
                unanswered: Duration::ZERO,
                silent_since: None,
            });
        }
        Ok(cluster)
    }

    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn ports(&self) -> Vec<(u64, u16)> {
        self.nodes.iter().map(|n| (n.id, n.resp)).collect()
    }

    fn node(&mut self, id: u64) -> &mut Node {
        let i = self.nodes.iter().position(|n| n.id == id).expect("ids come from the node list");
        &mut self.nodes[i]
    }

    fn disks_of(&self, id: u64) -> impl Iterator<Item = &Disk> {
        let prefix = format!("n{id}/");
        self.disks.iter().filter(move |d| d.name.starts_with(&prefix))
    }

    fn spawn(&mut self, id: u64, why: &str) -> Result<(), Failure> {
        let t = self.secs();
        let (bin, peers, mode, every) =
            (self.durakv_bin.clone(), self.peers.clone(), self.mode, self.snapshot_every);
        let node = self.node(id);
        node.starts += 1;
        let mut log =
            log_append(&node.log).map_err(|e| Failure::Harness(format!("{}: {e}", node.log.display())))?;
        let _ = writeln!(log, "=== powercut: start {} of node {id} at {t:.3} s ({why}) ===", node.starts);
        let child = Command::new(&bin)
            .args(["--id", &id.to_string(), "--peers", &peers])
            .arg("--data-dir")
            .arg(&node.data)
            .arg("--spool-dir")
            .arg(&node.spool)
            .args(["--fsm-sync", mode.flag(), "--snapshot-every", &every.to_string()])
            .env("RUST_LOG", "info")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Failure::Harness(format!("cannot start {}: {e}", bin.display())))?;
        node.child = Some(child);
        (node.started, node.up) = (Instant::now(), false);
        node.silent_since.get_or_insert((node.starts, t));
        Ok(())
    }

    /// A node that exited on its own is a failure (outside a cut nothing stops them).
    fn check_alive(&mut self, when: &str) -> Result<(), Failure> {
        interrupted()?;
        for node in &mut self.nodes {
            if let Some(status) = node.exited() {
                return Err(node.exit_failure(status, when));
            }
        }
        self.check_started()?;
        if self.fuse {
            for disk in &mut self.disks {
                if let Some(status) = disk.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    return Err(Failure::Harness(format!(
                        "disk {} exited ({status}) {when}; its log ({}):\n{}",
                        disk.name,
                        disk.log.display(),
                        tail(&disk.log, 20)
                    )));
                }
            }
        }
        Ok(())
    }

    /// A node must answer (INFO) within [`START`] of its start: one whose process runs but never
    /// comes up (a hang in recovery) is a liveness failure, reported with where its threads are and
    /// with a copy of its disks' contents (the mounts go away at cleanup) to reproduce it offline.
    fn check_started(&mut self) -> Result<(), Failure> {
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            if node.child.is_none() || node.up || node.probed.elapsed() < Duration::from_millis(300) {
                continue;
            }
            node.probed = Instant::now();
            if info(node.resp).is_some() {
                (node.up, node.unanswered, node.silent_since) = (true, Duration::ZERO, None);
                continue;
            }
            if node.unanswered + node.started.elapsed() <= START {
                continue;
            }
            let node = &self.nodes[i];
            let threads = node.child.as_ref().map_or_else(String::new, |c| threads_of(c.id()));
            let saved = if self.fuse {
                let to = self.dir.join(format!("n{}-disks-at-failure", node.id));
                let copied = [("data", &node.data), ("spool", &node.spool)]
                    .into_iter()
                    .map(|(what, from)| copy_tree(from, &to.join(what)).map_err(|e| format!("{what}: {e}")))
                    .collect::<Result<Vec<u64>, String>>();
                match copied {
                    Ok(bytes) => format!(
                        "\n    its data and spool as its disks held them ({} bytes) are copied to {}: `durakv --data-dir \
                         {}/data ...` on that copy repeats the start offline",
                        bytes.iter().sum::<u64>(),
                        to.display(),
                        to.display()
                    ),
                    Err(e) => format!("\n    copying its disks failed: {e}"),
                }
            } else {
                String::new()
            };
            let (since, at) = node.silent_since.unwrap_or((node.starts, 0.0));
            return Err(Failure::Liveness(format!(
                "node {} runs but never came up: it has not answered INFO since its start {since} at {at:.1} s \
                 ({:.0} s of running time over {}; the current one {:.0} s ago); its log ends:\n{}\n    \
                 process: {threads}{saved}",
                node.id,
                (node.unanswered + node.started.elapsed()).as_secs_f64(),
                match node.starts + 1 - since {
                    1 => "1 start".to_string(),
                    n => format!("{n} starts"),
                },
                node.started.elapsed().as_secs_f64(),
                tail(&node.log, 8)
            )));
        }
        Ok(())
    }

    /// Wait `d`, watching the processes.
    fn watch(&mut self, d: Duration, when: &str) -> Result<(), Failure> {
        let deadline = Instant::now() + d;
        loop {
            self.check_alive(when)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    /// The node that says it leads, if any.
    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .find(|n| info(n.resp).is_some_and(|i| i.get("role").map(String::as_str) == Some("leader")))
            .map(|n| n.id)
    }

    /// Wait until a leader is known and `writes` more writes were acknowledged than `since`.
    fn wait_serving(
        &mut self,
        load: Option<&Load>,
        since: u64,
        writes: u64,
        when: &str,
    ) -> Result<f64, Failure> {
        let started = Instant::now();
        loop {
            self.check_alive(when)?;
            let acked = load.map_or(writes + since, Load::acked_writes);
            if acked >= since + writes && self.leader().is_some() {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > RECOVER {
                return Err(Failure::Liveness(format!(
                    "{when}: the cluster did not serve again within {RECOVER:?} (leader: {:?}, {} of {writes} writes \
                     acknowledged); the tails of the node logs:\n{}",
                    self.leader(),
                    acked.saturating_sub(since),
                    self.log_tails(12)
                )));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tail of every node's log, and where each running node's threads wait (a node that
    /// hangs silently shows whether it waits on the disk, a FUSE request, or itself).
    fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let threads = n.child.as_ref().map_or_else(|| "not running".into(), |c| threads_of(c.id()));
                format!(
                    "--- node {} ({}):\n{}\n    process: {threads}",
                    n.id,
                    n.log.display(),
                    tail(&n.log, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Cut the power of `ids` at one instant: halt every disk of theirs (power loss), kill the
    /// processes, keep them down `down`, bring the disks back with their durable state, restart.
    fn cut(&mut self, ids: &[u64], down: Duration) -> Result<(), Failure> {
        if self.fuse {
            for &id in ids {
                for disk in self.disks_of(id) {
                    disk.must("halt power-loss", Duration::from_secs(10))?;
                }
            }
        }
        for &id in ids {
            self.node(id).kill();
        }
        self.watch(down, "while other nodes were down")?;
        if self.fuse {
            for &id in ids {
                for disk in self.disks_of(id) {
                    disk.must("restart", Duration::from_secs(60))?;
                }
            }
        }
        for &id in ids {
            self.spawn(id, if self.fuse { "after a power cut" } else { "after SIGKILL" })?;
        }
        Ok(())
    }

    /// Wait until every node answers with one applied index (and commit index) twice in a row.
    fn converge(&mut self) -> Result<u64, Failure> {
        let started = Instant::now();
        let mut last: Option<Vec<(u64, u64)>> = None;
        loop {
            self.check_alive("while converging")?;
            let now: Option<Vec<(u64, u64)>> = self
                .nodes
                .iter()
                .map(|n| {
                    let i = info(n.resp)?;
                    Some((i.get("applied_index")?.parse().ok()?, i.get("commit_index")?.parse().ok()?))
                })
                .collect();
            if let Some(now) = &now
                && now.windows(2).all(|w| w[0] == w[1])
                && last.as_ref() == Some(now)
                && self.leader().is_some()
            {
                return Ok(now[0].0);
            }
            if started.elapsed() > CONVERGE {
                return Err(Failure::Liveness(format!(
                    "the replicas did not reach one applied index within {CONVERGE:?} after the load stopped \
                     ((applied, commit) per node: {now:?}); the tails of the node logs:\n{}",
                    self.log_tails(12)
                )));
            }
            last = now;
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// The final value of every key, read through the leader.
    fn final_reads(&mut self, keys: &[Vec<u8>]) -> Result<(u64, KeyValues), Failure> {
        let started = Instant::now();
        'again: loop {
            self.check_alive("during the final reads")?;
            if started.elapsed() > RECOVER {
                return Err(Failure::Liveness(format!(
                    "the final reads did not succeed within {RECOVER:?}; the tails of the node logs:\n{}",
                    self.log_tails(12)
                )));
            }
            let Some(leader) = self.leader() else {
                thread::sleep(Duration::from_millis(200));
                continue;
            };
            let port = self.node(leader).resp;
            let mut state = BTreeMap::new();
            for key in keys {
                match call_once(port, &[b"GET", key], Duration::from_secs(10)) {
                    Ok(Reply::Bulk(Some(v))) => {
                        state.insert(key.clone(), v);
                    }
                    Ok(Reply::Bulk(None) | Reply::Null) => {}
                    Ok(other) => {
                        if outcome_of(&other) == Outcome::Ok {
                            return Err(Failure::Violation {
                                check: "protocol",
                                detail: format!(
                                    "the final GET of {:?} was answered {other:?}",
                                    String::from_utf8_lossy(key)
                                ),
                            });
                        }
                        thread::sleep(Duration::from_millis(200));
                        continue 'again;
                    }
                    Err(_) => {
                        thread::sleep(Duration::from_millis(200));
                        continue 'again;
                    }
                }
            }
            return Ok((leader, state));
        }
    }

    /// `crash.power_loss` summed over the daemons.
    fn disk_power_losses(&self) -> Option<u64> {
        let mut total = 0;
        for disk in &self.disks {
            let stats = disk.ctl("stats", Duration::from_secs(10)).ok()?;
            let _ =
                std::fs::write(self.dir.join(format!("{}-stats.txt", disk.name.replace('/', "-"))), &stats);
            total += stats
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("crash.power_loss="))
                .and_then(|v| v.parse::<u64>().ok())?;
        }
        Some(total)
    }

    /// What the node logs show happened, by meaning.
    fn log_findings(&self) -> Vec<(&'static str, usize)> {
        let text: String =
            self.nodes.iter().map(|n| std::fs::read_to_string(&n.log).unwrap_or_default()).collect();
        [
            ("torn WAL tails repaired", "repaired torn WAL tail"),
            ("snapshots taken", "snapshot taken, log compacted below it"),
            ("snapshots sent", "snapshot sent"),
            (
                "received snapshots copied across devices (EXDEV)",
                "spool and snapshot directory are on different devices",
            ),
            ("cold-start snapshot restores", "cold start: restoring the snapshot"),
            ("interrupted snapshot work cleaned up", "cleaned up interrupted snapshot work"),
            ("RocksDB log tails cut where its reader would spin", "its reader would spin on forever"),
            ("fatal stops", "fatal: the node stops"),
        ]
        .into_iter()
        .map(|(what, needle)| (what, text.matches(needle).count()))
        .collect()
    }

    /// Stop the nodes (SIGTERM), then the disks; returns the problems met.
    fn shutdown(&mut self) -> Vec<String> {
        // Node's drop: SIGTERM, then SIGKILL after 10 s.
        self.nodes.clear();
        self.disks.iter_mut().filter_map(Disk::shutdown).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How one mode's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// A check could not decide (never a pass).
    Undecided(String),
    Failed(Failure),
}

/// One mode's run.
pub struct ModeReport {
    pub mode: SyncMode,
    pub cuts: u32,
    pub dir: PathBuf,
    pub verdict: Verdict,
    pub counts: Counts,
    pub wall: Duration,
    pub cleanup: Vec<String>,
}

/// `DURAKV_POWERCUT_HOLD_SECS`: how long a failed run's processes stay up before cleanup.
fn hold_secs() -> Option<u64> {
    std::env::var("DURAKV_POWERCUT_HOLD_SECS").ok()?.parse().ok()
}

/// Run one mode: `cuts` node cuts on a fresh cluster under `dir`.
pub fn run_mode(o: &Options, mode: SyncMode, cuts: u32, dir: &Path) -> ModeReport {
    let start = Instant::now();
    let mut counts = Counts::default();
    let mut cleanup = Vec::new();
    let verdict = match Cluster::new(o, mode, dir, start) {
        Err(f) => Verdict::Failed(f),
        Ok(mut cluster) => {
            let verdict = drive(&mut cluster, o, mode, cuts, &mut counts);
            if let (Verdict::Failed(_), Some(secs)) = (&verdict, hold_secs()) {
                println!(
                    "   DURAKV_POWERCUT_HOLD_SECS: the failed cluster stays up {secs} s for inspection ({})",
                    cluster
                        .log_tails(0)
                        .lines()
                        .filter(|l| l.contains("process:"))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                thread::sleep(Duration::from_secs(secs));
            }
            if cluster.fuse {
                counts.disk_power_losses = cluster.disk_power_losses();
            }
            counts.log_findings = cluster.log_findings();
            cleanup = cluster.shutdown();
            verdict
        }
    };
    ModeReport { mode, cuts, dir: dir.to_path_buf(), verdict, counts, wall: start.elapsed(), cleanup }
}

fn drive(c: &mut Cluster, o: &Options, mode: SyncMode, cuts: u32, counts: &mut Counts) -> Verdict {
    let label = format!("powercut/{}", mode.flag());
    let events = plan(o.seed, &format!("{label}/plan"), cuts, NODES);
    let started = (|| -> Result<(), Failure> {
        for id in c.ids() {
            c.spawn(id, "first start")?;
        }
        c.wait_serving(None, 0, 0, "at the first start").map(|_| ())
    })();
    let result = started.and_then(|()| {
        let load = Load::start(c.start, c.ports(), o.clients, o.seed, &label);
        let cut = run_cuts(c, &load, &events, mode, counts);
        let (history, anomalies) = load.stop();
        let count = |o: Outcome| history.iter().filter(|op| op.outcome == o).count() as u64;
        (counts.ops_ok, counts.ops_fail, counts.ops_unknown) =
            (count(Outcome::Ok), count(Outcome::Fail), count(Outcome::Unknown));
        cut.and_then(|()| check_run(c, history, anomalies, counts))
    });
    match result {
        Ok(()) => Verdict::Pass,
        Err(Failure::Undecided(why)) => Verdict::Undecided(why),
        Err(f) => Verdict::Failed(f),
    }
}

/// The schedule's cuts under load, then a last recovery and a second of load.
fn run_cuts(
    c: &mut Cluster,
    load: &Load,
    events: &[CutEvent],
    mode: SyncMode,
    counts: &mut Counts,
) -> Result<(), Failure> {
    let what = if c.fuse { "power cut" } else { "SIGKILL" };
    let mut restarted_at_writes = 0;
    for (i, ev) in events.iter().enumerate() {
        if !ev.early {
            let when = format!("after cut {i}");
            c.wait_serving(Some(load), restarted_at_writes, RECOVERED_WRITES, &when)?;
        }
        c.watch(Duration::from_millis(ev.load_ms), "under load")?;
        let leader = c.leader();
        let chosen = choose_nodes(ev, leader, &c.ids());
        let t = c.secs();
        c.cut(&chosen, Duration::from_millis(ev.down_ms))?;
        restarted_at_writes = load.acked_writes();
        counts.events[chosen.len() - 1] += 1;
        counts.node_cuts += chosen.len() as u32;
        counts.early += u32::from(ev.early);
        println!(
            "  [{}] cut {}/{} at {t:.1} s: {what} of node{} {} (leader {}){}{}; {} writes acknowledged so far",
            mode.flag(),
            i + 1,
            events.len(),
            if chosen.len() > 1 { "s" } else { "" },
            chosen.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
            leader.map_or("unknown".into(), |l| l.to_string()),
            if ev.early { ", during recovery" } else { "" },
            if ev.down_ms > 0 { format!(", down {} ms", ev.down_ms) } else { String::new() },
            restarted_at_writes,
        );
    }
    c.wait_serving(Some(load), restarted_at_writes, RECOVERED_WRITES, "after the last cut")?;
    c.watch(Duration::from_millis(1000), "under load")
}

fn check_run(
    c: &mut Cluster,
    mut history: Vec<Operation>,
    anomalies: Vec<String>,
    counts: &mut Counts,
) -> Result<(), Failure> {
    if let Some(first) = anomalies.first() {
        return Err(Failure::Violation {
            check: "protocol",
            detail: format!("{first} ({} replies of the wrong shape in all)", anomalies.len()),
        });
    }
    let applied = c.converge()?;
    counts.checks.push(format!("convergence (applied index {applied} on all {NODES} nodes)"));
    let keys = final_keys(c.start.elapsed().as_secs() / GENERATION_SECS);
    let (leader, final_state) = c.final_reads(&keys)?;
    let on = |e: String| format!("{e} (final values read through node {leader})");
    check_durability(&history, &final_state)
        .map_err(|e| Failure::Violation { check: "durability", detail: on(e.to_string()) })?;
    counts.checks.push("durability".into());
    check_lists(&history, &final_state, is_list)
        .map_err(|e| Failure::Violation { check: "list_append", detail: on(e.to_string()) })?;
    counts.checks.push(format!("list_append ({} keys)", keys.iter().filter(|k| is_list(k)).count()));
    check_counters(&history, &final_state, is_counter)
        .map_err(|e| Failure::Violation { check: "counter", detail: on(e.to_string()) })?;
    counts.checks.push(format!("counter ({} keys)", keys.iter().filter(|k| is_counter(k)).count()));
    // The final state joins the history as one read per key after every operation, so an operation
    // whose outcome no client learned is placed (or left out) consistently with what survived. List
    // keys are left to `check_lists`, which checks them completely and never runs out of budget (the
    // general search can, on long lists with undecided APPENDs), as in the simulation.
    let end = c.start.elapsed().as_micros() as u64;
    for key in &keys {
        history.push(Operation {
            client: FINAL_READ_CLIENT,
            server: leader,
            effects: vec![(key.clone(), RegisterOp::Read(final_state.get(key).cloned()))],
            call: end,
            ret: end,
            outcome: Outcome::Ok,
        });
    }
    history.retain(|o| !o.effects.iter().all(|(k, _)| is_list(k)));
    let checked = Instant::now();
    match crate::linearizability::check(&history) {
        CheckResult::Linearizable => {
            counts.checks.push(format!(
                "linearizability ({} register and counter keys, {} operations, {:.1} s)",
                keys.iter().filter(|k| !is_list(k)).count(),
                history.len(),
                checked.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        CheckResult::Violation(v) => {
            let culprit = v.culprit.as_ref().map_or(String::new(), |o| {
                format!(
                    "; the first operation that cannot be explained is {o} by client {} on node {}, {}–{} µs",
                    o.client, o.server, o.call, o.ret
                )
            });
            let keys: Vec<String> =
                v.keys.iter().map(|k| format!("{:?}", String::from_utf8_lossy(k))).collect();
            Err(Failure::Violation {
                check: "linearizability",
                detail: format!(
                    "key {}: no order of their {} operations explains what the clients saw{culprit}",
                    keys.join(", "),
                    v.operations.len()
                ),
            })
        }
        CheckResult::Undecided(u) => {
            let keys: Vec<String> =
                u.keys.iter().map(|k| format!("{:?}", String::from_utf8_lossy(k))).collect();
            Err(Failure::Undecided(format!(
                "linearizability: the search over the {} operations of key {} gave up after {} (every other \
                 check passed)",
                u.operations,
                keys.join(", "),
                u.limit
            )))
        }
    }
}

/// A seed from the clock and the process id, for runs without `--seed`.
pub fn random_seed() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    crate::derive_seed(nanos ^ u64::from(std::process::id()).rotate_left(32), "powercut/seed")
}

/// The command that repeats the run of `modes` with `cuts` node cuts.
fn reproduce(o: &Options, mode: &str, cuts: u32) -> String {
    let mut cmd = format!(
        "{} --seed {} --cuts {cuts} --fsm-sync {mode} --durakv-bin {} --clients {} --snapshot-every {}",
        std::env::current_exe().map_or_else(|_| "durakv-powercut".into(), |p| p.display().to_string()),
        o.seed,
        o.durakv_bin.display(),
        o.clients,
        o.snapshot_every
    );
    if o.no_fuse {
        cmd.push_str(" --no-fuse");
    } else {
        cmd.push_str(&format!(" --disk-bin {}", o.disk_bin.display()));
    }
    if let Some(odds) = &o.sector_odds {
        cmd.push_str(&format!(" --sector-odds {odds}"));
    }
    cmd
}

fn print_report(r: &ModeReport, fuse: bool) {
    let c = &r.counts;
    let state = match &r.verdict {
        Verdict::Pass => "PASS".to_string(),
        Verdict::Undecided(_) => "UNDECIDED".to_string(),
        Verdict::Failed(f) => format!(
            "FAIL ({})",
            match f {
                Failure::FuseUnavailable(_) => "FUSE unusable",
                Failure::Harness(_) => "harness",
                Failure::Liveness(_) => "liveness",
                Failure::Violation { check, .. } => check,
                Failure::Undecided(_) => "undecided",
            }
        ),
    };
    let cut = if fuse { "node power cuts" } else { "node SIGKILLs (--no-fuse: no power loss)" };
    println!("== fsm_sync={}: {state} in {:.1} s", r.mode.flag(), r.wall.as_secs_f64());
    println!(
        "   {cut}: {} of {} planned (one per node cut; {} events: {} of 1 node, {} of 2, {} of 3 at one instant; {} during recovery)",
        c.node_cuts,
        r.cuts,
        c.events.iter().sum::<u32>(),
        c.events[0],
        c.events[1],
        c.events[2],
        c.early
    );
    if let Some(n) = c.disk_power_losses {
        println!("   power losses the disk daemons report (crash.power_loss, data + spool disks): {n}");
    }
    println!("   operations: {} ok, {} failed, {} unknown", c.ops_ok, c.ops_fail, c.ops_unknown);
    if !c.log_findings.is_empty() {
        let found: Vec<String> = c.log_findings.iter().map(|(what, n)| format!("{what} {n}")).collect();
        println!("   node logs: {}", found.join(", "));
    }
    if !c.checks.is_empty() {
        println!("   checks passed: {}", c.checks.join("; "));
    }
    for p in &r.cleanup {
        println!("   cleanup: {p}");
    }
}

/// The whole run: every mode, the summary, the exit code.
pub fn main(args: &[String]) -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let o = match parse_args(args, &beside, random_seed()) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("durakv-powercut: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal asks for a clean stop; a second one while it runs exits at once.
        let hooked = signal_hook::flag::register_conditional_shutdown(signal, 1, &INTERRUPTED)
            .and_then(|_| signal_hook::flag::register(signal, &INTERRUPTED));
        if let Err(e) = hooked {
            eprintln!("durakv-powercut: cannot handle signal {signal}: {e}");
            return ExitCode::from(1);
        }
    }
    let allow_skip = std::env::var("DURAKV_ALLOW_FUSE_SKIP").is_ok_and(|v| v == "1");
    let skip_or_fail = |missing: &str| {
        if allow_skip {
            println!("SKIPPED: durakv-powercut did not run: {missing} (DURAKV_ALLOW_FUSE_SKIP=1)");
            ExitCode::SUCCESS
        } else {
            println!(
                "FAILED: durakv-powercut cannot run: {missing} (DURAKV_ALLOW_FUSE_SKIP=1 makes this a skip; \
                 --no-fuse runs SIGKILLs instead of power cuts)"
            );
            ExitCode::from(1)
        }
    };
    for (what, bin) in [("durakv", &o.durakv_bin), ("durakv-disk", &o.disk_bin)] {
        if what == "durakv-disk" && o.no_fuse {
            continue;
        }
        if !bin.is_file() {
            eprintln!(
                "durakv-powercut: {what} binary {} not found (build it: {})",
                bin.display(),
                if what == "durakv" {
                    "cargo build -p durakv --bin durakv --profile fast"
                } else {
                    "cargo build -p durakv-faults --features fuse --bin durakv-disk --profile fast"
                }
            );
            return ExitCode::from(1);
        }
    }
    if !o.no_fuse && !Path::new("/dev/fuse").exists() {
        return skip_or_fail(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) and install fuse3, or give the container \
             the device (--device /dev/fuse --cap-add SYS_ADMIN)",
        );
    }
    let top = o.work_dir.join(format!("durakv-powercut-{}-{}", o.seed, std::process::id()));
    let split = cuts_per_mode(o.cuts, o.modes.len());
    let modes: Vec<&str> = o.modes.iter().map(|m| m.flag()).collect();
    println!(
        "durakv-powercut: seed {}, {} node {} in all ({}), {} clients, snapshot every {} entries, work dir {}",
        o.seed,
        o.cuts,
        if o.no_fuse { "SIGKILLs (--no-fuse: plain directories, NO power loss)" } else { "power cuts" },
        o.modes
            .iter()
            .zip(&split)
            .map(|(m, n)| format!("{n} with fsm_sync={}", m.flag()))
            .collect::<Vec<_>>()
            .join(", "),
        o.clients,
        o.snapshot_every,
        top.display()
    );
    let mut reports = Vec::new();
    for (&mode, &cuts) in o.modes.iter().zip(&split) {
        let dir = top.join(mode.flag());
        println!("-- fsm_sync={}: {cuts} node cuts", mode.flag());
        let report = run_mode(&o, mode, cuts, &dir);
        if let Verdict::Failed(Failure::FuseUnavailable(missing)) = &report.verdict {
            let _ = std::fs::remove_dir_all(&top);
            return skip_or_fail(missing);
        }
        print_report(&report, !o.no_fuse);
        let stop = matches!(report.verdict, Verdict::Failed(_));
        reports.push(report);
        if stop {
            break;
        }
    }
    let mut code = ExitCode::SUCCESS;
    let mut keep = o.keep;
    for r in &reports {
        let mounted = r.cleanup.iter().any(|p| p.contains("still mounted"));
        keep |= mounted;
        let (what, why) = match &r.verdict {
            Verdict::Pass => continue,
            Verdict::Undecided(why) => {
                if code == ExitCode::SUCCESS {
                    code = ExitCode::from(3);
                }
                ("UNDECIDED", why.clone())
            }
            Verdict::Failed(f) => {
                code = ExitCode::from(1);
                ("FAILED", f.to_string())
            }
        };
        // The evidence (node and disk logs, disk stats, copies of a hung node's disks) goes to the
        // failures directory when there is one (never while something may still be mounted there).
        let kept = match &o.failures {
            Some(out) if !mounted => {
                let mut dest = out.join(format!("durakv-powercut-{}-{}", o.seed, r.mode.flag()));
                if dest.exists() {
                    // An earlier run of the same seed: keep both.
                    dest = out.join(format!(
                        "durakv-powercut-{}-{}-{}",
                        o.seed,
                        r.mode.flag(),
                        std::process::id()
                    ));
                }
                match copy_tree(&r.dir, &dest) {
                    Ok(_) => dest,
                    Err(e) => {
                        println!("  could not copy the run to {}: {e}", dest.display());
                        keep = true;
                        r.dir.clone()
                    }
                }
            }
            _ => {
                keep = true;
                r.dir.clone()
            }
        };
        // The paths in the explanation name the work directory; name where the evidence is now.
        let why = why.replace(&r.dir.display().to_string(), &kept.display().to_string());
        println!("{what} (fsm_sync={}): {why}", r.mode.flag());
        println!(
            "  the run's node and disk logs are kept in {}; repeat it with:\n  {}",
            kept.display(),
            reproduce(&o, r.mode.flag(), r.cuts)
        );
    }
    if code == ExitCode::SUCCESS {
        println!("durakv-powercut: PASS ({}; seed {})", modes.join(", "), o.seed);
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&top);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// Failure guarded against: a schedule that does fewer or more node cuts than asked, or never
    /// cuts several nodes at one instant (the correlated power loss is the point).
    /// Invariant: exactly `n` node cuts, every event cuts 1 to 3 nodes, each size occurs over a long
    /// schedule, and the schedule replays from its seed.
    #[test]
    fn the_schedule_does_exactly_the_cuts_asked_and_mixes_sizes() {
        for seed in 0..50 {
            for n in [1, 2, 3, 7, 30] {
                let p = plan(seed, "powercut/sync/plan", n, NODES);
                assert_eq!(p.iter().map(|e| e.nodes as u32).sum::<u32>(), n, "seed {seed}, {n} cuts");
                assert!(p.iter().all(|e| (1..=NODES).contains(&e.nodes)));
                assert!(!p[0].early, "the first cut never lands before the cluster served");
                assert!(p.iter().all(|e| e.down_ms == 0 || e.nodes == 1), "only a lone node stays down");
            }
        }
        let long = plan(7, "x", 600, NODES);
        for size in 1..=NODES {
            assert!(long.iter().any(|e| e.nodes == size), "no cut of {size} nodes in 600");
        }
        assert!(long.iter().any(|e| e.early) && long.iter().any(|e| e.down_ms > 0));
        assert_eq!(plan(7, "x", 600, NODES), long);
        assert_ne!(plan(8, "x", 600, NODES), long);
    }

    /// Failure guarded against: cuts that never hit the leader (or only it), or that name a node twice.
    /// Invariant: `with_leader` decides whether the leader is cut; the chosen nodes are distinct
    /// members, as many as the event asks.
    #[test]
    fn choosing_nodes_honours_the_leader_flag() {
        let ids = [1, 2, 3];
        for pick in 0..6 {
            for nodes in 1..=3 {
                for with_leader in [false, true] {
                    let ev = CutEvent { nodes, with_leader, pick, early: false, load_ms: 0, down_ms: 0 };
                    for leader in [None, Some(1), Some(2), Some(3)] {
                        let c = choose_nodes(&ev, leader, &ids);
                        assert_eq!(c.len(), nodes, "{ev:?} {leader:?}");
                        assert!(c.windows(2).all(|w| w[0] < w[1]), "distinct and sorted: {c:?}");
                        if let (Some(l), true) = (leader, nodes < 3) {
                            assert_eq!(c.contains(&l), with_leader, "{ev:?} leader {l}: {c:?}");
                        }
                    }
                }
            }
        }
        let ev = CutEvent { nodes: 1, with_leader: false, pick: 0, early: false, load_ms: 0, down_ms: 0 };
        let followers: std::collections::BTreeSet<Vec<u64>> =
            (0..4).map(|pick| choose_nodes(&CutEvent { pick, ..ev }, Some(2), &ids)).collect();
        assert_eq!(followers.len(), 2, "both followers get their turn: {followers:?}");
    }

    #[test]
    fn node_ports_avoid_the_ephemeral_range() {
        assert_eq!(port_window((32_768, 60_999)), (10_000, 32_767));
        assert_eq!(port_window((1_024, 40_000)), (40_001, 65_535));
        assert_eq!(port_window((1_024, 65_535)), (1_024, 65_535));
        let ports = node_ports(6).expect("six free ports");
        assert_eq!(ports.len(), 6);
        assert!(ports.windows(2).all(|w| w[0] != w[1]));
    }

    #[test]
    fn cuts_split_evenly_over_the_modes() {
        assert_eq!(cuts_per_mode(60, 2), vec![30, 30]);
        assert_eq!(cuts_per_mode(61, 2), vec![31, 30]);
        assert_eq!(cuts_per_mode(5, 1), vec![5]);
    }

    #[test]
    fn arguments_have_defaults_and_are_checked() {
        let o = parse_args(&[], Path::new("/bin"), 9).expect("defaults");
        assert_eq!((o.seed, o.cuts, o.modes.len(), o.no_fuse), (9, 60, 2, false));
        assert_eq!(o.durakv_bin, Path::new("/bin/durakv"));
        assert_eq!(o.disk_bin, Path::new("/bin/durakv-disk"));
        let o = parse_args(
            &args(&["--seed", "5", "--cuts", "3", "--fsm-sync", "nosync", "--no-fuse"]),
            Path::new("/b"),
            9,
        )
        .expect("valid");
        assert_eq!((o.seed, o.cuts, o.modes.clone(), o.no_fuse), (5, 3, vec![SyncMode::NoSync], true));
        assert!(parse_args(&args(&["--fsm-sync", "fast"]), Path::new("/b"), 9).is_err());
        assert!(
            parse_args(&args(&["--cuts", "1"]), Path::new("/b"), 9).is_err(),
            "one cut per mode at least"
        );
        assert!(parse_args(&args(&["--seed"]), Path::new("/b"), 9).is_err());
        assert!(parse_args(&args(&["--colour"]), Path::new("/b"), 9).is_err());
    }

    /// Failure guarded against: a reply classified wrongly, so the checkers judge a history the
    /// cluster did not produce. Invariant: replies map to effects with their results; TIMEOUT is
    /// unknown, other errors fail, and a reply of the wrong shape is reported, not guessed at.
    #[test]
    fn replies_become_effects() {
        let set = Cmd::Set(b"v1".to_vec());
        assert_eq!(effect_of(&set, &Reply::ok()), Ok((Outcome::Ok, RegisterOp::Write(Some(b"v1".to_vec())))));
        assert_eq!(
            effect_of(&Cmd::Incr, &Reply::Integer(4)),
            Ok((Outcome::Ok, RegisterOp::Incr { delta: 1, result: Some(4) }))
        );
        assert_eq!(
            effect_of(&Cmd::Incr, &Reply::Error("TIMEOUT not confirmed".into())),
            Ok((Outcome::Unknown, RegisterOp::Incr { delta: 1, result: None }))
        );
        assert_eq!(
            effect_of(&Cmd::Append(b"1.2;".to_vec()), &Reply::Integer(8)),
            Ok((Outcome::Ok, RegisterOp::Append { suffix: b"1.2;".to_vec(), len: Some(8) }))
        );
        assert_eq!(effect_of(&Cmd::Get, &Reply::Bulk(None)), Ok((Outcome::Ok, RegisterOp::Read(None))));
        assert_eq!(
            effect_of(&Cmd::Del, &Reply::Error("TRYAGAIN no leader".into())).map(|r| r.0),
            Ok(Outcome::Fail)
        );
        assert!(effect_of(&Cmd::Get, &Reply::Integer(1)).is_err());
        assert!(effect_of(&set, &Reply::Integer(1)).is_err());
    }

    /// Failure guarded against: a command on a key of another kind (the list and counter checks
    /// would judge keys other commands touched), or a list key the final reads miss.
    #[test]
    fn commands_stay_in_their_key_kinds() {
        let mut rng = crate::rng_for(1, "t");
        let mut old_reads = 0;
        for seq in 0..4000 {
            let generation = seq / 1000;
            let (key, cmd) = pick_command(&mut rng, 3, seq, generation);
            assert!(final_keys(generation).contains(&key), "the final reads cover {key:?}");
            let current = key_space(generation).contains(&key);
            match cmd {
                Cmd::Incr => assert!(is_counter(&key) && current),
                Cmd::Append(ref t) => {
                    assert!(is_list(&key) && current);
                    assert_eq!(t, &format!("3.{seq};").into_bytes());
                }
                Cmd::Set(_) | Cmd::Del => assert!(!is_counter(&key) && !is_list(&key) && current),
                Cmd::Get => old_reads += u32::from(!current),
            }
            if generation > 0 && cmd.is_write() {
                assert!(!final_keys(generation - 1).contains(&key), "a generation writes keys of its own");
            }
        }
        assert!(old_reads > 0, "older generations are read too");
    }

    #[test]
    fn fuse_problems_are_named() {
        assert!(fuse_unavailable("Error: open /dev/fuse: No such file or directory").is_some());
        assert!(fuse_unavailable("mount failed: Operation not permitted (os error 1)").is_some());
        assert!(fuse_unavailable("fusermount3: command not found").is_some());
        assert_eq!(fuse_unavailable("error: the ctl socket is in use"), None);
    }
}
