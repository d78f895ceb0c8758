//! Scenario files: a simulation test plan in TOML (`docs/scenarios.md`). Parsing is strict: an
//! unknown key or a bad value is an error naming the file, the line and the field.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A scenario that does not parse or does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct ScenarioError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single line (a missing table).
    pub line: usize,
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// The seeds `cargo test` runs; each replays bit for bit.
    pub seeds: Vec<u64>,
    /// Simulated run time.
    pub duration_ms: u64,
    pub cluster: Cluster,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    pub workload: Workload,
    #[serde(default)]
    pub faults: Vec<Fault>,
    pub invariants: Invariants,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// 3 to 5 servers.
    pub nodes: u64,
    #[serde(default = "default_fsm_sync")]
    pub fsm_sync: String,
    /// Take a snapshot every this many applied entries.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
}

fn default_fsm_sync() -> String {
    "sync".into()
}

fn default_snapshot_every() -> u64 {
    1000
}

/// A directory that is its own device (renames into or out of it fail with EXDEV).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub clients: u64,
    /// Distinct keys the clients touch.
    pub keys: u64,
    pub mix: Mix,
    pub rate_per_sec: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    1000
}

/// Relative weights of the client operations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    #[serde(default)]
    pub set: u32,
    #[serde(default)]
    pub get: u32,
    #[serde(default)]
    pub del: u32,
    #[serde(default)]
    pub incr: u32,
    #[serde(default)]
    pub mset: u32,
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Simulated time at which it fires.
    pub at_ms: u64,
    pub action: Action,
    /// `leader`, `follower`, `any`, `all`, or `node:<id>`.
    #[serde(default = "default_target")]
    pub target: String,
    /// For kills and power losses: land inside a write to a path matching this glob.
    #[serde(default)]
    pub mid_write: Option<String>,
    /// For partitions and clogs: how long until it heals.
    #[serde(default)]
    pub for_ms: Option<u64>,
    /// For injected errors: the failpoint or path glob it applies to.
    #[serde(default)]
    pub at: Option<String>,
}

