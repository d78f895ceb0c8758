//! The closed loop: C clients, each sending one write, waiting for its answer, then sending the next,
//! for a warm-up and then a measured window of fixed length.
//!
//! A write is counted in the throughput if it completes inside the measured window; its latency goes
//! into the histogram if it was sent inside the window (so a write sent just before the window closes
//! is still waited for, and a stall at the very end still shows in the maximum).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::cpu;
use crate::etcd::EtcdClient;
use crate::resp::RespConn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    Durakv,
    Etcd,
}

impl System {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "durakv" => Ok(System::Durakv),
            "etcd" => Ok(System::Etcd),
            _ => bail!("unknown system {s:?} (durakv or etcd)"),
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            System::Durakv => "durakv",
            System::Etcd => "etcd",
        })
    }
}

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub system: System,
    /// Where the writes go: the leader's RESP address (durakv) or the leader's client address (etcd).
    pub target: String,
    pub clients: usize,
    pub value_size: usize,
    /// Keys are drawn uniformly from this many.
    pub keys: u64,
    pub warmup: Duration,
    pub duration: Duration,
    /// A write not answered within this long counts as an error (and its client reconnects).
    pub op_timeout: Duration,
    /// etcd only: HTTP/2 connections the clients share (`None`: one per client, as RESP has).
    pub etcd_conns: Option<usize>,
    /// Processes whose CPU time over the measured window is reported beside the generator's.
    pub server_pids: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub system: System,
    pub clients: usize,
    /// Writes completed inside the measured window.
    pub ops: u64,
    pub window: Duration,
    /// Latency in microseconds of every write sent inside the measured window.
    pub hist: Histogram<u64>,
    /// Failed or timed-out writes over the whole run, warm-up included.
    pub errors: u64,
    pub first_error: Option<String>,
    /// The generator's CPU time over the window, in % of one core.
    pub gen_cpu_pct: f64,
    /// The server processes' CPU time over the window, in % of one core (the sum of all of them).
    pub server_cpu_pct: Option<f64>,
    /// Everything else on the machine over the window (other processes, the idle cluster of the
    /// other system), in % of one core: what shows a run shared the machine.
    pub other_cpu_pct: Option<f64>,
}

impl RunResult {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64()
    }
}

pub fn new_histogram() -> Result<Histogram<u64>> {
    // 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram bounds")
}

/// Milliseconds of a histogram quantile (microseconds inside).
pub fn ms(hist: &Histogram<u64>, q: f64) -> f64 {
    hist.value_at_quantile(q) as f64 / 1000.0
}

pub fn max_ms(hist: &Histogram<u64>) -> f64 {
    hist.max() as f64 / 1000.0
}

enum Client {
    Resp(RespConn),
    Etcd(EtcdClient),
}

impl Client {
    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        match self {
            Client::Resp(c) => c.set(key, value).await,
            Client::Etcd(c) => c.put(key, value).await.map(|_| ()),
        }
    }
}

/// SplitMix64: a client's key sequence, cheap and different for every client.
struct KeyGen(u64);

