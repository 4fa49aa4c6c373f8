//! The `atefs` command: mount, unmount, inspect and key management.

use anyhow::{bail, Context, Result};
use atefs::{AteFs, Caller, FsOptions};

/// mimalloc keeps freed memory for reuse (multi-MiB blocks and transactions come and go
/// constantly; glibc hands large ones back to the OS, and zeroing fresh pages then costs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hands the memory mimalloc holds freed back to the system. It purges freed pages only when
/// it is next called after a delay, so the transient peak of opening a volume (a view's hash
/// table doubling, the log replayed) stayed resident in an idle daemon: 187 MiB where the
/// volume's view needs 108 at its peak (200,000 files, docs/benchmarks.md, session 30).
fn give_back_freed_memory() {
    #[allow(unsafe_code)]
    // SAFETY: mi_collect takes no pointers and only walks mimalloc's own structures; it is
    // safe to call from any thread at any time (mimalloc's API documentation).
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}
use clap::{Parser, Subcommand};

mod daemon;
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "atefs",
    version,
    about = "An encrypted, signed, replicated file system (FUSE)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the volume kept in --data (created on first use) at DIR.
    Mount {
        #[command(flatten)]
        args: daemon::MountArgs,
        /// Stay in the foreground until unmounted or interrupted (SIGINT/SIGTERM unmount).
        #[arg(long, short)]
        foreground: bool,
    },
    /// Take over the mount of the daemon serving handovers on SOCKET (started with
    /// `atefs mount --handover SOCKET`) and serve it in the foreground in its place; the
    /// mount, its open files and requests in progress carry on. Serves handovers on the same
    /// socket in turn.
    TakeOver {
        /// The running daemon's handover socket.
        socket: PathBuf,
    },
    /// Unmount DIR once everything written there is committed (the daemon then exits).
    Umount {
        /// Mount point.
        dir: PathBuf,
    },
    /// Show a volume's chain: size, records, last index.
    Status {
        /// State directory.
        #[arg(long, default_value_os_t = default_data())]
        data: PathBuf,
    },
    /// Check a volume's tree for consistency (the volume must not be mounted).
    Fsck {
        /// State directory.
        #[arg(long, default_value_os_t = default_data())]
        data: PathBuf,
    },
    /// Show a shared volume's size and use on its cluster, or set its size (its quota) to
    /// BYTES: mounts of it follow within a second. Needs the volume's owner key (--keys).
    Quota {
        /// The new quota in bytes (not below what the volume holds).
        bytes: Option<u64>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Copy a shared volume as it is now into a new volume on the same cluster, with keys of
    /// its own (written to OUT, mode 0600). Mounts of the source may go on writing: the copy
    /// is the state after one transaction, as a crash would leave it.
    Clone {
        /// Key file of the new volume; must not exist.
        out: PathBuf,
        /// Quota of the new volume in bytes (default: the source's).
        #[arg(long)]
        quota: Option<u64>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Give a shared volume new keys in place: a new owner key and data key (written to OUT,
    /// mode 0600, before anything changes). The new owner key replaces the old one at once,
    /// so the old key file no longer writes, reads, resizes or deletes the volume; then every
    /// record is sealed again under the new data key. Unmount the volume everywhere first:
    /// mounts with the old keys stop following it. Interrupted, run it again with the same
    /// OUT to finish.
    Rekey {
        /// Key file of the new keys: made when it does not exist, else the one an interrupted
        /// rekey made.
        out: PathBuf,
        /// Go on although the volume is mounted somewhere (those mounts stop following it,
        /// and what they have not committed is lost).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Back a shared volume up to FILE (which must not exist): its files as they are now,
    /// still encrypted, signed by the volume's owner key. Safe to keep anywhere; only the
    /// volume's keys open it. Mounts may go on writing: the backup is the state after one
    /// transaction, as a crash would leave it.
    Backup {
        /// The backup file to write.
        out: PathBuf,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Make a shared volume that its cluster no longer has again from a backup (with the
    /// same keys: the key file it was taken with opens it). Refuses a volume the cluster
    /// has. Interrupted, run it again: it starts over.
    Restore {
        /// The backup file (from `atefs backup`).
        file: PathBuf,
        /// Quota of the restored volume in bytes (default: the one it had when backed up).
        #[arg(long)]
        quota: Option<u64>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Check a backup without restoring it: reads all of FILE and verifies its signature
    /// with the key file's owner key (no cluster needed). Prints what it holds.
    VerifyBackup {
        /// The backup file.
        file: PathBuf,
        /// The key file of the volume it is a backup of.
        #[arg(long)]
        keys: PathBuf,
    },
    /// Write a new key envelope (a new volume's keys) to FILE with mode 0600.
    Keygen {
        /// Output file; must not exist.
        out: PathBuf,
    },
    /// (Internal) the fsync-gathering helper a mount starts for itself.
    #[command(hide = true)]
    GatherHelper {
        /// The mount point to syncfs.
        dir: PathBuf,
    },
}

/// Where a shared volume lives: a chain-server cluster.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RemoteArgs {
    /// Mount a chain of a chain-server cluster: API addresses (host:port), comma-separated.
    /// --data then only holds a cache of the chain.
    #[arg(long, value_delimiter = ',', requires = "keys")]
    server: Vec<String>,
    /// The volume's key envelope (from `atefs keygen`; its chain is created on the cluster
    /// on first mount).
    #[arg(long)]
    keys: Option<PathBuf>,
    /// The cluster's CA certificate (PEM) to check servers against.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Talk to the cluster without TLS (tests and debugging only).
    #[arg(long, conflicts_with = "ca")]
    insecure_plaintext: bool,
    /// This mount is the chain's only writer (a ReadWriteOnce volume: the orchestrator
    /// mounts it on one node at a time). Namespace changes and closes then do not wait for
    /// the cluster and the kernel caches as for an embedded volume; fsync still returns only
    /// once a majority of the replicas has everything. Not for volumes other mounts write:
    /// their changes are not looked for, and a conflicting one makes this mount's next
    /// commit fail (EIO at fsync) rather than being merged.
    #[arg(long, requires = "server")]
    exclusive: bool,
    /// How long a call to the cluster keeps retrying (finding the leader, waiting out an
    /// election) before it fails: a close or fsync then fails with EIO, and while the mount
    /// cannot reach the cluster for that long, opens, closes and fsyncs fail at once until it
    /// can again (it reconnects by itself).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout_secs: u64,
}

fn default_data() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("atefs/default")
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,fuser::mnt=error".into()),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (the terminal that started us is gone) must not end
        // the process: tracing-subscriber reports its write errors with eprintln!, which
        // panics when stderr itself is what failed.
        .log_internal_errors(false)
        .init();
    match Cli::parse().cmd {
        Cmd::Mount { args, foreground } => {
            if foreground {
                daemon::mount_foreground(&args.absolute()?)
            } else {
                mount_daemon(&args.dir)
            }
        }
        Cmd::TakeOver { socket } => daemon::take_over(&socket),
        Cmd::Umount { dir } => umount(&dir),
        Cmd::Status { data } => status(&data),
        Cmd::Keygen { out } => keygen(&out),
        Cmd::Clone { out, quota, remote } => clone(&out, quota, &remote),
        Cmd::Rekey { out, force, remote } => rekey(&out, force, &remote),
        Cmd::Backup { out, remote } => backup(&out, &remote),
        Cmd::VerifyBackup { file, keys } => verify_backup(&file, &keys),
        Cmd::Restore {
            file,
            quota,
            remote,
        } => restore(&file, quota, &remote),
        Cmd::Quota { bytes, remote } => quota(bytes, &remote),
        Cmd::Fsck { data } => fsck(&data),
        Cmd::GatherHelper { dir } => {
            atefs::gather::serve(&dir);
            Ok(())
        }
    }
}

/// Runs the mount in a child (its own process group, so the terminal's ^C does not reach it)
/// and returns once the child reports the file system mounted.
fn mount_daemon(dir: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locating the atefs binary")?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    let mut child = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .context("starting the mount daemon")?;
    let out = child.stdout.take().context("no pipe to the daemon")?;
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line)?;
    if line.trim() == "mounted" {
        println!("mounted {} (daemon pid {})", dir.display(), child.id());
        return Ok(());
    }
    let status = child.wait()?;
    bail!("the mount daemon failed ({status}); run with --foreground to see why")
}

/// The mount a list of `atefs` arguments (without the program's name) asks for.
fn mount_args(args: &[String]) -> Result<daemon::MountArgs> {
    let cli = Cli::try_parse_from(std::iter::once("atefs".to_owned()).chain(args.iter().cloned()))?;
    match cli.cmd {
        Cmd::Mount { args, .. } => Ok(args),
        _ => bail!("not a mount: {args:?}"),
    }
}

fn open_volume(data: &Path, quota: u64, remote: &RemoteArgs) -> Result<atefs::volume::Volume> {
    if remote.server.is_empty() {
        let mut shown = 0u64;
        let vol = atefs::volume::open(data, |done, total| {
            // A progress line for replays worth waiting for (above 64 MiB).
            if total > 64 << 20 && (done == total || done >= shown + total / 20) {
                shown = done;
                eprint!(
                    "\rreplaying chain: {:>3}% of {} MiB",
                    done * 100 / total.max(1),
                    total >> 20
                );
                if done == total {
                    eprintln!();
                }
            }
        })
        .with_context(|| format!("opening the volume in {}", data.display()))?;
        if vol.created {
            eprintln!(
                "created a new volume in {} (keys: {})",
                data.display(),
                data.join("keys").display()
            );
        }
        return Ok(vol);
    }
    let (key_path, keys, client) = remote_volume(remote)?;
    atefs::volume::open_remote(data, keys, client, quota).with_context(|| {
        format!(
            "opening chain of {} on {}",
            key_path.display(),
            remote.server.join(",")
        )
    })
}

/// A shared volume's key file (its path and keys) and a client of its cluster, from the
/// command line.
fn remote_volume(remote: &RemoteArgs) -> Result<(&Path, ate::KeyFile, ate::remote::RemoteClient)> {
    let (key_path, keys) = volume_keys(remote)?;
    let client = ate::remote::RemoteClient::new(remote_options(remote)?)?;
    Ok((key_path, keys, client))
}

/// The key file `--keys` names, and its keys.
fn volume_keys(remote: &RemoteArgs) -> Result<(&Path, ate::KeyFile)> {
    let key_path = remote
        .keys
        .as_deref()
        .context("--server needs --keys FILE")?;
    let keys = ate::KeyFile::load(key_path).with_context(|| {
        format!(
            "reading {} (create one with `atefs keygen {}`)",
            key_path.display(),
            key_path.display()
        )
    })?;
    Ok((key_path, keys))
}

fn remote_options(remote: &RemoteArgs) -> Result<ate::remote::RemoteOptions> {
    let mut opts = ate::remote::RemoteOptions::from_flags(
        remote.server.clone(),
        remote.ca.as_deref(),
        remote.insecure_plaintext,
    )?;
    opts.deadline = std::time::Duration::from_secs(remote.timeout_secs);
    Ok(opts)
}

fn umount(dir: &Path) -> Result<()> {
    // The kernel does not wait for a FUSE daemon at unmount: what close() started committing
    // would still be on its way when this returns (and lost if the cluster went away next).
    // fsync of the root waits for every buffered commit.
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "could not commit everything before unmounting; the daemon keeps trying")
        }
    }
    daemon::unmount_path(dir)?;
    println!("unmounted {}", dir.display());
    Ok(())
}

