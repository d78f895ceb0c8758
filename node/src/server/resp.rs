//! The Redis protocol (RESP2) as the client port speaks it: requests are arrays of bulk strings
//! (what every client library and `redis-cli` send) or inline commands (`PING\r\n`, what a person
//! types into `nc`); replies are the five RESP2 types.
//!
//! The client side of the same codec ([`encode_command`], [`parse_reply`]) is here too, so the
//! simulator's workload speaks exactly the protocol the node parses and encodes.
//!
//! The parser works on a byte buffer that grows as bytes arrive: it returns a whole command and how
//! many bytes it used, `None` when more bytes are needed, or a [`RespError`] that the connection
//! answers with `-ERR Protocol error: …` before closing (as Redis does). Every length is checked
//! against [`Limits`] before anything is allocated, so a hostile header cannot make the node reserve
//! memory it was not sent. It never panics, whatever the bytes.

use std::fmt;

/// Bounds on what one request may claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest bulk string (a key or a value). Default 512 MiB, as Redis's `proto-max-bulk-len`.
    pub max_bulk_bytes: usize,
    /// The most arguments in one command. Default 1,048,576.
    pub max_args: usize,
    /// The longest inline command line. Default 64 KiB, as Redis.
    pub max_inline_bytes: usize,
    /// The most bytes one request may occupy in the connection's buffer. Default 1 GiB, as Redis's
    /// `client-query-buffer-limit`.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_bytes: 512 << 20,
            max_args: 1 << 20,
            max_inline_bytes: 64 << 10,
            max_request_bytes: 1 << 30,
        }
    }
}

/// A request that breaks the protocol. The connection replies with it and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct RespError(pub String);

fn err(msg: impl Into<String>) -> RespError {
    RespError(msg.into())
}

/// A whole command (its arguments) and the bytes it used, or `None` when more bytes are needed.
pub type Parsed = Option<(Vec<Vec<u8>>, usize)>;

/// Find `\r\n` at or after `from`; returns the index of `\r`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|p| from + p)
}

/// Parse a decimal length or count: digits with an optional leading `-`, like Redis's `string2ll`
/// (no `+`, no spaces, at most 19 digits).
fn parse_len(digits: &[u8], what: &str) -> Result<i64, RespError> {
    let body = digits.strip_prefix(b"-").unwrap_or(digits);
    if body.is_empty() || body.len() > 19 || !body.iter().all(u8::is_ascii_digit) {
        return Err(err(format!("invalid {what}")));
    }
    let text = std::str::from_utf8(digits).map_err(|_| err(format!("invalid {what}")))?;
    text.parse::<i64>().map_err(|_| err(format!("invalid {what}")))
}

/// Parse one command from the front of `buf`. Returns the arguments and the bytes consumed, or
/// `None` if `buf` does not hold a whole command yet. Stateless: a connection should keep a
/// [`RequestParser`] instead, so a large request arriving in many reads is parsed once, not once per
/// read.
pub fn parse_command(buf: &[u8], limits: &Limits) -> Result<Parsed, RespError> {
    RequestParser::new(*limits).parse(buf)
}

/// Progress through a multibulk request whose arguments have not all arrived.
#[derive(Debug)]
struct Partial {
    expected: usize,
    args: Vec<Vec<u8>>,
    /// Offset just past the last complete argument.
    pos: usize,
}

/// A connection's request parser. Between calls the caller may only append to its buffer; once a
/// command comes back it drops the bytes the command used and parsing starts afresh.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    partial: Option<Partial>,
}

impl RequestParser {
    pub fn new(limits: Limits) -> Self {
        RequestParser { limits, partial: None }
    }

