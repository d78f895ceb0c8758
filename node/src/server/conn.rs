//! The client port: one task per connection reads RESP requests, answers connection commands
//! itself, sends writes through raft and reads through ReadIndex, and writes the replies in order.
//! Any node serves any command: a follower's raft forwards proposals and read-index requests to the
//! leader, so clients need not know which node leads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::commands::{
    COMMANDS, CommandQuery, CommandSpec, LibAttr, Request, TtlAnswer, byte_range, command_spec, config_get,
    glob_match, lcs, parse_request,
};
use super::resp::{Limits, Reply, RequestParser};
use crate::fsm::{self, Command, Engine, Kv};
use crate::limits::MAX_COMMAND_BYTES;
use crate::runtime::{Input, ReadFn, Refusal, Status, accept_until_shutdown, write_flushed};

/// What every client connection of this node shares.
pub(crate) struct ClientContext<E: Engine> {
    pub node_id: u64,
    /// The node's metrics, whose essentials `INFO stats` repeats.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub cluster_id: u64,
    pub inputs: mpsc::Sender<Input<E>>,
    pub status: watch::Receiver<Status>,
    pub requirepass: Option<Vec<u8>>,
    pub limits: Limits,
    pub request_timeout: Duration,
    /// The members' addresses, as membership changes leave them.
    pub peers: crate::members::Directory,
    /// Every open client connection (CLIENT LIST, INFO's connected_clients).
    pub clients: std::sync::Mutex<BTreeMap<u64, ClientEntry>>,
    pub next_client_id: std::sync::atomic::AtomicU64,
    pub total_connections: std::sync::atomic::AtomicU64,
    pub total_commands: std::sync::atomic::AtomicU64,
    pub started: tokio::time::Instant,
    pub resp_port: u16,
    pub fsm_sync: &'static str,
    /// This node's clock: TTL and PTTL count the time left from it (never from before the state
    /// machine's clock, which hides a key once its deadline is reached).
    pub clock: crate::clock::WallClock,
    /// Connections served at once (`maxclients`); the next is refused.
    pub maxclients: usize,
    /// Requests in the raft loop's hands across every connection, and the most there may be
    /// (`max_in_flight`): beyond it a request is answered `-BUSY` at once, so the loop's queues and
    /// maps never grow with the number of clients.
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub max_in_flight: usize,
    /// Connections refused by `maxclients`, and requests answered `-BUSY` (INFO stats).
    pub rejected_connections: std::sync::atomic::AtomicU64,
    pub busy_replies: std::sync::atomic::AtomicU64,
    /// The node's filesystem and its backup directory (`BACKUP`).
    pub fs: crate::io::SharedFs,
    pub backups: std::path::PathBuf,
}

/// One request counted in [`ClientContext::in_flight`] until its reply is in (or it is dropped).
#[derive(Debug)]
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A reply on its way from the raft loop, holding its place in the in-flight count.
#[derive(Debug)]
struct Awaited<T> {
    rx: oneshot::Receiver<T>,
    _slot: Slot,
}

/// What CLIENT INFO and CLIENT LIST say about one connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientEntry {
    pub addr: String,
    pub laddr: String,
    pub name: Vec<u8>,
    pub lib_name: Vec<u8>,
    pub lib_ver: Vec<u8>,
    pub protocol: u8,
    pub last_command: String,
    pub connected_ms: u64,
    pub last_active_ms: u64,
}

impl<E: Engine> ClientContext<E> {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientEntry>> {
        // The registry is plain data; a panic elsewhere leaves it usable.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn client_line(&self, id: u64, c: &ClientEntry) -> String {
        let now = self.now_ms();
        format!(
            "id={id} addr={} laddr={} fd=-1 name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
            c.addr,
            c.laddr,
            String::from_utf8_lossy(&c.name),
            now.saturating_sub(c.connected_ms) / 1000,
            now.saturating_sub(c.last_active_ms) / 1000,
            if c.last_command.is_empty() { "NULL" } else { &c.last_command },
            c.protocol,
            String::from_utf8_lossy(&c.lib_name),
            String::from_utf8_lossy(&c.lib_ver),
        )
    }
}

/// Removes a connection from the registry when its task ends, however it ends.
struct Registered<'a, E: Engine> {
    ctx: &'a ClientContext<E>,
    id: u64,
}

impl<E: Engine> Drop for Registered<'_, E> {
    fn drop(&mut self) {
        self.ctx.clients().remove(&self.id);
    }
}

/// Accept client connections until shutdown.
pub(crate) async fn accept_clients<E: Engine + Send + 'static>(
    listener: TcpListener,
    ctx: Arc<ClientContext<E>>,
    shutdown: watch::Receiver<bool>,
) {
    let node = ctx.node_id;
    accept_until_shutdown(listener, node, "client", shutdown, move |stream, addr| {
        let ctx = ctx.clone();
        async move {
            if ctx.clients().len() >= ctx.maxclients {
                // As Redis: the error, then the connection closes; nothing was read from it.
                ctx.rejected_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(node = ctx.node_id, client = %addr, maxclients = ctx.maxclients, "client refused: maxclients reached");
                let mut stream = stream;
                let _ = write_flushed(&mut stream, b"-ERR max number of clients reached\r\n").await;
                return;
            }
            if let Err(e) = serve_connection(stream, &ctx).await {
                tracing::debug!(node = ctx.node_id, client = %addr, error = %e, "client connection ended");
            }
        }
    })
    .await
}

/// A plain connection's addresses, then [`serve_client`].
async fn serve_connection<E: Engine + Send + 'static>(
    stream: TcpStream,
    ctx: &ClientContext<E>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let addrs = (
        stream.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
        stream.local_addr().map(|a| a.to_string()).unwrap_or_default(),
    );
    serve_client(stream, addrs, ctx).await
}

/// How long a TLS client has to finish its handshake.
#[cfg(not(madsim))]
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept TLS client connections until shutdown: each is served as a plain one once its handshake
/// succeeded (`maxclients` counts both ports together). A failed handshake (no TLS, an unknown or
/// missing client certificate) is logged and the connection closed.
#[cfg(not(madsim))]
pub(crate) async fn accept_tls_clients<E: Engine + Send + 'static>(
    listener: TcpListener,
    acceptor: crate::server::tls::ReloadingAcceptor,
    ctx: Arc<ClientContext<E>>,
    shutdown: watch::Receiver<bool>,
) {
    let node = ctx.node_id;
    let acceptor = Arc::new(acceptor);
    accept_until_shutdown(listener, node, "TLS client", shutdown, move |stream, addr| {
        let (ctx, acceptor) = (ctx.clone(), acceptor.get());
        async move {
            if ctx.clients().len() >= ctx.maxclients {
                ctx.rejected_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(node = ctx.node_id, client = %addr, maxclients = ctx.maxclients, "TLS client refused: maxclients reached");
                return;
            }
            let _ = stream.set_nodelay(true);
            let laddr = stream.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(node = ctx.node_id, client = %addr, error = %e, "TLS handshake failed; connection closed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(node = ctx.node_id, client = %addr, "TLS handshake timed out; connection closed");
                    return;
                }
            };
            if let Err(e) = serve_client(tls, (addr.to_string(), laddr), &ctx).await {
                tracing::debug!(node = ctx.node_id, client = %addr, error = %e, "TLS client connection ended");
            }
        }
    })
    .await
}

