//! The WAL's bytes: segment header, frame, record payloads (documented in `docs/formats.md`).
//!
//! All integers are big-endian. Checksums are CRC32C (Castagnoli).
//!
//! ```text
//! segment header (32 bytes)
//!   0  magic        8  "DURAKVWL"
//!   8  version      2  1
//!  10  header_len   2  32
//!  12  seq          8  segment sequence number (must match the file name)
//!  20  reserved     8  zero
//!  28  header_crc   4  crc32c(bytes 0..28)
//!
//! frame (24-byte header + payload)
//!   0  payload_len  4  at most MAX_PAYLOAD_BYTES
//!   4  kind         1  1 entry, 2 truncate, 3 meta, 4 compact
//!   5  flags        1  zero
//!   6  reserved     2  zero
//!   8  durable_upto 8  segment offset below which every byte was fsynced when this frame was written
//!  16  header_crc   4  crc32c(bytes 0..16)
//!  20  payload_crc  4  crc32c(payload)
//!  24  payload      payload_len bytes
//! ```

use std::fmt;

use crate::codec::{be_u16, be_u32, be_u64};

/// The segment magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"DURAKVWL";
/// The only segment format version this build reads and writes.
pub const SEGMENT_VERSION: u16 = 1;
/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 24;
/// The largest payload a frame may carry (1 GiB). Far above the largest raft entry a node proposes
/// (`limits::MAX_ENTRY_BYTES`, checked at compile time); kept at 1 GiB so a log written by an earlier
/// build, whose entries could be larger, still reads.
pub const MAX_PAYLOAD_BYTES: u32 = 1 << 30;

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_META: u8 = 3;
const KIND_COMPACT: u8 = 4;

/// A raft log entry as the WAL stores it. `data` is opaque to the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

/// One WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A log entry; must follow the previous entry's index (or start a log that is empty).
    Entry(Entry),
    /// Remove every entry with index >= `from` (a raft log conflict).
    Truncate { from: u64 },
    /// Set a small named value (hard state, conf state, …); the latest write of a key wins.
    Meta { key: u16, value: Vec<u8> },
    /// Discard every entry below `first_index`; entries may then start no lower.
    Compact { first_index: u64 },
}

impl Record {
    fn kind(&self) -> u8 {
        match self {
            Record::Entry(_) => KIND_ENTRY,
            Record::Truncate { .. } => KIND_TRUNCATE,
            Record::Meta { .. } => KIND_META,
            Record::Compact { .. } => KIND_COMPACT,
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Record::Entry(e) => 16 + e.data.len(),
            Record::Truncate { .. } | Record::Compact { .. } => 8,
            Record::Meta { value, .. } => 2 + value.len(),
        }
    }
}

/// What is wrong with a segment header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    #[error("segment is shorter than its {SEGMENT_HEADER_LEN}-byte header ({0} bytes)")]
    Short(usize),
    #[error("bad segment magic")]
    BadMagic,
    #[error("unsupported segment version {0}")]
    UnsupportedVersion(u16),
    #[error("bad segment header length {0}")]
    BadLength(u16),
    #[error("segment header checksum mismatch")]
    Checksum,
    #[error("segment header says sequence {found}, file name says {expected}")]
    SeqMismatch { expected: u64, found: u64 },
}

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameProblem {
    #[error("file ends inside a frame header ({available} of {FRAME_HEADER_LEN} bytes)")]
    ShortHeader { available: usize },
    #[error("frame header checksum mismatch")]
    HeaderChecksum,
    #[error("frame payload length {0} exceeds the maximum")]
    TooLong(u32),
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("reserved frame bits are set")]
    Reserved,
    #[error("frame claims bytes up to {durable_upto} were durable, which is not before the frame")]
    BadDurableUpto { durable_upto: u64 },
    #[error("file ends inside a record ({available} of {len} payload bytes)")]
    ShortPayload { available: usize, len: u32 },
    #[error("record checksum mismatch")]
    PayloadChecksum,
    #[error("malformed {kind} record: {detail}")]
    BadRecord { kind: &'static str, detail: &'static str },
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub offset: u64,
    pub end: u64,
    pub durable_upto: u64,
    pub record: Record,
}

/// Encode a segment header.
pub fn encode_segment_header(seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&SEGMENT_VERSION.to_be_bytes());
    h[10..12].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_be_bytes());
    h[12..20].copy_from_slice(&seq.to_be_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_be_bytes());
    h
}

