//! A running cache takes its upstream's image of the chain (`Chain::install_image`): what a
//! mount does when the cluster compacted away transactions it has not had yet.
#![allow(clippy::unwrap_used)]

mod common;

use ate::redo::{snapshot_name, LogError};
use ate::storage::{MemStorage, Storage};
use ate::{ChainError, ChainId};
use common::{contents, key, Fixture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const TMP: &str = "snap-live.tmp";

fn value(i: u128, round: u32) -> Vec<u8> {
    format!("value {i} of round {round}").into_bytes()
}

/// The upstream: genesis, puts of keys 0..30, key 0 rewritten, compacted. Returns its storage
/// and the image's last index.
fn upstream(f: &Fixture) -> (MemStorage, u64) {
    let (mem, chain) = f.mem_chain();
    for i in 0..30 {
        chain
            .commit(f.put(&f.owner, key(i), None, &value(i, 0)))
            .unwrap();
    }
    chain
        .commit(f.put(&f.owner, key(0), None, &value(0, 1)))
        .unwrap();
    let last = chain.compact().unwrap();
    (mem, last)
}

#[test]
fn a_cache_takes_an_image_ahead_of_it_and_goes_on_from_there() {
    let f = Fixture::new();
    let (up, last) = upstream(&f);
    let image = up.contents(&snapshot_name(last)).unwrap();

    // The cache had genesis and the first five puts.
    let (mem, cache) = f.mem_chain();
    for i in 0..5 {
        cache
            .commit(f.put(&f.owner, key(i), None, &value(i, 0)))
            .unwrap();
    }
    assert!(cache.last_index() < last);
    mem.set_contents(TMP, image);

    // A reader goes on reading key 0 from before the switch to after it: it sees the old
    // value, then the new one, and never an error (its file may go between its lookup and its
    // read).
    let done = Arc::new(AtomicBool::new(false));
    let (started, has_started) = std::sync::mpsc::channel();
    let reader = {
        let (cache, done, data) = (cache.clone(), done.clone(), f.data.clone());
        std::thread::spawn(move || {
            let mut seen: Vec<Vec<u8>> = Vec::new();
            loop {
                // Checked before the read: the read after `done` is one after the switch.
                let last_round = done.load(Ordering::Relaxed);
                let (_, plain) = cache.read_plain(&key(0), &data).unwrap().unwrap();
                if seen.last() != Some(&plain) {
                    seen.push(plain);
                }
                let _ = started.send(());
                if last_round {
                    return seen;
                }
            }
        })
    };
    has_started.recv().unwrap();
    assert!(cache.install_image(TMP, last).unwrap());
    done.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert_eq!(seen, [value(0, 0), value(0, 1)]);

    assert_eq!(cache.last_index(), last);
    let want: Vec<_> = (0..30)
        .map(|i| (key(i), value(i, u32::from(i == 0))))
        .collect();
    assert_eq!(contents(&cache, (0..30).map(key), &f.data), want);
    // The image is the whole log now: the old segments and the temporary name are gone.
    let mut files = mem.list().unwrap();
    files.sort();
    let mut expected = vec![snapshot_name(last), ate::redo::segment_name(last + 1)];
    expected.sort();
    assert_eq!(files, expected);

    // It goes on from the image's index, and all of it survives a reopen.
    let r = cache
        .commit(f.put(&f.owner, key(99), None, b"after the image"))
        .unwrap();
    assert_eq!(r.index, last + 1);
    drop(cache);
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    let cache = f.open(&storage);
    assert_eq!(cache.last_index(), last + 1);
    let mut want = want;
    want.push((key(99), b"after the image".to_vec()));
    assert_eq!(
        contents(&cache, (0..30).chain([99]).map(key), &f.data),
        want
    );
}

#[test]
fn an_image_not_ahead_or_of_another_chain_changes_nothing() {
    let f = Fixture::new();
    let (up, last) = upstream(&f);
    let image = up.contents(&snapshot_name(last)).unwrap();

    // Not ahead: a cache that already has more than the image.
    let (mem, cache) = f.mem_chain();
    for i in 0..40 {
        cache
            .commit(f.put(&f.owner, key(i), None, &value(i, 7)))
            .unwrap();
    }
    let before = cache.last_index();
    mem.set_contents(TMP, image.clone());
    assert!(!cache.install_image(TMP, last).unwrap());
    assert_eq!(cache.last_index(), before);
    assert_eq!(
        cache.read_plain(&key(0), &f.data).unwrap().unwrap().1,
        value(0, 7)
    );

    // Another chain's image, ahead of this cache: refused, the cache as it was.
    let other = Fixture {
        chain_id: ChainId::from_hex("ffeeddccbbaa99887766554433221100").unwrap(),
        ..Fixture::new()
    };
    let (mem, cache) = other.mem_chain();
    cache
        .commit(other.put(&other.owner, key(5), None, b"mine"))
        .unwrap();
    mem.set_contents(TMP, image);
    match cache.install_image(TMP, last) {
        Err(ChainError::Log(LogError::WrongChain(m))) => {
            assert!(m.contains("is an image of chain"), "{m}")
        }
        other => panic!("another chain's image: {other:?}"),
    }
    assert_eq!(cache.last_index(), 2);
    assert_eq!(
        cache.read_plain(&key(5), &other.data).unwrap().unwrap().1,
        b"mine"
    );
}

/// A crash after the image got its name but before the old segments went leaves both: the
/// chain opens at the image (the segments lie wholly below it).
#[test]
fn a_crash_in_the_middle_of_a_switch_opens_at_the_image() {
    let f = Fixture::new();
    let (up, last) = upstream(&f);
    let (mem, cache) = f.mem_chain();
    for i in 0..5 {
        cache
            .commit(f.put(&f.owner, key(i), None, &value(i, 0)))
            .unwrap();
    }
    drop(cache);
    mem.set_contents(
        &snapshot_name(last),
        up.contents(&snapshot_name(last)).unwrap(),
    );
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    let cache = f.open(&storage);
    assert_eq!(cache.last_index(), last);
    assert_eq!(
        cache.read_plain(&key(0), &f.data).unwrap().unwrap().1,
        value(0, 1)
    );
    let r = cache
        .commit(f.put(&f.owner, key(99), None, b"after"))
        .unwrap();
    assert_eq!(r.index, last + 1);
}
