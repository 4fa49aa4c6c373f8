//! Copying a chain's live records into a new chain under new keys (volume clones, snapshots).
#![allow(clippy::unwrap_used)]

mod common;

use ate::copy::{Copier, CopyError};
use ate::storage::{MemStorage, Storage};
use ate::{Chain, ChainError, ChainId, KeyFile, Op, Transaction, WriteAuthority};
use common::{key, Fixture};
use std::sync::Arc;

fn commit(chain: &Chain, f: &Fixture, ops: Vec<Op>) {
    let mut tx = Transaction::new(f.chain_id, f.owner.public());
    tx.ops = ops;
    chain.commit(tx.sign(&f.owner)).unwrap();
}

/// Commits what `copier` produces to a fresh chain, as a cluster would (each validated).
fn replay(copier: &mut Copier<'_, '_>, to: &KeyFile) -> (Chain, usize) {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let chain = Fixture::of(to).open(&storage);
    chain
        .commit(Transaction::decode(&copier.genesis()).unwrap())
        .unwrap();
    let mut txs = 0;
    while let Some(tx) = copier.next_tx() {
        chain
            .commit(Transaction::decode(&tx.unwrap()).unwrap())
            .unwrap();
        txs += 1;
    }
    (chain, txs)
}

#[test]
fn a_copy_holds_every_live_record_as_of_its_index_under_the_new_keys() {
    let from = KeyFile::generate(ChainId::random());
    let to = from.for_copy(ChainId::random());
    let f = Fixture::of(&from);
    let (_, source) = f.mem_chain();
    let big: Vec<u8> = (0..6u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    source
        .commit(f.put(&f.owner, key(1), None, b"one"))
        .unwrap();
    source
        .commit(f.put(&f.owner, key(2), Some(key(1)), b"two"))
        .unwrap();
    source
        .commit(f.put(&f.owner, key(3), Some(key(2)), &big))
        .unwrap();
    source
        .commit(f.put(&f.owner, key(10), None, &big[1..]))
        .unwrap();
    source
        .commit(f.put(&f.owner, key(11), None, &big[2..]))
        .unwrap();
    source
        .commit(f.put(&f.owner, key(1), None, b"one again"))
        .unwrap();
    let mine = WriteAuthority::Keys(vec![from.owner.public().id()]);
    commit(
        &source,
        &f,
        vec![
            Op::put(
                &f.chain_id,
                key(4),
                None,
                WriteAuthority::Inherit,
                None,
                b"",
            ),
            Op::put(&f.chain_id, key(5), None, mine, Some(&f.data), b"narrowed"),
        ],
    );
    source
        .commit(f.put(&f.owner, key(6), None, b"deleted"))
        .unwrap();
    commit(&source, &f, vec![Op::Delete { key: key(6) }]);
    // An orphan: its parent deleted after it was written. Nothing reaches it.
    source
        .commit(f.put(&f.owner, key(7), None, b"parent"))
        .unwrap();
    source
        .commit(f.put(&f.owner, key(8), Some(key(7)), b"orphan"))
        .unwrap();
    commit(&source, &f, vec![Op::Delete { key: key(7) }]);

    let frozen = source.frozen();
    // Commits after the freeze are not in the copy.
    source
        .commit(f.put(&f.owner, key(9), None, b"later"))
        .unwrap();
    source
        .commit(f.put(&f.owner, key(2), Some(key(1)), b"two later"))
        .unwrap();
    let mut copier = Copier::new(&frozen, &from, &to).unwrap();
    assert_eq!(copier.records(), 7);
    let (copy, txs) = replay(&mut copier, &to);
    assert_eq!(copier.skipped(), 1, "the orphan");
    assert_eq!(
        copier.bytes(),
        (9 + 3 + 8 + 3 * big.len() - 3) as u64,
        "the live payloads' plaintext, the orphan's not"
    );
    assert!(
        txs >= 2,
        "18 MiB go in more than one transaction, got {txs}"
    );

    let read = |k| copy.read_plain(&key(k), &to.data).unwrap().map(|(_, p)| p);
    assert_eq!(read(1).unwrap(), b"one again");
    assert_eq!(read(2).unwrap(), b"two");
    assert_eq!(read(3).unwrap(), big);
    assert_eq!(read(4).unwrap(), b"");
    assert_eq!(read(5).unwrap(), b"narrowed");
    assert_eq!(read(10).unwrap(), &big[1..]);
    assert_eq!(read(11).unwrap(), &big[2..]);
    for gone in [6, 7, 8, 9] {
        assert!(copy.record(&key(gone)).is_none(), "record {gone}");
    }
    assert_eq!(copy.children(&key(1)), vec![key(2)]);
    assert_eq!(
        copy.record(&key(1)).unwrap().version,
        1,
        "history is not copied"
    );
    assert_eq!(
        copy.record(&key(5)).unwrap().write,
        WriteAuthority::Keys(vec![to.owner.public().id()]),
        "the old owner's narrowing names the new owner"
    );
    let root = copy.root().unwrap();
    assert!(root.is_owner(&to.owner.public().id()));
    assert!(root.role_of(&from.owner.public().id()).is_none());
    // The source's data key opens nothing in the copy.
    assert!(matches!(
        copy.read_plain(&key(1), &from.data),
        Err(ChainError::Crypto { .. })
    ));
}

#[test]
fn keys_that_do_not_own_the_chain_or_seal_its_payloads_are_refused() {
    let from = KeyFile::generate(ChainId::random());
    let to = from.for_copy(ChainId::random());
    let f = Fixture::of(&from);
    let (_, source) = f.mem_chain();
    let stranger = KeyFile {
        chain: from.chain,
        ..KeyFile::generate(from.chain)
    };
    let frozen = source.frozen();
    assert!(matches!(
        Copier::new(&frozen, &from, &KeyFile::generate(ChainId::random())),
        Err(CopyError::NameKey)
    ));
    assert!(matches!(
        Copier::new(&frozen, &stranger, &stranger.for_copy(ChainId::random())),
        Err(CopyError::NotAnOwner(c)) if c == from.chain
    ));
    drop(frozen);

    f.put_under_foreign_key(&source, key(1));
    let frozen = source.frozen();
    let mut copier = Copier::new(&frozen, &from, &to).unwrap();
    assert!(matches!(
        copier.next_tx(),
        Some(Err(CopyError::ForeignKey { key: k, .. })) if k == key(1)
    ));

    let bare = f.open(&(Arc::new(MemStorage::new()) as Arc<dyn Storage>));
    let frozen = bare.frozen();
    assert!(matches!(
        Copier::new(&frozen, &from, &to),
        Err(CopyError::NoRoot(_))
    ));
}