    /// Parse from the start of the request in progress, continuing where the last call stopped.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Parsed, RespError> {
        let result = self.parse_inner(buf);
        if result.is_err() {
            // A protocol error ends the request (and, at the caller, the connection).
            self.partial = None;
        }
        result
    }

    fn parse_inner(&mut self, buf: &[u8]) -> Result<Parsed, RespError> {
        if buf.len() > self.limits.max_request_bytes {
            return Err(err("request larger than the query buffer limit"));
        }
        if self.partial.is_none() {
            match buf.first() {
                None => return Ok(None),
                Some(b'*') => {}
                Some(_) => return parse_inline(buf, &self.limits),
            }
            let Some(eol) = find_crlf(buf, 1) else {
                if buf.len() > 32 {
                    return Err(err("invalid multibulk length"));
                }
                return Ok(None);
            };
            let count = parse_len(&buf[1..eol], "multibulk length")?;
            if count > self.limits.max_args as i64 {
                return Err(err("invalid multibulk length"));
            }
            if count <= 0 {
                // `*0` and `*-1` are empty requests: consumed, nothing to run.
                return Ok(Some((Vec::new(), eol + 2)));
            }
            // Reserve by what arrived, not by what the header claims.
            let reserve = (count as usize).min(buf.len() / 4 + 1);
            self.partial =
                Some(Partial { expected: count as usize, args: Vec::with_capacity(reserve), pos: eol + 2 });
        }
        let limits = self.limits;
        let partial = self.partial.as_mut().expect("set above or by an earlier call");
        while partial.args.len() < partial.expected {
            let at = partial.pos;
            match buf.get(at) {
                None => return Ok(None),
                Some(b'$') => {}
                Some(&other) => return Err(err(format!("expected '$', got '{}'", other as char))),
            }
            let Some(eol) = find_crlf(buf, at + 1) else {
                if buf.len() - at > 32 {
                    return Err(err("invalid bulk length"));
                }
                return Ok(None);
            };
            let len = parse_len(&buf[at + 1..eol], "bulk length")?;
            if len < 0 || len as u64 > limits.max_bulk_bytes as u64 {
                return Err(err("invalid bulk length"));
            }
            let start = eol + 2;
            let end = start + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(err("bulk string not terminated by CRLF"));
            }
            partial.args.push(buf[start..end].to_vec());
            partial.pos = end + 2;
        }
        let done = self.partial.take().expect("the loop ran on a partial request");
        Ok(Some((done.args, done.pos)))
    }
}

fn parse_inline(buf: &[u8], limits: &Limits) -> Result<Parsed, RespError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline_bytes {
            return Err(err("too big inline request"));
        }
        return Ok(None);
    };
    if nl > limits.max_inline_bytes {
        return Err(err("too big inline request"));
    }
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(Some((split_inline(line)?, nl + 1)))
}

/// Split an inline command into arguments: whitespace separates, `"…"` and `'…'` quote (with `\`
/// escapes inside double quotes), as redis-cli's own splitting does.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, RespError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let mut arg = Vec::new();
        match line[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else { return Err(err("unbalanced quotes in request")) };
                    i += 1;
                    if c == q {
                        break;
                    }
                    if c == b'\\' && q == b'"' {
                        let Some(&e) = line.get(i) else { return Err(err("unbalanced quotes in request")) };
                        i += 1;
                        arg.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            other => other,
                        });
                    } else {
                        arg.push(c);
                    }
                }
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return Err(err("unbalanced quotes in request"));
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
    Ok(args)
}

/// A reply. The RESP3-only kinds ([`Reply::Map`], [`Reply::Null`]) are written in their RESP2 form
/// to a connection that did not ask for protocol 3 (`HELLO 3`), as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …` (the text includes the error code word)
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc` or the null bulk `$-1`
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n…` or the null array `*-1`
    Array(Option<Vec<Reply>>),
    /// RESP3 `%2\r\n…`: key-value pairs (RESP2: a flat array of keys and values).
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `_\r\n` (RESP2: the null bulk `$-1`).
    Null,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn error(text: impl fmt::Display) -> Reply {
        Reply::Error(text.to_string())
    }

    /// Append the RESP2 wire form to `out` ([`Reply::encode_for`] with protocol 2).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_for(out, 2);
    }

    /// Append the wire form for a connection speaking `protocol` (2 or 3) to `out`. Simple strings
    /// and errors lose any CR or LF (they cannot carry them on the wire).
    pub fn encode_for(&self, out: &mut Vec<u8>, protocol: u8) {
        let resp3 = protocol >= 3;
        let line = |out: &mut Vec<u8>, prefix: u8, text: &str| {
            out.push(prefix);
            out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
            out.extend_from_slice(b"\r\n");
        };
        match self {
            Reply::Simple(s) => line(out, b'+', s),
            Reply::Error(e) => line(out, b'-', e),
            Reply::Integer(n) => line(out, b':', &n.to_string()),
            Reply::Bulk(None) | Reply::Array(None) | Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Bulk(None) | Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::Bulk(Some(b)) => {
                line(out, b'$', &b.len().to_string());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(Some(items)) => {
                line(out, b'*', &items.len().to_string());
                for item in items {
                    item.encode_for(out, protocol);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    line(out, b'%', &pairs.len().to_string());
                } else {
                    line(out, b'*', &(2 * pairs.len()).to_string());
                }
                for (k, v) in pairs {
                    k.encode_for(out, protocol);
                    v.encode_for(out, protocol);
                }
            }
        }
    }
}

