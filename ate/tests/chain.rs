//! Chain behaviour: commits, reads, reopen, subscriptions, compaction, and every rejection.
#![allow(clippy::unwrap_used)]

mod common;

use ate::redo::LogError;
use ate::storage::{FileStorage, Storage};
use ate::validate::ValidationError;
use ate::{
    ChainError, Op, Precondition, Role, RootAuthority, SigningKey, Transaction, WriteAuthority,
};
use common::{key, Fixture};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn commit_read_reopen_on_disk() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()).unwrap());
    {
        let chain = f.open(&storage);
        chain
            .commit(f.genesis(RootAuthority::single_owner(f.owner.public())))
            .unwrap();
        chain
            .commit(f.put(&f.owner, key(1), None, b"root"))
            .unwrap();
        let r = chain
            .commit(f.put(&f.owner, key(2), Some(key(1)), b"child"))
            .unwrap();
        assert_eq!(r.index, 3);
        assert_eq!(chain.children(&key(1)), vec![key(2)]);
    }
    let chain = f.open(&storage);
    assert_eq!(chain.last_index(), 3);
    assert_eq!(
        chain.read_plain(&key(2), &f.data).unwrap().unwrap().1,
        b"child"
    );
    assert_eq!(chain.record(&key(2)).unwrap().version, 1);
    assert_eq!(chain.children(&key(1)), vec![key(2)]);
}