/// Decode and check a segment header; returns its sequence number.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, HeaderProblem> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderProblem::Short(bytes.len()));
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(HeaderProblem::BadMagic);
    }
    if crc32c::crc32c(&bytes[0..28]) != be_u32(bytes, 28) {
        return Err(HeaderProblem::Checksum);
    }
    let version = be_u16(bytes, 8);
    if version != SEGMENT_VERSION {
        return Err(HeaderProblem::UnsupportedVersion(version));
    }
    let len = be_u16(bytes, 10);
    if usize::from(len) != SEGMENT_HEADER_LEN {
        return Err(HeaderProblem::BadLength(len));
    }
    Ok(be_u64(bytes, 12))
}

/// Append one frame for `record` to `out`.
pub fn encode_frame(out: &mut Vec<u8>, record: &Record, durable_upto: u64) {
    let start = out.len();
    out.resize(start + FRAME_HEADER_LEN, 0);
    match record {
        Record::Entry(e) => {
            out.extend_from_slice(&e.index.to_be_bytes());
            out.extend_from_slice(&e.term.to_be_bytes());
            out.extend_from_slice(&e.data);
        }
        Record::Truncate { from } => out.extend_from_slice(&from.to_be_bytes()),
        Record::Meta { key, value } => {
            out.extend_from_slice(&key.to_be_bytes());
            out.extend_from_slice(value);
        }
        Record::Compact { first_index } => out.extend_from_slice(&first_index.to_be_bytes()),
    }
    let payload_len = out.len() - start - FRAME_HEADER_LEN;
    debug_assert_eq!(payload_len, record.payload_len(), "payload length matches the record");
    let payload_crc = crc32c::crc32c(&out[start + FRAME_HEADER_LEN..]);
    let h = &mut out[start..start + FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&(payload_len as u32).to_be_bytes());
    h[4] = record.kind();
    h[8..16].copy_from_slice(&durable_upto.to_be_bytes());
    let header_crc = crc32c::crc32c(&h[0..16]);
    h[16..20].copy_from_slice(&header_crc.to_be_bytes());
    h[20..24].copy_from_slice(&payload_crc.to_be_bytes());
}

/// The encoded size of a record's frame.
pub fn frame_len(record: &Record) -> usize {
    FRAME_HEADER_LEN + record.payload_len()
}

/// Check a frame header at `offset` (within a segment of `buf.len()` bytes). Returns
/// `(payload_len, kind, durable_upto)`.
fn check_frame_header(buf: &[u8], offset: usize, file_offset: u64) -> Result<(u32, u8, u64), FrameProblem> {
    let available = buf.len().saturating_sub(offset);
    if available < FRAME_HEADER_LEN {
        return Err(FrameProblem::ShortHeader { available });
    }
    let h = &buf[offset..offset + FRAME_HEADER_LEN];
    if crc32c::crc32c(&h[0..16]) != be_u32(h, 16) {
        return Err(FrameProblem::HeaderChecksum);
    }
    let len = be_u32(h, 0);
    if len > MAX_PAYLOAD_BYTES {
        return Err(FrameProblem::TooLong(len));
    }
    let kind = h[4];
    if !(KIND_ENTRY..=KIND_COMPACT).contains(&kind) {
        return Err(FrameProblem::UnknownKind(kind));
    }
    if h[5] != 0 || h[6] != 0 || h[7] != 0 {
        return Err(FrameProblem::Reserved);
    }
    let durable_upto = be_u64(h, 8);
    if durable_upto > file_offset || durable_upto < SEGMENT_HEADER_LEN as u64 {
        return Err(FrameProblem::BadDurableUpto { durable_upto });
    }
    Ok((len, kind, durable_upto))
}

/// Decode the frame at `offset` of a segment image. Never panics, whatever the bytes.
pub fn decode_frame(buf: &[u8], offset: usize) -> Result<Frame, FrameProblem> {
    decode_frame_at(buf, offset, offset as u64)
}

/// Decode the frame at `offset` of `buf`, where `buf[offset]` sits at `file_offset` in its segment
/// (for a frame read back on its own).
pub fn decode_frame_at(buf: &[u8], offset: usize, file_offset: u64) -> Result<Frame, FrameProblem> {
    decode_frame_with(buf, offset, file_offset, true)
}

