//! Giving a volume new keys and its record the new envelope (`atefs-csi --rekey NAME`, run in
//! the controller's container with `kubectl exec`): what to do when a volume's Secret was
//! exposed. The chain part is `atefs rekey`'s ([`ate::remote::rekey_chain`]); this keeps the
//! record in step, in an order that loses no key at any point:
//!
//! 1. the new envelope is written to a pending record (`atefs-rekey-NAME`, which neither the
//!    orphan sweep nor the node plugin reads) before the chain changes;
//! 2. the chain's owners are swapped and its records sealed again;
//! 3. the volume's record is replaced (records are immutable Secrets: deleted, then created
//!    with the new envelope), then the pending record goes.
//!
//! Run again after a failure at any step, it goes on from there: a pending record is used
//! instead of new keys, and a volume record missing beside a pending one is made from it.

use crate::keystore::{KeyStore, StoreError, StoredVolume};
use ate::remote::{rekey_chain, RekeyReport, RemoteOptions, RemoteRekeyError};
use std::path::Path;
use thiserror::Error;

/// Why a volume's keys were not changed (or its record not replaced).
#[derive(Debug, Error)]
pub enum RekeyVolumeError {
    /// No record of this volume, and none pending.
    #[error("no volume named {0}")]
    NotFound(String),
    /// A snapshot's record: snapshots are never mounted; a copy of one gets keys of its own.
    #[error("{0} is a snapshot, not a volume")]
    Snapshot(String),
    /// The pending keys are of another chain than the volume's.
    #[error("the pending new keys of {0} are of another chain than the volume's: remove the pending record by hand")]
    Mismatch(String),
    /// Reading or writing the records failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain's keys could not be changed.
    #[error(transparent)]
    Chain(#[from] RemoteRekeyError),
    /// The cache the chain is read through.
    #[error("a cache directory in {0}: {1}")]
    Cache(String, std::io::Error),
    /// Another call made the volume's record meanwhile.
    #[error("the record of {0} was made by someone else meanwhile; run the rekey again")]
    Raced(String),
}

/// What a rekey of a volume did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RekeyOutcome {
    /// The chain got new keys (or finished getting them) and the record holds them.
    Rekeyed(RekeyReport),
    /// An earlier run had changed the chain and removed the record; it was made again from
    /// the pending keys.
    Restored,
}

/// [`ate::remote::refuse_in_use`], off the async runtime.
async fn refuse_in_use(opts: &RemoteOptions, chain: ate::ChainId) -> Result<(), RekeyVolumeError> {
    let opts = opts.clone();
    tokio::task::spawn_blocking(move || ate::remote::refuse_in_use(&opts, chain))
        .await
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))?;
    Ok(())
}

/// Gives volume `name` new keys (refused while it is mounted anywhere): its record in `volumes`, the pending new keys in `pending`,
/// the chain read through a cache made in `work_dir`.
pub async fn rekey_volume(
    volumes: &dyn KeyStore,
    pending: &dyn KeyStore,
    opts: RemoteOptions,
    work_dir: &Path,
    name: &str,
) -> Result<RekeyOutcome, RekeyVolumeError> {
    let current = volumes.get(name).await?;
    let waiting = pending.get(name).await?;
    let current = match (current, waiting) {
        (None, None) => return Err(RekeyVolumeError::NotFound(name.to_string())),
        (None, Some(new)) => {
            // Stopped between removing the record and making it again.
            if !volumes.create(name, &new).await? {
                return Err(RekeyVolumeError::Raced(name.to_string()));
            }
            pending.delete(name).await?;
            tracing::info!(
                volume = name,
                "the volume's record was made again from its pending new keys"
            );
            return Ok(RekeyOutcome::Restored);
        }
        (Some(c), _) if c.snapshot_of.is_some() => {
            return Err(RekeyVolumeError::Snapshot(name.to_string()))
        }
        (Some(c), Some(new)) if new.keys.chain != c.keys.chain => {
            return Err(RekeyVolumeError::Mismatch(name.to_string()))
        }
        (Some(c), Some(new)) if new.keys.owner.public() == c.keys.owner.public() => {
            // Stopped after the record was replaced, before the pending one went.
            pending.delete(name).await?;
            return Ok(RekeyOutcome::Rekeyed(RekeyReport::default()));
        }
        (Some(c), Some(_)) => {
            refuse_in_use(&opts, c.keys.chain).await?;
            c
        }
        (Some(c), None) => {
            // Before anything is written: a volume in use is left as it was.
            refuse_in_use(&opts, c.keys.chain).await?;
            let new = StoredVolume {
                keys: c.keys.rekeyed(),
                capacity: c.capacity,
                snapshot_of: None,
            };
            if !pending.create(name, &new).await? {
                return Err(RekeyVolumeError::Raced(name.to_string()));
            }
            c
        }
    };
    // Read back: what the chain is given is what the store holds.
    let new = pending
        .get(name)
        .await?
        .ok_or_else(|| RekeyVolumeError::Raced(name.to_string()))?;
    let cache = tempfile::tempdir_in(work_dir)
        .map_err(|e| RekeyVolumeError::Cache(work_dir.display().to_string(), e))?;
    let storage: std::sync::Arc<dyn ate::storage::Storage> = std::sync::Arc::new(
        ate::storage::FileStorage::new(cache.path())
            .map_err(|e| RekeyVolumeError::Cache(work_dir.display().to_string(), e))?,
    );
    let (old_keys, new_keys) = (current.keys.clone(), new.keys.clone());
    let report =
        tokio::task::spawn_blocking(move || rekey_chain(opts, &old_keys, &new_keys, storage))
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))?;
    volumes.delete(name).await?;
    if !volumes.create(name, &new).await? {
        return Err(RekeyVolumeError::Raced(name.to_string()));
    }
    pending.delete(name).await?;
    tracing::info!(volume = name, chain = %new.keys.chain, ?report, "the volume has new keys");
    Ok(RekeyOutcome::Rekeyed(report))
}
