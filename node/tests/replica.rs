//! Three replicas in one process, each on its own simulated disk, exchanging raft messages through
//! in-memory inboxes in a deterministic loop.
//!
//! Failures injected: a follower and then the leader lose power mid-run and restart from their disks;
//! the state machine runs `nosync`; OOM-kills inside a WAL append; acknowledged WAL records lost
//! while a node is down. Invariants: every proposal acknowledged to the client is applied on every
//! replica; replicas converge to the same data at the same applied index; a restarted replica catches
//! up without help; a replica that lost acknowledged entries never helps elect a leader lacking them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use durakv::fsm::{Command, FsmSync, Kv, Reply, SetCondition, SimEngine, SimEngineOptions};
use durakv::io::{Fs, SharedFs, read_file};
use durakv::replica::{Replica, ReplicaConfig, ReplicaError, SnapshotSettings, route};
use durakv::snapshot::{DEFAULT_SPOOL_CAP_BYTES, SnapshotStore, SnapshotToken, StreamInfo};
use durakv::storage::RaftStorage;
use durakv::wal::WalOptions;
use durakv_faults::{CrashKind, FaultEffect, FaultRule, OpKind, SimFs};
use raft::eraftpb::{Message, MessageType};

const VOTERS: [u64; 3] = [1, 2, 3];

/// A replica keeping `catch_up_entries` entries in its log below each snapshot it takes.
fn start_with_window(
    fs: &SimFs,
    id: u64,
    mode: FsmSync,
    every: u64,
    catch_up_entries: u64,
) -> Replica<SimEngine> {
    let shared: SharedFs = Arc::new(fs.clone());
    let (store, _) =
        SnapshotStore::open(shared.clone(), Path::new("/node/snap"), Path::new("/node/spool"), 3)
            .expect("store");
    let snapshots = SnapshotSettings {
        fs: shared.clone(),
        store,
        every_entries: every,
        every_bytes: u64::MAX,
        catch_up_entries,
    };
    let (storage, _) =
        RaftStorage::open(shared.clone(), Path::new("/node/raft"), WalOptions::default()).expect("storage");
    storage.bootstrap(&VOTERS).expect("bootstrap");
    let engine =
        SimEngine::open(shared, Path::new("/node/fsm"), SimEngineOptions::default()).expect("engine");
    let kv = Kv::new(engine, mode).expect("kv");
    Replica::new(&ReplicaConfig::new(id), storage, kv, snapshots).expect("replica")
}

fn disk(id: u64) -> SimFs {
    let fs = SimFs::with_seed(id);
    fs.create_dir_all(Path::new("/node")).expect("mkdir");
    fs.sync_dir(Path::new("/")).expect("sync");
    fs
}

struct Cluster {
    /// Replicas whose disk crashed under them, waiting for a restart.
    down: Vec<u64>,
    mode: FsmSync,
    every: u64,
    /// Entries each replica keeps below its snapshots.
    window: u64,
    snapshots_sent: u64,
    disks: BTreeMap<u64, SimFs>,
    nodes: BTreeMap<u64, Replica<SimEngine>>,
    inboxes: BTreeMap<u64, Vec<Message>>,
    replies: BTreeMap<u64, Reply>,
}

impl Cluster {
    fn new(mode: FsmSync, every: u64) -> Cluster {
        Cluster::with_window(mode, every, 0)
    }

    fn with_window(mode: FsmSync, every: u64, window: u64) -> Cluster {
        let disks: BTreeMap<u64, SimFs> = VOTERS.iter().map(|&id| (id, disk(id))).collect();
        let nodes =
            disks.iter().map(|(&id, fs)| (id, start_with_window(fs, id, mode, every, window))).collect();
        Cluster {
            down: Vec::new(),
            mode,
            every,
            window,
            snapshots_sent: 0,
            disks,
            nodes,
            inboxes: BTreeMap::new(),
            replies: BTreeMap::new(),
        }
    }

    /// What a transport does for a snapshot message: stream the sender's file into the receiver's
    /// spool, finalize it, then deliver the message; report the outcome to the sender.
    fn ship_snapshot(&mut self, m: &Message) -> bool {
        let Some(target) = self.nodes.get(&m.to) else { return false };
        let token = SnapshotToken::decode(&m.snapshot.as_ref().expect("a snapshot message carries one").data)
            .expect("token");
        let from_store = self.nodes[&m.from].snapshot_store().path(token.index);
        let bytes = read_file(&self.disks[&m.from], &from_store).expect("the sender's snapshot file");
        let body = &bytes[..bytes.len() - 4];
        let store = target.snapshot_store();
        let guard = store.begin_receive(token.index);
        let info = StreamInfo { index: token.index, len: body.len() as u64, crc: token.crc };
        let mut spool = store.spool(&guard, info, DEFAULT_SPOOL_CAP_BYTES).expect("spool");
        for chunk in body.chunks(4096) {
            spool.push(chunk).expect("push");
        }
        spool.finalize().expect("finalize");
        self.snapshots_sent += 1;
        true
    }

