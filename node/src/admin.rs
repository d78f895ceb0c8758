//! The operator's side of the admin commands (`durakv admin …`): a small blocking Redis-protocol
//! client, and the backup download built on `BACKUP START/READ/DONE` ([`crate::backup`]).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::io::{Fs, OpenOptions, parent_dir, tmp_path};
/// A reply, as the server's own codec names its kinds (the client reads only RESP2's five).
pub use crate::server::resp::Reply as Value;
use crate::server::resp::{Limits, encode_command, parse_reply};
use crate::snapshot::{SnapshotError, SnapshotToken, token_of, verify};

/// The largest reply the client accepts (a backup chunk is at most 4 MiB).
const MAX_REPLY_BYTES: usize = 64 << 20;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connection to the node: {0}")]
    Io(#[from] std::io::Error),
    #[error("the node sent a reply that is not valid RESP: {0}")]
    Protocol(String),
    #[error("the node refused: {0}")]
    Refused(String),
    #[error("{} already exists; choose a new file name (a backup never overwrites one)", .0.display())]
    Exists(PathBuf),
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the backup stream is damaged: {0}")]
    Damaged(String),
    #[error("the downloaded backup does not verify: {0}")]
    Verify(#[from] SnapshotError),
}

/// A blocking connection to one node's client port.
pub struct AdminClient {
    stream: TcpStream,
    /// Bytes read past the last reply.
    buf: Vec<u8>,
}

impl AdminClient {
    /// Connect to `addr` (host:port) and, with a password, authenticate.
    pub fn connect(addr: &str, password: Option<&str>, timeout: Duration) -> Result<AdminClient, AdminError> {
        let connect_err = |source| AdminError::Connect { addr: addr.to_string(), source };
        let sock = addr
            .to_socket_addrs()
            .map_err(connect_err)?
            .next()
            .ok_or_else(|| connect_err(std::io::Error::other("the name resolves to no address")))?;
        let stream = TcpStream::connect_timeout(&sock, timeout).map_err(connect_err)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut client = AdminClient { stream, buf: Vec::new() };
        if let Some(pw) = password {
            client.call_ok(&[b"AUTH", pw.as_bytes()])?;
        }
        Ok(client)
    }

    /// Send one command and read its reply (an error reply is a `Value::Error`, not an `Err`).
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Value, AdminError> {
        self.stream.write_all(&encode_command(args))?;
        read_reply(&mut self.stream, &mut self.buf)
    }

    /// [`AdminClient::call`], with an error reply turned into [`AdminError::Refused`].
    pub fn call_ok(&mut self, args: &[&[u8]]) -> Result<Value, AdminError> {
        match self.call(args)? {
            Value::Error(e) => Err(AdminError::Refused(e)),
            v => Ok(v),
        }
    }
}

/// Send a membership command (`CLUSTER ADDLEARNER|PROMOTE|REMOVE …`) and return the membership
/// it left, one line per member. A node that does not lead answers `NOTLEADER addr`: the command
/// goes there instead (once; a second redirect means leadership is moving: retry later).
pub fn membership(
    client: &mut AdminClient,
    args: &[&[u8]],
    password: Option<&str>,
    timeout: Duration,
) -> Result<Vec<String>, AdminError> {
    let reply = match client.call(args)? {
        Value::Error(e) if e.starts_with("NOTLEADER ") => {
            let leader = e.split(' ').nth(1).unwrap_or_default().to_string();
            let mut at_leader = AdminClient::connect(&leader, password, timeout)?;
            at_leader.call_ok(args)?
        }
        Value::Error(e) => return Err(AdminError::Refused(e)),
        v => v,
    };
    lines(reply)
}

/// The lines of a `CLUSTER MEMBERS` reply.
pub fn lines(reply: Value) -> Result<Vec<String>, AdminError> {
    match reply {
        Value::Array(Some(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
                other => Err(AdminError::Protocol(format!("a member line that is not a string: {other:?}"))),
            })
            .collect(),
        other => Err(AdminError::Protocol(format!("expected the member list, got {other:?}"))),
    }
}

/// Read one reply from `r`, keeping what arrives past it in `buf` for the next. Parsed by the server's
/// own codec ([`parse_reply`]: lengths checked before anything is allocated, nesting bounded).
fn read_reply(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Value, AdminError> {
    let limits = Limits { max_bulk_bytes: MAX_REPLY_BYTES, ..Limits::default() };
    loop {
        if let Some((reply, used)) = parse_reply(buf, &limits).map_err(|e| AdminError::Protocol(e.0))? {
            buf.drain(..used);
            return Ok(reply);
        }
        let had = buf.len();
        buf.resize(had + (64 << 10), 0);
        let n = r.read(&mut buf[had..])?;
        buf.truncate(had + n);
        if n == 0 {
            return Err(AdminError::Protocol("the connection closed".into()));
        }
    }
}

/// What a backup download produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub path: PathBuf,
    /// The log index the backup is at: every write acknowledged before it was taken is in it.
    pub index: u64,
    pub term: u64,
    pub len: u64,
    pub crc: u32,
}

/// Take a backup through `client` and write it to `out`: `BACKUP START` on the node, then the file
/// a chunk at a time, checked end to end (the announced length and CRC32C, then the whole file as a
/// snapshot), written `.tmp` → fsync → rename → fsync(dir). `progress` sees bytes so far and the
/// total. The node's copy is removed afterwards, also when the download failed.
pub fn backup(
    client: &mut AdminClient,
    fs: &dyn Fs,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackupReport, AdminError> {
    if fs.exists(out).map_err(|source| AdminError::Write { path: out.to_path_buf(), source })? {
        return Err(AdminError::Exists(out.to_path_buf()));
    }
    let started = client.call_ok(&[b"BACKUP", b"START"])?;
    let (name, index, term, len, crc) = match started {
        Value::Array(Some(items)) => match items.as_slice() {
            [
                Value::Bulk(Some(name)),
                Value::Integer(i),
                Value::Integer(t),
                Value::Integer(l),
                Value::Integer(c),
            ] if *i >= 0 && *t >= 0 && *l >= 0 && (0..=i64::from(u32::MAX)).contains(c) => {
                (String::from_utf8_lossy(name).into_owned(), *i as u64, *t as u64, *l as u64, *c as u32)
            }
            _ => return Err(AdminError::Protocol(format!("BACKUP START answered {items:?}"))),
        },
        other => return Err(AdminError::Protocol(format!("BACKUP START answered {other:?}"))),
    };
    let downloaded = download(client, fs, out, &name, (index, len, crc), progress);
    // The node's copy is not needed any more, whatever happened to ours.
    let done = client.call_ok(&[b"BACKUP", b"DONE", name.as_bytes()]);
    downloaded?;
    done?;
    Ok(BackupReport { path: out.to_path_buf(), index, term, len, crc })
}

fn download(
    client: &mut AdminClient,
    fs: &dyn Fs,
    out: &Path,
    name: &str,
    (index, len, crc): (u64, u64, u32),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), AdminError> {
    let tmp = tmp_path(out);
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AdminError::Write { path, source }
    };
    let mut file = fs.open(&tmp, OpenOptions::create_truncate()).map_err(write_err(&tmp))?;
    let result = (|| {
        let mut offset = 0u64;
        let mut running = 0u32;
        let body_end = len.saturating_sub(crate::snapshot::FOOTER_LEN as u64);
        while offset < len {
            let count = (len - offset).min(crate::backup::MAX_READ_BYTES).to_string();
            let at = offset.to_string();
            let chunk = match client.call_ok(&[
                b"BACKUP",
                b"READ",
                name.as_bytes(),
                at.as_bytes(),
                count.as_bytes(),
            ])? {
                Value::Bulk(Some(bytes)) if !bytes.is_empty() => bytes,
                Value::Bulk(_) => {
                    return Err(AdminError::Damaged(format!(
                        "the node's copy ended at {offset} bytes of the {len} announced"
                    )));
                }
                other => return Err(AdminError::Protocol(format!("BACKUP READ answered {other:?}"))),
            };
            file.write_at(&chunk, offset).map_err(write_err(&tmp))?;
            let body = &chunk[..(body_end.saturating_sub(offset)).min(chunk.len() as u64) as usize];
            running = crc32c::crc32c_append(running, body);
            offset += chunk.len() as u64;
            progress(offset, len);
        }
        if running != crc {
            return Err(AdminError::Damaged(format!(
                "CRC32C {running:#010x} of what arrived, {crc:#010x} announced"
            )));
        }
        // The bytes are durable before the name points at them.
        file.sync().map_err(write_err(&tmp))?;
        // The whole file as a snapshot: footer, header, every byte's CRC, the announced index.
        let token = token_of(fs, &tmp)?;
        if token != (SnapshotToken { index, crc }) {
            return Err(AdminError::Damaged(format!(
                "the file names index {} and CRC {:#010x}; the node announced {index} and {crc:#010x}",
                token.index, token.crc
            )));
        }
        verify(fs, &tmp, &token)?;
        fs.rename(&tmp, out).map_err(write_err(out))?;
        // The new name is durable once its directory is.
        fs.sync_dir(parent_dir(out)).map_err(write_err(parent_dir(out)))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs.remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(mut bytes: &[u8]) -> Result<Value, AdminError> {
        read_reply(&mut bytes, &mut Vec::new())
    }

    #[test]
    fn replies_parse_and_malformed_ones_are_typed_errors() {
        assert_eq!(parse(b"+OK\r\n").expect("simple"), Value::Simple("OK".into()));
        assert_eq!(parse(b"-ERR no\r\n").expect("error"), Value::Error("ERR no".into()));
        assert_eq!(
            parse(b"*2\r\n$3\r\nabc\r\n:-7\r\n").expect("array"),
            Value::Array(Some(vec![Value::Bulk(Some(b"abc".to_vec())), Value::Integer(-7)]))
        );
        assert_eq!(parse(b"$-1\r\n").expect("null"), Value::Bulk(None));
        for bad in [
            &b""[..],
            b"?x\r\n",
            b"$-5\r\n",
            b"$3\r\nab",
            b"$3\r\nabcd\r\n",
            b"*x\r\n",
            b":12a\r\n",
            b"+no newline",
            b"$99999999999\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(AdminError::Protocol(_) | AdminError::Io(_))),
                "{:?} parsed",
                String::from_utf8_lossy(bad)
            );
        }
        // Bytes past one reply are kept for the next.
        let (mut wire, mut buf) = (&b"+OK\r\n:1\r\n"[..], Vec::new());
        assert_eq!(read_reply(&mut wire, &mut buf).expect("first"), Value::Simple("OK".into()));
        assert_eq!(read_reply(&mut wire, &mut buf).expect("second"), Value::Integer(1));
        let deep = "*1\r\n".repeat(40) + ":1\r\n";
        assert!(matches!(parse(deep.as_bytes()), Err(AdminError::Protocol(_))));
    }
}
