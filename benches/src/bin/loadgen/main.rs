//! `durakv-loadgen`: the load generator of `make bench-cluster` (issue #17).
//!
//! A closed loop of C clients writing V-byte values, against durakv over RESP (`SET`) or against etcd
//! over its v3 gRPC API (`KV.Put`), always at the leader; a warm-up, then a measured window of fixed
//! length; throughput, p50/p99/p999/max latency and the generator's own CPU time. It does not depend on
//! the `durakv` crate, so building it never compiles RocksDB.
//!
//! ```text
//! durakv-loadgen cluster [flags]   start 3 durakv nodes and 3 etcd members on loopback, run every
//!                                  client count against both (alternating), print one table
//! durakv-loadgen run --system durakv|etcd --target HOST:PORT [flags]
//!                                  one run against a cluster that is already running
//! durakv-loadgen fsync [--dir DIR] the raw `write + fdatasync` latency in DIR
//! ```

mod cluster;
mod cpu;
mod etcd;
mod fsync;
mod load;
mod proto;
mod resp;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use load::{LoadSpec, System, max_ms, ms};

const USAGE: &str = "\
usage:
  durakv-loadgen cluster [flags]      3 durakv nodes and 3 etcd members on loopback, both driven by
                                      the same closed loop, alternating run by run; prints one table
      --durakv-bin PATH        the durakv binary (default: durakv on PATH)
      --etcd-bin PATH          the etcd binary (default: etcd on PATH)
      --clients LIST           client counts, comma-separated (default 1,16,64,256)
      --value-size BYTES       value size (default 256)
      --keys N                 keys are drawn uniformly from N (default 100000)
      --warmup SECS            warm-up before each measured window (default 3)
      --duration SECS          measured window of each run (default 10)
      --rounds N               rounds over every client count and both systems (default 2)
      --fsm-sync sync|nosync   passed to the durakv nodes (default: not passed, the node's own)
      --snapshot-every N       passed to the durakv nodes (default: the node's own)
      --systems LIST           durakv,etcd (default both)
      --dir DIR                parent of the temporary data directory (default: the system temp dir)
      --durakv-port P          durakv's RESP ports P..P+2, peer ports P+1000.. (default 26379)
      --etcd-port P            etcd's client ports P..P+2, peer ports P+100.. (default 23790)
      --etcd-conns N           HTTP/2 connections the etcd clients share (default: one per client)
      --fsync-samples N        raw fdatasync samples per round (default 1000)
      --label TEXT             printed in the table's heading (e.g. the git commit)
  durakv-loadgen run --system durakv|etcd --target HOST:PORT [--clients N] [--value-size B]
                     [--keys N] [--warmup S] [--duration S] [--etcd-conns N]
                                      one run against a running cluster (write to its leader)
  durakv-loadgen fsync [--dir DIR] [--value-size B] [--fsync-samples N]
                                      the raw write + fdatasync latency in DIR";

/// `--flag value` pairs.
struct Flags(BTreeMap<String, String>);

impl Flags {
    fn parse(args: &[String], known: &[&str]) -> Result<Self> {
        let mut map = BTreeMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else { bail!("unexpected argument {a:?}\n{USAGE}") };
            if !known.contains(&name) {
                bail!("unknown flag --{name}\n{USAGE}");
            }
            let v = it.next().with_context(|| format!("--{name} needs a value"))?;
            map.insert(name.to_string(), v.clone());
        }
        Ok(Flags(map))
    }

    fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("--{name} {v:?}: {e}")),
        }
    }

    fn opt<T: FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.0.get(name).map(|v| v.parse().map_err(|e| anyhow::anyhow!("--{name} {v:?}: {e}"))).transpose()
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn secs(&self, name: &str, default: f64) -> Result<Duration> {
        let v: f64 = self.get(name, default)?;
        if !(v.is_finite() && v >= 0.0) {
            bail!("--{name} must be a number of seconds");
        }
        Ok(Duration::from_secs_f64(v))
    }

    fn list<T: FromStr>(&self, name: &str, default: &str) -> Result<Vec<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.str(name)
            .unwrap_or(default)
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().map_err(|e| anyhow::anyhow!("--{name} {s:?}: {e}")))
            .collect()
    }
}

