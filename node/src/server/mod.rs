//! The Redis-protocol client port. Today: the RESP2 codec ([`resp`]), with the limits and typed
//! protocol errors the port answers with. The connection handling and command dispatch arrive with
//! the replicated node.

pub mod resp;
