//! File contents and attributes: setattr and truncate, the block buffer, reads and writes.
//! Data is buffered per inode as whole blocks until a flush (flush.rs) commits it.

use super::{now, AteFs, Block, SetAttr, State};
use crate::error::{FsError, FsResult};
use crate::records::{Inode, Kind};
use ate::{Op, RecordKey};

impl AteFs {
    /// A write by a caller without CAP_FSETID: drops setuid, and setgid when
    /// group-executable (the kernel asks for it with the write, see fuse.rs init).
    pub fn kill_suidgid(&self, ino: u64) -> FsResult<()> {
        let mut st = self.state.lock();
        let node = self.node(&mut st, ino)?;
        if node.attr.perm & 0o6000 != 0 {
            kill_suidgid(&mut node.attr);
            node.attr_dirty = true;
        }
        Ok(())
    }

    /// Changes attributes.
    pub fn setattr(&self, ino: u64, s: &SetAttr) -> FsResult<Inode> {
        let mut st = self.state.lock();
        let bs = self.opts.block_size as u64;
        if let Some(size) = s.size {
            let kind = self.node(&mut st, ino)?.attr.kind;
            if kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            if size > (1u64 << 50) {
                return Err(FsError::TooBig);
            }
            self.truncate_locked(&mut st, ino, size, bs)?;
        }
        let t = now();
        let node = self.node(&mut st, ino)?;
        let a = &mut node.attr;
        if let Some(m) = s.mode {
            a.perm = (m & 0o7777) as u16;
        } else if s.kill_suidgid {
            kill_suidgid(a);
        }
        if s.uid.is_some() || s.gid.is_some() {
            if s.uid.is_some_and(|u| u != a.uid)
                || s.gid.is_some_and(|g| g != a.gid)
                || a.kind != Kind::Dir
            {
                // Changing owner drops setuid, and setgid when group-executable (as Linux does).
                kill_suidgid(a);
            }
            a.uid = s.uid.unwrap_or(a.uid);
            a.gid = s.gid.unwrap_or(a.gid);
        }
        if let Some(at) = s.atime {
            a.atime = at;
        }
        if let Some(mt) = s.mtime {
            a.mtime = mt;
        }
        a.ctime = s.ctime.unwrap_or(t);
        if s.size.is_some() {
            a.mtime = s.mtime.unwrap_or(t);
        }
        node.attr_dirty = true;
        // Attributes are committed with the next data commit or by the flusher (batched).
        Ok(self.node(&mut st, ino)?.attr.clone())
    }

    pub(super) fn truncate_locked(
        &self,
        st: &mut State,
        ino: u64,
        size: u64,
        bs: u64,
    ) -> FsResult<()> {
        self.node(st, ino)?;
        self.settle(st, ino, true)?;
        let old = self.node(st, ino)?.attr.size;
        if size < old {
            let keep = size.div_ceil(bs);
            // Committed blocks past the end go; the new last block is cut.
            // The new last block is cut below, so it goes from the cache too.
            self.uncache(ino, size / bs);
            let gone: Vec<u64> = self
                .block_set(st, ino)?
                .split_off(&keep)
                .into_iter()
                .collect();
            self.delete_blocks(st, ino, &gone)?;
            let tail = (size % bs) as usize;
            let last_block = if tail > 0 { Some(size / bs) } else { None };
            let last_data = match last_block {
                Some(idx) => Some(self.block_locked(st, ino, idx)?),
                None => None,
            };
            let node = self.node(st, ino)?;
            node.dirty.retain(|i, _| *i < keep);
            if let (Some(idx), Some(mut data)) = (last_block, last_data) {
                data.truncate(tail);
                node.dirty.insert(idx, data);
            }
            node.dirty_bytes = node.dirty.values().map(Vec::len).sum();
        }
        let node = self.node(st, ino)?;
        node.attr.size = size;
        node.attr_dirty = true;
        Ok(())
    }

