//! Operations on byte ranges of a file that are not plain reads and writes: fallocate,
//! lseek with SEEK_DATA/SEEK_HOLE and copy_file_range.
//!
//! Blocks are the unit of allocation: a block is "data" when it is buffered, in flight or in
//! the chain, and a hole otherwise, so SEEK_DATA/SEEK_HOLE answer at block granularity (as
//! ext4 does at its block size). Punching a hole deletes whole blocks from the chain and zeroes
//! the partial blocks at either end.

use super::{now, AteFs, State};
use crate::error::{FsError, FsResult};
use crate::records::Kind;

/// What fallocate should do (the adapter maps the Linux mode bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocate {
    /// Mode 0 or FALLOC_FL_KEEP_SIZE: make sure the range can be written. Space in a chain is
    /// not reserved ahead, so this checks the quota and, without `keep_size`, extends the file.
    Reserve { keep_size: bool },
    /// FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: the range reads as zeros and frees its blocks.
    PunchHole,
    /// FALLOC_FL_ZERO_RANGE: the range reads as zeros; extends the file unless `keep_size`.
    ZeroRange { keep_size: bool },
}

/// lseek's SEEK_DATA or SEEK_HOLE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// The next offset at or after the given one inside data.
    Data,
    /// The next offset at or after the given one inside a hole (the end of file counts).
    Hole,
}

impl AteFs {
    /// fallocate(2) on a regular file.
    pub fn fallocate(&self, ino: u64, offset: u64, len: u64, how: Allocate) -> FsResult<()> {
        if len == 0 {
            return Err(FsError::Invalid("fallocate length is zero"));
        }
        let end = offset.checked_add(len).ok_or(FsError::TooBig)?;
        if end > (1u64 << 50) {
            return Err(FsError::TooBig);
        }
        let mut st = self.state.lock();
        let attr = &self.node(&mut st, ino)?.attr;
        match attr.kind {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::NotSupported),
        }
        if how != Allocate::PunchHole {
            st = self.make_room(st, ino, end)?;
        }
        let size = self.node(&mut st, ino)?.attr.size;
        let new_size = match how {
            Allocate::Reserve { keep_size: false } | Allocate::ZeroRange { keep_size: false } => {
                size.max(end)
            }
            _ => size,
        };
        if matches!(how, Allocate::PunchHole | Allocate::ZeroRange { .. }) {
            self.zero_locked(&mut st, ino, offset, end.min(new_size))?;
        }
        let t = now();
        let node = self.node(&mut st, ino)?;
        if new_size != size || !matches!(how, Allocate::Reserve { .. }) {
            node.attr.size = new_size;
            node.attr.mtime = t;
            node.attr.ctime = t;
            node.attr_dirty = true;
        }
        Ok(())
    }

    /// Makes `[start, end)` read as zeros: whole blocks are deleted, partial ones rewritten.
    fn zero_locked(&self, st: &mut State, ino: u64, start: u64, end: u64) -> FsResult<()> {
        if start >= end {
            return Ok(());
        }
        let bs = self.opts.block_size as u64;
        // Whole blocks inside the range.
        let first_full = start.div_ceil(bs);
        let end_full = end / bs;
        if first_full < end_full {
            // Queued commits of these blocks must land before their deletes do.
            self.settle(st, ino, true)?;
            self.uncache(ino, first_full);
            let gone: Vec<u64> = self
                .block_set(st, ino)?
                .range(first_full..end_full)
                .copied()
                .collect();
            let node = self.node(st, ino)?;
            node.dirty.retain(|i, _| *i < first_full || *i >= end_full);
            node.dirty_bytes = node.dirty.values().map(Vec::len).sum();
            self.delete_blocks(st, ino, &gone)?;
            let set = self.block_set(st, ino)?;
            for idx in gone {
                set.remove(&idx);
            }
        }
        // The partial blocks at either end (one block when the range sits inside it).
        let mut partial = Vec::new();
        if !start.is_multiple_of(bs) {
            partial.push(start / bs);
        }
        if !end.is_multiple_of(bs) && (end / bs != start / bs || start.is_multiple_of(bs)) {
            partial.push(end / bs);
        }
        for idx in partial {
            let mut block = self.block_locked(st, ino, idx)?;
            let lo = start.max(idx * bs) - idx * bs;
            let hi = end.min((idx + 1) * bs) - idx * bs;
            let lo = (lo as usize).min(block.len());
            let hi = (hi as usize).min(block.len());
            if lo >= hi {
                continue;
            }
            block[lo..hi].fill(0);
            self.put_dirty(st, ino, idx, block)?;
        }
        Ok(())
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE.
    pub fn seek(&self, ino: u64, offset: u64, what: Seek) -> FsResult<u64> {
        let mut st = self.state.lock();
        let attr = &self.node(&mut st, ino)?.attr;
        let size = attr.size;
        if offset >= size {
            return Err(FsError::NoSuchOffset);
        }
        let bs = self.opts.block_size as u64;
        let mut data: std::collections::BTreeSet<u64> = self.block_set(&mut st, ino)?.clone();
        let node = self.node(&mut st, ino)?;
        data.extend(node.dirty.keys().chain(node.inflight.keys()).copied());
        let first = offset / bs;
        let last = size.div_ceil(bs);
        match what {
            Seek::Data => data
                .range(first..last)
                .next()
                .map(|idx| offset.max(idx * bs))
                .ok_or(FsError::NoSuchOffset),
            Seek::Hole => Ok((first..last)
                .find(|idx| !data.contains(idx))
                .map_or(size, |idx| offset.max(idx * bs).min(size))),
        }
    }

    /// copy_file_range(2): copies through the core, without round trips to the kernel.
    /// Returns the bytes copied (fewer than asked at the end of the source).
    pub fn copy_range(
        &self,
        from: u64,
        from_offset: u64,
        to: u64,
        to_offset: u64,
        len: u64,
    ) -> FsResult<u64> {
        const CHUNK: u64 = 1 << 20;
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(CHUNK) as usize;
            let chunk = self.read(from, from_offset + done, want)?;
            if chunk.is_empty() {
                break;
            }
            let n = self.write(to, to_offset + done, &chunk)?;
            done += n as u64;
            if chunk.len() < want {
                break;
            }
        }
        Ok(done)
    }
}
