//! Bounding the inode table. Every inode a mount loads (a lookup, a `stat`, a listing with
//! attributes) used to stay in memory until unmount: about 850 bytes each, so a walk over a
//! volume of millions of files (a backup, a `find`) grew the daemon by gigabytes
//! (docs/benchmarks.md, session 30). Past [`FsOptions::node_cache`](super::FsOptions) inodes,
//! the least recently used of those that hold nothing the chain does not have are dropped;
//! [`AteFs::node`] loads them again from the chain when they are next used.

use super::{AteFs, Node, State};
use crate::records::ROOT_INO;
use std::collections::HashSet;

impl Node {
    /// Holds only what the chain's view has (once every queued commit is answered): no open
    /// handle, no buffered, in-flight or queued data, no unsaved attributes.
    fn is_clean(&self) -> bool {
        self.open == 0 && self.dirty_bytes == 0 && !self.holds_unsaved()
    }
}

impl AteFs {
    /// Keeps the table within [`FsOptions::node_cache`](super::FsOptions) (twice that while
    /// changes stream in): once past it, drops clean inodes, least recently used first, down
    /// to half of it. Called at the start of the calls that load inodes, before they change
    /// any: an inode that a call has changed in memory but not yet committed is never dropped.
    ///
    /// A dropped inode is read again from the chain's view, so the view must hold every
    /// change this mount made: the namespace batch is sent and the queued commits are waited
    /// for first (a commit is in the view once it is answered, through a cluster too). That
    /// wait comes at most once per half a table of new inodes; a failed commit is reported by
    /// the next fsync, as when it is collected otherwise.
    pub(super) fn shed(&self, st: &mut State) {
        let cap = self.opts.node_cache.max(1);
        if st.nodes.len() <= cap {
            return;
        }
        let quiet = st.batch.len() == 0 && st.pending.iter().all(|p| p.is_done());
        if !quiet {
            // Sending the batch early and waiting costs a commit round: while changes are
            // streaming in, that is done only once the table reaches twice its bound.
            if st.nodes.len() <= cap.saturating_mul(2) {
                return;
            }
        }
        if let Err(e) = self.wait_queued(st) {
            st.failed.get_or_insert(e.to_string());
            return;
        }
        // Files whose data commits are all answered still hold them (and the blocks they
        // carried) until next used: collect them now, so that they count as clean.
        let answered: Vec<u64> = st
            .nodes
            .iter()
            .filter(|(_, n)| !n.pending.is_empty() && n.pending.iter().all(|(_, p)| p.is_done()))
            .map(|(ino, _)| *ino)
            .collect();
        for ino in answered {
            // A failed commit puts the file's data back as buffered (it is kept, and written
            // again by the next flush); the next fsync reports it.
            if let Err(e) = self.settle_upto(st, ino, u64::MAX) {
                st.failed.get_or_insert(e.to_string());
            }
        }
        let closed: HashSet<u64> = st.closed.iter().copied().collect();
        let droppable =
            |ino: &u64, n: &Node| *ino != ROOT_INO && !closed.contains(ino) && n.is_clean();
        let mut ages: Vec<u64> = st
            .nodes
            .iter()
            .filter(|(ino, n)| droppable(ino, n))
            .map(|(_, n)| n.used)
            .collect();
        let excess = st.nodes.len() - cap / 2;
        let Some(last) = excess.min(ages.len()).checked_sub(1) else {
            return;
        };
        // Every use of an inode takes a new tick, so ages are distinct: exactly `last + 1` go.
        let (_, cut, _) = ages.select_nth_unstable(last);
        let cut = *cut;
        st.nodes
            .retain(|ino, n| !(droppable(ino, n) && n.used <= cut));
        tracing::debug!(kept = st.nodes.len(), "dropped clean inodes from memory");
    }

    /// Inodes held in memory (bounded by [`FsOptions::node_cache`](super::FsOptions)).
    pub fn cached_inodes(&self) -> usize {
        self.state.lock().nodes.len()
    }
}
