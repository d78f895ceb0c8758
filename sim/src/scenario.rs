//! Scenario files: a simulation test plan in TOML (`docs/scenarios.md`). Parsing is strict: an
//! unknown key or a bad value is an error naming the file, the line and the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// 3 to 5 servers.
    pub nodes: u64,
    #[serde(default = "default_fsm_sync")]
    pub fsm_sync: String,
    /// Take a snapshot every this many applied entries.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// Entries kept in the log below each snapshot (the trailing window for lagging followers).
    /// Default 0: a follower behind a snapshot catches up by the snapshot.
    #[serde(default)]
    pub catch_up_entries: u64,
    /// Every server proves a shared peer secret at each peer handshake (nonces from the seeded
    /// stream). Default false.
    #[serde(default)]
    pub peer_secret: bool,
    /// Servers beyond `nodes` (ids `nodes + 1` on) that run from the start as nodes waiting to join
    /// (`--join`): an `add_learner` fault makes one a member. Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spare: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_fsm_sync() -> String {
    "sync".into()
}

fn default_snapshot_every() -> u64 {
    1000
}

/// A directory that is its own device (renames into or out of it fail with EXDEV).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub clients: u64,
    /// Distinct keys the clients touch.
    pub keys: u64,
    pub mix: Mix,
    pub rate_per_sec: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Per mille of SET and MSET values padded to a large size (1 KiB to 256 KiB, still an integer so
    /// INCR applies). One in 64 of the large SETs is instead just over the largest write a node takes
    /// (`durakv::limits::MAX_COMMAND_BYTES`): the node must refuse it with an `ERR`. Default 20.
    #[serde(default = "default_large_values")]
    pub large_values_per_mille: u32,
    /// Append-only list keys (default 4).
    #[serde(default = "default_special_keys")]
    pub lists: u64,
    /// Increment-only counter keys (default 4).
    #[serde(default = "default_special_keys")]
    pub counters: u64,
    /// Keys that expire (default 4): `mix.ttl` works on them.
    #[serde(default = "default_special_keys")]
    pub ttl_keys: u64,
}

fn default_special_keys() -> u64 {
    4
}

fn default_timeout_ms() -> u64 {
    1000
}

fn default_large_values() -> u32 {
    20
}

/// Relative weights of the client operations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
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
    #[serde(default)]
    pub append: u32,
    /// On append-only list keys (`l0`, `l1`, …): APPEND a unique token (three in four) or GET. The
    /// final value must hold every acknowledged token exactly once, in an order real time allows.
    #[serde(default)]
    pub list: u32,
    /// On counter keys (`c0`, `c1`, …) that are only ever incremented: INCR (three in four) or GET. A
    /// doubled or lost increment shows in the final count.
    #[serde(default)]
    pub counter: u32,
    /// On expiring keys (`t0`, `t1`, …): `SET … PX` (half of them) with a time to live of 100 ms to
    /// 3 s, or (one in four) 30 to 60 s, which outlives the run; GET (a third); a plain SET or a DEL. Linearizability checks that a key vanishes only
    /// once its deadline can have passed (by any server's clock, skew included) and stays gone;
    /// the `expiry` invariant, that it is gone at the end once its deadline surely passed.
    #[serde(default)]
    pub ttl: u32,
    /// Optimistic compare-and-set on the plain keys, on one connection: WATCH, GET, MULTI, SET a new
    /// value, EXEC. An EXEC that applied must have found the key as the GET did (linearizability
    /// checks it as a conditional write); one that aborted applied nothing.
    #[serde(default)]
    pub cas: u32,
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mid_write: Option<String>,
    /// For partitions and clogs: how long until it heals.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    /// `failpoint`: the failpoint's name (`durakv::failpoint::NAMES`); `eio`: a glob over the paths
    /// that fail (default every path); `bit_flip`: `wal` (default: the last WAL segment) or
    /// `snapshot` (the newest snapshot file's body).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// `failpoint`: what it does when hit: `error`, `kill`, `power_loss`, `pause` or `delay`.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// `failpoint`, `apply_failure`, `eio`: how many hits fire (default: one for a failpoint, an
    /// apply failure and a pause; every hit for a delay and for EIO until `for_ms` heals it).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    /// `failpoint` with `pause` or `delay`: how long each stall lasts.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_ms: Option<u64>,
    /// `eio`: which operation fails: `sync` (default), `write` or `read`.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// `enospc`: bytes still free when the disk fills (default 0: the next growing write fails).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// `clock_skew`: how far the target's wall clock runs ahead (negative: behind), in milliseconds,
    /// from `at_ms` on (0 puts it back).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset_ms: Option<i64>,
    /// For kills and power losses: land right *after* an operation of this kind completes (`any`,
    /// `write`, `sync`, `sync_dir`, `rename`, `remove`, `set_len`, `create`), the `nth` such one on
    /// a path matching `path` from `at_ms` on: the crash between two synchronous calls.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_op: Option<String>,
    /// With `after_op`: a glob over the operation's path (default `*`: every path).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// With `after_op`: which matching operation (1-based, default 1).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nth: Option<u64>,
    /// For a crash that lands inside or after an operation, or at a failpoint (`kill`,
    /// `power_loss` and their `_after` forms): `quorum` or `all` — the same crash hits enough other
    /// servers to make a majority (or every server) at the same instant. A correlated fault.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with: Option<String>,
    /// `promote`: remove this voter in the same change (joint consensus).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacing: Option<u64>,
}

