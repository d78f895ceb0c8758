//! Size limits that must agree with one another, all derived from one root: the peer frame limit.
//!
//! A write travels client → RESP → raft entry → raft append message → peer frame → follower's WAL. A
//! peer refuses any frame over [`MAX_FRAME_BYTES`], and raft-rs sends at least one entry per append
//! however large it is. So one entry too big for a frame is sent, refused and retransmitted forever,
//! and no later entry ever commits: the whole cluster stops taking writes. The same holds for a
//! snapshot chunk larger than a frame. Hence:
//!
//! | limit | value | derived as |
//! |---|---|---|
//! | [`MAX_FRAME_BYTES`] | 16 MiB | the root: a frame's `len` (kind + payload) above it is refused |
//! | [`MAX_COMMAND_BYTES`] | 8 MiB | half a frame: the largest encoded write one client request may propose; the RESP port refuses a bigger one before it reaches raft |
//! | [`MAX_APPEND_BATCH_BYTES`] | 1 MiB | raft's `max_size_per_msg`: entries batched into one append (beyond the first) |
//! | [`MAX_RAFT_MESSAGE_BYTES`] | just over 8 MiB | the largest encoded raft message either of the two can produce, plus [`MESSAGE_OVERHEAD_BYTES`] |
//! | [`MAX_SNAPSHOT_CHUNK_BYTES`] | 16 MiB − 30 bytes | a frame less the chunk header; `snapshot_chunk_bytes` is checked against it |
//! | [`MAX_VALUE_BYTES`] | 512 MiB | the largest value the state machine stores (APPEND builds values at apply time) |
//!
//! The relations are checked when this crate compiles (the `const` assertions below), the settings
//! that can be changed at run time are checked by [`check_snapshot_chunk_bytes`] and
//! [`check_append_batch_bytes`], and the unit tests encode worst-case messages to show the bounds hold
//! for the real encoder.
//!
//! APPEND: only the appended bytes travel in the raft entry, so the proposal is bounded by
//! [`MAX_COMMAND_BYTES`] like any write. The value it builds is known only at apply time; the state
//! machine refuses (deterministically, on every replica alike) an APPEND whose result would exceed
//! [`MAX_VALUE_BYTES`], so every stored value fits a snapshot record.

use crate::config::ConfigError;

/// The largest peer frame (its `len` field: kind byte + payload). The root of every other limit.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// A frame's kind byte, counted in `len`.
const FRAME_KIND_BYTES: usize = 1;

/// The largest encoded [`crate::fsm::Command`] (one client write) that may be proposed: half a frame,
/// leaving the rest for the raft entry and message around it with a wide margin.
pub const MAX_COMMAND_BYTES: usize = MAX_FRAME_BYTES / 2;

/// What a raft `Entry` adds around its data: type, term, index, the data's own tag and length, and
/// its 16-byte context, the request id and the leader's timestamp (49 bytes at most; the tests check
/// it).
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

/// The largest encoded raft entry this node proposes.
pub const MAX_ENTRY_BYTES: usize = MAX_COMMAND_BYTES + ENTRY_OVERHEAD_BYTES;

/// raft's `max_size_per_msg`: an append carries entries while their encoded sizes sum to at most
/// this, and always at least one.
pub const MAX_APPEND_BATCH_BYTES: u64 = 1 << 20;

/// What a raft `Message` adds around its entries: its integer fields, a context, a snapshot's
/// metadata and token (never its data, D6), and each entry's tag and length. A few hundred bytes in
/// practice (the tests encode the worst case); 4 KiB leaves room for a conf state of many members.
pub const MESSAGE_OVERHEAD_BYTES: usize = 4 << 10;

/// The encoded entries of one append. raft-rs sends either one entry (of any size up to
/// [`MAX_ENTRY_BYTES`]) or several whose sizes sum to at most [`MAX_APPEND_BATCH_BYTES`]. In the
/// message each entry also costs a tag and a length; every log entry is at least 4 bytes (term and
/// index are both at least 1) and the tag and length of an entry under 128 bytes take 2, so a batch
/// encodes to at most 1.5 times its size.
const MAX_APPEND_ENTRIES_BYTES: usize =
    max(MAX_APPEND_BATCH_BYTES as usize * 3 / 2, MAX_ENTRY_BYTES + 1 + varint_len(MAX_ENTRY_BYTES));

/// The largest encoded raft message a node of this build sends.
pub const MAX_RAFT_MESSAGE_BYTES: usize = MAX_APPEND_ENTRIES_BYTES + MESSAGE_OVERHEAD_BYTES;

/// The fixed part of a snapshot chunk's payload: index, offset, total length, CRC, last flag.
pub const CHUNK_HEADER_BYTES: usize = 8 + 8 + 8 + 4 + 1;

