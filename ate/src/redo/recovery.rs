//! Reading frames back: the scanner used on open, by snapshots and by subscription cursors, and
//! the rule that tells a torn tail (truncate) from damage (refuse to open).

use super::frame::{decode_frame_header, FrameKind, FRAME_HEADER};
use super::snapshot::SnapshotRecord;
use super::{Location, LogError};
use crate::authority::RootAuthority;
use crate::storage::StorageFile;

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Last index covered by the snapshot loaded, if any.
    pub snapshot: Option<u64>,
    /// Transactions replayed from segments.
    pub entries: u64,
    /// Bytes of torn tail removed from the last segment.
    pub truncated_bytes: u64,
    /// Index the next transaction will get.
    pub next_index: u64,
}

/// Receives the log's content in order while it is opened.
pub trait RecoveryVisitor {
    /// The snapshot's root authority and last index (called before its records).
    fn snapshot_root(&mut self, root: Option<RootAuthority>, last_index: u64);
    /// One record of the snapshot; `payload` locates its sealed payload.
    fn snapshot_record(
        &mut self,
        rec: SnapshotRecord,
        payload: Option<Location>,
    ) -> Result<(), LogError>;
    /// One committed transaction; `tx_at` locates its encoded bytes.
    fn entry(&mut self, index: u64, tx: &[u8], tx_at: Location) -> Result<(), LogError>;
    /// Progress: bytes scanned so far of `total`.
    fn progress(&mut self, _done: u64, _total: u64) {}
}

/// One step of a scan.
#[derive(Debug)]
pub(crate) enum Scanned {
    /// A whole, checksummed frame; the payload starts at `offset + FRAME_HEADER`.
    Frame {
        kind: FrameKind,
        payload: Vec<u8>,
        next: u64,
    },
    /// Clean end of file.
    End,
    /// The frame at this offset is incomplete or fails its checks.
    Bad { reason: String },
}

/// Reads the frame at `offset` of a file of `len` bytes.
pub(crate) fn scan_frame(
    file: &dyn StorageFile,
    name: &str,
    offset: u64,
    len: u64,
) -> Result<Scanned, LogError> {
    if offset == len {
        return Ok(Scanned::End);
    }
    if offset + FRAME_HEADER as u64 > len {
        return Ok(Scanned::Bad {
            reason: "incomplete frame header".into(),
        });
    }
    let mut h = [0u8; FRAME_HEADER];
    file.read_at(&mut h, offset)
        .map_err(LogError::io("read", name))?;
    let fh = match decode_frame_header(&h) {
        Ok(fh) => fh,
        Err(e) => {
            return Ok(Scanned::Bad {
                reason: e.to_string(),
            })
        }
    };
    let end = offset + (FRAME_HEADER + fh.len) as u64;
    if end > len {
        return Ok(Scanned::Bad {
            reason: "incomplete frame payload".into(),
        });
    }
    let mut payload = vec![0u8; fh.len];
    file.read_at(&mut payload, offset + FRAME_HEADER as u64)
        .map_err(LogError::io("read", name))?;
    if !fh.payload_ok(&payload) {
        return Ok(Scanned::Bad {
            reason: "frame checksum mismatch".into(),
        });
    }
    Ok(Scanned::Frame {
        kind: fh.kind,
        payload,
        next: end,
    })
}

/// Decides whether damage at `offset` of the last segment is a torn tail: true when no valid
/// frame starts anywhere after it. A crash can only damage the end of what was being written, so
/// a checksummed frame after the damage means the damage is not a crash artefact (a flipped bit
/// in a length field, say) and the log must not be silently cut there.
pub(crate) fn is_torn_tail(
    file: &dyn StorageFile,
    name: &str,
    offset: u64,
    len: u64,
) -> Result<bool, LogError> {
    let magic = super::frame::FRAME_MAGIC.to_le_bytes();
    let mut buf = vec![0u8; 1 << 20];
    let mut base = offset + 1;
    while base + FRAME_HEADER as u64 <= len {
        let n = (len - base).min(buf.len() as u64) as usize;
        file.read_at(&mut buf[..n], base)
            .map_err(LogError::io("read", name))?;
        for i in 0..n.saturating_sub(3) {
            if buf[i..i + 4] == magic {
                if let Scanned::Frame { .. } = scan_frame(file, name, base + i as u64, len)? {
                    return Ok(false);
                }
            }
        }
        // Overlap by 3 bytes so a magic split across reads is still seen.
        base += n.saturating_sub(3).max(1) as u64;
    }
    Ok(true)
}
