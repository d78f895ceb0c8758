//! A guard for RocksDB's own write-ahead log, run before RocksDB opens it.
//!
//! RocksDB 11.8's log reader (`db/log_reader.cc`, `ReadPhysicalRecord`) answers a record header whose
//! type is one of the *recyclable* types (5–8, 11, 131) in a log that was not recycled with
//! `kBadRecord` **without consuming it**; `ReadRecord` asks again, forever (upstream
//! facebook/rocksdb#13333). The recovery mode does not matter. Such a header is exactly what a power
//! loss can leave: under `fsm_sync = "nosync"` (and between the entries of one applied batch under
//! `sync`) the tail of RocksDB's log is unsynced, and an unsynced sector may come back as garbage, whose
//! type byte is a recyclable one about once in 40. The node then spun at 100 % CPU at every start,
//! with no log line (found by `make powercut`).
//!
//! The guard reads each log as RocksDB's reader does (32 KiB blocks, 7-byte headers, trailers, a bad
//! checksum or length dropping the rest of its block) and, at the first header RocksDB would stop
//! or spin on, cuts the log there. Nothing RocksDB would have replayed is cut: a recyclable header in
//! a log that is never recycled (durakv never sets `recycle_log_file_num`) ends its replay either way
//! (as an old record, or in the loop). And only unsynced bytes can be garbage: the log is written
//! append-only and an fsync covers everything before it, so everything from a garbage header on was
//! never synced, which `NoSync` allows to be lost (the raft log re-applies it, D2).

/// RocksDB's log block size.
const BLOCK: usize = 32 << 10;
/// A record header: masked CRC32C (4), length (2), type (1).
const HEADER: usize = 7;
fn recyclable(kind: u8) -> bool {
    matches!(kind, 5..=8 | 11 | 131)
}

fn unmask(masked: u32) -> u32 {
    let rot = masked.wrapping_sub(0xa282_ead8);
    rot.rotate_left(15)
}

/// The block size the reader reads: a log is scanned one block at a time, never held whole.
pub(crate) const BLOCK_BYTES: usize = BLOCK;

/// Where in one block (the whole of it, or the log's last, shorter one) RocksDB's reader would meet
/// a header it cannot get past, or `None`. Blocks are independent: a bad checksum or length drops
/// the rest of its block and the reader goes on at the next.
pub(crate) fn stuck_in_block(block: &[u8]) -> Option<usize> {
    let mut at = 0;
    while block.len() - at >= HEADER {
        let header = &block[at..];
        let len = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let kind = header[6];
        if recyclable(kind) {
            return Some(at);
        }
        if HEADER + len > header.len() {
            // A bad length: the reader drops the rest of the block.
            return None;
        }
        if kind == 0 && len == 0 {
            // Preallocated zeros: the reader drops the rest of the block.
            return None;
        }
        let stored = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if unmask(stored) != crc32c::crc32c(&header[6..HEADER + len]) {
            // A checksum mismatch: reported, and the rest of the block dropped.
            return None;
        }
        at += HEADER + len;
    }
    // Fewer than a header's bytes left: the block's trailer, skipped.
    None
}

/// Where RocksDB's reader would meet a header it cannot get past in the log `data` (the offset of
/// that header), or `None` when it reads the log to its end.
#[cfg(test)]
fn stuck_at(data: &[u8]) -> Option<usize> {
    data.chunks(BLOCK).enumerate().find_map(|(i, block)| stuck_in_block(block).map(|at| i * BLOCK + at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(crc: u32) -> u32 {
        crc.rotate_right(15).wrapping_add(0xa282_ead8)
    }

    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(payload);
        let mut out = mask(crc32c::crc32c(&body)).to_le_bytes().to_vec();
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Failure guarded against: a garbage sector whose first byte lands on a record boundary with a
    /// recyclable type (RocksDB spins on it forever), and the guard cutting valid records or missing
    /// a header in a later block. Invariant: `stuck_at` names exactly the first such header the reader
    /// would reach, through trailers, bad checksums and bad lengths, and nothing in a clean log.
    #[test]
    fn finds_the_header_rocksdb_would_spin_on() {
        assert_eq!(unmask(mask(0xdead_beef)), 0xdead_beef);
        let mut log = Vec::new();
        for i in 0..3u8 {
            log.extend(record(1, &[i; 100]));
        }
        assert_eq!(stuck_at(&log), None, "a clean log");
        let boundary = log.len();
        let mut garbage = log.clone();
        garbage.extend_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x10, 0x00, 6, 0xab, 0xcd]);
        assert_eq!(stuck_at(&garbage), Some(boundary));
        // A bad checksum drops the rest of its block: a recyclable header later in that block is
        // never reached, but one at the start of the next block is.
        let mut bad = log.clone();
        bad.extend_from_slice(&[0, 0, 0, 0, 3, 0, 1, 9, 9, 9]);
        bad.extend_from_slice(&[0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(stuck_at(&bad), None);
        bad.resize(BLOCK, 0);
        let next_block = bad.len();
        bad.extend_from_slice(&[1, 2, 3, 4, 0, 0, 7]);
        assert_eq!(stuck_at(&bad), Some(next_block));
        // A record ending 5 bytes before the block's end leaves a trailer the reader skips.
        let mut trailer = record(1, &vec![7; BLOCK - HEADER - 5]);
        trailer.extend_from_slice(&[5, 5, 5, 5, 5]);
        trailer.extend(record(1, b"next block"));
        assert_eq!(stuck_at(&trailer), None);
    }
}
