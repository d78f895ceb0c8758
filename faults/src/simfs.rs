//! [`SimFs`]: a deterministic in-memory disk with a page cache, durable media and a crash model.
//!
//! # Model
//!
//! * Every file keeps two images: `data` (what processes read: the page cache) and `durable` (what the
//!   media holds), plus the byte ranges written since the last sync. `sync` copies those ranges (and
//!   the length) from cache to media.
//! * Every directory keeps two child maps: `children` (what processes see) and `durable_children`
//!   (what the media's directory block holds). `sync_dir` copies one to the other. Create, rename and
//!   remove change `children` only. This is stricter than ext4's journal (which commits a rename
//!   atomically): a rename between two directories is durable in each only after *that* directory is
//!   synced, so callers must sync both.
//! * [`CrashKind::ProcessKill`]: the page cache survives; open handles die. An armed crash that lands
//!   on a write lets a prefix of its sectors reach the cache first (a write stopped part way).
//! * [`CrashKind::PowerLoss`]: every directory reverts to its durable children (never-synced entries
//!   vanish, unsynced removals come back); every unsynced sector of a surviving file is kept, dropped
//!   (the media's previous bytes; zeros past the durable end) or filled with garbage, drawn
//!   independently from [`crate::SectorOdds`]. Only the unsynced bytes of a sector change: synced
//!   data is never touched. An unsynced length change survives with the keep odds.
//! * Faults: `EIO`, bit flips ([`crate::FaultRule`]), `ENOSPC` at a capacity, `EXDEV` across
//!   declared mounts, explicit [`SimFs::flip_bit`]. Faults are applied to the stored bytes, so a
//!   re-read never heals them.
//! * All randomness comes from one `ChaCha8` stream seeded at construction; maps are `BTreeMap`s, so
//!   the same seed and the same calls give the same bytes.
//!
//! Counters of every fault path that fired are kept ([`SimFs::coverage`]) so a test can prove the
//! fault it names actually happened.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use durakv::io::{DeviceId, DirEntry, EntryKind, Fs, FsFile, Metadata, OpenOptions};
use durakv::probe::Observation;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::options::{FaultEffect, FaultRule, OpKind, OptionsError, SectorFate, SimFsOptions, glob_match};

/// Every name [`SimFs::coverage`] can report. Counting a name not listed here is a bug (a debug
/// assertion, and a test that reads this file's counters): a coverage table built from this list
/// must show every fault path, with 0 where it never fired.
pub const COVERAGE_KEYS: &[&str] = &[
    "crash.process_kill",
    "crash.power_loss",
    "crash.torn_write",
    "crash.torn_write.partial",
    "crash.after_op",
    "crash.after.write",
    "crash.after.sync",
    "crash.after.sync_dir",
    "crash.after.rename",
    "crash.after.remove",
    "crash.after.set_len",
    "crash.after.create",
    "crash.correlated",
    "power_loss.sector.keep",
    "power_loss.sector.drop",
    "power_loss.sector.garbage",
    "fault.eio.read",
    "fault.eio.write",
    "fault.eio.sync",
    "fault.eio.other",
    "fault.eio.sync.lost_pages",
    "fault.enospc",
    "fault.exdev",
    "fault.bit_flip.read",
    "fault.bit_flip.write",
    "fault.bit_flip.explicit",
];

/// How a simulated node dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CrashKind {
    /// OOM-kill or SIGKILL: the process dies, the kernel's page cache survives.
    ProcessKill,
    /// The machine loses power: the page cache is lost, unsynced sectors meet their fates.
    PowerLoss,
}

/// How much of a write that a crash interrupts reaches the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornWrite {
    /// The seeded RNG picks how many of the write's sectors landed (0 to all).
    Random,
    /// Exactly this many sectors (clamped to the write's sector count) landed.
    Sectors(u64),
    /// Some but not all of the write's sector pieces landed: a torn record. A crash armed on the
    /// writes to a path pattern with this waits for a write that crosses a sector boundary (a write
    /// inside one sector lands whole or not at all, so it cannot be torn).
    Partial,
}

/// The error every operation returns while the simulated process is dead (after an armed crash
/// fired, until [`SimFs::resume`]), and on a handle opened before a crash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("simulated crash: {0}")]
pub struct SimCrashed(pub &'static str);

/// Is this error the simulated crash (rather than an injected fault or a real bug)?
pub fn is_crash_error(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.downcast_ref::<SimCrashed>().is_some())
}

fn crashed(why: &'static str) -> io::Error {
    io::Error::other(SimCrashed(why))
}

fn os_err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file or directory", path.display()))
}

const ROOT: u64 = 0;

/// How many bytes one chunk of a file image holds.
const CHUNK: usize = 64 << 10;

/// A file image (the page cache's or the media's) as a list of shared, copy-on-write chunks of
/// [`CHUNK`] bytes instead of one `Vec`.
///
/// One `Vec` per image cost the simulator a good part of its time: appends to a log of several MiB
/// regrew (and so copied) the whole file, every power loss cloned each file's media image into its
/// cache, and a sync zero-filled the media image before copying over it. With chunks an append never
/// moves what is already written, a power loss shares the media's chunks with the cache (a chunk is
/// copied only if a later write changes it), and a sync of a whole chunk shares it the other way.
///
/// Invariant: `chunks.len()` is `len` divided by [`CHUNK`], rounded up; every chunk holds exactly
/// [`CHUNK`] bytes except the last, which holds the rest (1 to [`CHUNK`]). No chunk is empty.
#[derive(Debug, Clone, Default)]
struct Pages {
    chunks: Vec<Arc<Vec<u8>>>,
    len: usize,
}

impl Pages {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room for `extra` more bytes at the end of `chunk`: doubling (a small file stays small), but
    /// never past [`CHUNK`], so a chunk is reallocated at most a few times.
    fn reserve(chunk: &mut Vec<u8>, extra: usize) {
        let need = chunk.len() + extra;
        if need > chunk.capacity() {
            let target = need.max(chunk.capacity() * 2).min(CHUNK).max(need);
            chunk.reserve_exact(target - chunk.len());
        }
    }

