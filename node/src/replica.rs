//! One replica's raft core: raft-rs's `RawNode` over [`RaftStorage`], applying to the [`Kv`] state
//! machine, driven by the ready loop in raft-rs's canonical order. It does no I/O of its own beyond
//! storage: the caller moves the messages it returns and feeds it ticks, messages and proposals, so
//! the same core runs under tokio, under madsim, and in plain deterministic tests.
//!
//! Ready order (the durability-relevant part), as raft-rs's async-ready model allows. Messages are
//! handed to the caller's `send` the moment they may leave, not at the end of the round, so a
//! transport running on other threads overlaps them with this thread's fsync:
//! 1. messages a leader may send before persisting (appends to followers, heartbeats) leave first:
//!    the leader's fsync of its own copy and the followers' fsyncs run at the same time (raft counts
//!    the leader's own entries toward a quorum only once `advance` reports them persisted);
//! 2. a snapshot from the leader is verified (by the transport, off the loop, when it received the
//!    file), recorded as the log's base, and handed to the applier, which restores it before any
//!    later entry;
//! 3. new entries are persisted with one WAL fsync, then the hard state and acknowledged index with
//!    one fsync of the hard-state file. A ready whose hard state changed only its commit index pays
//!    no fsync: the commit index rides on the next one (raft recovers it from the leader; start-up
//!    raises it to the state machine's applied index);
//! 4. only then do persisted messages (votes, append responses) leave (D1): they promise step 3.
//!    The `promise-before-fsync` canary hands them out before it, and the promises checker sees it;
//! 5. committed entries go to the applier ([`crate::apply`]; conf changes take effect in raft as
//!    they are handed over): after the persisted messages, so a follower's acknowledgement never
//!    waits for its own apply. The runtime runs the applier on a task of its own behind a bounded
//!    queue, so this apply overlaps the next round's fsync; tests keep it inside the replica, which
//!    then applies here (fail-stop on error either way, D10);
//! 6. `advance`, then the light ready's commit index (memory only, as in 3), messages and
//!    committed entries; `advance_apply` (raft's applied index means "handed over").
//!
//! Recovery from peers: while storage says this node lost entries it may have acknowledged
//! ([`RaftStorage::recover_to`]), the replica drops leadership transfers and the vote and pre-vote
//! requests of candidates not at least as up to date as its recovery mark, and does not tick its
//! election timer as a follower (so it never campaigns): judged by its shortened log alone it could
//! otherwise help elect a leader that lacks a committed entry (FAST'18). It still votes for
//! candidates that hold everything it may have acknowledged (without them a cluster where every
//! quorum holds a recovering node could never elect the leader it must recover from), and takes
//! appends and snapshots; once its log reaches the mark it is a full member again.

use std::collections::BTreeMap;

use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message};
use raft::{Config, RawNode, StateRole};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::apply::{Applier, ApplyWork};
use crate::clock::EntryContext;
use crate::fsm::{Engine, FsmError, Kv, Reply};
use crate::hardstate::RepairKind;
use crate::io::SharedFs;
use crate::probe::{Observation, Promise};
use crate::snapshot::{
    ColdStart, SnapshotError, SnapshotFile, SnapshotStore, SnapshotToken, cold_start, ensure_applied_durable,
    verify, write_snapshot,
};
use crate::storage::{RaftStorage, SnapshotPointer, StorageLoadError};
use crate::wal::WalError;

/// Errors that stop a replica. All are fatal: the node fail-stops and recovers by restarting.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("raft log: {0}")]
    Wal(#[from] WalError),
    #[error("raft storage: {0}")]
    Storage(#[from] StorageLoadError),
    #[error("state machine: {0}")]
    Fsm(#[from] FsmError),
    #[error("raft entry {index} does not decode: {reason}")]
    BadEntry { index: u64, reason: String },
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("replica config: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// Reading entries from the raft log failed under raft-rs (which panics on it): the node stops,
    /// as after a failed write (D10), and reads the log again at its next start.
    #[error("reading the raft log failed: {0}; the node stops")]
    LogRead(String),
}

/// Where a replica keeps its snapshots, and how often it takes one.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    pub fs: SharedFs,
    pub store: SnapshotStore,
    /// Take a snapshot (and compact the log below it) every this many applied entries (0: never by
    /// count).
    pub every_entries: u64,
    /// ... or once this many bytes of entry data were applied since the last one (the log's growth,
    /// whatever the entries' size). Minimum 1.
    pub every_bytes: u64,
    /// Entries kept in the log below a snapshot this node takes (the trailing window), so a follower
    /// a little behind catches up from the log rather than by the whole snapshot. A leader keeps
    /// more, down to its slowest healthy follower, up to [`MAX_CATCH_UP_FACTOR`] times this.
    pub catch_up_entries: u64,
}

/// What a ready produced for the caller.
#[derive(Debug, Default)]
pub struct ReadyOutput {
    /// Messages to send to peers, in order.
    pub messages: Vec<Message>,
    /// Replies to proposals this replica made, by the request id given to [`Replica::propose`].
    pub replies: Vec<(u64, Reply)>,
    /// Confirmed read indexes, by the request id given to [`Replica::read_index`]: a read issued
    /// under that id is linearizable once the state machine has applied up to the index.
    pub read_states: Vec<(u64, u64)>,
    /// Work for the applier the caller runs ([`Replica::take_applier`]), in order; empty while the
    /// replica applies itself (then the replies are in `replies`).
    pub work: Vec<ApplyWork>,
    /// Membership changes this replica proposed that took effect in raft (the resulting conf
    /// state) or that raft refused when they committed (why), by request id.
    pub conf_changes: Vec<(u64, Result<raft::eraftpb::ConfState, String>)>,
}

/// A slog drain that forwards raft-rs's log lines to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{}", record.msg()),
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

/// Raft timing and flow-control settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub id: u64,
    /// Ticks without a leader before campaigning. Default 10.
    pub election_tick: usize,
    /// Ticks between leader heartbeats. Default 3.
    pub heartbeat_tick: usize,
    /// Entry bytes batched into one append (raft sends at least one entry regardless). Default and
    /// maximum `limits::MAX_APPEND_BATCH_BYTES` (1 MiB), so a batched append fits a peer frame.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower. Default 256.
    pub max_inflight_msgs: usize,
    /// Seeds the randomized election timeouts. raft-rs draws them from the thread RNG, which the
    /// simulation cannot replay; the replica redraws every one from this seed's stream instead, so a
    /// simulated run replays exactly (production passes a random seed). Default: the node id.
    pub seed: u64,
}

impl ReplicaConfig {
    pub fn new(id: u64) -> Self {
        ReplicaConfig {
            id,
            election_tick: 10,
            heartbeat_tick: 3,
            max_size_per_msg: crate::limits::MAX_APPEND_BATCH_BYTES,
            max_inflight_msgs: 256,
            seed: id,
        }
    }
}

/// A replica: raft node, raft storage, and state machine.
pub struct Replica<E: Engine> {
    raw: RawNode<RaftStorage>,
    /// A view of the state machine: its applied index and key count as the applier publishes them.
    kv: Kv<E>,
    /// The applier, while the replica applies within its ready rounds (tests, simple drivers); the
    /// runtime takes it to run on a task of its own ([`Replica::take_applier`]).
    applier: Option<Applier<E>>,
    /// The received snapshot whose file the transport verified off the loop, so the loop need not
    /// read the whole file again before installing it.
    verified: Option<SnapshotToken>,
    /// Retention runs off the loop ([`Replica::retain_off_the_loop`]); the base of the pass due.
    retention_off_loop: bool,
    retention_due: Option<u64>,
    snapshots: SnapshotSettings,
    /// The election timeout's seeded stream and range (`election_tick..2 * election_tick`).
    election_rng: ChaCha8Rng,
    election_ticks: (usize, usize),
    /// The (term, role, timeout) the last redraw left, to notice raft-rs drawing a new one.
    election_drawn: (u64, StateRole, usize),
    /// Ticks spent recovering lost entries without a known leader (reported loudly now and then).
    leaderless_recovery_ticks: u64,
    /// A read of the raft log failed under raft-rs: the replica is stopped for good (its raft state
    /// is not trusted after the panic it contained); every call returns this.
    stopped: Option<String>,
    /// The last term this node reported leading ([`crate::probe`]).
    led_term: u64,
    /// Bytes of entry data applied since the last snapshot this node took (snapshot cadence).
    applied_bytes_since_snapshot: u64,
    /// Where persist and apply timings go (`--metrics-addr`); none in tests.
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    /// What this start found in the WAL ([`Replica::note_start`]), for the metrics.
    wal_at_start: crate::probe::WalFinding,
    /// Stamps the entries this node appends as leader ([`crate::clock`]).
    clock: crate::clock::WallClock,
    /// The members' addresses the transport and client port use ([`crate::members`]), kept up to
    /// date as membership changes apply and snapshots install; none in tests.
    directory: Option<crate::members::Directory>,
    /// The log index of the membership change that left this node out (it was removed).
    removed_at: Option<u64>,
    /// A peer needs a snapshot this node does not hold yet: take one at the next chance.
    snapshot_asked: bool,
    /// A membership change left this leader out of the voters: step down after the ready round.
    step_down: bool,
}

impl<E: Engine> std::fmt::Debug for Replica<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.raw.raft.id)
            .field("applied", &self.kv.applied_index())
            .finish()
    }
}

