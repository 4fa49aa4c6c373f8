//! Reading a run of records whose payloads lie one after another in the log (a file's blocks,
//! written together) with one direct read, each opened into its place in the caller's buffer.
//!
//! Through the page cache, a sequential read of a mount cost two copies per byte in the
//! daemon: the page cache's into the read buffer, then the reply into the kernel (perf: each
//! about a quarter of the daemon's time). Read here, the disk writes into the buffer itself
//! and each payload is opened shifted to its place in the same pass as its decryption.

use super::{Chain, ChainError};
use crate::crypto::DataKey;
use crate::ids::RecordKey;
use crate::redo::LogError;
use crate::storage::READ_DIRECT_ALIGN as ALIGN;
use crate::tx::RecordHeader;

/// Bytes allowed between one payload's end and the next's start (their record headers).
const MAX_GAP: u64 = 4096;

/// Where [`Chain::read_run_into`] left the plaintexts.
#[derive(Debug, PartialEq, Eq)]
pub struct Run {
    /// Index in the buffer of the first record's plaintext; record `k`'s starts `k * stride`
    /// after it.
    pub start: usize,
    /// Each record's plaintext length (at most the stride).
    pub lens: Vec<usize>,
}

impl Chain {
    /// Reads and opens the live payloads of `keys` when they lie in one log file in this
    /// order, each within [`MAX_GAP`] of the one before, and no plaintext is longer than
    /// `stride`: plaintext `k` is left at `start + k * stride` of `buf` (grown as needed; the
    /// bytes between a plaintext's end and the next stride are left as they are). `Ok(None)`
    /// when the records are not such a run (one missing, deleted, elsewhere in the log or
    /// compacted away meanwhile): the caller reads them one by one.
    pub fn read_run_into(
        &self,
        keys: &[RecordKey],
        data_key: &DataKey,
        buf: &mut Vec<u8>,
        stride: usize,
    ) -> Result<Option<Run>, ChainError> {
        let Some((file_ref, run)) = self.locate_run(keys, stride) else {
            return Ok(None);
        };
        let Some(file) = self.shared.files.get(&file_ref) else {
            return Ok(None);
        };
        let first = run[0].1;
        let from = first / ALIGN as u64 * ALIGN as u64;
        let end = run
            .last()
            .map_or(first, |(_, offset, len)| offset + *len as u64);
        let span = ((end - from) as usize).next_multiple_of(ALIGN);
        if buf.len() < span + ALIGN {
            buf.resize(span + ALIGN, 0);
        }
        let base = buf.as_ptr().align_offset(ALIGN);
        let got = file
            .read_direct_at(&mut buf[base..base + span], from)
            .map_err(LogError::io("read", file_ref.name()))?;
        if (got as u64) < end - from {
            return Err(ChainError::Log(LogError::io("read", file_ref.name())(
                std::io::ErrorKind::UnexpectedEof.into(),
            )));
        }
        // Record k's payload moves left, from where it was read to its stride: run[k].1 -
        // first >= k * stride (locate_run checked it), so no plaintext overwrites a payload
        // not yet opened.
        let start = base + (first - from) as usize;
        let mut lens = Vec::with_capacity(run.len());
        for (k, (header, offset, len)) in run.iter().enumerate() {
            let src = base + (offset - from) as usize;
            let dst = start + k * stride;
            let plain = header
                .open_within(
                    &self.shared.id,
                    data_key,
                    &mut buf[dst..src + len],
                    src - dst,
                )
                .map_err(|source| ChainError::Crypto {
                    key: keys[k],
                    source,
                })?;
            lens.push(plain);
        }
        Ok(Some(Run { start, lens }))
    }

    /// The file and `(header, offset, sealed length)` of each key's payload, if they form a
    /// run [`Self::read_run_into`] can read.
    #[allow(clippy::type_complexity)]
    fn locate_run(
        &self,
        keys: &[RecordKey],
        stride: usize,
    ) -> Option<(crate::redo::FileRef, Vec<(RecordHeader, u64, usize)>)> {
        let view = self.shared.view.read();
        let mut run: Vec<(RecordHeader, u64, usize)> = Vec::with_capacity(keys.len());
        let mut file = None;
        for (k, key) in keys.iter().enumerate() {
            let entry = view.get(key).filter(|e| !e.is_deleted())?;
            let header = entry.header.clone()?;
            let (loc, len) = entry.payload.filter(|(_, len)| *len > 0)?;
            if header.plain_len > stride as u64 || *file.get_or_insert(loc.file) != loc.file {
                return None;
            }
            if let Some(prev) = run.last() {
                let (prev_end, first) = (prev.1 + prev.2 as u64, run[0].1);
                if loc.offset < prev_end
                    || loc.offset - prev_end > MAX_GAP
                    || loc.offset - first < (k * stride) as u64
                {
                    return None;
                }
            }
            run.push((header, loc.offset, len));
        }
        Some((file?, run))
    }
}
