//! A disposable log (a mount's cache of a cluster's chain) never fdatasyncs, and on open it is
//! cut at its first defect wherever that lies, where a durable log refuses to open.
#![allow(clippy::unwrap_used)]

mod common;

use ate::redo::{segment_name, LogError, LogOptions};
use ate::storage::{MemStorage, Storage};
use ate::{Chain, ChainError, ChainOptions};
use common::{key, Fixture};
use std::sync::Arc;

const PUTS: u128 = 14;

fn options(disposable: bool) -> ChainOptions {
    ChainOptions {
        log: LogOptions {
            // A few puts per segment, so the log has several.
            segment_bytes: 700,
            disposable,
        },
        deferred_sync: disposable.then_some(std::time::Duration::ZERO),
        ..ChainOptions::default()
    }
}

fn open(f: &Fixture, mem: &MemStorage, disposable: bool) -> Result<Chain, ChainError> {
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    Chain::open(storage, Some(f.chain_id), options(disposable), |_, _| {}).map(|(c, _)| c)
}

fn value(i: u128) -> Vec<u8> {
    format!("value {i} {}", "x".repeat(120)).into_bytes()
}

/// The files as written (what a killed process leaves; `crash_image` keeps only synced bytes).
fn as_written(mem: &MemStorage) -> MemStorage {
    let out = MemStorage::new();
    for name in mem.list().unwrap() {
        out.set_contents(&name, mem.contents(&name).unwrap());
    }
    out
}

/// First indexes of the segments, in order.
fn segments(mem: &MemStorage) -> Vec<u64> {
    let mut firsts: Vec<u64> = mem
        .list()
        .unwrap()
        .iter()
        .filter_map(|n| ate::redo::parse_name(n))
        .filter(|(segment, _)| *segment)
        .map(|(_, first)| first)
        .collect();
    firsts.sort_unstable();
    firsts
}

/// A disposable chain of genesis (index 1) and PUTS puts (key i at index i + 2).
fn build(f: &Fixture) -> MemStorage {
    let mem = MemStorage::new();
    let chain = open(f, &mem, true).unwrap();
    chain
        .commit(f.genesis(ate::RootAuthority::single_owner(f.owner.public())))
        .unwrap();
    for i in 0..PUTS {
        chain
            .commit(f.put(&f.owner, key(i), None, &value(i)))
            .unwrap();
    }
    mem
}

/// Opens `image` both ways: durable refuses, disposable keeps exactly indexes up to `last`,
/// drops the segments after the cut, and takes new commits that survive a reopen.
fn check_cut(f: &Fixture, image: &MemStorage, last: u64, what: &str) {
    assert!(
        matches!(
            open(f, &as_written(image), false),
            Err(ChainError::Log(LogError::Corrupt { .. }))
        ),
        "{what}: a durable log refuses to open"
    );
    let chain = open(f, image, true).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(chain.last_index(), last, "{what}");
    for i in 0..PUTS {
        let got = chain.read_plain(&key(i), &f.data).unwrap().map(|(_, p)| p);
        let want = (i as u64 + 2 <= last).then(|| value(i));
        assert_eq!(got, want, "{what}: key {i}");
    }
    assert!(
        segments(image).iter().all(|&first| first <= last + 1),
        "{what}: segments after the cut are gone: {:?}",
        segments(image)
    );
    chain
        .commit(f.put(&f.owner, key(1000), None, b"after"))
        .unwrap();
    drop(chain);
    let again = open(f, &as_written(image), true).unwrap();
    assert_eq!(again.last_index(), last + 1, "{what}");
    assert_eq!(
        again.read_plain(&key(1000), &f.data).unwrap().unwrap().1,
        b"after",
        "{what}"
    );
}

#[test]
fn a_disposable_log_never_syncs_and_reopens_whole_after_a_process_exit() {
    let f = Fixture::new();
    let mem = build(&f);
    assert!(segments(&mem).len() >= 4, "{:?}", segments(&mem));
    // Nothing was made durable: a power cut leaves every segment empty, and that opens.
    let crash = mem.crash_image();
    for first in segments(&crash) {
        assert_eq!(crash.contents(&segment_name(first)).unwrap().len(), 0);
    }
    assert_eq!(open(&f, &crash, true).unwrap().last_index(), 0);
    // What was written is all there after the process goes (the page cache keeps it).
    let chain = open(&f, &as_written(&mem), true).unwrap();
    assert_eq!(chain.last_index(), PUTS as u64 + 1);
    assert_eq!(
        chain
            .read_plain(&key(PUTS - 1), &f.data)
            .unwrap()
            .unwrap()
            .1,
        value(PUTS - 1)
    );
}

#[test]
fn a_disposable_log_is_cut_at_its_first_defect_wherever_it_lies() {
    let f = Fixture::new();
    let mem = build(&f);
    let firsts = segments(&mem);
    assert!(firsts.len() >= 4, "{firsts:?}");
    let (second, third) = (firsts[1], firsts[2]);
    let seg2 = segment_name(second);

    // A flipped byte in the last entry of a segment that is not the last one.
    let image = as_written(&mem);
    let mut bad = mem.contents(&seg2).unwrap();
    let end = bad.len() - 1;
    bad[end] ^= 0x55;
    image.set_contents(&seg2, bad);
    check_cut(&f, &image, third - 2, "damaged entry");

    // A segment missing in the middle.
    let image = as_written(&mem);
    image.remove(&segment_name(third)).unwrap();
    check_cut(&f, &image, third - 1, "missing segment");

    // A segment whose bytes never reached the disk, with later ones that did.
    let image = as_written(&mem);
    image.set_contents(&seg2, Vec::new());
    check_cut(&f, &image, second - 1, "empty segment");

    // A damaged segment header.
    let image = as_written(&mem);
    let mut bad = mem.contents(&seg2).unwrap();
    bad[0] ^= 0x55;
    image.set_contents(&seg2, bad);
    check_cut(&f, &image, second - 1, "damaged header");
}

#[test]
fn a_disposable_log_still_refuses_another_chains_files() {
    let f = Fixture::new();
    let mem = build(&f);
    let other = Fixture {
        chain_id: ate::ChainId::random(),
        ..Fixture::new()
    };
    match open(&other, &as_written(&mem), true) {
        Err(ChainError::Log(LogError::WrongChain(_) | LogError::Corrupt { .. })) => {}
        r => panic!(
            "opened another chain's files: {:?}",
            r.map(|c| c.last_index())
        ),
    }
    // Nothing was cut.
    assert_eq!(open(&f, &mem, true).unwrap().last_index(), PUTS as u64 + 1);
}