impl<E: Engine> Replica<E> {
    /// Start a replica over opened storage and state machine. Raft resumes applying after the state
    /// machine's applied index (entries it lost under `nosync` are re-applied from the log).
    pub fn new(
        cfg: &ReplicaConfig,
        storage: RaftStorage,
        kv: Kv<E>,
        snapshots: SnapshotSettings,
    ) -> Result<Self, ReplicaError> {
        crate::limits::check_append_batch_bytes(cfg.max_size_per_msg)?;
        // Cold start from the snapshot the log is based on (D9): skipped when the state machine is
        // already at or past it, after the file is verified; restored otherwise.
        adopt_newer_snapshot_after_damage(&storage, &snapshots)?;
        let pointer = storage.snapshot_pointer();
        if pointer.metadata.index > 0 {
            let token = SnapshotToken::decode(&pointer.token)?;
            let path = snapshots.store.path(token.index);
            let path_taken = cold_start(&*snapshots.fs, kv.engine(), &path, &token, &mut |_| Ok(()))?;
            if let ColdStart::Restored { .. } = path_taken {
                kv.reload_applied_index()?;
            }
        }
        // Retention at start-up too: a run that stopped between recording a snapshot and applying
        // retention (a restore that failed, a crash) must not leave the extra files behind forever.
        let base = (pointer.metadata.index > 0).then_some(pointer.metadata.index);
        snapshots.store.gc_keeping(base)?;
        // Raft refuses an applied index beyond its commit index; a state machine that durably applied
        // entries proves they were committed.
        storage.raise_commit(kv.applied_index())?;
        // A node recovering lost entries may have a state machine ahead of its log (it applied entries
        // it then lost): raft resumes from what the log can vouch for, and `apply` skips the entries
        // the state machine already holds when they arrive again.
        let applied = kv.applied_index().min(storage.hard_state().commit);
        let config = Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            max_committed_size_per_ready: MAX_COMMITTED_BYTES_PER_READY,
            check_quorum: true,
            pre_vote: true,
            ..Config::default()
        };
        config.validate()?;
        let logger = slog::Logger::root(TracingDrain, slog::o!("node" => cfg.id));
        let raw = RawNode::new(&config, storage, &logger)?;
        let view = kv.read_view();
        let mut replica = Replica {
            raw,
            kv: view,
            applier: Some(Applier::new(kv, snapshots.fs.clone())),
            verified: None,
            retention_off_loop: false,
            retention_due: None,
            snapshots,
            election_rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            election_ticks: (cfg.election_tick, 2 * cfg.election_tick),
            election_drawn: (0, StateRole::Follower, 0),
            leaderless_recovery_ticks: 0,
            stopped: None,
            led_term: 0,
            applied_bytes_since_snapshot: 0,
            metrics: None,
            wal_at_start: crate::probe::WalFinding::Clean,
            clock: crate::clock::WallClock::system(),
            directory: None,
            removed_at: None,
            snapshot_asked: false,
            step_down: false,
        };
        let (cs, conf_index) = (replica.raw.store().conf_state(), replica.raw.store().conf_index());
        replica.note_if_removed(conf_index, &cs);
        replica.retake_conf_changes(applied)?;
        replica.redraw_election_timeout();
        Ok(replica)
    }

    /// Take into raft again the membership changes at or below the applied index that the stored
    /// conf state lacks. raft hands over only entries past the applied index, and a change's conf
    /// state batch (written after its entry, at handover) can be the part of the log's end that
    /// damage took away while the entries before it survived (a torn tail repaired): without this
    /// the node would keep the membership from before the change for good.
    fn retake_conf_changes(&mut self, applied: u64) -> Result<(), ReplicaError> {
        let from = self.raw.store().conf_index() + 1;
        if applied < from {
            return Ok(());
        }
        for e in self.raw.store().conf_changes_between(from, applied) {
            tracing::warn!(
                node = self.id(),
                index = e.index,
                "a membership change below the applied index is missing from the stored membership (its record lost at the log's end): taking it again"
            );
            self.take_conf_change(&e)?;
        }
        Ok(())
    }

    /// raft-rs re-draws the randomized election timeout (from its thread RNG) whenever it resets:
    /// a new term or a new role. Replace each such draw with one from the seeded stream.
    fn redraw_election_timeout(&mut self) {
        let raft = &self.raw.raft;
        let now = (raft.term, raft.state, raft.randomized_election_timeout());
        if now == self.election_drawn {
            return;
        }
        let (min, max) = self.election_ticks;
        let t = self.election_rng.random_range(min..max);
        self.raw.raft.set_randomized_election_timeout(t);
        self.election_drawn = (now.0, now.1, t);
    }

    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// Report persist and apply timings and counts to `metrics`.
    pub fn set_metrics(&mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) {
        // What this start found and repaired, once: an operator scraping after a crash sees it.
        let finding = match self.wal_at_start {
            crate::probe::WalFinding::Clean => None,
            crate::probe::WalFinding::TornTailRepaired => Some("torn_tail_repaired"),
            crate::probe::WalFinding::Corrupt => Some("corrupt_record"),
        };
        if let Some(f) = finding {
            metrics.start_findings.with_label_values(&[f]).inc();
        }
        if self.recover_to() > 0 {
            metrics.start_findings.with_label_values(&["lost_entries"]).inc();
        }
        if let Some(applier) = &mut self.applier {
            applier.set_metrics(std::sync::Arc::clone(&metrics));
        }
        self.metrics = Some(metrics);
    }

    /// Record what opening the WAL found at this start (the metrics count it).
    pub fn note_start(&mut self, wal: crate::probe::WalFinding) {
        self.wal_at_start = wal;
    }

    /// Take the applier out, to run it on a task of its own: from now on each ready round hands its
    /// committed entries and received snapshots to the caller as [`ReadyOutput::work`], which the
    /// caller must run through the applier in order ([`crate::apply`]). `None` once taken.
    pub fn take_applier(&mut self) -> Option<Applier<E>> {
        self.applier.take()
    }

    /// The transport verified the file of the snapshot named by `token` (off the loop): installing
    /// it need not read it again.
    pub fn snapshot_verified(&mut self, token: SnapshotToken) {
        self.verified = Some(token);
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The members' addresses this replica keeps up to date ([`Replica::set_directory`]).
    pub fn directory(&self) -> Option<crate::members::Directory> {
        self.directory.clone()
    }

    /// Keep `directory` up to date with the membership from now on.
    pub fn set_directory(&mut self, directory: crate::members::Directory) {
        self.directory = Some(directory);
    }

    /// The members' addresses as they stand: stored by a membership change or a received snapshot,
    /// else the directory the node started with (its configuration's).
    fn current_book(&self) -> crate::members::Book {
        self.raw.store().book().or_else(|| self.directory.as_ref().map(|d| d.book())).unwrap_or_default()
    }

    /// The conf state raft works with now (it takes a change when the change is handed over).
    pub fn conf_state(&self) -> raft::eraftpb::ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// The log index of the membership change that removed this node, if one did.
    pub fn removed_at(&self) -> Option<u64> {
        self.removed_at
    }

    /// Check `change` against the membership as this leader sees it and propose it; the outcome
    /// comes back in a later [`ReadyOutput::conf_changes`] under `request_id`. Refused (with why)
    /// when this node does not lead or another change is still under way.
    pub fn propose_membership(
        &mut self,
        request_id: u64,
        change: &crate::members::Change,
    ) -> Result<(), String> {
        if !self.is_leader() {
            return Err(format!("this node is not the leader (node {} is)", self.leader_id()));
        }
        let raft = &self.raw.raft;
        if raft.pending_conf_index > raft.raft_log.applied || !self.conf_state().voters_outgoing.is_empty() {
            return Err("another membership change is still taking effect; retry in a moment".into());
        }
        // Only members heard from recently count as holding what they matched (a learner at a wrong
        // address, or never started, holds nothing).
        let matched: BTreeMap<u64, u64> =
            raft.prs().iter().filter(|(_, pr)| pr.recent_active).map(|(id, pr)| (*id, pr.matched)).collect();
        let conf = self.conf_state();
        let book = self.current_book();
        let m = crate::members::Membership {
            conf: &conf,
            matched: &matched,
            last_index: raft.raft_log.last_index(),
            directory: &book,
        };
        let cc = change.to_conf_change(&m).map_err(|e| e.to_string())?;
        let context = EntryContext { request_id, stamp_ms: self.clock.now_ms() }.encode();
        self.contained(|r| Ok(r.raw.propose_conf_change(context, cc)?)).map_err(|e| e.to_string())
    }

    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn applied_index(&self) -> u64 {
        self.kv.applied_index()
    }

    pub fn kv(&self) -> &Kv<E> {
        &self.kv
    }

    pub fn storage(&self) -> &RaftStorage {
        self.raw.store()
    }

    /// Where this replica's snapshots live (the transport receives into it).
    pub fn snapshot_store(&self) -> &SnapshotStore {
        &self.snapshots.store
    }

    /// Is this node recovering entries it lost (votes only for candidates holding them, no campaigns)? The `no-peer-recovery` canary
    /// switches the guard off to show the simulation catches its absence.
    pub fn recovering(&self) -> bool {
        self.raw.store().recover_to() > 0 && !crate::failpoint::canary(self.fs(), "no-peer-recovery")
    }

    /// The index a recovering node's log must reach (0: not recovering).
    pub fn recover_to(&self) -> u64 {
        self.raw.store().recover_to()
    }

    /// Advance the logical clock by one tick. A recovering follower does not tick: its election
    /// timer never fires, so it never campaigns on a log that lost entries. Only the time since it
    /// last heard from a leader advances (up to the election timeout), so the leader lease ends as
    /// it would and a candidate's vote request is not ignored forever once that leader is gone.
    pub fn tick(&mut self) {
        if self.recovering() && self.raw.raft.state != StateRole::Leader {
            let raft = &mut self.raw.raft;
            raft.election_elapsed = (raft.election_elapsed + 1).min(raft.election_timeout());
            self.report_stalled_recovery();
            return;
        }
        self.leaderless_recovery_ticks = 0;
        // An election reads the entries between applied and committed (pending conf changes): a
        // failed read stops the replica, and its next step or ready returns the error.
        let _ = self.contained(|r| {
            r.raw.tick();
            Ok(())
        });
        self.redraw_election_timeout();
    }

    /// A recovery that sees no leader for long means the nodes holding the lost entries are not
    /// there: say so loudly, every 30 election timeouts, naming the index (no operator is needed as
    /// long as they come back; if they never will, this node must be rebuilt from its peers).
    fn report_stalled_recovery(&mut self) {
        if self.raw.raft.leader_id != 0 {
            self.leaderless_recovery_ticks = 0;
            return;
        }
        self.leaderless_recovery_ticks += 1;
        let every = 30 * self.election_ticks.0 as u64;
        if self.leaderless_recovery_ticks.is_multiple_of(every.max(1)) {
            tracing::error!(
                node = self.id(),
                index = self.recover_to(),
                ticks = self.leaderless_recovery_ticks,
                "still recovering lost log entries and no leader is known: only the nodes that hold them can \
                 supply them; if they are gone for good, rebuild this node from its peers"
            );
        }
    }

    /// Start an election now (refused, with a warning, while recovering lost entries).
    pub fn campaign(&mut self) -> Result<(), ReplicaError> {
        if self.recovering() {
            tracing::warn!(
                node = self.id(),
                recover_to = self.recover_to(),
                "not campaigning while recovering"
            );
            return Ok(());
        }
        self.contained(|r| Ok(r.raw.campaign()?))?;
        self.redraw_election_timeout();
        Ok(())
    }

    /// Run `f`, which calls into raft-rs, containing the panic raft-rs raises when the storage could
    /// not read the log (it treats every storage error but "compacted" and "temporarily unavailable"
    /// as fatal): that becomes [`ReplicaError::LogRead`], a fail-stop like a failed write (D10),
    /// instead of a panic that takes the process down uncontrolled (found by the simulation: EIO on
    /// a WAL read). Any other panic is a bug and goes on unwinding. After a contained panic the
    /// raft state is not used again.
    fn contained<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ReplicaError>,
    ) -> Result<T, ReplicaError> {
        if let Some(reason) = &self.stopped {
            return Err(ReplicaError::LogRead(reason.clone()));
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        note_contained_read_failure(false);
        match outcome {
            Ok(result) => result,
            Err(panic) => match self.raw.store().take_read_failure() {
                Some(reason) => {
                    tracing::error!(node = self.id(), error = %reason, "reading the raft log failed: stopping");
                    self.stopped = Some(reason.clone());
                    Err(ReplicaError::LogRead(reason))
                }
                None => std::panic::resume_unwind(panic),
            },
        }
    }

    /// Feed a message from a peer.
    pub fn step(&mut self, msg: Message) -> Result<(), ReplicaError> {
        self.contained(|r| r.step_raft(msg))
    }

    fn step_raft(&mut self, mut msg: Message) -> Result<(), ReplicaError> {
        use raft::eraftpb::MessageType as T;
        let kind = msg.msg_type();
        if kind == T::MsgPropose && self.is_leader() {
            // A follower's forwarded proposal: the leader appends it, so the leader's clock stamps
            // it (expiry follows one clock per term, not whichever node a client reached).
            let now = self.clock.now_ms();
            for e in &mut msg.entries {
                if let Some(c) = EntryContext::decode(&e.context) {
                    e.context = EntryContext { stamp_ms: now, ..c }.encode();
                }
            }
        }
        if matches!(kind, T::MsgRequestVote | T::MsgRequestPreVote | T::MsgTimeoutNow)
            && self.recovering()
            && (kind == T::MsgTimeoutNow || !self.candidate_holds_what_we_acknowledged(&msg))
        {
            // A vote judged against a log that lost acknowledged entries could elect a leader lacking
            // a committed one: a candidate that is not at least as up to date as everything this
            // node may have acknowledged gets nothing (raft-rs then also checks it against the log
            // this node holds). Refusing every candidate instead would deadlock a cluster in which
            // every quorum holds a recovering node (two of four lost their tails): no leader, so
            // nobody to recover from. Leadership transfers are refused: this node never campaigns.
            tracing::debug!(
                node = self.id(),
                from = msg.from,
                term = msg.term,
                log_term = msg.log_term,
                index = msg.index,
                ?kind,
                "recovering: vote not granted"
            );
            return Ok(());
        }
        // A leader's heartbeat carries min(its commit, what it believes this node holds). That belief
        // can exceed the log only if this node lost entries it acknowledged. Start-up finds such
        // losses (the hard-state file's acknowledged index); one found here is a broken promise that
        // start-up missed: record it and recover the entries from the leader like any other loss.
        // raft-rs would panic moving the commit index past the last entry, so the commit this node
        // takes is the part its log holds.
        if kind == T::MsgHeartbeat {
            let last = self.raw.raft.raft_log.last_index();
            if msg.commit > last {
                if self.raw.store().recover_to() == 0 {
                    tracing::error!(
                        node = self.id(),
                        index = last,
                        commit = msg.commit,
                        "the leader believes this node holds entries past its log: a promise was broken; \
                         recovering them from the leader"
                    );
                    self.raw.store().begin_recovery(msg.commit, RepairKind::LeaderAhead)?;
                }
                msg.commit = last;
            }
        }
        if kind == T::MsgRequestVote
            && msg.term == self.raw.raft.term
            && self.raw.raft.vote != msg.from
            && crate::failpoint::canary(self.fs(), "double-vote")
        {
            // The canary's bug: the vote already cast in this term is forgotten.
            self.raw.raft.vote = raft::INVALID_ID;
        }
        if kind == T::MsgAppend
            && let Some((index, ours, theirs)) = self.conflicts_with_committed(&msg)
        {
            // raft-rs would panic here. A leader whose log disagrees with an entry this node holds as
            // committed means some node lost a committed entry (a broken promise elsewhere): refuse
            // its appends loudly and keep the committed history, rather than crash or overwrite it.
            tracing::error!(
                node = self.id(),
                from = msg.from,
                index,
                term = theirs,
                ours,
                "the leader's log conflicts with an entry committed here: its appends are refused"
            );
            return Ok(());
        }
        self.raw.step(msg)?;
        self.redraw_election_timeout();
        Ok(())
    }

    /// Is a vote request's candidate log at least as up to date, in raft's (term, index) order, as the
    /// recovery mark, which is at or past the last entry this node may have acknowledged before it
    /// lost entries? Then voting for it is as safe as the vote raft would have cast with the log this
    /// node had (the Raft paper's §5.4.3 argument holds for that log).
    fn candidate_holds_what_we_acknowledged(&self, msg: &Message) -> bool {
        let durable = self.raw.store().durable_state();
        (msg.log_term, msg.index) >= (durable.recover_term, durable.recover_to)
    }

    /// The first entry of an append at or below this node's commit index whose term differs from the
    /// one this node holds: (index, our term, their term).
    fn conflicts_with_committed(&self, msg: &Message) -> Option<(u64, u64, u64)> {
        let committed = self.raw.raft.raft_log.committed;
        msg.entries.iter().take_while(|e| e.index <= committed).find_map(|e| {
            let ours = self.raw.raft.raft_log.term(e.index).ok()?;
            (ours != e.term && ours != 0).then_some((e.index, ours, e.term))
        })
    }

    /// Ask for a read index (ReadIndex, raft thesis 6.4); it comes back in a later [`ReadyOutput`]'s
    /// `read_states` under `request_id`, or never if raft drops it (no leader, or a new leader that has
    /// not committed in its term yet): the caller re-asks after a while.
    pub fn read_index(&mut self, request_id: u64) {
        self.raw.read_index(request_id.to_be_bytes().to_vec());
    }

    /// Whether raft has anything for [`Replica::handle_ready`].
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Why the replica stopped, once a read of the raft log failed inside raft (see `contained`):
    /// whatever call met the failure, the node must stop on it (D10), not go on refusing everything.
    pub fn stopped(&self) -> Option<ReplicaError> {
        self.stopped.as_ref().map(|reason| ReplicaError::LogRead(reason.clone()))
    }

    /// The role as a word: `leader`, `follower`, `candidate` or `precandidate`.
    pub fn role(&self) -> &'static str {
        match self.raw.raft.state {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "precandidate",
        }
    }

    /// The filesystem this replica's storage runs on.
    pub fn fs(&self) -> &dyn crate::io::Fs {
        &*self.snapshots.fs
    }

    /// The same, shared (for work off the loop).
    pub fn fs_shared(&self) -> SharedFs {
        self.snapshots.fs.clone()
    }

    /// The follower a leader should hand its leadership to: the voter (not this node) whose log
    /// matches the most, among those heard from recently. `None` when there is none.
    pub fn handoff_target(&self) -> Option<u64> {
        let me = self.id();
        let voters = self.raw.raft.prs().conf().voters().ids();
        self.raw
            .raft
            .prs()
            .iter()
            .filter(|(id, pr)| **id != me && pr.recent_active && voters.contains(**id))
            .max_by_key(|(id, pr)| (pr.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Transfer leadership to `to` (raft-rs sends it `MsgTimeoutNow` once its log is up to date;
    /// it then campaigns at once, without waiting for an election timeout).
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// Tell raft a message to `to` could not be sent, so it stops streaming appends and probes.
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    /// Propose an encoded command; its reply comes back in a later [`ReadyOutput`] under `request_id`.
    /// The entry carries this node's time; a leader that gets it forwarded stamps it anew
    /// ([`Replica::step`]), so what the log holds is always the appending leader's time.
    pub fn propose(&mut self, request_id: u64, command: Vec<u8>) -> Result<(), ReplicaError> {
        let context = EntryContext { request_id, stamp_ms: self.clock.now_ms() }.encode();
        self.contained(|r| Ok(r.raw.propose(context, command)?))
    }

    /// The clock this node stamps entries with (the simulation offsets it: clock skew).
    pub fn set_clock(&mut self, clock: crate::clock::WallClock) {
        self.clock = clock;
    }

    /// Handle everything raft has ready, in the canonical order (module docs), collecting the
    /// messages in [`ReadyOutput::messages`] in the order they may leave (tests and simple drivers).
    pub fn handle_ready(&mut self) -> Result<ReadyOutput, ReplicaError> {
        let mut messages = Vec::new();
        let mut out = self.handle_ready_sending(&mut |batch| messages.extend(batch))?;
        out.messages = messages;
        Ok(out)
    }

    /// Handle everything raft has ready, handing each batch of messages to `send` the moment it may
    /// leave (module docs): a transport that sends from other threads overlaps them with this
    /// round's fsyncs and apply. `send` must not block on the network.
    pub fn handle_ready_sending(
        &mut self,
        send: &mut dyn FnMut(Vec<Message>),
    ) -> Result<ReadyOutput, ReplicaError> {
        self.contained(|r| r.handle_raft_ready(send))
    }

    /// Hand a batch to the transport, telling the simulation's checkers what it promises first: a
    /// promise counts from the moment it may leave, whether or not the process lives to send it.
    fn hand_off(&self, batch: Vec<Message>, send: &mut dyn FnMut(Vec<Message>)) {
        if batch.is_empty() {
            return;
        }
        self.observe_promises(&batch);
        send(batch);
    }

    fn handle_raft_ready(&mut self, send: &mut dyn FnMut(Vec<Message>)) -> Result<ReadyOutput, ReplicaError> {
        let mut out = ReadyOutput::default();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut rd = self.raw.ready();
        // 1. A leader's appends go out now, while it persists its own copy.
        self.hand_off(rd.take_messages(), send);
        for rs in rd.take_read_states() {
            if let Ok(id) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) {
                out.read_states.push((u64::from_be_bytes(id), rs.index));
            }
        }
        // A snapshot from the leader replaces the state machine before any later entry applies. Its
        // file was received (spooled and finalized) before the message was stepped.
        //
        // The pointer is recorded first (after checking the file), the state machine restored second:
        // a crash in between leaves the state machine behind the pointer, which the cold start at the
        // next open repairs by restoring. The other order would leave the state machine ahead of the
        // durable commit index, which raft refuses to start with.
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let metadata = snap.metadata.clone().unwrap_or_default();
            let token = SnapshotToken::decode(&snap.data)?;
            let path = self.snapshots.store.path(token.index);
            if self.verified.take() != Some(token) {
                verify(&*self.snapshots.fs, &path, &token)?;
            }
            // The members' addresses the snapshot carries (a node that joins learns them here).
            let header = crate::snapshot::read_header(&*self.snapshots.fs, &path, &token)?;
            let book = decode_snapshot_book(&header.node_state, &path);
            let installed_conf = metadata.conf_state.clone().unwrap_or_default();
            self.raw.store().apply_snapshot_with_book(
                SnapshotPointer { metadata, token: snap.data },
                token.index + 1,
                book.as_ref(),
            )?;
            if let Some(book) = book {
                self.publish_book(book);
            }
            self.note_if_removed(token.index, &installed_conf);
            // Retention applies to received snapshots too, or a follower that only ever catches up
            // by snapshot keeps every one it was sent (found by the simulation's file-hygiene check).
            // The files it removes are older than the base just recorded: no restore needs them.
            self.retain(token.index)?;
            // The state machine is replaced by the applier, before any later entry applies.
            let hold = self.snapshots.store.begin_receive(token.index);
            self.hand_to_applier(ApplyWork::Restore { path, token, hold }, &mut out)?;
        }
        // The canary's bug: votes and append responses leave before the state they promise is
        // durable (a crash inside the fsync below breaks them).
        if crate::failpoint::canary(self.fs(), "promise-before-fsync") {
            self.hand_off(rd.take_persisted_messages(), send);
        }
        // 3. Entries and a new term or vote: one write, one fsync, before anything that promises
        //    them. A commit index alone is not worth an fsync (module docs): kept in memory, it is
        //    written with the next persist.
        let hs = rd.hs().cloned();
        let store = self.raw.store();
        if !rd.entries().is_empty() || hs.as_ref().is_some_and(|hs| store.changes_term_or_vote(hs)) {
            let started = self.metrics.is_some().then(tokio::time::Instant::now);
            store.persist(rd.entries(), hs.as_ref())?;
            if let (Some(m), Some(started)) = (&self.metrics, started) {
                m.persist_seconds.observe(started.elapsed().as_secs_f64());
                m.entries_persisted.inc_by(rd.entries().len() as u64);
                m.persisted_bytes.inc_by(rd.entries().iter().map(|e| e.data.len() as u64).sum());
            }
        } else if let Some(hs) = &hs {
            store.note_commit(hs.commit);
        }
        // 4. Votes and append responses promise persisted state: only now, and before the apply.
        self.hand_off(rd.take_persisted_messages(), send);
        // 5. Apply what is committed (raft hands out only entries that are already persisted), once
        //    raft has taken the round's persistence (`advance_append`): a membership change taken
        //    into raft before that could remove a leader's own progress, which raft-rs then updates
        //    for the entries just persisted, and panics (found by review).
        let committed = rd.take_committed_entries();
        let mut light = self.raw.advance_append(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.store().note_commit(commit);
        }
        self.hand_off(light.take_messages(), send);
        self.commit_entries(committed, &mut out)?;
        self.commit_entries(light.take_committed_entries(), &mut out)?;
        self.raw.advance_apply();
        if std::mem::take(&mut self.step_down) && self.is_leader() {
            let to = self.handoff_target();
            if let Some(to) = to {
                self.raw.transfer_leader(to);
            }
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
            tracing::info!(node = self.id(), to = ?to, "no longer a voter: stepped down as leader");
        }
        self.observe_leadership();
        Ok(out)
    }

    /// Tell the simulation's checkers ([`crate::probe`]) what a batch of messages promises: every
    /// granted vote and accepting append response, however it leaves.
    fn observe_promises(&self, messages: &[Message]) {
        use raft::eraftpb::MessageType as T;
        let fs = &*self.snapshots.fs;
        for m in messages.iter().filter(|m| !m.reject) {
            match m.msg_type() {
                T::MsgRequestVoteResponse => crate::probe::observe(fs, || {
                    Observation::Promise(Promise::Vote { term: m.term, candidate: m.to })
                }),
                T::MsgAppendResponse => crate::probe::observe(fs, || {
                    // raft's log, not storage's: a promise handed out early names entries not yet stored.
                    let log_term = self.raw.raft.raft_log.term(m.index).unwrap_or(0);
                    Observation::Promise(Promise::Accept { term: m.term, index: m.index, log_term })
                }),
                _ => {}
            }
        }
    }

    /// Tell the simulation's checkers whether this node leads, after each ready round.
    fn observe_leadership(&mut self) {
        let fs = &*self.snapshots.fs;
        if self.raw.raft.state == StateRole::Leader && self.led_term != self.raw.raft.term {
            self.led_term = self.raw.raft.term;
            crate::probe::observe(fs, || Observation::Leader { term: self.led_term });
        }
    }

    /// Hand committed entries over for applying ([`crate::apply`]): conf changes take effect in raft
    /// now; the state machine gets the whole batch, in order.
    fn commit_entries(&mut self, entries: Vec<Entry>, out: &mut ReadyOutput) -> Result<(), ReplicaError> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in &entries {
            self.applied_bytes_since_snapshot =
                self.applied_bytes_since_snapshot.saturating_add(e.data.len() as u64);
            if let (Some(outcome), Some(c)) = (self.take_conf_change(e)?, EntryContext::decode(&e.context)) {
                out.conf_changes.push((c.request_id, outcome));
            }
        }
        self.hand_to_applier(ApplyWork::Entries(entries), out)
    }

    /// Apply `work` now if the applier is here, else hand it to the caller's.
    fn hand_to_applier(&mut self, work: ApplyWork, out: &mut ReadyOutput) -> Result<(), ReplicaError> {
        match &mut self.applier {
            Some(applier) => out.replies.extend(applier.run(work)?),
            None => out.work.push(work),
        }
        Ok(())
    }

    /// [`Replica::apply_conf_change`] for a committed entry, if it is a membership change (`None`
    /// for any other entry, and for a change the stored conf state already holds).
    fn take_conf_change(
        &mut self,
        e: &Entry,
    ) -> Result<Option<Result<raft::eraftpb::ConfState, String>>, ReplicaError> {
        let bad = |reason: String| ReplicaError::BadEntry { index: e.index, reason };
        match e.entry_type() {
            EntryType::EntryNormal => Ok(None),
            EntryType::EntryConfChange => {
                let cc = ConfChange::decode(&e.data[..]).map_err(|err| bad(err.to_string()))?;
                self.apply_conf_change(e.index, &cc)
            }
            EntryType::EntryConfChangeV2 => {
                let cc = ConfChangeV2::decode(&e.data[..]).map_err(|err| bad(err.to_string()))?;
                self.apply_conf_change(e.index, &cc)
            }
        }
    }

    /// Take a committed membership change into raft and persist the result with the members'
    /// addresses after it. `None` when the stored conf state already holds it; `Some(Err)` when raft
    /// refuses it (every replica refuses the same change the same way: it changes nothing).
    fn apply_conf_change(
        &mut self,
        index: u64,
        cc: &impl raft_proto::ConfChangeI,
    ) -> Result<Option<Result<raft::eraftpb::ConfState, String>>, ReplicaError> {
        // A conf change whose result the stored conf state already holds (written, then a crash
        // before the applied index moved) was loaded by raft at start-up: do not apply it twice.
        // (Only the stored conf state decides: a state machine already past the entry says nothing
        // of the conf state, whose batch damage to the log's end can take away: found by fuzz, seed
        // 311587, a follower that lost it kept the membership from before a removal.)
        if index <= self.raw.store().conf_index() {
            return Ok(None);
        }
        let v2 = cc.as_v2();
        let before = self.current_book();
        let cs = match self.raw.apply_conf_change(cc) {
            Ok(cs) => cs,
            Err(e) => {
                tracing::warn!(node = self.id(), index, error = %e, "membership change refused by raft; nothing changed");
                return Ok(Some(Err(e.to_string())));
            }
        };
        // The book is replicated state: a change whose context does not decode is applied without new
        // addresses on every replica alike (the leader checked it before proposing).
        let book = crate::members::book_after(&before, &v2.context, &cs).unwrap_or_else(|e| {
            tracing::warn!(node = self.id(), index, error = %e, "membership change carries no usable addresses");
            crate::members::book_after(&before, &[], &cs).unwrap_or_default()
        });
        self.raw.store().set_conf_state(&cs, index, Some(&book))?;
        self.publish_book(book);
        if let Some(m) = &self.metrics {
            m.membership_changes.inc();
        }
        tracing::info!(node = self.id(), index, voters = ?cs.voters, learners = ?cs.learners, outgoing = ?cs.voters_outgoing, "membership changed");
        self.after_membership_change(index, &cs);
        Ok(Some(Ok(cs)))
    }

    /// Hand the members' addresses to the transport and client port.
    fn publish_book(&self, book: crate::members::Book) {
        if let Some(d) = &self.directory {
            d.replace(book);
        }
    }

    /// A change that left this node out: it is removed (it serves nothing more). A leader that is no
    /// longer a voter hands leadership to the best voter left (or steps down): raft-rs would keep
    /// it leading a configuration it is not part of.
    fn after_membership_change(&mut self, index: u64, cs: &raft::eraftpb::ConfState) {
        let me = self.id();
        if self.note_if_removed(index, cs) {
            tracing::warn!(
                node = me,
                index,
                "this node was removed from the cluster; it no longer serves (stop it)"
            );
        }
        let voter = cs.voters.contains(&me) || cs.voters_outgoing.contains(&me);
        if self.is_leader() && !voter {
            // It must stop leading: raft-rs would go on leading a configuration it is not in. Done
            // once the ready round is over (raft-rs refuses a role change inside one); the best voter
            // left is then asked to campaign at once where it is caught up (else the cluster elects
            // one after an election timeout).
            self.step_down = true;
        }
    }

    /// Record that the conf state `cs`, which took effect at `index`, leaves this node out (once:
    /// the first such index stays). Whether this call was the one that found it.
    fn note_if_removed(&mut self, index: u64, cs: &raft::eraftpb::ConfState) -> bool {
        let removed = self.removed_at.is_none() && crate::members::excludes(cs, self.id());
        if removed {
            self.removed_at = Some(index);
        }
        removed
    }
}

