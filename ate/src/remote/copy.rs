//! A chain on a cluster copied into a new chain on the same cluster (a volume's clone or
//! snapshot): the source is read into a local cache, frozen at the index the cluster had when
//! the copy began, and its live records committed to the new chain under the copy's keys
//! ([`crate::copy`]).

use super::{open_remote, RemoteClient, RemoteError, RemoteOptions, ReplicaError};
use crate::copy::{Copier, CopyError};
use crate::keyfile::KeyFile;
use crate::storage::Storage;
use std::sync::Arc;
use tonic::Code;

/// What a copy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyReport {
    /// The source's chain index the copy is as of.
    pub index: u64,
    /// Records copied.
    pub records: usize,
    /// Records left out: unreachable, their parent gone.
    pub skipped: usize,
    /// Transactions committed to the copy (its genesis included).
    pub transactions: usize,
}

/// Why a copy failed; the new chain may exist, half filled (a retry deletes it first).
#[derive(Debug, thiserror::Error)]
pub enum RemoteCopyError {
    /// Reading the source into the cache failed.
    #[error("reading the source chain: {0}")]
    Source(#[from] ReplicaError),
    /// The records could not be copied.
    #[error("copying the records: {0}")]
    Copy(#[from] CopyError),
    /// The cluster refused or failed the new chain's creation or a commit to it.
    #[error("writing the copy: {0}")]
    Target(#[from] RemoteError),
}

/// Copies `from.chain` into `to.chain` (which gets `quota`), reading the source through
/// `cache` (empty, or a cache of the source). A `to.chain` left by an earlier attempt is
/// deleted first, so a retry starts clean. Blocking: call it outside an async runtime (or
/// from `spawn_blocking`).
pub fn copy_chain(
    opts: RemoteOptions,
    from: &KeyFile,
    to: &KeyFile,
    quota: u64,
    cache: Arc<dyn Storage>,
) -> Result<CopyReport, RemoteCopyError> {
    let client = RemoteClient::new(opts)?;
    let source = open_remote(client, from.chain, from.owner.clone(), cache, None)?;
    let (rt, client) = (source.rt.clone(), source.client.clone());
    let frozen = source.chain.frozen();
    let mut copier = Copier::new(&frozen, from, to)?;
    tracing::info!(from = %from.chain, to = %to.chain, index = frozen.index, records = copier.records(), "copying a chain");
    let genesis = copier.genesis();
    rt.block_on(async {
        match client.create(to.chain, quota, genesis.clone()).await {
            Err(RemoteError::Refused(Code::AlreadyExists, _)) => {
                client.delete(to.chain, &to.owner).await?;
                client.create(to.chain, quota, genesis).await
            }
            r => r,
        }
    })?;
    let mut transactions = 1;
    let mut logged = std::time::Instant::now();
    while let Some(tx) = copier.next_tx() {
        rt.block_on(client.commit(to.chain, tx?))?;
        transactions += 1;
        if logged.elapsed() >= std::time::Duration::from_secs(5) {
            logged = std::time::Instant::now();
            tracing::info!(to = %to.chain, done = copier.done(), of = copier.records(), "copying a chain");
        }
    }
    let report = CopyReport {
        index: frozen.index,
        records: copier.records(),
        skipped: copier.skipped(),
        transactions,
    };
    if report.skipped > 0 {
        tracing::warn!(from = %from.chain, skipped = report.skipped, "records whose parent is gone were not copied");
    }
    tracing::info!(from = %from.chain, to = %to.chain, ?report, "chain copied");
    Ok(report)
}
