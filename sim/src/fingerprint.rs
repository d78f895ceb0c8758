//! Fingerprints of a run for the determinism check: a hash of the whole operation history and of
//! each server disk's durable image. Two runs of one seed must agree on both; a trace can agree while
//! a value read or a byte on disk differs, which is what these catch.
//!
//! The hash is 64-bit FNV-1a over a canonical, length-prefixed encoding (integers little-endian; a
//! file's contents as their CRC32C), so it is the same on every platform and release, unlike
//! `DefaultHasher`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::linearizability::{Operation, Outcome, RegisterOp};

/// 64-bit FNV-1a.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.raw(&n.to_le_bytes())
    }

    /// Length-prefixed, so `("ab", "c")` and `("a", "bc")` differ.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.u64(bytes.len() as u64).raw(bytes)
    }

    fn opt_bytes(&mut self, v: &Option<Vec<u8>>) -> &mut Self {
        match v {
            None => self.u64(0),
            Some(b) => self.u64(1).bytes(b),
        }
    }

    fn opt_i64(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            None => self.u64(0),
            Some(n) => self.u64(1).u64(n as u64),
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

fn operation(h: &mut Fnv, op: &Operation) {
    h.u64(op.client).u64(op.server).u64(op.call).u64(op.ret);
    h.u64(match op.outcome {
        Outcome::Ok => 0,
        Outcome::Fail => 1,
        Outcome::Unknown => 2,
    });
    h.u64(op.effects.len() as u64);
    for (key, effect) in &op.effects {
        h.bytes(key);
        match effect {
            RegisterOp::Write(v) => h.u64(0).opt_bytes(v),
            RegisterOp::Read(v) => h.u64(1).opt_bytes(v),
            RegisterOp::Incr { delta, result } => h.u64(2).u64(*delta as u64).opt_i64(*result),
            RegisterOp::Append { suffix, len } => h.u64(3).bytes(suffix).opt_i64(*len),
            RegisterOp::WriteExpiring { value, ttl_ms, vanish_from, gone_by } => {
                h.u64(4).bytes(value).u64(*ttl_ms).u64(*vanish_from).u64(*gone_by)
            }
            RegisterOp::CompareAndSet { expected, new } => h.u64(5).opt_bytes(expected).bytes(new),
        };
    }
}

/// The hash of a whole history: every operation's client, server, call and return times, outcome,
/// effects and the values it read or was told, in the order they were recorded.
pub fn history_hash(history: &[Operation]) -> u64 {
    let mut h = Fnv::default();
    h.u64(history.len() as u64);
    for op in history {
        operation(&mut h, op);
    }
    h.finish()
}

/// The hash of a disk image: every file's path, length and contents, in path order. The contents
/// go in as their CRC32C (hardware-accelerated): FNV-1a byte by byte over the megabytes of every
/// run's disks would cost several percent of the run, and a determinism check needs no more than
/// a 2^-32 chance of missing a changed file.
pub fn image_hash(image: &BTreeMap<PathBuf, Vec<u8>>) -> u64 {
    let mut h = Fnv::default();
    h.u64(image.len() as u64);
    for (path, bytes) in image {
        h.bytes(path.to_string_lossy().as_bytes())
            .u64(bytes.len() as u64)
            .u64(u64::from(crc32c::crc32c(bytes)));
    }
    h.finish()
}

/// [`image_hash`] of a disk's durable image, read in place ([`SimFs::durable_files`]) instead of
/// copied out first: the same value, since the CRC32C of a file's pieces chained with
/// `crc32c_append` is the CRC32C of the whole.
///
/// [`SimFs::durable_files`]: durakv_faults::SimFs::durable_files
pub fn durable_hash(files: &BTreeMap<PathBuf, durakv_faults::FileImage>) -> u64 {
    let mut h = Fnv::default();
    h.u64(files.len() as u64);
    for (path, file) in files {
        let crc = file.pieces().fold(0, crc32c::crc32c_append);
        h.bytes(path.to_string_lossy().as_bytes()).u64(file.len()).u64(u64::from(crc));
    }
    h.finish()
}

/// Where two runs of one seed first differ, or `None` when their histories and disks agree. `a`
/// and `b` are (history, per-server disk hashes).
pub fn divergence(
    a: (&[Operation], &BTreeMap<u64, u64>),
    b: (&[Operation], &BTreeMap<u64, u64>),
) -> Option<String> {
    let (ha, hb) = (a.0, b.0);
    if history_hash(ha) != history_hash(hb) {
        let i = ha.iter().zip(hb).position(|(x, y)| x != y);
        let i = i.unwrap_or(ha.len().min(hb.len()));
        let show =
            |h: &[Operation]| h.get(i).map_or("(none: the history ended)".to_string(), |o| format!("{o:?}"));
        return Some(format!(
            "the histories differ ({} and {} operations) first at operation {i}:\n  first run:  {}\n  second run: {}",
            ha.len(),
            hb.len(),
            show(ha),
            show(hb)
        ));
    }
    let servers: std::collections::BTreeSet<&u64> = a.1.keys().chain(b.1.keys()).collect();
    let differ: Vec<String> = servers
        .into_iter()
        .filter(|id| a.1.get(id) != b.1.get(id))
        .map(|id| {
            let show = |h: Option<&u64>| h.map_or("none".to_string(), |h| format!("{h:016x}"));
            format!("server {id}'s disk ({} vs {})", show(a.1.get(id)), show(b.1.get(id)))
        })
        .collect();
    (!differ.is_empty()).then(|| format!("the durable disk images differ: {}", differ.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, key: &[u8], effect: RegisterOp, ret: u64) -> Operation {
        Operation::single(client, key, effect, 1, ret, Outcome::Ok)
    }

    #[test]
    fn the_hash_is_pinned_and_sees_every_field() {
        // Pinned: a change of the encoding would make recorded hashes meaningless.
        assert_eq!(Fnv::default().raw(b"a").finish(), 0xaf63_dc4c_8601_ec8c);
        let base = vec![op(1, b"k", RegisterOp::Read(Some(b"1".to_vec())), 5)];
        let h = history_hash(&base);
        assert_eq!(h, history_hash(&base.clone()));
        let variants = [
            vec![op(2, b"k", RegisterOp::Read(Some(b"1".to_vec())), 5)],
            vec![op(1, b"k", RegisterOp::Read(Some(b"2".to_vec())), 5)],
            vec![op(1, b"k", RegisterOp::Read(None), 5)],
            vec![op(1, b"k", RegisterOp::Read(Some(b"1".to_vec())), 6)],
            vec![op(1, b"k", RegisterOp::Write(Some(b"1".to_vec())), 5)],
            vec![Operation { server: 3, ..base[0].clone() }],
            vec![Operation { outcome: Outcome::Unknown, ..base[0].clone() }],
        ];
        for v in &variants {
            assert_ne!(history_hash(v), h, "{v:?}");
        }
    }

    /// Failure guarded against: a replay that read a different value passing the determinism check.
    /// Invariant: the divergence names the first differing operation, or the server whose disk differs.
    #[test]
    fn divergence_names_the_first_differing_operation_or_disk() {
        let a = vec![
            op(1, b"k", RegisterOp::Write(Some(b"1".to_vec())), 5),
            op(1, b"k", RegisterOp::Read(None), 9),
        ];
        let mut b = a.clone();
        b[1] = op(1, b"k", RegisterOp::Read(Some(b"1".to_vec())), 9);
        let disks: BTreeMap<u64, u64> = [(1, 10), (2, 20)].into();
        assert_eq!(divergence((&a, &disks), (&a, &disks)), None);
        let d = divergence((&a, &disks), (&b, &disks)).expect("histories differ");
        assert!(d.contains("first at operation 1"), "{d}");
        let d = divergence((&a, &disks), (&a[..1], &disks)).expect("one history is shorter");
        assert!(d.contains("first at operation 1") && d.contains("the history ended"), "{d}");
        let other: BTreeMap<u64, u64> = [(1, 10), (2, 21)].into();
        let d = divergence((&a, &disks), (&a, &other)).expect("disks differ");
        assert!(d.contains("server 2's disk") && !d.contains("server 1"), "{d}");
        let image = |bytes: &[u8]| BTreeMap::from([(PathBuf::from("/node/x"), bytes.to_vec())]);
        assert_ne!(image_hash(&image(b"ab")), image_hash(&image(b"ac")));
    }

    /// Failure guarded against: the end-of-run disk hash, read in place, disagreeing with the hash
    /// of the copied image (a file's pieces chained in the wrong order or with the wrong CRC seed).
    /// Invariant: both give the same value, for files of several chunks too.
    #[test]
    fn the_in_place_disk_hash_is_the_image_hash() {
        use durakv::io::{Fs, OpenOptions};
        use std::path::Path;
        let fs = durakv_faults::SimFs::with_seed(3);
        for (name, len) in [("/a", 0usize), ("/b", 5), ("/c", 200_000)] {
            let mut f = fs.open(Path::new(name), OpenOptions::create_new()).expect("create");
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            f.write_at(&bytes, 0).expect("write");
            f.sync().expect("sync");
        }
        fs.sync_dir(Path::new("/")).expect("sync dir");
        assert_eq!(durable_hash(&fs.durable_files()), image_hash(&fs.durable_image()));
        assert_eq!(fs.durable_files().len(), 3);
    }
}
