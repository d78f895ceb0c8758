//! Client commands: RESP arguments parsed into typed requests, with Redis's own error texts for
//! unknown commands, wrong arity, syntax and number errors. Writes become [`Command`]s for the raft
//! log; reads and connection commands are answered by the server without the log.

use crate::fsm::command::Expiry;
use crate::fsm::{Command, ExpireCondition, SetCondition};

use super::resp::Reply;

/// A parsed client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Ping(Option<Vec<u8>>),
    Echo(Vec<u8>),
    Quit,
    /// SELECT: only database 0 exists.
    Select,
    Auth {
        password: Vec<u8>,
    },
    /// HELLO [protover [AUTH username password] [SETNAME clientname]]: the handshake current client
    /// libraries open with (RESP3 with `HELLO 3`).
    Hello {
        protocol: Option<u8>,
        auth: Option<Vec<u8>>,
        name: Option<Vec<u8>>,
    },
    ClientSetName(Vec<u8>),
    ClientGetName,
    /// CLIENT SETINFO LIB-NAME|LIB-VER value (client libraries announce themselves).
    ClientSetInfo {
        attr: LibAttr,
        value: Vec<u8>,
    },
    ClientId,
    ClientInfo,
    /// CLIENT LIST [ID id …]
    ClientList(Option<Vec<u64>>),
    ClientHelp,
    /// CLIENT NO-EVICT / NO-TOUCH on|off: nothing to change here (no eviction, no LRU).
    ClientNoop,
    /// BACKUP START: write a consistent snapshot of the state machine (at or past a confirmed read
    /// index) to this node's backup directory; BACKUP READ name offset count streams it out;
    /// BACKUP DONE name removes it (`durakv admin backup` drives the three).
    BackupStart,
    /// FAILOVER [TO host port] [TIMEOUT ms]: hand raft leadership to the member serving clients at
    /// host:port (without TO, on the leader: its most up-to-date follower), and answer once it leads.
    Failover {
        to: Option<(String, u16)>,
        timeout_ms: u64,
    },
    BackupRead {
        name: String,
        offset: u64,
        count: u64,
    },
    /// CLUSTER MEMBERS: every member, its role and addresses, as this node sees them.
    ClusterMembers,
    /// CLUSTER ADDLEARNER id peer_addr resp_addr | PROMOTE id [REPLACING old] | REMOVE id: a
    /// membership change, made by the leader (`crate::members`).
    ClusterChange(crate::members::Change),
    BackupDone {
        name: String,
    },
    /// CONFIG GET name…: the few Redis parameters clients probe, answered read-only.
    ConfigGet(Vec<Vec<u8>>),
    Command(CommandQuery),
    /// INFO [section …] (lower-cased; empty: the default sections).
    Info(Vec<String>),
    DbSize,
    /// KEYS pattern
    Keys(Vec<u8>),
    /// SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]
    Scan {
        cursor: u64,
        pattern: Option<Vec<u8>>,
        count: usize,
        kind: Option<Vec<u8>>,
    },
    Type(Vec<u8>),
    /// GETRANGE key start end (and SUBSTR)
    GetRange(Vec<u8>, i64, i64),
    /// SETNX key value: SET … NX answered 1 or 0.
    SetNx(Command),
    Get(Vec<u8>),
    /// TTL, PTTL, EXPIRETIME, PEXPIRETIME key
    Ttl(Vec<u8>, TtlAnswer),
    MGet(Vec<Vec<u8>>),
    Exists(Vec<Vec<u8>>),
    StrLen(Vec<u8>),
    /// A write, proposed through raft.
    Write(Command),
    /// LCS key1 key2 [LEN] [IDX [MINMATCHLEN n] [WITHMATCHLEN]]
    Lcs {
        a: Vec<u8>,
        b: Vec<u8>,
        answer: LcsAnswer,
    },
    /// MULTI: queue the commands that follow until EXEC or DISCARD.
    Multi,
    /// WATCH key …: EXEC applies nothing if one of them is written before it.
    Watch(Vec<Vec<u8>>),
    Unwatch,
    Exec,
    Discard,
}

/// What a TTL-family read answers for a key with an expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlAnswer {
    /// TTL: seconds left, rounded.
    Seconds,
    /// PTTL: milliseconds left.
    Millis,
    /// EXPIRETIME: the deadline in unix seconds.
    AtSeconds,
    /// PEXPIRETIME: the deadline in unix milliseconds.
    AtMillis,
}

/// The largest relative expiry accepted, in milliseconds: added to any clock before the year 2109
/// it cannot overflow (Redis refuses a time that overflows when its clock is added).
const MAX_RELATIVE_EXPIRY_MS: i64 = i64::MAX - (1 << 42);

/// An expiry given as `amount` in seconds or milliseconds, relative or absolute, for `command`
/// (named in the error, as Redis does). `positive`: SET, SETEX, GETEX refuse zero and below.
fn parse_expiry(
    command: &str,
    amount: &[u8],
    millis: bool,
    absolute: bool,
    positive: bool,
) -> Result<Expiry, Refusal> {
    let invalid = || Reply::Error(format!("ERR invalid expire time in '{command}' command"));
    let n = parse_i64(amount)?;
    if positive && n <= 0 {
        return Err(invalid());
    }
    let ms = if millis { Some(n) } else { n.checked_mul(1000) }.ok_or_else(invalid)?;
    if !absolute && ms > MAX_RELATIVE_EXPIRY_MS {
        return Err(invalid());
    }
    Ok(Expiry { ms, absolute })
}

/// What LCS answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LcsAnswer {
    /// The common subsequence itself.
    Text,
    /// Its length (LEN).
    Len,
    /// The matching ranges and the length (IDX), ranges shorter than `min_len` left out.
    Idx { min_len: u64, with_len: bool },
}

/// The most cells LCS's table may have: it is computed where reads run, so it is bounded well below
/// Redis's (`proto-max-bulk-len` bytes of table): 16 M cells, 64 MiB, tens of milliseconds.
pub const LCS_MAX_CELLS: u64 = 16 << 20;

/// LCS of `a` and `b`, as Redis 7 answers it: the table of prefix LCS lengths, then a walk back from
/// the ends (a match steps both back; otherwise the side with the longer LCS, `b` on ties), whose
/// maximal diagonal runs are the matching ranges, reported from the end.
pub fn lcs(a: &[u8], b: &[u8], answer: LcsAnswer) -> Reply {
    let cells = (a.len() as u64 + 1).saturating_mul(b.len() as u64 + 1);
    if cells > LCS_MAX_CELLS {
        return Reply::Error(format!(
            "ERR Insufficient memory, transient memory for LCS exceeds durakv's bound ({LCS_MAX_CELLS} cells)"
        ));
    }
    let width = b.len() + 1;
    let mut table = vec![0u32; (a.len() + 1) * width];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            table[i * width + j] = if a[i - 1] == b[j - 1] {
                table[(i - 1) * width + j - 1] + 1
            } else {
                table[(i - 1) * width + j].max(table[i * width + j - 1])
            };
        }
    }
    let total = table[a.len() * width + b.len()];
    if answer == LcsAnswer::Len {
        return Reply::Integer(i64::from(total));
    }
    let mut text = vec![0u8; total as usize];
    let mut ranges = Vec::new();
    // The run being walked: (a start, a end, b start, b end), inclusive.
    let mut run: Option<(usize, usize, usize, usize)> = None;
    let (mut i, mut j, mut k) = (a.len(), b.len(), total as usize);
    let close = |run: &mut Option<(usize, usize, usize, usize)>, ranges: &mut Vec<Reply>| {
        if let (Some((a0, a1, b0, b1)), LcsAnswer::Idx { min_len, with_len }) = (run.take(), answer) {
            let len = (a1 - a0 + 1) as u64;
            if len >= min_len {
                let pair = |x: usize, y: usize| {
                    Reply::Array(Some(vec![Reply::Integer(x as i64), Reply::Integer(y as i64)]))
                };
                let mut item = vec![pair(a0, a1), pair(b0, b1)];
                if with_len {
                    item.push(Reply::Integer(len as i64));
                }
                ranges.push(Reply::Array(Some(item)));
            }
        }
    };
    while i > 0 && j > 0 {
        if a[i - 1] == b[j - 1] {
            k -= 1;
            text[k] = a[i - 1];
            run = Some(match run {
                Some((a0, a1, b0, b1)) if a0 == i && b0 == j => (a0 - 1, a1, b0 - 1, b1),
                _ => (i - 1, i - 1, j - 1, j - 1),
            });
            i -= 1;
            j -= 1;
            if i == 0 || j == 0 {
                close(&mut run, &mut ranges);
            }
        } else {
            if table[(i - 1) * width + j] > table[i * width + j - 1] {
                i -= 1;
            } else {
                j -= 1;
            }
            close(&mut run, &mut ranges);
        }
    }
    match answer {
        LcsAnswer::Text => Reply::Bulk(Some(text)),
        LcsAnswer::Len => Reply::Integer(i64::from(total)),
        LcsAnswer::Idx { .. } => Reply::Map(vec![
            (Reply::Bulk(Some(b"matches".to_vec())), Reply::Array(Some(ranges))),
            (Reply::Bulk(Some(b"len".to_vec())), Reply::Integer(i64::from(total))),
        ]),
    }
}