impl Fault {
    /// A fault with only its time, action and target set.
    pub fn new(at_ms: u64, action: Action, target: &str) -> Fault {
        Fault {
            at_ms,
            action,
            target: target.to_string(),
            mid_write: None,
            for_ms: None,
            at: None,
            effect: None,
            times: None,
            stall_ms: None,
            op: None,
            free_bytes: None,
            offset_ms: None,
            after_op: None,
            path: None,
            nth: None,
            with: None,
            replacing: None,
        }
    }
}

/// The largest clock skew a scenario may script.
pub const MAX_CLOCK_SKEW_MS: u64 = 86_400_000;

impl Scenario {
    /// How far any server's clock runs behind and ahead of true time at most, over the whole run
    /// (milliseconds, both ≥ 0): the slack the expiry checks allow.
    pub fn clock_skew_bounds(&self) -> (u64, u64) {
        let offsets =
            self.faults.iter().filter(|f| f.action == Action::ClockSkew).filter_map(|f| f.offset_ms);
        offsets.fold((0, 0), |(behind, ahead), ms| {
            if ms < 0 {
                (behind.max(ms.unsigned_abs()), ahead)
            } else {
                (behind, ahead.max(ms.unsigned_abs()))
            }
        })
    }
}

/// The operation kinds `after_op` names.
pub const AFTER_OPS: &[&str] = &["any", "write", "sync", "sync_dir", "rename", "remove", "set_len", "create"];

fn default_target() -> String {
    "any".into()
}

/// Declares [`Action`] with [`Action::ALL`] and [`Action::name`] from one list, so neither can miss a
/// variant (the fuzz coverage table lists every action, fired or not).
macro_rules! actions {
    ($($variant:ident => $name:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Action {
            $($variant,)*
        }

        impl Action {
            /// Every action, in declaration order.
            pub const ALL: &[Action] = &[$(Action::$variant,)*];

            /// The name a scenario file gives it.
            pub fn name(self) -> &'static str {
                match self {
                    $(Action::$variant => $name,)*
                }
            }
        }
    };
}

