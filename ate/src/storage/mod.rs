//! Storage backends. The redo log does all of its I/O through [`Storage`] and [`StorageFile`], so
//! tests can run it on memory, simulate a power cut ([`MemStorage::crash_image`]) or inject
//! failures ([`FaultStorage`]).

mod fault;
mod file;
mod mem;

pub use fault::{FaultPlan, FaultStorage, Held};
pub use file::FileStorage;
pub use mem::MemStorage;

use std::fmt::Debug;
use std::io;
use std::sync::Arc;

/// A flat directory of files.
pub trait Storage: Send + Sync + Debug {
    /// Names of all files.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Opens a file, creating it empty when `create` is set and it does not exist.
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Atomically renames a file, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, renames and removals durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// One file. Reads and writes are positional so that readers never disturb the appender.
#[allow(clippy::len_without_is_empty)] // files are never asked whether they are empty
pub trait StorageFile: Send + Sync + Debug {
    /// Current length.
    fn len(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts or extends the file.
    fn truncate(&self, len: u64) -> io::Result<()>;
    /// `(align, min)`: a write of at least `min` bytes whose file offset and memory address
    /// agree modulo `align` is sent without being copied (a direct write). None: no such
    /// preference, so writers need not arrange it.
    fn write_alignment(&self) -> Option<(usize, usize)> {
        None
    }
    /// Reads up to `buf.len()` bytes at `offset`, bypassing the page cache where the backend
    /// can (callers align `offset`, `buf`'s address and its length to [`READ_DIRECT_ALIGN`]);
    /// returns how many, fewer only where the file ends.
    fn read_direct_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = usize::try_from(self.len()?.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.read_at(&mut buf[..n], offset)?;
        Ok(n)
    }
}

/// Alignment of offset, memory and length for [`StorageFile::read_direct_at`] (the largest
/// logical block size in use).
pub const READ_DIRECT_ALIGN: usize = 4096;
