//! Real FUSE mounts of the `atefs` binary for tests (needs root and /dev/fuse).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Returns from the test (with a message) where FUSE cannot be mounted.
#[allow(unused_macros)] // not every test file mounts
macro_rules! require_fuse {
    () => {
        if !$crate::common::mount::can_mount() {
            eprintln!("skipped: needs root and /dev/fuse");
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_fuse;

/// `atefs fsck` of the volume in `data` (not mounted) must find it consistent.
pub fn fsck(data: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_atefs"))
        .args(["fsck", "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A mounted volume; unmounted (and its daemon stopped) on drop, also when a test fails.
pub struct Mounted {
    pub dir: PathBuf,
    child: Option<Child>,
    /// The kernel's FUSE connection (/sys/fs/fuse/connections/N), to abort a stuck one.
    connection: Option<String>,
}

/// True when this process can mount FUSE file systems.
pub fn can_mount() -> bool {
    Path::new("/dev/fuse").exists()
        && std::fs::metadata("/root").is_ok_and(|_| unsafe_free_is_root())
}

fn unsafe_free_is_root() -> bool {
    // /proc/self/status "Uid:" line: real, effective, saved, fs.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

impl Mounted {
    /// Mounts the volume in `data` at `dir` and returns once the kernel has it.
    pub fn start(dir: &Path, data: &Path) -> Mounted {
        Self::start_with(dir, data, &[])
    }

    /// [`Self::start`] with more `atefs mount` arguments.
    pub fn start_with(dir: &Path, data: &Path, args: &[&std::ffi::OsStr]) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atefs"));
        cmd.arg("mount")
            .arg(dir)
            .arg("--data")
            .arg(data)
            .arg("--foreground")
            .args(args);
        let mut m = Mounted {
            dir: dir.to_path_buf(),
            child: Some(until_mounted(cmd)),
            connection: None,
        };
        assert!(is_mounted(dir), "{} not in /proc/mounts", dir.display());
        m.connection = connection_of(dir);
        m
    }

    /// Mounts with `cmd` (an `atefs mount --foreground` made by the caller).
    pub fn from_command(dir: &Path, cmd: Command) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let m = Mounted {
            dir: dir.to_path_buf(),
            child: Some(until_mounted(cmd)),
            connection: connection_of(dir),
        };
        assert!(is_mounted(dir), "{} not in /proc/mounts", dir.display());
        m
    }

    /// Closes the reading end of the daemon's stderr, if the caller made it a pipe.
    pub fn close_stderr(&mut self) {
        drop(self.child.as_mut().and_then(|c| c.stderr.take()));
    }

    /// Has `atefs take-over SOCKET` replace this mount's daemon, which must then exit with
    /// success, leaving the same mount (the same FUSE connection) to the new daemon.
    pub fn hand_over(mut self, socket: &Path) -> Mounted {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atefs"));
        cmd.arg("take-over").arg(socket);
        let new = until_mounted(cmd);
        let exit = self.child.take().unwrap().wait().unwrap();
        assert!(exit.success(), "the old daemon exited with {exit}");
        assert_eq!(
            connection_of(&self.dir),
            self.connection,
            "the mount was replaced, not handed over"
        );
        Mounted {
            dir: self.dir.clone(),
            child: Some(new),
            connection: self.connection.clone(),
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Unmounts cleanly and checks the daemon exited with success. A mount some process still
    /// uses (EBUSY) is reported with the processes that hold it, and tried again while they
    /// go away (once in CI: an unknown short-lived holder; the report names it next time).
    pub fn unmount(mut self) {
        let mut tries = 0;
        while !Command::new("umount")
            .arg(&self.dir)
            .status()
            .unwrap()
            .success()
        {
            let holders = holders_of(&self.dir);
            eprintln!("umount {}: busy; held by {holders:?}", self.dir.display());
            tries += 1;
            assert!(tries < 50, "umount failed: still held by {holders:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let exit = self.child.take().unwrap().wait().unwrap();
        assert!(exit.success(), "daemon exited with {exit}");
    }

    /// Sends the daemon SIGTERM and checks it unmounted the directory and exited with success.
    pub fn terminate(mut self) {
        let mut child = self.child.take().unwrap();
        signal(&child, "-TERM");
        let exit = child.wait().unwrap();
        assert!(exit.success(), "daemon exited with {exit}");
        assert!(!is_mounted(&self.dir), "still mounted after SIGTERM");
    }

    /// Unmounts with the daemon stopped (SIGSTOP: the kernel does not wait for it), runs
    /// `meanwhile`, then lets the daemon go on and checks it exited with success: what the
    /// daemon does on its way out happens after `meanwhile`, whatever the scheduling.
    pub fn unmount_stopped_then(mut self, meanwhile: impl FnOnce()) {
        let mut child = self.child.take().unwrap();
        signal(&child, "-STOP");
        // Without --no-canonicalize umount(8) stats the directory first: a request the
        // stopped daemon would never answer.
        let st = Command::new("umount")
            .arg("--no-canonicalize")
            .arg(&self.dir)
            .status()
            .unwrap();
        if !st.success() {
            signal(&child, "-CONT");
            self.child = Some(child);
            panic!("umount --no-canonicalize {} failed", self.dir.display());
        }
        meanwhile();
        signal(&child, "-CONT");
        let exit = child.wait().unwrap();
        assert!(exit.success(), "daemon exited with {exit}");
    }

    /// Kills the daemon with SIGKILL (a crash) and clears the dead mount. Fails if the daemon
    /// does not exit: a thread of it waiting in its own mount cannot be killed, and the kernel
    /// keeps the connection (and the daemon) until that thread's request is answered. Such a
    /// connection is aborted first, so that nothing is left behind.
    pub fn kill9(mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = c.wait();
            let _ = tx.send(());
        });
        let exited = rx.recv_timeout(std::time::Duration::from_secs(30)).is_ok();
        if !exited {
            self.abort_connection();
        }
        let _ = waiter.join();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        assert!(
            exited,
            "the daemon outlived SIGKILL by 30 s (stuck in a request to its own mount)"
        );
    }

    fn abort_connection(&self) {
        let Some(conn) = &self.connection else { return };
        let base = Path::new("/sys/fs/fuse/connections");
        if !base.join(conn).exists() {
            let _ = Command::new("mount")
                .args(["-t", "fusectl", "none"])
                .arg(base)
                .status();
        }
        let _ = std::fs::write(base.join(conn).join("abort"), "1");
    }
}

/// Runs an atefs command that prints "mounted" once it serves a mount, and returns it then.
fn until_mounted(mut cmd: Command) -> Child {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    if read.is_err() || line.trim() != "mounted" {
        let _ = child.kill();
        let status = child.wait();
        panic!("atefs did not mount ({status:?}): {line:?}");
    }
    child
}

/// Processes with a working directory, root or open file under `dir`: (pid, command, path).
fn holders_of(dir: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        let mut links: Vec<PathBuf> = ["cwd", "root"].iter().map(|l| p.path().join(l)).collect();
        if let Ok(fds) = std::fs::read_dir(p.path().join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        for l in links {
            if let Ok(target) = std::fs::read_link(&l) {
                if target.starts_with(dir) {
                    out.push((pid.clone(), comm.trim().to_string(), target));
                }
            }
        }
    }
    out
}

/// Sends `child` the signal `sig` (as kill(1) names it, e.g. "-TERM").
fn signal(child: &Child, sig: &str) {
    let pid = child.id().to_string();
    let st = Command::new("kill").args([sig, &pid]).status().unwrap();
    assert!(st.success(), "kill {sig} {pid} failed");
}

/// The FUSE connection number of the mount at `dir`: the minor of its device, read from
/// /proc/self/mountinfo (a stat would be a request to the daemon).
fn connection_of(dir: &Path) -> Option<String> {
    let canon = dir.canonicalize().ok()?;
    let canon = canon.to_str()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The newest mount on that path is the last line naming it.
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(4) != Some(&canon) {
            return None;
        }
        f.get(2)?
            .split_once(':')
            .map(|(_, minor)| minor.to_string())
    })
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A test that failed may leave a daemon waiting in its own mount, which no kill
            // ends: aborting the connection first answers every request.
            self.abort_connection();
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// True when `dir` is a mount point in /proc/mounts.
pub fn is_mounted(dir: &Path) -> bool {
    mount_type(dir).is_some()
}

/// The file system type of the newest mount on `dir` in /proc/mounts.
pub fn mount_type(dir: &Path) -> Option<String> {
    let canon = dir.canonicalize().unwrap_or(dir.to_path_buf());
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1).copied() == canon.to_str()).then(|| f.get(2).map(|t| t.to_string()))?
        })
}
