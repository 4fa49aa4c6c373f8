//! Sequential reading of committed entries from any index: the history half of a subscription.

use super::files::{FileRef, Files};
use super::frame::FrameKind;
use super::recovery::{scan_frame, Scanned};
use super::segment::FILE_HEADER;
use super::LogError;
use std::sync::Arc;

/// Reads entries in index order, one segment after another.
#[derive(Debug)]
pub struct LogCursor {
    files: Arc<Files>,
    seg: u64,
    offset: u64,
    next: u64,
}

impl LogCursor {
    /// Positions a cursor so that the first entry returned is `from`.
    pub fn new(files: Arc<Files>, from: u64) -> Result<Self, LogError> {
        let from = from.max(1);
        if let Some(snap) = files.snapshot() {
            if from <= snap {
                return Err(LogError::Compacted {
                    requested: from,
                    snapshot: snap,
                });
            }
        }
        let seg = files
            .segments()
            .into_iter()
            .rev()
            .find(|&f| f <= from)
            .unwrap_or(from);
        let mut c = Self {
            files,
            seg,
            offset: FILE_HEADER as u64,
            next: seg,
        };
        while c.next < from {
            if c.read_next(from - 1)?.is_none() {
                break;
            }
        }
        c.next = c.next.max(from);
        Ok(c)
    }

    /// Index of the next entry this cursor returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next entry if its index is at most `durable` (never reads past what is durable).
    pub fn read_next(&mut self, durable: u64) -> Result<Option<(u64, Vec<u8>)>, LogError> {
        loop {
            if self.next > durable {
                return Ok(None);
            }
            let fref = FileRef::Segment(self.seg);
            let name = fref.name();
            let snapshot = self.files.snapshot().unwrap_or(0);
            let file = self.files.get(&fref).ok_or(LogError::Compacted {
                requested: self.next,
                snapshot,
            })?;
            let len = file.len().map_err(LogError::io("stat", &name))?;
            match scan_frame(file.as_ref(), &name, self.offset, len)? {
                Scanned::Frame {
                    kind: FrameKind::Tx,
                    mut payload,
                    next,
                } if payload.len() >= 8 => {
                    let mut ib = [0u8; 8];
                    ib.copy_from_slice(&payload[..8]);
                    let index = u64::from_le_bytes(ib);
                    if index != self.next {
                        return Err(LogError::Corrupt {
                            file: name,
                            offset: self.offset,
                            reason: format!("index {index}, expected {}", self.next),
                        });
                    }
                    self.offset = next;
                    self.next += 1;
                    payload.drain(..8);
                    return Ok(Some((index, payload)));
                }
                Scanned::Frame {
                    kind: FrameKind::Pad,
                    next,
                    ..
                } => self.offset = next,
                Scanned::End => {
                    if self.files.get(&FileRef::Segment(self.next)).is_none() {
                        return Ok(None);
                    }
                    self.seg = self.next;
                    self.offset = FILE_HEADER as u64;
                }
                Scanned::Frame { kind, .. } => {
                    return Err(LogError::Corrupt {
                        file: name,
                        offset: self.offset,
                        reason: format!("unexpected {kind:?} frame"),
                    })
                }
                Scanned::Bad { reason } => {
                    return Err(LogError::Corrupt {
                        file: name,
                        offset: self.offset,
                        reason,
                    })
                }
            }
        }
    }
}
