//! The `atefs mount` daemons behind staged volumes: started in their own process group (a
//! restart of the plugin, or a signal kubelet sends it, leaves them mounted), found again after
//! a restart by the pid file beside the volume's state, and waited for at unstage, since a
//! daemon commits what it still buffers after the kernel has unmounted its directory.

use crate::registry::{Entry, Registry};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

/// Why a daemon could not be started or did not end well.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The atefs binary could not be run.
    #[error("starting {bin}: {source}")]
    Spawn {
        /// The binary.
        bin: String,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon ended before mounting, or failed at the end.
    #[error("the atefs mount daemon failed ({status}); its log ends:\n{log}")]
    Failed {
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// No answer in time.
    #[error("the atefs mount daemon of {dir} {what} within {secs} s; its log ends:\n{log}")]
    Timeout {
        /// The mount point.
        dir: String,
        /// What it did not do.
        what: &'static str,
        /// The bound.
        secs: u64,
        /// The end of its log.
        log: String,
    },
    /// The node agent could not be asked, or said no (its message).
    #[error("node agent: {0}")]
    Agent(String),
    /// Files beside the volume.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// How to mount one volume.
#[derive(Clone, Debug)]
pub struct MountSpec {
    /// The staging directory.
    pub dir: PathBuf,
    /// The mount's cache of the chain.
    pub cache: PathBuf,
    /// The key envelope (mode 0600).
    pub keys: PathBuf,
    /// Chain-server API addresses.
    pub servers: Vec<String>,
    /// CA certificate to check the servers against.
    pub ca: Option<PathBuf>,
    /// Talk to the servers without TLS.
    pub insecure_plaintext: bool,
    /// A single-writer mount (`atefs mount --exclusive`).
    pub exclusive: bool,
    /// Quota reported by statfs.
    pub quota: Option<u64>,
    /// How long its calls to the cluster retry (`atefs mount --timeout-secs`).
    pub call_timeout_secs: Option<u64>,
    /// The daemon's log (its stderr).
    pub log: PathBuf,
    /// Where its pid is kept.
    pub pid_file: PathBuf,
}

/// How a daemon ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code 0.
    pub success: bool,
    /// The exit status, for people.
    pub status: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.status)
    }
}

impl From<std::process::ExitStatus> for Exit {
    fn from(s: std::process::ExitStatus) -> Self {
        Self {
            success: s.success(),
            status: s.to_string(),
        }
    }
}

/// The atefs binary: `given`, else `atefs` beside the running binary (as in the image).
pub fn atefs_binary(given: Option<PathBuf>) -> std::io::Result<PathBuf> {
    match given {
        Some(p) => Ok(p),
        None => Ok(std::env::current_exe()?.with_file_name("atefs")),
    }
}

/// The last `n` lines of a log, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The daemons this process started (its children: it reaps them).
#[derive(Debug)]
pub struct Daemons {
    bin: PathBuf,
    exits: Mutex<HashMap<u32, watch::Receiver<Option<Exit>>>>,
    registry: Option<Arc<Registry>>,
}

impl Daemons {
    /// Daemons run by `bin` (the atefs binary).
    pub fn new(bin: PathBuf) -> Self {
        Self {
            bin,
            exits: Mutex::new(HashMap::new()),
            registry: None,
        }
    }

    /// How many daemons this process started are still running.
    pub fn running(&self) -> usize {
        self.exits
            .lock()
            .values()
            .filter(|rx| rx.borrow().is_none())
            .count()
    }

    /// Daemons run by `bin` that a later agent can take over (registry.rs).
    pub fn with_registry(bin: PathBuf, registry: Registry) -> Self {
        Self {
            registry: Some(Arc::new(registry)),
            ..Self::new(bin)
        }
    }