#[derive(Default)]
struct Session {
    id: u64,
    authenticated: bool,
    name: Option<Vec<u8>>,
    /// 2 until `HELLO 3`.
    protocol: u8,
    /// SCAN cursors: each names the key the next page starts at (keys are visited in order, so a
    /// key present for a whole iteration is returned once, whatever is written meanwhile).
    scan_cursors: BTreeMap<u64, Vec<u8>>,
    next_cursor: u64,
    /// Inside MULTI: the commands queued so far.
    multi: Option<Queued>,
    /// WATCHed keys and the version each had when WATCH read it (`None`: absent); EXEC sends them
    /// with the transaction, which applies only if none changed.
    /// With each, the applied index the read was at or past.
    watched: BTreeMap<Vec<u8>, (Option<u64>, u64)>,
    /// A WATCH whose read failed: the next EXEC aborts (its keys' versions are unknown).
    watch_failed: bool,
}

/// A transaction being queued: its commands, how each reply is shaped, and whether queueing one
/// failed (EXEC then discards it all, as Redis does).
#[derive(Debug, Default)]
struct Queued {
    commands: Vec<Command>,
    shapes: Vec<Shape>,
    failed: bool,
}

/// Serve one client connection (plain or inside TLS) until it closes: `addrs` are its remote and
/// local addresses, for CLIENT LIST.
async fn serve_client<E: Engine + Send + 'static, S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    (addr, laddr): (String, String),
    ctx: &ClientContext<E>,
) -> std::io::Result<()> {
    let mut parser = RequestParser::new(ctx.limits);
    use std::sync::atomic::Ordering::Relaxed;
    let id = ctx.next_client_id.fetch_add(1, Relaxed) + 1;
    ctx.total_connections.fetch_add(1, Relaxed);
    let now = ctx.now_ms();
    let entry = ClientEntry {
        addr,
        laddr,
        protocol: 2,
        connected_ms: now,
        last_active_ms: now,
        ..ClientEntry::default()
    };
    ctx.clients().insert(id, entry);
    let _registered = Registered { ctx, id };
    let mut session =
        Session { id, authenticated: ctx.requirepass.is_none(), protocol: 2, ..Session::default() };
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(16 << 10);
    // Pipelining: every whole request in the buffer is dispatched before any reply is awaited, so
    // the raft loop sees a connection's writes together (one WAL fsync for all of them) and its
    // reads share ReadIndex rounds; the replies still go back in request order. A connection
    // command (AUTH, HELLO, CLIENT …) takes effect at its place in the order.
    let mut queue: std::collections::VecDeque<(Pending, u8)> = std::collections::VecDeque::new();
    loop {
        let mut quit = false;
        let mut protocol_error = None;
        loop {
            match parser.parse(&buf) {
                Ok(Some((args, used))) => {
                    buf.drain(..used);
                    // An empty request (`*0`, `*-1`, a blank inline line) gets no reply, as in Redis:
                    // answering it would shift every later reply by one.
                    if args.is_empty() {
                        continue;
                    }
                    ctx.total_commands.fetch_add(1, Relaxed);
                    if let Some(c) = ctx.clients().get_mut(&id) {
                        c.last_command = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
                        c.last_active_ms = ctx.now_ms();
                    }
                    // Per-connection order, as in Redis: a read must see the writes sent before it
                    // and none sent after it, so a read waits for this connection's pending writes
                    // (and a write for its pending reads) before it is dispatched. Runs of writes,
                    // and runs of reads, still go out together.
                    // EXEC proposes its queued writes: it waits for this connection's reads too.
                    let exec = args[0].eq_ignore_ascii_case(b"EXEC");
                    // WATCH reads its keys' versions: after this connection's earlier writes, and
                    // before its later ones (which must abort the transaction).
                    let watch = args[0].eq_ignore_ascii_case(b"WATCH");
                    let writes = command_spec(&args[0]).and_then(|c| {
                        if watch {
                            Some(false)
                        } else if exec || c.flags.contains(&"write") {
                            Some(true)
                        } else {
                            c.flags.contains(&"readonly").then_some(false)
                        }
                    });
                    let clash = |p: &Pending| {
                        matches!(
                            (writes, p),
                            (Some(true), Pending::Read(_) | Pending::Scan(_) | Pending::Watch(..))
                                | (Some(false), Pending::Write(..))
                        )
                    };
                    // EXEC sends what WATCH recorded: every reply before it must be in.
                    if (exec && !queue.is_empty()) || queue.iter().any(|(p, _)| clash(p)) {
                        while let Some((pending, protocol)) = queue.pop_front() {
                            finish(ctx, &mut session, pending).await.encode_for(&mut out, protocol);
                        }
                    }
                    let (pending, closes) = execute(ctx, &mut session, args).await;
                    queue.push_back((pending, session.protocol));
                    if closes {
                        quit = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    protocol_error = Some(e);
                    break;
                }
            }
        }
        while let Some((pending, protocol)) = queue.pop_front() {
            finish(ctx, &mut session, pending).await.encode_for(&mut out, protocol);
        }
        if let Some(e) = protocol_error {
            // As Redis: the protocol error is the last reply, then the connection closes.
            Reply::Error(format!("ERR {e}")).encode(&mut out);
            write_flushed(&mut stream, &out).await?;
            return Ok(());
        }
        if !out.is_empty() {
            write_flushed(&mut stream, &out).await?;
            out.clear();
        }
        if quit {
            return Ok(());
        }
        buf.reserve(16 << 10);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// A dispatched request: its reply, or what will bring it.
enum Pending {
    Ready(Reply),
    /// A write in the raft loop's hands, and how its reply is shaped.
    Write(Awaited<Result<fsm::Reply, Refusal>>, Shape),
    /// A read waiting for its ReadIndex round.
    Read(Awaited<Reply>),
    /// A SCAN page: `[next start key (empty: done), [keys]]`, turned into a cursor at the reply.
    Scan(Awaited<Reply>),
    /// WATCH's read of its keys' versions, recorded in the session when it comes.
    Watch(Awaited<Reply>, Vec<Vec<u8>>),
}

/// How a write's state-machine reply becomes the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Plain,
    /// SETNX: 1 when written, 0 when the key existed.
    SetNx,
    /// EXEC: one shape per queued command.
    Multi(Vec<Shape>),
    /// A command queued only for its place in EXEC's replies (UNWATCH): `+OK`.
    Ok,
}

/// Give a write's reply its command's shape (SETNX's 1/0, each of EXEC's replies).
fn shaped(shape: &Shape, reply: Reply) -> Reply {
    match (shape, reply) {
        (Shape::SetNx, Reply::Simple(_)) => Reply::Integer(1),
        (Shape::SetNx, Reply::Bulk(None)) => Reply::Integer(0),
        (Shape::Ok, _) => Reply::ok(),
        (Shape::Multi(shapes), Reply::Array(Some(items))) if items.len() == shapes.len() => {
            Reply::Array(Some(shapes.iter().zip(items).map(|(s, r)| shaped(s, r)).collect()))
        }
        (_, reply) => reply,
    }
}

/// SCAN cursors a connection holds at most (the oldest is forgotten first).
const MAX_SCAN_CURSORS: usize = 1024;

/// Wait for a dispatched request's reply (each waits up to the request timeout from here).
async fn finish<E: Engine>(ctx: &ClientContext<E>, session: &mut Session, pending: Pending) -> Reply {
    match pending {
        Pending::Ready(reply) => reply,
        Pending::Write(rx, shape) => {
            let waited = match tokio::time::timeout(ctx.request_timeout, rx.rx).await {
                Ok(Ok(answer)) => Waited::Answered(answer),
                Ok(Err(_)) => Waited::Abandoned,
                Err(_) => Waited::TimedOut,
            };
            shaped(&shape, write_reply(waited, ctx.request_timeout))
        }
        Pending::Scan(rx) => {
            let page = Box::pin(finish(ctx, session, Pending::Read(rx))).await;
            let Reply::Array(Some(mut parts)) = page else { return page };
            let (Some(keys), Some(Reply::Bulk(Some(next)))) = (parts.pop(), parts.pop()) else {
                return Reply::Error("ERR internal: a malformed SCAN page".into());
            };
            let cursor = if next.is_empty() {
                0
            } else {
                session.next_cursor += 1;
                session.scan_cursors.insert(session.next_cursor, next);
                while session.scan_cursors.len() > MAX_SCAN_CURSORS {
                    session.scan_cursors.pop_first();
                }
                session.next_cursor
            };
            Reply::Array(Some(vec![Reply::Bulk(Some(cursor.to_string().into_bytes())), keys]))
        }
        Pending::Watch(rx, keys) => {
            let versions = Box::pin(finish(ctx, session, Pending::Read(rx))).await;
            match versions {
                // The applied index the read was at or past, then each key's version or nil.
                Reply::Array(Some(items)) if items.len() == keys.len() + 1 => {
                    let mut items = items.into_iter();
                    let since = match items.next() {
                        Some(Reply::Integer(n)) => u64::try_from(n).unwrap_or(0),
                        _ => 0,
                    };
                    for (key, v) in keys.into_iter().zip(items) {
                        let version = match v {
                            Reply::Integer(n) => u64::try_from(n).ok(),
                            _ => None,
                        };
                        // As Redis: watching a key again keeps the first watch.
                        session.watched.entry(key).or_insert((version, since));
                    }
                    Reply::ok()
                }
                // Not known what the keys held: the transaction must not run on a guess.
                other => {
                    session.watch_failed = true;
                    other
                }
            }
        }
        Pending::Read(rx) => match tokio::time::timeout(ctx.request_timeout, rx.rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => stopping(),
            Err(_) => Reply::Error(format!(
                "TIMEOUT no quorum confirmed the read within {:?} (is a majority of the cluster up?)",
                ctx.request_timeout
            )),
        },
    }
}

/// Start one request: its reply (or what will bring it), and whether the connection closes after it.
async fn execute<E: Engine + Send + 'static>(
    ctx: &ClientContext<E>,
    session: &mut Session,
    args: Vec<Vec<u8>>,
) -> (Pending, bool) {
    let req = match parse_request(args) {
        Ok(req) => req,
        Err(refusal) => {
            // As Redis: a command refused while queueing makes EXEC discard the transaction.
            if let Some(q) = &mut session.multi {
                q.failed = true;
            }
            return (Pending::Ready(refusal), false);
        }
    };
    if session.authenticated {
        match (req, session.multi.take()) {
            (Request::Multi, None) => {
                session.multi = Some(Queued::default());
                return (Pending::Ready(Reply::ok()), false);
            }
            (Request::Exec, None) => {
                return (Pending::Ready(Reply::Error("ERR EXEC without MULTI".into())), false);
            }
            (Request::Discard, None) => {
                return (Pending::Ready(Reply::Error("ERR DISCARD without MULTI".into())), false);
            }
            (Request::Discard, Some(_)) => {
                unwatch(session);
                return (Pending::Ready(Reply::ok()), false);
            }
            (Request::Watch(_), Some(q)) => {
                session.multi = Some(q);
                return (Pending::Ready(Reply::Error("ERR WATCH inside MULTI is not allowed".into())), false);
            }
            (Request::Watch(keys), None) => {
                let wanted = keys.clone();
                let versions = move |kv: &Kv<E>| {
                    let mut out = Vec::with_capacity(wanted.len() + 1);
                    // Read first: the state the keys are read from is at or past it.
                    out.push(Reply::Integer(i64::try_from(kv.applied_index()).unwrap_or(i64::MAX)));
                    for key in &wanted {
                        match kv.version(key) {
                            Ok(Some(v)) => out.push(Reply::Integer(i64::try_from(v).unwrap_or(i64::MAX))),
                            Ok(None) => out.push(Reply::Bulk(None)),
                            Err(e) => return read_failed(e),
                        }
                    }
                    Reply::Array(Some(out))
                };
                return match read(ctx, Box::new(versions)).await {
                    Pending::Read(rx) => (Pending::Watch(rx, keys), false),
                    other => {
                        session.watch_failed = true;
                        (other, false)
                    }
                };
            }
            (Request::Unwatch, None) => {
                unwatch(session);
                return (Pending::Ready(Reply::ok()), false);
            }
            (Request::Unwatch, Some(mut q)) => {
                // Queued, as Redis does; EXEC unwatches anyway, so it only answers +OK in its place
                // (a read of no keys, shaped into OK).
                q.commands.push(Command::read(crate::fsm::ReadKind::Exists, Vec::new()));
                q.shapes.push(Shape::Ok);
                session.multi = Some(q);
                return (Pending::Ready(Reply::Simple("QUEUED".into())), false);
            }
            (Request::Exec, Some(_)) if session.watch_failed => {
                unwatch(session);
                return (Pending::Ready(Reply::Array(None)), false);
            }
            (Request::Exec, Some(q)) if q.failed => {
                unwatch(session);
                let text = "EXECABORT Transaction discarded because of previous errors.";
                return (Pending::Ready(Reply::Error(text.into())), false);
            }
            (Request::Exec, Some(q)) if q.commands.is_empty() && session.watched.is_empty() => {
                return (Pending::Ready(Reply::Array(Some(Vec::new()))), false);
            }
            (Request::Exec, Some(q)) => {
                // The whole transaction is one raft entry: applied atomically, in order, on every
                // replica, unless a watched key's version moved since WATCH read it.
                let watches = std::mem::take(&mut session.watched)
                    .into_iter()
                    .map(|(key, (version, since))| (key, version, since))
                    .collect();
                return (
                    match propose(ctx, Command::multi_watching(q.commands, watches)).await {
                        Pending::Write(rx, _) => Pending::Write(rx, Shape::Multi(q.shapes)),
                        other => other,
                    },
                    false,
                );
            }
            (req @ Request::Quit, Some(_)) => return execute_parsed(ctx, session, req).await,
            (req, Some(mut q)) => {
                let reply = queue_in_multi(&mut q, req);
                session.multi = Some(q);
                return (Pending::Ready(reply), false);
            }
            (req, None) => return execute_parsed(ctx, session, req).await,
        }
    }
    execute_parsed(ctx, session, req).await
}

/// [`execute`] of a parsed request outside a transaction.
async fn execute_parsed<E: Engine + Send + 'static>(
    ctx: &ClientContext<E>,
    session: &mut Session,
    req: Request,
) -> (Pending, bool) {
    if !session.authenticated && !matches!(req, Request::Auth { .. } | Request::Quit | Request::Hello { .. })
    {
        return (Pending::Ready(Reply::Error("NOAUTH Authentication required.".into())), false);
    }
    let reply = match req {
        Request::Ping(None) => Reply::Simple("PONG".into()),
        Request::Ping(Some(msg)) | Request::Echo(msg) => Reply::Bulk(Some(msg)),
        Request::Quit => return (Pending::Ready(Reply::ok()), true),
        Request::Select => Reply::ok(),
        Request::Auth { password } => match check_password(ctx, &password) {
            Ok(()) => {
                session.authenticated = true;
                Reply::ok()
            }
            Err(refusal) => refusal,
        },
        Request::Hello { protocol, auth, name } => {
            if let Some(password) = auth {
                match check_password(ctx, &password) {
                    Ok(()) => session.authenticated = true,
                    Err(refusal) => return (Pending::Ready(refusal), false),
                }
            }
            if !session.authenticated {
                return (
                    Pending::Ready(Reply::Error(
                        "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
                         HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
                         select the RESP protocol version at the same time"
                            .into(),
                    )),
                    false,
                );
            }
            if let Some(name) = name
                && let Err(refusal) = set_name(ctx, session, name)
            {
                return (Pending::Ready(refusal), false);
            }
            if let Some(p) = protocol {
                session.protocol = p;
                if let Some(c) = ctx.clients().get_mut(&session.id) {
                    c.protocol = p;
                }
            }
            hello_reply(ctx, session)
        }
        Request::ClientSetName(name) => match set_name(ctx, session, name) {
            Ok(()) => Reply::ok(),
            Err(refusal) => refusal,
        },
        Request::ClientGetName => Reply::Bulk(session.name.clone()),
        Request::ClientSetInfo { attr, value } => {
            if value.iter().any(|b| !b.is_ascii_graphic()) {
                let what = if attr == LibAttr::Name { "lib-name" } else { "lib-ver" };
                Reply::Error(format!("ERR {what} cannot contain spaces, newlines or special characters."))
            } else {
                if let Some(c) = ctx.clients().get_mut(&session.id) {
                    match attr {
                        LibAttr::Name => c.lib_name = value,
                        LibAttr::Version => c.lib_ver = value,
                    }
                }
                Reply::ok()
            }
        }
        Request::ClientId => Reply::Integer(session.id as i64),
        Request::ClientInfo => {
            let line =
                ctx.clients().get(&session.id).map(|c| ctx.client_line(session.id, c)).unwrap_or_default();
            Reply::Bulk(Some(format!("{line}\n").into_bytes()))
        }
        Request::ClientList(ids) => {
            let clients = ctx.clients();
            let mut text = String::new();
            for (id, c) in clients.iter() {
                if ids.as_ref().is_none_or(|ids| ids.contains(id)) {
                    text.push_str(&ctx.client_line(*id, c));
                    text.push('\n');
                }
            }
            Reply::Bulk(Some(text.into_bytes()))
        }
        Request::ClientHelp => {
            Reply::Array(Some(CLIENT_HELP.iter().map(|l| Reply::Simple((*l).to_string())).collect()))
        }
        Request::ClientNoop => Reply::ok(),
        Request::BackupStart => return (Pending::Ready(backup_start(ctx).await), false),
        Request::Failover { to, timeout_ms } => {
            return (Pending::Ready(failover(ctx, to, timeout_ms).await), false);
        }
        Request::ClusterMembers => cluster_members(ctx),
        Request::ClusterChange(change) => {
            return (Pending::Ready(cluster_change(ctx, change).await), false);
        }
        Request::BackupRead { name, offset, count } => {
            let (fs, dir) = (ctx.fs.clone(), ctx.backups.clone());
            let read = move || crate::backup::read(&*fs, &dir, &name, offset, count);
            match off_the_runtime(read).await {
                Some(Ok(bytes)) => Reply::Bulk(Some(bytes)),
                Some(Err(e)) => Reply::Error(format!("ERR {e}")),
                None => stopping(),
            }
        }
        Request::BackupDone { name } => match crate::backup::remove(&*ctx.fs, &ctx.backups, &name) {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::Error(format!("ERR {e}")),
        },
        Request::Command(q) => command_reply(q),
        // A map: RESP3 clients get `%`, RESP2 clients the flat array Redis sends them.
        Request::ConfigGet(names) => Reply::Map(
            config_get(&names)
                .into_iter()
                .map(|(k, v)| (Reply::Bulk(Some(k.into())), Reply::Bulk(Some(v.into()))))
                .collect(),
        ),
        Request::Info(sections) => Reply::Bulk(Some(info(ctx, &sections).into_bytes())),
        Request::Write(cmd) => return (propose(ctx, cmd).await, false),
        // Reached only before AUTH, which `execute`'s guard refuses first.
        Request::Multi | Request::Exec | Request::Discard | Request::Watch(_) | Request::Unwatch => {
            Reply::Error("NOAUTH Authentication required.".into())
        }
        Request::Get(key) => return (read_value(ctx, key, Reply::Bulk).await, false),
        Request::Ttl(key, answer) => {
            let clock = ctx.clock.clone();
            let ttl = move |kv: &Kv<E>| match kv.get_entry(&key) {
                Err(e) => read_failed(e),
                Ok(None) => Reply::Integer(-2),
                Ok(Some((_, None))) => Reply::Integer(-1),
                Ok(Some((_, Some(deadline)))) => {
                    let left = deadline.saturating_sub(clock.now_ms().max(kv.clock()));
                    let n = match answer {
                        TtlAnswer::Seconds => (left + 500) / 1000,
                        TtlAnswer::Millis => left,
                        TtlAnswer::AtSeconds => deadline / 1000,
                        TtlAnswer::AtMillis => deadline,
                    };
                    Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX))
                }
            };
            return (read(ctx, Box::new(ttl)).await, false);
        }
        Request::StrLen(key) => {
            return (read_value(ctx, key, |v| Reply::Integer(v.map_or(0, |v| v.len() as i64))).await, false);
        }
        Request::MGet(keys) => {
            return (
                read(
                    ctx,
                    Box::new(move |kv| {
                        let mut values = Vec::with_capacity(keys.len());
                        for key in &keys {
                            match kv.get(key) {
                                Ok(v) => values.push(Reply::Bulk(v)),
                                Err(e) => return read_failed(e),
                            }
                        }
                        Reply::Array(Some(values))
                    }),
                )
                .await,
                false,
            );
        }
        Request::Lcs { a, b, answer } => {
            return (
                read(
                    ctx,
                    Box::new(move |kv| match (kv.get(&a), kv.get(&b)) {
                        (Ok(x), Ok(y)) => lcs(&x.unwrap_or_default(), &y.unwrap_or_default(), answer),
                        (Err(e), _) | (_, Err(e)) => read_failed(e),
                    }),
                )
                .await,
                false,
            );
        }
        Request::Exists(keys) => {
            return (
                read(
                    ctx,
                    Box::new(move |kv| {
                        let mut n = 0;
                        for key in &keys {
                            match kv.get(key) {
                                Ok(v) => n += i64::from(v.is_some()),
                                Err(e) => return read_failed(e),
                            }
                        }
                        Reply::Integer(n)
                    }),
                )
                .await,
                false,
            );
        }
        // O(1): the state machine keeps the count (a linearizable read like any other).
        Request::DbSize => {
            return (read(ctx, Box::new(|kv| Reply::Integer(kv.key_count() as i64))).await, false);
        }
        Request::SetNx(cmd) => {
            return (
                match propose(ctx, cmd).await {
                    Pending::Write(rx, _) => Pending::Write(rx, Shape::SetNx),
                    other => other,
                },
                false,
            );
        }
        Request::Type(key) => {
            let kind = |v: Option<Vec<u8>>| Reply::Simple(if v.is_some() { "string" } else { "none" }.into());
            return (read_value(ctx, key, kind).await, false);
        }
        Request::GetRange(key, start, end) => {
            let range = move |v: Option<Vec<u8>>| {
                let v = v.unwrap_or_default();
                Reply::Bulk(Some(v[byte_range(v.len(), start, end)].to_vec()))
            };
            return (read_value(ctx, key, range).await, false);
        }
        Request::Keys(pattern) => {
            return (
                read(
                    ctx,
                    Box::new(move |kv| match scan_keys(kv, &[], usize::MAX, Some(&pattern)) {
                        Ok((keys, _)) => {
                            Reply::Array(Some(keys.into_iter().map(|k| Reply::Bulk(Some(k))).collect()))
                        }
                        Err(e) => read_failed(e),
                    }),
                )
                .await,
                false,
            );
        }
        Request::Scan { cursor, pattern, count, kind } => {
            let start = match cursor {
                0 => Vec::new(),
                c => match session.scan_cursors.remove(&c) {
                    Some(start) => start,
                    None => return (Pending::Ready(Reply::Error("ERR invalid cursor".into())), false),
                },
            };
            // Only strings exist: TYPE string matches every key, any other type none.
            let only_strings = kind.as_ref().is_none_or(|k| k.eq_ignore_ascii_case(b"string"));
            let pending = read(
                ctx,
                Box::new(move |kv| match scan_keys(kv, &start, count, pattern.as_deref()) {
                    Ok((keys, next)) => {
                        let keys = if only_strings { keys } else { Vec::new() };
                        Reply::Array(Some(vec![
                            Reply::Bulk(Some(next.unwrap_or_default())),
                            Reply::Array(Some(keys.into_iter().map(|k| Reply::Bulk(Some(k))).collect())),
                        ]))
                    }
                    Err(e) => read_failed(e),
                }),
            )
            .await;
            return (
                match pending {
                    Pending::Read(rx) => Pending::Scan(rx),
                    other => other,
                },
                false,
            );
        }
    };
    (Pending::Ready(reply), false)
}

