//! Which chain of an id a cache holds. A restore makes a chain again under its old id with
//! a new genesis and another history; a cache of the old one must not be extended with the
//! new one's transactions from where it stopped. The cache keeps the genesis hash the
//! cluster named when it was filled; a cache of another genesis starts over, and its
//! subscriptions carry the hash so the cluster refuses them once the chain is made again.

use super::client::RemoteError;
use super::pb::chain::InfoReply;
use super::replica::{cache_io, clear_cache, ReplicaError};
use crate::ids::{ChainId, TxHash};
use crate::storage::Storage;
use std::sync::Arc;

/// The cache's record of the genesis its transactions descend from.
const GENESIS_FILE: &str = "chain.genesis";
const GENESIS_TMP: &str = "chain.genesis.tmp";

/// The genesis hash an Info answer names (None from replicas that do not know it).
pub(super) fn genesis_in(info: &InfoReply) -> Result<Option<TxHash>, RemoteError> {
    if info.genesis.is_empty() {
        return Ok(None);
    }
    <[u8; 32]>::try_from(&info.genesis[..])
        .map(|h| Some(TxHash(h)))
        .map_err(|_| {
            RemoteError::Refused(
                tonic::Code::Internal,
                format!("a genesis hash of {} bytes", info.genesis.len()),
            )
        })
}

/// Makes the cache one of the chain whose genesis is `genesis`: a cache that recorded
/// another is emptied first (its chain was made again since it was filled). A cache with no
/// record (new, or filled before caches kept one) keeps what it holds.
pub(super) fn adopt(
    cache: &Arc<dyn Storage>,
    chain: ChainId,
    genesis: TxHash,
) -> Result<(), ReplicaError> {
    let recorded = recorded(cache)?;
    if recorded == Some(genesis) {
        return Ok(());
    }
    if let Some(old) = recorded {
        tracing::warn!(%chain, cached = %old, now = %genesis, "the local cache holds an earlier chain of this id (made again since, from a backup?); fetching the chain afresh");
        clear_cache(cache)?;
    }
    // Written only once the old transactions are gone: a crash in between leaves a record
    // of the old genesis, and the next open empties the cache again.
    let tmp = cache
        .open(GENESIS_TMP, true)
        .map_err(cache_io("create", GENESIS_TMP))?;
    tmp.truncate(0).map_err(cache_io("truncate", GENESIS_TMP))?;
    tmp.write_at(&genesis.0, 0)
        .map_err(cache_io("write", GENESIS_TMP))?;
    tmp.sync_data()
        .map_err(cache_io("fdatasync", GENESIS_TMP))?;
    cache
        .rename(GENESIS_TMP, GENESIS_FILE)
        .map_err(cache_io("rename", GENESIS_TMP))?;
    cache.sync_dir().map_err(cache_io("sync", "."))?;
    Ok(())
}

/// The genesis the cache recorded, if it did. A damaged record counts as another genesis.
fn recorded(cache: &Arc<dyn Storage>) -> Result<Option<TxHash>, ReplicaError> {
    let file = match cache.open(GENESIS_FILE, false) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        r => r.map_err(cache_io("open", GENESIS_FILE))?,
    };
    let mut hash = [0u8; 32];
    if file.len().map_err(cache_io("stat", GENESIS_FILE))? == 32 {
        file.read_at(&mut hash, 0)
            .map_err(cache_io("read", GENESIS_FILE))?;
    }
    Ok(Some(TxHash(hash)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn with_segment() -> Arc<dyn Storage> {
        let cache: Arc<dyn Storage> = Arc::new(MemStorage::new());
        let name = crate::redo::segment_name(1);
        cache.open(&name, true).unwrap().write_at(b"x", 0).unwrap();
        cache
    }

    fn segments(cache: &Arc<dyn Storage>) -> usize {
        let names = cache.list().unwrap();
        names
            .iter()
            .filter(|n| crate::redo::parse_name(n).is_some())
            .count()
    }

    #[test]
    fn a_cache_of_another_genesis_is_emptied_and_one_of_the_same_kept() {
        let chain = ChainId([7; 16]);
        let cache = with_segment();
        // No record yet (a cache from before records): kept, and the genesis recorded.
        adopt(&cache, chain, TxHash([1; 32])).unwrap();
        assert_eq!(segments(&cache), 1);
        assert_eq!(recorded(&cache).unwrap(), Some(TxHash([1; 32])));
        adopt(&cache, chain, TxHash([1; 32])).unwrap();
        assert_eq!(segments(&cache), 1, "the same genesis keeps the cache");
        adopt(&cache, chain, TxHash([2; 32])).unwrap();
        assert_eq!(segments(&cache), 0, "another genesis empties it");
        assert_eq!(recorded(&cache).unwrap(), Some(TxHash([2; 32])));
    }

    #[test]
    fn a_damaged_record_counts_as_another_genesis() {
        let chain = ChainId([7; 16]);
        let cache = with_segment();
        adopt(&cache, chain, TxHash([1; 32])).unwrap();
        cache
            .open(GENESIS_FILE, false)
            .unwrap()
            .truncate(5)
            .unwrap();
        adopt(&cache, chain, TxHash([1; 32])).unwrap();
        assert_eq!(segments(&cache), 0);
        assert_eq!(recorded(&cache).unwrap(), Some(TxHash([1; 32])));
    }
}
