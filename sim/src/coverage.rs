//! What a fuzz run exercised: how often each scheduled fault class was applied, each failpoint and
//! each disk fault path fired, and each check ran to completion. Rows come from the complete lists
//! ([`Action::ALL`], `durakv::failpoint::NAMES`, `durakv_faults::COVERAGE_KEYS`,
//! [`crate::checkers::CHECKS`]), so what never happened shows as 0 instead of being missing.

use std::collections::BTreeMap;

use crate::scenario::Action;

/// One row's counts: the seeds in which it happened at least once, and how often in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub seeds: u64,
    pub total: u64,
}

/// The sections of the table, in print order.
pub const SECTIONS: [&str; 4] = ["fault", "failpoint", "disk", "check"];

/// Counts by section and name, over the seeds added so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub seeds: u64,
    /// (section, name) → count; every known name is present from the start.
    pub rows: BTreeMap<(usize, String), Count>,
}

impl Default for Coverage {
    fn default() -> Self {
        let mut rows = BTreeMap::new();
        let known = [
            Action::ALL.iter().map(|a| a.name()).collect::<Vec<_>>(),
            durakv::failpoint::NAMES.to_vec(),
            durakv_faults::COVERAGE_KEYS.to_vec(),
            crate::checkers::CHECKS.to_vec(),
        ];
        for (section, names) in known.iter().enumerate() {
            for name in names {
                rows.insert((section, name.to_string()), Count::default());
            }
        }
        Coverage { seeds: 0, rows }
    }
}

impl Coverage {
    /// Add one seed: the faults its schedule applied (`Summary::faults`, `"<Action:?>@<ms>:<server>"`
    /// per server), the failpoint fires and disk fault paths summed over its servers, and the checks
    /// that ran to completion.
    pub fn add(
        &mut self,
        faults: &[String],
        failpoints: &BTreeMap<String, u64>,
        paths: &BTreeMap<String, u64>,
        checks: &[&str],
    ) {
        self.seeds += 1;
        let mut this: BTreeMap<(usize, String), u64> = BTreeMap::new();
        for f in faults {
            let debug = f.split('@').next().unwrap_or(f);
            let name = Action::ALL
                .iter()
                .find(|a| format!("{a:?}") == debug)
                .map_or_else(|| debug.to_string(), |a| a.name().to_string());
            *this.entry((0, name)).or_insert(0) += 1;
        }
        for (section, counts) in [(1, failpoints), (2, paths)] {
            for (name, n) in counts {
                *this.entry((section, name.clone())).or_insert(0) += n;
            }
        }
        for check in checks {
            *this.entry((3, check.to_string())).or_insert(0) += 1;
        }
        for (key, n) in this {
            let row = self.rows.entry(key).or_default();
            if n > 0 {
                row.seeds += 1;
                row.total += n;
            }
        }
    }

    /// Add one run's summary.
    #[cfg(madsim)]
    pub fn add_run(&mut self, r: &crate::harness::RunResult) {
        let s = &r.summary;
        self.add(&s.faults, &s.failpoint_fires, &s.coverage, &s.checks_ran);
    }

    /// The counts of `name` in section `kind` (`fault`, `failpoint`, `disk`, `check`).
    pub fn count(&self, kind: &str, name: &str) -> Count {
        let section = SECTIONS.iter().position(|s| *s == kind);
        section.and_then(|i| self.rows.get(&(i, name.to_string()))).copied().unwrap_or_default()
    }

    /// The rows that never happened, as `section name`.
    pub fn never(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|(_, c)| c.total == 0)
            .map(|((section, name), _)| format!("{} {name}", SECTIONS[*section]))
            .collect()
    }

    /// An aligned text table: section, name, seeds it happened in, total times.
    pub fn table(&self) -> String {
        let width = self.rows.keys().map(|(_, n)| n.len()).max().unwrap_or(0).max(4);
        let mut out = format!(
            "coverage over {} seeds (seeds: how many it happened in; total: how often)\n",
            self.seeds
        );
        out.push_str(&format!("{:<9} {:<width$} {:>7} {:>9}\n", "kind", "name", "seeds", "total"));
        for ((section, name), c) in &self.rows {
            let mark = if c.total == 0 { "  never" } else { "" };
            out.push_str(&format!(
                "{:<9} {name:<width$} {:>7} {:>9}{mark}\n",
                SECTIONS[*section], c.seeds, c.total
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failure guarded against: a fault class, failpoint, fault path or check that never fired in a
    /// whole fuzz run missing from its coverage table (and so going unnoticed). Invariant: the table
    /// lists every action, failpoint, coverage key and check, with a zero row where nothing fired.
    #[test]
    fn the_table_lists_everything_with_zero_rows_for_what_never_fired() {
        let mut c = Coverage::default();
        let fired = |pairs: &[(&str, u64)]| pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        c.add(
            &["Kill@5000:1".into(), "Kill@5000:2".into(), "PowerLoss@9000:3".into()],
            &fired(&[("wal.sync", 2)]),
            &fired(&[("crash.process_kill", 2), ("crash.power_loss", 1)]),
            &["durability", "linearizability"],
        );
        c.add(&["Kill@100:1".into()], &BTreeMap::new(), &BTreeMap::new(), &["durability"]);
        let table = c.table();
        let row = |kind: &str, name: &str| {
            table
                .lines()
                .find(|l| {
                    let mut words = l.split_whitespace();
                    words.next() == Some(kind) && words.next() == Some(name)
                })
                .map(|l| l.split_whitespace().skip(2).take(2).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| panic!("no {kind} {name} row in\n{table}"))
        };
        for a in Action::ALL {
            row("fault", a.name());
        }
        for name in durakv::failpoint::NAMES {
            row("failpoint", name);
        }
        for name in durakv_faults::COVERAGE_KEYS {
            row("disk", name);
        }
        for name in crate::checkers::CHECKS {
            row("check", name);
        }
        assert_eq!(row("fault", "kill"), "2 3");
        assert_eq!(row("fault", "power_loss"), "1 1");
        assert_eq!(row("fault", "eio"), "0 0");
        assert_eq!(row("failpoint", "wal.sync"), "1 2");
        assert_eq!(row("failpoint", "snapshot.restore"), "0 0");
        assert_eq!(row("disk", "crash.process_kill"), "1 2");
        assert_eq!(row("disk", "fault.exdev"), "0 0");
        assert_eq!(row("check", "durability"), "2 2");
        assert_eq!(row("check", "convergence"), "0 0");
        assert!(c.never().contains(&"fault eio".to_string()));
        assert!(table.starts_with("coverage over 2 seeds"), "{table}");
        // Aligned: every row's counts end in the same column.
        let ends: Vec<usize> =
            table.lines().skip(1).map(|l| l.trim_end_matches("  never").trim_end().len()).collect();
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{table}");
    }
}
