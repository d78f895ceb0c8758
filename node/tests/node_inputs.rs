//! A real single-node `durakv` process fed bad input, and started in bad conditions.
//!
//! Failures injected: malformed RESP, an oversized bulk string, an unknown command, clients without
//! or with the wrong password, a peer of another cluster, a port already in use, a corrupt WAL, a bad
//! config value, a data directory that cannot be created. Invariants: every bad input gets a clear
//! error reply (or a refused connection for a foreign peer) and the node keeps serving; every bad
//! start exits non-zero with a message naming the cause (the field, the address, the file and offset).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().expect("local addr").port()
}

struct One {
    resp: u16,
    peer: u16,
    data: PathBuf,
    child: Option<Child>,
}

fn args(resp: u16, peer: u16, data: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--id".into(),
        "1".into(),
        "--peers".into(),
        format!("1=127.0.0.1:{peer},127.0.0.1:{resp}"),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

impl One {
    fn start(dir: &Path, extra: &[&str]) -> One {
        let (resp, peer) = (free_port(), free_port());
        let data = dir.join("node1");
        let child = Command::new(env!("CARGO_BIN_EXE_durakv"))
            .args(args(resp, peer, &data, extra))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start durakv");
        let one = One { resp, peer, data, child: Some(child) };
        // Serving once a write goes through (a single node elects itself).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(reply) = one.try_exchange(b"*3\r\n$3\r\nSET\r\n$5\r\nready\r\n$1\r\n1\r\n")
                && reply.starts_with("+OK")
            {
                return one;
            }
            assert!(Instant::now() < deadline, "the node did not start serving");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_exchange(&self, request: &[u8]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.resp))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request)?;
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Send raw bytes, return the first reply.
    fn exchange(&self, request: &[u8]) -> String {
        self.try_exchange(request).expect("a reply")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill");
            c.wait().expect("reap");
        }
    }
}

