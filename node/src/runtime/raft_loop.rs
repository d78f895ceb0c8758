//! The one task that owns the replica. It takes client proposals and reads, peer messages and
//! transport feedback, ticks raft, and drives the ready loop. Everything it receives between two
//! ready rounds goes into one round, so proposals from many clients share one WAL fsync (group
//! commit) and reads from many clients share one ReadIndex round trip.

use std::collections::BTreeMap;

use raft::eraftpb::{Message, MessageType};
use tokio::sync::{mpsc, oneshot, watch};

use super::peer::{Feedback, PeerInput, Transport};
use super::{NodeError, RuntimeOptions, Status};
use crate::fsm::{self, Engine, Kv};
use crate::limits::MAX_COMMAND_BYTES;
use crate::metrics::Metrics;
use crate::replica::{Replica, ReplicaError, SnapshotDone, SnapshotJob};
use crate::server::resp::Reply;
use crate::snapshot::ReceiveGuard;
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
}

/// A client request for the raft loop.
pub(crate) enum Input<E: Engine> {
    /// An encoded [`fsm::Command`], answered once applied.
    Propose { command: Vec<u8>, reply: oneshot::Sender<Result<fsm::Reply, Refusal>> },
    /// A linearizable read, answered once the read index is confirmed and applied.
    Read { read: ReadFn<E>, reply: oneshot::Sender<Reply> },
}

pub(crate) struct Channels<E: Engine> {
    pub inputs: mpsc::Receiver<Input<E>>,
    pub peers: mpsc::Receiver<PeerInput>,
    pub feedback: mpsc::UnboundedReceiver<Feedback>,
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

struct Loop<E: Engine> {
    replica: Replica<E>,
    transport: Transport,
    ticks: u64,
    /// Request ids: this node's id in the top 16 bits and a random start below, so ids from other
    /// nodes and from this node's earlier runs (whose entries may still be applied) do not collide.
    next_id: u64,
    proposals: BTreeMap<u64, oneshot::Sender<Result<fsm::Reply, Refusal>>>,
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
        proposals: BTreeMap::new(),
        unasked: Vec::new(),
        asked: BTreeMap::new(),
        confirmed: BTreeMap::new(),
        guards: Vec::new(),
        snapshots_installed: 0,
        term: 0,
        snapshot_running: false,
        snapshot_started: tokio::time::Instant::now(),
        snapshot_done: mpsc::channel(1),
        metrics,
        dropped_reported: 0,
    };
    let mut ticker = tokio::time::interval(opts.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        if *shutdown.borrow() {
            break Ok(());
        }
        tokio::select! {
            biased;
            // A dropped sender means whoever could stop the node is gone: stop.
            changed = shutdown.changed() => if changed.is_err() { break Ok(()) },
            _ = ticker.tick() => lp.tick(),
            Some(done) = lp.snapshot_done.1.recv() => {
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
            Some(fb) = ch.feedback.recv() => lp.feedback(fb),
            Some(m) = ch.peers.recv() => lp.peer(m),
            Some(input) = ch.inputs.recv() => lp.input(input),
        }
        // Take whatever else is waiting into the same round.
        let mut taken = 0;
        while taken < MAX_INPUTS_PER_ROUND {
            if let Ok(m) = ch.peers.try_recv() {
                lp.peer(m);
            } else if let Ok(input) = ch.inputs.try_recv() {
                lp.input(input);
            } else if let Ok(fb) = ch.feedback.try_recv() {
                lp.feedback(fb);
            } else {
                break;
            }
            taken += 1;
        }
        if let Err(e) = lp.round() {
            break Err(e);
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
    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        // Wrap within the low 48 bits so the node id in the top bits stays.
        self.next_id = (self.next_id & !((1 << 48) - 1)) | (self.next_id.wrapping_add(1) & ((1 << 48) - 1));
        id
    }

    fn tick(&mut self) {
        self.replica.tick();
        self.ticks += 1;
        // Clients that gave up (timed out or disconnected) need no reply.
        self.proposals.retain(|_, tx| !tx.is_closed());
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

    fn peer(&mut self, m: PeerInput) {
        if let Some(guard) = m.guard {
            self.guards.push(guard);
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
            for (id, reply) in out.replies {
                if let Some(tx) = self.proposals.remove(&id) {
                    let _ = tx.send(Ok(reply));
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
            for (_, tx) in std::mem::take(&mut self.proposals) {
                let _ = tx.send(Err(Refusal::LeaderChanged));
            }
        }
        Ok(())
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
        }
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
