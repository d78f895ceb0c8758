//! Swarm testing (`durakv-sim fuzz`): every seed turns a base scenario into a variant of its own —
//! cluster size, sync mode, snapshot interval, workload, which of the base faults run and when, and
//! extra faults drawn from a pool — so a fleet of seeds covers fault mixes nobody wrote down. The
//! variant depends only on the base file and the seed: `durakv-sim run <file> --seed N --swarm`
//! rebuilds it bit for bit.

use rand::Rng;

use crate::rng_for;
use crate::scenario::{Action, Fault, Scenario};

/// The variant of `base` that fuzz runs for `seed`.
pub fn swarm(base: &Scenario, seed: u64) -> Scenario {
    let mut rng = rng_for(seed, "fuzz/swarm");
    let mut s = base.clone();
    s.seeds = vec![seed];
    let nodes = match rng.random_range(0..10) {
        0..5 => 3,
        5..7 => 4,
        _ => 5,
    };
    s.cluster.nodes = nodes.max(base.cluster.nodes);
    if rng.random_bool(0.4) {
        s.cluster.fsm_sync = if rng.random_bool(0.5) { "sync" } else { "nosync" }.into();
    }
    if rng.random_bool(0.3) {
        // Frequent snapshots: lagging servers catch up by snapshot, GC and cold start run often.
        s.cluster.snapshot_every = rng.random_range(100..=400);
    }
    let w = &mut s.workload;
    w.clients = rng.random_range(1..=8);
    w.rate_per_sec = (w.rate_per_sec * rng.random_range(50..=200) / 100).max(10);
    w.keys = [4, w.keys, 64][rng.random_range(0..3)];
    let d = s.duration_ms;
    let mut faults: Vec<Fault> = Vec::new();
    for f in &base.faults {
        if !rng.random_bool(0.8) {
            continue;
        }
        let mut f = f.clone();
        let jitter = rng.random_range(0..=f.at_ms / 2);
        f.at_ms = (f.at_ms / 2 + jitter + rng.random_range(0..1000)).min(d - 1);
        faults.push(f);
    }
    for _ in 0..rng.random_range(0..=2) {
        let at = rng.random_range(d / 10..=d * 7 / 10);
        faults.extend(extra_fault(&mut rng, at, d));
    }
    faults.sort_by_key(|f| f.at_ms);
    s.faults = faults;
    s
}

/// One fault from the pool, with what heals it (a restart) when it needs one.
fn extra_fault(rng: &mut impl Rng, at: u64, duration: u64) -> Vec<Fault> {
    let heal_at =
        |rng: &mut dyn rand::RngCore, after: u64| (at + after + rng.random_range(0..2000)).min(duration - 1);
    let target = ["leader", "follower", "any"][rng.random_range(0..3)];
    match rng.random_range(0..10) {
        0 => {
            let mut kill = Fault::new(at, Action::Kill, target);
            if rng.random_bool(0.5) {
                kill.mid_write = Some("*/raft/*.wal".into());
            }
            vec![kill, Fault::new(heal_at(rng, 1000), Action::Restart, "all")]
        }
        1 => vec![
            Fault::new(at, Action::PowerLoss, target),
            Fault::new(heal_at(rng, 1000), Action::Restart, "all"),
        ],
        2 => {
            let mut f = Fault::new(at, Action::Partition, target);
            f.for_ms = Some(rng.random_range(500..=3000));
            vec![f]
        }
        3 => {
            let mut f = Fault::new(at, Action::Clog, target);
            f.for_ms = Some(rng.random_range(500..=2000));
            vec![f]
        }
        4 => {
            let mut f = Fault::new(at, Action::Failpoint, target);
            f.at = Some("transport.send".into());
            f.effect = Some("delay".into());
            f.stall_ms = Some(rng.random_range(20..=300));
            f.for_ms = Some(rng.random_range(500..=3000));
            vec![f]
        }
        5 => {
            let mut f = Fault::new(at, Action::Failpoint, target);
            f.at = Some("wal.sync".into());
            f.effect = Some("pause".into());
            f.stall_ms = Some(rng.random_range(200..=1500));
            vec![f]
        }
        6 => vec![Fault::new(at, Action::ApplyFailure, target)],
        7 => {
            let mut f = Fault::new(at, Action::Failpoint, target);
            f.at = Some(
                ["wal.append", "wal.sync", "snapshot.write", "snapshot.restore"][rng.random_range(0..4)]
                    .into(),
            );
            f.effect = Some(["error", "kill", "power_loss"][rng.random_range(0..3)].into());
            vec![f]
        }
        8 => {
            let mut f = Fault::new(at, Action::Eio, target);
            f.at = Some("*/raft/*.wal".into());
            f.times = Some(1);
            vec![f]
        }
        _ => {
            let mut f = Fault::new(at, Action::Enospc, target);
            f.for_ms = Some(rng.random_range(1000..=3000));
            vec![f]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn base() -> Scenario {
        let path = crate::repo_root().join("scenarios/partitions-and-kills.toml");
        Scenario::load(&path).expect("a scenario in the repository")
    }

    #[test]
    fn a_variant_depends_only_on_the_base_and_the_seed() {
        let b = base();
        assert_eq!(swarm(&b, 7), swarm(&b, 7));
        let distinct =
            (0..20).map(|seed| format!("{:?}", swarm(&b, seed))).collect::<std::collections::BTreeSet<_>>();
        assert!(distinct.len() > 15, "seeds give different variants");
    }

    #[test]
    fn every_variant_is_a_valid_scenario() {
        let b = base();
        for seed in 0..500 {
            let s = swarm(&b, seed);
            s.validate("", Path::new("swarm")).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(
                s.faults.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
                "seed {seed}: faults in time order"
            );
        }
    }
}
