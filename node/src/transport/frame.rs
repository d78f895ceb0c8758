//! Peer wire frames (documented in `docs/formats.md`). Big-endian, CRC32C.
//!
//! ```text
//! frame := len u32 (kind + payload), crc32c u32 (kind + payload), kind u8, payload
//! kind 1 hello          magic "DKVP" (4), version u16, cluster_id u64, node_id u64, nonce [16],
//!                       secured u8 (1: the sender has a peer secret and proves it)
//! kind 2 raft           a prost-encoded raft Message
//! kind 3 snapshot chunk index u64, offset u64, total_len u64, crc u32 (of the whole stream), last u8, data
//! kind 4 proof          HMAC-SHA256 [32] ([`proof`])
//! ```
//! A connection opens with one `hello` each way; a peer of another cluster, an unknown node or another
//! protocol version is refused. With a peer secret, each side then proves it knows the secret without
//! sending it: a `proof` over both hellos' nonces, the cluster and the two ids, in each direction (the
//! connecting side first; the accepting side answers only a proof that checked out). Every frame is checked before it is used; the decoder never panics,
//! never allocates more than the frame limit, and a malformed frame closes the connection with a typed
//! error.

use prost::Message as _;

use crate::codec::{be_u32, be_u64};
use crate::limits::CHUNK_HEADER_BYTES;
/// Frames larger than this are refused. Every limit on what a frame carries (the largest write, raft's
/// append batch, the snapshot chunk) is derived from it: see [`crate::limits`].
pub use crate::limits::MAX_FRAME_BYTES;

pub const PEER_MAGIC: [u8; 4] = *b"DKVP";
pub const PEER_VERSION: u16 = 2;
/// Bytes of a hello's nonce.
pub const NONCE_LEN: usize = 16;
/// Bytes of a proof.
pub const PROOF_LEN: usize = 32;
/// The `len` and `crc32c` words before every frame's body.
pub const HEADER_LEN: usize = 8;

const KIND_HELLO: u8 = 1;
const KIND_RAFT: u8 = 2;
const KIND_CHUNK: u8 = 3;
const KIND_PROOF: u8 = 4;

/// What goes between peers.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerFrame {
    Hello {
        cluster_id: u64,
        node_id: u64,
        /// Fresh for each connection when the sender has a peer secret (zeros otherwise).
        nonce: [u8; NONCE_LEN],
        /// The sender has a peer secret and will prove it.
        secured: bool,
    },
    /// The sender knows the peer secret ([`proof`]).
    Proof([u8; PROOF_LEN]),
    /// Boxed: a raft message is large next to the other variants.
    Raft(Box<raft::eraftpb::Message>),
    SnapshotChunk(SnapshotChunk),
}

/// One piece of a snapshot stream: the sender's file (without its footer) cut into chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub index: u64,
    pub offset: u64,
    /// The stream's total length and CRC, repeated in every chunk so the receiver can open its spool
    /// from whichever chunk it sees first and check them end to end.
    pub total_len: u64,
    pub crc: u32,
    pub last: bool,
    pub data: Vec<u8>,
}

/// A frame that cannot be used. The connection is closed with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("peer frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
    #[error("peer frame checksum mismatch")]
    Checksum,
    #[error("empty peer frame")]
    Empty,
    #[error("unknown peer frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed {kind} frame: {detail}")]
    Malformed { kind: &'static str, detail: String },
    #[error("peer speaks protocol version {0}, this node {PEER_VERSION}")]
    Version(u16),
    #[error("peer belongs to cluster {theirs}, this node to cluster {ours}")]
    WrongCluster { ours: u64, theirs: u64 },
    #[error("peer claims node id {0}, which is not a member of this cluster")]
    UnknownNode(u64),
}