/// What a command about a shared volume (`quota`, `clone`) works with: the volume's keys, a
/// client of its cluster, and the one runtime for that client (its connections belong to the
/// runtime that made them).
fn shared_volume(
    command: &str,
    remote: &RemoteArgs,
) -> Result<(
    ate::KeyFile,
    ate::remote::RemoteClient,
    tokio::runtime::Runtime,
)> {
    let (keys, opts) = shared_keys(command, remote)?;
    let client = ate::remote::RemoteClient::new(opts)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok((keys, client, rt))
}

/// What a command about a shared volume that makes its own clients (`rekey`, `backup`,
/// `restore`) works with: the volume's keys and the options of its cluster.
fn shared_keys(
    command: &str,
    remote: &RemoteArgs,
) -> Result<(ate::KeyFile, ate::remote::RemoteOptions)> {
    if remote.server.is_empty() {
        bail!("atefs {command} is for shared volumes: give --server ADDRS and --keys FILE");
    }
    let (_, keys) = volume_keys(remote)?;
    Ok((keys, remote_options(remote)?))
}

fn quota(bytes: Option<u64>, remote: &RemoteArgs) -> Result<()> {
    let (keys, client, rt) = shared_volume("quota", remote)?;
    let chain = keys.chain;
    match bytes {
        None => {
            let info = rt
                .block_on(client.info(chain))
                .with_context(|| format!("reading chain {chain}"))?;
            println!(
                "chain {chain}: {} of {} bytes used",
                info.used_bytes, info.quota_bytes
            );
        }
        Some(q) => {
            let used = rt
                .block_on(client.set_quota(chain, q, &keys.owner))
                .with_context(|| format!("setting the quota of chain {chain}"))?;
            println!("chain {chain}: quota {q} bytes ({used} used)");
        }
    }
    Ok(())
}

