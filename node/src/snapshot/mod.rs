//! Snapshots: checksummed files named by a small token, written and received as streams, verified
//! before they become visible.
//!
//! # Contract
//!
//! * A snapshot is a file `<index>.snap` (20 digits) in the snapshot directory: a versioned header, the
//!   engine's point-in-time stream of client keys, and a CRC32C footer over everything before it
//!   (`docs/formats.md`). It is written `.tmp` → fsync → rename → fsync(dir), so a name only ever holds
//!   a complete file (D6). Raft carries a 17-byte [`SnapshotToken`] (index and CRC), never the data.
//! * The writer ([`write_snapshot`]) and the receiving [`Spool`] stream with bounded memory: a chunk
//!   at a time, the CRC accumulated as bytes pass (D7). The spool checks the sender's length and CRC
//!   end to end, finalizes by rename into the snapshot directory, and falls back to copy → fsync →
//!   rename → fsync(dir) when the rename fails with `EXDEV`.
//! * [`restore`] streams the file into a fresh location of the engine while checking its CRC, and swaps
//!   it in only if the file's size, footer (against the token) and whole-body CRC all check out (D8).
//! * [`cold_start`] skips the body restore when the engine's applied index is already at or past the
//!   snapshot's — after the same three checks and after applying the header's state (D9).
//! * [`SnapshotStore`] keeps the newest K snapshots, removes leftovers at start-up, and never removes a
//!   file that a concurrent receive of the same index still holds (D11).

mod format;
mod restore;
mod spool;
mod store;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

pub use format::{
    FOOTER_LEN, HEADER_FIXED_LEN, MAX_RECORD_FIELD_BYTES, MIN_SNAPSHOT_LEN, SNAPSHOT_MAGIC, SNAPSHOT_VERSION,
    SnapshotHeader, SnapshotToken, TOKEN_LEN, encode_record,
};
pub use restore::{
    ColdStart, VerifiedSnapshot, cold_start, copy_with_conf_state, ensure_applied_durable, read_header,
    restore, token_of, verify,
};
pub use spool::{DEFAULT_SPOOL_CAP_BYTES, Spool, StreamInfo};
pub use store::{ReceiveGuard, SnapshotStore};
pub use writer::{SnapshotFile, write_snapshot};

use crate::fsm::FsmError;

/// Errors of the snapshot layer.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("snapshot {path} is {len} bytes, smaller than the minimum {MIN_SNAPSHOT_LEN}")]
    TooSmall { path: PathBuf, len: u64 },
    #[error("snapshot {path} footer CRC {footer:#010x} does not match the token's {token:#010x}")]
    TokenCrcMismatch { path: PathBuf, footer: u32, token: u32 },
    #[error("snapshot {path} body CRC {computed:#010x} does not match its footer {footer:#010x}")]
    BodyCrcMismatch { path: PathBuf, computed: u32, footer: u32 },
    #[error("snapshot {path} not found")]
    NotFound { path: PathBuf },
    #[error("bad snapshot header: {0}")]
    BadHeader(String),
    #[error("unknown snapshot format version {0}")]
    UnknownVersion(u32),
    #[error("bad snapshot token: {0}")]
    BadToken(String),
    #[error("bad snapshot body at offset {offset}: {reason}")]
    BadBody { offset: u64, reason: String },
    #[error("snapshot stream of {len} bytes exceeds the spool cap of {cap} bytes")]
    TooLarge { len: u64, cap: u64 },
    #[error("snapshot stream length mismatch: the sender announced {expected} bytes, {received} arrived")]
    LengthMismatch { expected: u64, received: u64 },
    #[error(
        "snapshot stream CRC mismatch: the sender announced {expected:#010x}, the bytes give {computed:#010x}"
    )]
    StreamCrcMismatch { expected: u32, computed: u32 },
    #[error("the spool was already finalized or closed")]
    SpoolClosed,
    #[error("snapshot index {snapshot} is ahead of the engine's durable applied index {applied:?}")]
    AppliedBehind { snapshot: u64, applied: Option<u64> },
    #[error(transparent)]
    Fsm(#[from] FsmError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| {
        if source.kind() == io::ErrorKind::NotFound {
            SnapshotError::NotFound { path: path.to_path_buf() }
        } else {
            SnapshotError::Io { path: path.to_path_buf(), source }
        }
    }
}

/// The file name of the snapshot at `index`.
pub fn snapshot_name(index: u64) -> String {
    format!("{index:020}.snap")
}

/// The index in a snapshot file name, if it is one.
pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".snap")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// The streaming unit for reads, writes and copies: memory stays O(this), whatever the snapshot size.
pub const CHUNK_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_snapshot_name(&snapshot_name(12)), Some(12));
        assert_eq!(parse_snapshot_name("12.snap"), None);
        assert_eq!(parse_snapshot_name("00000000000000000012.snap.tmp"), None);
    }
}