actions! {
    Kill => "kill",
    PowerLoss => "power_loss",
    Restart => "restart",
    Partition => "partition",
    Clog => "clog",
    TornTail => "torn_tail",
    LoseAckedTail => "lose_acked_tail",
    BitFlip => "bit_flip",
    // Bit rot the disk delivers while the node runs: the `times` next matching reads or writes
    // (`op`, default write) of the raft WAL flip one bit of the bytes they touch, on the media and
    // in the cache alike. The server must notice (a CRC) and recover the damaged entries from peers.
    BitRot => "bit_rot",
    Eio => "eio",
    Enospc => "enospc",
    ApplyFailure => "apply_failure",
    Failpoint => "failpoint",
    // The target's servers die again and again until `for_ms` ends: each is killed (or loses
    // power, with `effect = "power_loss"`) a random 200–1500 ms after every start.
    CrashLoop => "crash_loop",
    // The target's wall clock jumps `offset_ms` ahead (or behind) of true time and stays there: the
    // clock a leader stamps its entries with, and so the one expiry follows.
    ClockSkew => "clock_skew",
    // Membership changes, sent to the leader as `CLUSTER …` commands (retried while no leader is
    // known or another change is under way): the target (a spare server) becomes a learner; the
    // target learner becomes a voter (with `replacing`: in place of that voter, a joint change); the
    // target member is removed (the leader itself hands its leadership over first).
    AddLearner => "add_learner",
    Promote => "promote",
    Remove => "remove",
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
    /// Through the faults, the first leader keeps leading (no election). Only for scenarios whose
    /// faults cut nobody off and kill nobody: an election then means missed heartbeats.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stable_leader: bool,
    /// Every run ends with a power loss of every server, a restart and convergence before the final
    /// state is read. A scenario opts out only by stating why here.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_final_power_cycle: Option<String>,
}

fn yes() -> bool {
    true
}

/// Where each field of a scenario is in its source, from the TOML parser's spans: exact where a
/// search of the text would be fooled by a comment, a key name used in several tables, an inline
/// table or array, or `[[ faults ]]` spelled with spaces.
struct Locator<'a> {
    source: &'a str,
    doc: Option<toml::de::DeTable<'a>>,
}

impl<'a> Locator<'a> {
    fn new(source: &'a str) -> Self {
        Locator { source, doc: toml::de::DeTable::parse(source).ok().map(toml::Spanned::into_inner) }
    }

    /// The 1-based line of `field` (`cluster.nodes`, `faults[2].at`): where its key is, or, for a
    /// key that is absent, where the innermost table or array element holding it starts (0 if none).
    fn line(&self, field: &str) -> usize {
        let Some(doc) = &self.doc else { return 0 };
        let mut found: Option<std::ops::Range<usize>> = None;
        let mut table = Some(doc);
        for part in field.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((name, i)) => (name, i.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let Some((key, mut value)) = table.and_then(|t| t.get_key_value(name)) else { break };
            found = Some(key.span());
            if let Some(i) = index {
                let toml::de::DeValue::Array(items) = value.get_ref() else { break };
                let Some(item) = items.get(i) else { break };
                found = Some(item.span());
                value = item;
            }
            table = match value.get_ref() {
                toml::de::DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        found.map_or(0, |span| line_at(self.source, span.start))
    }

    /// The field (`faults[2].at`) whose key or value holds byte offset `at`. A table's span is its
    /// header only, so every table is searched, not just one whose span holds `at`.
    fn field_at(&self, at: usize) -> Option<String> {
        use toml::de::{DeTable, DeValue};
        fn in_value(value: &DeValue<'_>, at: usize) -> Option<String> {
            match value {
                DeValue::Table(t) => in_table(t, at).map(|p| format!(".{p}")),
                DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                    if item.span().contains(&at) {
                        return Some(format!("[{i}]"));
                    }
                    in_value(item.get_ref(), at).map(|p| format!("[{i}]{p}"))
                }),
                _ => None,
            }
        }
        fn in_table(table: &DeTable<'_>, at: usize) -> Option<String> {
            table.iter().find_map(|(key, value)| {
                let name = key.get_ref();
                if key.span().contains(&at) || value.span().contains(&at) {
                    return Some(name.to_string());
                }
                in_value(value.get_ref(), at).map(|p| format!("{name}{p}"))
            })
        }
        in_table(self.doc.as_ref()?, at)
    }
}

