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

use super::commands::{Request, config_get, parse_request};
use super::resp::{Limits, Reply, RequestParser};
use crate::config::Peer;
use crate::fsm::{self, Command, Engine, Kv};
use crate::limits::MAX_COMMAND_BYTES;
use crate::runtime::{Input, ReadFn, Refusal, Status, accept_until_shutdown, write_flushed};

/// What every client connection of this node shares.
pub(crate) struct ClientContext<E: Engine> {
    pub node_id: u64,
    pub cluster_id: u64,
    pub inputs: mpsc::Sender<Input<E>>,
    pub status: watch::Receiver<Status>,
    pub requirepass: Option<Vec<u8>>,
    pub limits: Limits,
    pub request_timeout: Duration,
    pub peers: BTreeMap<u64, Peer>,
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
            if let Err(e) = serve_client(stream, &ctx).await {
                tracing::debug!(node = ctx.node_id, client = %addr, error = %e, "client connection ended");
            }
        }
    })
    .await
}

#[derive(Default)]
struct Session {
    authenticated: bool,
    name: Option<Vec<u8>>,
}

async fn serve_client<E: Engine + Send + 'static>(
    mut stream: TcpStream,
    ctx: &ClientContext<E>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut parser = RequestParser::new(ctx.limits);
    let mut session = Session { authenticated: ctx.requirepass.is_none(), name: None };
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(16 << 10);
    loop {
        // Answer every whole request in the buffer (pipelining), in order.
        loop {
            match parser.parse(&buf) {
                Ok(Some((args, used))) => {
                    buf.drain(..used);
                    let (reply, quit) = execute(ctx, &mut session, args).await;
                    reply.encode(&mut out);
                    if quit {
                        write_flushed(&mut stream, &out).await?;
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // As Redis: the protocol error is the last reply, then the connection closes.
                    Reply::Error(format!("ERR {e}")).encode(&mut out);
                    write_flushed(&mut stream, &out).await?;
                    return Ok(());
                }
            }
        }
        if !out.is_empty() {
            write_flushed(&mut stream, &out).await?;
            out.clear();
        }
        buf.reserve(16 << 10);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// Run one request; the reply, and whether the connection should close after it.
async fn execute<E: Engine + Send + 'static>(
    ctx: &ClientContext<E>,
    session: &mut Session,
    args: Vec<Vec<u8>>,
) -> (Reply, bool) {
    let req = match parse_request(args) {
        Ok(req) => req,
        Err(refusal) => return (refusal, false),
    };
    if !session.authenticated && !matches!(req, Request::Auth { .. } | Request::Quit) {
        return (Reply::Error("NOAUTH Authentication required.".into()), false);
    }
    let reply = match req {
        Request::Ping(None) => Reply::Simple("PONG".into()),
        Request::Ping(Some(msg)) | Request::Echo(msg) => Reply::Bulk(Some(msg)),
        Request::Quit => return (Reply::ok(), true),
        Request::Select => Reply::ok(),
        Request::Auth { password } => match &ctx.requirepass {
            None => Reply::Error(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?"
                    .into(),
            ),
            // Compared in full every time, so the reply time says nothing about a prefix.
            Some(expected) if constant_time_eq(expected, &password) => {
                session.authenticated = true;
                Reply::ok()
            }
            Some(_) => Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into()),
        },
        Request::ClientSetName(name) => {
            if name.iter().any(|b| !b.is_ascii_graphic()) {
                Reply::Error("ERR Client names cannot contain spaces, newlines or special characters.".into())
            } else {
                session.name = (!name.is_empty()).then_some(name);
                Reply::ok()
            }
        }
        Request::ClientGetName => Reply::Bulk(session.name.clone()),
        Request::ClientSetInfo => Reply::ok(),
        // redis-cli probes COMMAND at start-up and carries on without details.
        Request::CommandInfo => Reply::Array(Some(Vec::new())),
        Request::ConfigGet(names) => Reply::Array(Some(
            config_get(&names)
                .into_iter()
                .flat_map(|(k, v)| [Reply::Bulk(Some(k.into())), Reply::Bulk(Some(v.into()))])
                .collect(),
        )),
        Request::Info => Reply::Bulk(Some(info(ctx).into_bytes())),
        Request::Write(cmd) => propose(ctx, cmd).await,
        Request::Get(key) => read(ctx, Box::new(move |kv| bulk(kv.get(&key)))).await,
        Request::StrLen(key) => {
            read(
                ctx,
                Box::new(move |kv| match kv.get(&key) {
                    Ok(v) => Reply::Integer(v.map_or(0, |v| v.len() as i64)),
                    Err(e) => read_failed(e),
                }),
            )
            .await
        }
        Request::MGet(keys) => {
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
            .await
        }
        Request::Exists(keys) => {
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
            .await
        }
        Request::DbSize => read(ctx, Box::new(|kv| count_keys(kv))).await,
    };
    (reply, false)
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

fn bulk(v: Result<Option<Vec<u8>>, fsm::FsmError>) -> Reply {
    v.map_or_else(read_failed, Reply::Bulk)
}

fn count_keys<E: Engine>(kv: &Kv<E>) -> Reply {
    const PAGE: usize = 4096;
    let mut n = 0i64;
    let mut start: Vec<u8> = Vec::new();
    loop {
        let page = match kv.engine().scan(&start, None, PAGE) {
            Ok(page) => page,
            Err(e) => return read_failed(e),
        };
        n += page.len() as i64;
        match page.last() {
            Some((last, _)) if page.len() == PAGE => {
                // The smallest key after `last`.
                start = last.clone();
                start.push(0);
            }
            _ => return Reply::Integer(n),
        }
    }
}

async fn propose<E: Engine>(ctx: &ClientContext<E>, cmd: Command) -> Reply {
    let command = cmd.to_bytes();
    // Refused here, before raft: an entry larger than a peer frame can carry would be retransmitted
    // and refused forever, and no write after it would ever commit (crate::limits).
    if command.len() > MAX_COMMAND_BYTES {
        return Reply::Error(Refusal::TooLarge { bytes: command.len() }.to_string());
    }
    let (tx, rx) = oneshot::channel();
    if ctx.inputs.send(Input::Propose { command, reply: tx }).await.is_err() {
        // The raft loop is gone and the write never entered its queue.
        return Reply::Error(Refusal::NotProposed.to_string());
    }
    let waited = match tokio::time::timeout(ctx.request_timeout, rx).await {
        Ok(Ok(answer)) => Waited::Answered(answer),
        Ok(Err(_)) => Waited::Abandoned,
        Err(_) => Waited::TimedOut,
    };
    write_reply(waited, ctx.request_timeout)
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
        Waited::Answered(Ok(reply)) => match reply {
            fsm::Reply::Ok => Reply::ok(),
            fsm::Reply::NotWritten => Reply::Bulk(None),
            fsm::Reply::Int(n) => Reply::Integer(n),
            fsm::Reply::Error(text) => Reply::Error(text),
            fsm::Reply::AlreadyApplied => {
                Reply::Error("ERR internal: the write's entry was applied before it was proposed".into())
            }
        },
        Waited::Answered(Err(refusal)) => Reply::Error(refusal.to_string()),
        Waited::Abandoned => Reply::Error(Refusal::Stopped.to_string()),
        Waited::TimedOut => Reply::Error(format!(
            "TIMEOUT the write was not confirmed within {timeout:?}; it may or may not have been applied"
        )),
    }
}

