//! Crash-state exploration of the WAL on the simulated disk (CrashMonkey-style).
//!
//! Failure injected: a process kill or a power loss at every durability operation (every write, fsync,
//! directory fsync, rename, remove, truncate, create) of generated sequences of appends, truncations,
//! compactions and restarts; for power loss, several seeds of sector fates. Also bit flips in
//! acknowledged records.
//!
//! Invariants checked after recovery:
//! * recovery never reports corruption after a crash alone, and needs no operator;
//! * every record whose append returned is present and intact; the log is the acknowledged log plus a
//!   prefix of the batch in flight (so no record after a gap);
//! * the recovered WAL accepts new appends and reopens cleanly;
//! * a bit flip inside an acknowledged record that valid records follow is always `Corrupt`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use durakv::io::{Fs, OpenOptions, SharedFs, read_file};
use durakv::wal::{Batch, CorruptReason, Record, Wal, WalError, WalOptions, scan_segment};
use durakv_faults::{CrashKind, SimFs, SimFsOptions, TornWrite, is_crash_error};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DIR: &str = "/node/wal";

fn opts() -> WalOptions {
    // Small segments so sequences roll over and compaction removes files.
    WalOptions { segment_size_bytes: 4096, ..WalOptions::default() }
}

#[derive(Debug, Clone)]
enum Op {
    Append(Batch),
    /// `append_unsynced`: survives a process kill, may be lost (as a suffix) on power loss.
    AppendUnsynced(Batch),
    Sync,
    Compact(u64),
    Reopen,
}

impl Op {
    /// The records this op writes, in order.
    fn records(&self) -> Vec<Record> {
        match self {
            Op::Append(b) | Op::AppendUnsynced(b) => b.records().to_vec(),
            Op::Compact(i) => vec![Record::Compact { first_index: *i }],
            Op::Sync | Op::Reopen => Vec::new(),
        }
    }

    /// Does this op, once it returns, make everything written before it durable?
    fn syncs(&self) -> bool {
        !matches!(self, Op::AppendUnsynced(_))
    }
}

/// What has been made durable, and what was written since without an fsync.
#[derive(Debug, Clone, Default)]
struct Tracker {
    durable: Model,
    unsynced: Vec<Record>,
}

impl Tracker {
    fn done(&mut self, op: &Op) {
        self.unsynced.extend(op.records());
        if op.syncs() {
            for r in self.unsynced.drain(..) {
                self.durable.apply(&r);
            }
        }
    }

    /// Everything the process saw, durable or not.
    fn written(&self) -> Model {
        let mut m = self.durable.clone();
        for r in &self.unsynced {
            m.apply(r);
        }
        m
    }

    /// The logs a crash of `kind` during `in_flight` may leave: after a process kill, everything
    /// written plus a prefix of the op in flight; after a power loss, the durable log plus any prefix
    /// of what was written since (the op in flight included).
    fn candidates(&self, kind: CrashKind, in_flight: Option<&Op>) -> Vec<Model> {
        let tail = in_flight.map(Op::records).unwrap_or_default();
        let (mut m, rest): (Model, Vec<Record>) = match kind {
            CrashKind::ProcessKill => (self.written(), tail),
            CrashKind::PowerLoss => {
                (self.durable.clone(), self.unsynced.iter().cloned().chain(tail).collect())
            }
        };
        let mut out = vec![m.clone()];
        for r in &rest {
            m.apply(r);
            out.push(m.clone());
        }
        out
    }
}

/// What the log must hold: entries by index, metas, compaction floor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    entries: BTreeMap<u64, (u64, Vec<u8>)>,
    metas: BTreeMap<u16, Vec<u8>>,
    floor: u64,
}

impl Model {
    fn apply(&mut self, r: &Record) {
        match r {
            Record::Entry(e) => {
                self.entries.insert(e.index, (e.term, e.data.clone()));
            }
            Record::Truncate { from } => {
                self.entries.split_off(from);
            }
            Record::Meta { key, value } => {
                self.metas.insert(*key, value.clone());
            }
            Record::Compact { first_index } => {
                self.floor = self.floor.max(*first_index);
                self.entries = self.entries.split_off(&self.floor);
            }
        }
    }

