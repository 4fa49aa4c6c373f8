//! What a chain may hold and what the replicas keep on disk for it: a quota bounds the bytes a
//! chain holds (its live records), not the bytes ever sent to it, and each replica keeps its
//! log within a bound in bytes however often a chain is rewritten. Three real processes.
#![allow(clippy::unwrap_used)]

mod common;

use ate::remote::RemoteError;
use ate::{ChainId, DataKey, Op, RecordKey, SigningKey, Transaction};
use common::{files_under, new_chain, put_tx, rt, Cluster};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

/// A transaction deleting the record `put_tx` names by `name`.
fn delete_tx(chain: ChainId, owner: &SigningKey, name: &[u8]) -> Vec<u8> {
    let mut tx = Transaction::new(chain, owner.public());
    let key = RecordKey(*blake3::hash(name).as_bytes().first_chunk::<16>().unwrap());
    tx.ops.push(Op::Delete { key });
    tx.sign(owner).encode()
}

fn refused_for_quota(r: Result<u64, RemoteError>) {
    match r {
        Err(RemoteError::Refused(Code::ResourceExhausted, m)) => {
            assert!(m.contains("more than its quota"), "{m}")
        }
        other => panic!("a commit past the quota: {other:?}"),
    }
}

/// Bytes of every file under each replica's data directory.
fn disk_bytes(cluster: &Cluster) -> Vec<u64> {
    cluster
        .replicas
        .iter()
        .map(|r| {
            files_under(&r.data)
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum()
        })
        .collect()
}

/// A volume whose files are rewritten sends its chain far more than it holds: the quota
/// judges what a commit leaves. Rewrites go on past the quota many times over, a new record
/// that would pass it is refused, a deletion on a full chain goes through and makes room. What
/// the chain holds is counted again from the snapshot after every replica restarts (snapshots
/// of earlier versions stored the bytes ever committed).
#[test]
fn a_quota_bounds_what_a_chain_holds_not_what_was_sent_to_it() {
    // A snapshot every 20 entries: the restart below loads the chain from one.
    let mut cluster = Cluster::start(false, 20);
    let rt = rt();
    let client = cluster.client(Duration::from_secs(30));
    let (chain, owner, genesis) = new_chain();
    const QUOTA: u64 = 64 << 10;
    rt.block_on(client.create(chain, QUOTA, genesis)).unwrap();
    let key = DataKey::generate();
    // 50 rewrites of 16 KiB: 800 KiB sent to a 64 KiB chain.
    for i in 0..50u8 {
        let tx = put_tx(chain, &owner, &key, b"file", &[i; 16 << 10]);
        rt.block_on(client.commit(chain, tx)).unwrap();
    }
    let info = rt.block_on(client.info(chain)).unwrap();
    assert_eq!(info.index, 51);
    assert!(
        (16 << 10..17 << 10).contains(&info.used_bytes),
        "holds one 16 KiB record: {info:?}"
    );
    // 16 + 60 KiB would pass 64 KiB: refused, and nothing of it is held.
    let big = put_tx(chain, &owner, &key, b"big", &[9; 60 << 10]);
    refused_for_quota(rt.block_on(client.commit(chain, big.clone())));
    // Fill the chain to the brim with a second record, then grow it by a byte: refused.
    let room = QUOTA - info.used_bytes - ate::crypto::SEAL_OVERHEAD as u64;
    let fill = |n: u64| put_tx(chain, &owner, &key, b"fill", &vec![3; n as usize]);
    rt.block_on(client.commit(chain, fill(room))).unwrap();
    refused_for_quota(rt.block_on(client.commit(chain, fill(room + 1))));
    // A full chain still takes a deletion and a shrinking rewrite.
    rt.block_on(client.commit(chain, delete_tx(chain, &owner, b"file")))
        .unwrap();
    rt.block_on(client.commit(chain, fill(1 << 10))).unwrap();
    // Now there is room for what was refused.
    let index = rt.block_on(client.commit(chain, big)).unwrap();
    let info = rt.block_on(client.info(chain)).unwrap();
    assert_eq!(info.index, index);
    assert!(
        (61 << 10..63 << 10).contains(&info.used_bytes),
        "holds 60 + 1 KiB: {info:?}"
    );

    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.spawn(i, false);
    }
    let again = rt.block_on(client.info(chain)).unwrap();
    assert_eq!(
        (again.index, again.used_bytes),
        (info.index, info.used_bytes)
    );
}

