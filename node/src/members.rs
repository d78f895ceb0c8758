//! The cluster's members and their addresses, as this node knows them (its *directory*), and the
//! membership changes an operator asks for.
//!
//! A new data directory starts from the configuration's `peers`. From the first membership change
//! on, the directory is replicated state: every change carries the addresses of the members it adds
//! (in its `ConfChangeV2` context), each replica persists the resulting book with its conf state
//! (one WAL batch), and a snapshot carries the book in its header's `node_state`, so a node that
//! joins by snapshot learns every member's address. A stored book replaces the configuration's
//! `peers`, except for this node's own addresses, which it binds from its configuration.
//!
//! Book encoding (documented in `docs/formats.md`): UTF-8 text, `id=peer_addr,resp_addr` entries
//! joined by `;`, ids ascending (the `--peers` flag's syntax).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState};

use crate::config::Peer;

/// Member addresses by node id.
pub type Book = BTreeMap<u64, Peer>;

/// A book that does not decode, or a membership change that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembersError {
    #[error("member book: {0}")]
    BadBook(String),
    #[error("{0}")]
    Refused(String),
}

/// Encode a book (`id=peer_addr,resp_addr;…`, ids ascending).
pub fn encode_book(book: &Book) -> Vec<u8> {
    book.iter()
        .map(|(id, p)| format!("{id}={},{}", p.peer_addr, p.resp_addr))
        .collect::<Vec<_>>()
        .join(";")
        .into_bytes()
}

/// Decode a book; never panics. Empty bytes are an empty book.
pub fn decode_book(bytes: &[u8]) -> Result<Book, MembersError> {
    let bad = |m: String| MembersError::BadBook(m);
    let text = std::str::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
    let mut book = Book::new();
    for entry in text.split(';').filter(|e| !e.is_empty()) {
        let (id, addrs) = entry.split_once('=').ok_or_else(|| bad(format!("{entry:?} has no '='")))?;
        let id: u64 = id.parse().map_err(|_| bad(format!("{id:?} is not a node id")))?;
        if id == 0 {
            return Err(bad("node id 0".into()));
        }
        let (p, r) = addrs.split_once(',').ok_or_else(|| bad(format!("{addrs:?} is not peer,resp")))?;
        let addr = |s: &str| s.parse::<SocketAddr>().map_err(|_| bad(format!("{s:?} is not an address")));
        if book.insert(id, Peer { peer_addr: addr(p)?, resp_addr: addr(r)? }).is_some() {
            return Err(bad(format!("node {id} listed twice")));
        }
    }
    Ok(book)
}

/// Every node a conf state names (voters, learners, outgoing voters, learners to be).
pub fn ids_of(cs: &ConfState) -> std::collections::BTreeSet<u64> {
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners_next)
        .copied()
        .collect()
}

/// Does `cs` leave `id` out altogether (a removed node)? An empty conf state (a node waiting to
/// join) leaves nobody out.
pub fn excludes(cs: &ConfState, id: u64) -> bool {
    let ids = ids_of(cs);
    !ids.is_empty() && !ids.contains(&id)
}

/// The membership in a node's status (INFO, CLUSTER MEMBERS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The voters of the configuration being left (non-empty only in a joint configuration).
    pub outgoing: Vec<u64>,
}

impl View {
    pub fn of(cs: &ConfState) -> View {
        let sorted = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v
        };
        View {
            voters: sorted(&cs.voters),
            learners: sorted(&cs.learners),
            outgoing: sorted(&cs.voters_outgoing),
        }
    }

    /// Every member, ascending.
    pub fn members(&self) -> Vec<u64> {
        ids_of(&self.conf_state()).into_iter().collect()
    }

    pub fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            voters_outgoing: self.outgoing.clone(),
            ..ConfState::default()
        }
    }
}

/// This node's shared view of the members' addresses: read by the transport (where to connect,
/// whom to accept) and the client port (redirects, INFO), written by the replica as membership
/// changes apply.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    inner: Arc<RwLock<Book>>,
    /// Bumped by every [`Directory::replace`], so readers notice a change cheaply.
    version: Arc<std::sync::atomic::AtomicU64>,
}

impl Directory {
    pub fn new(book: Book) -> Directory {
        Directory { inner: Arc::new(RwLock::new(book)), version: Arc::default() }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Book> {
        // A writer that panicked left a whole book (replace is one assignment): keep using it.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: u64) -> Option<Peer> {
        self.read().get(&id).copied()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.read().contains_key(&id)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.read().keys().copied().collect()
    }

    pub fn book(&self) -> Book {
        self.read().clone()
    }

    /// The member serving clients at `addr`.
    pub fn by_resp_addr(&self, addr: SocketAddr) -> Option<u64> {
        self.read().iter().find(|(_, p)| p.resp_addr == addr).map(|(id, _)| *id)
    }

    pub fn replace(&self, book: Book) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = book;
        self.version.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// How many times the book was replaced.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A membership change an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add `id` as a learner (it receives the log, does not vote) at these addresses.
    AddLearner { id: u64, addrs: Peer },
    /// Make learner `id` a voter; with `replacing`, remove that voter in the same change (joint
    /// consensus: both configurations must agree until the cluster leaves the joint one).
    Promote { id: u64, replacing: Option<u64> },
    /// Remove `id` (voter or learner).
    Remove { id: u64 },
}

/// How far a learner may trail the leader's log and still be promoted.
pub const PROMOTE_MAX_LAG: u64 = 1000;

/// What the leader knows when it checks a change: the conf state, each member's matched index, the
/// last log index, the directory.
pub struct Membership<'a> {
    pub conf: &'a ConfState,
    pub matched: &'a BTreeMap<u64, u64>,
    pub last_index: u64,
    pub directory: &'a Book,
}

