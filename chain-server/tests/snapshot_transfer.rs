//! A snapshot sent to a replica that needs it (wiped, or back after the log it lacks was
//! purged) travels from file to file: neither the leader nor the receiver holds it in memory,
//! and a slow chunk does not start the transfer over. Before session 27 the leader read the
//! whole snapshot into memory to send it and the receiver gathered it in memory before writing
//! it (a partition holding more than a chain server's memory limit, the chart's 2 GiB, could
//! never rebuild a replica, and the leader that tried was killed for it, again at each new
//! leader); and a chunk not answered within openraft's default 200 ms ended the transfer, to
//! begin again from its first byte (a debug build never rebuilt this test's replica).
#![allow(clippy::unwrap_used)]

mod common;

use common::{put_tx, Cluster, WithChain};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// A line of process `pid`'s status in bytes: `VmHWM` (its largest resident set since it
/// started or was reset) or `VmRSS` (its resident set now).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Starts counting process `pid`'s peak resident set afresh.
fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// The size of replica `i`'s snapshot of partition `p` (0 without one).
fn snapshot_bytes(c: &Cluster, i: usize, p: u32) -> u64 {
    let file = c.replicas[i]
        .data
        .join(format!("partition-{p}/state/snapshot.bin"));
    std::fs::metadata(file).map_or(0, |m| m.len())
}

#[test]
fn a_snapshot_is_sent_and_received_without_holding_it_in_memory() {
    // Snapshots every 20 entries, and as many kept behind them: the wiped replica gets the
    // snapshot, not the log.
    let cluster = Cluster::start(false, 20);
    let mut w = WithChain::on(cluster, 1 << 40);
    let value = vec![7u8; MIB as usize];
    let mut last = 0;
    for i in 0..192u32 {
        let tx = put_tx(w.chain, &w.owner, &w.key, &i.to_be_bytes(), &value);
        last = w.rt.block_on(w.client.commit(w.chain, tx)).unwrap();
    }
    let leader = w.cluster.leader_of(w.p).expect("a leader");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let size = loop {
        let size = snapshot_bytes(&w.cluster, leader, w.p);
        if size > 160 * MIB {
            break size;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot of the data: {size} bytes"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let wiped = (leader + 1) % 3;
    w.cluster.kill(wiped);
    std::fs::remove_dir_all(&w.cluster.replicas[wiped].data).unwrap();
    let leader_pid = w.cluster.pid(leader).unwrap();
    reset_peak_rss(leader_pid);
    let before = status_bytes(leader_pid, "VmRSS");
    w.cluster.spawn(wiped, false);
    assert!(
        w.cluster
            .wait_applied(wiped, w.p, last, Duration::from_secs(120)),
        "the wiped replica did not rebuild; its log:\n{}\nthe leader's:\n{}",
        w.cluster.log_tail(wiped),
        w.cluster.log_tail(leader)
    );
    assert!(
        snapshot_bytes(&w.cluster, wiped, w.p) > 0,
        "it rebuilt without a snapshot?"
    );
    let sender = status_bytes(leader_pid, "VmHWM");
    let receiver = status_bytes(w.cluster.pid(wiped).unwrap(), "VmHWM");
    eprintln!(
        "snapshot {size} bytes; the leader's resident set {before}, its peak while sending \
         {sender}; the receiver's peak {receiver}"
    );
    // The leader holds a few chunks at a time beside what it held; the receiver (a fresh
    // process) a few chunks beside its own needs.
    assert!(
        sender < before + size / 4,
        "the leader's peak resident set while it sent a snapshot of {size} bytes: {sender}, \
         from {before}"
    );
    assert!(
        receiver < size / 2,
        "the receiver's peak resident set for a snapshot of {size} bytes: {receiver}"
    );
}
