//! Three real chain-server processes on loopback: commits through leader failure, exactly once,
//! checked against the final chain by a history checker; forged and unauthenticated requests
//! refused; no plaintext in any replica's data; metrics and health.
#![allow(clippy::unwrap_used)]

mod common;

use ate::remote::pb::chain::chains_client::ChainsClient;
use ate::remote::pb::chain::{ChallengeRequest, CommitRequest, SubscribeRequest};
use ate::remote::{Event, RemoteError, Session};
use ate::{DataKey, Transaction};
use common::{
    check_history, files_under, new_chain, put_tx, rt, Acks, Cluster, Stopped, WithChain,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

#[test]
fn commits_survive_a_killed_leader_exactly_once() {
    // No snapshot during the test: the history checker reads every transaction back.
    let w = WithChain::start();
    // Four writers commit continuously; each logs what it sent and what was acknowledged.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = common::spawn_writers(&w, 4, &stop);
    let WithChain {
        mut cluster,
        rt,
        client,
        chain,
        owner,
        p,
        ..
    } = w;
    std::thread::sleep(Duration::from_millis(800));
    let leader = cluster.leader_of(p).expect("a leader");
    let killed_at = Instant::now();
    cluster.kill(leader);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acks = Acks::new();
    let mut sent = BTreeMap::new();
    let mut first_after_kill = None::<Duration>;
    for w in writers {
        let (a, s, times) = rt.block_on(w).unwrap();
        acks.extend(a);
        sent.extend(s);
        if let Some(t) = times.iter().find(|t| **t > killed_at) {
            let d = t.duration_since(killed_at);
            first_after_kill = Some(first_after_kill.map_or(d, |f: Duration| f.min(d)));
        }
    }
    let resumed = first_after_kill.expect("no commit was acknowledged after the leader died");
    assert!(
        resumed < Duration::from_secs(5),
        "commits resumed only after {resumed:?}"
    );
    assert!(
        acks.len() > 20,
        "too few commits to mean anything: {}",
        acks.len()
    );
    // The killed replica comes back and catches up; the history is checked through it too.
    cluster.spawn(leader, false);
    let n = rt.block_on(check_history(&client, chain, owner.clone(), &acks, &sent));
    eprintln!(
        "{} commits acknowledged, {n} in the chain, first commit {resumed:?} after the kill",
        acks.len()
    );
}

#[test]
fn forged_unauthenticated_and_bad_requests_are_refused_and_no_plaintext_is_stored() {
    let cluster = Cluster::start(true, 1_000_000);
    let rt = rt();
    let client = cluster.client(Duration::from_secs(20));
    let (chain, owner, genesis) = new_chain();
    rt.block_on(client.create(chain, 1 << 20, genesis)).unwrap();
    let key = DataKey::generate();
    let secret_name = b"name-8a7f3e21c9";
    let secret_body = b"content-5d1c0b9e77e4 the server must never see this";
    let tx = put_tx(chain, &owner, &key, secret_name, secret_body);
    rt.block_on(client.commit(chain, tx.clone())).unwrap();

    // A stranger's transaction: signed correctly, but the key has no authority.
    let stranger = ate::SigningKey::generate();
    let forged = put_tx(chain, &stranger, &key, b"x", b"y");
    match rt.block_on(client.commit(chain, forged)) {
        Err(RemoteError::Refused(Code::PermissionDenied, _)) => {}
        other => panic!("a stranger's commit: {other:?}"),
    }
    // The owner's transaction with one byte of the signature flipped.
    let mut t = Transaction::decode(&tx).unwrap();
    t.signature[0] ^= 1;
    match rt.block_on(client.commit(chain, t.encode())) {
        Err(RemoteError::Refused(Code::PermissionDenied, _)) => {}
        other => panic!("a forged signature: {other:?}"),
    }
    // Garbage, and a chain that does not exist.
    match rt.block_on(client.commit(chain, vec![1, 2, 3])) {
        Err(RemoteError::Refused(Code::InvalidArgument, _)) => {}
        other => panic!("garbage: {other:?}"),
    }
    let (other_chain, other_owner, _) = new_chain();
    let orphan = put_tx(other_chain, &other_owner, &key, b"a", b"b");
    match rt.block_on(client.commit(other_chain, orphan)) {
        Err(RemoteError::Refused(Code::NotFound, _)) => {}
        other => panic!("no such chain: {other:?}"),
    }
    // A subscription by a key that is not a reader is refused.
    let mut sub = client.subscribe(chain, 1, stranger.clone(), None);
    match rt.block_on(sub.next()) {
        Err(RemoteError::Refused(Code::PermissionDenied, _)) => {}
        other => panic!("a stranger's subscription: {other:?}"),
    }
    // So is a stranger's snapshot download; the owner's is refused while no snapshot holds
    // the chain (this cluster never takes one) and says what to do instead.
    let scratch = ate::storage::MemStorage::new();
    let out = ate::storage::Storage::open(&scratch, "img", true).unwrap();
    match rt.block_on(client.fetch_snapshot(chain, &stranger, out.as_ref())) {
        Err(RemoteError::Refused(Code::PermissionDenied, _)) => {}
        other => panic!("a stranger's snapshot download: {other:?}"),
    }
    match rt.block_on(client.fetch_snapshot(chain, &owner, out.as_ref())) {
        Err(RemoteError::Refused(Code::FailedPrecondition, m)) => {
            assert!(m.contains("subscribe from index 1"), "{m}")
        }
        other => panic!("a snapshot before there is one: {other:?}"),
    }
    // The owner reads both transactions back.
    let owner_again = owner.clone();
    let mut sub = client.subscribe(chain, 1, owner, None);
    assert_eq!(rt.block_on(sub.next()).unwrap().0, 1);
    let (i, bytes) = rt.block_on(sub.next()).unwrap();
    assert_eq!((i, bytes), (2, tx));

    // Info counts what was committed; only an owner may delete the chain, and then it is gone.
    let info = rt.block_on(client.info(chain)).unwrap();
    assert_eq!((info.index, info.quota_bytes), (2, 1 << 20));
    assert!(info.used_bytes > 0 && info.records >= 1, "{info:?}");
    match rt.block_on(client.delete(chain, &ate::SigningKey::generate())) {
        Err(RemoteError::Refused(Code::PermissionDenied, _)) => {}
        other => panic!("a stranger's delete: {other:?}"),
    }

    // Health and metrics.
    let (status, body) = cluster.http_get(0, "/health");
    assert!(status.contains("200"), "{status} {body}");
    let (_, metrics) = cluster.http_get(0, "/metrics");
    assert!(metrics.contains("atefs_raft_term{partition=\"0\"}"));
    assert!(metrics.contains("atefs_stored_bytes"));
    // Records in memory, summed over partitions: the leader applied both commits before it
    // acknowledged them (a follower may be behind it, never ahead).
    let records = (0..cluster.replicas.len())
        .map(|i| {
            let (_, m) = cluster.http_get(i, "/metrics");
            m.lines()
                .filter_map(|l| l.strip_prefix("atefs_records{")?.split_once("} "))
                .map(|(_, n)| n.parse::<u64>().unwrap())
                .sum::<u64>()
        })
        .max();
    assert_eq!(records, Some(info.records));
    // Every replica appended; the chain's leader timed its replication to both followers.
    // The labels of the series of `name` whose count is not 0.
    let counted = |text: &str, name: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.split_once("} "))
            .filter(|(_, n)| n.parse::<u64>().is_ok_and(|n| n > 0))
            .map(|(labels, _)| labels.to_string())
            .collect()
    };
    let mut followers_timed = 0;
    for i in 0..cluster.replicas.len() {
        let (_, m) = cluster.http_get(i, "/metrics");
        assert!(
            !counted(&m, "atefs_raft_append_seconds_count{").is_empty(),
            "replica {i} timed no append:\n{m}"
        );
        let peers: std::collections::BTreeSet<String> =
            counted(&m, "atefs_raft_replicate_seconds_count{")
                .iter()
                .filter_map(|l| Some(l.split_once("peer=")?.1.to_string()))
                .collect();
        followers_timed = followers_timed.max(peers.len());
    }
    assert_eq!(
        followers_timed, 2,
        "the leader times its replication to each follower"
    );

    // No replica's data holds the name or the content.
    drop(sub);
    let mut checked = 0;
    for r in &cluster.replicas {
        for f in files_under(&r.data) {
            let bytes = std::fs::read(&f).unwrap();
            for needle in [&secret_name[..], &secret_body[..]] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds plaintext",
                    f.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} files checked");

    rt.block_on(client.delete(chain, &owner_again)).unwrap();
    match rt.block_on(client.info(chain)) {
        Err(RemoteError::Refused(Code::NotFound, _)) => {}
        other => panic!("info after delete: {other:?}"),
    }
}

