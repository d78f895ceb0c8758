//! The receiving side: a snapshot stream spooled to disk chunk by chunk, then finalized into the
//! snapshot directory (D7).

use std::path::{Path, PathBuf};

use super::format::{FOOTER_LEN, MIN_SNAPSHOT_LEN};
use super::writer::{ChunkWriter, SnapshotFile};
use super::{CHUNK_BYTES, SnapshotError, io_err, snapshot_name};
use crate::io::{FsFile, OpenOptions, SharedFs, is_cross_device, tmp_path};

/// The default cap on a received snapshot: 16 GiB.
pub const DEFAULT_SPOOL_CAP_BYTES: u64 = 16 << 30;

/// What the sender announces before the bytes: the snapshot's index, and the length and CRC32C of the
/// stream (the snapshot file without its 4-byte footer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    pub index: u64,
    pub len: u64,
    pub crc: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes may arrive; the spool file exists.
    Receiving,
    /// The spool file exists but the receive failed; `close` removes it.
    Failed,
    /// The spool became the final file (or was copied there): nothing left to clean up.
    Finalized,
    /// The spool file was removed.
    Closed,
}

/// A snapshot being received. Every partial failure leaves exactly one of: the spool file (removed by
/// [`Spool::close`], or by start-up hygiene after a crash) or the final file.
#[derive(Debug)]
pub struct Spool {
    fs: SharedFs,
    path: PathBuf,
    dest_dir: PathBuf,
    info: StreamInfo,
    file: Option<Box<dyn FsFile>>,
    received: u64,
    crc: u32,
    state: State,
    nonce: u64,
}

impl Spool {
    /// Start receiving into `spool_dir`, to be finalized into `dest_dir`. Refuses a stream longer than
    /// `cap_bytes` before writing anything. `nonce` tells concurrent receives of one index apart
    /// ([`super::SnapshotStore::spool`] hands out a counter, so names stay deterministic).
    pub fn create(
        fs: SharedFs,
        spool_dir: &Path,
        dest_dir: &Path,
        info: StreamInfo,
        cap_bytes: u64,
        nonce: u64,
    ) -> Result<Spool, SnapshotError> {
        // The file will be the stream plus the footer; compare without overflow.
        if info.len > cap_bytes.saturating_sub(FOOTER_LEN as u64) {
            return Err(SnapshotError::TooLarge { len: info.len, cap: cap_bytes });
        }
        let total = info.len + FOOTER_LEN as u64;
        let path = spool_dir.join(format!("{}.spool-{nonce}", snapshot_name(info.index)));
        if total < MIN_SNAPSHOT_LEN {
            return Err(SnapshotError::TooSmall { path, len: total });
        }
        let file = fs.open(&path, OpenOptions::create_new()).map_err(io_err(&path))?;
        Ok(Spool {
            fs,
            path,
            dest_dir: dest_dir.to_path_buf(),
            info,
            file: Some(file),
            received: 0,
            crc: 0,
            state: State::Receiving,
            nonce,
        })
    }

