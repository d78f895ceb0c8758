//! `durakv-loadgen cluster`: start a 3-node durakv cluster and a 3-node etcd cluster on loopback,
//! drive both with the same closed loop, alternating the two systems run by run, and print one table.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

use crate::etcd::EtcdClient;
use crate::fsync;
use crate::load::{self, LoadSpec, RunResult, System, max_ms, ms, new_histogram};
use crate::resp::RespConn;

#[derive(Debug, Clone)]
pub struct Options {
    pub durakv_bin: PathBuf,
    pub etcd_bin: PathBuf,
    pub clients: Vec<usize>,
    pub value_size: usize,
    pub keys: u64,
    pub warmup: Duration,
    pub duration: Duration,
    pub rounds: usize,
    /// Passed to the nodes as `--fsm-sync` (`None`: the node's own default).
    pub fsm_sync: Option<String>,
    pub snapshot_every: Option<u64>,
    /// Parent of the temporary data directory (default: the system temp dir).
    pub dir: Option<PathBuf>,
    /// durakv's first RESP port; its peer ports are 1000 above.
    pub durakv_port: u16,
    /// etcd's first client port; its peer ports are 100 above.
    pub etcd_port: u16,
    pub etcd_conns: Option<usize>,
    pub fsync_samples: usize,
    pub systems: Vec<System>,
    /// Printed in the report's heading (the Makefile passes the git commit).
    pub label: String,
}

const NODES: u16 = 3;

/// A started server process, killed when dropped.
struct Proc {
    name: String,
    system: System,
    child: Child,
    log: PathBuf,
}

/// Every process the benchmark started; dropping it kills and reaps them all.
#[derive(Default)]
struct Procs(Vec<Proc>);

impl Procs {
    fn spawn(&mut self, name: String, system: System, mut cmd: Command, log: PathBuf) -> Result<()> {
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone().context("log file handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name} ({:?})", cmd.get_program()))?;
        self.0.push(Proc { name, system, child, log });
        Ok(())
    }

    fn pids(&self, system: System) -> Vec<u32> {
        self.0.iter().filter(|p| p.system == system).map(|p| p.child.id()).collect()
    }

    /// An error naming the first process that has exited, with the end of its log.
    fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.0 {
            if let Some(status) = p.child.try_wait().with_context(|| format!("wait for {}", p.name))? {
                bail!(
                    "{} exited ({status}); the end of its log {}:\n{}",
                    p.name,
                    p.log.display(),
                    tail(&p.log, 20)
                );
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            let _ = p.child.kill();
        }
        for p in &mut self.0 {
            let _ = p.child.wait();
        }
    }
}

fn tail(path: &Path, n: usize) -> String {
    let Ok(f) = File::open(path) else { return format!("(cannot open {})", path.display()) };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The processes and their data; fields drop in order, so the processes die before the directory goes.
struct Bench {
    procs: Procs,
    dir: tempfile::TempDir,
}

fn durakv_addrs(o: &Options) -> Vec<(String, String)> {
    (0..NODES)
        .map(|i| {
            (format!("127.0.0.1:{}", o.durakv_port + 1000 + i), format!("127.0.0.1:{}", o.durakv_port + i))
        })
        .collect()
}

fn etcd_addrs(o: &Options) -> Vec<(String, String)> {
    (0..NODES)
        .map(|i| (format!("127.0.0.1:{}", o.etcd_port + 100 + i), format!("127.0.0.1:{}", o.etcd_port + i)))
        .collect()
}

fn check_ports_free(addrs: &[(String, String)]) -> Result<()> {
    for (peer, client) in addrs {
        for a in [peer, client] {
            TcpListener::bind(a.as_str()).with_context(|| {
                format!(
                    "port {a} is taken: stop what holds it, or choose others (--durakv-port, --etcd-port)"
                )
            })?;
        }
    }
    Ok(())
}

fn start_durakv(o: &Options, bench: &mut Bench) -> Result<()> {
    let addrs = durakv_addrs(o);
    let peers: String =
        addrs.iter().enumerate().map(|(i, (peer, resp))| format!("{}={peer},{resp};", i + 1)).collect();
    for i in 1..=addrs.len() {
        let data = bench.dir.path().join(format!("durakv-{i}"));
        let mut cmd = Command::new(&o.durakv_bin);
        cmd.arg("--id").arg(i.to_string()).arg("--peers").arg(&peers).arg("--data-dir").arg(&data);
        if let Some(mode) = &o.fsm_sync {
            cmd.arg("--fsm-sync").arg(mode);
        }
        if let Some(n) = o.snapshot_every {
            cmd.arg("--snapshot-every").arg(n.to_string());
        }
        let log = bench.dir.path().join(format!("durakv-{i}.log"));
        bench.procs.spawn(format!("durakv node {i}"), System::Durakv, cmd, log)?;
    }
    Ok(())
}

fn start_etcd(o: &Options, bench: &mut Bench) -> Result<()> {
    let addrs = etcd_addrs(o);
    let initial: Vec<String> =
        addrs.iter().enumerate().map(|(i, (peer, _))| format!("e{}=http://{peer}", i + 1)).collect();
    let token = format!("durakv-bench-{}", std::process::id());
    for (i, (peer, client)) in addrs.iter().enumerate() {
        let name = format!("e{}", i + 1);
        let mut cmd = Command::new(&o.etcd_bin);
        cmd.arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(bench.dir.path().join(format!("etcd-{}", i + 1)))
            .arg("--listen-client-urls")
            .arg(format!("http://{client}"))
            .arg("--advertise-client-urls")
            .arg(format!("http://{client}"))
            .arg("--listen-peer-urls")
            .arg(format!("http://{peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{peer}"))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&token)
            .arg("--logger")
            .arg("zap");
        let log = bench.dir.path().join(format!("etcd-{}.log", i + 1));
        bench.procs.spawn(format!("etcd member {name}"), System::Etcd, cmd, log)?;
    }
    Ok(())
}