/// Committed entry bytes one ready hands to the applier at most (raft always hands at least one
/// entry), so what waits for the applier grows in steps of this size.
pub const MAX_COMMITTED_BYTES_PER_READY: u64 = 16 << 20;

/// A leader keeps the log down to a healthy lagging follower's match for at most this many
/// `catch_up_entries` windows below a snapshot.
pub const MAX_CATCH_UP_FACTOR: u64 = 4;

/// A snapshot to write off the raft loop ([`Replica::snapshot_due`]): it owns what it needs, so it
/// can run on a worker thread while the loop goes on ticking, sending heartbeats and applying.
pub struct SnapshotJob<E: Engine> {
    engine: std::sync::Arc<E>,
    fs: SharedFs,
    dir: std::path::PathBuf,
    conf_state: raft::eraftpb::ConfState,
    /// The members' addresses as of `conf_state` (the header's `node_state`).
    book: Vec<u8>,
    /// The stored conf state's index when the job was made: a conf change applied meanwhile may be
    /// inside the view, whose header must then name the newer conf state (the file is discarded).
    conf_index: u64,
}

impl<E: Engine> std::fmt::Debug for SnapshotJob<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotJob").field("dir", &self.dir).field("conf_index", &self.conf_index).finish()
    }
}

/// What a [`SnapshotJob`] produced, for [`Replica::finish_snapshot`].
#[derive(Debug)]
pub struct SnapshotDone {
    conf_index: u64,
    result: Result<SnapshotFile, SnapshotError>,
}

