//! The KV state machine: client commands (prost-encoded raft entry payloads) applied to an [`Engine`].
//!
//! * [`Kv::apply_raft`] applies the committed entry at `index` in the configured [`FsmSync`] mode,
//!   with the applied index in the same atomic batch as the data.
//! * There is no other way to write a command: a write with no raft log behind it has nothing to
//!   replay it after a power loss, so it could not honour the mode (D3). The state machine's one
//!   write outside raft apply is a snapshot install ([`crate::snapshot::restore`]), which is always
//!   durable when it returns and is ordered after the snapshot's pointer.
//! * A *command* error (INCR of a value that is not an integer, a malformed payload) is a
//!   deterministic reply: the entry is applied as a no-op and the index advances on every replica
//!   alike. An *engine* error (I/O, corruption) is fatal: the applied index does not advance, the entry
//!   is not skipped, and the caller must fail-stop and re-apply after restart (D10).

use std::str::FromStr;

use prost::Message;

use super::value::{self, VALUE_FORMAT};
use super::{Engine, FsmError, KeyValues, MetaKey, Op, WriteBatch, WriteMode, decode_u64};
use crate::limits::MAX_VALUE_BYTES;

/// The length of a value after APPEND, or `None` when it would exceed [`MAX_VALUE_BYTES`]. The
/// proposal carries only the appended bytes (bounded like every write), so the result is known only
/// here, at apply time; the bound is a constant, so every replica refuses the same APPENDs alike.
fn appended_len(current: usize, extra: usize) -> Option<usize> {
    current.checked_add(extra).filter(|&len| len <= MAX_VALUE_BYTES)
}

/// `fsm_sync`: whether the raft-apply path fsyncs the FSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsmSync {
    /// Every applied entry is durable in the FSM before apply returns (the default).
    #[default]
    Sync,
    /// Applied entries may be lost on power loss; the raft WAL replays them (D2).
    NoSync,
}

impl FromStr for FsmSync {
    type Err = FsmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sync" => Ok(FsmSync::Sync),
            "nosync" => Ok(FsmSync::NoSync),
            other => Err(FsmError::InvalidConfig(format!(
                "fsm_sync must be \"sync\" or \"nosync\", got {other:?}"
            ))),
        }
    }
}

/// The condition of a SET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum SetCondition {
    /// Unconditional (the default, 0).
    Always = 0,
    /// Only if the key does not exist (NX).
    IfAbsent = 1,
    /// Only if the key exists (XX).
    IfPresent = 2,
}

/// The condition of an EXPIRE (Redis 7's NX, XX, GT, LT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ExpireCondition {
    Always = 0,
    /// Only if the key has no expiry.
    IfNone = 1,
    /// Only if the key has one.
    IfSome = 2,
    /// Only if the new deadline is later (a key without expiry never gets one this way).
    IfLater = 3,
    /// Only if the new deadline is earlier (a key without expiry always gets one).
    IfEarlier = 4,
    /// XX LT: only if the key has an expiry and the new deadline is earlier.
    IfEarlierWithExpiry = 5,
}

/// The most keys one sweep entry deletes; a sweep that leaves some due is followed by another.
pub const SWEEP_MAX_KEYS: u32 = 1024;

/// The reads a transaction can queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ReadKind {
    Get = 0,
    MGet = 1,
    Exists = 2,
    StrLen = 3,
}

/// A client command as stored in a raft entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    #[prost(oneof = "command::Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17")]
    pub kind: Option<command::Kind>,
}

pub mod command {
    /// The command kinds.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Set(Set),
        #[prost(message, tag = "2")]
        Del(Del),
        #[prost(message, tag = "3")]
        IncrBy(IncrBy),
        #[prost(message, tag = "4")]
        MSet(MSet),
        #[prost(message, tag = "5")]
        Append(Append),
        #[prost(message, tag = "6")]
        FlushAll(FlushAll),
        #[prost(message, tag = "7")]
        GetDel(GetDel),
        #[prost(message, tag = "8")]
        Rename(Rename),
        #[prost(message, tag = "9")]
        Copy(Copy),
        #[prost(message, tag = "10")]
        MSetNx(MSet),
        #[prost(message, tag = "11")]
        SetRange(SetRange),
        #[prost(message, tag = "12")]
        IncrByFloat(IncrByFloat),
        #[prost(message, tag = "13")]
        Multi(Multi),
        #[prost(message, tag = "14")]
        Read(Read),
        #[prost(message, tag = "15")]
        SetExpiry(SetExpiry),
        #[prost(message, tag = "16")]
        Sweep(Sweep),
        #[prost(message, tag = "17")]
        GetEx(GetEx),
    }

    /// An expiry as the client gave it. A relative one becomes a deadline at apply time, from the
    /// state machine's clock as of the entry (the leader's timestamp), so every replica computes the
    /// same deadline.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Expiry {
        /// Milliseconds: after the entry's clock (relative), or since the unix epoch (absolute).
        #[prost(sint64, tag = "1")]
        pub ms: i64,
        #[prost(bool, tag = "2")]
        pub absolute: bool,
    }

    /// EXPIRE / PEXPIRE / EXPIREAT / PEXPIREAT key … [NX|XX|GT|LT], and PERSIST (no expiry).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SetExpiry {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(message, optional, tag = "2")]
        pub expiry: Option<Expiry>,
        #[prost(enumeration = "super::ExpireCondition", tag = "3")]
        pub condition: i32,
    }

    /// The leader's sweep: delete up to `limit` keys whose deadline the entry's clock has reached.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sweep {
        #[prost(uint32, tag = "1")]
        pub limit: u32,
    }

    /// GETEX key [EX|PX|EXAT|PXAT t | PERSIST]: the value, its expiry changed.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetEx {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(message, optional, tag = "2")]
        pub expiry: Option<Expiry>,
        #[prost(bool, tag = "3")]
        pub persist: bool,
    }

    /// MULTI … EXEC: the queued commands, applied in order as one atomic batch, unless a watched
    /// key changed since WATCH read it.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Multi {
        #[prost(message, repeated, tag = "1")]
        pub commands: Vec<super::Command>,
        #[prost(message, repeated, tag = "2")]
        pub watches: Vec<Watch>,
    }

    /// A key WATCH read, and what it found: the version (the raft index that last wrote it), or
    /// nothing (absent or expired), as of the state at applied index `since` or a later one.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Watch {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(uint64, optional, tag = "2")]
        pub version: Option<u64>,
        #[prost(uint64, tag = "3")]
        pub since: u64,
    }

    /// A read queued inside MULTI: it runs at apply time, between the transaction's writes.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Read {
        #[prost(enumeration = "super::ReadKind", tag = "1")]
        pub kind: i32,
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub keys: Vec<Vec<u8>>,
    }

    /// GETDEL key: the value, and the key deleted.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetDel {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
    }

    /// RENAME / RENAMENX from to.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Rename {
        #[prost(bytes = "vec", tag = "1")]
        pub from: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub to: Vec<u8>,
        /// RENAMENX: only when `to` does not exist (answered 1 or 0).
        #[prost(bool, tag = "3")]
        pub if_absent: bool,
    }

    /// COPY from to [REPLACE].
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Copy {
        #[prost(bytes = "vec", tag = "1")]
        pub from: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub to: Vec<u8>,
        #[prost(bool, tag = "3")]
        pub replace: bool,
    }

    /// SETRANGE key offset value.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SetRange {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(uint64, tag = "2")]
        pub offset: u64,
        #[prost(bytes = "vec", tag = "3")]
        pub value: Vec<u8>,
    }

    /// INCRBYFLOAT key increment. IEEE 754 double arithmetic gives the same bits on every replica.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct IncrByFloat {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(double, tag = "2")]
        pub increment: f64,
    }

    /// FLUSHALL / FLUSHDB: every key, in one atomic batch.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FlushAll {}

    /// SET key value [NX|XX].
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Set {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
        #[prost(enumeration = "super::SetCondition", tag = "3")]
        pub condition: i32,
        /// SET … GET (and GETSET): answer the previous value.
        #[prost(bool, tag = "4")]
        pub get: bool,
        /// EX / PX / EXAT / PXAT. Without it (and without KEEPTTL) a SET clears the key's expiry.
        #[prost(message, optional, tag = "5")]
        pub expiry: Option<Expiry>,
        /// KEEPTTL: keep the expiry the key has.
        #[prost(bool, tag = "6")]
        pub keep_ttl: bool,
    }

    /// DEL key [key …], one atomic batch.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Del {
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub keys: Vec<Vec<u8>>,
    }

    /// INCRBY key delta (INCR and DECR are deltas of ±1): read, add, write, in one apply.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct IncrBy {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(sint64, tag = "2")]
        pub delta: i64,
    }

    /// MSET key value [key value …], one atomic batch.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MSet {
        #[prost(message, repeated, tag = "1")]
        pub pairs: Vec<KeyValue>,
    }

    /// One pair of an MSET.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    /// APPEND key value.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Append {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }
}

impl Command {
    pub fn set(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, condition: SetCondition) -> Self {
        let set = command::Set {
            key: key.into(),
            value: value.into(),
            condition: condition as i32,
            ..Default::default()
        };
        Command { kind: Some(command::Kind::Set(set)) }
    }

    /// SET with its options: an expiry, KEEPTTL, GET.
    pub fn set_with(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        condition: SetCondition,
        get: bool,
        expiry: Option<command::Expiry>,
        keep_ttl: bool,
    ) -> Self {
        let set = command::Set {
            key: key.into(),
            value: value.into(),
            condition: condition as i32,
            get,
            expiry,
            keep_ttl,
        };
        Command { kind: Some(command::Kind::Set(set)) }
    }