/// CommitBatch: a writer's queue in one call. Each transaction gets its own answer, in order
/// (the valid ones at increasing indexes, a forged and a garbage one refused with their own
/// codes without failing the rest); sending the same batch again (a retry after a lost answer)
/// returns the same indexes; an empty batch is refused as a whole; the chain holds exactly
/// the valid transactions, in batch order.
#[test]
fn a_batch_commits_in_order_with_an_answer_each_and_retries_are_deduplicated() {
    let cluster = Cluster::start(true, 1_000_000);
    let rt = rt();
    let client = cluster.client(Duration::from_secs(20));
    let (chain, owner, genesis) = new_chain();
    rt.block_on(client.create(chain, 1 << 30, genesis)).unwrap();
    let key = DataKey::generate();
    let stranger = ate::SigningKey::generate();
    let mut batch = Vec::new();
    for i in 0..40u32 {
        batch.push(match i {
            13 => put_tx(chain, &stranger, &key, b"forged", b"no"),
            27 => vec![7, 7, 7],
            _ => put_tx(chain, &owner, &key, format!("n{i}").as_bytes(), b"v"),
        });
    }
    let first = rt
        .block_on(client.commit_batch(chain, batch.clone()))
        .unwrap();
    assert_eq!(first.len(), batch.len());
    let mut last = 1; // genesis
    for (i, r) in first.iter().enumerate() {
        match (i, r) {
            (13, Err(RemoteError::Refused(Code::PermissionDenied, _))) => {}
            (27, Err(RemoteError::Refused(Code::InvalidArgument, _))) => {}
            (13 | 27, other) => panic!("tx {i}: {other:?}"),
            (_, Ok(index)) => {
                assert_eq!(*index, last + 1, "tx {i} out of order");
                last = *index;
            }
            (_, Err(e)) => panic!("tx {i}: {e}"),
        }
    }
    let again = rt
        .block_on(client.commit_batch(chain, batch.clone()))
        .unwrap();
    let indexes = |v: &[Result<u64, RemoteError>]| -> Vec<Option<u64>> {
        v.iter().map(|r| r.as_ref().ok().copied()).collect()
    };
    assert_eq!(indexes(&again), indexes(&first), "a retried batch");
    match rt.block_on(client.commit_batch(chain, Vec::new())) {
        Err(RemoteError::Refused(Code::InvalidArgument, _)) => {}
        other => panic!("empty batch: {other:?}"),
    }
    let info = rt.block_on(client.info(chain)).unwrap();
    assert_eq!(info.index, last);
    let mut sub = client.subscribe(chain, 2, owner, None);
    for (i, tx) in batch.iter().enumerate() {
        if i == 13 || i == 27 {
            continue;
        }
        let (index, bytes) = rt.block_on(sub.next()).unwrap();
        assert_eq!(Some(index), first[i].as_ref().ok().copied());
        assert!(&bytes == tx, "tx {i} differs");
    }
}

