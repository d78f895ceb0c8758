//! Checkers of raft's own promises, fed by what each node reports about itself (`durakv::probe`) as
//! the run goes, not by what clients see at the end:
//!
//! * **promises**: every vote granted and every append (or snapshot) accepted promised durable state.
//!   After every restart the recovered state must honour all of them: its term no lower than any
//!   term promised; in the term of a granted vote, the vote for the same candidate; its log, in raft's
//!   up-to-date order (last term, then last index), no behind the strongest append accepted since a
//!   raft conflict last voided the promises past its cut. Only a server whose log the harness damaged
//!   on purpose may be behind, and then it must be recovering from its peers up to the promise.
//! * **election_safety**: at most one leader per term, as the nodes report it when they lead.
//! * **log_matching**: every node that applies an index applies the same entry (term and CRC32C of
//!   its data).
//! * **commit_monotonic**: the commit index a node's hard-state file durably holds never moves back,
//!   while it runs or across a restart.
//!
//! Everything is kept in `BTreeMap`s: a report lists the same violation for the same seed every run.

use std::collections::BTreeMap;

use durakv::probe::{Observation, Promise, Recovered};

/// A broken invariant, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub explanation: String,
}

/// What one server promised, and the highest commit index it persisted.
#[derive(Debug, Default)]
struct ServerPromises {
    /// The highest term of any promise: (term, when).
    term: Option<(u64, u64)>,
    /// The vote granted in each term: term → (candidate, when).
    votes: BTreeMap<u64, (u64, u64)>,
    /// The strongest append accepted and not voided: ((log term, index), message term, when).
    accepted: Option<((u64, u64), u64, u64)>,
    /// The highest commit index persisted: (commit, when).
    commit: Option<(u64, u64)>,
}

/// The checker's state across a run. Feed it every observation of every server, in each server's
/// order, with [`Checker::observe`].
#[derive(Debug, Default)]
pub struct Checker {
    servers: BTreeMap<u64, ServerPromises>,
    /// term → (leader, when it reported leading).
    leaders: BTreeMap<u64, (u64, u64)>,
    /// index → (term, checksum, the first server to apply it, when).
    applied: BTreeMap<u64, (u64, u32, u64, u64)>,
}

