//! A chain on a cluster copied into a new chain on the same cluster (a volume's clone or
//! snapshot): the source is read into a local cache, frozen at the index the cluster had when
//! the copy began, and its live records committed to the new chain under the copy's keys
//! ([`crate::copy`]).

use super::pipe::{commit_all, PipeError};
use super::replica::blocking_client;
use super::{open_remote, RemoteClient, RemoteError, RemoteOptions, ReplicaError};
use crate::copy::{Copier, CopyError};
use crate::keyfile::KeyFile;
use crate::storage::Storage;
use std::sync::Arc;
use tonic::Code;

/// What a copy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyReport {
    /// The source's chain index the copy is as of (0 when the copy was complete already).
    pub index: u64,
    /// Records copied.
    pub records: usize,
    /// Records left out: unreachable, their parent gone.
    pub skipped: usize,
    /// Transactions committed to the copy (its genesis included).
    pub transactions: usize,
    /// Plaintext bytes copied.
    pub bytes: u64,
}

/// Why a copy failed; the new chain may exist, half filled (a retry makes it again).
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
/// `cache` (empty, or a cache of the source). Blocking: call it outside an async runtime (or
/// from `spawn_blocking`).
///
/// The copy is made with a quota one byte off `quota` and set to `quota` once every record
/// is in, so the cluster itself records that it is complete: a call for a complete copy
/// returns at once (`transactions` 0), and a copy an earlier attempt left half filled is
/// deleted and made again.
pub fn copy_chain(
    opts: RemoteOptions,
    from: &KeyFile,
    to: &KeyFile,
    quota: u64,
    cache: Arc<dyn Storage>,
) -> Result<CopyReport, RemoteCopyError> {
    let filling = if quota == u64::MAX {
        quota - 1
    } else {
        quota + 1
    };
    let (client, rt) = blocking_client(&opts)?;
    match rt.block_on(client.info(to.chain)) {
        Ok(info) if info.quota_bytes == quota => {
            return Ok(CopyReport {
                index: 0,
                records: info.records as usize,
                skipped: 0,
                transactions: 0,
                bytes: 0,
            })
        }
        Ok(_) => rt.block_on(client.delete(to.chain, &to.owner))?,
        Err(RemoteError::Refused(Code::NotFound, _)) => {}
        Err(e) => return Err(e.into()),
    }
    // A client's connections belong to the runtime that made them: the source's reader
    // gets a client of its own for its runtime.
    drop((client, rt));
    let source = open_remote(
        RemoteClient::new(opts)?,
        from.chain,
        from.owner.clone(),
        cache,
        None,
    )?;
    let (rt, client) = (source.rt.clone(), source.client.clone());
    let frozen = source.chain.frozen();
    let mut copier = Copier::new(&frozen, from, to)?;
    tracing::info!(from = %from.chain, to = %to.chain, index = frozen.index, records = copier.records(), "copying a chain");
    rt.block_on(client.create(to.chain, filling, copier.genesis()))?;
    let piped = commit_all(&rt, &client, to.chain, &mut copier, "copying a chain").map_err(
        |e| match e {
            PipeError::Produce(e) => RemoteCopyError::Copy(e),
            PipeError::Commit(e) => RemoteCopyError::Target(e),
        },
    )?;
    if piped.conflicts > 0 {
        // A copy's transactions carry no preconditions: someone else wrote to the new chain.
        return Err(RemoteCopyError::Target(RemoteError::Refused(
            Code::FailedPrecondition,
            format!("{} transactions of the copy were refused", piped.conflicts),
        )));
    }
    let transactions = 1 + piped.committed;
    rt.block_on(client.set_quota(to.chain, quota, &to.owner))?;
    let report = CopyReport {
        index: frozen.index,
        records: copier.records(),
        skipped: copier.skipped(),
        transactions,
        bytes: copier.bytes(),
    };
    if report.skipped > 0 {
        tracing::warn!(from = %from.chain, skipped = report.skipped, "records whose parent is gone were not copied");
    }
    tracing::info!(from = %from.chain, to = %to.chain, ?report, "chain copied");
    Ok(report)
}
