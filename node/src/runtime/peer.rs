//! The peer transport: one outgoing TCP connection per peer carrying raft messages, a separate
//! connection per snapshot stream (so a large snapshot never delays heartbeats), and the acceptor
//! that checks each incoming connection's hello and feeds its messages and snapshot chunks in.
//!
//! Frames are [`PeerFrame`]s. Each side of a connection sends one hello first; a peer of another
//! cluster, a non-member or a node claiming the wrong id is refused. Queues are bounded: when a
//! peer's queue is full the message is dropped and raft retransmits, so a slow or dead peer never
//! costs unbounded memory. A malformed frame closes its connection with a logged error.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::raft_loop::is_snapshot;
use super::{accept_until_shutdown, write_flushed};
use crate::io::{OpenOptions, SharedFs};
use crate::snapshot::{FOOTER_LEN, ReceiveGuard, SnapshotError, SnapshotStore, SnapshotToken, StreamInfo};
use crate::transport::frame::{
    FrameError, HEADER_LEN, MAX_FRAME_BYTES, NONCE_LEN, PeerFrame, PeerHello, SnapshotChunk, check_hello,
    check_proof, proof,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Transport reports queued for the raft loop at most.
pub const FEEDBACK_QUEUE: usize = 1024;
/// Messages coalesced into one socket write.
const MAX_WRITE_BATCH_BYTES: usize = 1 << 20;

/// A raft message from a peer, with the hold on the snapshot file it refers to (if it carries one).
pub struct PeerInput {
    pub msg: Message,
    pub guard: Option<ReceiveGuard>,
}

/// What the transport tells the raft loop about its sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// A snapshot stream ended (raft needs a report for every snapshot it sent).
    SnapshotSent { to: u64, delivered: bool },
    /// A peer could not be reached: raft pauses replication to it until it answers again.
    Unreachable(u64),
}

/// Why a peer connection ended.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("no hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("unexpected {0}")]
    Unexpected(String),
    #[error(
        "node {peer} closed the connection during the handshake: it refused this node (another cluster id, membership or peer secret; its log names the reason)"
    )]
    HandshakeRefused { peer: u64 },
    #[error("refused node {peer}: it did not prove it knows the peer secret (a different --peer-secret?)")]
    BadProof { peer: u64 },
    #[error("refused node {peer}: it has no peer secret, and this node requires one (--peer-secret)")]
    PeerUnsecured { peer: u64 },
    #[error(
        "refused by node {peer}, or refusing it: it requires a peer secret and this node has none (--peer-secret)"
    )]
    SelfUnsecured { peer: u64 },
}

/// What every connection of this node needs.
pub struct LinkContext {
    pub id: u64,
    pub cluster_id: u64,
    /// The members and their addresses, as membership changes leave them: whom to connect to,
    /// whose hello to accept.
    pub members: crate::members::Directory,
    pub fs: SharedFs,
    pub store: SnapshotStore,
    pub spool_cap_bytes: u64,
    pub snapshot_chunk_bytes: usize,
    pub inbound: mpsc::Sender<PeerInput>,
    /// Bounded ([`FEEDBACK_QUEUE`]): an `Unreachable` that finds it full is dropped (the next
    /// failure reports again); a snapshot's report waits for room (raft needs every one).
    pub feedback: mpsc::Sender<Feedback>,
    /// Snapshot streams being received now ([`Transport::receiving_snapshot`]).
    pub receiving: Arc<SnapshotReceipts>,
    /// The peer secret: peers prove they know it, and so does this node (`None`: no proofs, and a
    /// peer that asks for them is refused).
    pub secret: Option<Vec<u8>>,
}

/// Snapshot streams being received: how many, and when the last chunk of any arrived.
#[derive(Debug, Default)]
pub struct SnapshotReceipts {
    streams: std::sync::atomic::AtomicUsize,
    last_chunk: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// A receive that got no chunk for this long no longer counts as under way: a stream whose sender
/// died without closing it (a crashed host: the socket may stay open for hours) must not keep the
/// node dropping its new leader's appends.
const RECEIVE_QUIET_LIMIT: Duration = Duration::from_secs(1);

impl SnapshotReceipts {
    fn chunk_arrived(&self) {
        *self.last_chunk.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    }

