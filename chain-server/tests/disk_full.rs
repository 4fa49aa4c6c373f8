//! Full disks on the chain servers, with three real processes, each replica on a small disk of
//! its own (tmpfs): a replica whose disk fills stops its part in the partition and says so,
//! the others go on and the commits in flight land; a leader refuses commits while the disks
//! still have room, with a code a mount reports as ENOSPC, and takes deletions; nothing
//! acknowledged is lost, and writes go on once the disks are larger.
#![allow(clippy::unwrap_used)]

mod common;

use ate::remote::RemoteError;
use ate::{ChainId, Op, RecordKey, SigningKey, Transaction};
use common::{put_tx, Cluster, WithChain};
use std::time::Duration;
use tonic::Code;

const MIB: u64 = 1 << 20;

/// A transaction deleting the record `put_tx` names by `name`.
fn delete_tx(chain: ChainId, owner: &SigningKey, name: &[u8]) -> Vec<u8> {
    let mut tx = Transaction::new(chain, owner.public());
    let key = RecordKey(*blake3::hash(name).as_bytes().first_chunk::<16>().unwrap());
    tx.ops.push(Op::Delete { key });
    tx.sign(owner).encode()
}

/// The room replica `i` last heard its peer `peer` (an id) report, from its metrics.
fn peer_room(c: &Cluster, i: usize, peer: u64) -> Option<u64> {
    let (_, metrics) = c.http_get(i, "/metrics");
    let line = format!("atefs_peer_disk_free_bytes{{peer=\"{peer}\"}} ");
    let value = metrics.lines().find_map(|l| l.strip_prefix(&line));
    value.map(|v| v.trim().parse().unwrap())
}

