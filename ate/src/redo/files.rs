//! The open files of a log, shared by the appender and any number of readers.

use super::segment::{segment_name, snapshot_name};
use super::LogError;
use crate::storage::{Storage, StorageFile};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A log file: a segment by first index, or a snapshot by last index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileRef {
    /// Snapshot covering indexes up to this one.
    Snapshot(u64),
    /// Segment starting at this index.
    Segment(u64),
}

impl FileRef {
    /// The file's name in storage.
    pub fn name(&self) -> String {
        match self {
            FileRef::Segment(i) => segment_name(*i),
            FileRef::Snapshot(i) => snapshot_name(*i),
        }
    }
}

/// Where bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// File.
    pub file: FileRef,
    /// Byte offset in the file.
    pub offset: u64,
}

/// Open files by reference.
#[derive(Debug)]
pub struct Files {
    pub(crate) storage: Arc<dyn Storage>,
    map: RwLock<BTreeMap<FileRef, Arc<dyn StorageFile>>>,
}

impl Files {
    /// No files yet, over `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            map: RwLock::new(BTreeMap::new()),
        }
    }

    /// Registers an open file.
    pub fn insert(&self, r: FileRef, f: Arc<dyn StorageFile>) {
        self.map.write().insert(r, f);
    }

    /// Forgets a file (its readers get `LogError::Compacted`).
    pub fn remove(&self, r: &FileRef) {
        self.map.write().remove(r);
    }

    /// The open file for `r`.
    pub fn get(&self, r: &FileRef) -> Option<Arc<dyn StorageFile>> {
        self.map.read().get(r).cloned()
    }

    /// Segment first indexes, ascending.
    pub fn segments(&self) -> Vec<u64> {
        self.map
            .read()
            .keys()
            .filter_map(|k| match k {
                FileRef::Segment(i) => Some(*i),
                FileRef::Snapshot(_) => None,
            })
            .collect()
    }

    /// The current snapshot's last index, if any.
    pub fn snapshot(&self) -> Option<u64> {
        self.map.read().keys().find_map(|k| match k {
            FileRef::Snapshot(i) => Some(*i),
            FileRef::Segment(_) => None,
        })
    }

    /// Reads `len` bytes at `loc`.
    pub fn read(&self, loc: Location, len: usize) -> Result<Vec<u8>, LogError> {
        let mut buf = vec![0u8; len];
        self.read_into(loc, &mut buf)?;
        Ok(buf)
    }

    /// Reads `buf.len()` bytes at `loc` into `buf`.
    pub fn read_into(&self, loc: Location, buf: &mut [u8]) -> Result<(), LogError> {
        let f = self.get(&loc.file).ok_or_else(|| LogError::Compacted {
            requested: 0,
            snapshot: self.snapshot().unwrap_or(0),
        })?;
        f.read_at(buf, loc.offset)
            .map_err(LogError::io("read", loc.file.name()))
    }

    /// Total bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.map.read().values().filter_map(|f| f.len().ok()).sum()
    }
}
