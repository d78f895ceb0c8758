//! Client commands: RESP arguments parsed into typed requests, with Redis's own error texts for
//! unknown commands, wrong arity, syntax and number errors. Writes become [`Command`]s for the raft
//! log; reads and connection commands are answered by the server without the log.

use crate::fsm::{Command, SetCondition};

use super::resp::Reply;

/// A parsed client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Ping(Option<Vec<u8>>),
    Echo(Vec<u8>),
    Quit,
    /// SELECT: only database 0 exists.
    Select,
    Auth {
        password: Vec<u8>,
    },
    ClientSetName(Vec<u8>),
    ClientGetName,
    /// CLIENT SETINFO (client libraries announce themselves): accepted and not kept.
    ClientSetInfo,
    /// CONFIG GET name…: the few Redis parameters clients probe, answered read-only.
    ConfigGet(Vec<Vec<u8>>),
    /// COMMAND [COUNT | DOCS …]: enough for redis-cli's start-up probe.
    CommandInfo,
    Info,
    DbSize,
    Get(Vec<u8>),
    MGet(Vec<Vec<u8>>),
    Exists(Vec<Vec<u8>>),
    StrLen(Vec<u8>),
    /// A write, proposed through raft.
    Write(Command),
}

/// The error reply for a request that cannot run.
pub type Refusal = Reply;

fn wrong_arity(name: &str) -> Refusal {
    Reply::Error(format!("ERR wrong number of arguments for '{}' command", name.to_ascii_lowercase()))
}

fn syntax() -> Refusal {
    Reply::Error("ERR syntax error".into())
}

fn not_integer() -> Refusal {
    Reply::Error("ERR value is not an integer or out of range".into())
}

fn parse_i64(arg: &[u8]) -> Result<i64, Refusal> {
    std::str::from_utf8(arg).ok().and_then(|s| s.parse::<i64>().ok()).ok_or_else(not_integer)
}

/// The parameters `CONFIG GET` answers, as durakv really is: no RDB saves, no AOF (its log is raft's
/// WAL), one database, no memory limit. redis-benchmark asks for `save` and `appendonly` at start-up.
pub const CONFIG_VALUES: [(&str, &str); 4] =
    [("save", ""), ("appendonly", "no"), ("databases", "1"), ("maxmemory", "0")];

/// `CONFIG GET` pairs for the requested names (exact, any case; `*` for all), as Redis answers.
pub fn config_get(names: &[Vec<u8>]) -> Vec<(&'static str, &'static str)> {
    CONFIG_VALUES
        .iter()
        .filter(|(k, _)| names.iter().any(|n| n.as_slice() == b"*" || n.eq_ignore_ascii_case(k.as_bytes())))
        .copied()
        .collect()
}

