//! The write-ahead log: segmented files of CRC32C-framed records, group commit, and recovery that
//! tells a torn tail (repair) from corruption (refuse).
//!
//! # Contract
//!
//! * [`Wal::append`] writes a whole [`Batch`] with one `write` and one fsync and returns only once the
//!   batch is durable (group commit). [`Wal::append_unsynced`] writes without the fsync (the simulated
//!   FSM engine's `NoSync` journal); [`Wal::sync`] makes everything written durable. A failed write or
//!   fsync poisons the WAL: every later call fails with [`WalError::Poisoned`] (the page cache's state
//!   is unknown after a failed fsync; restart and recover instead of retrying — D10).
//! * The log is append-only. A raft conflict is a [`Record::Truncate`] record, compaction a
//!   [`Record::Compact`] record followed by the removal of whole segments that hold only discarded
//!   entries (oldest first, then one directory fsync). Nothing already written is ever rewritten, so a
//!   crash can only damage bytes after the last fsync.
//! * Each process writes to segments it created: the first append after [`Wal::open`] starts a new
//!   segment (created as `<name>.tmp`, header fsynced, renamed, directory fsynced), whose first records
//!   restate the compaction floor and every meta value, so old segments can be dropped without losing
//!   them. A segment is fsynced before the next one is started, and open fsyncs the last segment it
//!   found, so only the last segment can hold unsynced bytes.
//! * Every frame records `durable_upto`: the offset below which its segment was known durable when the
//!   frame was written. At start-up, at the first bad frame of a segment:
//!   - in any segment but the last, or in [`RecoveryMode::Strict`]: [`WalError::Corrupt`];
//!   - if the bad frame is explained by a single flipped bit in a sector a torn write would have
//!     zeroed or scrambled whole: corruption (bit rot);
//!   - if a valid frame follows whose `durable_upto` lies *past* the bad bytes: those bytes had been
//!     fsynced, so this is corruption of acknowledged data;
//!   - otherwise the damage lies in the unsynced tail, which was never acknowledged: a torn tail. It is
//!     repaired: the dropped bytes are copied to `<segment>.broken`, the segment is truncated and
//!     fsynced, and a warning names the segment, offset and bytes dropped (D4).
//!
//! Memory: the in-memory index holds a location (about 32 bytes) per live entry plus the meta values;
//! recovery reads one segment at a time.

mod format;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

pub use format::{
    Entry, FRAME_HEADER_LEN, Frame, FrameProblem, HeaderProblem, MAX_PAYLOAD_BYTES, Record,
    SEGMENT_HEADER_LEN, SegmentScan, decode_frame, decode_frame_at, decode_segment_header, encode_frame,
    encode_segment_header, frame_len, later_durable_after, scan_segment, scan_segment_index, single_bit_rot,
};

use crate::codec::be_u32;
use crate::failpoint;
use crate::io::{FsFile, OpenOptions, SharedFs, ensure_dir_durable, tmp_path};

/// Why recovery refused a WAL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptReason {
    #[error("{0}")]
    Header(HeaderProblem),
    #[error("{0}")]
    Frame(FrameProblem),
    #[error(
        "{problem}, explained by a single flipped bit at offset {bit_offset} (bit rot, not a torn write)"
    )]
    BitRot { problem: FrameProblem, bit_offset: u64 },
    #[error(
        "{problem}, followed by a valid record at offset {later} from a later append (the bad bytes had been fsynced)"
    )]
    FollowedByValid { problem: FrameProblem, later: u64 },
    #[error("segment {missing} is missing between {before} and {after}")]
    MissingSegment { missing: u64, before: u64, after: u64 },
    #[error("entry {found} does not follow entry {expected_after}")]
    NonContiguous { expected_after: u64, found: u64 },
    #[error("entry {found} is below the compaction floor {floor}")]
    BelowFloor { found: u64, floor: u64 },
    #[error("stored entry {found} where the index expects {expected}")]
    IndexMismatch { expected: u64, found: u64 },
}

/// Errors of the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt WAL segment {path} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: CorruptReason },
    #[error("invalid WAL append: {0}")]
    InvalidArgument(String),
    #[error("the WAL is poisoned by an earlier failed write or fsync; restart the node to recover")]
    Poisoned,
    #[error("entry {index} is not in the log (first {first:?}, last {last:?})")]
    Unavailable { index: u64, first: Option<u64>, last: Option<u64> },
    #[error("recording the evidence of a repair before making it: {0}")]
    Evidence(Box<dyn std::error::Error + Send + Sync>),
    #[error("the WAL was opened read-only (strict check); it takes no writes")]
    ReadOnly,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// What recovery does with a damaged last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Repair a torn tail of the last segment (the default); refuse corruption.
    #[default]
    RepairTornTail,
    /// Repair a torn tail; for corruption of acknowledged records anywhere (a non-last segment, bit
    /// rot, a bad record followed by valid ones, a bad segment header), keep the damaged bytes where
    /// they are, treat every entry from the damage on as lost (indexing none of them until a later
    /// truncation at or below the damage replaces them), keep reading later records for metas and
    /// compactions; the first append after the open writes a truncation at the damage ahead of its
    /// own records. The raft layer then recovers the lost range from its peers
    /// ([`RecoveryReport::damaged`]).
    RecoverFromPeers,
    /// Refuse any damage, torn tail included, and open read-only: no `.tmp` removal, no fsync, no
    /// directory creation; appends fail with [`WalError::ReadOnly`] (`durakv wal check`, forensics).
    Strict,
}

