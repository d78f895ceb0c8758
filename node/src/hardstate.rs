//! The hard-state file: term, vote, commit index, the highest log index this node may have
//! acknowledged, and the evidence of any recovery in progress, kept outside the log so that damage
//! to the log's tail can never roll them back.
//!
//! # Contract
//!
//! * The file holds two slots of one sector each ([`SLOT_BYTES`]). Each slot is a complete,
//!   checksummed copy of the [`DurableState`] with a sequence number. [`HardStateFile::store`] writes
//!   the *older* slot and fsyncs it; the newer slot is never touched, so a write torn by a crash
//!   (process kill inside the write, or a power loss before its fsync returned) damages at most the
//!   slot being written, and the other one still holds the previous state.
//! * At open the newest slot whose magic, version and CRC32C hold wins. Both slots invalid is
//!   corruption that no crash can cause: a typed refusal ([`HardStateError::Corrupt`]), never a silent
//!   reset to term 0 (which would let the node vote twice in one term).
//! * The file is created complete (both slots) as `hardstate.tmp`, fsynced, renamed into place and
//!   the directory fsynced: once its name exists it always holds at least one valid slot.
//! * A store that fails poisons the handle ([`HardStateError::Poisoned`]): after a failed fsync the
//!   page cache's state is unknown (D10).
//!
//! Slot layout (big-endian, `docs/formats.md` has the table): magic `DKHS`, version u16, reserved u16,
//! sequence u64, term u64, vote u64, commit u64, acknowledged index u64, acknowledged term u64,
//! recover-to index u64, recover-to term u64, repair kind u8 + 7 reserved bytes, repair segment u64,
//! repair offset u64, repair bytes dropped u64, repair acknowledged index u64, then a CRC32C of
//! everything before it; zeros to the end of the sector.

use std::io;
use std::path::{Path, PathBuf};

use crate::codec::{be_u16, be_u32, be_u64};
use crate::io::{FsFile, OpenOptions, SharedFs, parent_dir, tmp_path};

/// Bytes per slot: one sector, so a torn write of one slot cannot reach the other.
pub const SLOT_BYTES: usize = 512;
/// The file holds exactly two slots.
pub const FILE_BYTES: u64 = 2 * SLOT_BYTES as u64;
/// The file's name inside the raft directory.
pub const FILE_NAME: &str = "hardstate";

const MAGIC: &[u8; 4] = b"DKHS";
const VERSION: u16 = 1;
/// Bytes covered by the checksum; the CRC32C follows them.
const BODY_BYTES: usize = 112;
/// Where the repair evidence starts in a slot.
const REPAIR_AT: usize = 72;

/// Why recovery decided this node may have lost entries it acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairKind {
    /// Start-up cut a damaged tail off the last WAL segment.
    TornTailRepaired,
    /// The log ended below the highest index the node may have acknowledged (or below the durable
    /// commit index) without a repair: acknowledged records are missing.
    LogBelowAcknowledged,
    /// A leader believed this node held entries beyond its log (a heartbeat's commit index past the
    /// last entry): a promise this node made was broken without start-up noticing.
    LeaderAhead,
    /// Acknowledged WAL records are corrupt (a non-last segment, bit rot, a bad record that valid
    /// ones follow): the log was cut at the damage, the bytes left in place.
    CorruptRecord,
}

impl RepairKind {
    fn code(self) -> u8 {
        match self {
            RepairKind::TornTailRepaired => 1,
            RepairKind::LogBelowAcknowledged => 2,
            RepairKind::LeaderAhead => 3,
            RepairKind::CorruptRecord => 4,
        }
    }

    fn from_code(code: u8) -> Option<RepairKind> {
        match code {
            1 => Some(RepairKind::TornTailRepaired),
            2 => Some(RepairKind::LogBelowAcknowledged),
            3 => Some(RepairKind::LeaderAhead),
            4 => Some(RepairKind::CorruptRecord),
            _ => None,
        }
    }
}

impl std::fmt::Display for RepairKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RepairKind::TornTailRepaired => "torn WAL tail repaired",
            RepairKind::LogBelowAcknowledged => "log ends below what the node may have acknowledged",
            RepairKind::LeaderAhead => "the leader believed this node held entries it no longer has",
            RepairKind::CorruptRecord => "corrupt acknowledged WAL record; the log was cut there",
        })
    }
}

