//! The mount daemon of the `atefs` binary: mounting a volume, serving it until it is
//! unmounted, and handing it to a new daemon without unmounting (atefs::handover).

use crate::{open_volume, RemoteArgs};
use anyhow::{bail, Context, Result};
use atefs::fuse::{FuseFs, Handover};
use atefs::handover::{self, Reply, State};
use atefs::{AteFs, Caller, FsOptions};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often buffered data is committed without fsync (plus one deferred fdatasync,
/// `volume::SYNC_DELAY`, is what a crash can lose).
const FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// How long a handover waits for the requests in progress to be answered.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// How long a taker waits for the old daemon to exit once it holds the mount.
const EXIT_LIMIT: Duration = Duration::from_secs(60);

/// What `atefs mount` is asked.
#[derive(clap::Args, Clone, Debug)]
pub struct MountArgs {
    /// Mount point (an existing directory).
    pub dir: PathBuf,
    /// State directory: keys (0600) and the chain's log. Created on first use.
    #[arg(long, default_value_os_t = crate::default_data())]
    pub data: PathBuf,
    /// Quota in bytes reported by statfs; writes beyond it fail with ENOSPC. With
    /// --server, the quota of a chain this mount creates; an existing chain's quota is
    /// the cluster's, followed while mounted (its owner may raise it).
    #[arg(long, default_value_t = 1 << 40)]
    pub quota: u64,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Inodes kept in memory (about 850 bytes each): past this, those holding nothing
    /// unsaved and not open are dropped, least recently used first, and read again from the
    /// volume when next used.
    #[arg(long, default_value_t = FsOptions::default().node_cache)]
    pub inode_cache: usize,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Serve handovers on this unix socket (created mode 0600): `atefs take-over SOCKET`
    /// then replaces this daemon without unmounting, open files and all (Linux 6.9+).
    #[arg(long)]
    pub handover: Option<PathBuf>,
}

impl MountArgs {
    /// The same with every path absolute: a daemon taking this one over may run elsewhere.
    pub fn absolute(mut self) -> Result<Self> {
        let abs = |p: &mut PathBuf| -> Result<()> {
            *p = std::path::absolute(&*p).with_context(|| format!("resolving {}", p.display()))?;
            Ok(())
        };
        abs(&mut self.dir)?;
        abs(&mut self.data)?;
        for p in [
            &mut self.remote.keys,
            &mut self.remote.ca,
            &mut self.handover,
        ]
        .into_iter()
        .flatten()
        {
            abs(p)?;
        }
        Ok(self)
    }

    /// The arguments of an `atefs mount --foreground` that opens the same volume the same
    /// way: what a daemon taking this one over is told.
    fn to_args(&self) -> Result<Vec<String>> {
        let path = |p: &Path| {
            p.to_str()
                .map(str::to_owned)
                .with_context(|| format!("{} is not UTF-8: a handover cannot name it", p.display()))
        };
        let mut a = vec![
            "mount".to_owned(),
            path(&self.dir)?,
            "--foreground".into(),
            "--data".into(),
            path(&self.data)?,
            "--quota".into(),
            self.quota.to_string(),
            "--threads".into(),
            self.threads.to_string(),
        ];
        // Named only when set: a daemon of a release before the flag can still take over.
        if self.inode_cache != FsOptions::default().node_cache {
            a.push("--inode-cache".into());
            a.push(self.inode_cache.to_string());
        }
        let r = &self.remote;
        if !r.server.is_empty() {
            a.push("--server".into());
            a.push(r.server.join(","));
        }
        for (flag, p) in [
            ("--keys", &r.keys),
            ("--ca", &r.ca),
            ("--handover", &self.handover),
        ] {
            if let Some(p) = p {
                a.push(flag.into());
                a.push(path(p)?);
            }
        }
        if r.insecure_plaintext {
            a.push("--insecure-plaintext".into());
        }
        if r.exclusive {
            a.push("--exclusive".into());
        }
        a.push("--timeout-secs".into());
        a.push(r.timeout_secs.to_string());
        Ok(a)
    }
}

/// A volume opened and its file system, ready for a FUSE session.
struct Opened {
    vol: atefs::volume::Volume,
    fs: Arc<AteFs>,
    fuse: FuseFs,
    _flusher: std::thread::JoinHandle<()>,
}

/// Whose a new volume's root directory is.
enum RootOwner {
    /// The mount point's owner.
    OfMountPoint,
    /// The volume is mounted already (a handover): nothing may look at the mount point,
    /// since no one answers the kernel's requests about it until this daemon serves it.
    Existing,
}

fn open(args: &MountArgs, root: RootOwner) -> Result<Opened> {
    let dir = &args.dir;
    let owner = match root {
        RootOwner::OfMountPoint => {
            use std::os::unix::fs::MetadataExt;
            let m =
                std::fs::metadata(dir).with_context(|| format!("mount point {}", dir.display()))?;
            if !m.is_dir() {
                bail!(
                    "mount point {} is not a directory; create it first",
                    dir.display()
                );
            }
            Caller {
                uid: m.uid(),
                gid: m.gid(),
                umask: 0,
            }
        }
        RootOwner::Existing => Caller {
            uid: 0,
            gid: 0,
            umask: 0,
        },
    };
    let vol = open_volume(&args.data, args.quota, &args.remote)?;
    crate::give_back_freed_memory();
    // A shared volume's size is its chain's quota on the cluster, as opening it read it, and
    // read again while mounted (atefs::quota).
    let quota_source = vol
        .remote
        .as_ref()
        .map(|r| Arc::new(r.quota_reader()) as Arc<dyn atefs::quota::QuotaSource>);
    let quota = vol.remote.as_ref().map_or(args.quota, |r| r.quota_at_open);
    let opts = FsOptions {
        quota_bytes: quota,
        quota_source,
        remote: vol.remote.is_some() && !args.remote.exclusive,
        writer_lease: vol.remote.is_some() && args.remote.exclusive,
        // A commit through the cluster is answered after a replication round trip: keep
        // several flushes in flight so that pipeline stays full. Locally two 8 MiB flushes
        // keep the disk busy (bench/memory.sh: peak memory writing 2 GiB well under 256 MiB).
        max_inflight: if vol.remote.is_some() {
            64 << 20
        } else {
            16 << 20
        },
        node_cache: args.inode_cache,
        ..FsOptions::default()
    };
    let fs = Arc::new(AteFs::new(
        vol.chain.clone(),
        vol.keys.clone(),
        opts,
        owner,
    )?);
    // The durability bound without fsync (docs/semantics.md) and the compaction policy.
    let flusher = fs.spawn_flusher(FLUSH_PERIOD);
    let mut helper = std::process::Command::new(
        std::env::current_exe().context("finding this program to start its helper")?,
    );
    helper.arg("gather-helper").arg(dir);
    let fuse = FuseFs::new(fs.clone()).gather_fsyncs(helper);
    Ok(Opened {
        vol,
        fs,
        fuse,
        _flusher: flusher,
    })
}

fn fuse_config(threads: usize) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("atefs".into()),
        fuser::MountOption::Subtype("atefs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    // Pods run as many users; permissions are checked by the kernel (default_permissions).
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(threads.max(1));
    config
}

/// `atefs mount --foreground`: mounts and serves until unmounted.
pub fn mount_foreground(args: &MountArgs) -> Result<()> {
    let opened = open(args, RootOwner::OfMountPoint)?;
    let handover = opened.fuse.handover();
    let session = fuser::Session::new(opened.fuse, &args.dir, &fuse_config(args.threads))
        .with_context(|| {
            format!(
                "mounting on {} (is /dev/fuse available and are you root?)",
                args.dir.display()
            )
        })?;
    let fuse_fd = session
        .as_fd()
        .try_clone_to_owned()
        .context("keeping the mount's /dev/fuse descriptor")?;
    let session = session.spawn().context("starting the FUSE session")?;
    tune_bdi(&args.dir);
    serve(args, session, opened.fs, opened.vol, handover, fuse_fd)
}

/// `atefs take-over SOCKET`: takes the mount of the daemon serving handovers on SOCKET and
/// serves it until unmounted.
pub fn take_over(socket: &Path) -> Result<()> {
    let mut conn = handover::connect(socket)
        .with_context(|| format!("asking the daemon at {} for its mount", socket.display()))?;
    conn.set_read_timeout(Some(DRAIN_LIMIT * 2))?;
    handover::send(
        &mut conn,
        &handover::Request {
            protocol: handover::PROTOCOL,
        },
        None,
    )?;
    let (state, fuse_fd) = match handover::receive::<Reply>(&mut conn)? {
        Some((Reply::Ready(state), Some(fd))) => (state, fd),
        Some((Reply::Ready(_), None)) => bail!("the daemon sent its state without the mount"),
        Some((Reply::Refused(why), _)) => return Err(handover::HandoverError::Refused(why).into()),
        None => bail!("the daemon closed the connection without an answer"),
    };
    let args =
        crate::mount_args(&state.args).context("the daemon's own arguments do not parse here")?;
    // From here on this process holds the mount: the old daemon exits once told so.
    handover::send(&mut conn, &handover::Ack { taken: true }, None)?;
    drop(conn);
    // Its volume lock goes only with its last thread's descriptors, so once it is free no
    // thread of the old daemon can read a request any more (the resend below needs that),
    // and the volume is this process's to open.
    atefs::volume::wait_unlocked(&args.data, EXIT_LIMIT)
        .context("waiting for the old daemon to exit and let the volume go")?;
    tracing::info!(dir = %args.dir.display(), handles = state.handles.len(), "took the mount over");
    let opened = open(&args, RootOwner::Existing).context("opening the volume the mount serves")?;
    opened
        .fs
        .adopt_handles(&state.handles, state.next_fh)
        .context("taking over the open files")?;
    let fuse = opened.fuse.resuming(state.init, state.next_dir_fh);
    let handover = fuse.handover();
    let own_fd = fuse_fd
        .try_clone()
        .context("keeping the mount's /dev/fuse descriptor")?;
    let session = handover::resume_session(fuse, fuse_fd, &state.init, fuse_config(args.threads))?;
    // The requests the old daemon held at its gate come again, to this session.
    handover::resend(own_fd.as_fd())?;
    serve(&args, session, opened.fs, opened.vol, handover, own_fd)
}

/// Serves a mounted session until the kernel unmounts it (or a signal asks for that), then
/// commits what is buffered. Meanwhile a handover (when asked for) may end this process.
fn serve(
    args: &MountArgs,
    mut session: fuser::BackgroundSession,
    fs: Arc<AteFs>,
    vol: atefs::volume::Volume,
    handover: Handover,
    fuse_fd: OwnedFd,
) -> Result<()> {
    if let Some(path) = &args.handover {
        let listener = handover::listen(path)
            .with_context(|| format!("serving handovers on {}", path.display()))?;
        let giver = Giver {
            args: args.to_args()?,
            fs: fs.clone(),
            handover,
            fuse_fd,
        };
        std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || giver.serve(listener))?;
    }
    println!("mounted");
    std::io::stdout().flush()?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let handle = signals.handle();
    let waiter = std::thread::spawn(move || signals.forever().next());
    // The session ends when the kernel unmounts (umount/fusermount -u) or when a signal comes.
    let dir_owned = args.dir.clone();
    let watcher = std::thread::spawn(move || {
        if waiter.join().ok().flatten().is_some() {
            let _ = unmount_path(&dir_owned);
        }
    });
    // Either way the kernel has unmounted the directory by the time the session ends, and
    // something else may already be mounted there (a CSI node publishing a volume again). So
    // only the session's thread is joined and the rest is forgotten: dropping it drops fuser
    // 0.18's mount guard, which unmounts the directory again when its connection is gone (its
    // check takes the sign of an unmounted connection, POLLERR, for a live mount) and so took
    // the next file system with it (tests/mount.rs, an_exiting_daemon_leaves_...). A finished
    // stand-in takes the thread handle's place.
    let thread = std::mem::replace(&mut session.guard, std::thread::spawn(|| Ok(())));
    std::mem::forget(session);
    let r = thread
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the FUSE session thread panicked")));
    handle.close();
    let _ = watcher.join();
    fs.flush_all()
        .context("committing buffered data at unmount")?;
    if let Some(path) = &args.handover {
        let _ = std::fs::remove_file(path);
    }
    drop(vol);
    r.context("FUSE session")?;
    Ok(())
}

