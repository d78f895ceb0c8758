//! The state machine's half of the ready loop: committed entries and received snapshots, applied in
//! log order to the [`Kv`] state machine. The replica hands each batch over as an [`ApplyWork`] the
//! moment raft commits it; the runtime runs the [`Applier`] on a task of its own behind a bounded
//! queue, so the next round's WAL fsync overlaps this round's apply, and a received snapshot is
//! restored while the raft loop goes on ticking and answering heartbeats. Tests and simple drivers
//! keep the applier inside the replica, which then applies within the ready round as before.
//!
//! What the order guarantees, whichever way it runs:
//! - only committed entries reach the applier (raft hands out no others), so nothing applied can be
//!   undone, and a reply (sent after its entry is applied) never promises more than the log holds;
//! - work is applied in the order the replica produced it: a snapshot restore before every entry
//!   after it, entries in index order (`Kv` refuses a gap);
//! - conf changes take effect in raft on the loop when handed over (raft needs them for its
//!   quorum, not the state machine); the applier only moves the applied index past them. A
//!   snapshot is taken only once the state machine has caught up with the stored conf state, so its
//!   header never names a conf state newer than its index ([`crate::replica::Replica::snapshot_due`]);
//! - a read waits for the published applied index ([`Kv::applied_index`]) to reach its read index.
//!
//! An apply failure stops the node (D10): the applier applies nothing after it.

use std::path::PathBuf;
use std::sync::Arc;

use raft::eraftpb::{Entry, EntryType};

use crate::clock::EntryContext;
use crate::fsm::{Engine, Kv, Reply};
use crate::io::SharedFs;
use crate::probe::Observation;
use crate::replica::ReplicaError;
use crate::snapshot::{ReceiveGuard, SnapshotToken, restore};

/// One piece of work for the applier, in log order.
#[derive(Debug)]
pub enum ApplyWork {
    /// Committed entries, in index order.
    Entries(Vec<Entry>),
    /// A snapshot from the leader that the raft log already records as its base: replace the state
    /// machine with it (its file was verified before the pointer was recorded).
    /// `hold` keeps retention from removing the file until the restore is done (a newer snapshot
    /// received meanwhile moves the log's base past it).
    Restore { path: PathBuf, token: SnapshotToken, hold: ReceiveGuard },
}

impl ApplyWork {
    /// The entry bytes it carries (what it holds in memory while it waits).
    pub fn bytes(&self) -> usize {
        match self {
            ApplyWork::Entries(entries) => entries.iter().map(|e| e.data.len() + 32).sum(),
            ApplyWork::Restore { .. } => 0,
        }
    }

    /// The request ids of the proposals these entries carry (the replica's `propose` puts them in
    /// the entry's context), whose replies this work produces.
    pub fn request_ids(&self) -> Vec<u64> {
        match self {
            ApplyWork::Entries(entries) => entries
                .iter()
                .filter(|e| e.entry_type() == EntryType::EntryNormal)
                .filter_map(|e| EntryContext::decode(&e.context).map(|c| c.request_id))
                .collect(),
            ApplyWork::Restore { .. } => Vec::new(),
        }
    }
}