fn assert_rejected(chain: &ate::Chain, tx: Transaction, pred: impl Fn(&ValidationError) -> bool) {
    let before = chain.stats();
    match chain.commit(tx) {
        Err(ChainError::Rejected(e)) => assert!(pred(&e), "unexpected rejection {e}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        chain.stats(),
        before,
        "a rejected transaction changed the chain"
    );
}

#[test]
fn forged_and_missing_signatures_are_refused() {
    let f = Fixture::new();
    let (_, chain) = f.mem_chain();
    let mut tx = f.put(&f.owner, key(1), None, b"x");
    tx.signature[0] ^= 1;
    assert_rejected(&chain, tx, |e| matches!(e, ValidationError::Signature(_)));
    let mut tx = f.put(&f.owner, key(1), None, b"x");
    tx.signature = [0; 64];
    assert_rejected(&chain, tx, |e| matches!(e, ValidationError::Signature(_)));
    // Signed by a stranger but claiming the owner as author.
    let mut tx = f.put(&SigningKey::generate(), key(1), None, b"x");
    tx.author = f.owner.public();
    assert_rejected(&chain, tx, |e| matches!(e, ValidationError::Signature(_)));
    // A body changed after signing.
    let mut tx = f.put(&f.owner, key(1), None, b"x");
    tx.nonce ^= 1;
    assert_rejected(&chain, tx, |e| matches!(e, ValidationError::Signature(_)));
}

#[test]
fn authority_is_enforced_and_inherited() {
    let f = Fixture::new();
    let writer = SigningKey::generate();
    let reader = SigningKey::generate();
    let delegate = SigningKey::generate();
    let (_, chain) = f.mem_chain();
    let root = RootAuthority::single_owner(f.owner.public())
        .with(writer.public(), Role::Writer)
        .with(reader.public(), Role::Reader);
    let mut tx = Transaction::new(f.chain_id, f.owner.public());
    tx.ops.push(Op::SetRoot(root));
    chain.commit(tx.sign(&f.owner)).unwrap();

    chain.commit(f.put(&writer, key(1), None, b"dir")).unwrap();
    assert_rejected(&chain, f.put(&reader, key(2), Some(key(1)), b"no"), |e| {
        matches!(e, ValidationError::NotAuthorized { .. })
    });
    assert_rejected(
        &chain,
        f.put(&SigningKey::generate(), key(2), None, b"no"),
        |e| matches!(e, ValidationError::NotAuthorized { .. }),
    );

    // Narrow key(10) to the delegate: the writer loses it, the delegate gains it and its children.
    let mut tx = Transaction::new(f.chain_id, writer.public());
    tx.ops.push(Op::put(
        &f.chain_id,
        key(10),
        Some(key(1)),
        WriteAuthority::Keys(vec![delegate.public().id()]),
        Some(&f.data),
        b"narrowed",
    ));
    chain.commit(tx.sign(&writer)).unwrap();
    assert_rejected(&chain, f.put(&writer, key(11), Some(key(10)), b"no"), |e| {
        matches!(e, ValidationError::NotAuthorized { .. })
    });
    assert_rejected(&chain, f.put(&writer, key(10), Some(key(1)), b"no"), |e| {
        matches!(e, ValidationError::NotAuthorized { .. })
    });
    chain
        .commit(f.put(&delegate, key(11), Some(key(10)), b"yes"))
        .unwrap();
    // The delegate cannot write outside its subtree, owners can write everywhere.
    assert_rejected(
        &chain,
        f.put(&delegate, key(12), Some(key(1)), b"no"),
        |e| matches!(e, ValidationError::NotAuthorized { .. }),
    );
    chain
        .commit(f.put(&f.owner, key(11), Some(key(10)), b"owner"))
        .unwrap();
    // Only owners change the root.
    let mut tx = Transaction::new(f.chain_id, writer.public());
    tx.ops
        .push(Op::SetRoot(RootAuthority::single_owner(writer.public())));
    assert_rejected(&chain, tx.sign(&writer), |e| {
        matches!(e, ValidationError::NotOwner(_))
    });
}

#[test]
fn preconditions_are_atomic() {
    let f = Fixture::new();
    let (_, chain) = f.mem_chain();
    chain.commit(f.put(&f.owner, key(1), None, b"v1")).unwrap();
    let mut tx = f.put(&f.owner, key(2), None, b"new");
    tx.preconditions.push(Precondition::Absent(key(1)));
    assert_rejected(&chain, tx.sign(&f.owner), |e| {
        matches!(e, ValidationError::Precondition(_))
    });
    let mut tx = f.put(&f.owner, key(1), None, b"v2");
    tx.preconditions.push(Precondition::AtVersion(key(1), 2));
    assert_rejected(&chain, tx.sign(&f.owner), |e| {
        matches!(e, ValidationError::Precondition(_))
    });
    let mut tx = f.put(&f.owner, key(1), None, b"v2");
    tx.preconditions.push(Precondition::AtVersion(key(1), 1));
    chain.commit(tx.sign(&f.owner)).unwrap();
    assert_eq!(
        chain.read_plain(&key(1), &f.data).unwrap().unwrap().1,
        b"v2"
    );
    // Two racing creates of one key: exactly one wins.
    let mk = || {
        let mut tx = f.put(&f.owner, key(5), None, b"race");
        tx.preconditions.push(Precondition::Absent(key(5)));
        tx.sign(&f.owner)
    };
    let (a, b) = (
        chain.commit_async(mk()).unwrap(),
        chain.commit_async(mk()).unwrap(),
    );
    let results = [a.wait().is_ok(), b.wait().is_ok()];
    assert_eq!(results.iter().filter(|r| **r).count(), 1);
}

#[test]
fn missing_parent_wrong_chain_and_bad_payload_are_refused() {
    let f = Fixture::new();
    let (_, chain) = f.mem_chain();
    assert_rejected(
        &chain,
        f.put(&f.owner, key(2), Some(key(99)), b"orphan"),
        |e| matches!(e, ValidationError::MissingParent { .. }),
    );
    let other = Fixture {
        chain_id: ate::ChainId::random(),
        owner: f.owner.clone(),
        data: f.data.clone(),
    };
    assert_rejected(&chain, other.put(&f.owner, key(1), None, b"x"), |e| {
        matches!(e, ValidationError::WrongChain { .. })
    });
    let mut tx = f.put(&f.owner, key(1), None, b"x");
    if let Op::Put { header, .. } = &mut tx.ops[0] {
        header.plain_len += 1;
    }
    assert_rejected(&chain, tx.sign(&f.owner), |e| {
        matches!(e, ValidationError::BadPayload { .. })
    });
    // A header without a payload names no cipher (one meaning, one encoding).
    let mut tx = Transaction::new(f.chain_id, f.owner.public());
    tx.ops.push(Op::put(
        &f.chain_id,
        key(1),
        None,
        WriteAuthority::Inherit,
        None,
        b"",
    ));
    if let Op::Put { header, .. } = &mut tx.ops[0] {
        header.cipher = ate::Cipher::Aes256Gcm;
    }
    assert_rejected(
        &chain,
        tx.sign(&f.owner),
        |e| matches!(e, ValidationError::BadPayload { reason, .. } if reason.contains("cipher")),
    );
}

#[test]
fn locally_built_transactions_beyond_the_decoder_bounds_are_refused_before_the_log() {
    let f = Fixture::new();
    let (_, chain) = f.mem_chain();
    let before = chain.stats();
    let mut tx = Transaction::new(f.chain_id, f.owner.public());
    tx.ops = (0..=ate::tx::MAX_OPS as u128)
        .map(|i| Op::Delete { key: key(1000 + i) })
        .collect();
    assert!(matches!(
        chain.sign_and_commit(tx, &f.owner),
        Err(ChainError::Rejected(ValidationError::TooLarge(_)))
    ));
    let mut tx = Transaction::new(f.chain_id, f.owner.public());
    tx.preconditions = (0..=ate::tx::MAX_PRECONDITIONS as u128)
        .map(|i| Precondition::Absent(key(i)))
        .collect();
    tx.ops.push(Op::Delete { key: key(1) });
    assert!(matches!(
        chain.sign_and_commit(tx, &f.owner),
        Err(ChainError::Rejected(ValidationError::TooLarge(_)))
    ));
    // Nine payloads at MAX_PAYLOAD pass every per-op check and exceed MAX_TX_BYTES together.
    let block = vec![7u8; ate::tx::MAX_PAYLOAD - ate::crypto::SEAL_OVERHEAD];
    let mut tx = Transaction::new(f.chain_id, f.owner.public());
    for i in 0..9 {
        tx.ops.push(Op::put(
            &f.chain_id,
            key(10 + i),
            None,
            WriteAuthority::Inherit,
            Some(&f.data),
            &block,
        ));
    }
    assert!(matches!(
        chain.sign_and_commit(tx, &f.owner),
        Err(ChainError::Rejected(ValidationError::TooLarge(_)))
    ));
    assert_eq!(
        chain.stats(),
        before,
        "a refused transaction changed the chain"
    );
}

#[test]
fn flipped_payload_bytes_fail_to_open_and_change_nothing() {
    let f = Fixture::new();
    let (_, chain) = f.mem_chain();
    // Flipping a sealed byte before signing: the chain accepts the (validly signed) bytes, but
    // nobody can open them, so the tampering cannot go unnoticed by readers.
    let mut tx = f.put(&f.owner, key(1), None, b"secret");
    if let Op::Put { payload, .. } = &mut tx.ops[0] {
        payload[30] ^= 0x80;
    }
    chain.commit(tx.sign(&f.owner)).unwrap();
    assert!(matches!(
        chain.read_plain(&key(1), &f.data),
        Err(ChainError::Crypto { .. })
    ));
    // Flipping after signing is a forged transaction.
    let mut tx = f.put(&f.owner, key(2), None, b"secret");
    if let Op::Put { payload, .. } = &mut tx.ops[0] {
        payload[30] ^= 0x80;
    }
    assert_rejected(&chain, tx, |e| matches!(e, ValidationError::Signature(_)));
    // The cipher a header names is bound to the payload: naming the other one (before
    // signing, so the transaction is valid) makes it unreadable, never read as something else.
    let mut tx = f.put(&f.owner, key(4), None, b"secret");
    if let Op::Put { header, .. } = &mut tx.ops[0] {
        assert_eq!(header.cipher, ate::Cipher::Aes256Gcm);
        header.cipher = ate::Cipher::XChaCha20Poly1305;
    }
    chain.commit(tx.sign(&f.owner)).unwrap();
    assert!(matches!(
        chain.read_plain(&key(4), &f.data),
        Err(ChainError::Crypto { .. })
    ));
    // A wrong data key fails too.
    chain.commit(f.put(&f.owner, key(3), None, b"ok")).unwrap();
    assert!(matches!(
        chain.read_plain(&key(3), &ate::DataKey::generate()),
        Err(ChainError::Crypto { .. })
    ));
}

#[test]
fn subscriptions_replay_history_then_follow_live_commits() {
    let f = Fixture::new();
    let (_, chain) = f.mem_chain();
    for i in 0..5 {
        chain.commit(f.put(&f.owner, key(i), None, b"h")).unwrap();
    }
    let mut sub = chain.subscribe(3).unwrap();
    let mut seen = Vec::new();
    while let Some((i, _)) = sub.next_timeout(Duration::ZERO).unwrap() {
        seen.push(i);
    }
    assert_eq!(seen, vec![3, 4, 5, 6]);
    let c2 = chain.clone();
    let writer = std::thread::spawn(move || {
        let f2 = f;
        c2.commit(f2.put(&f2.owner, key(100), None, b"live"))
            .unwrap()
    });
    let (i, tx) = sub.next_timeout(Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!(i, 7);
    assert_eq!(tx.ops[0].record_key(), Some(key(100)));
    assert_eq!(writer.join().unwrap().index, 7);
}

#[test]
fn compaction_keeps_every_record_and_reopens_from_the_snapshot() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()).unwrap());
    let chain = f.open(&storage);
    chain
        .commit(f.genesis(RootAuthority::single_owner(f.owner.public())))
        .unwrap();
    for round in 0..3u8 {
        for i in 0..50 {
            chain
                .commit(f.put(&f.owner, key(i), None, &[round; 100]))
                .unwrap();
        }
    }
    let mut tx = Transaction::new(f.chain_id, f.owner.public());
    tx.ops.push(Op::Delete { key: key(7) });
    chain.commit(tx.sign(&f.owner)).unwrap();
    let before = common::contents(&chain, (0..50).map(key), &f.data);
    let last = chain.compact().unwrap();
    assert_eq!(last, chain.last_index());
    assert!(matches!(
        chain.subscribe(2),
        Err(ChainError::Log(LogError::Compacted { .. }))
    ));
    assert_eq!(common::contents(&chain, (0..50).map(key), &f.data), before);
    chain
        .commit(f.put(&f.owner, key(1), None, b"after"))
        .unwrap();
    // Versions survive compaction, tombstones included.
    assert_eq!(chain.record(&key(7)).unwrap().version, 4);
    drop(chain);
    let chain = f.open(&storage);
    assert_eq!(
        chain.read_plain(&key(1), &f.data).unwrap().unwrap().1,
        b"after"
    );
    assert_eq!(chain.record(&key(7)).unwrap().version, 4);
    assert!(chain.record(&key(7)).unwrap().is_deleted());
    assert_eq!(chain.stats().snapshot, Some(last));
}

