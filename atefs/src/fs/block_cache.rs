//! The LRU of decrypted committed blocks, bounded by `FsOptions::cache_bytes`.
//!
//! Reads decrypt committed blocks without holding the file system's state lock (readahead
//! sends several reads at once, and opening the sealed blocks is most of their cost), so a
//! write can replace a block while a read is still opening its old version. The generation
//! moves whenever an entry is dropped; a read caches what it opened only if the generation is
//! the one it saw when it planned under the state lock, so a stale copy never outlives the
//! write that made it stale. Every drop happens under the state lock.

use lru::LruCache;

/// A block's plaintext, shared between the cache and the reads that return it (a read copies
/// it once, into its reply).
pub(crate) type Block = std::sync::Arc<Vec<u8>>;

/// (inode, block index) -> plaintext.
#[derive(Debug)]
pub(crate) struct BlockCache {
    lru: LruCache<(u64, u64), Block>,
    generation: u64,
}

impl BlockCache {
    pub(crate) fn new(blocks: std::num::NonZeroUsize) -> Self {
        Self {
            lru: LruCache::new(blocks),
            generation: 0,
        }
    }

    pub(crate) fn get(&mut self, key: (u64, u64)) -> Option<&Block> {
        self.lru.get(&key)
    }

    /// Caches a block opened while the state lock was held.
    pub(crate) fn put(&mut self, key: (u64, u64), block: Block) {
        self.lru.put(key, block);
    }

    /// The generation now (read under the state lock when planning a read).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Caches a block opened without the state lock, unless anything was dropped since
    /// generation `seen` (the block may be the version a write just replaced).
    pub(crate) fn put_if_unchanged(&mut self, seen: u64, key: (u64, u64), block: Block) {
        if self.generation == seen {
            self.lru.put(key, block);
        }
    }

    /// Drops one block (it is about to change).
    pub(crate) fn forget(&mut self, key: (u64, u64)) {
        self.generation += 1;
        self.lru.pop(&key);
    }

    /// Drops a file's blocks from index `from` on.
    pub(crate) fn forget_from(&mut self, ino: u64, from: u64) {
        self.generation += 1;
        let stale: Vec<(u64, u64)> = self
            .lru
            .iter()
            .map(|(k, _)| *k)
            .filter(|(i, b)| *i == ino && *b >= from)
            .collect();
        for k in stale {
            self.lru.pop(&k);
        }
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        self.generation += 1;
        self.lru.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_planned_before_a_drop_does_not_cache_what_it_opened() {
        let mut c = BlockCache::new(std::num::NonZeroUsize::MIN.saturating_add(3));
        let seen = c.generation();
        c.forget((1, 0));
        c.put_if_unchanged(seen, (1, 0), Block::new(b"old".to_vec()));
        assert!(c.get((1, 0)).is_none());
        let seen = c.generation();
        c.put_if_unchanged(seen, (1, 0), Block::new(b"new".to_vec()));
        assert_eq!(c.get((1, 0)).map(|b| b.as_slice()), Some(&b"new"[..]));
        c.forget_from(1, 0);
        assert!(c.get((1, 0)).is_none());
    }
}