fn status(data: &Path) -> Result<()> {
    if !data.join("keys").exists() {
        bail!(
            "no volume in {} (mount one with `atefs mount DIR --data {}`)",
            data.display(),
            data.display()
        );
    }
    match atefs::volume::open(data, |_, _| {}) {
        Ok(vol) => {
            let s = vol.chain.stats();
            println!("volume:     {}", data.display());
            println!("chain:      {}", vol.keys.chain);
            println!("last index: {}", s.last_index);
            println!("records:    {} ({} live)", s.records, s.live);
            println!("on disk:    {} bytes", s.bytes);
            println!("live data:  {} bytes (sealed)", s.live_bytes);
            println!(
                "snapshot:   {}",
                s.snapshot
                    .map_or("none".into(), |i| format!("up to index {i}"))
            );
            Ok(())
        }
        Err(atefs::volume::VolumeError::Busy(_)) => {
            let bytes: u64 = std::fs::read_dir(data.join("chain"))?
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum();
            println!(
                "volume:     {} (mounted; figures from disk)",
                data.display()
            );
            println!("on disk:    {bytes} bytes");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn clone(out: &Path, quota: Option<u64>, remote: &RemoteArgs) -> Result<()> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite keys", out.display());
    }
    let (keys, client, rt) = shared_volume("clone", remote)?;
    let quota = match quota {
        Some(q) => q,
        None => {
            rt.block_on(client.info(keys.chain))
                .with_context(|| format!("reading chain {}", keys.chain))?
                .quota_bytes
        }
    };
    let copy = keys.for_copy(ate::ChainId::random());
    // Saved before the chain exists: a copy whose keys were lost could never be deleted.
    copy.save(out)?;
    let cache = tempfile::tempdir().context("creating a directory for the source's cache")?;
    let storage = std::sync::Arc::new(ate::storage::FileStorage::new(cache.path())?);
    let report =
        match ate::remote::copy_chain(remote_options(remote)?, &keys, &copy, quota, storage) {
            Ok(r) => r,
            Err(e) => {
                // Half a copy is of no use to anyone: its chain and keys go.
                match rt.block_on(client.delete(copy.chain, &copy.owner)) {
                    Err(d) if !d.is_not_found() => eprintln!(
                        "the partial copy {} stays on the cluster ({d}); its keys are in {}",
                        copy.chain,
                        out.display()
                    ),
                    _ => {
                        let _ = std::fs::remove_file(out);
                    }
                }
                return Err(anyhow::Error::new(e)
                    .context(format!("copying chain {} to {}", keys.chain, copy.chain)));
            }
        };
    println!(
        "copied chain {} (as of index {}, {} records) to chain {}; its keys are in {}",
        keys.chain,
        report.index,
        report.records,
        copy.chain,
        out.display()
    );
    Ok(())
}

fn rekey(out: &Path, force: bool, remote: &RemoteArgs) -> Result<()> {
    let (old, opts) = shared_keys("rekey", remote)?;
    if !force {
        ate::remote::refuse_in_use(&opts, old.chain).context("pass --force to go on anyway")?;
    }
    let new = if out.exists() {
        let new = ate::KeyFile::load(out)?;
        ate::rekey::check_pair(&old, &new)
            .with_context(|| format!("{} cannot replace the volume's keys", out.display()))?;
        eprintln!("going on with the new keys in {}", out.display());
        new
    } else {
        let new = old.rekeyed();
        // Saved before anything changes: once the owners are swapped only these open the
        // volume.
        new.save(out)?;
        new
    };
    let cache = tempfile::tempdir().context("creating a directory for the volume's cache")?;
    let storage = std::sync::Arc::new(ate::storage::FileStorage::new(cache.path())?);
    let report = ate::remote::rekey_chain(opts, &old, &new, storage)
        .map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "changing the keys of chain {}; the new keys are in {} (keep them): run the same command again to finish",
                old.chain,
                out.display()
            ))
        })?;
    println!(
        "chain {}: new owner and data keys{}; {} records sealed again in {} transactions. The keys in {} open the volume now; {} opens it no longer",
        old.chain,
        if report.swapped { "" } else { " (owners swapped by an earlier run)" },
        report.records,
        report.transactions,
        out.display(),
        remote.keys.as_deref().map_or("the old key file".into(), |k| k.display().to_string()),
    );
    Ok(())
}