impl<E: Engine> SnapshotJob<E> {
    /// The filesystem the job writes to (a simulated worker takes the stalls its failpoints asked
    /// for from it).
    pub fn fs(&self) -> SharedFs {
        self.fs.clone()
    }

    /// Write the engine's point-in-time view as a snapshot file (streamed, footer, fsync, rename,
    /// directory fsync: D6), then make the state machine durable at or past it (D2): under `nosync`
    /// the file is the only durable copy of what the compacted entries built once the pointer is
    /// recorded, and the engine must not be behind it after a crash. Synchronous: run it on a
    /// blocking worker, never on the raft loop.
    pub fn run(self) -> SnapshotDone {
        let result =
            write_snapshot(&*self.fs, &self.dir, &*self.engine, &self.conf_state.encode_to_vec(), &self.book)
                .and_then(|file| ensure_applied_durable(&*self.engine, file.index).map(|()| file));
        SnapshotDone { conf_index: self.conf_index, result }
    }
}

impl<E: Engine> Replica<E> {
    /// Is a snapshot due (`every_entries` applied entries, or `every_bytes` of applied entry data,
    /// since the last one)? Then the job that writes it, off the loop; its result comes back through
    /// [`Replica::finish_snapshot`]. The caller runs at most one job at a time.
    pub fn snapshot_due(&mut self) -> Option<SnapshotJob<E>> {
        let applied = self.kv.applied_index();
        let last = self.raw.store().snapshot_index();
        let every = self.snapshots.every_entries;
        let by_entries = every > 0 && applied >= last.saturating_add(every);
        let by_bytes = self.applied_bytes_since_snapshot >= self.snapshots.every_bytes.max(1);
        // A peer needs a snapshot this node does not hold (one that joined after a membership
        // change: the storage sends it no log from the first entry).
        let asked = self.snapshot_asked || self.raw.store().take_snapshot_wanted();
        self.snapshot_asked = asked;
        if !(by_entries || by_bytes || asked) || applied <= last {
            return None;
        }
        // The state machine must have caught up with the stored conf state (the applier may trail
        // the loop, which takes conf changes when it hands them over): the header names the conf
        // state, which must hold at the snapshot's index.
        if applied < self.raw.store().conf_index() {
            return None;
        }
        // A node recovering lost entries may have a state machine ahead of its log: the log cannot
        // name the term of the applied index yet, so no snapshot until the leader has refilled it.
        if self.recovering() || applied > self.raw.raft.raft_log.last_index() {
            return None;
        }
        Some(SnapshotJob {
            engine: self.kv.shared_engine(),
            fs: self.snapshots.fs.clone(),
            dir: self.snapshots.store.dir().to_path_buf(),
            conf_state: self.raw.raft.prs().conf().to_conf_state(),
            // Only once the membership changed: before that the members are the configuration's.
            book: self.raw.store().book().map(|b| crate::members::encode_book(&b)).unwrap_or_default(),
            conf_index: self.raw.store().conf_index(),
        })
    }