/// A replica's disk follows what its chains hold, not what they were sent: 64 records of
/// 128 KiB rewritten eight times over (64 MiB sent, 8 MiB held) on replicas bounded to 4 MiB
/// of log on either side of a snapshot (1 MiB segments) leave each replica's data directory
/// within 32 MiB, with the entry count never reaching a snapshot of its own. The snapshots are
/// written while commits are applied: a new cache fetches the last one and follows the log
/// from there, and every record reads back as last written. The log still serves a
/// subscription from the first index it reports, and a replica restarted on its purged log
/// and snapshot rejoins.
#[test]
fn each_replica_keeps_its_log_within_its_bound_in_bytes() {
    let mut cluster = Cluster::start_with(
        false,
        1_000_000,
        &[
            "--snapshot-log-bytes",
            "4194304",
            "--segment-bytes",
            "1048576",
        ],
    );
    let rt = rt();
    let client = cluster.client(Duration::from_secs(30));
    let (chain, owner, genesis) = new_chain();
    rt.block_on(client.create(chain, 1 << 30, genesis)).unwrap();
    let key = DataKey::generate();
    let value = |record: u32, round: u32| -> Vec<u8> {
        let mut v = vec![(record * 7 + round) as u8; 128 << 10];
        v[..8].copy_from_slice(&[record.to_le_bytes(), round.to_le_bytes()].concat());
        v
    };
    let name = |record: u32| format!("record-{record}").into_bytes();
    let (mut last, mut sent) = (0, Vec::new());
    for round in 0..8 {
        for record in 0..64 {
            sent = put_tx(chain, &owner, &key, &name(record), &value(record, round));
            last = rt.block_on(client.commit(chain, sent.clone())).unwrap();
        }
    }
    const BOUND: u64 = 32 << 20;
    let until = Instant::now() + Duration::from_secs(60);
    let sizes = loop {
        let sizes = disk_bytes(&cluster);
        if sizes.iter().all(|s| *s <= BOUND) || Instant::now() > until {
            break sizes;
        }
        // The bound is kept by each replica's once-a-second check: nothing to wait on.
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        sizes.iter().all(|s| *s <= BOUND),
        "64 MiB sent, 8 MiB held; replicas hold {sizes:?} bytes"
    );
    eprintln!("64 MiB sent, 8 MiB held: replicas hold {sizes:?} bytes");
    let info = rt.block_on(client.info(chain)).unwrap();
    assert_eq!(info.index, last);
    assert!(info.first_index > 1, "the log was purged: {info:?}");
    // A subscription from the first index the chain reports reads through to the last.
    let mut sub = client.subscribe(chain, info.first_index, owner.clone(), None);
    let mut got = None;
    while got.as_ref().map(|(i, _)| *i) != Some(last) {
        got = Some(rt.block_on(sub.next()).unwrap());
    }
    assert!(
        got.unwrap().1 == sent,
        "the last transaction read back is the last sent"
    );
    drop(sub);
    // A new cache starts from the snapshot: every payload was copied into it intact.
    let cache: Arc<dyn ate::storage::Storage> = Arc::new(ate::storage::MemStorage::new());
    let remote = ate::remote::open_remote(
        cluster.client(Duration::from_secs(30)),
        chain,
        owner.clone(),
        cache,
        None,
    )
    .unwrap();
    assert!(remote.chain.wait_for(last, Duration::from_secs(30)));
    for record in 0..64 {
        let rk = RecordKey(
            *blake3::hash(&name(record))
                .as_bytes()
                .first_chunk::<16>()
                .unwrap(),
        );
        let (_, plain) = remote.chain.read_plain(&rk, &key).unwrap().unwrap();
        assert!(
            plain == value(record, 7),
            "record {record} reads back as last written"
        );
    }
    drop(remote);

    // A replica restarted on its purged log and its snapshot applies new commits.
    cluster.kill(2);
    cluster.spawn(2, false);
    let p = chain_server::node::partition_of(&chain, 2);
    let next = rt
        .block_on(client.commit(chain, put_tx(chain, &owner, &key, b"after", b"x")))
        .unwrap();
    let applied = cluster.gauge(0, "atefs_raft_applied_index", p);
    assert!(next > last);
    assert!(
        cluster.wait_applied(2, p, applied, Duration::from_secs(30)),
        "the restarted replica did not catch up:\n{}",
        cluster.log_tail(2)
    );
}