impl Change {
    /// The raft conf change for it, checked against the current membership (the leader checks before
    /// it proposes; raft checks again when the change applies, on every replica).
    pub fn to_conf_change(&self, m: &Membership<'_>) -> Result<ConfChangeV2, MembersError> {
        let refuse = |s: String| Err(MembersError::Refused(s));
        let cs = m.conf;
        if !cs.voters_outgoing.is_empty() {
            return refuse("the cluster is leaving a joint configuration; retry in a moment".into());
        }
        let single = |change_type, node_id| ConfChangeSingle { change_type: change_type as i32, node_id };
        let (changes, context) = match self {
            Change::AddLearner { id, addrs } => {
                if *id == 0 {
                    return refuse("node id 0 is not valid".into());
                }
                if ids_of(cs).contains(id) {
                    return refuse(format!("node {id} is already a member"));
                }
                if let Some((other, _)) = m
                    .directory
                    .iter()
                    .filter(|(o, _)| ids_of(cs).contains(o))
                    .find(|(_, p)| p.peer_addr == addrs.peer_addr || p.resp_addr == addrs.resp_addr)
                {
                    return refuse(format!("node {other} already uses one of those addresses"));
                }
                let book: Book = [(*id, *addrs)].into();
                (vec![single(ConfChangeType::AddLearnerNode, *id)], encode_book(&book))
            }
            Change::Promote { id, replacing } => {
                if !cs.learners.contains(id) {
                    return refuse(format!(
                        "node {id} is not a learner (add it with CLUSTER ADDLEARNER first)"
                    ));
                }
                let matched = m.matched.get(id).copied().unwrap_or(0);
                if matched == 0 {
                    return refuse(format!(
                        "node {id} has not been heard from (started with --join, at the address given?); retry once it caught up"
                    ));
                }
                if matched + PROMOTE_MAX_LAG < m.last_index {
                    return refuse(format!(
                        "node {id} has not caught up (it holds the log to index {matched}, the leader's ends at {}); retry once it has",
                        m.last_index
                    ));
                }
                let mut changes = vec![single(ConfChangeType::AddNode, *id)];
                if let Some(old) = replacing {
                    if !cs.voters.contains(old) {
                        return refuse(format!("node {old} is not a voter"));
                    }
                    changes.push(single(ConfChangeType::RemoveNode, *old));
                }
                (changes, Vec::new())
            }
            Change::Remove { id } => {
                if !ids_of(cs).contains(id) {
                    return refuse(format!("node {id} is not a member"));
                }
                if cs.voters.contains(id) && cs.voters.len() == 1 {
                    return refuse(format!("node {id} is the only voter"));
                }
                (vec![single(ConfChangeType::RemoveNode, *id)], Vec::new())
            }
        };
        // One change is a simple one; two (promote and remove) go through a joint configuration the
        // leader leaves on its own once it has applied it.
        let transition = ConfChangeTransition::Auto;
        Ok(ConfChangeV2 { transition: transition as i32, changes, context })
    }
}

/// The book after a conf change that resulted in `cs`: the members' known addresses, plus those the
/// change's context adds, without nodes `cs` no longer names.
pub fn book_after(before: &Book, context: &[u8], cs: &ConfState) -> Result<Book, MembersError> {
    let added = decode_book(context)?;
    let ids = ids_of(cs);
    let mut book: Book = before.iter().filter(|(id, _)| ids.contains(id)).map(|(id, p)| (*id, *p)).collect();
    for (id, p) in added {
        if ids.contains(&id) {
            book.insert(id, p);
        }
    }
    Ok(book)
}