/// The largest snapshot chunk a frame can carry.
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = MAX_FRAME_BYTES - FRAME_KIND_BYTES - CHUNK_HEADER_BYTES;

/// The default snapshot chunk: a quarter of a frame.
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = MAX_FRAME_BYTES / 4;

/// The largest value the state machine stores, as Redis's `proto-max-bulk-len`. Writes that carry a
/// value are bounded far lower by [`MAX_COMMAND_BYTES`]; this bounds what APPEND builds.
pub const MAX_VALUE_BYTES: usize = 512 << 20;

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Bytes of a protobuf varint holding `n`.
const fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

// The relations, checked at compile time: a change to one limit that breaks another does not build.
const _: () = {
    // One raft message, whichever kind, fits one frame.
    assert!(FRAME_KIND_BYTES + MAX_RAFT_MESSAGE_BYTES <= MAX_FRAME_BYTES);
    // The largest entry is a valid WAL record (16 bytes of index and term before the entry).
    assert!(16 + MAX_ENTRY_BYTES <= crate::wal::MAX_PAYLOAD_BYTES as usize);
    // The default chunk fits a frame.
    assert!(DEFAULT_SNAPSHOT_CHUNK_BYTES <= MAX_SNAPSHOT_CHUNK_BYTES);
    // Every stored value fits a snapshot record, and every command's value is a valid value.
    assert!(MAX_VALUE_BYTES as u64 <= crate::snapshot::MAX_RECORD_FIELD_BYTES);
    assert!(MAX_COMMAND_BYTES <= MAX_VALUE_BYTES);
};

/// Check a snapshot chunk size (`RuntimeOptions::snapshot_chunk_bytes`): at least 1 byte, and small
/// enough that a chunk frame is never refused by the receiving peer.
pub fn check_snapshot_chunk_bytes(bytes: usize) -> Result<(), ConfigError> {
    if bytes == 0 || bytes > MAX_SNAPSHOT_CHUNK_BYTES {
        return Err(ConfigError::Invalid {
            field: "snapshot_chunk_bytes".into(),
            message: format!(
                "{bytes} is outside 1..={MAX_SNAPSHOT_CHUNK_BYTES} (a chunk and its header must fit one \
                 peer frame of {MAX_FRAME_BYTES} bytes)"
            ),
        });
    }
    Ok(())
}