/// The 1-based line of byte offset `at` in `source`.
fn line_at(source: &str, at: usize) -> usize {
    source.as_bytes()[..at.min(source.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

impl Scenario {
    /// Parse and check a scenario; `file` names it in errors.
    pub fn parse(source: &str, file: &Path) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(source).map_err(|e| {
            let (line, field, message) = durakv::config::locate_toml_error(source, &e);
            // The parser's error names the line; the spans name the field it is in (a type error's
            // message names only the value).
            let field = e.span().and_then(|s| Locator::new(source).field_at(s.start)).unwrap_or(field);
            ScenarioError { file: file.to_path_buf(), line, field, message }
        })?;
        scenario.validate(source, file)?;
        Ok(scenario)
    }

    /// The scenario as a scenario file: what [`Scenario::parse`] reads back to the same scenario
    /// (every field written out, defaults included).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a scenario is plain data: strings, integers, tables and arrays")
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

    /// The fields only some actions take: present where they belong, valid where present. Returns
    /// (the fault's field at fault, message).
    fn check_fault_fields(&self, f: &Fault) -> Option<(&'static str, String)> {
        use Action::*;
        let allowed: &[&str] = match f.action {
            Failpoint => &["at", "effect", "times", "stall_ms", "for_ms", "with"],
            ApplyFailure => &["times"],
            Eio => &["at", "op", "times", "for_ms"],
            Enospc => &["free_bytes", "for_ms"],
            ClockSkew => &["offset_ms"],
            Partition | Clog => &["for_ms"],
            Kill | PowerLoss => &["mid_write", "after_op", "path", "nth", "with"],
            CrashLoop => &["for_ms", "effect"],
            BitFlip => &["at"],
            BitRot => &["at", "op", "times"],
            TornTail => &["after_op", "path", "nth", "effect"],
            Restart | LoseAckedTail | AddLearner | Remove => &[],
            Promote => &["replacing"],
        };
        let present = [
            ("at", f.at.is_some()),
            ("effect", f.effect.is_some()),
            ("times", f.times.is_some()),
            ("stall_ms", f.stall_ms.is_some()),
            ("op", f.op.is_some()),
            ("free_bytes", f.free_bytes.is_some()),
            ("offset_ms", f.offset_ms.is_some()),
            ("for_ms", f.for_ms.is_some()),
            ("mid_write", f.mid_write.is_some()),
            ("after_op", f.after_op.is_some()),
            ("path", f.path.is_some()),
            ("nth", f.nth.is_some()),
            ("with", f.with.is_some()),
            ("replacing", f.replacing.is_some()),
        ];
        if let Some((name, _)) = present.iter().find(|(name, on)| *on && !allowed.contains(name)) {
            return Some((name, format!("{:?} takes no {name}", f.action)));
        }
        if f.times == Some(0) {
            return Some(("times", "must be positive".into()));
        }
        let node = f.target.strip_prefix("node:").and_then(|n| n.parse::<u64>().ok());
        if f.action == AddLearner && node.is_none_or(|n| n <= self.cluster.nodes) {
            return Some(("target", "add_learner names a spare server: node:<id> past cluster.nodes".into()));
        }
        if f.action == Promote && node.is_none() {
            return Some(("target", "promote names the learner: node:<id>".into()));
        }
        if f.replacing.is_some_and(|r| r == 0 || r > self.cluster.nodes + self.cluster.spare) {
            return Some(("replacing", "must name a server".into()));
        }
        if f.at.as_deref() == Some("") {
            return Some(("at", "must not be empty".into()));
        }
        if let Some(with) = f.with.as_deref()
            && !matches!(with, "quorum" | "all")
        {
            return Some(("with", format!("{with:?} is not quorum or all")));
        }
        if (f.path.is_some() || f.nth.is_some()) && f.after_op.is_none() {
            return Some(("after_op", "path and nth belong to an after_op crash".into()));
        }
        if f.nth == Some(0) {
            return Some(("nth", "is 1-based: must be positive".into()));
        }
        if f.path.as_deref() == Some("") {
            return Some(("path", "must not be empty".into()));
        }
        match f.action {
            Kill | PowerLoss => {
                if let Some(op) = f.after_op.as_deref() {
                    if !AFTER_OPS.contains(&op) {
                        return Some(("after_op", format!("{op:?} is not one of {}", AFTER_OPS.join(", "))));
                    }
                    if f.mid_write.is_some() {
                        return Some((
                            "after_op",
                            "a crash lands inside a write or after an operation, not both".into(),
                        ));
                    }
                }
                if f.with.is_some() && f.mid_write.is_none() && f.after_op.is_none() {
                    return Some(("with",
                        "a crash now takes `target = \"quorum\"` or `\"all\"`; `with` is for one that waits for an operation".into(),
                    ));
                }
            }
            TornTail => {
                if let Some(op) = f.after_op.as_deref()
                    && !AFTER_OPS.contains(&op)
                {
                    return Some(("after_op", format!("{op:?} is not one of {}", AFTER_OPS.join(", "))));
                }
                match f.effect.as_deref() {
                    Some(_) if f.after_op.is_none() => {
                        return Some((
                            "effect",
                            "a torn tail's effect is the kind of its after_op crash".into(),
                        ));
                    }
                    Some(e) if !matches!(e, "kill" | "power_loss") => {
                        return Some(("effect", format!("{e:?} is not kill or power_loss")));
                    }
                    _ => {}
                }
            }
            CrashLoop => {
                if f.for_ms.is_none_or(|ms| ms == 0) {
                    return Some(("for_ms", "a crash loop needs for_ms > 0".into()));
                }
                if let Some(e) = f.effect.as_deref()
                    && !matches!(e, "kill" | "power_loss")
                {
                    return Some(("effect", format!("{e:?} is not kill or power_loss")));
                }
            }
            Failpoint => {
                let Some(at) = f.at.as_deref() else {
                    return Some(("at", "a failpoint fault names its failpoint in `at`".into()));
                };
                if !durakv::failpoint::NAMES.contains(&at) {
                    return Some((
                        "at",
                        format!("{at:?} is not a failpoint: {}", durakv::failpoint::NAMES.join(", ")),
                    ));
                }
                if f.with.is_some()
                    && !f
                        .effect
                        .as_deref()
                        .is_some_and(|e| e.starts_with("kill") || e.starts_with("power_loss"))
                {
                    return Some(("with", "only a kill or a power loss takes other servers along".into()));
                }
                match f.effect.as_deref() {
                    Some("error" | "kill" | "power_loss" | "kill_after" | "power_loss_after") => {
                        if f.stall_ms.is_some() {
                            return Some(("stall_ms", "only a pause or a delay stalls".into()));
                        }
                    }
                    Some("pause" | "delay") => {
                        if f.stall_ms.is_none_or(|ms| ms == 0) {
                            return Some(("stall_ms", "a pause or a delay needs stall_ms > 0".into()));
                        }
                    }
                    Some(other) => {
                        return Some((
                            "effect",
                            format!(
                                "{other:?} is not error, kill, power_loss, kill_after, power_loss_after, pause or delay"
                            ),
                        ));
                    }
                    None => return Some(("effect", "a failpoint fault needs an effect".into())),
                }
            }
            ClockSkew => match f.offset_ms {
                None => return Some(("offset_ms", "a clock skew needs offset_ms".into())),
                Some(ms) if ms.unsigned_abs() > MAX_CLOCK_SKEW_MS => {
                    return Some((
                        "offset_ms",
                        format!(
                            "{ms} is beyond ±{MAX_CLOCK_SKEW_MS} ms (a day): not a skew but another date"
                        ),
                    ));
                }
                Some(_) => {}
            },
            BitFlip => {
                if let Some(at) = f.at.as_deref()
                    && !matches!(at, "wal" | "snapshot")
                {
                    return Some(("at", format!("{at:?} is not wal or snapshot")));
                }
            }
            BitRot => {
                if let Some(at) = f.at.as_deref()
                    && at != "wal"
                {
                    return Some(("at", format!("{at:?} is not wal (bit rot is scripted on the raft WAL)")));
                }
                if let Some(op) = f.op.as_deref()
                    && !matches!(op, "read" | "write")
                {
                    return Some(("op", format!("{op:?} is not read or write")));
                }
            }
            Eio => {
                if let Some(op) = f.op.as_deref()
                    && !matches!(
                        op,
                        "sync" | "write" | "read" | "sync_dir" | "rename" | "remove" | "set_len" | "create"
                    )
                {
                    return Some((
                        "op",
                        format!(
                            "{op:?} is not sync, write, read, sync_dir, rename, remove, set_len or create"
                        ),
                    ));
                }
            }
            _ => {}
        }
        None
    }

    /// Check a scenario built in code (`source` is the text it came from, for line numbers; may be
    /// empty). Every error names a field (`faults[2].at`) and the line the parser found it on.
    pub fn validate(&self, source: &str, file: &Path) -> Result<(), ScenarioError> {
        let locate = Locator::new(source);
        let fail = |field: &str, message: String| {
            Err(ScenarioError {
                file: file.to_path_buf(),
                line: locate.line(field),
                field: field.into(),
                message,
            })
        };
        if self.name.trim().is_empty() {
            return fail("name", "must not be empty".into());
        }
        if self.seeds.is_empty() {
            return fail("seeds", "list at least one seed".into());
        }
        if self.duration_ms == 0 {
            return fail("duration_ms", "must be positive".into());
        }
        if !(3..=5).contains(&self.cluster.nodes) {
            return fail("cluster.nodes", format!("{} is not 3 to 5 servers", self.cluster.nodes));
        }
        if self.cluster.spare > 2 {
            return fail("cluster.spare", format!("{} is more than 2 spare servers", self.cluster.spare));
        }
        if !matches!(self.cluster.fsm_sync.as_str(), "sync" | "nosync") {
            return fail(
                "cluster.fsm_sync",
                format!("{:?} is not \"sync\" or \"nosync\"", self.cluster.fsm_sync),
            );
        }
        if self.cluster.snapshot_every == 0 {
            return fail("cluster.snapshot_every", "must be positive".into());
        }
        for (i, m) in self.mounts.iter().enumerate() {
            if !m.path.starts_with('/') {
                return fail(&format!("mounts[{i}].path"), format!("{:?} must be absolute", m.path));
            }
        }
        let w = &self.workload;
        let counts = [
            ("clients", w.clients),
            ("keys", w.keys),
            ("rate_per_sec", w.rate_per_sec),
            ("timeout_ms", w.timeout_ms),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return fail(&format!("workload.{name}"), "must be positive".into());
        }
        if w.large_values_per_mille > 1000 {
            return fail(
                "workload.large_values_per_mille",
                format!("{} is more than 1000 per mille", w.large_values_per_mille),
            );
        }
        let m = &w.mix;
        if (m.list > 0 && w.lists == 0) || (m.counter > 0 && w.counters == 0) {
            return fail("workload.mix", "list and counter operations need lists and counters > 0".into());
        }
        if [m.set, m.get, m.del, m.incr, m.mset, m.append, m.list, m.counter].iter().all(|&x| x == 0) {
            return fail("workload.mix", "at least one operation needs a weight".into());
        }
        for (i, f) in self.faults.iter().enumerate() {
            let field = |name: &str| format!("faults[{i}].{name}");
            if f.at_ms >= self.duration_ms {
                return fail(
                    &field("at_ms"),
                    format!("{} is not before duration_ms {}", f.at_ms, self.duration_ms),
                );
            }
            let target_ok =
                matches!(f.target.as_str(), "leader" | "follower" | "any" | "all" | "quorum" | "pair")
                    || f.target
                        .strip_prefix("node:")
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| (1..=self.cluster.nodes + self.cluster.spare).contains(&n));
            if !target_ok {
                return fail(
                    &field("target"),
                    format!(
                        "{:?} is not leader, follower, any, all, quorum, pair or node:<1..={}>",
                        f.target,
                        self.cluster.nodes + self.cluster.spare
                    ),
                );
            }
            if f.mid_write.is_some() && !matches!(f.action, Action::Kill | Action::PowerLoss) {
                return fail(&field("mid_write"), "only kills and power losses land inside a write".into());
            }
            if matches!(f.action, Action::Partition | Action::Clog) && f.for_ms.is_none() {
                return fail(&field("for_ms"), "partitions and clogs need for_ms".into());
            }
            if let Some((name, message)) = self.check_fault_fields(f) {
                return fail(&field(name), message);
            }
        }
        if self.invariants.skip_final_power_cycle.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return fail(
                "invariants.skip_final_power_cycle",
                "state the reason the run may end without a power loss".into(),
            );
        }
        if self.invariants.liveness_ms == 0 {
            return fail("invariants.liveness_ms", "must be positive".into());
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

    /// GOOD with its partition replaced by a failpoint delay.
    static FAILPOINT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        GOOD.replace(
            "action = \"partition\"\ntarget = \"node:2\"\nfor_ms = 2000",
            "action = \"failpoint\"\ntarget = \"node:2\"\nat = \"wal.sync\"\neffect = \"delay\"\nstall_ms = 200\nfor_ms = 2000",
        )
    });

    #[test]
    fn failpoint_faults_parse() {
        let s = parse(&FAILPOINT).expect("valid");
        assert_eq!(s.faults[1].action, Action::Failpoint);
        assert_eq!(s.faults[1].at.as_deref(), Some("wal.sync"));
        assert_eq!(s.faults[1].stall_ms, Some(200));
    }

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
        assert_eq!(s.workload.large_values_per_mille, 20);
    }

    #[test]
    fn unknown_keys_name_file_line_and_field() {
        let bad = GOOD.replace("fsm_sync = \"nosync\"", "fsm_sync = \"nosync\"\nfsm_synk = \"x\"");
        let e = parse(&bad).expect_err("unknown key");
        assert_eq!(e.file, PathBuf::from("scenarios/x.toml"));
        assert_eq!(e.field, "cluster.fsm_synk");
        assert_eq!(e.line, 10);
        assert!(e.to_string().starts_with("scenarios/x.toml:10: cluster.fsm_synk:"), "{e}");
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
            (GOOD.replace("for_ms = 2000", "for_ms = 2000\ntimes = 3"), "faults[1].times"),
            (FAILPOINT.replace("wal.sync", "wal.fsync"), "faults[1].at"),
            (FAILPOINT.replace("\"delay\"", "\"explode\""), "faults[1].effect"),
            (FAILPOINT.replace("stall_ms = 200", ""), "faults[1].stall_ms"),
            (FAILPOINT.replace("at = \"wal.sync\"", ""), "faults[1].at"),
            (
                GOOD.replace("rate_per_sec = 200", "rate_per_sec = 200\nlarge_values_per_mille = 1001"),
                "workload.large_values_per_mille",
            ),
        ];
        // Membership faults: the second fault (a partition of node:2) becomes one.
        let second = "action = \"partition\"\ntarget = \"node:2\"\nfor_ms = 2000";
        let membership =
            |fault: &str| GOOD.replace(second, fault).replace("nodes = 3", "nodes = 3\nspare = 1");
        parse(&membership("action = \"add_learner\"\ntarget = \"node:4\"")).expect("a spare joins");
        parse(&membership("action = \"promote\"\ntarget = \"node:4\"\nreplacing = 3"))
            .expect("a joint change");
        let cases = cases.into_iter().chain([
            (membership("action = \"add_learner\"\ntarget = \"node:2\""), "faults[1].target"),
            (membership("action = \"promote\"\ntarget = \"leader\""), "faults[1].target"),
            (membership("action = \"promote\"\ntarget = \"node:4\"\nreplacing = 0"), "faults[1].replacing"),
            (membership("action = \"promote\"\ntarget = \"node:4\"\nreplacing = 9"), "faults[1].replacing"),
            (membership("action = \"remove\"\ntarget = \"node:2\"\nreplacing = 1"), "faults[1].replacing"),
            (GOOD.replace("nodes = 3", "nodes = 3\nspare = 3"), "cluster.spare"),
        ]);
        for (text, field) in cases {
            let e = parse(&text).expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert!(e.line > 0, "{e}");
            if field.starts_with("faults[1]") {
                let second = text.lines().enumerate().filter(|(_, l)| l.trim() == "[[faults]]").nth(1);
                assert!(second.is_some_and(|(at, _)| e.line > at), "{e} points into the second fault");
            }
        }
        let wrong_type = GOOD.replace("duration_ms = 30000", "duration_ms = \"long\"");
        let e = parse(&wrong_type).expect_err("a string where a number goes");
        assert_eq!(e.line, 5, "{e}");
        let unknown_action = GOOD.replace("action = \"kill\"", "action = \"explode\"");
        assert!(parse(&unknown_action).expect_err("unknown action").message.contains("explode"));
        assert!(parse("not toml at all ===").is_err());
    }

    /// Three faults, the third the one to break; key names also appear in a comment, in a string and
    /// in earlier tables, and one header is spelled `[[ faults ]]`, which a search of the text misses.
    const THREE: &str = r#"name = "three-faults"
