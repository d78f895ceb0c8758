//! The one task that owns the replica. It takes client proposals and reads, peer messages and
//! transport feedback, ticks raft, and drives the ready loop. Everything it receives between two
//! ready rounds goes into one round, so proposals from many clients share one WAL fsync (group
//! commit) and reads from many clients share one ReadIndex round trip.

use std::collections::BTreeMap;

use raft::eraftpb::{Message, MessageType};
use tokio::sync::{mpsc, oneshot, watch};

use super::peer::{Feedback, PeerInput, Transport};
use super::{NodeError, RuntimeOptions, Status};
use crate::apply::{Applier, ApplyWork};
use crate::fsm::{self, Engine, Kv};
use crate::limits::MAX_COMMAND_BYTES;
use crate::metrics::Metrics;
use crate::replica::{Replica, ReplicaError, SnapshotDone, SnapshotJob};
use crate::server::resp::Reply;
use crate::snapshot::{ReceiveGuard, SnapshotToken};
use std::sync::Arc;

/// A read run against the state machine once its read index is applied.
pub(crate) type ReadFn<E> = Box<dyn FnOnce(&Kv<E>) -> Reply + Send>;

/// Why a write was not confirmed. The client sees the text as an error reply, and the text's first
/// word tells it what it may assume: `ERR` and `TRYAGAIN` only when the write provably never reached
/// raft (it was not applied, and never will be); `TIMEOUT` once it may have been handed to raft,
/// proposed here or forwarded to the leader (it may or may not be applied). A Redis client takes an
/// `ERR` to mean "not applied" and retries: an `ERR` for a write that then commits would apply a
/// retried INCR twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// raft dropped the proposal (no leader known, or a leadership transfer): it was never appended.
    #[error("TRYAGAIN no raft leader is known yet; retry shortly")]
    NoLeader,
    /// The encoded write is larger than one raft entry may be ([`MAX_COMMAND_BYTES`]): refused before
    /// raft saw it.
    #[error("ERR write too large to replicate ({bytes} bytes, limit {MAX_COMMAND_BYTES})")]
    TooLarge { bytes: usize },
    /// The node stopped before its raft loop took the write from its queue: raft never saw it.
    #[error("ERR the node is shutting down; the write was not applied")]
    NotProposed,
    /// The term moved on while the write was pending: the old leader may or may not have replicated
    /// it far enough to commit. Failing now beats holding the client until its timeout for an
    /// answer that may never come (a proposal forwarded to a leader that died is simply lost).
    #[error("TIMEOUT leadership changed before the write was confirmed; it may or may not have been applied")]
    LeaderChanged,
    /// The raft loop stopped (shutdown, or a fatal error) with the write proposed but not applied:
    /// it is in this node's log or was forwarded to the leader, and may still commit.
    #[error("TIMEOUT the node stopped before the write was confirmed; it may or may not have been applied")]
    Stopped,
    /// A membership change left this node out: it takes no more requests (raft never saw this one).
    #[error(
        "ERR this node was removed from the cluster at index {index}; send requests to a member and stop it"
    )]
    Removed { index: u64 },
}

/// A client request for the raft loop.
pub(crate) enum Input<E: Engine> {
    /// An encoded [`fsm::Command`], answered once applied.
    Propose { command: Vec<u8>, reply: oneshot::Sender<Result<fsm::Reply, Refusal>> },
    /// A linearizable read, answered once the read index is confirmed and applied.
    Read { read: ReadFn<E>, reply: oneshot::Sender<Reply> },
    /// Hand leadership to `to` (on the leader, `None`: its most up-to-date follower). Answered with
    /// the node the transfer went to as soon as it is under way; the caller watches the status for
    /// the outcome.
    TransferLeader { to: Option<u64>, reply: oneshot::Sender<Result<u64, String>> },
    /// A membership change, proposed by the leader (refused elsewhere, with the leader named);
    /// answered with the conf state it resulted in once it took effect here, or with why not.
    Membership {
        change: crate::members::Change,
        reply: oneshot::Sender<Result<raft::eraftpb::ConfState, String>>,
    },
}

pub(crate) struct Channels<E: Engine> {
    pub inputs: mpsc::Receiver<Input<E>>,
    pub peers: mpsc::Receiver<PeerInput>,
    pub feedback: mpsc::Receiver<Feedback>,
    pub status: watch::Sender<Status>,
}

struct PendingRead<E: Engine> {
    read: ReadFn<E>,
    reply: oneshot::Sender<Reply>,
}

/// Reads asked under one ReadIndex request.
struct ReadBatch<E: Engine> {
    asked_at_tick: u64,
    reads: Vec<PendingRead<E>>,
}

/// A ReadIndex request unanswered for this many ticks was dropped by raft (no leader, or a leader
/// that has not committed in its term yet): ask again. Reads are idempotent, so asking twice is safe.
const READ_RETRY_TICKS: u64 = 5;

/// The most inputs taken into one ready round, so ticks are never starved.
const MAX_INPUTS_PER_ROUND: usize = 4096;

/// Entry bytes (proposals, appends from the leader) past which a round takes no more inputs: the
/// round persists them with one write and one fsync before the loop ticks again.
const MAX_ROUND_BYTES: usize = 4 << 20;