    /// Append `bytes` at the end (`self.len`).
    fn append(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.chunks.last_mut() {
                Some(last) if last.len() < CHUNK => {
                    let last = Arc::make_mut(last);
                    let n = bytes.len().min(CHUNK - last.len());
                    Self::reserve(last, n);
                    last.extend_from_slice(&bytes[..n]);
                    self.len += n;
                    bytes = &bytes[n..];
                }
                _ => {
                    let n = bytes.len().min(CHUNK);
                    // A file's first chunk starts small (most files are); later ones are whole.
                    let mut chunk = Vec::with_capacity(if self.chunks.is_empty() { n } else { CHUNK });
                    chunk.extend_from_slice(&bytes[..n]);
                    self.chunks.push(Arc::new(chunk));
                    self.len += n;
                    bytes = &bytes[n..];
                }
            }
        }
    }

    /// Grow with zeros or cut to `new_len` bytes.
    fn resize(&mut self, new_len: usize) {
        if new_len < self.len {
            let keep = new_len.div_ceil(CHUNK);
            self.chunks.truncate(keep);
            if let Some(last) = self.chunks.last_mut() {
                let rest = new_len - (keep - 1) * CHUNK;
                if last.len() > rest {
                    Arc::make_mut(last).truncate(rest);
                }
            }
            self.len = new_len;
            return;
        }
        while self.len < new_len {
            match self.chunks.last_mut() {
                Some(last) if last.len() < CHUNK => {
                    let last = Arc::make_mut(last);
                    let n = (new_len - self.len).min(CHUNK - last.len());
                    Self::reserve(last, n);
                    last.resize(last.len() + n, 0);
                    self.len += n;
                }
                _ => {
                    let n = (new_len - self.len).min(CHUNK);
                    self.chunks.push(Arc::new(vec![0; n]));
                    self.len += n;
                }
            }
        }
    }

    /// Write `bytes` at `at`, growing the file with zeros up to `at` if it is shorter.
    fn write(&mut self, at: usize, bytes: &[u8]) {
        if at > self.len {
            self.resize(at);
        }
        let inside = (at + bytes.len()).min(self.len).saturating_sub(at);
        let mut pos = at;
        let mut rest = &bytes[..inside];
        while !rest.is_empty() {
            let (i, off) = (pos / CHUNK, pos % CHUNK);
            let chunk = Arc::make_mut(&mut self.chunks[i]);
            let n = rest.len().min(chunk.len() - off);
            chunk[off..off + n].copy_from_slice(&rest[..n]);
            pos += n;
            rest = &rest[n..];
        }
        self.append(&bytes[inside..]);
    }

    /// Copy `[at, at + buf.len())` (which must be inside the file) into `buf`.
    /// Append `n` bytes from `at` to `out` (no zero-filled buffer first).
    fn extend_into(&self, at: usize, n: usize, out: &mut Vec<u8>) {
        out.reserve(n);
        let (mut pos, end) = (at, at + n);
        while pos < end {
            let (i, off) = (pos / CHUNK, pos % CHUNK);
            let chunk = &self.chunks[i];
            let take = (end - pos).min(chunk.len() - off);
            out.extend_from_slice(&chunk[off..off + take]);
            pos += take;
        }
    }

    fn read(&self, at: usize, buf: &mut [u8]) {
        let mut pos = at;
        let mut done = 0;
        while done < buf.len() {
            let (i, off) = (pos / CHUNK, pos % CHUNK);
            let chunk = &self.chunks[i];
            let n = (buf.len() - done).min(chunk.len() - off);
            buf[done..done + n].copy_from_slice(&chunk[off..off + n]);
            pos += n;
            done += n;
        }
    }

    /// Write `src`'s bytes `[a, b)` (inside `src`) at the same offsets here, growing with zeros up
    /// to `a` as [`Pages::write`] does. A whole chunk of `src` that lands where this image's chunk
    /// of the same index is (or would be appended next) is shared instead of copied.
    fn copy_from(&mut self, src: &Pages, a: usize, b: usize) {
        let mut pos = a;
        while pos < b {
            let (i, off) = (pos / CHUNK, pos % CHUNK);
            let chunk = &src.chunks[i];
            let n = (b - pos).min(chunk.len() - off);
            if off == 0 && n == CHUNK && self.len >= i * CHUNK {
                if i < self.chunks.len() {
                    self.chunks[i] = Arc::clone(chunk);
                    self.len = self.len.max((i + 1) * CHUNK);
                } else {
                    // `self.len >= i * CHUNK` and no chunk `i`: the file ends exactly at its start.
                    self.chunks.push(Arc::clone(chunk));
                    self.len += CHUNK;
                }
            } else {
                self.write(pos, &chunk[off..off + n]);
            }
            pos += n;
        }
    }

    /// Flip bits of the byte at `at`; false if `at` is past the end.
    fn flip(&mut self, at: usize, mask: u8) -> bool {
        if at >= self.len {
            return false;
        }
        Arc::make_mut(&mut self.chunks[at / CHUNK])[at % CHUNK] ^= mask;
        true
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out
    }
}

/// One file's bytes at one moment ([`SimFs::durable_files`]): shares the disk's chunks, so it costs
/// no copy, and later writes to the disk do not change it.
#[derive(Debug, Clone)]
pub struct FileImage(Pages);

impl FileImage {
    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.0.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The file's bytes, in order, as consecutive pieces.
    pub fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        self.0.chunks.iter().map(|c| c.as_slice())
    }

    /// The file's bytes as one `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.to_vec()
    }
}

#[derive(Debug, Clone, Default)]
struct FileData {
    data: Pages,
    durable: Pages,
    /// Byte ranges written since the last sync: start -> end, disjoint and coalesced.
    dirty: BTreeMap<u64, u64>,
    /// The length changed (set_len) since the last sync.
    len_dirty: bool,
}

#[derive(Debug, Clone, Default)]
struct DirData {
    children: BTreeMap<String, u64>,
    durable_children: BTreeMap<String, u64>,
}

#[derive(Debug, Clone)]
enum Inode {
    File(FileData),
    Dir(DirData),
}

struct Armed {
    at_op: u64,
    kind: CrashKind,
    torn: TornWrite,
    /// Fire at the first matching operation at or after `at_op`, instead of at exactly `at_op`.
    on: Option<OpMatch>,
    /// Crash right after the operation completed (its effect is in the page cache, or on the media
    /// for a sync), instead of during it.
    after: bool,
}

/// Which operations an armed crash waits for.
struct OpMatch {
    /// The kind of operation (`None`: any).
    op: Option<OpKind>,
    /// A glob over the operation's path.
    pattern: String,
    /// Matching operations to let pass before the one the crash lands on.
    skip: u64,
    /// Operations on paths matching this glob never count (and the crash never lands on them).
    exclude: Option<String>,
}

/// A coverage key for a crash that landed right after an operation of this kind.
fn after_key(op: OpKind) -> &'static str {
    match op {
        // Reads are not durability operations: no crash is armed after one.
        OpKind::Read => "crash.after_op",
        OpKind::Write => "crash.after.write",
        OpKind::Sync => "crash.after.sync",
        OpKind::SyncDir => "crash.after.sync_dir",
        OpKind::Rename => "crash.after.rename",
        OpKind::Remove => "crash.after.remove",
        OpKind::SetLen => "crash.after.set_len",
        OpKind::Create => "crash.after.create",
    }
}

/// Called (outside the disk's lock) when the simulated process dies of a crash injected into this
/// disk: the harness kills the process at once, so it cannot act on anything after the crash point.
pub type HaltHook = Arc<dyn Fn() + Send + Sync>;

struct State {
    opts: SimFsOptions,
    rng: ChaCha8Rng,
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    /// Bumped by every crash; handles from an older generation are dead.
    generation: u64,
    /// Durability operations (everything but reads) run so far: the crash points.
    ops_done: u64,
    armed: Option<Armed>,
    /// A failpoint's "after" action: crash right after the next operation, of this kind.
    after_next: Option<CrashKind>,
    /// The operation running now is the one a crash lands right after: (kind, operation).
    after_this: Option<(CrashKind, OpKind)>,
    /// An injected crash halted the process during the operation running now.
    just_died: bool,
    /// Other disks whose machines lose power (or processes die) together with this one, the next
    /// time an injected crash halts it: a correlated fault.
    companions: Vec<SimFs>,
    on_halt: Option<HaltHook>,
    /// The kind of the latest crash (what companions suffer too).
    last_crash: CrashKind,
    halted: bool,
    rule_fires: Vec<u64>,
    coverage: BTreeMap<&'static str, u64>,
    /// Failpoints attached to node code running on this disk, by name.
    failpoints: BTreeMap<String, Attached>,
    /// How often each failpoint fired, by name.
    failpoint_fires: BTreeMap<String, u64>,
    /// A stall a failpoint in synchronous code left for the node's loop.
    stall: Option<Duration>,
    /// Canaries switched on (`durakv::failpoint::CANARIES`).
    canaries: std::collections::BTreeSet<String>,
    /// What the node on this disk reported (`durakv::probe`), with the clock's time, oldest first.
    observations: Vec<(u64, Observation)>,
    /// Set once a checker wants the observations: stamps each with the simulation's time. Until then
    /// nothing is kept (a disk in a unit test would only pile them up).
    clock: Option<fn() -> u64>,
    /// Print every durability operation to stderr (debugging a crash exploration).
    trace: bool,
}