/// What a recovery found, recorded durably *before* anything is truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairEvidence {
    pub kind: RepairKind,
    /// The WAL segment's sequence number (0 when no segment was cut).
    pub segment: u64,
    /// Where the cut starts in that segment.
    pub offset: u64,
    /// How many bytes the cut dropped (they are kept in `<segment>.broken`).
    pub bytes_dropped: u64,
    /// The highest log index the node may have acknowledged when the damage was found.
    pub acknowledged: u64,
}

impl RepairEvidence {
    /// Evidence that names no WAL cut (segment, offset and bytes dropped zero).
    pub fn found(kind: RepairKind, acknowledged: u64) -> RepairEvidence {
        RepairEvidence { kind, segment: 0, offset: 0, bytes_dropped: 0, acknowledged }
    }
}

impl std::fmt::Display for RepairEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        if self.segment > 0 {
            write!(
                f,
                " (segment {}, offset {}, {} bytes dropped)",
                self.segment, self.offset, self.bytes_dropped
            )?;
        }
        write!(f, "; the node may have acknowledged up to index {}", self.acknowledged)
    }
}

/// Everything the hard-state file keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurableState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
    /// The last entry this node may have acknowledged (to a leader, or counted for itself as leader):
    /// its last persisted entry, index and term. Set after entries are fsynced, lowered *before* a raft
    /// conflict truncates uncommitted entries. A log whose last entry is not at least this up to date
    /// (raft's order: term, then index) lost something the node promised.
    pub acknowledged: u64,
    pub acknowledged_term: u64,
    /// Non-zero while the node is recovering entries it lost: until its log reaches this index it
    /// votes only for candidates at least as up to date as this mark, never campaigns, and fetches
    /// the missing range from the leader.
    pub recover_to: u64,
    /// ... and the log's last term must reach this one (a log that only looks long enough, because it
    /// kept entries an acknowledged conflict had replaced, is not whole).
    pub recover_term: u64,
    /// The most recent repair, kept after recovery completes (for operators).
    pub repair: Option<RepairEvidence>,
}

/// Errors of the hard-state file.
#[derive(Debug, thiserror::Error)]
pub enum HardStateError {
    #[error("hard-state file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt hard-state file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the hard-state file is poisoned by an earlier failed write or fsync; restart the node to recover"
    )]
    Poisoned,
}

/// Why a slot does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotProblem {
    BadMagic,
    UnknownVersion(u16),
    Checksum,
    BadRepairKind(u8),
}

impl std::fmt::Display for SlotProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotProblem::BadMagic => f.write_str("bad magic"),
            SlotProblem::UnknownVersion(v) => write!(f, "unknown version {v}"),
            SlotProblem::Checksum => f.write_str("checksum mismatch"),
            SlotProblem::BadRepairKind(k) => write!(f, "unknown repair kind {k}"),
        }
    }
}