fn show_recovered(r: &Recovered) -> String {
    format!(
        "term {}, vote {}, commit {}, log ending at index {} of term {}{}",
        r.term,
        r.vote,
        r.commit,
        r.last_index,
        r.last_term,
        if r.recover_to > 0 {
            format!(", recovering from peers up to index {} of term {}", r.recover_to, r.recover_term)
        } else {
            String::new()
        }
    )
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    /// One observation of `server` at `at` ms. `log_damaged`: the harness damaged this server's
    /// acknowledged log records on purpose (so its log may be behind its promises, if it recovers).
    pub fn observe(
        &mut self,
        server: u64,
        at: u64,
        what: &Observation,
        log_damaged: bool,
    ) -> Result<(), Violation> {
        let s = self.servers.entry(server).or_default();
        match *what {
            Observation::Promise(p) => {
                let term = match p {
                    Promise::Vote { term, candidate } => {
                        s.votes.insert(term, (candidate, at));
                        term
                    }
                    Promise::Accept { term, index, log_term } => {
                        if s.accepted.is_none_or(|(mark, _, _)| (log_term, index) >= mark) {
                            s.accepted = Some(((log_term, index), term, at));
                        }
                        term
                    }
                };
                if s.term.is_none_or(|(t, _)| term > t) {
                    s.term = Some((term, at));
                }
            }
            Observation::Voided { index, term } => {
                if s.accepted.is_some_and(|((_, i), _, _)| i > index) {
                    s.accepted = s.accepted.map(|(_, t, when)| ((term, index), t, when));
                }
            }
            Observation::Leader { term } => match self.leaders.get(&term) {
                Some(&(other, when)) if other != server => {
                    return Err(Violation {
                        invariant: "election_safety",
                        explanation: format!(
                            "two leaders in term {term}: server {other} from {when} ms, and server {server} at {at} ms"
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, (server, at));
                }
            },
            Observation::Applied { index, term, checksum } => match self.applied.get(&index) {
                Some(&(t, c, other, when)) if (t, c) != (term, checksum) => {
                    return Err(Violation {
                        invariant: "log_matching",
                        explanation: format!(
                            "index {index}: server {other} applied an entry of term {t} with data CRC32C {c:08x} at {when} ms, \
                             server {server} one of term {term} with data CRC32C {checksum:08x} at {at} ms"
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    self.applied.insert(index, (term, checksum, server, at));
                }
            },
            Observation::CommitPersisted { commit } => {
                if let Some((before, when)) = s.commit
                    && commit < before
                {
                    return Err(Violation {
                        invariant: "commit_monotonic",
                        explanation: format!(
                            "server {server} persisted commit index {commit} at {at} ms, after it had persisted {before} at {when} ms"
                        ),
                    });
                }
                s.commit = Some((commit, at));
            }
            Observation::Recovered(r) => check_recovered(server, at, s, &r, log_damaged)?,
        }
        Ok(())
    }
}

/// A restart must honour every promise made before it (module documentation), and keep the durable
/// commit index. Promises are judged before the commit index: a lost hard state breaks both, and the
/// promise is the sharper name for it.
fn check_recovered(
    server: u64,
    at: u64,
    s: &ServerPromises,
    r: &Recovered,
    log_damaged: bool,
) -> Result<(), Violation> {
    let broken = |promise: String| Violation {
        invariant: "promises",
        explanation: format!(
            "server {server} restarted at {at} ms with {}, breaking {promise}",
            show_recovered(r)
        ),
    };
    if let Some((term, when)) = s.term
        && r.term < term
    {
        return Err(broken(format!("a promise in term {term} made at {when} ms (its term went back)")));
    }
    if let Some(&(candidate, when)) = s.votes.get(&r.term)
        && r.vote != candidate
    {
        return Err(broken(format!(
            "its vote for server {candidate} in term {} granted at {when} ms",
            r.term
        )));
    }
    if let Some(((log_term, index), term, when)) = s.accepted
        && (r.last_term, r.last_index) < (log_term, index)
    {
        let recovering = r.recover_to > 0 && (r.recover_term, r.recover_to) >= (log_term, index);
        if !(log_damaged && recovering) {
            let why = if log_damaged {
                "; its log was damaged on purpose, but it is not recovering the promised entries from its peers"
            } else {
                ""
            };
            return Err(broken(format!(
                "its acceptance of the log up to index {index} of term {log_term} (an append response in term {term} at {when} ms){why}"
            )));
        }
    }
    if let Some((commit, when)) = s.commit
        && r.commit < commit
    {
        return Err(Violation {
            invariant: "commit_monotonic",
            explanation: format!(
                "server {server} restarted at {at} ms with commit index {}, below the {commit} it persisted at {when} ms",
                r.commit
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(term: u64, candidate: u64) -> Observation {
        Observation::Promise(Promise::Vote { term, candidate })
    }

    fn accept(term: u64, index: u64, log_term: u64) -> Observation {
        Observation::Promise(Promise::Accept { term, index, log_term })
    }

    fn recovered(term: u64, vote: u64, commit: u64, last: (u64, u64)) -> Observation {
        Observation::Recovered(Recovered {
            term,
            vote,
            commit,
            last_index: last.1,
            last_term: last.0,
            ..Recovered::default()
        })
    }

    /// Feed one server's observations; the first violation, if any.
    fn run(server: u64, obs: &[Observation], log_damaged: bool) -> Option<Violation> {
        let mut c = Checker::new();
        obs.iter().enumerate().find_map(|(t, o)| c.observe(server, t as u64 * 10, o, log_damaged).err())
    }

    fn invariant(v: Option<Violation>) -> Option<&'static str> {
        v.map(|v| v.invariant)
    }

    #[test]
    fn a_restart_that_keeps_every_promise_passes() {
        let obs = [
            recovered(0, 0, 0, (0, 0)),
            vote(2, 3),
            accept(2, 5, 2),
            Observation::CommitPersisted { commit: 4 },
            recovered(2, 3, 4, (2, 5)),
            // A newer term, a longer log: still honours everything.
            recovered(3, 0, 5, (3, 7)),
        ];
        assert_eq!(run(1, &obs, false), None);
    }

    #[test]
    fn a_restart_with_an_older_term_breaks_a_promise() {
        let v = run(1, &[vote(4, 2), recovered(3, 2, 0, (3, 9))], false).expect("violation");
        assert_eq!(v.invariant, "promises");
        assert!(v.explanation.contains("term 4"), "{}", v.explanation);
    }

    #[test]
    fn a_restart_that_forgot_its_vote_breaks_a_promise() {
        // Vote lost (the hard state was not persisted): the node could vote again in term 4.
        let v = run(1, &[vote(4, 2), recovered(4, 0, 0, (3, 9))], false).expect("violation");
        assert_eq!(v.invariant, "promises");
        assert!(v.explanation.contains("vote for server 2 in term 4"), "{}", v.explanation);
        assert_eq!(invariant(run(1, &[vote(4, 2), recovered(4, 3, 0, (3, 9))], false)), Some("promises"));
    }

    #[test]
    fn pre_votes_and_rejections_promise_nothing() {
        // The node reports only granted real votes; a vote of an older term constrains nothing once the
        // term moved on.
        assert_eq!(run(1, &[vote(4, 2), recovered(5, 3, 0, (0, 0))], false), None);
    }

    #[test]
    fn a_log_behind_an_accepted_append_breaks_a_promise() {
        let v = run(1, &[accept(3, 10, 3), recovered(3, 0, 0, (3, 9))], false).expect("violation");
        assert_eq!(v.invariant, "promises");
        assert!(v.explanation.contains("up to index 10 of term 3"), "{}", v.explanation);
    }

    #[test]
    fn a_newer_term_leader_may_truncate_accepted_entries() {
        // Up-to-date order: a shorter log whose last entry is of a newer term is ahead.
        assert_eq!(run(1, &[accept(3, 10, 3), recovered(4, 0, 0, (4, 8))], false), None);
        // The conflict voided the promise past index 7; a crash before the new entries were written
        // leaves the log at 7.
        let obs = [accept(3, 10, 3), Observation::Voided { index: 7, term: 3 }, recovered(4, 0, 0, (3, 7))];
        assert_eq!(run(1, &obs, false), None);
        // Voiding past the promise changes nothing.
        let obs = [accept(3, 10, 3), Observation::Voided { index: 12, term: 3 }, recovered(4, 0, 0, (3, 9))];
        assert_eq!(invariant(run(1, &obs, false)), Some("promises"));
    }

    #[test]
    fn a_damaged_log_may_be_behind_only_while_recovering_the_promise() {
        let behind = |recover_to, recover_term| {
            Observation::Recovered(Recovered {
                term: 3,
                last_index: 8,
                last_term: 3,
                recover_to,
                recover_term,
                ..Recovered::default()
            })
        };
        let obs = |r| [accept(3, 10, 3), r];
        assert_eq!(run(1, &obs(behind(10, 3)), true), None);
        // Not damaged on purpose: the same state is a broken promise.
        assert_eq!(invariant(run(1, &obs(behind(10, 3)), false)), Some("promises"));
        // Damaged, but not recovering (or not far enough).
        assert_eq!(invariant(run(1, &obs(behind(0, 0)), true)), Some("promises"));
        assert_eq!(invariant(run(1, &obs(behind(9, 3)), true)), Some("promises"));
    }

    #[test]
    fn an_older_accept_does_not_weaken_a_newer_one() {
        // A duplicate append answered with a lower index leaves the higher promise standing.
        let obs = [accept(3, 10, 3), accept(3, 6, 3), recovered(3, 0, 0, (3, 8))];
        assert_eq!(invariant(run(1, &obs, false)), Some("promises"));
    }

    #[test]
    fn two_leaders_in_one_term_break_election_safety() {
        let mut c = Checker::new();
        assert!(c.observe(1, 0, &Observation::Leader { term: 2 }, false).is_ok());
        assert!(c.observe(1, 5, &Observation::Leader { term: 2 }, false).is_ok());
        assert!(c.observe(2, 6, &Observation::Leader { term: 3 }, false).is_ok());
        let v = c.observe(3, 7, &Observation::Leader { term: 2 }, false).expect_err("two leaders");
        assert_eq!(v.invariant, "election_safety");
        assert!(
            v.explanation.contains("server 1") && v.explanation.contains("server 3"),
            "{}",
            v.explanation
        );
    }

    #[test]
    fn different_entries_applied_at_one_index_break_log_matching() {
        let applied = |index, term, checksum| Observation::Applied { index, term, checksum };
        let mut c = Checker::new();
        assert!(c.observe(1, 0, &applied(5, 2, 0xab), false).is_ok());
        // The same entry again (another node, or the same one after a restart) is fine.
        assert!(c.observe(2, 1, &applied(5, 2, 0xab), false).is_ok());
        assert!(c.observe(1, 2, &applied(5, 2, 0xab), false).is_ok());
        assert_eq!(
            c.observe(3, 3, &applied(5, 2, 0xac), false).map_err(|v| v.invariant),
            Err("log_matching")
        );
        assert_eq!(
            c.observe(3, 4, &applied(5, 3, 0xab), false).map_err(|v| v.invariant),
            Err("log_matching")
        );
    }

    #[test]
    fn a_persisted_commit_that_moves_back_breaks_commit_monotonic() {
        let persisted = |commit| Observation::CommitPersisted { commit };
        assert_eq!(run(1, &[persisted(4), persisted(6), persisted(6)], false), None);
        assert_eq!(invariant(run(1, &[persisted(6), persisted(5)], false)), Some("commit_monotonic"));
        // Across a restart: the recovered durable commit is below what was persisted.
        let v = run(1, &[persisted(6), recovered(1, 0, 5, (1, 9))], false).expect("violation");
        assert_eq!(v.invariant, "commit_monotonic");
        assert!(v.explanation.contains("below the 6"), "{}", v.explanation);
    }

    #[test]
    fn a_lost_hard_state_is_named_a_broken_promise_first() {
        let obs = [vote(4, 2), Observation::CommitPersisted { commit: 6 }, recovered(0, 0, 0, (3, 9))];
        assert_eq!(invariant(run(1, &obs, false)), Some("promises"));
    }
}