/// Pieces of work (one ready's committed entries, or a snapshot restore) queued for the applier at
/// most. Work the queue cannot take waits in the loop's outbox: the loop never waits for the
/// applier (its ticks and heartbeats must go on while the applier restores a large snapshot).
const APPLY_QUEUE: usize = 64;

/// Entry bytes committed but not yet queued for the applier past which the loop pushes back: it
/// takes no client input and drops the leader's appends (raft resends them) until the applier has
/// caught up. What waits is bounded by this plus one ready's committed entries
/// ([`MAX_COMMITTED_BYTES_PER_READY`](crate::replica::MAX_COMMITTED_BYTES_PER_READY)).
const APPLY_BACKLOG_BYTES: usize = 64 << 20;

/// How long a leader that was asked to stop spends handing its leadership over: answering the
/// writes it holds, then transferring to the most up-to-date follower. Past it, it stops anyway (the
/// cluster then elects a leader after an election timeout, as after a crash).
const HANDOFF_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A leader stopping gracefully: it takes no new writes, lets the ones it holds commit and answers
/// them, then transfers leadership and stops once another node leads (or at `HANDOFF_LIMIT`).
#[derive(Debug)]
struct Handoff {
    started: tokio::time::Instant,
    /// The follower leadership was transferred to, once the writes in flight were answered.
    to: Option<u64>,
}

/// A ready round this long is logged: ticks and heartbeats waited for it.
const SLOW_ROUND: std::time::Duration = std::time::Duration::from_millis(250);

/// A received snapshot message back from verification: the token when its file verified.
type Verified = (PeerInput, Option<SnapshotToken>);

/// A proposal's client, waiting for its reply.
type ReplyTo = oneshot::Sender<Result<fsm::Reply, Refusal>>;

/// Work for the applier, with the clients of the proposals it carries: the applier answers them.
struct Dispatch {
    work: ApplyWork,
    replies: Vec<(u64, ReplyTo)>,
}

/// The applier running beside the loop ([`crate::apply`]).
struct ApplyQueue {
    work: mpsc::Sender<Dispatch>,
    /// Woken after each piece of work is applied (reads waiting for an index, snapshot cadence).
    progress: Arc<tokio::sync::Notify>,
    /// Resolves when the applier has finished (its queue drained, or after its fatal error).
    finished: oneshot::Receiver<()>,
}

struct Loop<E: Engine> {
    replica: Replica<E>,
    transport: Transport,
    ticks: u64,
    /// When the loop last ticked (the gap to the next tick is a metric).
    last_tick: tokio::time::Instant,
    /// Request ids: this node's id in the top 16 bits and a random start below, so ids from other
    /// nodes and from this node's earlier runs (whose entries may still be applied) do not collide.
    next_id: u64,
    proposals: BTreeMap<u64, ReplyTo>,
    /// Membership changes proposed here, waiting to take effect.
    membership: BTreeMap<u64, oneshot::Sender<Result<raft::eraftpb::ConfState, String>>>,
    /// Committed work the applier's queue has not taken yet, in order, and its entry bytes.
    outbox: std::collections::VecDeque<Dispatch>,
    outbox_bytes: usize,
    unasked: Vec<PendingRead<E>>,
    asked: BTreeMap<u64, ReadBatch<E>>,
    /// Confirmed reads waiting for the state machine to reach their index.
    confirmed: BTreeMap<u64, Vec<PendingRead<E>>>,
    /// Snapshot guards of received snapshots, held until the message that installs them is handled.
    guards: Vec<ReceiveGuard>,
    snapshots_installed: u64,
    /// The term pending proposals were made in.
    term: u64,
    /// A snapshot is being written off the loop (since when); its result comes back on
    /// `snapshot_done`.
    snapshot_running: bool,
    snapshot_started: tokio::time::Instant,
    metrics: Arc<Metrics>,
    /// The transport's dropped-message count already reported to `metrics`.
    dropped_reported: u64,
    snapshot_done: (mpsc::Sender<SnapshotDone>, mpsc::Receiver<SnapshotDone>),
    /// Received snapshot messages whose files were verified off the loop, to step now (the token
    /// when the file verified; without it the replica verifies it again, and stops on it).
    verified: (mpsc::Sender<Verified>, mpsc::Receiver<Verified>),
    /// Received snapshots being verified off the loop.
    verifying: usize,
    /// Stopping as a leader: the handoff under way.
    handoff: Option<Handoff>,
}