    fn last(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }

    fn first(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }
}

/// Read everything the recovered WAL holds into a model.
fn observe(wal: &Wal) -> Result<Model, WalError> {
    let mut m = Model { floor: wal.compacted_below(), metas: wal.metas().clone(), ..Model::default() };
    if let (Some(first), Some(last)) = (wal.first_index(), wal.last_index()) {
        for e in wal.entries(first, last + 1, None)? {
            m.entries.insert(e.index, (e.term, e.data));
        }
    }
    Ok(m)
}

/// A generated sequence of operations, each valid after the ones before it. Odd seeds also use
/// unsynced appends and explicit syncs.
fn generate(seed: u64, len: usize) -> Vec<Op> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let unsynced = seed % 2 == 1;
    let mut model = Model::default();
    let mut term = 1;
    let mut ops = Vec::new();
    for _ in 0..len {
        let roll = rng.random_range(0..100);
        let op = if roll < 10 {
            Op::Reopen
        } else if unsynced && roll < 16 {
            Op::Sync
        } else if roll < 20 && model.last().is_some() {
            let lo = model.first().unwrap_or(1);
            let hi = model.last().map_or(lo, |l| l + 1);
            Op::Compact(rng.random_range(lo..=hi).max(model.floor + 1))
        } else {
            let mut b = Batch::new();
            let mut next = model.last().map_or(model.floor.max(1), |l| l + 1);
            if rng.random_range(0..5) == 0
                && let (Some(first), Some(last)) = (model.first(), model.last())
            {
                // A raft conflict: rewrite the tail from a new term.
                let from = rng.random_range(first..=last);
                b.truncate_from(from);
                term += 1;
                next = from;
            }
            for _ in 0..rng.random_range(1..=5) {
                let size = [0usize, 9, 100, 700, 2500][rng.random_range(0..5)];
                let data: Vec<u8> = (0..size).map(|_| rng.random()).collect();
                b.entry(next, term, data);
                next += 1;
            }
            if rng.random_range(0..3) == 0 {
                let key = rng.random_range(0..3u16);
                let value: Vec<u8> = (0..rng.random_range(1..40)).map(|_| rng.random()).collect();
                b.set_meta(key, value);
            }
            if unsynced && rng.random_range(0..2) == 0 { Op::AppendUnsynced(b) } else { Op::Append(b) }
        };
        for r in op.records() {
            model.apply(&r);
        }
        ops.push(op);
    }
    ops
}

fn new_disk(seed: u64) -> SimFs {
    let fs = SimFs::new(seed, SimFsOptions::default()).expect("default options are valid");
    fs.create_dir_all(Path::new("/node")).expect("mkdir");
    fs.sync_dir(Path::new("/")).expect("sync /");
    fs
}

fn open_wal(fs: &SimFs) -> Result<Wal, WalError> {
    let shared: SharedFs = Arc::new(fs.clone());
    Wal::open(shared, Path::new(DIR), opts()).map(|(w, _)| w)
}

/// Run `ops`; returns what was durable and written, and the op in flight when the disk crashed.
fn run(fs: &SimFs, ops: &[Op]) -> (Tracker, Option<usize>) {
    let mut tracker = Tracker::default();
    let mut wal = match open_wal(fs) {
        Ok(w) => w,
        Err(e) => {
            assert!(is_sim_crash(&e), "open failed without a crash: {e}");
            return (tracker, None);
        }
    };
    for (i, op) in ops.iter().enumerate() {
        let result = match op {
            Op::Append(b) => wal.append(b),
            Op::AppendUnsynced(b) => wal.append_unsynced(b),
            Op::Sync => wal.sync(),
            Op::Compact(idx) => wal.compact(*idx),
            Op::Reopen => {
                drop(wal);
                match open_wal(fs) {
                    Ok(w) => {
                        wal = w;
                        Ok(())
                    }
                    Err(e) => {
                        assert!(is_sim_crash(&e), "reopen failed without a crash: {e}");
                        return (tracker, Some(i));
                    }
                }
            }
        };
        match result {
            Ok(()) => tracker.done(op),
            Err(e) => {
                assert!(is_sim_crash(&e), "op {i} failed without a crash: {e}");
                return (tracker, Some(i));
            }
        }
    }
    (tracker, None)
}