/// Check raft's `max_size_per_msg` (`ReplicaConfig::max_size_per_msg`): a batched append must fit a
/// peer frame.
pub fn check_append_batch_bytes(bytes: u64) -> Result<(), ConfigError> {
    if bytes > MAX_APPEND_BATCH_BYTES {
        return Err(ConfigError::Invalid {
            field: "max_size_per_msg".into(),
            message: format!(
                "{bytes} is above {MAX_APPEND_BATCH_BYTES} (a batched append must fit one peer frame of \
                 {MAX_FRAME_BYTES} bytes)"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata};

    use super::*;
    use crate::transport::frame::{PeerFrame, SnapshotChunk};

    /// An entry as this node proposes one, with every integer at its widest.
    fn entry(data: Vec<u8>) -> Entry {
        Entry {
            entry_type: EntryType::EntryConfChangeV2 as i32,
            term: u64::MAX,
            index: u64::MAX,
            data,
            context: crate::clock::EntryContext { request_id: u64::MAX, stamp_ms: u64::MAX }.encode(),
            sync_log: true,
        }
    }

    /// A message with every field but its entries at its widest, a snapshot's metadata for 7 members
    /// included.
    fn widest_message(entries: Vec<Entry>) -> Message {
        let members: Vec<u64> = (u64::MAX - 7..u64::MAX).collect();
        let conf_state = ConfState {
            voters: members.clone(),
            learners: members.clone(),
            voters_outgoing: members.clone(),
            learners_next: members,
            auto_leave: true,
        };
        Message {
            msg_type: MessageType::MsgSnapshot as i32,
            to: u64::MAX,
            from: u64::MAX,
            term: u64::MAX,
            log_term: u64::MAX,
            index: u64::MAX,
            entries,
            commit: u64::MAX,
            commit_term: u64::MAX,
            snapshot: Some(Snapshot {
                data: vec![0xFF; crate::snapshot::TOKEN_LEN],
                metadata: Some(SnapshotMetadata {
                    conf_state: Some(conf_state),
                    index: u64::MAX,
                    term: u64::MAX,
                }),
            }),
            reject: true,
            reject_hint: u64::MAX,
            context: b"CAMPAIGN_TRANSFER".to_vec(),
            deprecated_priority: u64::MAX,
            priority: i64::MIN,
            request_snapshot: u64::MAX,
        }
    }

    fn frame_len(frame: PeerFrame) -> usize {
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        buf.len() - 8
    }

    #[test]
    fn an_entry_adds_at_most_its_overhead_to_the_largest_command() {
        let data = vec![7u8; MAX_COMMAND_BYTES];
        let e = entry(data);
        assert!(e.encoded_len() <= MAX_ENTRY_BYTES, "{} > {MAX_ENTRY_BYTES}", e.encoded_len());
        let m = widest_message(vec![]);
        assert!(m.encoded_len() <= MESSAGE_OVERHEAD_BYTES, "{} > {MESSAGE_OVERHEAD_BYTES}", m.encoded_len());
    }

    /// Failure guarded against: a client write raft accepts but no peer will take (the wedge).
    /// Invariant: the largest command, as an entry in the widest append, fits one frame.
    #[test]
    fn the_largest_command_in_the_widest_message_fits_one_frame() {
        let m = widest_message(vec![entry(vec![2u8; MAX_COMMAND_BYTES])]);
        assert!(m.encoded_len() <= MAX_RAFT_MESSAGE_BYTES);
        let len = frame_len(PeerFrame::Raft(Box::new(m)));
        assert!(len <= MAX_FRAME_BYTES, "a frame of {len} bytes, the limit is {MAX_FRAME_BYTES}");
    }

    /// Failure guarded against: many small entries batched into one append growing past a frame.
    /// Invariant: raft's own batching (`limit_size`) of the smallest possible entries fits one frame.
    #[test]
    fn a_batch_of_the_smallest_entries_fits_one_frame() {
        let mut entries: Vec<Entry> = (1..=(MAX_APPEND_BATCH_BYTES / 4 + 10))
            .map(|i| Entry { term: 1, index: i % 100 + 1, ..Default::default() })
            .collect();
        assert_eq!(entries[0].encoded_len(), 4, "the smallest entry the proof assumes");
        raft::util::limit_size(&mut entries, Some(MAX_APPEND_BATCH_BYTES));
        let m = widest_message(entries);
        assert!(m.encoded_len() <= MAX_RAFT_MESSAGE_BYTES, "{} > {MAX_RAFT_MESSAGE_BYTES}", m.encoded_len());
        assert!(frame_len(PeerFrame::Raft(Box::new(m))) <= MAX_FRAME_BYTES);
    }

    /// Failure guarded against: a snapshot chunk setting that makes every chunk frame too big.
    /// Invariant: the largest allowed chunk fits a frame, one byte more is refused as a setting.
    #[test]
    fn the_largest_snapshot_chunk_fits_one_frame_and_a_larger_one_is_a_config_error() {
        let chunk = SnapshotChunk {
            index: u64::MAX,
            offset: 0,
            total_len: MAX_SNAPSHOT_CHUNK_BYTES as u64,
            crc: u32::MAX,
            last: true,
            data: vec![3u8; MAX_SNAPSHOT_CHUNK_BYTES],
        };
        let mut buf = Vec::new();
        PeerFrame::SnapshotChunk(chunk).encode(&mut buf);
        assert_eq!(buf.len() - 8, MAX_FRAME_BYTES, "the largest chunk fills a frame exactly");
        assert!(PeerFrame::decode(&buf, MAX_FRAME_BYTES).is_ok_and(|f| f.is_some()));
        assert_eq!(check_snapshot_chunk_bytes(MAX_SNAPSHOT_CHUNK_BYTES), Ok(()));
        assert_eq!(check_snapshot_chunk_bytes(DEFAULT_SNAPSHOT_CHUNK_BYTES), Ok(()));
        for bad in [0, MAX_SNAPSHOT_CHUNK_BYTES + 1, 32 << 20] {
            assert!(
                matches!(check_snapshot_chunk_bytes(bad), Err(ConfigError::Invalid { field, .. }) if field == "snapshot_chunk_bytes"),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn a_batch_limit_above_the_derived_one_is_a_config_error() {
        assert_eq!(check_append_batch_bytes(0), Ok(()));
        assert_eq!(check_append_batch_bytes(MAX_APPEND_BATCH_BYTES), Ok(()));
        assert!(
            matches!(check_append_batch_bytes(MAX_APPEND_BATCH_BYTES + 1), Err(ConfigError::Invalid { field, .. }) if field == "max_size_per_msg")
        );
    }

    #[test]
    fn varint_lengths_match_protobuf() {
        for n in [0usize, 127, 128, 16_383, 16_384, MAX_ENTRY_BYTES] {
            assert_eq!(varint_len(n), prost::encoding::encoded_len_varint(n as u64), "{n}");
        }
    }
}