pub(crate) async fn run<E: Engine + Send + 'static>(
    replica: Replica<E>,
    mut ch: Channels<E>,
    transport: Transport,
    metrics: Arc<Metrics>,
    opts: &RuntimeOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let id = replica.id();
    let mut lp = Loop {
        next_id: (id << 48)
            | (opts.seed.map_or_else(rand::random::<u64>, |s| s.rotate_left(17)) & ((1 << 48) - 1)),
        replica,
        transport,
        ticks: 0,
        last_tick: tokio::time::Instant::now(),
        proposals: BTreeMap::new(),
        membership: BTreeMap::new(),
        outbox: std::collections::VecDeque::new(),
        outbox_bytes: 0,
        unasked: Vec::new(),
        asked: BTreeMap::new(),
        confirmed: BTreeMap::new(),
        guards: Vec::new(),
        snapshots_installed: 0,
        term: 0,
        snapshot_running: false,
        snapshot_started: tokio::time::Instant::now(),
        snapshot_done: mpsc::channel(1),
        verified: mpsc::channel(4),
        verifying: 0,
        handoff: None,
        metrics,
        dropped_reported: 0,
    };
    // The applier's fatal error (D10) stops the loop.
    let (mut applier, mut fatal) = match lp.replica.take_applier().map(spawn_applier) {
        Some((queue, fatal)) => (Some(queue), Some(fatal)),
        None => (None, None),
    };
    let progress = applier.as_ref().map(|q| Arc::clone(&q.progress));
    lp.replica.retain_off_the_loop();
    let mut ticker = tokio::time::interval(opts.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        if *shutdown.borrow() && lp.handoff.is_none() {
            // A leader hands its leadership over before it stops (`Handoff`): the cluster then
            // needs no election timeout to find a new one.
            match lp.begin_handoff() {
                Some(handoff) => lp.handoff = Some(handoff),
                None => break Ok(()),
            }
        }
        if lp.handoff.is_some() && lp.handoff_done() {
            break Ok(());
        }
        // What woke the loop and when its handling began, for the log line of an iteration that held
        // it up (the branches that can take long start the clock themselves).
        let mut woke = "input";
        let mut handling_from = None;
        tokio::select! {
            biased;
            // A dropped sender means whoever could stop the node is gone: stop.
            changed = shutdown.changed(), if lp.handoff.is_none() => if changed.is_err() { break Ok(()) },
            _ = ticker.tick() => lp.tick(),
            Some(done) = lp.snapshot_done.1.recv() => {
                woke = "a snapshot written";
                handling_from = Some(tokio::time::Instant::now());
                lp.snapshot_running = false;
                match lp.replica.finish_snapshot(done) {
                    Ok(taken) => {
                        if taken.is_some() {
                            lp.metrics.snapshots_taken.inc();
                        }
                        lp.metrics.snapshot_write_seconds.observe(lp.snapshot_started.elapsed().as_secs_f64());
                    }
                    Err(e) => break Err(e.into()),
                }
            }
            Some(e) = recv_fatal(&mut fatal) => break Err(e.into()),
            Some(permit) = reserve(&applier), if !lp.outbox.is_empty() => {
                if let Some(d) = lp.take_outbox() {
                    permit.send(d);
                }
            }
            // Reads waiting for an index are what needs the applier's progress at once (the rest,
            // the snapshot cadence and the status, can wait for the next tick or input).
            () = applied_more(&progress), if !lp.confirmed.is_empty() => {}
            Some((input, token)) = lp.verified.1.recv() => {
                woke = "a snapshot verified";
                lp.verifying = lp.verifying.saturating_sub(1);
                handling_from = Some(tokio::time::Instant::now());
                if let Some(token) = token {
                    lp.replica.snapshot_verified(token);
                }
                let mut input = input;
                if let Some(guard) = input.guard.take() {
                    lp.guards.push(guard);
                }
                lp.peer(input);
            }
            Some(fb) = ch.feedback.recv() => lp.feedback(fb),
            Some(m) = ch.peers.recv() => lp.peer(m),
            Some(input) = ch.inputs.recv(), if !lp.backlogged() => lp.input(input),
        }
        let woke_at = handling_from.unwrap_or_else(tokio::time::Instant::now);
        // Take whatever else is waiting into the same round.
        // A round persists what it takes with one write and one fsync, on this task: a bounded
        // amount, so that a follower catching up (appends of 1 MiB each, hundreds in flight) never
        // holds its ticks up for the time a disk needs to take hundreds of MiB.
        let (mut taken, mut taken_bytes) = (0, 0);
        while taken < MAX_INPUTS_PER_ROUND && taken_bytes < MAX_ROUND_BYTES {
            if let Ok(m) = ch.peers.try_recv() {
                taken_bytes += m.msg.entries.iter().map(|e| e.data.len()).sum::<usize>();
                lp.peer(m);
            } else if let Some(input) = (!lp.backlogged()).then(|| ch.inputs.try_recv().ok()).flatten() {
                if let Input::Propose { command, .. } = &input {
                    taken_bytes += command.len();
                }
                lp.input(input);
            } else if let Ok(fb) = ch.feedback.try_recv() {
                lp.feedback(fb);
            } else {
                break;
            }
            taken += 1;
        }
        let round_started = tokio::time::Instant::now();
        if let Err(e) = lp.round() {
            break Err(e);
        }
        // A log read that failed inside raft while a peer message, a proposal or a tick was handled
        // (not only in a ready round) stops the replica; the node stops with it and its supervisor
        // restarts it (found by fuzz, seed 91592: bit rot under a follower's WAL read, met while it
        // stepped a message, left it up but refusing everything, forever one entry behind).
        if let Some(e) = lp.replica.stopped() {
            break Err(e.into());
        }
        if let Some(base) = lp.replica.take_retention() {
            spawn_retention(lp.replica.snapshot_store().clone(), base);
        }
        let round_took = round_started.elapsed();
        let took = woke_at.elapsed();
        if took >= SLOW_ROUND {
            tracing::warn!(
                node = id,
                ms = took.as_millis() as u64,
                round_ms = round_took.as_millis() as u64,
                woke,
                "the raft loop was held up (round_ms: its ready round, whose WAL and hard-state fsyncs wait for the disk)"
            );
        }
        // The round's committed work goes to the applier, in order, as far as its queue takes it;
        // the rest waits in the outbox (the select hands it over as the queue frees up).
        if let Some(queue) = &applier {
            while !lp.outbox.is_empty() {
                match queue.work.try_reserve() {
                    Ok(permit) => {
                        if let Some(d) = lp.take_outbox() {
                            permit.send(d);
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(())) => break,
                    // The applier stopped on a fatal error, which the select reports; the dropped
                    // clients are told the outcome is unknown.
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        lp.outbox.clear();
                        lp.outbox_bytes = 0;
                    }
                }
            }
        }
        // A pause or delay a failpoint in storage code asked for: the whole node stalls here, at the
        // end of the round that hit it (simulation and tests only; the real disk never asks).
        if let Some(stall) = lp.replica.fs().take_stall() {
            tracing::info!(node = id, stall_ms = stall.as_millis() as u64, "stalled by a failpoint");
            tokio::time::sleep(stall).await;
        }
        lp.report_metrics();
        ch.status.send_if_modified(|s| {
            let now = lp.status();
            let changed = *s != now;
            *s = now;
            changed
        });
    };
    lp.answer_at_stop(&mut ch.inputs);
    // The applier finishes the work already handed to it (committed entries: their clients get
    // their replies), or has stopped on its error.
    if let Some(queue) = applier.take() {
        let ApplyQueue { work, finished, .. } = queue;
        while let Some(d) = lp.take_outbox() {
            if work.send(d).await.is_err() {
                break;
            }
        }
        drop(work);
        let _ = finished.await;
    }
    // A snapshot still being written finishes first: a restart in this process must not find a
    // worker still writing into its snapshot directory. Its file is recorded by nothing and is
    // removed by the next start's hygiene, or taken again.
    if lp.snapshot_running {
        let _ = lp.snapshot_done.1.recv().await;
    }
    match &result {
        Ok(()) => {
            // Under `nosync` the state machine may hold applied entries only in memory; the log
            // would replay them, but flushing now saves the replay at the next start.
            if let Err(e) = fsm::Engine::flush(lp.replica.kv().engine()) {
                tracing::warn!(node = id, error = %e, "could not flush the state machine at shutdown");
            }
            tracing::info!(node = id, applied = lp.replica.applied_index(), "raft loop stopped");
        }
        Err(e) => tracing::error!(node = id, error = %e, "fatal: the node stops (restart it to recover)"),
    }
    result
}

