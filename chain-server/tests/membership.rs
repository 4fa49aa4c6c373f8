//! A replica added to a running cluster (a StatefulSet scaled up: its list names the others
//! and itself, theirs do not name it) joins every partition over the Raft transport's mutual
//! TLS: it catches up as a learner (from a snapshot and the log after it) and becomes a voter,
//! one whose acknowledgement the quorum then needs. Replicas whose lists do not name it send
//! clients to it when it leads, by the API address its membership entry carries.
#![allow(clippy::unwrap_used)]

mod common;

use common::{put_tx, Cluster, WithChain};
use std::time::Duration;

#[test]
fn a_replica_added_later_joins_and_counts_toward_the_quorum() {
    // TLS (the join goes over the replicas' mutual TLS); snapshots every 20 entries, so the
    // new replica needs a snapshot before the log.
    let mut w = WithChain::on(Cluster::start(true, 20), 1 << 30);
    let value = vec![1u8; 4096];
    let mut last = 0;
    for i in 0..60u32 {
        let tx = put_tx(w.chain, &w.owner, &w.key, &i.to_be_bytes(), &value);
        last = w.rt.block_on(w.client.commit(w.chain, tx)).unwrap();
    }
    let new = w.cluster.grow();
    w.cluster.wait_ready(new, Duration::from_secs(60));
    for i in 0..4 {
        for p in 0..2 {
            // Every replica, its own list or not, sees four voters.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while w.cluster.gauge(i, "atefs_raft_voters", p) != 4 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "replica {i}, partition {p}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    assert!(w
        .cluster
        .wait_applied(new, w.p, last, Duration::from_secs(30)));
    let snapshot = w.cluster.replicas[new]
        .data
        .join(format!("partition-{}/state/snapshot.bin", w.p));
    assert!(snapshot.exists(), "the log it missed came as a snapshot");

    // Make the new replica the chain's leader: kill whichever other replica leads, start it
    // again, until the election goes to the new one. With four voters a quorum is three, so
    // while one is down every commit needs the new replica.
    let mut tries = 0;
    loop {
        let leader = w.cluster.leader_of(w.p).expect("a leader");
        if leader == new {
            break;
        }
        tries += 1;
        assert!(tries <= 30, "the new replica never led");
        w.cluster.kill(leader);
        let tx = put_tx(w.chain, &w.owner, &w.key, b"while one is down", &value);
        last = w.rt.block_on(w.client.commit(w.chain, tx)).unwrap();
        w.cluster.spawn(leader, false);
        w.cluster.wait_ready(leader, Duration::from_secs(30));
    }
    // A client that knows only a replica whose list does not name the leader is sent to it.
    let old_only = w.cluster.client_of(
        vec![w.cluster.replicas[0].api.clone()],
        Duration::from_secs(20),
    );
    let tx = put_tx(w.chain, &w.owner, &w.key, b"through a redirect", &value);
    let index = w.rt.block_on(old_only.commit(w.chain, tx)).unwrap();
    assert!(index > last);
    assert_eq!(w.rt.block_on(old_only.barrier(w.chain)).unwrap(), index);
}

#[test]
fn bad_join_requests_are_refused_with_the_right_code() {
    let c = Cluster::start(true, 1_000_000);
    let rt = common::rt();
    let tls = chain_server::tls::Tls::load(&c.dir.path().join("certs")).unwrap();
    let leader = c.leader_of(0).expect("a leader");
    let _in_runtime = rt.enter();
    let mut client = chain_server::pb::raft::raft_client::RaftClient::new(
        tls.channel(&c.replicas[leader].raft, None).unwrap(),
    );
    let join = |body: Vec<u8>| chain_server::pb::raft::RaftRequest {
        partition: 0,
        body: body.into(),
        ..Default::default()
    };
    let garbage = rt.block_on(client.join(join(vec![0xff; 7]))).unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage}");
    // Replica 2's id from another address: two replicas with one id.
    let other = postcard::to_stdvec(&chain_server::membership::JoinRequest {
        id: 2,
        raft: "127.0.0.1:1".into(),
        api: "127.0.0.1:2".into(),
    })
    .unwrap();
    let twin = rt.block_on(client.join(join(other))).unwrap_err();
    assert_eq!(twin.code(), tonic::Code::AlreadyExists, "{twin}");
    assert!(
        twin.message().contains("replica 2 is a member at"),
        "{twin}"
    );
    // Its own address: already a voter.
    let same = postcard::to_stdvec(&chain_server::membership::JoinRequest {
        id: 2,
        raft: c.replicas[1].raft.clone(),
        api: c.replicas[1].api.clone(),
    })
    .unwrap();
    let reply = rt.block_on(client.join(join(same))).unwrap().into_inner();
    let status: chain_server::membership::JoinStatus = postcard::from_bytes(&reply.body).unwrap();
    assert_eq!(status, chain_server::membership::JoinStatus::Voter);
}

#[test]
fn commits_go_on_while_a_replica_joins_and_leaves_and_none_is_lost() {
    let mut w = WithChain::on(
        Cluster::start_with(false, 1_000_000, &["--forget-after-secs", "2"]),
        1 << 30,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = common::spawn_writers(&w, 3, &stop);
    let progress = |w: &WithChain, by: u64| {
        let from = w.rt.block_on(w.client.barrier(w.chain)).unwrap();
        while w.rt.block_on(w.client.barrier(w.chain)).unwrap() < from + by {}
    };
    progress(&w, 30);
    // Joins under load: a learner catches up with a moving log, then votes.
    let new = w.cluster.grow();
    w.cluster.wait_ready(new, Duration::from_secs(60));
    progress(&w, 30);
    // The leader dies: three of four voters are left, and every commit needs the new one.
    let leader = w.cluster.leader_of(w.p).expect("a leader");
    w.cluster.kill(leader);
    progress(&w, 30);
    w.cluster.spawn(leader, false);
    w.cluster.wait_ready(leader, Duration::from_secs(30));
    // The new replica goes; the others' lists never named it, so it is forgotten.
    w.cluster.kill(new);
    for i in 0..3 {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while w.cluster.gauge(i, "atefs_raft_voters", w.p) != 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "replica {i} still counts four voters"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    progress(&w, 30);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acks = common::Acks::new();
    let mut sent = std::collections::BTreeMap::new();
    for h in writers {
        let (a, s, _) = w.rt.block_on(h).unwrap();
        acks.extend(a);
        sent.extend(s);
    }
    let n = w.rt.block_on(common::check_history(
        &w.client,
        w.chain,
        w.owner.clone(),
        &acks,
        &sent,
    ));
    assert!(n > 120, "{n} transactions");
}
