//! openraft's own storage test suite, run on the partition log store and state machine
//! (real files in a temporary directory).
#![allow(clippy::unwrap_used)]

use ate::storage::FileStorage;
use chain_server::log_store::LogStore;
use chain_server::state_machine::StateMachine;
use chain_server::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use std::sync::Arc;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = FileStorage::new(dir.path().join("log")).unwrap();
        let sm_dir = FileStorage::new(dir.path().join("sm")).unwrap();
        // Small segments, so that truncation and purging cross segment boundaries.
        let log = LogStore::open(Arc::new(log_dir), 512).unwrap();
        let sm = StateMachine::open(Arc::new(sm_dir), log.clone()).unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).unwrap();
}