/// AUTH's check, shared with HELLO … AUTH.
fn check_password<E: Engine>(ctx: &ClientContext<E>, password: &[u8]) -> Result<(), Reply> {
    match &ctx.requirepass {
        None => Err(Reply::Error(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?"
                .into(),
        )),
        // Compared in full every time, so the reply time says nothing about a prefix.
        Some(expected) if constant_time_eq(expected, password) => Ok(()),
        Some(_) => Err(Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())),
    }
}

fn set_name<E: Engine>(ctx: &ClientContext<E>, session: &mut Session, name: Vec<u8>) -> Result<(), Reply> {
    if name.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(Reply::Error(
            "ERR Client names cannot contain spaces, newlines or special characters.".into(),
        ));
    }
    if let Some(c) = ctx.clients().get_mut(&session.id) {
        c.name = name.clone();
    }
    session.name = (!name.is_empty()).then_some(name);
    Ok(())
}

/// The Redis version whose client API durakv follows (what HELLO and INFO report as `version`).
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

fn hello_reply<E: Engine>(ctx: &ClientContext<E>, session: &Session) -> Reply {
    let text = |s: &str| Reply::Bulk(Some(s.as_bytes().to_vec()));
    Reply::Map(vec![
        (text("server"), text("redis")),
        (text("version"), text(REDIS_COMPAT_VERSION)),
        (text("proto"), Reply::Integer(i64::from(session.protocol))),
        (text("id"), Reply::Integer(session.id as i64)),
        (text("mode"), text("standalone")),
        // Every node takes writes (a follower forwards them through raft): each is a primary to a client.
        (text("role"), text("master")),
        (text("modules"), Reply::Array(Some(Vec::new()))),
        (text("durakv_version"), text(env!("CARGO_PKG_VERSION"))),
        (text("durakv_node_id"), Reply::Integer(ctx.node_id as i64)),
    ])
}

