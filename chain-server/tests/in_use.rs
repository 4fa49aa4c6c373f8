//! Whether a volume is in use, asked of a real three-process cluster: a mount holds its
//! subscription at whichever replica it reached, so the count is taken over every replica of
//! the chain's partition, and a replica that does not answer makes the answer "unknown",
//! never "not in use".
#![allow(clippy::unwrap_used)]

mod common;

use ate::remote::pb::chain::chains_client::ChainsClient;
use ate::remote::pb::chain::ChainRef;
use ate::remote::{refuse_in_use, RemoteOptions, RemoteRekeyError};
use common::WithChain;
use std::time::{Duration, Instant};
use tonic::Code;

fn options(endpoints: Vec<String>) -> RemoteOptions {
    RemoteOptions {
        endpoints,
        ca_pem: None,
        deadline: Duration::from_secs(20),
    }
}

#[test]
fn a_subscription_at_a_follower_counts_and_a_silent_replica_is_not_taken_for_none() {
    let mut w = WithChain::start();
    let started = Instant::now();
    let leader = loop {
        if let Some(l) = w.cluster.leader_of(w.p) {
            break l;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no leader");
        std::thread::sleep(Duration::from_millis(100));
    };
    let endpoints = w.cluster.endpoints();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    // A mount's cache that reached only a follower: the follower serves its subscription
    // (subscriptions are not redirected).
    let at_follower = w
        .cluster
        .client_of(vec![endpoints[follower].clone()], Duration::from_secs(20));
    let mut sub = at_follower.subscribe(w.chain, 1, w.owner.clone(), None);
    let (index, _) = w.rt.block_on(sub.next()).unwrap();
    assert_eq!(index, 1, "the genesis comes first");

    let info = w.rt.block_on(w.client.info(w.chain)).unwrap();
    assert_eq!(
        info.subscribers, 0,
        "the leader's own count does not see it (else this test proves nothing)"
    );
    let count = w.rt.block_on(w.client.subscribers(w.chain)).unwrap();
    assert_eq!((count.total, count.unanswered.len()), (1, 0), "{count:?}");
    // Whichever replica is asked, the count is the partition's.
    let via_other = w
        .cluster
        .client_of(vec![endpoints[other].clone()], Duration::from_secs(20));
    let count = w.rt.block_on(via_other.subscribers(w.chain)).unwrap();
    assert_eq!(count.total, 1, "{count:?}");
    match refuse_in_use(&options(endpoints.clone()), w.chain) {
        Err(RemoteRekeyError::InUse(1)) => {}
        r => panic!("a volume followed at a follower was not refused: {r:?}"),
    }

    // The mount goes: no longer in use.
    drop(sub);
    drop(at_follower);
    refuse_in_use(&options(endpoints.clone()), w.chain).unwrap();

    // A replica that cannot be asked might serve a mount: the answer is "cannot tell".
    let silent_id = w.cluster.replicas[other].id;
    w.cluster.kill(other);
    let count = w.rt.block_on(w.client.subscribers(w.chain)).unwrap();
    assert_eq!((count.total, &count.unanswered[..]), (0, &[silent_id][..]));
    match refuse_in_use(&options(endpoints.clone()), w.chain) {
        Err(RemoteRekeyError::InUseUnknown(ids)) => assert_eq!(ids, vec![silent_id]),
        r => panic!("a silent replica was taken for no mounts: {r:?}"),
    }

    // Bad requests get the right codes.
    let raw =
        w.rt.block_on(ChainsClient::connect(format!(
            "http://{}",
            endpoints[leader]
        )))
        .unwrap();
    let code = |chain: Vec<u8>| {
        let mut raw = raw.clone();
        let answer = w.rt.block_on(raw.subscribers(ChainRef { chain }));
        answer.map(|_| ()).unwrap_err().code()
    };
    assert_eq!(code(vec![1, 2, 3]), Code::InvalidArgument);
    assert_eq!(code(vec![7; 16]), Code::NotFound);
}
