//! Verify-then-restore (D8) and the idempotent cold start (D9).

use std::path::{Path, PathBuf};

use super::format::{FOOTER_LEN, MAX_RECORD_FIELD_BYTES, MIN_SNAPSHOT_LEN, SnapshotHeader, SnapshotToken};
use super::{CHUNK_BYTES, SnapshotError, io_err};
use crate::codec::be_u32;
use crate::fsm::Engine;
use crate::io::{Fs, FsFile, OpenOptions};

/// One record of a snapshot body.
type KeyValue = (Vec<u8>, Vec<u8>);

/// A snapshot file whose size, footer and whole-body CRC were checked against its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSnapshot {
    pub path: PathBuf,
    pub header: SnapshotHeader,
    pub len: u64,
    pub crc: u32,
}

/// Reads a snapshot file front to back in chunks, keeping the CRC32C of every byte handed out.
struct Reader {
    file: Box<dyn FsFile>,
    path: PathBuf,
    /// Bytes before the footer.
    end: u64,
    /// File offset of `buf[0]`.
    base: u64,
    buf: Vec<u8>,
    pos: usize,
    /// CRC of the bytes in `[0, base + buf.len())`.
    crc: u32,
}

impl Reader {
    /// Open `path`, check its size and its footer against the token. Returns the reader and footer.
    fn open(fs: &dyn Fs, path: &Path, token: &SnapshotToken) -> Result<(Reader, u32), SnapshotError> {
        let file = fs.open(path, OpenOptions::read_only()).map_err(io_err(path))?;
        let len = file.len().map_err(io_err(path))?;
        if len < MIN_SNAPSHOT_LEN {
            return Err(SnapshotError::TooSmall { path: path.to_path_buf(), len });
        }
        let end = len - FOOTER_LEN as u64;
        let mut footer = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut footer, end).map_err(io_err(path))?;
        let footer = u32::from_be_bytes(footer);
        if footer != token.crc {
            return Err(SnapshotError::TokenCrcMismatch {
                path: path.to_path_buf(),
                footer,
                token: token.crc,
            });
        }
        let reader = Reader { file, path: path.to_path_buf(), end, base: 0, buf: Vec::new(), pos: 0, crc: 0 };
        Ok((reader, footer))
    }

    /// Make `n` unread bytes available; `false` at the end of the body.
    fn fill(&mut self, n: usize) -> Result<bool, SnapshotError> {
        while self.buf.len() - self.pos < n {
            let next = self.base + self.buf.len() as u64;
            if next >= self.end {
                return Ok(false);
            }
            // Drop what was consumed so memory stays O(chunk + largest record).
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
            let want = (self.end - next).min(CHUNK_BYTES.max(n) as u64) as usize;
            let old = self.buf.len();
            self.buf.resize(old + want, 0);
            self.file.read_exact_at(&mut self.buf[old..], next).map_err(io_err(&self.path))?;
            self.crc = crc32c::crc32c_append(self.crc, &self.buf[old..]);
        }
        Ok(true)
    }

    fn take(&mut self, n: usize) -> Result<Option<&[u8]>, SnapshotError> {
        if !self.fill(n)? {
            return Ok(None);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(Some(out))
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Read the header.
    fn header(&mut self) -> Result<SnapshotHeader, SnapshotError> {
        let short = || SnapshotError::BadHeader("file ends inside the header".into());
        let prefix = self.take(14)?.ok_or_else(short)?.to_vec();
        let len = SnapshotHeader::declared_len(&prefix)? as usize;
        let rest = self.take(len - 14)?.ok_or_else(short)?;
        let mut bytes = prefix;
        bytes.extend_from_slice(rest);
        SnapshotHeader::decode(&bytes)
    }

    /// The next record, or `None` at the end of the body.
    fn record(&mut self) -> Result<Option<KeyValue>, SnapshotError> {
        let at = self.offset();
        if at == self.end {
            return Ok(None);
        }
        let bad = |reason: &str| SnapshotError::BadBody { offset: at, reason: reason.into() };
        let lens = self.take(8)?.ok_or_else(|| bad("file ends inside a record header"))?;
        let klen = u64::from(be_u32(lens, 0));
        let vlen = u64::from(be_u32(lens, 4));
        if klen > MAX_RECORD_FIELD_BYTES || vlen > MAX_RECORD_FIELD_BYTES {
            return Err(bad("record length over 1 GiB"));
        }
        if self.offset() + klen + vlen > self.end {
            return Err(bad("record runs past the end of the body"));
        }
        let key = self.take(klen as usize)?.ok_or_else(|| bad("file ends inside a key"))?.to_vec();
        let value = self.take(vlen as usize)?.ok_or_else(|| bad("file ends inside a value"))?.to_vec();
        Ok(Some((key, value)))
    }

    /// Every body byte read ahead but not handed out yet, after reading more if none are: `None`
    /// at the end of the body.
    fn take_buffered(&mut self) -> Result<Option<&[u8]>, SnapshotError> {
        if !self.fill(1)? {
            return Ok(None);
        }
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        Ok(Some(out))
    }

    /// Read the rest of the body (CRC only) and return the CRC of the whole body.
    fn finish_crc(&mut self) -> Result<u32, SnapshotError> {
        self.pos = self.buf.len();
        while self.fill(1)? {
            self.pos = self.buf.len();
        }
        Ok(self.crc)
    }
}

/// The checks after a full read, in the order that names the root cause: a damaged body explains a
/// bad header or record too, so the CRC comes first; then the header must be the token's snapshot.
fn check_read(
    path: &Path,
    token: &SnapshotToken,
    computed: u32,
    footer: u32,
    header: Result<SnapshotHeader, SnapshotError>,
) -> Result<SnapshotHeader, SnapshotError> {
    if computed != footer {
        return Err(SnapshotError::BodyCrcMismatch { path: path.to_path_buf(), computed, footer });
    }
    let header = header?;
    if header.index != token.index {
        return Err(SnapshotError::BadHeader(format!(
            "header index {} does not match the token's {}",
            header.index, token.index
        )));
    }
    Ok(header)
}

/// Check a snapshot file against its token: size, footer, whole-body CRC, header. Reads the file once.
pub fn verify(fs: &dyn Fs, path: &Path, token: &SnapshotToken) -> Result<VerifiedSnapshot, SnapshotError> {
    let (mut r, footer) = Reader::open(fs, path, token)?;
    let header = r.header();
    let computed = r.finish_crc()?;
    let header = check_read(path, token, computed, footer, header)?;
    Ok(VerifiedSnapshot { path: path.to_path_buf(), header, len: r.end + FOOTER_LEN as u64, crc: footer })
}

/// A snapshot file's header alone (its size and footer checked against the token, the body not
/// read): for a file already verified whole.
pub fn read_header(fs: &dyn Fs, path: &Path, token: &SnapshotToken) -> Result<SnapshotHeader, SnapshotError> {
    let (mut r, _footer) = Reader::open(fs, path, token)?;
    r.header()
}

/// Restore the engine from a snapshot file: stream it into a fresh location while checking its CRC,
/// and swap it in (with the applied index = the snapshot's index) only if every check passed.
/// Returns the header, whose state the caller applies.
pub fn restore(
    fs: &dyn Fs,
    engine: &dyn Engine,
    path: &Path,
    token: &SnapshotToken,
) -> Result<SnapshotHeader, SnapshotError> {
    let (mut r, footer) = Reader::open(fs, path, token)?;
    let mut target = engine.begin_restore()?;
    let streamed = r.header().and_then(|header| {
        while let Some((k, v)) = r.record()? {
            // The expiry index is not in the file: it follows from the values' deadlines.
            if let Some(deadline) = crate::fsm::value::deadline_of(&v) {
                target.put_index(&crate::fsm::value::index_key(deadline, &k))?;
            }
            target.put(&k, &v)?;
        }
        target.put_meta(crate::fsm::MetaKey::Clock, &header.clock.to_be_bytes())?;
        target.put_meta(crate::fsm::MetaKey::LastDelete, &header.last_delete.to_be_bytes())?;
        Ok(header)
    });
    let computed = r.finish_crc()?;
    let header = check_read(path, token, computed, footer, streamed)?;
    // An injected failure here drops the restored state unseen, as a crash before the swap would.
    crate::failpoint::hit(fs, "snapshot.restore")
        .map_err(|source| SnapshotError::Io { path: path.to_path_buf(), source })?;
    // Only now does the restored state become visible.
    target.commit(header.index, header.term)?;
    Ok(header)
}

/// Which path a cold start took, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColdStart {
    /// The engine already held the snapshot's state; the file was verified and its header applied.
    Skipped { index: u64, applied: u64 },
    /// The body was restored.
    Restored { index: u64, reason: String },
}