/// What a failpoint does when it fires (see `durakv::failpoint` for the names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAction {
    /// The code at the failpoint gets an `io::Error` (`durakv::failpoint::injected_error`).
    Error,
    /// The process dies right there: the disk crashes with this kind and halts like an armed crash
    /// that fired ([`SimFs::is_halted`]).
    Kill(CrashKind),
    /// The code at the failpoint goes on; the process dies right *after* the next storage
    /// operation (the one the failpoint guards) completes, as [`SimFs::arm_crash_after`] does.
    KillAfter(CrashKind),
    /// The node stalls this long (a GC pause, a stuck disk, a slow network).
    Stall(Duration),
}

#[derive(Debug, Clone)]
struct Attached {
    action: FailAction,
    /// Fires left; `None` for no limit.
    left: Option<u64>,
}

/// The simulated disk. Cloning gives another handle to the same disk (one per simulated node, kept
/// across that node's restarts).
#[derive(Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFs").finish_non_exhaustive()
    }
}

impl SimFs {
    /// A fresh, empty disk (only `/` exists, durably).
    pub fn new(seed: u64, opts: SimFsOptions) -> Result<Self, OptionsError> {
        opts.validate()?;
        let mut inodes = BTreeMap::new();
        inodes.insert(ROOT, Inode::Dir(DirData::default()));
        let rule_fires = vec![0; opts.rules.len()];
        Ok(SimFs {
            state: Arc::new(Mutex::new(State {
                opts,
                rng: ChaCha8Rng::seed_from_u64(seed),
                inodes,
                next_ino: ROOT + 1,
                generation: 0,
                ops_done: 0,
                armed: None,
                after_next: None,
                after_this: None,
                just_died: false,
                companions: Vec::new(),
                on_halt: None,
                last_crash: CrashKind::ProcessKill,
                halted: false,
                rule_fires,
                coverage: BTreeMap::new(),
                failpoints: BTreeMap::new(),
                failpoint_fires: BTreeMap::new(),
                stall: None,
                canaries: Default::default(),
                observations: Vec::new(),
                clock: None,
                trace: false,
            })),
        })
    }

    /// A disk with default options.
    pub fn with_seed(seed: u64) -> Self {
        match Self::new(seed, SimFsOptions::default()) {
            Ok(fs) => fs,
            Err(e) => unreachable!("default options are valid: {e}"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in this module; the state is still the best record
        // of what happened, so keep using it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Crash now. Open handles die; the disk stays usable (the restarted process opens new handles).
    pub fn crash(&self, kind: CrashKind) {
        self.lock().crash(kind);
    }

    /// Crash during durability operation number `at_op` (0-based; see [`SimFs::ops_done`]): that
    /// operation does not complete (a write may land part way), it and every later operation fail with
    /// [`SimCrashed`] until [`SimFs::resume`].
    pub fn arm_crash(&self, at_op: u64, kind: CrashKind, torn: TornWrite) {
        self.lock().armed = Some(Armed { at_op, kind, torn, on: None, after: false });
    }

    /// Crash right *after* a durability operation completes: the `nth` (1-based) operation, from
    /// operation `after_op` on, of kind `op` (`None`: any kind) on a path matching `pattern`. The
    /// operation's effect stands (a write is in the page cache, a sync on the media, a rename in the
    /// directory), then the process dies (and with [`CrashKind::PowerLoss`] the machine loses power)
    /// before it can do anything else: the operation returns [`SimCrashed`], like every later one
    /// until [`SimFs::resume`]. This is where a crash lands between two synchronous calls, e.g. a
    /// rename and the fsync of its directory.
    pub fn arm_crash_after(
        &self,
        after_op: u64,
        op: Option<OpKind>,
        pattern: &str,
        nth: u64,
        kind: CrashKind,
    ) {
        let on = OpMatch { op, pattern: pattern.to_string(), skip: nth.max(1) - 1, exclude: None };
        self.lock().armed =
            Some(Armed { at_op: after_op, kind, torn: TornWrite::Random, on: Some(on), after: true });
    }

    /// The next time an injected crash (armed, after an operation, or at a failpoint) halts this
    /// disk's process, the same crash halts each of `others` at the same instant: a quorum that
    /// loses power together. One-shot; replaces earlier companions.
    pub fn crash_together_with(&self, others: Vec<SimFs>) {
        self.lock().companions = others;
    }

    /// A crash from outside (an operator's power cut of a mounted disk, see `crate::fuse`): the
    /// crash happens now and every operation fails until [`SimFs::resume`], like an armed crash that
    /// fired, but without companions or the halt hook (whoever cuts the power stops the processes).
    /// A no-op when already halted.
    pub fn cut(&self, kind: CrashKind) {
        let mut s = self.lock();
        if !s.halted {
            s.crash(kind);
            s.halted = true;
        }
    }

    /// The capacity this disk was given (`None`: unlimited).
    pub fn capacity(&self) -> Option<u64> {
        self.lock().opts.capacity_bytes
    }

    /// Run `hook` whenever an injected crash halts this disk's process (the harness kills the
    /// simulated process there and then).
    pub fn set_on_halt(&self, hook: HaltHook) {
        self.lock().on_halt = Some(hook);
    }

    /// Crash now and halt, as an injected crash does: every operation fails until
    /// [`SimFs::resume`]. A no-op when already halted.
    pub fn halt(&self, kind: CrashKind) {
        let hook = {
            let mut s = self.lock();
            if s.halted {
                return;
            }
            s.crash(kind);
            s.halted = true;
            s.cover("crash.correlated");
            s.on_halt.clone()
        };
        if let Some(hook) = hook {
            hook();
        }
    }

    /// End an operation: a crash armed to land right after it fires now; a process that died
    /// during it takes its companions with it and runs the halt hook, all outside the lock.
    fn settle<T>(&self, result: io::Result<T>) -> io::Result<T> {
        let (result, companions, hook) = {
            let mut s = self.lock();
            let mut result = result;
            if let Some((kind, op)) = s.after_this.take() {
                s.crash(kind);
                s.halted = true;
                s.just_died = true;
                s.cover("crash.after_op");
                s.cover(after_key(op));
                result = Err(crashed("killed right after this operation"));
            }
            if !std::mem::take(&mut s.just_died) {
                return result;
            }
            let kind = s.last_crash;
            (
                result,
                std::mem::take(&mut s.companions).into_iter().map(|c| (c, kind)).collect::<Vec<_>>(),
                s.on_halt.clone(),
            )
        };
        for (c, kind) in companions {
            c.halt(kind);
        }
        if let Some(hook) = hook {
            hook();
        }
        result
    }

    /// Crash inside the first write, from durability operation `after_op` on, to a path matching
    /// `pattern` (a glob whose `*` matches any run of characters, `/` included): an OOM-kill that lands while
    /// the process writes that file. Like [`SimFs::arm_crash`] otherwise.
    pub fn arm_crash_on_write(&self, after_op: u64, pattern: &str, kind: CrashKind, torn: TornWrite) {
        let on = OpMatch { op: Some(OpKind::Write), pattern: pattern.to_string(), skip: 0, exclude: None };
        self.lock().armed = Some(Armed { at_op: after_op, kind, torn, on: Some(on), after: false });
    }

    /// Crash during the `nth` (0-based) durability operation from now on whose path does not match
    /// `exclude` (a glob): like [`SimFs::arm_crash`], but counting only the operations that matter.
    /// A crash exploration of a program whose diagnostics log (RocksDB's `LOG`) writes a line per
    /// event would otherwise spend most of its crash points inside that log.
    pub fn arm_crash_skipping(&self, nth: u64, exclude: &str, kind: CrashKind, torn: TornWrite) {
        let mut s = self.lock();
        let on = OpMatch { op: None, pattern: "*".into(), skip: nth, exclude: Some(exclude.to_string()) };
        let at_op = s.ops_done;
        s.armed = Some(Armed { at_op, kind, torn, on: Some(on), after: false });
    }

    /// Print every durability operation (number, kind, path) to stderr from now on.
    pub fn set_trace(&self, on: bool) {
        self.lock().trace = on;
    }

    /// Is a crash armed that has not fired yet?
    pub fn is_armed(&self) -> bool {
        self.lock().armed.is_some()
    }

    /// The simulated process restarts: operations work again (old handles stay dead).
    pub fn resume(&self) {
        let mut s = self.lock();
        s.halted = false;
        s.armed = None;
        s.after_next = None;
        s.after_this = None;
        // A correlated crash that never fired died with the process it was waiting in.
        s.companions.clear();
        // A stall belonged to the dead process.
        s.stall = None;
    }

    /// Did an armed crash fire (and the process not yet resume)?
    pub fn is_halted(&self) -> bool {
        self.lock().halted
    }

    /// Durability operations run so far (writes, syncs, dir syncs, renames, removes, set_len, creates).
    pub fn ops_done(&self) -> u64 {
        self.lock().ops_done
    }

    /// How often each fault path fired, by name (`crash.power_loss`, `fault.eio.sync`, …).
    pub fn coverage(&self) -> BTreeMap<&'static str, u64> {
        self.lock().coverage.clone()
    }

    /// Attach `action` to the failpoint `name` for its next `times` hits (`None`: every hit until
    /// detached). Replaces whatever was attached there.
    pub fn attach_failpoint(&self, name: &str, action: FailAction, times: Option<u64>) {
        self.lock().failpoints.insert(name.to_string(), Attached { action, left: times });
    }

    /// Detach the failpoint `name`.
    pub fn detach_failpoint(&self, name: &str) {
        self.lock().failpoints.remove(name);
    }

    /// Switch on the canary `name`: the node code on this disk re-introduces that historic bug.
    pub fn enable_canary(&self, name: &str) {
        self.lock().canaries.insert(name.to_string());
    }

    /// Start keeping the node's observations (`durakv::probe`), each stamped with `clock` (the
    /// simulation's time, in milliseconds).
    pub fn record_observations(&self, clock: fn() -> u64) {
        self.lock().clock = Some(clock);
    }

    /// Take what the node on this disk reported since the last call (`durakv::probe`), in order, each
    /// with the time it was reported.
    pub fn take_observations(&self) -> Vec<(u64, Observation)> {
        std::mem::take(&mut self.lock().observations)
    }

    /// How often each failpoint fired.
    pub fn failpoint_fires(&self) -> BTreeMap<String, u64> {
        self.lock().failpoint_fires.clone()
    }

    /// Add a fault rule from now on (a scheduled fault: EIO from this moment).
    pub fn add_rule(&self, rule: FaultRule) -> Result<(), OptionsError> {
        rule.validate()?;
        let mut s = self.lock();
        s.opts.rules.push(rule);
        s.rule_fires.push(0);
        Ok(())
    }

    /// Remove every fault rule (the fault heals).
    pub fn clear_rules(&self) {
        let mut s = self.lock();
        s.opts.rules.clear();
        s.rule_fires.clear();
    }

    /// Change the capacity: writes that grow files past it fail with `ENOSPC`. `None`: unlimited.
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.lock().opts.capacity_bytes = capacity_bytes;
    }

    /// Bytes all files hold now (the page cache's view), as the capacity counts them.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    /// Flip one bit of a file on the media and in the cache (silent corruption).
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.resolve(path)?;
        let f = s.file_mut(ino, path)?;
        let mask = 1u8 << (bit % 8);
        let mut flipped = false;
        for image in [&mut f.data, &mut f.durable] {
            if let Ok(o) = usize::try_from(offset) {
                flipped |= image.flip(o, mask);
            }
        }
        if !flipped {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "offset past end of file"));
        }
        s.cover("fault.bit_flip.explicit");
        Ok(())
    }

    /// Flip a seeded random bit of a file; returns the offset and bit flipped.
    pub fn flip_random_bit(&self, path: &Path) -> io::Result<(u64, u8)> {
        let (offset, bit) = {
            let mut s = self.lock();
            let ino = s.resolve(path)?;
            let len = s.file_mut(ino, path)?.data.len() as u64;
            if len == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty file"));
            }
            let offset = s.rng.random_range(0..len);
            let bit = s.rng.random_range(0..8u8);
            (offset, bit)
        };
        self.flip_bit(path, offset, bit)?;
        Ok((offset, bit))
    }

    /// Every file's cached (what a process reads) image, by path.
    pub fn cached_image(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        self.lock().image(false)
    }

    /// Every file's durable image (what a power loss right now would start from), by path, walking
    /// the durable directory entries.
    pub fn durable_image(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        self.lock().image(true)
    }

    /// [`SimFs::durable_image`] without copying the bytes: each file as its chunks, shared with the
    /// disk (hashing every disk at the end of a run copied megabytes for nothing).
    pub fn durable_files(&self) -> BTreeMap<PathBuf, FileImage> {
        let s = self.lock();
        s.walk(true).into_iter().map(|(path, f)| (path, FileImage(f.durable.clone()))).collect()
    }
}

