//! [`RealFs`]: the [`Fs`] trait on the host filesystem, with real fdatasync and directory fsync.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{DeviceId, DirEntry, EntryKind, Fs, FsFile, Metadata, OpenOptions};

/// The host filesystem. Stateless; cheap to clone.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl RealFs {
    pub fn new() -> Self {
        RealFs
    }
}

#[derive(Debug)]
struct RealFile {
    file: File,
    /// Kept for `Debug` output in error reports.
    #[allow(dead_code)]
    path: PathBuf,
}

impl FsFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        // fdatasync: flushes the data and the metadata needed to read it back (the size), which is
        // all a log or snapshot needs; timestamps are not worth a second journal write.
        self.file.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Fs for RealFs {
    fn open(&self, path: &Path, opts: OpenOptions) -> io::Result<Box<dyn FsFile>> {
        let file = fs::OpenOptions::new()
            .read(opts.read)
            .write(opts.write)
            .create(opts.create && !opts.create_new)
            .create_new(opts.create_new)
            .truncate(opts.truncate)
            .open(path)?;
        Ok(Box::new(RealFile { file, path: path.to_path_buf() }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        // fsync on a directory file descriptor makes its entries (creations, renames, removals)
        // durable; on Linux a directory can be opened read-only for this.
        let dir = File::open(path)?;
        dir.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let kind = if entry.file_type()?.is_dir() { EntryKind::Dir } else { EntryKind::File };
            let name = entry.file_name().into_string().map_err(|raw| {
                io::Error::new(io::ErrorKind::InvalidData, format!("non-UTF-8 file name {raw:?}"))
            })?;
            out.push(DirEntry { name, kind });
        }
        out.sort();
        Ok(out)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        let md = fs::metadata(path)?;
        let kind = if md.is_dir() { EntryKind::Dir } else { EntryKind::File };
        Ok(Metadata { len: md.len(), kind })
    }

    fn device(&self, path: &Path) -> io::Result<DeviceId> {
        let mut probe = Some(path);
        while let Some(p) = probe {
            let p = if p.as_os_str().is_empty() { Path::new(".") } else { p };
            match fs::metadata(p) {
                Ok(md) => return Ok(DeviceId(md.dev())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => probe = p.parent(),
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(io::ErrorKind::NotFound, "no existing ancestor"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{read_file, write_file_durably};

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("a temp dir can be created in tests")
    }

    #[test]
    fn positional_writes_reads_and_len() -> io::Result<()> {
        let dir = tmp();
        let fs = RealFs::new();
        let path = dir.path().join("f");
        let mut f = fs.open(&path, OpenOptions::create_new())?;
        f.write_at(b"hello", 0)?;
        assert_eq!(f.append(b" world")?, 5);
        f.write_at(b"J", 0)?;
        f.sync()?;
        assert_eq!(f.len()?, 11);
        let mut buf = [0u8; 11];
        f.read_exact_at(&mut buf, 0)?;
        assert_eq!(&buf, b"Jello world");
        f.set_len(5)?;
        assert_eq!(read_file(&fs, &path)?, b"Jello");
        let mut past = [0u8; 4];
        assert_eq!(f.read_at(&mut past, 5)?, 0);
        assert_eq!(f.read_exact_at(&mut past, 3).map_err(|e| e.kind()), Err(io::ErrorKind::UnexpectedEof));
        Ok(())
    }

    #[test]
    fn create_new_refuses_existing_file() -> io::Result<()> {
        let dir = tmp();
        let fs = RealFs::new();
        let path = dir.path().join("f");
        fs.open(&path, OpenOptions::create_new())?;
        let err = fs.open(&path, OpenOptions::create_new()).map(|_| ()).map_err(|e| e.kind());
        assert_eq!(err, Err(io::ErrorKind::AlreadyExists));
        Ok(())
    }

    #[test]
    fn namespace_operations() -> io::Result<()> {
        let dir = tmp();
        let fs = RealFs::new();
        let sub = dir.path().join("a/b");
        fs.create_dir_all(&sub)?;
        fs.sync_dir(dir.path())?;
        write_file_durably(&fs, &sub.join("x"), b"1")?;
        write_file_durably(&fs, &sub.join("w"), b"22")?;
        let names: Vec<String> = fs.read_dir(&sub)?.into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["w".to_string(), "x".to_string()]);
        assert_eq!(fs.metadata(&sub.join("w"))?, Metadata { len: 2, kind: EntryKind::File });
        fs.rename(&sub.join("w"), &sub.join("x"))?;
        assert_eq!(read_file(&fs, &sub.join("x"))?, b"22");
        assert!(!fs.exists(&sub.join("w"))?);
        fs.remove_file(&sub.join("x"))?;
        fs.remove_dir(&sub)?;
        assert!(!fs.exists(&sub)?);
        Ok(())
    }

    #[test]
    fn device_of_missing_path_is_its_ancestors() -> io::Result<()> {
        let dir = tmp();
        let fs = RealFs::new();
        let here = fs.device(dir.path())?;
        assert_eq!(fs.device(&dir.path().join("not/yet/here"))?, here);
        Ok(())
    }
}
