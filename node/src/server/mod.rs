//! The Redis-protocol client port. Today: the RESP2 codec ([`resp`]) with its limits and typed
//! protocol errors, and the command table ([`commands`]) that turns arguments into typed requests.
//! The connection handling, forwarding to the leader and linearizable reads arrive with the
//! networked node.

pub mod commands;
pub mod resp;