impl State {
    fn cover(&mut self, what: &'static str) {
        debug_assert!(COVERAGE_KEYS.contains(&what), "coverage key {what} is listed in COVERAGE_KEYS");
        *self.coverage.entry(what).or_insert(0) += 1;
    }

    fn sector(&self) -> u64 {
        self.opts.sector_size_bytes
    }

    fn file_mut(&mut self, ino: u64, path: &Path) -> io::Result<&mut FileData> {
        match self.inodes.get_mut(&ino) {
            Some(Inode::File(f)) => Ok(f),
            Some(Inode::Dir(_)) => Err(os_err(libc::EISDIR)),
            None => Err(not_found(path)),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> io::Result<&mut DirData> {
        match self.inodes.get_mut(&ino) {
            Some(Inode::Dir(d)) => Ok(d),
            Some(Inode::File(_)) => Err(os_err(libc::ENOTDIR)),
            None => Err(os_err(libc::ENOENT)),
        }
    }

    /// Split an absolute path into its names. `..` and relative paths are refused.
    fn names(path: &Path) -> io::Result<Vec<String>> {
        if !path.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("SimFs needs absolute paths, got {}", path.display()),
            ));
        }
        let mut out = Vec::new();
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => out.push(
                    n.to_str()
                        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "non-UTF-8 path"))?
                        .to_string(),
                ),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "`..` in SimFs path"));
                }
            }
        }
        Ok(out)
    }

    fn resolve(&self, path: &Path) -> io::Result<u64> {
        let mut ino = ROOT;
        for name in Self::names(path)? {
            ino = match self.inodes.get(&ino) {
                Some(Inode::Dir(d)) => *d.children.get(&name).ok_or_else(|| not_found(path))?,
                _ => return Err(os_err(libc::ENOTDIR)),
            };
        }
        Ok(ino)
    }

    /// The parent directory's inode and the last name.
    fn resolve_parent(&self, path: &Path) -> io::Result<(u64, String)> {
        let mut names = Self::names(path)?;
        let last = names
            .pop()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the root has no parent"))?;
        let mut ino = ROOT;
        for name in names {
            ino = match self.inodes.get(&ino) {
                Some(Inode::Dir(d)) => *d.children.get(&name).ok_or_else(|| not_found(path))?,
                _ => return Err(os_err(libc::ENOTDIR)),
            };
        }
        match self.inodes.get(&ino) {
            Some(Inode::Dir(_)) => Ok((ino, last)),
            _ => Err(os_err(libc::ENOTDIR)),
        }
    }

    fn device(&self, path: &Path) -> DeviceId {
        let mut best: Option<(usize, usize)> = None;
        for (i, m) in self.opts.mounts.iter().enumerate() {
            if path.starts_with(m) {
                let depth = m.components().count();
                if best.is_none_or(|(_, d)| depth > d) {
                    best = Some((i, depth));
                }
            }
        }
        DeviceId(best.map_or(0, |(i, _)| i as u64 + 1))
    }

    /// Start a durability operation: count it, fire an armed crash, apply fault rules. Returns the
    /// armed crash if this operation is the one it lands on (the caller applies the partial effect).
    fn begin(&mut self, op: OpKind, path: &Path) -> io::Result<Option<Armed>> {
        self.begin_write(op, path, 1)
    }

    /// [`State::begin`] for an operation of `pieces` sector pieces (a write crossing sector
    /// boundaries has several; everything else has one).
    fn begin_write(&mut self, op: OpKind, path: &Path, pieces: u64) -> io::Result<Option<Armed>> {
        if self.halted {
            return Err(crashed("the process was killed; resume() restarts it"));
        }
        let this_op = self.ops_done;
        self.ops_done += 1;
        if self.trace {
            eprintln!("simfs op {this_op}: {op:?} {}", path.display());
        }
        if let Some(kind) = self.after_next.take() {
            self.after_this = Some((kind, op));
        }
        let lands_here = match self.armed.as_mut() {
            None => false,
            Some(a) => match &mut a.on {
                None => a.at_op == this_op,
                Some(m) => {
                    let matches = this_op >= a.at_op
                        && m.op.is_none_or(|k| k == op)
                        && (a.after || a.torn != TornWrite::Partial || pieces >= 2)
                        && glob_match(&m.pattern, &path.to_string_lossy())
                        && m.exclude.as_deref().is_none_or(|x| !glob_match(x, &path.to_string_lossy()));
                    if matches && m.skip > 0 {
                        m.skip -= 1;
                        false
                    } else {
                        matches
                    }
                }
            },
        };
        if lands_here && let Some(a) = self.armed.take() {
            if a.after {
                // The operation runs to completion; `SimFs::settle` crashes the process after it.
                self.after_this = Some((a.kind, op));
            } else {
                self.halted = true;
                return Ok(Some(a));
            }
        }
        self.check_eio(op, path)?;
        Ok(None)
    }

    fn check_eio(&mut self, op: OpKind, path: &Path) -> io::Result<()> {
        if self.fire(FaultEffect::Eio, op, path) {
            self.cover(match op {
                OpKind::Read => "fault.eio.read",
                OpKind::Write => "fault.eio.write",
                OpKind::Sync => "fault.eio.sync",
                _ => "fault.eio.other",
            });
            return Err(os_err(libc::EIO));
        }
        if self.fire(FaultEffect::Enospc, op, path) {
            self.cover("fault.enospc");
            return Err(os_err(libc::ENOSPC));
        }
        Ok(())
    }

    /// Does a rule with this effect fire on this operation? Draws from the RNG only for rules that
    /// match, in rule order.
    fn fire(&mut self, effect: FaultEffect, op: OpKind, path: &Path) -> bool {
        // Most disks have no rules: skip the path's text, which every operation would pay for.
        if self.opts.rules.is_empty() {
            return false;
        }
        let text = path.to_string_lossy();
        for i in 0..self.opts.rules.len() {
            let rule = &self.opts.rules[i];
            if rule.effect != effect || !rule.matches(op, &text, self.ops_done.saturating_sub(1)) {
                continue;
            }
            if rule.max_fires.is_some_and(|m| self.rule_fires[i] >= m) {
                continue;
            }
            let probability = rule.probability;
            if probability.sample(&mut self.rng) {
                self.rule_fires[i] += 1;
                return true;
            }
        }
        false
    }

    fn crash_armed(&mut self, armed: Armed) -> io::Error {
        self.crash(armed.kind);
        self.just_died = true;
        crashed("killed during this operation")
    }

    fn crash(&mut self, kind: CrashKind) {
        self.generation += 1;
        self.last_crash = kind;
        match kind {
            CrashKind::ProcessKill => {
                self.cover("crash.process_kill");
                self.drop_unreachable();
            }
            CrashKind::PowerLoss => {
                self.cover("crash.power_loss");
                self.power_loss();
            }
        }
    }

    /// Free files no directory names, in the cache or on the media: their last handle died with the
    /// process (a long-lived mounted disk would otherwise keep every deleted file's bytes). A file
    /// whose removal is not durable yet stays, since a power loss brings its entry back.
    fn drop_unreachable(&mut self) {
        let mut reachable = std::collections::BTreeSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if !reachable.insert(ino) {
                continue;
            }
            if let Some(Inode::Dir(d)) = self.inodes.get(&ino) {
                stack.extend(d.children.values().chain(d.durable_children.values()).copied());
            }
        }
        self.inodes.retain(|ino, _| reachable.contains(ino));
    }

    fn power_loss(&mut self) {
        // Directories fall back to what their media holds.
        for inode in self.inodes.values_mut() {
            if let Inode::Dir(d) = inode {
                d.children = d.durable_children.clone();
            }
        }
        // Only what is reachable from the root through durable entries survives (every directory's
        // entries are its durable ones now).
        self.drop_unreachable();
        let sector = self.sector();
        let odds = self.opts.power_loss;
        let mut fates = [0u64; 3];
        for inode in self.inodes.values_mut() {
            let Inode::File(f) = inode else { continue };
            // The media's image is rebuilt in place (`image` is `f.durable`): cloning whole files
            // here cost more than the rest of a power loss.
            let cached_len = f.data.len() as u64;
            let durable_len = f.durable.len() as u64;
            let mut surviving_end = durable_len;
            // Visit every sector that holds unsynced bytes, in order, and draw its fate.
            let mut sectors: Vec<u64> = Vec::new();
            for (&start, &end) in &f.dirty {
                let mut s = start / sector;
                while s * sector < end {
                    if sectors.last() != Some(&s) {
                        sectors.push(s);
                    }
                    s += 1;
                }
            }
            for s in sectors {
                let fate = odds.pick(&mut self.rng);
                fates[fate as usize] += 1;
                let (lo, hi) = (s * sector, (s + 1) * sector);
                for (&start, &end) in f.dirty.range(..hi) {
                    let (a, b) = (start.max(lo), end.min(hi));
                    if a >= b {
                        continue;
                    }
                    match fate {
                        SectorFate::Drop => {}
                        SectorFate::Keep => {
                            let b = b.min(cached_len);
                            if a < b {
                                f.durable.copy_from(&f.data, a as usize, b as usize);
                                surviving_end = surviving_end.max(b);
                            }
                        }
                        SectorFate::Garbage => {
                            let mut junk = vec![0u8; (b - a) as usize];
                            self.rng.fill_bytes(&mut junk);
                            f.durable.write(a as usize, &junk);
                            surviving_end = surviving_end.max(b);
                        }
                    }
                }
            }
            // The length: growth survives as far as the last surviving sector; an unsynced shrink
            // survives with the keep odds.
            let new_len = if cached_len >= durable_len {
                surviving_end.min(cached_len.max(durable_len))
            } else if f.len_dirty && odds.pick(&mut self.rng) == SectorFate::Keep {
                cached_len
            } else {
                surviving_end
            };
            f.durable.resize(new_len as usize);
            // What a process reads after the loss is what the media holds: the cache shares the
            // media's chunks (a later write copies the one it changes).
            f.data = f.durable.clone();
            f.dirty.clear();
            f.len_dirty = false;
        }
        for (name, n) in
            [("power_loss.sector.keep", 0), ("power_loss.sector.drop", 1), ("power_loss.sector.garbage", 2)]
        {
            if fates[n] > 0 {
                debug_assert!(
                    COVERAGE_KEYS.contains(&name),
                    "coverage key {name} is listed in COVERAGE_KEYS"
                );
                *self.coverage.entry(name).or_insert(0) += fates[n];
            }
        }
    }

    fn image(&self, durable: bool) -> BTreeMap<PathBuf, Vec<u8>> {
        self.walk(durable)
            .into_iter()
            .map(|(path, f)| (path, if durable { f.durable.to_vec() } else { f.data.to_vec() }))
            .collect()
    }

    /// Every file reachable from the root through the durable (or the current) directory entries,
    /// by path.
    fn walk(&self, durable: bool) -> BTreeMap<PathBuf, &FileData> {
        let mut out = BTreeMap::new();
        let mut stack = vec![(ROOT, PathBuf::from("/"))];
        while let Some((ino, path)) = stack.pop() {
            match self.inodes.get(&ino) {
                Some(Inode::Dir(d)) => {
                    let kids = if durable { &d.durable_children } else { &d.children };
                    for (name, child) in kids {
                        stack.push((*child, path.join(name)));
                    }
                }
                Some(Inode::File(f)) => {
                    out.insert(path, f);
                }
                None => {}
            }
        }
        out
    }

    fn used_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|i| match i {
                Inode::File(f) => f.data.len() as u64,
                Inode::Dir(_) => 0,
            })
            .sum()
    }

    /// Would growing a file from `old_len` to `new_len` pass the capacity?
    fn check_space(&mut self, old_len: u64, new_len: u64) -> io::Result<()> {
        if let Some(cap) = self.opts.capacity_bytes
            && new_len > old_len
            && self.used_bytes().saturating_add(new_len - old_len) > cap
        {
            self.cover("fault.enospc");
            return Err(os_err(libc::ENOSPC));
        }
        Ok(())
    }
}

