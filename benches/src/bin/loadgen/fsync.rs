//! The raw disk's floor: append `size` bytes to a file and `fdatasync` it, one at a time, in the same
//! directory (so the same filesystem) as the nodes' data. A WAL append that must be durable before the
//! write is acknowledged costs at least this much.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::load::new_histogram;

/// Up to `samples` appends of `size` bytes, each followed by `fdatasync`, stopping early after
/// `max_time`; their latencies in microseconds. The file grows as a log does (no preallocation) and is
/// removed afterwards.
pub fn measure(dir: &Path, size: usize, samples: usize, max_time: Duration) -> Result<Histogram<u64>> {
    let path = dir.join(format!("fdatasync-probe-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    let data = vec![0x5Au8; size];
    let mut hist = new_histogram()?;
    let start = Instant::now();
    for _ in 0..samples {
        let t = Instant::now();
        file.write_all(&data).with_context(|| format!("write {}", path.display()))?;
        file.sync_data().with_context(|| format!("fdatasync {}", path.display()))?;
        hist.saturating_record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX).max(1));
        if start.elapsed() >= max_time {
            break;
        }
    }
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    Ok(hist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_in_a_directory_and_cleans_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let h = measure(dir.path(), 256, 5, Duration::from_secs(5)).expect("measure");
        assert_eq!(h.len(), 5);
        assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 0);
    }
}