const CLIENT_HELP: &[&str] = &[
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current client connection.",
    "LIST [TYPE normal|master|replica|pubsub] [ID <id> [<id> ...]]",
    "    Return information about client connections.",
    "SETINFO <option> <value>",
    "    Set client meta attr. Options are:",
    "    * LIB-NAME: the client lib name.",
    "    * LIB-VER: the client lib version.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "NO-EVICT (ON|OFF)",
    "    Accepted; durakv never evicts.",
    "NO-TOUCH (ON|OFF)",
    "    Accepted; durakv keeps no access times.",
    "HELP",
    "    Print this help.",
];

/// One command's `COMMAND INFO` entry, in Redis 7's ten-field form.
fn command_entry(c: &CommandSpec) -> Reply {
    let text = |s: &str| Reply::Simple(s.to_string());
    Reply::Array(Some(vec![
        Reply::Bulk(Some(c.name.as_bytes().to_vec())),
        Reply::Integer(c.arity),
        Reply::Array(Some(c.flags.iter().map(|f| text(f)).collect())),
        Reply::Integer(c.first_key),
        Reply::Integer(c.last_key),
        Reply::Integer(c.step),
        Reply::Array(Some(vec![text(&format!("@{}", c.group))])),
        Reply::Array(Some(Vec::new())),
        Reply::Array(Some(Vec::new())),
        Reply::Array(Some(Vec::new())),
    ]))
}