/// Record `[start, end)` as unsynced, merging with neighbours.
fn mark_dirty(dirty: &mut BTreeMap<u64, u64>, mut start: u64, mut end: u64) {
    if start >= end {
        return;
    }
    let overlapping: Vec<(u64, u64)> =
        dirty.range(..=end).rev().take_while(|&(_, &e)| e >= start).map(|(&s, &e)| (s, e)).collect();
    for (s, e) in overlapping {
        dirty.remove(&s);
        start = start.min(s);
        end = end.max(e);
    }
    dirty.insert(start, end);
}

/// Drop every unsynced byte at or past `len`.
fn clip_dirty(dirty: &mut BTreeMap<u64, u64>, len: u64) {
    let past: Vec<u64> = dirty.range(..).filter(|&(_, &e)| e > len).map(|(&s, _)| s).collect();
    for start in past {
        dirty.remove(&start);
        if start < len {
            dirty.insert(start, len);
        }
    }
}

struct SimFile {
    fs: SimFs,
    ino: u64,
    generation: u64,
    path: PathBuf,
    readable: bool,
    writable: bool,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SimFile {
    fn live<'a>(&self, s: &'a mut MutexGuard<'_, State>) -> io::Result<&'a mut State> {
        if s.generation != self.generation {
            return Err(crashed("handle opened before a crash"));
        }
        Ok(&mut **s)
    }
}

impl SimFile {
    fn write_at_op(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(os_err(libc::EBADF));
        }
        let mut g = self.fs.lock();
        let s = self.live(&mut g)?;
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past u64::MAX"))?;
        // The write's sector pieces: where a crash can cut it.
        let sector = s.sector();
        let mut cuts = vec![offset];
        let mut next = (offset / sector + 1) * sector;
        while next < end {
            cuts.push(next);
            next += sector;
        }
        cuts.push(end);
        let pieces = (cuts.len() - 1) as u64;
        let armed = s.begin_write(OpKind::Write, &self.path, pieces)?;
        let old_len = s.file_mut(self.ino, &self.path)?.data.len() as u64;
        if armed.is_none() {
            s.check_space(old_len, end.max(old_len))?;
        }
        // How much of the write lands: all of it, or a sector prefix when a crash interrupts it.
        let landed_end = match &armed {
            None => end,
            Some(a) => {
                let landed = match a.torn {
                    TornWrite::Random => s.rng.random_range(0..=pieces),
                    TornWrite::Sectors(n) => n.min(pieces),
                    TornWrite::Partial if pieces >= 2 => s.rng.random_range(1..pieces),
                    TornWrite::Partial => s.rng.random_range(0..=pieces),
                };
                s.cover("crash.torn_write");
                if landed > 0 && landed < pieces {
                    // A prefix of the record reached the cache, the rest did not: torn for real.
                    s.cover("crash.torn_write.partial");
                }
                cuts[landed as usize]
            }
        };
        let flip = armed.is_none() && s.fire(FaultEffect::BitFlip, OpKind::Write, &self.path);
        let draw = if flip { Some((s.rng.next_u64(), s.rng.random_range(0..8u8))) } else { None };
        let f = s.file_mut(self.ino, &self.path)?;
        let landed = &buf[..(landed_end - offset) as usize];
        if !landed.is_empty() || offset > f.data.len() as u64 {
            if offset > f.data.len() as u64 {
                mark_dirty(&mut f.dirty, f.data.len() as u64, offset);
            }
            f.data.write(offset as usize, landed);
            mark_dirty(&mut f.dirty, offset, landed_end);
        }
        if let Some((r, bit)) = draw
            && !buf.is_empty()
        {
            let at = (offset + r % buf.len() as u64) as usize;
            f.data.flip(at, 1 << bit);
            s.cover("fault.bit_flip.write");
        }
        if let Some(a) = armed {
            return Err(s.crash_armed(a));
        }
        Ok(())
    }

