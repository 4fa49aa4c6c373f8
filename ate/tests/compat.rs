//! Format compatibility: a chain written by format v1 (segments, a snapshot and a key envelope,
//! committed under tests/data/format-v1) must open and read back exactly, forever. When the
//! format changes, add a new sample directory and keep this one.
#![allow(clippy::unwrap_used)]

use ate::storage::{FileStorage, Storage};
use ate::{
    Chain, ChainOptions, KeyFile, Op, RecordKey, RootAuthority, Transaction, WriteAuthority,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-v1")
}

fn k(n: u128) -> RecordKey {
    RecordKey::from_u128(n)
}

/// What the sample holds: key -> plaintext (None = deleted), and each record's version.
fn expected() -> Vec<(RecordKey, Option<Vec<u8>>, u64)> {
    vec![
        (k(1), Some(b"directory".to_vec()), 1),
        (
            k(2),
            Some(b"file two, rewritten after the snapshot".to_vec()),
            3,
        ),
        (k(3), None, 2),
        (k(4), Some(vec![0xab; 5000]), 1),
        (k(5), Some(b"written after the snapshot".to_vec()), 1),
    ]
}

#[test]
fn reads_the_committed_v1_sample() {
    let src = sample_dir();
    let keys = {
        // Git does not keep file modes beyond the executable bit; the loader insists on 0600.
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("keys");
        std::fs::copy(src.join("keys"), &p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        KeyFile::load(&p).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src.join("chain")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir.path()).unwrap());
    let (chain, report) = Chain::open(storage, None, ChainOptions::default(), |_, _| {}).unwrap();
    assert_eq!(chain.id(), keys.chain);
    assert_eq!(report.truncated_bytes, 0);
    assert!(
        report.snapshot.is_some(),
        "the sample must exercise the snapshot format"
    );
    assert_eq!(
        chain.root(),
        Some(RootAuthority::single_owner(keys.owner.public()))
    );
    for (key, want, version) in expected() {
        let got = chain.read_plain(&key, &keys.data).unwrap().map(|(_, p)| p);
        assert_eq!(got, want, "record {key}");
        assert_eq!(
            chain.record(&key).unwrap().version,
            version,
            "version of {key}"
        );
    }
    assert_eq!(chain.children(&k(1)), vec![k(2), k(4)]);
    // Every transaction after the snapshot still verifies under the shared validator.
    let mut sub = chain.subscribe(report.snapshot.unwrap() + 1).unwrap();
    let mut n = 0;
    while let Some((_, tx)) = sub.next_timeout(std::time::Duration::ZERO).unwrap() {
        ate::validate::check_stateless(&tx).unwrap();
        n += 1;
    }
    assert_eq!(n, 2);
}

/// Regenerates the sample. Only for a deliberate format change:
/// `ATE_WRITE_SAMPLE=1 cargo test -p ate --test compat -- --ignored`.
#[test]
#[ignore]
fn write_sample() {
    if std::env::var_os("ATE_WRITE_SAMPLE").is_none() {
        return;
    }
    let out = sample_dir();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("chain")).unwrap();
    let keys = KeyFile::generate(ate::ChainId::random());
    keys.save(&out.join("keys")).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(out.join("chain")).unwrap());
    let (chain, _) = Chain::open(
        storage,
        Some(keys.chain),
        ChainOptions::default(),
        |_, _| {},
    )
    .unwrap();
    let id = keys.chain;
    let commit = |ops: Vec<Op>| {
        let mut tx = Transaction::new(id, keys.owner.public());
        tx.ops = ops;
        chain.commit(tx.sign(&keys.owner)).unwrap();
    };
    let put = |key, parent, data: &[u8]| {
        Op::put(
            &id,
            key,
            parent,
            WriteAuthority::Inherit,
            Some(&keys.data),
            data,
        )
    };
    commit(vec![Op::SetRoot(RootAuthority::single_owner(
        keys.owner.public(),
    ))]);
    commit(vec![
        put(k(1), None, b"directory"),
        put(k(2), Some(k(1)), b"file two"),
    ]);
    commit(vec![
        put(k(3), Some(k(1)), b"file three"),
        put(k(4), Some(k(1)), &[0xab; 5000]),
    ]);
    commit(vec![put(k(2), Some(k(1)), b"file two, v2")]);
    commit(vec![Op::Delete { key: k(3) }]);
    chain.compact().unwrap();
    commit(vec![put(
        k(2),
        Some(k(1)),
        b"file two, rewritten after the snapshot",
    )]);
    commit(vec![put(k(5), None, b"written after the snapshot")]);
}
