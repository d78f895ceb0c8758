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

use super::{Engine, FsmError, MetaKey, WriteBatch, WriteMode, decode_u64};
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
    #[prost(oneof = "command::Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14")]
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
    }

    /// MULTI … EXEC: the queued commands, applied in order as one atomic batch.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Multi {
        #[prost(message, repeated, tag = "1")]
        pub commands: Vec<super::Command>,
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
        let set =
            command::Set { key: key.into(), value: value.into(), condition: condition as i32, get: false };
        Command { kind: Some(command::Kind::Set(set)) }
    }

    /// SET … GET / GETSET: like [`Command::set`], answering the previous value.
    pub fn set_get(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, condition: SetCondition) -> Self {
        let set =
            command::Set { key: key.into(), value: value.into(), condition: condition as i32, get: true };
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
        Command { kind: Some(command::Kind::Multi(command::Multi { commands })) }
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
}

impl Progress {
    fn applied(&self) -> u64 {
        self.applied.load(std::sync::atomic::Ordering::Acquire)
    }

    fn keys(&self) -> u64 {
        self.keys.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Publish a new position: the key count first, so a reader that sees the new index also sees
    /// the count that goes with it (or a later one).
    fn publish(&self, applied: u64, keys: u64) {
        self.keys.store(keys, std::sync::atomic::Ordering::Release);
        self.applied.store(applied, std::sync::atomic::Ordering::Release);
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
}

impl<E: Engine> Kv<E> {
    /// Wrap an opened engine; the applied index is read from it (0 for a fresh, empty one).
    pub fn new(engine: E, mode: FsmSync) -> Result<Self, FsmError> {
        let applied = Self::read_applied(&engine)?;
        let keys = Self::read_key_count(&engine)?;
        Ok(Kv {
            engine: std::sync::Arc::new(engine),
            mode,
            progress: std::sync::Arc::new(Progress {
                applied: std::sync::atomic::AtomicU64::new(applied),
                keys: std::sync::atomic::AtomicU64::new(keys),
            }),
            state_gate: std::sync::Arc::default(),
        })
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
        self.progress.publish(applied, keys);
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
        }
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
        self.apply_raft_with(index, payload, true)
    }

    /// Apply a raft entry that is not the last of a batch of committed entries: under `sync` it is
    /// written without its own fsync, because the batch's last entry is written synced and that
    /// makes every earlier write of the engine durable with it (one fsync per batch instead of one
    /// per entry). Nobody hears of the entry before the batch ends; a crash before then loses it
    /// from the state machine only, and the WAL replays it (D3).
    pub fn apply_raft_unsynced(&mut self, index: u64, payload: &[u8]) -> Result<Reply, FsmError> {
        self.apply_raft_with(index, payload, false)
    }

    fn apply_raft_with(
        &mut self,
        index: u64,
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
        let (mut batch, reply) = if payload.is_empty() {
            (WriteBatch::new(), Reply::Ok)
        } else {
            match Command::decode(payload) {
                Ok(cmd) => self.plan(&cmd)?,
                Err(e) => {
                    (WriteBatch::new(), Reply::Error(format!("ERR malformed command in entry {index}: {e}")))
                }
            }
        };
        let keys = self.key_count_after(&batch)?;
        batch.set_applied_index(index);
        // Unknown (a partial range delete): recorded as such, so an open after a crash counts anew.
        batch.set_meta(MetaKey::KeyCount, keys.unwrap_or(KEY_COUNT_UNKNOWN).to_be_bytes().to_vec());
        let mode = match self.mode {
            FsmSync::Sync if last_of_batch => WriteMode::Sync,
            FsmSync::Sync | FsmSync::NoSync => WriteMode::NoSync,
        };
        // On error the applied index stays where it was: the entry is neither skipped nor half done.
        self.engine.write(&batch, mode)?;
        let keys = match keys {
            Some(keys) => keys,
            // The next batch records it.
            None => Self::count_keys(&self.engine)?,
        };
        self.progress.publish(index, keys);
        Ok(reply)
    }

    /// Read a key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
        self.engine.get(key)
    }

