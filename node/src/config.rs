//! The node's configuration: an optional TOML file, overridden by command-line flags. Every problem is
//! a [`ConfigError`] naming the field (and, for the file, the line).
//!
//! ```toml
//! id = 1                          # this node's id, one of the peers
//! cluster_id = 7                  # peers of another cluster are refused at the handshake
//! data_dir = "./data/node1"
//! spool_dir = "/mnt/spool/node1"  # optional; where received snapshots stream to (default data_dir/spool),
//!                                 # may be another filesystem (the move into data_dir then copies)
//! resp_addr = "127.0.0.1:6379"    # the Redis-protocol port
//! peer_addr = "127.0.0.1:7379"    # the raft transport port
//! fsm_sync = "nosync"             # default; or "sync" (raft apply fsyncs too; direct writes always sync)
//! requirepass = "secret"          # optional; clients must AUTH
//! peer_secret_file = "/etc/durakv/peer-secret"  # optional; peers prove they know it (or peer_secret;
//!                                 # every member the same, at least 16 bytes)
//! snapshot_log_bytes = 67108864   # snapshot once this much entry data was applied since the last
//! snapshot_every = 0              # ... or after this many applied entries (0: by bytes only)
//! snapshot_catch_up_entries = 5000  # entries kept in the log below each snapshot for lagging followers
//! metrics_addr = "127.0.0.1:9379"  # optional; Prometheus scrapes GET /metrics here
//! tls_resp_addr = "0.0.0.0:6380"  # optional; the Redis protocol inside TLS (Redis's tls-port), with:
//! tls_cert_file = "/etc/durakv/server.crt"   # PEM certificate chain
//! tls_key_file = "/etc/durakv/server.key"    # PEM private key
//! tls_ca_cert_file = "/etc/durakv/ca.crt"    # optional; clients must present a certificate it signed
//! max_bulk_bytes = 536870912      # largest RESP bulk string
//! maxclients = 10000              # client connections beyond it are refused (Redis's error)
//! max_in_flight = 16384           # writes and reads waiting for raft, all connections together;
//!                                 # beyond it a request is answered -BUSY at once
//! tick_ms = 100                   # one raft tick: elections after 10-20 ticks, heartbeats every 3
//! request_timeout_ms = 5000       # how long a client waits for its write or read
//! keep_snapshots = 2              # snapshot files kept (the newest)
//! spool_cap_bytes = 17179869184   # the most a snapshot being received may take in the spool
//! peer_queue = 4096               # messages queued per peer before they are dropped (raft resends)
//! snapshot_chunk_bytes = 4194304  # snapshot stream chunk size
//! log_json = false
//!
//! [peers]                         # every member, this node included: id = "peer_addr,resp_addr"
//! 1 = "127.0.0.1:7379,127.0.0.1:6379"
//! 2 = "127.0.0.1:7380,127.0.0.1:6380"
//! 3 = "127.0.0.1:7381,127.0.0.1:6381"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::fsm::FsmSync;

/// Bytes of applied entry data between two snapshots, by default (64 MiB).
pub const DEFAULT_SNAPSHOT_LOG_BYTES: u64 = 64 << 20;

/// Entries kept in the log below each snapshot, by default (etcd keeps 5,000 too).
pub const DEFAULT_CATCH_UP_ENTRIES: u64 = 5_000;

/// A configuration problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}:{line}: {field}: {message}")]
    File { file: PathBuf, line: usize, field: String, message: String },
    #[error("--{flag}: {message}")]
    Flag { flag: String, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

/// The addresses of one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub peer_addr: SocketAddr,
    pub resp_addr: SocketAddr,
}

