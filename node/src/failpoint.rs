//! Failpoints: named places in node code where the simulation (or a test) injects an error, a kill,
//! a pause or a delay. The table of what is attached lives with the node's disk (`Fs::failpoint`):
//! each simulated server has its own disk, so a failpoint attached to one server never fires on
//! another, and the same seed fires it at the same moment every run.
//!
//! Compiled in only for the madsim build, tests, and the `failpoints` feature: in a production
//! build [`hit`] is an empty inline function.
//!
//! | name | where it fires | an `error` there is |
//! |---|---|---|
//! | `wal.append` | before a batch of raft log records is written | a failed write: the WAL poisons itself, the node fail-stops |
//! | `wal.sync` | before the raft log's fsync | a failed fsync: fatal (D10), never retried |
//! | `hardstate.sync` | after a new hard state (term, vote, commit, acknowledged index) is written to its slot, before the fsync | a failed fsync: the file poisons itself, the node fail-stops; the other slot still holds the previous state |
//! | `fsm.apply` | before a committed entry is applied to the state machine | an apply failure: the applied index does not move, the node fail-stops and re-applies after restart (D10) |
//! | `snapshot.write` | after a local snapshot's body is written, before it is sealed and renamed | the temporary file is removed, the node fail-stops |
//! | `snapshot.finalize` | when the last chunk of a received snapshot is in the spool, before it is sealed and moved into the snapshot directory (a pause here stalls only this receive) | the receive fails, the spool is removed, the leader sends again |
//! | `snapshot.restore` | after a received or cold-start snapshot was streamed into the restore target and its CRC checked, before the restored state becomes visible | a failed restore: nothing becomes visible (D8), the node fail-stops and restores at its next start |
//! | `transport.send` | before a batch of raft messages is written to a peer's connection | the batch is lost (raft retransmits) |
//! | `transport.promise_sent` | right after a batch holding a granted vote or an accepting append response was written to a peer's connection | nothing (the promise is already out); a `kill` or `power_loss` here is the crash right after a promise |
//!
//! [`CANARIES`] re-introduce fixed bugs the same way, so a test can show the simulation catches them.

use std::io;

use crate::io::Fs;

/// Every failpoint in node code. A scenario naming any other is rejected.
pub const NAMES: &[&str] = &[
    "wal.append",
    "wal.sync",
    "hardstate.sync",
    "fsm.apply",
    "snapshot.write",
    "snapshot.finalize",
    "snapshot.restore",
    "transport.send",
    "transport.promise_sent",
];

/// Pass failpoint `name` in synchronous code: an attached `error` comes back as an `io::Error`, an
/// attached `kill` has already crashed the disk (every later operation fails, as for a dead
/// process), and a `pause` or `delay` is left for the node's raft loop, which stalls for it at the
/// end of the round that hit it ([`Fs::take_stall`]): synchronous storage code cannot sleep.
#[cfg(any(madsim, test, feature = "failpoints"))]
#[inline]
pub fn hit(fs: &dyn Fs, name: &'static str) -> io::Result<()> {
    debug_assert!(NAMES.contains(&name), "failpoint {name} is listed in NAMES");
    if let Some(stall) = fs.failpoint(name)? {
        fs.defer_stall(stall);
    }
    Ok(())
}

/// Production build: no failpoints.
#[cfg(not(any(madsim, test, feature = "failpoints")))]
#[inline(always)]
pub fn hit(_fs: &dyn Fs, _name: &'static str) -> io::Result<()> {
    Ok(())
}

/// Pass failpoint `name` in async code: like [`hit`], but a `pause` or `delay` stalls right here.
#[cfg(any(madsim, test, feature = "failpoints"))]
pub async fn hit_async(fs: &dyn Fs, name: &'static str) -> io::Result<()> {
    debug_assert!(NAMES.contains(&name), "failpoint {name} is listed in NAMES");
    let stall = fs.failpoint(name)?;
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
    }
    Ok(())
}

/// Production build: no failpoints.
#[cfg(not(any(madsim, test, feature = "failpoints")))]
#[inline(always)]
pub async fn hit_async(_fs: &dyn Fs, _name: &'static str) -> io::Result<()> {
    Ok(())
}