/// Applies [`ApplyWork`] to the state machine.
#[derive(Debug)]
pub struct Applier<E: Engine> {
    kv: Kv<E>,
    fs: SharedFs,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl<E: Engine> Applier<E> {
    pub fn new(kv: Kv<E>, fs: SharedFs) -> Self {
        Applier { kv, fs, metrics: None }
    }

    /// Report apply timings and counts to `metrics`.
    pub fn set_metrics(&mut self, metrics: Arc<crate::metrics::Metrics>) {
        self.metrics = Some(metrics);
    }

    /// The filesystem the state machine's failpoints live on (a simulated applier takes the stalls
    /// they ask for from it, so the stall lands on the applier, not on the raft loop).
    pub fn fs(&self) -> SharedFs {
        self.fs.clone()
    }

    pub fn kv(&self) -> &Kv<E> {
        &self.kv
    }

    /// Apply one piece of work; the replies to the proposals it carried, by request id.
    pub fn run(&mut self, work: ApplyWork) -> Result<Vec<(u64, Reply)>, ReplicaError> {
        match work {
            ApplyWork::Entries(entries) => self.apply_all(entries),
            ApplyWork::Restore { path, token, hold } => {
                let started = tokio::time::Instant::now();
                {
                    // No read off the loop sees part of the old state and part of the new.
                    let _gate = self.kv.replacing();
                    restore(&*self.fs, self.kv.engine(), &path, &token)?;
                    self.kv.reload_applied_index()?;
                }
                drop(hold);
                if let Some(m) = &self.metrics {
                    m.snapshot_restore_seconds.observe(started.elapsed().as_secs_f64());
                }
                Ok(Vec::new())
            }
        }
    }

    /// Apply committed entries in order; only the last one's write pays for an fsync (under `sync`),
    /// and it covers the others: their replies are only handed out after it.
    fn apply_all(&mut self, entries: Vec<Entry>) -> Result<Vec<(u64, Reply)>, ReplicaError> {
        let n = entries.len();
        let mut replies = Vec::new();
        if n == 0 {
            return Ok(replies);
        }
        let started = self.metrics.is_some().then(tokio::time::Instant::now);
        let stale_buffer = crate::failpoint::canary(&*self.fs, "apply-stale-buffer");
        let mut previous: Option<Vec<u8>> = None;
        for (i, mut e) in entries.into_iter().enumerate() {
            if stale_buffer && e.entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                // The canary's bug: every command after the first of a batch is the one before it.
                let current = e.data.clone();
                if let Some(p) = previous.replace(current) {
                    e.data = p;
                }
            }
            self.apply(e, i + 1 == n, &mut replies)?;
        }
        if let (Some(m), Some(started)) = (&self.metrics, started) {
            m.apply_seconds.observe(started.elapsed().as_secs_f64());
            m.entries_applied.inc_by(n as u64);
        }
        Ok(replies)
    }

    fn apply(
        &mut self,
        e: Entry,
        last_of_batch: bool,
        replies: &mut Vec<(u64, Reply)>,
    ) -> Result<(), ReplicaError> {
        if e.index <= self.kv.applied_index() {
            // Re-delivered after a restart: already in the state machine (and its conf change, if
            // any, already in the stored conf state).
            return Ok(());
        }
        let fs = &*self.fs;
        if e.entry_type() != EntryType::EntryNormal {
            // A conf change: raft took it when it was handed over; here it only moves the index.
            crate::probe::observe(fs, || applied(&e));
            self.kv.apply_raft(e.index, &[])?;
            return Ok(());
        }
        // An apply failure leaves the applied index where it was: the node fail-stops and applies
        // this entry again after its restart (D10).
        crate::failpoint::hit(fs, "fsm.apply")
            .map_err(|source| crate::fsm::FsmError::Apply { index: e.index, source })?;
        crate::probe::observe(fs, || applied(&e));
        let context = EntryContext::decode(&e.context);
        let stamp = if crate::failpoint::canary(fs, "expiry-by-local-clock") {
            crate::clock::WallClock::system().now_ms()
        } else {
            context.map_or(0, |c| c.stamp_ms)
        };
        let data = if crate::failpoint::canary(fs, "watch-ignored") {
            std::borrow::Cow::Owned(without_watches(&e.data))
        } else {
            std::borrow::Cow::Borrowed(&e.data[..])
        };
        let reply = self.kv.apply_entry(e.index, stamp, &data, last_of_batch)?;
        if let Some(c) = context {
            replies.push((c.request_id, reply));
        }
        Ok(())
    }
}

/// The canary `watch-ignored`: a command with its transaction's watches dropped.
fn without_watches(data: &[u8]) -> Vec<u8> {
    use prost::Message;
    match crate::fsm::Command::decode(data) {
        Ok(crate::fsm::Command { kind: Some(crate::fsm::command::Kind::Multi(mut m)) }) => {
            m.watches.clear();
            crate::fsm::Command { kind: Some(crate::fsm::command::Kind::Multi(m)) }.encode_to_vec()
        }
        _ => data.to_vec(),
    }
}

/// The probe of an applied entry: the data is what the state machine was given.
pub(crate) fn applied(e: &Entry) -> Observation {
    Observation::Applied { index: e.index, term: e.term, checksum: crc32c::crc32c(&e.data) }
}
