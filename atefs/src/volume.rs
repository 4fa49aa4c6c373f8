//! A volume's state directory: `keys` (the key envelope, mode 0600), `chain/` (the redo log)
//! and `lock` (held while a process uses the volume, so two mounts never share a log).

use ate::storage::{FileStorage, Storage};
use ate::{Chain, ChainOptions, KeyFile};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Why a volume could not be opened.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// I/O on the state directory.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the volume.
    #[error("{0} is in use by another atefs process (unmount it first)")]
    Busy(PathBuf),
    /// The key file is unusable.
    #[error(transparent)]
    Keys(#[from] ate::keyfile::KeyFileError),
    /// The remote chain could not be opened.
    #[error("opening the chain on the cluster: {0}")]
    Remote(#[from] ate::remote::ReplicaError),
    /// The chain could not be opened.
    #[error("opening the chain in {path}: {source}")]
    Chain {
        /// The chain directory.
        path: PathBuf,
        /// Why.
        source: ate::ChainError,
    },
}

/// An open volume; the lock is held as long as this lives.
#[derive(Debug)]
pub struct Volume {
    /// The chain.
    pub chain: Chain,
    /// Its keys.
    pub keys: KeyFile,
    /// True when this call created the volume.
    pub created: bool,
    /// For a remote volume: the connection and the follower feeding the cache.
    pub remote: Option<ate::remote::RemoteChain>,
    _lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file whose flock is the volume's lock.
fn lock_path(dir: &Path) -> PathBuf {
    dir.join("lock")
}

/// Takes the volume's lock without opening it (fails with `Busy` when held).
pub fn lock(dir: &Path) -> Result<File, VolumeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let lock_path = lock_path(dir);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(VolumeError::Busy(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&lock_path)(e)),
    }
}

/// Waits (at most `limit`) until no process holds the volume's lock: the daemon a handover
/// replaces lets it go as it exits, maybe after the end of its socket was seen.
pub fn wait_unlocked(dir: &Path, limit: std::time::Duration) -> Result<(), VolumeError> {
    let lock_path = lock_path(dir);
    let lock = match File::options().write(true).open(&lock_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&lock_path)(e)),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    // A blocking flock is woken when the holder lets go; the thread only outlives the limit
    // if the holder never does, and then this process is about to fail anyway.
    std::thread::spawn(move || {
        let _ = tx.send(lock.lock().map(|()| lock));
    });
    match rx.recv_timeout(limit) {
        // Let go at once: the volume's opening takes the lock on a descriptor of its own.
        Ok(Ok(lock)) => {
            drop(lock);
            Ok(())
        }
        Ok(Err(e)) => Err(io(&lock_path)(e)),
        Err(_) => Err(VolumeError::Busy(dir.to_path_buf())),
    }
}

/// How long a commit may stay in the page cache before the log is fdatasynced (fsync does
/// not wait for it: it asks for the fdatasync at once).
pub const SYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// The chain tuning of a mount: the file system decides durability (fsync), so commits are
/// not each fdatasynced.
fn chain_options() -> ChainOptions {
    ChainOptions {
        deferred_sync: Some(SYNC_DELAY),
        ..ChainOptions::default()
    }
}

/// Opens (creating on first use) the volume in `dir`; `progress(done, total)` reports replay.
pub fn open(dir: &Path, progress: impl FnMut(u64, u64)) -> Result<Volume, VolumeError> {
    let lock = lock(dir)?;
    let key_path = dir.join("keys");
    let (keys, created) = if key_path.exists() {
        (KeyFile::load(&key_path)?, false)
    } else {
        let k = KeyFile::generate(ate::ChainId::random());
        k.save(&key_path)?;
        (k, true)
    };
    let chain_dir = dir.join("chain");
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(&chain_dir).map_err(io(&chain_dir))?);
    let (chain, _) =
        Chain::open(storage, Some(keys.chain), chain_options(), progress).map_err(|source| {
            VolumeError::Chain {
                path: chain_dir.clone(),
                source,
            }
        })?;
    Ok(Volume {
        chain,
        keys,
        created,
        remote: None,
        _lock: lock,
    })
}

/// Opens the chain of `keys` on a cluster, caching it in `dir` (created on first use; the
/// cache resumes from where it stopped). A chain the cluster does not have yet is created,
/// with this key file's owner key as its owner and `quota` bytes.
pub fn open_remote(
    dir: &Path,
    keys: KeyFile,
    client: ate::remote::RemoteClient,
    quota: u64,
) -> Result<Volume, VolumeError> {
    let lock = lock(dir)?;
    let cache_dir = dir.join(format!("cache-{}", keys.chain.to_hex()));
    // Never fdatasynced (the cluster holds the chain). Its large appends go around the page
    // cache all the same, as every volume's do: copying them into fresh page cache was a
    // third of the mount's CPU, and dirty pages reach the disk anyway once written back
    // (docs/decisions.md, session 33).
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(&cache_dir).map_err(io(&cache_dir))?);
    let remote = ate::remote::open_remote(
        client,
        keys.chain,
        keys.owner.clone(),
        storage,
        Some((quota, keys.owner.clone())),
    )?;
    Ok(Volume {
        chain: remote.chain.clone(),
        keys,
        created: false,
        remote: Some(remote),
        _lock: lock,
    })
}