#[test]
fn commits_go_on_while_a_compaction_writes_its_snapshot() {
    let f = Fixture::new();
    // The compaction's first snapshot write waits until the commits below are done.
    let (faulty, plan) = ate::storage::FaultStorage::new(Arc::new(ate::storage::MemStorage::new()));
    let storage: Arc<dyn Storage> = Arc::new(faulty);
    let chain = f.open(&storage);
    chain
        .commit(f.genesis(RootAuthority::single_owner(f.owner.public())))
        .unwrap();
    for i in 0..20 {
        chain
            .commit(f.put(&f.owner, key(i), None, &[i as u8; 3000]))
            .unwrap();
    }
    let last = std::thread::scope(|s| {
        plan.hold(ate::storage::Held::Write, "snap-");
        let compactor = s.spawn(|| chain.compact().unwrap());
        plan.wait_held();
        // The snapshot is being written: commits still complete.
        chain
            .commit(f.put(&f.owner, key(1), None, b"rewritten meanwhile"))
            .unwrap();
        let mut tx = Transaction::new(f.chain_id, f.owner.public());
        tx.ops.push(Op::Delete { key: key(2) });
        chain.commit(tx.sign(&f.owner)).unwrap();
        chain
            .commit(f.put(&f.owner, key(100), None, b"new meanwhile"))
            .unwrap();
        plan.release();
        compactor.join().unwrap()
    });
    assert!(
        !plan.held_too_long(),
        "the commits waited for the compaction"
    );
    assert_eq!(last, 21);
    let check = |chain: &ate::Chain| {
        let read = |k| chain.read_plain(&key(k), &f.data).unwrap().map(|(_, p)| p);
        assert_eq!(read(1).as_deref(), Some(&b"rewritten meanwhile"[..]));
        assert_eq!(read(2), None);
        assert_eq!(read(100).as_deref(), Some(&b"new meanwhile"[..]));
        for i in 3..20 {
            assert_eq!(read(i), Some(vec![i as u8; 3000]), "record {i}");
        }
        assert_eq!(chain.record(&key(1)).unwrap().version, 2);
        assert_eq!(chain.stats().snapshot, Some(last));
    };
    check(&chain);
    drop(chain);
    check(&f.open(&storage));
}

