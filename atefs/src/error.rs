//! File-system errors, each mapped to one errno in [`FsError::errno`] (the only place).

use ate::RecordKey;
use thiserror::Error;

/// Why a file-system operation failed.
#[derive(Debug, Error)]
pub enum FsError {
    /// ENOENT.
    #[error("no such file or directory")]
    NotFound,
    /// EEXIST (also: a concurrent create of the same name won).
    #[error("file exists")]
    Exists,
    /// ENOTDIR.
    #[error("not a directory")]
    NotDir,
    /// EISDIR.
    #[error("is a directory")]
    IsDir,
    /// ENOTEMPTY.
    #[error("directory not empty")]
    NotEmpty,
    /// EINVAL.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// ENAMETOOLONG.
    #[error("name longer than 255 bytes")]
    NameTooLong,
    /// ENODATA (no such extended attribute).
    #[error("no such extended attribute")]
    NoAttr,
    /// EPERM.
    #[error("operation not permitted")]
    NotPermitted,
    /// ERANGE.
    #[error("buffer too small")]
    Range,
    /// EFBIG.
    #[error("file too large")]
    TooBig,
    /// EMLINK.
    #[error("too many links")]
    TooManyLinks,
    /// ENOSPC.
    #[error("the volume's quota is used up")]
    NoSpace,
    /// EOPNOTSUPP.
    #[error("operation not supported")]
    NotSupported,
    /// EBADF.
    #[error("bad file handle")]
    BadHandle,
    /// ENXIO (lseek past the end, or no data after the offset).
    #[error("no data or hole at or after the offset")]
    NoSuchOffset,
    /// The chain refused or failed the commit (EIO, ENOSPC or EEXIST as appropriate).
    #[error("chain: {0}")]
    Chain(#[from] ate::ChainError),
    /// An earlier queued commit failed (EIO, reported by fsync).
    #[error("an earlier commit failed: {0}")]
    CommitFailed(String),
    /// A record did not decode (EIO).
    #[error("record {0} is corrupt: {1}")]
    Corrupt(RecordKey, String),
}

impl FsError {
    /// The errno the kernel gets.
    pub fn errno(&self) -> i32 {
        use ate::ChainError as C;
        use ate::UpstreamError as U;
        use ate::ValidationError as V;
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NoAttr => libc::ENODATA,
            FsError::NotPermitted => libc::EPERM,
            FsError::Range => libc::ERANGE,
            FsError::TooBig => libc::EFBIG,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::NoSpace => libc::ENOSPC,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::BadHandle => libc::EBADF,
            FsError::NoSuchOffset => libc::ENXIO,
            FsError::Chain(C::Rejected(V::Precondition(_))) => libc::EEXIST,
            FsError::Chain(C::Rejected(V::NotAuthorized { .. } | V::NotOwner(_))) => libc::EACCES,
            FsError::Chain(C::Log(e)) if e.is_no_space() => libc::ENOSPC,
            FsError::Chain(C::Upstream(U::Precondition(_))) => libc::EEXIST,
            FsError::Chain(C::Upstream(U::Denied(_))) => libc::EACCES,
            FsError::Chain(C::Upstream(U::Quota(_))) => libc::ENOSPC,
            FsError::Chain(_) | FsError::Corrupt(..) | FsError::CommitFailed(_) => libc::EIO,
        }
    }
}

/// Result of a file-system operation.
pub type FsResult<T> = Result<T, FsError>;
