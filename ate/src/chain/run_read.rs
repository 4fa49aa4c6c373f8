//! Reading many records' payloads (a file's blocks) with few direct reads, each payload opened
//! into its place in the caller's buffer.
//!
//! Through the page cache, a sequential read of a mount cost two copies per byte in the
//! daemon: the page cache's into the read buffer, then the reply into the kernel (perf: 21 %
//! and 27 % of all samples of a cold read). Read here, the disk writes into the buffer itself
//! (one read per run of payloads lying one after another in the log) and each payload is
//! decrypted straight to its place.

use super::{Chain, ChainError};
use crate::crypto::DataKey;
use crate::ids::RecordKey;
use crate::redo::{FileRef, LogError};
use crate::storage::READ_DIRECT_ALIGN as ALIGN;
use crate::tx::RecordHeader;

/// Bytes allowed between one payload's end and the next's start for both to be read at once
/// (the bytes between are read along and dropped): record headers, and where a transaction
/// ends and the next begins, its signature, a padding frame of up to 4 KiB and the next one's
/// headers (a limit of 4 KiB sent a third of a sequential read's requests the slow way).
const MAX_GAP: u64 = 64 << 10;

/// Bytes in a log file.
#[derive(Clone, Copy, Debug)]
struct Span {
    file: FileRef,
    offset: u64,
    len: usize,
}

impl Chain {
    /// Reads and opens the live payloads of `keys`, leaving plaintext `k` at `k * stride` in
    /// `buf` (grown as needed; the bytes between a plaintext's end and the next stride are
    /// left as they are); returns each plaintext's length. Payloads lying one after another
    /// in the log are read with one direct read. `Ok(None)` when a key has no live payload or
    /// one longer than `stride`: the caller reads them another way.
    pub fn read_blocks_into(
        &self,
        keys: &[RecordKey],
        data_key: &DataKey,
        buf: &mut Vec<u8>,
        stride: usize,
    ) -> Result<Option<Vec<usize>>, ChainError> {
        let Some((headers, spans)) = self.places(keys, stride) else {
            return Ok(None);
        };
        let runs: Vec<_> = runs(&spans)
            .into_iter()
            .map(|r| (extent(&spans[r.clone()]), r))
            .collect();
        // Each run is read to the right of every plaintext's place, so opening a payload
        // (which moves it left) never overwrites one not yet opened.
        let area = (keys.len() * stride).next_multiple_of(ALIGN);
        let widest = runs.iter().map(|((_, _, width), _)| *width).max();
        let need = area + widest.unwrap_or(0) + ALIGN;
        if buf.len() < need {
            buf.resize(need, 0);
        }
        let area = area + buf[area..].as_ptr().align_offset(ALIGN);
        let mut lens = vec![0; keys.len()];
        for ((from, end, width), run) in runs {
            let file_ref = spans[run.start].file;
            // Compacted away since `places`: the caller reads one by one (which looks again).
            let Some(file) = self.shared.files.get(&file_ref) else {
                return Ok(None);
            };
            let got = file
                .read_direct_at(&mut buf[area..area + width], from)
                .map_err(LogError::io("read", file_ref.name()))?;
            if (got as u64) < end - from {
                return Err(ChainError::Log(LogError::io("read", file_ref.name())(
                    std::io::ErrorKind::UnexpectedEof.into(),
                )));
            }
            for k in run {
                let at = spans[k];
                let (dst, src) = (k * stride, area + (at.offset - from) as usize);
                lens[k] = headers[k]
                    .open_within(
                        &self.shared.id,
                        data_key,
                        &mut buf[dst..src + at.len],
                        src - dst,
                    )
                    .map_err(|source| ChainError::Crypto {
                        key: keys[k],
                        source,
                    })?;
            }
        }
        Ok(Some(lens))
    }

    /// Each key's live payload: its header and where it is. None if one has none or it is
    /// longer than `stride`.
    fn places(&self, keys: &[RecordKey], stride: usize) -> Option<(Vec<RecordHeader>, Vec<Span>)> {
        let view = self.shared.view.read();
        keys.iter()
            .map(|key| {
                let entry = view.get(key).filter(|e| !e.is_deleted())?;
                let header = entry.header(*key)?;
                let (loc, len) = entry.payload.filter(|(_, len)| *len > 0)?;
                let at = Span {
                    file: loc.file,
                    offset: loc.offset,
                    len,
                };
                (header.plain_len <= stride as u64).then_some((header, at))
            })
            .collect()
    }
}

/// Consecutive spans that one read covers: in one file, in order, each within [`MAX_GAP`]
/// of the one before.
fn runs(spans: &[Span]) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (k, p) in spans.iter().enumerate() {
        match runs.last_mut() {
            Some(run)
                if {
                    let prev = &spans[k - 1];
                    let prev_end = prev.offset + prev.len as u64;
                    prev.file == p.file && p.offset >= prev_end && p.offset - prev_end <= MAX_GAP
                } =>
            {
                run.end = k + 1
            }
            _ => runs.push(k..k + 1),
        }
    }
    runs
}

/// The aligned file offset a run's read starts at, where its last payload ends, and the
/// aligned length to read.
fn extent(run: &[Span]) -> (u64, u64, usize) {
    let from = run[0].offset / ALIGN as u64 * ALIGN as u64;
    let end = run.last().map_or(from, |p| p.offset + p.len as u64);
    (from, end, ((end - from) as usize).next_multiple_of(ALIGN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_read_covers_spans_of_one_file_in_order_with_small_gaps() {
        let at = |seg, offset, len| Span {
            file: FileRef::Segment(seg),
            offset,
            len,
        };
        let spans = [
            at(1, 100, 50),
            at(1, 150, 50),
            at(1, 200 + MAX_GAP, 10),     // the largest gap allowed
            at(1, 211 + 2 * MAX_GAP, 10), // one byte more
            at(1, 0, 10),                 // behind the one before
            at(1, 10, 10),
            at(2, 20, 10), // another file
        ];
        assert_eq!(runs(&spans), [0..3, 3..4, 4..6, 6..7]);
        assert_eq!(extent(&spans[0..3]), (0, 210 + MAX_GAP, 69632));
    }
}