    /// Turn a command into the batch it writes and the reply it gives. Reads see the state before
    /// this command (applies are serialized).
    fn plan(&self, cmd: &Command) -> Result<(WriteBatch, Reply), FsmError> {
        let mut tx = Tx { engine: &*self.engine, batch: WriteBatch::new(), overlay: None };
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
                let old = match (condition, set.get) {
                    (SetCondition::Always, false) => None,
                    _ => Some(tx.get(&set.key)?),
                };
                let exists = old.as_ref().map(Option::is_some);
                let write = !matches!(
                    (condition, exists),
                    (SetCondition::IfAbsent, Some(true)) | (SetCondition::IfPresent, Some(false))
                );
                if write {
                    tx.put(set.key.clone(), set.value.clone());
                }
                match (set.get, write) {
                    // As Redis: SET … GET answers the old value whether or not it wrote.
                    (true, _) => Reply::Value(old.flatten()),
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
                let current = match tx.get(&incr.key)? {
                    None => Some(0i64),
                    Some(v) => std::str::from_utf8(&v).ok().and_then(|s| s.parse::<i64>().ok()),
                };
                match current.map(|c| c.checked_add(incr.delta)) {
                    None => Reply::Error("ERR value is not an integer or out of range".into()),
                    Some(None) => Reply::Error("ERR increment or decrement would overflow".into()),
                    Some(Some(n)) => {
                        tx.put(incr.key.clone(), n.to_string().into_bytes());
                        Reply::Int(n)
                    }
                }
            }
            Some(Kind::MSet(mset)) => {
                for kv in &mset.pairs {
                    tx.put(kv.key.clone(), kv.value.clone());
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
            Some(Kind::Rename(r)) => match tx.get(&r.from)? {
                None => Reply::Error("ERR no such key".into()),
                Some(_) if r.if_absent && tx.get(&r.to)?.is_some() => Reply::Int(0),
                Some(value) => {
                    // Renaming a key onto itself changes nothing (Redis answers OK, or 0 for NX).
                    if r.from != r.to {
                        tx.delete(r.from.clone());
                        tx.put(r.to.clone(), value);
                    }
                    match (r.if_absent, r.from == r.to) {
                        (true, true) => Reply::Int(0),
                        (true, false) => Reply::Int(1),
                        (false, _) => Reply::Ok,
                    }
                }
            },
            Some(Kind::Copy(c)) => match tx.get(&c.from)? {
                None => Reply::Int(0),
                Some(_) if c.from == c.to => Reply::Int(0),
                Some(_) if !c.replace && tx.get(&c.to)?.is_some() => Reply::Int(0),
                Some(value) => {
                    tx.put(c.to.clone(), value);
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
                        tx.put(kv.key.clone(), kv.value.clone());
                    }
                    Reply::Int(1)
                }
            }
            Some(Kind::SetRange(r)) => {
                let current = tx.get(&r.key)?;
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
                        tx.put(r.key.clone(), value);
                        Reply::Int(len)
                    }
                }
            }
            Some(Kind::IncrByFloat(f)) => {
                let current = match tx.get(&f.key)? {
                    None => Some(0.0),
                    Some(v) => parse_redis_float(&v),
                };
                match current {
                    None => Reply::Error("ERR value is not a valid float".into()),
                    Some(c) => {
                        let n = c + f.increment;
                        if n.is_finite() {
                            let text = format_redis_float(n).into_bytes();
                            tx.put(f.key.clone(), text.clone());
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
            Some(Kind::Append(app)) => {
                let mut value = tx.get(&app.key)?.unwrap_or_default();
                match appended_len(value.len(), app.value.len()) {
                    None => Reply::Error(format!(
                        "ERR string exceeds maximum allowed size ({MAX_VALUE_BYTES} bytes)"
                    )),
                    Some(len) => {
                        value.extend_from_slice(&app.value);
                        tx.put(app.key.clone(), value);
                        Reply::Int(len as i64)
                    }
                }
            }
        };
        Ok(reply)
    }
}

/// Writes planned but not yet applied, as a transaction's later commands must see them: a key's new
/// value (`None`: deleted), and whether everything was flushed before them.
#[derive(Debug, Default)]
struct Overlay {
    values: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    flushed: bool,
}

/// The batch one entry writes, and (inside MULTI) what it has written so far.
struct Tx<'a, E: Engine> {
    engine: &'a E,
    batch: WriteBatch,
    /// Only a transaction keeps one: a single command reads each key before it writes it.
    overlay: Option<Overlay>,
}

impl<E: Engine> Tx<'_, E> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FsmError> {
        if let Some(o) = &self.overlay {
            if let Some(v) = o.values.get(key) {
                return Ok(v.clone());
            }
            if o.flushed {
                return Ok(None);
            }
        }
        self.engine.get(key)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if let Some(o) = &mut self.overlay {
            o.values.insert(key.clone(), Some(value.clone()));
        }
        self.batch.put(key, value);
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
    }
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

    #[test]
    fn an_append_past_the_value_limit_is_refused() {
        assert_eq!(appended_len(4, 2), Some(6));
        assert_eq!(appended_len(MAX_VALUE_BYTES - 2, 2), Some(MAX_VALUE_BYTES));
        assert_eq!(appended_len(MAX_VALUE_BYTES - 2, 3), None);
        assert_eq!(appended_len(usize::MAX, 1), None);
    }
}