    /// EXPIRE and its kin (`Some`), or PERSIST (`None`).
    pub fn set_expiry(
        key: impl Into<Vec<u8>>,
        expiry: Option<command::Expiry>,
        condition: ExpireCondition,
    ) -> Self {
        let e = command::SetExpiry { key: key.into(), expiry, condition: condition as i32 };
        Command { kind: Some(command::Kind::SetExpiry(e)) }
    }

    /// GETEX with an expiry, or PERSIST.
    pub fn get_ex(key: impl Into<Vec<u8>>, expiry: Option<command::Expiry>, persist: bool) -> Self {
        Command { kind: Some(command::Kind::GetEx(command::GetEx { key: key.into(), expiry, persist })) }
    }

    /// The leader's sweep of due keys.
    pub fn sweep(limit: u32) -> Self {
        Command { kind: Some(command::Kind::Sweep(command::Sweep { limit })) }
    }

    /// SET … GET / GETSET: like [`Command::set`], answering the previous value.
    pub fn set_get(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, condition: SetCondition) -> Self {
        let set = command::Set {
            key: key.into(),
            value: value.into(),
            condition: condition as i32,
            get: true,
            ..Default::default()
        };
        Command { kind: Some(command::Kind::Set(set)) }
    }

    pub fn get_del(key: impl Into<Vec<u8>>) -> Self {
        Command { kind: Some(command::Kind::GetDel(command::GetDel { key: key.into() })) }
    }

    pub fn rename(from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>, if_absent: bool) -> Self {
        let rename = command::Rename { from: from.into(), to: to.into(), if_absent };
        Command { kind: Some(command::Kind::Rename(rename)) }
    }

    pub fn copy(from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>, replace: bool) -> Self {
        Command {
            kind: Some(command::Kind::Copy(command::Copy { from: from.into(), to: to.into(), replace })),
        }
    }

    pub fn mset_nx(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        let pairs = pairs.into_iter().map(|(key, value)| command::KeyValue { key, value }).collect();
        Command { kind: Some(command::Kind::MSetNx(command::MSet { pairs })) }
    }

    pub fn set_range(key: impl Into<Vec<u8>>, offset: u64, value: impl Into<Vec<u8>>) -> Self {
        let range = command::SetRange { key: key.into(), offset, value: value.into() };
        Command { kind: Some(command::Kind::SetRange(range)) }
    }

    pub fn incr_by_float(key: impl Into<Vec<u8>>, increment: f64) -> Self {
        let incr = command::IncrByFloat { key: key.into(), increment };
        Command { kind: Some(command::Kind::IncrByFloat(incr)) }
    }

    pub fn del(keys: Vec<Vec<u8>>) -> Self {
        Command { kind: Some(command::Kind::Del(command::Del { keys })) }
    }

    pub fn incr_by(key: impl Into<Vec<u8>>, delta: i64) -> Self {
        Command { kind: Some(command::Kind::IncrBy(command::IncrBy { key: key.into(), delta })) }
    }

    pub fn mset(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        let pairs = pairs.into_iter().map(|(key, value)| command::KeyValue { key, value }).collect();
        Command { kind: Some(command::Kind::MSet(command::MSet { pairs })) }
    }

    pub fn append(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Command {
            kind: Some(command::Kind::Append(command::Append { key: key.into(), value: value.into() })),
        }
    }

    /// MULTI … EXEC of `commands`.
    pub fn multi(commands: Vec<Command>) -> Self {
        Command::multi_watching(commands, Vec::new())
    }

    /// MULTI … EXEC of `commands`, applied only if every watched key still has the version WATCH
    /// found (`None`: still absent).
    /// (A watch: the key, the version WATCH found, and the applied index its read was at or past.)
    pub fn multi_watching(commands: Vec<Command>, watches: Vec<(Vec<u8>, Option<u64>, u64)>) -> Self {
        let watches =
            watches.into_iter().map(|(key, version, since)| command::Watch { key, version, since }).collect();
        Command { kind: Some(command::Kind::Multi(command::Multi { commands, watches })) }
    }

    /// A read queued in a transaction.
    pub fn read(kind: ReadKind, keys: Vec<Vec<u8>>) -> Self {
        Command { kind: Some(command::Kind::Read(command::Read { kind: kind as i32, keys })) }
    }

    pub fn flush_all() -> Self {
        Command { kind: Some(command::Kind::FlushAll(command::FlushAll {})) }
    }

    /// The raft entry payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

/// The result of applying a command, returned to the client that proposed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// SET, MSET, APPEND's write happened.
    Ok,
    /// A conditional SET did not write.
    NotWritten,
    /// An integer result: DEL's count, INCRBY's new value, APPEND's new length.
    Int(i64),
    /// A value, or nil: SET … GET's and GETDEL's previous value, INCRBYFLOAT's result.
    Value(Option<Vec<u8>>),
    /// EXEC's replies, one per queued command (and MGET's values inside a transaction).
    Array(Vec<Reply>),
    /// A deterministic command error; the entry was applied as a no-op.
    Error(String),
    /// EXEC of a transaction whose watched key changed since WATCH: nothing was applied.
    Aborted,
    /// The entry was at or below the applied index (replay after restart): nothing was done.
    AlreadyApplied,
}

/// The recorded key count after a batch whose effect on it was not worked out: count at open.
const KEY_COUNT_UNKNOWN: u64 = u64::MAX;

/// Where the state machine stands: its applied index and the client keys the engine holds as of
/// it ([`MetaKey::KeyCount`]). Written only by the one `Kv` that applies; read by its views.
#[derive(Debug, Default)]
struct Progress {
    applied: std::sync::atomic::AtomicU64,
    keys: std::sync::atomic::AtomicU64,
    /// The state machine's clock as of the applied index ([`MetaKey::Clock`]).
    clock: std::sync::atomic::AtomicU64,
    /// The earliest deadline in the expiry index (`u64::MAX`: none).
    next_expiry: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn applied(&self) -> u64 {
        self.applied.load(std::sync::atomic::Ordering::Acquire)
    }

    fn keys(&self) -> u64 {
        self.keys.load(std::sync::atomic::Ordering::Acquire)
    }

    fn clock(&self) -> u64 {
        self.clock.load(std::sync::atomic::Ordering::Acquire)
    }

    fn next_expiry(&self) -> u64 {
        self.next_expiry.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Publish a new position: the key count, clock and next deadline first, so a reader that sees
    /// the new index also sees what goes with it (or a later one).
    fn publish(&self, applied: u64, keys: u64, clock: u64, next_expiry: Option<u64>) {
        use std::sync::atomic::Ordering::Release;
        self.keys.store(keys, Release);
        self.clock.store(clock, Release);
        if let Some(next) = next_expiry {
            self.next_expiry.store(next, Release);
        }
        self.applied.store(applied, Release);
    }
}

/// The state machine over an engine.
#[derive(Debug)]
pub struct Kv<E: Engine> {
    /// Shared so a snapshot can be written from the engine's point-in-time view on a worker thread
    /// while the raft loop goes on applying ([`Kv::shared_engine`]).
    engine: std::sync::Arc<E>,
    mode: FsmSync,
    /// The applied index and key count, shared with every [`Kv::read_view`]: the applier publishes
    /// each batch's, and the raft loop and reads see them move.
    progress: std::sync::Arc<Progress>,
    /// Reads off the raft loop hold it shared while they run; a snapshot install holds it exclusively
    /// while it replaces the whole state, so a multi-key read (MGET, a SCAN page) never sees part of
    /// the old state and part of the new ([`Kv::read_view`]).
    state_gate: std::sync::Arc<std::sync::RwLock<()>>,
    /// Whether the engine records [`MetaKey::ValueFormat`] (the first applied batch writes it).
    format_recorded: std::sync::atomic::AtomicBool,
}

impl<E: Engine> Kv<E> {
    /// Wrap an opened engine; the applied index is read from it (0 for a fresh, empty one).
    pub fn new(engine: E, mode: FsmSync) -> Result<Self, FsmError> {
        let applied = Self::read_applied(&engine)?;
        let keys = Self::read_key_count(&engine)?;
        let format_recorded = Self::check_value_format(&engine)?;
        let progress = Progress::default();
        progress.publish(applied, keys, Self::read_clock(&engine)?, Some(Self::read_next_expiry(&engine)?));
        Ok(Kv {
            engine: std::sync::Arc::new(engine),
            mode,
            progress: std::sync::Arc::new(progress),
            state_gate: std::sync::Arc::default(),
            format_recorded: std::sync::atomic::AtomicBool::new(format_recorded),
        })
    }

    /// Whether the engine records this build's value format. Values written before the format
    /// existed would be misread (their first byte taken for a header): refuse them.
    fn check_value_format(engine: &E) -> Result<bool, FsmError> {
        match engine.meta(MetaKey::ValueFormat)?.as_deref() {
            Some([VALUE_FORMAT]) => Ok(true),
            None if engine.scan(b"", None, 1)?.is_empty() => Ok(false),
            other => Err(FsmError::Corrupt {
                path: std::path::PathBuf::from("<engine meta>"),
                offset: 0,
                reason: format!(
                    "the state machine's values are in format {:?}, this build reads format {VALUE_FORMAT}: \
                     restore the node from a snapshot taken by a node of this build",
                    other.map(<[u8]>::to_vec)
                ),
            }),
        }
    }