/// Encode one slot.
pub fn encode_slot(seq: u64, s: &DurableState) -> [u8; SLOT_BYTES] {
    let mut b = [0u8; SLOT_BYTES];
    b[0..4].copy_from_slice(MAGIC);
    b[4..6].copy_from_slice(&VERSION.to_be_bytes());
    let words =
        [seq, s.term, s.vote, s.commit, s.acknowledged, s.acknowledged_term, s.recover_to, s.recover_term];
    for (i, w) in words.iter().enumerate() {
        b[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_be_bytes());
    }
    if let Some(r) = s.repair {
        b[REPAIR_AT] = r.kind.code();
        for (i, w) in [r.segment, r.offset, r.bytes_dropped, r.acknowledged].iter().enumerate() {
            let at = REPAIR_AT + 8 + 8 * i;
            b[at..at + 8].copy_from_slice(&w.to_be_bytes());
        }
    }
    let crc = crc32c::crc32c(&b[..BODY_BYTES]);
    b[BODY_BYTES..BODY_BYTES + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Decode one slot: its sequence number and state.
pub fn decode_slot(b: &[u8]) -> Result<(u64, DurableState), SlotProblem> {
    if b.len() < BODY_BYTES + 4 || &b[0..4] != MAGIC {
        return Err(SlotProblem::BadMagic);
    }
    if crc32c::crc32c(&b[..BODY_BYTES]) != be_u32(b, BODY_BYTES) {
        return Err(SlotProblem::Checksum);
    }
    let version = be_u16(b, 4);
    if version != VERSION {
        return Err(SlotProblem::UnknownVersion(version));
    }
    let w = |i: usize| be_u64(b, 8 + 8 * i);
    let r = |i: usize| be_u64(b, REPAIR_AT + 8 + 8 * i);
    let repair = match b[REPAIR_AT] {
        0 => None,
        code => Some(RepairEvidence {
            kind: RepairKind::from_code(code).ok_or(SlotProblem::BadRepairKind(code))?,
            segment: r(0),
            offset: r(1),
            bytes_dropped: r(2),
            acknowledged: r(3),
        }),
    };
    let state = DurableState {
        term: w(1),
        vote: w(2),
        commit: w(3),
        acknowledged: w(4),
        acknowledged_term: w(5),
        recover_to: w(6),
        recover_term: w(7),
        repair,
    };
    Ok((w(0), state))
}

/// Pick the newest valid slot of a whole file's bytes. `Err` names why each slot failed.
pub fn decode_file(bytes: &[u8]) -> Result<(u64, DurableState), String> {
    if bytes.len() as u64 != FILE_BYTES {
        return Err(format!("{} bytes where {FILE_BYTES} are expected", bytes.len()));
    }
    let a = decode_slot(&bytes[..SLOT_BYTES]);
    let b = decode_slot(&bytes[SLOT_BYTES..]);
    match (a, b) {
        (Ok(x), Ok(y)) => Ok(if y.0 > x.0 { y } else { x }),
        (Ok(x), Err(_)) | (Err(_), Ok(x)) => Ok(x),
        (Err(pa), Err(pb)) => Err(format!("both slots are invalid (slot 0: {pa}; slot 1: {pb})")),
    }
}

/// The open hard-state file.
#[derive(Debug)]
pub struct HardStateFile {
    fs: SharedFs,
    path: PathBuf,
    file: Box<dyn FsFile>,
    seq: u64,
    state: DurableState,
    poisoned: bool,
}

impl HardStateFile {
    /// Open the file at `path` if it exists (`Ok(None)` if it does not).
    pub fn load(fs: &SharedFs, path: &Path) -> Result<Option<HardStateFile>, HardStateError> {
        let io_err = |source| HardStateError::Io { path: path.to_path_buf(), source };
        if !fs.exists(path).map_err(io_err)? {
            return Ok(None);
        }
        let file = fs.open(path, OpenOptions::read_write()).map_err(io_err)?;
        let len = file.len().map_err(io_err)?;
        let mut bytes = vec![0u8; usize::try_from(len.min(FILE_BYTES + 1)).unwrap_or(0)];
        file.read_exact_at(&mut bytes, 0).map_err(io_err)?;
        let (seq, state) = decode_file(&bytes)
            .map_err(|reason| HardStateError::Corrupt { path: path.to_path_buf(), reason })?;
        Ok(Some(HardStateFile {
            fs: fs.clone(),
            path: path.to_path_buf(),
            file,
            seq,
            state,
            poisoned: false,
        }))
    }

    /// Create the file holding `state`, complete before its name exists.
    pub fn create(fs: &SharedFs, path: &Path, state: DurableState) -> Result<HardStateFile, HardStateError> {
        let tmp = tmp_path(path);
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| HardStateError::Io { path: p, source }
        };
        let mut file = fs.open(&tmp, OpenOptions::create_truncate()).map_err(io_err(&tmp))?;
        let mut bytes = Vec::with_capacity(FILE_BYTES as usize);
        bytes.extend_from_slice(&encode_slot(0, &state));
        bytes.extend_from_slice(&encode_slot(1, &state));
        file.write_at(&bytes, 0).map_err(io_err(&tmp))?;
        // Both slots must be on the media before the name points at them: a named hard-state file
        // always holds a valid slot.
        file.sync().map_err(io_err(&tmp))?;
        drop(file);
        fs.rename(&tmp, path).map_err(io_err(path))?;
        // The name must be durable before anything this node promises relies on the file.
        fs.sync_dir(parent_dir(path)).map_err(io_err(parent_dir(path)))?;
        let file = fs.open(path, OpenOptions::read_write()).map_err(io_err(path))?;
        Ok(HardStateFile { fs: fs.clone(), path: path.to_path_buf(), file, seq: 1, state, poisoned: false })
    }

    /// The state last made durable.
    pub fn state(&self) -> &DurableState {
        &self.state
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make `state` durable: write the older slot, fsync. Returns once durable; does nothing if the
    /// state is unchanged.
    pub fn store(&mut self, state: DurableState) -> Result<(), HardStateError> {
        if self.poisoned {
            return Err(HardStateError::Poisoned);
        }
        if state == self.state {
            return Ok(());
        }
        let seq = self.seq + 1;
        let offset = (seq % 2) * SLOT_BYTES as u64;
        let slot = encode_slot(seq, &state);
        let io_err = |source| HardStateError::Io { path: self.path.clone(), source };
        let written = self.file.write_at(&slot, offset).and_then(|()| {
            crate::failpoint::hit(&*self.fs, "hardstate.sync")?;
            // The new term, vote, commit or acknowledged index is promised to peers only after this
            // fsync returns (votes and append responses leave after `persist`): D1 and election safety.
            self.file.sync()
        });
        if let Err(e) = written {
            self.poisoned = true;
            return Err(io_err(e));
        }
        if state.commit != self.state.commit {
            crate::probe::observe(&*self.fs, || crate::probe::Observation::CommitPersisted {
                commit: state.commit,
            });
        }
        self.seq = seq;
        self.state = state;
        Ok(())
    }

    /// The filesystem the file lives on.
    pub(crate) fn fs(&self) -> &SharedFs {
        &self.fs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DurableState {
        DurableState {
            term: 7,
            vote: 3,
            commit: 40,
            acknowledged: 42,
            acknowledged_term: 7,
            recover_to: 42,
            recover_term: 7,
            repair: Some(RepairEvidence {
                kind: RepairKind::CorruptRecord,
                segment: 5,
                offset: 4096,
                bytes_dropped: 0,
                acknowledged: 42,
            }),
        }
    }

    #[test]
    fn slots_round_trip_and_the_newest_valid_one_wins() {
        let s = state();
        assert_eq!(decode_slot(&encode_slot(9, &s)), Ok((9, s)));
        let mut file = encode_slot(8, &DurableState::default()).to_vec();
        file.extend_from_slice(&encode_slot(9, &s));
        assert_eq!(decode_file(&file), Ok((9, s)));
        // The newer slot torn: the older one holds.
        file[SLOT_BYTES + 20] ^= 0xFF;
        assert_eq!(decode_file(&file), Ok((8, DurableState::default())));
    }

    #[test]
    fn malformed_slots_and_files_are_typed_errors() {
        let good = encode_slot(1, &state());
        let mut bad_magic = good;
        bad_magic[0] = b'X';
        assert_eq!(decode_slot(&bad_magic), Err(SlotProblem::BadMagic));
        let mut bad_crc = good;
        bad_crc[30] ^= 1;
        assert_eq!(decode_slot(&bad_crc), Err(SlotProblem::Checksum));
        let mut bad_version = good;
        bad_version[5] = 9;
        let crc = crc32c::crc32c(&bad_version[..BODY_BYTES]);
        bad_version[BODY_BYTES..BODY_BYTES + 4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode_slot(&bad_version), Err(SlotProblem::UnknownVersion(9)));
        let mut bad_kind = good;
        bad_kind[REPAIR_AT] = 200;
        let crc = crc32c::crc32c(&bad_kind[..BODY_BYTES]);
        bad_kind[BODY_BYTES..BODY_BYTES + 4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode_slot(&bad_kind), Err(SlotProblem::BadRepairKind(200)));
        assert_eq!(decode_slot(&good[..50]), Err(SlotProblem::BadMagic));
        assert!(decode_file(&good).is_err(), "one slot is not a whole file");
        assert!(decode_file(&[0u8; FILE_BYTES as usize]).is_err(), "two empty slots");
    }
}
