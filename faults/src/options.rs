//! Every fault setting of the simulated disk in one place. Probabilities are integer ratios (no floats
//! in the deterministic core); constructors check bounds and return [`OptionsError`].

use std::path::PathBuf;

use rand::Rng;

/// A setting was out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("ratio {num}/{den} is not a probability (need den > 0 and num <= den)")]
    BadRatio { num: u32, den: u32 },
    #[error("sector odds keep={keep} drop={drop} garbage={garbage} must not all be zero")]
    NoSectorOdds { keep: u32, drop: u32, garbage: u32 },
    #[error("sector size {0} must be a power of two between 1 and 65536")]
    BadSectorSize(u64),
    #[error("mount point {0:?} must be an absolute path")]
    RelativeMount(PathBuf),
    #[error("fault rule path pattern must not be empty")]
    EmptyPattern,
}

/// A probability `num/den`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    num: u32,
    den: u32,
}

impl Ratio {
    pub const NEVER: Ratio = Ratio { num: 0, den: 1 };
    pub const ALWAYS: Ratio = Ratio { num: 1, den: 1 };

    pub fn new(num: u32, den: u32) -> Result<Self, OptionsError> {
        if den == 0 || num > den {
            return Err(OptionsError::BadRatio { num, den });
        }
        Ok(Ratio { num, den })
    }

    pub fn num(&self) -> u32 {
        self.num
    }

    pub fn den(&self) -> u32 {
        self.den
    }

    /// Draw once. `NEVER` and `ALWAYS` draw nothing, so adding a rule that never fires does not shift
    /// the random stream of a seed.
    pub(crate) fn sample(&self, rng: &mut impl Rng) -> bool {
        if self.num == 0 {
            false
        } else if self.num == self.den {
            true
        } else {
            rng.random_range(0..self.den) < self.num
        }
    }
}

/// What happens to each unsynced sector at a power loss, as integer weights (FoundationDB's model:
/// a sector the disk had not written back is kept, dropped, or left holding garbage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorOdds {
    keep: u32,
    drop: u32,
    garbage: u32,
}

/// The fate of one sector at a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectorFate {
    /// The page cache's bytes reached the media.
    Keep,
    /// The media still holds what it held at the last sync (zeros past the durable end of the file).
    Drop,
    /// The media holds random bytes where the unsynced bytes were (a torn sector write).
    Garbage,
}

impl SectorOdds {
    pub fn new(keep: u32, drop: u32, garbage: u32) -> Result<Self, OptionsError> {
        if keep.checked_add(drop).and_then(|s| s.checked_add(garbage)).unwrap_or(0) == 0 {
            return Err(OptionsError::NoSectorOdds { keep, drop, garbage });
        }
        Ok(SectorOdds { keep, drop, garbage })
    }

    pub(crate) fn pick(&self, rng: &mut impl Rng) -> SectorFate {
        let total = self.keep + self.drop + self.garbage;
        let roll = rng.random_range(0..total);
        if roll < self.keep {
            SectorFate::Keep
        } else if roll < self.keep + self.drop {
            SectorFate::Drop
        } else {
            SectorFate::Garbage
        }
    }
}

impl Default for SectorOdds {
    /// Half of the unsynced sectors reach the media, a third are dropped, a sixth are torn.
    fn default() -> Self {
        SectorOdds { keep: 3, drop: 2, garbage: 1 }
    }
}

/// The kinds of operation a fault rule can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Read,
    Write,
    Sync,
    SyncDir,
    Rename,
    Remove,
    SetLen,
    Create,
}

/// What a fault rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultEffect {
    /// The operation fails with `EIO`. A failed write writes nothing; a failed sync makes a random
    /// subset of the dirty sectors durable and forgets the rest (Linux marks them clean after a
    /// write-back error), so a retried sync succeeds without persisting them: the fsyncgate trap.
    Eio,
    /// The operation succeeds but one random bit of the bytes it touched flips on the media and in
    /// the cache alike (silent corruption, latent sector error). Applies to reads and writes.
    BitFlip,
    /// The operation fails with `ENOSPC` although the disk is not full by its capacity (a quota, a
    /// thin-provisioned volume, delayed allocation failing at write-back). A failed write writes
    /// nothing; a failed sync loses dirty sectors as `EIO` does (Linux reports both as a write-back
    /// error).
    Enospc,
}

/// One injected fault: which operations on which paths, how often, from when, how many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    pub effect: FaultEffect,
    /// Operations it applies to; empty means every operation the effect can apply to.
    pub ops: Vec<OpKind>,
    /// A glob over the full path (`*` matches any run of characters, `/` included); `None` for all.
    pub path: Option<String>,
    pub probability: Ratio,
    /// Only after this many durability operations (writes, syncs, renames, …) have run.
    pub after_ops: u64,
    /// Stop after firing this many times; `None` for no limit.
    pub max_fires: Option<u64>,
}