impl<E: Engine + 'static> Loop<E> {
    /// Asked to stop: a leader with a follower to hand over to starts a handoff; anything else stops
    /// at once (`None`).
    fn begin_handoff(&mut self) -> Option<Handoff> {
        if !self.replica.is_leader() {
            return None;
        }
        let target = self.replica.handoff_target()?;
        tracing::info!(
            node = self.replica.id(),
            to = target,
            writes = self.proposals.len(),
            "stopping as leader: answering the writes in flight, then handing leadership over"
        );
        Some(Handoff { started: tokio::time::Instant::now(), to: None })
    }

    /// Move the handoff on; `true` once the loop may stop: another node leads, or time is up.
    fn handoff_done(&mut self) -> bool {
        let id = self.replica.id();
        let Some(h) = &mut self.handoff else { return true };
        if !self.replica.is_leader() {
            tracing::info!(node = id, leader = self.replica.leader_id(), "leadership handed over; stopping");
            return true;
        }
        if h.started.elapsed() >= HANDOFF_LIMIT {
            tracing::warn!(node = id, to = ?h.to, "leadership was not handed over in time; stopping anyway");
            return true;
        }
        if h.to.is_none() && self.proposals.is_empty() && self.outbox.is_empty() {
            match self.replica.handoff_target() {
                Some(to) => {
                    self.replica.transfer_leader(to);
                    h.to = Some(to);
                }
                None => return true,
            }
        }
        false
    }

    /// Start a leadership transfer to `to` (see [`Input::TransferLeader`]). A follower forwards it to
    /// the leader (raft-rs sends the leader a `MsgTransferLeader`).
    fn transfer_leader(&mut self, to: Option<u64>) -> Result<u64, String> {
        let me = self.replica.id();
        if self.handoff.is_some() {
            return Err("this node is stopping and already handing its leadership over".into());
        }
        let to = match to {
            Some(to) => to,
            None if self.replica.is_leader() => self
                .replica
                .handoff_target()
                .ok_or("no follower is reachable to take over; leadership stays here")?,
            None => {
                return Err(format!(
                    "this node follows node {}: name the new leader (FAILOVER TO host port) or send FAILOVER to the leader",
                    self.replica.leader_id()
                ));
            }
        };
        if to == me && self.replica.is_leader() {
            return Ok(me);
        }
        if !self.replica.is_leader() && self.replica.leader_id() == 0 {
            return Err("no leader is known to hand over from; retry shortly".into());
        }
        tracing::info!(node = me, to, leader = self.replica.leader_id(), "leadership transfer asked for");
        self.replica.transfer_leader(to);
        Ok(to)
    }

    /// The oldest work waiting for the applier's queue.
    fn take_outbox(&mut self) -> Option<Dispatch> {
        let d = self.outbox.pop_front()?;
        self.outbox_bytes = self.outbox_bytes.saturating_sub(d.work.bytes());
        Some(d)
    }

    /// Is more committed work waiting for the applier than the loop lets grow? Then it pushes back.
    fn backlogged(&self) -> bool {
        self.outbox_bytes > APPLY_BACKLOG_BYTES
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        // Wrap within the low 48 bits so the node id in the top bits stays.
        self.next_id = (self.next_id & !((1 << 48) - 1)) | (self.next_id.wrapping_add(1) & ((1 << 48) - 1));
        id
    }

    fn tick(&mut self) {
        let now = tokio::time::Instant::now();
        let gap = now.duration_since(self.last_tick);
        self.last_tick = now;
        self.metrics.tick_gap_seconds.observe(gap.as_secs_f64());
        let gap_ms = i64::try_from(gap.as_millis()).unwrap_or(i64::MAX);
        if gap_ms > self.metrics.tick_gap_max_ms.get() {
            self.metrics.tick_gap_max_ms.set(gap_ms);
        }
        self.replica.tick();
        self.ticks += 1;
        // Clients that gave up (timed out or disconnected) need no reply.
        self.proposals.retain(|_, tx| !tx.is_closed());
        self.membership.retain(|_, tx| !tx.is_closed());
        let stale: Vec<u64> = self
            .asked
            .iter()
            .filter(|(_, b)| self.ticks >= b.asked_at_tick + READ_RETRY_TICKS)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(batch) = self.asked.remove(&id) {
                self.unasked.extend(batch.reads.into_iter().filter(|r| !r.reply.is_closed()));
            }
        }
    }

    /// The loop is stopping: answer every write still waiting, each by what is known of it. A write
    /// in `proposals` was handed to raft (appended here, or forwarded to the leader) and may still
    /// commit, from this node's log after a restart or on the leader: its outcome is unknown. A write
    /// still in the queue never reached raft: it certainly did not happen. Reads are answered by
    /// dropping them (the client reports the node as stopping; a read changes nothing).
    fn answer_at_stop(&mut self, inputs: &mut mpsc::Receiver<Input<E>>) {
        let pending = std::mem::take(&mut self.proposals);
        if !pending.is_empty() {
            tracing::info!(
                node = self.replica.id(),
                writes = pending.len(),
                "stopping with writes in flight: their clients are told the outcome is unknown"
            );
        }
        for (_, tx) in pending {
            let _ = tx.send(Err(Refusal::Stopped));
        }
        // No more inputs can arrive; whatever is queued is answered without raft.
        inputs.close();
        while let Ok(input) = inputs.try_recv() {
            if let Input::Propose { reply, .. } = input {
                let _ = reply.send(Err(Refusal::NotProposed));
            }
        }
    }

    fn input(&mut self, input: Input<E>) {
        match input {
            Input::Propose { reply, .. } if self.replica.removed_at().is_some() => {
                let index = self.replica.removed_at().unwrap_or_default();
                let _ = reply.send(Err(Refusal::Removed { index }));
            }
            Input::Read { reply, .. } if self.replica.removed_at().is_some() => {
                let index = self.replica.removed_at().unwrap_or_default();
                let _ = reply.send(Reply::Error(Refusal::Removed { index }.to_string()));
            }
            Input::Membership { change, reply } => {
                let id = self.fresh_id();
                match self.replica.propose_membership(id, &change) {
                    Ok(()) => {
                        tracing::info!(node = self.replica.id(), ?change, "membership change proposed");
                        self.membership.insert(id, reply);
                    }
                    Err(why) => {
                        let _ = reply.send(Err(why));
                    }
                }
            }
            Input::Propose { reply, .. } if self.handoff.is_some() => {
                // Stopping: this write never reaches raft, and the client may send it elsewhere.
                let _ = reply.send(Err(Refusal::NotProposed));
            }
            Input::Propose { command, reply } => {
                // The client port refuses these already; a proposal must never be larger than a
                // peer frame can carry (crate::limits), whoever sends it.
                if command.len() > MAX_COMMAND_BYTES {
                    let _ = reply.send(Err(Refusal::TooLarge { bytes: command.len() }));
                    return;
                }
                let id = self.fresh_id();
                match self.replica.propose(id, command) {
                    Ok(()) => {
                        self.proposals.insert(id, reply);
                    }
                    Err(ReplicaError::Raft(raft::Error::ProposalDropped)) => {
                        let _ = reply.send(Err(Refusal::NoLeader));
                    }
                    Err(e) => {
                        // Propose only appends to raft's in-memory log; anything else is a bug in
                        // the request, not a storage failure. Refuse it and keep running.
                        tracing::warn!(node = self.replica.id(), error = %e, "proposal refused");
                        let _ = reply.send(Err(Refusal::NoLeader));
                    }
                }
            }
            Input::TransferLeader { to, reply } => {
                let _ = reply.send(self.transfer_leader(to));
            }
            Input::Read { read, reply } => {
                if crate::failpoint::canary(self.replica.fs(), "local-reads") {
                    // The canary's bug: answer from local state, no ReadIndex round.
                    let _ = reply.send((read)(self.replica.kv()));
                    return;
                }
                self.unasked.push(PendingRead { read, reply })
            }
        }
    }

    fn peer(&mut self, mut m: PeerInput) {
        if is_snapshot(&m.msg) && m.guard.is_some() {
            // A snapshot file just received: read it whole and verify it off the loop, and step the
            // message when that is done (`verified`). The loop goes on ticking and answering
            // heartbeats meanwhile; appends that need the snapshot are refused as before it came.
            let metrics = Arc::clone(&self.metrics);
            self.verifying += 1;
            spawn_verify(
                m,
                self.replica.snapshot_store(),
                self.replica.fs_shared(),
                metrics,
                self.verified.0.clone(),
            );
            return;
        }
        if let Some(guard) = m.guard.take() {
            self.guards.push(guard);
        }
        let awaiting_snapshot = self.verifying > 0 || self.transport.receiving_snapshot();
        if (self.backlogged() || awaiting_snapshot) && m.msg.msg_type() == MessageType::MsgAppend {
            // Backlogged: more entries would only wait in memory for the applier. Receiving or
            // verifying a snapshot: its message is not stepped yet, so an append past it would be
            // rejected, and a leader that already counts the snapshot delivered (its stream ended)
            // takes the rejection as a need for another whole snapshot. Either way raft resends the
            // append once this node answers again (the leader's heartbeats still get their
            // responses).
            tracing::debug!(node = self.replica.id(), from = m.msg.from, "append dropped for now");
            return;
        }
        let from = m.msg.from;
        if let Err(e) = self.replica.step(m.msg) {
            // A message raft will not take (stale, from a removed peer) is dropped, not fatal.
            tracing::debug!(node = self.replica.id(), from, error = %e, "peer message dropped");
        }
    }

    fn feedback(&mut self, fb: Feedback) {
        match fb {
            Feedback::SnapshotSent { to, delivered } => self.replica.report_snapshot(to, delivered),
            Feedback::Unreachable(to) => self.replica.report_unreachable(to),
        }
    }

    /// One ready round: ask for read indexes, persist and apply, send, answer.
    fn round(&mut self) -> Result<(), NodeError> {
        if !self.unasked.is_empty() {
            let id = self.fresh_id();
            self.replica.read_index(id);
            let reads = std::mem::take(&mut self.unasked);
            self.asked.insert(id, ReadBatch { asked_at_tick: self.ticks, reads });
        }
        let snapshot_before = self.replica.storage().snapshot_index();
        while self.replica.has_ready() {
            // Each batch goes to the peers' queues the moment it may leave; their tasks send it while
            // this one fsyncs and applies (the order is the replica's module docs).
            let transport = &mut self.transport;
            let out = self.replica.handle_ready_sending(&mut |batch| transport.send(batch))?;
            for work in out.work {
                let replies = work
                    .request_ids()
                    .into_iter()
                    .filter_map(|id| Some((id, self.proposals.remove(&id)?)))
                    .collect();
                self.outbox_bytes += work.bytes();
                self.outbox.push_back(Dispatch { work, replies });
            }
            for (id, reply) in out.replies {
                if let Some(tx) = self.proposals.remove(&id) {
                    let _ = tx.send(Ok(reply));
                }
            }
            for (id, outcome) in out.conf_changes {
                if let Some(tx) = self.membership.remove(&id) {
                    let _ = tx.send(outcome);
                }
            }
            for (id, index) in out.read_states {
                if let Some(batch) = self.asked.remove(&id) {
                    self.confirmed.entry(index).or_default().extend(batch.reads);
                }
            }
        }
        if !self.guards.is_empty() {
            let installed = self.replica.storage().snapshot_index();
            if installed > snapshot_before {
                self.snapshots_installed += 1;
                tracing::info!(
                    node = self.replica.id(),
                    index = installed,
                    "installed a snapshot from the leader"
                );
            }
            // The received files are installed or superseded: let retention see them again.
            self.guards.clear();
        }
        let applied = self.replica.applied_index();
        let mut due = Vec::new();
        while let Some(entry) = self.confirmed.first_entry() {
            if *entry.key() > applied {
                break;
            }
            due.extend(entry.remove());
        }
        if !due.is_empty() {
            self.metrics.reads_served.inc_by(due.len() as u64);
            spawn_reads(self.replica.kv().read_view(), due);
        }
        if crate::failpoint::canary(self.replica.fs(), "snapshot-on-the-loop") {
            // The canary's bug: the snapshot is written inline, and the loop (ticks, heartbeats,
            // applies) waits for the disk.
            self.replica.maybe_snapshot()?;
        } else if !self.snapshot_running
            && let Some(job) = self.replica.snapshot_due()
        {
            self.snapshot_running = true;
            self.snapshot_started = tokio::time::Instant::now();
            spawn_snapshot(job, self.snapshot_done.0.clone());
        }
        if self.replica.term() != self.term {
            self.term = self.replica.term();
            self.answer_pending_as_unknown();
        }
        if self.replica.removed_at().is_some() && !self.replica.is_leader() {
            // A leader that a change removed stepped down in the same term: what it holds may still
            // commit under the new leader, or not.
            self.answer_pending_as_unknown();
        }
        Ok(())
    }

    /// Answer every pending write and membership change as of unknown outcome (leadership moved).
    fn answer_pending_as_unknown(&mut self) {
        for (_, tx) in std::mem::take(&mut self.proposals) {
            let _ = tx.send(Err(Refusal::LeaderChanged));
        }
        for (_, tx) in std::mem::take(&mut self.membership) {
            let _ = tx.send(Err(
                "TIMEOUT leadership changed before the membership change was confirmed; it may or may not take effect (see CLUSTER MEMBERS)".into(),
            ));
        }
    }

    /// Bring the gauges and the counters kept elsewhere up to date (after each round: cheap stores).
    fn report_metrics(&mut self) {
        let m = &self.metrics;
        let r = &self.replica;
        let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        // A term won: leading now, and not already counted for this term.
        if r.is_leader() && (m.is_leader.get() == 0 || m.term.get() != as_gauge(r.term())) {
            m.leader_terms.inc();
        }
        m.term.set(as_gauge(r.term()));
        m.commit_index.set(as_gauge(r.commit_index()));
        m.applied_index.set(as_gauge(r.applied_index()));
        m.snapshot_index.set(as_gauge(r.storage().snapshot_index()));
        m.is_leader.set(i64::from(r.is_leader()));
        m.pending_writes.set(as_gauge(self.proposals.len() as u64));
        m.recovering.set(i64::from(r.recover_to() > 0));
        let last = raft::Storage::last_index(r.storage()).unwrap_or(0);
        m.last_index.set(as_gauge(last));
        let conf = r.conf_state();
        let voters: std::collections::BTreeSet<u64> =
            conf.voters.iter().chain(&conf.voters_outgoing).copied().collect();
        m.voters.set(as_gauge(voters.len() as u64));
        m.learners.set(as_gauge(conf.learners.len() as u64));
        m.removed.set(i64::from(r.removed_at().is_some()));
        m.recover_to.set(as_gauge(r.recover_to()));
        m.recovery_remaining.set(as_gauge(r.recover_to().saturating_sub(last)));
        let installed = self.snapshots_installed.saturating_sub(m.snapshots_installed.get());
        m.snapshots_installed.inc_by(installed);
        let dropped = self.transport.dropped();
        m.peer_messages_dropped.inc_by(dropped.saturating_sub(self.dropped_reported));
        self.dropped_reported = dropped;
    }

    fn status(&self) -> Status {
        Status {
            id: self.replica.id(),
            role: self.replica.role(),
            term: self.replica.term(),
            leader_id: self.replica.leader_id(),
            commit_index: self.replica.commit_index(),
            applied_index: self.replica.applied_index(),
            snapshot_index: self.replica.storage().snapshot_index(),
            snapshots_installed: self.snapshots_installed,
            recover_to: self.replica.recover_to(),
            removed_at: self.replica.removed_at().unwrap_or(0),
            conf: crate::members::View::of(&self.replica.conf_state()),
        }
    }
}