fn command_docs(c: &CommandSpec) -> Reply {
    let text = |s: &str| Reply::Bulk(Some(s.as_bytes().to_vec()));
    Reply::Map(vec![
        (text("summary"), text(c.summary)),
        (text("since"), text("1.0.0")),
        (text("group"), text(c.group)),
    ])
}

fn command_reply(q: CommandQuery) -> Reply {
    let pick = |names: &[Vec<u8>]| -> Vec<Option<&'static CommandSpec>> {
        if names.is_empty() {
            COMMANDS.iter().map(Some).collect()
        } else {
            names.iter().map(|n| command_spec(n)).collect()
        }
    };
    match q {
        CommandQuery::All => Reply::Array(Some(COMMANDS.iter().map(command_entry).collect())),
        CommandQuery::Count => Reply::Integer(COMMANDS.len() as i64),
        CommandQuery::List => Reply::Array(Some(
            COMMANDS.iter().map(|c| Reply::Bulk(Some(c.name.as_bytes().to_vec()))).collect(),
        )),
        CommandQuery::Info(names) => Reply::Array(Some(
            pick(&names).into_iter().map(|c| c.map_or(Reply::Array(None), command_entry)).collect(),
        )),
        // Unknown names are left out, as Redis does.
        CommandQuery::Docs(names) => Reply::Map(
            pick(&names)
                .into_iter()
                .flatten()
                .map(|c| (Reply::Bulk(Some(c.name.as_bytes().to_vec())), command_docs(c)))
                .collect(),
        ),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

fn read_failed(e: fsm::FsmError) -> Reply {
    tracing::error!(error = %e, "state machine read failed");
    Reply::Error(format!("ERR read failed: {e}"))
}

/// The keys a SCAN page found, and the key the next page starts at (`None`: the keyspace is done).
type ScanPage = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// Examine up to `budget` keys from `start` (inclusive) in key order, keeping those that match
/// `pattern`.
fn scan_keys<E: Engine>(
    kv: &Kv<E>,
    start: &[u8],
    budget: usize,
    pattern: Option<&[u8]>,
) -> Result<ScanPage, fsm::FsmError> {
    const PAGE: usize = 4096;
    let mut found = Vec::new();
    let mut from = start.to_vec();
    let mut left = budget;
    loop {
        // Expired keys the sweep has not removed yet count toward the budget (they are looked at)
        // but are not returned.
        let (page, last) = kv.scan_visible(&from, PAGE.min(left))?;
        left = left.saturating_sub(PAGE.min(left));
        found.extend(page.into_iter().map(|(k, _)| k).filter(|k| pattern.is_none_or(|p| glob_match(p, k))));
        match last {
            Some(mut last) => {
                // The smallest key after `last`.
                last.push(0);
                if left == 0 {
                    return Ok((found, Some(last)));
                }
                from = last;
            }
            _ => return Ok((found, None)),
        }
    }
}

/// Hand a write to the raft loop; its reply comes through the returned [`Pending`].
async fn propose<E: Engine>(ctx: &ClientContext<E>, cmd: Command) -> Pending {
    let command = cmd.to_bytes();
    // Refused here, before raft: an entry larger than a peer frame can carry would be retransmitted
    // and refused forever, and no write after it would ever commit (crate::limits).
    if command.len() > MAX_COMMAND_BYTES {
        return Pending::Ready(Reply::Error(Refusal::TooLarge { bytes: command.len() }.to_string()));
    }
    let Some(slot) = take_slot(ctx) else { return Pending::Ready(busy(ctx)) };
    let (tx, rx) = oneshot::channel();
    if ctx.inputs.send(Input::Propose { command, reply: tx }).await.is_err() {
        // The raft loop is gone and the write never entered its queue.
        return Pending::Ready(Reply::Error(Refusal::NotProposed.to_string()));
    }
    Pending::Write(Awaited { rx, _slot: slot }, Shape::Plain)
}

/// A place among the requests in flight, unless they are at `max_in_flight`.
fn take_slot<E: Engine>(ctx: &ClientContext<E>) -> Option<Slot> {
    use std::sync::atomic::Ordering::AcqRel;
    let taken = ctx.in_flight.fetch_update(AcqRel, std::sync::atomic::Ordering::Acquire, |n| {
        (n < ctx.max_in_flight).then_some(n + 1)
    });
    taken.ok().map(|_| Slot(Arc::clone(&ctx.in_flight)))
}

/// The answer to a request refused because too many are in flight: nothing reached raft, so the
/// client may retry it as it is.
fn busy<E: Engine>(ctx: &ClientContext<E>) -> Reply {
    ctx.busy_replies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Reply::Error(format!(
        "BUSY {} requests are in flight on this node (max_in_flight); nothing was done, retry shortly",
        ctx.max_in_flight
    ))
}

/// How the wait for a write's outcome ended.
#[derive(Debug)]
enum Waited {
    /// The raft loop answered: applied (with the state machine's reply) or refused.
    Answered(Result<fsm::Reply, Refusal>),
    /// The raft loop dropped the write without an answer (it ended without reaching its own
    /// shutdown path). The write was in its hands, so it may have been proposed.
    Abandoned,
    /// No answer within the request timeout.
    TimedOut,
}

/// The client's reply for a write. `ERR` only when the write provably never reached raft; whenever
/// it may have (and may still commit), a `TIMEOUT` that says the outcome is unknown.
fn write_reply(waited: Waited, timeout: Duration) -> Reply {
    match waited {
        Waited::Answered(Ok(reply)) => applied_reply(reply),
        Waited::Answered(Err(refusal)) => Reply::Error(refusal.to_string()),
        Waited::Abandoned => Reply::Error(Refusal::Stopped.to_string()),
        Waited::TimedOut => Reply::Error(format!(
            "TIMEOUT the write was not confirmed within {timeout:?}; it may or may not have been applied"
        )),
    }
}

/// The client's reply for what applying a command answered.
fn applied_reply(reply: fsm::Reply) -> Reply {
    match reply {
        fsm::Reply::Ok => Reply::ok(),
        fsm::Reply::NotWritten => Reply::Bulk(None),
        fsm::Reply::Int(n) => Reply::Integer(n),
        fsm::Reply::Value(v) => Reply::Bulk(v),
        fsm::Reply::Array(items) => Reply::Array(Some(items.into_iter().map(applied_reply).collect())),
        fsm::Reply::Error(text) => Reply::Error(text),
        // EXEC of a transaction whose watched key changed: the null array, as Redis.
        fsm::Reply::Aborted => Reply::Array(None),
        fsm::Reply::AlreadyApplied => {
            Reply::Error("ERR internal: the write's entry was applied before it was proposed".into())
        }
    }
}

/// Forget the connection's watched keys (EXEC, DISCARD, UNWATCH).
fn unwatch(session: &mut Session) {
    session.watched.clear();
    session.watch_failed = false;
}

/// Queue `req` in the transaction being built, or refuse it (which dooms the transaction).
fn queue_in_multi(queued: &mut Queued, req: Request) -> Reply {
    use crate::fsm::ReadKind;
    let (command, shape) = match req {
        Request::Write(cmd) => (cmd, Shape::Plain),
        Request::SetNx(cmd) => (cmd, Shape::SetNx),
        Request::Get(key) => (Command::read(ReadKind::Get, vec![key]), Shape::Plain),
        Request::StrLen(key) => (Command::read(ReadKind::StrLen, vec![key]), Shape::Plain),
        Request::MGet(keys) => (Command::read(ReadKind::MGet, keys), Shape::Plain),
        Request::Exists(keys) => (Command::read(ReadKind::Exists, keys), Shape::Plain),
        Request::Multi => return Reply::Error("ERR MULTI calls can not be nested".into()),
        _ => {
            queued.failed = true;
            return Reply::Error(
                "ERR durakv queues only string reads and writes inside MULTI (GET, MGET, EXISTS, STRLEN and \
                 every write)"
                    .into(),
            );
        }
    };
    queued.commands.push(command);
    queued.shapes.push(shape);
    Reply::Simple("QUEUED".into())
}

/// Hand a read to the raft loop (it runs once a ReadIndex round confirms the leader).
async fn read<E: Engine>(ctx: &ClientContext<E>, read: ReadFn<E>) -> Pending {
    let Some(slot) = take_slot(ctx) else { return Pending::Ready(busy(ctx)) };
    let (tx, rx) = oneshot::channel();
    if ctx.inputs.send(Input::Read { read, reply: tx }).await.is_err() {
        return Pending::Ready(stopping());
    }
    Pending::Read(Awaited { rx, _slot: slot })
}

/// A read of one key's value, answered by `answer` (a failed read is an error reply).
async fn read_value<E: Engine>(
    ctx: &ClientContext<E>,
    key: Vec<u8>,
    answer: impl FnOnce(Option<Vec<u8>>) -> Reply + Send + 'static,
) -> Pending {
    read(ctx, Box::new(move |kv| kv.get(&key).map_or_else(read_failed, answer))).await
}

/// BACKUP START: confirm a read index as a linearizable read does, take a view of the state machine
/// at or past it, and write that view to the backup directory off the async runtime. Every write
/// acknowledged before the command is in the file.
async fn backup_start<E: Engine + Send + 'static>(ctx: &ClientContext<E>) -> Reply {
    // The request holds its place in the in-flight count until the backup is written.
    let Some(_slot) = take_slot(ctx) else { return busy(ctx) };
    let (view_tx, view_rx) = oneshot::channel();
    // The read's own reply is not used, but it must stay open: a read whose client went away is
    // skipped.
    let (reply_tx, _reply_rx) = oneshot::channel();
    let read: ReadFn<E> = Box::new(move |kv| {
        let _ = view_tx.send((kv.applied_index(), kv.shared_engine()));
        Reply::ok()
    });
    if ctx.inputs.send(Input::Read { read, reply: reply_tx }).await.is_err() {
        return stopping();
    }
    let (confirmed, engine) = match tokio::time::timeout(ctx.request_timeout, view_rx).await {
        Ok(Ok(view)) => view,
        Ok(Err(_)) => return stopping(),
        Err(_) => {
            return Reply::Error("TIMEOUT no read index was confirmed in time; retry the backup".into());
        }
    };
    let (fs, dir, node) = (ctx.fs.clone(), ctx.backups.clone(), ctx.node_id);
    let Some(written) = off_the_runtime(move || crate::backup::take(&*fs, &dir, &*engine)).await else {
        return stopping();
    };
    match written {
        Ok(file) if file.index >= confirmed => {
            tracing::info!(node, index = file.index, bytes = file.len, path = %file.path.display(), "backup written");
            let name = file.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Reply::Array(Some(vec![
                Reply::Bulk(Some(name.into_bytes())),
                Reply::Integer(file.index as i64),
                Reply::Integer(file.term as i64),
                Reply::Integer(file.len as i64),
                Reply::Integer(i64::from(file.crc)),
            ]))
        }
        Ok(file) => {
            // The engine's view never moves backwards; a file behind the confirmed index would miss
            // acknowledged writes, so it is never handed out.
            let _ = ctx.fs.remove_file(&file.path);
            Reply::Error(format!(
                "ERR backup at index {} is behind the confirmed read index {confirmed}; retry",
                file.index
            ))
        }
        Err(e) => {
            tracing::warn!(node, error = %e, "backup failed");
            Reply::Error(format!("ERR backup failed: {e}"))
        }
    }
}