impl Drop for One {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_to_exit(resp: u16, peer: u16, data: &Path, extra: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_durakv"))
        .args(args(resp, peer, data, extra))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start durakv");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("poll").is_none() {
        if Instant::now() > deadline {
            child.kill().expect("kill");
            panic!("durakv kept running where it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn malformed_oversized_and_unknown_requests_get_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = One::start(dir.path(), &["--max-bulk-bytes", "1024"]);

    let bad_len = node.exchange(b"*2\r\n$3\r\nGET\r\n$x\r\n");
    assert!(bad_len.starts_with("-ERR Protocol error"), "{bad_len}");
    let oversized = node.exchange(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4096\r\n");
    assert!(oversized.starts_with("-ERR Protocol error"), "{oversized}");
    let unknown = node.exchange(b"*1\r\n$7\r\nFLUSHED\r\n");
    assert_eq!(unknown, "-ERR unknown command 'FLUSHED', with args beginning with: \r\n");
    let arity = node.exchange(b"*1\r\n$3\r\nGET\r\n");
    assert!(arity.starts_with("-ERR wrong number of arguments for 'get'"), "{arity}");
    let not_int = node.exchange(b"*3\r\n$6\r\nINCRBY\r\n$1\r\nn\r\n$3\r\nabc\r\n");
    assert!(not_int.starts_with("-ERR value is not an integer"), "{not_int}");

    // Still serving, and nothing written was lost to the bad requests.
    assert_eq!(node.exchange(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"), "+OK\r\n");
    assert_eq!(node.exchange(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), "$1\r\nv\r\n");
    assert_eq!(node.exchange(b"*2\r\n$3\r\nGET\r\n$5\r\nready\r\n"), "$1\r\n1\r\n");
    assert_eq!(node.exchange(b"PING\r\n"), "+PONG\r\n", "inline commands work too");
}

/// Send `request` on one connection and read until the replies end with `tail` (or 10 s pass).
fn exchange_until(resp: u16, request: &[u8], tail: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", resp)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    s.write_all(request).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    while !String::from_utf8_lossy(&got).ends_with(tail) && Instant::now() < deadline {
        if let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Failure guarded against: a client library that cannot connect with its defaults (redis-py 8 and
/// redis-rs with RESP3 open with `HELLO 3`; libraries announce themselves with `CLIENT SETINFO`),
/// and replies shifted by one after an empty request. Invariants: HELLO switches the connection to
/// RESP3 (maps, `_` nulls) and reports the protocol; an empty request gets no reply; the client
/// commands tools use answer; redis-rs over RESP3 and (where Python has it) redis-py 8 with default
/// settings read and write.
#[test]
fn current_client_libraries_connect_with_their_defaults() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = One::start(dir.path(), &[]);

    // RESP3 on one connection: the HELLO map, a `_` null, CONFIG GET as a map.
    let wire = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*2\r\n$3\r\nGET\r\n$4\r\nnone\r\n*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$10\r\nappendonly\r\n";
    let got = exchange_until(node.resp, wire, "$2\r\nno\r\n");
    assert!(got.starts_with('%'), "HELLO 3 answers with a map: {got:?}");
    assert!(got.contains("$5\r\nproto\r\n:3\r\n"), "{got:?}");
    assert!(got.contains("_\r\n%1\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"), "{got:?}");
    // An empty request is skipped, so PING's reply is the first and only one.
    assert_eq!(exchange_until(node.resp, b"*0\r\n\r\n*-1\r\nPING\r\n", "+PONG\r\n"), "+PONG\r\n");
    let count = node.exchange(b"*2\r\n$7\r\nCOMMAND\r\n$5\r\nCOUNT\r\n");
    assert!(count.starts_with(':') && count != ":0\r\n", "{count}");
    let info = node.exchange(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n");
    assert!(info.contains("redis_version:") && !info.contains("# Raft"), "{info}");

    // redis-rs speaking RESP3.
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{}/?protocol=resp3", node.resp)).expect("url");
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).expect("RESP3 connection");
    redis::cmd("SET").arg("r3").arg("v").query::<()>(&mut con).expect("SET over RESP3");
    let v: Option<String> = redis::cmd("GET").arg("r3").query(&mut con).expect("GET over RESP3");
    assert_eq!(v.as_deref(), Some("v"));
    let missing: Option<String> = redis::cmd("GET").arg("nothing").query(&mut con).expect("a RESP3 null");
    assert_eq!(missing, None);
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut con).expect("CLIENT ID");
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).expect("CLIENT LIST");
    assert!(list.contains(&format!("id={id} ")) && list.contains("resp=3"), "{list}");

    // redis-py 8, default settings (it opens with HELLO 3 and CLIENT SETINFO).
    let script = format!(
        "import redis\nr = redis.Redis(port={})\nassert r.ping()\nr.set('py', 'x')\nassert r.get('py') == b'x'\nassert r.incr('pyn') == 1\nassert r.get('nope') is None\nassert 'redis_version' in r.info()\nprint(r.connection_pool.connection_kwargs.get('protocol'), r.client_info().get('lib-name'))\n",
        node.resp
    );
    match Command::new("python3")
        .args(["-c", "import redis, sys; sys.exit(0 if int(redis.__version__.split('.')[0]) >= 8 else 1)"])
        .status()
    {
        Ok(s) if s.success() => {
            let out = Command::new("python3").args(["-c", &script]).output().expect("python3 runs");
            assert!(out.status.success(), "redis-py: {}", String::from_utf8_lossy(&out.stderr));
        }
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-py 8 is missing: `make deps` installs it (pip install redis)"
            );
            eprintln!("SKIPPED the redis-py half: no redis-py 8 (pip install 'redis>=8')");
        }
    }

    // ioredis 5 (Node.js), default settings: its ready check reads INFO's `loading`; a transaction
    // and a pipeline as its users write them.
    let npm_dir = std::env::var_os("DURAKV_NPM_DIR").map_or_else(
        || std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/durakv/npm"),
        std::path::PathBuf::from,
    );
    let modules = npm_dir.join("node_modules");
    if modules.join("ioredis").exists() {
        let script = format!(
            "const Redis = require('ioredis'); const r = new Redis({});\n\
             (async () => {{\n\
               await r.set('io', 'x');\n\
               const got = [await r.get('io'), await r.incr('ion'), await r.get('nope')];\n\
               const tx = await r.multi().set('t', '1').incr('t').get('t').exec();\n\
               const p = await r.pipeline().get('t').getset('io', 'y').exec();\n\
               console.log(JSON.stringify({{ got, tx, p }}));\n\
               r.disconnect();\n\
             }})().catch((e) => {{ console.error(e); process.exit(1); }});\n",
            node.resp
        );
        let out = Command::new("node")
            .args(["-e", &script])
            .env("NODE_PATH", &modules)
            .output()
            .expect("node runs");
        assert!(out.status.success(), "ioredis: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            r#"{"got":["x",1,null],"tx":[[null,"OK"],[null,2],[null,"2"]],"p":[[null,"2"],[null,"x"]]}"#
        );
    } else {
        assert!(std::env::var_os("CI").is_none(), "ioredis is missing: `make deps` installs it (npm)");
        eprintln!("SKIPPED the ioredis half: no ioredis in {} (make deps installs it)", modules.display());
    }
}

/// Failure guarded against: pipelined commands answered out of order, or a pipelined read that
/// misses a write sent before it on the same connection (or sees one sent after it). Invariants:
/// 300 pipelined INCRs answer 1..=300 in order; in `SET a 1, GET a, SET a 2, GET a, INCR n, GET n`
/// sent in one write, every GET sees exactly the writes before it.
#[test]
fn pipelined_commands_answer_in_order_and_reads_see_the_writes_before_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = One::start(dir.path(), &[]);
    let mut wire = Vec::new();
    for _ in 0..300 {
        wire.extend_from_slice(b"*2\r\n$4\r\nINCR\r\n$3\r\nctr\r\n");
    }
    let got = exchange_until(node.resp, &wire, ":300\r\n");
    let want: String = (1..=300).map(|i| format!(":{i}\r\n")).collect();
    assert_eq!(got, want);
    let mixed = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n2\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*2\r\n$3\r\nGET\r\n$1\r\nn\r\n";
    let got = exchange_until(node.resp, mixed, ":1\r\n$1\r\n1\r\n");
    assert_eq!(got, "+OK\r\n$1\r\n1\r\n+OK\r\n$1\r\n2\r\n:1\r\n$1\r\n1\r\n");
}

/// Failure guarded against: keyspace commands that miss keys, repeat them, or disagree with Redis
/// (a SCAN that loses a key present for the whole iteration; FLUSHALL that leaves keys behind).
/// Invariants: KEYS and a full SCAN (COUNT 2, MATCH) return exactly the matching keys; TYPE,
/// GETRANGE and SETNX answer as Redis; FLUSHALL (one raft entry) empties the database.
#[test]
fn keyspace_commands_answer_as_redis() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = One::start(dir.path(), &[]);
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", node.resp)).expect("url");
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connection");
    for i in 0..25 {
        redis::cmd("SET").arg(format!("user:{i}")).arg(format!("v{i}")).query::<()>(&mut con).expect("SET");
    }
    redis::cmd("SET").arg("other").arg("Hello World").query::<()>(&mut con).expect("SET");
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("user:*").query(&mut con).expect("KEYS");
    keys.sort();
    let mut want: Vec<String> = (0..25).map(|i| format!("user:{i}")).collect();
    want.sort();
    assert_eq!(keys, want);
    let mut scanned = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("user:*")
            .arg("COUNT")
            .arg(2)
            .query(&mut con)
            .expect("SCAN");
        // A key written during the iteration must not disturb it.
        redis::cmd("SET").arg(format!("late:{next}")).arg("x").query::<()>(&mut con).expect("SET");
        scanned.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    scanned.sort();
    assert_eq!(scanned, want, "every key present for the whole SCAN, once");
    let t: String = redis::cmd("TYPE").arg("other").query(&mut con).expect("TYPE");
    let none: String = redis::cmd("TYPE").arg("absent").query(&mut con).expect("TYPE");
    assert_eq!((t.as_str(), none.as_str()), ("string", "none"));
    let sub: String = redis::cmd("GETRANGE").arg("other").arg(-5).arg(-1).query(&mut con).expect("GETRANGE");
    assert_eq!(sub, "World");
    let first: i64 = redis::cmd("SETNX").arg("nx").arg("1").query(&mut con).expect("SETNX");
    let second: i64 = redis::cmd("SETNX").arg("nx").arg("2").query(&mut con).expect("SETNX");
    assert_eq!((first, second), (1, 0));
    redis::cmd("FLUSHALL").query::<()>(&mut con).expect("FLUSHALL");
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).expect("DBSIZE");
    assert_eq!(n, 0);
    let bad = node.exchange(b"*2\r\n$4\r\nSCAN\r\n$2\r\n77\r\n");
    assert_eq!(bad, "-ERR invalid cursor\r\n");
}

