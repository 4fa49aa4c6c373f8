//! atefs mounts of a test cluster's volumes: the `atefs` binary (built with the workspace),
//! mount daemons unmounted on drop, and the arguments that name a volume on a cluster.

use super::Cluster;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn atefs_bin() -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_chain-server"));
    server.with_file_name("atefs")
}

pub fn can_mount() -> bool {
    Path::new("/dev/fuse").exists()
        && Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n")
}

/// A mount daemon in the foreground; unmounted (and killed if need be) on drop.
pub struct Mount {
    pub dir: PathBuf,
    pub child: Child,
}

impl Mount {
    pub fn start(cluster: &Cluster, root: &Path, name: &str, keys: &Path) -> Mount {
        Self::start_with(cluster, root, name, keys, &[])
    }

    pub fn start_with(
        cluster: &Cluster,
        root: &Path,
        name: &str,
        keys: &Path,
        extra: &[&str],
    ) -> Mount {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(atefs_bin())
            .arg("mount")
            .arg(&dir)
            .arg("--data")
            .arg(root.join(format!("{name}-cache")))
            .args(cluster_args(cluster, keys))
            .arg("--foreground")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "mounted", "mount {name} failed");
        Mount { dir, child }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new(atefs_bin())
            .arg("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A cluster, a temp dir and a fresh volume key envelope; None when mounts are impossible.
pub fn setup() -> Option<(Cluster, tempfile::TempDir, PathBuf)> {
    setup_with(1_000_000)
}

/// As [`setup`], with a snapshot every `snapshot_every` entries.
pub fn setup_with(snapshot_every: u64) -> Option<(Cluster, tempfile::TempDir, PathBuf)> {
    if !can_mount() {
        eprintln!("skipped: needs root and /dev/fuse");
        return None;
    }
    assert!(
        atefs_bin().exists(),
        "{} missing: build the workspace (cargo build --workspace)",
        atefs_bin().display()
    );
    let cluster = Cluster::start(true, snapshot_every);
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(&tmp.path().join("keys"));
    Some((cluster, tmp, keys))
}

/// A fresh volume key envelope at `path` (`atefs keygen`).
pub fn keygen(path: &Path) -> PathBuf {
    assert!(Command::new(atefs_bin())
        .arg("keygen")
        .arg(path)
        .status()
        .unwrap()
        .success());
    path.to_path_buf()
}

/// errno of an I/O error.
pub const EIO: i32 = 5;

/// Runs `op` until it succeeds, for at most 30 s; only EIO may come meanwhile.
pub fn eventually(mut op: impl FnMut() -> std::io::Result<()>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match op() {
            Ok(()) => return,
            Err(e) if e.raw_os_error() == Some(EIO) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => panic!("still failing: {e}"),
        }
    }
}

/// The `atefs.status` attribute of a mount's root.
pub fn status_of(dir: &Path) -> String {
    let mut buf = [0u8; 4096];
    let n = rustix::fs::getxattr(dir, "atefs.status", &mut buf[..]).unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// The arguments naming the volume of `keys` on `cluster`: `--server`, `--keys`, `--ca`.
pub fn cluster_args(cluster: &Cluster, keys: &Path) -> [std::ffi::OsString; 6] {
    [
        "--server".into(),
        cluster.endpoints().join(",").into(),
        "--keys".into(),
        keys.into(),
        "--ca".into(),
        cluster.dir.path().join("certs/ca.pem").into(),
    ]
}

/// `atefs COMMAND ARGS` for the volume of `keys` on `cluster`.
pub fn atefs_on(
    cluster: &Cluster,
    keys: &Path,
    command: &str,
    args: &[&str],
) -> std::process::Output {
    Command::new(atefs_bin())
        .arg(command)
        .args(args)
        .args(cluster_args(cluster, keys))
        .output()
        .unwrap()
}

/// statfs through the kernel: (size, used) in bytes.
pub fn volume_usage(dir: &Path) -> (u64, u64) {
    let out = Command::new("stat")
        .args(["-f", "-c", "%b %f %S"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "stat -f {}", dir.display());
    let text = String::from_utf8(out.stdout).unwrap();
    let n: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    (n[0] * n[2], (n[0] - n[1]) * n[2])
}

pub fn volume_size(dir: &Path) -> u64 {
    volume_usage(dir).0
}

/// Waits (at most `limit`) until the `atefs.status` of the mount at `dir` contains `needle`;
/// the status then.
pub fn await_status(dir: &Path, needle: &str, limit: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let now = status_of(dir);
        if now.contains(needle) {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: no {needle:?} in its status after {limit:?}: {now}",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
