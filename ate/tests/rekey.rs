//! Changing a chain's keys in place (`atefs rekey`): the owners are swapped, then every live
//! record is sealed again under the new data key, each write conditional on the version it
//! replaces.
#![allow(clippy::unwrap_used)]

mod common;

use ate::rekey::{check_pair, stage, swap_owners, RekeyError, Resealer, Stage};
use ate::{Chain, ChainError, ChainId, KeyFile, Op, Transaction, ValidationError, WriteAuthority};
use common::{key, Fixture};

fn next_keys(old: &KeyFile) -> KeyFile {
    old.rekeyed()
}

fn commit_bytes(chain: &Chain, tx: &[u8]) -> Result<(), ChainError> {
    chain.commit(Transaction::decode(tx).unwrap()).map(|_| ())
}

/// Runs one pass of a [`Resealer`] over `chain` as it is now; returns (records written, the
/// first refusal).
fn reseal(chain: &Chain, old: &KeyFile, new: &KeyFile) -> (usize, Option<ChainError>) {
    let (n, txs) = reseal_txs(chain, old, new);
    for tx in txs {
        if let Err(e) = commit_bytes(chain, &tx) {
            return (n, Some(e));
        }
    }
    (n, None)
}

/// The records a pass would write and its transactions.
fn reseal_txs(chain: &Chain, old: &KeyFile, new: &KeyFile) -> (usize, Vec<bytes::Bytes>) {
    let frozen = chain.frozen();
    let mut r = Resealer::new(&frozen, old, new).unwrap();
    let txs: Vec<_> = std::iter::from_fn(|| r.next_tx())
        .map(|t| t.unwrap())
        .collect();
    (r.records(), txs)
}

#[test]
fn after_a_rekey_every_record_opens_with_the_new_keys_and_the_old_owner_is_out() {
    let old = KeyFile::generate(ChainId::random());
    let new = next_keys(&old);
    let f = Fixture::of(&old);
    let (_, chain) = f.mem_chain();
    let big: Vec<u8> = (0..6u32 << 20).map(|i| (i * 13 + i / 4096) as u8).collect();
    chain.commit(f.put(&f.owner, key(1), None, b"one")).unwrap();
    chain
        .commit(f.put(&f.owner, key(2), Some(key(1)), &big))
        .unwrap();
    // 18 MiB in all: more than one transaction's worth.
    for k in [7, 8] {
        chain
            .commit(f.put(&f.owner, key(k), Some(key(1)), &big[k as usize..]))
            .unwrap();
    }
    chain
        .commit(f.put(&f.owner, key(3), None, b"gone"))
        .unwrap();
    let mut tx = Transaction::new(f.chain_id, f.owner.public());
    tx.ops = vec![
        Op::Delete { key: key(3) },
        Op::put(
            &f.chain_id,
            key(4),
            None,
            WriteAuthority::Inherit,
            None,
            b"",
        ),
        Op::put(
            &f.chain_id,
            key(5),
            None,
            WriteAuthority::Keys(vec![old.owner.public().id()]),
            Some(&f.data),
            b"narrowed to the owner",
        ),
    ];
    chain.commit(tx.sign(&f.owner)).unwrap();

    assert_eq!(
        stage(chain.root().as_ref(), &old, &new).unwrap(),
        Stage::Swap
    );
    commit_bytes(
        &chain,
        &swap_owners(&chain.root().unwrap(), &old, &new).unwrap(),
    )
    .unwrap();
    assert_eq!(
        stage(chain.root().as_ref(), &old, &new).unwrap(),
        Stage::Reseal
    );
    // The old owner key writes nothing any more.
    assert!(matches!(
        chain.commit(f.put(&old.owner, key(6), None, b"late")),
        Err(ChainError::Rejected(ValidationError::NotAuthorized { .. }))
    ));

    let (written, txs) = reseal_txs(&chain, &old, &new);
    assert_eq!(
        written, 5,
        "the five sealed records; the empty one has nothing to seal"
    );
    assert!(txs.len() >= 2, "18 MiB in one transaction");
    for tx in txs {
        commit_bytes(&chain, &tx).unwrap();
    }
    let read = |k| {
        chain
            .read_plain(&key(k), &new.data)
            .unwrap()
            .map(|(_, p)| p)
    };
    assert_eq!(read(1).unwrap(), b"one");
    assert_eq!(read(2).unwrap(), big);
    assert_eq!(read(4).unwrap(), b"");
    assert_eq!(read(5).unwrap(), b"narrowed to the owner");
    assert_eq!(read(7).unwrap(), &big[7..]);
    assert_eq!(read(8).unwrap(), &big[8..]);
    assert!(chain.record(&key(3)).is_none_or(|r| r.sealing.is_none()));
    assert_eq!(
        chain.record(&key(5)).unwrap().write,
        WriteAuthority::Keys(vec![new.owner.public().id()]),
        "a narrowing to the old owner now names the new one"
    );
    assert_eq!(chain.children(&key(1)), vec![key(2), key(7), key(8)]);
    assert!(matches!(
        chain.read_plain(&key(1), &old.data),
        Err(ChainError::Crypto { .. })
    ));
    // Nothing is left to do: a second pass writes nothing.
    let (again, refused) = reseal(&chain, &old, &new);
    assert_eq!(again, 0);
    assert!(refused.is_none());
}