/// The side of a mount that hands it over.
struct Giver {
    args: Vec<String>,
    fs: Arc<AteFs>,
    handover: Handover,
    fuse_fd: OwnedFd,
}

impl Giver {
    fn serve(self, listener: std::os::unix::net::UnixListener) {
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a handover connection");
                    continue;
                }
            };
            if let Err(e) = self.give(conn) {
                tracing::warn!(error = %e, "handover failed; this daemon serves on");
            }
        }
    }

    /// One handover. Returns only if it did not happen (the gate is open again); otherwise
    /// the process ends here.
    fn give(&self, mut conn: std::os::unix::net::UnixStream) -> Result<()> {
        conn.set_read_timeout(Some(DRAIN_LIMIT))?;
        let Some((req, _)) = handover::receive::<handover::Request>(&mut conn)? else {
            return Ok(());
        };
        let refuse = |conn: &mut std::os::unix::net::UnixStream, why: String| {
            tracing::warn!(reason = %why, "handover refused");
            handover::send(conn, &Reply::Refused(why), None)
        };
        if req.protocol != handover::PROTOCOL {
            refuse(
                &mut conn,
                format!(
                    "handover protocol {} asked, this daemon speaks {}",
                    req.protocol,
                    handover::PROTOCOL
                ),
            )?;
            return Ok(());
        }
        let Some(init) = *self.handover.init.lock() else {
            refuse(&mut conn, "the mount is not initialised yet".into())?;
            return Ok(());
        };
        if let Err(e) = init.can_resend() {
            refuse(&mut conn, e.to_string())?;
            return Ok(());
        }
        let gate = &self.handover.gate;
        if !gate.close(DRAIN_LIMIT) {
            refuse(
                &mut conn,
                format!("requests in progress did not finish within {DRAIN_LIMIT:?}"),
            )?;
            return Ok(());
        }
        // Requests wait at the gate from here on: everything before them is committed.
        if let Err(e) = self.fs.sync_all() {
            gate.open();
            refuse(&mut conn, format!("could not commit what is buffered: {e}"))?;
            return Ok(());
        }
        let (handles, next_fh) = self.fs.handles();
        let state = State {
            args: self.args.clone(),
            init,
            handles,
            next_fh,
            next_dir_fh: self.handover.next_dir_fh.load(Ordering::SeqCst),
        };
        let sent = handover::send(&mut conn, &Reply::Ready(state), Some(self.fuse_fd.as_fd()));
        let acked = sent.is_ok()
            && matches!(
                handover::receive::<handover::Ack>(&mut conn),
                Ok(Some((handover::Ack { taken: true }, _)))
            );
        if !acked {
            gate.open();
            bail!("the new daemon did not confirm it holds the mount");
        }
        tracing::info!(
            held = gate.waiting(),
            "mount handed over; exiting without unmounting (the requests held at the gate go to the new daemon)"
        );
        // No destructor runs: the session's would unmount, and the requests held at the gate
        // must stay unanswered for the new daemon to get them again.
        std::process::exit(0)
    }
}