/// What `CLIENT SETINFO` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibAttr {
    Name,
    Version,
}

/// The forms of `COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandQuery {
    /// COMMAND: every command's details.
    All,
    Count,
    List,
    /// COMMAND INFO [name …] (none: every command).
    Info(Vec<Vec<u8>>),
    /// COMMAND DOCS [name …] (none: every command).
    Docs(Vec<Vec<u8>>),
}

/// One command durakv serves, as `COMMAND` describes it (Redis's own arity, flags, key positions,
/// group and summary).
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    pub name: &'static str,
    /// Positive: exactly that many arguments, the name included; negative: at least that many.
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
    pub group: &'static str,
    pub summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec { name, arity, flags, first_key: keys.0, last_key: keys.1, step: keys.2, group, summary }
}

const WRITE: &[&str] = &["write", "denyoom"];
const WRITE_FAST: &[&str] = &["write", "denyoom", "fast"];
const READ_FAST: &[&str] = &["readonly", "fast"];
const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];
const NOKEYS: (i64, i64, i64) = (0, 0, 0);

/// How long FAILOVER waits for the new leader, unless TIMEOUT says otherwise.
pub const DEFAULT_FAILOVER_TIMEOUT_MS: u64 = 5000;

/// Every command durakv serves, sorted by name.
pub const COMMANDS: &[CommandSpec] = &[
    spec(
        "append",
        3,
        WRITE_FAST,
        (1, 1, 1),
        "string",
        "Appends a string to the value of a key. Creates the key if it doesn't exist.",
    ),
    spec(
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        NOKEYS,
        "connection",
        "Authenticates the connection.",
    ),
    spec(
        "backup",
        -2,
        &["admin", "noscript", "loading", "stale"],
        NOKEYS,
        "server",
        "Takes a consistent snapshot of the data set and streams it out (durakv's own command; see `durakv admin backup`).",
    ),
    spec(
        "client",
        -2,
        &["noscript", "loading", "stale"],
        NOKEYS,
        "connection",
        "A container for client connection commands.",
    ),
    spec(
        "cluster",
        -2,
        &["admin", "noscript", "stale"],
        NOKEYS,
        "cluster",
        "Lists the raft members, or changes the membership: ADDLEARNER, PROMOTE [REPLACING], REMOVE (durakv's own subcommands; see `durakv admin`).",
    ),
    spec(
        "command",
        -1,
        &["loading", "stale"],
        NOKEYS,
        "server",
        "Returns detailed information about all commands.",
    ),
    spec(
        "config",
        -2,
        &["admin", "noscript", "loading", "stale"],
        NOKEYS,
        "server",
        "A container for server configuration commands (durakv: GET only).",
    ),
    spec("copy", -3, &["write", "denyoom"], (1, 2, 1), "generic", "Copies the value of a key to a new key."),
    spec("dbsize", 1, &["readonly", "fast"], NOKEYS, "server", "Returns the number of keys in the database."),
    spec(
        "decr",
        2,
        WRITE_FAST,
        (1, 1, 1),
        "string",
        "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.",
    ),
    spec(
        "decrby",
        3,
        WRITE_FAST,
        (1, 1, 1),
        "string",
        "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist.",
    ),
    spec("del", -2, &["write"], (1, -1, 1), "generic", "Deletes one or more keys."),
    spec(
        "discard",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        NOKEYS,
        "transactions",
        "Discards a transaction.",
    ),
    spec("echo", 2, &["fast"], NOKEYS, "connection", "Returns the given string."),
    spec(
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        NOKEYS,
        "transactions",
        "Executes all commands in a transaction.",
    ),
    spec("exists", -2, READ_FAST, (1, -1, 1), "generic", "Determines whether one or more keys exist."),
    spec("expire", -3, WRITE_FAST, (1, 1, 1), "keyspace", "Sets the expiration time of a key in seconds."),
    spec(
        "expireat",
        -3,
        WRITE_FAST,
        (1, 1, 1),
        "keyspace",
        "Sets the expiration time of a key to a Unix timestamp.",
    ),
    spec(
        "expiretime",
        2,
        READ_FAST,
        (1, 1, 1),
        "keyspace",
        "Returns the expiration time of a key as a Unix timestamp.",
    ),
    spec(
        "failover",
        -1,
        &["admin", "noscript", "stale"],
        NOKEYS,
        "server",
        "Hands raft leadership to another member (TO its host and client port), or to the most up-to-date follower.",
    ),
    spec(
        "flushall",
        -1,
        &["write"],
        NOKEYS,
        "server",
        "Removes all keys from all databases (durakv: one database, one raft entry).",
    ),
    spec("flushdb", -1, &["write"], NOKEYS, "server", "Remove all keys from the current database."),
    spec("get", 2, READ_FAST, (1, 1, 1), "string", "Returns the string value of a key."),
    spec(
        "getdel",
        2,
        &["write", "fast"],
        (1, 1, 1),
        "string",
        "Returns the string value of a key after deleting the key.",
    ),
    spec(
        "getex",
        -2,
        WRITE_FAST,
        (1, 1, 1),
        "string",
        "Returns the string value of a key after setting its expiration time.",
    ),
    spec(
        "getrange",
        4,
        &["readonly"],
        (1, 1, 1),
        "string",
        "Returns a substring of the string stored at a key.",
    ),
    spec(
        "getset",
        3,
        WRITE_FAST,
        (1, 1, 1),
        "string",
        "Returns the previous string value of a key after setting it to a new value.",
    ),
    spec(
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        NOKEYS,
        "connection",
        "Handshakes with the Redis server.",
    ),
    spec(
        "incr",
        2,
        WRITE_FAST,
        (1, 1, 1),
        "string",
        "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.",
    ),
    spec(
        "incrby",
        3,
        WRITE_FAST,
        (1, 1, 1),
        "string",
        "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist.",
    ),
    spec(
        "incrbyfloat",
        3,
        WRITE_FAST,
        (1, 1, 1),
        "string",
        "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist.",
    ),
    spec(
        "info",
        -1,
        &["loading", "stale"],
        NOKEYS,
        "server",
        "Returns information and statistics about the server.",
    ),
    spec("keys", 2, &["readonly"], NOKEYS, "generic", "Returns all key names that match a pattern."),
    spec("lcs", -3, &["readonly"], (1, 2, 1), "string", "Finds the longest common substring."),
    spec(
        "mget",
        -2,
        READ_FAST,
        (1, -1, 1),
        "string",
        "Atomically returns the string values of one or more keys.",
    ),
    spec(
        "mset",
        -3,
        WRITE,
        (1, -1, 2),
        "string",
        "Atomically creates or modifies the string values of one or more keys.",
    ),
    spec(
        "msetnx",
        -3,
        &["write", "denyoom"],
        (1, -1, 2),
        "string",
        "Atomically modifies the string values of one or more keys only when all keys don't exist.",
    ),
    spec(
        "multi",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        NOKEYS,
        "transactions",
        "Starts a transaction.",
    ),
    spec("persist", 2, WRITE_FAST, (1, 1, 1), "keyspace", "Removes the expiration time of a key."),
    spec(
        "pexpire",
        -3,
        WRITE_FAST,
        (1, 1, 1),
        "keyspace",
        "Sets the expiration time of a key in milliseconds.",
    ),
    spec(
        "pexpireat",
        -3,
        WRITE_FAST,
        (1, 1, 1),
        "keyspace",
        "Sets the expiration time of a key to a Unix milliseconds timestamp.",
    ),
    spec(
        "pexpiretime",
        2,
        READ_FAST,
        (1, 1, 1),
        "keyspace",
        "Returns the expiration time of a key as a Unix milliseconds timestamp.",
    ),
    spec("ping", -1, &["fast"], NOKEYS, "connection", "Returns the server's liveliness response."),
    spec(
        "psetex",
        4,
        WRITE,
        (1, 1, 1),
        "string",
        "Sets both string value and expiration time in milliseconds of a key. The key is created if it doesn't exist.",
    ),
    spec(
        "pttl",
        2,
        READ_FAST,
        (1, 1, 1),
        "keyspace",
        "Returns the expiration time in milliseconds of a key.",
    ),
    spec(
        "quit",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        NOKEYS,
        "connection",
        "Closes the connection.",
    ),
    spec("rename", 3, &["write"], (1, 2, 1), "generic", "Renames a key and overwrites the destination."),
    spec(
        "renamenx",
        3,
        &["write", "fast"],
        (1, 2, 1),
        "generic",
        "Renames a key only when the target key name doesn't exist.",
    ),
    spec("scan", -2, &["readonly"], NOKEYS, "generic", "Iterates over the key names in the database."),
    spec("select", 2, CONN, NOKEYS, "connection", "Changes the selected database (durakv: only 0)."),
    spec(
        "set",
        -3,
        WRITE,
        (1, 1, 1),
        "string",
        "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.",
    ),
    spec(
        "setex",
        4,
        WRITE,
        (1, 1, 1),
        "string",
        "Sets the string value and expiration time of a key. Creates the key if it doesn't exist.",
    ),
    spec(
        "setnx",
        3,
        WRITE_FAST,
        (1, 1, 1),
        "string",
        "Set the string value of a key only when the key doesn't exist.",
    ),
    spec(
        "setrange",
        4,
        WRITE,
        (1, 1, 1),
        "string",
        "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist.",
    ),
    spec("strlen", 2, READ_FAST, (1, 1, 1), "string", "Returns the length of a string value."),
    spec("substr", 4, &["readonly"], (1, 1, 1), "string", "Returns a substring from a string value."),
    spec("ttl", 2, READ_FAST, (1, 1, 1), "keyspace", "Returns the expiration time in seconds of a key."),
    spec("type", 2, READ_FAST, (1, 1, 1), "generic", "Determines the type of value stored at a key."),
    spec(
        "unwatch",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        NOKEYS,
        "transactions",
        "Forgets about watched keys of a transaction.",
    ),
    spec(
        "watch",
        -2,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        (1, -1, 1),
        "transactions",
        "Monitors changes to keys to determine the execution of a transaction.",
    ),
];

