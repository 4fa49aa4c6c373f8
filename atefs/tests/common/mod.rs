//! Shared helpers for atefs tests.
#![allow(dead_code, clippy::unwrap_used)]

use ate::storage::{MemStorage, Storage};
use ate::{Chain, ChainOptions, KeyFile};
use atefs::{AteFs, Caller, FsOptions};
use std::sync::Arc;

pub const ROOT: Caller = Caller {
    uid: 0,
    gid: 0,
    umask: 0,
};

/// A file system on a memory chain; returns the storage to reopen from.
pub fn mem_fs(opts: FsOptions) -> (MemStorage, KeyFile, AteFs) {
    let mem = MemStorage::new();
    let keys = KeyFile::generate(ate::ChainId::random());
    let fs = open(&mem, &keys, opts);
    (mem, keys, fs)
}

pub fn open(mem: &MemStorage, keys: &KeyFile, opts: FsOptions) -> AteFs {
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    let (chain, _) = Chain::open(
        storage,
        Some(keys.chain),
        ChainOptions::default(),
        |_, _| {},
    )
    .unwrap();
    AteFs::new(chain, keys.clone(), opts, ROOT).unwrap()
}

/// Small blocks so tests cross block boundaries cheaply.
pub fn small_blocks() -> FsOptions {
    FsOptions {
        block_size: 16,
        flush_bytes: 64,
        ..FsOptions::default()
    }
}
pub mod mount;