    /// Record a snapshot a [`SnapshotJob`] wrote as the log's base (compacting the log below it, safe
    /// only now that the state machine is durable past it: D2) and apply retention. A file the loop
    /// moved past meanwhile (a snapshot from the leader installed at or beyond it, a conf change
    /// applied, the log no longer naming its term) is removed instead. A failed write stops the node,
    /// as it always has (D10).
    pub fn finish_snapshot(&mut self, done: SnapshotDone) -> Result<Option<SnapshotFile>, ReplicaError> {
        let file = done.result?;
        let term = if done.conf_index != self.raw.store().conf_index() {
            Err("a conf change was applied while it was written")
        } else if file.index <= self.raw.store().snapshot_index() {
            Err("the log's base moved past it while it was written")
        } else if self.recovering() || file.index > self.raw.raft.raft_log.last_index() {
            Err("this node began recovering lost entries while it was written")
        } else {
            raft::Storage::term(self.raw.store(), file.index).map_err(|_| "the log no longer names its term")
        };
        let term = match term {
            Ok(term) => term,
            Err(why) => {
                tracing::info!(node = self.id(), index = file.index, path = %file.path.display(), why, "snapshot discarded");
                self.snapshots
                    .fs
                    .remove_file(&file.path)
                    .map_err(|source| SnapshotError::Io { path: file.path.clone(), source })?;
                return Ok(None);
            }
        };
        let conf_state = self.raw.raft.prs().conf().to_conf_state();
        let metadata =
            raft::eraftpb::SnapshotMetadata { conf_state: Some(conf_state), index: file.index, term };
        let keep_from = self.catch_up_floor(file.index);
        self.raw.store().apply_snapshot_keeping(
            SnapshotPointer { metadata, token: file.token().encode().to_vec() },
            keep_from,
        )?;
        self.retain(file.index)?;
        self.applied_bytes_since_snapshot = 0;
        self.snapshot_asked = false;
        tracing::info!(node = self.id(), index = file.index, term, "snapshot taken, log compacted below it");
        Ok(Some(file))
    }

