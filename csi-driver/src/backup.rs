//! A volume backed up off the cluster and restored onto it (`atefs-csi --backup NAME`,
//! `--restore NAME`, run in the controller's container with `kubectl exec`, whose environment
//! holds the settings): the chain part is `atefs backup` / `atefs restore`'s
//! ([`ate::remote::backup_chain`], [`ate::remote::restore_chain`]); the keys come from the
//! volume's record (its Secret), which a backup never holds.
//!
//! The backup can go to stdout and the restore come from stdin (`-`), so that the file never
//! has to be copied into or out of the container (its image has no shell or tar): the restore
//! keeps a copy in the work directory, since it reads the file twice (verify, then commit).

use crate::keystore::{KeyStore, StoreError, StoredVolume};
use ate::backup::BackupSummary;
use ate::remote::{backup_chain, restore_chain, RemoteBackupError, RemoteOptions, RestoreReport};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a volume was not backed up or restored.
#[derive(Debug, Error)]
pub enum BackupVolumeError {
    /// No record of this volume (restore its Secret from the cluster's backups first).
    #[error("no volume named {0} (a restore needs the volume's Secret: restore that first)")]
    NotFound(String),
    /// Reading the record failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain could not be backed up or restored.
    #[error(transparent)]
    Chain(#[from] RemoteBackupError),
    /// The work directory, or copying the file from stdin or to stdout.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Where the backup goes or comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    /// A file.
    File(PathBuf),
    /// Standard output (a backup) or input (a restore).
    Std,
}

impl Stream {
    /// `-` is the standard stream; anything else a file.
    pub fn from_arg(arg: &Path) -> Self {
        if arg.as_os_str() == "-" {
            Stream::Std
        } else {
            Stream::File(arg.to_path_buf())
        }
    }
}

async fn record(volumes: &dyn KeyStore, name: &str) -> Result<StoredVolume, BackupVolumeError> {
    volumes
        .get(name)
        .await?
        .ok_or_else(|| BackupVolumeError::NotFound(name.to_string()))
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BackupVolumeError {
    move |e| BackupVolumeError::Io(what.to_string(), e)
}

/// A directory of its own in `work_dir` for one run (removed when it drops).
fn scratch(work_dir: &Path) -> Result<tempfile::TempDir, BackupVolumeError> {
    std::fs::create_dir_all(work_dir).map_err(io(work_dir.display()))?;
    tempfile::tempdir_in(work_dir).map_err(io(work_dir.display()))
}

/// Backs volume `name` up to `to`, reading its chain through a cache in `work_dir`.
pub async fn backup_volume(
    volumes: &dyn KeyStore,
    opts: RemoteOptions,
    work_dir: &Path,
    name: &str,
    to: Stream,
) -> Result<BackupSummary, BackupVolumeError> {
    let v = record(volumes, name).await?;
    let dir = scratch(work_dir)?;
    let file = match &to {
        Stream::File(p) => p.clone(),
        Stream::Std => dir.path().join("backup"),
    };
    let cache = dir.path().join("cache");
    let summary = tokio::task::spawn_blocking(move || {
        let storage = std::sync::Arc::new(
            ate::storage::FileStorage::new(&cache).map_err(io(cache.display()))?,
        );
        let summary = backup_chain(opts, &v.keys, &file, storage)?;
        if to == Stream::Std {
            let mut f = std::fs::File::open(&file).map_err(io(file.display()))?;
            let mut out = std::io::stdout().lock();
            std::io::copy(&mut f, &mut out).map_err(io("standard output"))?;
            std::io::Write::flush(&mut out).map_err(io("standard output"))?;
        }
        Ok::<_, BackupVolumeError>(summary)
    })
    .await
    .map_err(|e| BackupVolumeError::Io("the backup's thread".into(), std::io::Error::other(e)))??;
    drop(dir);
    Ok(summary)
}

/// Makes volume `name`'s chain again from the backup at `from` (quota: the volume's capacity).
pub async fn restore_volume(
    volumes: &dyn KeyStore,
    opts: RemoteOptions,
    work_dir: &Path,
    name: &str,
    from: Stream,
) -> Result<RestoreReport, BackupVolumeError> {
    let v = record(volumes, name).await?;
    let dir = scratch(work_dir)?;
    let file = match &from {
        Stream::File(p) => p.clone(),
        Stream::Std => dir.path().join("backup"),
    };
    let report = tokio::task::spawn_blocking(move || {
        if from == Stream::Std {
            let mut f = std::fs::File::create(&file).map_err(io(file.display()))?;
            std::io::copy(&mut std::io::stdin().lock(), &mut f).map_err(io("standard input"))?;
        }
        Ok::<_, BackupVolumeError>(restore_chain(opts, &v.keys, &file, Some(v.capacity))?)
    })
    .await
    .map_err(|e| {
        BackupVolumeError::Io("the restore's thread".into(), std::io::Error::other(e))
    })??;
    drop(dir);
    Ok(report)
}
