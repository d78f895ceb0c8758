//! An etcd v3 client over gRPC: `KV.Put`, `KV.Compact` and `Maintenance.Status`, as unary gRPC calls
//! written straight onto an HTTP/2 connection (the `h2` crate) with the hand-encoded messages of
//! `proto`.
//!
//! A general gRPC stack (tonic over hyper) sent each request as three TCP writes (headers, the data,
//! then an empty end-of-stream frame), and on loopback a write carries the cost of delivering it: the
//! generator spent four times the CPU per write on etcd that it spends on RESP, CPU the servers share on
//! this machine. Here a request's HEADERS and DATA frames are queued together and leave in one write.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request};
use tokio::net::TcpStream;

use crate::proto;

const PUT: &str = "/etcdserverpb.KV/Put";
const COMPACT: &str = "/etcdserverpb.KV/Compact";
const STATUS: &str = "/etcdserverpb.Maintenance/Status";

/// One HTTP/2 connection to one etcd member (clones share it).
#[derive(Clone)]
pub struct EtcdClient {
    send: SendRequest<Bytes>,
    pub addr: String,
}

/// A gRPC status carried in headers or trailers: `Some((code, message))`, or `None` if absent.
fn grpc_status(headers: &HeaderMap) -> Option<(u32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("").to_string();
    Some((code, message))
}

impl EtcdClient {
    /// Connects to `addr` (`host:port`, HTTP/2 without TLS) and starts the connection's task.
    pub async fn connect(addr: &str) -> Result<Self> {
        let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .with_context(|| format!("connect to etcd at {addr}: timed out"))?
            .with_context(|| format!("connect to etcd at {addr}"))?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        // h2 closes a connection holding more than about 100 small unread DATA frames (a guard against
        // a hostile server); every gRPC response is one, and a connection shared by hundreds of clients
        // can hold that many between two polls of their tasks. The server here is ours to trust.
        let (send, conn) = h2::client::Builder::new()
            .data_frame_budget(64 << 20)
            .handshake(tcp)
            .await
            .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
        // The connection's frames are read and written by its own task; it ends when every handle
        // to it is dropped (or the server closes it).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(EtcdClient { send, addr: addr.to_string() })
    }

    /// One unary call: the request message's bytes in, the response message's bytes out.
    async fn call(&mut self, path: &str, message: &[u8]) -> Result<Bytes> {
        let addr = &self.addr;
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .context("build the request")?;
        // The gRPC length-prefixed message: no compression, 4-byte big-endian length, the bytes.
        let mut body = BytesMut::with_capacity(5 + message.len());
        body.put_u8(0);
        body.put_u32(u32::try_from(message.len()).context("message too large")?);
        body.put_slice(message);

        let mut send = self.send.clone().ready().await.with_context(|| format!("etcd {addr}: connection"))?;
        let (response, mut stream) =
            send.send_request(req, false).with_context(|| format!("etcd {addr}: send {path}"))?;
        stream.send_data(body.freeze(), true).with_context(|| format!("etcd {addr}: send {path}"))?;
        self.send = send;

        let response = response.await.with_context(|| format!("etcd {addr}: {path}"))?;
        let (head, mut recv) = response.into_parts();
        if head.status != http::StatusCode::OK {
            bail!("etcd {addr}: {path}: HTTP status {}", head.status);
        }
        // A failed call may answer with headers only (`grpc-status` among them).
        if let Some((code, msg)) = grpc_status(&head.headers)
            && code != 0
        {
            bail!("etcd {addr}: {path}: gRPC status {code}: {msg}");
        }
        let mut data = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.with_context(|| format!("etcd {addr}: {path}: response body"))?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.with_context(|| format!("etcd {addr}: {path}: trailers"))?;
        match trailers.as_ref().and_then(grpc_status).or_else(|| grpc_status(&head.headers)) {
            Some((0, _)) => {}
            Some((code, msg)) => bail!("etcd {addr}: {path}: gRPC status {code}: {msg}"),
            None => bail!("etcd {addr}: {path}: the response has no grpc-status"),
        }
        if data.len() < 5 {
            bail!(
                "etcd {addr}: {path}: response of {} bytes, shorter than a gRPC message header",
                data.len()
            );
        }
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        if data[0] != 0 || data.len() != 5 + len {
            bail!(
                "etcd {addr}: {path}: malformed gRPC response (flag {}, length {len}, {} bytes)",
                data[0],
                data.len()
            );
        }
        Ok(data.freeze().slice(5..))
    }

    /// `KV.Put(key, value)`; the response's header.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<proto::Header> {
        let resp = self.call(PUT, &proto::put_request(key, value)).await?;
        proto::put_response(&resp)
    }

    /// `Maintenance.Status`: this member's id, the leader it knows and the store's revision.
    pub async fn status(&mut self) -> Result<proto::Status> {
        let resp = self.call(STATUS, &[]).await?;
        proto::status_response(&resp)
    }

    /// `KV.Compact(revision, physical = true)`: drops the history before `revision` and returns once
    /// the backend has freed it.
    pub async fn compact(&mut self, revision: i64) -> Result<()> {
        self.call(COMPACT, &proto::compaction_request(revision, true)).await?;
        Ok(())
    }
}
