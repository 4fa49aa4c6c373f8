//! Backup files (`atefs backup`, `atefs restore`): a chain's live records, still sealed, in
//! one signed file; restored into an empty chain of the same id, they read as before. A file
//! that was changed, cut short, signed by another key or of another chain is refused before
//! anything is written, and one changed during the restore fails it.
#![allow(clippy::unwrap_used)]

mod common;

use ate::backup::{verify_backup, write_backup, BackupError, Restorer};
use ate::storage::{MemStorage, Storage};
use ate::{Chain, ChainId, ChainOptions, KeyFile, Op, Transaction, WriteAuthority};
use common::{contents, key, Fixture};
use std::path::Path;
use std::sync::Arc;

/// A chain of `keys` holding a tree of records (18 MiB in all: several transactions' worth),
/// a record without payload, and a deleted one; the keys of the records it holds.
fn filled(keys: &KeyFile) -> (Chain, Vec<ate::RecordKey>) {
    let f = Fixture::of(keys);
    let (_, chain) = f.mem_chain();
    let big: Vec<u8> = (0..6u32 << 20).map(|i| (i * 7 + i / 999) as u8).collect();
    chain
        .commit(f.put(&f.owner, key(1), None, b"root"))
        .unwrap();
    for k in 2..5 {
        chain
            .commit(f.put(&f.owner, key(k), Some(key(1)), &big[k as usize..]))
            .unwrap();
    }
    for k in 10..200 {
        chain
            .commit(f.put(&f.owner, key(k), Some(key(2)), &k.to_le_bytes()))
            .unwrap();
    }
    let mut tx = Transaction::new(f.chain_id, f.owner.public());
    tx.ops = vec![
        Op::Delete { key: key(150) },
        Op::put(
            &f.chain_id,
            key(5),
            None,
            WriteAuthority::Inherit,
            None,
            b"",
        ),
    ];
    chain.commit(tx.sign(&f.owner)).unwrap();
    let mut held: Vec<_> = (1..5)
        .chain(10..200)
        .filter(|k| *k != 150)
        .map(key)
        .collect();
    held.push(key(5));
    (chain, held)
}

fn back_up(chain: &Chain, keys: &KeyFile, path: &Path) {
    let frozen = chain.frozen();
    let file = std::fs::File::create(path).unwrap();
    let s = write_backup(&frozen, keys, 1 << 40, file, |_, _| {}).unwrap();
    assert_eq!(
        (s.records, s.index),
        (frozen.records.len() as u64, frozen.index)
    );
}

/// An empty chain of `keys.chain` with the backup restored into it by its transactions.
fn restored(path: &Path, keys: &KeyFile) -> Result<Chain, BackupError> {
    let backup = verify_backup(path, keys)?;
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let chain = Chain::open(
        storage,
        Some(keys.chain),
        ChainOptions::default(),
        |_, _| {},
    )
    .unwrap()
    .0;
    let mut r = Restorer::new(&backup, keys)?;
    chain
        .commit(Transaction::decode(&r.genesis()).unwrap())
        .unwrap();
    while let Some(tx) = r.next_tx() {
        chain.commit(Transaction::decode(&tx?).unwrap()).unwrap();
    }
    assert_eq!(r.done(), backup.summary.records);
    Ok(chain)
}

#[test]
fn a_restored_backup_reads_as_the_chain_did() {
    let keys = KeyFile::generate(ChainId::random());
    let (chain, held) = filled(&keys);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.backup");
    back_up(&chain, &keys, &path);

    let summary = verify_backup(&path, &keys).unwrap().summary;
    assert_eq!(summary.chain, keys.chain);
    assert_eq!(summary.quota, 1 << 40);
    assert_eq!(summary.records, held.len() as u64);

    let again = restored(&path, &keys).unwrap();
    assert_eq!(
        contents(&again, held.clone(), &keys.data),
        contents(&chain, held.clone(), &keys.data)
    );
    assert!(
        again.record(&key(150)).is_none(),
        "a deleted record came back"
    );
    for k in &held {
        let (a, b) = (chain.record(k).unwrap(), again.record(k).unwrap());
        assert_eq!((a.parent, a.write), (b.parent, b.write), "{k}");
    }
    assert_eq!(again.root(), chain.root());
    // Several transactions: one of 18 MiB would pass the size every commit is held to.
    assert!(again.last_index() > 3, "{}", again.last_index());
}

