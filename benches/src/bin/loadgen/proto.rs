//! The few protobuf messages of etcd's v3 API the generator sends and reads, encoded by hand.
//!
//! Field numbers are those of etcd's `etcdserverpb/rpc.proto` (unchanged since v3.0). Encoding four
//! small messages by hand keeps the generator free of `protoc` and of a second `prost` beside the one
//! raft-rs pins for the criterion benches; decoding reads only the fields it needs and skips the rest,
//! as any protobuf reader must.

use anyhow::{Context, Result, bail};

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

/// `PutRequest { key = 1, value = 2 }` (lease, prev_kv and the ignore flags left at their defaults).
pub fn put_request(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + value.len() + 8);
    put_bytes_field(&mut out, 1, key);
    put_bytes_field(&mut out, 2, value);
    out
}

/// `CompactionRequest { revision = 1, physical = 2 }`.
pub fn compaction_request(revision: i64, physical: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    put_varint_field(&mut out, 1, revision as u64);
    if physical {
        put_varint_field(&mut out, 2, 1);
    }
    out
}

/// One field of a message: its number and its value (a varint, or the bytes of a length-delimited field).
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().context("protobuf: truncated varint")?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        bail!("protobuf: varint longer than 10 bytes")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            bail!("protobuf: field of {n} bytes runs past the message's end");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let len = usize::try_from(self.varint()?).context("protobuf: length")?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Other
            }
            w => bail!("protobuf: unsupported wire type {w}"),
        };
        Ok(Some((tag >> 3, value)))
    }
}

/// The fields of `ResponseHeader` the generator reads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

fn header(buf: &[u8]) -> Result<Header> {
    let mut h = Header::default();
    let mut fields = Fields::new(buf);
    while let Some((n, v)) = fields.next_field()? {
        match (n, v) {
            (2, Value::Varint(x)) => h.member_id = x,
            (3, Value::Varint(x)) => h.revision = x as i64,
            (4, Value::Varint(x)) => h.raft_term = x,
            _ => {}
        }
    }
    Ok(h)
}

/// `PutResponse`'s header (`header = 1`).
pub fn put_response(buf: &[u8]) -> Result<Header> {
    let mut fields = Fields::new(buf);
    while let Some((n, v)) = fields.next_field()? {
        if let (1, Value::Bytes(b)) = (n, v) {
            return header(b);
        }
    }
    Ok(Header::default())
}

/// The fields of `StatusResponse` (Maintenance.Status) the generator reads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub header: Header,
    /// The member id of the leader this member knows of (0: none).
    pub leader: u64,
    pub raft_term: u64,
}

/// `StatusResponse { header = 1, leader = 4, raftTerm = 6 }`.
pub fn status_response(buf: &[u8]) -> Result<Status> {
    let mut s = Status::default();
    let mut fields = Fields::new(buf);
    while let Some((n, v)) = fields.next_field()? {
        match (n, v) {
            (1, Value::Bytes(b)) => s.header = header(b)?,
            (4, Value::Varint(x)) => s.leader = x,
            (6, Value::Varint(x)) => s.raft_term = x,
            _ => {}
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_request_bytes_are_protobuf() {
        // protoc --encode=etcdserverpb.PutRequest of key: "k" value: "vv".
        assert_eq!(put_request(b"k", b"vv"), [0x0a, 1, b'k', 0x12, 2, b'v', b'v']);
        let big = vec![7u8; 300];
        let enc = put_request(b"", &big);
        assert_eq!(&enc[..5], &[0x0a, 0, 0x12, 0xac, 0x02]);
        assert_eq!(enc.len(), 5 + 300);
    }

    #[test]
    fn compaction_request_bytes() {
        assert_eq!(compaction_request(300, true), [0x08, 0xac, 0x02, 0x10, 1]);
        assert_eq!(compaction_request(5, false), [0x08, 5]);
    }

    #[test]
    fn status_response_reads_its_fields_and_skips_the_rest() {
        let mut hdr = Vec::new();
        put_varint_field(&mut hdr, 1, 11); // cluster_id
        put_varint_field(&mut hdr, 2, 0x8e9e_05c5_2164_694d); // member_id
        put_varint_field(&mut hdr, 3, 42); // revision
        put_varint_field(&mut hdr, 4, 3); // raft_term
        let mut msg = Vec::new();
        put_bytes_field(&mut msg, 1, &hdr);
        put_bytes_field(&mut msg, 2, b"3.4.23"); // version
        put_varint_field(&mut msg, 3, 20480); // dbSize
        put_varint_field(&mut msg, 4, 0x8e9e_05c5_2164_694d); // leader
        put_varint_field(&mut msg, 5, 9); // raftIndex
        put_varint_field(&mut msg, 6, 3); // raftTerm
        msg.extend_from_slice(&[0x39, 1, 2, 3, 4, 5, 6, 7, 8]); // field 7 as fixed64: skipped
        let s = status_response(&msg).expect("decodes");
        assert_eq!(s.header.member_id, 0x8e9e_05c5_2164_694d);
        assert_eq!(s.header.revision, 42);
        assert_eq!(s.leader, s.header.member_id);
        assert_eq!(s.raft_term, 3);

        let mut put = Vec::new();
        put_bytes_field(&mut put, 1, &hdr);
        assert_eq!(put_response(&put).expect("decodes").revision, 42);
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        assert!(status_response(&[0x0a, 5, 1]).is_err());
        assert!(status_response(&[0x08]).is_err());
        assert!(
            status_response(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1]).is_err()
        );
    }
}