impl RecoveryMode {
    /// A strict check changes nothing on disk.
    pub fn is_read_only(self) -> bool {
        self == RecoveryMode::Strict
    }
}

/// WAL settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// Start a new segment once the active one reaches this size. Default 64 MiB; minimum 4 KiB.
    /// A segment may exceed it by one batch (a batch never spans two segments).
    pub segment_size_bytes: u64,
    /// Default [`RecoveryMode::RepairTornTail`].
    pub recovery: RecoveryMode,
    /// Sector size the bit-rot test assumes for torn writes. Default 512.
    pub sector_size_bytes: usize,
    /// Pass the `wal.append` and `wal.sync` failpoints (the raft log sets it; the state machine's
    /// journal, which shares this code, does not). Default false.
    pub failpoints: bool,
    /// An entry (index, term) an fsync is known to have covered: the raft log passes the hard-state
    /// file's acknowledged mark, recorded only after the fsync of the entries it names. If the fsync
    /// at open fails, the last segment is never cut below the end of that entry's record (see
    /// `sync_or_cut_back`). Default none.
    pub durable_entry: Option<(u64, u64)>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes: 64 << 20,
            recovery: RecoveryMode::default(),
            sector_size_bytes: 512,
            failpoints: false,
            durable_entry: None,
        }
    }
}

/// A group of records made durable together by one fsync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    records: Vec<Record>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    /// Append an entry. Entries must be consecutive (after any truncation earlier in the log).
    pub fn entry(&mut self, index: u64, term: u64, data: Vec<u8>) -> &mut Self {
        self.records.push(Record::Entry(Entry { index, term, data }));
        self
    }

    /// Remove every entry with index >= `from`.
    pub fn truncate_from(&mut self, from: u64) -> &mut Self {
        self.records.push(Record::Truncate { from });
        self
    }

    /// Discard every entry below `first_index`, atomically with the rest of the batch. Whole segments
    /// left without live entries are removed after the batch is durable.
    pub fn compact(&mut self, first_index: u64) -> &mut Self {
        self.records.push(Record::Compact { first_index });
        self
    }

    /// Set a meta value (hard state, conf state, …). The last write of a key wins.
    pub fn set_meta(&mut self, key: u16, value: Vec<u8>) -> &mut Self {
        self.records.push(Record::Meta { key, value });
        self
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }
}

/// What recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    /// Set when a torn tail was repaired.
    pub repaired: Option<TornTail>,
    /// Leftover `.tmp` files removed (in [`RecoveryMode::Strict`]: found and left in place).
    pub removed_tmp: Vec<PathBuf>,
    /// Corruption of acknowledged records that [`RecoveryMode::RecoverFromPeers`] opened past.
    pub damaged: Option<Damage>,
}

/// Corruption recovery opened past instead of refusing: the first damaged place, and the first entry
/// index the log lost there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    pub seq: u64,
    pub offset: u64,
    pub reason: CorruptReason,
    /// Entries from this index on were dropped from the log (a truncation record says so durably).
    pub lost_from: u64,
}

/// A torn-tail repair recovery is about to make, passed to the caller *before* any byte is cut so it
/// can record durable evidence first ([`Wal::open_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRepair {
    pub segment: PathBuf,
    /// The segment's sequence number.
    pub seq: u64,
    pub offset: u64,
    pub bytes_dropped: u64,
    /// The last entry index the log keeps after the cut.
    pub last_kept: Option<u64>,
    pub problem: FrameProblem,
}

/// A repaired torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes_dropped: u64,
    pub broken_copy: PathBuf,
    pub problem: FrameProblem,
}

/// Where a live entry's frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    seq: u64,
    offset: u64,
    term: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: Box<dyn FsFile>,
    len: u64,
    /// Every byte below this offset is durable.
    synced_len: u64,
}

/// The shape of the log: enough to validate a record without touching the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Shape {
    first: Option<u64>,
    last: Option<u64>,
    /// Entries below this index are gone for good.
    floor: u64,
}