/// One line per member for `CLUSTER MEMBERS`: `id role peer_addr resp_addr`, then `leader` on the
/// leader's.
pub fn describe(cs: &ConfState, book: &Book, leader: u64) -> Vec<String> {
    ids_of(cs)
        .into_iter()
        .map(|id| {
            let role = if cs.voters.contains(&id) && cs.voters_outgoing.contains(&id) {
                "voter"
            } else if cs.voters.contains(&id) {
                if cs.voters_outgoing.is_empty() { "voter" } else { "voter-incoming" }
            } else if cs.voters_outgoing.contains(&id) {
                "voter-outgoing"
            } else {
                "learner"
            };
            let (p, r) = book.get(&id).map_or(("?".to_string(), "?".to_string()), |a| {
                (a.peer_addr.to_string(), a.resp_addr.to_string())
            });
            let leads = if id == leader { " leader" } else { "" };
            format!("{id} {role} {p} {r}{leads}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(p: u16, r: u16) -> Peer {
        Peer { peer_addr: ([127, 0, 0, 1], p).into(), resp_addr: ([127, 0, 0, 1], r).into() }
    }

    #[test]
    fn a_book_round_trips_and_bad_books_are_refused_by_name() {
        let book: Book = [(1, peer(7001, 6001)), (4, peer(7004, 6004))].into();
        let bytes = encode_book(&book);
        assert_eq!(
            std::str::from_utf8(&bytes).expect("ascii"),
            "1=127.0.0.1:7001,127.0.0.1:6001;4=127.0.0.1:7004,127.0.0.1:6004"
        );
        assert_eq!(decode_book(&bytes), Ok(book));
        assert_eq!(decode_book(b""), Ok(Book::new()));
        for bad in
            [&b"1"[..], b"x=1.2.3.4:1,1.2.3.4:2", b"0=1.2.3.4:1,1.2.3.4:2", b"1=a,b", b"1=1.2.3.4:1", b"\xff"]
        {
            assert!(matches!(decode_book(bad), Err(MembersError::BadBook(_))), "{bad:?}");
        }
        assert!(decode_book(b"1=1.2.3.4:1,1.2.3.4:2;1=1.2.3.4:1,1.2.3.4:2").is_err(), "a node twice");
    }

    #[test]
    fn changes_are_checked_against_the_membership_before_they_are_proposed() {
        let cs = ConfState { voters: vec![1, 2, 3], learners: vec![4], ..Default::default() };
        let book: Book = (1..=4).map(|i| (i, peer(7000 + i as u16, 6000 + i as u16))).collect();
        let matched: BTreeMap<u64, u64> = [(4, 10)].into();
        let m = Membership { conf: &cs, matched: &matched, last_index: 5000, directory: &book };
        fn refused_by(m: &Membership<'_>, c: Change) -> String {
            match c.to_conf_change(m) {
                Err(MembersError::Refused(why)) => why,
                other => panic!("{c:?} was not refused: {other:?}"),
            }
        }
        let refused = |c: Change| refused_by(&m, c);
        assert!(refused(Change::AddLearner { id: 2, addrs: peer(1, 2) }).contains("already a member"));
        assert!(refused(Change::AddLearner { id: 5, addrs: peer(7002, 1) }).contains("node 2 already uses"));
        assert!(refused(Change::Promote { id: 4, replacing: None }).contains("not caught up"));
        let silent = BTreeMap::new();
        let quiet = Membership { matched: &silent, last_index: 3, ..m };
        assert!(
            refused_by(&quiet, Change::Promote { id: 4, replacing: None }).contains("not been heard from")
        );
        assert!(refused(Change::Promote { id: 3, replacing: None }).contains("not a learner"));
        assert!(refused(Change::Remove { id: 9 }).contains("not a member"));
        let caught_up: BTreeMap<u64, u64> = [(4, 4990)].into();
        let m = Membership { matched: &caught_up, ..m };
        let cc = Change::Promote { id: 4, replacing: Some(3) }.to_conf_change(&m).expect("valid");
        assert_eq!(cc.changes.len(), 2, "promote and remove in one joint change");
        let cc = Change::AddLearner { id: 5, addrs: peer(7005, 6005) }.to_conf_change(&m).expect("valid");
        assert_eq!(decode_book(&cc.context), Ok([(5, peer(7005, 6005))].into()));
        let single = ConfState { voters: vec![1], ..Default::default() };
        let m = Membership { conf: &single, ..m };
        assert!(
            matches!(Change::Remove { id: 1 }.to_conf_change(&m), Err(MembersError::Refused(w)) if w.contains("only voter"))
        );
    }

    #[test]
    fn the_book_follows_the_conf_state() {
        let before: Book = (1..=3).map(|i| (i, peer(7000 + i as u16, 6000 + i as u16))).collect();
        let cs = ConfState { voters: vec![1, 2], learners: vec![4], ..Default::default() };
        let added = encode_book(&[(4, peer(7004, 6004))].into());
        let after = book_after(&before, &added, &cs).expect("valid");
        assert_eq!(after.keys().copied().collect::<Vec<_>>(), vec![1, 2, 4]);
        assert!(excludes(&cs, 3) && !excludes(&cs, 4) && !excludes(&ConfState::default(), 9));
        assert_eq!(describe(&cs, &after, 0)[2], "4 learner 127.0.0.1:7004 127.0.0.1:6004");
        assert_eq!(describe(&cs, &after, 1)[0], "1 voter 127.0.0.1:7001 127.0.0.1:6001 leader");
    }
}