#[test]
fn compaction_racing_commits_keeps_every_acknowledged_one() {
    // Without deferred syncs a batch joins the view only after its fdatasync: a compaction
    // in between must not snapshot a view that lacks it and retire the segment holding it.
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()).unwrap());
    let chain = f.open(&storage);
    chain
        .commit(f.genesis(RootAuthority::single_owner(f.owner.public())))
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let compactions = std::thread::scope(|s| {
        let writers: Vec<_> = (0..4u128)
            .map(|t| {
                let (chain, f) = (&chain, &f);
                s.spawn(move || {
                    for i in 0..150u128 {
                        let n = t * 1000 + i;
                        chain
                            .commit(f.put(&f.owner, key(n), None, &n.to_le_bytes()))
                            .unwrap();
                    }
                })
            })
            .collect();
        let compactor = s.spawn(|| {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                chain.compact().unwrap();
                n += 1;
            }
            n
        });
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        compactor.join().unwrap()
    });
    assert!(compactions > 0);
    drop(chain);
    let chain = f.open(&storage);
    for t in 0..4u128 {
        for i in 0..150u128 {
            let n = t * 1000 + i;
            let got = chain.read_plain(&key(n), &f.data).unwrap();
            assert_eq!(got.map(|g| g.1), Some(n.to_le_bytes().to_vec()), "key {n}");
        }
    }
}