    /// Is a stream under way and still moving?
    fn active(&self) -> bool {
        self.streams.load(std::sync::atomic::Ordering::Acquire) > 0
            && self
                .last_chunk
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| t.elapsed() < RECEIVE_QUIET_LIMIT)
    }
}

/// Counts a snapshot stream being received while it lives.
struct Receiving(Arc<SnapshotReceipts>);

impl Receiving {
    fn new(receipts: &Arc<SnapshotReceipts>) -> Receiving {
        receipts.streams.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        receipts.chunk_arrived();
        Receiving(Arc::clone(receipts))
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl LinkContext {
    /// This side's hello, with a fresh nonce when it has a secret to prove (none otherwise: the
    /// seeded random stream of a simulated run is not drawn from for nothing). The nonce comes from
    /// the operating system each time (`getrandom`), never from a thread-local generator: madsim
    /// answers `getrandom` from the run's seed, while a thread-local generator would carry its state
    /// from one simulated run to the next in the same process (fuzz runs thousands), and a seed would
    /// not replay (found by fuzz: seed 74052 passed alone and failed in the campaign).
    fn hello(&self) -> Result<([u8; NONCE_LEN], Vec<u8>), PeerError> {
        let mut nonce = [0; NONCE_LEN];
        if self.secret.is_some() {
            use rand::TryRngCore as _;
            rand::rngs::OsRng.try_fill_bytes(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
        }
        let mut buf = Vec::new();
        PeerFrame::Hello {
            cluster_id: self.cluster_id,
            node_id: self.id,
            nonce,
            secured: self.secret.is_some(),
        }
        .encode(&mut buf);
        Ok((nonce, buf))
    }

    /// Both sides have a secret, or neither: anything else is refused by name.
    fn check_secured(&self, them: &PeerHello) -> Result<(), PeerError> {
        match (self.secret.is_some(), them.secured) {
            (true, false) => Err(PeerError::PeerUnsecured { peer: them.node_id }),
            (false, true) => Err(PeerError::SelfUnsecured { peer: them.node_id }),
            _ => Ok(()),
        }
    }

    /// This node's proof for peer `them`, who sent `their_nonce` (`None` without a secret).
    fn prove(&self, ours: &[u8; NONCE_LEN], them: &PeerHello) -> Option<Vec<u8>> {
        let secret = self.secret.as_deref()?;
        let mac = proof(secret, self.cluster_id, (self.id, ours), (them.node_id, &them.nonce));
        let mut buf = Vec::new();
        PeerFrame::Proof(mac).encode(&mut buf);
        Some(buf)
    }

    /// Read the peer's proof and check it (nothing to do without a secret).
    async fn check_their_proof<R: AsyncRead + Unpin>(
        &self,
        reader: &mut FrameReader,
        stream: &mut R,
        ours: &[u8; NONCE_LEN],
        them: &PeerHello,
    ) -> Result<(), PeerError> {
        let Some(secret) = self.secret.as_deref() else { return Ok(()) };
        let frame = tokio::time::timeout(HELLO_TIMEOUT, reader.next(stream))
            .await
            .map_err(|_| PeerError::HelloTimeout(HELLO_TIMEOUT))??
            .ok_or(PeerError::Truncated)?;
        match frame {
            PeerFrame::Proof(mac)
                if check_proof(
                    secret,
                    self.cluster_id,
                    (them.node_id, &them.nonce),
                    (self.id, ours),
                    &mac,
                ) =>
            {
                Ok(())
            }
            _ => Err(PeerError::BadProof { peer: them.node_id }),
        }
    }

    /// Connect to peer `to` and exchange hellos.
    async fn connect(&self, to: u64, addr: SocketAddr) -> Result<TcpStream, PeerError> {
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr} timed out")))??;
        stream.set_nodelay(true)?;
        let (ours, hello) = self.hello()?;
        write_flushed(&mut stream, &hello).await?;
        let mut reader = FrameReader::default();
        let refused = |e| match e {
            PeerError::Truncated => PeerError::HandshakeRefused { peer: to },
            PeerError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                PeerError::HandshakeRefused { peer: to }
            }
            e => e,
        };
        let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next(&mut stream))
            .await
            .map_err(|_| PeerError::HelloTimeout(HELLO_TIMEOUT))?
            .map_err(refused)?
            .ok_or(PeerError::HandshakeRefused { peer: to })?;
        let them = check_hello(&hello, self.cluster_id, &self.members.ids(), self.id)?;
        if them.node_id != to {
            return Err(PeerError::Unexpected(format!(
                "node {} at the address configured for node {to}",
                them.node_id
            )));
        }
        self.check_secured(&them)?;
        // The connecting side proves itself first; the accepting side answers only a good proof.
        if let Some(proof) = self.prove(&ours, &them) {
            write_flushed(&mut stream, &proof).await?;
        }
        self.check_their_proof(&mut reader, &mut stream, &ours, &them).await.map_err(refused)?;
        Ok(stream)
    }
}

