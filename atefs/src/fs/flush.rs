//! Committing buffered data: flushes on close, fsync and syncfs, the background flusher,
//! and the backpressure that keeps a fast writer's memory bounded.

use super::{AteFs, State, BATCH_OPS, CLOSED_FILES, FLUSH_TX_BYTES, PUT_OVERHEAD};
use crate::error::{FsError, FsResult};
use ate::tx::TxEncoder;
use ate::WriteAuthority;

impl AteFs {
    /// Queues the file's buffered blocks and attributes for commit, without waiting. The
    /// blocks stay readable from `inflight` until their commit is durable.
    pub(super) fn start_flush(&self, st: &mut State, ino: u64) -> FsResult<()> {
        self.start_flush_many(st, &[ino])
    }

    /// [`Self::start_flush`] for several files at once, packed into as few transactions as
    /// the size bounds allow (one signature and one commit for many small files: through a
    /// cluster each transaction costs several signature checks and a log entry). Every file
    /// waits for each transaction that carries part of it.
    fn start_flush_many(&self, st: &mut State, inos: &[u64]) -> FsResult<()> {
        let mut inos = inos.to_vec();
        inos.sort_unstable();
        inos.dedup();
        let inos: Vec<u64> = inos
            .into_iter()
            .filter(|i| {
                st.nodes
                    .get(i)
                    .is_some_and(|n| !n.dirty.is_empty() || n.attr_dirty)
            })
            .collect();
        if inos.is_empty() {
            return Ok(());
        }
        // The data may belong to an inode the namespace batch creates: that goes first.
        self.send_batch(st)?;
        let mut files = Vec::with_capacity(inos.len());
        for ino in inos {
            let Some(node) = st.nodes.get(&ino) else {
                continue;
            };
            let idxs: Vec<u64> = node.dirty.keys().copied().collect();
            if !idxs.is_empty() {
                // A new version of each block is on its way: no cached copy may outlive it (a
                // read since the last write, e.g. truncate reading the tail block, cached the
                // old).
                {
                    let mut cache = self.cache.lock();
                    for i in &idxs {
                        cache.forget((ino, *i));
                    }
                }
                self.block_set(st, ino)?.extend(idxs);
            }
            let node = st.nodes.get_mut(&ino).ok_or(FsError::NotFound)?;
            let dirty = std::mem::take(&mut node.dirty);
            node.dirty_bytes = 0;
            node.attr_dirty = false;
            files.push((ino, dirty, node.attr.clone()));
        }
        // Pack: transaction k carries parts of the files `members[k]` (indexes into `files`).
        // Blocks are sealed straight into the encoding (TxEncoder): one copy of the data.
        let mut left: usize = files
            .iter()
            .map(|(_, d, _)| d.values().map(|b| b.len() + PUT_OVERHEAD).sum::<usize>())
            .sum();
        let capacity = |left: usize| left.min(FLUSH_TX_BYTES + BATCH_OPS * PUT_OVERHEAD);
        let mut txs = vec![TxEncoder::new(self.tx(), capacity(left))];
        let mut members: Vec<Vec<usize>> = vec![Vec::new()];
        let mut bytes = 0usize;
        for (fi, (ino, dirty, attr)) in files.iter().enumerate() {
            let ops = dirty
                .iter()
                // Trailing zeros are not stored: the block reads back the same, holes stay
                // cheap.
                .map(|(idx, data)| {
                    let used = data.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
                    (used, Some((*idx, &data[..used])))
                })
                .chain(std::iter::once((0, None)));
            for (used, block) in ops {
                let full = txs
                    .last()
                    .is_some_and(|t| t.ops() >= BATCH_OPS || bytes + used > FLUSH_TX_BYTES);
                if full && txs.last().is_some_and(|t| t.ops() > 0) {
                    txs.push(TxEncoder::new(self.tx(), capacity(left)));
                    members.push(Vec::new());
                    bytes = 0;
                }
                if let (Some(tx), Some(m)) = (txs.last_mut(), members.last_mut()) {
                    match block {
                        Some((idx, data)) => tx.push_sealed(
                            self.keys.block(*ino, idx),
                            Some(self.keys.inode(*ino)),
                            WriteAuthority::Inherit,
                            &self.keyfile.data,
                            data,
                        ),
                        None => tx.push(self.put_inode(attr)),
                    }
                    if m.last() != Some(&fi) {
                        m.push(fi);
                    }
                }
                bytes += used;
                left = left.saturating_sub(used + PUT_OVERHEAD);
            }
        }
        let mut queued: Vec<Vec<ate::chain::PendingCommit>> =
            files.iter().map(|_| Vec::new()).collect();
        let mut failed = None;
        let mut unsent = std::collections::HashSet::new();
        for (k, tx) in txs.into_iter().enumerate() {
            if failed.is_some() {
                unsent.extend(members[k].iter().copied());
                continue;
            }
            let (sk, encoded) = tx.finish(&self.keyfile.owner);
            match self.chain.commit_encoded_async(sk, encoded) {
                Ok(p) => {
                    st.last_queued = Some(p.watch());
                    for fi in &members[k] {
                        queued[*fi].push(p.share());
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    unsent.extend(members[k].iter().copied());
                }
            }
        }
        for (fi, ((ino, dirty, _), pending)) in files.into_iter().zip(queued).enumerate() {
            let Some(node) = st.nodes.get_mut(&ino) else {
                continue;
            };
            node.flushes += 1;
            let generation = node.flushes;
            node.pending
                .extend(pending.into_iter().map(|p| (generation, p)));
            if unsent.contains(&fi) {
                // Not (all) queued: the data stays buffered, newer writes win.
                for (i, d) in dirty {
                    node.dirty.entry(i).or_insert(d);
                }
                node.dirty_bytes = node.dirty.values().map(Vec::len).sum();
                node.attr_dirty = true;
            } else {
                node.inflight
                    .extend(dirty.into_iter().map(|(i, d)| (i, (generation, d))));
            }
        }
        match failed {
            None => Ok(()),
            Some(e) => Err(e.into()),
        }
    }

    /// Collects finished commits of a file (all of them with `wait`). Once none is pending the
    /// chain's view holds the data and `inflight` is dropped. A failed commit puts its data back
    /// as dirty (newer writes win) and reports the error.
    pub(super) fn settle(&self, st: &mut State, ino: u64, wait: bool) -> FsResult<()> {
        self.settle_upto(st, ino, if wait { u64::MAX } else { 0 })
    }

    /// [`Self::settle`], waiting for the commits of flush generations up to `upto`.
    pub(super) fn settle_upto(&self, st: &mut State, ino: u64, upto: u64) -> FsResult<()> {
        let Some(node) = st.nodes.get_mut(&ino) else {
            return Ok(());
        };
        let mut error = None;
        let mut still = Vec::new();
        for (g, p) in std::mem::take(&mut node.pending) {
            if g > upto && !p.is_done() {
                still.push((g, p));
                continue;
            }
            if let Err(e) = p.wait() {
                error.get_or_insert(e);
            }
        }
        node.pending = still;
        if let Some(e) = error {
            for (idx, (_, data)) in std::mem::take(&mut node.inflight) {
                node.dirty.entry(idx).or_insert(data);
            }
            node.dirty_bytes = node.dirty.values().map(Vec::len).sum();
            node.attr_dirty = true;
            return Err(e.into());
        }
        // Blocks of generations older than every commit still pending are in the chain now;
        // dropping them as they land keeps a long write's memory bounded.
        let oldest = node
            .pending
            .iter()
            .map(|(g, _)| *g)
            .min()
            .unwrap_or(u64::MAX);
        node.inflight.retain(|_, (g, _)| *g >= oldest);
        Ok(())
    }

    /// Commits the file's buffered data and waits until it is durable.
    fn flush_locked(&self, st: &mut State, ino: u64) -> FsResult<()> {
        self.start_flush(st, ino)?;
        self.settle(st, ino, true)
    }

    /// Close: the file's buffered data is committed together with other closed files' (one
    /// signed transaction for up to [`CLOSED_FILES`] files or `flush_bytes` of data, or by the
    /// background flusher within a second), and the caller does not wait for it; untar-like
    /// workloads close thousands of small files, and a transaction each cost a signature and
    /// a log entry each (through a cluster, several signature checks).
    /// On a shared (remote) volume it commits and waits instead: close-to-open means what a
    /// close returned from is what the next open elsewhere reads.
    pub fn flush_async(&self, ino: u64) -> FsResult<()> {
        let mut st = self.state.lock();
        if self.opts.remote {
            self.start_flush(&mut st, ino)?;
            return self.settle(&mut st, ino, true);
        }
        self.flush_closed(&mut st, ino)
    }

    /// Adds a closed file to the group committed together; commits the group once full.
    pub(super) fn flush_closed(&self, st: &mut State, ino: u64) -> FsResult<()> {
        let Some(node) = st.nodes.get(&ino) else {
            return Ok(());
        };
        if node.dirty.is_empty() && !node.attr_dirty {
            return self.settle(st, ino, false);
        }
        st.closed_bytes += node.dirty_bytes;
        st.closed.push(ino);
        if st.closed.len() < CLOSED_FILES && st.closed_bytes < self.opts.flush_bytes {
            return Ok(());
        }
        let group = std::mem::take(&mut st.closed);
        st.closed_bytes = 0;
        self.flush_group(st, &group)
    }

    /// Starts committing the files' buffered data together and collects their finished
    /// commits; reports the first failure.
    fn flush_group(&self, st: &mut State, inos: &[u64]) -> FsResult<()> {
        let mut first = self.start_flush_many(st, inos);
        for ino in inos {
            let r = self.settle(st, *ino, false);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Starts committing every file's buffered data; reports the first failure.
    pub fn flush_all_async(&self) -> FsResult<()> {
        let mut st = self.state.lock();
        if let Err(e) = self.send_batch(&mut st) {
            tracing::error!(error = %e, "could not queue the namespace batch");
        }
        // Files with data: blocks and inodes together, many files per transaction.
        let with_data: Vec<u64> = st
            .nodes
            .iter()
            .filter(|(_, n)| !n.dirty.is_empty() || !n.pending.is_empty())
            .map(|(i, _)| *i)
            .collect();
        st.closed.clear();
        st.closed_bytes = 0;
        let mut first = self.flush_group(&mut st, &with_data);
        // Attribute-only changes (chmod, utimes, xattrs, ...): many inodes per transaction.
        let attrs: Vec<u64> = st
            .nodes
            .iter()
            .filter(|(_, n)| n.attr_dirty && n.dirty.is_empty())
            .map(|(i, _)| *i)
            .collect();
        for chunk in attrs.chunks(1000) {
            let mut tx = self.tx();
            for ino in chunk {
                if let Some(n) = st.nodes.get_mut(ino) {
                    n.attr_dirty = false;
                    tx.ops.push(self.put_inode(&n.attr));
                }
            }
            let r = self.commit(&mut st, tx);
            if first.is_ok() {
                first = r;
            }
        }
        let r = self.send_batch(&mut st);
        if first.is_ok() {
            first = r;
        }
        first
    }

    /// Commits buffered data at most `period` after it was written, until the file system is
    /// dropped: the bound on what a crash can lose without fsync.
    pub fn spawn_flusher(
        self: &std::sync::Arc<Self>,
        period: std::time::Duration,
    ) -> std::thread::JoinHandle<()> {
        let weak = std::sync::Arc::downgrade(self);
        std::thread::spawn(move || loop {
            std::thread::sleep(period);
            let Some(fs) = weak.upgrade() else { return };
            if let Err(e) = fs.flush_all_async() {
                tracing::error!(error = %e, "background commit failed; data stays buffered");
            }
            if let Err(e) = fs.maybe_compact() {
                tracing::error!(error = %e, "compaction failed; the log keeps its old segments");
            }
        })
    }

    /// Compacts the chain when the log holds more than twice what a compaction would leave
    /// plus `compact_slack`: rewrites and deletes leave old versions behind, and without this
    /// a volume's disk use grows with every overwrite. Doubling bounds the space overhead and
    /// makes the copying cost amortised O(1) per byte written. What a compaction would leave
    /// is estimated from the records (`Chain::snapshot_estimate`: live payloads plus at most
    /// 256 bytes of metadata per record, tombstones included), not taken from the last
    /// compaction's size: that one stayed the base after the volume's files were deleted, and
    /// their space never came back until as much was written again. Something must have been
    /// written since the last compaction (a 64th of the slack, or any commit without slack),
    /// so an estimate that erred low cannot compact every second. Commits wait while it runs.
    /// Returns whether it compacted.
    pub fn maybe_compact(&self) -> FsResult<bool> {
        use std::sync::atomic::Ordering;
        // Runs every second: O(1) sizes, not `stats()`.
        let (bytes, fresh) = (self.chain.disk_bytes(), self.chain.snapshot_estimate());
        let since = bytes.saturating_sub(self.compacted_bytes.load(Ordering::Relaxed));
        if since <= self.opts.compact_slack / 64
            || bytes
                <= fresh
                    .saturating_mul(2)
                    .saturating_add(self.opts.compact_slack)
        {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        self.chain.compact()?;
        let after = self.chain.disk_bytes();
        self.compacted_bytes.store(after, Ordering::Relaxed);
        tracing::info!(
            before = bytes,
            after,
            estimate = fresh,
            ms = started.elapsed().as_millis() as u64,
            "compacted the log"
        );
        Ok(true)
    }

    /// fsync: commits the file's buffered data and waits until it, and every namespace change
    /// made before, is durable.
    pub fn fsync(&self, ino: u64) -> FsResult<()> {
        let mut st = self.state.lock();
        // Every other file's buffered data rides along in the same group commit: a program
        // that fsyncs many files one after the other then waits for the disk about once.
        let others: Vec<u64> = st
            .nodes
            .iter()
            .filter(|(i, n)| **i != ino && !n.dirty.is_empty())
            .map(|(i, _)| *i)
            .collect();
        let mut all = others;
        all.push(ino);
        self.start_flush_many(&mut st, &all)?;
        self.send_batch(&mut st)?;
        self.wait_unlocked(st);
        let mut st = self.state.lock();
        self.flush_locked(&mut st, ino)?;
        self.sync_all_locked(&mut st)
    }

    /// Waits for everything queued so far to be answered and on disk, with the lock released:
    /// through a cluster the answer takes a round trip, and an fdatasync takes a while, and
    /// other requests (the kernel's writeback among them) must not queue behind either. The
    /// caller then collects the results under the lock, at once.
    pub(super) fn wait_unlocked(&self, st: parking_lot::MutexGuard<'_, State>) {
        let last = st.last_queued.clone();
        drop(st);
        if let Some(w) = last {
            w.wait();
        }
        // Errors surface in sync_all_locked, which syncs again (a no-op when nothing new).
        let _ = self.chain.sync();
    }

    /// fsyncdir: waits until every change made so far is durable, buffered file data
    /// included (`atefs umount` relies on it: the kernel does not wait for the daemon). Not
    /// syncfs: Linux sends FUSE_SYNCFS to virtiofs only.
    pub fn sync_all(&self) -> FsResult<()> {
        self.flush_all_async()?;
        let mut st = self.state.lock();
        self.send_batch(&mut st)?;
        self.wait_unlocked(st);
        let mut st = self.state.lock();
        self.sync_all_locked(&mut st)
    }

    /// Commits every file's buffered data.
    pub fn flush_all(&self) -> FsResult<()> {
        let mut st = self.state.lock();
        let inos: Vec<u64> = st
            .nodes
            .iter()
            .filter(|(_, n)| !n.dirty.is_empty() || n.attr_dirty || !n.pending.is_empty())
            .map(|(i, _)| *i)
            .collect();
        for ino in inos {
            self.flush_locked(&mut st, ino)?;
        }
        self.sync_all_locked(&mut st)
    }
}