/// [`decode_frame_at`]; without `entry_data`, an entry comes back with an empty `data` (its
/// checksum is still verified over the whole payload).
fn decode_frame_with(
    buf: &[u8],
    offset: usize,
    file_offset: u64,
    entry_data: bool,
) -> Result<Frame, FrameProblem> {
    let (len, kind, durable_upto) = check_frame_header(buf, offset, file_offset)?;
    let body = offset + FRAME_HEADER_LEN;
    let available = buf.len() - body;
    if (len as usize) > available {
        return Err(FrameProblem::ShortPayload { available, len });
    }
    let payload = &buf[body..body + len as usize];
    if crc32c::crc32c(payload) != be_u32(buf, offset + 20) {
        return Err(FrameProblem::PayloadChecksum);
    }
    Ok(Frame {
        offset: file_offset,
        end: file_offset + (FRAME_HEADER_LEN + len as usize) as u64,
        durable_upto,
        record: parse_record(kind, payload, entry_data)?,
    })
}

fn parse_record(kind: u8, p: &[u8], entry_data: bool) -> Result<Record, FrameProblem> {
    let exact8 = |name| {
        if p.len() == 8 {
            Ok(be_u64(p, 0))
        } else {
            Err(FrameProblem::BadRecord { kind: name, detail: "payload must be 8 bytes" })
        }
    };
    match kind {
        KIND_ENTRY => {
            if p.len() < 16 {
                return Err(FrameProblem::BadRecord { kind: "entry", detail: "payload under 16 bytes" });
            }
            let index = be_u64(p, 0);
            if index == 0 {
                return Err(FrameProblem::BadRecord { kind: "entry", detail: "index 0" });
            }
            let data = if entry_data { p[16..].to_vec() } else { Vec::new() };
            Ok(Record::Entry(Entry { index, term: be_u64(p, 8), data }))
        }
        KIND_TRUNCATE => Ok(Record::Truncate { from: exact8("truncate")? }),
        KIND_META => {
            if p.len() < 2 {
                return Err(FrameProblem::BadRecord { kind: "meta", detail: "payload under 2 bytes" });
            }
            Ok(Record::Meta { key: be_u16(p, 0), value: p[2..].to_vec() })
        }
        KIND_COMPACT => Ok(Record::Compact { first_index: exact8("compact")? }),
        other => Err(FrameProblem::UnknownKind(other)),
    }
}

/// A whole segment image, decoded as far as it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub seq: u64,
    pub frames: Vec<Frame>,
    /// Where decoding stopped before the end of the image, and why.
    pub stopped: Option<(u64, FrameProblem)>,
}

/// Decode a segment image: header, then frames until the end or the first bad frame. Never panics.
pub fn scan_segment(buf: &[u8]) -> Result<SegmentScan, HeaderProblem> {
    scan_segment_with(buf, true)
}

/// [`scan_segment`] for opening a log, which indexes entries and never reads their data: every
/// entry comes back with an empty `data`, so an open does not copy each segment a second time
/// (the simulator reopens logs at every restart). Checksums are verified exactly as there.
pub fn scan_segment_index(buf: &[u8]) -> Result<SegmentScan, HeaderProblem> {
    scan_segment_with(buf, false)
}

fn scan_segment_with(buf: &[u8], entry_data: bool) -> Result<SegmentScan, HeaderProblem> {
    let seq = decode_segment_header(buf)?;
    let mut frames = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    while offset < buf.len() {
        match decode_frame_with(buf, offset, offset as u64, entry_data) {
            Ok(frame) => {
                offset = frame.end as usize;
                frames.push(frame);
            }
            Err(problem) => return Ok(SegmentScan { seq, frames, stopped: Some((offset as u64, problem)) }),
        }
    }
    Ok(SegmentScan { seq, frames, stopped: None })
}

/// The first valid frame after `bad` written when the bytes at `bad` were already durable (its
/// `durable_upto` lies past `bad`): proof that those bytes had been fsynced.
pub fn later_durable_after(buf: &[u8], bad: usize) -> Option<u64> {
    let last = buf.len().checked_sub(FRAME_HEADER_LEN)?;
    (bad + 1..=last).find_map(|at| {
        // This runs at every byte offset to the end of the segment (a torn tail is mostly zeros):
        // the header fields any answer needs are checked before any checksum. A frame failing them
        // would not decode, or not have the `durable_upto` asked for, so the answer is the same.
        let h = &buf[at..at + FRAME_HEADER_LEN];
        let durable_upto = be_u64(h, 8);
        let plausible = (KIND_ENTRY..=KIND_COMPACT).contains(&h[4])
            && h[5..8] == [0, 0, 0]
            && durable_upto > bad as u64
            && durable_upto <= at as u64;
        match plausible.then(|| decode_frame(buf, at)) {
            Some(Ok(f)) if f.durable_upto > bad as u64 => Some(at as u64),
            _ => None,
        }
    })
}