impl Shape {
    fn step(&mut self, record: &Record) -> Result<(), CorruptReason> {
        match record {
            Record::Entry(e) => {
                if e.index == 0 {
                    // Index 0 is raft's "no entry"; the decoder refuses it, so the writer must too.
                    return Err(CorruptReason::BelowFloor { found: 0, floor: 1 });
                }
                match self.last {
                    Some(last) if Some(e.index) != last.checked_add(1) => {
                        return Err(CorruptReason::NonContiguous { expected_after: last, found: e.index });
                    }
                    None if e.index < self.floor => {
                        return Err(CorruptReason::BelowFloor { found: e.index, floor: self.floor });
                    }
                    _ => {}
                }
                self.first.get_or_insert(e.index);
                self.last = Some(e.index);
            }
            Record::Truncate { from } => match (self.first, self.last) {
                (Some(first), _) if *from <= first => (self.first, self.last) = (None, None),
                (Some(_), Some(last)) if *from <= last => self.last = Some(from - 1),
                _ => {}
            },
            Record::Compact { first_index } => {
                self.floor = self.floor.max(*first_index);
                match (self.first, self.last) {
                    (Some(_), Some(last)) if last < self.floor => (self.first, self.last) = (None, None),
                    (Some(first), Some(_)) if first < self.floor => self.first = Some(self.floor),
                    _ => {}
                }
            }
            Record::Meta { .. } => {}
        }
        Ok(())
    }
}

/// The write-ahead log. See the module documentation for the contract.
#[derive(Debug)]
pub struct Wal {
    fs: SharedFs,
    dir: PathBuf,
    opts: WalOptions,
    segments: BTreeMap<u64, Segment>,
    /// The segment this process appends to; `None` until the first append after open.
    active: Option<u64>,
    shape: Shape,
    /// Locations of live entries, `shape.first ..= shape.last`.
    locs: VecDeque<Loc>,
    metas: BTreeMap<u16, Vec<u8>>,
    poisoned: bool,
    /// During recovery past damage: entries from this index on are lost, and entry records are not
    /// indexed until a truncation at or below it.
    skip_entries_from: Option<u64>,
    /// The encode buffer, kept between appends (up to `SCRATCH_KEEP_BYTES`).
    scratch: Vec<u8>,
}

/// Keep the encode buffer between appends if it is at most this large.
const SCRATCH_KEEP_BYTES: usize = 16 << 20;

/// At open, fsync the last segment (its kept bytes `..valid_len`), or, if that fsync fails, cut the
/// segment back to what is proven durable and fail.
///
/// A failed fsync may leave pages the kernel marked clean but never wrote (fsyncgate): the next start
/// would read them from the page cache, its own fsync would succeed without writing them, and the
/// log would be built upon bytes a power loss turns into a hole in the middle of it (D10; found by
/// the simulation's fuzz in the state machine's `NoSync` journal). Bytes below the last kept frame's
/// `durable_upto` were covered by an fsync that succeeded, and so were the bytes up to the end of
/// `durable_end` (the record of the entry the caller knows an fsync covered: the raft log's
/// acknowledged entry, promised to the leader only after its fsync; a frame's own `durable_upto`
/// predates it, so without this the last batch a node acknowledged before it stopped would be cut
/// although it was durable: found by the swarm, a broken promise). The rest is cut, as after a
/// failed append, and the shorter length made durable. What is cut was never proven durable: the
/// state machine replays unsynced batches from the raft log; a raft entry cut here was never
/// acknowledged. If the cut fails too, the start fails all the same.
fn sync_or_cut_back(
    fs: &dyn crate::io::Fs,
    file: &mut dyn FsFile,
    path: &Path,
    last_frame: Option<&Frame>,
    durable_end: Option<u64>,
    valid_len: u64,
) -> Result<(), WalError> {
    // Everything recovery keeps in the last segment must be durable before the log is built upon.
    let Err(failed) = file.sync() else { return Ok(()) };
    if failpoint::canary(fs, "keep-bytes-after-failed-fsync") {
        return Err(io_err(path)(failed));
    }
    let proven =
        last_frame.map_or(SEGMENT_HEADER_LEN as u64, |f| f.durable_upto).max(durable_end.unwrap_or(0));
    let proven = proven.clamp(SEGMENT_HEADER_LEN as u64, valid_len);
    // Not a retry of the failed fsync: this one only has to make the new, shorter length durable.
    match file.set_len(proven).and_then(|()| file.sync()) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            durable_len = proven,
            dropped_bytes = valid_len - proven,
            "fsync at open failed: cut the segment back to its proven durable length"
        ),
        Err(e) => tracing::error!(
            path = %path.display(),
            error = %e,
            "fsync at open failed, and cutting the segment back to its proven durable length failed too"
        ),
    }
    Err(io_err(path)(failed))
}

