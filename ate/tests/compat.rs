//! Format compatibility: chains written by each format (segments, a snapshot and a key envelope,
//! committed under tests/data/format-v1, -v2 and -v3) must open and read back exactly, forever.
//! When the format changes, add a new sample directory and keep the old ones. Format 1 sealed
//! every payload with XChaCha20-Poly1305; format 2 names AES-256-GCM in the record header;
//! format 3 writes segments of format 2, where padding frames align large transactions.
#![allow(clippy::unwrap_used)]

use ate::storage::{FileStorage, MemStorage, Storage};
use ate::{
    Chain, ChainOptions, Cipher, KeyFile, Op, RecordKey, RootAuthority, Transaction, WriteAuthority,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn sample_dir(format: u16) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/format-v{format}"))
}

/// The newest format, the one [`write_sample`] writes.
const CURRENT: u16 = 3;

/// The large record of format 3's sample (its transaction is padded into alignment).
fn large() -> Vec<u8> {
    (0..100u32 << 10).map(|i| (i % 251) as u8).collect()
}

fn k(n: u128) -> RecordKey {
    RecordKey::from_u128(n)
}

/// What sample `format` holds: key -> plaintext (None = deleted), and each record's version.
fn expected(format: u16) -> Vec<(RecordKey, Option<Vec<u8>>, u64)> {
    let mut v = vec![
        (k(1), Some(b"directory".to_vec()), 1),
        (
            k(2),
            Some(b"file two, rewritten after the snapshot".to_vec()),
            3,
        ),
        (k(3), None, 2),
        (k(4), Some(vec![0xab; 5000]), 1),
        (k(5), Some(b"written after the snapshot".to_vec()), 1),
    ];
    if format >= 3 {
        v.push((k(6), Some(large()), 1));
    }
    v
}

/// Transactions committed after the sample's snapshot.
fn after_snapshot(format: u16) -> usize {
    if format >= 3 {
        3
    } else {
        2
    }
}

/// A copy of sample `format`'s chain in a temporary directory, and its keys.
fn open_sample(format: u16) -> (tempfile::TempDir, KeyFile) {
    let src = sample_dir(format);
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
    (dir, keys)
}

fn open_chain(dir: &Path) -> (Chain, ate::redo::Recovered) {
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir).unwrap());
    Chain::open(storage, None, ChainOptions::default(), |_, _| {}).unwrap()
}

/// The cipher every payload of sample `format` names.
fn cipher_of(format: u16) -> Cipher {
    match format {
        1 => Cipher::XChaCha20Poly1305,
        _ => Cipher::Aes256Gcm,
    }
}

fn reads_sample(format: u16) {
    let (dir, keys) = open_sample(format);
    let (chain, report) = open_chain(dir.path());
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
    for (key, want, version) in expected(format) {
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
        // Format 3 changed the segment file, not the transaction encoding.
        assert_eq!(tx.format(), format.min(2));
        for op in &tx.ops {
            if let Op::Put { header, .. } = op {
                assert_eq!(header.cipher, cipher_of(format));
            }
        }
        n += 1;
    }
    assert_eq!(n, after_snapshot(format));
}

#[test]
fn reads_the_committed_v1_sample() {
    reads_sample(1);
}

#[test]
fn reads_the_committed_v2_sample() {
    reads_sample(2);
}

#[test]
fn reads_the_committed_v3_sample() {
    reads_sample(3);
    assert!(
        sample_has_padding(&sample_dir(3).join("chain")),
        "the sample must exercise padding frames"
    );
}

/// Whether a segment in `dir` holds a padding frame.
fn sample_has_padding(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let e = e.unwrap();
        if !e.file_name().to_string_lossy().starts_with("seg-") {
            return false;
        }
        let bytes = std::fs::read(e.path()).unwrap();
        let mut at = ate::redo::FILE_HEADER;
        while at < bytes.len() {
            let (kind, _, used) = ate::redo::decode_frame(&bytes[at..]).unwrap();
            if kind == ate::redo::FrameKind::Pad {
                return true;
            }
            at += used;
        }
        false
    })
}

/// A chain written by format 1 goes on under format 2: old records still open beside new
/// ones, through commits, compaction and reopening.
#[test]
fn a_v1_chain_takes_format_2_commits_compacts_and_reopens() {
    let (dir, keys) = open_sample(1);
    let (chain, _) = open_chain(dir.path());
    let mut tx = Transaction::new(keys.chain, keys.owner.public());
    tx.ops.push(Op::put(
        &keys.chain,
        k(6),
        Some(k(1)),
        WriteAuthority::Inherit,
        Some(&keys.data),
        b"format 2 beside format 1",
    ));
    let tx = tx.sign(&keys.owner);
    assert_eq!(tx.format(), 2);
    chain.commit(tx).unwrap();
    chain.compact().unwrap();
    drop(chain);
    let (chain, report) = open_chain(dir.path());
    assert_eq!(report.truncated_bytes, 0);
    let read = |key| chain.read_plain(&key, &keys.data).unwrap().map(|(_, p)| p);
    for (key, want, _) in expected(1) {
        assert_eq!(read(key), want, "record {key}");
    }
    assert_eq!(
        read(k(6)).as_deref(),
        Some(&b"format 2 beside format 1"[..])
    );
    assert_eq!(chain.children(&k(1)), vec![k(2), k(4), k(6)]);
}

/// Writes the current format's sample. Only for a deliberate format change:
/// `ATE_WRITE_SAMPLE=1 cargo test -p ate --test compat -- --ignored`.
#[test]
#[ignore]
fn write_sample() {
    if std::env::var_os("ATE_WRITE_SAMPLE").is_none() {
        return;
    }
    let out = sample_dir(CURRENT);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("chain")).unwrap();
    let keys = KeyFile::generate(ate::ChainId::random());
    keys.save(&out.join("keys")).unwrap();
    // Written in memory, which pads from 64 KiB (a disk file from 1 MiB), then saved: the
    // sample stays small.
    let mem = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
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
    commit(vec![put(k(6), None, &large())]);
    drop(chain);
    for name in mem.list().unwrap() {
        std::fs::write(out.join("chain").join(&name), mem.contents(&name).unwrap()).unwrap();
    }
    assert!(
        sample_has_padding(&out.join("chain")),
        "run again: no padding was needed"
    );
}
