//! Peer transport. Today: the wire frames ([`frame`]) with the cluster/node handshake and snapshot
//! chunks. The TCP connections (reconnect with backoff, bounded send queues) arrive with the
//! networked node.

pub mod frame;