impl PeerFrame {
    /// Append the frame's wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        match self {
            PeerFrame::Hello { cluster_id, node_id, nonce, secured } => {
                out.push(KIND_HELLO);
                out.extend_from_slice(&PEER_MAGIC);
                out.extend_from_slice(&PEER_VERSION.to_be_bytes());
                out.extend_from_slice(&cluster_id.to_be_bytes());
                out.extend_from_slice(&node_id.to_be_bytes());
                out.extend_from_slice(nonce);
                out.push(u8::from(*secured));
            }
            PeerFrame::Proof(mac) => {
                out.push(KIND_PROOF);
                out.extend_from_slice(mac);
            }
            PeerFrame::Raft(m) => {
                out.push(KIND_RAFT);
                out.extend_from_slice(&m.encode_to_vec());
            }
            PeerFrame::SnapshotChunk(c) => {
                out.push(KIND_CHUNK);
                out.extend_from_slice(&c.index.to_be_bytes());
                out.extend_from_slice(&c.offset.to_be_bytes());
                out.extend_from_slice(&c.total_len.to_be_bytes());
                out.extend_from_slice(&c.crc.to_be_bytes());
                out.push(u8::from(c.last));
                out.extend_from_slice(&c.data);
            }
        }
        let body = &out[start + HEADER_LEN..];
        let len = body.len() as u32;
        let crc = crc32c::crc32c(body);
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    }

    /// Decode one frame from the front of `buf`: the frame and the bytes it used, `None` if more bytes
    /// are needed. The length is checked against `max_frame_bytes` before waiting for the body.
    pub fn decode(buf: &[u8], max_frame_bytes: usize) -> Result<Option<(PeerFrame, usize)>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = be_u32(buf, 0) as usize;
        if len > max_frame_bytes {
            return Err(FrameError::TooLarge { len: len as u64, max: max_frame_bytes });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        let end = HEADER_LEN + len;
        if buf.len() < end {
            return Ok(None);
        }
        let body = &buf[HEADER_LEN..end];
        if crc32c::crc32c(body) != be_u32(buf, 4) {
            return Err(FrameError::Checksum);
        }
        let (kind, payload) = (body[0], &body[1..]);
        let frame = match kind {
            KIND_HELLO => decode_hello(payload)?,
            KIND_RAFT => PeerFrame::Raft(Box::new(
                raft::eraftpb::Message::decode(payload)
                    .map_err(|e| FrameError::Malformed { kind: "raft", detail: e.to_string() })?,
            )),
            KIND_CHUNK => decode_chunk(payload)?,
            KIND_PROOF => PeerFrame::Proof(payload.try_into().map_err(|_| FrameError::Malformed {
                kind: "proof",
                detail: format!("{} bytes, not {PROOF_LEN}", payload.len()),
            })?),
            other => return Err(FrameError::UnknownKind(other)),
        };
        Ok(Some((frame, end)))
    }
}

fn decode_hello(p: &[u8]) -> Result<PeerFrame, FrameError> {
    let bad = |detail: &str| FrameError::Malformed { kind: "hello", detail: detail.into() };
    // The magic and version come first, so a peer of another version is named as such whatever
    // the rest of its hello looks like.
    if p.len() < 6 {
        return Err(bad("wrong length"));
    }
    if p[0..4] != PEER_MAGIC {
        return Err(bad("bad magic"));
    }
    let version = u16::from_be_bytes([p[4], p[5]]);
    if version != PEER_VERSION {
        return Err(FrameError::Version(version));
    }
    if p.len() != 4 + 2 + 8 + 8 + NONCE_LEN + 1 {
        return Err(bad("wrong length"));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&p[22..22 + NONCE_LEN]);
    let secured = match p[22 + NONCE_LEN] {
        0 => false,
        1 => true,
        other => return Err(bad(&format!("secured flag {other}"))),
    };
    Ok(PeerFrame::Hello { cluster_id: be_u64(p, 6), node_id: be_u64(p, 14), nonce, secured })
}

fn decode_chunk(p: &[u8]) -> Result<PeerFrame, FrameError> {
    let bad = |detail: String| FrameError::Malformed { kind: "snapshot chunk", detail };
    const FIXED: usize = CHUNK_HEADER_BYTES;
    if p.len() < FIXED {
        return Err(bad("shorter than its header".into()));
    }
    let chunk = SnapshotChunk {
        index: be_u64(p, 0),
        offset: be_u64(p, 8),
        total_len: be_u64(p, 16),
        crc: be_u32(p, 24),
        last: match p[28] {
            0 => false,
            1 => true,
            other => return Err(bad(format!("last flag {other}"))),
        },
        data: p[FIXED..].to_vec(),
    };
    let end = chunk.offset.checked_add(chunk.data.len() as u64);
    if end.is_none_or(|e| e > chunk.total_len) {
        return Err(bad("chunk runs past the stream's total length".into()));
    }
    if chunk.last && end != Some(chunk.total_len) {
        return Err(bad("last chunk does not end the stream".into()));
    }
    Ok(PeerFrame::SnapshotChunk(chunk))
}