/// Several writers commit 4 MiB transactions at once. openraft sent up to 32 of them in one
/// AppendEntries: more than a gRPC message may hold (and than a follower writes in the one
/// heartbeat openraft waits), so it was refused, sent again, and the followers never caught
/// up. Now a request carries at most 8 MiB and one that outlives its heartbeat is waited for:
/// every commit is acknowledged and every replica applies them all.
#[test]
fn large_commits_from_several_writers_replicate_in_requests_that_fit_the_heartbeat() {
    let cluster = Cluster::start(false, 1_000_000);
    let rt = rt();
    let client = Arc::new(cluster.client(Duration::from_secs(60)));
    let (chain, owner, genesis) = new_chain();
    rt.block_on(client.create(chain, 1 << 32, genesis)).unwrap();
    let p = chain_server::node::partition_of(&chain, 2);
    let key = DataKey::generate();
    let value = vec![0x5a; 4 << 20];
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, owner, key, value) =
                (client.clone(), owner.clone(), key.clone(), value.clone());
            rt.spawn(async move {
                let mut last = 0;
                for i in 0..8 {
                    let name = format!("w{w}-{i}");
                    let tx = put_tx(chain, &owner, &key, name.as_bytes(), &value);
                    last = last.max(client.commit(chain, tx).await.unwrap());
                }
                last
            })
        })
        .collect();
    let last = writers
        .into_iter()
        .map(|w| rt.block_on(w).unwrap())
        .max()
        .unwrap();
    assert_eq!(last, 1 + 4 * 8, "every commit has its own index");
    for r in 0..3 {
        assert!(
            cluster.wait_applied(r, p, last, Duration::from_secs(60)),
            "replica {r} applied only up to {}: {}",
            cluster.gauge(r, "atefs_raft_applied_index", p),
            cluster.log_tail(r)
        );
    }
}

/// A follower that was down catches up in requests of large entries; while it appends one,
/// its leader sends it the entries of the next (Stage), and the next request names them
/// instead of carrying them again.
#[test]
fn a_follower_catching_up_is_sent_the_next_entries_while_it_appends() {
    let mut cluster = Cluster::start(false, 1_000_000);
    let rt = rt();
    let client = cluster.client(Duration::from_secs(60));
    let (chain, owner, genesis) = new_chain();
    rt.block_on(client.create(chain, 1 << 32, genesis)).unwrap();
    let p = chain_server::node::partition_of(&chain, 2);
    let leader = cluster.leader_of(p).expect("the partition has a leader");
    let down = (leader + 1) % 3;
    cluster.kill(down);
    let key = DataKey::generate();
    let value = vec![0xa5; 4 << 20];
    let mut last = 0;
    for i in 0..24 {
        let tx = put_tx(chain, &owner, &key, format!("n{i}").as_bytes(), &value);
        last = rt.block_on(client.commit(chain, tx)).unwrap();
    }
    cluster.spawn(down, false);
    assert!(
        cluster.wait_applied(down, p, last, Duration::from_secs(60)),
        "the follower applied only up to {}: {}",
        cluster.gauge(down, "atefs_raft_applied_index", p),
        cluster.log_tail(down)
    );
    let staged = cluster.gauge(down, "atefs_raft_staged_entries_total", p);
    assert!(staged > 0, "no entry came ahead of its request");
}

