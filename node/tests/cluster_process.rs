//! Real `durakv` processes on loopback, driven through a Redis client (the `redis` crate).
//!
//! Failures injected: SIGKILL of the leader and then of a follower while clients write; a torn WAL
//! tail (the killed node's last segment cut inside a record) before a restart; a follower down while
//! the leader snapshots and compacts its log; a SET too large to replicate; SIGTERM of a leader with a
//! write in flight that it cannot commit. Invariants: every write acknowledged to a client is
//! readable on every node afterwards; a killed node restarts without operator action and catches up
//! (by log, or by snapshot when the log it needs is compacted away); the cluster keeps serving, a
//! too-large write included; a write whose outcome a stopping node cannot know is answered as unknown,
//! never as failed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(30);

struct Node {
    resp: u16,
    peer: u16,
    child: Option<Child>,
}

/// A cluster of real processes; killed on drop.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, Node>,
    extra: Vec<String>,
    /// Each node's `--metrics-addr` port, when the cluster was started with metrics.
    metrics: BTreeMap<u64, u16>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().expect("local addr").port()
}

impl Cluster {
    fn start(n: u64, extra: &[&str]) -> Cluster {
        let all: Vec<u64> = (1..=n).collect();
        Cluster::start_only(n, &all, extra)
    }

    /// A cluster of `n` members, each serving its metrics on a port of its own.
    fn start_metered(n: u64, extra: &[&str]) -> Cluster {
        let all: Vec<u64> = (1..=n).collect();
        Cluster::start_with(n, &all, extra, true)
    }

    /// A cluster of `n` members of which only `running` are started.
    fn start_only(n: u64, running: &[u64], extra: &[&str]) -> Cluster {
        Cluster::start_with(n, running, extra, false)
    }

