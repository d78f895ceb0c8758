//! How the state machine stores a client value, and its expiry index (`docs/formats.md`, "Stored
//! values").
//!
//! ```text
//! stored   := flags u8, [deadline u64], [version u64], value
//!   flags bit 0: a deadline follows (the key expires at `deadline`, unix milliseconds)
//!   flags bit 1: a version follows (the raft index of the entry that last wrote the key)
//! index    := deadline u64, key                (one engine index key per deadline written; no value)
//! ```
//! Big-endian. The deadline lives in the value, so a read costs one engine lookup whether or not the
//! key expires; the version is what WATCH compares (it changes with every write of the key, on every
//! replica alike). The index orders keys by deadline, so the leader finds what is due without a scan;
//! an index entry whose key was since overwritten, deleted or given another deadline is *stale* and
//! is dropped when the sweep reaches it (writes never read a key just to clean its old entry).

use super::FsmError;

/// The value format this build writes ([`super::MetaKey::ValueFormat`]). An engine that holds data
/// but records no format holds values from before the header: refused at open.
pub const VALUE_FORMAT: u8 = 1;

const HAS_DEADLINE: u8 = 1;
const HAS_VERSION: u8 = 2;

/// A stored value, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<'a> {
    pub deadline: Option<u64>,
    /// The raft index that last wrote the key (`None`: written before versions were kept).
    pub version: Option<u64>,
    pub value: &'a [u8],
}

/// Encode `value` with its deadline and version.
pub fn encode(value: &[u8], deadline: Option<u64>, version: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + value.len());
    let flags =
        if deadline.is_some() { HAS_DEADLINE } else { 0 } | if version.is_some() { HAS_VERSION } else { 0 };
    out.push(flags);
    for word in [deadline, version].into_iter().flatten() {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(value);
    out
}

/// Decode a stored value. A header this build does not know is corruption (typed).
pub fn decode(stored: &[u8]) -> Result<Stored<'_>, FsmError> {
    let corrupt = || FsmError::Corrupt {
        path: std::path::PathBuf::from("<engine value>"),
        offset: 0,
        reason: format!("stored value with an unknown or short header ({} bytes)", stored.len()),
    };
    let (&flags, mut rest) = stored.split_first().ok_or_else(corrupt)?;
    if flags & !(HAS_DEADLINE | HAS_VERSION) != 0 {
        return Err(corrupt());
    }
    let mut word = |present: bool| -> Result<Option<u64>, FsmError> {
        if !present {
            return Ok(None);
        }
        let (w, after) = rest.split_at_checked(8).ok_or_else(corrupt)?;
        rest = after;
        Ok(Some(u64::from_be_bytes(w.try_into().expect("split_at_checked(8) gives 8 bytes"))))
    };
    let deadline = word(flags & HAS_DEADLINE != 0)?;
    let version = word(flags & HAS_VERSION != 0)?;
    Ok(Stored { deadline, version, value: rest })
}

/// Only the deadline of a stored value (`None` also for a header this build does not know: the
/// sweep then leaves the key alone, and its reads report the corruption).
pub fn deadline_of(stored: &[u8]) -> Option<u64> {
    decode(stored).ok().and_then(|s| s.deadline)
}

/// The index key of `key` expiring at `deadline`.
pub fn index_key(deadline: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&deadline.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// An index key's deadline and client key (`None`: shorter than a deadline).
pub fn parse_index_key(index: &[u8]) -> Option<(u64, &[u8])> {
    if index.len() < 8 {
        return None;
    }
    let (deadline, key) = index.split_at(8);
    Some((u64::from_be_bytes(deadline.try_into().ok()?), key))
}

/// Whether a value with `deadline` is gone at `now` (a key expires *at* its deadline, as in Redis).
pub fn expired(deadline: Option<u64>, now: u64) -> bool {
    deadline.is_some_and(|d| d <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_and_without_a_deadline_and_a_version() {
        for deadline in [None, Some(7), Some(u64::MAX)] {
            for version in [None, Some(0), Some(42)] {
                for value in [&b""[..], b"v", b"\x01\x02abc"] {
                    let stored = encode(value, deadline, version);
                    assert_eq!(decode(&stored).expect("decodes"), Stored { deadline, version, value });
                }
            }
        }
    }

    #[test]
    fn a_malformed_header_is_a_typed_error_never_a_panic() {
        for bad in [&b""[..], &[4, 1, 2][..], &[1, 0, 0, 0][..], &[3, 0, 0, 0, 0, 0, 0, 0, 1, 0][..]] {
            assert!(matches!(decode(bad), Err(FsmError::Corrupt { .. })), "{bad:?}");
            assert_eq!(deadline_of(bad), None);
        }
    }

    #[test]
    fn index_keys_sort_by_deadline_then_key() {
        let mut keys = [index_key(300, b"a"), index_key(2, b"z"), index_key(2, b"b")];
        keys.sort();
        let parsed: Vec<_> = keys.iter().map(|k| parse_index_key(k).expect("parses")).collect();
        assert_eq!(parsed, vec![(2, &b"b"[..]), (2, &b"z"[..]), (300, &b"a"[..])]);
        assert_eq!(parse_index_key(b"short"), None);
    }

    #[test]
    fn a_key_expires_at_its_deadline() {
        assert!(!expired(None, u64::MAX));
        assert!(!expired(Some(10), 9));
        assert!(expired(Some(10), 10));
    }
}