fn backup(out: &Path, remote: &RemoteArgs) -> Result<()> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite it", out.display());
    }
    let (keys, opts) = shared_keys("backup", remote)?;
    let cache = tempfile::tempdir().context("creating a directory for the volume's cache")?;
    let storage = std::sync::Arc::new(ate::storage::FileStorage::new(cache.path())?);
    let s = ate::remote::backup_chain(opts, &keys, out, storage)
        .with_context(|| format!("backing up chain {}", keys.chain))?;
    println!(
        "backed up chain {} as of index {}: {} records, {} bytes sealed, to {}",
        s.chain,
        s.index,
        s.records,
        s.bytes,
        out.display()
    );
    Ok(())
}

fn verify_backup(file: &Path, keys: &Path) -> Result<()> {
    let keys = ate::KeyFile::load(keys)?;
    let b = ate::backup::verify_backup(file, &keys)
        .with_context(|| format!("checking {}", file.display()))?;
    let s = &b.summary;
    println!(
        "{}: a good backup of chain {} as of index {}: {} records, {} bytes sealed, quota {} bytes",
        file.display(),
        s.chain,
        s.index,
        s.records,
        s.bytes,
        s.quota
    );
    Ok(())
}

fn restore(file: &Path, quota: Option<u64>, remote: &RemoteArgs) -> Result<()> {
    let (keys, opts) = shared_keys("restore", remote)?;
    let r = ate::remote::restore_chain(opts, &keys, file, |b| quota.unwrap_or(b.quota))
        .with_context(|| format!("restoring chain {} from {}", keys.chain, file.display()))?;
    println!(
        "restored chain {} as of index {}: {} records in {} transactions",
        keys.chain, r.summary.index, r.summary.records, r.transactions
    );
    Ok(())
}

fn keygen(out: &Path) -> Result<()> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite keys", out.display());
    }
    let k = ate::KeyFile::generate(ate::ChainId::random());
    k.save(out)?;
    println!(
        "wrote keys for chain {} to {} (mode 0600)",
        k.chain,
        out.display()
    );
    Ok(())
}

fn fsck(data: &Path) -> Result<()> {
    let vol = atefs::volume::open(data, |_, _| {})
        .with_context(|| format!("opening {}", data.display()))?;
    let fs = AteFs::new(
        vol.chain.clone(),
        vol.keys.clone(),
        FsOptions::default(),
        Caller {
            uid: 0,
            gid: 0,
            umask: 0,
        },
    )?;
    let r = fs.fsck()?;
    println!("{} directories, {} files", r.dirs, r.files);
    for p in &r.problems {
        println!("problem: {p}");
    }
    if !r.problems.is_empty() {
        bail!("{} problems found", r.problems.len());
    }
    println!("clean");
    Ok(())
}