/// What a checked hello says about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHello {
    pub node_id: u64,
    pub nonce: [u8; NONCE_LEN],
    pub secured: bool,
}

/// Check a peer's hello: same cluster, a known member, and not ourselves.
pub fn check_hello(
    frame: &PeerFrame,
    cluster_id: u64,
    members: &[u64],
    self_id: u64,
) -> Result<PeerHello, FrameError> {
    match frame {
        PeerFrame::Hello { cluster_id: theirs, node_id, nonce, secured } => {
            if *theirs != cluster_id {
                return Err(FrameError::WrongCluster { ours: cluster_id, theirs: *theirs });
            }
            if *node_id == self_id || !members.contains(node_id) {
                return Err(FrameError::UnknownNode(*node_id));
            }
            Ok(PeerHello { node_id: *node_id, nonce: *nonce, secured: *secured })
        }
        _ => Err(FrameError::Malformed { kind: "hello", detail: "the first frame must be a hello".into() }),
    }
}

/// What `prover` sends `verifier` to show it knows the peer secret: HMAC-SHA256 keyed by the
/// secret over a domain tag, the cluster, both ids and both nonces (the verifier's first). The
/// verifier's fresh nonce makes it useless on any other connection; the ids and their order make it
/// useless in the other direction, so a reflected proof fails.
pub fn proof(
    secret: &[u8],
    cluster_id: u64,
    (prover, prover_nonce): (u64, &[u8; NONCE_LEN]),
    (verifier, verifier_nonce): (u64, &[u8; NONCE_LEN]),
) -> [u8; PROOF_LEN] {
    use hmac::Mac as _;
    proof_mac(secret, cluster_id, (prover, prover_nonce), (verifier, verifier_nonce))
        .finalize()
        .into_bytes()
        .into()
}

/// Does `mac` prove `prover` knows the secret? Compared in constant time.
pub fn check_proof(
    secret: &[u8],
    cluster_id: u64,
    (prover, prover_nonce): (u64, &[u8; NONCE_LEN]),
    (verifier, verifier_nonce): (u64, &[u8; NONCE_LEN]),
    mac: &[u8; PROOF_LEN],
) -> bool {
    use hmac::Mac as _;
    proof_mac(secret, cluster_id, (prover, prover_nonce), (verifier, verifier_nonce))
        .verify_slice(mac)
        .is_ok()
}

