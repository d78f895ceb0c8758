//! `durakv-sim`: run a scenario, check a seed's determinism, or fuzz many seeds, in the madsim world.
//! The simulation exists only in the `--cfg madsim` build (`make sim-run`, `make fuzz`); a normal
//! build of this binary says how to get that one.
//!
//! Exit codes: 0 every run passed; 1 an invariant was violated (the reproduce command is printed);
//! 2 bad usage or a scenario file that does not load.

use std::process::ExitCode;

const USAGE: &str = "usage:
  durakv-sim run <scenario.toml> [--seed N] [--swarm] [--trace] [--canary NAME] [--out DIR]
                              run the scenario's seeds, or one seed (--swarm: the variant fuzz ran;
                              --trace: print the event trace; --canary: re-introduce that historic bug)
  durakv-sim check-determinism <scenario.toml> --seed N [--swarm]
                              run twice, compare the event traces, histories and disk images
  durakv-sim fuzz <scenario.toml>... [--seeds N | --time D] [--start S] [--shard I/N] [--out DIR]
                              swarm: each seed draws cluster size, sync mode, workload and fault mix
                              (D: 90s, 10m, 1h; failing seeds and their traces go to DIR); ends with
                              a coverage table of the faults, failpoints, fault paths and checks
  durakv-sim bench [--seeds N] [--start S]
                              simulated seconds per wall second on the standard scenario, and swarm
                              seeds per second over every scenario (seeds S..S+N, default 0..40)
  durakv-sim canaries [--seeds N] [--all]
                              the mutation score: each canary against the swarm variants of its
                              scenario (--all: of every scenario, as fuzz rotates), up to N seeds
  durakv-sim explain <scenario.toml> --seed N [--swarm] [--canary NAME] [--write FILE]
                              run one seed and write a self-contained HTML timeline of it (servers,
                              roles, faults, client operations, the violation) to FILE (default
                              sim-failures/<scenario>-seed-N.html); fuzz writes one for every failure
  durakv-sim shrink <scenario.toml> --seed N [--swarm] [--canary NAME] [--runs R] [--write FILE]
                              delta-debug a failing seed's scenario down to a smaller one that fails
                              the same invariant (at most R runs, default 300); prints the before/after
                              table and writes the shrunk scenario file (default sim-failures/…)";

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
    tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::main(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("durakv-sim: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Keep freed memory in the process instead of handing it back to the kernel.
///
/// A run allocates and frees many large buffers (values of up to 256 KiB copied through raft, the
/// transport, the WAL and the engine; SimFs file images of several MiB that grow and are cloned).
/// By default glibc serves every block above a (dynamic) threshold with its own `mmap` and trims
/// the heap's top whenever 128 KiB are free there, so each such buffer comes back as fresh pages
/// and is paid for again in page faults (about 15 % of a run's CPU samples, kernel time). With
/// these settings the heap only grows, to the run's peak (tens of MiB), and its pages are reused.
/// Which addresses malloc returns is no input to the simulation, so no seed changes.
///
/// Called first thing in `main`, before any thread exists (mallopt's parameters are global).
#[cfg(madsim)]
#[allow(unsafe_code)] // the one FFI call; nothing else in this crate is unsafe
fn tune_allocator() {
    // SAFETY: mallopt only sets malloc's parameters; no other thread runs yet. A rejected value
    // (it returns 0) leaves glibc's default, which is slower but just as correct.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit);
        // setting it also switches off the dynamic threshold.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// `println!` that ignores a closed stdout (`durakv-sim run … | head` must not panic).
#[cfg(madsim)]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[cfg(madsim)]
mod cli {
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;

    use durakv_sim::fuzz::{fuzz, reproduce_command};
    use durakv_sim::harness::{RunOptions, RunResult, Verdict, run, run_with};
    use durakv_sim::scenario::Scenario;
    use durakv_sim::swarm::swarm;

    fn flag(args: &[String], name: &str) -> Option<String> {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
    }

    fn load(path: &str) -> Result<Scenario, String> {
        Scenario::load(Path::new(path)).map_err(|e| e.to_string())
    }

    /// A JSON string literal.
    fn json_string(text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 2);
        out.push('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// One trace event (`"<ms> <text>"`) as a JSON line.
    fn trace_line(event: &str) -> String {
        let (t, text) = event.trim_start().split_once(' ').unwrap_or(("0", event));
        format!("{{\"t_ms\":{},\"event\":{}}}", t.parse::<u64>().unwrap_or(0), json_string(text))
    }

    /// Write the run's trace as JSON lines to `dir`, the last line saying why it was kept.
    fn write_trace(dir: &Path, r: &RunResult, last: String) {
        let s = &r.summary;
        let path = dir.join(format!("{}-seed-{}.trace.jsonl", s.scenario, s.seed));
        let mut lines: Vec<String> = r.trace.iter().map(|e| trace_line(e)).collect();
        lines.push(last);
        match std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, lines.join("\n") + "\n")) {
            Ok(()) => out!("     trace: {}", path.display()),
            Err(e) => out!("     trace not written to {}: {e}", path.display()),
        }
    }

    /// Print one run's verdict; all but a pass also get the reproduce command, and failures and
    /// undecided runs, with `out`, their trace.
    fn report(file: &str, r: &RunResult, out: Option<&Path>, swarm: bool) {
        let s = &r.summary;
        match &r.verdict {
            Verdict::Pass => {
                out!(
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
                out!("     {}", fingerprints(r));
            }
            Verdict::Vacuous => {
                out!(
                    "VACUOUS {} seed {}: no client operation succeeded ({} fail / {} unknown), so nothing was checked (not a failure)",
                    s.scenario,
                    s.seed,
                    s.ops_fail,
                    s.ops_unknown
                );
                out!("     reproduce: {}", reproduce_command(file, s.seed, swarm));
            }
            Verdict::Undecided(why) => {
                out!("UNDECIDED {} seed {}: {why} (not a violation, not a pass)", s.scenario, s.seed);
                out!("     reproduce: {}", reproduce_command(file, s.seed, swarm));
                if let Some(dir) = out {
                    write_trace(dir, r, format!("{{\"undecided\":{}}}", json_string(why)));
                }
            }
            Verdict::Fail(f) => {
                out!("FAIL {} seed {}: {} violated: {}", s.scenario, s.seed, f.invariant, f.explanation);
                out!("     reproduce: {}", reproduce_command(file, s.seed, swarm));
                if let Some(dir) = out {
                    write_trace(
                        dir,
                        r,
                        format!(
                            "{{\"violated\":{},\"explanation\":{}}}",
                            json_string(f.invariant),
                            json_string(&f.explanation)
                        ),
                    );
                }
            }
        }
    }

    /// The run's determinism fingerprints: the history hash and each server disk's hash.
    fn fingerprints(r: &RunResult) -> String {
        let disks: Vec<String> =
            r.summary.disk_hashes.iter().map(|(id, h)| format!("{id}:{h:016x}")).collect();
        format!("history {:016x}, disks {}", r.summary.history_hash, disks.join(" "))
    }

    /// `90s`, `10m`, `2h`, or plain seconds.
    fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
        let bad = || format!("--time {text:?} is not a duration like 90s, 10m or 1h");
        let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let secs = match unit {
            "" | "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => return Err(bad()),
        };
        Ok(std::time::Duration::from_secs(secs))
    }

    /// `<cmd> <scenario.toml> --seed N [--swarm]`: the file, the scenario the seed runs (the swarm
    /// variant with `--swarm`), the seed, and whether it was swarmed.
    fn seeded_scenario<'a>(
        args: &'a [String],
        cmd: &str,
    ) -> Result<(&'a String, Scenario, u64, bool), String> {
        let file = args.get(1).ok_or(format!("{cmd} needs a scenario file"))?;
        let base = load(file)?;
        let seed: u64 = flag(args, "--seed")
            .ok_or(format!("{cmd} needs --seed"))?
            .parse()
            .map_err(|_| "--seed is not a number")?;
        let swarmed = args.iter().any(|a| a == "--swarm");
        Ok((file, if swarmed { swarm(&base, seed) } else { base }, seed, swarmed))
    }

    /// Run `scenario` with `seed` keeping the nodes' logs, and write its timeline to `target`.
    fn explain(
        file: &str,
        scenario: &Scenario,
        seed: u64,
        swarmed: bool,
        canaries: Vec<String>,
        target: &Path,
    ) -> Result<RunResult, String> {
        let opts = RunOptions { canaries: canaries.clone(), capture_logs: true, ..RunOptions::default() };
        let r = run_with(scenario, seed, &opts);
        let canary = canaries.first().map(|c| format!(" --canary {c}")).unwrap_or_default();
        let replay =
            format!("durakv-sim run {file} --seed {seed}{}{canary}", if swarmed { " --swarm" } else { "" });
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(target, durakv_sim::explain::html(scenario, seed, &r, &replay))
            .map_err(|e| format!("{}: {e}", target.display()))?;
        Ok(r)
    }

    /// `durakv-sim bench`: see [`durakv_sim::bench`].
    fn bench(args: &[String]) -> Result<ExitCode, String> {
        use durakv_sim::bench::{all_scenarios, time};
        let number = |name: &str, default: u64| -> Result<u64, String> {
            flag(args, name).map_or(Ok(default), |n| n.parse().map_err(|_| format!("{name} is not a number")))
        };
        let (seeds, start) = (number("--seeds", 40)?, number("--start", 0)?);
        let file = "scenarios/oom-kill-inside-wal-appends.toml";
        let standard = load(&durakv_sim::repo_root().join(file).display().to_string())?;
        let all = all_scenarios()?;
        let per_cpu = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("{x:.1}"));
        let std_runs = standard.seeds.iter().map(|&seed| (standard.clone(), seed));
        let a = time(std_runs);
        let (wall, cpu) = a.speedup();
        out!(
            "standard  {file} seeds {:?}: {:.1} simulated s in {:.2} s wall: {wall:.0} simulated s per wall s, {} per CPU s (fingerprint {:016x})",
            standard.seeds,
            a.simulated.as_secs_f64(),
            a.wall.as_secs_f64(),
            per_cpu(cpu),
            a.fingerprint
        );
        let swarm_runs = (start..start.saturating_add(seeds)).filter_map(|seed| {
            durakv_sim::fuzz::base_for(&all, seed).map(|(_, base)| (swarm(base, seed), seed))
        });
        let b = time(swarm_runs);
        let (wall, cpu) = b.rate();
        out!(
            "swarm     {} scenarios, seeds {start}..{}: {} seeds ({} passed) in {:.2} s wall: {wall:.2} seeds per wall s, {} per CPU s = {} per core-hour (fingerprint {:016x})",
            all.len(),
            start.saturating_add(seeds),
            b.runs,
            b.passed,
            b.wall.as_secs_f64(),
            per_cpu(cpu),
            cpu.map_or("n/a".to_string(), |c| format!("{:.0}", c * 3600.0)),
            b.fingerprint
        );
        Ok(ExitCode::SUCCESS)
    }

    pub fn main(args: &[String]) -> Result<ExitCode, String> {
        let out = flag(args, "--out").map(PathBuf::from).or_else(|| Some(PathBuf::from("sim-failures")));
        match args.first().map(String::as_str) {
            Some("run") => {
                let file = args.get(1).ok_or("run needs a scenario file")?;
                let scenario = load(file)?;
                let swarmed = args.iter().any(|a| a == "--swarm");
                let seeds = match flag(args, "--seed") {
                    Some(s) => vec![s.parse::<u64>().map_err(|_| format!("--seed {s:?} is not a number"))?],
                    None if swarmed => return Err("--swarm needs --seed".into()),
                    None => scenario.seeds.clone(),
                };
                let mut ok = true;
                for seed in seeds {
                    let scenario = if swarmed { swarm(&scenario, seed) } else { scenario.clone() };
                    let opts = RunOptions {
                        canaries: flag(args, "--canary").into_iter().collect(),
                        ..RunOptions::default()
                    };
                    let r = run_with(&scenario, seed, &opts);
                    if args.iter().any(|a| a == "--trace") {
                        for e in &r.trace {
                            out!("{e}");
                        }
                    }
                    report(file, &r, out.as_deref(), swarmed);
                    ok &= r.failure().is_none();
                }
                Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
            Some("check-determinism") => {
                let file = args.get(1).ok_or("check-determinism needs a scenario file")?;
                let mut scenario = load(file)?;
                let seed: u64 = flag(args, "--seed")
                    .ok_or("--seed is required")?
                    .parse()
                    .map_err(|_| "--seed is not a number")?;
                if args.iter().any(|a| a == "--swarm") {
                    scenario = swarm(&scenario, seed);
                }
                let (a, b) = (run(&scenario, seed), run(&scenario, seed));
                match a.trace.iter().zip(&b.trace).position(|(x, y)| x != y) {
                    None if a.trace.len() == b.trace.len() => {
                        if let Some(d) = a.divergence(&b) {
                            out!("NOT deterministic: the traces agree but {d}");
                            return Ok(ExitCode::from(1));
                        }
                        out!(
                            "deterministic: {} events, {} operations and every disk identical in both runs ({})",
                            a.trace.len(),
                            a.history.len(),
                            fingerprints(&a)
                        );
                        Ok(ExitCode::SUCCESS)
                    }
                    at => {
                        let i = at.unwrap_or(a.trace.len().min(b.trace.len()));
                        out!(
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
                let time = flag(args, "--time").map(|t| parse_duration(&t)).transpose()?;
                let seeds: u64 = match flag(args, "--seeds") {
                    Some(n) => n.parse().map_err(|_| "--seeds is not a number")?,
                    None if time.is_some() => u64::MAX,
                    None => 100,
                };
                let start: u64 = flag(args, "--start")
                    .unwrap_or_else(|| "0".into())
                    .parse()
                    .map_err(|_| "--start is not a number")?;
                let (shard, shards) = match flag(args, "--shard") {
                    Some(s) => {
                        let (i, n) = s.split_once('/').ok_or("--shard is I/N")?;
                        let (i, n) = (
                            i.parse::<u64>().map_err(|_| "--shard I is not a number")?,
                            n.parse::<u64>().map_err(|_| "--shard N is not a number")?,
                        );
                        if n == 0 || i >= n {
                            return Err(format!("--shard {s}: I must be below N"));
                        }
                        (i, n)
                    }
                    None => (0, 1),
                };
                let started = std::time::Instant::now();
                let planned = if seeds == u64::MAX { "?".to_string() } else { (seeds / shards).to_string() };
                let seeds = (start..start.saturating_add(seeds)).filter(|s| s % shards == shard);
                let mut coverage = durakv_sim::coverage::Coverage::default();
                // On a terminal the progress line redraws in place; in a log (CI, `| tee`) it is a
                // line of its own every few seconds, not one `\r`-joined line per seed.
                let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
                let mut last_line = started;
                let counts = fuzz(&scenarios, seeds, time, run, |file, r, c| {
                    coverage.add_run(r);
                    if r.verdict != Verdict::Pass {
                        if terminal {
                            eprintln!();
                        }
                        report(file, r, out.as_deref(), true);
                        // A failure also gets its timeline (one more run of the seed, keeping logs).
                        if let (Verdict::Fail(_), Some(dir), Some((_, base))) =
                            (&r.verdict, out.as_deref(), scenarios.iter().find(|(f, _)| f == file))
                        {
                            let seed = r.summary.seed;
                            let variant = swarm(base, seed);
                            let target = dir.join(format!("{}-seed-{seed}.html", variant.name));
                            match explain(file, &variant, seed, true, Vec::new(), &target) {
                                Ok(_) => out!("     timeline: {}", target.display()),
                                Err(e) => out!("     timeline not written: {e}"),
                            }
                        }
                    }
                    if !terminal && last_line.elapsed() < std::time::Duration::from_secs(5) {
                        return;
                    }
                    last_line = std::time::Instant::now();
                    let rate = c.ran as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    let width = 30usize;
                    let done = match planned.parse::<u64>() {
                        Ok(n) => c.ran as f64 / n.max(1) as f64,
                        Err(_) => {
                            started.elapsed().as_secs_f64()
                                / time.map_or(f64::INFINITY, |t| t.as_secs_f64()).max(1e-9)
                        }
                    };
                    let filled = ((done.min(1.0)) * width as f64) as usize;
                    eprint!(
                        "{}[{}{}] {}/{planned} seeds, {rate:.2} seeds/s, {} failed, {} undecided, {} vacuous{}",
                        if terminal { "\r" } else { "" },
                        "#".repeat(filled),
                        ".".repeat(width - filled),
                        c.ran,
                        c.failed,
                        c.undecided,
                        c.vacuous,
                        // The trailing blank wipes a longer previous line's last character.
                        if terminal { " " } else { "\n" }
                    );
                });
                if terminal {
                    eprintln!();
                }
                out!(
                    "fuzz: {} seeds in {:.1} s ({:.2} seeds/s): {} passed, {} failed ({} panicked), {} undecided, {} vacuous",
                    counts.ran,
                    started.elapsed().as_secs_f64(),
                    counts.ran as f64 / started.elapsed().as_secs_f64().max(1e-9),
                    counts.passed,
                    counts.failed,
                    counts.panicked,
                    counts.undecided,
                    counts.vacuous
                );
                out!("{}", coverage.table());
                Ok(if counts.failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
            Some("bench") => bench(args),
            Some("explain") => {
                let (file, scenario, seed, swarmed) = seeded_scenario(args, "explain")?;
                let canaries: Vec<String> = flag(args, "--canary").into_iter().collect();
                let target = flag(args, "--write").map(PathBuf::from).unwrap_or_else(|| {
                    out.clone()
                        .unwrap_or_else(|| PathBuf::from("sim-failures"))
                        .join(format!("{}-seed-{seed}.html", scenario.name))
                });
                let r = explain(file, &scenario, seed, swarmed, canaries, &target)?;
                report(file, &r, None, swarmed);
                out!("timeline: {}", target.display());
                Ok(ExitCode::SUCCESS)
            }
            Some("shrink") => {
                let (file, scenario, seed, swarmed) = seeded_scenario(args, "shrink")?;
                let runs: u64 = flag(args, "--runs")
                    .unwrap_or_else(|| "300".into())
                    .parse()
                    .map_err(|_| "--runs is not a number")?;
                let opts = RunOptions {
                    canaries: flag(args, "--canary").into_iter().collect(),
                    ..RunOptions::default()
                };
                let shrunk =
                    durakv_sim::shrink::shrink(&scenario, seed, &opts, runs, |line| eprintln!("{line}"))
                        .map_err(|e| e.to_string())?;
                let origin = format!(
                    "{file}{}{}",
                    if swarmed { " (--swarm)" } else { "" },
                    opts.canaries.first().map(|c| format!(" with canary {c}")).unwrap_or_default()
                );
                let target = match flag(args, "--write") {
                    Some(path) => PathBuf::from(path),
                    None => {
                        let dir = out.clone().unwrap_or_else(|| PathBuf::from("sim-failures"));
                        dir.join(format!("{}-seed-{seed}-shrunk.toml", scenario.name))
                    }
                };
                if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                let mut shrunk_file = shrunk.scenario.clone();
                shrunk_file.name = format!("{}-shrunk", scenario.name);
                shrunk_file.description =
                    format!("Shrunk from {} seed {seed}: fails {}.", scenario.name, shrunk.invariant);
                let shrunk = durakv_sim::shrink::Shrunk { scenario: shrunk_file, ..shrunk };
                std::fs::write(&target, durakv_sim::shrink::scenario_file(&shrunk, &origin))
                    .map_err(|e| format!("{}: {e}", target.display()))?;
                out!(
                    "shrunk {} seed {seed} in {} runs ({:.1} s): still fails {}: {}",
                    scenario.name,
                    shrunk.runs,
                    shrunk.elapsed.as_secs_f64(),
                    shrunk.invariant,
                    shrunk.explanation
                );
                out!("{}", durakv_sim::shrink::table(&shrunk));
                let canary = opts.canaries.first().map(|c| format!(" --canary {c}")).unwrap_or_default();
                out!("wrote {}; replay: durakv-sim run {}{canary}", target.display(), target.display());
                Ok(ExitCode::SUCCESS)
            }
            Some("canaries") => {
                // Every canary against the swarm variants of its own scenario (or, with `--all`,
                // of the scenarios fuzz rotates through), up to `--seeds` seeds each.
                let budget: u64 = flag(args, "--seeds")
                    .unwrap_or_else(|| "100".into())
                    .parse()
                    .map_err(|_| "--seeds is not a number")?;
                let dir = durakv_sim::repo_root().join("scenarios");
                let all = args.iter().any(|a| a == "--all");
                let mut every: Vec<(String, Scenario)> = Vec::new();
                if all {
                    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                        .map_err(|e| format!("{}: {e}", dir.display()))?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                        .collect();
                    files.sort();
                    for f in files {
                        let name =
                            f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        every.push((format!("scenarios/{name}"), load(&f.display().to_string())?));
                    }
                }
                let mut scores = Vec::new();
                for case in durakv_sim::canaries::CASES {
                    let s = if all {
                        durakv_sim::canaries::score(case.canary, "all, as fuzz rotates", 0..budget, |seed| {
                            durakv_sim::fuzz::base_for(&every, seed).map(|(f, s)| (f.as_str(), s))
                        })
                    } else {
                        let path = dir.join(case.scenario).display().to_string();
                        let base = load(&path)?;
                        durakv_sim::canaries::score(case.canary, case.scenario, 0..budget, |_| {
                            Some((case.scenario, &base))
                        })
                    };
                    eprintln!(
                        "{}: {}",
                        case.canary,
                        if s.caught.is_some() { "caught" } else { "not caught" }
                    );
                    scores.push(s);
                }
                out!("{}", durakv_sim::canaries::table(&scores, budget));
                for s in &scores {
                    if let Some(inv) = s.invariant {
                        out!("{}: {inv}: {}", s.canary, s.explanation);
                    }
                    if !s.failing_anyway.is_empty() {
                        out!(
                            "{}: seeds that fail without it too (not counted): {:?}",
                            s.canary,
                            s.failing_anyway
                        );
                    }
                }
                let missed = scores.iter().any(|s| s.caught.is_none());
                Ok(if missed { ExitCode::from(1) } else { ExitCode::SUCCESS })
            }
            _ => Err("unknown command".into()),
        }
    }
}