    /// Starts a daemon and returns its pid once it reports the file system mounted.
    pub async fn start(&self, spec: &MountSpec, limit: Duration) -> Result<u32, DaemonError> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("mount")
            .arg(&spec.dir)
            .arg("--foreground")
            .arg("--data")
            .arg(&spec.cache)
            .arg("--keys")
            .arg(&spec.keys)
            .arg("--server")
            .arg(spec.servers.join(","));
        if let Some(ca) = &spec.ca {
            cmd.arg("--ca").arg(ca);
        }
        if spec.insecure_plaintext {
            cmd.arg("--insecure-plaintext");
        }
        if spec.exclusive {
            cmd.arg("--exclusive");
        }
        if let Some(q) = spec.quota {
            cmd.arg("--quota").arg(q.to_string());
        }
        if let Some(t) = spec.call_timeout_secs {
            cmd.arg("--timeout-secs").arg(t.to_string());
        }
        let entry = self.registry.as_ref().map(|r| {
            let socket = r.socket_for(&spec.dir);
            cmd.arg("--handover").arg(&socket);
            Entry {
                dir: spec.dir.clone(),
                socket,
                pid_file: spec.pid_file.clone(),
                log: spec.log.clone(),
                agent: r.agent(),
            }
        });
        self.run(cmd, &spec.dir, &spec.log, &spec.pid_file, entry, limit)
            .await
    }

    /// Takes over the daemons of the agents started before this one (when there is a
    /// registry): each is replaced by one of this agent's, its mount kept. Returns how many
    /// were taken over; a record whose daemon is gone is dropped.
    pub async fn take_over_older(&self, limit: Duration) -> usize {
        let Some(reg) = self.registry.clone() else {
            return 0;
        };
        let mut taken = 0;
        for e in reg.older() {
            if std::os::unix::net::UnixStream::connect(&e.socket).is_err() {
                tracing::warn!(dir = %e.dir.display(), "the daemon of a mount is gone; its record dropped");
                reg.forget_gone(&e);
                continue;
            }
            let mut cmd = tokio::process::Command::new(&self.bin);
            cmd.arg("take-over").arg(&e.socket);
            match self
                .run(cmd, &e.dir, &e.log, &e.pid_file, Some(e.clone()), limit)
                .await
            {
                Ok(pid) => {
                    taken += 1;
                    tracing::info!(dir = %e.dir.display(), pid, "mount taken over");
                }
                Err(err) => {
                    tracing::warn!(dir = %e.dir.display(), error = %err, "could not take a mount over; the older agent keeps it")
                }
            }
        }
        taken
    }

    /// Runs `cmd` (an atefs daemon) and returns its pid once it reports the file system
    /// mounted; records it and watches for its exit.
    async fn run(
        &self,
        mut cmd: tokio::process::Command,
        dir: &Path,
        log_path: &Path,
        pid_file: &Path,
        entry: Option<Entry>,
        limit: Duration,
    ) -> Result<u32, DaemonError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        // An error's backtrace would push the error itself out of the log tail that callers
        // are shown (panics keep theirs).
        cmd.env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| DaemonError::Spawn {
            bin: self.bin.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill().await;
            return Err(DaemonError::Failed {
                status: "no stdout pipe".into(),
                log: String::new(),
            });
        };
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        match tokio::time::timeout(limit, reader.read_line(&mut line)).await {
            Ok(Ok(_)) if line.trim() == "mounted" => {}
            Ok(_) => {
                let status = child.wait().await.map_err(io("waiting for the daemon"))?;
                return Err(DaemonError::Failed {
                    status: status.to_string(),
                    log: log_tail(log_path, 20),
                });
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err(DaemonError::Timeout {
                    dir: dir.display().to_string(),
                    what: "did not mount",
                    secs: limit.as_secs(),
                    log: log_tail(log_path, 20),
                });
            }
        }
        std::fs::write(pid_file, pid.to_string())
            .map_err(io(format!("writing {}", pid_file.display())))?;
        if let (Some(reg), Some(e)) = (&self.registry, entry) {
            reg.record(e)
                .map_err(io(format!("recording the daemon of {}", dir.display())))?;
        }
        let (tx, rx) = watch::channel(None);
        self.exits.lock().insert(pid, rx);
        let registry = self.registry.clone();
        let dir = dir.to_path_buf();
        tokio::spawn(async move {
            // Nothing more comes on stdout; keeping the pipe open spares the daemon an EPIPE.
            let mut rest = String::new();
            let _ = reader.read_line(&mut rest).await;
            let status = child.wait().await;
            tracing::info!(pid, ?status, "mount daemon exited");
            // A daemon that handed its mount over exits too, leaving the mount (and its record
            // and socket) to the new agent's daemon; one that served to the end exits after
            // the kernel unmounted it.
            if let Some(reg) = registry {
                if !crate::mountinfo::at(&dir).is_ok_and(|m| m.is_some()) {
                    reg.forget(&dir);
                }
            }
            let _ = tx.send(status.ok().map(Exit::from));
        });
        Ok(pid)
    }

    /// Waits until the daemon recorded in `pid_file` has exited (at most `limit`). Ok(None)
    /// when there is no such daemon or it was not this process's child (its status is
    /// unknown); Ok(Some(status)) otherwise.
    pub async fn wait_exit(
        &self,
        pid_file: &Path,
        dir: &Path,
        log: &Path,
        limit: Duration,
    ) -> Result<Option<Exit>, DaemonError> {
        let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            return Ok(None);
        };
        let timeout = || DaemonError::Timeout {
            dir: dir.display().to_string(),
            what: "did not exit",
            secs: limit.as_secs(),
            log: log_tail(log, 20),
        };
        let rx = self.exits.lock().get(&pid).cloned();
        if let Some(mut rx) = rx {
            let status = tokio::time::timeout(limit, rx.wait_for(|s| s.is_some()))
                .await
                .map_err(|_| timeout())?
                .ok()
                .and_then(|s| s.clone());
            self.exits.lock().remove(&pid);
            return Ok(status);
        }
        // Started by an earlier instance of the plugin: wait on a pidfd, if the pid is still
        // that daemon (pids are reused).
        if !is_daemon_of(pid, dir) {
            return Ok(None);
        }
        let Ok(raw) = i32::try_from(pid) else {
            return Ok(None);
        };
        let Some(p) = rustix::process::Pid::from_raw(raw) else {
            return Ok(None);
        };
        let fd = match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(None),
            Err(e) => return Err(io("pidfd_open")(e.into())),
        };
        let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
        let ready = tokio::task::spawn_blocking(move || {
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let t = rustix::event::Timespec {
                tv_sec: i64::from(ms / 1000),
                tv_nsec: i64::from(ms % 1000) * 1_000_000,
            };
            rustix::event::poll(&mut fds, Some(&t))
        })
        .await
        .map_err(|e| io("waiting for the daemon")(std::io::Error::other(e)))?
        .map_err(|e| io("poll on a pidfd")(e.into()))?;
        if ready == 0 {
            return Err(timeout());
        }
        Ok(None)
    }
}

/// True if `pid` is an `atefs mount` of `dir`.
pub fn is_daemon_of(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.get(1) == Some(&&b"mount"[..]) && args.get(2) == Some(&dir.as_os_str().as_encoded_bytes())
}