    /// The first entry to keep in the log below a snapshot at `index`: `catch_up_entries` below it,
    /// or, on a leader, down to the entry after its slowest follower's match where that follower is
    /// healthy (heard from within an election timeout), but never more than `MAX_CATCH_UP_FACTOR`
    /// windows: a follower gone for good must not pin the log.
    fn catch_up_floor(&self, index: u64) -> u64 {
        let window = self.snapshots.catch_up_entries;
        let floor = index.saturating_sub(window) + 1;
        if !self.is_leader() || window == 0 {
            return floor;
        }
        let me = self.id();
        let slowest = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, pr)| **id != me && pr.recent_active)
            .map(|(_, pr)| pr.matched + 1)
            .min()
            .unwrap_or(floor);
        let limit = index.saturating_sub(window.saturating_mul(MAX_CATCH_UP_FACTOR)) + 1;
        slowest.clamp(limit, floor)
    }

    /// Take a snapshot now if one is due, on this thread ([`Replica::snapshot_due`], the job, and
    /// [`Replica::finish_snapshot`] in one call): for tests and drivers without a worker.
    pub fn maybe_snapshot(&mut self) -> Result<Option<SnapshotFile>, ReplicaError> {
        match self.snapshot_due() {
            Some(job) => self.finish_snapshot(job.run()),
            None => Ok(None),
        }
    }

    /// Apply retention around the log's new base `base`: now, or, once the runtime asked for it
    /// ([`Replica::retain_off_the_loop`]), by the caller off the loop ([`Replica::take_retention`]):
    /// removing an old snapshot file of a large database takes the filesystem long enough to hold
    /// up ticks and heartbeats.
    fn retain(&mut self, base: u64) -> Result<(), ReplicaError> {
        if self.retention_off_loop {
            self.retention_due = Some(base);
        } else {
            self.snapshots.store.gc_keeping(Some(base))?;
        }
        Ok(())
    }

    /// From now on the caller applies retention off the loop: after each ready round and each
    /// snapshot recorded, [`Replica::take_retention`] names the base to keep.
    pub fn retain_off_the_loop(&mut self) {
        self.retention_off_loop = true;
    }

    /// The base of a retention pass due, if any ([`Replica::retain_off_the_loop`]).
    pub fn take_retention(&mut self) -> Option<u64> {
        self.retention_due.take()
    }

    /// Tell raft how sending a snapshot to `to` went (every snapshot sent gets a report).
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) {
        let status = if delivered { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
        self.raw.report_snapshot(to, status);
    }
}

