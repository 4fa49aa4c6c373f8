//! The redo log: segment files of CRC-framed transactions, group-committed with fdatasync, and
//! snapshots that replace the segments they cover. Byte layouts: docs/format.md.

mod cursor;
mod files;
mod frame;
mod log;
mod recovery;
mod segment;
mod snapshot;

pub use cursor::LogCursor;
pub use files::{FileRef, Files, Location};
pub use frame::{
    decode_frame, encode_frame, encode_pad, frame_header, FrameKind, FRAME_HEADER,
    MAX_FRAME_PAYLOAD, MAX_PAD_ALIGN,
};
pub use log::{LogOptions, RedoLog};
pub use recovery::{Recovered, RecoveryVisitor};
pub use segment::{parse_name, segment_name, snapshot_name, FileHeader, FILE_HEADER};
pub use snapshot::{decode_snapshot_record, read_snapshot, SnapshotRecord, SnapshotWriter};

use thiserror::Error;

/// Redo log failures. Each names the file (and offset) involved.
#[derive(Debug, Error)]
pub enum LogError {
    /// An I/O call failed.
    #[error("{op} {file}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// File name ("." for the directory).
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bytes that cannot be a torn tail are damaged. Nothing was skipped or repaired.
    #[error("{file} is damaged at offset {offset}: {reason}")]
    Corrupt {
        /// File name.
        file: String,
        /// Byte offset of the damaged frame or header.
        offset: u64,
        /// What was found.
        reason: String,
    },
    /// An earlier fsync failed, so what is on disk is unknown; reopen to recover.
    #[error("the log is unusable after a failed fsync; reopen it to recover from disk")]
    Poisoned,
    /// The directory holds no chain, or another chain than expected.
    #[error("{0}")]
    WrongChain(String),
    /// A read asked for data that compaction dropped.
    #[error("index {requested} was compacted into a snapshot at {snapshot}")]
    Compacted {
        /// Index asked for.
        requested: u64,
        /// Snapshot's last index.
        snapshot: u64,
    },
    /// An upstream's image of the chain that would not move a cache forward.
    #[error("an image up to index {image} is not ahead of a log whose next index is {next}")]
    NotAhead {
        /// The image's last index.
        image: u64,
        /// The log's next index.
        next: u64,
    },
}

impl LogError {
    /// Wraps an I/O error of `op` on `file`.
    pub fn io(
        op: &'static str,
        file: impl Into<String>,
    ) -> impl FnOnce(std::io::Error) -> LogError {
        let file = file.into();
        move |source| LogError::Io { op, file, source }
    }

    /// A copy for each caller of a failed group commit (io::Error is not Clone); keeps the OS
    /// error code so that ENOSPC stays recognisable.
    pub fn duplicate(&self) -> LogError {
        let io = |e: &std::io::Error| match e.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(e.kind(), e.to_string()),
        };
        match self {
            LogError::Io { op, file, source } => LogError::Io {
                op,
                file: file.clone(),
                source: io(source),
            },
            LogError::Corrupt {
                file,
                offset,
                reason,
            } => LogError::Corrupt {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            LogError::Poisoned => LogError::Poisoned,
            LogError::WrongChain(s) => LogError::WrongChain(s.clone()),
            LogError::Compacted {
                requested,
                snapshot,
            } => LogError::Compacted {
                requested: *requested,
                snapshot: *snapshot,
            },
            LogError::NotAhead { image, next } => LogError::NotAhead {
                image: *image,
                next: *next,
            },
        }
    }

    /// True when the failure is a full disk (ENOSPC or EDQUOT).
    pub fn is_no_space(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if matches!(source.raw_os_error(), Some(28) | Some(122)))
    }
}