/// Writer sessions: what a session committed comes back to that session's subscription as
/// its hash only, and in full to every other subscriber; a session that is not 16 bytes is
/// refused.
#[test]
fn a_writers_own_transactions_come_back_to_its_session_by_hash() {
    let cluster = Cluster::start(false, 1_000_000);
    let rt = rt();
    let client = cluster.client(Duration::from_secs(20));
    let (chain, owner, genesis) = new_chain();
    rt.block_on(client.create(chain, 1 << 30, genesis)).unwrap();
    let key = DataKey::generate();
    let (ours, theirs) = (Session::random(), Session::random());
    let t: Vec<Vec<u8>> = (0..5)
        .map(|i| put_tx(chain, &owner, &key, format!("n{i}").as_bytes(), b"v"))
        .collect();
    // Chain indexes 2: ours, 3: no session, 4 and 5: ours in a batch, 6: another session's.
    rt.block_on(client.commit_from(chain, t[0].clone().into(), Some(ours)))
        .unwrap();
    rt.block_on(client.commit(chain, t[1].clone())).unwrap();
    let batch = vec![t[2].clone().into(), t[3].clone().into()];
    let r = rt
        .block_on(client.commit_batch_from(chain, batch, Some(ours)))
        .unwrap();
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    rt.block_on(client.commit_from(chain, t[4].clone().into(), Some(theirs)))
        .unwrap();

    let mut sub = client.subscribe(chain, 2, owner.clone(), Some(ours));
    for (i, tx) in t.iter().enumerate() {
        let (index, event) = rt.block_on(sub.next_event()).unwrap();
        assert_eq!(index, i as u64 + 2);
        let want = match i {
            0 | 2 | 3 => Event::Own(Transaction::decode(tx).unwrap().hash()),
            _ => Event::Tx(tx.clone().into()),
        };
        assert_eq!(event, want, "tx {i}");
    }
    let mut everyone = client.subscribe(chain, 2, owner.clone(), None);
    for (i, tx) in t.iter().enumerate() {
        let (index, bytes) = rt.block_on(everyone.next()).unwrap();
        assert_eq!((index, &bytes), (i as u64 + 2, tx), "tx {i}");
    }

    let mut raw = rt
        .block_on(ChainsClient::connect(format!(
            "http://{}",
            cluster.endpoints()[0]
        )))
        .unwrap();
    let req = CommitRequest {
        chain: chain.0.to_vec(),
        tx: t[0].clone().into(),
        session: vec![1, 2, 3],
    };
    match rt.block_on(raw.commit(req)) {
        Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{s:?}"),
        Ok(r) => panic!("a 3-byte session was accepted: {r:?}"),
    }
}

/// Info names the chain's genesis (the hash of its first transaction): a subscription that
/// carries it is served, one that carries another genesis is refused as a chain made again
/// (`FAILED_PRECONDITION`) whichever replica is asked (a follower, which may only lag, sends
/// it to the leader), and a genesis that is not 32 bytes is `INVALID_ARGUMENT`.
#[test]
fn a_subscription_names_the_genesis_of_the_chain_it_read() {
    let cluster = Cluster::start(false, 1_000_000);
    let rt = rt();
    let client = cluster.client(Duration::from_secs(20));
    let (chain, owner, genesis) = new_chain();
    let hash = Transaction::decode(&genesis).unwrap().hash();
    rt.block_on(client.create(chain, 1 << 30, genesis)).unwrap();
    let info = rt.block_on(client.info(chain)).unwrap();
    assert_eq!(info.genesis, hash.0.to_vec());

    let mut sub = client
        .subscribe(chain, 1, owner.clone(), None)
        .of_genesis(Some(hash));
    assert_eq!(rt.block_on(sub.next()).unwrap().0, 1);
    for at in 0..3 {
        let one = cluster.client_of(
            vec![cluster.endpoints()[at].clone()],
            Duration::from_secs(20),
        );
        let mut other = one
            .subscribe(chain, 1, owner.clone(), None)
            .of_genesis(Some(ate::TxHash([9; 32])));
        match rt.block_on(other.next()) {
            Err(RemoteError::Refused(Code::FailedPrecondition, why)) => {
                assert!(why.contains("made again"), "{why}")
            }
            r => panic!("replica {at}: another genesis was served: {r:?}"),
        }
    }

    let mut raw = rt
        .block_on(ChainsClient::connect(format!(
            "http://{}",
            cluster.endpoints()[0]
        )))
        .unwrap();
    let nonce = rt
        .block_on(raw.challenge(ChallengeRequest {}))
        .unwrap()
        .into_inner()
        .nonce;
    let req = SubscribeRequest {
        chain: chain.0.to_vec(),
        from_index: 1,
        signature: owner
            .sign(&ate::remote::subscribe_digest(&chain, &nonce, 1))
            .to_vec(),
        nonce,
        reader_key: owner.public().0.to_vec(),
        session: Vec::new(),
        genesis: vec![1, 2, 3],
    };
    match rt.block_on(raw.subscribe(req)) {
        Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{s:?}"),
        Ok(_) => panic!("a 3-byte genesis was accepted"),
    }
}

