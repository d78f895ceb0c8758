//! Snapshot file and token bytes (documented in `docs/formats.md`). Big-endian, CRC32C.
//!
//! ```text
//! file   := header, record*, footer
//! header := magic "DKVSNAP1" (8), version u16 = 2, header_len u32, index u64, term u64,
//!           conf_state_len u32, conf_state, node_state_len u32, node_state, clock u64,
//!           last_delete u64, [future fields]
//! record := key_len u32, value_len u32, key, value        (client keys, ascending; values stored
//!                                                           as the state machine stores them)
//! footer := crc32c u32 of every byte before it
//! token  := magic "DKVT" (4), version u8 = 1, index u64, crc u32      (17 bytes)
//! ```
//! `header_len` counts the whole header; a reader skips fields it does not know, so a newer writer can
//! add some without a version bump. Version 2 (values with their expiry header, the state machine's
//! clock) is the only one read: a version 1 file holds values without the header.

use super::SnapshotError;
use crate::codec::{be_u32, be_u64};

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"DKVSNAP1";
pub const SNAPSHOT_VERSION: u16 = 2;
/// Magic, version, header length, index, term, the two length prefixes, the clock and the last delete.
pub const HEADER_FIXED_LEN: usize = 8 + 2 + 4 + 8 + 8 + 4 + 4 + 8 + 8;
pub const FOOTER_LEN: usize = 4;
/// The smallest valid snapshot file: an empty header and no records.
pub const MIN_SNAPSHOT_LEN: u64 = (HEADER_FIXED_LEN + FOOTER_LEN) as u64;
/// The largest header this build accepts (conf state and node state are small).
pub const MAX_HEADER_LEN: u32 = 16 << 20;

/// No key or value in a record is larger than this (the state machine stores values of at most
/// `limits::MAX_VALUE_BYTES`, 512 MiB).
pub const MAX_RECORD_FIELD_BYTES: u64 = 1 << 30;

pub const TOKEN_MAGIC: [u8; 4] = *b"DKVT";
pub const TOKEN_VERSION: u8 = 1;
pub const TOKEN_LEN: usize = 4 + 1 + 8 + 4;

/// What a snapshot's header carries: where it stands in the log and the state the node restores
/// even when it skips the body (D9).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotHeader {
    pub index: u64,
    pub term: u64,
    /// The raft conf state at `index`, encoded by the raft layer.
    pub conf_state: Vec<u8>,
    /// Anything else the node must restore with the snapshot, encoded by its owner.
    pub node_state: Vec<u8>,
    /// The state machine's clock at `index` (unix milliseconds; [`crate::fsm::MetaKey::Clock`]).
    pub clock: u64,
    /// The index of the last entry at or below `index` that deleted a key
    /// ([`crate::fsm::MetaKey::LastDelete`]).
    pub last_delete: u64,
}

impl SnapshotHeader {
    pub fn encode(&self) -> Vec<u8> {
        let len = HEADER_FIXED_LEN + self.conf_state.len() + self.node_state.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.term.to_be_bytes());
        out.extend_from_slice(&(self.conf_state.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.conf_state);
        out.extend_from_slice(&(self.node_state.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.node_state);
        out.extend_from_slice(&self.clock.to_be_bytes());
        out.extend_from_slice(&self.last_delete.to_be_bytes());
        out
    }

    /// The header length a file declares, from its first 14 bytes (checked for magic and version).
    pub fn declared_len(prefix: &[u8]) -> Result<u32, SnapshotError> {
        if prefix.len() < 14 {
            return Err(SnapshotError::BadHeader("shorter than the fixed header".into()));
        }
        if prefix[0..8] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadHeader("bad magic".into()));
        }
        let version = u16::from_be_bytes([prefix[8], prefix[9]]);
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnknownVersion(u32::from(version)));
        }
        let len = be_u32(prefix, 10);
        if (len as usize) < HEADER_FIXED_LEN || len > MAX_HEADER_LEN {
            return Err(SnapshotError::BadHeader(format!("header length {len} out of range")));
        }
        Ok(len)
    }

    /// Decode a whole header (exactly `declared_len` bytes). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotHeader, SnapshotError> {
        let len = Self::declared_len(bytes)? as usize;
        if bytes.len() != len {
            return Err(SnapshotError::BadHeader("header length does not match".into()));
        }
        let index = be_u64(bytes, 14);
        let term = be_u64(bytes, 22);
        let mut at = 30;
        let mut field = |name: &str| -> Result<Vec<u8>, SnapshotError> {
            let n = bytes
                .get(at..at + 4)
                .map(|b| be_u32(b, 0) as usize)
                .ok_or_else(|| SnapshotError::BadHeader(format!("{name} length past the header")))?;
            let value = bytes
                .get(at + 4..(at + 4).saturating_add(n))
                .ok_or_else(|| SnapshotError::BadHeader(format!("{name} runs past the header")))?;
            at += 4 + n;
            Ok(value.to_vec())
        };
        let conf_state = field("conf state")?;
        let node_state = field("node state")?;
        let word = |at: usize, name: &str| {
            bytes
                .get(at..at + 8)
                .map(|b| be_u64(b, 0))
                .ok_or_else(|| SnapshotError::BadHeader(format!("{name} past the header")))
        };
        let clock = word(at, "clock")?;
        let last_delete = word(at + 8, "last delete")?;
        Ok(SnapshotHeader { index, term, conf_state, node_state, clock, last_delete })
    }
}