    /// A cluster of `n` members with ports and data directories chosen, none started.
    fn configured(n: u64, extra: &[&str], metered: bool) -> Cluster {
        let nodes =
            (1..=n).map(|id| (id, Node { resp: free_port(), peer: free_port(), child: None })).collect();
        Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            nodes,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            metrics: if metered { (1..=n).map(|id| (id, free_port())).collect() } else { BTreeMap::new() },
        }
    }

    fn start_with(n: u64, running: &[u64], extra: &[&str], metered: bool) -> Cluster {
        let mut c = Cluster::configured(n, extra, metered);
        for &id in running {
            c.spawn(id);
        }
        c.leader();
        c
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    fn spawn(&mut self, id: u64) {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|(i, n)| format!("{i}=127.0.0.1:{},127.0.0.1:{}", n.peer, n.resp))
            .collect();
        let log = OpenOptions::new().create(true).append(true).open(self.log_path(id)).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_durakv"))
            .args(["--id", &id.to_string(), "--peers", &peers.join(";")])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(&self.extra)
            .args(
                self.metrics
                    .get(&id)
                    .map(|port| vec!["--metrics-addr".to_string(), format!("127.0.0.1:{port}")])
                    .unwrap_or_default(),
            )
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start durakv");
        self.nodes.get_mut(&id).expect("a configured node").child = Some(child);
    }

    /// SIGKILL: no shutdown path runs, as with the OOM killer.
    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).expect("a configured node").child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM: the node's own shutdown path runs; wait for the process to exit.
    fn terminate(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).expect("a configured node").child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("run kill -TERM");
            assert!(status.success(), "kill -TERM {} failed", child.id());
            child.wait().expect("reap");
        }
    }

    fn url(&self, id: u64) -> String {
        format!("redis://127.0.0.1:{}/", self.nodes[&id].resp)
    }

    fn connect(&self, id: u64) -> redis::RedisResult<redis::Connection> {
        let con = redis::Client::open(self.url(id))?.get_connection_with_timeout(Duration::from_secs(2))?;
        con.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(con)
    }

    fn info(&self, id: u64) -> Option<BTreeMap<String, String>> {
        let mut con = self.connect(id).ok()?;
        let text: String = redis::cmd("INFO").query(&mut con).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
        )
    }

    /// Wait until a node reports itself leader and return it.
    fn leader(&self) -> u64 {
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            for &id in self.nodes.keys() {
                if self.info(id).is_some_and(|i| i.get("role").map(String::as_str) == Some("leader")) {
                    return id;
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader within {SETTLE:?}; logs in {}", self.dir.path().display());
    }

    fn follower(&self) -> u64 {
        let leader = self.leader();
        *self.nodes.keys().find(|&&id| id != leader).expect("a cluster of at least two")
    }

    /// Read `keys` from node `id` until every value matches, or fail after `SETTLE` naming the first
    /// mismatch. A restarted node may still be catching up, so mismatches are retried.
    fn assert_readable(&self, id: u64, expected: &BTreeMap<String, String>) {
        let deadline = Instant::now() + SETTLE;
        let keys: Vec<&String> = expected.keys().collect();
        loop {
            let mismatch = match self.connect(id) {
                Err(e) => Some(format!("connect: {e}")),
                Ok(mut con) => keys.chunks(200).find_map(|chunk| {
                    let got: redis::RedisResult<Vec<Option<String>>> =
                        redis::cmd("MGET").arg(chunk).query(&mut con);
                    match got {
                        Err(e) => Some(format!("MGET: {e}")),
                        Ok(values) => chunk.iter().zip(values).find_map(|(k, v)| {
                            (v.as_deref() != Some(expected[*k].as_str()))
                                .then(|| format!("key {k}: acknowledged {:?}, read {v:?}", expected[*k]))
                        }),
                    }
                }),
            };
            match mismatch {
                None => return,
                Some(m) if Instant::now() >= deadline => {
                    panic!("node {id} lost an acknowledged write: {m}; logs in {}", self.dir.path().display())
                }
                Some(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn set(&self, id: u64, key: &str, value: &str) -> redis::RedisResult<()> {
        let mut con = self.connect(id)?;
        redis::cmd("SET").arg(key).arg(value).query::<()>(&mut con)
    }

    /// Write `n` keys with the given prefix, retrying each until acknowledged.
    fn write_keys(&self, prefix: &str, n: usize) -> BTreeMap<String, String> {
        let mut acked = BTreeMap::new();
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for i in 0..n {
            let (k, v) = (format!("{prefix}{i}"), format!("value-{prefix}{i}"));
            let deadline = Instant::now() + SETTLE;
            let mut attempt = 0;
            loop {
                let id = ids[(i + attempt) % ids.len()];
                if self.nodes[&id].child.is_some() && self.set(id, &k, &v).is_ok() {
                    break;
                }
                attempt += 1;
                assert!(Instant::now() < deadline, "could not write {k} within {SETTLE:?}");
                thread::sleep(Duration::from_millis(50));
            }
            acked.insert(k, v);
        }
        acked
    }

    /// Every key and value node `id` serves (SCAN, then MGET), with each key's TTL bucket: none,
    /// or expiring.
    fn dump(&self, id: u64) -> BTreeMap<String, (String, bool)> {
        let mut con = self.connect(id).expect("connect for a dump");
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query(&mut con).expect("SCAN");
            keys.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        let mut out = BTreeMap::new();
        for chunk in keys.chunks(500) {
            let values: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query(&mut con).expect("MGET");
            for (k, v) in chunk.iter().zip(values) {
                let ttl: i64 = redis::cmd("PTTL").arg(k).query(&mut con).expect("PTTL");
                if let Some(v) = v {
                    out.insert(k.clone(), (v, ttl >= 0));
                }
            }
        }
        out
    }

    /// Configure one more node (fresh ports, not started); its id.
    fn add_node(&mut self) -> u64 {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        self.nodes.insert(id, Node { resp: free_port(), peer: free_port(), child: None });
        id
    }

    /// Start node `id` as a new member joining the running cluster (`--join`).
    fn spawn_joining(&mut self, id: u64) {
        self.extra.push("--join".into());
        self.spawn(id);
        self.extra.pop();
    }

    fn admin(&self, via: u64, args: &[&str]) -> (bool, String, String) {
        let addr = format!("127.0.0.1:{}", self.nodes[&via].resp);
        let mut all: Vec<&std::ffi::OsStr> = vec!["admin".as_ref(), "--addr".as_ref(), addr.as_ref()];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        durakv_tool(&all)
    }

    /// Wait until node `id` has applied everything the leader committed (INFO).
    fn caught_up(&self, id: u64) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let leader = self.leader();
            let commit = self.info(leader).and_then(|i| i["commit_index"].parse::<u64>().ok()).unwrap_or(0);
            let applied =
                self.info(id).and_then(|i| i.get("applied_index")?.parse::<u64>().ok()).unwrap_or(0);
            if commit > 0 && applied >= commit {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not catch up ({applied} of {commit}); logs in {}",
                self.dir.path().display()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.child.is_some()).map(|(id, _)| *id).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// Clients writing distinct keys to every node in turn until told to stop; what each acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &Cluster, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let urls: Vec<String> = cluster.nodes.keys().map(|&id| cluster.url(id)).collect();
        let threads = (0..clients)
            .map(|c| {
                let (stop, acked, urls) = (stop.clone(), acked.clone(), urls.clone());
                thread::spawn(move || {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let url = &urls[(c + i) % urls.len()];
                        let (k, v) = (format!("load-{c}-{i}"), format!("v{i}"));
                        i += 1;
                        let result = redis::Client::open(url.as_str())
                            .and_then(|cl| cl.get_connection_with_timeout(Duration::from_millis(500)))
                            .and_then(|mut con| {
                                con.set_read_timeout(Some(Duration::from_secs(6)))?;
                                redis::cmd("SET").arg(&k).arg(&v).query::<()>(&mut con)
                            });
                        match result {
                            Ok(()) => {
                                acked.lock().expect("no writer panicked holding the lock").insert(k, v);
                            }
                            // Refused, timed out or the node is down: not acknowledged, so not owed.
                            Err(_) => thread::sleep(Duration::from_millis(20)),
                        }
                    }
                })
            })
            .collect();
        Load { stop, acked, threads }
    }

    fn finish(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a load thread panicked");
        }
        Arc::try_unwrap(self.acked)
            .map(|m| m.into_inner().expect("no writer panicked holding the lock"))
            .unwrap_or_default()
    }

    fn acked(&self) -> usize {
        self.acked.lock().expect("no writer panicked holding the lock").len()
    }
}

#[test]
fn sigkill_of_the_leader_then_a_follower_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]);
    let load = Load::start(&cluster, 4);
    thread::sleep(Duration::from_secs(1));

    let leader = cluster.leader();
    let before = load.acked();
    cluster.kill(leader);
    let deadline = Instant::now() + SETTLE;
    while load.acked() < before + 20 {
        assert!(
            Instant::now() < deadline,
            "the two survivors elected a leader and kept acknowledging writes"
        );
        thread::sleep(Duration::from_millis(100));
    }
    cluster.spawn(leader);
    thread::sleep(Duration::from_secs(1));

    let follower = cluster.follower();
    cluster.kill(follower);
    thread::sleep(Duration::from_secs(2));
    cluster.spawn(follower);
    thread::sleep(Duration::from_secs(1));

    let acked = load.finish();
    assert!(acked.len() > 50, "the load made progress: {} writes acknowledged", acked.len());
    for id in cluster.running() {
        cluster.assert_readable(id, &acked);
    }
    // And it keeps serving, through every node.
    for id in cluster.running() {
        cluster.set(id, &format!("after-{id}"), "ok").expect("a write after the restarts");
    }
}

/// The last WAL segment of a node's raft log.
fn last_segment(cluster: &Cluster, id: u64) -> PathBuf {
    let raft_dir = cluster.data_dir(id).join("raft");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&raft_dir)
        .expect("the raft dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments.pop().expect("at least one segment")
}

/// Write, SIGKILL a follower, `damage` its last WAL segment, write on, restart it, write again; every
/// acknowledged write must be readable on every node. Returns the follower's log and a scrape of its
/// metrics.
fn damage_a_stopped_follower_and_rejoin(damage: impl FnOnce(&Path)) -> (String, String, u64) {
    let mut cluster = Cluster::start_metered(3, &[]);
    let mut acked = cluster.write_keys("before-", 100);
    let victim = cluster.follower();
    cluster.kill(victim);
    damage(&last_segment(&cluster, victim));
    acked.extend(cluster.write_keys("while-down-", 50));
    cluster.spawn(victim);
    acked.extend(cluster.write_keys("after-", 50));
    for id in cluster.running() {
        cluster.assert_readable(id, &acked);
    }
    let (_, metrics) = http(cluster.metrics[&victim], b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    (std::fs::read_to_string(cluster.log_path(victim)).expect("the victim's log"), metrics, victim)
}

/// A start finding's count in a metrics scrape.
fn finding(metrics: &str, id: u64, finding: &str) -> f64 {
    let line = format!("durakv_start_findings_total{{finding=\"{finding}\",node=\"{id}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line} in:\n{metrics}"))
}

