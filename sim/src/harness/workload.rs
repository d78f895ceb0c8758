//! The clients: the workload's Redis commands, recorded as operations of the history.

use super::*;

/// Send one command to a server, on a connection of its own, and wait for its reply.
pub(super) async fn call(addr: SocketAddr, args: &[&[u8]], timeout: Duration) -> Result<Reply, CallError> {
    let Some(mut session) = Session::open(addr).await else { return Err(CallError::NotSent) };
    session.call(args, timeout).await
}

pub(super) enum CallError {
    /// The request never left: the operation certainly did not happen.
    NotSent,
    /// Sent, but no reply: it may or may not have happened.
    NoReply,
}

/// A client: operations from the scenario's mix on its key space, at its rate, until the end.
pub(super) async fn client_loop(scenario: Scenario, seed: u64, c: u64, end_ms: u64, w: Shared) {
    client_ops(scenario, seed, c, end_ms, w.clone()).await;
    // Its history is complete: checks that need every operation recorded wait for this.
    world(&w).clients_done += 1;
}

async fn client_ops(scenario: Scenario, seed: u64, c: u64, end_ms: u64, w: Shared) {
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &format!("client/{c}")));
    // Value sizes come from a stream of their own, so the choice of operations, servers and keys
    // does not depend on them.
    let mut sizes = ChaCha8Rng::seed_from_u64(derive_seed(seed, &format!("client/{c}/sizes")));
    let mut special = ChaCha8Rng::seed_from_u64(derive_seed(seed, &format!("client/{c}/special")));
    // Expiring keys draw from a stream of their own too.
    let mut expiring = ChaCha8Rng::seed_from_u64(derive_seed(seed, &format!("client/{c}/ttl")));
    let (behind, ahead) = scenario.clock_skew_bounds();
    let wl = &scenario.workload;
    let per_client = (wl.rate_per_sec / wl.clients.max(1)).max(1);
    let gap = Duration::from_micros(1_000_000 / per_client);
    let mix = [
        ("set", wl.mix.set),
        ("get", wl.mix.get),
        ("del", wl.mix.del),
        ("incr", wl.mix.incr),
        ("mset", wl.mix.mset),
        ("append", wl.mix.append),
        ("list", wl.mix.list),
        ("counter", wl.mix.counter),
        ("ttl", wl.mix.ttl),
        ("cas", wl.mix.cas),
    ];
    let total: u32 = mix.iter().map(|(_, n)| n).sum();
    let timeout = Duration::from_millis(wl.timeout_ms);
    let mut seq = 0u64;
    while now_ms() < end_ms {
        tokio::time::sleep(gap).await;
        seq += 1;
        let mut pick = rng.random_range(0..total.max(1));
        let kind = mix
            .iter()
            .find(|(_, n)| {
                if pick < *n {
                    true
                } else {
                    pick -= n;
                    false
                }
            })
            .map_or("get", |(k, _)| *k);
        let server = rng.random_range(1..=scenario.cluster.nodes);
        let addr = SocketAddr::new(server_ip(server), RESP_PORT);
        // List and counter operations draw from their own stream, so adding them to a mix leaves
        // the rest of a client's draws as they were.
        let (kind, key) = match kind {
            "list" | "counter" => {
                let n = if kind == "list" { wl.lists } else { wl.counters };
                let key = format!("{}{}", &kind[..1], special.random_range(0..n.max(1))).into_bytes();
                let write = special.random_range(0..4) > 0;
                (
                    if !write {
                        "get"
                    } else if kind == "list" {
                        "append"
                    } else {
                        "incr"
                    },
                    key,
                )
            }
            "ttl" => {
                let key = format!("t{}", expiring.random_range(0..wl.ttl_keys.max(1))).into_bytes();
                let op = match expiring.random_range(0..6) {
                    0..=2 => "set_px",
                    3 | 4 => "get",
                    _ if expiring.random_bool(0.5) => "set",
                    _ => "del",
                };
                (op, key)
            }
            _ => (kind, format!("k{}", rng.random_range(0..wl.keys.max(1))).into_bytes()),
        };
        // Most expire within the run; one in four outlives it, so the final state holds deadlines
        // every replica must have computed alike.
        let ttl_ms = match kind {
            "set_px" if expiring.random_range(0..4) == 0 => expiring.random_range(30_000..=60_000u64),
            "set_px" => expiring.random_range(100..=3000u64),
            _ => 0,
        };
        // Values are unique integers, so INCR applies to any key and every write is identifiable.
        // Some are padded with leading zeros to a large size (still integers); rarely a SET's is just
        // over the largest write a node takes, which the node must refuse.
        let size = match kind {
            "set" | "mset" => draw_size(&mut sizes, wl.large_values_per_mille, kind == "set"),
            _ => ValueSize::Small,
        };
        let n = c * 1_000_000_000 + seq;
        let value = match size {
            // A list key's element: a token no other operation writes, so a duplicate or a loss shows.
            _ if special_key(&key, b'l') => list_token(c, seq),
            ValueSize::Small => n.to_string().into_bytes(),
            ValueSize::Large(len) => zero_padded(n, len),
            ValueSize::TooLarge => zero_padded(n, MAX_COMMAND_BYTES + 1),
        };
        if kind == "cas" {
            compare_and_set(&w, c, server, addr, &key, &value, timeout).await;
            continue;
        }
        let call_t = now_ms();
        let (effects, reply): (Vec<(Vec<u8>, RegisterOp)>, _) = match kind {
            "set" => (
                vec![(key.clone(), RegisterOp::Write(Some(value.clone())))],
                call(addr, &[b"SET", &key, &value], timeout).await,
            ),
            "del" => {
                (vec![(key.clone(), RegisterOp::Write(None))], call(addr, &[b"DEL", &key], timeout).await)
            }
            "set_px" => {
                // Its deadline is the leader's clock when it appends the entry, plus the time to live:
                // no earlier than the call by the slowest clock; it is surely past once the client
                // has its answer, plus the time to live, by the fastest clock, plus the time the
                // slowest leader's clock needs to get there (see `RegisterOp::WriteExpiring`).
                let vanish_from = (call_t + ttl_ms).saturating_sub(behind + ahead);
                let op = RegisterOp::WriteExpiring { value: value.clone(), ttl_ms, vanish_from, gone_by: 0 };
                let ttl = ttl_ms.to_string().into_bytes();
                (vec![(key.clone(), op)], call(addr, &[b"SET", &key, &value, b"PX", &ttl], timeout).await)
            }
            "incr" => (
                vec![(key.clone(), RegisterOp::Incr { delta: 1, result: None })],
                call(addr, &[b"INCR", &key], timeout).await,
            ),
            "mset" => {
                let key2 = format!("k{}", rng.random_range(0..wl.keys.max(1))).into_bytes();
                if key2 == key {
                    continue;
                }
                (
                    vec![
                        (key.clone(), RegisterOp::Write(Some(value.clone()))),
                        (key2.clone(), RegisterOp::Write(Some(value.clone()))),
                    ],
                    call(addr, &[b"MSET", &key, &value, &key2, &value], timeout).await,
                )
            }
            "append" => (
                vec![(key.clone(), RegisterOp::Append { suffix: value.clone(), len: None })],
                call(addr, &[b"APPEND", &key, &value], timeout).await,
            ),
            _ => (vec![(key.clone(), RegisterOp::Read(None))], call(addr, &[b"GET", &key], timeout).await),
        };
        let ret = now_ms();
        let outcome = match &reply {
            Ok(r) => outcome_of(r),
            Err(CallError::NotSent) => Outcome::Fail,
            Err(CallError::NoReply) => Outcome::Unknown,
        };
        if size == ValueSize::TooLarge {
            match &reply {
                Ok(Reply::Error(e)) if e.starts_with("ERR write too large to replicate") => event(
                    &w,
                    format!("client {c}: a {}-byte SET to server {server} refused as too large", value.len()),
                ),
                // Anything else (an OK, a TIMEOUT, another error) means the write reached raft, or the
                // node answered for another reason than its size.
                Ok(r) => world(&w).violations.push(format!(
                    "client {c}: a SET of a {}-byte value to server {server} at {call_t} ms was answered {r:?}, not refused as too large to replicate",
                    value.len()
                )),
                // Not sent, or no reply (the server went down): nothing learned about its limits.
                Err(_) => {}
            }
        }
        let effects: Vec<(Vec<u8>, RegisterOp)> = effects
            .into_iter()
            .map(|(key, op)| {
                let op = match (op, &reply) {
                    (RegisterOp::Read(_), Ok(Reply::Bulk(v))) => RegisterOp::Read(v.clone()),
                    (RegisterOp::Incr { delta, .. }, Ok(Reply::Integer(n))) => {
                        RegisterOp::Incr { delta, result: Some(*n) }
                    }
                    (RegisterOp::Append { suffix, .. }, Ok(Reply::Integer(n))) => {
                        RegisterOp::Append { suffix, len: Some(*n) }
                    }
                    (RegisterOp::WriteExpiring { value, ttl_ms, vanish_from, .. }, _) => {
                        RegisterOp::WriteExpiring {
                            value,
                            ttl_ms,
                            vanish_from,
                            gone_by: ret + ttl_ms + behind + ahead,
                        }
                    }
                    (op, _) => op,
                };
                (key, op)
            })
            .collect();
        // A read with no answer says nothing.
        if effects.iter().all(|(_, op)| matches!(op, RegisterOp::Read(_))) && outcome != Outcome::Ok {
            continue;
        }
        world(&w).history.push(Operation { client: c, server, effects, call: call_t, ret, outcome });
    }
}