/// A command as a client sends it: an array of bulk strings (what [`RequestParser`] reads).
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// How deeply arrays may nest in a reply: durakv sends at most one level, and a bound keeps a hostile
/// `*1\r\n*1\r\n…` from recursing the stack away.
const MAX_REPLY_DEPTH: usize = 32;

/// A whole reply and the bytes it used, or `None` when more bytes are needed.
pub type ParsedReply = Option<(Reply, usize)>;

/// Parse one reply from the front of `buf` (the client side of [`Reply::encode`]). Lengths and counts
/// are checked against `limits` before anything is allocated; a malformed reply is a [`RespError`],
/// never a panic, whatever the bytes.
pub fn parse_reply(buf: &[u8], limits: &Limits) -> Result<ParsedReply, RespError> {
    reply_at(buf, 0, limits, 0)
}

fn reply_at(buf: &[u8], at: usize, limits: &Limits, depth: usize) -> Result<ParsedReply, RespError> {
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*' | b'%' | b'_') {
        return Err(err(format!("unknown reply type '{}'", kind.escape_ascii())));
    }
    let Some(eol) = find_crlf(buf, at + 1) else {
        // A line that never ends is refused, not buffered forever.
        let longest = if matches!(kind, b'+' | b'-') { limits.max_inline_bytes } else { 32 };
        if buf.len() - at > longest {
            return Err(err("reply line too long"));
        }
        return Ok(None);
    };
    let body = &buf[at + 1..eol];
    let next = eol + 2;
    let text = || String::from_utf8_lossy(body).into_owned();
    Ok(Some(match kind {
        b'+' => (Reply::Simple(text()), next),
        b'-' => (Reply::Error(text()), next),
        b':' => (Reply::Integer(parse_len(body, "integer")?), next),
        b'$' => match parse_len(body, "bulk length")? {
            -1 => (Reply::Bulk(None), next),
            len if len < 0 || len as u64 > limits.max_bulk_bytes as u64 => {
                return Err(err("invalid bulk length"));
            }
            len => {
                let end = next.saturating_add(len as usize);
                if buf.len() < end.saturating_add(2) {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(err("bulk string not terminated by CRLF"));
                }
                (Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)
            }
        },
        b'*' => match parse_len(body, "multibulk length")? {
            -1 => (Reply::Array(None), next),
            n if n < 0 || n > limits.max_args as i64 => return Err(err("invalid multibulk length")),
            _ if depth >= MAX_REPLY_DEPTH => return Err(err("reply arrays nested too deeply")),
            n => {
                // Reserve by what arrived, not by what the header claims.
                let mut items = Vec::with_capacity((n as usize).min((buf.len() - next) / 4 + 1));
                let mut pos = next;
                for _ in 0..n {
                    let Some((item, used)) = reply_at(buf, pos, limits, depth + 1)? else { return Ok(None) };
                    items.push(item);
                    pos = used;
                }
                (Reply::Array(Some(items)), pos)
            }
        },
        b'_' if body.is_empty() => (Reply::Null, next),
        b'_' => return Err(err("a RESP3 null carries no data")),
        b'%' => match parse_len(body, "map length")? {
            n if n < 0 || n > limits.max_args as i64 => return Err(err("invalid map length")),
            _ if depth >= MAX_REPLY_DEPTH => return Err(err("reply arrays nested too deeply")),
            n => {
                let mut pairs = Vec::with_capacity((n as usize).min((buf.len() - next) / 8 + 1));
                let mut pos = next;
                for _ in 0..n {
                    let Some((k, used)) = reply_at(buf, pos, limits, depth + 1)? else { return Ok(None) };
                    let Some((v, used)) = reply_at(buf, used, limits, depth + 1)? else { return Ok(None) };
                    pairs.push((k, v));
                    pos = used;
                }
                (Reply::Map(pairs), pos)
            }
        },
        _ => unreachable!("the reply type was checked above"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        Reply::Array(Some(parts.iter().map(|p| Reply::Bulk(Some(p.to_vec()))).collect())).encode(&mut out);
        out
    }

    fn parse(buf: &[u8]) -> Result<Parsed, RespError> {
        parse_command(buf, &Limits::default())
    }

    #[test]
    fn multibulk_commands_and_pipelines() {
        let mut buf = cmd(&[b"SET", b"k", b"v\r\nwith crlf"]);
        let first = buf.len();
        buf.extend(cmd(&[b"GET", b"k"]));
        let (args, used) = parse(&buf).expect("valid").expect("complete");
        assert_eq!(args, vec![b"SET".to_vec(), b"k".to_vec(), b"v\r\nwith crlf".to_vec()]);
        assert_eq!(used, first);
        let (args, used2) = parse(&buf[used..]).expect("valid").expect("complete");
        assert_eq!(args, vec![b"GET".to_vec(), b"k".to_vec()]);
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn every_prefix_of_a_command_asks_for_more() {
        let buf = cmd(&[b"MSET", b"a", b"1", b"b", b"22"]);
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn inline_commands_split_like_redis_cli() {
        let (args, used) = parse(b"set  \"a b\" 'c d'\r\nPING\r\n").expect("valid").expect("complete");
        assert_eq!(args, vec![b"set".to_vec(), b"a b".to_vec(), b"c d".to_vec()]);
        assert_eq!(used, 18);
        assert_eq!(parse(b"PING\n").expect("valid"), Some((vec![b"PING".to_vec()], 5)));
        assert_eq!(
            parse(b"echo \"x\\ny\"\r\n").expect("valid").map(|c| c.0),
            Some(vec![b"echo".to_vec(), b"x\ny".to_vec()])
        );
        assert_eq!(parse(b"\r\n").expect("valid"), Some((Vec::new(), 2)));
        assert!(parse(b"set \"open\r\n").is_err());
        assert!(parse(b"set \"a\"b\r\n").is_err());
    }

    #[test]
    fn malformed_requests_are_protocol_errors() {
        assert!(parse(b"*x\r\n").is_err());
        assert!(parse(b"*2\r\n:1\r\n").is_err());
        assert!(parse(b"*1\r\n$-5\r\n").is_err());
        assert!(parse(b"*1\r\n$3\r\nabcXY").is_err());
        assert!(parse(b"*1\r\n$99999999999999999999\r\n").is_err());
        assert!(parse(&[b'*'; 40]).is_err(), "a count line with no end is refused, not buffered forever");
        let big = Limits { max_bulk_bytes: 10, ..Limits::default() };
        assert!(parse_command(b"*1\r\n$11\r\n", &big).is_err());
        let few = Limits { max_args: 2, ..Limits::default() };
        assert!(parse_command(b"*3\r\n", &few).is_err());
        let short = Limits { max_inline_bytes: 8, ..Limits::default() };
        assert!(parse_command(b"ping ping ping", &short).is_err());
        assert_eq!(parse(b"*0\r\n"), Ok(Some((Vec::new(), 4))));
    }

    #[test]
    fn a_connection_parser_continues_where_it_stopped() {
        let wire = cmd(&[b"MSET", b"a", b"1", b"b", b"22"]);
        let mut p = RequestParser::new(Limits::default());
        for cut in 1..wire.len() {
            assert_eq!(p.parse(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        let (args, used) = p.parse(&wire).expect("valid").expect("complete");
        assert_eq!(args.len(), 5);
        assert_eq!(used, wire.len());
        // And a fresh request after that.
        let ping: &[u8] = b"*1\r\n$4\r\nPING\r\n";
        assert_eq!(p.parse(ping), Ok(Some((vec![b"PING".to_vec()], 14))));
        let tiny = Limits { max_request_bytes: 8, ..Limits::default() };
        assert!(RequestParser::new(tiny).parse(&wire).is_err());
    }

    #[test]
    fn lengths_follow_redis_number_rules() {
        let plus_count: &[u8] = b"*+1\r\n";
        let plus_len: &[u8] = b"*1\r\n$+3\r\nabc\r\n";
        let space: &[u8] = b"* 1\r\n";
        let null: &[u8] = b"*-1\r\n";
        assert!(parse(plus_count).is_err());
        assert!(parse(plus_len).is_err());
        assert!(parse(space).is_err());
        assert_eq!(parse(null), Ok(Some((Vec::new(), 5))));
    }

    #[test]
    fn a_huge_claimed_count_does_not_allocate_it() {
        // One million arguments claimed, five bytes sent: asks for more without reserving a million.
        assert_eq!(parse(b"*1000000\r\n$1\r\n"), Ok(None));
    }

    #[test]
    fn replies_encode_to_the_wire_form() {
        let mut out = Vec::new();
        Reply::Array(Some(vec![
            Reply::ok(),
            Reply::error("ERR bad\r\nthing"),
            Reply::Integer(-3),
            Reply::Bulk(None),
            Reply::Bulk(Some(b"hi".to_vec())),
            Reply::Array(None),
        ]))
        .encode(&mut out);
        assert_eq!(out, b"*6\r\n+OK\r\n-ERR bad  thing\r\n:-3\r\n$-1\r\n$2\r\nhi\r\n*-1\r\n".to_vec());
    }

    fn reply(buf: &[u8]) -> Result<ParsedReply, RespError> {
        parse_reply(buf, &Limits::default())
    }

    #[test]
    fn commands_encode_as_the_parser_reads_them() {
        let wire = encode_command(&[b"SET", b"k", b"v\r\n"]);
        assert_eq!(wire, cmd(&[b"SET", b"k", b"v\r\n"]));
        assert_eq!(
            parse(&wire),
            Ok(Some((vec![b"SET".to_vec(), b"k".to_vec(), b"v\r\n".to_vec()], wire.len())))
        );
    }

    #[test]
    fn replies_parse_back_from_their_wire_form_and_wait_for_partial_ones() {
        let replies = vec![
            Reply::ok(),
            Reply::error("ERR no"),
            Reply::Integer(i64::MIN),
            Reply::Bulk(Some(b"a\r\nb".to_vec())),
            Reply::Bulk(None),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"a".to_vec())), Reply::Array(None), Reply::Integer(7)])),
            Reply::Array(Some(Vec::new())),
        ];
        let mut wire = Vec::new();
        for r in &replies {
            r.encode(&mut wire);
        }
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((r, used)) = reply(&wire[at..]).expect("well formed") {
            got.push(r);
            at += used;
        }
        assert_eq!(got, replies);
        assert_eq!(at, wire.len());
        for cut in 0..wire.len() {
            // A prefix is whole replies, then a request for more: never malformed, never wrong.
            let mut at = 0;
            while let Some((_, used)) = reply(&wire[at..cut]).expect("a prefix is not malformed") {
                at += used;
            }
        }
    }

    /// Failure guarded against: a node (or a fault) sending bytes the client cannot parse, and the
    /// client panicking or allocating what a header claims. Invariant: a malformed reply is a typed
    /// protocol error, whatever the bytes.
    /// Failure guarded against: a RESP2 client handed RESP3-only types (which it cannot parse), or a
    /// RESP3 client handed RESP2 nulls where it expects `_`. Invariant: maps and nulls take each
    /// protocol's form, and parse back.
    #[test]
    fn resp3_types_take_each_protocols_form() {
        let map = Reply::Map(vec![
            (Reply::Bulk(Some(b"proto".to_vec())), Reply::Integer(3)),
            (Reply::Simple("k".into()), Reply::Null),
        ]);
        let mut v2 = Vec::new();
        map.encode_for(&mut v2, 2);
        assert_eq!(v2, b"*4\r\n$5\r\nproto\r\n:3\r\n+k\r\n$-1\r\n");
        let mut v3 = Vec::new();
        map.encode_for(&mut v3, 3);
        assert_eq!(v3, b"%2\r\n$5\r\nproto\r\n:3\r\n+k\r\n_\r\n");
        assert_eq!(reply(&v3), Ok(Some((map, v3.len()))));
        for null in [Reply::Bulk(None), Reply::Array(None), Reply::Null] {
            let mut out = Vec::new();
            null.encode_for(&mut out, 3);
            assert_eq!(out, b"_\r\n", "{null:?}");
        }
        assert!(reply(b"_x\r\n").is_err());
        assert!(reply(b"%-1\r\n").is_err());
        assert_eq!(reply(b"%1\r\n+a\r\n"), Ok(None));
    }

    #[test]
    fn malformed_replies_are_protocol_errors_never_panics() {
        for bad in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b":+1\r\n",
            b"$-2\r\n",
            b"$3\r\nabcXY",
            b"$99999999999999999999\r\n",
            b"*-2\r\n",
            b"*1\r\n?\r\n",
            b"\r\n",
        ] {
            assert!(reply(bad).is_err(), "{:?}", bad.escape_ascii().to_string());
        }
        let small = Limits { max_bulk_bytes: 2, max_args: 1, ..Limits::default() };
        assert!(parse_reply(b"$3\r\n", &small).is_err());
        assert!(parse_reply(b"*2\r\n", &small).is_err());
        assert!(reply(&[b'$'; 40]).is_err(), "a length line with no end is refused");
        assert!(reply(&b"*1\r\n".repeat(MAX_REPLY_DEPTH + 1)).is_err(), "nesting is bounded");
        assert_eq!(reply(b"*1000000\r\n:1\r\n"), Ok(None), "a huge count waits without reserving it");
        // Every byte value in every position of a valid reply: an error or a reply, never a panic.
        let mut wire = Vec::new();
        Reply::Array(Some(vec![Reply::Bulk(Some(b"xy".to_vec())), Reply::Integer(-3)])).encode(&mut wire);
        for i in 0..wire.len() {
            for b in 0..=255u8 {
                let mut w = wire.clone();
                w[i] = b;
                let _ = reply(&w);
            }
        }
    }
}