/// The string and keyspace writes added for Redis's own test units (GETSET, SET … GET, GETDEL,
/// RENAME/RENAMENX, COPY, MSETNX, SETRANGE, INCRBYFLOAT) answer as Redis 7.2 does, through raft.
#[test]
fn string_writes_answer_as_redis() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = One::start(dir.path(), &[]);
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", node.resp)).expect("url");
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connection");
    let old: Option<String> = redis::cmd("GETSET").arg("k").arg("1").query(&mut con).expect("GETSET");
    assert_eq!(old, None);
    let old: Option<String> =
        redis::cmd("SET").arg("k").arg("2").arg("NX").arg("GET").query(&mut con).expect("SET GET");
    assert_eq!(old.as_deref(), Some("1"));
    let gone: Option<String> = redis::cmd("GETDEL").arg("k").query(&mut con).expect("GETDEL");
    assert_eq!(gone.as_deref(), Some("1"));
    let err = redis::cmd("RENAME").arg("k").arg("j").query::<()>(&mut con).expect_err("RENAME of nothing");
    assert!(err.to_string().contains("no such key"), "{err}");
    redis::cmd("MSET").arg("a").arg("x").arg("b").arg("y").query::<()>(&mut con).expect("MSET");
    let nx: i64 = redis::cmd("RENAMENX").arg("a").arg("b").query(&mut con).expect("RENAMENX");
    assert_eq!(nx, 0);
    redis::cmd("RENAME").arg("a").arg("c").query::<()>(&mut con).expect("RENAME");
    let copied: i64 = redis::cmd("COPY").arg("c").arg("b").arg("REPLACE").query(&mut con).expect("COPY");
    let b: String = redis::cmd("GET").arg("b").query(&mut con).expect("GET");
    assert_eq!((copied, b.as_str()), (1, "x"));
    let all: i64 = redis::cmd("MSETNX").arg("m1").arg("1").arg("b").arg("2").query(&mut con).expect("MSETNX");
    let m1: Option<String> = redis::cmd("GET").arg("m1").query(&mut con).expect("GET");
    assert_eq!((all, m1), (0, None));
    let len: i64 = redis::cmd("SETRANGE").arg("r").arg(6).arg("World").query(&mut con).expect("SETRANGE");
    let r: Vec<u8> = redis::cmd("GET").arg("r").query(&mut con).expect("GET");
    assert_eq!((len, r), (11, b"\0\0\0\0\0\0World".to_vec()));
    let f: String = redis::cmd("INCRBYFLOAT").arg("f").arg("10.50").query(&mut con).expect("INCRBYFLOAT");
    let g: String = redis::cmd("INCRBYFLOAT").arg("f").arg("0.1").query(&mut con).expect("INCRBYFLOAT");
    assert_eq!((f.as_str(), g.as_str()), ("10.5", "10.6"));
    let bad = node.exchange(b"*3\r\n$11\r\nINCRBYFLOAT\r\n$1\r\nf\r\n$3\r\nabc\r\n");
    assert_eq!(bad, "-ERR value is not a valid float\r\n");
}