#[test]
fn a_changed_cut_or_foreign_backup_is_refused_before_anything_is_written() {
    let keys = KeyFile::generate(ChainId::random());
    let (chain, _) = filled(&keys);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.backup");
    back_up(&chain, &keys, &path);
    let good = std::fs::read(&path).unwrap();
    // What verifying `bytes` as a backup file with `keys` says.
    let refusal = |bytes: &[u8]| {
        let p = dir.path().join("bad.backup");
        std::fs::write(&p, bytes).unwrap();
        verify_backup(&p, &keys).unwrap_err()
    };

    // One bit of a payload in the middle.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 1;
    assert!(matches!(refusal(&flipped), BackupError::BadSignature));
    // Cut short, or with bytes after its signature.
    let mut longer = good.clone();
    longer.push(0);
    for bad in [&good[..good.len() - 10], &good[..good.len() / 3], &longer] {
        assert!(
            matches!(refusal(bad), BackupError::Damaged(_)),
            "{} bytes",
            bad.len()
        );
    }
    assert!(matches!(
        refusal(b"not a backup at all"),
        BackupError::NotABackup
    ));
    // Other keys of the same chain (someone else's signature), and another chain's keys.
    let other = keys.rekeyed();
    assert!(matches!(
        verify_backup(&path, &other),
        Err(BackupError::BadSignature)
    ));
    let mut elsewhere = KeyFile::generate(ChainId::random());
    elsewhere.owner = keys.owner.clone();
    assert!(matches!(
        verify_backup(&path, &elsewhere),
        Err(BackupError::OtherChain { .. })
    ));
    // A backup made by keys that are not an owner is refused at the source.
    let stranger = KeyFile {
        owner: ate::SigningKey::generate(),
        ..keys.clone()
    };
    let frozen = chain.frozen();
    assert!(matches!(
        write_backup(&frozen, &stranger, 1, Vec::new(), |_, _| {}),
        Err(BackupError::NotAnOwner(_))
    ));
}

#[test]
fn a_backup_changed_during_its_restore_fails_it() {
    let keys = KeyFile::generate(ChainId::random());
    let (chain, _) = filled(&keys);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.backup");
    back_up(&chain, &keys, &path);
    let backup = verify_backup(&path, &keys).unwrap();
    let mut r = Restorer::new(&backup, &keys).unwrap();
    // The first transaction is read (up to 8 MiB of payloads: the third big record waits for
    // the next); then a byte of the last big record's payload changes under the restore.
    r.next_tx().unwrap().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = 15 << 20;
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let last = std::iter::from_fn(|| r.next_tx()).last().unwrap();
    assert!(matches!(last, Err(BackupError::Changed)), "{last:?}");
}

/// Every single-byte change and every truncation of a small backup is refused with an error
/// (never accepted, never a panic): any change breaks the signature or the framing, and the
/// reader bounds every length before it allocates.
#[test]
fn no_changed_or_cut_backup_passes_for_a_good_one() {
    let keys = KeyFile::generate(ChainId::random());
    let f = Fixture::of(&keys);
    let (_, chain) = f.mem_chain();
    chain.commit(f.put(&f.owner, key(1), None, b"top")).unwrap();
    chain
        .commit(f.put(&f.owner, key(2), Some(key(1)), b"below"))
        .unwrap();
    let mut good = Vec::new();
    write_backup(&chain.frozen(), &keys, 1 << 20, &mut good, |_, _| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b");
    let check = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        verify_backup(&path, &keys)
    };
    check(&good).unwrap();
    for at in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= flip;
            assert!(check(&bad).is_err(), "byte {at} ^ {flip:#x} passed");
        }
    }
    for len in 0..good.len() {
        assert!(check(&good[..len]).is_err(), "cut to {len} bytes passed");
    }
}