impl KeyGen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A value of `size` printable bytes (the same for every write of a run: neither system compresses
/// its log).
pub fn make_value(size: usize, seed: u64) -> Vec<u8> {
    let mut g = KeyGen(seed);
    (0..size).map(|_| b'a' + (g.next() % 26) as u8).collect()
}

struct ClientStats {
    hist: Histogram<u64>,
    ops: u64,
    errors: u64,
    first_error: Option<String>,
}

struct Window {
    start: Instant,
    end: Instant,
}

async fn connect(spec: &LoadSpec, shared: Option<&EtcdClient>) -> Result<Client> {
    Ok(match (spec.system, shared) {
        (System::Durakv, _) => Client::Resp(RespConn::connect(&spec.target).await?),
        (System::Etcd, Some(c)) => Client::Etcd(c.clone()),
        (System::Etcd, None) => Client::Etcd(EtcdClient::connect(&spec.target).await?),
    })
}

async fn client_loop(
    mut client: Client,
    id: usize,
    spec: Arc<LoadSpec>,
    value: Arc<Vec<u8>>,
    window: Arc<Window>,
) -> Result<ClientStats> {
    let mut stats = ClientStats { hist: new_histogram()?, ops: 0, errors: 0, first_error: None };
    let mut keys = KeyGen(0xD0_0D ^ ((id as u64) << 32));
    let mut key = Vec::with_capacity(24);
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            break;
        }
        key.clear();
        key.extend_from_slice(format!("bench:{:010}", keys.next() % spec.keys.max(1)).as_bytes());
        let res = tokio::time::timeout(spec.op_timeout, client.put(&key, &value)).await;
        let done = Instant::now();
        let err = match res {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some(format!("no answer within {:?}", spec.op_timeout)),
        };
        match err {
            None => {
                if sent >= window.start {
                    let us = u64::try_from(done.duration_since(sent).as_micros()).unwrap_or(u64::MAX).max(1);
                    stats.hist.saturating_record(us);
                }
                if done >= window.start && done <= window.end {
                    stats.ops += 1;
                }
            }
            Some(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(e);
                // The connection may be broken or out of step with its replies: start a new one.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let fresh = match client {
                    Client::Resp(_) => RespConn::connect(&spec.target).await.map(Client::Resp),
                    Client::Etcd(_) => EtcdClient::connect(&spec.target).await.map(Client::Etcd),
                };
                match fresh {
                    Ok(c) => client = c,
                    Err(e) => {
                        stats.first_error.get_or_insert(format!("{e:#}"));
                    }
                }
            }
        }
    }
    Ok(stats)
}

/// Runs one closed-loop load and returns what it measured.
pub async fn run(spec: LoadSpec) -> Result<RunResult> {
    if spec.clients == 0 {
        bail!("at least one client is needed");
    }
    let spec = Arc::new(spec);
    let value = Arc::new(make_value(spec.value_size, 0x5EED ^ spec.clients as u64));

    // Connect every client before the clock starts.
    let mut shared = Vec::new();
    if spec.system == System::Etcd
        && let Some(n) = spec.etcd_conns
    {
        for _ in 0..n.max(1) {
            shared.push(EtcdClient::connect(&spec.target).await?);
        }
    }
    let mut clients = Vec::with_capacity(spec.clients);
    for i in 0..spec.clients {
        let s = if shared.is_empty() { None } else { shared.get(i % shared.len()) };
        clients.push(connect(&spec, s).await.with_context(|| format!("client {i}"))?);
    }

    let now = Instant::now();
    let window = Arc::new(Window { start: now + spec.warmup, end: now + spec.warmup + spec.duration });
    let mut tasks = JoinSet::new();
    for (i, c) in clients.into_iter().enumerate() {
        tasks.spawn(client_loop(c, i, spec.clone(), value.clone(), window.clone()));
    }

    tokio::time::sleep_until(window.start.into()).await;
    let all0 = cpu::machine_busy_ticks();
    let gen0 = cpu::self_ticks()?;
    let srv0 = cpu::ticks_of(&spec.server_pids);
    let t0 = Instant::now();
    tokio::time::sleep_until(window.end.into()).await;
    let all1 = cpu::machine_busy_ticks();
    let gen1 = cpu::self_ticks()?;
    let srv1 = cpu::ticks_of(&spec.server_pids);
    let wall = t0.elapsed();

    let mut hist = new_histogram()?;
    let (mut ops, mut errors, mut first_error) = (0, 0, None);
    while let Some(joined) = tasks.join_next().await {
        let stats = joined.context("a client task panicked")??;
        hist.add(&stats.hist).context("merge histograms")?;
        ops += stats.ops;
        errors += stats.errors;
        if first_error.is_none() {
            first_error = stats.first_error;
        }
    }
    let gen_ticks = gen1.saturating_sub(gen0);
    let srv_ticks = match (srv0, srv1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let other_cpu_pct = match (all0, all1) {
        (Some(a), Some(b)) => {
            let ours = gen_ticks + srv_ticks.unwrap_or(0);
            Some(cpu::percent(b.saturating_sub(a).saturating_sub(ours), wall))
        }
        _ => None,
    };
    Ok(RunResult {
        system: spec.system,
        clients: spec.clients,
        ops,
        window: spec.duration,
        hist,
        errors,
        first_error,
        gen_cpu_pct: cpu::percent(gen_ticks, wall),
        server_cpu_pct: srv_ticks.map(|t| cpu::percent(t, wall)),
        other_cpu_pct,
    })
}