description = "at = \"wal\" appears in this text and in a comment"
seeds = [1]
duration_ms = 30000

[cluster]
nodes = 3

[[mounts]]
path = "/node/a"

[[mounts]]
path = "/node/b"

[workload]
clients = 2
keys = 4
mix = { set = 1 }
rate_per_sec = 10

# at = "snapshot" is a comment
[[faults]]
at_ms = 1000
action = "failpoint"
at = "wal.sync"
effect = "error"

[[ faults ]]
at_ms = 2000
action = "bit_flip"
at = "wal"

[[faults]]
at_ms = 3000
action = "bit_flip"
at = "snapshot"

[invariants]
liveness_ms = 10000
"#;

    /// The 1-based line of the `n`th (0-based) line of `text` that contains `needle`.
    fn line_with(text: &str, needle: &str, n: usize) -> usize {
        let at = text.lines().enumerate().filter(|(_, l)| l.contains(needle)).nth(n);
        at.map(|(i, _)| i + 1).unwrap_or_else(|| panic!("no line {n} with {needle:?}"))
    }

    /// Failure guarded against: an error pointing at the wrong line (the first fault's `at`, a
    /// comment naming the key, or no line at all), sending the reader elsewhere. Invariant: an unknown
    /// key, a value of the wrong type and a value only validation rejects each name the exact line of
    /// the broken field in the third fault; a missing field names the line where its fault starts.
    #[test]
    fn errors_name_the_exact_line_even_in_the_third_fault() {
        parse(THREE).expect("the unbroken file is valid");
        let third = |from: &str, to: &str| {
            let at = THREE.rfind(from).expect("in the third fault");
            format!("{}{}{}", &THREE[..at], to, &THREE[at + from.len()..])
        };
        let cases = [
            ("validation", third("at = \"snapshot\"", "at = \"nowhere\""), "nowhere", "faults[2].at"),
            ("unknown key", third("at = \"snapshot\"", "att = \"wal\""), "att =", "faults[2].att"),
            ("bad type", third("at = \"snapshot\"", "at = 7"), "at = 7", "faults[2].at"),
            ("validation", third("at_ms = 3000", "at_ms = 99000"), "99000", "faults[2].at_ms"),
            ("validation", THREE.replace("\"/node/b\"", "\"node/b\""), "\"node/b\"", "mounts[1].path"),
            ("validation", THREE.replace("clients = 2", "clients = 0"), "clients = 0", "workload.clients"),
            (
                "validation",
                third("action = \"bit_flip\"\nat = \"snapshot\"", "action = \"bit_rot\"\nop = \"sync\""),
                "op = \"sync\"",
                "faults[2].op",
            ),
            (
                "validation",
                third(
                    "action = \"bit_flip\"\nat = \"snapshot\"",
                    "action = \"torn_tail\"\neffect = \"kill\"",
                ),
                "effect = \"kill\"",
                "faults[2].effect",
            ),
            (
                "validation",
                third(
                    "action = \"bit_flip\"\nat = \"snapshot\"",
                    "action = \"torn_tail\"\nafter_op = \"truncate\"",
                ),
                "after_op = \"truncate\"",
                "faults[2].after_op",
            ),
        ];
        for (kind, text, marker, field) in cases {
            let e = parse(&text).expect_err(kind);
            assert_eq!((e.line, e.field.as_str()), (line_with(&text, marker, 0), field), "{kind}: {e}");
        }
        // A required field that is absent: the line where its fault starts.
        let text = third("action = \"bit_flip\"\nat = \"snapshot\"", "action = \"partition\"");
        let e = parse(&text).expect_err("a partition without for_ms");
        assert_eq!(e.field, "faults[2].for_ms", "{e}");
        assert_eq!(e.line, line_with(&text, "[[faults]]", 1), "{e}");
    }

    #[test]
    fn every_action_is_named_as_scenario_files_name_it() {
        #[derive(Deserialize)]
        struct One {
            action: Action,
        }
        for &a in Action::ALL {
            let one: One = toml::from_str(&format!("action = {:?}", a.name()))
                .unwrap_or_else(|e| panic!("{}: {e}", a.name()));
            assert_eq!(one.action, a);
        }
    }

    #[test]
    fn every_scenario_file_in_the_repository_parses() {
        let dir = crate::repo_root().join("scenarios");
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
