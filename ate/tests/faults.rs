//! Fault injection: failed writes, failed fsyncs and a full disk lose no acknowledged
//! transaction and surface typed errors.
#![allow(clippy::unwrap_used)]

mod common;

use ate::redo::LogError;
use ate::storage::{FaultPlan, FaultStorage, MemStorage, Storage};
use ate::{Chain, ChainError, RootAuthority};
use common::{key, Fixture};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn faulty(f: &Fixture) -> (MemStorage, Arc<FaultPlan>, Chain) {
    let mem = MemStorage::new();
    let (fs, plan) = FaultStorage::new(Arc::new(mem.clone()));
    let storage: Arc<dyn Storage> = Arc::new(fs);
    let chain = f.open(&storage);
    chain
        .commit(f.genesis(RootAuthority::single_owner(f.owner.public())))
        .unwrap();
    (mem, plan, chain)
}

fn reopen_after_crash(f: &Fixture, mem: &MemStorage) -> Chain {
    let storage: Arc<dyn Storage> = Arc::new(mem.crash_image());
    f.open(&storage)
}

fn check_acked(f: &Fixture, chain: &Chain, acked: &[u128]) {
    for k in acked {
        let got = chain.read_plain(&key(*k), &f.data).unwrap();
        assert_eq!(
            got.map(|(_, p)| p),
            Some(format!("v{k}").into_bytes()),
            "acknowledged key {k} lost"
        );
    }
}

#[test]
fn failed_write_is_reported_and_rolled_back() {
    let f = Fixture::new();
    let (mem, plan, chain) = faulty(&f);
    let mut acked = Vec::new();
    for i in 0..5 {
        chain
            .commit(f.put(&f.owner, key(i), None, format!("v{i}").as_bytes()))
            .unwrap();
        acked.push(i);
    }
    plan.writes_before_failure.store(0, Ordering::SeqCst);
    let err = chain
        .commit(f.put(&f.owner, key(50), None, b"v50"))
        .unwrap_err();
    assert!(
        matches!(err, ChainError::Log(LogError::Io { op: "write", .. })),
        "{err}"
    );
    assert!(chain.record(&key(50)).is_none());
    plan.heal();
    // The partial frame was cut off, so the chain keeps working without a reopen.
    chain.commit(f.put(&f.owner, key(6), None, b"v6")).unwrap();
    acked.push(6);
    check_acked(&f, &chain, &acked);
    let reopened = reopen_after_crash(&f, &mem);
    check_acked(&f, &reopened, &acked);
    assert!(reopened.record(&key(50)).is_none());
}

#[test]
fn a_large_transaction_written_in_place_fails_whole_and_the_log_goes_on() {
    // Transactions of 64 KiB and more are written from where they lie, after their frame
    // header: a failure between the two writes must leave no trace.
    let f = Fixture::new();
    let (mem, plan, chain) = faulty(&f);
    let big = |k: u8| vec![k; 300 << 10];
    chain
        .commit(f.put(&f.owner, key(1), None, &big(1)))
        .unwrap();
    chain.commit(f.put(&f.owner, key(2), None, b"v2")).unwrap();
    // The header lands, the transaction does not (half of it, as a filling disk would).
    plan.writes_before_failure.store(1, Ordering::SeqCst);
    let err = chain
        .commit(f.put(&f.owner, key(3), None, &big(3)))
        .unwrap_err();
    assert!(
        matches!(err, ChainError::Log(LogError::Io { op: "write", .. })),
        "{err}"
    );
    plan.heal();
    chain
        .commit(f.put(&f.owner, key(4), None, &big(4)))
        .unwrap();
    let reopened = reopen_after_crash(&f, &mem);
    for c in [&chain, &reopened] {
        let read = |k: u128| c.read_plain(&key(k), &f.data).unwrap().map(|(_, p)| p);
        assert_eq!(read(1), Some(big(1)));
        assert_eq!(read(2), Some(b"v2".to_vec()));
        assert_eq!(read(3), None);
        assert_eq!(read(4), Some(big(4)));
    }
}

#[test]
fn failed_fsync_poisons_until_reopen_and_loses_nothing_acknowledged() {
    let f = Fixture::new();
    let (mem, plan, chain) = faulty(&f);
    let acked: Vec<u128> = (0..5).collect();
    for i in &acked {
        chain
            .commit(f.put(&f.owner, key(*i), None, format!("v{i}").as_bytes()))
            .unwrap();
    }
    plan.syncs_before_failure.store(0, Ordering::SeqCst);
    let err = chain
        .commit(f.put(&f.owner, key(50), None, b"v50"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::Log(LogError::Io {
                op: "fdatasync",
                ..
            })
        ),
        "{err}"
    );
    plan.heal();
    let err = chain
        .commit(f.put(&f.owner, key(51), None, b"v51"))
        .unwrap_err();
    assert!(matches!(err, ChainError::Log(LogError::Poisoned)), "{err}");
    // Readers never saw the unacknowledged transaction.
    assert!(chain.record(&key(50)).is_none());
    drop(chain);
    let reopened = reopen_after_crash(&f, &mem);
    check_acked(&f, &reopened, &acked);
    assert!(reopened.record(&key(51)).is_none());
}

#[test]
fn full_disk_gives_enospc_and_recovers_when_space_returns() {
    let f = Fixture::new();
    let (mem, plan, chain) = faulty(&f);
    plan.space_left.store(2000, Ordering::SeqCst);
    let mut acked = Vec::new();
    let mut failures = 0;
    for i in 0..40 {
        match chain.commit(f.put(&f.owner, key(i), None, format!("v{i}").as_bytes())) {
            Ok(_) => acked.push(i),
            Err(ChainError::Log(e)) if e.is_no_space() => failures += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(failures > 0 && !acked.is_empty());
    plan.heal();
    chain
        .commit(f.put(&f.owner, key(100), None, b"v100"))
        .unwrap();
    acked.push(100);
    check_acked(&f, &chain, &acked);
    drop(chain);
    check_acked(&f, &reopen_after_crash(&f, &mem), &acked);
}