/// Canaries: historic bugs that this code fixed, re-introduced on demand so a test can prove the
/// simulation catches each one (`sim/tests/canaries.rs`). Like failpoints they are switched on per
/// simulated disk and compiled in only for simulation and tests; [`canary`] is `false` otherwise.
pub const CANARIES: &[(&str, &str)] = &[
    ("no-torn-tail-repair", "WAL recovery refuses a torn tail instead of repairing it (elastickv #613, D4)"),
    ("skip-restore-without-crc", "the cold start skips the restore without verifying the snapshot file (D9)"),
    ("no-exdev-fallback", "finalizing a received snapshot fails when the rename crosses devices (D7)"),
    (
        "local-reads",
        "a server answers GET from its own state machine without a ReadIndex round (stale reads)",
    ),
    (
        "keep-bytes-after-failed-fsync",
        "the WAL keeps the bytes whose fsync failed, for a restarted process to build on (fsyncgate)",
    ),
    (
        "no-peer-recovery",
        "a node that lost entries it acknowledged rejoins at once, voting and campaigning on the shortened log (FAST'18)",
    ),
    (
        "snapshot-on-the-loop",
        "the raft loop writes a snapshot inline, so ticks and heartbeats wait for the disk (the stalls of #17)",
    ),
    (
        "promise-before-fsync",
        "votes and append responses leave before the fsync of the state they promise (the ready loop's order, D1)",
    ),
    (
        "vote-not-persisted",
        "the hard state reaches the disk without the vote: a restarted node may vote twice in one term (promises)",
    ),
    (
        "double-vote",
        "a node grants a vote to a second candidate of a term it already voted in (election_safety)",
    ),
    (
        "apply-stale-buffer",
        "applying a batch of committed entries reuses the previous command's buffer (log_matching)",
    ),
    (
        "truncate-on-any-crc-mismatch",
        "WAL recovery takes any bad record in the last segment for a torn tail and cuts the log there, valid acknowledged records after it included (fault_effect)",
    ),
    (
        "snapshot-file-unsynced",
        "a snapshot file is renamed into place without its fsync, and the log compacted below it: after a power loss neither the entries nor the state they built are durable (D2, D6)",
    ),
    (
        "expiry-by-local-clock",
        "each replica decides expiry by its own clock when it applies an entry, not by the leader's stamp in it: a replica applying later (a follower behind, a replay after a crash) expires keys the others kept (convergence, linearizability)",
    ),
    (
        "watch-ignored",
        "EXEC applies a transaction without checking its watched keys' versions: a compare-and-set built on a read that a concurrent write made stale overwrites that write (linearizability)",
    ),
    (
        "persist-clamped-commit",
        "a node recovering lost entries persists its commit index clamped to its shortened log (commit_monotonic)",
    ),
    (
        "joiner-replays-from-one",
        "a node that joins after a membership change is sent the log from its first entry instead of a snapshot, and rebuilds a membership without the initial voters (membership)",
    ),
];

/// Is the canary `name` (one of [`CANARIES`]) switched on for this disk?
#[cfg(any(madsim, test, feature = "failpoints"))]
#[inline]
pub fn canary(fs: &dyn Fs, name: &'static str) -> bool {
    debug_assert!(CANARIES.iter().any(|(n, _)| *n == name), "canary {name} is listed in CANARIES");
    fs.canary(name)
}

/// Production build: no canaries.
#[cfg(not(any(madsim, test, feature = "failpoints")))]
#[inline(always)]
pub fn canary(_fs: &dyn Fs, _name: &'static str) -> bool {
    false
}

/// The error an attached `error` action produces at `name`.
pub fn injected_error(name: &str) -> io::Error {
    io::Error::other(format!("injected at failpoint {name}"))
}

/// Is this the error of an attached `error` action?
pub fn is_injected(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Other && err.to_string().starts_with("injected at failpoint ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_dotted() {
        let mut names = NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), NAMES.len());
        assert!(NAMES.iter().all(|n| n.split_once('.').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())));
    }

    #[test]
    fn the_real_filesystem_has_nothing_attached() {
        let fs = crate::io::RealFs::new();
        for name in NAMES {
            assert!(hit(&fs, name).is_ok());
        }
        assert_eq!(fs.take_stall(), None);
    }

    #[test]
    fn injected_errors_are_recognised() {
        assert!(is_injected(&injected_error("wal.sync")));
        assert!(!is_injected(&io::Error::other("disk on fire")));
    }
}