    /// One round: deliver every queued message, handle every ready, route the output.
    fn round(&mut self) {
        let mut stopped = Vec::new();
        for (id, node) in self.nodes.iter_mut() {
            for m in self.inboxes.remove(id).unwrap_or_default() {
                match node.step(m) {
                    Ok(()) => {}
                    // A failed read of the log is a fail-stop (D10): down until restarted.
                    Err(ReplicaError::LogRead(_)) => {
                        stopped.push(*id);
                        break;
                    }
                    Err(e) => panic!("replica {id} failed to step: {e}"),
                }
            }
        }
        for id in stopped {
            self.nodes.remove(&id);
            self.down.push(id);
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let node = self.nodes.get_mut(&id).expect("node");
            let out = match node.handle_ready().and_then(|out| node.maybe_snapshot().map(|_| out)) {
                Ok(out) => out,
                Err(e)
                    if self.disks[&id].is_halted()
                        || e.to_string().contains("injected at failpoint")
                        || matches!(e, ReplicaError::LogRead(_)) =>
                {
                    // An injected failure is a fail-stop (D10): the replica is down until restarted.
                    // The armed crash fired inside this replica's ready: it is down until restarted.
                    let _ = e;
                    self.nodes.remove(&id);
                    self.down.push(id);
                    continue;
                }
                Err(e) => panic!("replica {id} failed without a crash: {e}"),
            };
            self.replies.extend(out.replies);
            let mut plain = Vec::new();
            for m in out.messages {
                if m.msg_type() == MessageType::MsgSnapshot {
                    let delivered = self.ship_snapshot(&m);
                    self.nodes.get_mut(&id).expect("sender").report_snapshot(m.to, delivered);
                    if !delivered {
                        continue;
                    }
                }
                plain.push(m);
            }
            route(plain, &mut self.inboxes);
        }
        // Messages to a node that is down are lost, like on a network.
        let up: Vec<u64> = self.nodes.keys().copied().collect();
        self.inboxes.retain(|to, _| up.contains(to));
    }

    fn tick_all(&mut self) {
        for node in self.nodes.values_mut() {
            node.tick();
        }
    }

    fn run_until(&mut self, mut done: impl FnMut(&Cluster) -> bool, what: &str) {
        for i in 0..2000 {
            if done(self) {
                return;
            }
            if i % 3 == 0 {
                self.tick_all();
            }
            self.round();
        }
        panic!("no progress: {what}");
    }

    fn leader(&self) -> Option<u64> {
        self.nodes.values().find(|n| n.is_leader()).map(|n| n.id())
    }

    fn elect(&mut self) -> u64 {
        self.run_until(|c| c.leader().is_some(), "a leader is elected");
        self.leader().expect("a leader")
    }

    fn set(&mut self, request: u64, key: &str, value: &str) {
        let leader = self.elect();
        let cmd = Command::set(key, value, SetCondition::Always).to_bytes();
        self.nodes.get_mut(&leader).expect("leader").propose(request, cmd).expect("propose");
        self.run_until(|c| c.replies.contains_key(&request), "the proposal is applied");
        assert_eq!(self.replies[&request], Reply::Ok);
    }

    fn converge(&mut self) {
        self.run_until(
            |c| {
                let applied: Vec<u64> = c.nodes.values().map(|n| n.applied_index()).collect();
                let commit = c.nodes.values().map(|n| n.commit_index()).max().unwrap_or(0);
                applied.iter().all(|&a| a == commit) && c.nodes.len() == VOTERS.len()
            },
            "every replica applies everything committed",
        );
    }

    /// Acknowledged writes k{i} = v{i} for every i in `range`, one at a time (what `check_all_have`
    /// checks).
    fn write(&mut self, range: std::ops::RangeInclusive<u64>) {
        for i in range {
            self.set(i, &format!("k{i}"), &format!("v{i}"));
        }
    }

    /// A follower of the current leader.
    fn a_follower(&mut self) -> u64 {
        let leader = self.elect();
        VOTERS.into_iter().find(|&id| id != leader).expect("a follower")
    }