fn default_target() -> String {
    "any".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Kill,
    PowerLoss,
    Restart,
    Partition,
    Clog,
    TornTail,
    BitFlip,
    Eio,
    Enospc,
    ApplyFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invariants {
    #[serde(default = "yes")]
    pub durability: bool,
    #[serde(default = "yes")]
    pub linearizability: bool,
    #[serde(default = "yes")]
    pub convergence: bool,
    /// After the last fault, a write must commit within this bound.
    pub liveness_ms: u64,
    #[serde(default = "yes")]
    pub file_hygiene: bool,
}

fn yes() -> bool {
    true
}

/// The 1-based line where `key` is first assigned in `source` (0 if not found).
fn line_of(source: &str, key: &str) -> usize {
    source
        .lines()
        .position(|l| {
            let t = l.trim_start();
            t.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

impl Scenario {
    /// Parse and check a scenario; `file` names it in errors.
    pub fn parse(source: &str, file: &Path) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(source).map_err(|e| {
            let (line, field, message) = durakv::config::locate_toml_error(source, &e);
            ScenarioError { file: file.to_path_buf(), line, field, message }
        })?;
        scenario.validate(source, file)?;
        Ok(scenario)
    }

    /// Read and parse a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let source = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: path.to_path_buf(),
            line: 0,
            field: "file".into(),
            message: e.to_string(),
        })?;
        Scenario::parse(&source, path)
    }

    fn validate(&self, source: &str, file: &Path) -> Result<(), ScenarioError> {
        let fail = |key: &str, field: &str, message: String| {
            Err(ScenarioError {
                file: file.to_path_buf(),
                line: line_of(source, key),
                field: field.into(),
                message,
            })
        };
        if self.name.trim().is_empty() {
            return fail("name", "name", "must not be empty".into());
        }
        if self.seeds.is_empty() {
            return fail("seeds", "seeds", "list at least one seed".into());
        }
        if self.duration_ms == 0 {
            return fail("duration_ms", "duration_ms", "must be positive".into());
        }
        if !(3..=5).contains(&self.cluster.nodes) {
            return fail("nodes", "cluster.nodes", format!("{} is not 3 to 5 servers", self.cluster.nodes));
        }
        if !matches!(self.cluster.fsm_sync.as_str(), "sync" | "nosync") {
            return fail(
                "fsm_sync",
                "cluster.fsm_sync",
                format!("{:?} is not \"sync\" or \"nosync\"", self.cluster.fsm_sync),
            );
        }
        if self.cluster.snapshot_every == 0 {
            return fail("snapshot_every", "cluster.snapshot_every", "must be positive".into());
        }
        for m in &self.mounts {
            if !m.path.starts_with('/') {
                return fail("path", "mounts.path", format!("{:?} must be absolute", m.path));
            }
        }
        let w = &self.workload;
        if w.clients == 0 || w.keys == 0 || w.rate_per_sec == 0 || w.timeout_ms == 0 {
            return fail(
                "clients",
                "workload",
                "clients, keys, rate_per_sec and timeout_ms must be positive".into(),
            );
        }
        let m = &w.mix;
        if [m.set, m.get, m.del, m.incr, m.mset].iter().all(|&x| x == 0) {
            return fail("mix", "workload.mix", "at least one operation needs a weight".into());
        }
        for (i, f) in self.faults.iter().enumerate() {
            let field = |name: &str| format!("faults[{i}].{name}");
            if f.at_ms >= self.duration_ms {
                return fail(
                    "at_ms",
                    &field("at_ms"),
                    format!("{} is not before duration_ms {}", f.at_ms, self.duration_ms),
                );
            }
            let target_ok = matches!(f.target.as_str(), "leader" | "follower" | "any" | "all")
                || f.target
                    .strip_prefix("node:")
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| (1..=self.cluster.nodes).contains(&n));
            if !target_ok {
                return fail(
                    "target",
                    &field("target"),
                    format!(
                        "{:?} is not leader, follower, any, all or node:<1..={}>",
                        f.target, self.cluster.nodes
                    ),
                );
            }
            if f.mid_write.is_some() && !matches!(f.action, Action::Kill | Action::PowerLoss) {
                return fail(
                    "mid_write",
                    &field("mid_write"),
                    "only kills and power losses land inside a write".into(),
                );
            }
            if matches!(f.action, Action::Partition | Action::Clog) && f.for_ms.is_none() {
                return fail("action", &field("for_ms"), "partitions and clogs need for_ms".into());
            }
        }
        if self.invariants.liveness_ms == 0 {
            return fail("liveness_ms", "invariants.liveness_ms", "must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "oom-kill-inside-wal-appends"
description = "The leader is OOM-killed inside WAL appends, again and again, under load."
seeds = [1, 2, 3]
duration_ms = 30000

[cluster]
nodes = 3
fsm_sync = "nosync"

[workload]
clients = 4
keys = 16
mix = { set = 50, get = 30, del = 5, incr = 10, mset = 5 }
rate_per_sec = 200

[[faults]]
at_ms = 5000
action = "kill"
target = "leader"
mid_write = "*/wal/*.wal"

[[faults]]
at_ms = 9000
action = "partition"
target = "node:2"
for_ms = 2000

[invariants]
liveness_ms = 10000
"#;

    fn parse(s: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(s, Path::new("scenarios/x.toml"))
    }

    #[test]
    fn a_good_scenario_parses_with_defaults() {
        let s = parse(GOOD).expect("valid");
        assert_eq!(s.seeds, vec![1, 2, 3]);
        assert_eq!(s.cluster.snapshot_every, 1000);
        assert_eq!(s.faults[0].action, Action::Kill);
        assert_eq!(s.faults[1].for_ms, Some(2000));
        assert!(s.invariants.durability && s.invariants.linearizability);
        assert_eq!(s.workload.timeout_ms, 1000);
    }

    #[test]
    fn unknown_keys_name_file_line_and_field() {
        let bad = GOOD.replace("fsm_sync = \"nosync\"", "fsm_sync = \"nosync\"\nfsm_synk = \"x\"");
        let e = parse(&bad).expect_err("unknown key");
        assert_eq!(e.file, PathBuf::from("scenarios/x.toml"));
        assert_eq!(e.field, "fsm_synk");
        assert_eq!(e.line, 10);
        assert!(e.to_string().starts_with("scenarios/x.toml:10: fsm_synk:"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (GOOD.replace("nodes = 3", "nodes = 7"), "cluster.nodes"),
            (GOOD.replace("\"nosync\"", "\"sometimes\""), "cluster.fsm_sync"),
            (GOOD.replace("at_ms = 9000", "at_ms = 90000"), "faults[1].at_ms"),
            (GOOD.replace("target = \"node:2\"", "target = \"node:9\""), "faults[1].target"),
            (GOOD.replace("for_ms = 2000", ""), "faults[1].for_ms"),
            (GOOD.replace("seeds = [1, 2, 3]", "seeds = []"), "seeds"),
            (GOOD.replace("set = 50, get = 30, del = 5, incr = 10, mset = 5", "set = 0"), "workload.mix"),
        ];
        for (text, field) in cases {
            let e = parse(&text).expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert!(e.line > 0 || field == "workload.mix", "{e}");
        }
        let wrong_type = GOOD.replace("duration_ms = 30000", "duration_ms = \"long\"");
        let e = parse(&wrong_type).expect_err("a string where a number goes");
        assert_eq!(e.line, 5, "{e}");
        let unknown_action = GOOD.replace("action = \"kill\"", "action = \"explode\"");
        assert!(parse(&unknown_action).expect_err("unknown action").message.contains("explode"));
        assert!(parse("not toml at all ===").is_err());
    }

    #[test]
    fn every_scenario_file_in_the_repository_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("scenarios/ exists") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1, "no scenario files in {}", dir.display());
    }
}