#[test]
fn a_node_restarted_with_a_torn_in_flight_append_repairs_it_and_catches_up() {
    // Failure: a follower is SIGKILLed, and its last segment then ends in a partial record past
    // everything it fsynced: what a kill in the middle of an append leaves (the bytes of a batch that
    // never reached its fsync, so never acknowledged). Invariants: it repairs the tail by itself,
    // needs no recovery from peers (it lost nothing it acknowledged), and no acknowledged write is lost.
    let (log, metrics, victim) = damage_a_stopped_follower_and_rejoin(|last| {
        // A frame header's worth of a batch that was being written: a length, then bytes that never
        // got their checksum.
        let mut torn = 64u32.to_be_bytes().to_vec();
        torn.extend_from_slice(&[0xA5; 13]);
        let mut f = File::options().append(true).open(last).expect("open segment");
        std::io::Write::write_all(&mut f, &torn).expect("append the torn write");
    });
    assert!(log.contains("repaired a torn WAL tail"), "the restart repaired the tail by itself:\n{log}");
    assert!(!log.contains("lost log entries"), "a torn unacknowledged write needs no recovery:\n{log}");
    assert_eq!(finding(&metrics, victim, "torn_tail_repaired"), 1.0, "{metrics}");
    assert_eq!(finding(&metrics, victim, "lost_entries"), 0.0, "{metrics}");
    assert_eq!(series_of(&metrics, "durakv_raft_recovery_remaining_entries", victim), 0.0);
}

#[test]
fn a_node_that_lost_its_acknowledged_wal_tail_recovers_it_from_the_leader() {
    // Failure: a follower is SIGKILLed and the end of its last segment (records it fsynced and
    // acknowledged) is lost, as a zeroed sector or a lost write-back would. Invariants: it starts
    // without an operator, says it is recovering lost entries, recovers them from the leader, and no
    // acknowledged write is lost.
    let (log, metrics, victim) = damage_a_stopped_follower_and_rejoin(|last| {
        let len = std::fs::metadata(last).expect("segment metadata").len();
        File::options().write(true).open(last).expect("open segment").set_len(len - 7).expect("truncate");
    });
    assert!(log.contains("lost log entries it may have acknowledged"), "recovery started:\n{log}");
    assert!(log.contains("recovered from peers"), "recovery ended:\n{log}");
    assert_eq!(finding(&metrics, victim, "lost_entries"), 1.0, "{metrics}");
    assert_eq!(series_of(&metrics, "durakv_raft_recover_to_index", victim), 0.0, "recovery is over");
    assert_eq!(series_of(&metrics, "durakv_recovering", victim), 0.0);
}

/// A cluster snapshotting every 20 entries and keeping `window` entries below each: a follower is
/// SIGKILLed, misses enough writes for several snapshots (each compacting the leader's log past it),
/// restarts, and every acknowledged write is readable on it. Returns the cluster, the follower and
/// the acknowledged writes.
fn follower_misses_several_snapshots(window: &str) -> (Cluster, u64, BTreeMap<String, String>) {
    let mut cluster = Cluster::start(3, &["--snapshot-every", "20", "--snapshot-catch-up-entries", window]);
    let mut acked = cluster.write_keys("early-", 10);
    let victim = cluster.follower();
    cluster.kill(victim);
    acked.extend(cluster.write_keys("missed-", 120));
    cluster.spawn(victim);
    cluster.assert_readable(victim, &acked);
    (cluster, victim, acked)
}

#[test]
fn a_follower_behind_a_compacted_log_catches_up_by_snapshot() {
    // No trailing window: the log keeps nothing below a snapshot.
    let (cluster, victim, mut acked) = follower_misses_several_snapshots("0");
    let info = cluster.info(victim).expect("INFO from the restarted follower");
    let installed: u64 = info["snapshots_installed"].parse().expect("a number");
    assert!(installed >= 1, "the follower caught up by snapshot, not by log: {info:?}");
    acked.extend(cluster.write_keys("later-", 20));
    for id in cluster.running() {
        cluster.assert_readable(id, &acked);
    }
}

/// Failure injected: a follower SIGKILLed while the leader takes several snapshots (every 20
/// entries), with a trailing window of 500 entries. Invariant: the restarted follower catches up
/// from the log, not by snapshot, although the leader compacted its log; every acknowledged write
/// is readable on it.
#[test]
fn a_follower_briefly_behind_catches_up_from_the_trailing_window() {
    let (cluster, victim, _) = follower_misses_several_snapshots("500");
    let info = cluster.info(victim).expect("INFO from the restarted follower");
    assert_eq!(info["snapshots_installed"], "0", "the window held what the follower missed: {info:?}");
    let leader = cluster.running().into_iter().find(|&id| id != victim).expect("another node");
    let other = cluster.info(leader).expect("INFO");
    let snapshot: u64 = other["snapshot_index"].parse().expect("a number");
    assert!(snapshot >= 20, "the cluster did snapshot (and compact) meanwhile: {other:?}");
}

