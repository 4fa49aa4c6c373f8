//! A volume backed up off the cluster and restored onto it (`atefs-csi --backup NAME`,
//! `--restore NAME`, run in the controller's container with `kubectl exec`, whose environment
//! holds the settings): the chain part is `atefs backup` / `atefs restore`'s
//! ([`ate::remote::backup_chain`], [`ate::remote::restore_chain`]); the keys come from the
//! volume's record (its Secret), which a backup never holds.
//!
//! The backup can go to stdout and the restore come from stdin (`-`), so that the file never
//! has to be copied into or out of the container (its image has no shell or tar): the backup
//! is written to stdout as it is made; the restore keeps a copy in the work directory, since it
//! reads the file twice (verify, then commit).

use crate::keystore::{KeyStore, StoreError, StoredVolume};
use ate::backup::BackupSummary;
use ate::remote::{
    backup_chain, backup_chain_to, restore_chain, RemoteBackupError, RemoteOptions, RestoreReport,
};
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
    /// The file, or `spool` (where a standard stream's bytes are kept) for a standard stream.
    fn path_or(&self, spool: PathBuf) -> PathBuf {
        match self {
            Stream::File(p) => p.clone(),
            Stream::Std => spool,
        }
    }

    /// `-` is the standard stream; anything else a file.
    pub fn from_arg(arg: &Path) -> Self {
        if arg.as_os_str() == "-" {
            Stream::Std
        } else {
            Stream::File(arg.to_path_buf())
        }
    }
}

/// Volume `name`'s record.
async fn record(volumes: &dyn KeyStore, name: &str) -> Result<StoredVolume, BackupVolumeError> {
    volumes
        .get(name)
        .await?
        .ok_or_else(|| BackupVolumeError::NotFound(name.to_string()))
}

/// A directory of its own in `work_dir` for one run (removed when it drops).
fn scratch(work_dir: &Path) -> Result<tempfile::TempDir, BackupVolumeError> {
    std::fs::create_dir_all(work_dir).map_err(io(work_dir.display()))?;
    tempfile::tempdir_in(work_dir).map_err(io(work_dir.display()))
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BackupVolumeError {
    move |e| BackupVolumeError::Io(what.to_string(), e)
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
    backup_record(v, opts, work_dir, to).await
}

/// Backs the volume of record `v` up to `to`; standard output gets the backup as it is
/// written (nothing but the cache is kept in `work_dir`).
async fn backup_record(
    v: StoredVolume,
    opts: RemoteOptions,
    work_dir: &Path,
    to: Stream,
) -> Result<BackupSummary, BackupVolumeError> {
    let dir = scratch(work_dir)?;
    let cache = dir.path().join("cache");
    let summary = tokio::task::spawn_blocking(move || {
        let storage = std::sync::Arc::new(
            ate::storage::FileStorage::new(&cache).map_err(io(cache.display()))?,
        );
        let summary = match &to {
            Stream::File(file) => backup_chain(opts, &v.keys, file, storage)?,
            Stream::Std => backup_chain_to(opts, &v.keys, std::io::stdout().lock(), storage)?,
        };
        Ok::<_, BackupVolumeError>(summary)
    })
    .await
    .map_err(|e| BackupVolumeError::Io("the backup's thread".into(), std::io::Error::other(e)))??;
    drop(dir);
    Ok(summary)
}

/// Makes volume `name`'s chain again from the backup at `from`, with the larger of the quota
/// it had then and the capacity its record was made with.
pub async fn restore_volume(
    volumes: &dyn KeyStore,
    opts: RemoteOptions,
    work_dir: &Path,
    name: &str,
    from: Stream,
) -> Result<RestoreReport, BackupVolumeError> {
    let v = record(volumes, name).await?;
    let dir = scratch(work_dir)?;
    let file = from.path_or(dir.path().join("backup"));
    let report = tokio::task::spawn_blocking(move || {
        if from == Stream::Std {
            let mut f = std::fs::File::create(&file).map_err(io(file.display()))?;
            std::io::copy(&mut std::io::stdin().lock(), &mut f).map_err(io("standard input"))?;
        }
        // The record keeps the size the volume was made with; an expansion since raised only
        // the chain's quota, which the backup holds.
        let quota = |b: &BackupSummary| b.quota.max(v.capacity);
        Ok::<_, BackupVolumeError>(restore_chain(opts, &v.keys, &file, quota)?)
    })
    .await
    .map_err(|e| {
        BackupVolumeError::Io("the restore's thread".into(), std::io::Error::other(e))
    })??;
    drop(dir);
    Ok(report)
}

/// What a backup of every volume did.
#[derive(Debug, Default)]
pub struct BackupAllReport {
    /// Volumes backed up, and their new backup file.
    pub written: Vec<(String, PathBuf)>,
    /// Volumes that were not, and why.
    pub failed: Vec<(String, String)>,
    /// Older backups removed past `keep`.
    pub removed: usize,
}

/// The extension of the files [`backup_all`] writes.
pub const EXTENSION: &str = "atefs-backup";

/// Backs every volume of `volumes` up into `dir`, each to
/// `dir/<its record's name>/<stamp>.atefs-backup` (`stamp`: a UTC time that sorts), then
/// keeps the newest `keep` (at least one) of each volume's backups there. A volume that fails
/// (or whose old backups could not be removed) is reported and the others go on; a failed
/// volume's older backups stay.
pub async fn backup_all(
    volumes: &dyn KeyStore,
    opts: RemoteOptions,
    work_dir: &Path,
    dir: &Path,
    keep: usize,
    stamp: &str,
) -> Result<BackupAllReport, BackupVolumeError> {
    let mut report = BackupAllReport::default();
    // The records as listed: a volume made meanwhile waits for the next run.
    let mut records = volumes.list().await?;
    records.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, v) in records {
        let own = dir.join(crate::keystore::record_name(&name));
        let file = own.join(format!("{stamp}.{EXTENSION}"));
        let made = match std::fs::create_dir_all(&own) {
            Ok(()) => backup_record(v, opts.clone(), work_dir, Stream::File(file.clone()))
                .await
                .map(|_| ()),
            Err(e) => Err(BackupVolumeError::Io(own.display().to_string(), e)),
        };
        match made {
            Ok(()) => {
                tracing::info!(volume = %name, file = %file.display(), "volume backed up");
                match prune(&own, keep.max(1)) {
                    Ok(n) => report.removed += n,
                    Err(e) => report.failed.push((name.clone(), format!("pruning: {e}"))),
                }
                report.written.push((name, file));
            }
            Err(e) => {
                tracing::warn!(volume = %name, error = %e, "volume not backed up");
                report.failed.push((name, e.to_string()));
            }
        }
    }
    Ok(report)
}

/// Removes all but the newest `keep` backups in `dir` (their names sort by time); how many.
fn prune(dir: &Path, keep: usize) -> Result<usize, BackupVolumeError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir.display()))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == EXTENSION))
        .collect();
    files.sort();
    let old = files.len().saturating_sub(keep);
    for f in &files[..old] {
        std::fs::remove_file(f).map_err(io(f.display()))?;
    }
    Ok(old)
}