/// FAILOVER: resolve the target by its client address among the members, ask the raft loop to
/// transfer leadership, and answer once the target leads (or with why not).
async fn failover<E: Engine>(ctx: &ClientContext<E>, to: Option<(String, u16)>, timeout_ms: u64) -> Reply {
    let target = match to {
        None => None,
        Some((host, port)) => {
            let wanted: Option<std::net::IpAddr> = match host.as_str() {
                "localhost" => Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
                h => h.parse().ok(),
            };
            match wanted.and_then(|ip| ctx.peers.by_resp_addr(std::net::SocketAddr::new(ip, port))) {
                Some(id) => Some(id),
                None => {
                    return Reply::Error(format!(
                        "ERR FAILOVER target {host}:{port} is not a member's client address (use the IP and port of its resp_addr)"
                    ));
                }
            }
        }
    };
    let (tx, rx) = oneshot::channel();
    if ctx.inputs.send(Input::TransferLeader { to: target, reply: tx }).await.is_err() {
        return stopping();
    }
    let to = match rx.await {
        Ok(Ok(to)) => to,
        Ok(Err(why)) => return Reply::Error(format!("ERR FAILOVER refused: {why}")),
        Err(_) => return stopping(),
    };
    let mut status = ctx.status.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let leader = status.borrow_and_update().leader_id;
        if leader == to {
            return Reply::ok();
        }
        // madsim's time has no `timeout_at`: the time left, then `timeout`.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, status.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return stopping(),
            Err(_) => {
                return Reply::Error(format!(
                    "ERR FAILOVER timed out after {timeout_ms} ms: node {to} did not take over (behind or unreachable); the leader is node {leader}"
                ));
            }
        }
    }
}