    /// Take `id` down and crash its disk.
    fn crash(&mut self, id: u64, kind: CrashKind) {
        self.nodes.remove(&id);
        self.disks[&id].crash(kind);
    }

    fn restart(&mut self, id: u64) {
        let node = start_with_window(&self.disks[&id], id, self.mode, self.every, self.window);
        self.nodes.insert(id, node);
    }
}

fn check_all_have(c: &Cluster, n: u64) {
    for node in c.nodes.values() {
        for i in 1..=n {
            assert_eq!(
                node.kv().get(format!("k{i}").as_bytes()).expect("get"),
                Some(format!("v{i}").into_bytes()),
                "replica {} lost acknowledged write k{i}",
                node.id()
            );
        }
    }
    let applied: Vec<u64> = c.nodes.values().map(|n| n.applied_index()).collect();
    assert!(applied.windows(2).all(|w| w[0] == w[1]), "replicas converge to one applied index: {applied:?}");
}

fn scenario(mode: FsmSync, every: u64) -> Cluster {
    story(Cluster::new(mode, every))
}

/// Writes, a follower's power loss and catch-up, the leader's power loss and catch-up.
fn story(mut c: Cluster) -> Cluster {
    c.write(1..=20);
    c.converge();
    check_all_have(&c, 20);
    // A follower loses power, writes go on without it, it restarts and catches up.
    let follower = c.a_follower();
    c.crash(follower, CrashKind::PowerLoss);
    c.write(21..=40);
    c.restart(follower);
    c.converge();
    check_all_have(&c, 40);
    // The leader loses power: a new leader is elected, acknowledged writes survive, the old leader
    // comes back as a follower and catches up.
    let old = c.elect();
    c.crash(old, CrashKind::PowerLoss);
    c.write(41..=60);
    assert_ne!(c.leader(), Some(old));
    c.restart(old);
    c.converge();
    check_all_have(&c, 60);
    c
}

#[test]
fn three_replicas_survive_power_loss_of_a_follower_and_the_leader() {
    let c = scenario(FsmSync::Sync, 1_000_000);
    assert_eq!(c.snapshots_sent, 0, "no snapshots without compaction");
}

#[test]
fn three_replicas_with_a_nosync_fsm_replay_the_log_after_power_loss() {
    scenario(FsmSync::NoSync, 1_000_000);
}

#[test]
fn a_follower_that_only_receives_snapshots_keeps_no_more_than_the_retention() {
    // Failure injected: a follower is down while the log compacts, three times over, and its own
    // snapshot interval is never reached (it only ever installs received snapshots).
    // Invariant (D11): after each install, retention runs: at most 3 snapshot files (the store keeps
    // 3 here) and the one the log is based on is among them.
    let mut c = Cluster::new(FsmSync::Sync, 7);
    c.write(1..=10);
    c.converge();
    let follower = c.a_follower();
    let mut next = 11;
    for _ in 0..4 {
        c.crash(follower, CrashKind::ProcessKill);
        c.write(next..=next + 15);
        next += 16;
        c.restart(follower);
        c.converge();
    }
    let node = &c.nodes[&follower];
    let files = node.snapshot_store().list().expect("list");
    let base = node.storage().snapshot_pointer().metadata.index;
    assert!(files.len() <= 3, "{} snapshot files kept: {files:?}", files.len());
    assert!(files.iter().any(|(i, _)| *i == base), "the log's base snapshot {base} is kept: {files:?}");
    check_all_have(&c, next - 1);
}

#[test]
fn a_follower_behind_a_compacted_log_catches_up_by_snapshot() {
    // Snapshots every 7 entries compact the log, so a follower that was down for 20 writes can only
    // catch up through a snapshot streamed into its spool.
    for mode in [FsmSync::Sync, FsmSync::NoSync] {
        let c = scenario(mode, 7);
        assert!(c.snapshots_sent > 0, "{mode:?}: the restarted replicas needed a snapshot");
        for node in c.nodes.values() {
            assert!(node.storage().snapshot_pointer().metadata.index > 0, "every replica has snapshotted");
        }
    }
}

