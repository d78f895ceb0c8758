//! Probes: what a node tells the simulation about itself, for checkers that judge raft's own promises
//! rather than what clients see (`sim/src/promises.rs`). Like failpoints, the record lives with the
//! node's disk ([`Fs::observe`]): only the simulated disk keeps anything, and in a production build
//! [`observe`] is an empty inline function that never builds its [`Observation`].
//!
//! | observation | where | what a checker holds it to |
//! |---|---|---|
//! | [`Observation::Promise`] | a vote or accepting append response leaves `Replica::handle_ready` | the state a later restart recovers honours it |
//! | [`Observation::Voided`] | before a raft conflict (a newer leader's entries or snapshot) replaces entries past `index` | the append promises past it are void |
//! | [`Observation::Leader`] | the node is leader after a ready round | one leader per term |
//! | [`Observation::Applied`] | an entry is applied to the state machine | every node applies the same entry at an index |
//! | [`Observation::CommitPersisted`] | the hard-state file durably holds a new commit index | the durable commit index never moves back |
//! | [`Observation::Recovered`] | storage opened at a (re)start | all of the above, across the restart |

use crate::io::Fs;

/// A message whose sending promises durable state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Promise {
    /// A granted vote (not a pre-vote) for `candidate` in `term`: this node never votes for another
    /// candidate in that term.
    Vote { term: u64, candidate: u64 },
    /// An accepting append response (also the one that acknowledges a snapshot) in `term`: this node
    /// holds its log up to `index`, whose entry has term `log_term` (0 when the log no longer names
    /// it: compacted below a snapshot).
    Accept { term: u64, index: u64, log_term: u64 },
}

/// The state storage recovered at a (re)start, before raft sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovered {
    pub term: u64,
    pub vote: u64,
    /// The durable commit index (raft's may be clamped to the log while recovering).
    pub commit: u64,
    pub last_index: u64,
    pub last_term: u64,
    /// Non-zero: the node recovers lost entries from its peers up to this index (and term).
    pub recover_to: u64,
    pub recover_term: u64,
    /// What opening the WAL found at this start (not the sticky evidence of an earlier one).
    pub wal: WalFinding,
}

/// What the WAL's open found in its segments at one start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalFinding {
    /// Every record read back whole.
    #[default]
    Clean,
    /// A torn tail (bytes never acknowledged) was cut off the last segment.
    TornTailRepaired,
    /// Acknowledged records are corrupt; the log was cut there and the bytes left in place.
    Corrupt,
}

/// Something a node did, in the order it did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A message that promises persisted state is handed to the transport.
    Promise(Promise),
    /// A raft conflict is about to replace the log past `index` (whose term is `term`): append
    /// promises beyond it were about entries a newer leader overrides, and are void.
    Voided { index: u64, term: u64 },
    /// The node is leader in `term` (reported once per term).
    Leader { term: u64 },
    /// The node applied the entry at `index` of `term`, whose data has this CRC32C.
    Applied { index: u64, term: u64, checksum: u32 },
    /// The hard-state file now durably holds this commit index (reported when it changes).
    CommitPersisted { commit: u64 },
    /// Storage opened at a start (the first or a restart).
    Recovered(Recovered),
}

/// Report an observation to the disk the node runs on. `what` is only called in simulation and test
/// builds.
#[cfg(any(madsim, test, feature = "failpoints"))]
#[inline]
pub fn observe(fs: &dyn Fs, what: impl FnOnce() -> Observation) {
    fs.observe(what());
}

/// Production build: nothing is observed.
#[cfg(not(any(madsim, test, feature = "failpoints")))]
#[inline(always)]
pub fn observe(_fs: &dyn Fs, _what: impl FnOnce() -> Observation) {}
