#![no_main]
//! Opening a log whose only segment holds arbitrary bytes after a valid header: recovery either
//! succeeds or returns a typed error, never panics, and a second open agrees with the first.
use ate::storage::{MemStorage, Storage};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let chain = ate::ChainId([7; 16]);
    let mem = MemStorage::new();
    let mut bytes = ate::redo::FileHeader { magic: *b"ATE-SEG\0", index: 1, chain }.encode().to_vec();
    bytes.extend_from_slice(data);
    mem.set_contents(&ate::redo::segment_name(1), bytes);
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    let first = ate::Chain::open(storage.clone(), Some(chain), Default::default(), |_, _| {}).map(|(c, _)| c.last_index());
    let second = ate::Chain::open(storage, Some(chain), Default::default(), |_, _| {}).map(|(c, _)| c.last_index());
    assert_eq!(first.is_ok(), second.is_ok());
    if let (Ok(a), Ok(b)) = (first, second) {
        assert_eq!(a, b);
    }
});