/// Failure injected: the same power losses, with snapshots every 7 entries, but each replica keeps
/// 30 entries below its snapshots. Invariant: the restarted replicas catch up from the log (no
/// snapshot is shipped, every write is everywhere) although every replica snapshotted and
/// compacted: the trailing window is what a briefly lagging follower needs.
#[test]
fn a_follower_briefly_behind_catches_up_from_the_trailing_window_not_by_snapshot() {
    for mode in [FsmSync::Sync, FsmSync::NoSync] {
        let c = story(Cluster::with_window(mode, 7, 30));
        assert_eq!(c.snapshots_sent, 0, "{mode:?}: the window held what the restarted replicas missed");
        for node in c.nodes.values() {
            assert!(node.storage().snapshot_pointer().metadata.index > 0, "every replica has snapshotted");
            let first = raft::Storage::first_index(node.storage()).expect("first index");
            assert!(first > 1, "{mode:?}: the log was compacted below the window (first index {first})");
        }
    }
}

#[test]
fn a_crash_at_any_point_of_a_followers_ready_loop_never_keeps_it_down() {
    // Failure: a follower's disk crashes (process kill or power loss) at its k-th durability
    // operation while writes and snapshots go on: inside persisting a ready, applying entries,
    // taking a snapshot, or installing one. Invariant: it restarts from its disk without help,
    // catches up, and no acknowledged write is lost anywhere.
    let mut crashes = 0;
    for k in 0..48u64 {
        let mode = if k % 4 < 2 { FsmSync::Sync } else { FsmSync::NoSync };
        let mut c = Cluster::new(mode, 7);
        c.write(1..=10);
        let follower = c.a_follower();
        let fs = c.disks[&follower].clone();
        let kind = if k % 2 == 0 { CrashKind::ProcessKill } else { CrashKind::PowerLoss };
        fs.arm_crash(fs.ops_done() + k * 3, kind, durakv_faults::TornWrite::Random);
        c.write(11..=35);
        if c.down.contains(&follower) {
            crashes += 1;
            c.down.clear();
        }
        fs.resume();
        if !c.nodes.contains_key(&follower) {
            c.restart(follower);
        }
        c.converge();
        check_all_have(&c, 35);
    }
    assert!(crashes >= 40, "the armed crash fired in {crashes} of 48 runs");
}

/// The WAL segments of a node's raft log, oldest first.
fn segments(fs: &SimFs) -> Vec<std::path::PathBuf> {
    let dir = Path::new("/node/raft");
    let mut out: Vec<_> = fs
        .read_dir(dir)
        .expect("list")
        .into_iter()
        .filter(|e| e.name.ends_with(".wal"))
        .map(|e| dir.join(e.name))
        .collect();
    out.sort();
    out
}

#[test]
fn an_oom_kill_inside_a_wal_append_is_repaired_and_the_follower_catches_up() {
    // Failure: a follower is OOM-killed *inside* the write of a WAL batch (one sector of a multi-sector
    // write landed): a genuine torn write, of records never fsynced nor acknowledged. Invariants: it
    // restarts without an operator, keeps the dropped bytes, needs no recovery from peers (nothing it
    // acknowledged was lost) and converges.
    let mut c = Cluster::new(FsmSync::Sync, 1_000_000);
    c.write(1..=15);
    c.converge();
    let follower = c.a_follower();
    let fs = c.disks[&follower].clone();
    fs.arm_crash_on_write(
        fs.ops_done(),
        "*/raft/*.wal",
        CrashKind::ProcessKill,
        durakv_faults::TornWrite::Sectors(1),
    );
    // A value spanning several sectors, so one landed sector tears the batch.
    c.set(1000, "big", &"x".repeat(3000));
    assert!(c.down.contains(&follower), "the follower was killed inside its WAL append");
    c.down.clear();
    fs.resume();
    c.write(16..=25);
    c.restart(follower);
    assert!(
        fs.read_dir(Path::new("/node/raft")).expect("list").iter().any(|e| e.name.contains(".broken")),
        "the repair kept the dropped bytes"
    );
    assert_eq!(
        c.nodes[&follower].recover_to(),
        0,
        "a torn write of unacknowledged records needs no recovery"
    );
    c.converge();
    check_all_have(&c, 25);
}

/// Cut `bytes` off the end of a stopped node's last WAL segment: records it fsynced and acknowledged
/// are gone (what a zeroed sector or a lost write-back does; not a torn write).
fn lose_acknowledged_tail(fs: &SimFs, bytes: u64) {
    let last = segments(fs).pop().expect("a segment");
    let mut f = fs.open(&last, durakv::io::OpenOptions::read_write()).expect("open");
    let len = f.len().expect("len");
    f.set_len(len - bytes).expect("cut acknowledged bytes");
    f.sync().expect("sync");
}