/// A validated node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: u64,
    pub cluster_id: u64,
    pub data_dir: PathBuf,
    /// Where a snapshot being received is spooled; `None` is `<data_dir>/spool`.
    pub spool_dir: Option<PathBuf>,
    pub resp_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub peers: BTreeMap<u64, Peer>,
    /// Join a running cluster: a new data directory waits for the leader's snapshot (after an
    /// operator's `CLUSTER ADDLEARNER`) instead of making `peers` the initial voters.
    pub join: bool,
    pub fsm_sync: FsmSync,
    pub requirepass: Option<String>,
    /// The secret every member proves it knows at the peer handshake (`None`: peers are not
    /// authenticated, and a peer that asks for proof is refused).
    pub peer_secret: Option<Vec<u8>>,
    /// Snapshot after this many applied entries (0: only by `snapshot_log_bytes`).
    pub snapshot_every: u64,
    /// Snapshot once this many bytes of entry data were applied since the last one.
    pub snapshot_log_bytes: u64,
    /// Entries kept in the log below each snapshot, so a lagging follower catches up from the log.
    pub snapshot_catch_up_entries: u64,
    /// Where Prometheus scrapes `GET /metrics` (`None`: no metrics port).
    pub metrics_addr: Option<SocketAddr>,
    /// The TLS client port (`None`: none).
    pub tls: Option<TlsConfig>,
    pub max_bulk_bytes: usize,
    /// Client connections served at once; the next is refused with Redis's error.
    pub maxclients: usize,
    /// Requests (writes, reads) handed to the raft loop and not yet answered, across every
    /// connection; beyond it a request is answered `-BUSY` instead of queueing.
    pub max_in_flight: usize,
    pub log_json: bool,
    /// Timing and sizing of the running node ([`crate::runtime::RuntimeOptions`]).
    pub runtime: RuntimeSettings,
}

/// The TLS client port: where it listens and the files it serves with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub addr: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Clients must present a certificate this CA signed (`None`: no client certificates).
    pub ca_cert_file: Option<PathBuf>,
}

/// The running node's timing and sizing, as configured; [`crate::runtime::RuntimeOptions::of`]
/// turns them into the runtime's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    pub tick_ms: u64,
    pub request_timeout_ms: u64,
    pub keep_snapshots: usize,
    pub spool_cap_bytes: u64,
    pub peer_queue: usize,
    pub snapshot_chunk_bytes: usize,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            tick_ms: 100,
            request_timeout_ms: 5_000,
            keep_snapshots: 2,
            spool_cap_bytes: crate::snapshot::DEFAULT_SPOOL_CAP_BYTES,
            peer_queue: 4096,
            snapshot_chunk_bytes: crate::limits::DEFAULT_SNAPSHOT_CHUNK_BYTES,
        }
    }
}

/// The shortest peer secret accepted: anything shorter could be guessed offline from one recorded
/// handshake.
pub const MIN_PEER_SECRET_BYTES: usize = 16;

/// Client connections served at once, by default (Redis's default).
pub const DEFAULT_MAXCLIENTS: usize = 10_000;

/// Requests in the raft loop's hands at once, by default: room for 256 clients pipelining 64 deep.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16_384;

/// The file's shape; every field optional so flags can supply it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    id: Option<u64>,
    cluster_id: Option<u64>,
    data_dir: Option<PathBuf>,
    spool_dir: Option<PathBuf>,
    resp_addr: Option<String>,
    peer_addr: Option<String>,
    peers: Option<BTreeMap<String, String>>,
    join: Option<bool>,
    fsm_sync: Option<String>,
    requirepass: Option<String>,
    peer_secret: Option<String>,
    peer_secret_file: Option<PathBuf>,
    snapshot_every: Option<u64>,
    snapshot_log_bytes: Option<u64>,
    snapshot_catch_up_entries: Option<u64>,
    metrics_addr: Option<String>,
    tls_resp_addr: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_ca_cert_file: Option<PathBuf>,
    max_bulk_bytes: Option<usize>,
    maxclients: Option<usize>,
    max_in_flight: Option<usize>,
    log_json: Option<bool>,
    tick_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    keep_snapshots: Option<usize>,
    spool_cap_bytes: Option<u64>,
    peer_queue: Option<usize>,
    snapshot_chunk_bytes: Option<usize>,
}