/// A remote chain's cache holds what it sent until it comes back by hash. A transaction of
/// its session that it does not hold (here committed by another client in that session)
/// makes it fetch that one in full: the cache still gets everything, in order, and its own
/// commits go on working and coming back by hash.
#[test]
fn a_cache_that_does_not_hold_its_sessions_transaction_fetches_it_in_full() {
    let cluster = Cluster::start(false, 1_000_000);
    let rt = rt();
    let client = cluster.client(Duration::from_secs(20));
    let (chain, owner, genesis) = new_chain();
    rt.block_on(client.create(chain, 1 << 30, genesis)).unwrap();
    let session = Session::random();
    let cache: Arc<dyn ate::storage::Storage> = Arc::new(ate::storage::MemStorage::new());
    let remote = ate::remote::open_remote_in_session(
        cluster.client(Duration::from_secs(20)),
        chain,
        owner.clone(),
        cache,
        None,
        session,
    )
    .unwrap();
    let key = DataKey::generate();
    let put = |name: &str| {
        let mut tx = Transaction::new(chain, owner.public());
        let rk = ate::RecordKey(
            *blake3::hash(name.as_bytes())
                .as_bytes()
                .first_chunk()
                .unwrap(),
        );
        tx.ops.push(ate::Op::put(
            &chain,
            rk,
            None,
            ate::WriteAuthority::Inherit,
            Some(&key),
            name.as_bytes(),
        ));
        (rk, tx)
    };
    let (rk1, tx1) = put("own, sent by the cache");
    let first = remote.chain.sign_and_commit(tx1, &owner).unwrap();
    let (rk2, tx2) = put("in the session, sent by someone else");
    let foreign = rt
        .block_on(client.commit_from(chain, tx2.sign(&owner).encode().into(), Some(session)))
        .unwrap();
    assert_eq!(foreign, first.index + 1);
    assert_eq!(remote.chain.sync_upstream().unwrap(), foreign);
    let (rk3, tx3) = put("own again");
    let third = remote.chain.sign_and_commit(tx3, &owner).unwrap();
    assert_eq!(third.index, foreign + 1);
    for (rk, name) in [
        (rk1, "own, sent by the cache"),
        (rk2, "in the session, sent by someone else"),
        (rk3, "own again"),
    ] {
        let (_, plain) = remote.chain.read_plain(&rk, &key).unwrap().expect(name);
        assert_eq!(plain, name.as_bytes());
    }
    // Only that one went in full: the cache's next commits come back by hash again (before
    // session 29 everything did in full from then on, its size again on the link).
    let by_hash = || -> u64 {
        (0..3)
            .flat_map(|i| (0..2).map(move |p| (i, p)))
            .map(|(i, p)| cluster.gauge(i, "atefs_subscribe_sent_own_total", p))
            .sum()
    };
    let before = by_hash();
    for n in 0..3 {
        let (_, tx) = put(&format!("own, later {n}"));
        remote.chain.sign_and_commit(tx, &owner).unwrap();
    }
    assert!(by_hash() >= before + 3, "{before} -> {}", by_hash());
}

/// A new chain of `cluster` and a cache following it whose client gives up after 2 s.
struct Followed {
    chain: ate::ChainId,
    owner: ate::SigningKey,
    key: DataKey,
    remote: ate::remote::RemoteChain,
}

impl Followed {
    fn open(cluster: &Cluster) -> Followed {
        Self::open_with(cluster, Duration::from_secs(2))
    }

    /// As [`Followed::open`], with a client that gives up after `deadline`.
    fn open_with(cluster: &Cluster, deadline: Duration) -> Followed {
        let client = cluster.client(deadline);
        let (chain, owner, genesis) = new_chain();
        rt().block_on(client.create(chain, 1 << 30, genesis))
            .unwrap();
        let cache: Arc<dyn ate::storage::Storage> = Arc::new(ate::storage::MemStorage::new());
        let remote =
            ate::remote::open_remote(cluster.client(deadline), chain, owner.clone(), cache, None)
                .unwrap();
        Followed {
            chain,
            owner,
            key: DataKey::generate(),
            remote,
        }
    }

    /// A transaction putting "value" under the record named by `i`.
    fn put(&self, i: u32) -> Transaction {
        let tx = put_tx(
            self.chain,
            &self.owner,
            &self.key,
            &i.to_le_bytes(),
            b"value",
        );
        Transaction::decode(&tx).unwrap()
    }
}