/// Does `text` match the glob `pattern`, as Redis's `stringmatchlen` (KEYS, SCAN MATCH): `*` any
/// run, `?` one byte, `[abc]`, `[^abc]`, `[a-z]` classes, `\` escaping the next byte. Backtracks to
/// the last `*` only, so a pattern of many stars stays linear in practice.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class_match(pattern, p, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&c) => (c == text[t]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((sp, st))) => {
                // Let the last star take one more byte and try again from after it.
                star = Some((sp, st + 1));
                p = sp + 1;
                t = st + 1;
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Match byte `c` against the class starting at `pattern[open] == '['`; where the class ends (the
/// index after `]`) when it matches.
fn class_match(pattern: &[u8], open: usize, c: u8) -> Option<usize> {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            hit |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (pattern[i].min(pattern[i + 2]), pattern[i].max(pattern[i + 2]));
            hit |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            hit |= pattern[i] == c;
            i += 1;
        }
    }
    // An unterminated class ends at the end of the pattern, as in Redis.
    (hit != negate).then_some((i + 1).min(pattern.len()))
}

/// GETRANGE's byte range of a `len`-byte value for `start..=end` (negative: from the end), as Redis.
pub fn byte_range(len: usize, start: i64, end: i64) -> std::ops::Range<usize> {
    let len = len as i64;
    let fix = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (fix(start), fix(end).min(len - 1));
    if len == 0 || start > end || start >= len {
        return 0..0;
    }
    start as usize..end as usize + 1
}

/// The spec of command `name` (any case).
pub fn command_spec(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| name.eq_ignore_ascii_case(c.name.as_bytes()))
}

/// The error reply for a request that cannot run.
pub type Refusal = Reply;

fn wrong_arity(name: &str) -> Refusal {
    Reply::Error(format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase()))
}

fn syntax() -> Refusal {
    Reply::Error("ERR syntax error".into())
}

fn not_integer() -> Refusal {
    Reply::Error("ERR value is not an integer or out of range".into())
}

/// A 64-bit integer as Redis reads one (`string2ll`): an optional `-`, then digits with no leading
/// zero (`0` alone is fine); no `+`, no spaces, no `-0`, nothing that overflows.
pub fn redis_i64(arg: &[u8]) -> Option<i64> {
    crate::fsm::parse_redis_int(arg)
}

fn parse_i64(arg: &[u8]) -> Result<i64, Refusal> {
    redis_i64(arg).ok_or_else(not_integer)
}

/// Redis's unknown-command error: the name as sent, and the arguments each quoted, up to 128
/// characters in all.
fn unknown_command(name: &[u8], args: &[Vec<u8>]) -> Refusal {
    let mut shown = String::new();
    for a in args {
        if shown.len() >= 128 {
            break;
        }
        let a = String::from_utf8_lossy(a);
        let room = 128 - shown.len();
        shown.push_str(&format!("'{}' ", a.chars().take(room).collect::<String>()));
    }
    let name: String = String::from_utf8_lossy(name).chars().take(128).collect();
    Reply::Error(format!("ERR unknown command '{name}', with args beginning with: {shown}"))
}

/// The parameters `CONFIG GET` answers, as durakv really is: no RDB saves, no AOF (its log is raft's
/// WAL), one database, no memory limit. redis-benchmark asks for `save` and `appendonly` at start-up.
pub const CONFIG_VALUES: [(&str, &str); 4] =
    [("save", ""), ("appendonly", "no"), ("databases", "1"), ("maxmemory", "0")];

/// `CONFIG GET` pairs for the requested names (exact, any case; `*` for all), as Redis answers.
pub fn config_get(names: &[Vec<u8>]) -> Vec<(&'static str, &'static str)> {
    CONFIG_VALUES
        .iter()
        .filter(|(k, _)| names.iter().any(|n| n.as_slice() == b"*" || n.eq_ignore_ascii_case(k.as_bytes())))
        .copied()
        .collect()
}