fn parse_addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim().parse().map_err(|_| invalid(field, format!("{s:?} is not an address like 127.0.0.1:6379")))
}

/// `id=peer_addr,resp_addr` (flag form) or `peer_addr,resp_addr` (file form, id as the key).
fn parse_peer(field: &str, spec: &str) -> Result<Peer, ConfigError> {
    let (p, r) = spec
        .split_once(',')
        .ok_or_else(|| invalid(field, format!("{spec:?} is not \"peer_addr,resp_addr\"")))?;
    Ok(Peer { peer_addr: parse_addr(field, p)?, resp_addr: parse_addr(field, r)? })
}

impl NodeConfig {
    /// Build the configuration from an optional file and `--flag value` pairs (flags win).
    pub fn load(file: Option<&Path>, flags: &[(String, String)]) -> Result<NodeConfig, ConfigError> {
        let mut raw = match file {
            Some(path) => {
                let source = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    file: path.to_path_buf(),
                    line: 0,
                    field: "file".into(),
                    message: e.to_string(),
                })?;
                parse_file(&source, path)?
            }
            None => RawConfig::default(),
        };
        for (flag, value) in flags {
            let bad = |message: String| ConfigError::Flag { flag: flag.clone(), message };
            let num = |v: &str| v.parse::<u64>().map_err(|_| bad(format!("{v:?} is not a number")));
            match flag.as_str() {
                "id" => raw.id = Some(num(value)?),
                "cluster-id" => raw.cluster_id = Some(num(value)?),
                "data-dir" => raw.data_dir = Some(PathBuf::from(value)),
                "spool-dir" => raw.spool_dir = Some(PathBuf::from(value)),
                "resp-addr" => raw.resp_addr = Some(value.clone()),
                "peer-addr" => raw.peer_addr = Some(value.clone()),
                "fsm-sync" => raw.fsm_sync = Some(value.clone()),
                "requirepass" => raw.requirepass = Some(value.clone()),
                "peer-secret" => raw.peer_secret = Some(value.clone()),
                "peer-secret-file" => raw.peer_secret_file = Some(PathBuf::from(value)),
                "snapshot-every" => raw.snapshot_every = Some(num(value)?),
                "snapshot-log-bytes" => raw.snapshot_log_bytes = Some(num(value)?),
                "snapshot-catch-up-entries" => raw.snapshot_catch_up_entries = Some(num(value)?),
                "metrics-addr" => raw.metrics_addr = Some(value.clone()),
                "tls-resp-addr" => raw.tls_resp_addr = Some(value.clone()),
                "tls-cert-file" => raw.tls_cert_file = Some(PathBuf::from(value)),
                "tls-key-file" => raw.tls_key_file = Some(PathBuf::from(value)),
                "tls-ca-cert-file" => raw.tls_ca_cert_file = Some(PathBuf::from(value)),
                "max-bulk-bytes" => raw.max_bulk_bytes = Some(num(value)? as usize),
                "maxclients" => raw.maxclients = Some(num(value)? as usize),
                "max-in-flight" => raw.max_in_flight = Some(num(value)? as usize),
                "tick-ms" => raw.tick_ms = Some(num(value)?),
                "request-timeout-ms" => raw.request_timeout_ms = Some(num(value)?),
                "keep-snapshots" => raw.keep_snapshots = Some(num(value)? as usize),
                "spool-cap-bytes" => raw.spool_cap_bytes = Some(num(value)?),
                "peer-queue" => raw.peer_queue = Some(num(value)? as usize),
                "snapshot-chunk-bytes" => raw.snapshot_chunk_bytes = Some(num(value)? as usize),
                "join" => {
                    raw.join =
                        Some(value.parse().map_err(|_| bad(format!("{value:?} is not true or false")))?)
                }
                "log-json" => {
                    raw.log_json =
                        Some(value.parse().map_err(|_| bad(format!("{value:?} is not true or false")))?)
                }
                "peers" => {
                    // --peers 1=127.0.0.1:7379,127.0.0.1:6379;2=…
                    let mut peers = BTreeMap::new();
                    for item in value.split(';').filter(|s| !s.trim().is_empty()) {
                        let (id, spec) = item
                            .split_once('=')
                            .ok_or_else(|| bad(format!("{item:?} is not id=peer_addr,resp_addr")))?;
                        peers.insert(id.trim().to_string(), spec.to_string());
                    }
                    raw.peers = Some(peers);
                }
                other => {
                    return Err(ConfigError::Flag { flag: other.into(), message: "unknown flag".into() });
                }
            }
        }
        NodeConfig::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<NodeConfig, ConfigError> {
        let runtime = runtime_settings(&raw)?;
        let id = raw.id.ok_or_else(|| invalid("id", "required"))?;
        if id == 0 {
            return Err(invalid("id", "must be at least 1 (raft reserves 0)"));
        }
        let mut peers = BTreeMap::new();
        for (key, spec) in raw.peers.unwrap_or_default() {
            let field = format!("peers.{key}");
            let pid: u64 = key.parse().map_err(|_| invalid(&field, "the key must be a node id"))?;
            if pid == 0 {
                return Err(invalid(&field, "node ids start at 1"));
            }
            peers.insert(pid, parse_peer(&field, &spec)?);
        }
        if peers.is_empty() {
            return Err(invalid("peers", "list every member, this node included"));
        }
        let me = *peers
            .get(&id)
            .ok_or_else(|| invalid("peers", format!("this node's id {id} is not among them")))?;
        let resp_addr = raw.resp_addr.map_or(Ok(me.resp_addr), |s| parse_addr("resp_addr", &s))?;
        let peer_addr = raw.peer_addr.map_or(Ok(me.peer_addr), |s| parse_addr("peer_addr", &s))?;
        let fsm_sync = raw
            .fsm_sync
            .as_deref()
            // nosync by default: the raft WAL replays what a power loss takes from the state machine
            // (D2), proven on RocksDB by `make powercut` in both modes; `sync` stays available.
            .unwrap_or("nosync")
            .parse()
            .map_err(|_| invalid("fsm_sync", "must be \"sync\" or \"nosync\""))?;
        // By default the cadence is the log's growth in bytes, whatever the entries' size; an entry
        // count (0: none) can be added on top.
        let snapshot_every = raw.snapshot_every.unwrap_or(0);
        let snapshot_log_bytes = raw.snapshot_log_bytes.unwrap_or(DEFAULT_SNAPSHOT_LOG_BYTES);
        if snapshot_log_bytes == 0 {
            return Err(invalid("snapshot_log_bytes", "must be at least 1"));
        }
        let max_bulk_bytes = raw.max_bulk_bytes.unwrap_or(512 << 20);
        if max_bulk_bytes == 0 {
            return Err(invalid("max_bulk_bytes", "must be at least 1"));
        }
        let maxclients = raw.maxclients.unwrap_or(DEFAULT_MAXCLIENTS);
        if maxclients == 0 {
            return Err(invalid("maxclients", "must be at least 1"));
        }
        let max_in_flight = raw.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            return Err(invalid("max_in_flight", "must be at least 1"));
        }
        let spool_dir = match raw.spool_dir {
            Some(d) if d.as_os_str().is_empty() => {
                return Err(invalid("spool_dir", "must not be empty; leave it unset for <data_dir>/spool"));
            }
            other => other,
        };
        if raw.requirepass.as_deref() == Some("") {
            return Err(invalid("requirepass", "an empty password locks nobody out; leave it unset instead"));
        }
        let peer_secret = match (raw.peer_secret, raw.peer_secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid("peer_secret", "give peer_secret or peer_secret_file, not both"));
            }
            (Some(s), None) => Some(s.into_bytes()),
            (None, Some(path)) => {
                let bytes = std::fs::read(&path)
                    .map_err(|e| invalid("peer_secret_file", format!("{}: {e}", path.display())))?;
                // A secret written with `echo` ends in a newline that is not part of it.
                let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
                Some(bytes[..end].to_vec())
            }
            (None, None) => None,
        };
        if peer_secret.as_ref().is_some_and(|s| s.len() < MIN_PEER_SECRET_BYTES) {
            return Err(invalid(
                "peer_secret",
                format!("must be at least {MIN_PEER_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"),
            ));
        }
        let tls = match (raw.tls_resp_addr, raw.tls_cert_file, raw.tls_key_file) {
            (None, None, None) => {
                if raw.tls_ca_cert_file.is_some() {
                    return Err(invalid(
                        "tls_ca_cert_file",
                        "set tls_resp_addr, tls_cert_file and tls_key_file too",
                    ));
                }
                None
            }
            (Some(addr), Some(cert_file), Some(key_file)) => {
                let addr = parse_addr("tls_resp_addr", &addr)?;
                if addr == resp_addr || addr == peer_addr {
                    return Err(invalid("tls_resp_addr", "must differ from resp_addr and peer_addr"));
                }
                Some(TlsConfig { addr, cert_file, key_file, ca_cert_file: raw.tls_ca_cert_file })
            }
            (addr, cert, _) => {
                let missing = if addr.is_none() {
                    "tls_resp_addr"
                } else if cert.is_none() {
                    "tls_cert_file"
                } else {
                    "tls_key_file"
                };
                return Err(invalid(
                    missing,
                    "the TLS port needs tls_resp_addr, tls_cert_file and tls_key_file",
                ));
            }
        };
        Ok(NodeConfig {
            id,
            cluster_id: raw.cluster_id.unwrap_or(1),
            data_dir: raw.data_dir.ok_or_else(|| invalid("data_dir", "required"))?,
            spool_dir,
            resp_addr,
            peer_addr,
            peers,
            join: raw.join.unwrap_or(false),
            fsm_sync,
            requirepass: raw.requirepass,
            peer_secret,
            snapshot_every,
            snapshot_log_bytes,
            snapshot_catch_up_entries: raw.snapshot_catch_up_entries.unwrap_or(DEFAULT_CATCH_UP_ENTRIES),
            metrics_addr: raw.metrics_addr.map(|s| parse_addr("metrics_addr", &s)).transpose()?,
            tls,
            max_bulk_bytes,
            maxclients,
            max_in_flight,
            log_json: raw.log_json.unwrap_or(false),
            runtime,
        })
    }
}