thread_local! {
    /// Set between a failed read of the raft log (which raft-rs answers with a panic) and the end of
    /// the `contained` call that turns that panic into a fail-stop.
    static CONTAINED_READ_FAILURE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Mark (or clear) that the panic about to unwind on this thread is raft-rs's answer to a failed
/// read of the raft log, which the replica contains.
pub(crate) fn note_contained_read_failure(pending: bool) {
    let _ = CONTAINED_READ_FAILURE.try_with(|c| c.set(pending));
}

/// Is the panic unwinding on this thread raft-rs's answer to a failed read of the raft log, which
/// the replica turns into [`ReplicaError::LogRead`]? Such a panic is a logged fail-stop, not a bug.
pub fn panic_is_a_contained_read_failure() -> bool {
    CONTAINED_READ_FAILURE.try_with(std::cell::Cell::get).unwrap_or(false)
}

/// Chain a panic hook (once per process) that leaves the panics of [`panic_is_a_contained_read_failure`]
/// unprinted: the fail-stop is logged with its reason, and the default hook would add a message and,
/// with `RUST_BACKTRACE` set, a symbolized backtrace to every failed read of the log. Every other
/// panic is printed as before.
pub fn quiet_contained_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !panic_is_a_contained_read_failure() {
                previous(info);
            }
        }));
    });
}