/// Parse one request. `args[0]` is the command name (any case).
pub fn parse_request(args: Vec<Vec<u8>>) -> Result<Request, Refusal> {
    let Some(raw_name) = args.first().cloned() else {
        return Err(Reply::Error("ERR empty command".into()));
    };
    let name = String::from_utf8_lossy(&raw_name).to_ascii_uppercase();
    let unknown = |args: &[Vec<u8>]| unknown_command(&raw_name, args.get(1..).unwrap_or_default());
    if command_spec(&raw_name).is_none() && name != "QUIT" {
        return Err(unknown(&args));
    }
    let mut rest = args.into_iter().skip(1);
    let n = rest.len();
    let arity = |ok: bool| if ok { Ok(()) } else { Err(wrong_arity(&name)) };
    let req = match name.as_str() {
        "PING" => {
            arity(n <= 1)?;
            Request::Ping(rest.next())
        }
        "ECHO" => {
            arity(n == 1)?;
            Request::Echo(rest.next().unwrap_or_default())
        }
        "QUIT" => Request::Quit,
        "SELECT" => {
            arity(n == 1)?;
            let db = parse_i64(&rest.next().unwrap_or_default())?;
            if db != 0 {
                return Err(Reply::Error("ERR DB index is out of range".into()));
            }
            Request::Select
        }
        "AUTH" => {
            arity(n == 1 || n == 2)?;
            // AUTH password, or AUTH username password (the username must be "default").
            let mut parts: Vec<Vec<u8>> = rest.collect();
            let password = parts.pop().unwrap_or_default();
            if parts.first().is_some_and(|user| user.as_slice() != b"default") {
                return Err(Reply::Error(
                    "WRONGPASS invalid username-password pair or user is disabled.".into(),
                ));
            }
            Request::Auth { password }
        }
        "HELLO" => {
            let mut protocol = None;
            let (mut auth, mut name) = (None, None);
            if let Some(v) = rest.next() {
                let v = redis_i64(&v).ok_or_else(|| {
                    Reply::Error("ERR Protocol version is not an integer or out of range".into())
                })?;
                if !(2..=3).contains(&v) {
                    return Err(Reply::Error("NOPROTO unsupported protocol version".into()));
                }
                protocol = Some(v as u8);
            }
            let opts: Vec<Vec<u8>> = rest.collect();
            let mut i = 0;
            while i < opts.len() {
                let opt = String::from_utf8_lossy(&opts[i]).to_ascii_uppercase();
                match opt.as_str() {
                    "AUTH" if i + 2 < opts.len() => {
                        if opts[i + 1].as_slice() != b"default" {
                            return Err(Reply::Error(
                                "WRONGPASS invalid username-password pair or user is disabled.".into(),
                            ));
                        }
                        auth = Some(opts[i + 2].clone());
                        i += 3;
                    }
                    "SETNAME" if i + 1 < opts.len() => {
                        name = Some(opts[i + 1].clone());
                        i += 2;
                    }
                    _ => {
                        return Err(Reply::Error(format!(
                            "ERR Syntax error in HELLO option '{}'",
                            String::from_utf8_lossy(&opts[i])
                        )));
                    }
                }
            }
            Request::Hello { protocol, auth, name }
        }
        "CLIENT" => {
            let sub = rest.next().map(|s| String::from_utf8_lossy(&s).to_ascii_uppercase());
            match (sub.as_deref(), n) {
                (Some("SETNAME"), 2) => Request::ClientSetName(rest.next().unwrap_or_default()),
                (Some("GETNAME"), 1) => Request::ClientGetName,
                (Some("SETINFO"), 3) => {
                    let attr = rest.next().unwrap_or_default();
                    let attr = match String::from_utf8_lossy(&attr).to_ascii_uppercase().as_str() {
                        "LIB-NAME" => LibAttr::Name,
                        "LIB-VER" => LibAttr::Version,
                        _ => {
                            return Err(Reply::Error(format!(
                                "ERR Unrecognized option '{}'",
                                String::from_utf8_lossy(&attr)
                            )));
                        }
                    };
                    Request::ClientSetInfo { attr, value: rest.next().unwrap_or_default() }
                }
                (Some("ID"), 1) => Request::ClientId,
                (Some("INFO"), 1) => Request::ClientInfo,
                (Some("LIST"), 1) => Request::ClientList(None),
                (Some("LIST"), _) => {
                    let opts: Vec<Vec<u8>> = rest.collect();
                    match opts.split_first() {
                        Some((kw, ids)) if kw.eq_ignore_ascii_case(b"ID") && !ids.is_empty() => {
                            let ids = ids.iter().map(|i| redis_i64(i).filter(|i| *i > 0).map(|i| i as u64));
                            let ids: Option<Vec<u64>> = ids.collect();
                            Request::ClientList(Some(
                                ids.ok_or_else(|| Reply::Error("ERR Invalid client ID".into()))?,
                            ))
                        }
                        Some((kw, [t])) if kw.eq_ignore_ascii_case(b"TYPE") => {
                            if t.eq_ignore_ascii_case(b"normal") {
                                Request::ClientList(None)
                            } else if [&b"master"[..], b"replica", b"pubsub"]
                                .iter()
                                .any(|k| t.eq_ignore_ascii_case(k))
                            {
                                Request::ClientList(Some(Vec::new()))
                            } else {
                                return Err(Reply::Error(format!(
                                    "ERR Unknown client type '{}'",
                                    String::from_utf8_lossy(t)
                                )));
                            }
                        }
                        _ => return Err(syntax()),
                    }
                }
                (Some("HELP"), 1) => Request::ClientHelp,
                (Some("NO-EVICT" | "NO-TOUCH"), 2) => {
                    let v = rest.next().unwrap_or_default();
                    if !(v.eq_ignore_ascii_case(b"on") || v.eq_ignore_ascii_case(b"off")) {
                        return Err(syntax());
                    }
                    Request::ClientNoop
                }
                (
                    Some(
                        sub @ ("SETNAME" | "GETNAME" | "SETINFO" | "ID" | "INFO" | "HELP" | "NO-EVICT"
                        | "NO-TOUCH"),
                    ),
                    _,
                ) => {
                    return Err(wrong_arity(&format!("client|{}", sub.to_ascii_lowercase())));
                }
                (Some(other), _) => {
                    return Err(Reply::Error(format!(
                        "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                        other.to_ascii_lowercase()
                    )));
                }
                (None, _) => return Err(wrong_arity("client")),
            }
        }
        "FAILOVER" => {
            let (mut to, mut timeout_ms) = (None, DEFAULT_FAILOVER_TIMEOUT_MS);
            let args: Vec<String> = rest.map(|a| String::from_utf8_lossy(&a).into_owned()).collect();
            let mut i = 0;
            while i < args.len() {
                match args[i].to_ascii_uppercase().as_str() {
                    "TO" if i + 2 < args.len() => {
                        let port = args[i + 2]
                            .parse::<u16>()
                            .map_err(|_| Reply::Error("ERR Invalid TO port".into()))?;
                        to = Some((args[i + 1].clone(), port));
                        i += 3;
                    }
                    "TIMEOUT" if i + 1 < args.len() => {
                        timeout_ms = args[i + 1].parse::<u64>().ok().filter(|&t| t > 0).ok_or_else(|| {
                            Reply::Error("ERR FAILOVER timeout must be greater than 0".into())
                        })?;
                        i += 2;
                    }
                    "FORCE" | "ABORT" => {
                        return Err(Reply::Error(format!(
                            "ERR durakv's FAILOVER takes no {}: a raft leadership transfer either completes or leaves the leader in place",
                            args[i].to_ascii_uppercase()
                        )));
                    }
                    _ => return Err(Reply::Error("ERR syntax error".into())),
                }
            }
            Request::Failover { to, timeout_ms }
        }
        "CLUSTER" => {
            let args: Vec<String> = rest.map(|a| String::from_utf8_lossy(&a).into_owned()).collect();
            let sub = args.first().map(|s| s.to_ascii_uppercase());
            let id = |s: &str| {
                s.parse::<u64>()
                    .ok()
                    .filter(|&i| i > 0)
                    .ok_or_else(|| Reply::Error(format!("ERR {s:?} is not a node id (a positive integer)")))
            };
            let addr = |s: &str| {
                s.parse::<std::net::SocketAddr>()
                    .map_err(|_| Reply::Error(format!("ERR {s:?} is not an address like 10.0.0.4:7379")))
            };
            let arity = |sub: &str| {
                Reply::Error(format!("ERR wrong number of arguments for 'cluster|{sub}' command"))
            };
            match sub.as_deref() {
                Some("MEMBERS") if args.len() == 1 => Request::ClusterMembers,
                Some("ADDLEARNER") if args.len() == 4 => {
                    let addrs =
                        crate::config::Peer { peer_addr: addr(&args[2])?, resp_addr: addr(&args[3])? };
                    Request::ClusterChange(crate::members::Change::AddLearner { id: id(&args[1])?, addrs })
                }
                Some("PROMOTE") if args.len() == 2 => {
                    Request::ClusterChange(crate::members::Change::Promote {
                        id: id(&args[1])?,
                        replacing: None,
                    })
                }
                Some("PROMOTE") if args.len() == 4 && args[2].eq_ignore_ascii_case("REPLACING") => {
                    let replacing = Some(id(&args[3])?);
                    Request::ClusterChange(crate::members::Change::Promote { id: id(&args[1])?, replacing })
                }
                Some("REMOVE") if args.len() == 2 => {
                    Request::ClusterChange(crate::members::Change::Remove { id: id(&args[1])? })
                }
                Some(sub @ ("MEMBERS" | "ADDLEARNER" | "PROMOTE" | "REMOVE")) => {
                    return Err(arity(&sub.to_ascii_lowercase()));
                }
                Some(other) => {
                    return Err(Reply::Error(format!(
                        "ERR unknown subcommand '{}': durakv's CLUSTER takes MEMBERS, ADDLEARNER, PROMOTE and REMOVE (it is a raft cluster, not a Redis Cluster)",
                        other.to_ascii_lowercase()
                    )));
                }
                None => return Err(wrong_arity("cluster")),
            }
        }
        "BACKUP" => {
            let sub = rest.next().map(|s| String::from_utf8_lossy(&s).to_ascii_uppercase());
            let mut text = || String::from_utf8_lossy(&rest.next().unwrap_or_default()).into_owned();
            match (sub.as_deref(), n) {
                (Some("START"), 1) => Request::BackupStart,
                (Some("READ"), 4) => {
                    let name = text();
                    let number = |s: String| {
                        s.parse::<u64>().map_err(|_| {
                            Reply::Error("ERR offset and count must be non-negative integers".into())
                        })
                    };
                    let offset = number(text())?;
                    let count = number(text())?;
                    Request::BackupRead { name, offset, count }
                }
                (Some("DONE"), 2) => Request::BackupDone { name: text() },
                (Some(sub @ ("START" | "READ" | "DONE")), _) => {
                    return Err(Reply::Error(format!(
                        "ERR wrong number of arguments for 'backup|{}' command",
                        sub.to_ascii_lowercase()
                    )));
                }
                (Some(other), _) => {
                    return Err(Reply::Error(format!(
                        "ERR unknown subcommand '{}'. BACKUP takes START, READ name offset count, or DONE name.",
                        other.to_ascii_lowercase()
                    )));
                }
                (None, _) => return Err(wrong_arity("backup")),
            }
        }
        "COMMAND" => {
            let sub = rest.next().map(|s| String::from_utf8_lossy(&s).to_ascii_uppercase());
            Request::Command(match sub.as_deref() {
                None => CommandQuery::All,
                Some("COUNT") => CommandQuery::Count,
                Some("LIST") => CommandQuery::List,
                Some("INFO") => CommandQuery::Info(rest.collect()),
                Some("DOCS") => CommandQuery::Docs(rest.collect()),
                Some(other) => {
                    return Err(Reply::Error(format!(
                        "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                        other.to_ascii_lowercase()
                    )));
                }
            })
        }
        "CONFIG" => {
            let sub = rest.next().map(|s| String::from_utf8_lossy(&s).to_ascii_uppercase());
            match sub.as_deref() {
                Some("GET") if n >= 2 => Request::ConfigGet(rest.collect()),
                Some("GET") => return Err(wrong_arity("config|get")),
                _ => {
                    return Err(Reply::Error(
                        "ERR durakv supports only CONFIG GET (settings live in its config file)".into(),
                    ));
                }
            }
        }
        "INFO" => Request::Info(rest.map(|s| String::from_utf8_lossy(&s).to_ascii_lowercase()).collect()),
        "DBSIZE" => {
            arity(n == 0)?;
            Request::DbSize
        }
        "GET" => {
            arity(n == 1)?;
            Request::Get(rest.next().unwrap_or_default())
        }
        "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" => {
            arity(n == 1)?;
            let answer = match name.as_str() {
                "TTL" => TtlAnswer::Seconds,
                "PTTL" => TtlAnswer::Millis,
                "EXPIRETIME" => TtlAnswer::AtSeconds,
                _ => TtlAnswer::AtMillis,
            };
            Request::Ttl(rest.next().unwrap_or_default(), answer)
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
            arity(n >= 2)?;
            let key = rest.next().unwrap_or_default();
            let lower = name.to_ascii_lowercase();
            let millis = name.starts_with('P');
            let expiry =
                parse_expiry(&lower, &rest.next().unwrap_or_default(), millis, name.ends_with("AT"), false)?;
            let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
            for opt in rest {
                match String::from_utf8_lossy(&opt).to_ascii_uppercase().as_str() {
                    "NX" => nx = true,
                    "XX" => xx = true,
                    "GT" => gt = true,
                    "LT" => lt = true,
                    _ => {
                        return Err(Reply::Error(format!(
                            "ERR Unsupported option {}",
                            String::from_utf8_lossy(&opt)
                        )));
                    }
                }
            }
            if nx && (xx || gt || lt) {
                return Err(Reply::Error(
                    "ERR NX and XX, GT or LT options at the same time are not compatible".into(),
                ));
            }
            if gt && lt {
                return Err(Reply::Error("ERR GT and LT options at the same time are not compatible".into()));
            }
            // XX with GT or LT: GT and LT already require an expiry (GT) or compare with one.
            let condition = match (nx, xx, gt, lt) {
                (true, ..) => ExpireCondition::IfNone,
                (_, _, true, _) => ExpireCondition::IfLater,
                (_, true, _, true) => ExpireCondition::IfEarlierWithExpiry,
                (_, _, _, true) => ExpireCondition::IfEarlier,
                (_, true, ..) => ExpireCondition::IfSome,
                _ => ExpireCondition::Always,
            };
            Request::Write(Command::set_expiry(key, Some(expiry), condition))
        }
        "PERSIST" => {
            arity(n == 1)?;
            Request::Write(Command::set_expiry(
                rest.next().unwrap_or_default(),
                None,
                ExpireCondition::Always,
            ))
        }
        "SETEX" | "PSETEX" => {
            arity(n == 3)?;
            let key = rest.next().unwrap_or_default();
            let lower = name.to_ascii_lowercase();
            let expiry =
                parse_expiry(&lower, &rest.next().unwrap_or_default(), name == "PSETEX", false, true)?;
            let value = rest.next().unwrap_or_default();
            Request::Write(Command::set_with(key, value, SetCondition::Always, false, Some(expiry), false))
        }
        "GETEX" => {
            arity(n >= 1)?;
            let key = rest.next().unwrap_or_default();
            let opts: Vec<Vec<u8>> = rest.collect();
            let upper = |b: &[u8]| String::from_utf8_lossy(b).to_ascii_uppercase();
            match opts.as_slice() {
                // Without options GETEX is GET.
                [] => Request::Get(key),
                [p] if upper(p) == "PERSIST" => Request::Write(Command::get_ex(key, None, true)),
                [unit, amount] => {
                    let (millis, absolute) = match upper(unit).as_str() {
                        "EX" => (false, false),
                        "PX" => (true, false),
                        "EXAT" => (false, true),
                        "PXAT" => (true, true),
                        _ => return Err(syntax()),
                    };
                    let expiry = parse_expiry("getex", amount, millis, absolute, true)?;
                    Request::Write(Command::get_ex(key, Some(expiry), false))
                }
                _ => return Err(syntax()),
            }
        }
        "KEYS" => {
            arity(n == 1)?;
            Request::Keys(rest.next().unwrap_or_default())
        }
        "SCAN" => {
            arity(n >= 1)?;
            let cursor = rest.next().unwrap_or_default();
            let cursor = std::str::from_utf8(&cursor)
                .ok()
                .and_then(|c| c.parse::<u64>().ok())
                .ok_or_else(|| Reply::Error("ERR invalid cursor".into()))?;
            let (mut pattern, mut count, mut kind) = (None, 10usize, None);
            let opts: Vec<Vec<u8>> = rest.collect();
            let mut i = 0;
            while i < opts.len() {
                let value = opts.get(i + 1).ok_or_else(syntax)?;
                match String::from_utf8_lossy(&opts[i]).to_ascii_uppercase().as_str() {
                    "MATCH" => pattern = Some(value.clone()),
                    "COUNT" => {
                        count =
                            usize::try_from(parse_i64(value)?).ok().filter(|c| *c >= 1).ok_or_else(syntax)?;
                    }
                    "TYPE" => kind = Some(value.clone()),
                    _ => return Err(syntax()),
                }
                i += 2;
            }
            Request::Scan { cursor, pattern, count, kind }
        }
        "TYPE" => {
            arity(n == 1)?;
            Request::Type(rest.next().unwrap_or_default())
        }
        "GETRANGE" | "SUBSTR" => {
            arity(n == 3)?;
            let key = rest.next().unwrap_or_default();
            let start = parse_i64(&rest.next().unwrap_or_default())?;
            let end = parse_i64(&rest.next().unwrap_or_default())?;
            Request::GetRange(key, start, end)
        }
        "SETNX" => {
            arity(n == 2)?;
            let key = rest.next().unwrap_or_default();
            Request::SetNx(Command::set(key, rest.next().unwrap_or_default(), SetCondition::IfAbsent))
        }
        "FLUSHALL" | "FLUSHDB" => {
            arity(n <= 1)?;
            if let Some(mode) = rest.next()
                && !(mode.eq_ignore_ascii_case(b"ASYNC") || mode.eq_ignore_ascii_case(b"SYNC"))
            {
                return Err(syntax());
            }
            Request::Write(Command::flush_all())
        }
        "STRLEN" => {
            arity(n == 1)?;
            Request::StrLen(rest.next().unwrap_or_default())
        }
        "MGET" => {
            arity(n >= 1)?;
            Request::MGet(rest.collect())
        }
        "EXISTS" => {
            arity(n >= 1)?;
            Request::Exists(rest.collect())
        }
        "SET" => {
            arity(n >= 2)?;
            let key = rest.next().unwrap_or_default();
            let value = rest.next().unwrap_or_default();
            let mut condition = SetCondition::Always;
            let (mut get, mut keep_ttl, mut expiry) = (false, false, None);
            let opts: Vec<Vec<u8>> = rest.collect();
            let mut i = 0;
            while i < opts.len() {
                // As Redis: a flag given twice is fine, NX with XX is not, nor two expiries, nor
                // an expiry with KEEPTTL.
                let opt = String::from_utf8_lossy(&opts[i]).to_ascii_uppercase();
                match opt.as_str() {
                    "NX" if condition != SetCondition::IfPresent => condition = SetCondition::IfAbsent,
                    "XX" if condition != SetCondition::IfAbsent => condition = SetCondition::IfPresent,
                    "GET" => get = true,
                    "KEEPTTL" if expiry.is_none() => keep_ttl = true,
                    "EX" | "PX" | "EXAT" | "PXAT" if expiry.is_none() && !keep_ttl => {
                        let amount = opts.get(i + 1).ok_or_else(syntax)?;
                        let millis = opt.starts_with('P');
                        expiry = Some(parse_expiry("set", amount, millis, opt.ends_with("AT"), true)?);
                        i += 1;
                    }
                    _ => return Err(syntax()),
                }
                i += 1;
            }
            Request::Write(Command::set_with(key, value, condition, get, expiry, keep_ttl))
        }
        "GETSET" => {
            arity(n == 2)?;
            let key = rest.next().unwrap_or_default();
            Request::Write(Command::set_get(key, rest.next().unwrap_or_default(), SetCondition::Always))
        }
        "GETDEL" => {
            arity(n == 1)?;
            Request::Write(Command::get_del(rest.next().unwrap_or_default()))
        }
        "RENAME" | "RENAMENX" => {
            arity(n == 2)?;
            let from = rest.next().unwrap_or_default();
            Request::Write(Command::rename(from, rest.next().unwrap_or_default(), name == "RENAMENX"))
        }
        "COPY" => {
            arity(n >= 2)?;
            let from = rest.next().unwrap_or_default();
            let to = rest.next().unwrap_or_default();
            let opts: Vec<Vec<u8>> = rest.collect();
            let mut replace = false;
            let mut i = 0;
            while i < opts.len() {
                match String::from_utf8_lossy(&opts[i]).to_ascii_uppercase().as_str() {
                    "REPLACE" => replace = true,
                    "DB" => {
                        let db = opts.get(i + 1).ok_or_else(syntax)?;
                        // Only database 0 exists (as SELECT).
                        if parse_i64(db)? != 0 {
                            return Err(Reply::Error("ERR DB index is out of range".into()));
                        }
                        i += 1;
                    }
                    _ => return Err(syntax()),
                }
                i += 1;
            }
            Request::Write(Command::copy(from, to, replace))
        }
        "MSETNX" => {
            arity(n >= 2 && n.is_multiple_of(2))?;
            let flat: Vec<Vec<u8>> = rest.collect();
            let pairs = flat.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect();
            Request::Write(Command::mset_nx(pairs))
        }
        "SETRANGE" => {
            arity(n == 3)?;
            let key = rest.next().unwrap_or_default();
            let offset = u64::try_from(parse_i64(&rest.next().unwrap_or_default())?)
                .map_err(|_| Reply::Error("ERR offset is out of range".into()))?;
            Request::Write(Command::set_range(key, offset, rest.next().unwrap_or_default()))
        }
        "INCRBYFLOAT" => {
            arity(n == 2)?;
            let key = rest.next().unwrap_or_default();
            let by = crate::fsm::parse_redis_float(&rest.next().unwrap_or_default())
                .ok_or_else(|| Reply::Error("ERR value is not a valid float".into()))?;
            Request::Write(Command::incr_by_float(key, by))
        }
        "DEL" => {
            arity(n >= 1)?;
            Request::Write(Command::del(rest.collect()))
        }
        "MSET" => {
            arity(n >= 2 && n.is_multiple_of(2))?;
            let flat: Vec<Vec<u8>> = rest.collect();
            let pairs = flat.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect();
            Request::Write(Command::mset(pairs))
        }
        "INCR" | "DECR" => {
            arity(n == 1)?;
            let delta = if name == "INCR" { 1 } else { -1 };
            Request::Write(Command::incr_by(rest.next().unwrap_or_default(), delta))
        }
        "INCRBY" | "DECRBY" => {
            arity(n == 2)?;
            let key = rest.next().unwrap_or_default();
            let by = parse_i64(&rest.next().unwrap_or_default())?;
            let delta = if name == "INCRBY" {
                by
            } else {
                by.checked_neg().ok_or_else(|| Reply::Error("ERR decrement would overflow".into()))?
            };
            Request::Write(Command::incr_by(key, delta))
        }
        "LCS" => {
            arity(n >= 2)?;
            let a = rest.next().unwrap_or_default();
            let b = rest.next().unwrap_or_default();
            let (mut len, mut idx, mut min_len, mut with_len) = (false, false, 0u64, false);
            let opts: Vec<Vec<u8>> = rest.collect();
            let mut i = 0;
            while i < opts.len() {
                match String::from_utf8_lossy(&opts[i]).to_ascii_uppercase().as_str() {
                    "LEN" => len = true,
                    "IDX" => idx = true,
                    "WITHMATCHLEN" => with_len = true,
                    "MINMATCHLEN" => {
                        let v = parse_i64(opts.get(i + 1).ok_or_else(syntax)?)?;
                        min_len = u64::try_from(v).unwrap_or(0);
                        i += 1;
                    }
                    _ => return Err(syntax()),
                }
                i += 1;
            }
            if len && idx {
                return Err(Reply::Error(
                    "ERR If you want both the length and indexes, please just use IDX.".into(),
                ));
            }
            let answer = match (len, idx) {
                (true, _) => LcsAnswer::Len,
                (_, true) => LcsAnswer::Idx { min_len, with_len },
                _ => LcsAnswer::Text,
            };
            Request::Lcs { a, b, answer }
        }
        "MULTI" => {
            arity(n == 0)?;
            Request::Multi
        }
        "EXEC" => {
            arity(n == 0)?;
            Request::Exec
        }
        "DISCARD" => {
            arity(n == 0)?;
            Request::Discard
        }
        "WATCH" => {
            arity(n >= 1)?;
            Request::Watch(rest.collect())
        }
        "UNWATCH" => {
            arity(n == 0)?;
            Request::Unwatch
        }
        "APPEND" => {
            arity(n == 2)?;
            let key = rest.next().unwrap_or_default();
            Request::Write(Command::append(key, rest.next().unwrap_or_default()))
        }
        _ => {
            let mut all = vec![raw_name.clone()];
            all.extend(rest);
            return Err(unknown(&all));
        }
    };
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(parts: &[&str]) -> Result<Request, Refusal> {
        parse_request(parts.iter().map(|p| p.as_bytes().to_vec()).collect())
    }

    fn err_text(r: Result<Request, Refusal>) -> String {
        match r {
            Err(Reply::Error(e)) => e,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    #[test]
    fn config_get_answers_only_the_known_read_only_parameters() {
        assert_eq!(req(&["config", "get", "save"]), Ok(Request::ConfigGet(vec![b"save".to_vec()])));
        assert_eq!(config_get(&[b"SAVE".to_vec()]), vec![("save", "")]);
        assert_eq!(config_get(&[b"appendonly".to_vec(), b"nope".to_vec()]), vec![("appendonly", "no")]);
        assert_eq!(config_get(&[b"*".to_vec()]).len(), CONFIG_VALUES.len());
        assert!(config_get(&[b"maxclients".to_vec()]).is_empty());
        assert!(err_text(req(&["config", "set", "save", ""])).contains("only CONFIG GET"));
        assert!(err_text(req(&["config", "get"])).contains("wrong number of arguments"));
        assert_eq!(
            req(&["client", "setinfo", "lib-name", "redis-rs"]),
            Ok(Request::ClientSetInfo { attr: LibAttr::Name, value: b"redis-rs".to_vec() })
        );
    }

    #[test]
    fn reads_and_connection_commands() {
        assert_eq!(req(&["ping"]), Ok(Request::Ping(None)));
        assert_eq!(req(&["PING", "hi"]), Ok(Request::Ping(Some(b"hi".to_vec()))));
        assert_eq!(req(&["Get", "k"]), Ok(Request::Get(b"k".to_vec())));
        assert_eq!(req(&["mget", "a", "b"]), Ok(Request::MGet(vec![b"a".to_vec(), b"b".to_vec()])));
        assert_eq!(req(&["select", "0"]), Ok(Request::Select));
        assert_eq!(req(&["client", "setname", "me"]), Ok(Request::ClientSetName(b"me".to_vec())));
        assert_eq!(req(&["auth", "pw"]), Ok(Request::Auth { password: b"pw".to_vec() }));
        assert_eq!(req(&["auth", "default", "pw"]), Ok(Request::Auth { password: b"pw".to_vec() }));
        assert_eq!(req(&["command", "docs"]), Ok(Request::Command(CommandQuery::Docs(Vec::new()))));
        assert_eq!(req(&["COMMAND"]), Ok(Request::Command(CommandQuery::All)));
        assert_eq!(req(&["info", "Server", "raft"]), Ok(Request::Info(vec!["server".into(), "raft".into()])));
    }

    #[test]
    fn writes_become_raft_commands() {
        assert_eq!(
            req(&["set", "k", "v", "nx"]),
            Ok(Request::Write(Command::set("k", "v", SetCondition::IfAbsent)))
        );
        assert_eq!(
            req(&["SET", "k", "v", "XX"]),
            Ok(Request::Write(Command::set("k", "v", SetCondition::IfPresent)))
        );
        assert_eq!(req(&["decrby", "n", "5"]), Ok(Request::Write(Command::incr_by("n", -5))));
        assert_eq!(req(&["incr", "n"]), Ok(Request::Write(Command::incr_by("n", 1))));
        assert_eq!(
            req(&["mset", "a", "1", "b", "2"]),
            Ok(Request::Write(Command::mset(vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ])))
        );
    }

    #[test]
    fn errors_use_redis_texts() {
        assert_eq!(err_text(req(&["get"])), "ERR wrong number of arguments for 'get' command");
        assert_eq!(err_text(req(&["mset", "a"])), "ERR wrong number of arguments for 'mset' command");
        assert_eq!(err_text(req(&["set", "k", "v", "nx", "xx"])), "ERR syntax error");
        assert_eq!(err_text(req(&["incrby", "n", "x"])), "ERR value is not an integer or out of range");
        assert_eq!(err_text(req(&["decrby", "n", &i64::MIN.to_string()])), "ERR decrement would overflow");
        assert_eq!(
            err_text(req(&["HSetNx", "k", "now"])),
            "ERR unknown command 'HSetNx', with args beginning with: 'k' 'now' "
        );
        for bad in ["007", "+5", "-0", " 5", "", "5 ", "99999999999999999999"] {
            assert_eq!(
                err_text(req(&["incrby", "n", bad])),
                "ERR value is not an integer or out of range",
                "{bad:?}"
            );
        }
        assert_eq!(
            req(&["set", "k", "v", "nx", "NX"]),
            Ok(Request::Write(Command::set("k", "v", SetCondition::IfAbsent)))
        );
        assert_eq!(err_text(req(&["select", "1"])), "ERR DB index is out of range");
        assert!(err_text(req(&["hget", "k", "1"])).starts_with("ERR unknown command 'hget'"));
        let rel = |ms| Some(Expiry { ms, absolute: false });
        let at = |ms| Some(Expiry { ms, absolute: true });
        let set =
            |e, keep| Ok(Request::Write(Command::set_with("k", "v", SetCondition::Always, false, e, keep)));
        assert_eq!(req(&["set", "k", "v", "ex", "10"]), set(rel(10_000), false));
        assert_eq!(req(&["set", "k", "v", "PX", "10"]), set(rel(10), false));
        assert_eq!(req(&["set", "k", "v", "exat", "10"]), set(at(10_000), false));
        assert_eq!(req(&["set", "k", "v", "pxat", "10"]), set(at(10), false));
        assert_eq!(req(&["set", "k", "v", "keepttl"]), set(None, true));
        for bad in [
            &["set", "k", "v", "ex", "1", "px", "1"][..],
            &["set", "k", "v", "keepttl", "ex", "1"],
            &["set", "k", "v", "ex"],
        ] {
            assert_eq!(err_text(req(bad)), "ERR syntax error", "{bad:?}");
        }
        assert_eq!(err_text(req(&["set", "k", "v", "ex", "0"])), "ERR invalid expire time in 'set' command");
        assert_eq!(
            err_text(req(&["set", "k", "v", "px", "x"])),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(err_text(req(&["setex", "k", "-1", "v"])), "ERR invalid expire time in 'setex' command");
        assert_eq!(err_text(req(&["getex", "k", "px", "0"])), "ERR invalid expire time in 'getex' command");
        assert_eq!(err_text(req(&["getex", "k", "persist", "px", "1"])), "ERR syntax error");
        assert_eq!(req(&["getex", "k"]), Ok(Request::Get(b"k".to_vec())));
        assert_eq!(req(&["psetex", "k", "5", "v"]), set(rel(5), false));
        let expire = |e, c| Ok(Request::Write(Command::set_expiry("k", e, c)));
        assert_eq!(req(&["expire", "k", "-3"]), expire(rel(-3_000), ExpireCondition::Always));
        assert_eq!(req(&["pexpireat", "k", "7", "gt"]), expire(at(7), ExpireCondition::IfLater));
        assert_eq!(
            req(&["expire", "k", "1", "xx", "lt"]),
            expire(rel(1_000), ExpireCondition::IfEarlierWithExpiry)
        );
        assert_eq!(req(&["persist", "k"]), expire(None, ExpireCondition::Always));
        assert_eq!(
            err_text(req(&["expire", "k", "1", "nx", "xx"])),
            "ERR NX and XX, GT or LT options at the same time are not compatible"
        );
        assert_eq!(
            err_text(req(&["expire", "k", "1", "gt", "lt"])),
            "ERR GT and LT options at the same time are not compatible"
        );
        assert_eq!(err_text(req(&["expire", "k", "1", "now"])), "ERR Unsupported option now");
        // Redis's overflow cases: the multiplication, and a time too large to add a clock to.
        assert_eq!(
            err_text(req(&["expire", "k", &i64::MIN.to_string()])),
            "ERR invalid expire time in 'expire' command"
        );
        assert_eq!(
            err_text(req(&["expire", "k", "9223370399119966"])),
            "ERR invalid expire time in 'expire' command"
        );
        assert_eq!(req(&["ttl", "k"]), Ok(Request::Ttl(b"k".to_vec(), TtlAnswer::Seconds)));
        assert_eq!(req(&["watch", "a", "b"]), Ok(Request::Watch(vec![b"a".to_vec(), b"b".to_vec()])));
        assert_eq!(req(&["UNWATCH"]), Ok(Request::Unwatch));
        assert_eq!(err_text(req(&["watch"])), "ERR wrong number of arguments for 'watch' command");
        assert_eq!(req(&["pexpiretime", "k"]), Ok(Request::Ttl(b"k".to_vec(), TtlAnswer::AtMillis)));
        assert_eq!(
            req(&["set", "k", "v", "xx", "get"]),
            Ok(Request::Write(Command::set_get("k", "v", SetCondition::IfPresent)))
        );
        assert_eq!(
            req(&["getset", "k", "v"]),
            Ok(Request::Write(Command::set_get("k", "v", SetCondition::Always)))
        );
        assert_eq!(req(&["getdel", "k"]), Ok(Request::Write(Command::get_del("k"))));
        assert_eq!(req(&["renamenx", "a", "b"]), Ok(Request::Write(Command::rename("a", "b", true))));
        assert_eq!(
            req(&["copy", "a", "b", "db", "0", "replace"]),
            Ok(Request::Write(Command::copy("a", "b", true)))
        );
        assert_eq!(err_text(req(&["copy", "a", "b", "db", "1"])), "ERR DB index is out of range");
        assert_eq!(err_text(req(&["copy", "a", "b", "nope"])), "ERR syntax error");
        assert_eq!(err_text(req(&["setrange", "k", "-1", "x"])), "ERR offset is out of range");
        assert_eq!(err_text(req(&["incrbyfloat", "k", "nan"])), "ERR value is not a valid float");
        assert_eq!(req(&["incrbyfloat", "k", "1.5"]), Ok(Request::Write(Command::incr_by_float("k", 1.5))));
        assert!(err_text(req(&["msetnx", "a", "1", "b"])).contains("wrong number of arguments"));
        assert_eq!(
            (req(&["multi"]), req(&["EXEC"]), req(&["discard"])),
            (Ok(Request::Multi), Ok(Request::Exec), Ok(Request::Discard))
        );
        let text = |r: Reply| match r {
            Reply::Bulk(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(text(lcs(b"ohmytext", b"mynewtext", LcsAnswer::Text)), "mytext");
        assert_eq!(lcs(b"ohmytext", b"mynewtext", LcsAnswer::Len), Reply::Integer(6));
        let int = |n: i64| Reply::Integer(n);
        let pair = |x, y| Reply::Array(Some(vec![int(x), int(y)]));
        // Redis 7.2: LCS key1 key2 IDX MINMATCHLEN 4 WITHMATCHLEN on "ohmytext" / "mynewtext".
        assert_eq!(
            lcs(b"ohmytext", b"mynewtext", LcsAnswer::Idx { min_len: 4, with_len: true }),
            Reply::Map(vec![
                (
                    Reply::Bulk(Some(b"matches".to_vec())),
                    Reply::Array(Some(vec![Reply::Array(Some(vec![pair(4, 7), pair(5, 8), int(4)]))]))
                ),
                (Reply::Bulk(Some(b"len".to_vec())), int(6)),
            ])
        );
        assert_eq!(
            lcs(b"ohmytext", b"mynewtext", LcsAnswer::Idx { min_len: 0, with_len: false }),
            Reply::Map(vec![
                (
                    Reply::Bulk(Some(b"matches".to_vec())),
                    Reply::Array(Some(vec![
                        Reply::Array(Some(vec![pair(4, 7), pair(5, 8)])),
                        Reply::Array(Some(vec![pair(2, 3), pair(0, 1)])),
                    ]))
                ),
                (Reply::Bulk(Some(b"len".to_vec())), int(6)),
            ])
        );
        assert_eq!(text(lcs(b"", b"abc", LcsAnswer::Text)), "");
        assert!(err_text(req(&["lcs", "a", "b", "len", "idx"])).contains("please just use IDX"));
        assert_eq!(
            req(&["lcs", "a", "b", "idx", "minmatchlen", "3"]),
            Ok(Request::Lcs {
                a: b"a".to_vec(),
                b: b"b".to_vec(),
                answer: LcsAnswer::Idx { min_len: 3, with_len: false }
            })
        );
        assert!(err_text(req(&["exec", "now"])).contains("wrong number of arguments"));
        assert!(err_text(req(&["auth", "admin", "pw"])).starts_with("WRONGPASS"));
        assert!(err_text(req(&["client", "kill"])).contains("unknown subcommand"));
        assert_eq!(err_text(parse_request(Vec::new())), "ERR empty command");
    }

    /// Failure guarded against: a current client library failing its handshake (redis-py 8 opens
    /// with `HELLO 3`, and announces itself with `CLIENT SETINFO`). Invariant: HELLO takes Redis's
    /// forms and refuses the rest with Redis's errors.
    #[test]
    fn hello_and_client_subcommands_take_redis_forms() {
        assert_eq!(req(&["hello"]), Ok(Request::Hello { protocol: None, auth: None, name: None }));
        assert_eq!(
            req(&["HELLO", "3", "auth", "default", "pw", "setname", "me"]),
            Ok(Request::Hello { protocol: Some(3), auth: Some(b"pw".to_vec()), name: Some(b"me".to_vec()) })
        );
        assert_eq!(err_text(req(&["hello", "4"])), "NOPROTO unsupported protocol version");
        assert_eq!(err_text(req(&["hello", "x"])), "ERR Protocol version is not an integer or out of range");
        assert_eq!(
            err_text(req(&["hello", "3", "auth", "default"])),
            "ERR Syntax error in HELLO option 'auth'"
        );
        assert!(err_text(req(&["hello", "3", "auth", "admin", "pw"])).starts_with("WRONGPASS"));
        assert_eq!(req(&["client", "id"]), Ok(Request::ClientId));
        assert_eq!(req(&["client", "list", "id", "3", "4"]), Ok(Request::ClientList(Some(vec![3, 4]))));
        assert_eq!(req(&["client", "no-evict", "on"]), Ok(Request::ClientNoop));
        assert_eq!(err_text(req(&["client", "setinfo", "lib-x", "v"])), "ERR Unrecognized option 'lib-x'");
        assert_eq!(
            err_text(req(&["client", "id", "x"])),
            "ERR wrong number of arguments for 'client|id' command"
        );
        assert_eq!(err_text(req(&["command", "nope"])), "ERR unknown subcommand 'nope'. Try COMMAND HELP.");
    }

    /// Failure guarded against: KEYS or SCAN MATCH selecting other keys than Redis would, GETRANGE
    /// other bytes. Invariant: Redis's glob forms (stars, `?`, classes with ranges and negation,
    /// escapes) and its range arithmetic (negative indices, clamping, empty ranges).
    #[test]
    fn glob_patterns_and_ranges_follow_redis() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("*", "") && m("*", "anything") && m("h?llo", "hello") && !m("h?llo", "hllo"));
        assert!(m("h*llo", "heeeello") && m("h*llo", "hllo") && !m("h*llo", "hello!"));
        assert!(m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-c]llo", "hbllo") && !m("h[a-c]llo", "hdllo"));
        assert!(m("key\\*", "key*") && !m("key\\*", "keyx"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx") && !m("*a*b*c*", "xxaxxcxxbxx") && m("a**", "a"));
        assert!(!m("abc", "ab") && !m("ab", "abc") && !m("", "a") && m("", ""));
        assert_eq!(byte_range(5, 0, -1), 0..5);
        assert_eq!(byte_range(5, -3, -2), 2..4);
        assert_eq!(byte_range(5, 3, 100), 3..5);
        assert_eq!(byte_range(5, 4, 2), 0..0);
        assert_eq!(byte_range(0, 0, -1), 0..0);
        assert_eq!(byte_range(5, -100, 0), 0..1);
    }

    #[test]
    fn keyspace_commands_parse_as_redis() {
        assert_eq!(req(&["keys", "a*"]), Ok(Request::Keys(b"a*".to_vec())));
        assert_eq!(
            req(&["scan", "0", "match", "k*", "count", "100", "type", "string"]),
            Ok(Request::Scan {
                cursor: 0,
                pattern: Some(b"k*".to_vec()),
                count: 100,
                kind: Some(b"string".to_vec())
            })
        );
        assert_eq!(err_text(req(&["scan", "x"])), "ERR invalid cursor");
        assert_eq!(err_text(req(&["scan", "0", "count", "0"])), "ERR syntax error");
        assert_eq!(err_text(req(&["scan", "0", "match"])), "ERR syntax error");
        assert_eq!(req(&["getrange", "k", "0", "-1"]), Ok(Request::GetRange(b"k".to_vec(), 0, -1)));
        assert_eq!(req(&["flushall", "async"]), Ok(Request::Write(Command::flush_all())));
        assert_eq!(err_text(req(&["flushdb", "later"])), "ERR syntax error");
        assert_eq!(
            req(&["setnx", "k", "v"]),
            Ok(Request::SetNx(Command::set("k", "v", SetCondition::IfAbsent)))
        );
    }

    #[test]
    fn cluster_membership_commands_parse_as_documented_and_refuse_the_rest() {
        use crate::members::Change;
        let peer = crate::config::Peer {
            peer_addr: "10.0.0.4:7379".parse().expect("address"),
            resp_addr: "10.0.0.4:6379".parse().expect("address"),
        };
        assert_eq!(req(&["cluster", "members"]), Ok(Request::ClusterMembers));
        assert_eq!(
            req(&["CLUSTER", "ADDLEARNER", "4", "10.0.0.4:7379", "10.0.0.4:6379"]),
            Ok(Request::ClusterChange(Change::AddLearner { id: 4, addrs: peer }))
        );
        assert_eq!(
            req(&["CLUSTER", "promote", "4", "replacing", "3"]),
            Ok(Request::ClusterChange(Change::Promote { id: 4, replacing: Some(3) }))
        );
        assert_eq!(req(&["CLUSTER", "REMOVE", "2"]), Ok(Request::ClusterChange(Change::Remove { id: 2 })));
        let error = |args: &[&str]| match req(args) {
            Err(Reply::Error(e)) => e,
            other => panic!("{args:?} was not refused: {other:?}"),
        };
        assert!(
            error(&["CLUSTER", "ADDLEARNER", "0", "10.0.0.4:7379", "10.0.0.4:6379"])
                .contains("not a node id")
        );
        assert!(
            error(&["CLUSTER", "ADDLEARNER", "4", "nowhere", "10.0.0.4:6379"]).contains("not an address")
        );
        assert!(error(&["CLUSTER", "REMOVE"]).contains("cluster|remove"));
        assert!(error(&["CLUSTER", "PROMOTE", "4", "INSTEAD", "3"]).contains("cluster|promote"));
        assert!(error(&["CLUSTER", "SLOTS"]).contains("not a Redis Cluster"));
        assert!(error(&["CLUSTER"]).contains("wrong number"));
    }

    #[test]
    fn failover_and_backup_parse_as_documented_and_refuse_the_rest() {
        assert_eq!(
            req(&["failover"]),
            Ok(Request::Failover { to: None, timeout_ms: DEFAULT_FAILOVER_TIMEOUT_MS })
        );
        assert_eq!(
            req(&["FAILOVER", "to", "10.0.0.3", "6379", "TIMEOUT", "250"]),
            Ok(Request::Failover { to: Some(("10.0.0.3".into(), 6379)), timeout_ms: 250 })
        );
        assert!(err_text(req(&["failover", "force"])).contains("takes no FORCE"));
        assert!(err_text(req(&["failover", "abort"])).contains("takes no ABORT"));
        assert_eq!(err_text(req(&["failover", "to", "h", "99999"])), "ERR Invalid TO port");
        assert_eq!(err_text(req(&["failover", "to", "h"])), "ERR syntax error");
        assert!(err_text(req(&["failover", "timeout", "0"])).contains("greater than 0"));
        assert_eq!(req(&["backup", "start"]), Ok(Request::BackupStart));
        assert_eq!(
            req(&["backup", "READ", "00000000000000000007.snap", "0", "4096"]),
            Ok(Request::BackupRead { name: "00000000000000000007.snap".into(), offset: 0, count: 4096 })
        );
        assert_eq!(req(&["backup", "done", "x"]), Ok(Request::BackupDone { name: "x".into() }));
        assert!(err_text(req(&["backup", "read", "x", "-1", "5"])).contains("non-negative"));
        assert!(err_text(req(&["backup", "start", "now"])).contains("'backup|start'"));
        assert!(err_text(req(&["backup", "restore"])).contains("unknown subcommand 'restore'"));
        assert!(err_text(req(&["backup"])).contains("wrong number of arguments"));
    }

    #[test]
    fn every_served_command_is_described_and_sorted() {
        let names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        for c in COMMANDS {
            assert!(c.arity != 0 && !c.summary.is_empty(), "{}", c.name);
            // Every described command parses (it is not refused as unknown).
            let args: Vec<Vec<u8>> = vec![c.name.as_bytes().to_vec()];
            if let Err(Reply::Error(e)) = parse_request(args) {
                assert!(!e.contains("unknown command"), "{}: {e}", c.name);
            }
        }
        assert!(command_spec(b"GeT").is_some());
        assert_eq!(redis_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(redis_i64(b"0"), Some(0));
    }
}