/// Verify a received snapshot file on a blocking worker (under madsim, a task of the simulated
/// node: it takes no simulated time) and hand the message back on `done`.
fn spawn_verify(
    input: PeerInput,
    store: &crate::snapshot::SnapshotStore,
    fs: crate::io::SharedFs,
    metrics: Arc<Metrics>,
    done: mpsc::Sender<Verified>,
) {
    let data = input.msg.snapshot.as_ref().map(|s| s.data.clone()).unwrap_or_default();
    let token = SnapshotToken::decode(&data).ok();
    let path = token.map(|t| store.path(t.index));
    let check = move || {
        let (token, path) = (token?, path?);
        let started = tokio::time::Instant::now();
        let verified = crate::snapshot::verify(&*fs, &path, &token);
        metrics.snapshot_verify_seconds.observe(started.elapsed().as_secs_f64());
        match verified {
            Ok(_) => Some(token),
            Err(e) => {
                tracing::warn!(index = token.index, path = %path.display(), error = %e, "a received snapshot does not verify");
                None
            }
        }
    };
    #[cfg(not(madsim))]
    tokio::task::spawn_blocking(move || {
        let verified = check();
        // The loop is gone only if the node stopped.
        let _ = done.blocking_send((input, verified));
    });
    #[cfg(madsim)]
    tokio::spawn(async move {
        let verified = check();
        let _ = done.send((input, verified)).await;
    });
}