    fn sync_op(&mut self) -> io::Result<()> {
        let mut g = self.fs.lock();
        let s = self.live(&mut g)?;
        let armed = match s.begin(OpKind::Sync, &self.path) {
            Ok(a) => a,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::ENOSPC)) => {
                // fsyncgate: each dirty sector independently reached the media or was forgotten
                // (marked clean but never written back).
                let sector = s.sector();
                let pieces: Vec<(u64, u64)> = {
                    let f = s.file_mut(self.ino, &self.path)?;
                    let len = f.data.len() as u64;
                    let mut pieces = Vec::new();
                    for (&a, &b) in &f.dirty {
                        let mut at = a;
                        while at < b.min(len) {
                            let end = ((at / sector + 1) * sector).min(b).min(len);
                            pieces.push((at, end));
                            at = end;
                        }
                    }
                    pieces
                };
                let kept: Vec<bool> = pieces.iter().map(|_| s.rng.random_range(0..2u8) == 0).collect();
                let f = s.file_mut(self.ino, &self.path)?;
                for ((a, b), keep) in pieces.into_iter().zip(kept) {
                    if keep {
                        f.durable.copy_from(&f.data, a as usize, b as usize);
                    }
                }
                f.dirty.clear();
                f.len_dirty = false;
                s.cover("fault.eio.sync.lost_pages");
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if let Some(a) = armed {
            return Err(s.crash_armed(a));
        }
        let f = s.file_mut(self.ino, &self.path)?;
        // The media takes the cache's length and its unsynced bytes. Cutting first and zero-filling
        // last gives the same bytes as resizing first, without zero-filling what is then copied over.
        let len = f.data.len();
        if f.durable.len() > len {
            f.durable.resize(len);
        }
        for (&a, &b) in &f.dirty {
            let b = (b as usize).min(len);
            let a = a as usize;
            if a < b {
                f.durable.copy_from(&f.data, a, b);
            }
        }
        f.durable.resize(len);
        f.dirty.clear();
        f.len_dirty = false;
        Ok(())
    }

    fn set_len_op(&mut self, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(os_err(libc::EBADF));
        }
        let mut g = self.fs.lock();
        let s = self.live(&mut g)?;
        if let Some(a) = s.begin(OpKind::SetLen, &self.path)? {
            return Err(s.crash_armed(a));
        }
        let old = s.file_mut(self.ino, &self.path)?.data.len() as u64;
        s.check_space(old, len)?;
        let f = s.file_mut(self.ino, &self.path)?;
        f.data.resize(len as usize);
        if len > old {
            mark_dirty(&mut f.dirty, old, len);
        } else {
            // Bytes past the new end no longer exist: nothing of them can reach the media later.
            clip_dirty(&mut f.dirty, len);
        }
        f.len_dirty = true;
        Ok(())
    }
}

