//! Wall-clock time for key expiry, and the raft entry context that carries it.
//!
//! Expiry must not depend on each replica's clock: the leader stamps every entry it appends with
//! its own time ([`EntryContext`]), the state machine's clock is the latest stamp applied, and every
//! expiry decision is made against that clock at apply time (`docs/durability.md`, "Expiry").
//! A node's clock can be offset ([`WallClock::set_offset_ms`]): the simulation's clock-skew fault.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The node's wall clock in unix milliseconds (the simulated one under madsim), plus an offset.
#[derive(Debug, Clone, Default)]
pub struct WallClock {
    offset_ms: Arc<AtomicI64>,
}

impl WallClock {
    pub fn system() -> Self {
        WallClock::default()
    }

    /// Now, in unix milliseconds (a clock before 1970 reads 0).
    pub fn now_ms(&self) -> u64 {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let ms = i64::try_from(since).unwrap_or(i64::MAX);
        u64::try_from(ms.saturating_add(self.offset_ms.load(Ordering::Relaxed))).unwrap_or(0)
    }

    /// Run this clock `offset` milliseconds ahead (negative: behind) of the host's.
    pub fn set_offset_ms(&self, offset: i64) {
        self.offset_ms.store(offset, Ordering::Relaxed);
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

/// What a proposed entry carries besides its command: the proposer's request id (its reply is
/// matched by it) and the leader's timestamp (unix milliseconds; 0 for an entry without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryContext {
    pub request_id: u64,
    pub stamp_ms: u64,
}

/// The encoded length of an [`EntryContext`].
pub const ENTRY_CONTEXT_LEN: usize = 16;

impl EntryContext {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_CONTEXT_LEN);
        out.extend_from_slice(&self.request_id.to_be_bytes());
        out.extend_from_slice(&self.stamp_ms.to_be_bytes());
        out
    }

    /// Decode a context: 16 bytes, or the 8-byte request id of entries written before the stamp.
    /// Anything else (an entry raft made itself) has none.
    pub fn decode(bytes: &[u8]) -> Option<EntryContext> {
        let word = |b: &[u8]| <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes);
        match bytes.len() {
            8 => Some(EntryContext { request_id: word(bytes)?, stamp_ms: 0 }),
            ENTRY_CONTEXT_LEN => {
                Some(EntryContext { request_id: word(&bytes[..8])?, stamp_ms: word(&bytes[8..])? })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_and_old_ones_have_no_stamp() {
        let c = EntryContext { request_id: 7, stamp_ms: 1_700_000_000_000 };
        assert_eq!(EntryContext::decode(&c.encode()), Some(c));
        assert_eq!(
            EntryContext::decode(&9u64.to_be_bytes()),
            Some(EntryContext { request_id: 9, stamp_ms: 0 })
        );
        assert_eq!(EntryContext::decode(b""), None);
        assert_eq!(EntryContext::decode(b"CAMPAIGN_TRANSFER"), None);
    }

    #[test]
    fn an_offset_moves_the_clock_and_never_below_zero() {
        let clock = WallClock::system();
        let base = clock.now_ms();
        clock.set_offset_ms(60_000);
        assert!(clock.now_ms() >= base + 60_000);
        clock.set_offset_ms(i64::MIN);
        assert_eq!(clock.now_ms(), 0);
    }
}