fn is_sim_crash(e: &WalError) -> bool {
    match e {
        WalError::Io { source, .. } => is_crash_error(source),
        _ => false,
    }
}

fn image_digest(fs: &SimFs) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    fs.cached_image().hash(&mut h);
    h.finish()
}

/// Crash at `at_op` with `kind`, recover, and check every invariant. Returns the post-crash digest
/// and whether recovery repaired a torn tail.
fn explore_one(seq_seed: u64, ops: &[Op], at_op: u64, kind: CrashKind, disk_seed: u64) -> (u64, bool) {
    let fs = new_disk(disk_seed);
    fs.arm_crash(at_op, kind, TornWrite::Random);
    let (tracker, in_flight) = run(&fs, ops);
    assert!(fs.is_halted(), "the crash at op {at_op} fired");
    fs.resume();
    let digest = image_digest(&fs);
    let ctx = format!(
        "sequence {seq_seed}, crash {kind:?} at op {at_op}, disk seed {disk_seed}, in flight {in_flight:?}"
    );
    let shared: SharedFs = Arc::new(fs.clone());
    let (mut wal, report) = match Wal::open(shared, Path::new(DIR), opts()) {
        Ok(w) => w,
        Err(e) => panic!("{ctx}: recovery after a crash alone failed: {e}"),
    };
    let got = observe(&wal).unwrap_or_else(|e| panic!("{ctx}: reading back failed: {e}"));
    let candidates = tracker.candidates(kind, in_flight.map(|i| &ops[i]));
    assert!(
        candidates.contains(&got),
        "{ctx}: recovered log is not the acknowledged log plus a prefix of what was in flight\n got: {:?}\n durable: {:?}\n unsynced: {}",
        summary(&got),
        summary(&tracker.durable),
        tracker.unsynced.len()
    );
    // The node goes on without an operator: it can append and restart.
    let next = got.last().map_or(got.floor.max(1), |l| l + 1);
    wal.append(Batch::new().entry(next, 99, b"after".to_vec()))
        .unwrap_or_else(|e| panic!("{ctx}: append after recovery failed: {e}"));
    drop(wal);
    let wal = open_wal(&fs).unwrap_or_else(|e| panic!("{ctx}: second reopen failed: {e}"));
    assert_eq!(wal.last_index(), Some(next), "{ctx}");
    (digest, report.repaired.is_some())
}

fn summary(m: &Model) -> String {
    format!(
        "floor {} entries {:?} metas {:?}",
        m.floor,
        m.entries.iter().map(|(i, (t, d))| (*i, *t, d.len())).collect::<Vec<_>>(),
        m.metas.keys().collect::<Vec<_>>()
    )
}

#[test]
fn crash_at_every_durability_point_loses_nothing_acknowledged() {
    let mut states = BTreeSet::new();
    let mut runs = 0u64;
    let mut repairs = 0u64;
    let mut visit = |(digest, repaired): (u64, bool)| {
        states.insert(digest);
        repairs += u64::from(repaired);
    };
    for seq_seed in 0..24u64 {
        let ops = generate(seq_seed, 14);
        // Count the durability operations of a crash-free run.
        let clean = new_disk(0);
        let base = clean.ops_done();
        let (tracker, in_flight) = run(&clean, &ops);
        assert_eq!(in_flight, None);
        let model = tracker.written();
        let total = clean.ops_done() - base;
        let wal = open_wal(&clean).expect("clean reopen");
        assert_eq!(
            observe(&wal).expect("read back"),
            model,
            "sequence {seq_seed}: clean run matches the model"
        );
        for k in 0..total {
            let at = base + k;
            visit(explore_one(seq_seed, &ops, at, CrashKind::ProcessKill, seq_seed * 1000 + k));
            runs += 1;
            for variant in 0..3 {
                let disk_seed = seq_seed * 1_000_000 + k * 10 + variant;
                visit(explore_one(seq_seed, &ops, at, CrashKind::PowerLoss, disk_seed));
                runs += 1;
            }
        }
    }
    println!(
        "explored {runs} crashes, {} distinct post-crash disk images, {repairs} torn tails repaired",
        states.len()
    );
    assert!(states.len() >= 1000, "only {} distinct crash states visited", states.len());
    // The exploration must actually exercise the repair path, not only clean recoveries.
    assert!(repairs >= 100, "only {repairs} torn tails were repaired");
}