/// While a cache cannot reach its cluster (here every replica is gone for longer than the
/// client's deadline), its commits fail at once with the reason instead of each waiting out
/// the deadline, and what had landed stays readable; once the cluster is back the cache
/// follows again by itself: commits land, and other writers' commits made meanwhile arrive.
/// (Before session 29 the follower gave up for good and only a remount helped.)
#[test]
fn a_cache_cut_off_from_its_cluster_follows_again_once_it_is_back() {
    let mut cluster = Cluster::start(false, 1_000_000);
    let f = Followed::open(&cluster);
    let (owner, key, remote) = (&f.owner, &f.key, &f.remote);
    let put = |i: u32| f.put(i);
    remote.chain.sign_and_commit(put(0), owner).unwrap();
    for i in 0..3 {
        cluster.kill(i);
    }
    // Each failed commit waits out the 2 s deadline until the follower's own reconnects
    // give up (also after 2 s); from then on the reason is the lapsed follower.
    let mut errors = Vec::new();
    for i in 1..=10 {
        let e = remote.chain.sign_and_commit(put(i), owner).unwrap_err();
        let lapsed = e.to_string().contains("not following the chain");
        errors.push(e.to_string());
        if lapsed {
            break;
        }
    }
    let last = errors.last().unwrap();
    assert!(
        last.contains("not following the chain") && last.contains("reconnecting"),
        "{errors:#?}"
    );
    assert!(remote.lapse().is_some());
    let rk = |i: u32| {
        ate::RecordKey(
            *blake3::hash(&i.to_le_bytes())
                .as_bytes()
                .first_chunk()
                .unwrap(),
        )
    };
    let (_, plain) = remote.chain.read_plain(&rk(0), key).unwrap().unwrap();
    assert_eq!(plain, b"value");

    for i in 0..3 {
        cluster.spawn(i, false);
    }
    // Another writer commits before the cache is back.
    let other = cluster.client(Duration::from_secs(20));
    let tx = put_tx(
        f.chain,
        owner,
        key,
        &1000u32.to_le_bytes(),
        b"from elsewhere",
    );
    let theirs = rt().block_on(other.commit(f.chain, tx)).unwrap();
    assert!(
        remote.wait_following(Duration::from_secs(30)),
        "the cache never followed again: {:?}",
        remote.lapse()
    );
    let r = remote.chain.sign_and_commit(put(11), owner).unwrap();
    assert!(r.index > theirs);
    assert!(remote.chain.wait_for(theirs, Duration::from_secs(10)));
    let (_, plain) = remote.chain.read_plain(&rk(1000), key).unwrap().unwrap();
    assert_eq!(plain, b"from elsewhere");
    let (_, plain) = remote.chain.read_plain(&rk(11), key).unwrap().unwrap();
    assert_eq!(plain, b"value");
}

/// A leader that freezes (SIGSTOP: a stalled VM, a hung disk) keeps its connections open
/// and silent. The others elect a new leader and go on; a cache subscribed to the frozen one
/// finds its stream dead by the keepalive pings and follows the new leader, and its own
/// commits land there. Before session 29 the subscription waited on the silent stream (TCP
/// would have given up after a quarter of an hour), and the cache saw nothing new.
#[test]
fn a_cache_subscribed_to_a_frozen_leader_follows_the_new_one() {
    let cluster = Cluster::start(false, 1_000_000);
    let f = Followed::open_with(&cluster, Duration::from_secs(20));
    let (chain, owner, key, remote) = (f.chain, &f.owner, &f.key, &f.remote);
    remote.chain.sign_and_commit(f.put(0), owner).unwrap();

    let p = chain_server::node::partition_of(&chain, 2);
    let leader = cluster.leader_of(p).unwrap();
    let _frozen = Stopped::stop(cluster.pid(leader).unwrap());
    let others: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| cluster.replicas[i].api.clone())
        .collect();
    let other = cluster.client_of(others, Duration::from_secs(30));
    let tx = put_tx(chain, owner, key, &1000u32.to_le_bytes(), b"theirs");
    let theirs = rt().block_on(other.commit(chain, tx)).unwrap();
    assert!(
        remote.chain.wait_for(theirs, Duration::from_secs(40)),
        "the cache never saw index {theirs}: it is at {} ({:?})",
        remote.chain.last_index(),
        remote.lapse()
    );
    let mine = remote.chain.sign_and_commit(f.put(1), owner).unwrap();
    assert!(mine.index > theirs);
}