    /// The spool file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Write a chunk as it arrives; the CRC is accumulated on the way (no second pass).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        if self.state != State::Receiving {
            return Err(SnapshotError::SpoolClosed);
        }
        let after = self.received.saturating_add(chunk.len() as u64);
        if after > self.info.len {
            return Err(self.fail(SnapshotError::LengthMismatch { expected: self.info.len, received: after }));
        }
        let file = self.file.as_mut().ok_or(SnapshotError::SpoolClosed)?;
        if let Err(e) = file.write_at(chunk, self.received) {
            let err = io_err(&self.path)(e);
            return Err(self.fail(err));
        }
        self.crc = crc32c::crc32c_append(self.crc, chunk);
        self.received = after;
        Ok(())
    }

    /// Mark the receive failed, remove the spool, and hand back the error that caused it.
    fn fail(&mut self, err: SnapshotError) -> SnapshotError {
        self.state = State::Failed;
        if let Err(close) = self.close() {
            tracing::warn!(path = %self.path.display(), error = %close, "could not remove the spool after a failed receive");
        }
        err
    }

    /// Check the announced length and CRC, append the footer, fsync, and move the file into the
    /// snapshot directory (rename, or copy when the rename crosses devices), then fsync that directory.
    pub fn finalize(&mut self) -> Result<SnapshotFile, SnapshotError> {
        if self.state != State::Receiving {
            return Err(SnapshotError::SpoolClosed);
        }
        if self.received != self.info.len {
            let err = SnapshotError::LengthMismatch { expected: self.info.len, received: self.received };
            return Err(self.fail(err));
        }
        if self.crc != self.info.crc {
            return Err(
                self.fail(SnapshotError::StreamCrcMismatch { expected: self.info.crc, computed: self.crc })
            );
        }
        let mut file = self.file.take().ok_or(SnapshotError::SpoolClosed)?;
        let footer = self.crc.to_be_bytes();
        let sealed = file.write_at(&footer, self.received).and_then(|()| {
            // The spool's bytes must be durable before any name in the snapshot directory points at
            // them.
            file.sync()
        });
        drop(file);
        if let Err(e) = sealed {
            return Err(self.fail(io_err(&self.path)(e)));
        }
        let dest = self.dest_dir.join(snapshot_name(self.info.index));
        let len = self.received + FOOTER_LEN as u64;
        let done = SnapshotFile { path: dest.clone(), index: self.info.index, term: 0, len, crc: self.crc };
        // The rename makes the complete, fsynced spool the snapshot; the spool directory is not synced
        // afterwards: if the old name reappears after a power loss, start-up hygiene removes it.
        match self.fs.rename(&self.path, &dest) {
            Ok(()) => {
                // The spool is the final file now: from here on nothing is left to clean up, and a
                // later `close` must not report the spool as missing.
                self.state = State::Finalized;
            }
            Err(e) if is_cross_device(&e) && !crate::failpoint::canary(&*self.fs, "no-exdev-fallback") => {
                tracing::info!(spool = %self.path.display(), path = %dest.display(), "spool and snapshot directory are on different devices: copying");
                self.copy_across(&dest)?;
            }
            Err(e) => {
                // The spool is still there; `close` removes it.
                self.state = State::Failed;
                return Err(io_err(&dest)(e));
            }
        }
        // The final name becomes durable only once its directory is synced.
        self.fs.sync_dir(&self.dest_dir).map_err(io_err(&self.dest_dir))?;
        Ok(done)
    }

    /// The EXDEV fallback: copy into `<name>.copy-<n>.tmp` in the destination directory, fsync, rename, then
    /// remove the spool. On failure the spool stays (for `close`) and the temp copy is removed.
    fn copy_across(&mut self, dest: &Path) -> Result<(), SnapshotError> {
        // A name of this receive's own: two receives of one index may both be copying.
        let tmp =
            tmp_path(&self.dest_dir.join(format!("{}.copy-{}", snapshot_name(self.info.index), self.nonce)));
        // The copy is fsynced inside `copy_to` before this rename gives it the snapshot's name.
        let copied = self.copy_to(&tmp).and_then(|()| self.fs.rename(&tmp, dest).map_err(io_err(dest)));
        if let Err(e) = copied {
            let _ = self.fs.remove_file(&tmp);
            self.state = State::Failed;
            return Err(e);
        }
        self.state = State::Finalized;
        if let Err(e) = self.fs.remove_file(&self.path) {
            // Both files exist now; start-up hygiene removes spool leftovers.
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the spool after copying it");
        }
        Ok(())
    }

    fn copy_to(&self, tmp: &Path) -> Result<(), SnapshotError> {
        let src = self.fs.open(&self.path, OpenOptions::read_only()).map_err(io_err(&self.path))?;
        let dst = self.fs.open(tmp, OpenOptions::create_new()).map_err(io_err(tmp))?;
        let mut w = ChunkWriter::new(dst);
        let mut at = 0u64;
        let mut chunk = vec![0u8; CHUNK_BYTES];
        while at < self.received {
            let n = (self.received - at).min(CHUNK_BYTES as u64) as usize;
            src.read_exact_at(&mut chunk[..n], at).map_err(io_err(&self.path))?;
            w.buf().extend_from_slice(&chunk[..n]);
            w.maybe_flush().map_err(io_err(tmp))?;
            at += n as u64;
        }
        // `finish` appends the footer from the CRC of the copied bytes and fsyncs: a copy that read
        // back different bytes than were received fails the check below instead of landing.
        let (_, crc) = w.finish().map_err(io_err(tmp))?;
        if crc != self.crc {
            return Err(SnapshotError::StreamCrcMismatch { expected: self.crc, computed: crc });
        }
        Ok(())
    }

    /// Remove the spool unless it was finalized. After a successful `finalize` this is a no-op.
    pub fn close(&mut self) -> Result<(), SnapshotError> {
        match self.state {
            State::Finalized | State::Closed => Ok(()),
            State::Receiving | State::Failed => {
                self.file = None;
                self.state = State::Closed;
                match self.fs.remove_file(&self.path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(SnapshotError::Io { path: self.path.clone(), source: e }),
                }
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove an abandoned spool");
        }
    }
}