    /// Of the blocks `idxs` of `ino`, those the chain holds or will once a queued commit
    /// lands: a block only ever buffered, or one whose commit was refused (a full volume;
    /// its data waits to be committed again), is not in the chain, and deleting it there is
    /// refused, with the whole transaction it is in (an unlink failed with EIO).
    pub(super) fn stored(
        &self,
        st: &mut State,
        ino: u64,
        idxs: impl IntoIterator<Item = u64>,
    ) -> Vec<u64> {
        let inflight = st.nodes.get(&ino).map(|n| &n.inflight);
        idxs.into_iter()
            .filter(|i| {
                inflight.is_some_and(|f| f.contains_key(i))
                    || self
                        .chain
                        .record(&self.keys.block(ino, *i))
                        .is_some_and(|e| !e.is_deleted())
            })
            .collect()
    }

    /// Commits the deletion of blocks `idxs` that are stored (at most 4,000 per transaction).
    pub(super) fn delete_blocks(&self, st: &mut State, ino: u64, idxs: &[u64]) -> FsResult<()> {
        let idxs = self.stored(st, ino, idxs.iter().copied());
        for chunk in idxs.chunks(4000) {
            let mut tx = self.tx();
            tx.ops.extend(chunk.iter().map(|idx| Op::Delete {
                key: self.keys.block(ino, *idx),
            }));
            self.commit(st, tx)?;
        }
        Ok(())
    }

    /// Makes `block` the buffered contents of block `idx` (a cached copy is stale from now).
    pub(super) fn put_dirty(
        &self,
        st: &mut State,
        ino: u64,
        idx: u64,
        block: Vec<u8>,
    ) -> FsResult<()> {
        self.cache.lock().forget((ino, idx));
        let node = self.node(st, ino)?;
        let new = block.len();
        let old = node.dirty.insert(idx, block).map_or(0, |b| b.len());
        node.dirty_bytes = node.dirty_bytes - old + new;
        Ok(())
    }

    /// Contents of block `idx` (uncommitted data first; holes are empty).
    pub(super) fn block_locked(&self, st: &mut State, ino: u64, idx: u64) -> FsResult<Vec<u8>> {
        let block = match self.block_source(st, ino, idx)? {
            Some(data) => data,
            None => {
                let data = Block::new(self.open_block(ino, idx)?);
                self.cache.lock().put((ino, idx), data.clone());
                data
            }
        };
        Ok(Block::unwrap_or_clone(block))
    }

    /// Block `idx` when it is at hand (buffered, in flight, a hole, or cached); None when it
    /// must be read from the chain and opened.
    fn block_source(&self, st: &mut State, ino: u64, idx: u64) -> FsResult<Option<Block>> {
        let node = self.node(st, ino)?;
        if let Some(d) = node
            .dirty
            .get(&idx)
            .or_else(|| node.inflight.get(&idx).map(|(_, d)| d))
        {
            return Ok(Some(Block::new(d.clone())));
        }
        if !self.block_set(st, ino)?.contains(&idx) {
            return Ok(Some(Block::default()));
        }
        Ok(self.cache.lock().get((ino, idx)).cloned())
    }

    /// Reads and opens a committed block.
    fn open_block(&self, ino: u64, idx: u64) -> FsResult<Vec<u8>> {
        Ok(self
            .read_record(&self.keys.block(ino, idx))?
            .unwrap_or_default())
    }

    /// Forgets cached copies of a file's blocks from `from` on (they are about to change).
    pub(super) fn uncache(&self, ino: u64, from: u64) {
        self.cache.lock().forget_from(ino, from);
    }