fn proof_mac(
    secret: &[u8],
    cluster_id: u64,
    (prover, prover_nonce): (u64, &[u8; NONCE_LEN]),
    (verifier, verifier_nonce): (u64, &[u8; NONCE_LEN]),
) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(secret)
        .expect("HMAC takes a key of any length");
    mac.update(b"durakv peer proof v1");
    mac.update(&cluster_id.to_be_bytes());
    mac.update(&prover.to_be_bytes());
    mac.update(&verifier.to_be_bytes());
    mac.update(verifier_nonce);
    mac.update(prover_nonce);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: PeerFrame) {
        let mut buf = Vec::new();
        f.encode(&mut buf);
        buf.extend_from_slice(b"next");
        let (got, used) = PeerFrame::decode(&buf, MAX_FRAME_BYTES).expect("valid").expect("complete");
        assert_eq!(got, f);
        assert_eq!(&buf[used..], b"next");
        for cut in 0..used {
            assert_eq!(PeerFrame::decode(&buf[..cut], MAX_FRAME_BYTES), Ok(None), "cut at {cut}");
        }
    }

    fn chunk(offset: u64, data: &[u8], total_len: u64, last: bool) -> PeerFrame {
        PeerFrame::SnapshotChunk(SnapshotChunk {
            index: 9,
            offset,
            total_len,
            crc: 7,
            last,
            data: data.to_vec(),
        })
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(PeerFrame::Hello { cluster_id: 42, node_id: 3, nonce: [7; NONCE_LEN], secured: true });
        round_trip(PeerFrame::Hello { cluster_id: 42, node_id: 3, nonce: [0; NONCE_LEN], secured: false });
        round_trip(PeerFrame::Proof([9; PROOF_LEN]));
        let m = raft::eraftpb::Message { from: 1, to: 2, term: 5, ..Default::default() };
        round_trip(PeerFrame::Raft(Box::new(m)));
        round_trip(chunk(0, b"abc", 6, false));
        round_trip(chunk(3, b"def", 6, true));
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        let mut buf = Vec::new();
        PeerFrame::Hello { cluster_id: 1, node_id: 2, nonce: [0; NONCE_LEN], secured: false }
            .encode(&mut buf);
        let mut flipped = buf.clone();
        flipped[12] ^= 1;
        assert_eq!(PeerFrame::decode(&flipped, MAX_FRAME_BYTES), Err(FrameError::Checksum));
        assert!(matches!(PeerFrame::decode(&buf, 4), Err(FrameError::TooLarge { .. })));
        let huge = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];
        assert!(matches!(PeerFrame::decode(&huge, MAX_FRAME_BYTES), Err(FrameError::TooLarge { .. })));
        assert_eq!(PeerFrame::decode(&[0u8; 8], MAX_FRAME_BYTES), Err(FrameError::Empty));
        let mut past = Vec::new();
        chunk(5, b"abc", 6, false).encode(&mut past);
        assert!(matches!(PeerFrame::decode(&past, MAX_FRAME_BYTES), Err(FrameError::Malformed { .. })));
        let mut early = Vec::new();
        chunk(0, b"abc", 6, true).encode(&mut early);
        assert!(matches!(PeerFrame::decode(&early, MAX_FRAME_BYTES), Err(FrameError::Malformed { .. })));
        // A proof of the wrong length, a version-1 hello (no nonce), a secured flag that is not 0/1.
        let framed = |body: &[u8]| {
            let mut out = (body.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
            out.extend_from_slice(body);
            out
        };
        let mut short_proof = vec![KIND_PROOF];
        short_proof.extend_from_slice(&[7; PROOF_LEN - 1]);
        assert!(matches!(
            PeerFrame::decode(&framed(&short_proof), MAX_FRAME_BYTES),
            Err(FrameError::Malformed { kind: "proof", .. })
        ));
        let mut v1 = vec![KIND_HELLO];
        v1.extend_from_slice(&PEER_MAGIC);
        v1.extend_from_slice(&1u16.to_be_bytes());
        v1.extend_from_slice(&[0; 16]);
        assert_eq!(PeerFrame::decode(&framed(&v1), MAX_FRAME_BYTES), Err(FrameError::Version(1)));
        let mut hello = Vec::new();
        PeerFrame::Hello { cluster_id: 1, node_id: 2, nonce: [0; NONCE_LEN], secured: true }
            .encode(&mut hello);
        let mut body = hello[HEADER_LEN..].to_vec();
        *body.last_mut().expect("a flag byte") = 2;
        assert!(matches!(
            PeerFrame::decode(&framed(&body), MAX_FRAME_BYTES),
            Err(FrameError::Malformed { kind: "hello", .. })
        ));
    }

    #[test]
    fn a_proof_holds_only_for_its_secret_direction_and_nonces() {
        let (a, b) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let p = proof(b"s3cret", 7, (1, &a), (2, &b));
        assert!(check_proof(b"s3cret", 7, (1, &a), (2, &b), &p));
        assert!(!check_proof(b"other", 7, (1, &a), (2, &b), &p), "another secret");
        assert!(!check_proof(b"s3cret", 8, (1, &a), (2, &b), &p), "another cluster");
        assert!(!check_proof(b"s3cret", 7, (2, &b), (1, &a), &p), "reflected back to its prover");
        assert!(!check_proof(b"s3cret", 7, (1, &a), (2, &[3; NONCE_LEN]), &p), "another connection");
        assert!(!check_proof(b"s3cret", 7, (3, &a), (2, &b), &p), "another prover");
    }

    #[test]
    fn hellos_from_strangers_are_refused() {
        let members = [1, 2, 3];
        let hello =
            |c, n| PeerFrame::Hello { cluster_id: c, node_id: n, nonce: [1; NONCE_LEN], secured: false };
        assert_eq!(
            check_hello(&hello(7, 2), 7, &members, 1),
            Ok(PeerHello { node_id: 2, nonce: [1; NONCE_LEN], secured: false })
        );
        assert_eq!(
            check_hello(&hello(8, 2), 7, &members, 1),
            Err(FrameError::WrongCluster { ours: 7, theirs: 8 })
        );
        assert_eq!(check_hello(&hello(7, 9), 7, &members, 1), Err(FrameError::UnknownNode(9)));
        assert_eq!(check_hello(&hello(7, 1), 7, &members, 1), Err(FrameError::UnknownNode(1)));
        let raft = PeerFrame::Raft(Box::default());
        assert!(check_hello(&raft, 7, &members, 1).is_err());
    }
}