/// Is the frame at `offset` damaged by exactly one flipped bit, where a torn write could not have
/// produced that damage? Returns the offset of the bad byte.
///
/// A crash changes *all* unsynced bytes of a sector at once (zeros for a dropped sector, random bytes
/// for a torn one), never a lone bit. So a single-bit error is bit rot when the frame's own bytes in
/// that sector are at least 4 and not all zero (a random 4-byte piece is within one bit of the
/// original with odds of 33 in 2^32), or when another frame of the same unsynced stretch (same
/// `durable_upto`) that shares the sector decodes cleanly (the sector was written intact). `prev` is
/// the valid frame just before.
pub fn single_bit_rot(buf: &[u8], offset: usize, sector: usize, prev: Option<&Frame>) -> Option<u64> {
    let h = buf.get(offset..offset.checked_add(FRAME_HEADER_LEN)?)?;
    let header_ok = crc32c::crc32c(&h[0..16]) == be_u32(h, 16);
    let body = offset + FRAME_HEADER_LEN;
    let (pos, frame_end, durable_upto) = if header_ok {
        let len = be_u32(h, 0) as usize;
        let payload = buf.get(body..body.checked_add(len)?)?;
        let syndrome = crc32c::crc32c(payload) ^ be_u32(h, 20);
        if syndrome == 0 {
            return None;
        }
        let pos = if syndrome.count_ones() == 1 {
            // The stored payload checksum itself lost a bit.
            offset + 20 + (3 - syndrome.trailing_zeros() as usize / 8)
        } else {
            body + locate_single_bit(payload, syndrome)?
        };
        (pos, body + len, be_u64(h, 8))
    } else {
        // Try each bit of the checked header bytes; the corrected header must then also validate
        // its payload, so a random header cannot pass by chance.
        let mut fixed = [0u8; FRAME_HEADER_LEN];
        fixed.copy_from_slice(h);
        let mut found = None;
        for bit in 0..20 * 8 {
            fixed[bit / 8] ^= 1 << (bit % 8);
            if crc32c::crc32c(&fixed[0..16]) == be_u32(&fixed, 16) {
                let len = be_u32(&fixed, 0) as usize;
                if let Some(payload) = body.checked_add(len).and_then(|end| buf.get(body..end))
                    && crc32c::crc32c(payload) == be_u32(&fixed, 20)
                {
                    found = Some((offset + bit / 8, body + len, be_u64(&fixed, 8)));
                }
            }
            fixed[bit / 8] ^= 1 << (bit % 8);
            if found.is_some() {
                break;
            }
        }
        found?
    };
    let sector_start = pos / sector * sector;
    let sector_end = sector_start + sector;
    let piece = &buf[sector_start.max(offset)..sector_end.min(frame_end)];
    let piece_evidence = piece.len() >= 4 && piece.iter().any(|&b| b != 0);
    let prev_evidence = prev.is_some_and(|p| p.durable_upto == durable_upto && offset > sector_start);
    let next_evidence = frame_end < sector_end
        && matches!(decode_frame(buf, frame_end), Ok(next) if next.durable_upto == durable_upto);
    (piece_evidence || prev_evidence || next_evidence).then_some(pos as u64)
}

