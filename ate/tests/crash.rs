//! Power-cut recovery: cutting the last segment at every byte of its final frames leaves exactly
//! the complete frames, which always include everything acknowledged; damage elsewhere is an
//! error naming the file and offset.
#![allow(clippy::unwrap_used)]

mod common;

use ate::redo::{segment_name, LogError};
use ate::storage::{MemStorage, Storage};
use ate::{ChainError, RecordKey};
use common::{key, Fixture};
use std::sync::Arc;

/// Commits `n` puts; returns the segment length after each commit.
fn build(f: &Fixture, n: u128) -> (MemStorage, Vec<usize>) {
    let (mem, chain) = f.mem_chain();
    let seg = segment_name(1);
    let mut lens = vec![mem.contents(&seg).unwrap().len()];
    for i in 0..n {
        chain
            .commit(f.put(&f.owner, key(i), None, format!("value {i}").as_bytes()))
            .unwrap();
        lens.push(mem.contents(&seg).unwrap().len());
    }
    (mem, lens)
}

fn reopen(f: &Fixture, mem: &MemStorage) -> Result<ate::Chain, ChainError> {
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    ate::Chain::open(storage, Some(f.chain_id), Default::default(), |_, _| {}).map(|(c, _)| c)
}

#[test]
fn cut_at_every_offset_of_the_final_frames_keeps_exactly_the_complete_prefix() {
    let f = Fixture::new();
    let acked = 4u128;
    let (mem, lens) = build(&f, acked + 3);
    let full = mem.crash_image().contents(&segment_name(1)).unwrap();
    let acked_len = lens[acked as usize];
    for cut in acked_len..=full.len() {
        let image = mem.crash_image();
        image.set_contents(&segment_name(1), full[..cut].to_vec());
        let chain = reopen(&f, &image).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let complete = lens.iter().filter(|&&l| l <= cut).count() as u128 - 1;
        assert!(complete >= acked);
        // Genesis is index 1, so `complete` puts end at index complete + 1.
        assert_eq!(chain.last_index() as u128, complete + 1, "cut at {cut}");
        for i in 0..acked + 3 {
            let got = chain.read_plain(&key(i), &f.data).unwrap().map(|(_, p)| p);
            let want = (i < complete).then(|| format!("value {i}").into_bytes());
            assert_eq!(got, want, "cut at {cut}, key {i}");
        }
        // The log is writable after recovery, and what is written survives another reopen.
        chain
            .commit(f.put(&f.owner, key(1000), None, b"after"))
            .unwrap();
        drop(chain);
        let again = reopen(&f, &image.crash_image()).unwrap();
        assert_eq!(
            again.read_plain(&key(1000), &f.data).unwrap().unwrap().1,
            b"after"
        );
        assert_eq!(again.last_index() as u128, complete + 2);
    }
}

#[test]
fn zeroed_tail_is_torn_but_damage_before_a_valid_frame_is_an_error() {
    let f = Fixture::new();
    let (mem, lens) = build(&f, 5);
    let seg = segment_name(1);
    let full = mem.contents(&seg).unwrap();

    // Zeros after the last frame (allocated, never written): truncated silently.
    let image = mem.crash_image();
    let mut z = full.clone();
    z.extend(std::iter::repeat_n(0u8, 5000));
    image.set_contents(&seg, z);
    assert_eq!(reopen(&f, &image).unwrap().last_index(), 6);

    // A flipped byte inside the third put's frame, with valid frames after it: refuse to open.
    for (what, at) in [
        ("payload", lens[2] + 40),
        ("length field", lens[2] + 9),
        ("magic", lens[2]),
    ] {
        let image = mem.crash_image();
        let mut bad = full.clone();
        bad[at] ^= 0x55;
        image.set_contents(&seg, bad);
        match reopen(&f, &image) {
            Err(ChainError::Log(LogError::Corrupt { file, offset, .. })) => {
                assert_eq!(file, seg, "{what}");
                assert_eq!(offset, lens[2] as u64, "{what}");
            }
            other => panic!("{what}: expected corruption error, got {other:?}"),
        }
        // Nothing was repaired behind our back.
        assert_eq!(image.contents(&seg).unwrap()[at], full[at] ^ 0x55);
    }

    // Damage in a segment that is not the last one is never a torn tail.
    let image = mem.crash_image();
    let mut cut = full.clone();
    cut.truncate(lens[5] - 3);
    image.set_contents(&seg, cut);
    image.set_contents(
        &segment_name(7),
        image.contents(&seg).unwrap()[..40].to_vec(),
    );
    assert!(matches!(
        reopen(&f, &image),
        Err(ChainError::Log(LogError::Corrupt { .. }))
    ));
}

#[test]
fn a_segment_created_without_its_header_is_dropped() {
    let f = Fixture::new();
    let (mem, _) = build(&f, 2);
    let image = mem.crash_image();
    image.set_contents(&segment_name(4), vec![0x41; 10]);
    let chain = reopen(&f, &image).unwrap();
    assert_eq!(chain.last_index(), 3);
    let _ = RecordKey::random();
}

/// Deferred syncs: a commit is readable at once but only on disk after `sync` (or the delay);
/// a power cut before that loses a suffix of unsynced commits, never anything synced, and the
/// log recovers to a prefix.
#[test]
fn deferred_sync_acknowledges_before_disk_and_sync_makes_it_durable() {
    let f = Fixture::new();
    let mem = MemStorage::new();
    let storage: Arc<dyn Storage> = Arc::new(mem.clone());
    let opts = ate::ChainOptions {
        // Long enough that only `sync` can make these durable during the test.
        deferred_sync: Some(std::time::Duration::from_secs(3600)),
        ..Default::default()
    };
    let (chain, _) = ate::Chain::open(storage, Some(f.chain_id), opts, |_, _| {}).unwrap();
    chain
        .commit(f.genesis(ate::RootAuthority::single_owner(f.owner.public())))
        .unwrap();
    chain.sync().unwrap();
    let synced = chain.durable_index();
    for i in 0..3 {
        chain
            .commit(f.put(&f.owner, key(i), None, format!("value {i}").as_bytes()))
            .unwrap();
    }
    // Readable and acknowledged, not durable.
    assert_eq!(chain.last_index(), synced + 3);
    assert_eq!(chain.durable_index(), synced);
    assert_eq!(
        chain.read_plain(&key(2), &f.data).unwrap().unwrap().1,
        b"value 2"
    );
    let cut = reopen(&f, &mem.crash_image()).unwrap();
    assert_eq!(
        cut.last_index(),
        synced,
        "a power cut before sync keeps the synced prefix"
    );
    assert!(cut.read_plain(&key(0), &f.data).unwrap().is_none());
    drop(cut);

    chain.sync().unwrap();
    assert_eq!(chain.durable_index(), synced + 3);
    let after = reopen(&f, &mem.crash_image()).unwrap();
    assert_eq!(after.last_index(), synced + 3);
    for i in 0..3 {
        assert_eq!(
            after.read_plain(&key(i), &f.data).unwrap().unwrap().1,
            format!("value {i}").into_bytes()
        );
    }
}
