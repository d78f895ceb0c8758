//! Writing a snapshot from the engine's point-in-time view, with bounded memory.

use std::io;
use std::path::{Path, PathBuf};

use super::format::{SnapshotHeader, SnapshotToken, encode_record};
use super::{CHUNK_BYTES, SnapshotError, io_err, snapshot_name};
use crate::fsm::{Engine, FsmError, MetaKey, decode_u64};
use crate::io::{Fs, FsFile, OpenOptions, tmp_path};

/// A complete snapshot file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub index: u64,
    pub term: u64,
    /// The file's length, footer included.
    pub len: u64,
    /// The footer: CRC32C of every byte before it.
    pub crc: u32,
}

impl SnapshotFile {
    /// The token raft carries for this snapshot.
    pub fn token(&self) -> SnapshotToken {
        SnapshotToken { index: self.index, crc: self.crc }
    }
}

/// Buffers writes into `CHUNK_BYTES` pieces and keeps the running CRC32C of everything written.
pub(crate) struct ChunkWriter {
    file: Box<dyn FsFile>,
    buf: Vec<u8>,
    offset: u64,
    crc: u32,
    /// Write each chunk back as it is written (off only for the `snapshot-file-unsynced` canary).
    sync_chunks: bool,
}

impl ChunkWriter {
    pub(crate) fn new(file: Box<dyn FsFile>) -> Self {
        ChunkWriter { file, buf: Vec::with_capacity(CHUNK_BYTES), offset: 0, crc: 0, sync_chunks: true }
    }

    /// The buffer to append to; call [`ChunkWriter::maybe_flush`] after.
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub(crate) fn maybe_flush(&mut self) -> io::Result<()> {
        if self.buf.len() >= CHUNK_BYTES { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_at(&self.buf, self.offset)?;
            self.crc = crc32c::crc32c_append(self.crc, &self.buf);
            self.offset += self.buf.len() as u64;
            self.buf.clear();
            // Write back as we go, a chunk at a time: a file of hundreds of MiB left dirty until one
            // fsync at the end holds up every other fsync on the filesystem while it drains (ext4's
            // ordered mode commits it with them), the raft WAL's included: writes measured up to
            // 0.5 s slower while a snapshot was written (docs/benchmarks.md). Durability still comes
            // from the final fsync in `finish`.
            if self.sync_chunks {
                self.file.sync()?;
            }
        }
        Ok(())
    }

    /// Write the CRC32C footer and fsync. Returns the total length and the CRC.
    pub(crate) fn finish(self) -> io::Result<(u64, u32)> {
        self.finish_synced(true)
    }

    /// [`ChunkWriter::finish`], with the fsync left out only by the `snapshot-file-unsynced` canary.
    fn finish_synced(mut self, sync: bool) -> io::Result<(u64, u32)> {
        self.flush()?;
        let crc = self.crc;
        self.file.write_at(&crc.to_be_bytes(), self.offset)?;
        // The file's bytes must be durable before its name can point at them: the log is compacted
        // below this snapshot once its pointer is recorded, so the file is then the only durable copy
        // of what those entries built (D2, D6).
        if sync {
            self.file.sync()?;
        }
        Ok((self.offset + 4, crc))
    }
}

/// The writer's temporary name, distinct from the spool's copy (`<name>.copy-<n>.tmp`).
fn writer_tmp(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".write");
    tmp_path(Path::new(&name))
}

/// Write the engine's current state as `<dir>/<applied index>.snap`: stream the point-in-time view to
/// `<name>.tmp` a chunk at a time, append the footer, fsync, rename, fsync the directory (D6).
/// `conf_state` and `node_state` go into the header.
pub fn write_snapshot(
    fs: &dyn Fs,
    dir: &Path,
    engine: &dyn Engine,
    conf_state: &[u8],
    node_state: &[u8],
) -> Result<SnapshotFile, SnapshotError> {
    let mut written: Option<(PathBuf, SnapshotHeader, u64, u32)> = None;
    engine.with_snapshot(&mut |snap| {
        let index = snap.meta(MetaKey::AppliedIndex)?.as_deref().and_then(decode_u64).unwrap_or(0);
        let term = snap.meta(MetaKey::AppliedTerm)?.as_deref().and_then(decode_u64).unwrap_or(0);
        let clock = snap.meta(MetaKey::Clock)?.as_deref().and_then(decode_u64).unwrap_or(0);
        let last_delete = snap.meta(MetaKey::LastDelete)?.as_deref().and_then(decode_u64).unwrap_or(0);
        let header = SnapshotHeader {
            index,
            term,
            conf_state: conf_state.to_vec(),
            node_state: node_state.to_vec(),
            clock,
            last_delete,
        };
        let path = dir.join(snapshot_name(index));
        let tmp = writer_tmp(&path);
        let fsm_io = |source| FsmError::Io { path: tmp.clone(), source };
        // `create_new`: a concurrent writer of the same index fails here instead of truncating the
        // file this one is writing.
        let file = fs.open(&tmp, OpenOptions::create_new()).map_err(fsm_io)?;
        let unsynced = crate::failpoint::canary(fs, "snapshot-file-unsynced");
        let mut w = ChunkWriter::new(file);
        w.sync_chunks = !unsynced;
        w.buf().extend_from_slice(&header.encode());
        let streamed = snap.for_each(b"", &mut |k, v| {
            encode_record(w.buf(), k, v);
            w.maybe_flush().map_err(fsm_io)?;
            Ok(true)
        });
        let finished = streamed
            .and_then(|()| crate::failpoint::hit(fs, "snapshot.write").map_err(fsm_io))
            .and_then(|()| w.finish_synced(!unsynced).map_err(fsm_io));
        match finished {
            Ok((len, crc)) => {
                written = Some((path, header, len, crc));
                Ok(())
            }
            Err(e) => {
                // Never leave a half-written snapshot behind (start-up hygiene would also remove it).
                let _ = fs.remove_file(&tmp);
                Err(e)
            }
        }
    })?;
    let (path, header, len, crc) = written.expect("with_snapshot ran the closure to completion");
    let tmp = writer_tmp(&path);
    fs.rename(&tmp, &path).map_err(io_err(&path))?;
    // The new name is durable only once the directory is synced; until then the previous snapshot
    // files stay as they were.
    fs.sync_dir(dir).map_err(io_err(dir))?;
    Ok(SnapshotFile { path, index: header.index, term: header.term, len, crc })
}