/// Snapshot retention around the log's base `base` on a blocking worker (under madsim, a task of
/// the simulated node). A failure is logged, not fatal: the files stay until the next pass.
fn spawn_retention(store: crate::snapshot::SnapshotStore, base: u64) {
    let work = move || {
        if let Err(e) = store.gc_keeping(Some(base)) {
            tracing::warn!(index = base, error = %e, "snapshot retention failed; the next snapshot retries it");
        }
    };
    #[cfg(not(madsim))]
    tokio::task::spawn_blocking(work);
    #[cfg(madsim)]
    tokio::spawn(async move { work() });
}

/// Start the applier beside the loop: a task of its own (under madsim, of the simulated node, so a
/// run still replays exactly). It applies entries on its worker thread, as the loop persists on
/// its own (a RocksDB write without fsync under `nosync`), and answers their clients from there:
/// a wake inside the runtime, cheaper than one from a thread outside it for every reply. A
/// snapshot restore (seconds for a large database) runs on a blocking worker, so the runtime's
/// threads stay free for the loop and the connections.
fn spawn_applier<E: Engine + Send + 'static>(
    applier: Applier<E>,
) -> (ApplyQueue, mpsc::Receiver<ReplicaError>) {
    let (work_tx, mut work_rx) = mpsc::channel::<Dispatch>(APPLY_QUEUE);
    let progress = Arc::new(tokio::sync::Notify::new());
    let (fatal_tx, fatal_rx) = mpsc::channel(1);
    let (finished_tx, finished_rx) = oneshot::channel();
    let notify = Arc::clone(&progress);
    tokio::spawn(async move {
        let mut applier = Some(applier);
        while let Some(d) = work_rx.recv().await {
            let Some(mut a) = applier.take() else { break };
            #[cfg(not(madsim))]
            let (a, applied) = if matches!(d.work, ApplyWork::Restore { .. }) {
                let (notify, fatal) = (Arc::clone(&notify), fatal_tx.clone());
                match tokio::task::spawn_blocking(move || {
                    let applied = apply_one(&mut a, d, &notify, &fatal);
                    (a, applied)
                })
                .await
                {
                    Ok(done) => done,
                    // The restore panicked: a bug, already printed; the node stops (its clients are
                    // told the outcome is unknown).
                    Err(_) => break,
                }
            } else {
                let applied = apply_one(&mut a, d, &notify, &fatal_tx);
                (a, applied)
            };
            #[cfg(madsim)]
            let applied = apply_one(&mut a, d, &notify, &fatal_tx);
            if !applied {
                break;
            }
            // A `pause` or `delay` the apply's failpoints asked for stalls the applier, not the raft
            // loop: taken here, before this task yields (under madsim the loop never sees it).
            if let Some(stall) = a.fs().take_stall() {
                tokio::time::sleep(stall).await;
            }
            applier = Some(a);
        }
        let _ = finished_tx.send(());
    });
    (ApplyQueue { work: work_tx, progress, finished: finished_rx }, fatal_rx)
}

