//! durakv: a Raft key-value database whose durability is proven by deterministic simulation.
//!
//! This crate is the production node. Its parts:
//!
//! * [`config`]: the node configuration (TOML file and flags, errors naming the field);
//! * [`limits`]: the size limits (largest write, raft append, peer frame, snapshot chunk, value),
//!   derived from one root and checked against one another;
//! * [`io`]: the [`io::Fs`] trait every durability-relevant operation goes through, with
//!   [`io::RealFs`] for the host filesystem (the simulated disk lives in `durakv-faults`);
//! * [`wal`]: the segmented, CRC32C-framed write-ahead log with group commit and torn-tail repair;
//! * [`clock`]: the wall clock expiry is judged by, and the entry context that carries the leader's
//!   timestamp;
//! * [`fsm`]: the state machine's storage engines (RocksDB, and a deterministic engine on `Fs`) and
//!   the KV state machine with its sync/nosync split;
//! * [`snapshot`]: checksummed snapshot files and tokens, the streaming writer and receive spool,
//!   verify-then-restore, the idempotent cold start, retention and hygiene;
//! * [`server`]: the Redis-protocol (RESP2) client port: codec, command table, connections;
//! * [`hardstate`]: term, vote, commit and the acknowledged index in a two-slot file outside the log,
//!   with the evidence of any recovery from peers in progress;
//! * [`storage`]: raft-rs's `Storage` over the WAL and the hard-state file (entries, hard state, conf
//!   state, snapshot pointer), and the decision to recover lost entries from peers;
//! * [`replica`]: the raft core (RawNode, storage, state machine) and its ready loop;
//! * [`failpoint`]: named failpoints the simulation attaches errors, kills, pauses and delays to;
//! * [`probe`]: what a node reports to the simulation's checkers (promises sent, leadership, applied
//!   entries, persisted commit, recovered state); nothing in a production build;
//! * [`transport`]: the peer wire frames (handshake, raft messages, snapshot chunks);
//! * [`runtime`]: the running node on (madsim-)tokio: the raft loop, the peer transport and the
//!   client port wired together.
//!
//! The durability contract (D1–D11) is in `docs/durability.md`.

pub mod admin;
pub mod apply;
pub mod backup;
pub mod clock;
mod codec;
pub mod config;
pub mod failpoint;
pub mod fsm;
pub mod hardstate;
pub mod io;
pub mod limits;
pub mod members;
pub mod metrics;
pub mod probe;
pub mod replica;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod storage;
pub mod transport;
pub mod wal;