/// The file name of WAL segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Wal {
    /// Open (or create) the WAL in `dir`, recovering as the module documentation describes.
    pub fn open(fs: SharedFs, dir: &Path, opts: WalOptions) -> Result<(Wal, RecoveryReport), WalError> {
        Wal::open_with(fs, dir, opts, &mut |_| Ok(()))
    }

    /// Like [`Wal::open`], but a torn-tail repair is first shown to `before_repair`, which must make
    /// whatever evidence it keeps durable before returning: only then is the tail cut. An error from
    /// it aborts the open with nothing cut.
    pub fn open_with(
        fs: SharedFs,
        dir: &Path,
        opts: WalOptions,
        before_repair: &mut dyn FnMut(&PlannedRepair) -> Result<(), WalError>,
    ) -> Result<(Wal, RecoveryReport), WalError> {
        if opts.segment_size_bytes < 4096 || opts.sector_size_bytes == 0 {
            return Err(WalError::InvalidArgument(format!(
                "segment_size_bytes must be at least 4096 (got {}), sector_size_bytes at least 1",
                opts.segment_size_bytes
            )));
        }
        let read_only = opts.recovery.is_read_only();
        if !read_only {
            // The directory's own name must be durable before segments in it are acknowledged.
            ensure_dir_durable(&*fs, dir).map_err(io_err(dir))?;
        }
        let mut report = RecoveryReport::default();
        let mut seqs = Vec::new();
        for entry in fs.read_dir(dir).map_err(io_err(dir))? {
            if entry.name.ends_with(".tmp") {
                // A segment or broken-copy whose creation never finished; nothing refers to it.
                let path = dir.join(&entry.name);
                if !read_only {
                    fs.remove_file(&path).map_err(io_err(&path))?;
                }
                report.removed_tmp.push(path);
            } else if let Some(seq) = parse_segment_name(&entry.name) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        for pair in seqs.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(WalError::Corrupt {
                    path: dir.join(segment_name(pair[0] + 1)),
                    offset: 0,
                    reason: CorruptReason::MissingSegment {
                        missing: pair[0] + 1,
                        before: pair[0],
                        after: pair[1],
                    },
                });
            }
        }
        let mut wal = Wal {
            fs,
            dir: dir.to_path_buf(),
            opts,
            segments: BTreeMap::new(),
            active: None,
            shape: Shape::default(),
            locs: VecDeque::new(),
            metas: BTreeMap::new(),
            poisoned: false,
            skip_entries_from: None,
            scratch: Vec::new(),
        };
        for (i, &seq) in seqs.iter().enumerate() {
            let is_last = i + 1 == seqs.len();
            wal.recover_segment(seq, is_last, &mut report, before_repair)?;
        }
        report.segments = wal.segments.len();
        if let Some(damage) = &report.damaged {
            tracing::error!(
                path = %damage.segment.display(),
                offset = damage.offset,
                index = damage.lost_from,
                reason = %damage.reason,
                "corrupt WAL record: the log is cut at the damage (its bytes stay in place); the entries from index on must come from peers"
            );
        }
        Ok((wal, report))
    }

    fn recover_segment(
        &mut self,
        seq: u64,
        is_last: bool,
        report: &mut RecoveryReport,
        before_repair: &mut dyn FnMut(&PlannedRepair) -> Result<(), WalError>,
    ) -> Result<(), WalError> {
        let path = self.dir.join(segment_name(seq));
        let read_only = self.opts.recovery.is_read_only();
        let opts = if is_last && !read_only { OpenOptions::read_write() } else { OpenOptions::read_only() };
        let mut file = self.fs.open(&path, opts).map_err(io_err(&path))?;
        let len = file.len().map_err(io_err(&path))?;
        let size = usize::try_from(len).map_err(|_| {
            WalError::InvalidArgument(format!("segment {} is larger than memory", path.display()))
        })?;
        let buf = file.read_exact_vec_at(size, 0).map_err(io_err(&path))?;
        let corrupt = |offset: u64, reason| WalError::Corrupt { path: path.clone(), offset, reason };
        let recover = self.opts.recovery == RecoveryMode::RecoverFromPeers
            && !failpoint::canary(&*self.fs, "no-torn-tail-repair");
        // Opening indexes entries (offset and term); their data is read back on demand.
        let header = scan_segment_index(&buf).map_err(CorruptReason::Header).and_then(|scan| {
            if scan.seq == seq {
                Ok(scan)
            } else {
                Err(CorruptReason::Header(HeaderProblem::SeqMismatch { expected: seq, found: scan.seq }))
            }
        });
        let scan = match header {
            Ok(scan) => scan,
            Err(reason) if recover => {
                // Nothing in this segment can be trusted: every entry from it on is lost (later
                // segments restate the metas).
                self.note_damage(seq, &path, 0, reason, report);
                self.segments.insert(seq, Segment { path, file, len, synced_len: len });
                return Ok(());
            }
            Err(reason) => return Err(corrupt(0, reason)),
        };
        let last_frame = scan.frames.last().cloned();
        // The end of the last record of the entry an fsync is known to have covered.
        let durable_end = self.opts.durable_entry.and_then(|(index, term)| {
            scan.frames
                .iter()
                .rev()
                .find(|f| matches!(&f.record, Record::Entry(e) if e.index == index && e.term == term))
                .map(|f| f.end)
        });
        // The records before any damage are validated and indexed first, so a repair knows what the
        // log keeps.
        for frame in scan.frames {
            report.records += 1;
            if let Some(from) = self.skip_entries_from {
                match frame.record {
                    // Past damage: these entries are lost until a truncation replaces them.
                    Record::Entry(_) => continue,
                    // A truncation at or below the damage (or below a later compaction floor, as
                    // the one written by the first append after a recovering open can be) replaces
                    // the lost range: the log continues.
                    Record::Truncate { from: t } if t <= from.max(self.shape.floor) => {
                        self.skip_entries_from = None
                    }
                    Record::Truncate { .. } => continue,
                    Record::Meta { .. } | Record::Compact { .. } => {}
                }
            }
            self.shape.step(&frame.record).map_err(|r| corrupt(frame.offset, r))?;
            self.apply(seq, frame.offset, &frame.record);
        }
        let mut valid_len = len;
        if let Some((offset, problem)) = scan.stopped {
            let at = offset as usize;
            let damage = if !is_last || read_only || failpoint::canary(&*self.fs, "no-torn-tail-repair") {
                Some(CorruptReason::Frame(problem.clone()))
            } else if failpoint::canary(&*self.fs, "truncate-on-any-crc-mismatch") {
                None
            } else if let Some(bit_offset) =
                single_bit_rot(&buf, at, self.opts.sector_size_bytes, last_frame.as_ref())
            {
                Some(CorruptReason::BitRot { problem: problem.clone(), bit_offset })
            } else {
                later_durable_after(&buf, at)
                    .map(|later| CorruptReason::FollowedByValid { problem: problem.clone(), later })
            };
            if let Some(reason) = damage {
                if !recover {
                    return Err(corrupt(offset, reason));
                }
                // Acknowledged bytes are damaged: keep them in place (forensics) and cut the log
                // there logically; new records go to a new segment.
                self.note_damage(seq, &path, offset, reason, report);
                self.segments.insert(seq, Segment { path, file, len, synced_len: len });
                return Ok(());
            }
            let bytes_dropped = len - offset;
            let plan = PlannedRepair {
                segment: path.clone(),
                seq,
                offset,
                bytes_dropped,
                last_kept: self.shape.last,
                problem: problem.clone(),
            };
            // Evidence first: a crash after the cut must not leave a node that forgot what it cut.
            before_repair(&plan)?;
            let broken_copy = self.save_broken(&path, &buf[at..])?;
            // Drop the torn bytes; the fsync below makes the shorter length durable before anything
            // relies on it.
            file.set_len(offset).map_err(io_err(&path))?;
            sync_or_cut_back(&*self.fs, &mut *file, &path, last_frame.as_ref(), durable_end, offset)?;
            tracing::warn!(
                path = %path.display(),
                offset,
                bytes_dropped,
                broken_copy = %broken_copy.display(),
                reason = %problem,
                "repaired torn WAL tail: dropped bytes after the last complete record"
            );
            report.repaired =
                Some(TornTail { segment: path.clone(), offset, bytes_dropped, broken_copy, problem });
            valid_len = offset;
        } else if is_last && !read_only {
            // A killed process may have left unsynced bytes in the page cache. Make them durable
            // before building on them, so no segment but a new last one can ever be torn.
            sync_or_cut_back(&*self.fs, &mut *file, &path, last_frame.as_ref(), durable_end, len)?;
        }
        self.segments.insert(seq, Segment { path, file, len: valid_len, synced_len: valid_len });
        Ok(())
    }

    /// Recovery met damage it opens past (`RecoverFromPeers`): from here on, entries are lost.
    fn note_damage(
        &mut self,
        seq: u64,
        path: &Path,
        offset: u64,
        reason: CorruptReason,
        report: &mut RecoveryReport,
    ) {
        let lost_from = self.shape.last.map_or(self.shape.floor.max(1), |l| l + 1);
        let lost_from = self.skip_entries_from.map_or(lost_from, |f| f.min(lost_from));
        self.skip_entries_from = Some(lost_from);
        if report.damaged.is_none() {
            report.damaged = Some(Damage { segment: path.to_path_buf(), seq, offset, reason, lost_from });
        }
    }

    /// Write the bytes a repair drops to `<segment>.broken` (or `.broken.N` if taken), durably.
    fn save_broken(&self, segment: &Path, bytes: &[u8]) -> Result<PathBuf, WalError> {
        let mut n = 0u32;
        let target = loop {
            let mut name = segment.as_os_str().to_owned();
            name.push(if n == 0 { ".broken".to_string() } else { format!(".broken.{n}") });
            let candidate = PathBuf::from(name);
            if !self.fs.exists(&candidate).map_err(io_err(&candidate))? {
                break candidate;
            }
            n += 1;
        };
        crate::io::write_file_durably(&*self.fs, &target, bytes).map_err(io_err(&target))?;
        Ok(target)
    }

    /// Apply a validated record to the in-memory index.
    fn apply(&mut self, seq: u64, offset: u64, record: &Record) {
        match record {
            Record::Entry(e) => self.locs.push_back(Loc { seq, offset, term: e.term }),
            // `shape` already moved: trim the index to match it, from the back for a truncation,
            // from the front for a compaction.
            Record::Truncate { .. } => self.locs.truncate(self.live_len()),
            Record::Compact { .. } => {
                let excess = self.locs.len() - self.live_len();
                self.locs.drain(..excess);
            }
            Record::Meta { key, value } => {
                self.metas.insert(*key, value.clone());
            }
        }
        debug_assert_eq!(self.locs.len(), self.live_len(), "the index holds exactly the live entries");
    }

    fn live_len(&self) -> usize {
        match (self.shape.first, self.shape.last) {
            (Some(first), Some(last)) => (last - first + 1) as usize,
            _ => 0,
        }
    }

    /// Make `batch` durable with one write and one fsync. Returns once it is durable.
    pub fn append(&mut self, batch: &Batch) -> Result<(), WalError> {
        self.append_records(batch.records(), true)?;
        if batch.records().iter().any(|r| matches!(r, Record::Compact { .. })) {
            self.remove_dead_segments()?;
        }
        Ok(())
    }

    /// Write `batch` without an fsync: it survives a process kill (page cache) and may be lost, as a
    /// whole suffix of unsynced batches, on power loss. [`Wal::sync`] or a later [`Wal::append`]
    /// makes it durable.
    pub fn append_unsynced(&mut self, batch: &Batch) -> Result<(), WalError> {
        self.append_records(batch.records(), false)
    }

    /// Make every record written so far durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        let result = self.sync_active();
        if result.is_err() {
            self.poisoned = true;
            self.discard_unsynced_tail();
        }
        result
    }

    /// After a failed write or fsync: cut the active segment back to what is known to be durable and
    /// make that length durable. A failed fsync may leave pages the kernel marked clean but never
    /// wrote (fsyncgate): a restarted process would read them from the page cache as if they were
    /// durable and append after them, and a later power loss would turn them into a hole in the
    /// middle of the log, which recovery must refuse as corruption (D5). Nothing past `synced_len`
    /// was acknowledged. Shrinking is not a retry of the failed fsync: the next fsync only has to
    /// make the new length durable. If this fails too, the node stops all the same.
    fn discard_unsynced_tail(&mut self) {
        if failpoint::canary(&*self.fs, "keep-bytes-after-failed-fsync") {
            return;
        }
        let Some(seg) = self.active.and_then(|s| self.segments.get_mut(&s)) else { return };
        let cut = seg.file.set_len(seg.synced_len).and_then(|()| seg.file.sync());
        match cut {
            Ok(()) => {
                tracing::warn!(
                    path = %seg.path.display(),
                    synced_len = seg.synced_len,
                    dropped_bytes = seg.len.saturating_sub(seg.synced_len),
                    "write or fsync failed: cut the segment back to its durable length"
                );
                seg.len = seg.synced_len;
            }
            Err(e) => tracing::error!(
                path = %seg.path.display(),
                error = %e,
                "write or fsync failed, and cutting the segment back to its durable length failed too"
            ),
        }
    }

    fn sync_active(&mut self) -> Result<(), WalError> {
        if let Some(seg) = self.active.and_then(|s| self.segments.get_mut(&s))
            && seg.synced_len < seg.len
        {
            if self.opts.failpoints {
                failpoint::hit(&*self.fs, "wal.sync").map_err(io_err(&seg.path))?;
            }
            // Unsynced appends become durable (and acknowledged) here.
            seg.file.sync().map_err(io_err(&seg.path))?;
            seg.synced_len = seg.len;
        }
        Ok(())
    }

    fn append_records(&mut self, records: &[Record], sync: bool) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        if self.opts.recovery.is_read_only() {
            return Err(WalError::ReadOnly);
        }
        if let Some(from) = self.skip_entries_from.take() {
            // The first write after opening past damage records durably, ahead of anything else,
            // that the entries from the damage on are gone: every later open (which finds the same
            // damage) then reads what follows as the log's continuation.
            let mut sealed = vec![Record::Truncate { from: from.max(self.shape.floor) }];
            sealed.extend_from_slice(records);
            return self.append_records(&sealed, sync);
        }
        if records.is_empty() {
            return Ok(());
        }
        // Validate the whole batch before writing a byte.
        let mut shape = self.shape;
        for r in records {
            shape.step(r).map_err(|reason| WalError::InvalidArgument(reason.to_string()))?;
            if frame_len(r) - FRAME_HEADER_LEN > MAX_PAYLOAD_BYTES as usize {
                return Err(WalError::InvalidArgument(format!(
                    "record {r} exceeds {MAX_PAYLOAD_BYTES} bytes"
                )));
            }
        }
        let result = self.write_batch(records, sync);
        if result.is_err() {
            // A failed write or fsync leaves the file in an unknown state: never write to it again.
            self.poisoned = true;
            self.discard_unsynced_tail();
        }
        result
    }

    fn write_batch(&mut self, records: &[Record], sync: bool) -> Result<(), WalError> {
        let needs_roll = match self.active.and_then(|s| self.segments.get(&s)) {
            None => true,
            Some(seg) => seg.len >= self.opts.segment_size_bytes,
        };
        let mut carry: Vec<Record> = Vec::new();
        if needs_roll {
            self.roll()?;
            // Restate what compaction of older segments must not lose.
            if self.shape.floor > 0 {
                carry.push(Record::Compact { first_index: self.shape.floor });
            }
            for (key, value) in &self.metas {
                carry.push(Record::Meta { key: *key, value: value.clone() });
            }
        }
        // Encode into a reused buffer: a fresh multi-MiB allocation per batch costs page faults.
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.reserve(carry.iter().chain(records).map(frame_len).sum());
        let seq = self.active.expect("roll() sets the active segment");
        let seg = self.segments.get_mut(&seq).expect("the active segment is in the segment map");
        let batch_start = seg.len;
        let mut offsets = Vec::with_capacity(carry.len() + records.len());
        for r in carry.iter().chain(records) {
            offsets.push(batch_start + buf.len() as u64);
            // Everything below `synced_len` is durable: for a synced log that is the batch start.
            encode_frame(&mut buf, r, seg.synced_len);
        }
        if self.opts.failpoints {
            failpoint::hit(&*self.fs, "wal.append").map_err(io_err(&seg.path))?;
        }
        seg.file.write_at(&buf, batch_start).map_err(io_err(&seg.path))?;
        seg.len += buf.len() as u64;
        if sync {
            if self.opts.failpoints {
                failpoint::hit(&*self.fs, "wal.sync").map_err(io_err(&seg.path))?;
            }
            // The batch is acknowledged only once it is on the media (D1).
            seg.file.sync().map_err(io_err(&seg.path))?;
            seg.synced_len = seg.len;
        }
        if buf.capacity() <= SCRATCH_KEEP_BYTES {
            self.scratch = buf;
        }
        for (r, offset) in carry.iter().chain(records).zip(offsets) {
            self.shape.step(r).expect("the batch was validated before it was written");
            self.apply(seq, offset, r);
        }
        Ok(())
    }

    /// Start a new segment: `<seq>.wal.tmp` with its header, fsync, rename, fsync the directory.
    fn roll(&mut self) -> Result<(), WalError> {
        // Only the last segment may hold unsynced bytes: recovery treats damage anywhere else as
        // corruption.
        self.sync_active()?;
        let seq = match self.segments.keys().next_back() {
            None => 1,
            Some(s) => s
                .checked_add(1)
                .ok_or_else(|| WalError::InvalidArgument("segment sequence numbers are exhausted".into()))?,
        };
        let path = self.dir.join(segment_name(seq));
        let tmp = tmp_path(&path);
        let mut file = self.fs.open(&tmp, OpenOptions::create_truncate()).map_err(io_err(&tmp))?;
        file.write_at(&encode_segment_header(seq), 0).map_err(io_err(&tmp))?;
        // The header must be durable before the segment's name exists, so a named segment always
        // has a valid header.
        file.sync().map_err(io_err(&tmp))?;
        self.fs.rename(&tmp, &path).map_err(io_err(&path))?;
        // The name must be durable before a record in it is acknowledged.
        self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        drop(file);
        // Reopen under the final name so error messages and reads name the real file.
        let file = self.fs.open(&path, OpenOptions::read_write()).map_err(io_err(&path))?;
        let len = SEGMENT_HEADER_LEN as u64;
        self.segments.insert(seq, Segment { path, file, len, synced_len: len });
        self.active = Some(seq);
        Ok(())
    }

    /// Remove every entry with index >= `from` (durably). Shorthand for a batch with one truncate.
    pub fn truncate_from(&mut self, from: u64) -> Result<(), WalError> {
        self.append_records(&[Record::Truncate { from }], true)
    }

    /// Discard entries below `first_index`: write a compact record (durably), then remove whole
    /// segments that hold no live entry, oldest first, then fsync the directory once.
    pub fn compact(&mut self, first_index: u64) -> Result<(), WalError> {
        if first_index <= self.shape.floor {
            return Ok(());
        }
        self.append_records(&[Record::Compact { first_index }], true)?;
        self.remove_dead_segments()
    }

    /// Remove, oldest first, the segments that hold no live entry (never the active one), then fsync
    /// the directory once.
    fn remove_dead_segments(&mut self) -> Result<(), WalError> {
        let active = self.active.expect("a durable compact record sets the active segment");
        let keep_from = self.locs.front().map_or(active, |l| l.seq.min(active));
        let doomed: Vec<u64> = self.segments.range(..keep_from).map(|(s, _)| *s).collect();
        if doomed.is_empty() {
            return Ok(());
        }
        for seq in doomed {
            if let Some(seg) = self.segments.remove(&seq) {
                drop(seg.file);
                self.fs.remove_file(&seg.path).map_err(io_err(&seg.path))?;
            }
        }
        // Removals become durable together; if they do not, the segments come back after a power
        // loss, which is harmless: the compact record already discards their entries.
        self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        Ok(())
    }

    /// Index of the first live entry.
    pub fn first_index(&self) -> Option<u64> {
        self.shape.first
    }

    /// Index of the last live entry.
    pub fn last_index(&self) -> Option<u64> {
        self.shape.last
    }

    /// Entries below this index were compacted away.
    pub fn compacted_below(&self) -> u64 {
        self.shape.floor
    }

    /// The term of a live entry.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.loc(index).map(|l| l.term)
    }

    /// A meta value.
    pub fn meta(&self, key: u16) -> Option<&[u8]> {
        self.metas.get(&key).map(Vec::as_slice)
    }

    /// All meta values.
    pub fn metas(&self) -> &BTreeMap<u16, Vec<u8>> {
        &self.metas
    }

    /// Segment files currently in use, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.values().map(|s| s.path.clone()).collect()
    }

    /// Has a failed write or fsync poisoned this WAL?
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn loc(&self, index: u64) -> Option<Loc> {
        let first = self.shape.first?;
        let i = usize::try_from(index.checked_sub(first)?).ok()?;
        self.locs.get(i).copied()
    }

    /// Read one entry back from disk, re-checking its checksums.
    pub fn entry(&self, index: u64) -> Result<Entry, WalError> {
        let unavailable = || WalError::Unavailable { index, first: self.shape.first, last: self.shape.last };
        let loc = self.loc(index).ok_or_else(unavailable)?;
        let seg = self.segments.get(&loc.seq).ok_or_else(unavailable)?;
        let mut header = [0u8; FRAME_HEADER_LEN];
        seg.file.read_exact_at(&mut header, loc.offset).map_err(io_err(&seg.path))?;
        let corrupt = |reason| WalError::Corrupt { path: seg.path.clone(), offset: loc.offset, reason };
        // Trust the length only once the header checksum holds (bit rot since open must not make us
        // allocate a bogus length).
        let stored = be_u32(&header, 16);
        if crc32c::crc32c(&header[0..16]) != stored {
            return Err(corrupt(CorruptReason::Frame(FrameProblem::HeaderChecksum)));
        }
        let payload_len = be_u32(&header, 0).min(MAX_PAYLOAD_BYTES);
        let frame = seg
            .file
            .read_exact_vec_at(FRAME_HEADER_LEN + payload_len as usize, loc.offset)
            .map_err(io_err(&seg.path))?;
        match decode_frame_at(&frame, 0, loc.offset) {
            Ok(Frame { record: Record::Entry(e), .. }) if e.index == index => Ok(e),
            Ok(Frame { record: Record::Entry(e), .. }) => {
                Err(corrupt(CorruptReason::IndexMismatch { expected: index, found: e.index }))
            }
            Ok(_) => Err(corrupt(CorruptReason::Frame(FrameProblem::BadRecord {
                kind: "entry",
                detail: "the index points at a record of another kind",
            }))),
            Err(p) => Err(corrupt(CorruptReason::Frame(p))),
        }
    }

    /// Entries `lo..hi` (replay from an index), stopping early once `max_bytes` of data is collected
    /// (at least one entry is always returned when `lo < hi`).
    pub fn entries(&self, lo: u64, hi: u64, max_bytes: Option<u64>) -> Result<Vec<Entry>, WalError> {
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in lo..hi {
            let e = self.entry(index)?;
            size += e.data.len() as u64;
            out.push(e);
            if max_bytes.is_some_and(|m| size >= m) {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::RealFs;
    use std::sync::Arc;

    fn open(dir: &Path) -> (Wal, RecoveryReport) {
        Wal::open(Arc::new(RealFs::new()), dir, WalOptions::default()).expect("open WAL")
    }

    #[test]
    fn shape_rules() {
        let mut s = Shape::default();
        let entry = |i| Record::Entry(Entry { index: i, term: 1, data: vec![] });
        s.step(&entry(5)).expect("an empty log starts anywhere above the floor");
        s.step(&entry(6)).expect("consecutive");
        assert!(s.step(&entry(8)).is_err());
        s.step(&Record::Truncate { from: 6 }).expect("truncate");
        assert_eq!((s.first, s.last), (Some(5), Some(5)));
        s.step(&Record::Compact { first_index: 10 }).expect("compact past the end empties the log");
        assert_eq!((s.first, s.last, s.floor), (None, None, 10));
        assert!(s.step(&entry(9)).is_err(), "below the floor");
        s.step(&entry(10)).expect("at the floor");
    }

    #[test]
    fn append_read_truncate_compact_reopen() -> Result<(), WalError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut wal, report) = open(dir.path());
        assert_eq!(report.segments, 0);
        let mut b = Batch::new();
        for i in 1..=10 {
            b.entry(i, 1, vec![i as u8; i as usize]);
        }
        b.set_meta(1, b"hard".to_vec());
        wal.append(&b)?;
        wal.append(Batch::new().truncate_from(8).entry(8, 2, b"new8".to_vec()))?;
        assert_eq!(wal.last_index(), Some(8));
        assert_eq!(wal.entry(8)?.data, b"new8");
        assert_eq!(wal.term(7), Some(1));
        wal.compact(4)?;
        assert_eq!(wal.first_index(), Some(4));
        assert!(matches!(wal.entry(3), Err(WalError::Unavailable { .. })));
        assert!(matches!(wal.append(Batch::new().entry(20, 2, vec![])), Err(WalError::InvalidArgument(_))));
        drop(wal);
        let (wal, report) = open(dir.path());
        assert_eq!(report.repaired, None);
        assert_eq!((wal.first_index(), wal.last_index()), (Some(4), Some(8)));
        assert_eq!(wal.meta(1), Some(&b"hard"[..]));
        let got: Vec<u64> = wal.entries(4, 9, None)?.into_iter().map(|e| e.index).collect();
        assert_eq!(got, vec![4, 5, 6, 7, 8]);
        assert_eq!(wal.entries(4, 9, Some(1))?.len(), 1);
        Ok(())
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.wal"), None);
    }
}