/// CLUSTER MEMBERS: one line per member, `id role peer_addr resp_addr`, `leader` after the leader's
/// (this node's view: a member that has not applied the latest change shows the one before).
fn cluster_members<E: Engine>(ctx: &ClientContext<E>) -> Reply {
    let s = ctx.status.borrow().clone();
    let lines = crate::members::describe(&s.conf.conf_state(), &ctx.peers.book(), s.leader_id);
    Reply::Array(Some(lines.into_iter().map(|line| Reply::Bulk(Some(line.into_bytes()))).collect()))
}

/// How long a membership change may take to take effect (and a joint configuration to be left).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);

/// CLUSTER ADDLEARNER / PROMOTE / REMOVE: only the leader proposes a change (anything else answers
/// `NOTLEADER addr`, which `durakv admin` follows); answered with the membership once the change took
/// effect on the leader and any joint configuration it entered was left.
async fn cluster_change<E: Engine>(ctx: &ClientContext<E>, change: crate::members::Change) -> Reply {
    let s = ctx.status.borrow().clone();
    if s.role != "leader" {
        return match ctx.peers.get(s.leader_id) {
            Some(p) if s.leader_id != 0 => Reply::Error(format!(
                "NOTLEADER {} membership changes are made by the leader, node {}",
                p.resp_addr, s.leader_id
            )),
            _ => Reply::Error("TRYAGAIN no raft leader is known yet; retry shortly".into()),
        };
    }
    let (tx, rx) = oneshot::channel();
    if ctx.inputs.send(Input::Membership { change, reply: tx }).await.is_err() {
        return stopping();
    }
    let deadline = tokio::time::Instant::now() + MEMBERSHIP_TIMEOUT;
    let outcome = match tokio::time::timeout(MEMBERSHIP_TIMEOUT, rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => {
            return Reply::Error(
                "TIMEOUT the node stopped before the membership change was confirmed; it may or may not take effect (see CLUSTER MEMBERS)".into(),
            );
        }
        Err(_) => {
            return Reply::Error(
                "TIMEOUT the membership change did not take effect in time; it may or may not (see CLUSTER MEMBERS)".into(),
            );
        }
    };
    let cs = match outcome {
        Ok(cs) => cs,
        // An outcome left open (leadership moved) is no refusal: the change may still take effect.
        Err(why) if why.starts_with("TIMEOUT ") => return Reply::Error(why),
        Err(why) => return Reply::Error(format!("ERR membership change refused: {why}")),
    };
    // The answer is the membership the change leaves, once this node's status shows it: a joint
    // configuration (promote with REPLACING) is left by the leader on its own, so wait for that too.
    let settled = if cs.voters_outgoing.is_empty() {
        crate::members::View::of(&cs)
    } else {
        // Once left: the incoming voters, and the learners with those to be.
        crate::members::View::of(&raft::eraftpb::ConfState {
            voters: cs.voters.clone(),
            learners: cs.learners.iter().chain(&cs.learners_next).copied().collect(),
            ..Default::default()
        })
    };
    {
        let mut status = ctx.status.clone();
        loop {
            if status.borrow_and_update().conf == settled {
                break;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, status.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return stopping(),
                Err(_) => {
                    return Reply::Error(
                        "TIMEOUT the change took effect, but the membership it leaves did not settle in time (a joint configuration the leader has not left yet, or a change after it); see CLUSTER MEMBERS".into(),
                    );
                }
            }
        }
    }
    cluster_members(ctx)
}

/// Run blocking file work on a blocking worker (under madsim, in place: the simulated disk takes no
/// time and a run must replay exactly). `None` if the worker went away (the runtime is shutting
/// down, or the work panicked: a bug, already printed).
async fn off_the_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    #[cfg(not(madsim))]
    {
        tokio::task::spawn_blocking(work).await.ok()
    }
    #[cfg(madsim)]
    {
        Some(work())
    }
}

/// A read the node could not serve because it is stopping (a read changes nothing, so failing it is
/// always safe).
fn stopping() -> Reply {
    Reply::Error("ERR the node is shutting down".into())
}

/// The resident set size in bytes, where the platform says (Linux: `/proc/self/statm`). Not a
/// durability-relevant read, so not through `Fs`. Under simulation it is 0: a real process's memory
/// would make INFO's length, and so a seed's run, depend on the machine.
#[cfg(madsim)]
fn resident_bytes() -> u64 {
    0
}

#[cfg(not(madsim))]
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// A histogram's mean in whole microseconds (0 before the first sample).
fn avg_us(h: &prometheus::Histogram) -> String {
    let n = h.get_sample_count();
    if n == 0 { "0".to_string() } else { ((h.get_sample_sum() / n as f64) * 1e6).round().to_string() }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2}G", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.2}M", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.2}K", n as f64 / 1024.0),
        n => format!("{n}B"),
    }
}