#[test]
fn crash_during_recovery_is_recovered_too() {
    // A torn tail, then a crash at each step of its repair, then a clean recovery.
    let ops = generate(7, 10);
    for k in 0..40u64 {
        let fs = new_disk(k);
        let base = fs.ops_done();
        fs.arm_crash(base + 25 + k % 15, CrashKind::ProcessKill, TornWrite::Random);
        let (tracker, in_flight) = run(&fs, &ops);
        fs.resume();
        let before = fs.ops_done();
        fs.arm_crash(before + k % 6, CrashKind::PowerLoss, TornWrite::Random);
        let _ = open_wal(&fs);
        fs.resume();
        let wal =
            open_wal(&fs).unwrap_or_else(|e| panic!("k={k}: recovery after a crash during recovery: {e}"));
        let got = observe(&wal).expect("read back");
        // The first crash was a process kill, the second a power loss: the power loss can take
        // whatever the first crash left unsynced, so check against the power-loss candidates.
        assert!(tracker.candidates(CrashKind::PowerLoss, in_flight.map(|i| &ops[i])).contains(&got), "k={k}");
    }
}

/// The frames of every segment file, as (path, offset, end, durable_upto).
fn frames(fs: &SimFs) -> Vec<(PathBuf, u64, u64, u64)> {
    let mut out = Vec::new();
    for e in fs.read_dir(Path::new(DIR)).expect("list") {
        if !e.name.ends_with(".wal") {
            continue;
        }
        let path = Path::new(DIR).join(&e.name);
        let bytes = read_file(fs, &path).expect("read");
        let scan = scan_segment(&bytes).expect("clean segment");
        for f in scan.frames {
            out.push((path.clone(), f.offset, f.end, f.durable_upto));
        }
    }
    out
}

#[test]
fn a_bit_flip_in_an_acknowledged_record_followed_by_valid_records_is_corrupt() {
    let mut checked = 0;
    for seed in 0..300u64 {
        let fs = new_disk(seed);
        let ops = generate(seed % 17, 8);
        let (_, in_flight) = run(&fs, &ops);
        assert_eq!(in_flight, None);
        let all = frames(&fs);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Any frame but the very last one is followed by valid records.
        let victim = rng.random_range(0..all.len() - 1);
        let (path, start, end, _) = &all[victim];
        let offset = rng.random_range(*start..*end);
        let bit = rng.random_range(0..8u8);
        fs.flip_bit(path, offset, bit).expect("flip");
        let err = open_wal(&fs).expect_err("a flipped acknowledged record must not open");
        match err {
            WalError::Corrupt { path: p, offset: at, reason } => {
                assert_eq!(&p, path, "seed {seed}: the error names the damaged segment");
                assert_eq!(at, *start, "seed {seed}: the error names the damaged record's offset");
                assert!(!matches!(reason, CorruptReason::NonContiguous { .. }), "seed {seed}: {reason}");
            }
            other => panic!("seed {seed}: expected Corrupt, got {other}"),
        }
        // Nothing was truncated or moved aside.
        assert!(fs.read_dir(Path::new(DIR)).expect("list").iter().all(|e| !e.name.contains("broken")));
        checked += 1;
    }
    assert_eq!(checked, 300);
}