async fn interrupted() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("Ctrl-C handler")?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn cluster(args: &[String]) -> Result<()> {
    let f = Flags::parse(
        args,
        &[
            "durakv-bin",
            "etcd-bin",
            "clients",
            "value-size",
            "keys",
            "warmup",
            "duration",
            "rounds",
            "fsm-sync",
            "snapshot-every",
            "systems",
            "dir",
            "durakv-port",
            "etcd-port",
            "etcd-conns",
            "fsync-samples",
            "label",
        ],
    )?;
    let fsm_sync = f.str("fsm-sync").map(str::to_string);
    if let Some(m) = &fsm_sync
        && m != "sync"
        && m != "nosync"
    {
        bail!("--fsm-sync must be sync or nosync");
    }
    let systems = f
        .str("systems")
        .unwrap_or("durakv,etcd")
        .split(',')
        .map(|s| System::parse(s.trim()))
        .collect::<Result<Vec<_>>>()?;
    let o = cluster::Options {
        durakv_bin: PathBuf::from(f.str("durakv-bin").unwrap_or("durakv")),
        etcd_bin: PathBuf::from(f.str("etcd-bin").unwrap_or("etcd")),
        clients: f.list("clients", "1,16,64,256")?,
        value_size: f.get("value-size", 256)?,
        keys: f.get("keys", 100_000)?,
        warmup: f.secs("warmup", 3.0)?,
        duration: f.secs("duration", 10.0)?,
        rounds: f.get("rounds", 2)?,
        fsm_sync,
        snapshot_every: f.opt("snapshot-every")?,
        dir: f.opt("dir")?,
        durakv_port: f.get("durakv-port", 26379)?,
        etcd_port: f.get("etcd-port", 23790)?,
        etcd_conns: f.opt("etcd-conns")?,
        fsync_samples: f.get("fsync-samples", 1000)?,
        systems,
        label: f.str("label").unwrap_or("durakv").to_string(),
    };
    if o.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    cluster::run(o).await
}

async fn one_run(args: &[String]) -> Result<()> {
    let f = Flags::parse(
        args,
        &["system", "target", "clients", "value-size", "keys", "warmup", "duration", "etcd-conns"],
    )?;
    let spec = LoadSpec {
        system: System::parse(f.str("system").context("--system durakv|etcd is required")?)?,
        target: f.str("target").context("--target HOST:PORT is required")?.to_string(),
        clients: f.get("clients", 16)?,
        value_size: f.get("value-size", 256)?,
        keys: f.get("keys", 100_000)?,
        warmup: f.secs("warmup", 3.0)?,
        duration: f.secs("duration", 10.0)?,
        op_timeout: Duration::from_secs(10),
        etcd_conns: f.opt("etcd-conns")?,
        server_pids: Vec::new(),
    };
    if spec.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    let r = load::run(spec).await?;
    println!(
        "{} C={}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms, {} errors{}, generator CPU {:.1} % of one core",
        r.system,
        r.clients,
        r.ops_per_sec(),
        ms(&r.hist, 0.5),
        ms(&r.hist, 0.99),
        ms(&r.hist, 0.999),
        max_ms(&r.hist),
        r.errors,
        r.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        r.gen_cpu_pct,
    );
    Ok(())
}

fn fsync_only(args: &[String]) -> Result<()> {
    let f = Flags::parse(args, &["dir", "value-size", "fsync-samples"])?;
    let dir: PathBuf = f.opt("dir")?.unwrap_or_else(std::env::temp_dir);
    let size = f.get("value-size", 256)?;
    let h = fsync::measure(&dir, size, f.get("fsync-samples", 1000)?, Duration::from_secs(30))?;
    println!(
        "write {size} B + fdatasync in {}: median {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
        dir.display(),
        ms(&h, 0.5),
        ms(&h, 0.99),
        max_ms(&h),
        h.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the chain of causes on one line, without the backtrace anyhow's Debug would add
            // under RUST_BACKTRACE.
            eprintln!("durakv-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else { bail!("{USAGE}") };
    if cmd == "fsync" {
        return fsync_only(rest);
    }
    if cmd == "-h" || cmd == "--help" || cmd == "help" {
        println!("{USAGE}");
        return Ok(());
    }
    // One thread: the generator's CPU is one core at most, and the report says how much of it it used.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(async {
        let work = async {
            match cmd.as_str() {
                "cluster" => cluster(rest).await,
                "run" => one_run(rest).await,
                other => bail!("unknown command {other:?}\n{USAGE}"),
            }
        };
        tokio::select! {
            r = work => r,
            r = interrupted() => {
                r?;
                bail!("interrupted: stopping the servers and removing the data directory")
            }
        }
    })
}