/// Failure injected: a SET whose value (20 MiB) is larger than any raft entry may be, sent to the
/// leader and to a follower. Before the limits, raft took it, no peer accepted the frame carrying it,
/// and no later write on any node ever committed. Invariants: the write is refused with an `ERR` that
/// says why, on a connection that stays usable; nothing of it is stored; every node then takes writes
/// and serves them back; a value just under the limit replicates to every node; no peer ever refused
/// a frame.
#[test]
fn a_write_too_large_to_replicate_is_refused_and_every_node_keeps_taking_writes() {
    use durakv::limits::MAX_COMMAND_BYTES;

    let cluster = Cluster::start(3, &[]);
    let leader = cluster.leader();
    let big = vec![b'x'; 20 << 20];
    for id in [leader, cluster.follower()] {
        let mut con = cluster.connect(id).expect("connect");
        let err = redis::cmd("SET").arg("big").arg(&big).query::<()>(&mut con).expect_err("refused");
        assert_eq!(err.code(), Some("ERR"), "{err}");
        assert!(err.to_string().contains("too large to replicate"), "node {id}: {err}");
        // The connection read the whole request and is still in step.
        let pong: String = redis::cmd("PING").query(&mut con).expect("the same connection still answers");
        assert_eq!(pong, "PONG");
        redis::cmd("SET").arg(format!("small-{id}")).arg("1").query::<()>(&mut con).expect("a small write");
    }
    // Just under the limit: replicated, not refused (MAX_COMMAND_BYTES counts the whole encoded SET).
    let near = vec![b'y'; MAX_COMMAND_BYTES - 64];
    let mut con = cluster.connect(leader).expect("connect");
    redis::cmd("SET").arg("near").arg(&near).query::<()>(&mut con).expect("a write just under the limit");

    let mut expected = BTreeMap::new();
    for id in cluster.running() {
        let key = format!("after-big-{id}");
        cluster.set(id, &key, "ok").expect("every node takes writes after the refused one");
        expected.insert(key, "ok".to_string());
    }
    for id in cluster.running() {
        cluster.assert_readable(id, &expected);
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut con = cluster.connect(id).expect("connect");
            let (big_len, near_len): (i64, i64) = redis::pipe()
                .cmd("STRLEN")
                .arg("big")
                .cmd("STRLEN")
                .arg("near")
                .query(&mut con)
                .expect("STRLEN");
            assert_eq!(big_len, 0, "node {id} stored part of the refused write");
            if near_len == near.len() as i64 {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} never got the near-limit value: {near_len} bytes");
            thread::sleep(Duration::from_millis(200));
        }
    }
    for id in cluster.running() {
        let log = std::fs::read_to_string(cluster.log_path(id)).expect("node log");
        assert!(!log.contains("exceeds the limit"), "node {id} refused a peer frame:\n{log}");
    }
}