/// One client connection for a sequence of commands (WATCH holds per connection).
struct Session {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Session {
    async fn open(addr: SocketAddr) -> Option<Session> {
        let connect = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await;
        Some(Session { stream: connect.ok()?.ok()?, buf: Vec::new() })
    }

    async fn call(&mut self, args: &[&[u8]], timeout: Duration) -> Result<Reply, CallError> {
        // madsim's stream sends on flush.
        if self.stream.write_all(&encode_command(args)).await.is_err() || self.stream.flush().await.is_err() {
            return Err(CallError::NotSent);
        }
        let (stream, buf) = (&mut self.stream, &mut self.buf);
        let read = async {
            loop {
                if let Ok(Some((reply, used))) = decode_reply(buf) {
                    buf.drain(..used);
                    return Some(reply);
                }
                buf.reserve(4096);
                match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Some(reply)) => Ok(reply),
            _ => Err(CallError::NoReply),
        }
    }
}

/// WATCH `key`, GET it, MULTI, SET `value`, EXEC, on one connection: an optimistic compare-and-set.
/// Recorded as the GET (a read) and, unless EXEC aborted or certainly failed, a write of `value`
/// conditional on the key still holding what the GET returned. A step that fails before EXEC drops
/// the connection, and with it the transaction (nothing was applied).
async fn compare_and_set(
    w: &Shared,
    c: u64,
    server: u64,
    addr: SocketAddr,
    key: &[u8],
    value: &[u8],
    timeout: Duration,
) {
    let Some(mut s) = Session::open(addr).await else { return };
    if !matches!(s.call(&[b"WATCH", key], timeout).await, Ok(Reply::Simple(_))) {
        return;
    }
    let get_call = now_ms();
    let Ok(Reply::Bulk(expected)) = s.call(&[b"GET", key], timeout).await else { return };
    let read = RegisterOp::Read(expected.clone());
    world(w)
        .history
        .push(Operation { server, ..Operation::single(c, key, read, get_call, now_ms(), Outcome::Ok) });
    if !matches!(s.call(&[b"MULTI"], timeout).await, Ok(Reply::Simple(_)))
        || !matches!(s.call(&[b"SET", key, value], timeout).await, Ok(Reply::Simple(_)))
    {
        return;
    }
    let exec_call = now_ms();
    let reply = s.call(&[b"EXEC"], timeout).await;
    let outcome = match &reply {
        Ok(Reply::Array(Some(_))) => Outcome::Ok,
        // Aborted: a watched key changed; nothing was applied.
        Ok(Reply::Array(None)) => return,
        Ok(r) => outcome_of(r),
        Err(CallError::NotSent) => Outcome::Fail,
        Err(CallError::NoReply) => Outcome::Unknown,
    };
    let cas = RegisterOp::CompareAndSet { expected, new: value.to_vec() };
    world(w)
        .history
        .push(Operation { server, ..Operation::single(c, key, cas, exec_call, now_ms(), outcome) });
}

/// Is `key` one of the workload's list (`l<n>`) or counter (`c<n>`) keys?
pub(super) fn special_key(key: &[u8], prefix: u8) -> bool {
    key.len() > 1 && key[0] == prefix && key[1..].iter().all(u8::is_ascii_digit)
}

/// The element client `c` appends to a list key with its operation `seq`: `c.seq;`.
pub fn list_token(c: u64, seq: u64) -> Vec<u8> {
    format!("{c}.{seq};").into_bytes()
}

/// The size of a write's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ValueSize {
    /// The bare integer.
    Small,
    /// Padded to this many bytes.
    Large(usize),
    /// Just over the largest write a node takes.
    TooLarge,
}