impl FaultRule {
    /// A rule that fires on every matching operation.
    pub fn always(effect: FaultEffect, ops: &[OpKind]) -> Self {
        FaultRule {
            effect,
            ops: ops.to_vec(),
            path: None,
            probability: Ratio::ALWAYS,
            after_ops: 0,
            max_fires: None,
        }
    }

    pub fn on_path(mut self, pattern: &str) -> Result<Self, OptionsError> {
        if pattern.is_empty() {
            return Err(OptionsError::EmptyPattern);
        }
        self.path = Some(pattern.to_string());
        Ok(self)
    }

    pub fn with_probability(mut self, probability: Ratio) -> Self {
        self.probability = probability;
        self
    }

    pub fn after_ops(mut self, ops: u64) -> Self {
        self.after_ops = ops;
        self
    }

    pub fn max_fires(mut self, fires: u64) -> Self {
        self.max_fires = Some(fires);
        self
    }

    /// Check the rule's bounds (a rule built field by field may hold an empty path pattern).
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.path.as_deref() == Some("") {
            return Err(OptionsError::EmptyPattern);
        }
        Ok(())
    }

    pub(crate) fn matches(&self, op: OpKind, path: &str, ops_done: u64) -> bool {
        (self.ops.is_empty() || self.ops.contains(&op))
            && ops_done >= self.after_ops
            && self.path.as_deref().is_none_or(|p| glob_match(p, path))
    }
}

/// The simulated disk's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFsOptions {
    /// The unit of a torn write and of power-loss fates. Default 512.
    pub sector_size_bytes: u64,
    /// Fates of unsynced sectors at a power loss.
    pub power_loss: SectorOdds,
    /// Total bytes all files may hold; a write past it fails with `ENOSPC`. `None`: unlimited.
    pub capacity_bytes: Option<u64>,
    /// Mount points: each is its own device, so a rename between two fails with `EXDEV`.
    pub mounts: Vec<PathBuf>,
    /// Injected faults.
    pub rules: Vec<FaultRule>,
}

impl Default for SimFsOptions {
    fn default() -> Self {
        SimFsOptions {
            sector_size_bytes: 512,
            power_loss: SectorOdds::default(),
            capacity_bytes: None,
            mounts: Vec::new(),
            rules: Vec::new(),
        }
    }
}

impl SimFsOptions {
    /// Check every bound.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let s = self.sector_size_bytes;
        if s == 0 || s > 65536 || !s.is_power_of_two() {
            return Err(OptionsError::BadSectorSize(s));
        }
        for m in &self.mounts {
            if !m.is_absolute() {
                return Err(OptionsError::RelativeMount(m.clone()));
            }
        }
        self.rules.iter().try_for_each(FaultRule::validate)
    }
}

/// `*` matches any (possibly empty) run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, never recursive.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_rejects_non_probabilities() {
        assert_eq!(Ratio::new(1, 0), Err(OptionsError::BadRatio { num: 1, den: 0 }));
        assert_eq!(Ratio::new(3, 2), Err(OptionsError::BadRatio { num: 3, den: 2 }));
        assert!(Ratio::new(0, 7).is_ok());
    }

    #[test]
    fn sector_odds_need_some_weight() {
        assert!(SectorOdds::new(0, 0, 0).is_err());
        assert!(SectorOdds::new(u32::MAX, u32::MAX, 0).is_err());
        assert!(SectorOdds::new(0, 1, 0).is_ok());
    }

    #[test]
    fn options_validate_bounds() {
        let mut o = SimFsOptions { sector_size_bytes: 500, ..SimFsOptions::default() };
        assert_eq!(o.validate(), Err(OptionsError::BadSectorSize(500)));
        o.sector_size_bytes = 4096;
        o.mounts = vec![PathBuf::from("rel")];
        assert!(matches!(o.validate(), Err(OptionsError::RelativeMount(_))));
    }

    #[test]
    fn glob() {
        assert!(glob_match("*", "/a/b"));
        assert!(glob_match("/data/*.wal", "/data/0001.wal"));
        assert!(glob_match("*wal*", "/n1/wal/0001.wal"));
        assert!(!glob_match("/data/*.wal", "/data/0001.wal.tmp"));
        assert!(glob_match("/a/*/c", "/a/b/x/c"));
        assert!(!glob_match("/a", "/a/b"));
        assert!(glob_match("", ""));
    }
}