/// Reads whole frames from a byte stream.
#[derive(Default)]
struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// The next frame, or `None` at a clean end of stream.
    async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Option<PeerFrame>, PeerError> {
        loop {
            if let Some((frame, used)) = PeerFrame::decode(&self.buf, MAX_FRAME_BYTES)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            self.buf.reserve(64 << 10);
            if r.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(PeerError::Truncated) };
            }
        }
    }
}

/// A snapshot stream under way: the peer and the snapshot's token.
type Streaming = (u64, Vec<u8>);

/// The sending side: a bounded queue and a connection task per peer.
pub struct Transport {
    link: Arc<LinkContext>,
    /// A queue and a connection task per peer, made when raft first sends to it; a peer that leaves
    /// the membership loses its queue (its task ends).
    queues: BTreeMap<u64, mpsc::Sender<Message>>,
    queue_len: usize,
    /// The directory's version the queues were last pruned at.
    members_seen: u64,
    dropped: u64,
    /// Snapshot streams under way, by peer and the snapshot's token.
    streaming: Arc<std::sync::Mutex<std::collections::BTreeSet<Streaming>>>,
}

impl Transport {
    /// Messages dropped so far because a peer's queue was full (raft resends them).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Is a snapshot stream being received (and still moving)? Its message is on its way: an append
    /// past it now would be rejected, and a leader that counts the stream delivered would take the
    /// rejection as a need for the whole snapshot again.
    pub fn receiving_snapshot(&self) -> bool {
        self.link.receiving.active()
    }

    pub fn start(link: Arc<LinkContext>, queue: usize) -> Transport {
        let mut t = Transport {
            members_seen: link.members.version(),
            link,
            queues: BTreeMap::new(),
            queue_len: queue.max(1),
            dropped: 0,
            streaming: Arc::default(),
        };
        // Connect to every member at once (the first heartbeat then finds a connection ready).
        for to in t.link.members.ids() {
            t.queue(to);
        }
        t
    }

    /// The queue to peer `to`, made (with its connection task) if it is a member without one; `None`
    /// for a node that is not a member (any queue it had goes, and its task ends).
    fn queue(&mut self, to: u64) -> Option<&mpsc::Sender<Message>> {
        if to == self.link.id || !self.link.members.contains(to) {
            self.queues.remove(&to);
            return None;
        }
        if self.queues.get(&to).is_none_or(|q| q.is_closed()) {
            let (tx, rx) = mpsc::channel(self.queue_len);
            tokio::spawn(send_loop(self.link.clone(), to, rx));
            self.queues.insert(to, tx);
        }
        self.queues.get(&to)
    }

