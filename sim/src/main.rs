//! `durakv-sim`: run a scenario, check a seed's determinism, or fuzz many seeds, in the madsim world.
//! The simulation exists only in the `--cfg madsim` build (`make sim-run`, `make fuzz`); a normal
//! build of this binary says how to get that one.
//!
//! Exit codes: 0 every run passed; 1 an invariant was violated (the reproduce command is printed);
//! 2 bad usage or a scenario file that does not load.

use std::process::ExitCode;

const USAGE: &str = "usage:
  durakv-sim run <scenario.toml> [--seed N]          run the scenario's seeds, or one seed
  durakv-sim check-determinism <scenario.toml> --seed N   run twice, compare the event traces
  durakv-sim fuzz <scenario.toml>... [--seeds N] [--shard I/N] [--out DIR]
                                                    swarm: each seed varies cluster size and fault times";

#[cfg(not(madsim))]
fn main() -> ExitCode {
    eprintln!(
        "durakv-sim runs only in the simulation build: use `make sim-run SCENARIO=… SEED=…` or `make fuzz`."
    );
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

#[cfg(madsim)]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::main(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("durakv-sim: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(madsim)]
mod cli {
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;

    use durakv_sim::harness::{RunResult, run};
    use durakv_sim::scenario::Scenario;
    use durakv_sim::{derive_seed, rng_for};
    use rand::Rng;

    fn flag(args: &[String], name: &str) -> Option<String> {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
    }

    fn load(path: &str) -> Result<Scenario, String> {
        Scenario::load(Path::new(path)).map_err(|e| e.to_string())
    }

    fn report(file: &str, r: &RunResult, out: Option<&Path>) -> bool {
        let s = &r.summary;
        match &r.failure {
            None => {
                println!(
                    "ok   {} seed {}: {} ok / {} fail / {} unknown ops, {} faults, {} restarts, applied {}, digest {:016x}",
                    s.scenario,
                    s.seed,
                    s.ops_ok,
                    s.ops_fail,
                    s.ops_unknown,
                    s.faults.len(),
                    s.restarts,
                    s.applied_index,
                    s.digest
                );
                true
            }
            Some(f) => {
                println!("FAIL {} seed {}: {} violated: {}", s.scenario, s.seed, f.invariant, f.explanation);
                println!("     reproduce: make sim-run SCENARIO={file} SEED={}", s.seed);
                if let Some(dir) = out {
                    let path = dir.join(format!("{}-seed-{}.trace.jsonl", s.scenario, s.seed));
                    let lines: Vec<String> =
                        r.trace.iter().map(|e| format!("{{\"event\":{:?}}}", e)).collect();
                    if std::fs::create_dir_all(dir)
                        .and_then(|_| std::fs::write(&path, lines.join("\n") + "\n"))
                        .is_ok()
                    {
                        println!("     trace: {}", path.display());
                    }
                }
                false
            }
        }
    }

    pub fn main(args: &[String]) -> Result<ExitCode, String> {
        let out = flag(args, "--out").map(PathBuf::from).or_else(|| Some(PathBuf::from("sim-failures")));
        match args.first().map(String::as_str) {
            Some("run") => {
                let file = args.get(1).ok_or("run needs a scenario file")?;
                let scenario = load(file)?;
                let seeds = match flag(args, "--seed") {
                    Some(s) => vec![s.parse::<u64>().map_err(|_| format!("--seed {s:?} is not a number"))?],
                    None => scenario.seeds.clone(),
                };
                let mut ok = true;
                for seed in seeds {
                    ok &= report(file, &run(&scenario, seed), out.as_deref());
                }
                Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
            Some("check-determinism") => {
                let file = args.get(1).ok_or("check-determinism needs a scenario file")?;
                let scenario = load(file)?;
                let seed: u64 = flag(args, "--seed")
                    .ok_or("--seed is required")?
                    .parse()
                    .map_err(|_| "--seed is not a number")?;
                let (a, b) = (run(&scenario, seed), run(&scenario, seed));
                match a.trace.iter().zip(&b.trace).position(|(x, y)| x != y) {
                    None if a.trace.len() == b.trace.len() => {
                        println!("deterministic: {} events, identical in both runs", a.trace.len());
                        Ok(ExitCode::SUCCESS)
                    }
                    at => {
                        let i = at.unwrap_or(a.trace.len().min(b.trace.len()));
                        println!(
                            "NOT deterministic: the traces part at event {i}:\n  first:  {:?}\n  second: {:?}",
                            a.trace.get(i),
                            b.trace.get(i)
                        );
                        Ok(ExitCode::from(1))
                    }
                }
            }
            Some("fuzz") => {
                let files: Vec<&String> = args[1..].iter().take_while(|a| !a.starts_with("--")).collect();
                if files.is_empty() {
                    return Err("fuzz needs at least one scenario file to vary".into());
                }
                let scenarios: Vec<(String, Scenario)> =
                    files.iter().map(|f| load(f).map(|s| (f.to_string(), s))).collect::<Result<_, _>>()?;
                let seeds: u64 = flag(args, "--seeds")
                    .unwrap_or_else(|| "100".into())
                    .parse()
                    .map_err(|_| "--seeds is not a number")?;
                let (shard, shards) = match flag(args, "--shard") {
                    Some(s) => {
                        let (i, n) = s.split_once('/').ok_or("--shard is I/N")?;
                        (
                            i.parse::<u64>().map_err(|_| "--shard I")?,
                            n.parse::<u64>().map_err(|_| "--shard N")?.max(1),
                        )
                    }
                    None => (0, 1),
                };
                let started = std::time::Instant::now();
                let (mut ran, mut failed) = (0u64, 0u64);
                for seed in (0..seeds).filter(|s| s % shards == shard) {
                    let (file, base) =
                        &scenarios[(derive_seed(seed, "fuzz/scenario") % scenarios.len() as u64) as usize];
                    let scenario = swarm(base, seed);
                    let r = run(&scenario, seed);
                    ran += 1;
                    if r.failure.is_some() {
                        failed += 1;
                        report(file, &r, out.as_deref());
                    }
                    let rate = ran as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    eprint!("\r[{ran}/{}] {rate:.2} seeds/s, {failed} failed ", seeds / shards);
                }
                eprintln!();
                Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
            _ => Err("unknown command".into()),
        }
    }

    /// Swarm testing: each seed draws its own cluster size and shifts every fault's time.
    fn swarm(base: &Scenario, seed: u64) -> Scenario {
        let mut rng = rng_for(seed, "fuzz/swarm");
        let mut s = base.clone();
        s.cluster.nodes = if rng.random_bool(0.3) { 5 } else { 3 };
        for f in &mut s.faults {
            let jitter = rng.random_range(0..=f.at_ms / 2);
            f.at_ms = f.at_ms / 2 + jitter + rng.random_range(0..1000);
        }
        s.seeds = vec![seed];
        s
    }
}