async fn read<E: Engine>(ctx: &ClientContext<E>, read: ReadFn<E>) -> Reply {
    let (tx, rx) = oneshot::channel();
    if ctx.inputs.send(Input::Read { read, reply: tx }).await.is_err() {
        return stopping();
    }
    match tokio::time::timeout(ctx.request_timeout, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => stopping(),
        Err(_) => Reply::Error(format!(
            "TIMEOUT no quorum confirmed the read within {:?} (is a majority of the cluster up?)",
            ctx.request_timeout
        )),
    }
}

/// A read the node could not serve because it is stopping (a read changes nothing, so failing it is
/// always safe).
fn stopping() -> Reply {
    Reply::Error("ERR the node is shutting down".into())
}

/// INFO in Redis's `field:value` form.
fn info<E: Engine>(ctx: &ClientContext<E>) -> String {
    let s = ctx.status.borrow().clone();
    let leader_resp = ctx.peers.get(&s.leader_id).map(|p| p.resp_addr.to_string()).unwrap_or_default();
    let mut text = String::new();
    let mut section = |name: &str, fields: &[(&str, String)]| {
        text.push_str(&format!("# {name}\r\n"));
        for (k, v) in fields {
            text.push_str(&format!("{k}:{v}\r\n"));
        }
        text.push_str("\r\n");
    };
    section(
        "Server",
        &[
            ("durakv_version", env!("CARGO_PKG_VERSION").to_string()),
            ("node_id", ctx.node_id.to_string()),
            ("cluster_id", ctx.cluster_id.to_string()),
        ],
    );
    section(
        "Raft",
        &[
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
            ("members", ctx.peers.keys().map(u64::to_string).collect::<Vec<_>>().join(",")),
        ],
    );
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
