//! A replica restarted after a long run without a snapshot applies its whole log again: it
//! must do so a transaction at a time, not with the log in memory (openraft hands the state
//! machine everything after the commit index it last saved in one call; read whole, a replica
//! restarted after 4 GiB of writes peaked at 2.4 GiB and was killed by its memory limit).
#![allow(clippy::unwrap_used)]

mod common;

use common::{put_tx, WithChain};
use std::time::Duration;

/// Bytes committed before the restart.
const WRITTEN: u64 = 512 << 20;
/// One transaction's value.
const VALUE: usize = 1 << 20;
/// Transactions per batch.
const BATCH: usize = 8;

/// Peak resident memory of process `pid`, in bytes (VmHWM).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    kib << 10
}

#[test]
fn a_replica_restarted_after_a_long_log_applies_it_without_holding_it() {
    let mut w = WithChain::start();
    let mut last = 0;
    let mut value = vec![0u8; VALUE];
    for b in 0..WRITTEN / (VALUE * BATCH) as u64 {
        let txs = (0..BATCH)
            .map(|i| {
                value[..8].copy_from_slice(&(b * BATCH as u64 + i as u64).to_le_bytes());
                let name = format!("{b}-{i}");
                put_tx(w.chain, &w.owner, &w.key, name.as_bytes(), &value)
            })
            .collect();
        let out = w.rt.block_on(w.client.commit_batch(w.chain, txs)).unwrap();
        last = out.into_iter().map(Result::unwrap).max().unwrap();
    }
    let leader = w.cluster.leader_of(w.p).unwrap();
    let follower = (leader + 1) % 3;
    assert!(w
        .cluster
        .wait_applied(follower, w.p, last, Duration::from_secs(60)));
    let records = w.cluster.gauge(leader, "atefs_records", w.p);

    w.cluster.kill(follower);
    w.cluster.spawn(follower, false);
    w.cluster.wait_ready(follower, Duration::from_secs(60));
    assert!(
        w.cluster
            .wait_applied(follower, w.p, last, Duration::from_secs(120)),
        "the restarted replica applies its log again\n{}",
        w.cluster.log_tail(follower)
    );
    assert_eq!(w.cluster.gauge(follower, "atefs_records", w.p), records);
    let peak = peak_rss(w.cluster.pid(follower).unwrap());
    eprintln!("restarted replica's peak: {} MiB", peak >> 20);
    assert!(
        peak < WRITTEN / 2,
        "the restarted replica peaked at {} MiB applying {} MiB of log",
        peak >> 20,
        WRITTEN >> 20
    );
}
