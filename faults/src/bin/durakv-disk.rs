//! `durakv-disk`: the simulated disk as a real mount, with a control socket that cuts its power.
//!
//! ```text
//! durakv-disk mount DIR --ctl SOCKET [--seed N] [--sector-odds KEEP,DROP,GARBAGE] [--capacity BYTES]
//! durakv-disk ctl SOCKET COMMAND...
//! ```
//!
//! `mount` serves DIR in the foreground (it prints `mounted DIR` once the mount answers) until
//! SIGTERM, SIGINT or `ctl SOCKET shutdown`, then unmounts. `ctl` sends one command and prints the
//! one-line reply; it exits 0 on `ok …`, 1 on `error …`, 2 when the daemon cannot be reached. The
//! commands (`ctl SOCKET help` lists them) are in [`COMMANDS`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use durakv_faults::fuse::{MountedDisk, kill_users};
use durakv_faults::{CrashKind, FaultEffect, FaultRule, OpKind, SectorOdds, SimFs, SimFsOptions};

const USAGE: &str = "usage:
  durakv-disk mount DIR --ctl SOCKET [--seed N] [--sector-odds KEEP,DROP,GARBAGE] [--capacity BYTES]
  durakv-disk ctl SOCKET COMMAND...   (COMMAND `help` lists the commands)";

const COMMANDS: &str = "commands: ping | halt power-loss|process-kill | restart | power-loss | kill | \
fail eio|enospc|bit-flip read|write|sync|any GLOB TIMES | crash-after N power-loss|process-kill | flip PATH | stats | shutdown";