#[test]
fn recovering_from_peers_cuts_the_log_at_any_corrupt_record_and_keeps_what_came_before() {
    // Failure: a bit flip in any acknowledged record of a generated log (middle segments included),
    // opened in `RecoverFromPeers` mode. Invariants: the open succeeds and reports the damage at the
    // damaged record; the log holds exactly the acknowledged entries before the damage (metas and the
    // compaction floor of later records are kept); the damaged bytes stay in place; a later open
    // finds the same log; entries appended from the damage on are the log's continuation after
    // another open.
    let recover = WalOptions { recovery: durakv::wal::RecoveryMode::RecoverFromPeers, ..opts() };
    let open_recovering = |fs: &SimFs| {
        let shared: SharedFs = Arc::new(fs.clone());
        Wal::open(shared, Path::new(DIR), recover.clone()).expect("recovering open")
    };
    let mut checked = 0;
    for seed in 0..200u64 {
        let fs = new_disk(seed);
        let ops = generate(seed % 13, 8);
        let (tracker, in_flight) = run(&fs, &ops);
        assert_eq!(in_flight, None);
        let all = frames(&fs);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let victim = rng.random_range(0..all.len() - 1);
        let (path, start, end, _) = all[victim].clone();
        let before_flip = read_file(&fs, &path).expect("read");
        let before_images = segment_images(&fs);
        fs.flip_bit(&path, rng.random_range(start..end), rng.random_range(0..8u8)).expect("flip");
        let flipped = read_file(&fs, &path).expect("read");
        let (wal, report) = open_recovering(&fs);
        let damage = report.damaged.clone().expect("the damage is reported");
        assert_eq!((damage.segment.clone(), damage.offset), (path.clone(), start), "seed {seed}");
        let got = observe(&wal).expect("read back");
        // The log as it stood just before the damaged record (entries a later conflict replaced
        // included: the raft layer sees that the log's last term is too old), with the compactions
        // that came later.
        // After the damage, entries are lost until a truncation at or below the damage replaces them;
        // from there on the log continues.
        // Recovery cannot read past the damage inside its own segment.
        let mut expected = Model::default();
        let mut skipping: Option<u64> = None;
        let records = records_in_order(&before_images);
        let damaged_segment = records[victim].0;
        for (i, (seg, r)) in records.into_iter().enumerate() {
            if i == victim {
                skipping = Some(expected.last().map_or(expected.floor.max(1), |l| l + 1));
                continue;
            }
            if i > victim && seg == damaged_segment {
                continue;
            }
            match (skipping, &r) {
                (Some(_), Record::Entry(_)) => continue,
                (Some(from), Record::Truncate { from: t }) if *t <= from.max(expected.floor) => {
                    skipping = None
                }
                (Some(_), Record::Truncate { .. }) => continue,
                _ => {}
            }
            expected.apply(&r);
        }
        let _ = &tracker;
        assert_eq!(
            summary(&Model { metas: BTreeMap::new(), ..got.clone() }),
            summary(&Model { metas: BTreeMap::new(), ..expected.clone() }),
            "seed {seed}: damage at record {victim}"
        );
        assert_eq!(got.entries, expected.entries, "seed {seed}");
        drop(wal);
        assert_eq!(read_file(&fs, &path).expect("read"), flipped, "seed {seed}: damaged bytes stay in place");
        assert_ne!(before_flip, flipped);
        let (mut wal, _) = open_recovering(&fs);
        assert_eq!(observe(&wal).expect("read back"), got, "seed {seed}: a second open finds the same log");
        let next = got.last().map_or(got.floor.max(1), |l| l + 1);
        wal.append(Batch::new().entry(next, 77, b"refilled".to_vec())).expect("append after the damage");
        drop(wal);
        let (wal, _) = open_recovering(&fs);
        assert_eq!(wal.last_index(), Some(next), "seed {seed}");
        assert_eq!(wal.entry(next).expect("entry").data, b"refilled");
        checked += 1;
    }
    assert_eq!(checked, 200);
}

/// Every segment file's bytes, oldest first.
fn segment_images(fs: &SimFs) -> Vec<Vec<u8>> {
    let mut names: Vec<String> = fs
        .read_dir(Path::new(DIR))
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names.iter().map(|n| read_file(fs, &Path::new(DIR).join(n)).expect("read")).collect()
}

/// The records of clean segment images in log order (the same order as `frames`), each with the
/// index of its segment.
fn records_in_order(images: &[Vec<u8>]) -> Vec<(usize, Record)> {
    images
        .iter()
        .enumerate()
        .flat_map(|(seg, b)| {
            scan_segment(b).expect("clean segment").frames.into_iter().map(move |f| (seg, f.record))
        })
        .collect()
}