/// Who leads, as one system's nodes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leader {
    /// The address the generator writes to.
    addr: String,
    term: u64,
}

/// The durakv leader: the first node that names one in `INFO raft`.
async fn durakv_leader(o: &Options) -> Result<Leader> {
    let mut last = None;
    for (_, resp) in durakv_addrs(o) {
        let info = async { RespConn::connect(&resp).await?.info_raft().await };
        match tokio::time::timeout(Duration::from_secs(5), info).await {
            Ok(Ok(m)) => {
                let addr = m.get("leader_resp_addr").cloned().unwrap_or_default();
                let term = m.get("term").and_then(|t| t.parse().ok()).unwrap_or(0);
                if !addr.is_empty() {
                    return Ok(Leader { addr, term });
                }
                last = Some(format!("{resp}: no leader yet (term {term})"));
            }
            Ok(Err(e)) => last = Some(format!("{e:#}")),
            Err(_) => last = Some(format!("{resp}: INFO timed out")),
        }
    }
    bail!("no durakv node names a leader: {}", last.unwrap_or_default())
}

/// The etcd leader: the member whose id every answering member's Status names as leader.
async fn etcd_leader(o: &Options) -> Result<Leader> {
    let mut ids = BTreeMap::new();
    let mut named = None;
    let mut last = None;
    for (_, client) in etcd_addrs(o) {
        let status = async { EtcdClient::connect(&client).await?.status().await };
        match tokio::time::timeout(Duration::from_secs(5), status).await {
            Ok(Ok(s)) => {
                ids.insert(s.header.member_id, (client.clone(), s.raft_term));
                if s.leader != 0 {
                    named = Some(s.leader);
                } else {
                    last = Some(format!("{client}: no leader yet"));
                }
            }
            Ok(Err(e)) => last = Some(format!("{e:#}")),
            Err(_) => last = Some(format!("{client}: Status timed out")),
        }
    }
    if let Some(id) = named
        && let Some((addr, term)) = ids.get(&id)
    {
        return Ok(Leader { addr: addr.clone(), term: *term });
    }
    bail!("no etcd leader found: {}", last.unwrap_or_else(|| "the named leader did not answer".into()))
}

async fn leader(o: &Options, system: System) -> Result<Leader> {
    match system {
        System::Durakv => durakv_leader(o).await,
        System::Etcd => etcd_leader(o).await,
    }
}