/// A record written between the freeze and the rewrite is not overwritten with its old
/// content: that transaction is refused, and the next pass finds what is still to do.
#[test]
fn a_record_changed_meanwhile_is_left_to_the_next_pass() {
    let old = KeyFile::generate(ChainId::random());
    let new = next_keys(&old);
    let f = Fixture::of(&old);
    let (_, chain) = f.mem_chain();
    for k in 1..=3 {
        chain
            .commit(f.put(&f.owner, key(k), None, b"before"))
            .unwrap();
    }
    commit_bytes(
        &chain,
        &swap_owners(&chain.root().unwrap(), &old, &new).unwrap(),
    )
    .unwrap();
    let frozen = chain.frozen();
    let mut r = Resealer::new(&frozen, &old, &new).unwrap();
    let tx = r.next_tx().unwrap().unwrap();
    assert!(
        r.next_tx().is_none(),
        "three small records go in one transaction"
    );
    drop(frozen);
    // A writer with the new keys changes record 2 meanwhile.
    let writer = Fixture::of(&new);
    chain
        .commit(writer.put(&new.owner, key(2), None, b"meanwhile"))
        .unwrap();
    assert!(matches!(
        commit_bytes(&chain, &tx),
        Err(ChainError::Rejected(ValidationError::Precondition(_)))
    ));
    let (written, refused) = reseal(&chain, &old, &new);
    assert!(refused.is_none(), "{refused:?}");
    assert_eq!(written, 2, "record 2 is under the new key already");
    for (k, want) in [(1, &b"before"[..]), (2, b"meanwhile"), (3, b"before")] {
        assert_eq!(
            chain.read_plain(&key(k), &new.data).unwrap().unwrap().1,
            want
        );
    }
}

#[test]
fn keys_that_cannot_take_over_are_refused_before_anything_is_written() {
    let old = KeyFile::generate(ChainId::random());
    let new = next_keys(&old);
    let f = Fixture::of(&old);
    let (_, chain) = f.mem_chain();
    assert!(matches!(
        check_pair(&old, &KeyFile::generate(ChainId::random())),
        Err(RekeyError::OtherChain { .. })
    ));
    assert!(matches!(
        check_pair(&old, &KeyFile::generate(old.chain)),
        Err(RekeyError::NameKey)
    ));
    assert!(matches!(check_pair(&old, &old), Err(RekeyError::SameKeys)));
    let stranger = next_keys(&new);
    assert!(matches!(
        stage(chain.root().as_ref(), &stranger, &next_keys(&stranger)),
        Err(RekeyError::NotAnOwner(_))
    ));
    assert!(matches!(
        swap_owners(&chain.root().unwrap(), &stranger, &next_keys(&stranger)),
        Err(RekeyError::NotAnOwner(_))
    ));
    assert!(matches!(
        stage(None, &old, &new),
        Err(RekeyError::NoRoot(_))
    ));

    f.put_under_foreign_key(&chain, key(1));
    let frozen = chain.frozen();
    assert!(matches!(
        Resealer::new(&frozen, &old, &new),
        Err(RekeyError::ForeignKey { key: k, .. }) if k == key(1)
    ));
}