/// Parse one request. `args[0]` is the command name (any case).
pub fn parse_request(args: Vec<Vec<u8>>) -> Result<Request, Refusal> {
    let Some(name) = args.first() else {
        return Err(Reply::Error("ERR empty command".into()));
    };
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    let mut rest = args.into_iter().skip(1);
    let n = rest.len();
    let arity = |ok: bool| if ok { Ok(()) } else { Err(wrong_arity(&name)) };
    let req = match name.as_str() {
        "PING" => {
            arity(n <= 1)?;
            Request::Ping(rest.next())
        }
        "ECHO" => {
            arity(n == 1)?;
            Request::Echo(rest.next().unwrap_or_default())
        }
        "QUIT" => Request::Quit,
        "SELECT" => {
            arity(n == 1)?;
            let db = parse_i64(&rest.next().unwrap_or_default())?;
            if db != 0 {
                return Err(Reply::Error("ERR DB index is out of range".into()));
            }
            Request::Select
        }
        "AUTH" => {
            arity(n == 1 || n == 2)?;
            // AUTH password, or AUTH username password (the username must be "default").
            let mut parts: Vec<Vec<u8>> = rest.collect();
            let password = parts.pop().unwrap_or_default();
            if parts.first().is_some_and(|user| user.as_slice() != b"default") {
                return Err(Reply::Error(
                    "WRONGPASS invalid username-password pair or user is disabled.".into(),
                ));
            }
            Request::Auth { password }
        }
        "CLIENT" => {
            let sub = rest.next().map(|s| String::from_utf8_lossy(&s).to_ascii_uppercase());
            match (sub.as_deref(), n) {
                (Some("SETNAME"), 2) => Request::ClientSetName(rest.next().unwrap_or_default()),
                (Some("GETNAME"), 1) => Request::ClientGetName,
                (Some("SETINFO"), 3) => Request::ClientSetInfo,
                (Some("SETNAME" | "GETNAME" | "SETINFO"), _) => return Err(wrong_arity("client")),
                _ => {
                    return Err(Reply::Error("ERR unknown subcommand for 'client'. Try CLIENT HELP.".into()));
                }
            }
        }
        "COMMAND" => Request::CommandInfo,
        "CONFIG" => {
            let sub = rest.next().map(|s| String::from_utf8_lossy(&s).to_ascii_uppercase());
            match sub.as_deref() {
                Some("GET") if n >= 2 => Request::ConfigGet(rest.collect()),
                Some("GET") => return Err(wrong_arity("config|get")),
                _ => {
                    return Err(Reply::Error(
                        "ERR durakv supports only CONFIG GET (settings live in its config file)".into(),
                    ));
                }
            }
        }
        "INFO" => Request::Info,
        "DBSIZE" => {
            arity(n == 0)?;
            Request::DbSize
        }
        "GET" => {
            arity(n == 1)?;
            Request::Get(rest.next().unwrap_or_default())
        }
        "STRLEN" => {
            arity(n == 1)?;
            Request::StrLen(rest.next().unwrap_or_default())
        }
        "MGET" => {
            arity(n >= 1)?;
            Request::MGet(rest.collect())
        }
        "EXISTS" => {
            arity(n >= 1)?;
            Request::Exists(rest.collect())
        }
        "SET" => {
            arity(n >= 2)?;
            let key = rest.next().unwrap_or_default();
            let value = rest.next().unwrap_or_default();
            let mut condition = SetCondition::Always;
            for opt in rest {
                match String::from_utf8_lossy(&opt).to_ascii_uppercase().as_str() {
                    "NX" if condition == SetCondition::Always => condition = SetCondition::IfAbsent,
                    "XX" if condition == SetCondition::Always => condition = SetCondition::IfPresent,
                    "EX" | "PX" | "EXAT" | "PXAT" | "KEEPTTL" | "GET" => {
                        return Err(Reply::Error(
                            "ERR expiry and SET ... GET are not supported: expiry is not yet replicated deterministically"
                                .into(),
                        ));
                    }
                    _ => return Err(syntax()),
                }
            }
            Request::Write(Command::set(key, value, condition))
        }
        "DEL" => {
            arity(n >= 1)?;
            Request::Write(Command::del(rest.collect()))
        }
        "MSET" => {
            arity(n >= 2 && n.is_multiple_of(2))?;
            let flat: Vec<Vec<u8>> = rest.collect();
            let pairs = flat.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect();
            Request::Write(Command::mset(pairs))
        }
        "INCR" | "DECR" => {
            arity(n == 1)?;
            let delta = if name == "INCR" { 1 } else { -1 };
            Request::Write(Command::incr_by(rest.next().unwrap_or_default(), delta))
        }
        "INCRBY" | "DECRBY" => {
            arity(n == 2)?;
            let key = rest.next().unwrap_or_default();
            let by = parse_i64(&rest.next().unwrap_or_default())?;
            let delta = if name == "INCRBY" { by } else { by.checked_neg().ok_or_else(not_integer)? };
            Request::Write(Command::incr_by(key, delta))
        }
        "APPEND" => {
            arity(n == 2)?;
            let key = rest.next().unwrap_or_default();
            Request::Write(Command::append(key, rest.next().unwrap_or_default()))
        }
        other => {
            return Err(Reply::Error(format!(
                "ERR unknown command '{}', with args beginning with: ",
                other.to_ascii_lowercase()
            )));
        }
    };
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(parts: &[&str]) -> Result<Request, Refusal> {
        parse_request(parts.iter().map(|p| p.as_bytes().to_vec()).collect())
    }

    fn err_text(r: Result<Request, Refusal>) -> String {
        match r {
            Err(Reply::Error(e)) => e,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    #[test]
    fn config_get_answers_only_the_known_read_only_parameters() {
        assert_eq!(req(&["config", "get", "save"]), Ok(Request::ConfigGet(vec![b"save".to_vec()])));
        assert_eq!(config_get(&[b"SAVE".to_vec()]), vec![("save", "")]);
        assert_eq!(config_get(&[b"appendonly".to_vec(), b"nope".to_vec()]), vec![("appendonly", "no")]);
        assert_eq!(config_get(&[b"*".to_vec()]).len(), CONFIG_VALUES.len());
        assert!(config_get(&[b"maxclients".to_vec()]).is_empty());
        assert!(err_text(req(&["config", "set", "save", ""])).contains("only CONFIG GET"));
        assert!(err_text(req(&["config", "get"])).contains("wrong number of arguments"));
        assert_eq!(req(&["client", "setinfo", "lib-name", "redis-rs"]), Ok(Request::ClientSetInfo));
    }

    #[test]
    fn reads_and_connection_commands() {
        assert_eq!(req(&["ping"]), Ok(Request::Ping(None)));
        assert_eq!(req(&["PING", "hi"]), Ok(Request::Ping(Some(b"hi".to_vec()))));
        assert_eq!(req(&["Get", "k"]), Ok(Request::Get(b"k".to_vec())));
        assert_eq!(req(&["mget", "a", "b"]), Ok(Request::MGet(vec![b"a".to_vec(), b"b".to_vec()])));
        assert_eq!(req(&["select", "0"]), Ok(Request::Select));
        assert_eq!(req(&["client", "setname", "me"]), Ok(Request::ClientSetName(b"me".to_vec())));
        assert_eq!(req(&["auth", "pw"]), Ok(Request::Auth { password: b"pw".to_vec() }));
        assert_eq!(req(&["auth", "default", "pw"]), Ok(Request::Auth { password: b"pw".to_vec() }));
        assert_eq!(req(&["command", "docs"]), Ok(Request::CommandInfo));
    }

    #[test]
    fn writes_become_raft_commands() {
        assert_eq!(
            req(&["set", "k", "v", "nx"]),
            Ok(Request::Write(Command::set("k", "v", SetCondition::IfAbsent)))
        );
        assert_eq!(
            req(&["SET", "k", "v", "XX"]),
            Ok(Request::Write(Command::set("k", "v", SetCondition::IfPresent)))
        );
        assert_eq!(req(&["decrby", "n", "5"]), Ok(Request::Write(Command::incr_by("n", -5))));
        assert_eq!(req(&["incr", "n"]), Ok(Request::Write(Command::incr_by("n", 1))));
        assert_eq!(
            req(&["mset", "a", "1", "b", "2"]),
            Ok(Request::Write(Command::mset(vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ])))
        );
    }

    #[test]
    fn errors_use_redis_texts() {
        assert_eq!(err_text(req(&["get"])), "ERR wrong number of arguments for 'get' command");
        assert_eq!(err_text(req(&["mset", "a"])), "ERR wrong number of arguments for 'mset' command");
        assert_eq!(err_text(req(&["set", "k", "v", "nx", "xx"])), "ERR syntax error");
        assert_eq!(err_text(req(&["incrby", "n", "x"])), "ERR value is not an integer or out of range");
        assert_eq!(
            err_text(req(&["decrby", "n", &i64::MIN.to_string()])),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(err_text(req(&["select", "1"])), "ERR DB index is out of range");
        assert!(err_text(req(&["flushall"])).starts_with("ERR unknown command 'flushall'"));
        assert!(err_text(req(&["set", "k", "v", "ex", "10"])).contains("not supported"));
        assert!(err_text(req(&["auth", "admin", "pw"])).starts_with("WRONGPASS"));
        assert!(err_text(req(&["client", "kill"])).contains("unknown subcommand"));
        assert_eq!(err_text(parse_request(Vec::new())), "ERR empty command");
    }
}