/// Start from a snapshot (D9): if the engine's durable applied index is at or past the snapshot's,
/// skip the body restore — after verifying size, footer and body CRC and applying the header state
/// through `apply_header`. Any doubt (meta missing, unreadable, behind) means a full restore.
pub fn cold_start(
    fs: &dyn Fs,
    engine: &dyn Engine,
    path: &Path,
    token: &SnapshotToken,
    apply_header: &mut dyn FnMut(&SnapshotHeader) -> Result<(), SnapshotError>,
) -> Result<ColdStart, SnapshotError> {
    let reason = match engine.applied_index() {
        Ok(Some(applied)) if applied >= token.index => {
            if crate::failpoint::canary(fs, "skip-restore-without-crc") {
                return Ok(ColdStart::Skipped { index: token.index, applied });
            }
            let verified = verify(fs, path, token)?;
            apply_header(&verified.header)?;
            tracing::info!(
                index = token.index,
                applied,
                path = %path.display(),
                "cold start: snapshot restore skipped, the engine's durable applied index is at or past it"
            );
            return Ok(ColdStart::Skipped { index: token.index, applied });
        }
        Ok(Some(applied)) => format!("applied index {applied} is behind the snapshot"),
        Ok(None) => "applied index missing".to_string(),
        Err(e) => format!("applied index unreadable: {e}"),
    };
    tracing::info!(index = token.index, path = %path.display(), reason = %reason, "cold start: restoring the snapshot");
    let header = restore(fs, engine, path, token)?;
    apply_header(&header)?;
    Ok(ColdStart::Restored { index: token.index, reason })
}