    /// Queue messages to their peers; a snapshot message starts a stream of its file.
    pub fn send(&mut self, messages: Vec<Message>) {
        // A member that left loses its queue: its task ends, and its connection with it (raft sends
        // it nothing more, so it would otherwise wait on the queue for good).
        let version = self.link.members.version();
        if version != self.members_seen {
            self.members_seen = version;
            let members = &self.link.members;
            self.queues.retain(|id, _| members.contains(*id));
        }
        for m in messages {
            let to = m.to;
            if is_snapshot(&m) {
                let Some(addr) = self.link.members.get(to).map(|p| p.peer_addr) else { continue };
                let key = (to, m.snapshot.as_ref().map(|s| s.data.clone()).unwrap_or_default());
                let mut streaming = self.streaming.lock().unwrap_or_else(|p| p.into_inner());
                if !streaming.insert(key.clone()) {
                    // The same snapshot is already on its way to this peer (raft asked again before
                    // the stream's report): a second copy of a large file would only compete with
                    // the first for both disks. The running stream's report answers both.
                    tracing::debug!(node = self.link.id, to, "snapshot already streaming to this peer");
                    continue;
                }
                drop(streaming);
                let streaming = Arc::clone(&self.streaming);
                tokio::spawn(stream_snapshot(self.link.clone(), addr, m, move || {
                    streaming.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                }));
                continue;
            }
            let id = self.link.id;
            let Some(queue) = self.queue(to) else {
                tracing::debug!(node = id, to, "message for a node that is not a member: dropped");
                continue;
            };
            if queue.try_send(m).is_err() {
                // Full (the peer is slow or down) or its task ended: raft retransmits.
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::debug!(
                        node = id,
                        to,
                        dropped = self.dropped,
                        "peer queue full, message dropped"
                    );
                }
            }
        }
    }
}

/// Keep a connection to one peer and write its queue into it, reconnecting with backoff.
async fn send_loop(link: Arc<LinkContext>, to: u64, mut rx: mpsc::Receiver<Message>) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u64;
    let mut buf = Vec::new();
    loop {
        // The address as the membership has it now; a peer that left (its queue dropped) is done.
        let Some(addr) = link.members.get(to).map(|p| p.peer_addr) else { return };
        if rx.is_closed() {
            return;
        }
        let mut stream = match link.connect(to, addr).await {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                // Log the first failure and then rarely: a peer that is down for a while is normal.
                if failures == 1 || failures.is_multiple_of(100) {
                    tracing::warn!(node = link.id, to, %addr, error = %e, failures, "cannot reach peer; retrying");
                }
                let _ = link.feedback.try_send(Feedback::Unreachable(to));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(node = link.id, to, %addr, "connected to peer");
        }
        failures = 0;
        backoff = MIN_BACKOFF;
        loop {
            let Some(first) = rx.recv().await else { return };
            buf.clear();
            let mut promises = promises_durable_state(&first);
            push_raft_frame(&mut buf, first, link.id, to);
            while buf.len() < MAX_WRITE_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(m) => {
                        promises |= promises_durable_state(&m);
                        push_raft_frame(&mut buf, m, link.id, to);
                    }
                    Err(_) => break,
                }
            }
            if buf.is_empty() {
                continue;
            }
            // A failure injected here loses the batch (raft retransmits); a pause or delay holds
            // this peer's messages back.
            if let Err(e) = crate::failpoint::hit_async(&*link.fs, "transport.send").await {
                tracing::warn!(node = link.id, to, error = %e, "messages to peer dropped");
                let _ = link.feedback.try_send(Feedback::Unreachable(to));
                continue;
            }
            if let Err(e) = write_flushed(&mut stream, &buf).await {
                tracing::warn!(node = link.id, to, %addr, error = %e, "peer connection lost; reconnecting");
                let _ = link.feedback.try_send(Feedback::Unreachable(to));
                break;
            }
            // The moment a promise of durable state has left: where a correlated power loss
            // tests that the promise was kept.
            if promises {
                let _ = crate::failpoint::hit_async(&*link.fs, "transport.promise_sent").await;
            }
        }
    }
}

/// Does this message promise durable state to its receiver: a granted vote (the voter's term and
/// vote are on disk) or an accepting append response (its log holds the entries, or the snapshot,
/// up to the index)? Pre-votes promise nothing.
fn promises_durable_state(msg: &Message) -> bool {
    use raft::eraftpb::MessageType;
    !msg.reject
        && matches!(msg.msg_type(), MessageType::MsgRequestVoteResponse | MessageType::MsgAppendResponse)
}