/// How long a killed process may take to let go of the mount.
const KILL_PATIENCE: Duration = Duration::from_secs(20);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("mount") => match mount(&args[1..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("durakv-disk: {e:#}");
                1
            }
        },
        Some("ctl") => ctl(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

fn ctl(args: &[String]) -> i32 {
    let Some((socket, command)) = args.split_first().filter(|(_, c)| !c.is_empty()) else {
        eprintln!("{USAGE}");
        return 2;
    };
    let reply = (|| -> std::io::Result<String> {
        let mut stream = UnixStream::connect(socket)?;
        writeln!(stream, "{}", command.join(" "))?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    })();
    match reply {
        Ok(line) => {
            println!("{line}");
            if line.starts_with("ok") { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("durakv-disk ctl: cannot reach {socket}: {e}");
            2
        }
    }
}

struct MountArgs {
    dir: PathBuf,
    ctl: PathBuf,
    seed: u64,
    odds: SectorOdds,
    capacity: Option<u64>,
}

fn parse_mount(args: &[String]) -> anyhow::Result<MountArgs> {
    let mut it = args.iter();
    let dir = it.next().context("mount needs a directory")?;
    let (mut ctl, mut seed, mut odds, mut capacity) = (None, 0, SectorOdds::default(), None);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--ctl" => ctl = Some(PathBuf::from(value)),
            "--seed" => seed = value.parse().with_context(|| format!("--seed: {value:?} is not a number"))?,
            "--capacity" => {
                capacity =
                    Some(value.parse().with_context(|| format!("--capacity: {value:?} is not a number"))?)
            }
            "--sector-odds" => {
                let parts: Vec<u32> = value
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--sector-odds: {value:?} is not KEEP,DROP,GARBAGE"))?;
                let [keep, drop, garbage] = parts[..] else {
                    bail!("--sector-odds: {value:?} is not KEEP,DROP,GARBAGE");
                };
                odds = SectorOdds::new(keep, drop, garbage).context("--sector-odds")?;
            }
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    let ctl = ctl.context("mount needs --ctl SOCKET")?;
    Ok(MountArgs { dir: PathBuf::from(dir), ctl, seed, odds, capacity })
}

fn mount(args: &[String]) -> anyhow::Result<()> {
    let a = parse_mount(args)?;
    let opts = SimFsOptions { power_loss: a.odds, capacity_bytes: a.capacity, ..SimFsOptions::default() };
    let disk = SimFs::new(a.seed, opts).context("disk options")?;
    let mut mounted =
        MountedDisk::mount(disk, &a.dir).with_context(|| format!("mount {}", a.dir.display()))?;
    let _ = std::fs::remove_file(&a.ctl);
    let listener =
        UnixListener::bind(&a.ctl).with_context(|| format!("control socket {}", a.ctl.display()))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    println!("mounted {}", mounted.dir().display());
    std::io::stdout().flush()?;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                if serve(&mut mounted, stream) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let _ = std::fs::remove_file(&a.ctl);
    // Whoever still uses the mount would keep it busy; a shutdown is a process kill for them.
    kill_users(mounted.dir(), KILL_PATIENCE)?;
    mounted.unmount().context("unmount")?;
    Ok(())
}

/// Answer one control connection; true when the daemon should stop.
fn serve(mounted: &mut MountedDisk, stream: UnixStream) -> bool {
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() {
        return false;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let shutdown = words.first() == Some(&"shutdown");
    let reply = match command(mounted, &words) {
        Ok(text) if text.is_empty() => "ok".to_string(),
        Ok(text) => format!("ok {text}"),
        Err(e) => format!("error {}", format!("{e:#}").replace('\n', " ")),
    };
    let mut stream = stream;
    let _ = writeln!(stream, "{reply}");
    shutdown
}

fn crash_kind(word: Option<&&str>) -> anyhow::Result<CrashKind> {
    match word.copied() {
        Some("power-loss") => Ok(CrashKind::PowerLoss),
        Some("process-kill") => Ok(CrashKind::ProcessKill),
        other => bail!("expected power-loss or process-kill, got {other:?}"),
    }
}

/// Kill whoever uses the mount, drop it, resume the disk and mount it again.
fn restart(mounted: &mut MountedDisk) -> anyhow::Result<String> {
    let killed = kill_users(mounted.dir(), KILL_PATIENCE)?;
    mounted.restart().context("remount")?;
    Ok(format!("killed={}", killed.iter().map(u32::to_string).collect::<Vec<_>>().join(",")))
}

fn command(mounted: &mut MountedDisk, words: &[&str]) -> anyhow::Result<String> {
    let disk = mounted.disk().clone();
    match words.first().copied() {
        Some("ping") => Ok(String::new()),
        Some("help") => Ok(COMMANDS.to_string()),
        Some("halt") => {
            // The crash is this instant: what the media holds is decided now, and nothing a process
            // does afterwards reaches the disk.
            disk.cut(crash_kind(words.get(1))?);
            Ok(String::new())
        }
        Some("restart") => restart(mounted),
        Some("power-loss") => {
            disk.cut(CrashKind::PowerLoss);
            restart(mounted)
        }
        Some("kill") => {
            disk.cut(CrashKind::ProcessKill);
            restart(mounted)
        }
        Some("fail") => {
            let [_, effect, op, glob, times] = words else {
                bail!("usage: fail eio|enospc|bit-flip OP GLOB TIMES")
            };
            let effect = match *effect {
                "eio" => FaultEffect::Eio,
                "enospc" => FaultEffect::Enospc,
                "bit-flip" => FaultEffect::BitFlip,
                other => bail!("unknown effect {other:?} (eio, enospc or bit-flip)"),
            };
            let ops: &[OpKind] = match *op {
                "read" => &[OpKind::Read],
                "write" => &[OpKind::Write],
                "sync" => &[OpKind::Sync],
                "any" => &[OpKind::Read, OpKind::Write, OpKind::Sync],
                other => bail!("unknown op {other:?} (read, write, sync or any)"),
            };
            let times: u64 = times.parse().with_context(|| format!("{times:?} is not a number"))?;
            let rule =
                FaultRule::always(effect, ops).on_path(glob)?.max_fires(times).after_ops(disk.ops_done());
            disk.add_rule(rule)?;
            Ok(String::new())
        }
        Some("crash-after") => {
            let n: u64 =
                words.get(1).context("usage: crash-after N KIND")?.parse().context("N is not a number")?;
            let kind = crash_kind(words.get(2))?;
            disk.arm_crash_after(disk.ops_done(), None, "*", n, kind);
            Ok(String::new())
        }
        Some("flip") => {
            let path = words.get(1).context("usage: flip PATH")?;
            let inside = Path::new("/").join(path.trim_start_matches('/'));
            let (offset, bit) = disk.flip_random_bit(&inside)?;
            Ok(format!("offset={offset} bit={bit}"))
        }
        Some("stats") => {
            let mut out = format!("ops={} used_bytes={}", disk.ops_done(), disk.used_bytes());
            for (key, n) in disk.coverage() {
                out.push_str(&format!(" {key}={n}"));
            }
            Ok(out)
        }
        Some("shutdown") => Ok(String::new()),
        Some(other) => bail!("unknown command {other:?}; {COMMANDS}"),
        None => bail!("empty command; {COMMANDS}"),
    }
}