/// Apply one piece of work and answer its clients; `false` after a fatal error (reported on
/// `fatal`): nothing may be applied after it (D10). The clients of the work it could not apply are
/// dropped, which tells them the outcome is unknown.
fn apply_one<E: Engine>(
    applier: &mut Applier<E>,
    d: Dispatch,
    progress: &tokio::sync::Notify,
    fatal: &mpsc::Sender<ReplicaError>,
) -> bool {
    match applier.run(d.work) {
        Ok(replies) => {
            let mut waiting: BTreeMap<u64, ReplyTo> = d.replies.into_iter().collect();
            for (id, reply) in replies {
                if let Some(tx) = waiting.remove(&id) {
                    let _ = tx.send(Ok(reply));
                }
            }
            progress.notify_one();
            true
        }
        Err(e) => {
            let _ = fatal.try_send(e);
            false
        }
    }
}

/// The applier's fatal error, when it reports one (pending forever without an applier).
async fn recv_fatal(fatal: &mut Option<mpsc::Receiver<ReplicaError>>) -> Option<ReplicaError> {
    match fatal {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Room in the applier's queue (pending forever without an applier).
async fn reserve(applier: &Option<ApplyQueue>) -> Option<mpsc::Permit<'_, Dispatch>> {
    match applier {
        Some(q) => q.work.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

/// Resolves once the applier applied more (pending forever without an applier).
async fn applied_more(progress: &Option<Arc<tokio::sync::Notify>>) {
    match progress {
        Some(p) => p.notified().await,
        None => std::future::pending().await,
    }
}

/// Write a snapshot on a blocking worker, so the raft loop goes on ticking, sending heartbeats and
/// applying while a large state machine streams to disk; the result comes back on `done`. Under
/// madsim the job is a task of the simulated node (it runs between two of the loop's awaits, so a
/// run still replays exactly); a crash of the node drops it with the node.
fn spawn_snapshot<E: Engine + 'static>(job: SnapshotJob<E>, done: mpsc::Sender<SnapshotDone>) {
    #[cfg(not(madsim))]
    tokio::task::spawn_blocking(move || {
        // The loop is gone only if the node stopped; nothing waits for the result then.
        let _ = done.try_send(job.run());
    });
    #[cfg(madsim)]
    tokio::spawn(async move {
        let fs = job.fs();
        let result = job.run();
        // A `pause` or `delay` the job's failpoints asked for (`snapshot.write`: a slow disk under
        // the snapshot) stalls the job, not the raft loop: taken here, before this task yields, so
        // the loop never sees it.
        if let Some(stall) = fs.take_stall() {
            tokio::time::sleep(stall).await;
        }
        let _ = done.try_send(result);
    });
}

/// Run confirmed reads on a blocking worker against a view of the state machine at (or past) their
/// read index, so a large read (an MGET of a million keys, a SCAN page) never holds up ticks,
/// heartbeats or applies. Under madsim the batch is a task of the simulated node.
fn spawn_reads<E: Engine + 'static>(view: Kv<E>, reads: Vec<PendingRead<E>>) {
    let work = move || {
        // A snapshot install on the loop waits for the batch (and the batch for it): every read of
        // it sees one state, whole.
        let _gate = view.reading();
        for r in reads {
            // A client that gave up needs no answer.
            if !r.reply.is_closed() {
                let _ = r.reply.send((r.read)(&view));
            }
        }
    };
    #[cfg(madsim)]
    tokio::spawn(async move { work() });
    #[cfg(not(madsim))]
    tokio::task::spawn_blocking(work);
}

/// Messages of these types carry a snapshot and need its file streamed first.
pub(crate) fn is_snapshot(m: &Message) -> bool {
    m.msg_type() == MessageType::MsgSnapshot
}