/// Waits until `system` has a leader that takes a write.
async fn wait_ready(o: &Options, bench: &mut Bench, system: System) -> Result<Leader> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        bench.procs.check_alive()?;
        let attempt = async {
            let l = leader(o, system).await?;
            match system {
                System::Durakv => RespConn::connect(&l.addr).await?.set(b"bench:ready", b"1").await?,
                System::Etcd => {
                    EtcdClient::connect(&l.addr).await?.put(b"bench:ready", b"1").await?;
                }
            }
            anyhow::Ok(l)
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(l)) => return Ok(l),
            Ok(Err(e)) if Instant::now() >= deadline => {
                return Err(e.context(format!("{system} never became ready")));
            }
            Err(_) if Instant::now() >= deadline => bail!("{system} never became ready (timed out)"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Drops etcd's key history (the revisions every Put keeps) between runs, as a production etcd's
/// auto-compaction would: otherwise its database grows by every write of the benchmark.
async fn compact_etcd(l: &Leader) -> Result<()> {
    let mut c = EtcdClient::connect(&l.addr).await?;
    let rev = c.status().await?.header.revision;
    c.compact(rev).await
}

fn etcd_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "etcd (version unknown)".into())
}

struct Row {
    round: usize,
    result: RunResult,
    leader: String,
    note: String,
}

pub async fn run(o: Options) -> Result<()> {
    if o.clients.is_empty() || o.rounds == 0 || o.systems.is_empty() {
        bail!("nothing to run: need at least one client count, one round and one system");
    }
    let dir = match &o.dir {
        Some(d) => tempfile::Builder::new().prefix("durakv-bench-cluster-").tempdir_in(d),
        None => tempfile::Builder::new().prefix("durakv-bench-cluster-").tempdir(),
    }
    .context("create the benchmark's data directory")?;
    let mut bench = Bench { procs: Procs::default(), dir };
    eprintln!("bench-cluster: data and logs in {} (removed at the end)", bench.dir.path().display());
    let result = measure(&o, &mut bench).await;
    if result.is_err() {
        // The directory (and the logs) go with `bench`: show the end of each log first.
        for p in &bench.procs.0 {
            eprintln!("--- the end of {}'s log ({}):\n{}", p.name, p.log.display(), tail(&p.log, 8));
        }
    }
    result
}

async fn measure(o: &Options, bench: &mut Bench) -> Result<()> {
    let has = |s| o.systems.contains(&s);
    if has(System::Durakv) {
        check_ports_free(&durakv_addrs(o))?;
        start_durakv(o, bench)?;
    }
    if has(System::Etcd) {
        check_ports_free(&etcd_addrs(o))?;
        start_etcd(o, bench)?;
    }
    for &s in &o.systems {
        let l = wait_ready(o, bench, s).await?;
        eprintln!("bench-cluster: {s} ready, leader {} (term {})", l.addr, l.term);
    }

    let mut rows: Vec<Row> = Vec::new();
    let mut disk = new_histogram()?;
    let started = Instant::now();
    for round in 0..o.rounds {
        let h = fsync::measure(bench.dir.path(), o.value_size, o.fsync_samples, Duration::from_secs(5))?;
        eprintln!(
            "bench-cluster: round {}: write {} B + fdatasync: median {:.3} ms, p99 {:.3} ms ({} samples)",
            round + 1,
            o.value_size,
            ms(&h, 0.5),
            ms(&h, 0.99),
            h.len()
        );
        disk.add(&h).context("merge histograms")?;
        for &c in &o.clients {
            // Alternate which system goes first, so neither always follows the other's run.
            let mut order = o.systems.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for system in order {
                bench.procs.check_alive()?;
                let before = leader(o, system).await?;
                let spec = LoadSpec {
                    system,
                    target: before.addr.clone(),
                    clients: c,
                    value_size: o.value_size,
                    keys: o.keys,
                    warmup: o.warmup,
                    duration: o.duration,
                    op_timeout: Duration::from_secs(10),
                    etcd_conns: o.etcd_conns,
                    server_pids: bench.procs.pids(system),
                };
                let result = load::run(spec).await.with_context(|| format!("{system} with {c} clients"))?;
                bench.procs.check_alive()?;
                let after = leader(o, system).await?;
                let mut note = String::new();
                if after != before {
                    note = format!(
                        "leader {} term {} -> {} term {}",
                        before.addr, before.term, after.addr, after.term
                    );
                }
                if let Some(e) = &result.first_error {
                    if !note.is_empty() {
                        note.push_str("; ");
                    }
                    note.push_str(&format!("first error: {e}"));
                }
                eprintln!(
                    "bench-cluster: round {} C={c:<3} {system:<6} {:>8} ops/s  p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2} ms  errors {}  CPU: generator {:.1} %, servers {}, rest of the machine {}{}",
                    round + 1,
                    thousands(result.ops_per_sec()),
                    ms(&result.hist, 0.5),
                    ms(&result.hist, 0.99),
                    ms(&result.hist, 0.999),
                    max_ms(&result.hist),
                    result.errors,
                    result.gen_cpu_pct,
                    pct(result.server_cpu_pct),
                    pct(result.other_cpu_pct),
                    if note.is_empty() { String::new() } else { format!("  ({note})") },
                );
                if system == System::Etcd {
                    compact_etcd(&after).await.context("compact etcd's history between runs")?;
                }
                rows.push(Row { round, result, leader: after.addr, note });
            }
        }
    }
    eprintln!("bench-cluster: measured in {:.0} s; stopping the clusters", started.elapsed().as_secs_f64());
    print!("{}", report(o, &rows, &disk)?);
    Ok(())
}