/// Append a raft message's frame to `buf`, unless the frame is larger than any peer accepts: sent, it
/// would only make the peer close the connection, and everything queued behind it with it. A node of
/// this build never proposes an entry that large (`crate::limits`); an entry from an older build's log
/// can be. It is left out with an error, and raft retries it.
fn push_raft_frame(buf: &mut Vec<u8>, msg: Message, node: u64, to: u64) {
    let start = buf.len();
    PeerFrame::Raft(Box::new(msg)).encode(buf);
    let len = buf.len() - start - HEADER_LEN;
    if len > MAX_FRAME_BYTES {
        buf.truncate(start);
        tracing::error!(
            node,
            to,
            bytes = len,
            limit = MAX_FRAME_BYTES,
            "raft message larger than a peer frame may be: not sent"
        );
    }
}

/// Stream a snapshot's file to a peer in chunks on a connection of its own, then the message that
/// refers to it, and report the outcome to raft.
async fn stream_snapshot(link: Arc<LinkContext>, addr: SocketAddr, msg: Message, ended: impl FnOnce()) {
    let to = msg.to;
    let delivered = match send_snapshot_file(&link, addr, msg).await {
        Ok(bytes) => {
            tracing::info!(node = link.id, to, bytes, "snapshot sent");
            true
        }
        Err(e) => {
            tracing::warn!(node = link.id, to, error = %e, "snapshot send failed; raft will retry");
            false
        }
    };
    ended();
    let _ = link.feedback.send(Feedback::SnapshotSent { to, delivered }).await;
}

async fn send_snapshot_file(link: &LinkContext, addr: SocketAddr, msg: Message) -> Result<u64, PeerError> {
    let data = msg.snapshot.as_ref().map(|s| s.data.as_slice()).unwrap_or_default();
    let token = SnapshotToken::decode(data)?;
    // Hold the index so retention does not remove the file while it streams.
    let _hold = link.store.begin_receive(token.index);
    let path = link.store.path(token.index);
    let file = link.fs.open(&path, OpenOptions::read_only())?;
    // The stream is the file without its footer; the receiver's spool writes the footer itself
    // after checking the stream's length and CRC against the token.
    let total = file.len()?.checked_sub(FOOTER_LEN as u64).ok_or_else(|| {
        PeerError::Unexpected(format!("snapshot file {} shorter than its footer", path.display()))
    })?;
    let mut stream = link.connect(msg.to, addr).await?;
    let chunk_len = link.snapshot_chunk_bytes.max(1) as u64;
    let mut offset = 0u64;
    let mut data = Vec::new();
    let mut frame = Vec::new();
    loop {
        let n = chunk_len.min(total - offset);
        data.resize(n as usize, 0);
        file.read_exact_at(&mut data, offset)?;
        let last = offset + n == total;
        frame.clear();
        let chunk = SnapshotChunk {
            index: token.index,
            offset,
            total_len: total,
            crc: token.crc,
            last,
            data: std::mem::take(&mut data),
        };
        PeerFrame::SnapshotChunk(chunk).encode(&mut frame);
        write_flushed(&mut stream, &frame).await?;
        offset += n;
        if last {
            break;
        }
    }
    frame.clear();
    PeerFrame::Raft(Box::new(msg)).encode(&mut frame);
    write_flushed(&mut stream, &frame).await?;
    stream.shutdown().await?;
    Ok(total)
}

/// Accept peer connections until shutdown.
pub async fn accept_peers(listener: TcpListener, link: Arc<LinkContext>, shutdown: watch::Receiver<bool>) {
    let node = link.id;
    accept_until_shutdown(listener, node, "peer", shutdown, move |stream, addr| {
        let link = link.clone();
        async move {
            if let Err(e) = serve_incoming(stream, &link).await {
                tracing::warn!(node = link.id, peer_addr = %addr, error = %e, "peer connection closed");
            }
        }
    })
    .await
}

