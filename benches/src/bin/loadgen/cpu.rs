//! CPU time of this process and of the servers, from `/proc/<pid>/stat` (user + system time of every
//! thread, in clock ticks).

use std::time::Duration;

use anyhow::{Context, Result};

/// `/proc` reports times in USER_HZ, which is 100 on every Linux ABI.
const TICKS_PER_SEC: f64 = 100.0;

fn parse_stat(text: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count fields after its end.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (3), ppid (4), ..., utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks(pid: &str) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// This process's CPU ticks so far.
pub fn self_ticks() -> Result<u64> {
    ticks("self").context("read /proc/self/stat")
}

/// The summed CPU ticks of `pids`, or `None` if any of them cannot be read (it exited) or there are none.
pub fn ticks_of(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| ticks(&p.to_string())).sum()
}

/// The whole machine's busy CPU ticks so far, every core summed (`/proc/stat`'s first line: user,
/// nice, system, irq, softirq and steal; not idle or iowait).
pub fn machine_busy_ticks() -> Option<u64> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_proc_stat(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    Some([0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum())
}

/// `ticks` over `wall` as a percentage of one core.
pub fn percent(ticks: u64, wall: Duration) -> f64 {
    let secs = wall.as_secs_f64();
    if secs <= 0.0 { 0.0 } else { 100.0 * ticks as f64 / TICKS_PER_SEC / secs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_a_spaced_name() {
        let line = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 3154 0 0 0 250 31 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(line), Some(281));
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let text = "cpu  100 2 30 5000 70 4 6 8 0 0\ncpu0 50 1 15 2500 35 2 3 4 0 0\n";
        assert_eq!(parse_proc_stat(text), Some(100 + 2 + 30 + 4 + 6 + 8));
        assert!(machine_busy_ticks().is_some());
    }

    #[test]
    fn own_ticks_are_readable() {
        assert!(self_ticks().is_ok());
        assert!((percent(150, Duration::from_secs(10)) - 15.0).abs() < 1e-9);
    }
}
