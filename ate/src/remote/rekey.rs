//! A chain on a cluster given new keys in place ([`crate::rekey`]): the owners are swapped in
//! one transaction, then the chain is read into a local cache and every record still under
//! the old data key is written again under the new one, in passes until one writes all it
//! found (another comes only when a writer with the new keys changed a record meanwhile).
//! Last, the replicas are asked to compact the partition, so that the old versions leave
//! their disks. Every step is decided from the chain's state, so a rekey that was interrupted is
//! finished by running it again with the same two key files.

use super::pipe::{commit_all, PipeError};
use super::replica::blocking_client;
use super::{open_remote, RemoteChain, RemoteClient, RemoteError, RemoteOptions, ReplicaError};
use crate::ids::ChainId;
use crate::keyfile::KeyFile;
use crate::rekey::{check_pair, stage, swap_owners, RekeyError, Resealer, Stage};
use crate::storage::Storage;
use std::sync::Arc;

/// Passes over the records before giving up on a volume that keeps changing under the rekey.
pub const PASSES: u32 = 5;

/// Times the subscriptions of a chain are asked for, half a second apart, before it counts as
/// in use.
const IN_USE_ASKS: u32 = 6;

/// What a rekey did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// This run swapped the owners (false: an earlier run had).
    pub swapped: bool,
    /// Records the first pass found still to write (0: nothing was left).
    pub records: usize,
    /// Transactions committed to write them.
    pub transactions: usize,
    /// Passes over the records: the last wrote all it found, or found nothing left.
    pub passes: u32,
    /// The partition's log index up to which every replica was asked to drop its log (and
    /// the old versions in it) once it has a snapshot past it.
    pub compacted_at: u64,
}