fn pct(p: Option<f64>) -> String {
    p.map(|p| format!("{p:.0} %")).unwrap_or_else(|| "?".into())
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    let days =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One system at one client count, over every round.
struct Agg {
    mean_ops: f64,
    min_ops: f64,
    max_ops: f64,
    hist: Histogram<u64>,
    errors: u64,
    gen_cpu_max: f64,
}

fn aggregate(rows: &[Row], system: System, clients: usize) -> Result<Option<Agg>> {
    let runs: Vec<&RunResult> =
        rows.iter().map(|r| &r.result).filter(|r| r.system == system && r.clients == clients).collect();
    if runs.is_empty() {
        return Ok(None);
    }
    let mut hist = new_histogram()?;
    for r in &runs {
        hist.add(&r.hist).context("merge histograms")?;
    }
    let ops: Vec<f64> = runs.iter().map(|r| r.ops_per_sec()).collect();
    Ok(Some(Agg {
        mean_ops: ops.iter().sum::<f64>() / ops.len() as f64,
        min_ops: ops.iter().copied().fold(f64::INFINITY, f64::min),
        max_ops: ops.iter().copied().fold(0.0, f64::max),
        hist,
        errors: runs.iter().map(|r| r.errors).sum(),
        gen_cpu_max: runs.iter().map(|r| r.gen_cpu_pct).fold(0.0, f64::max),
    }))
}

fn report(o: &Options, rows: &[Row], disk: &Histogram<u64>) -> Result<String> {
    use std::fmt::Write as _;
    let mut s = String::new();
    let cell = |a: &Option<Agg>, f: &dyn Fn(&Agg) -> String| a.as_ref().map(f).unwrap_or_else(|| "–".into());
    writeln!(s)?;
    writeln!(
        s,
        "### durakv against etcd, 3 nodes each on loopback ({}; {}; {})",
        today(),
        o.label,
        etcd_version(&o.etcd_bin)
    )?;
    writeln!(s)?;
    writeln!(
        s,
        "Closed loop, V = {} B, keys drawn from {}, {} s warm-up then {} s measured per run, {} round(s) alternating the systems; durakv {}{}.",
        o.value_size,
        thousands(o.keys as f64),
        o.warmup.as_secs_f64(),
        o.duration.as_secs_f64(),
        o.rounds,
        o.fsm_sync
            .as_ref()
            .map(|m| format!("--fsm-sync {m}"))
            .unwrap_or_else(|| "with its default --fsm-sync".into()),
        o.snapshot_every.map(|n| format!(" --snapshot-every {n}")).unwrap_or_default(),
    )?;
    writeln!(s)?;
    writeln!(
        s,
        "| clients | durakv ops/s | etcd ops/s | ratio | durakv p99 ms | etcd p99 ms | durakv max ms | etcd max ms |"
    )?;
    writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut gen_cpu_max: f64 = 0.0;
    let mut errors = Vec::new();
    for &c in &o.clients {
        let d = aggregate(rows, System::Durakv, c)?;
        let e = aggregate(rows, System::Etcd, c)?;
        for (sys, a) in [(System::Durakv, &d), (System::Etcd, &e)] {
            if let Some(a) = a {
                gen_cpu_max = gen_cpu_max.max(a.gen_cpu_max);
                if a.errors > 0 {
                    errors.push(format!("{sys} C={c}: {} failed writes", a.errors));
                }
            }
        }
        let ratio = match (&d, &e) {
            (Some(d), Some(e)) if e.mean_ops > 0.0 => format!("{:.2}×", d.mean_ops / e.mean_ops),
            _ => "–".into(),
        };
        let ops = |a: &Agg| {
            if o.rounds > 1 {
                format!("{} ({}–{})", thousands(a.mean_ops), thousands(a.min_ops), thousands(a.max_ops))
            } else {
                thousands(a.mean_ops)
            }
        };
        writeln!(
            s,
            "| {c} | {} | {} | {ratio} | {} | {} | {} | {} |",
            cell(&d, &ops),
            cell(&e, &ops),
            cell(&d, &|a| format!("{:.2}", ms(&a.hist, 0.99))),
            cell(&e, &|a| format!("{:.2}", ms(&a.hist, 0.99))),
            cell(&d, &|a| format!("{:.1}", max_ms(&a.hist))),
            cell(&e, &|a| format!("{:.1}", max_ms(&a.hist))),
        )?;
    }
    writeln!(s)?;
    writeln!(
        s,
        "ops/s: the mean of the rounds (lowest–highest run in brackets); p99 over every write of all rounds (one merged histogram); max: the slowest write of any round."
    )?;
    writeln!(s)?;
    let single = |sys| -> Result<Option<f64>> { Ok(aggregate(rows, sys, 1)?.map(|a| ms(&a.hist, 0.5))) };
    let disk_p50 = ms(disk, 0.5);
    let vs = |x: Option<f64>| match x {
        Some(x) if disk_p50 > 0.0 => format!("{x:.2} ms ({:.1}× the raw fdatasync)", x / disk_p50),
        Some(x) => format!("{x:.2} ms"),
        None => "not measured".into(),
    };
    writeln!(
        s,
        "Single client (C = 1), median write latency: durakv {}, etcd {}; raw `write {} B + fdatasync` appending to a file in the same directory, measured in the same run: median {:.3} ms, p99 {:.3} ms ({} samples).",
        vs(single(System::Durakv)?),
        vs(single(System::Etcd)?),
        o.value_size,
        disk_p50,
        ms(disk, 0.99),
        disk.len(),
    )?;
    writeln!(s)?;
    writeln!(
        s,
        "The generator's own CPU: at most {gen_cpu_max:.1} % of one core in any run (one thread; it is not the bottleneck while this stays well below 100 %)."
    )?;
    let others: Vec<f64> = rows.iter().filter_map(|r| r.result.other_cpu_pct).collect();
    if !others.is_empty() {
        writeln!(
            s,
            "The rest of the machine (other processes, the idle other cluster, kernel work charged to no process): {:.0}–{:.0} % of one core over the measured windows.",
            others.iter().copied().fold(f64::INFINITY, f64::min),
            others.iter().copied().fold(0.0, f64::max),
        )?;
    }
    let notes: Vec<String> = rows
        .iter()
        .filter(|r| !r.note.is_empty())
        .map(|r| format!("round {} {} C={}: {}", r.round + 1, r.result.system, r.result.clients, r.note))
        .collect();
    writeln!(s)?;
    if errors.is_empty() && notes.is_empty() {
        writeln!(s, "No failed writes and no leader change in any run.")?;
    } else {
        for e in errors.iter().chain(&notes) {
            writeln!(s, "- {e}")?;
        }
    }
    writeln!(s)?;
    writeln!(s, "Every run:")?;
    writeln!(s)?;
    writeln!(
        s,
        "| round | clients | system | ops/s | p50 ms | p99 ms | p999 ms | max ms | errors | generator CPU | servers' CPU | rest of the machine | leader |"
    )?;
    writeln!(s, "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")?;
    for r in rows {
        let x = &r.result;
        writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {:.1} % | {} | {} | {} |",
            r.round + 1,
            x.clients,
            x.system,
            thousands(x.ops_per_sec()),
            ms(&x.hist, 0.5),
            ms(&x.hist, 0.99),
            ms(&x.hist, 0.999),
            max_ms(&x.hist),
            x.errors,
            x.gen_cpu_pct,
            pct(x.server_cpu_pct),
            pct(x.other_cpu_pct),
            r.leader,
        )?;
    }
    writeln!(s)?;
    writeln!(
        s,
        "CPU over each measured window, in % of one core (this machine has {}): the generator; the three processes of the system under load, summed; and the rest of the machine (other processes, the other system's idle cluster, the kernel's work not charged to a process), which shows when a run shared the machine.",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    )?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }

    #[test]
    fn date_is_iso() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