/// `n` in decimal, with leading zeros up to `len` bytes: still an integer to INCR and to the checker.
pub(super) fn zero_padded(n: u64, len: usize) -> Vec<u8> {
    let digits = n.to_string();
    let mut out = vec![b'0'; len.saturating_sub(digits.len())];
    out.extend_from_slice(digits.as_bytes());
    out
}

/// Draw a value size: `per_mille` of them large, and one in 64 of those too large when allowed.
pub(super) fn draw_size(rng: &mut ChaCha8Rng, per_mille: u32, too_large_allowed: bool) -> ValueSize {
    if rng.random_range(0..1000) >= per_mille {
        return ValueSize::Small;
    }
    if too_large_allowed && rng.random_range(0..64) == 0 {
        return ValueSize::TooLarge;
    }
    ValueSize::Large(rng.random_range(1 << 10..=256 << 10))
}

pub(super) async fn info(id: u64) -> Option<BTreeMap<String, String>> {
    match call(SocketAddr::new(server_ip(id), RESP_PORT), &[b"INFO"], Duration::from_secs(1)).await {
        Ok(Reply::Bulk(Some(text))) => Some(crate::client::info_fields(&text)),
        _ => None,
    }
}

pub(super) async fn find_leader(up: &[u64]) -> Option<u64> {
    for &id in up {
        if info(id).await.is_some_and(|i| i.get("role").map(String::as_str) == Some("leader")) {
            return Some(id);
        }
    }
    None
}