/// Expiry as a Redis client sees it, against a real node: TTL and PTTL count down, EXPIRE and its
/// options, PERSIST, SETEX, GETEX, and a key past its deadline gone from GET, EXISTS, KEYS and, once
/// the leader's sweep has removed it, from DBSIZE and INFO's `expired_keys` too (no client touched
/// it: the sweep, not a read, deleted it).
#[test]
fn keys_expire_on_their_own_as_redis() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = One::start(dir.path(), &[]);
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", node.resp)).expect("url");
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connection");
    let int = |con: &mut redis::Connection, args: &[&str]| -> i64 {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(con).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    redis::cmd("FLUSHALL").query::<()>(&mut con).expect("FLUSHALL");
    redis::cmd("SET").arg("short").arg("v").arg("PX").arg(400).query::<()>(&mut con).expect("SET PX");
    redis::cmd("SETEX").arg("long").arg(100).arg("v").query::<()>(&mut con).expect("SETEX");
    redis::cmd("SET").arg("plain").arg("v").query::<()>(&mut con).expect("SET");
    let pttl = int(&mut con, &["PTTL", "short"]);
    assert!((1..=400).contains(&pttl), "PTTL {pttl}");
    assert_eq!(int(&mut con, &["TTL", "long"]), 100);
    assert_eq!(int(&mut con, &["TTL", "plain"]), -1);
    assert_eq!(int(&mut con, &["TTL", "missing"]), -2);
    assert_eq!(int(&mut con, &["EXPIRE", "plain", "50", "XX"]), 0);
    assert_eq!(int(&mut con, &["EXPIRE", "plain", "50", "NX"]), 1);
    assert_eq!(int(&mut con, &["EXPIRE", "plain", "10", "GT"]), 0);
    assert_eq!(int(&mut con, &["PERSIST", "plain"]), 1);
    assert_eq!(int(&mut con, &["TTL", "plain"]), -1);
    let at = int(&mut con, &["EXPIRETIME", "long"]);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!((now + 98..=now + 101).contains(&at), "EXPIRETIME {at}, now {now}");
    let v: Option<String> = redis::cmd("GETEX").arg("long").arg("PERSIST").query(&mut con).expect("GETEX");
    assert_eq!((v.as_deref(), int(&mut con, &["TTL", "long"])), (Some("v"), -1));
    assert_eq!(int(&mut con, &["DBSIZE"]), 3);
    // Past the deadline: gone for every read at once, and removed by the sweep soon after.
    std::thread::sleep(Duration::from_millis(500));
    let gone: Option<String> = redis::cmd("GET").arg("short").query(&mut con).expect("GET");
    assert_eq!((gone, int(&mut con, &["EXISTS", "short"])), (None, 0));
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).expect("KEYS");
    assert!(!keys.contains(&"short".to_string()), "{keys:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while int(&mut con, &["DBSIZE"]) != 2 {
        assert!(Instant::now() < deadline, "the sweep never removed the expired key");
        std::thread::sleep(Duration::from_millis(50));
    }
    let info: String = redis::cmd("INFO").arg("stats").query(&mut con).expect("INFO");
    assert!(info.contains("expired_keys:1"), "{info}");
    // A deadline in the past deletes at once; a bad time is Redis's error.
    assert_eq!(int(&mut con, &["PEXPIREAT", "plain", "1"]), 1);
    assert_eq!(int(&mut con, &["EXISTS", "plain"]), 0);
    let bad = node.exchange(b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nEX\r\n");
    assert_eq!(bad, "-ERR syntax error\r\n");
    let bad = node.exchange(b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nEX\r\n$1\r\n0\r\n");
    assert_eq!(bad, "-ERR invalid expire time in 'set' command\r\n");
}

/// Optimistic locking as clients use it: redis-rs's `transaction` helper (WATCH, read, MULTI, write,
/// EXEC, and again while EXEC answers nil) run by two connections at once, each adding one to a
/// counter 40 times by a read and a write of their own. Invariant: no update is lost (the final count
/// is 80: a transaction whose watched key changed after the read applies nothing); a write by
/// another connection between WATCH and EXEC makes EXEC answer nil; WATCH inside MULTI is refused
/// without dooming the transaction; UNWATCH forgets.
#[test]
fn watch_makes_exec_apply_only_if_nothing_watched_changed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = One::start(dir.path(), &[]);
    let url = format!("redis://127.0.0.1:{}/", node.resp);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = redis::Client::open(url).expect("url");
                let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connection");
                for _ in 0..40 {
                    let () = redis::transaction(&mut con, &["counter"], |con, pipe| {
                        let n: Option<i64> = redis::cmd("GET").arg("counter").query(con)?;
                        // A read and a separate write: only WATCH keeps them from losing updates.
                        pipe.cmd("SET").arg("counter").arg(n.unwrap_or(0) + 1).ignore().query(con)
                    })
                    .expect("transaction");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let client = redis::Client::open(url).expect("url");
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connection");
    let mut other = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connection");
    let n: i64 = redis::cmd("GET").arg("counter").query(&mut con).expect("GET");
    assert_eq!(n, 80, "an update was lost");
    redis::cmd("WATCH").arg("w").query::<()>(&mut con).expect("WATCH");
    redis::cmd("SET").arg("w").arg("theirs").query::<()>(&mut other).expect("SET");
    let aborted: Option<Vec<String>> =
        redis::pipe().atomic().cmd("SET").arg("w").arg("mine").query(&mut con).expect("EXEC");
    let w: String = redis::cmd("GET").arg("w").query(&mut con).expect("GET");
    assert_eq!((aborted, w.as_str()), (None, "theirs"));
    redis::cmd("WATCH").arg("w").query::<()>(&mut con).expect("WATCH");
    redis::cmd("UNWATCH").query::<()>(&mut con).expect("UNWATCH");
    redis::cmd("SET").arg("w").arg("theirs again").query::<()>(&mut other).expect("SET");
    let applied: Option<Vec<String>> =
        redis::pipe().atomic().cmd("SET").arg("w").arg("mine").query(&mut con).expect("EXEC");
    assert_eq!(applied, Some(vec!["OK".to_string()]));
    let inside = exchange_until(
        node.resp,
        b"*1\r\n$5\r\nMULTI\r\n*2\r\n$5\r\nWATCH\r\n$1\r\nw\r\n*3\r\n$3\r\nSET\r\n$1\r\nw\r\n$1\r\n1\r\n*1\r\n$4\r\nEXEC\r\n",
        "*1\r\n+OK\r\n",
    );
    assert_eq!(inside, "+OK\r\n-ERR WATCH inside MULTI is not allowed\r\n+QUEUED\r\n*1\r\n+OK\r\n");
}

/// Failure guarded against: a node whose queues grow with its clients (one more connection, one
/// more pipelined request, each held in memory until raft answers) instead of refusing. Invariants:
/// past `maxclients` a connection gets Redis's error and is closed, and a slot frees when a client
/// leaves; past `max_in_flight` a request is answered `-BUSY` at once (nothing reaches raft) while
/// the requests already in flight complete; INFO counts both.
#[test]
fn maxclients_and_max_in_flight_refuse_instead_of_queueing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = One::start(dir.path(), &["--maxclients", "2", "--max-in-flight", "1"]);
    let open = || {
        let s = TcpStream::connect(("127.0.0.1", node.resp)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s
    };
    let ask = |s: &mut TcpStream, request: &[u8]| -> String {
        s.write_all(request).expect("write");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ping = b"*1\r\n$4\r\nPING\r\n";
    // The readiness probes' connections may still be closing: wait until two can be held.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut a, mut b) = loop {
        let (mut a, mut b) = (open(), open());
        if ask(&mut a, ping) == "+PONG\r\n" && ask(&mut b, ping) == "+PONG\r\n" {
            break (a, b);
        }
        assert!(Instant::now() < deadline, "two connections were never served");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut third = open();
    let mut refused = String::new();
    third.read_to_string(&mut refused).expect("the refusal, then the end of the stream");
    assert_eq!(refused, "-ERR max number of clients reached\r\n");
    // Five writes pipelined: the first is in raft's hands when the others arrive.
    let set = |v: u8| format!("*3\r\n$3\r\nSET\r\n$1\r\np\r\n$1\r\n{}\r\n", v as char);
    let pipeline: String = (b'1'..=b'5').map(set).collect();
    let replies = exchange_on(&mut a, pipeline.as_bytes(), 5);
    assert_eq!(replies[0], "+OK");
    for r in &replies[1..] {
        assert!(r.starts_with("-BUSY "), "{replies:?}");
    }
    assert_eq!(ask(&mut a, b"*2\r\n$3\r\nGET\r\n$1\r\np\r\n"), "$1\r\n1\r\n", "a refused write took effect");
    let info = ask(&mut b, b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n");
    for field in
        ["maxclients:2", "rejected_connections:1", "durakv_busy_replies:4", "durakv_requests_in_flight:0"]
    {
        assert!(info.contains(field), "{field} in {info}");
    }
    // A client leaves: its slot is free for the next.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(&mut open(), ping) != "+PONG\r\n" {
        assert!(Instant::now() < deadline, "a freed slot was never reused");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Send `request` on `s` and read `n` replies (one line each: status, error or integer, or a bulk
/// of one line), without their line ends.
fn exchange_on(s: &mut TcpStream, request: &[u8], n: usize) -> Vec<String> {
    s.write_all(request).expect("write");
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 4096];
    while got.matches("\r\n").count() < n && Instant::now() < deadline {
        if let Ok(k) = s.read(&mut buf) {
            got.push_str(&String::from_utf8_lossy(&buf[..k]));
        }
    }
    got.split("\r\n").filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// MULTI/EXEC as clients send it (redis-rs's atomic pipeline): one raft entry, replies in order,
/// a command refused while queueing discards the whole transaction (EXECABORT), DISCARD drops it.
#[test]
fn transactions_apply_atomically_and_abort_as_redis() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = One::start(dir.path(), &[]);
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", node.resp)).expect("url");
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connection");
    let (n, v, m): (i64, String, Vec<Option<String>>) = redis::pipe()
        .atomic()
        .cmd("INCRBY")
        .arg("t")
        .arg(5)
        .cmd("GET")
        .arg("t")
        .cmd("SET")
        .arg("u")
        .arg("x")
        .ignore()
        .cmd("MGET")
        .arg("t")
        .arg("u")
        .query(&mut con)
        .expect("MULTI/EXEC");
    assert_eq!((n, v.as_str(), m), (5, "5", vec![Some("5".into()), Some("x".into())]));
    let aborted = exchange_until(
        node.resp,
        b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nt\r\n$1\r\n0\r\n*1\r\n$3\r\nGET\r\n*1\r\n$4\r\nEXEC\r\n",
        "errors.\r\n",
    );
    assert_eq!(
        aborted,
        "+OK\r\n+QUEUED\r\n-ERR wrong number of arguments for 'get' command\r\n\
         -EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    let discarded = exchange_until(
        node.resp,
        b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nt\r\n$1\r\n0\r\n*1\r\n$7\r\nDISCARD\r\n*1\r\n$4\r\nEXEC\r\n",
        "MULTI\r\n",
    );
    assert_eq!(discarded, "+OK\r\n+QUEUED\r\n+OK\r\n-ERR EXEC without MULTI\r\n");
    let t: String = redis::cmd("GET").arg("t").query(&mut con).expect("GET");
    assert_eq!(t, "5", "an aborted or discarded transaction wrote");
}

#[test]
fn requirepass_refuses_unauthenticated_clients_and_wrong_passwords() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (resp, peer) = (free_port(), free_port());
    let data = dir.path().join("node1");
    let mut child = Command::new(env!("CARGO_BIN_EXE_durakv"))
        .args(args(resp, peer, &data, &["--requirepass", "s3cret"]))
        .stderr(Stdio::null())
        .spawn()
        .expect("start durakv");
    let client = redis::Client::open(format!("redis://127.0.0.1:{resp}/")).expect("url");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut con = loop {
        if let Ok(c) = client.get_connection_with_timeout(Duration::from_secs(1)) {
            break c;
        }
        assert!(Instant::now() < deadline, "the node did not open its port");
        std::thread::sleep(Duration::from_millis(100));
    };
    let denied: redis::RedisResult<Option<String>> = redis::cmd("GET").arg("k").query(&mut con);
    let e = denied.expect_err("no AUTH yet");
    assert!(e.to_string().contains("NOAUTH"), "{e}");
    let wrong: redis::RedisResult<()> = redis::cmd("AUTH").arg("guess").query(&mut con);
    assert!(wrong.expect_err("wrong password").to_string().contains("WRONGPASS"));
    redis::cmd("AUTH").arg("s3cret").query::<()>(&mut con).expect("right password");
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis::cmd("SET").arg("k").arg("v").query::<()>(&mut con).is_err() {
        assert!(Instant::now() < deadline, "the node did not start serving");
        std::thread::sleep(Duration::from_millis(100));
    }
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con).expect("GET after AUTH");
    assert_eq!(v.as_deref(), Some("v"));
    child.kill().expect("kill");
    child.wait().expect("reap");
}

#[test]
fn a_peer_of_another_cluster_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = One::start(dir.path(), &["--cluster-id", "7"]);
    let mut s = TcpStream::connect(("127.0.0.1", node.peer)).expect("connect to the peer port");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut hello = Vec::new();
    durakv::transport::frame::PeerFrame::Hello { cluster_id: 99, node_id: 2, nonce: [0; 16], secured: false }
        .encode(&mut hello);
    s.write_all(&hello).expect("send hello");
    let mut buf = [0u8; 64];
    // The node closes without a hello of its own.
    assert_eq!(s.read(&mut buf).expect("read until close"), 0, "a foreign peer gets no hello back");
    assert_eq!(node.exchange(b"PING\r\n"), "+PONG\r\n");
}

#[test]
fn bad_starts_exit_with_the_cause_named() {
    let dir = tempfile::tempdir().expect("temp dir");

    // A config value out of range names its field.
    let out = run_to_exit(free_port(), free_port(), &dir.path().join("a"), &["--fsm-sync", "sometimes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("fsm_sync"), "{err}");

    // A port in use names the address.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = run_to_exit(port, free_port(), &dir.path().join("b"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("resp_addr"), "{err}");

    // A data directory that cannot exist (its parent is a file) names the path.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let out = run_to_exit(free_port(), free_port(), &file.join("data"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("data directory") && err.contains("file/data"), "{err}");

    // A corrupt record in the middle of the WAL of a one-node cluster: no peer can supply what it
    // lost, so it refuses, naming the segment, the offset and the index.
    let mut node = One::start(dir.path(), &[]);
    for i in 0..50 {
        let cmd = format!("*3\r\n$3\r\nSET\r\n$4\r\nk{i:03}\r\n$100\r\n{}\r\n", "x".repeat(100));
        assert_eq!(node.exchange(cmd.as_bytes()), "+OK\r\n");
    }
    node.stop();
    let raft = node.data.join("raft");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&raft)
        .expect("raft dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    let seg = segments.last().expect("a segment");
    let mut bytes = std::fs::read(seg).expect("read segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(seg, &bytes).expect("write segment");
    let out = run_to_exit(node.resp, node.peer, &node.data, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&seg.display().to_string()) && err.contains("offset"), "{err}");
    assert!(err.contains("no other member exists"), "{err}");
}