/// CommitStream (a writer's pipeline): transactions land in the order sent, with an answer
/// each in that order (a forged one refused without ending the stream), several in flight;
/// kill -9 of the leader in the middle loses nothing: the pipe opens a stream at the new
/// leader, sends what was unanswered again, and the chain ends up holding every valid
/// transaction exactly once, in the order sent.
#[test]
fn a_commit_stream_lands_in_order_and_survives_the_leaders_death() {
    let mut w = WithChain::start();
    let (chain, rt) = (w.chain, &w.rt);
    let stranger = ate::SigningKey::generate();
    let txs: Vec<Vec<u8>> = (0..120u32)
        .map(|i| match i {
            17 => put_tx(chain, &stranger, &w.key, b"forged", b"no"),
            _ => put_tx(
                chain,
                &w.owner,
                &w.key,
                format!("s{i}").as_bytes(),
                &[i as u8; 20_000],
            ),
        })
        .collect();
    let (feed, rx) = tokio::sync::mpsc::channel::<(bytes::Bytes, usize)>(1);
    let (answered, answers) = std::sync::mpsc::channel();
    let pipe = {
        let client = w.client.clone();
        rt.spawn(async move {
            client
                .commit_pipe(chain, None, rx, |i, r| answered.send((i, r)).unwrap())
                .await
        })
    };
    let mut results = Vec::new();
    for (i, tx) in txs.iter().enumerate() {
        rt.block_on(feed.send((tx.clone().into(), i))).unwrap();
        if i == 60 {
            // Wait for some answers, then kill the leader with more in flight.
            while results.len() < 40 {
                results.push(answers.recv().unwrap());
            }
            let leader = w.cluster.leader_of(w.p).expect("a leader");
            w.cluster.kill(leader);
        }
    }
    drop(feed);
    rt.block_on(pipe).unwrap();
    results.extend(answers.iter());
    assert_eq!(results.len(), txs.len());
    let mut last = 1; // genesis
    for (n, (i, r)) in results.iter().enumerate() {
        assert_eq!(*i, n, "answers in the order sent");
        match (i, r) {
            (17, Err(RemoteError::Refused(Code::PermissionDenied, _))) => {}
            (17, other) => panic!("forged tx: {other:?}"),
            (_, Ok(index)) => {
                assert!(
                    *index > last,
                    "tx {i} at {index}, after {last}: out of order"
                );
                last = *index;
            }
            (_, Err(e)) => panic!("tx {i}: {e}"),
        }
    }
    // The chain holds each valid transaction once, in order (nothing else was committed).
    let info = rt.block_on(w.client.info(chain)).unwrap();
    assert_eq!(
        info.index,
        1 + txs.len() as u64 - 1,
        "one forged, none twice"
    );
    let mut sub = w.client.subscribe(chain, 2, w.owner.clone(), None);
    for (i, tx) in txs.iter().enumerate().filter(|(i, _)| *i != 17) {
        let (index, bytes) = rt.block_on(sub.next()).unwrap();
        assert_eq!(Some(index), results[i].1.as_ref().ok().copied());
        assert!(&bytes == tx, "tx {i} differs");
    }
}

/// Bad commit streams get the right status: a follower refuses one with the leader's address,
/// an empty one and one naming no valid chain are INVALID_ARGUMENT, and a request of another
/// chain in the middle of a stream is refused in its own answer while the others land.
#[test]
fn bad_commit_streams_are_refused_with_the_right_codes() {
    let WithChain {
        cluster,
        rt,
        chain,
        owner,
        p,
        key,
        ..
    } = WithChain::start();
    let leader = cluster.leader_of(p).expect("a leader");
    let follower = (leader + 1) % 3;
    let request = |chain: &[u8], name: &str| CommitRequest {
        chain: chain.to_vec(),
        tx: put_tx(
            ate::ChainId(chain.try_into().unwrap_or([0; 16])),
            &owner,
            &key,
            name.as_bytes(),
            b"v",
        )
        .into(),
        session: Vec::new(),
    };
    let open = |i: usize, reqs: Vec<CommitRequest>| {
        rt.block_on(async {
            let mut c = ChainsClient::connect(format!("http://{}", cluster.endpoints()[i]))
                .await
                .unwrap();
            match c.commit_stream(tokio_stream::iter(reqs)).await {
                Ok(answers) => {
                    let mut answers = answers.into_inner();
                    let mut got = Vec::new();
                    while let Some(a) = answers.message().await.unwrap() {
                        got.push(a);
                    }
                    Ok(got)
                }
                Err(s) => Err(s),
            }
        })
    };
    match open(follower, vec![request(&chain.0, "f")]) {
        Err(s) if s.code() == Code::Unavailable => {
            let named = s.metadata().get(chain_server::api::LEADER_HEADER).unwrap();
            assert_eq!(named.to_str().unwrap(), cluster.endpoints()[leader]);
        }
        other => panic!("a follower's stream: {other:?}"),
    }
    match open(leader, Vec::new()) {
        Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{s:?}"),
        other => panic!("an empty stream: {other:?}"),
    }
    match open(leader, vec![request(&[1, 2, 3], "short")]) {
        Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{s:?}"),
        other => panic!("a bad chain id: {other:?}"),
    }
    let other = [9u8; 16];
    let answers = open(
        leader,
        vec![
            request(&chain.0, "a"),
            request(&other, "b"),
            request(&chain.0, "c"),
        ],
    )
    .unwrap();
    let codes: Vec<i32> = answers.iter().map(|a| a.code).collect();
    assert_eq!(codes, vec![0, Code::InvalidArgument as i32, 0]);
    assert!(answers[2].index > answers[0].index);
}