    fn read_clock(engine: &E) -> Result<u64, FsmError> {
        Ok(engine.meta(MetaKey::Clock)?.as_deref().and_then(decode_u64).unwrap_or(0))
    }

    /// The earliest deadline in the expiry index, `u64::MAX` when it is empty (stale entries
    /// included: the sweep that reaches one drops it).
    fn read_next_expiry(engine: &E) -> Result<u64, FsmError> {
        let first = engine.index_scan(b"", 1)?;
        Ok(first.first().and_then(|k| value::parse_index_key(k)).map_or(u64::MAX, |(d, _)| d))
    }

    /// The engine's applied index. Missing on an engine that holds data means the meta value was lost
    /// or damaged: refuse, rather than re-apply the whole log on top of the data as if it were fresh.
    fn read_applied(engine: &E) -> Result<u64, FsmError> {
        match engine.applied_index()? {
            Some(applied) => Ok(applied),
            None if engine.scan(b"", None, 1)?.is_empty() => Ok(0),
            None => Err(FsmError::Corrupt {
                path: std::path::PathBuf::from("<engine meta>"),
                offset: 0,
                reason: "the applied index is missing or malformed on an engine that holds data".into(),
            }),
        }
    }

    /// Re-read the applied index after the engine's state was replaced (a snapshot restore), so the
    /// next `apply_raft` continues from the snapshot's index.
    pub fn reload_applied_index(&self) -> Result<u64, FsmError> {
        let applied = Self::read_applied(&self.engine)?;
        let keys = Self::read_key_count(&self.engine)?;
        let recorded = Self::check_value_format(&self.engine)?;
        self.format_recorded.store(recorded, std::sync::atomic::Ordering::Release);
        let (clock, next) = (Self::read_clock(&self.engine)?, Self::read_next_expiry(&self.engine)?);
        self.progress.publish(applied, keys, clock, Some(next));
        Ok(applied)
    }

    /// The key count the engine records, or (missing: an engine from before the count, or one a
    /// snapshot restore just replaced) a count of its keys, once.
    fn read_key_count(engine: &E) -> Result<u64, FsmError> {
        match engine.meta(MetaKey::KeyCount)?.as_deref().and_then(decode_u64) {
            Some(n) if n != KEY_COUNT_UNKNOWN => Ok(n),
            _ => Self::count_keys(engine),
        }
    }

    /// Count the engine's client keys, a page at a time.
    fn count_keys(engine: &E) -> Result<u64, FsmError> {
        const PAGE: usize = 4096;
        let mut n = 0u64;
        let mut start: Vec<u8> = Vec::new();
        loop {
            let page = engine.scan(&start, None, PAGE)?;
            n += page.len() as u64;
            match page.last() {
                Some((last, _)) if page.len() == PAGE => {
                    // The smallest key after `last`.
                    start = last.clone();
                    start.push(0);
                }
                _ => return Ok(n),
            }
        }
    }

    /// How many client keys the state machine holds (`DBSIZE`), as of the applied index: kept up to
    /// date by every apply, never counted on a read.
    pub fn key_count(&self) -> u64 {
        self.progress.keys()
    }

    /// The key count after `batch`: each distinct key it writes, as it stood before against what
    /// the batch leaves of it (a write that empties every key starts from zero). Deterministic on
    /// every replica: it depends on the state and the batch alone.
    /// `None`: the batch deletes part of the keyspace by range; count after writing it.
    fn key_count_after(&self, batch: &WriteBatch) -> Result<Option<u64>, FsmError> {
        use crate::fsm::Op;
        let mut after: std::collections::BTreeMap<&[u8], bool> = std::collections::BTreeMap::new();
        let mut base = Some(self.progress.keys());
        for op in batch.ops() {
            match op {
                Op::Put { key, .. } => {
                    after.insert(key, true);
                }
                Op::Delete { key } => {
                    after.insert(key, false);
                }
                Op::DeleteRange { start, end: None } if start.is_empty() => {
                    after.clear();
                    base = None;
                }
                // No command deletes part of the keyspace by range; were one to, count anew after.
                Op::DeleteRange { .. } => return Ok(None),
                Op::PutIndex { .. } | Op::DeleteIndex { .. } | Op::ClearIndex => {}
            }
        }
        let mut n = base.unwrap_or(0) as i64;
        for (key, exists) in after {
            let existed = base.is_some() && self.engine.get(key)?.is_some();
            n += i64::from(exists) - i64::from(existed);
        }
        Ok(Some(n.max(0) as u64))
    }