#[test]
fn a_follower_that_lost_acknowledged_entries_recovers_them_from_the_leader() {
    // Failure: a follower's acknowledged WAL tail is lost while it is down. Invariants: it starts
    // without an operator in the recovering state, grants no votes while recovering, and becomes a
    // full member once the leader has refilled its log; nothing acknowledged is lost.
    let mut c = Cluster::new(FsmSync::Sync, 1_000_000);
    c.write(1..=15);
    c.converge();
    let follower = c.a_follower();
    c.crash(follower, CrashKind::ProcessKill);
    lose_acknowledged_tail(&c.disks[&follower], 7);
    c.restart(follower);
    let node = &c.nodes[&follower];
    assert!(node.recovering(), "the node knows it lost entries it acknowledged");
    assert!(node.recover_to() >= 15);
    c.write(16..=20);
    c.converge();
    assert!(!c.nodes[&follower].recovering(), "the leader refilled the log");
    check_all_have(&c, 20);
}

/// The run recovery from peers exists for: a follower loses acknowledged entries, the leader that
/// holds them dies, and the damaged follower and a lagging one are left. Returns the cluster and
/// whether those two elected a leader; if they did, it has committed k12 over k11's index, and the
/// old leader stays down (its log now conflicts with a committed entry); if not, the old leader came
/// back and everything converged.
fn damaged_follower_then_leader_dies(canary: bool) -> (Cluster, bool) {
    let mut c = Cluster::new(FsmSync::Sync, 1_000_000);
    c.write(1..=10);
    c.converge();
    let leader = c.elect();
    let mut followers = VOTERS.into_iter().filter(|&id| id != leader);
    let (damaged, lagging) = (followers.next().expect("a follower"), followers.next().expect("another"));
    // The lagging follower misses k11; the leader and the damaged follower commit it.
    c.crash(lagging, CrashKind::ProcessKill);
    c.write(11..=11);
    // The damaged follower loses its copy of k11 (acknowledged), then the leader dies.
    c.crash(damaged, CrashKind::ProcessKill);
    lose_acknowledged_tail(&c.disks[&damaged], 7);
    c.crash(leader, CrashKind::ProcessKill);
    if canary {
        c.disks[&damaged].enable_canary("no-peer-recovery");
    }
    c.restart(damaged);
    c.restart(lagging);
    let mut elected_without_k11 = false;
    for i in 0..600 {
        if i % 3 == 0 {
            c.tick_all();
        }
        c.round();
        elected_without_k11 |= c.leader().is_some();
    }
    if elected_without_k11 {
        // The new leader lacks k11 and commits a write over its index with the damaged follower.
        c.write(12..=12);
    } else {
        c.restart(leader);
        c.converge();
    }
    (c, elected_without_k11)
}

#[test]
fn a_damaged_follower_never_helps_elect_a_leader_that_lacks_a_committed_entry() {
    // Failure: as `damaged_follower_then_leader_dies`. Invariant: with recovery from peers, no leader
    // is elected from the two nodes that lack k11; once the old leader returns, k11 (acknowledged)
    // is on every replica.
    let (c, elected) = damaged_follower_then_leader_dies(false);
    assert!(!elected, "the damaged follower helped elect a leader without the committed entry");
    check_all_have(&c, 11);
}

#[test]
fn without_recovery_from_peers_the_same_failure_loses_an_acknowledged_write() {
    // The canary `no-peer-recovery` switches the guard off. Invariant it must break: no acknowledged
    // write is lost. The test passes only if the bug shows, so the test above is proven to mean it.
    let (c, elected) = damaged_follower_then_leader_dies(true);
    assert!(elected, "with the bug, the damaged follower votes for the lagging one");
    let leader = &c.nodes[&c.leader().expect("the wrongly elected leader")];
    assert!(leader.kv().get(b"k12").expect("get").is_some(), "k12 was committed and applied");
    assert!(
        leader.kv().get(b"k11").expect("get").is_none(),
        "with the bug, the leader serving writes lacks the acknowledged write k11"
    );
}

#[test]
fn a_corrupted_committed_entry_in_the_middle_of_a_followers_log_is_recovered_from_peers() {
    // Failure: a bit rots in an acknowledged, committed record in the middle of a follower's first WAL
    // segment while it is down (valid records follow it). Invariants: it neither refuses to start nor
    // runs on damaged history: the damaged bytes stay in place, its log is cut at the damage, the
    // evidence names the segment and offset, it grants no votes until the leader refilled its log,
    // and nothing acknowledged is lost anywhere.
    corrupted_middle_entry_is_recovered(1_000_000);
}

