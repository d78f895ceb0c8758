//! The `durakv-disk` daemon and its control socket, as `make powercut` and an operator use them.
//!
//! Failures injected through `ctl`: EIO on the next fsync, a crash right after the next durability
//! operation (power loss), a bit flip, a power loss with the page cache holding unsynced data; and
//! bad commands. Invariants: each injected fault reaches the process using the mount as its errno or
//! its lost bytes; after `restart` only what was synced is there; a bad command is an `error …` reply
//! (exit 1) and the daemon keeps serving; `shutdown` unmounts and exits 0.

#![cfg(feature = "fuse")]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use durakv_faults::fuse::fuse_or_skip;

const BIN: &str = env!("CARGO_BIN_EXE_durakv-disk");

struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    ctl: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("mnt");
        let ctl = tmp.path().join("ctl");
        let child = Command::new(BIN)
            .args(["mount", &dir.to_string_lossy(), "--ctl", &ctl.to_string_lossy(), "--seed", "5"])
            .args(["--sector-odds", "0,1,0"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start durakv-disk");
        let d = Daemon { child: Some(child), dir, ctl, _tmp: tmp };
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.ctl(&["ping"]).0 != 0 {
            assert!(Instant::now() < deadline, "the daemon did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Exit code and reply line of `durakv-disk ctl SOCKET args…`.
    fn ctl(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(BIN)
            .args(["ctl", &self.ctl.to_string_lossy()])
            .args(args)
            .output()
            .expect("run durakv-disk ctl");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = self.ctl(&["shutdown"]);
            let _ = c.wait();
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) {
    let mut f = fs::File::create(path).expect("create");
    f.write_all(bytes).expect("write");
    f.sync_all().expect("fsync");
    let dir = path.parent().expect("a parent");
    fs::File::open(dir).expect("open dir").sync_all().expect("fsync dir");
}

#[test]
fn the_control_socket_injects_faults_and_power_cuts() {
    if !fuse_or_skip("the_control_socket_injects_faults_and_power_cuts") {
        return;
    }
    let mut d = Daemon::start();
    write_synced(&d.path("kept"), b"synced");

    // EIO on the next fsync of *.log, once.
    assert_eq!(d.ctl(&["fail", "eio", "sync", "*.log", "1"]).0, 0);
    let mut log = fs::File::create(d.path("a.log")).expect("create");
    log.write_all(b"x").expect("write");
    assert_eq!(log.sync_all().map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
    drop(log);

    // A power loss with unsynced bytes in the page cache: only the synced survive the remount.
    fs::write(d.path("kept"), b"synced, then overwritten without fsync").expect("overwrite");
    let (code, reply) = d.ctl(&["power-loss"]);
    assert_eq!(code, 0, "{reply}");
    assert_eq!(fs::read(d.path("kept")).expect("read"), b"synced");

    // A crash right after the next durability operation: the disk halts, the process sees EIO.
    assert_eq!(d.ctl(&["crash-after", "1", "power-loss"]).0, 0);
    let first = fs::write(d.path("b"), b"1");
    let after = fs::write(d.path("c"), b"2");
    assert!(first.is_err() || after.is_err(), "nothing failed after the armed crash");
    assert_eq!(d.ctl(&["restart"]).0, 0);
    assert_eq!(fs::read(d.path("kept")).expect("read"), b"synced");

    // A bit flip on the media: the next read sees it.
    let (code, reply) = d.ctl(&["flip", "kept"]);
    assert_eq!(code, 0, "{reply}");
    assert_ne!(fs::read(d.path("kept")).expect("read"), b"synced");

    let (code, stats) = d.ctl(&["stats"]);
    assert_eq!(code, 0);
    for key in ["crash.power_loss=2", "fault.eio.sync=1", "fault.bit_flip.explicit=1"] {
        assert!(stats.contains(key), "{key} missing from {stats}");
    }

    // Bad commands are typed errors; the daemon goes on.
    for bad in
        [&["fail", "eio", "sync"][..], &["halt", "meteor"], &["crash-after", "x", "power-loss"], &["nope"]]
    {
        let (code, reply) = d.ctl(bad);
        assert_eq!(code, 1, "{bad:?}: {reply}");
        assert!(reply.starts_with("error "), "{bad:?}: {reply}");
    }
    assert_eq!(d.ctl(&["ping"]), (0, "ok".to_string()));

    // Shutdown unmounts and exits 0.
    assert_eq!(d.ctl(&["shutdown"]).0, 0);
    let status = d.child.take().expect("the daemon").wait().expect("wait");
    assert!(status.success(), "{status}");
    let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(!mounts.contains(&*d.dir.to_string_lossy()), "still mounted");
    // Nobody answers now: exit 2.
    assert_eq!(d.ctl(&["ping"]).0, 2);
}
