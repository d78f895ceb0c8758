//! A minimal Redis-protocol (RESP2) client: one request, then its reply, on one TCP connection.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A reply the generator understands: the simple, error, integer and bulk types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
}

pub struct RespConn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    out: Vec<u8>,
    line: Vec<u8>,
    pub addr: String,
}

/// Appends `args` as one RESP array of bulk strings.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

impl RespConn {
    pub async fn connect(addr: &str) -> Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .with_context(|| format!("connect to {addr}: timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (r, w) = stream.into_split();
        Ok(RespConn {
            reader: BufReader::with_capacity(16 << 10, r),
            writer: w,
            out: Vec::with_capacity(1024),
            line: Vec::with_capacity(128),
            addr: addr.to_string(),
        })
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> Result<Reply> {
        self.out.clear();
        encode_command(&mut self.out, args);
        self.writer.write_all(&self.out).await.with_context(|| format!("write to {}", self.addr))?;
        self.read_reply().await
    }

    async fn read_line(&mut self) -> Result<()> {
        self.line.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.line)
            .await
            .with_context(|| format!("read from {}", self.addr))?;
        if n == 0 {
            bail!("{} closed the connection", self.addr);
        }
        if !self.line.ends_with(b"\r\n") {
            bail!("{}: reply line without CRLF", self.addr);
        }
        self.line.truncate(self.line.len() - 2);
        Ok(())
    }

    async fn read_reply(&mut self) -> Result<Reply> {
        self.read_line().await?;
        let Some((&kind, rest)) = self.line.split_first() else { bail!("{}: empty reply line", self.addr) };
        let text = String::from_utf8_lossy(rest).into_owned();
        match kind {
            b'+' => Ok(Reply::Simple(text)),
            b'-' => Ok(Reply::Error(text)),
            b':' => Ok(Reply::Int(
                text.parse().with_context(|| format!("{}: integer reply {text:?}", self.addr))?,
            )),
            b'$' => {
                let len: i64 =
                    text.parse().with_context(|| format!("{}: bulk length {text:?}", self.addr))?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len).context("bulk length")?;
                let mut buf = vec![0; len + 2];
                self.reader.read_exact(&mut buf).await.with_context(|| format!("read from {}", self.addr))?;
                buf.truncate(len);
                Ok(Reply::Bulk(Some(buf)))
            }
            other => bail!("{}: unexpected reply type {:?}", self.addr, other as char),
        }
    }

    /// `SET key value`; an error reply is an error.
    pub async fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        match self.command(&[b"SET", key, value]).await? {
            Reply::Simple(s) if s == "OK" => Ok(()),
            Reply::Error(e) => bail!("{}: SET answered -{e}", self.addr),
            other => bail!("{}: SET answered {other:?}", self.addr),
        }
    }

    /// `INFO raft` as a map of its `field:value` lines.
    pub async fn info_raft(&mut self) -> Result<HashMap<String, String>> {
        match self.command(&[b"INFO", b"raft"]).await? {
            Reply::Bulk(Some(text)) => Ok(parse_info(&String::from_utf8_lossy(&text))),
            other => bail!("{}: INFO answered {other:?}", self.addr),
        }
    }
}

pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k1", b"abc"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$3\r\nabc\r\n");
    }

    #[test]
    fn info_fields() {
        let m = parse_info("# Raft\r\nrole:leader\r\nleader_resp_addr:127.0.0.1:26379\r\nterm:2\r\n");
        assert_eq!(m.get("leader_resp_addr").map(String::as_str), Some("127.0.0.1:26379"));
        assert_eq!(m.get("role").map(String::as_str), Some("leader"));
    }
}
