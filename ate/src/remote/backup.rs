//! A shared volume backed up to a file and restored from one ([`crate::backup`]): the backup
//! reads the chain into a local cache and writes its records as of the cluster's index when
//! it began; the restore makes the chain anew on a cluster that no longer has it.

use super::pipe::{commit_all, PipeError};
use super::replica::blocking_client;
use super::{open_remote, RemoteClient, RemoteError, RemoteOptions, ReplicaError};
use crate::backup::{verify_backup, write_backup, BackupError, BackupSummary, Restorer};
use crate::keyfile::KeyFile;
use crate::storage::Storage;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteBackupError {
    /// Reading the chain into the cache failed.
    #[error("reading the chain: {0}")]
    Source(#[from] ReplicaError),
    /// The backup file could not be written, read or trusted.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The cluster refused a request or could not be reached.
    #[error("the cluster: {0}")]
    Cluster(#[from] RemoteError),
    /// The chain exists and was not made by a restore.
    #[error("chain {0} exists on the cluster (a restore that finished, or a volume never lost): nothing was restored; a restore only makes a volume the cluster does not have")]
    Exists(crate::ids::ChainId),
}

/// Writes a backup of `keys.chain` to `out`, reading the chain through `cache` (empty, or a
/// cache of this chain): its records as of the index the cache has once it caught up. A
/// failure leaves `out` short (no trailer: it verifies as damaged). Blocking: call it outside
/// an async runtime.
pub fn backup_chain_to(
    opts: RemoteOptions,
    keys: &KeyFile,
    out: impl Write,
    cache: Arc<dyn Storage>,
) -> Result<BackupSummary, RemoteBackupError> {
    let source = open_remote(
        RemoteClient::new(opts)?,
        keys.chain,
        keys.owner.clone(),
        cache,
        None,
    )?;
    let quota = source
        .rt
        .block_on(source.client.info(keys.chain))?
        .quota_bytes;
    let frozen = source.chain.frozen();
    tracing::info!(chain = %keys.chain, index = frozen.index, records = frozen.records.len(), "backing up a chain");
    let mut logged = Instant::now();
    let summary = write_backup(&frozen, keys, quota, out, |done, of| {
        if logged.elapsed() >= Duration::from_secs(5) {
            logged = Instant::now();
            tracing::info!(chain = %keys.chain, done, of, "backing up a chain");
        }
    })?;
    tracing::info!(chain = %keys.chain, ?summary, "chain backed up");
    Ok(summary)
}

/// [`backup_chain_to`] a file `out` (which must not exist), which appears complete or not at
/// all: it is written beside `out`, synced, then renamed.
pub fn backup_chain(
    opts: RemoteOptions,
    keys: &KeyFile,
    out: &Path,
    cache: Arc<dyn Storage>,
) -> Result<BackupSummary, RemoteBackupError> {
    // A run killed while writing leaves this behind; the next one starts it over.
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)
        .map_err(BackupError::Io)?;
    let written = backup_chain_to(opts, keys, &file, cache).and_then(|summary| {
        let publish = || -> std::io::Result<()> {
            file.sync_all()?;
            std::fs::rename(&partial, out)?;
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        publish().map_err(BackupError::Io)?;
        Ok(summary)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// The quota of a chain while a restore fills it: no volume is given it (quotas are sizes of
/// claims), so a chain of this quota is one a restore left unfinished, and a rerun may delete
/// it. Any other chain of the backup's id is a volume the cluster has: never touched.
pub const RESTORING: u64 = u64::MAX - 0x7e57;

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    /// What the backup holds.
    pub summary: BackupSummary,
    /// Transactions committed (its genesis included).
    pub transactions: usize,
}

/// Makes `keys.chain` again on the cluster from the backup at `path`, with the quota `quota`
/// picks from what the backup holds (its `quota` is the chain's when it was backed up). The
/// backup must verify with `keys` before anything is written. A chain the cluster has is
/// refused, except one an interrupted restore left ([`RESTORING`]: made again). Blocking:
/// call it outside an async runtime.
pub fn restore_chain(
    opts: RemoteOptions,
    keys: &KeyFile,
    path: &Path,
    quota: impl FnOnce(&BackupSummary) -> u64,
) -> Result<RestoreReport, RemoteBackupError> {
    let backup = verify_backup(path, keys)?;
    let quota = quota(&backup.summary);
    let chain = keys.chain;
    let (client, rt) = blocking_client(&opts)?;
    match rt.block_on(client.info(chain)) {
        Ok(info) if info.quota_bytes == RESTORING => {
            tracing::info!(%chain, "an interrupted restore's chain is made again");
            rt.block_on(client.delete(chain, &keys.owner))?;
        }
        Ok(_) => return Err(RemoteBackupError::Exists(chain)),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let mut restorer = Restorer::new(&backup, keys)?;
    tracing::info!(%chain, index = backup.summary.index, records = backup.summary.records, "restoring a chain");
    rt.block_on(client.create(chain, RESTORING, restorer.genesis()))?;
    let piped = commit_all(&rt, &client, chain, &mut restorer, "restoring a chain");
    let piped = match piped {
        Ok(p) if p.conflicts == 0 => p,
        failed => {
            // Half a volume is worse than none: it would mount and show some files.
            if let Err(e) = rt.block_on(client.delete(chain, &keys.owner)) {
                tracing::warn!(%chain, error = %e, "the partial restore stays (a rerun replaces it)");
            }
            return Err(match failed {
                Err(PipeError::Produce(e)) => e.into(),
                Err(PipeError::Commit(e)) => e.into(),
                Ok(p) => RemoteError::Refused(
                    tonic::Code::FailedPrecondition,
                    format!("{} transactions of the restore were refused", p.conflicts),
                )
                .into(),
            });
        }
    };
    rt.block_on(client.set_quota(chain, quota, &keys.owner))?;
    let report = RestoreReport {
        summary: backup.summary,
        transactions: 1 + piped.committed,
    };
    tracing::info!(%chain, ?report, "chain restored");
    Ok(report)
}