/// The small token the raft snapshot message carries instead of the payload (D6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotToken {
    pub index: u64,
    /// The CRC32C footer of the snapshot file.
    pub crc: u32,
}

impl SnapshotToken {
    pub fn encode(&self) -> [u8; TOKEN_LEN] {
        let mut out = [0u8; TOKEN_LEN];
        out[0..4].copy_from_slice(&TOKEN_MAGIC);
        out[4] = TOKEN_VERSION;
        out[5..13].copy_from_slice(&self.index.to_be_bytes());
        out[13..17].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// Decode a token from a raft snapshot message. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotToken, SnapshotError> {
        if bytes.len() != TOKEN_LEN {
            return Err(SnapshotError::BadToken(format!("{} bytes, expected {TOKEN_LEN}", bytes.len())));
        }
        if bytes[0..4] != TOKEN_MAGIC {
            return Err(SnapshotError::BadToken("bad magic".into()));
        }
        if bytes[4] != TOKEN_VERSION {
            return Err(SnapshotError::UnknownVersion(u32::from(bytes[4])));
        }
        let mut index = [0u8; 8];
        index.copy_from_slice(&bytes[5..13]);
        Ok(SnapshotToken { index: u64::from_be_bytes(index), crc: be_u32(bytes, 13) })
    }
}

/// Append one record to `out`.
pub fn encode_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_errors() {
        let h = SnapshotHeader {
            index: 9,
            term: 2,
            conf_state: b"voters".to_vec(),
            node_state: vec![1, 2],
            clock: 1_700_000_000_123,
            last_delete: 7,
        };
        let bytes = h.encode();
        assert_eq!(SnapshotHeader::decode(&bytes).expect("decodes"), h);
        for cut in 0..bytes.len() {
            assert!(SnapshotHeader::decode(&bytes[..cut]).is_err());
        }
        // Version 1 stored values without the expiry header: refused, never misread.
        for other in [1u8, 3] {
            let mut v = bytes.clone();
            v[9] = other;
            assert!(
                matches!(SnapshotHeader::decode(&v), Err(SnapshotError::UnknownVersion(n)) if n == u32::from(other))
            );
        }
        let mut magic = bytes;
        magic[0] = b'X';
        assert!(matches!(SnapshotHeader::decode(&magic), Err(SnapshotError::BadHeader(_))));
    }

    #[test]
    fn header_skips_unknown_trailing_fields() {
        let h = SnapshotHeader { index: 1, term: 1, ..SnapshotHeader::default() };
        let mut bytes = h.encode();
        bytes.extend_from_slice(b"future");
        let len = bytes.len() as u32;
        bytes[10..14].copy_from_slice(&len.to_be_bytes());
        assert_eq!(SnapshotHeader::decode(&bytes).expect("newer header"), h);
    }

    #[test]
    fn token_round_trip_and_errors() {
        let t = SnapshotToken { index: 77, crc: 0xDEAD_BEEF };
        assert_eq!(SnapshotToken::decode(&t.encode()).expect("decodes"), t);
        assert!(matches!(SnapshotToken::decode(&[0; 3]), Err(SnapshotError::BadToken(_))));
        let mut bad = t.encode();
        bad[0] = 0;
        assert!(matches!(SnapshotToken::decode(&bad), Err(SnapshotError::BadToken(_))));
        let mut v9 = t.encode();
        v9[4] = 9;
        assert!(matches!(SnapshotToken::decode(&v9), Err(SnapshotError::UnknownVersion(9))));
    }
}