/// A damaged raft log can lose the record of the newest snapshot pointer with the entries after
/// the damage, leaving an older pointer whose file retention has since removed (retention keeps the
/// newest files and the base, and the base had moved on). The node is recovering from its peers
/// anyway; the newest snapshot file that verifies holds committed state (this node wrote it from
/// what it applied, or verified it from a leader), so it becomes the log's base, as if a leader had
/// sent it. Only when the log was damaged: a missing base file in an intact log is refused as ever.
fn adopt_newer_snapshot_after_damage(
    storage: &RaftStorage,
    snapshots: &SnapshotSettings,
) -> Result<(), ReplicaError> {
    let pointer = storage.snapshot_pointer();
    if storage.recover_to() == 0 || pointer.metadata.index == 0 {
        return Ok(());
    }
    let token = SnapshotToken::decode(&pointer.token)?;
    let fs = &*snapshots.fs;
    let missing = |path: &std::path::Path| {
        fs.exists(path).map(|e| !e).map_err(|source| SnapshotError::Io { path: path.to_path_buf(), source })
    };
    if !missing(&snapshots.store.path(token.index))? {
        return Ok(());
    }
    for (index, path) in snapshots.store.list()?.into_iter().rev() {
        if index <= token.index {
            break;
        }
        let Some(found) = footer_token(fs, &path, index) else { continue };
        let Ok(file) = verify(fs, &path, &found) else { continue };
        let conf_state = raft::eraftpb::ConfState::decode(file.header.conf_state.as_slice())
            .map_err(|e| SnapshotError::BadHeader(format!("{}: conf state: {e}", path.display())))?;
        let metadata =
            raft::eraftpb::SnapshotMetadata { conf_state: Some(conf_state), index, term: file.header.term };
        tracing::warn!(
            missing = token.index,
            index,
            path = %path.display(),
            "the damaged raft log names a snapshot retention already removed; adopting the newest verified one"
        );
        let book = decode_snapshot_book(&file.header.node_state, &path);
        storage.apply_snapshot_with_book(
            SnapshotPointer { metadata, token: found.encode().to_vec() },
            index + 1,
            book.as_ref(),
        )?;
        return Ok(());
    }
    Ok(())
}

/// The member book a snapshot's header carries (`None`: none, from before any membership change).
/// One that does not decode is reported and ignored: the file's CRC held, so its writer wrote it so.
fn decode_snapshot_book(node_state: &[u8], path: &std::path::Path) -> Option<crate::members::Book> {
    if node_state.is_empty() {
        return None;
    }
    crate::members::decode_book(node_state)
        .inspect_err(|e| tracing::error!(path = %path.display(), error = %e, "a snapshot's member book does not decode; keeping the stored one"))
        .ok()
}

/// The token of the snapshot file at `path` as its footer states it (verified by the caller).
fn footer_token(fs: &dyn crate::io::Fs, path: &std::path::Path, index: u64) -> Option<SnapshotToken> {
    let file = fs.open(path, crate::io::OpenOptions::read_only()).ok()?;
    let len = file.len().ok()?;
    let at = len.checked_sub(crate::snapshot::FOOTER_LEN as u64)?;
    let mut crc = [0u8; 4];
    file.read_exact_at(&mut crc, at).ok()?;
    Some(SnapshotToken { index, crc: u32::from_be_bytes(crc) })
}

/// Route messages between in-process replicas (tests and the simulation harness build on this).
pub fn route(messages: Vec<Message>, inboxes: &mut BTreeMap<u64, Vec<Message>>) {
    for m in messages {
        inboxes.entry(m.to).or_default().push(m);
    }
}