#[test]
fn wrong_chain_directory_is_refused() {
    let f = Fixture::new();
    let (mem, chain) = f.mem_chain();
    drop(chain);
    let storage: Arc<dyn Storage> = Arc::new(mem);
    let r = ate::Chain::open(
        storage,
        Some(ate::ChainId::random()),
        Default::default(),
        |_, _| {},
    );
    assert!(matches!(r, Err(ChainError::Log(LogError::WrongChain(_)))));
}

#[test]
fn concurrent_conditional_increments_serialise_through_the_pipeline() {
    // Each writer reads a counter's version and writes version+1 conditionally, retrying on a
    // failed precondition. Validation runs against batches still waiting for their fsync, so a
    // lost update or a double acceptance would show as a wrong final version.
    let f = std::sync::Arc::new(Fixture::new());
    let (_, chain) = f.mem_chain();
    chain.commit(f.put(&f.owner, key(1), None, b"0")).unwrap();
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (f, chain) = (f.clone(), chain.clone());
            std::thread::spawn(move || {
                let mut done = 0;
                while done < 50 {
                    let v = chain.record(&key(1)).unwrap().version;
                    let mut tx = f.put(&f.owner, key(1), None, format!("{}", v + 1).as_bytes());
                    tx.preconditions.push(Precondition::AtVersion(key(1), v));
                    match chain.commit(tx.sign(&f.owner)) {
                        Ok(_) => done += 1,
                        Err(ChainError::Rejected(ValidationError::Precondition(_))) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let e = chain.record(&key(1)).unwrap();
    assert_eq!(e.version, 401);
    assert_eq!(
        chain.read_plain(&key(1), &f.data).unwrap().unwrap().1,
        b"401"
    );
}

#[test]
fn blocks_are_read_into_their_strides_whatever_their_order_in_the_log() {
    const STRIDE: usize = 64 << 10;
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    // On disk, a transaction this large is written with O_DIRECT and read back that way.
    let (storage, chain) = f.disk_chain(dir.path());
    // Twenty full blocks and a short tail; then one of them rewritten, and two short ones.
    let payloads: Vec<Vec<u8>> = (0..21u8)
        .map(|i| vec![i + 1; if i == 20 { 100 } else { STRIDE }])
        .collect();
    chain.commit(f.put_all(10, &payloads)).unwrap();
    chain
        .commit(f.put(&f.owner, key(15), None, &[0xee; STRIDE]))
        .unwrap();
    chain
        .commit(f.put_all(40, &[vec![7; 10], vec![8; 10]]))
        .unwrap();
    let want = |k: u128| match k {
        15 => vec![0xee; STRIDE],
        40 => vec![7; 10],
        41 => vec![8; 10],
        _ => payloads[(k - 10) as usize].clone(),
    };
    let keys = |r: &[u128]| r.iter().copied().map(key).collect::<Vec<_>>();
    for chain in [chain, f.open(&storage)] {
        let mut buf = vec![0xaa; 3];
        // One run; a run broken by a rewritten record; records out of the log's order and
        // from three transactions; short records at a large stride.
        for ks in [
            (16..31).collect::<Vec<_>>(),
            (12..18).collect(),
            vec![41, 29, 15, 11, 10, 40],
        ] {
            let lens = chain
                .read_blocks_into(&keys(&ks), &f.data, &mut buf, STRIDE)
                .unwrap()
                .expect("live records within the stride");
            for (i, k) in ks.iter().enumerate() {
                let w = want(*k);
                assert_eq!(lens[i], w.len(), "{ks:?} {k}");
                assert_eq!(&buf[i * STRIDE..][..w.len()], &w[..], "{ks:?} {k}");
            }
        }
        let lens = chain
            .read_blocks_into(&keys(&[40, 41]), &f.data, &mut buf, 16)
            .unwrap()
            .unwrap();
        assert_eq!(lens, [10, 10]);
        assert_eq!(&buf[..10], &[7; 10]);
        assert_eq!(&buf[16..26], &[8; 10]);
        // Refused: a key with no record, a plaintext longer than the stride.
        for (ks, stride) in [(keys(&[29, 30, 31]), STRIDE), (keys(&[10, 11]), STRIDE - 1)] {
            let got = chain
                .read_blocks_into(&ks, &f.data, &mut buf, stride)
                .unwrap();
            assert_eq!(got, None, "{ks:?}");
        }
        let wrong = ate::DataKey::generate();
        assert!(matches!(
            chain.read_blocks_into(&keys(&[10, 11]), &wrong, &mut buf, STRIDE),
            Err(ChainError::Crypto { .. })
        ));
    }
}

#[test]
fn live_bytes_count_what_the_records_hold_not_what_was_written() {
    use ate::crypto::SEAL_OVERHEAD;
    use ate::redo::{FileRef, Location};
    use ate::view::{locate, plan, View};
    let f = Fixture::new();
    let sealed = |n: usize| (n + SEAL_OVERHEAD) as u64;
    let mut view = View::new(f.chain_id);
    let mut index = 0;
    let mut apply = |view: &mut View, tx: &Transaction, expect: u64| {
        index += 1;
        let mut changes = plan(&*view, tx, index);
        // Judged before the changes have a place, as a server judges a commit's quota.
        assert_eq!(view.live_bytes_after(&changes), expect);
        let at = Location {
            file: FileRef::Segment(1),
            offset: 0,
        };
        locate(&mut changes, at, &tx.payload_offsets());
        view.merge(index, changes);
        assert_eq!(view.live_bytes(), expect);
    };
    apply(
        &mut view,
        &f.put_all(1, &[vec![1; 100], vec![2; 50]]),
        sealed(100) + sealed(50),
    );
    assert_eq!(view.counts(), (2, 2));
    // Rewriting a record a hundred times holds what the last version holds.
    for n in 0..100 {
        let expect = sealed(100) + sealed(10 + n);
        apply(&mut view, &f.put_all(2, &[vec![3; 10 + n]]), expect);
    }
    // One transaction writing a record twice counts the second version alone.
    let mut twice = f.put_all(1, &[vec![4; 7]]);
    twice.ops.extend(f.put_all(1, &[vec![5; 30]]).ops);
    apply(&mut view, &twice, sealed(30) + sealed(109));
    // A deletion frees what the record held; its tombstone holds nothing.
    let mut del = Transaction::new(f.chain_id, f.owner.public());
    del.ops.push(Op::Delete { key: key(2) });
    apply(&mut view, &del, sealed(30));
    assert_eq!(view.counts(), (2, 1));
}