/// Waits until replica `i` has heard every peer report more than `bytes` of room (the next
/// heartbeat's answers, once disks were grown).
fn wait_for_room(c: &Cluster, i: usize, bytes: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let peers: Vec<u64> = c
        .replicas
        .iter()
        .map(|r| r.id)
        .filter(|id| *id != c.replicas[i].id)
        .collect();
    while !peers
        .iter()
        .all(|p| peer_room(c, i, *p).is_some_and(|f| f > bytes))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no report of {bytes} bytes free from {peers:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three replicas, each on a disk of `disk` bytes, keeping `reserve` bytes free, and a chain.
fn on_disks(disk: u64, reserve: u64) -> WithChain {
    let reserve = reserve.to_string();
    let extra = ["--disk-reserve-bytes", reserve.as_str()];
    let cluster = Cluster::start_on(false, 1_000_000, &extra, Some(disk));
    WithChain::on(cluster, 1 << 30)
}

/// A record of 256 KiB named by `i`.
fn put(w: &WithChain, i: u32) -> Vec<u8> {
    let value = vec![i as u8; 256 << 10];
    put_tx(w.chain, &w.owner, &w.key, &i.to_be_bytes(), &value)
}

/// Commits records of 256 KiB until one is refused (fewer than `limit`): how many were taken,
/// and the refusal.
fn commit_until_refused(w: &WithChain, limit: u32) -> (u32, RemoteError) {
    let mut acked = 0u32;
    loop {
        assert!(acked < limit, "{limit} records of 256 KiB taken");
        match w.rt.block_on(w.client.commit(w.chain, put(w, acked))) {
            Ok(_) => acked += 1,
            Err(e) => return (acked, e),
        }
    }
}

/// Commits `txs` through a commit stream, as a mount does; the answers in order.
fn through_a_stream(w: &WithChain, txs: Vec<Vec<u8>>) -> Vec<Result<u64, RemoteError>> {
    let (feed, rx) = tokio::sync::mpsc::channel::<(bytes::Bytes, usize)>(1);
    let (answered, answers) = std::sync::mpsc::channel();
    let client = w.client.clone();
    let chain = w.chain;
    let pipe = w.rt.spawn(async move {
        client
            .commit_pipe(chain, None, rx, |i, r| answered.send((i, r)).unwrap())
            .await
    });
    for (i, tx) in txs.into_iter().enumerate() {
        w.rt.block_on(feed.send((tx.into(), i))).unwrap();
    }
    drop(feed);
    w.rt.block_on(pipe).unwrap();
    let answers: Vec<_> = answers.iter().collect();
    for (n, (i, _)) in answers.iter().enumerate() {
        assert_eq!(*i, n, "answers in the order sent");
    }
    answers.into_iter().map(|(_, r)| r).collect()
}

/// The leader of the chain's partition finds its disk full in the middle of a stream of
/// commits. Its Raft core stops (a replica cannot refuse entries), and before this was handled
/// it went on naming itself leader: the mount's stream was opened there again and again and
/// every write failed after 30 s, although the two others had elected a leader. Now it
/// answers UNAVAILABLE, the client finds the new leader, every commit lands in order, and a
/// subscription it served ends so that its reader resumes elsewhere; the full replica reports
/// itself not live (so that Kubernetes restarts it) and not ready, and once
/// its disk is larger and it is restarted it catches up.
#[test]
fn a_replica_whose_disk_fills_stops_and_its_partition_goes_on_without_it() {
    const DISK: u64 = 96 * MIB;
    let cluster = Cluster::start_on(false, 1_000_000, &["--disk-reserve-bytes", "0"], Some(DISK));
    let mut w = WithChain::on(cluster, 1 << 30);
    let full = w.cluster.leader_of(w.p).expect("a leader");
    // A reader following the chain at that replica (as a mount's cache does).
    let mut endpoints = w.cluster.endpoints();
    endpoints.swap(0, full);
    let reader = std::sync::Arc::new(w.cluster.client_of(endpoints, Duration::from_secs(30)));
    let (seen, seen_by_reader) = std::sync::mpsc::channel();
    let (chain, owner) = (w.chain, w.owner.clone());
    let following = w.rt.spawn(async move {
        let mut sub = reader.subscribe(chain, 1, owner, None);
        while let Ok((index, _)) = sub.next().await {
            if seen.send(index).is_err() {
                return;
            }
        }
    });
    assert_eq!(seen_by_reader.recv_timeout(Duration::from_secs(30)), Ok(1));
    let disk = &w.cluster.disks[full];
    disk.resize(disk.used() + 3 * MIB);
    let txs: Vec<Vec<u8>> = (0..40u32)
        .map(|i| {
            let value = vec![i as u8; 256 << 10];
            put_tx(w.chain, &w.owner, &w.key, &i.to_be_bytes(), &value)
        })
        .collect();
    let mut last = 1; // genesis
    for (i, r) in through_a_stream(&w, txs).into_iter().enumerate() {
        let index = r.unwrap_or_else(|e| panic!("commit {i}: {e}"));
        assert!(index > last, "commit {i} at {index}, after {last}");
        last = index;
    }
    // Its subscription ended with the partition there: the reader resumed elsewhere.
    for want in 2..=last {
        let got = seen_by_reader.recv_timeout(Duration::from_secs(30));
        assert_eq!(got, Ok(want), "the reader's next index");
    }
    following.abort();
    let (status, body) = w.cluster.http_get(full, "/live");
    assert!(status.contains("503"), "{status}: {body}");
    assert!(body.contains("No space left on device"), "{body}");
    assert!(w.cluster.http_get(full, "/health").0.contains("503"));
    assert_eq!(w.cluster.gauge(full, "atefs_raft_stopped", w.p), 1);
    assert_eq!(w.cluster.gauge(full, "atefs_raft_leader", w.p), 0);
    for i in (0..3).filter(|i| *i != full) {
        assert!(w.cluster.http_get(i, "/live").0.contains("200"));
        assert_eq!(w.cluster.gauge(i, "atefs_raft_stopped", w.p), 0);
    }

    w.cluster.kill(full);
    w.cluster.disks[full].resize(DISK);
    w.cluster.spawn(full, false);
    assert!(
        w.cluster
            .wait_applied(full, w.p, last, Duration::from_secs(30)),
        "the replica did not catch up:\n{}",
        w.cluster.log_tail(full)
    );
    assert!(w.cluster.http_get(full, "/live").0.contains("200"));
}

/// Every replica on a disk of the same size (a StatefulSet's), commits until the leader
/// refuses one: RESOURCE_EXHAUSTED with a reason, while every replica still runs; the chain
/// holds every acknowledged record; a deletion is still taken; once the disks are larger,
/// records are taken again.
#[test]
fn a_leader_refuses_commits_before_the_disks_fill_and_takes_deletions() {
    const DISK: u64 = 48 * MIB;
    let w = on_disks(DISK, 16 * MIB);
    // 200 records: 50 MiB on 48 MiB disks.
    let (acked, refusal) = commit_until_refused(&w, 200);
    match &refusal {
        RemoteError::Refused(Code::ResourceExhausted, m) => {
            assert!(m.contains("disks are nearly full"), "{m}")
        }
        other => panic!("the commit that found the disks full: {other}"),
    }
    assert!(
        acked > 40,
        "only {acked} records of 256 KiB taken on 48 MiB disks"
    );
    for i in 0..3 {
        assert!(w.cluster.http_get(i, "/live").0.contains("200"));
        assert!(w.cluster.http_get(i, "/health").0.contains("200"));
    }
    let info = w.rt.block_on(w.client.info(w.chain)).unwrap();
    assert_eq!(info.records, u64::from(acked));

    let gone = delete_tx(w.chain, &w.owner, &0u32.to_be_bytes());
    w.rt.block_on(w.client.commit(w.chain, gone))
        .expect("a deletion on full disks");
    let info = w.rt.block_on(w.client.info(w.chain)).unwrap();
    assert_eq!(info.records, u64::from(acked) - 1);

    for d in &w.cluster.disks {
        d.resize(2 * DISK);
    }
    let leader = w.cluster.leader_of(w.p).expect("a leader");
    wait_for_room(&w.cluster, leader, DISK);
    w.rt.block_on(w.client.commit(w.chain, put(&w, acked)))
        .expect("a record once the disks are larger");
}

/// A follower on a smaller disk than its leader's: the leader refuses commits when that
/// follower's room runs low, not when its own does. Before followers reported their room,
/// the leader took commits until its own disk neared the reserve, and the small follower
/// filled and stopped its part in the partition (a replica lost until someone grew its disk
/// and restarted it).
#[test]
fn a_leader_refuses_commits_before_its_fullest_follower_fills() {
    const RESERVE: u64 = 16 * MIB;
    let w = on_disks(64 * MIB, RESERVE);
    let leader = w.cluster.leader_of(w.p).expect("a leader");
    let small = (leader + 1) % 3;
    let disk = &w.cluster.disks[small];
    disk.resize(disk.used() + RESERVE + 8 * MIB);
    // 100 records: 25 MiB with 24 MiB left on the small disk.
    let (acked, refusal) = commit_until_refused(&w, 100);
    let small_id = w.cluster.replicas[small].id;
    match &refusal {
        RemoteError::Refused(Code::ResourceExhausted, m) => {
            assert!(
                m.contains(&format!("on replica {small_id}, the fullest")),
                "{m}"
            )
        }
        other => panic!("the commit that found the follower's disk full: {other}"),
    }
    assert!(acked > 4, "only {acked} records of 256 KiB taken");
    // The leader had room of its own; the follower never filled.
    let (_, metrics) = w.cluster.http_get(leader, "/metrics");
    let own = metrics
        .lines()
        .find_map(|l| l.strip_prefix("atefs_disk_free_bytes "));
    let own: u64 = own
        .expect("the leader's free space")
        .trim()
        .parse()
        .unwrap();
    assert!(own > RESERVE + 8 * MIB, "{own}");
    let reported = peer_room(&w.cluster, leader, small_id).expect("the follower's report");
    assert!(reported < RESERVE + (256 << 10), "{reported}");
    for i in 0..3 {
        let (status, body) = w.cluster.http_get(i, "/live");
        assert!(status.contains("200"), "replica {i}: {status}: {body}");
        assert_eq!(w.cluster.gauge(i, "atefs_raft_stopped", w.p), 0);
    }
    let info = w.rt.block_on(w.client.info(w.chain)).unwrap();
    assert_eq!(info.records, u64::from(acked));
}
