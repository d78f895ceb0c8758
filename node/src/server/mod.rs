//! The Redis-protocol client port: the RESP2 codec ([`resp`]) with its limits and typed protocol
//! errors, the command table ([`commands`]) that turns arguments into typed requests, and the
//! connection handling ([`conn`]) that answers them through the raft loop.

pub mod commands;
pub(crate) mod conn;
pub mod resp;
#[cfg(not(madsim))]
pub mod tls;