/// CRC32C (reflected 0x82F63B78) table for advancing the register by one zero byte.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// Find the byte offset in `data` of a single flipped bit whose CRC32C syndrome is `syndrome`.
/// Uses linearity: flipping bit b of byte j changes the CRC by the register a lone `1 << b` leaves
/// after the remaining `len - 1 - j` zero bytes.
fn locate_single_bit(data: &[u8], syndrome: u32) -> Option<usize> {
    let n = data.len();
    let mut v = [0u32; 8];
    for (b, slot) in v.iter_mut().enumerate() {
        *slot = CRC_TABLE[1usize << b];
    }
    for k in 0..n {
        if v.contains(&syndrome) {
            return Some(n - 1 - k);
        }
        for slot in &mut v {
            *slot = (*slot >> 8) ^ CRC_TABLE[(*slot & 0xFF) as usize];
        }
    }
    None
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Entry(e) => write!(f, "entry index={} term={} bytes={}", e.index, e.term, e.data.len()),
            Record::Truncate { from } => write!(f, "truncate from={from}"),
            Record::Meta { key, value } => write!(f, "meta key={key} bytes={}", value.len()),
            Record::Compact { first_index } => write!(f, "compact first_index={first_index}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failure guarded against: the fast path of `later_durable_after` (field checks before any
    /// checksum) changing its answer, and so how a damaged tail is classified. Invariant: it answers
    /// exactly as decoding at every offset does, on segments with appends of several durable marks
    /// damaged at random places (bytes rewritten, zeroed, or cut).
    #[test]
    fn later_durable_after_answers_as_decoding_every_offset_does() {
        use rand::{Rng, SeedableRng};
        let reference = |buf: &[u8], bad: usize| -> Option<u64> {
            let last = buf.len().checked_sub(FRAME_HEADER_LEN)?;
            (bad + 1..=last).find_map(|at| match decode_frame(buf, at) {
                Ok(f) if f.durable_upto > bad as u64 => Some(at as u64),
                _ => None,
            })
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut found = 0;
        for _ in 0..300 {
            let mut buf = encode_segment_header(1).to_vec();
            let mut durable = buf.len() as u64;
            for i in 0..rng.random_range(1..12u64) {
                let len = rng.random_range(0..200usize);
                let e = Entry { index: i + 1, term: 2, data: (0..len).map(|_| rng.random()).collect() };
                encode_frame(&mut buf, &Record::Entry(e), durable);
                if rng.random_bool(0.4) {
                    durable = buf.len() as u64;
                }
            }
            let at = rng.random_range(SEGMENT_HEADER_LEN..buf.len());
            match rng.random_range(0..3) {
                0 => buf[at] ^= 1 << rng.random_range(0..8),
                1 => {
                    let end = (at + rng.random_range(1..64)).min(buf.len());
                    buf[at..end].fill(0);
                }
                _ => buf.truncate(at + 1),
            }
            let bad = rng.random_range(SEGMENT_HEADER_LEN..buf.len());
            let want = reference(&buf, bad);
            found += usize::from(want.is_some());
            assert_eq!(later_durable_after(&buf, bad), want, "bad at {bad} of {}", buf.len());
        }
        assert!(found > 20, "the cases include later durable frames ({found})");
    }

    fn segment(records: &[Record]) -> Vec<u8> {
        let mut buf = encode_segment_header(7).to_vec();
        let start = buf.len() as u64;
        for r in records {
            encode_frame(&mut buf, r, start);
        }
        buf
    }

    fn entry(index: u64, len: usize) -> Record {
        Record::Entry(Entry { index, term: 3, data: (0..len).map(|i| (i * 31 + 7) as u8).collect() })
    }

    #[test]
    fn round_trip_every_kind() {
        let records = vec![
            entry(1, 0),
            entry(2, 100),
            Record::Truncate { from: 2 },
            Record::Meta { key: 9, value: b"hs".to_vec() },
            Record::Compact { first_index: 1 },
        ];
        let buf = segment(&records);
        let scan = scan_segment(&buf).expect("valid header");
        assert_eq!(scan.seq, 7);
        assert_eq!(scan.stopped, None);
        let got: Vec<Record> = scan.frames.into_iter().map(|f| f.record).collect();
        assert_eq!(got, records);
        assert_eq!(frame_len(&records[1]), FRAME_HEADER_LEN + 116);
    }

    #[test]
    fn the_index_scan_is_the_full_scan_without_entry_data() {
        let records = vec![entry(1, 0), entry(2, 100), Record::Meta { key: 9, value: b"hs".to_vec() }];
        let mut buf = segment(&records);
        let full = scan_segment(&buf).expect("valid header");
        let mut expected = full.clone();
        for f in &mut expected.frames {
            if let Record::Entry(e) = &mut f.record {
                e.data.clear();
            }
        }
        assert_eq!(scan_segment_index(&buf), Ok(expected));
        // The payload checksum still covers the data it does not copy.
        let last = buf.len() - 1;
        buf[last - 10] ^= 1;
        assert_eq!(
            scan_segment_index(&buf),
            scan_segment(&buf).map(|mut s| {
                for f in &mut s.frames {
                    if let Record::Entry(e) = &mut f.record {
                        e.data.clear();
                    }
                }
                s
            })
        );
    }

    #[test]
    fn header_problems_are_typed() {
        let good = encode_segment_header(1);
        assert_eq!(decode_segment_header(&good[..10]), Err(HeaderProblem::Short(10)));
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(decode_segment_header(&bad), Err(HeaderProblem::BadMagic));
        let mut bad = good;
        bad[13] ^= 1;
        assert_eq!(decode_segment_header(&bad), Err(HeaderProblem::Checksum));
        let mut v2 = good;
        v2[8..10].copy_from_slice(&2u16.to_be_bytes());
        let crc = crc32c::crc32c(&v2[0..28]);
        v2[28..32].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode_segment_header(&v2), Err(HeaderProblem::UnsupportedVersion(2)));
    }

    #[test]
    fn short_and_corrupt_frames_are_typed() {
        let buf = segment(&[entry(1, 50)]);
        let cut = &buf[..buf.len() - 5];
        assert!(matches!(decode_frame(cut, SEGMENT_HEADER_LEN), Err(FrameProblem::ShortPayload { .. })));
        let cut = &buf[..SEGMENT_HEADER_LEN + 10];
        assert_eq!(decode_frame(cut, SEGMENT_HEADER_LEN), Err(FrameProblem::ShortHeader { available: 10 }));
        let mut flipped = buf.clone();
        flipped[SEGMENT_HEADER_LEN + 30] ^= 0x10;
        assert_eq!(decode_frame(&flipped, SEGMENT_HEADER_LEN), Err(FrameProblem::PayloadChecksum));
        let mut flipped = buf;
        flipped[SEGMENT_HEADER_LEN + 2] ^= 0x01;
        assert_eq!(decode_frame(&flipped, SEGMENT_HEADER_LEN), Err(FrameProblem::HeaderChecksum));
    }

    #[test]
    fn locate_single_bit_matches_brute_force() {
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let good = crc32c::crc32c(&data);
        for byte in [0usize, 1, 150, 298, 299] {
            for bit in 0..8 {
                let mut d = data.clone();
                d[byte] ^= 1 << bit;
                let syndrome = crc32c::crc32c(&d) ^ good;
                assert_eq!(locate_single_bit(&d, syndrome), Some(byte), "byte {byte} bit {bit}");
            }
        }
        // Two flipped bits are not a single-bit error.
        let mut d = data.clone();
        d[3] ^= 1;
        d[200] ^= 4;
        assert_eq!(locate_single_bit(&d, crc32c::crc32c(&d) ^ good), None);
    }

    #[test]
    fn single_bit_rot_is_recognised_anywhere_in_a_frame() {
        let buf = segment(&[entry(1, 40), entry(2, 2000), entry(3, 40)]);
        let second = decode_frame(&buf, SEGMENT_HEADER_LEN).expect("first frame").end as usize;
        let end = decode_frame(&buf, second).expect("second frame").end as usize;
        for pos in (second..end).step_by(7) {
            let mut b = buf.clone();
            b[pos] ^= 0x20;
            assert!(decode_frame(&b, second).is_err());
            assert_eq!(single_bit_rot(&b, second, 512, None), Some(pos as u64), "flip at {pos}");
        }
    }

    #[test]
    fn zeroed_or_garbage_sectors_are_not_bit_rot() {
        let buf = segment(&[entry(1, 2000)]);
        let mut zeroed = buf.clone();
        for b in &mut zeroed[1024..1536] {
            *b = 0;
        }
        assert_eq!(single_bit_rot(&zeroed, SEGMENT_HEADER_LEN, 512, None), None);
        let mut junk = buf;
        for (i, b) in junk[1024..1536].iter_mut().enumerate() {
            *b = (i * 97 + 13) as u8;
        }
        assert_eq!(single_bit_rot(&junk, SEGMENT_HEADER_LEN, 512, None), None);
    }

    #[test]
    fn later_batch_is_found_past_a_bad_frame() {
        let mut buf = encode_segment_header(1).to_vec();
        encode_frame(&mut buf, &entry(1, 10), SEGMENT_HEADER_LEN as u64);
        let second_batch = buf.len() as u64;
        encode_frame(&mut buf, &entry(2, 10), second_batch);
        let mut bad = buf.clone();
        bad[SEGMENT_HEADER_LEN + 30] ^= 0xFF;
        assert_eq!(later_durable_after(&bad, SEGMENT_HEADER_LEN), Some(second_batch));
        // Same batch: not proof of an earlier sync.
        let mut same = encode_segment_header(1).to_vec();
        encode_frame(&mut same, &entry(1, 10), SEGMENT_HEADER_LEN as u64);
        encode_frame(&mut same, &entry(2, 10), SEGMENT_HEADER_LEN as u64);
        same[SEGMENT_HEADER_LEN + 30] ^= 0xFF;
        assert_eq!(later_durable_after(&same, SEGMENT_HEADER_LEN), None);
    }
}