impl SimFile {
    /// One read of up to `max` bytes from `offset`: the checks, fault draws and coverage a read
    /// makes, then `copy(pages, offset, n)` for the `n` bytes there are. Returns `n`.
    fn read_op(&self, offset: u64, max: usize, copy: impl FnOnce(&Pages, usize, usize)) -> io::Result<usize> {
        if !self.readable {
            return Err(os_err(libc::EBADF));
        }
        let mut g = self.fs.lock();
        let s = self.live(&mut g)?;
        if s.halted {
            return Err(crashed("the process was killed; resume() restarts it"));
        }
        s.check_eio(OpKind::Read, &self.path)?;
        let flip = s.fire(FaultEffect::BitFlip, OpKind::Read, &self.path);
        let draw = if flip { Some((s.rng.next_u64(), s.rng.random_range(0..8u8))) } else { None };
        let f = s.file_mut(self.ino, &self.path)?;
        let len = f.data.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let n = (len - offset).min(max as u64) as usize;
        if let Some((r, bit)) = draw {
            // A latent sector error: the bit is wrong on the media and stays wrong.
            let at = (offset + r % n as u64) as usize;
            f.data.flip(at, 1 << bit);
            f.durable.flip(at, 1 << bit);
            s.cover("fault.bit_flip.read");
        }
        let f = s.file_mut(self.ino, &self.path)?;
        copy(&f.data, offset as usize, n);
        Ok(n)
    }
}

impl FsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.read_op(offset, buf.len(), |pages, at, n| pages.read(at, &mut buf[..n]))
    }

    fn read_exact_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let whole =
            self.len().ok().and_then(|l| l.checked_sub(offset)).is_some_and(|left| left >= len as u64);
        if !whole || len == 0 {
            // Short (or empty): the default's read calls, exactly, for the same draws and errors.
            let mut buf = vec![0u8; len];
            self.read_exact_at(&mut buf, offset)?;
            return Ok(buf);
        }
        // One read, as `read_exact_at` makes when the bytes are there, into a buffer never zeroed.
        let mut out = Vec::new();
        self.read_op(offset, len, |pages, at, n| pages.extend_into(at, n, &mut out))?;
        Ok(out)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let result = self.write_at_op(buf, offset);
        self.fs.settle(result)
    }

    fn sync(&mut self) -> io::Result<()> {
        let result = self.sync_op();
        self.fs.settle(result)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let result = self.set_len_op(len);
        self.fs.settle(result)
    }

    fn len(&self) -> io::Result<u64> {
        let mut g = self.fs.lock();
        let s = self.live(&mut g)?;
        Ok(s.file_mut(self.ino, &self.path)?.data.len() as u64)
    }
}

/// The operations themselves; the `Fs` methods wrap each in [`SimFs::settle`].
impl SimFs {
    fn open_op(&self, path: &Path, opts: OpenOptions) -> io::Result<Box<dyn FsFile>> {
        let mut s = self.lock();
        if s.halted {
            return Err(crashed("the process was killed; resume() restarts it"));
        }
        let (parent, name) = s.resolve_parent(path)?;
        let existing = s.dir_mut(parent)?.children.get(&name).copied();
        let ino = match existing {
            Some(_) if opts.create_new => return Err(os_err(libc::EEXIST)),
            Some(ino) => {
                s.file_mut(ino, path)?;
                if opts.truncate {
                    if let Some(a) = s.begin(OpKind::SetLen, path)? {
                        return Err(s.crash_armed(a));
                    }
                    let f = s.file_mut(ino, path)?;
                    if !f.data.is_empty() {
                        f.data.resize(0);
                        clip_dirty(&mut f.dirty, 0);
                        f.len_dirty = true;
                    }
                }
                ino
            }
            None if opts.create || opts.create_new => {
                if let Some(a) = s.begin(OpKind::Create, path)? {
                    return Err(s.crash_armed(a));
                }
                let ino = s.next_ino;
                s.next_ino += 1;
                s.inodes.insert(ino, Inode::File(FileData::default()));
                s.dir_mut(parent)?.children.insert(name, ino);
                ino
            }
            None => return Err(not_found(path)),
        };
        Ok(Box::new(SimFile {
            fs: self.clone(),
            ino,
            generation: s.generation,
            path: path.to_path_buf(),
            readable: opts.read,
            writable: opts.write,
        }))
    }

    fn create_dir_all_op(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let mut ino = ROOT;
        for name in State::names(path)? {
            let next = s.dir_mut(ino)?.children.get(&name).copied();
            ino = match next {
                Some(child) => {
                    s.dir_mut(child)?;
                    child
                }
                None => {
                    if let Some(a) = s.begin(OpKind::Create, path)? {
                        return Err(s.crash_armed(a));
                    }
                    let child = s.next_ino;
                    s.next_ino += 1;
                    s.inodes.insert(child, Inode::Dir(DirData::default()));
                    s.dir_mut(ino)?.children.insert(name, child);
                    child
                }
            };
        }
        Ok(())
    }

    fn sync_dir_op(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.resolve(path)?;
        s.dir_mut(ino)?;
        if let Some(a) = s.begin(OpKind::SyncDir, path)? {
            return Err(s.crash_armed(a));
        }
        let d = s.dir_mut(ino)?;
        d.durable_children = d.children.clone();
        Ok(())
    }

    fn rename_op(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let (src_dir, src_name) = s.resolve_parent(from)?;
        let (dst_dir, dst_name) = s.resolve_parent(to)?;
        let ino = *s.dir_mut(src_dir)?.children.get(&src_name).ok_or_else(|| not_found(from))?;
        if let Some(a) = s.begin(OpKind::Rename, from)? {
            return Err(s.crash_armed(a));
        }
        if s.device(from) != s.device(to) {
            s.cover("fault.exdev");
            return Err(os_err(libc::EXDEV));
        }
        if let Some(&target) = s.dir_mut(dst_dir)?.children.get(&dst_name) {
            let moving_dir = matches!(s.inodes.get(&ino), Some(Inode::Dir(_)));
            match s.inodes.get(&target) {
                Some(Inode::Dir(_)) if !moving_dir => return Err(os_err(libc::EISDIR)),
                Some(Inode::Dir(d)) if !d.children.is_empty() => return Err(os_err(libc::ENOTEMPTY)),
                Some(Inode::File(_)) if moving_dir => return Err(os_err(libc::ENOTDIR)),
                _ => {}
            }
        }
        s.dir_mut(src_dir)?.children.remove(&src_name);
        s.dir_mut(dst_dir)?.children.insert(dst_name, ino);
        Ok(())
    }

    fn remove_file_op(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let (dir, name) = s.resolve_parent(path)?;
        let ino = *s.dir_mut(dir)?.children.get(&name).ok_or_else(|| not_found(path))?;
        s.file_mut(ino, path)?;
        if let Some(a) = s.begin(OpKind::Remove, path)? {
            return Err(s.crash_armed(a));
        }
        s.dir_mut(dir)?.children.remove(&name);
        Ok(())
    }

    fn remove_dir_op(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let (dir, name) = s.resolve_parent(path)?;
        let ino = *s.dir_mut(dir)?.children.get(&name).ok_or_else(|| not_found(path))?;
        if !s.dir_mut(ino)?.children.is_empty() {
            return Err(os_err(libc::ENOTEMPTY));
        }
        if let Some(a) = s.begin(OpKind::Remove, path)? {
            return Err(s.crash_armed(a));
        }
        s.dir_mut(dir)?.children.remove(&name);
        Ok(())
    }
}