/// elastickv's three cases, on the real layout of a WAL.
#[test]
fn truncating_inside_the_last_record_is_repaired_and_earlier_records_survive() {
    let fs = new_disk(1);
    let mut wal = open_wal(&fs).expect("open");
    for i in 1..=5u64 {
        wal.append(Batch::new().entry(i, 1, vec![i as u8; 300])).expect("append");
    }
    drop(wal);
    let all = frames(&fs);
    let (path, start, end, _) = all.last().expect("frames").clone();
    let cut = end - 5;
    let mut f = fs.open(&path, OpenOptions::read_write()).expect("open segment");
    f.set_len(cut).expect("cut inside the last record");
    drop(f);
    let shared: SharedFs = Arc::new(fs.clone());
    let (wal, report) = Wal::open(shared, Path::new(DIR), opts()).expect("repaired");
    let torn = report.repaired.expect("a repair was reported");
    assert_eq!(torn.segment, path);
    assert_eq!(torn.offset, start);
    assert_eq!(torn.bytes_dropped, cut - start);
    assert_eq!(read_file(&fs, &torn.broken_copy).expect("broken copy").len() as u64, cut - start);
    assert_eq!(wal.last_index(), Some(4));
    for i in 1..=4 {
        assert_eq!(wal.entry(i).expect("survivor").data, vec![i as u8; 300]);
    }
}

#[test]
fn flipping_a_byte_in_a_middle_record_is_an_error() {
    let fs = new_disk(2);
    let mut wal = open_wal(&fs).expect("open");
    for i in 1..=5u64 {
        wal.append(Batch::new().entry(i, 1, vec![i as u8; 300])).expect("append");
    }
    drop(wal);
    let all = frames(&fs);
    let (path, start, _, _) = all[all.len() / 2].clone();
    let mut f = fs.open(&path, OpenOptions::read_write()).expect("open segment");
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, start + 60).expect("read");
    f.write_at(&[byte[0] ^ 0xFF], start + 60).expect("flip a byte");
    drop(f);
    match open_wal(&fs) {
        Err(WalError::Corrupt { path: p, offset, .. }) => {
            assert_eq!((p, offset), (path, start));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_clean_open_repairs_nothing() {
    let fs = new_disk(3);
    let mut wal = open_wal(&fs).expect("open");
    wal.append(Batch::new().entry(1, 1, b"x".to_vec())).expect("append");
    drop(wal);
    let shared: SharedFs = Arc::new(fs.clone());
    let (_, report) = Wal::open(shared, Path::new(DIR), opts()).expect("clean");
    assert_eq!(report.repaired, None);
    assert_eq!(report.records, 1);
}

#[test]
fn a_missing_middle_segment_is_corrupt() {
    let fs = new_disk(4);
    let mut wal = open_wal(&fs).expect("open");
    for i in 1..=40u64 {
        wal.append(Batch::new().entry(i, 1, vec![0u8; 700])).expect("append");
    }
    let paths = wal.segment_paths();
    drop(wal);
    assert!(paths.len() >= 3);
    fs.remove_file(&paths[1]).expect("remove");
    assert!(matches!(
        open_wal(&fs),
        Err(WalError::Corrupt { reason: CorruptReason::MissingSegment { .. }, .. })
    ));
}

#[test]
fn a_failed_fsync_poisons_the_wal() {
    use durakv_faults::{FaultEffect, FaultRule, OpKind};
    let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Sync])
        .on_path("*.wal")
        .expect("pattern")
        .after_ops(10)
        .max_fires(1);
    let fs = SimFs::new(5, SimFsOptions { rules: vec![rule], ..SimFsOptions::default() }).expect("options");
    fs.create_dir_all(Path::new("/node")).expect("mkdir");
    let mut wal = open_wal(&fs).expect("open");
    wal.append(Batch::new().entry(1, 1, b"a".to_vec())).expect("first append before the fault");
    let err = wal.append(Batch::new().entry(2, 1, b"b".to_vec())).expect_err("EIO on fsync");
    assert!(matches!(err, WalError::Io { .. }), "{err}");
    assert!(wal.is_poisoned());
    assert!(matches!(wal.append(Batch::new().entry(2, 1, b"b".to_vec())), Err(WalError::Poisoned)));
    assert_eq!(fs.coverage().get("fault.eio.sync"), Some(&1));
}