/// Failure injected: SIGTERM of a leader that holds an INCR it cannot commit (its one live follower
/// was SIGKILLed first; the third member never ran). Invariant: the client is told the outcome is
/// unknown (`TIMEOUT … may or may not have been applied`), not `ERR` (which a Redis client reads as
/// "not applied" and retries). And that was the truth: once both nodes are back, the INCR commits
/// from the stopped leader's log, and the counter reads 1.
#[test]
fn a_leader_stopped_with_a_write_in_flight_answers_that_its_outcome_is_unknown() {
    let mut cluster = Cluster::start_only(3, &[1, 2], &[]);
    let leader = cluster.leader();
    let follower = if leader == 1 { 2 } else { 1 };
    cluster.kill(follower);

    let url = cluster.url(leader);
    let incr = thread::spawn(move || -> redis::RedisResult<i64> {
        let mut con = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
        con.set_read_timeout(Some(Duration::from_secs(30)))?;
        redis::cmd("INCR").arg("counter").query(&mut con)
    });
    // Well inside the 5 s request timeout: the INCR is proposed and waits for a quorum.
    thread::sleep(Duration::from_secs(1));
    assert!(!incr.is_finished(), "the INCR cannot have been answered without a quorum");
    cluster.terminate(leader);

    let err = incr.join().expect("the client thread").expect_err("no quorum ever confirmed the INCR");
    assert_eq!(err.code(), Some("TIMEOUT"), "{err}");
    let text = err.to_string();
    assert!(text.contains("stopped") && text.contains("may or may not have been applied"), "{text}");

    // The stopped leader's log holds the INCR and only it can win an election between the two.
    cluster.spawn(leader);
    cluster.spawn(follower);
    let deadline = Instant::now() + SETTLE;
    loop {
        let value: Option<String> = cluster
            .connect(leader)
            .and_then(|mut con| redis::cmd("GET").arg("counter").query(&mut con))
            .ok()
            .flatten();
        if value.as_deref() == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the INCR in the stopped leader's log never committed (counter {value:?}); logs in {}",
            cluster.dir.path().display()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Failure guarded against: a leader stopped for maintenance (SIGTERM) leaving the cluster without a
/// leader for an election timeout (1–2 s in which writes stall or are refused). Invariant: under load,
/// a leader stopped with SIGTERM hands its leadership over first: another node leads, one term later,
/// within 300 ms of the old process's exit (an election after a crash waits at least 1 s), and no
/// acknowledged write is lost.
#[test]
fn sigterm_on_the_leader_hands_leadership_over_before_it_stops() {
    let mut cluster = Cluster::start(3, &[]);
    let load = Load::start(&cluster, 4);
    thread::sleep(Duration::from_secs(2));
    let leader = cluster.leader();
    let term: u64 = cluster.info(leader).expect("INFO")["term"].parse().expect("a number");
    cluster.terminate(leader);
    let exited = Instant::now();
    let others: Vec<u64> = cluster.running();
    let successor = loop {
        let leading = others.iter().find_map(|&id| {
            let info = cluster.info(id)?;
            (info.get("role").map(String::as_str) == Some("leader")).then(|| (id, info["term"].clone()))
        });
        if let Some(found) = leading {
            break found;
        }
        assert!(
            exited.elapsed() < Duration::from_millis(300),
            "no leader 300 ms after the old one stopped: it did not hand over; logs in {}",
            cluster.dir.path().display()
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(successor.1, (term + 1).to_string(), "one transfer, no election rounds");
    let log = std::fs::read_to_string(cluster.log_path(leader)).unwrap_or_default();
    assert!(log.contains("leadership handed over; stopping"), "{log}");
    thread::sleep(Duration::from_secs(1));
    let acked = load.finish();
    assert!(!acked.is_empty(), "the load got writes through");
    for id in cluster.running() {
        cluster.assert_readable(id, &acked);
    }
}

/// Read one HTTP response from the metrics port for `request` (status line, body).
fn http(port: u16, request: &[u8]) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(request).expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("a whole response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// The value of the series `name` (with node 1's label) in a scrape.
fn series(body: &str, name: &str) -> f64 {
    series_of(body, name, 1)
}

/// The value of the series `name` with node `id`'s label in a scrape.
fn series_of(body: &str, name: &str, id: u64) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}{{node=\"{id}\"}} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {name} in:\n{body}"))
}

/// Failure guarded against: a metrics port that exports nothing useful, or that a stray request
/// (another path, another method, garbage) can break. Invariant: after writes, a scrape of
/// `--metrics-addr` shows the persist and apply histograms counting, the applied entries, the
/// node leading; other requests get 404, 405 and 400, and the port keeps answering.
#[test]
fn the_metrics_port_exports_raft_and_state_machine_metrics_and_refuses_the_rest() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let cluster = Cluster::start(1, &["--metrics-addr", &addr]);
    let acked = cluster.write_keys("m-", 20);
    cluster.assert_readable(1, &acked);
    let (status, body) = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(series(&body, "durakv_raft_persist_seconds_count") >= 1.0);
    assert!(series(&body, "durakv_fsm_apply_seconds_count") >= 1.0);
    assert!(series(&body, "durakv_fsm_entries_applied_total") >= 20.0);
    assert!(series(&body, "durakv_raft_entries_persisted_total") >= 20.0);
    assert_eq!(series(&body, "durakv_raft_is_leader"), 1.0);
    assert!(series(&body, "durakv_raft_leader_terms_total") >= 1.0);
    assert!(series(&body, "durakv_reads_served_total") >= 1.0);
    assert_eq!(series(&body, "durakv_raft_voters"), 1.0);
    assert_eq!(series(&body, "durakv_raft_learners"), 0.0);
    assert_eq!(series(&body, "durakv_raft_removed"), 0.0);
    assert!(body.contains("durakv_raft_persist_seconds_bucket{node=\"1\",le=\"0.001\"}"), "{body}");
    assert_eq!(http(port, b"GET /other HTTP/1.1\r\n\r\n").0, "HTTP/1.1 404 Not Found");
    assert_eq!(http(port, b"POST /metrics HTTP/1.1\r\n\r\n").0, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(http(port, b"\x00\x01 not http\r\n\r\n").0, "HTTP/1.1 400 Bad Request");
    assert_eq!(http(port, b"GET /metrics HTTP/1.0\r\n\r\n").0, "HTTP/1.1 200 OK", "still answering");
    // INFO stats repeats the essentials.
    let info = cluster.info(1).expect("INFO");
    let persists: u64 = info["durakv_raft_persists"].parse().expect("a number");
    let applied: u64 = info["durakv_entries_applied"].parse().expect("a number");
    assert!(persists >= 1 && applied >= 20, "{info:?}");
    assert!(info["durakv_raft_persist_avg_us"].parse::<u64>().is_ok(), "{info:?}");
}

/// `n` bytes that do not compress (a splitmix64 stream from `seed`), so a database of them is as
/// large on disk as the values written.
fn incompressible(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Failure guarded against: a large snapshot written on the raft loop (the leader's ticks,
/// heartbeats and applies wait for the disk while it streams), or a received one read and restored
/// there. Setup: a follower is SIGKILLed; `mib` MiB of incompressible 64 KiB values are written
/// (the leader snapshots every `mib / 4` MiB of log, with no trailing window); the follower restarts
/// and installs the leader's last snapshot, at least three quarters of the database. Invariants: no node's raft loop
/// went longer than the election timeout (10 ticks of 100 ms) between two ticks, the leader kept its
/// term throughout, and the follower serves the acknowledged values.
fn a_large_snapshot_never_holds_up_a_raft_loop(mib: usize) {
    const VALUE: usize = 64 << 10;
    let log_bytes = (mib << 20) / 4;
    let mut cluster = Cluster::start_metered(
        3,
        &["--snapshot-log-bytes", &log_bytes.to_string(), "--snapshot-catch-up-entries", "0"],
    );
    let leader = cluster.leader();
    let term = cluster.info(leader).expect("INFO")["term"].clone();
    let victim = cluster.follower();
    cluster.kill(victim);
    let started = Instant::now();
    let values = (mib << 20) / VALUE;
    let mut con = cluster.connect(leader).expect("connect to the leader");
    for first in (0..values).step_by(16) {
        let mut pipe = redis::pipe();
        for i in first..(first + 16).min(values) {
            pipe.cmd("SET").arg(format!("big-{i}")).arg(incompressible(i as u64, VALUE)).ignore();
        }
        pipe.query::<()>(&mut con).expect("the leader takes the load");
    }
    println!("wrote {mib} MiB in {:.1} s", started.elapsed().as_secs_f64());
    let leader_info = cluster.info(leader).expect("INFO");
    assert!(leader_info["snapshot_index"].parse::<u64>().expect("a number") > 0, "{leader_info:?}");
    let started = Instant::now();
    cluster.spawn(victim);
    let deadline = Instant::now() + Duration::from_secs(60 + mib as u64 / 4);
    let commit: u64 = leader_info["commit_index"].parse().expect("a number");
    loop {
        let info = cluster.info(victim);
        let caught_up = info.as_ref().is_some_and(|i| {
            i["snapshots_installed"] != "0" && i["applied_index"].parse::<u64>().is_ok_and(|a| a >= commit)
        });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not install the snapshot: {info:?}; logs in {}",
            cluster.dir.path().display()
        );
        thread::sleep(Duration::from_millis(200));
    }
    println!("the follower installed it in {:.1} s", started.elapsed().as_secs_f64());
    let mut follower = cluster.connect(victim).expect("connect to the follower");
    for i in (0..values).step_by((values / 64).max(1)) {
        let got: Vec<u8> = redis::cmd("GET").arg(format!("big-{i}")).query(&mut follower).expect("GET");
        assert!(got == incompressible(i as u64, VALUE), "big-{i} differs on the follower");
    }
    for (&id, &port) in &cluster.metrics {
        let (_, body) = http(port, b"GET /metrics HTTP/1.1\r\n\r\n");
        let gap = series_of(&body, "durakv_raft_tick_gap_max_milliseconds", id);
        let timing = |name: &str| {
            let sum = series_of(&body, &format!("{name}_sum"), id);
            let count = series_of(&body, &format!("{name}_count"), id);
            format!("{count} taking {sum:.2} s")
        };
        let persists = series_of(&body, "durakv_raft_persist_seconds_count", id);
        let slow_persists = persists
            - body
                .lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "durakv_raft_persist_seconds_bucket{{node=\"{id}\",le=\"0.5\"}} "
                    ))
                })
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
        println!(
            "node {id}: longest tick gap {gap} ms; snapshots written {}, verified {}, restored {}; {persists} persists, {slow_persists} over 0.5 s",
            timing("durakv_snapshot_write_seconds"),
            timing("durakv_snapshot_verify_seconds"),
            timing("durakv_snapshot_restore_seconds")
        );
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
        for slow in log.lines().filter(|l| l.contains("the raft loop was held up")) {
            println!("node {id}: {slow}");
        }
        if gap >= 1000.0 {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            println!("node {id}'s log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        assert!(
            gap < 1000.0,
            "node {id}'s raft loop went {gap} ms without a tick; logs in {}",
            cluster.dir.path().display()
        );
    }
    let now = cluster.info(leader).expect("INFO");
    assert_eq!((now["role"].as_str(), &now["term"]), ("leader", &term), "the leader kept its term: {now:?}");
}

#[test]
fn a_snapshot_of_64_mib_is_written_and_installed_without_holding_up_a_raft_loop() {
    a_large_snapshot_never_holds_up_a_raft_loop(64);
}

/// The same at the size `DURAKV_LARGE_SNAPSHOT_MIB` names (`make test-large-snapshot`: 1024).
#[test]
#[ignore = "a long run: make test-large-snapshot"]
fn a_large_snapshot_is_written_and_installed_without_holding_up_a_raft_loop() {
    let mib = std::env::var("DURAKV_LARGE_SNAPSHOT_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    a_large_snapshot_never_holds_up_a_raft_loop(mib);
}

/// Run the `durakv` binary with `args`; its exit status and what it printed (stdout, stderr).
fn durakv_tool(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_durakv")).args(args).output().expect("run durakv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn backup_into(cluster: &Cluster, id: u64, file: &Path) -> (bool, String, String) {
    let addr = format!("127.0.0.1:{}", cluster.nodes[&id].resp);
    durakv_tool(&["admin".as_ref(), "--addr".as_ref(), addr.as_ref(), "backup".as_ref(), file.as_os_str()])
}

fn restore_into(file: &Path, data_dir: &Path, voters: &str) -> (bool, String, String) {
    durakv_tool(&[
        "restore".as_ref(),
        file.as_os_str(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--voters".as_ref(),
        voters.as_ref(),
    ])
}

/// Failures injected: a backup taken from a follower while clients write; a backup file with one
/// byte flipped; a restore into a data directory that already holds a node; a backup onto an
/// existing file. Invariants: every write acknowledged before the backup started is in the cluster
/// restored from it; a backup of a quiet cluster restores into a new cluster whose every key, value
/// and expiry matches the old one, and which takes writes; a damaged backup, a non-empty data
/// directory and an existing output file are refused by name, leaving everything as it was.
#[test]
fn a_cluster_round_trips_through_a_backup_taken_under_load() {
    let cluster = Cluster::start(3, &["--snapshot-every", "500"]);
    let mut before = cluster.write_keys("pre-", 300);
    let mut con = cluster.connect(cluster.leader()).expect("connect");
    redis::cmd("SET")
        .arg("expiring")
        .arg("soon-ish")
        .arg("EX")
        .arg(100_000)
        .query::<()>(&mut con)
        .expect("SET EX");
    let load = Load::start(&cluster, 3);
    thread::sleep(Duration::from_secs(1));
    before.extend(load.acked.lock().expect("no writer panicked holding the lock").clone());
    let work = tempfile::tempdir().expect("temp dir");
    let under_load = work.path().join("under-load.backup");
    let source_node = cluster.follower();
    let (ok, out, err) = backup_into(&cluster, source_node, &under_load);
    if !ok {
        // The cluster's directory goes with the panic: say what the node was doing.
        let log = std::fs::read_to_string(cluster.log_path(source_node)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "backup under load from node {source_node} failed: {out}{err}; INFO now: {:?}; its log ends:\n{}",
            cluster.info(source_node).map(|i| (i.get("role").cloned(), i.get("term").cloned())),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    assert!(out.contains("index "), "{out}");
    let acked = load.finish();
    assert!(!acked.is_empty(), "the load got writes through");

    // An existing output file is never overwritten.
    let (ok, _, err) = backup_into(&cluster, cluster.leader(), &under_load);
    assert!(!ok && err.contains("already exists"), "{err}");

    // A quiet cluster: its backup restores into a new cluster that serves exactly the same data.
    let quiet = work.path().join("quiet.backup");
    let (ok, out, err) = backup_into(&cluster, cluster.leader(), &quiet);
    assert!(ok, "backup failed: {out}{err}");
    let source = cluster.dump(cluster.leader());
    assert!(source.len() > 300, "{} keys", source.len());
    let mut restored = Cluster::configured(3, &[], false);
    for id in 1..=3 {
        let (ok, out, err) = restore_into(&quiet, &restored.data_dir(id), "1,2,3");
        assert!(ok, "restore of node {id} failed: {out}{err}");
    }
    for id in 1..=3 {
        restored.spawn(id);
    }
    let leader = restored.leader();
    for id in 1..=3 {
        let deadline = Instant::now() + SETTLE;
        while restored.dump(id) != source {
            assert!(Instant::now() < deadline, "node {id} of the restored cluster differs from the source");
            thread::sleep(Duration::from_millis(200));
        }
    }
    restored.set(leader, "after-restore", "1").expect("the restored cluster takes writes");
    restored.assert_readable(restored.follower(), &BTreeMap::from([("after-restore".into(), "1".into())]));

    // The backup taken under load holds every write acknowledged before it started (one node).
    let mut single = Cluster::configured(1, &[], false);
    let (ok, out, err) = restore_into(&under_load, &single.data_dir(1), "1");
    assert!(ok, "restore failed: {out}{err}");
    single.spawn(1);
    single.leader();
    single.assert_readable(1, &before);

    // Restoring over a node's data is refused, and changes nothing.
    let (ok, _, err) = restore_into(&quiet, &single.data_dir(1), "1");
    assert!(!ok && err.contains("restore seeds only an empty data directory"), "{err}");
    single.assert_readable(1, &before);

    // One flipped byte: refused by its checksum, and nothing is written.
    let damaged = work.path().join("damaged.backup");
    let mut bytes = std::fs::read(&quiet).expect("read the backup");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&damaged, bytes).expect("write the damaged copy");
    let fresh = work.path().join("fresh");
    let (ok, _, err) = restore_into(&damaged, &fresh, "1");
    assert!(!ok && err.contains("CRC"), "{err}");
    assert!(
        !fresh.join("raft").exists() && !fresh.join("snapshots").exists(),
        "a refused restore wrote nothing"
    );
}

const PEER_SECRET: &str = "correct-horse-battery-staple-42";

/// What a foreign process gets from a node's peer port when it claims to be member `claim`: it
/// sends a hello (`secured`: claiming to have the secret), then a made-up proof, then a vote request
/// and an append of a far higher term. `true` when the node kept the connection open for the raft
/// messages (it must not).
fn impostor_stays_connected(peer_port: u16, to: u64, claim: u64, secured: bool, term: u64) -> bool {
    use durakv::transport::frame::{PROOF_LEN, PeerFrame};
    use raft::eraftpb::{Message, MessageType};
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", peer_port)).expect("connect to the peer port");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut out = Vec::new();
    PeerFrame::Hello { cluster_id: 1, node_id: claim, nonce: [5; 16], secured }.encode(&mut out);
    PeerFrame::Proof([0xab; PROOF_LEN]).encode(&mut out);
    for kind in [MessageType::MsgRequestVote, MessageType::MsgAppend] {
        let mut m = Message { from: claim, to, term, ..Message::default() };
        m.set_msg_type(kind);
        PeerFrame::Raft(Box::new(m)).encode(&mut out);
    }
    // The whole conversation in one write: the node must refuse at the proof, before the messages.
    let _ = s.write_all(&out);
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    loop {
        match s.read(&mut buf) {
            // Still open after the read timeout: the node is waiting for more from the impostor.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return true;
            }
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                got += n;
                // A hello (48 bytes) is all a node may send before a good proof; anything more
                // would be its own proof, given to an impostor.
                assert!(got <= 48, "the node answered an unproven peer with {got} bytes");
            }
        }
    }
}

fn terms(cluster: &Cluster) -> BTreeMap<u64, String> {
    cluster.running().into_iter().map(|id| (id, cluster.info(id).expect("INFO")["term"].clone())).collect()
}

/// Failures injected: a foreign process on the peer port claiming to be a member (with a made-up
/// proof, and without claiming a secret), sending a vote request and an append of a far higher
/// term; a member restarted with the wrong peer secret. Invariants: nothing an unproven peer sends
/// is stepped (every node's term stays where it was, no election); each refusal is logged with its
/// reason; the member with the wrong secret stays out until restarted with the right one, then
/// catches up with every acknowledged write.
#[test]
fn a_process_without_the_peer_secret_cannot_step_messages_into_the_cluster() {
    let mut cluster = Cluster::start(3, &["--peer-secret", PEER_SECRET]);
    let mut acked = cluster.write_keys("secured-", 50);
    let leader = cluster.leader();
    let follower = cluster.follower();
    let before = terms(&cluster);
    let term: u64 = before[&leader].parse().expect("a number");
    for secured in [true, false] {
        assert!(
            !impostor_stays_connected(cluster.nodes[&follower].peer, follower, leader, secured, term + 100),
            "the node kept an unproven peer connected"
        );
    }
    thread::sleep(Duration::from_secs(2));
    assert_eq!(terms(&cluster), before, "an unproven peer's messages moved a term");
    assert_eq!(cluster.leader(), leader, "an unproven peer's messages moved leadership");
    let log = std::fs::read_to_string(cluster.log_path(follower)).unwrap_or_default();
    assert!(log.contains("did not prove it knows the peer secret"), "{log}");
    assert!(log.contains("it has no peer secret, and this node requires one"), "{log}");

    // A member with the wrong secret is refused both ways, and the rest go on without it.
    let outsider = *cluster.nodes.keys().find(|&&id| id != leader && id != follower).expect("a third node");
    cluster.kill(outsider);
    cluster.extra = vec!["--peer-secret".into(), "not-the-cluster-secret-at-all".into()];
    cluster.spawn(outsider);
    thread::sleep(Duration::from_secs(3));
    acked.extend(cluster.write_keys("while-out-", 20));
    let outsider_info = cluster.info(outsider).expect("the outsider serves INFO");
    assert_ne!(outsider_info["leader_id"], leader.to_string(), "the outsider joined with a wrong secret");
    assert_eq!(terms(&cluster)[&leader], before[&leader], "the outsider disturbed the cluster's term");
    let log = std::fs::read_to_string(cluster.log_path(outsider)).unwrap_or_default();
    assert!(log.contains("refused"), "{log}");

    // With the right secret it rejoins and catches up.
    cluster.kill(outsider);
    cluster.extra = vec!["--peer-secret".into(), PEER_SECRET.into()];
    cluster.spawn(outsider);
    cluster.assert_readable(outsider, &acked);
}

/// Failures injected: a leadership transfer asked through a follower that is not the target (it
/// forwards it), one asked of the leader without a target, FAILOVER to an address that is no
/// member's and with Redis's FORCE. Invariants: the named member leads in the next term, without an
/// election timeout's wait; without a target, a follower takes over; the refusals say why; every
/// write acknowledged before and after is readable everywhere.
#[test]
fn failover_hands_leadership_to_the_named_member_or_to_the_best_follower() {
    let cluster = Cluster::start(3, &[]);
    let mut acked = cluster.write_keys("before-", 50);
    let leader = cluster.leader();
    let term: u64 = cluster.info(leader).expect("INFO")["term"].parse().expect("a number");
    let target = cluster.follower();
    let via = *cluster.nodes.keys().find(|&&id| id != leader && id != target).expect("a third node");
    let addr = |id: u64| format!("127.0.0.1:{}", cluster.nodes[&id].resp);
    let started = Instant::now();
    let (ok, out, err) = durakv_tool(&[
        "admin".as_ref(),
        "--addr".as_ref(),
        addr(via).as_ref(),
        "failover".as_ref(),
        "--to".as_ref(),
        addr(target).as_ref(),
    ]);
    assert!(ok, "failover through node {via} failed: {out}{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "the transfer waited for an election timeout");
    let info = cluster.info(target).expect("INFO");
    assert_eq!(info["role"], "leader", "node {target} did not take over");
    assert_eq!(info["term"], (term + 1).to_string(), "one transfer, no election rounds");
    acked.extend(cluster.write_keys("after-", 50));

    // Without a target, the leader hands over to a follower of its choosing.
    let (ok, out, err) =
        durakv_tool(&["admin".as_ref(), "--addr".as_ref(), addr(target).as_ref(), "failover".as_ref()]);
    assert!(ok, "failover without a target failed: {out}{err}");
    let new_leader = cluster.leader();
    assert_ne!(new_leader, target, "leadership stayed where it was");

    // Refusals, by name.
    let (ok, _, err) = durakv_tool(&[
        "admin".as_ref(),
        "--addr".as_ref(),
        addr(new_leader).as_ref(),
        "failover".as_ref(),
        "--to".as_ref(),
        "127.0.0.1:1".as_ref(),
    ]);
    assert!(!ok && err.contains("is not a member's client address"), "{err}");
    let mut con = cluster.connect(new_leader).expect("connect");
    let forced: redis::RedisResult<()> = redis::cmd("FAILOVER").arg("FORCE").query(&mut con);
    assert!(forced.is_err_and(|e| e.to_string().contains("takes no FORCE")));
    acked.extend(cluster.write_keys("last-", 20));
    for id in cluster.running() {
        cluster.assert_readable(id, &acked);
    }
}

/// Failures injected: a voter's machine dies (SIGKILL, its disk never comes back) while clients
/// write; the documented replacement then runs with the `durakv admin` commands only (add a learner
/// under a new id, start it with `--join`, promote it replacing the dead voter: a joint change);
/// afterwards the leader itself is removed, and the new member and an original one are killed and
/// restarted. Invariants: every acknowledged write is readable on every member, the new one
/// included (which joined by snapshot, after a membership change, so it learned the initial voters
/// from it and never replayed the log without them); the cluster keeps a quorum of the new
/// membership (it writes with the dead node gone and one more member down); a removed node says so
/// and refuses requests; restarted members keep the membership (the member book is durable).
#[test]
fn a_dead_voter_is_replaced_under_a_new_id_with_the_documented_commands() {
    let mut cluster = Cluster::start(3, &["--snapshot-catch-up-entries", "50"]);
    let mut acked = cluster.write_keys("before-", 200);
    let leader = cluster.leader();
    let dead = *cluster.nodes.keys().find(|&&id| id != leader).expect("a follower");
    cluster.kill(dead);
    acked.extend(cluster.write_keys("degraded-", 50));

    // 1. Add the new node as a learner (through any member: a follower redirects to the leader).
    let new = cluster.add_node();
    let via = *cluster.nodes.keys().find(|&&id| id != leader && id != dead && id != new).expect("a follower");
    let (peer, resp) = (
        format!("127.0.0.1:{}", cluster.nodes[&new].peer),
        format!("127.0.0.1:{}", cluster.nodes[&new].resp),
    );
    let (ok, out, err) = cluster.admin(via, &["add-learner", &new.to_string(), &peer, &resp]);
    assert!(ok, "add-learner failed: {out}{err}");
    assert!(!out.lines().any(|l| l.starts_with(&format!("{dead} ")) && l.contains("learner")), "{out}");
    assert!(out.lines().any(|l| l.starts_with(&format!("{new} learner {peer} {resp}"))), "{out}");
    // 2. Start it with --join; it catches up by snapshot.
    cluster.spawn_joining(new);
    cluster.caught_up(new);
    // A promotion of a node that is not a learner, or of an unknown one, is refused by name.
    let (ok, _, err) = cluster.admin(via, &["promote", "9"]);
    assert!(!ok && err.contains("node 9 is not a learner"), "{err}");
    // 3. Promote it in place of the dead voter (one joint change, left by the leader on its own).
    let (ok, out, err) = cluster.admin(via, &["promote", &new.to_string(), "--replacing", &dead.to_string()]);
    assert!(ok, "promote failed: {out}{err}");
    // It answers with the membership the change left: the joint configuration already left.
    assert!(out.lines().any(|l| l.starts_with(&format!("{new} voter "))), "{out}");
    assert!(!out.lines().any(|l| l.starts_with(&format!("{dead} "))), "{out}");
    let mut expected: Vec<u64> = cluster.nodes.keys().copied().filter(|&id| id != dead).collect();
    expected.sort_unstable();
    // The leader answered once it left the joint configuration; the new member applies that a moment later.
    let deadline = Instant::now() + SETTLE;
    let members = loop {
        let (ok, members, err) = cluster.admin(new, &["members"]);
        assert!(ok, "{err}");
        let voters: Vec<u64> = members
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some("voter"))
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect();
        if voters == expected && members.lines().count() == expected.len() {
            break members;
        }
        assert!(Instant::now() < deadline, "members as the new node sees them:\n{members}");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        !members.lines().any(|l| l.starts_with(&format!("{dead} "))),
        "the dead node is still listed:\n{members}"
    );
    let info = cluster.info(new).expect("INFO of the new member");
    assert_eq!(info["voters"], expected.iter().map(u64::to_string).collect::<Vec<_>>().join(","));
    acked.extend(cluster.write_keys("replaced-", 100));
    // The dead node is gone for good: with another member down, the new membership still has a quorum.
    let other =
        *expected.iter().find(|&&id| id != cluster.leader() && id != new).expect("an original follower");
    cluster.kill(other);
    acked.extend(cluster.write_keys("quorum-", 50));
    for id in cluster.running() {
        cluster.assert_readable(id, &acked);
    }
    // Restarts keep the membership: the new member (its --join is a no-op now) and the original one
    // (its --peers still name the dead node; the stored member book wins).
    cluster.kill(new);
    cluster.spawn(new);
    cluster.spawn(other);
    acked.extend(cluster.write_keys("restarted-", 50));
    cluster.caught_up(new);
    cluster.caught_up(other);

    // 4. Remove the leader itself: it hands leadership over first, then says it was removed.
    let old_leader = cluster.leader();
    let (ok, out, err) = cluster.admin(old_leader, &["remove", &old_leader.to_string()]);
    assert!(ok, "remove of the leader failed: {out}{err}");
    let deadline = Instant::now() + SETTLE;
    let next = loop {
        let next = cluster.leader();
        if next != old_leader {
            break next;
        }
        assert!(Instant::now() < deadline, "the removed leader still leads");
        thread::sleep(Duration::from_millis(100));
    };
    let info = cluster.info(old_leader).expect("INFO of the removed node");
    assert_eq!(info["removed"], "1", "{info:?}");
    let mut con = cluster.connect(old_leader).expect("connect to the removed node");
    let refused: redis::RedisResult<()> = redis::cmd("SET").arg("k").arg("v").query(&mut con);
    assert!(
        refused.is_err_and(|e| e.to_string().contains("removed from the cluster")),
        "the removed node took a write"
    );
    cluster.kill(old_leader);
    acked.extend(cluster.write_keys("after-removal-", 50));
    let (ok, members, _) = cluster.admin(next, &["members"]);
    assert!(ok && !members.lines().any(|l| l.starts_with(&format!("{old_leader} "))), "{members}");
    for id in cluster.running() {
        cluster.assert_readable(id, &acked);
    }
}