/// One incoming connection: hello, then raft messages and snapshot streams until it closes.
async fn serve_incoming(mut stream: TcpStream, link: &LinkContext) -> Result<(), PeerError> {
    stream.set_nodelay(true)?;
    let mut reader = FrameReader::default();
    let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next(&mut stream))
        .await
        .map_err(|_| PeerError::HelloTimeout(HELLO_TIMEOUT))??
        .ok_or(PeerError::Truncated)?;
    let them = check_hello(&hello, link.cluster_id, &link.members.ids(), link.id)?;
    let from = them.node_id;
    link.check_secured(&them)?;
    let (ours, hello) = link.hello()?;
    write_flushed(&mut stream, &hello).await?;
    // Nothing from this peer is used until it proved it knows the secret; only then does this node
    // prove itself in turn.
    link.check_their_proof(&mut reader, &mut stream, &ours, &them).await?;
    if let Some(proof) = link.prove(&ours, &them) {
        write_flushed(&mut stream, &proof).await?;
    }
    let mut receiving: Option<(ReceiveGuard, crate::snapshot::Spool, Receiving)> = None;
    let mut received: Option<ReceiveGuard> = None;
    while let Some(frame) = reader.next(&mut stream).await? {
        match frame {
            PeerFrame::Hello { .. } => return Err(PeerError::Unexpected("second hello".into())),
            PeerFrame::Proof(_) => return Err(PeerError::Unexpected("a proof after the handshake".into())),
            PeerFrame::Raft(msg) => {
                // A follower forwards a leadership transfer to the leader as raft-rs builds it: `from`
                // names the member to hand over to, not the sender.
                let forwarded_transfer = msg.msg_type() == raft::eraftpb::MessageType::MsgTransferLeader
                    && link.members.contains(msg.from);
                if (msg.from != from && !forwarded_transfer) || msg.to != link.id {
                    return Err(PeerError::Unexpected(format!(
                        "message from {} to {} on node {from}'s connection to node {}",
                        msg.from, msg.to, link.id
                    )));
                }
                let mut guard = None;
                if is_snapshot(&msg) {
                    let data = msg.snapshot.as_ref().map(|s| s.data.as_slice()).unwrap_or_default();
                    let token = SnapshotToken::decode(data)?;
                    guard = received.take().filter(|g| g.index() == token.index);
                    // Installing a snapshot whose file is missing would stop the node: never pass
                    // one on without its file.
                    if guard.is_none() && !link.fs.exists(&link.store.path(token.index))? {
                        return Err(PeerError::Unexpected(format!(
                            "snapshot message for index {} without its file",
                            token.index
                        )));
                    }
                }
                let input = PeerInput { msg: *msg, guard };
                if link.inbound.send(input).await.is_err() {
                    return Ok(()); // the node is stopping
                }
            }
            PeerFrame::SnapshotChunk(chunk) => {
                if receiving.as_ref().is_none_or(|(g, _, _)| g.index() != chunk.index) {
                    let guard = link.store.begin_receive(chunk.index);
                    let info = StreamInfo { index: chunk.index, len: chunk.total_len, crc: chunk.crc };
                    let spool = link.store.spool(&guard, info, link.spool_cap_bytes)?;
                    tracing::info!(
                        node = link.id,
                        from,
                        index = chunk.index,
                        bytes = chunk.total_len,
                        "receiving a snapshot"
                    );
                    receiving = Some((guard, spool, Receiving::new(&link.receiving)));
                }
                let (_, spool, _) = receiving.as_mut().expect("a spool was opened for this index just above");
                link.receiving.chunk_arrived();
                if chunk.offset != spool.received() {
                    return Err(PeerError::Unexpected(format!(
                        "snapshot chunk at offset {} where {} was expected",
                        chunk.offset,
                        spool.received()
                    )));
                }
                spool.push(&chunk.data)?;
                if chunk.last {
                    // An error injected here fails this receive (the spool is removed with it); a
                    // pause holds it just before it becomes a snapshot file, so a resend of the same
                    // index can overlap it.
                    crate::failpoint::hit_async(&*link.fs, "snapshot.finalize").await?;
                    spool.finalize()?;
                    if let Some((guard, _, _)) = receiving.take() {
                        tracing::info!(
                            node = link.id,
                            from,
                            index = guard.index(),
                            "snapshot received and verified"
                        );
                        received = Some(guard);
                    }
                }
            }
        }
    }
    Ok(())
}
