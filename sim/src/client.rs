//! A minimal Redis client for the simulated workload: RESP2 requests out, replies in, over the
//! (simulated) tokio TCP stream, with a timeout. Written here rather than taken from a crate because
//! it must run on madsim's network, and because the workload needs to tell a reply that never came
//! (`unknown` outcome) from one that said no.

pub use durakv::server::resp::Reply;

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

/// Encode a command as an array of bulk strings.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A reply that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply: {0}")]
pub struct BadReply(pub String);

fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(from..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], from + end + 2))
}

fn number(bytes: &[u8]) -> Result<i64, BadReply> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BadReply(format!("not a number: {:?}", String::from_utf8_lossy(bytes))))
}

/// Decode one reply from the front of `buf`: the reply and the bytes it used, or `None` if more
/// bytes are needed.
pub fn decode_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, BadReply> {
    decode_at(buf, 0)
}

fn decode_at(buf: &[u8], at: usize) -> Result<Option<(Reply, usize)>, BadReply> {
    let Some((head, next)) = line(buf, at) else { return Ok(None) };
    let Some((&kind, body)) = head.split_first() else { return Err(BadReply("empty line".into())) };
    let text = || String::from_utf8_lossy(body).into_owned();
    Ok(Some(match kind {
        b'+' => (Reply::Simple(text()), next),
        b'-' => (Reply::Error(text()), next),
        b':' => (Reply::Integer(number(body)?), next),
        b'$' => {
            let len = number(body)?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let end = next + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            (Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)
        }
        b'*' => {
            let n = number(body)?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), next)));
            }
            let mut items = Vec::new();
            let mut pos = next;
            for _ in 0..n {
                match decode_at(buf, pos)? {
                    Some((item, used)) => {
                        items.push(item);
                        pos = used;
                    }
                    None => return Ok(None),
                }
            }
            (Reply::Array(Some(items)), pos)
        }
        other => return Err(BadReply(format!("unknown reply type {:?}", other as char))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_reply_type_and_waits_for_partial_ones() {
        let wire = b"+OK\r\n-ERR no\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n$-1\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((r, used)) = decode_at(wire, at).expect("well formed") {
            got.push(r);
            at = used;
        }
        assert_eq!(
            got,
            vec![
                Reply::Simple("OK".into()),
                Reply::Error("ERR no".into()),
                Reply::Integer(42),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Bulk(None),
                Reply::Array(Some(vec![Reply::Bulk(Some(b"a".to_vec())), Reply::Bulk(None)])),
            ]
        );
        for cut in 0..wire.len() {
            // A prefix never decodes to something wrong: it is whole replies, then `None`.
            let _ = decode_reply(&wire[..cut]).expect("a prefix is not malformed");
        }
        assert!(decode_reply(b"?x\r\n").is_err());
        assert_eq!(encode_command(&[b"GET", b"k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec());
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