    pub fn applied_index(&self) -> u64 {
        self.progress.applied()
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// A view for reads and for the raft loop: the same engine, and the applied index and key count
    /// as the applier publishes them. Reads through it see the state at the moment or a later one
    /// (the engine moves on as the applier applies), never an earlier one: a read confirmed at an
    /// index stays linearizable. Only the `Kv` it was made from applies.
    pub fn read_view(&self) -> Kv<E> {
        Kv {
            engine: std::sync::Arc::clone(&self.engine),
            mode: self.mode,
            progress: std::sync::Arc::clone(&self.progress),
            state_gate: std::sync::Arc::clone(&self.state_gate),
            format_recorded: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// The state machine's clock as of the applied index: unix milliseconds, the latest leader
    /// timestamp an applied entry carried. Reads hide keys whose deadline it has reached.
    pub fn clock(&self) -> u64 {
        self.progress.clock()
    }

    /// The earliest deadline of the expiry index (`None`: no key expires). May name a key since
    /// overwritten or deleted; the sweep that reaches it drops it.
    pub fn next_expiry(&self) -> Option<u64> {
        Some(self.progress.next_expiry()).filter(|&d| d != u64::MAX)
    }

    /// Held shared by a batch of reads off the loop while it runs (see `state_gate`).
    pub fn reading(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.state_gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Held exclusively while a snapshot install replaces the whole state (see `state_gate`).
    pub fn replacing(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.state_gate.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine, for work off the raft loop (writing a snapshot from its point-in-time view).
    pub fn shared_engine(&self) -> std::sync::Arc<E> {
        std::sync::Arc::clone(&self.engine)
    }

    pub fn mode(&self) -> FsmSync {
        self.mode
    }

    /// Apply the committed raft entry `index` carrying `payload` (an encoded [`Command`]; empty for a
    /// raft-internal entry that only advances the index).
    pub fn apply_raft(&mut self, index: u64, payload: &[u8]) -> Result<Reply, FsmError> {
        self.apply_entry(index, 0, payload, true)
    }

    /// Apply a raft entry that is not the last of a batch of committed entries: under `sync` it is
    /// written without its own fsync, because the batch's last entry is written synced and that
    /// makes every earlier write of the engine durable with it (one fsync per batch instead of one
    /// per entry). Nobody hears of the entry before the batch ends; a crash before then loses it
    /// from the state machine only, and the WAL replays it (D3).
    pub fn apply_raft_unsynced(&mut self, index: u64, payload: &[u8]) -> Result<Reply, FsmError> {
        self.apply_entry(index, 0, payload, false)
    }

    /// Apply entry `index` stamped by its leader at `stamp` (unix milliseconds; 0: no stamp). The
    /// state machine's clock moves to the stamp if it is later (never back: leaders' clocks differ),
    /// and the entry's expiry decisions are made against that clock, so every replica makes them
    /// alike. `last_of_batch`: see [`Kv::apply_raft_unsynced`].
    pub fn apply_entry(
        &mut self,
        index: u64,
        stamp: u64,
        payload: &[u8],
        last_of_batch: bool,
    ) -> Result<Reply, FsmError> {
        let applied = self.progress.applied();
        if index <= applied {
            return Ok(Reply::AlreadyApplied);
        }
        if index != applied + 1 {
            return Err(FsmError::OutOfOrder { index, applied });
        }
        let clock = self.progress.clock();
        let now = clock.max(stamp);
        let (mut batch, reply) = if payload.is_empty() {
            (WriteBatch::new(), Reply::Ok)
        } else {
            match Command::decode(payload) {
                Ok(cmd) => self.plan(&cmd, now, index)?,
                Err(e) => {
                    (WriteBatch::new(), Reply::Error(format!("ERR malformed command in entry {index}: {e}")))
                }
            }
        };
        let keys = self.key_count_after(&batch)?;
        let moves_index = batch
            .ops()
            .iter()
            .any(|op| matches!(op, Op::PutIndex { .. } | Op::DeleteIndex { .. } | Op::ClearIndex));
        // WATCH of an absent key compares with the last entry that deleted anything.
        if batch.ops().iter().any(|op| matches!(op, Op::Delete { .. } | Op::DeleteRange { .. })) {
            batch.set_meta(MetaKey::LastDelete, index.to_be_bytes().to_vec());
        }
        batch.set_applied_index(index);
        if now != clock {
            batch.set_meta(MetaKey::Clock, now.to_be_bytes().to_vec());
        }
        let record_format = !self.format_recorded.load(std::sync::atomic::Ordering::Acquire);
        if record_format {
            batch.set_meta(MetaKey::ValueFormat, vec![VALUE_FORMAT]);
        }
        // Unknown (a partial range delete): recorded as such, so an open after a crash counts anew.
        batch.set_meta(MetaKey::KeyCount, keys.unwrap_or(KEY_COUNT_UNKNOWN).to_be_bytes().to_vec());
        let mode = match self.mode {
            FsmSync::Sync if last_of_batch => WriteMode::Sync,
            FsmSync::Sync | FsmSync::NoSync => WriteMode::NoSync,
        };
        // On error the applied index stays where it was: the entry is neither skipped nor half done.
        self.engine.write(&batch, mode)?;
        if record_format {
            self.format_recorded.store(true, std::sync::atomic::Ordering::Release);
        }
        let keys = match keys {
            Some(keys) => keys,
            // The next batch records it.
            None => Self::count_keys(&self.engine)?,
        };
        let next = if moves_index { Some(Self::read_next_expiry(&self.engine)?) } else { None };
        self.progress.publish(index, keys, now, next);
        Ok(reply)
    }

    /// Read a key: its value, or `None` when it is missing or its deadline has passed by the
    /// state machine's clock.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
        Ok(self.get_entry(key)?.map(|(v, _)| v))
    }

    /// A key's value and deadline, unless it is missing or expired.
    pub fn get_entry(&self, key: &[u8]) -> Result<Option<Entry>, FsmError> {
        visible(self.engine.get(key)?, self.progress.clock())
    }

    /// What WATCH records of a key: the raft index that last wrote it (0 for a value written before
    /// versions were kept), or `None` when it is missing or expired.
    pub fn version(&self, key: &[u8]) -> Result<Option<u64>, FsmError> {
        version_at(self.engine.get(key)?, self.progress.clock())
    }

    /// Client keys from `start` with their values, at most `limit` stored keys looked at (so a page
    /// of expired keys still moves a scan on): the visible ones, and the last key looked at.
    pub fn scan_visible(&self, start: &[u8], limit: usize) -> Result<(KeyValues, Option<Vec<u8>>), FsmError> {
        let page = self.engine.scan(start, None, limit)?;
        let last = if page.len() == limit { page.last().map(|(k, _)| k.clone()) } else { None };
        let now = self.progress.clock();
        let mut out = Vec::with_capacity(page.len());
        for (k, raw) in page {
            if let Some((v, _)) = visible(Some(raw), now)? {
                out.push((k, v));
            }
        }
        Ok((out, last))
    }

    /// Turn a command into the batch it writes and the reply it gives. Reads see the state before
    /// this command (applies are serialized), with `now` as the clock.
    fn plan(&self, cmd: &Command, now: u64, index: u64) -> Result<(WriteBatch, Reply), FsmError> {
        let mut tx = Tx { engine: &*self.engine, batch: WriteBatch::new(), overlay: None, now, index };
        let reply = Self::plan_in(&mut tx, cmd)?;
        Ok((tx.batch, reply))
    }

    /// Plan `cmd` into `tx`: its reads see the engine as `tx` has changed it so far.
    fn plan_in(tx: &mut Tx<'_, E>, cmd: &Command) -> Result<Reply, FsmError> {
        use command::Kind;
        let reply = match &cmd.kind {
            None => Reply::Error("ERR empty command".into()),
            Some(Kind::Set(set)) => {
                let condition = SetCondition::from_i32(set.condition).unwrap_or(SetCondition::Always);
                // A plain SET is a blind write: it reads nothing (an index entry its old value
                // left is stale and dropped by the sweep).
                let old = match (condition, set.get, set.keep_ttl) {
                    (SetCondition::Always, false, false) => None,
                    _ => Some(tx.entry(&set.key)?),
                };
                let exists = old.as_ref().map(Option::is_some);
                let write = !matches!(
                    (condition, exists),
                    (SetCondition::IfAbsent, Some(true)) | (SetCondition::IfPresent, Some(false))
                );
                if write {
                    let deadline = match (&set.expiry, set.keep_ttl) {
                        (Some(e), _) => Some(deadline_for(e, tx.now)),
                        (None, true) => old.as_ref().and_then(|o| o.as_ref()).and_then(|(_, d)| *d),
                        (None, false) => None,
                    };
                    tx.put(set.key.clone(), set.value.clone(), deadline);
                }
                match (set.get, write) {
                    // As Redis: SET … GET answers the old value whether or not it wrote.
                    (true, _) => Reply::Value(old.flatten().map(|(v, _)| v)),
                    (false, true) => Reply::Ok,
                    (false, false) => Reply::NotWritten,
                }
            }
            Some(Kind::Del(del)) => {
                let mut count = 0i64;
                let mut seen = std::collections::BTreeSet::new();
                for key in &del.keys {
                    if seen.insert(key) && tx.get(key)?.is_some() {
                        count += 1;
                    }
                    tx.delete(key.clone());
                }
                Reply::Int(count)
            }
            Some(Kind::IncrBy(incr)) => {
                let (current, deadline) = match tx.entry(&incr.key)? {
                    None => (Some(0i64), None),
                    Some((v, d)) => (parse_redis_int(&v), d),
                };
                match current.map(|c| c.checked_add(incr.delta)) {
                    None => Reply::Error("ERR value is not an integer or out of range".into()),
                    Some(None) => Reply::Error("ERR increment or decrement would overflow".into()),
                    Some(Some(n)) => {
                        // As Redis: INCR keeps the key's expiry.
                        tx.put(incr.key.clone(), n.to_string().into_bytes(), deadline);
                        Reply::Int(n)
                    }
                }
            }
            Some(Kind::MSet(mset)) => {
                for kv in &mset.pairs {
                    tx.put(kv.key.clone(), kv.value.clone(), None);
                }
                Reply::Ok
            }
            Some(Kind::FlushAll(_)) => {
                // Every data key; the applied index and the other metas live in their own namespace.
                tx.flush_all();
                Reply::Ok
            }
            Some(Kind::GetDel(g)) => {
                let old = tx.get(&g.key)?;
                if old.is_some() {
                    tx.delete(g.key.clone());
                }
                Reply::Value(old)
            }
            Some(Kind::Rename(r)) => match tx.entry(&r.from)? {
                None => Reply::Error("ERR no such key".into()),
                Some(_) if r.if_absent && tx.get(&r.to)?.is_some() => Reply::Int(0),
                Some((value, deadline)) => {
                    // Renaming a key onto itself changes nothing (Redis answers OK, or 0 for NX).
                    // The expiry moves with the value.
                    if r.from != r.to {
                        tx.delete(r.from.clone());
                        tx.put(r.to.clone(), value, deadline);
                    }
                    match (r.if_absent, r.from == r.to) {
                        (true, true) => Reply::Int(0),
                        (true, false) => Reply::Int(1),
                        (false, _) => Reply::Ok,
                    }
                }
            },
            Some(Kind::Copy(c)) => match tx.entry(&c.from)? {
                None => Reply::Int(0),
                Some(_) if c.from == c.to => Reply::Int(0),
                Some(_) if !c.replace && tx.get(&c.to)?.is_some() => Reply::Int(0),
                Some((value, deadline)) => {
                    tx.put(c.to.clone(), value, deadline);
                    Reply::Int(1)
                }
            },
            Some(Kind::MSetNx(mset)) => {
                let mut any = false;
                for kv in &mset.pairs {
                    any |= tx.get(&kv.key)?.is_some();
                }
                if any {
                    Reply::Int(0)
                } else {
                    for kv in &mset.pairs {
                        tx.put(kv.key.clone(), kv.value.clone(), None);
                    }
                    Reply::Int(1)
                }
            }
            Some(Kind::SetRange(r)) => {
                let (current, deadline) = match tx.entry(&r.key)? {
                    Some((v, d)) => (Some(v), d),
                    None => (None, None),
                };
                let end = usize::try_from(r.offset)
                    .ok()
                    .and_then(|o| o.checked_add(r.value.len()))
                    .filter(|&end| end <= MAX_VALUE_BYTES);
                match end {
                    // Nothing to write: the length as it is, and no key created.
                    _ if r.value.is_empty() => Reply::Int(current.map_or(0, |v| v.len() as i64)),
                    None => {
                        Reply::Error("ERR string exceeds maximum allowed size (proto-max-bulk-len)".into())
                    }
                    Some(end) => {
                        let mut value = current.unwrap_or_default();
                        if value.len() < end {
                            value.resize(end, 0);
                        }
                        value[end - r.value.len()..end].copy_from_slice(&r.value);
                        let len = value.len() as i64;
                        tx.put(r.key.clone(), value, deadline);
                        Reply::Int(len)
                    }
                }
            }
            Some(Kind::IncrByFloat(f)) => {
                let (current, deadline) = match tx.entry(&f.key)? {
                    None => (Some(0.0), None),
                    Some((v, d)) => (parse_redis_float(&v), d),
                };
                match current {
                    None => Reply::Error("ERR value is not a valid float".into()),
                    Some(c) => {
                        let n = c + f.increment;
                        if n.is_finite() {
                            let text = format_redis_float(n).into_bytes();
                            tx.put(f.key.clone(), text.clone(), deadline);
                            Reply::Value(Some(text))
                        } else {
                            Reply::Error("ERR increment would produce NaN or Infinity".into())
                        }
                    }
                }
            }
            Some(Kind::Multi(multi)) => {
                // MULTI/EXEC: every command in order, each seeing the ones before it, in one batch:
                // all of it is applied on every replica, or (an engine error) none of it.
                if tx.overlay.is_some() {
                    return Ok(Reply::Error("ERR MULTI calls can not be nested".into()));
                }
                // WATCH: a watched key written (or expired, or deleted) since it was read aborts the
                // whole transaction, on every replica alike.
                for w in &multi.watches {
                    if Self::changed_since(tx, w)? {
                        return Ok(Reply::Aborted);
                    }
                }
                tx.overlay = Some(Overlay::default());
                let mut replies = Vec::with_capacity(multi.commands.len());
                for c in &multi.commands {
                    replies.push(Self::plan_in(tx, c)?);
                }
                tx.overlay = None;
                Reply::Array(replies)
            }
            Some(Kind::Read(read)) => {
                let kind = ReadKind::from_i32(read.kind).unwrap_or(ReadKind::Get);
                let mut values = Vec::with_capacity(read.keys.len());
                for key in &read.keys {
                    values.push(tx.get(key)?);
                }
                match (kind, values.as_slice()) {
                    (ReadKind::Get, [v]) => Reply::Value(v.clone()),
                    (ReadKind::StrLen, [v]) => Reply::Int(v.as_ref().map_or(0, |v| v.len() as i64)),
                    (ReadKind::MGet, _) => Reply::Array(values.into_iter().map(Reply::Value).collect()),
                    (ReadKind::Exists, _) => Reply::Int(values.iter().filter(|v| v.is_some()).count() as i64),
                    _ => Reply::Error("ERR malformed read in a transaction".into()),
                }
            }
            Some(Kind::SetExpiry(e)) => match tx.entry(&e.key)? {
                None => Reply::Int(0),
                Some((value, current)) => match &e.expiry {
                    // PERSIST
                    None if current.is_none() => Reply::Int(0),
                    None => {
                        tx.put(e.key.clone(), value, None);
                        Reply::Int(1)
                    }
                    Some(expiry) => {
                        let new = deadline_for(expiry, tx.now);
                        let condition =
                            ExpireCondition::from_i32(e.condition).unwrap_or(ExpireCondition::Always);
                        let allowed = match (condition, current) {
                            (ExpireCondition::Always, _) => true,
                            (ExpireCondition::IfNone, c) => c.is_none(),
                            (ExpireCondition::IfSome, c) => c.is_some(),
                            // No expiry counts as an infinite one, as in Redis.
                            (ExpireCondition::IfLater, c) => c.is_some_and(|c| new > c),
                            (ExpireCondition::IfEarlier, c) => c.is_none_or(|c| new < c),
                            (ExpireCondition::IfEarlierWithExpiry, c) => c.is_some_and(|c| new < c),
                        };
                        if allowed {
                            // A deadline already reached deletes the key (`Tx::put`), as in Redis.
                            tx.put(e.key.clone(), value, Some(new));
                        }
                        Reply::Int(i64::from(allowed))
                    }
                },
            },
            Some(Kind::GetEx(g)) => match tx.entry(&g.key)? {
                None => Reply::Value(None),
                Some((value, current)) => {
                    match (&g.expiry, g.persist) {
                        (Some(expiry), _) => {
                            tx.put(g.key.clone(), value.clone(), Some(deadline_for(expiry, tx.now)))
                        }
                        (None, true) if current.is_some() => tx.put(g.key.clone(), value.clone(), None),
                        (None, _) => {}
                    }
                    Reply::Value(Some(value))
                }
            },
            Some(Kind::Sweep(sweep)) => {
                // Due index entries in deadline order, from the engine (a sweep is never queued in a
                // transaction). An entry whose key no longer carries its deadline is stale: dropped.
                let limit = sweep.limit.clamp(1, SWEEP_MAX_KEYS) as usize;
                let mut removed = 0i64;
                for index_key in tx.engine.index_scan(b"", limit)? {
                    let Some((deadline, key)) = value::parse_index_key(&index_key) else {
                        tx.batch.push(Op::DeleteIndex { key: index_key });
                        continue;
                    };
                    if deadline > tx.now {
                        break;
                    }
                    if let Some(raw) = tx.engine.get(key)?
                        && value::deadline_of(&raw) == Some(deadline)
                    {
                        tx.delete(key.to_vec());
                        removed += 1;
                    }
                    tx.batch.push(Op::DeleteIndex { key: index_key });
                }
                Reply::Int(removed)
            }
            Some(Kind::Append(app)) => {
                let (mut value, deadline) = tx.entry(&app.key)?.unwrap_or_default();
                match appended_len(value.len(), app.value.len()) {
                    None => Reply::Error(format!(
                        "ERR string exceeds maximum allowed size ({MAX_VALUE_BYTES} bytes)"
                    )),
                    Some(len) => {
                        value.extend_from_slice(&app.value);
                        tx.put(app.key.clone(), value, deadline);
                        Reply::Int(len as i64)
                    }
                }
            }
        };
        Ok(reply)
    }
}

/// A key's value and its deadline (unix ms), if it expires.
pub type Entry = (Vec<u8>, Option<u64>);

/// A stored value as a read sees it at `now`: `None` when missing or expired.
fn visible(stored: Option<Vec<u8>>, now: u64) -> Result<Option<Entry>, FsmError> {
    let Some(stored) = stored else { return Ok(None) };
    let s = value::decode(&stored)?;
    if value::expired(s.deadline, now) {
        return Ok(None);
    }
    Ok(Some((s.value.to_vec(), s.deadline)))
}

/// A stored value's version as WATCH compares it at `now`: `None` when missing or expired.
fn version_at(stored: Option<Vec<u8>>, now: u64) -> Result<Option<u64>, FsmError> {
    let Some(stored) = stored else { return Ok(None) };
    let s = value::decode(&stored)?;
    Ok((!value::expired(s.deadline, now)).then_some(s.version.unwrap_or(0)))
}

/// The deadline an expiry names at `now` (a negative one is in the past: 0).
fn deadline_for(expiry: &command::Expiry, now: u64) -> u64 {
    let ms = if expiry.absolute {
        expiry.ms
    } else {
        i64::try_from(now).unwrap_or(i64::MAX).saturating_add(expiry.ms)
    };
    u64::try_from(ms).unwrap_or(0)
}

impl<E: Engine> Kv<E> {
    /// Did the watched key change since WATCH read it? Its version is the index of its last write,
    /// so a present key changed if its version differs. A key WATCH found absent may have been
    /// created and removed again since (its GET then saw a value that is gone): it changed if a
    /// value of it is stored (expired or not) that was written after the read, or, when none is, if
    /// any delete was applied after the read (the engine keeps no per-key record of deletions, so
    /// this may abort a transaction nothing touched; it never applies one something did).
    fn changed_since(tx: &Tx<'_, E>, w: &command::Watch) -> Result<bool, FsmError> {
        let stored = tx.engine.get(&w.key)?;
        let raw_version = match &stored {
            Some(s) => Some(value::decode(s)?.version.unwrap_or(0)),
            None => None,
        };
        let current = version_at(stored, tx.now)?;
        Ok(match (w.version, current, raw_version) {
            (expected, current, _) if expected != current => true,
            (Some(_), Some(_), _) => false,
            // Absent then and now.
            (_, _, Some(raw)) => raw > w.since,
            (_, _, None) => {
                let last_delete = tx.engine.meta(MetaKey::LastDelete)?.as_deref().and_then(decode_u64);
                last_delete.unwrap_or(0) > w.since
            }
        })
    }
}

/// Writes planned but not yet applied, as a transaction's later commands must see them: a key's new
/// value and deadline (`None`: deleted), and whether everything was flushed before them.
#[derive(Debug, Default)]
struct Overlay {
    values: std::collections::BTreeMap<Vec<u8>, Option<Entry>>,
    flushed: bool,
}

/// The batch one entry writes, and (inside MULTI) what it has written so far.
struct Tx<'a, E: Engine> {
    engine: &'a E,
    batch: WriteBatch,
    /// Only a transaction keeps one: a single command reads each key before it writes it.
    overlay: Option<Overlay>,
    /// The state machine's clock for this entry: what has expired.
    now: u64,
    /// The entry's raft index: the version of every key it writes.
    index: u64,
}

impl<E: Engine> Tx<'_, E> {
    /// A key's value and deadline as this entry sees it (missing or expired: `None`).
    fn entry(&self, key: &[u8]) -> Result<Option<Entry>, FsmError> {
        if let Some(o) = &self.overlay {
            if let Some(v) = o.values.get(key) {
                return Ok(v.clone());
            }
            if o.flushed {
                return Ok(None);
            }
        }
        visible(self.engine.get(key)?, self.now)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
        Ok(self.entry(key)?.map(|(v, _)| v))
    }

    /// Write `key` with `deadline`; a deadline this entry's clock has reached deletes it instead.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>, deadline: Option<u64>) {
        if value::expired(deadline, self.now) {
            return self.delete(key);
        }
        let stored = value::encode(&value, deadline, Some(self.index));
        if let Some(o) = &mut self.overlay {
            o.values.insert(key.clone(), Some((value, deadline)));
        }
        if let Some(d) = deadline {
            self.batch.push(Op::PutIndex { key: value::index_key(d, &key) });
        }
        self.batch.put(key, stored);
    }

    fn delete(&mut self, key: Vec<u8>) {
        if let Some(o) = &mut self.overlay {
            o.values.insert(key.clone(), None);
        }
        self.batch.delete(key);
    }

    fn flush_all(&mut self) {
        if let Some(o) = &mut self.overlay {
            o.values.clear();
            o.flushed = true;
        }
        self.batch.delete_range(Vec::new(), None);
        self.batch.push(Op::ClearIndex);
    }
}

/// A 64-bit integer as Redis reads one (`string2ll`): an optional `-`, then digits with no leading
/// zero (`0` alone is fine); no `+`, no spaces, no `-0`, nothing that overflows. Arguments and
/// stored values alike (INCR of `007` is not an integer, as in Redis).
pub fn parse_redis_int(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let well_formed = !digits.is_empty()
        && digits.len() <= 20
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || digits.len() == 1)
        && text != b"-0";
    if !well_formed {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse::<i64>().ok()
}

/// A float as Redis reads one (`string2ld`): the whole string, no leading space, no NaN; infinities
/// are read (and then refused as a result).
pub fn parse_redis_float(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() || text.starts_with(|c: char| c.is_ascii_whitespace()) || text.len() > 5000 {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    if body.starts_with("nan") {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| !v.is_nan())
}

/// INCRBYFLOAT's result as text: the shortest decimal that reads back as the same double, never in
/// exponent form, without a trailing `.0` (Redis prints `10.5`, `3`, `5000`).
pub fn format_redis_float(v: f64) -> String {
    let text = format!("{v}");
    match text.strip_suffix(".0") {
        Some(int) => int.to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failure guarded against: APPENDs growing a value past what a snapshot record may hold (a
    /// snapshot no node could restore). Invariant: the result is refused above the value limit, at
    /// exactly the limit it is taken, and the sum never overflows.
    fn kv() -> (tempfile::TempDir, Kv<crate::fsm::SimEngine>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let fs: std::sync::Arc<dyn crate::io::Fs> = std::sync::Arc::new(crate::io::RealFs::new());
        let engine = crate::fsm::SimEngine::open(fs, &dir.path().join("fsm"), Default::default())
            .expect("open an engine on an empty directory");
        (dir, Kv::new(engine, FsmSync::NoSync).expect("fresh state machine"))
    }

    fn apply(kv: &mut Kv<crate::fsm::SimEngine>, cmd: Command) -> Reply {
        let index = kv.applied_index() + 1;
        kv.apply_raft(index, &cmd.to_bytes()).expect("apply")
    }

    fn val(v: &str) -> Reply {
        Reply::Value(Some(v.as_bytes().to_vec()))
    }

    /// Failure guarded against: `DBSIZE` drifting from the keys the state machine holds (a write
    /// counted twice, an overwrite counted as a new key, a delete of a missing key counted) or lost
    /// at a restart. Invariant: after every command the kept count equals a full count, and a state
    /// machine opened again on the same engine starts from the same count.
    #[test]
    fn the_key_count_follows_every_write_and_survives_a_reopen() {
        let (dir, mut kv) = kv();
        let full = |kv: &Kv<crate::fsm::SimEngine>| {
            kv.engine().scan(b"", None, usize::MAX).expect("scan").len() as u64
        };
        let pairs = |p: &[(&str, &str)]| -> Vec<(Vec<u8>, Vec<u8>)> {
            p.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
        };
        let steps = vec![
            Command::set("a", "1", SetCondition::Always),
            Command::set("a", "2", SetCondition::Always),
            Command::set("b", "1", SetCondition::IfAbsent),
            Command::set("b", "9", SetCondition::IfAbsent),
            Command::mset(pairs(&[("c", "1"), ("a", "3"), ("c", "2")])),
            Command::del(vec![b"a".to_vec(), b"a".to_vec(), b"nope".to_vec()]),
            Command::rename("b", "d", false),
            Command::copy("d", "e", false),
            Command::get_del("e"),
            Command::incr_by("n", 1),
            Command::multi(vec![
                Command::set("x", "1", SetCondition::Always),
                Command::del(vec![b"x".to_vec()]),
                Command::set("y", "1", SetCondition::Always),
                Command::set("y", "2", SetCondition::Always),
            ]),
            Command::flush_all(),
            Command::set("z", "1", SetCondition::Always),
        ];
        for (i, cmd) in steps.into_iter().enumerate() {
            apply(&mut kv, cmd);
            assert_eq!(kv.key_count(), full(&kv), "after step {i}");
        }
        assert_eq!(kv.key_count(), 1);
        let engine_dir = dir.path().join("fsm");
        drop(kv);
        let fs: std::sync::Arc<dyn crate::io::Fs> = std::sync::Arc::new(crate::io::RealFs::new());
        let engine =
            crate::fsm::SimEngine::open(fs, &engine_dir, Default::default()).expect("reopen the engine");
        let kv = Kv::new(engine, FsmSync::NoSync).expect("reopened state machine");
        assert_eq!(kv.key_count(), 1, "the count is read back, not lost");
    }

    /// Failure guarded against: the string commands answering or writing otherwise than Redis (the
    /// replies of Redis 7.2 for the same sequence). Invariant: each reply and the state it leaves.
    #[test]
    fn string_and_keyspace_commands_answer_as_redis_does() {
        let (_dir, mut kv) = kv();
        assert_eq!(apply(&mut kv, Command::set_get("k", "1", SetCondition::Always)), Reply::Value(None));
        assert_eq!(apply(&mut kv, Command::set_get("k", "2", SetCondition::IfAbsent)), val("1"));
        assert_eq!(kv.get(b"k").expect("get"), Some(b"1".to_vec()), "NX GET did not write");
        assert_eq!(apply(&mut kv, Command::set_get("k", "3", SetCondition::Always)), val("1"));
        assert_eq!(apply(&mut kv, Command::get_del("k")), val("3"));
        assert_eq!(apply(&mut kv, Command::get_del("k")), Reply::Value(None));
        assert_eq!(apply(&mut kv, Command::rename("k", "j", false)), Reply::Error("ERR no such key".into()));
        apply(&mut kv, Command::set("a", "x", SetCondition::Always));
        apply(&mut kv, Command::set("b", "y", SetCondition::Always));
        assert_eq!(apply(&mut kv, Command::rename("a", "b", true)), Reply::Int(0));
        assert_eq!(apply(&mut kv, Command::rename("a", "a", false)), Reply::Ok);
        assert_eq!(apply(&mut kv, Command::rename("a", "b", false)), Reply::Ok);
        assert_eq!((kv.get(b"a").expect("get"), kv.get(b"b").expect("get")), (None, Some(b"x".to_vec())));
        assert_eq!(apply(&mut kv, Command::rename("b", "c", true)), Reply::Int(1));
        assert_eq!(apply(&mut kv, Command::copy("c", "d", false)), Reply::Int(1));
        assert_eq!(apply(&mut kv, Command::copy("c", "d", false)), Reply::Int(0));
        assert_eq!(apply(&mut kv, Command::copy("nope", "d", true)), Reply::Int(0));
        apply(&mut kv, Command::set("c", "z", SetCondition::Always));
        assert_eq!(apply(&mut kv, Command::copy("c", "d", true)), Reply::Int(1));
        assert_eq!(kv.get(b"d").expect("get"), Some(b"z".to_vec()));
        let pairs = |p: &[(&str, &str)]| {
            p.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
        };
        assert_eq!(apply(&mut kv, Command::mset_nx(pairs(&[("m1", "1"), ("d", "2")]))), Reply::Int(0));
        assert_eq!(kv.get(b"m1").expect("get"), None, "MSETNX wrote part of a refused batch");
        assert_eq!(apply(&mut kv, Command::mset_nx(pairs(&[("m1", "1"), ("m2", "2")]))), Reply::Int(1));
        assert_eq!(apply(&mut kv, Command::set_range("r", 0, "")), Reply::Int(0));
        assert_eq!(kv.get(b"r").expect("get"), None, "SETRANGE with nothing to write created the key");
        assert_eq!(apply(&mut kv, Command::set_range("r", 3, "ab")), Reply::Int(5));
        assert_eq!(kv.get(b"r").expect("get"), Some(b"\0\0\0ab".to_vec()));
        assert_eq!(apply(&mut kv, Command::set_range("r", 1, "Z")), Reply::Int(5));
        assert_eq!(kv.get(b"r").expect("get"), Some(b"\0Z\0ab".to_vec()));
        assert_eq!(
            apply(&mut kv, Command::set_range("r", MAX_VALUE_BYTES as u64, "x")),
            Reply::Error("ERR string exceeds maximum allowed size (proto-max-bulk-len)".into())
        );
        assert_eq!(apply(&mut kv, Command::incr_by_float("f", 10.5)), val("10.5"));
        assert_eq!(apply(&mut kv, Command::incr_by_float("f", 0.1)), val("10.6"));
        assert_eq!(apply(&mut kv, Command::incr_by_float("f", -5.6)), val("5"));
        apply(&mut kv, Command::set("f", "1e3", SetCondition::Always));
        assert_eq!(apply(&mut kv, Command::incr_by_float("f", 1.0)), val("1001"));
        apply(&mut kv, Command::set("f", " 1", SetCondition::Always));
        assert_eq!(
            apply(&mut kv, Command::incr_by_float("f", 1.0)),
            Reply::Error("ERR value is not a valid float".into())
        );
        apply(&mut kv, Command::set("f", "1", SetCondition::Always));
        assert_eq!(
            apply(&mut kv, Command::incr_by_float("f", f64::INFINITY)),
            Reply::Error("ERR increment would produce NaN or Infinity".into())
        );
        assert_eq!(parse_redis_float(b"nan"), None);
        assert_eq!(parse_redis_float(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(format_redis_float(3.0), "3");
        assert_eq!(format_redis_float(1e21), "1000000000000000000000");
    }

    /// Failure guarded against: a transaction applied partly, or its commands not seeing each other
    /// (a read after a write in the same MULTI answering the old value), or a FLUSHALL inside it
    /// hiding only some keys. Invariant: the replies are those of the commands run one after the
    /// other, and the state is their combined effect, written as one batch.
    #[test]
    fn a_transaction_applies_in_order_as_one_batch() {
        let (_dir, mut kv) = kv();
        apply(&mut kv, Command::set("a", "1", SetCondition::Always));
        apply(&mut kv, Command::set("old", "x", SetCondition::Always));
        let tx = Command::multi(vec![
            Command::incr_by("a", 5),
            Command::read(ReadKind::Get, vec![b"a".to_vec()]),
            Command::set("b", "2", SetCondition::IfAbsent),
            Command::rename("b", "c", false),
            Command::read(ReadKind::MGet, vec![b"b".to_vec(), b"c".to_vec()]),
            Command::incr_by("c", 1),
            Command::flush_all(),
            Command::read(ReadKind::Exists, vec![b"a".to_vec(), b"old".to_vec(), b"c".to_vec()]),
            Command::set("z", "after", SetCondition::Always),
            Command::incr_by("z", 1),
            Command::read(ReadKind::StrLen, vec![b"z".to_vec()]),
        ]);
        let want = Reply::Array(vec![
            Reply::Int(6),
            val("6"),
            Reply::Ok,
            Reply::Ok,
            Reply::Array(vec![Reply::Value(None), val("2")]),
            Reply::Int(3),
            Reply::Ok,
            Reply::Int(0),
            Reply::Ok,
            Reply::Error("ERR value is not an integer or out of range".into()),
            Reply::Int(5),
        ]);
        assert_eq!(apply(&mut kv, tx), want);
        for (key, v) in [("a", None), ("old", None), ("c", None), ("z", Some(b"after".to_vec()))] {
            assert_eq!(kv.get(key.as_bytes()).expect("get"), v, "{key}");
        }
        let nested = Command::multi(vec![Command::multi(Vec::new())]);
        assert_eq!(
            apply(&mut kv, nested),
            Reply::Array(vec![Reply::Error("ERR MULTI calls can not be nested".into())])
        );
    }

    /// Apply `cmd` as the next entry, stamped by its leader at `stamp` (unix ms).
    fn apply_at(kv: &mut Kv<crate::fsm::SimEngine>, stamp: u64, cmd: Command) -> Reply {
        let index = kv.applied_index() + 1;
        kv.apply_entry(index, stamp, &cmd.to_bytes(), true).expect("apply")
    }

    fn px(ms: i64) -> Option<command::Expiry> {
        Some(command::Expiry { ms, absolute: false })
    }

    fn set_px(key: &str, value: &str, ms: i64) -> Command {
        Command::set_with(key, value, SetCondition::Always, false, px(ms), false)
    }

    /// The raw engine contents (values with their headers, metas, index): two replicas that made the
    /// same decisions hold the same bytes.
    fn raw_state(kv: &Kv<crate::fsm::SimEngine>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all = kv.engine().scan(b"", None, usize::MAX).expect("scan");
        // The key count is compared through `key_count` (a restore leaves it to be counted at open).
        for meta in [MetaKey::AppliedIndex, MetaKey::Clock] {
            all.push((vec![meta.id()], kv.engine().meta(meta).expect("meta").unwrap_or_default()));
        }
        all.extend(
            kv.engine().index_scan(b"", usize::MAX).expect("index").into_iter().map(|k| (k, Vec::new())),
        );
        all
    }

    /// Failure guarded against: a replica deciding expiry by its own clock, so that a replica that
    /// applies later (a follower behind, or one replaying its log after a crash) expires keys the
    /// others kept and the replicas diverge. Invariant: expiry is decided by the entries' stamps
    /// alone: the same entries give the same bytes whenever they are applied, and a key is visible
    /// up to its deadline and hidden from the first entry whose stamp reaches it.
    #[test]
    fn expiry_is_decided_by_the_entries_stamps_on_every_replica() {
        let script = |kv: &mut Kv<crate::fsm::SimEngine>| -> Vec<Reply> {
            vec![
                apply_at(kv, 1_000, set_px("s", "1", 100)),
                apply_at(kv, 1_000, Command::set_expiry("none", px(5), ExpireCondition::Always)),
                apply_at(kv, 1_050, Command::incr_by("s", 1)),
                apply_at(kv, 1_099, Command::read(ReadKind::Get, vec![b"s".to_vec()])),
                apply_at(kv, 1_100, Command::read(ReadKind::Get, vec![b"s".to_vec()])),
                // A stamp behind the clock (a leader whose clock is slow) does not move it back.
                apply_at(kv, 900, Command::incr_by("s", 1)),
                apply_at(kv, 900, set_px("t", "x", 50)),
            ]
        };
        let (_a_dir, mut a) = kv();
        let (_b_dir, mut b) = kv();
        let replies = script(&mut a);
        assert_eq!(
            replies,
            vec![
                Reply::Ok,
                Reply::Int(0),
                Reply::Int(2),
                val("2"),
                Reply::Value(None),
                // Expired: INCR starts from nothing.
                Reply::Int(1),
                Reply::Ok,
            ]
        );
        assert_eq!(a.clock(), 1_100, "the clock is the latest stamp applied");
        // `t`'s deadline counts from the clock, not from the late stamp: 1100 + 50.
        assert_eq!(a.get_entry(b"t").expect("get"), Some((b"x".to_vec(), Some(1_150))));
        // The other replica applies the same entries (any time later, on any clock): same bytes.
        assert_eq!(script(&mut b), replies);
        assert_eq!(raw_state(&a), raw_state(&b));
    }

    /// Failure guarded against: the sweep deleting a key whose deadline an overwrite removed or moved
    /// (its old index entry is stale), or leaving due keys behind. Invariant: a sweep deletes exactly
    /// the keys whose *current* deadline its clock reached, drops every index entry it passes, and
    /// the next expiry the leader waits for is the earliest entry left.
    #[test]
    fn a_sweep_deletes_due_keys_and_drops_stale_index_entries() {
        let (_dir, mut kv) = kv();
        apply_at(&mut kv, 1_000, set_px("gone", "1", 100));
        apply_at(&mut kv, 1_000, set_px("overwritten", "1", 100));
        apply_at(&mut kv, 1_000, set_px("moved", "1", 100));
        apply_at(&mut kv, 1_000, set_px("later", "1", 5_000));
        apply_at(&mut kv, 1_010, Command::set("overwritten", "2", SetCondition::Always));
        apply_at(&mut kv, 1_010, Command::set_expiry("moved", px(1_000), ExpireCondition::Always));
        assert_eq!(kv.next_expiry(), Some(1_100));
        assert_eq!(kv.key_count(), 4);
        assert_eq!(apply_at(&mut kv, 1_200, Command::sweep(SWEEP_MAX_KEYS)), Reply::Int(1));
        assert_eq!(kv.key_count(), 3);
        assert_eq!(kv.get(b"overwritten").expect("get"), Some(b"2".to_vec()));
        assert_eq!(kv.get_entry(b"moved").expect("get"), Some((b"1".to_vec(), Some(2_010))));
        assert_eq!(kv.next_expiry(), Some(2_010), "stale entries are dropped, live ones kept");
        assert_eq!(apply_at(&mut kv, 6_000, Command::sweep(1)), Reply::Int(1), "one key per entry at most");
        assert_eq!(apply_at(&mut kv, 6_000, Command::sweep(SWEEP_MAX_KEYS)), Reply::Int(1));
        assert_eq!(kv.next_expiry(), None);
        assert_eq!(kv.key_count(), 1);
    }

    /// Failure guarded against: expiry options answering or behaving unlike Redis 7. Invariant: each
    /// command's reply and the expiry it leaves match Redis's for NX/XX/GT/LT, PERSIST, a deadline in
    /// the past, KEEPTTL, GETEX, and the commands that keep, move, copy or clear an expiry.
    #[test]
    fn expiry_commands_answer_as_redis_does() {
        let (_dir, mut kv) = kv();
        let t = 10_000;
        let deadline =
            |kv: &Kv<crate::fsm::SimEngine>, k: &str| kv.get_entry(k.as_bytes()).expect("get").map(|e| e.1);
        apply_at(&mut kv, t, Command::set("k", "v", SetCondition::Always));
        let expire = |ms, c| Command::set_expiry("k", px(ms), c);
        assert_eq!(
            apply_at(&mut kv, t, expire(1_000, ExpireCondition::IfSome)),
            Reply::Int(0),
            "XX, no expiry"
        );
        assert_eq!(
            apply_at(&mut kv, t, expire(1_000, ExpireCondition::IfLater)),
            Reply::Int(0),
            "GT, no expiry"
        );
        assert_eq!(apply_at(&mut kv, t, expire(1_000, ExpireCondition::IfNone)), Reply::Int(1), "NX");
        assert_eq!(
            apply_at(&mut kv, t, expire(2_000, ExpireCondition::IfNone)),
            Reply::Int(0),
            "NX, has one"
        );
        assert_eq!(apply_at(&mut kv, t, expire(500, ExpireCondition::IfLater)), Reply::Int(0), "GT, earlier");
        assert_eq!(apply_at(&mut kv, t, expire(500, ExpireCondition::IfEarlier)), Reply::Int(1), "LT");
        assert_eq!(deadline(&kv, "k"), Some(Some(t + 500)));
        assert_eq!(
            apply_at(&mut kv, t, Command::set_expiry("k", None, ExpireCondition::Always)),
            Reply::Int(1)
        );
        assert_eq!(
            apply_at(&mut kv, t, Command::set_expiry("k", None, ExpireCondition::Always)),
            Reply::Int(0)
        );
        assert_eq!(
            apply_at(&mut kv, t, expire(1, ExpireCondition::IfEarlierWithExpiry)),
            Reply::Int(0),
            "XX LT"
        );
        assert_eq!(
            apply_at(&mut kv, t, expire(1, ExpireCondition::IfEarlier)),
            Reply::Int(1),
            "LT, no expiry"
        );
        assert_eq!(
            apply_at(&mut kv, t, Command::set_expiry("missing", px(10), ExpireCondition::Always)),
            Reply::Int(0)
        );
        // A deadline already reached deletes the key, and counts as set.
        assert_eq!(apply_at(&mut kv, t, expire(-1, ExpireCondition::Always)), Reply::Int(1));
        assert_eq!(kv.get(b"k").expect("get"), None);
        assert_eq!(kv.key_count(), 0);
        // SET … PX, KEEPTTL, a plain SET clears; INCR, APPEND, SETRANGE keep; RENAME moves; COPY copies.
        apply_at(&mut kv, t, set_px("a", "1", 1_000));
        apply_at(&mut kv, t, Command::set_with("a", "2", SetCondition::Always, false, None, true));
        assert_eq!(deadline(&kv, "a"), Some(Some(t + 1_000)), "KEEPTTL");
        apply_at(&mut kv, t, Command::incr_by("a", 1));
        apply_at(&mut kv, t, Command::append("a", "0"));
        apply_at(&mut kv, t, Command::set_range("a", 0, "4"));
        assert_eq!(kv.get_entry(b"a").expect("get"), Some((b"40".to_vec(), Some(t + 1_000))));
        apply_at(&mut kv, t, Command::rename("a", "b", false));
        apply_at(&mut kv, t, Command::copy("b", "c", false));
        assert_eq!(
            (deadline(&kv, "a"), deadline(&kv, "b"), deadline(&kv, "c")),
            (None, Some(Some(t + 1_000)), Some(Some(t + 1_000)))
        );
        apply_at(&mut kv, t, Command::set("c", "x", SetCondition::Always));
        assert_eq!(deadline(&kv, "c"), Some(None), "a plain SET clears the expiry");
        // GETEX: the value, its expiry set or removed; an absolute deadline in the past deletes.
        assert_eq!(apply_at(&mut kv, t, Command::get_ex("c", px(10), false)), val("x"));
        assert_eq!(deadline(&kv, "c"), Some(Some(t + 10)));
        assert_eq!(apply_at(&mut kv, t, Command::get_ex("c", None, true)), val("x"));
        assert_eq!(deadline(&kv, "c"), Some(None));
        let past = Some(command::Expiry { ms: 5, absolute: true });
        assert_eq!(apply_at(&mut kv, t, Command::get_ex("c", past.clone(), false)), val("x"));
        assert_eq!(kv.get(b"c").expect("get"), None);
        assert_eq!(
            apply_at(&mut kv, t, Command::set_with("d", "1", SetCondition::Always, false, past, false)),
            Reply::Ok
        );
        assert_eq!(kv.get(b"d").expect("get"), None, "SET … PXAT in the past leaves no key");
        // SET … NX sees an expired key as absent.
        apply_at(&mut kv, t, set_px("e", "old", 10));
        assert_eq!(apply_at(&mut kv, t + 10, Command::set("e", "new", SetCondition::IfAbsent)), Reply::Ok);
    }

    /// Failure guarded against: a snapshot losing the expiry of its keys or the clock, so that a
    /// follower that installs it keeps a key the others expire, or expires at a different entry.
    /// Invariant: a state restored from a snapshot holds the same bytes as the state it was taken
    /// from (deadlines, the rebuilt index, the clock), and the two sweep alike afterwards.
    #[test]
    fn a_snapshot_carries_deadlines_and_the_clock() {
        let (dir, mut a) = kv();
        apply_at(&mut a, 1_000, set_px("x", "1", 100));
        apply_at(&mut a, 1_000, set_px("y", "1", 500));
        apply_at(&mut a, 1_020, Command::set("z", "1", SetCondition::Always));
        let fs = crate::io::RealFs::new();
        let snaps = dir.path().join("snap");
        std::fs::create_dir_all(&snaps).expect("snapshot dir");
        let file = crate::snapshot::write_snapshot(&fs, &snaps, a.engine(), b"", b"").expect("write");
        let (_b_dir, b) = kv();
        crate::snapshot::restore(&fs, b.engine(), &file.path, &file.token()).expect("restore");
        b.reload_applied_index().expect("reload");
        let mut b = b;
        assert_eq!((b.clock(), b.next_expiry()), (1_020, Some(1_100)));
        assert_eq!(raw_state(&b), raw_state(&a));
        assert_eq!(b.key_count(), a.key_count());
        assert_eq!(apply_at(&mut a, 1_200, Command::sweep(SWEEP_MAX_KEYS)), Reply::Int(1));
        assert_eq!(apply_at(&mut b, 1_200, Command::sweep(SWEEP_MAX_KEYS)), Reply::Int(1));
        assert_eq!(raw_state(&a), raw_state(&b));
    }

    /// Failure guarded against: a transaction applied although a key its client WATCHed changed
    /// after the client read it (a lost update), or aborted although nothing changed. Invariant:
    /// EXEC applies exactly when every watched key still has the version WATCH read (the index of
    /// its last write; absent stays absent), on every replica alike; an expiry or a rewrite of the
    /// same value counts as a change, and an aborted transaction writes nothing.
    #[test]
    fn exec_applies_only_if_no_watched_key_changed() {
        let (_dir, mut kv) = kv();
        let t = 1_000;
        apply_at(&mut kv, t, Command::set("k", "1", SetCondition::Always));
        let v = kv.version(b"k").expect("version");
        assert_eq!(v, Some(kv.applied_index()), "a key's version is the index that wrote it");
        assert_eq!(kv.version(b"absent").expect("version"), None);
        let since = |kv: &Kv<crate::fsm::SimEngine>| kv.applied_index();
        let tx = |watches: Vec<(&str, Option<u64>, u64)>| {
            let watches = watches.into_iter().map(|(k, v, s)| (k.as_bytes().to_vec(), v, s)).collect();
            Command::multi_watching(vec![Command::incr_by("k", 1)], watches)
        };
        let s = since(&kv);
        assert_eq!(
            apply_at(&mut kv, t, tx(vec![("k", v, s), ("absent", None, s)])),
            Reply::Array(vec![Reply::Int(2)])
        );
        // `k` moved on (the transaction itself wrote it): the old version aborts, and nothing applies.
        assert_eq!(apply_at(&mut kv, t, tx(vec![("k", v, s)])), Reply::Aborted);
        assert_eq!(kv.get(b"k").expect("get"), Some(b"2".to_vec()));
        // The same value written again is a change, as in Redis.
        let (v, s) = (kv.version(b"k").expect("version"), since(&kv));
        apply_at(&mut kv, t, Command::set("k", "2", SetCondition::Always));
        assert_eq!(apply_at(&mut kv, t, tx(vec![("k", v, s)])), Reply::Aborted);
        // An absent key created meanwhile aborts; one that expired meanwhile too.
        let s = since(&kv);
        apply_at(&mut kv, t, Command::set("absent", "x", SetCondition::Always));
        assert_eq!(apply_at(&mut kv, t, tx(vec![("absent", None, s)])), Reply::Aborted);
        apply_at(&mut kv, t, set_px("e", "1", 100));
        let (e, s) = (kv.version(b"e").expect("version"), since(&kv));
        assert_eq!(apply_at(&mut kv, t + 100, tx(vec![("e", e, s)])), Reply::Aborted);
        // Absent at WATCH, created and deleted again before EXEC (the client's GET saw the value in
        // between): found by the simulation's compare-and-set workload. It must abort, whether the
        // key is gone by a DEL or by its expiry.
        let s = since(&kv);
        apply_at(&mut kv, t, Command::set("aba", "seen", SetCondition::Always));
        apply_at(&mut kv, t, Command::del(vec![b"aba".to_vec()]));
        assert_eq!(apply_at(&mut kv, t, tx(vec![("aba", None, s)])), Reply::Aborted);
        let s = since(&kv);
        apply_at(&mut kv, t, set_px("aba", "seen", 10));
        assert_eq!(apply_at(&mut kv, t + 10, tx(vec![("aba", None, s)])), Reply::Aborted);
        // Absent then and now, and nothing deleted since: applies.
        let s = since(&kv);
        assert_eq!(
            apply_at(&mut kv, t + 10, tx(vec![("never", None, s)])),
            Reply::Array(vec![Reply::Int(3)])
        );
        assert_eq!(kv.get(b"k").expect("get"), Some(b"3".to_vec()));
    }

    /// Failure guarded against: a node of this build reading values written before they had a
    /// header (their first byte taken for one). Invariant: an engine that holds data but records no
    /// value format is refused at open with a typed error that says what to do.
    #[test]
    fn values_from_before_the_format_are_refused_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fs: std::sync::Arc<dyn crate::io::Fs> = std::sync::Arc::new(crate::io::RealFs::new());
        let open = || {
            crate::fsm::SimEngine::open(fs.clone(), &dir.path().join("fsm"), Default::default())
                .expect("open")
        };
        let engine = open();
        let mut b = WriteBatch::new();
        b.put("old", "raw").set_applied_index(3);
        engine.write(&b, WriteMode::Sync).expect("write");
        drop(engine);
        match Kv::new(open(), FsmSync::Sync) {
            Err(FsmError::Corrupt { reason, .. }) => {
                assert!(reason.contains("restore the node from a snapshot"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_append_past_the_value_limit_is_refused() {
        assert_eq!(appended_len(4, 2), Some(6));
        assert_eq!(appended_len(MAX_VALUE_BYTES - 2, 2), Some(MAX_VALUE_BYTES));
        assert_eq!(appended_len(MAX_VALUE_BYTES - 2, 3), None);
        assert_eq!(appended_len(usize::MAX, 1), None);
    }
}