impl Fs for SimFs {
    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Box<dyn FsFile>> {
        let result = self.open_op(path, opts);
        self.settle(result)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let result = self.create_dir_all_op(path);
        self.settle(result)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let result = self.sync_dir_op(path);
        self.settle(result)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let result = self.rename_op(from, to);
        self.settle(result)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let result = self.remove_file_op(path);
        self.settle(result)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let result = self.remove_dir_op(path);
        self.settle(result)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut s = self.lock();
        let ino = s.resolve(path)?;
        let names: Vec<(String, u64)> =
            s.dir_mut(ino)?.children.iter().map(|(n, i)| (n.clone(), *i)).collect();
        Ok(names
            .into_iter()
            .map(|(name, i)| {
                let kind = match s.inodes.get(&i) {
                    Some(Inode::Dir(_)) => EntryKind::Dir,
                    _ => EntryKind::File,
                };
                DirEntry { name, kind }
            })
            .collect())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        match self.lock().resolve(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        let s = self.lock();
        let ino = s.resolve(path)?;
        Ok(match s.inodes.get(&ino) {
            Some(Inode::File(f)) => Metadata { len: f.data.len() as u64, kind: EntryKind::File },
            Some(Inode::Dir(_)) => Metadata { len: 0, kind: EntryKind::Dir },
            None => return Err(not_found(path)),
        })
    }

    fn device(&self, path: &Path) -> io::Result<DeviceId> {
        State::names(path)?;
        Ok(self.lock().device(path))
    }

    fn failpoint(&self, name: &'static str) -> io::Result<Option<Duration>> {
        let result = {
            let mut s = self.lock();
            if s.halted {
                return Err(crashed("the process was killed; resume() restarts it"));
            }
            let Some(attached) = s.failpoints.get_mut(name) else { return Ok(None) };
            let action = attached.action;
            match &mut attached.left {
                Some(0) => return Ok(None),
                Some(n) => *n -= 1,
                None => {}
            }
            *s.failpoint_fires.entry(name.to_string()).or_insert(0) += 1;
            match action {
                FailAction::Error => Err(durakv::failpoint::injected_error(name)),
                FailAction::Kill(kind) => {
                    s.crash(kind);
                    s.halted = true;
                    s.just_died = true;
                    Err(crashed("killed at a failpoint"))
                }
                FailAction::KillAfter(kind) => {
                    // The operation this failpoint guards is the next one: it completes, then the
                    // process dies.
                    s.after_next = Some(kind);
                    Ok(None)
                }
                FailAction::Stall(d) => Ok(Some(d)),
            }
        };
        self.settle(result)
    }

    fn canary(&self, name: &str) -> bool {
        self.lock().canaries.contains(name)
    }

    fn defer_stall(&self, stall: Duration) {
        let mut s = self.lock();
        s.stall = Some(s.stall.map_or(stall, |d| d.max(stall)));
    }

    fn take_stall(&self) -> Option<Duration> {
        self.lock().stall.take()
    }

    fn observe(&self, what: Observation) {
        // The clock is read outside the lock: it belongs to the simulation, not to this disk.
        let Some(clock) = self.lock().clock else { return };
        let at = clock();
        let mut s = self.lock();
        // A process whose disk crashed under it is dead: it does nothing more.
        if !s.halted {
            s.observations.push((at, what));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CHUNK, COVERAGE_KEYS, Pages};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Failure guarded against: the chunked file image disagreeing with the one-`Vec` image it
    /// replaced (a write across a chunk boundary landing in the wrong chunk, a shared chunk changed
    /// through the other image, a cut that leaves stale bytes). Invariant: after any sequence of
    /// writes, resizes, copies between two images, clones and bit flips, each image holds exactly
    /// the bytes of a plain `Vec` given the same operations, and the chunk invariant holds.
    #[test]
    fn pages_behave_like_one_vec() {
        fn put(v: &mut Vec<u8>, at: usize, bytes: &[u8]) {
            if v.len() < at + bytes.len() {
                v.resize(at + bytes.len(), 0);
            }
            v[at..at + bytes.len()].copy_from_slice(bytes);
        }
        fn check(p: &Pages, v: &[u8]) {
            assert_eq!(p.len(), v.len());
            assert_eq!(p.chunks.len(), v.len().div_ceil(CHUNK));
            for (i, c) in p.chunks.iter().enumerate() {
                assert_eq!(c.len(), (v.len() - i * CHUNK).min(CHUNK), "chunk {i}");
            }
            assert_eq!(p.to_vec(), v);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..40 {
            let (mut a, mut b) = (Pages::default(), Pages::default());
            let (mut va, mut vb) = (Vec::new(), Vec::new());
            for step in 0..60u32 {
                // Offsets and lengths near chunk boundaries as often as anywhere.
                let pick = |rng: &mut ChaCha8Rng, max: usize| match rng.random_range(0..3) {
                    0 => rng.random_range(0..=max),
                    1 => (rng.random_range(0..=max / CHUNK) * CHUNK).min(max),
                    _ => (rng.random_range(0..=max / CHUNK) * CHUNK + rng.random_range(0..3)).min(max),
                };
                match rng.random_range(0..8) {
                    0..=2 => {
                        let at = pick(&mut rng, va.len() + CHUNK);
                        let len = pick(&mut rng, 3 * CHUNK);
                        let bytes: Vec<u8> = (0..len).map(|i| (i as u32 ^ step) as u8 | 1).collect();
                        a.write(at, &bytes);
                        put(&mut va, at, &bytes);
                    }
                    3 => {
                        let len = pick(&mut rng, va.len() + 2 * CHUNK);
                        a.resize(len);
                        va.resize(len, 0);
                    }
                    4 if !va.is_empty() => {
                        // Sync-like: a range of `a` into `b`.
                        let x = pick(&mut rng, va.len());
                        let y = pick(&mut rng, va.len());
                        // Callers copy only non-empty ranges (an empty one would not grow `b`).
                        let (x, y) = (x.min(y), x.max(y) + usize::from(x == y && y < va.len()));
                        if x == y {
                            continue;
                        }
                        b.copy_from(&a, x, y);
                        put(&mut vb, x, &va[x..y]);
                    }
                    5 => {
                        // Power-loss-like: `a` becomes a copy of `b`, sharing its chunks.
                        a = b.clone();
                        va = vb.clone();
                    }
                    6 if !va.is_empty() => {
                        let at = rng.random_range(0..va.len());
                        assert!(a.flip(at, 4));
                        va[at] ^= 4;
                        let mut buf = vec![0; rng.random_range(0..=va.len() - at)];
                        a.read(at, &mut buf);
                        assert_eq!(buf, va[at..at + buf.len()]);
                    }
                    _ => {
                        let len = pick(&mut rng, vb.len() + CHUNK);
                        b.resize(len);
                        vb.resize(len, 0);
                    }
                }
                check(&a, &va);
                check(&b, &vb);
            }
        }
    }

    /// Failure guarded against: a fault path counted under a name the coverage table does not list,
    /// so it could never show as "never fired". Invariant: every counter name in this file's code (a
    /// string literal `crash.…`, `fault.…` or `power_loss.…`) is in `COVERAGE_KEYS`, listed once.
    #[test]
    fn every_counted_fault_path_is_a_known_coverage_key() {
        let source = include_str!("simfs.rs");
        // The code between the list and these tests.
        let start =
            source.find("pub const COVERAGE_KEYS").and_then(|at| source[at..].find("];").map(|e| at + e));
        let end = source.rfind("#[cfg(test)]");
        let (Some(start), Some(end)) = (start, end) else { panic!("simfs.rs changed shape") };
        let code = &source[start..end];
        let mut found = std::collections::BTreeSet::new();
        for (at, _) in code.match_indices('"') {
            let rest = &code[at + 1..];
            if !["crash.", "fault.", "power_loss."].iter().any(|p| rest.starts_with(p)) {
                continue;
            }
            let name = &rest[..rest.find('"').unwrap_or(0)];
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '.' || c == '_') {
                assert!(COVERAGE_KEYS.contains(&name), "{name:?} is counted but not in COVERAGE_KEYS");
                found.insert(name);
            }
        }
        assert_eq!(found.len(), COVERAGE_KEYS.len(), "COVERAGE_KEYS lists a name nothing counts, or twice");
    }
}