#[test]
fn a_wal_dir_whose_first_open_crashed_before_its_dir_sync_is_made_durable_at_the_next_open() {
    // Failure: the first open is killed inside the fsync of the WAL directory's parent; the retry
    // finds the directory in the page cache. Invariant: an acknowledged append survives a power loss.
    let fs = new_disk(11);
    let base = fs.ops_done();
    // Ops of the first open: create /node/wal (base), fsync /node (base + 1).
    fs.arm_crash(base + 1, CrashKind::ProcessKill, TornWrite::Random);
    assert!(open_wal(&fs).is_err());
    fs.resume();
    let mut wal = open_wal(&fs).expect("second open");
    wal.append(Batch::new().entry(1, 1, b"acked".to_vec())).expect("append");
    drop(wal);
    fs.crash(CrashKind::PowerLoss);
    let wal = open_wal(&fs).expect("open after power loss");
    assert_eq!(wal.last_index(), Some(1), "the acknowledged entry survived");
}

#[test]
fn nested_new_directories_are_all_made_durable() {
    // Failure: the WAL lives several new directories deep on an empty disk, then power is lost.
    let fs = SimFs::new(12, SimFsOptions::default()).expect("options");
    let shared: SharedFs = Arc::new(fs.clone());
    let (mut wal, _) = Wal::open(shared, Path::new("/a/b/c/wal"), opts()).expect("open");
    wal.append(Batch::new().entry(1, 1, b"acked".to_vec())).expect("append");
    drop(wal);
    fs.crash(CrashKind::PowerLoss);
    let shared: SharedFs = Arc::new(fs.clone());
    let (wal, _) = Wal::open(shared, Path::new("/a/b/c/wal"), opts()).expect("reopen");
    assert_eq!(wal.last_index(), Some(1));
}

#[test]
fn entry_indexes_the_decoder_would_refuse_are_refused_on_append() {
    let fs = new_disk(13);
    let mut wal = open_wal(&fs).expect("open");
    assert!(matches!(wal.append(Batch::new().entry(0, 1, vec![])), Err(WalError::InvalidArgument(_))));
    wal.append(Batch::new().entry(u64::MAX, 1, vec![])).expect("the last possible index");
    assert!(matches!(wal.append(Batch::new().entry(1, 1, vec![])), Err(WalError::InvalidArgument(_))));
    assert!(!wal.is_poisoned(), "a refused append writes nothing");
    drop(wal);
    assert_eq!(open_wal(&fs).expect("reopen").last_index(), Some(u64::MAX));
}

#[test]
fn a_failed_fsync_then_a_restart_then_power_loss_leaves_no_hole_in_the_log() {
    // Failure injected: EIO on one WAL fsync (the disk forgets some of the dirty sectors but the page
    // cache still shows them: fsyncgate), then a process restart that appends and syncs more, then a
    // power loss; over many disk seeds. Invariant: recovery never reports corruption (the bytes whose
    // fsync failed were cut off before the restart could build on them), and every batch whose
    // append returned survives.
    use durakv_faults::{FaultEffect, FaultRule, OpKind};
    for seed in 0..64 {
        let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Sync])
            .on_path("*.wal")
            .expect("pattern")
            .after_ops(12)
            .max_fires(1);
        let fs =
            SimFs::new(seed, SimFsOptions { rules: vec![rule], ..SimFsOptions::default() }).expect("options");
        fs.create_dir_all(Path::new("/node")).expect("mkdir");
        fs.sync_dir(Path::new("/")).expect("sync /");
        let mut acked = Vec::new();
        let mut wal = open_wal(&fs).expect("open");
        let mut index = 1;
        let big = vec![7u8; 1500];
        loop {
            match wal.append(Batch::new().entry(index, 1, big.clone())) {
                Ok(()) => acked.push(index),
                Err(WalError::Io { .. }) => break,
                Err(e) => panic!("seed {seed}: {e}"),
            }
            index += 1;
            assert!(index < 100, "seed {seed}: the EIO rule never fired");
        }
        drop(wal);
        // The process dies of the failed fsync; the page cache survives it.
        fs.crash(CrashKind::ProcessKill);
        let mut wal = open_wal(&fs).unwrap_or_else(|e| panic!("seed {seed}: restart: {e}"));
        let next = wal.last_index().map_or(1, |i| i + 1);
        for i in next..next + 3 {
            wal.append(Batch::new().entry(i, 1, big.clone())).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            acked.push(i);
        }
        drop(wal);
        fs.crash(CrashKind::PowerLoss);
        let wal = open_wal(&fs).unwrap_or_else(|e| panic!("seed {seed}: after power loss: {e}"));
        for i in acked {
            assert!(wal.entry(i).is_ok(), "seed {seed}: acknowledged entry {i} lost");
        }
    }
}

