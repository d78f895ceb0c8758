//! durakv's simulated disk and fault model.
//!
//! # Fault model
//!
//! A simulated node owns one [`SimFs`] for its whole life, across restarts. What can go wrong, and why
//! durakv is expected to survive it:
//!
//! | fault | where | how durakv survives |
//! |---|---|---|
//! | process kill (OOM-kill, SIGKILL), possibly inside a write | any operation | the page cache survives; a torn WAL tail is repaired at start-up (D4) |
//! | power loss: unsynced sectors kept, dropped or garbage; unsynced directory entries lost | everything not yet synced | nothing is acknowledged before its fsync (and its directory's fsync) returned (D1) |
//! | `EIO` on read, write or sync | by rule | fatal for the node (D10); a failed sync is never retried, since the page cache state is unknown |
//! | `ENOSPC` at a capacity | writes that grow files | the write fails cleanly; nothing acknowledged is lost |
//! | `EXDEV` across declared mounts | renames | the snapshot spool falls back to copy → fsync → rename (D7) |
//! | silent bit flips | by rule or explicitly | CRC32C on every record and snapshot; corruption is reported, never truncated away (D5) |
//!
//! Every fault path that fires is counted in [`SimFs::coverage`], so a test can show that the fault it
//! names actually happened. All settings live in [`SimFsOptions`]; all randomness comes from the seed.

#[cfg(feature = "fuse")]
pub mod fuse;
mod options;
mod simfs;

pub use options::{
    FaultEffect, FaultRule, OpKind, OptionsError, Ratio, SectorFate, SectorOdds, SimFsOptions, glob_match,
};
pub use simfs::{
    COVERAGE_KEYS, CrashKind, FailAction, FileImage, HaltHook, SimCrashed, SimFs, TornWrite, is_crash_error,
};