/// The runtime settings of `raw`, defaults filled in, each checked (an error names its field).
fn runtime_settings(raw: &RawConfig) -> Result<RuntimeSettings, ConfigError> {
    let d = RuntimeSettings::default();
    let s = RuntimeSettings {
        tick_ms: raw.tick_ms.unwrap_or(d.tick_ms),
        request_timeout_ms: raw.request_timeout_ms.unwrap_or(d.request_timeout_ms),
        keep_snapshots: raw.keep_snapshots.unwrap_or(d.keep_snapshots),
        spool_cap_bytes: raw.spool_cap_bytes.unwrap_or(d.spool_cap_bytes),
        peer_queue: raw.peer_queue.unwrap_or(d.peer_queue),
        snapshot_chunk_bytes: raw.snapshot_chunk_bytes.unwrap_or(d.snapshot_chunk_bytes),
    };
    // Heartbeats every 3 ticks and elections after 10-20: a tick beyond 10 s leaves a dead leader
    // undetected for minutes.
    if !(1..=10_000).contains(&s.tick_ms) {
        return Err(invalid("tick_ms", "must be between 1 and 10000"));
    }
    if s.request_timeout_ms == 0 {
        return Err(invalid("request_timeout_ms", "must be at least 1"));
    }
    if s.keep_snapshots == 0 {
        return Err(invalid("keep_snapshots", "must be at least 1 (the log's base is always kept)"));
    }
    if s.spool_cap_bytes == 0 {
        return Err(invalid("spool_cap_bytes", "must be at least 1"));
    }
    if s.peer_queue == 0 {
        return Err(invalid("peer_queue", "must be at least 1"));
    }
    crate::limits::check_snapshot_chunk_bytes(s.snapshot_chunk_bytes)?;
    Ok(s)
}