/// Why a rekey stopped. What was committed stays: running the rekey again with the same key
/// files goes on from there.
#[derive(Debug, thiserror::Error)]
pub enum RemoteRekeyError {
    /// The keys or the chain's records do not allow it.
    #[error(transparent)]
    Rekey(#[from] RekeyError),
    /// Reading the chain into the cache failed.
    #[error("reading the chain: {0}")]
    Source(#[from] ReplicaError),
    /// The cluster refused a commit or could not be reached.
    #[error("writing to the chain: {0}")]
    Cluster(#[from] RemoteError),
    /// The chain is being followed: mounted somewhere.
    #[error("the volume is in use: its partition's replicas serve {0} subscriptions of it (each mount holds one); unmount it everywhere first (what a mount with the old keys has not committed when the owners are swapped is lost)")]
    InUse(u32),
    /// Replicas of the chain's partition did not say whether they serve a mount of it.
    #[error("cannot tell whether the volume is in use: replicas {0:?} of its partition did not answer (a mount may follow it there); bring them back, or unmount the volume everywhere and go on regardless")]
    InUseUnknown(Vec<u64>),
    /// Writers kept changing records between a pass's reading and its writing.
    #[error("records kept changing while they were sealed again ({0} passes): stop the volume's writers (unmount it everywhere) and run the rekey again")]
    Busy(u32),
}

/// Gives `old.chain` the keys of `new` (same chain and name key, another owner and data key;
/// `new` must be saved before this is called: once the owners are swapped only it opens the
/// volume). Reads the chain through `cache` (empty, or a cache of this chain). Call
/// [`refuse_in_use`] first unless the volume's mounts may be cut off. Blocking: call it
/// outside an async runtime.
pub fn rekey_chain(
    opts: RemoteOptions,
    old: &KeyFile,
    new: &KeyFile,
    cache: Arc<dyn Storage>,
) -> Result<RekeyReport, RemoteRekeyError> {
    check_pair(old, new)?;
    let chain = old.chain;
    let mut report = RekeyReport::default();
    let mut reader = &old.owner;
    let mut passes = 0;
    loop {
        let source = open_as(&opts, old, new, &mut reader, cache.clone())?;
        let (rt, client) = (source.rt.clone(), source.client.clone());
        let frozen = source.chain.frozen();
        if stage(frozen.root.as_ref(), old, new)? == Stage::Swap {
            let tx = swap_owners(
                frozen.root.as_ref().ok_or(RekeyError::NoRoot(chain))?,
                old,
                new,
            )?;
            // The cache stops following first: the swap ends its subscription, which it
            // would report as a failure.
            drop(frozen);
            drop(source);
            rt.block_on(client.commit(chain, tx.to_vec()))?;
            tracing::info!(%chain, "the new owner key replaced the old one");
            report.swapped = true;
            // The old key reads the chain no longer: the next pass reads it with the new.
            reader = &new.owner;
            continue;
        }
        let mut resealer = Resealer::new(&frozen, old, new)?;
        passes += 1;
        if passes == 1 {
            report.records = resealer.records();
        }
        if resealer.records() == 0 {
            report.passes = passes;
            break;
        }
        if passes > PASSES {
            return Err(RemoteRekeyError::Busy(PASSES));
        }
        tracing::info!(%chain, records = resealer.records(), pass = passes, "sealing records again under the new data key");
        let piped = commit_all(&rt, &client, chain, &mut resealer, "sealing records again")
            .map_err(|e| match e {
                PipeError::Produce(e) => RemoteRekeyError::Rekey(e),
                PipeError::Commit(e) => RemoteRekeyError::Cluster(e),
            })?;
        report.transactions += piped.committed;
        if piped.conflicts == 0 {
            // Nothing is left: the pass read the chain after the owners were swapped, so no
            // record under the old data key can have come since (only the new owner writes),
            // and every one it found is written.
            report.passes = passes;
            break;
        }
        tracing::warn!(%chain, refused = piped.conflicts, "records changed while they were sealed again; another pass");
    }
    // The old versions, sealed under the old data key, leave the replicas' disks: each
    // snapshots the partition and drops the log up to here.
    let (client, rt) = blocking_client(&opts)?;
    report.compacted_at = rt.block_on(client.compact(chain, &new.owner))?;
    tracing::info!(%chain, ?report, "the chain's keys are changed");
    Ok(report)
}

/// Refuses (`InUse`) a chain that is being followed: mounted somewhere, by the count of its
/// subscriptions over every replica of its partition (a mount holds one wherever it
/// reached). Refuses (`InUseUnknown`) when a replica does not say: a mount may hold its
/// subscription there. Blocking: call it outside an async runtime, before this process
/// subscribes to the chain itself.
pub fn refuse_in_use(opts: &RemoteOptions, chain: ChainId) -> Result<(), RemoteRekeyError> {
    let (client, rt) = blocking_client(opts)?;
    // A mount that has just gone may still be counted until the server sees its connection
    // closed, and a replica may be restarting: asked again for a few seconds before it
    // counts as in use.
    let mut asked = 0;
    loop {
        let count = rt.block_on(client.subscribers(chain))?;
        if count.total == 0 && count.unanswered.is_empty() {
            return Ok(());
        }
        asked += 1;
        if asked == IN_USE_ASKS {
            return Err(if count.total > 0 {
                RemoteRekeyError::InUse(count.total)
            } else {
                RemoteRekeyError::InUseUnknown(count.unanswered)
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The chain read into `cache` with whichever of the two owner keys it takes, `reader`
/// first (a run after an interrupted one finds the owners swapped).
fn open_as<'k>(
    opts: &RemoteOptions,
    old: &'k KeyFile,
    new: &'k KeyFile,
    reader: &mut &'k crate::crypto::SigningKey,
    cache: Arc<dyn Storage>,
) -> Result<RemoteChain, RemoteRekeyError> {
    let (client, rt) = blocking_client(opts)?;
    if !rt.block_on(client.can_read(old.chain, reader))? {
        let other = if std::ptr::eq(*reader, &old.owner) {
            &new.owner
        } else {
            &old.owner
        };
        if !rt.block_on(client.can_read(old.chain, other))? {
            return Err(RekeyError::NotAnOwner(old.chain).into());
        }
        *reader = other;
    }
    // A client's connections belong to the runtime that made them: the cache gets its own.
    drop((client, rt));
    Ok(open_remote(
        RemoteClient::new(opts.clone())?,
        old.chain,
        reader.clone(),
        cache,
        None,
    )?)
}