    /// The file's block set, loaded from the chain on first use (after its own queued data
    /// commits have landed, so the view is current for this file).
    pub(super) fn block_set<'a>(
        &self,
        st: &'a mut State,
        ino: u64,
    ) -> FsResult<&'a mut std::collections::BTreeSet<u64>> {
        if self.node(st, ino)?.blocks.is_none() {
            self.settle(st, ino, true)?;
            let bs = self.opts.block_size as u64;
            let node = self.node(st, ino)?;
            let kids: std::collections::HashSet<RecordKey> = self
                .chain
                .children(&self.keys.inode(ino))
                .into_iter()
                .collect();
            let set = (0..node.attr.size.div_ceil(bs))
                .filter(|i| kids.contains(&self.keys.block(ino, *i)))
                .collect();
            node.blocks = Some(set);
        }
        self.node(st, ino)?.blocks.as_mut().ok_or(FsError::NotFound)
    }

    /// Reads up to `len` bytes at `offset`.
    pub fn read(&self, ino: u64, offset: u64, len: usize) -> FsResult<Vec<u8>> {
        let mut buf = Vec::new();
        let n = self.read_into(ino, offset, len, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads up to `len` bytes at `offset` into the front of `buf`; returns how many. `buf`
    /// is scratch: grown when too short, never shrunk or cleared, so a caller that keeps one
    /// (a FUSE worker) pays no allocation or zeroing per read.
    ///
    /// Committed blocks are opened after the state lock is released (see block_cache.rs):
    /// the kernel's readahead sends several reads at once, and they decrypt in parallel.
    pub fn read_into(
        &self,
        ino: u64,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> FsResult<usize> {
        let bs = self.opts.block_size as u64;
        let (size, end, blocks, seen) = {
            let mut st = self.state.lock();
            let a = &self.node(&mut st, ino)?.attr;
            if a.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            let size = a.size;
            if offset >= size {
                return Ok(0);
            }
            let end = size.min(offset + len as u64);
            let blocks = (offset / bs..end.div_ceil(bs))
                .map(|idx| Ok((idx, self.block_source(&mut st, ino, idx)?)))
                .collect::<FsResult<Vec<_>>>()?;
            (size, end, blocks, self.cache.lock().generation())
        };
        let total = (end - offset) as usize;
        if self.read_run(ino, offset, end, size, &blocks, buf)? {
            return Ok(total);
        }
        if buf.len() < total {
            buf.resize(total, 0);
        }
        let mut pos = offset;
        for (idx, block) in blocks {
            let at = (pos - offset) as usize;
            let within = (pos % bs) as usize;
            let take = ((bs - pos % bs).min(end - pos)) as usize;
            let block = match block {
                Some(b) => b,
                // A block read whole (sequential reads) is opened where it lies in the reply
                // and not cached: the kernel's page cache keeps it, and a copy in ours would
                // only cost a copy and evict blocks that partial reads share. Its sealed tail
                // may run past `take`; the blocks after it overwrite that.
                None if within == 0 && (take == bs as usize || pos + take as u64 == size) => {
                    let key = self.keys.block(ino, idx);
                    let got = self
                        .chain
                        .read_plain_into(&key, &self.keyfile.data, buf, at)?
                        .map_or(0, |(_, len)| len)
                        .min(take);
                    buf[at + got..at + take].fill(0);
                    pos += take as u64;
                    continue;
                }
                None => {
                    let data = Block::new(self.open_block(ino, idx)?);
                    self.cache
                        .lock()
                        .put_if_unchanged(seen, (ino, idx), data.clone());
                    data
                }
            };
            let have = block
                .get(within..)
                .map_or(&[][..], |b| &b[..b.len().min(take)]);
            buf[at..at + have.len()].copy_from_slice(have);
            // A block shorter than the file (its tail, or a hole) reads as zeros.
            buf[at + have.len()..at + take].fill(0);
            pos += take as u64;
        }
        Ok(total)
    }

    /// A read of whole committed blocks (the tail block may end the file), at least two, with
    /// few direct reads of the log ([`ate::chain::Chain::read_blocks_into`]) into the front
    /// of `buf`. False when the blocks cannot be read so.
    fn read_run(
        &self,
        ino: u64,
        offset: u64,
        end: u64,
        size: u64,
        blocks: &[(u64, Option<Block>)],
        buf: &mut Vec<u8>,
    ) -> FsResult<bool> {
        let bs = self.opts.block_size as u64;
        let whole = offset.is_multiple_of(bs) && (end.is_multiple_of(bs) || end == size);
        if !whole || blocks.len() < 2 || blocks.iter().any(|(_, b)| b.is_some()) {
            return Ok(false);
        }
        let keys: Vec<RecordKey> = blocks
            .iter()
            .map(|(idx, _)| self.keys.block(ino, *idx))
            .collect();
        let Some(lens) =
            self.chain
                .read_blocks_into(&keys, &self.keyfile.data, buf, bs as usize)?
        else {
            return Ok(false);
        };
        // A block shorter than its share of the read (the file's tail, or one ending in a
        // hole) reads as zeros past its end.
        let mut pos = offset;
        for (k, len) in lens.into_iter().enumerate() {
            let take = (bs.min(end - pos)) as usize;
            let at = k * bs as usize;
            buf[at + len.min(take)..at + take].fill(0);
            pos += take as u64;
        }
        Ok(true)
    }

    /// Writes `data` at `offset`; returns the bytes written.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        let st = self.state.lock();
        let bs = self.opts.block_size as u64;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::TooBig)?;
        if end > (1u64 << 50) {
            return Err(FsError::TooBig);
        }
        let mut st = self.make_room(st, ino, end)?;
        let mut pos = offset;
        let mut src = data;
        while !src.is_empty() {
            let idx = pos / bs;
            let within = (pos % bs) as usize;
            let take = ((bs as usize) - within).min(src.len());
            // A block already buffered is changed in place (no 64 KiB copy per small write).
            if let Some(node) = st.nodes.get_mut(&ino) {
                if let Some(b) = node.dirty.get_mut(&idx) {
                    let old = b.len();
                    if old < within + take {
                        b.resize(within + take, 0);
                    }
                    b[within..within + take].copy_from_slice(&src[..take]);
                    node.dirty_bytes = node.dirty_bytes - old + b.len();
                    pos += take as u64;
                    src = &src[take..];
                    continue;
                }
            }
            let block = if within == 0 && take == bs as usize {
                // A whole block: copied once, without zeroing it first.
                src[..take].to_vec()
            } else {
                let mut block = self.block_locked(&mut st, ino, idx)?;
                if block.len() < within + take {
                    block.resize(within + take, 0);
                }
                block[within..within + take].copy_from_slice(&src[..take]);
                block
            };
            self.put_dirty(&mut st, ino, idx, block)?;
            pos += take as u64;
            src = &src[take..];
        }
        let t = now();
        let node = self.node(&mut st, ino)?;
        node.attr.size = node.attr.size.max(end);
        node.attr.mtime = t;
        node.attr.ctime = t;
        node.attr_dirty = true;
        if node.dirty_bytes >= self.opts.flush_bytes {
            self.start_flush(&mut st, ino)?;
            self.settle(&mut st, ino, false)?;
            // Backpressure: a writer faster than the log waits for its oldest commits once
            // `max_inflight` bytes are in flight, so memory stays bounded however much it writes.
            let node = self.node(&mut st, ino)?;
            let queued: usize = node.inflight.values().map(|(_, d)| d.len()).sum();
            if queued > self.opts.max_inflight {
                let oldest = node.pending.iter().map(|(g, _)| *g).min().unwrap_or(0);
                self.settle_upto(&mut st, ino, oldest)?;
            }
        }
        Ok(data.len())
    }
}

/// Drops setuid, and setgid when group-executable (setgid without group execute marks
/// mandatory locking and stays), as Linux does on chown, truncate and write; not on
/// directories.
fn kill_suidgid(a: &mut Inode) {
    if a.kind != Kind::Dir {
        a.perm &= !0o4000;
        if a.perm & 0o010 != 0 {
            a.perm &= !0o2000;
        }
    }
}