/// Call before persisting a snapshot pointer at `index`: make the engine's applied index durable and
/// check it is at or past `index`, so a cold start after a crash can trust the skip (D9).
pub fn ensure_applied_durable(engine: &dyn Engine, index: u64) -> Result<(), SnapshotError> {
    engine.flush()?;
    let applied = engine.applied_index()?;
    if applied.is_none_or(|a| a < index) {
        return Err(SnapshotError::AppliedBehind { snapshot: index, applied });
    }
    Ok(())
}

/// The token of a snapshot file found on its own (a backup): the index from its header and the CRC
/// from its footer. Nothing is verified but the header's form: follow with [`verify`].
pub fn token_of(fs: &dyn Fs, path: &Path) -> Result<SnapshotToken, SnapshotError> {
    let file = fs.open(path, OpenOptions::read_only()).map_err(io_err(path))?;
    let len = file.len().map_err(io_err(path))?;
    if len < MIN_SNAPSHOT_LEN {
        return Err(SnapshotError::TooSmall { path: path.to_path_buf(), len });
    }
    let mut prefix = [0u8; 14];
    file.read_exact_at(&mut prefix, 0).map_err(io_err(path))?;
    let header_len = u64::from(SnapshotHeader::declared_len(&prefix)?);
    if header_len > len - FOOTER_LEN as u64 {
        return Err(SnapshotError::BadHeader("the header runs past the end of the file".into()));
    }
    let header = file.read_exact_vec_at(header_len as usize, 0).map_err(io_err(path))?;
    let index = SnapshotHeader::decode(&header)?.index;
    let mut footer = [0u8; FOOTER_LEN];
    file.read_exact_at(&mut footer, len - FOOTER_LEN as u64).map_err(io_err(path))?;
    Ok(SnapshotToken { index, crc: u32::from_be_bytes(footer) })
}

/// Copy the snapshot at `src` (checked against `token` as it streams) to `dst` with its header's
/// conf state replaced by `conf_state`: the body is copied byte for byte, a chunk at a time, and the
/// footer recomputed. The copy is written `.tmp` → fsync → rename → fsync(dir) (D6), and is left
/// behind only if the source's whole-body CRC matched its footer.
pub fn copy_with_conf_state(
    fs: &dyn Fs,
    src: &Path,
    token: &SnapshotToken,
    dst: &Path,
    conf_state: &[u8],
) -> Result<super::SnapshotFile, SnapshotError> {
    let (mut r, footer) = Reader::open(fs, src, token)?;
    let header = r.header();
    let tmp = crate::io::tmp_path(dst);
    let file = fs.open(&tmp, OpenOptions::create_new()).map_err(io_err(&tmp))?;
    let mut w = super::writer::ChunkWriter::new(file);
    let copied = (|| {
        // The source cluster's member addresses do not belong to the new cluster, which starts from
        // its members' configuration.
        let header = SnapshotHeader { conf_state: conf_state.to_vec(), node_state: Vec::new(), ..header? };
        w.buf().extend_from_slice(&header.encode());
        while let Some(bytes) = r.take_buffered()? {
            w.buf().extend_from_slice(bytes);
            w.maybe_flush().map_err(io_err(&tmp))?;
        }
        Ok(header)
    })();
    let computed = r.finish_crc()?;
    let finished = check_read(src, token, computed, footer, copied)
        .and_then(|header| w.finish().map(|(len, crc)| (header, len, crc)).map_err(io_err(&tmp)));
    let (header, len, crc) = match finished {
        Ok(done) => done,
        Err(e) => {
            // Never leave a half-written copy behind.
            let _ = fs.remove_file(&tmp);
            return Err(e);
        }
    };
    // The copy's bytes were fsynced by `finish`; the name points at them only once complete.
    fs.rename(&tmp, dst).map_err(io_err(dst))?;
    // ... and the name itself is durable only once its directory is synced.
    let dir = crate::io::parent_dir(dst);
    fs.sync_dir(dir).map_err(io_err(dir))?;
    Ok(super::SnapshotFile { path: dst.to_path_buf(), index: header.index, term: header.term, len, crc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::RealFs;

    #[test]
    fn a_file_that_is_no_snapshot_has_no_token_and_says_why() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fs = RealFs::new();
        let path = dir.path().join("x.backup");
        std::fs::write(&path, b"short").expect("write");
        assert!(matches!(token_of(&fs, &path), Err(SnapshotError::TooSmall { .. })));
        std::fs::write(&path, vec![0x5a; 4096]).expect("write");
        assert!(matches!(token_of(&fs, &path), Err(SnapshotError::BadHeader(_))));
        assert!(matches!(token_of(&fs, &dir.path().join("missing")), Err(SnapshotError::NotFound { .. })));
    }
}