/// INFO in Redis's `field:value` form, with Redis's section names (and durakv's own `raft`), for
/// the sections asked (none, `default`, `all`, `everything`: every one).
fn info<E: Engine>(ctx: &ClientContext<E>, asked: &[String]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let s = ctx.status.borrow().clone();
    let leader_resp = ctx.peers.get(s.leader_id).map(|p| p.resp_addr.to_string()).unwrap_or_default();
    let everything =
        asked.is_empty() || asked.iter().any(|a| matches!(a.as_str(), "default" | "all" | "everything"));
    let uptime = ctx.started.elapsed().as_secs();
    let m = &ctx.metrics;
    let used = resident_bytes();
    let sections: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "Server",
            vec![
                ("redis_version", REDIS_COMPAT_VERSION.to_string()),
                ("durakv_version", env!("CARGO_PKG_VERSION").to_string()),
                ("redis_mode", "standalone".to_string()),
                ("os", format!("{} {}", std::env::consts::OS, std::env::consts::ARCH)),
                ("arch_bits", (usize::BITS).to_string()),
                // Under simulation every node shares one real process, whose id differs per run.
                ("process_id", if cfg!(madsim) { 0 } else { std::process::id() }.to_string()),
                ("run_id", format!("{:016x}{:024x}", ctx.cluster_id, ctx.node_id)),
                ("tcp_port", ctx.resp_port.to_string()),
                ("uptime_in_seconds", uptime.to_string()),
                ("uptime_in_days", (uptime / 86_400).to_string()),
                ("node_id", ctx.node_id.to_string()),
                ("cluster_id", ctx.cluster_id.to_string()),
            ],
        ),
        (
            "Clients",
            vec![
                ("connected_clients", ctx.clients().len().to_string()),
                ("maxclients", ctx.maxclients.to_string()),
                ("blocked_clients", "0".to_string()),
            ],
        ),
        (
            "Memory",
            vec![
                ("used_memory", used.to_string()),
                ("used_memory_human", human_bytes(used)),
                ("used_memory_rss", used.to_string()),
                ("maxmemory", "0".to_string()),
                ("maxmemory_policy", "noeviction".to_string()),
            ],
        ),
        (
            "Persistence",
            vec![
                ("loading", "0".to_string()),
                ("async_loading", "0".to_string()),
                ("rdb_bgsave_in_progress", "0".to_string()),
                ("aof_enabled", "0".to_string()),
                ("aof_rewrite_in_progress", "0".to_string()),
                ("durakv_fsm_sync", ctx.fsm_sync.to_string()),
                ("durakv_snapshot_index", s.snapshot_index.to_string()),
            ],
        ),
        (
            "Stats",
            vec![
                ("total_connections_received", ctx.total_connections.load(Relaxed).to_string()),
                ("total_commands_processed", ctx.total_commands.load(Relaxed).to_string()),
                // Keys this node's sweeps removed while it led (Redis counts its own deletions).
                ("expired_keys", m.keys_expired.get().to_string()),
                ("rejected_connections", ctx.rejected_connections.load(Relaxed).to_string()),
                // Requests answered -BUSY because `max_in_flight` were already in raft's hands.
                ("durakv_busy_replies", ctx.busy_replies.load(Relaxed).to_string()),
                ("durakv_requests_in_flight", ctx.in_flight.load(Relaxed).to_string()),
                // The essentials of `--metrics-addr`, for those who read INFO (docs/operations.md).
                ("durakv_raft_persists", m.persist_seconds.get_sample_count().to_string()),
                ("durakv_raft_persist_avg_us", avg_us(&m.persist_seconds)),
                ("durakv_fsm_applies", m.apply_seconds.get_sample_count().to_string()),
                ("durakv_fsm_apply_avg_us", avg_us(&m.apply_seconds)),
                ("durakv_entries_applied", m.entries_applied.get().to_string()),
                ("durakv_reads_served", m.reads_served.get().to_string()),
                ("durakv_snapshots_taken", m.snapshots_taken.get().to_string()),
                ("durakv_leader_terms", m.leader_terms.get().to_string()),
                ("durakv_peer_messages_dropped", m.peer_messages_dropped.get().to_string()),
                ("durakv_raft_tick_gap_max_ms", m.tick_gap_max_ms.get().to_string()),
            ],
        ),
        (
            "Replication",
            vec![
                // Every node takes writes; raft, not Redis replication, keeps the copies (see Raft).
                ("role", "master".to_string()),
                ("connected_slaves", "0".to_string()),
            ],
        ),
        (
            "Raft",
            vec![
                ("role", s.role.to_string()),
                ("term", s.term.to_string()),
                ("leader_id", s.leader_id.to_string()),
                ("leader_resp_addr", leader_resp),
                ("commit_index", s.commit_index.to_string()),
                ("applied_index", s.applied_index.to_string()),
                ("snapshot_index", s.snapshot_index.to_string()),
                ("snapshots_installed", s.snapshots_installed.to_string()),
                ("recovering", u8::from(s.recover_to > 0).to_string()),
                ("recover_to", s.recover_to.to_string()),
                ("members", s.conf.members().iter().map(u64::to_string).collect::<Vec<_>>().join(",")),
                ("voters", s.conf.voters.iter().map(u64::to_string).collect::<Vec<_>>().join(",")),
                ("learners", s.conf.learners.iter().map(u64::to_string).collect::<Vec<_>>().join(",")),
                ("joint", u8::from(!s.conf.outgoing.is_empty()).to_string()),
                ("removed", u8::from(s.removed_at > 0).to_string()),
            ],
        ),
    ];
    let mut text = String::new();
    for (name, fields) in sections {
        if !everything && !asked.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        text.push_str(&format!("# {name}\r\n"));
        for (k, v) in fields {
            text.push_str(&format!("{k}:{v}\r\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: Reply) -> String {
        match r {
            Reply::Error(e) => e,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    const T: Duration = Duration::from_secs(5);

    /// Failure guarded against: a write that may still commit reported as failed (a client that
    /// retries an `ERR`ed INCR counts twice). Invariant: the reply's first word is `TIMEOUT` exactly
    /// when the outcome is unknown, and `ERR`/`TRYAGAIN` only when raft never had the write.
    #[test]
    fn a_write_whose_fate_is_unknown_is_never_an_err() {
        // Each refusal, and whether raft provably never had the write.
        let refusals = [
            (Refusal::NoLeader, true),
            (Refusal::TooLarge { bytes: MAX_COMMAND_BYTES + 1 }, true),
            (Refusal::NotProposed, true),
            (Refusal::LeaderChanged, false),
            (Refusal::Stopped, false),
        ];
        for (r, never) in refusals {
            let t = text(write_reply(Waited::Answered(Err(r.clone())), T));
            assert_eq!(t.starts_with("TIMEOUT"), !never, "{r:?}: {t}");
            assert_eq!(t.contains("may or may not have been applied"), !never, "{r:?}: {t}");
            if never {
                assert!(t.starts_with("ERR") || t.starts_with("TRYAGAIN"), "{r:?}: {t}");
            }
        }
        // Dropped without an answer: the loop had the write, so maybe.
        let t = text(write_reply(Waited::Abandoned, T));
        assert!(t.starts_with("TIMEOUT") && t.contains("may or may not"), "{t}");
        let t = text(write_reply(Waited::TimedOut, T));
        assert!(t.starts_with("TIMEOUT") && t.contains("may or may not"), "{t}");
    }

    #[test]
    fn applied_writes_get_their_state_machine_reply() {
        assert_eq!(write_reply(Waited::Answered(Ok(fsm::Reply::Ok)), T), Reply::ok());
        assert_eq!(write_reply(Waited::Answered(Ok(fsm::Reply::Int(3))), T), Reply::Integer(3));
        assert_eq!(write_reply(Waited::Answered(Ok(fsm::Reply::NotWritten)), T), Reply::Bulk(None));
    }

    #[test]
    fn the_too_large_refusal_names_the_size_and_the_limit() {
        let t = Refusal::TooLarge { bytes: 20_971_546 }.to_string();
        assert_eq!(
            t,
            format!("ERR write too large to replicate (20971546 bytes, limit {MAX_COMMAND_BYTES})")
        );
    }
}