#[test]
fn a_corrupted_entry_before_a_snapshot_record_leaves_the_state_machine_ahead_and_still_recovers() {
    // Failure: as above, with a snapshot every 7 entries: the cut also loses the snapshot records
    // after the damage, so the state machine is ahead of the log. Invariant: the node takes no
    // snapshot of an index its log cannot name (found by the swarm: it fail-stopped with "log
    // unavailable" in a crash loop), recovers from the leader and loses nothing.
    corrupted_middle_entry_is_recovered(7);
}

fn corrupted_middle_entry_is_recovered(snapshot_every: u64) {
    let mut c = Cluster::new(FsmSync::Sync, snapshot_every);
    c.write(1..=15);
    c.converge();
    let follower = c.a_follower();
    c.crash(follower, CrashKind::PowerLoss);
    let fs = c.disks[&follower].clone();
    let first = segments(&fs).into_iter().next().expect("a segment");
    let before = read_file(&fs, &first).expect("segment bytes");
    // Inside the first segment, past its header: acknowledged records follow.
    fs.flip_bit(&first, 200, 5).expect("flip");
    c.write(16..=20);
    c.restart(follower);
    let node = &c.nodes[&follower];
    assert!(node.recovering(), "a log cut at a committed entry recovers from peers");
    let evidence = node.storage().durable_state().repair.expect("evidence recorded");
    assert_eq!(evidence.kind, durakv::hardstate::RepairKind::CorruptRecord);
    assert!((32..=200).contains(&evidence.offset), "names the damaged record ({})", evidence.offset);
    let mut after = read_file(&fs, &first).expect("segment bytes");
    after[200] ^= 1 << 5;
    assert_eq!(after, before, "the damaged segment is kept as it was, for forensics");
    c.write(21..=30);
    c.converge();
    assert!(!c.nodes[&follower].recovering(), "the leader refilled the log past the damage");
    check_all_have(&c, 30);
    // A second start finds the same damage, and the log it rebuilt after it.
    c.crash(follower, CrashKind::PowerLoss);
    c.restart(follower);
    assert!(!c.nodes[&follower].recovering());
    c.write(31..=35);
    c.converge();
    check_all_have(&c, 35);
}

#[test]
fn an_fsm_apply_failure_fail_stops_the_follower_which_reapplies_after_restart() {
    // Failure injected: the `fsm.apply` failpoint fails a follower's apply of a committed entry once.
    // Invariant (D10): the follower stops without moving its applied index past the entry; after a
    // restart it applies the entry (not skipped) and converges with the others.
    use durakv_faults::FailAction;
    let mut c = scenario(FsmSync::NoSync, 1000);
    let follower = c.a_follower();
    let before = c.nodes[&follower].applied_index();
    c.disks[&follower].attach_failpoint("fsm.apply", FailAction::Error, Some(1));
    c.write(61..=61);
    c.run_until(|c| !c.nodes.contains_key(&follower), "the follower fail-stops at the apply");
    assert_eq!(c.disks[&follower].failpoint_fires().get("fsm.apply"), Some(&1));
    c.disks[&follower].crash(CrashKind::ProcessKill);
    c.down.retain(|&id| id != follower);
    c.restart(follower);
    assert!(c.nodes[&follower].applied_index() >= before, "nothing applied was lost");
    c.write(62..=62);
    c.converge();
    check_all_have(&c, 62);
}

#[test]
fn retention_runs_when_a_replica_opens() {
    // Failure injected: a run stopped between recording a snapshot and applying retention (here:
    // extra snapshot files left in the directory while the follower was down).
    // Invariant (D11): opening the replica applies retention (3 files here) and keeps the snapshot
    // the raft log is based on.
    let mut c = Cluster::new(FsmSync::Sync, 7);
    c.write(1..=30);
    c.converge();
    let follower = c.a_follower();
    c.crash(follower, CrashKind::ProcessKill);
    let fs = &c.disks[&follower];
    for i in 1..=4u64 {
        let path = Path::new("/node/snap").join(durakv::snapshot::snapshot_name(i));
        durakv::io::write_file_durably(fs, &path, b"left behind").expect("write a leftover");
    }
    c.restart(follower);
    let node = &c.nodes[&follower];
    let files = node.snapshot_store().list().expect("list");
    let base = node.storage().snapshot_pointer().metadata.index;
    assert!(files.len() <= 3, "{} snapshot files after open: {files:?}", files.len());
    assert!(
        base == 0 || files.iter().any(|(i, _)| *i == base),
        "the base snapshot {base} is kept: {files:?}"
    );
    assert!(files.iter().all(|(i, _)| *i > 4), "the oldest leftovers went first: {files:?}");
    c.write(31..=31);
    c.converge();
    check_all_have(&c, 31);
}