pub fn unmount_path(dir: &Path) -> Result<()> {
    // As root, the system call: a container image need not carry fusermount or umount.
    if rustix::mount::unmount(dir, rustix::mount::UnmountFlags::empty()).is_ok() {
        return Ok(());
    }
    for (prog, args) in [
        ("fusermount3", vec!["-u"]),
        ("fusermount", vec!["-u"]),
        ("umount", vec![]),
    ] {
        let st = std::process::Command::new(prog)
            .args(&args)
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status();
        if st.is_ok_and(|s| s.success()) {
            return Ok(());
        }
    }
    bail!("could not unmount {}; is it mounted?", dir.display())
}

/// Dirty page cache the kernel lets one FUSE mount hold before it throttles writers (the
/// default is 1 % of the dirty limit, about 47 MiB here, under a strict per-device limit).
const BDI_MAX_DIRTY: u64 = 256 << 20;
/// Readahead window for sequential reads (FUSE starts at 128 KiB whatever the daemon asks).
const BDI_READ_AHEAD_KB: u64 = 4096;

/// Raises the mount's writeback and readahead limits (measured: 4 KiB random writes to a
/// 64 MiB file 35-44k -> 112k IOPS, the writer no longer throttled at 47 MiB; sequential
/// reads 0.6-0.8 -> 1.1 GB/s). Needs root (sysfs); without it the defaults stay.
fn tune_bdi(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(dir) {
        Ok(m) => m.dev(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot stat the mount to tune its writeback");
            return;
        }
    };
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let bdi = PathBuf::from(format!("/sys/class/bdi/{major}:{minor}"));
    for (knob, value) in [
        ("max_bytes", BDI_MAX_DIRTY),
        ("read_ahead_kb", BDI_READ_AHEAD_KB),
    ] {
        if let Err(e) = std::fs::write(bdi.join(knob), value.to_string()) {
            tracing::warn!(error = %e, knob, bdi = %bdi.display(), "kernel default kept");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// What a daemon taking a mount over is told opens the same volume the same way.
    #[test]
    fn a_mounts_arguments_survive_a_handover() {
        let args = |list: &[&str]| {
            let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            crate::mount_args(&list).unwrap()
        };
        let plain = args(&["mount", "/mnt/x", "--data", "/var/x", "--threads", "2"]);
        let told = plain.to_args().unwrap();
        assert!(!told.contains(&"--inode-cache".to_owned()), "{told:?}");
        let again = crate::mount_args(&told).unwrap();
        assert_eq!((again.threads, again.inode_cache), (2, plain.inode_cache));

        let small = args(&[
            "mount",
            "/mnt/x",
            "--inode-cache",
            "8",
            "--timeout-secs",
            "5",
        ]);
        let again = crate::mount_args(&small.to_args().unwrap()).unwrap();
        assert_eq!((again.inode_cache, again.remote.timeout_secs), (8, 5));
    }
}
