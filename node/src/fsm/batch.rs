//! [`WriteBatch`]: the unit of atomic writes, and its byte encoding for [`super::SimEngine`]'s journal.
//!
//! ```text
//! batch   := op_count u32, op*, meta_count u32, meta*
//! op      := 1 key                  (put: key then value)  -> tag 1, key, value
//!          | 2 key                  (delete)
//!          | 3 start has_end u8 [end] (delete range)
//!          | 4 key                  (put an expiry index key)
//!          | 5 key                  (delete an expiry index key)
//!          | 6                      (clear the expiry index)
//! meta    := id u8, value
//! key, value, start, end := len u32, bytes
//! ```
//! All integers big-endian. The decoder rejects trailing bytes, unknown tags and lengths past the end.

use super::MetaKey;

/// One mutation of client data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Delete every client key in `[start, end)`; `end = None` deletes to the last key. Never touches
    /// meta values.
    DeleteRange {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
    /// Add a key to the expiry index (its own namespace; [`super::value::index_key`]).
    PutIndex {
        key: Vec<u8>,
    },
    DeleteIndex {
        key: Vec<u8>,
    },
    /// Remove every expiry index key (FLUSHALL).
    ClearIndex,
}

/// Mutations and meta values applied together, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
    metas: Vec<(MetaKey, Vec<u8>)>,
}

/// A journal batch that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed FSM batch at byte {at}: {what}")]
pub struct DecodeError {
    pub at: usize,
    pub what: &'static str,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Put { key: key.into(), value: value.into() });
        self
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    pub fn delete_range(&mut self, start: impl Into<Vec<u8>>, end: Option<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::DeleteRange { start: start.into(), end });
        self
    }

    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// Set a meta value in the same atomic batch as the data.
    pub fn set_meta(&mut self, key: MetaKey, value: Vec<u8>) -> &mut Self {
        self.metas.push((key, value));
        self
    }

    /// Record the applied raft index in this batch.
    pub fn set_applied_index(&mut self, index: u64) -> &mut Self {
        self.set_meta(MetaKey::AppliedIndex, index.to_be_bytes().to_vec())
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn metas(&self) -> &[(MetaKey, Vec<u8>)] {
        &self.metas
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.metas.is_empty()
    }

    /// The journal encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Sized up front: a batch can carry values of hundreds of KiB, and growing by doubling
        // copied them several times per write.
        let framed = |b: &[u8]| 4 + b.len();
        let len = 4
            + self
                .ops
                .iter()
                .map(|op| match op {
                    Op::Put { key, value } => 1 + framed(key) + framed(value),
                    Op::Delete { key } => 1 + framed(key),
                    Op::DeleteRange { start, end } => {
                        1 + framed(start) + 1 + end.as_deref().map_or(0, framed)
                    }
                    Op::PutIndex { key } | Op::DeleteIndex { key } => 1 + framed(key),
                    Op::ClearIndex => 1,
                })
                .sum::<usize>()
            + 4
            + self.metas.iter().map(|(_, v)| 1 + framed(v)).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        let put = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        out.extend_from_slice(&(self.ops.len() as u32).to_be_bytes());
        for op in &self.ops {
            match op {
                Op::Put { key, value } => {
                    out.push(1);
                    put(&mut out, key);
                    put(&mut out, value);
                }
                Op::Delete { key } => {
                    out.push(2);
                    put(&mut out, key);
                }
                Op::DeleteRange { start, end } => {
                    out.push(3);
                    put(&mut out, start);
                    match end {
                        Some(e) => {
                            out.push(1);
                            put(&mut out, e);
                        }
                        None => out.push(0),
                    }
                }
                Op::PutIndex { key } => {
                    out.push(4);
                    put(&mut out, key);
                }
                Op::DeleteIndex { key } => {
                    out.push(5);
                    put(&mut out, key);
                }
                Op::ClearIndex => out.push(6),
            }
        }
        out.extend_from_slice(&(self.metas.len() as u32).to_be_bytes());
        for (key, value) in &self.metas {
            out.push(key.id());
            put(&mut out, value);
        }
        debug_assert_eq!(out.len(), len, "the encoding's size is computed up front");
        out
    }

    /// Decode the journal encoding. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<WriteBatch, DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        let mut batch = WriteBatch::new();
        let ops = r.u32()?;
        for _ in 0..ops {
            let op = match r.u8()? {
                1 => Op::Put { key: r.bytes()?, value: r.bytes()? },
                2 => Op::Delete { key: r.bytes()? },
                3 => {
                    let start = r.bytes()?;
                    let end = match r.u8()? {
                        0 => None,
                        1 => Some(r.bytes()?),
                        _ => return Err(r.err("bad delete-range end flag")),
                    };
                    Op::DeleteRange { start, end }
                }
                4 => Op::PutIndex { key: r.bytes()? },
                5 => Op::DeleteIndex { key: r.bytes()? },
                6 => Op::ClearIndex,
                _ => return Err(r.err("unknown op tag")),
            };
            batch.ops.push(op);
        }
        let metas = r.u32()?;
        for _ in 0..metas {
            let key = MetaKey::from_id(r.u8()?).ok_or_else(|| r.err("unknown meta key"))?;
            batch.metas.push((key, r.bytes()?));
        }
        if r.at != bytes.len() {
            return Err(r.err("trailing bytes"));
        }
        Ok(batch)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn err(&self, what: &'static str) -> DecodeError {
        DecodeError { at: self.at, what }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end =
            self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| self.err("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = WriteBatch::new();
        b.put("k", "v").delete("x").delete_range("a", Some(b"c".to_vec())).delete_range("z", None);
        b.push(Op::PutIndex { key: b"i1".to_vec() }).push(Op::DeleteIndex { key: b"i0".to_vec() });
        b.push(Op::ClearIndex);
        b.set_applied_index(42);
        assert_eq!(WriteBatch::decode(&b.encode()), Ok(b));
    }

    #[test]
    fn malformed_batches_are_typed_errors() {
        let mut good = WriteBatch::new();
        good.put("key", "value").set_applied_index(1);
        let bytes = good.encode();
        for cut in 0..bytes.len() {
            assert!(WriteBatch::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(WriteBatch::decode(&extra).map_err(|e| e.what), Err("trailing bytes"));
        let mut bad_tag = bytes;
        bad_tag[4] = 9;
        assert_eq!(WriteBatch::decode(&bad_tag).map_err(|e| e.what), Err("unknown op tag"));
        // A huge length must not allocate or panic.
        assert!(WriteBatch::decode(&[0, 0, 0, 1, 1, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
    }
}