/// The probes the simulation's promise checkers rely on (`durakv::probe`): with no failure injected,
/// each replica reports the leadership it won, the votes and appends it promised, every entry it
/// applied (the same entry at each index on every replica) and its durable commit index, which only
/// grows. A disk that was not asked to record keeps nothing.
#[test]
fn replicas_report_promises_leadership_applied_entries_and_durable_commit() {
    use durakv::probe::{Observation, Promise};
    let quiet = disk(9);
    quiet.observe(Observation::Leader { term: 1 });
    assert!(quiet.take_observations().is_empty(), "a disk not asked to record keeps nothing");
    let mut c = Cluster::new(FsmSync::Sync, 1_000_000);
    for fs in c.disks.values() {
        fs.record_observations(|| 7);
    }
    c.write(1..=5);
    c.converge();
    let leader = c.elect();
    let term = c.nodes[&leader].term();
    let mut applied: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    let mut votes = 0;
    for (&id, fs) in &c.disks {
        let seen = fs.take_observations();
        assert!(seen.iter().all(|(at, _)| *at == 7), "each observation carries the clock's time");
        let seen: Vec<Observation> = seen.into_iter().map(|(_, o)| o).collect();
        if id == leader {
            assert!(seen.contains(&Observation::Leader { term }), "the leader reports leading term {term}");
        } else {
            assert!(
                seen.iter()
                    .any(|o| matches!(o, Observation::Promise(Promise::Accept { index, .. }) if *index > 0)),
                "follower {id} reports the appends it accepted"
            );
        }
        let vote = Observation::Promise(Promise::Vote { term, candidate: leader });
        votes += seen.iter().filter(|o| **o == vote).count();
        let commits: Vec<u64> = seen
            .iter()
            .filter_map(|o| match o {
                Observation::CommitPersisted { commit } => Some(*commit),
                _ => None,
            })
            .collect();
        assert!(!commits.is_empty() && commits.windows(2).all(|w| w[0] <= w[1]), "{id}: {commits:?}");
        for o in &seen {
            if let Observation::Applied { index, term, checksum } = *o {
                let first = *applied.entry(index).or_insert((term, checksum));
                assert_eq!(first, (term, checksum), "index {index}: one entry on every replica");
            }
        }
    }
    assert!(votes >= 1, "a follower reports the vote that elected the leader");
    assert!(applied.len() >= 5, "the five writes were reported applied: {applied:?}");
}

#[test]
fn a_failed_read_of_the_leaders_log_stops_it_cleanly_and_nothing_is_lost() {
    // Failure injected: EIO on the leader's next read of its raft WAL, when it must read entries
    // back from the log to bring a lagging follower up to date (found by the simulation's swarm:
    // raft-rs panics on any storage error but "compacted"). Invariants: the leader stops with the
    // typed `LogRead` error, never a panic; restarted, it reads its log again, and every acknowledged
    // write is on every replica.
    let mut c = Cluster::new(FsmSync::Sync, 1_000_000);
    c.write(1..=5);
    c.converge();
    let follower = c.a_follower();
    c.crash(follower, CrashKind::ProcessKill);
    c.write(6..=30);
    let leader = c.elect();
    let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Read])
        .on_path("*/raft/*.wal")
        .expect("a valid glob")
        .max_fires(1);
    c.disks[&leader].add_rule(rule).expect("a valid rule");
    c.restart(follower);
    c.run_until(|c| c.down.contains(&leader), "the leader reads its log for the follower, and stops");
    assert_eq!(c.disks[&leader].coverage().get("fault.eio.read"), Some(&1), "the read failed");
    c.down.retain(|&id| id != leader);
    c.restart(leader);
    c.write(31..=35);
    c.converge();
    check_all_have(&c, 35);
}