/// SetQuota (a volume's expansion): only an owner sets it, never below what the chain holds;
/// commits the old quota refused then land; the new quota is in the replicated log, so it
/// holds when every replica restarts.
#[test]
fn an_owner_sets_a_chains_quota_and_it_survives_a_restart() {
    let mut cluster = Cluster::start(false, 1_000_000);
    let rt = rt();
    let client = cluster.client(Duration::from_secs(30));
    let (chain, owner, genesis) = new_chain();
    rt.block_on(client.create(chain, 4096, genesis)).unwrap();
    let key = DataKey::generate();
    let big = put_tx(chain, &owner, &key, b"big", &[7u8; 8192]);
    match rt.block_on(client.commit(chain, big.clone())) {
        Err(RemoteError::Refused(Code::ResourceExhausted, _)) => {}
        other => panic!("a commit past the quota: {other:?}"),
    }

    let stranger = ate::SigningKey::generate();
    match rt.block_on(client.set_quota(chain, 1 << 20, &stranger)) {
        Err(RemoteError::Refused(Code::PermissionDenied, _)) => {}
        other => panic!("a stranger's quota: {other:?}"),
    }
    let (missing, _, _) = new_chain();
    match rt.block_on(client.set_quota(missing, 1 << 20, &owner)) {
        Err(RemoteError::Refused(Code::NotFound, _)) => {}
        other => panic!("the quota of no chain: {other:?}"),
    }
    let used = rt
        .block_on(client.set_quota(chain, 1 << 20, &owner))
        .unwrap();
    assert_eq!(used, 0, "a genesis holds no record");
    assert_eq!(rt.block_on(client.commit(chain, big)).unwrap(), 2);
    let info = rt.block_on(client.info(chain)).unwrap();
    assert_eq!(info.quota_bytes, 1 << 20);
    assert!(info.used_bytes > 8192, "{info:?}");

    match rt.block_on(client.set_quota(chain, 8192, &owner)) {
        Err(RemoteError::Refused(Code::OutOfRange, m)) => {
            assert!(m.contains("more than a quota of 8192"), "{m}")
        }
        other => panic!("a quota below the chain's bytes: {other:?}"),
    }
    // Shrinking to exactly what it holds is allowed.
    let held = rt
        .block_on(client.set_quota(chain, info.used_bytes, &owner))
        .unwrap();
    assert_eq!(held, info.used_bytes);
    rt.block_on(client.set_quota(chain, 3 << 20, &owner))
        .unwrap();

    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.spawn(i, false);
    }
    let info = rt.block_on(client.info(chain)).unwrap();
    assert_eq!((info.index, info.quota_bytes), (2, 3 << 20));
}

/// A cache follows its chain through a loss of quorum longer than its client's deadline,
/// as long as one replica answers: the subscription is served from what that replica has and
/// goes live again with quorum, so commits land afterwards. (With no replica answering for that
/// long: `a_cache_cut_off_from_its_cluster_follows_again_once_it_is_back`.)
#[test]
fn a_cache_follows_its_chain_through_a_loss_of_quorum() {
    let mut cluster = Cluster::start(false, 1_000_000);
    let f = Followed::open(&cluster);
    let (chain, owner, remote) = (f.chain, &f.owner, &f.remote);
    let put = |i: u32| f.put(i);
    remote.chain.sign_and_commit(put(0), owner).unwrap();
    // Two of three gone for twice the client's deadline: the follower's reconnects find
    // only the third, which has no quorum.
    let p = chain_server::node::partition_of(&chain, 2);
    let survivor = cluster.leader_of(p).map_or(0, |l| (l + 1) % 3);
    let gone: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();
    for &i in &gone {
        cluster.kill(i);
    }
    std::thread::sleep(Duration::from_secs(4));
    for &i in &gone {
        cluster.spawn(i, false);
    }
    let mut landed = None;
    for i in 1..=10 {
        match remote.chain.sign_and_commit(put(i), owner) {
            Ok(r) => {
                landed = Some(r);
                break;
            }
            Err(e) => assert!(
                !e.to_string().contains("for good"),
                "the follower gave up: {e}"
            ),
        }
    }
    assert!(landed.is_some(), "no commit landed after quorum returned");
}

/// A read after every replica restarts sees every acknowledged commit. A replica that led
/// before it stopped leads again at once in the same term, and openraft's read index was then
/// the commit index saved last, behind the snapshot's entries replayed since: Info answered
/// index 38 for a chain at 51 (snapshots every 20 entries), until the leader's replication
/// caught up seconds later.
#[test]
fn a_read_after_every_replica_restarts_sees_every_acknowledged_commit() {
    let WithChain {
        mut cluster,
        rt,
        client,
        chain,
        owner,
        key,
        ..
    } = WithChain::on(Cluster::start(false, 20), 1 << 30);
    let mut last = 0;
    for i in 0..50u8 {
        let tx = put_tx(chain, &owner, &key, b"file", &[i; 1024]);
        last = rt.block_on(client.commit(chain, tx)).unwrap();
    }
    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.spawn(i, false);
    }
    // The close-to-open barrier first (the first read after the restart), then Info.
    assert_eq!(rt.block_on(client.barrier(chain)).unwrap(), last);
    assert_eq!(rt.block_on(client.info(chain)).unwrap().index, last);
}
