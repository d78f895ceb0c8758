//! The simulated workload's client side: what a reply says about an operation's fate, and the wire
//! codec, which is the node's own (`durakv::server::resp`), so the workload speaks exactly the protocol
//! the node parses and encodes. The harness sends over madsim's TCP stream (no client crate runs
//! there) and tells a reply that never came (`unknown` outcome) from one that said no.

use durakv::server::resp::{Limits, parse_reply};
pub use durakv::server::resp::{Reply, RespError, encode_command};

use crate::linearizability::Outcome;

/// What a reply says about the operation's fate. The node's contract (`docs/operations.md`): an error
/// starting with `TIMEOUT` means the write may or may not have been applied (it reached raft, or may
/// have: a timeout, a leadership change, the node stopping with it in flight); every other error
/// (`ERR`, `TRYAGAIN`, …) means it certainly was not, and never will be. Any other reply is a success.
/// The checkers then hold the node to it: a write classified `Fail` that took effect anyway shows up
/// as a linearizability or durability violation.
pub fn outcome_of(reply: &Reply) -> Outcome {
    match reply {
        Reply::Error(e) if e.starts_with("TIMEOUT") => Outcome::Unknown,
        Reply::Error(_) => Outcome::Fail,
        _ => Outcome::Ok,
    }
}

/// The `field:value` lines of an INFO reply, as fields (section headers and blank lines dropped).
pub fn info_fields(text: &[u8]) -> std::collections::BTreeMap<String, String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Decode one reply from the front of `buf` with the node's own codec: the reply and the bytes it
/// used, `None` if more bytes are needed, or a typed protocol error. The limits are the node's
/// defaults, so anything a node may send (a 512 MiB bulk) is accepted.
pub fn decode_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    parse_reply(buf, &Limits::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failure guarded against: the workload's client and the node disagreeing on the protocol.
    /// Invariant: what the client sends parses as the node parses requests, and what the node
    /// encodes decodes to the same reply; a malformed reply is a typed error.
    #[test]
    fn the_client_speaks_the_nodes_codec() {
        use durakv::server::resp::{Limits, parse_command};
        let wire = encode_command(&[b"GET", b"k"]);
        assert_eq!(wire, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec());
        assert_eq!(
            parse_command(&wire, &Limits::default()),
            Ok(Some((vec![b"GET".to_vec(), b"k".to_vec()], wire.len())))
        );
        let mut out = Vec::new();
        Reply::Bulk(Some(b"v".to_vec())).encode(&mut out);
        assert_eq!(decode_reply(&out), Ok(Some((Reply::Bulk(Some(b"v".to_vec())), out.len()))));
        assert!(decode_reply(b"?x\r\n").is_err());
    }

    /// Failure guarded against: a write the node reports as possibly applied counted as failed (the
    /// checkers would then accept its later appearance as a violation, or miss one). Invariant:
    /// `TIMEOUT` replies are unknown, other errors failures, anything else a success.
    #[test]
    fn replies_are_classified_by_what_they_promise() {
        let err = |t: &str| Reply::Error(t.to_string());
        for unknown in [
            "TIMEOUT the write was not confirmed within 3s; it may or may not have been applied",
            "TIMEOUT leadership changed before the write was confirmed; it may or may not have been applied",
            "TIMEOUT the node stopped before the write was confirmed; it may or may not have been applied",
        ] {
            assert_eq!(outcome_of(&err(unknown)), Outcome::Unknown, "{unknown}");
        }
        for fail in [
            "TRYAGAIN no raft leader is known yet; retry shortly",
            "ERR the node is shutting down; the write was not applied",
            "ERR write too large to replicate (8388629 bytes, limit 8388608)",
            "ERR value is not an integer or out of range",
        ] {
            assert_eq!(outcome_of(&err(fail)), Outcome::Fail, "{fail}");
        }
        assert_eq!(outcome_of(&Reply::ok()), Outcome::Ok);
        assert_eq!(outcome_of(&Reply::Integer(1)), Outcome::Ok);
        assert_eq!(outcome_of(&Reply::Bulk(None)), Outcome::Ok);
    }
}