#[test]
fn a_damaged_log_that_names_a_snapshot_retention_removed_adopts_the_newest_file() {
    // Failure: a bit rots in a follower's last WAL segment, before the records that moved its
    // snapshot pointer on; the cut log names an older snapshot whose file retention has removed
    // since (found by the swarm: the server refused to start, "snapshot … not found", forever).
    // Invariants: the follower starts by itself, takes the newest snapshot file that verifies as its
    // log's base, recovers the rest from the leader, and nothing acknowledged is lost.
    let mut c = Cluster::new(FsmSync::Sync, 5);
    c.write(1..=60);
    c.converge();
    let follower = c.a_follower();
    let base_before = c.nodes[&follower].storage().snapshot_pointer().metadata.index;
    c.crash(follower, CrashKind::PowerLoss);
    let fs = c.disks[&follower].clone();
    let last = segments(&fs).into_iter().last().expect("a segment");
    let len = read_file(&fs, &last).expect("segment bytes").len() as u64;
    fs.flip_bit(&last, len / 3, 2).expect("flip");
    c.write(61..=70);
    c.restart(follower);
    let node = &c.nodes[&follower];
    let base_after = node.storage().snapshot_pointer().metadata.index;
    assert!(base_after > 0 && base_after <= base_before, "base {base_after} (was {base_before})");
    c.write(71..=80);
    c.converge();
    assert!(!c.nodes[&follower].recovering(), "the leader refilled the log past the damage");
    check_all_have(&c, 80);
}

/// Failure injected: the leader removes itself while clients keep writing to it, so the ready that
/// commits the removal also carries new entries for it to persist (raft-rs then updates the leader's
/// own progress, which taking the change into raft too early has removed: a panic). Invariants: no
/// panic; the removed leader steps down and says it was removed; the two voters left elect a leader
/// among themselves, agree on the membership, and go on taking writes.
#[test]
fn a_leader_that_removes_itself_under_writes_steps_down_and_the_rest_go_on() {
    let mut c = Cluster::new(FsmSync::Sync, 0);
    c.write(1..=5);
    let old = c.elect();
    let removal = durakv::members::Change::Remove { id: old };
    c.nodes.get_mut(&old).expect("leader").propose_membership(900, &removal).expect("proposed");
    let mut request = 1000;
    for _ in 0..40 {
        if let Some(node) = c.nodes.get_mut(&old).filter(|n| n.is_leader()) {
            let cmd = Command::set(format!("w{request}").as_str(), "x", SetCondition::Always).to_bytes();
            let _ = node.propose(request, cmd);
            request += 1;
        }
        c.round();
    }
    assert!(c.nodes[&old].removed_at().is_some(), "the old leader does not know it was removed");
    assert!(!c.nodes[&old].is_leader(), "the removed leader still leads");
    let rest: Vec<u64> = VOTERS.into_iter().filter(|&id| id != old).collect();
    c.run_until(|c| rest.iter().any(|id| c.nodes[id].is_leader()), "the voters left elect a leader");
    let leader = *rest.iter().find(|id| c.nodes[id].is_leader()).expect("a leader");
    for id in &rest {
        assert_eq!(c.nodes[id].conf_state().voters.len(), 2, "node {id}: {:?}", c.nodes[id].conf_state());
    }
    let cmd = Command::set("after", "removal", SetCondition::Always).to_bytes();
    c.nodes.get_mut(&leader).expect("leader").propose(5000, cmd).expect("propose");
    c.run_until(|c| c.replies.contains_key(&5000), "a write after the removal is applied");
}

/// Failure injected: the last record of an idle follower's WAL is the conf-state batch of a
/// membership change it took (the change's entry came before it), and that record is cut away while
/// the follower is down (a torn tail), with its state machine already past the change. Invariant:
/// the restarted follower holds the change again (raft hands over nothing at or below the applied
/// index, so a start that trusted the stored conf state alone kept the membership from before the
/// change for good: found by fuzz, seed 311587, a follower still counting a removed voter).
#[test]
fn a_membership_change_whose_conf_state_record_was_cut_is_taken_again_at_start() {
    let mut c = Cluster::new(FsmSync::Sync, 0);
    c.write(1..=5);
    let leader = c.elect();
    let addrs = durakv::config::Peer {
        peer_addr: "127.0.0.1:7004".parse().expect("an address"),
        resp_addr: "127.0.0.1:6004".parse().expect("an address"),
    };
    let add = durakv::members::Change::AddLearner { id: 4, addrs };
    c.nodes.get_mut(&leader).expect("leader").propose_membership(900, &add).expect("proposed");
    c.run_until(
        |c| c.nodes.values().all(|n| n.conf_state().learners == [4]),
        "every replica takes the change",
    );
    c.converge();
    let follower = c.a_follower();
    let fs = c.disks[&follower].clone();
    c.crash(follower, CrashKind::ProcessKill);
    // The conf-state batch (a meta record of the change's encoded conf state and book) is last: cut
    // into it, as a torn write of it would.
    lose_acknowledged_tail(&fs, 5);
    c.restart(follower);
    assert_eq!(c.nodes[&follower].conf_state().learners, [4], "the restarted follower lost the change");
    c.write(6..=8);
    c.converge();
    check_all_have(&c, 8);
}