/// Where a TOML parse error stands: the 1-based line (0 if unknown), the field the message names
/// (`document` if none), and the message. Shared by every strict TOML format (config, scenarios).
pub fn locate_toml_error(source: &str, e: &toml::de::Error) -> (usize, String, String) {
    let line = e.span().map_or(0, |s| source[..s.start.min(source.len())].matches('\n').count() + 1);
    let message = e.message().to_string();
    let field = message.split('`').nth(1).map_or_else(|| "document".to_string(), str::to_string);
    (line, field, message)
}

fn parse_file(source: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    toml::from_str(source).map_err(|e| {
        let (line, field, message) = locate_toml_error(source, &e);
        ConfigError::File { file: path.to_path_buf(), line, field, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"id = 2
cluster_id = 7
data_dir = "./data/node2"
fsm_sync = "nosync"

[peers]
1 = "127.0.0.1:7379,127.0.0.1:6379"
2 = "127.0.0.1:7380,127.0.0.1:6380"
3 = "127.0.0.1:7381,127.0.0.1:6381"
"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).expect("write config");
        (dir, path)
    }

    fn flags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_file_gives_a_whole_config_and_flags_override_it() {
        let (_d, path) = write(FILE);
        let c = NodeConfig::load(Some(&path), &[]).expect("valid");
        assert_eq!((c.id, c.cluster_id, c.fsm_sync), (2, 7, FsmSync::NoSync));
        assert_eq!(
            c.resp_addr,
            "127.0.0.1:6380".parse().expect("addr"),
            "defaults to this node's peer entry"
        );
        assert_eq!(c.peers.len(), 3);
        let c =
            NodeConfig::load(Some(&path), &flags(&[("fsm-sync", "sync"), ("resp-addr", "127.0.0.1:9999")]))
                .expect("valid");
        assert_eq!(c.fsm_sync, FsmSync::Sync);
        assert_eq!(c.resp_addr.port(), 9999);
    }

    #[test]
    fn flags_alone_are_enough() {
        let f = flags(&[
            ("id", "1"),
            ("data-dir", "/tmp/n1"),
            (
                "peers",
                "1=127.0.0.1:7379,127.0.0.1:6379;2=127.0.0.1:7380,127.0.0.1:6380;3=127.0.0.1:7381,127.0.0.1:6381",
            ),
        ]);
        let c = NodeConfig::load(None, &f).expect("valid");
        assert_eq!(c.peers[&3].resp_addr.port(), 6381);
        assert_eq!((c.snapshot_every, c.snapshot_log_bytes), (0, DEFAULT_SNAPSHOT_LOG_BYTES));
        assert_eq!(c.spool_dir, None, "the spool defaults to <data_dir>/spool");
    }

    #[test]
    fn the_spool_dir_comes_from_the_file_or_a_flag() {
        let (_d, path) = write(&FILE.replace("fsm_sync", "spool_dir = \"/mnt/spool2\"\nfsm_sync"));
        let c = NodeConfig::load(Some(&path), &[]).expect("valid");
        assert_eq!(c.spool_dir.as_deref(), Some(Path::new("/mnt/spool2")));
        let c = NodeConfig::load(Some(&path), &flags(&[("spool-dir", "/other")])).expect("valid");
        assert_eq!(c.spool_dir.as_deref(), Some(Path::new("/other")), "the flag wins");
        let (_d, plain) = write(FILE);
        assert_eq!(NodeConfig::load(Some(&plain), &[]).expect("valid").spool_dir, None);
        assert!(matches!(
            NodeConfig::load(Some(&plain), &flags(&[("spool-dir", "")])),
            Err(ConfigError::Invalid { field, .. }) if field == "spool_dir"
        ));
    }

    #[test]
    fn a_peer_secret_comes_from_a_flag_or_a_file_without_its_trailing_newline() {
        let (_d, path) = write(FILE);
        let c = NodeConfig::load(Some(&path), &flags(&[("peer-secret", "0123456789abcdef")])).expect("valid");
        assert_eq!(c.peer_secret.as_deref(), Some(&b"0123456789abcdef"[..]));
        let (_s, secret) = write("a-secret-from-a-file-0123\n");
        let secret = secret.display().to_string();
        let c =
            NodeConfig::load(Some(&path), &flags(&[("peer-secret-file", secret.as_str())])).expect("valid");
        assert_eq!(c.peer_secret.as_deref(), Some(&b"a-secret-from-a-file-0123"[..]));
        assert_eq!(NodeConfig::load(Some(&path), &[]).expect("valid").peer_secret, None);
    }

    #[test]
    fn every_problem_names_its_field() {
        let (_d, path) = write(&FILE.replace("fsm_sync = \"nosync\"", "fsm_sink = \"nosync\""));
        match NodeConfig::load(Some(&path), &[]) {
            Err(ConfigError::File { line: 4, field, .. }) => assert_eq!(field, "fsm_sink"),
            other => panic!("expected a file error on line 4, got {other:?}"),
        }
        let (_d, path) = write(&FILE.replace("id = 2", "id = \"two\""));
        assert!(matches!(NodeConfig::load(Some(&path), &[]), Err(ConfigError::File { line: 1, .. })));
        let (_d, path) = write(FILE);
        let field_of = |f: &[(&str, &str)]| match NodeConfig::load(Some(&path), &flags(f)) {
            Err(ConfigError::Invalid { field, .. }) => field,
            Err(ConfigError::Flag { flag, .. }) => format!("--{flag}"),
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(field_of(&[("id", "9")]), "peers");
        assert_eq!(field_of(&[("id", "0")]), "id");
        assert_eq!(field_of(&[("fsm-sync", "fast")]), "fsm_sync");
        assert_eq!(field_of(&[("resp-addr", "localhost")]), "resp_addr");
        assert_eq!(field_of(&[("metrics-addr", "nowhere")]), "metrics_addr");
        assert_eq!(field_of(&[("snapshot-log-bytes", "0")]), "snapshot_log_bytes");
        assert_eq!(field_of(&[("requirepass", "")]), "requirepass");
        assert_eq!(field_of(&[("peer-secret", "short")]), "peer_secret");
        assert_eq!(
            field_of(&[("peer-secret", "0123456789abcdef"), ("peer-secret-file", "/etc/passwd")]),
            "peer_secret"
        );
        assert_eq!(field_of(&[("peer-secret-file", "/nonexistent/secret")]), "peer_secret_file");
        assert_eq!(field_of(&[("tls-resp-addr", "127.0.0.1:6390")]), "tls_cert_file");
        assert_eq!(field_of(&[("tls-cert-file", "a.crt"), ("tls-key-file", "a.key")]), "tls_resp_addr");
        assert_eq!(field_of(&[("tls-ca-cert-file", "ca.crt")]), "tls_ca_cert_file");
        assert_eq!(
            field_of(&[("tls-resp-addr", "127.0.0.1:6380"), ("tls-cert-file", "a"), ("tls-key-file", "b")]),
            "tls_resp_addr",
            "the TLS port may not be the plain one"
        );
        assert_eq!(field_of(&[("id", "x")]), "--id");
        assert_eq!(field_of(&[("colour", "blue")]), "--colour");
        let (_d, bad_peer) = write(&FILE.replace("3 = \"127.0.0.1:7381,127.0.0.1:6381\"", "3 = \"nowhere\""));
        assert!(
            matches!(NodeConfig::load(Some(&bad_peer), &[]), Err(ConfigError::Invalid { field, .. }) if field == "peers.3")
        );
        assert!(
            matches!(NodeConfig::load(None, &[]), Err(ConfigError::Invalid { field, .. }) if field == "id")
        );
    }
}