#[test]
fn a_failed_fsync_at_open_then_a_restart_then_power_loss_leaves_no_hole_in_the_log() {
    // Failure injected: a process dies with unsynced appends in the page cache (the state machine's
    // `NoSync` journal), and the fsync recovery makes of them at the next start fails with EIO (the
    // disk forgets some of the dirty sectors, the page cache still shows them: fsyncgate). The start
    // fails; the next one succeeds, appends and syncs more; then power is lost. Over many disk seeds.
    // Invariant: recovery never reports corruption (the failed start cut the bytes no successful
    // fsync covered, so the next start cannot build on them), and every acknowledged append survives.
    use durakv_faults::{FaultEffect, FaultRule, OpKind};
    let mut lost_pages = 0;
    for seed in 0..64 {
        let fs = SimFs::new(seed, SimFsOptions::default()).expect("options");
        fs.create_dir_all(Path::new("/node")).expect("mkdir");
        fs.sync_dir(Path::new("/")).expect("sync /");
        let big = vec![7u8; 1500];
        let mut wal = open_wal(&fs).expect("open");
        wal.append(Batch::new().entry(1, 1, big.clone())).expect("synced append");
        for i in 2..=8 {
            wal.append_unsynced(Batch::new().entry(i, 1, big.clone())).expect("unsynced append");
        }
        drop(wal);
        // The process dies; its unsynced appends stay in the page cache.
        fs.crash(CrashKind::ProcessKill);
        let rule = FaultRule::always(FaultEffect::Eio, &[OpKind::Sync])
            .on_path("*.wal")
            .expect("pattern")
            .max_fires(1);
        fs.add_rule(rule).expect("rule");
        match open_wal(&fs) {
            Err(WalError::Io { .. }) => {}
            Ok(_) => panic!("seed {seed}: the EIO on the fsync at open never fired"),
            Err(e) => panic!("seed {seed}: {e}"),
        }
        fs.crash(CrashKind::ProcessKill);
        let mut wal = open_wal(&fs).unwrap_or_else(|e| panic!("seed {seed}: restart: {e}"));
        // The failed start cut the entries no successful fsync covered (those in the last segment).
        let kept = wal.last_index().unwrap_or_else(|| panic!("seed {seed}: entry 1 was synced"));
        assert!(kept < 8, "seed {seed}: the unproven entries were cut");
        for i in kept + 1..=kept + 3 {
            wal.append(Batch::new().entry(i, 1, big.clone())).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
        drop(wal);
        lost_pages += fs.coverage().get("fault.eio.sync.lost_pages").copied().unwrap_or(0);
        fs.crash(CrashKind::PowerLoss);
        let wal = open_wal(&fs).unwrap_or_else(|e| panic!("seed {seed}: after power loss: {e}"));
        assert_eq!(wal.last_index(), Some(kept + 3), "seed {seed}");
        for i in 1..=kept + 3 {
            assert!(wal.entry(i).is_ok(), "seed {seed}: acknowledged entry {i} lost");
        }
    }
    assert_eq!(lost_pages, 64, "every seed's fsync at open failed and forgot pages");
}
