//! atefs mounts of one chain of a three-replica cluster, as two "hosts" (two mount daemons with
//! their own caches): each sees the other's changes at open (close-to-open), racing exclusive
//! creates of one name give one success and one EEXIST, and no replica stores a name or a
//! content in plaintext. Needs root and /dev/fuse (skipped otherwise) and the atefs binary
//! (built with the workspace).
#![allow(clippy::unwrap_used)]

mod common;

use common::mount::{await_status, eventually, setup, setup_with, status_of, Mount, EIO};
use common::{files_under, rt, Cluster, Stopped};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn two_hosts_share_a_chain_with_close_to_open_and_exclusive_creates() {
    let Some((cluster, tmp, keys)) = setup() else {
        return;
    };
    let a = Mount::start(&cluster, tmp.path(), "a", &keys);
    let b = Mount::start(&cluster, tmp.path(), "b", &keys);

    // Close-to-open: what one host wrote and closed, the other reads at its next open.
    let secret_name = "plan-3f9e2a77.txt";
    let secret = b"the body 41c6d0e8b7 that servers must never see\n";
    std::fs::write(a.dir.join(secret_name), secret).unwrap();
    assert_eq!(std::fs::read(b.dir.join(secret_name)).unwrap(), secret);
    std::fs::create_dir(b.dir.join("from-b")).unwrap();
    std::fs::write(b.dir.join("from-b/note"), b"v1").unwrap();
    assert_eq!(std::fs::read(a.dir.join("from-b/note")).unwrap(), b"v1");
    // An overwrite on one host replaces what the other reads after reopening.
    std::fs::write(b.dir.join("from-b/note"), b"version two").unwrap();
    assert_eq!(
        std::fs::read(a.dir.join("from-b/note")).unwrap(),
        b"version two"
    );
    let names: Vec<String> = std::fs::read_dir(&a.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&"from-b".to_string()), "{names:?}");

    // Racing exclusive creates of one name: one success, one EEXIST, every time.
    for i in 0..20 {
        let name = format!("race-{i}");
        let (pa, pb) = (a.dir.join(&name), b.dir.join(&name));
        let results: Vec<std::io::Result<std::fs::File>> = std::thread::scope(|s| {
            let ha = s.spawn(|| std::fs::File::create_new(&pa));
            let hb = s.spawn(|| std::fs::File::create_new(&pb));
            vec![ha.join().unwrap(), hb.join().unwrap()]
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let exists = results
            .iter()
            .filter(|r| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists))
            .count();
        assert_eq!((ok, exists), (1, 1), "race {i}: {results:?}");
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(a.dir.join("race-0"))
        .unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    drop((a, b));

    // No replica holds the name or the content in plaintext.
    for r in &cluster.replicas {
        for file in files_under(&r.data) {
            let bytes = std::fs::read(&file).unwrap();
            for needle in [secret_name.as_bytes(), &secret[..]] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds plaintext",
                    file.display()
                );
            }
        }
    }
}

/// An --exclusive (single-writer) mount queues namespace changes and data without waiting for
/// the cluster; fsync is the durability point. Many small files written, then each fsynced
/// (fsync gathering, many files per transaction, batched commits), and a file larger than one
/// transaction; then the daemon is killed (-9) right after the last fsync returned. Another
/// mount, with an empty cache, reads everything back from the cluster.
#[test]
fn an_exclusive_mount_is_durable_on_the_cluster_at_fsync() {
    let Some((cluster, tmp, keys)) = setup() else {
        return;
    };
    let mut w = Mount::start_with(&cluster, tmp.path(), "writer", &keys, &["--exclusive"]);
    std::fs::create_dir(w.dir.join("d")).unwrap();
    let content = |i: usize| format!("file {i} {}\n", "x".repeat(i % 5000)).into_bytes();
    let mut files: Vec<std::fs::File> = (0..300)
        .map(|i| {
            let mut f = std::fs::File::create_new(w.dir.join(format!("d/f{i}"))).unwrap();
            f.write_all(&content(i)).unwrap();
            f
        })
        .collect();
    let big: Vec<u8> = (0..(40u32 << 20) / 4)
        .flat_map(|i| i.to_le_bytes())
        .collect();
    let mut bf = std::fs::File::create_new(w.dir.join("big")).unwrap();
    bf.write_all(&big).unwrap();
    bf.sync_all().unwrap();
    for f in &mut files {
        f.sync_all().unwrap();
    }
    // Killed with its files still open: nothing is flushed at close or unmount.
    w.child.kill().unwrap();
    let _ = w.child.wait();
    let _ = Command::new("umount").arg("-l").arg(&w.dir).status();
    drop(files);
    drop(bf);

    let r = Mount::start(&cluster, tmp.path(), "reader", &keys);
    for i in 0..300 {
        assert_eq!(
            std::fs::read(r.dir.join(format!("d/f{i}"))).unwrap(),
            content(i),
            "d/f{i}"
        );
    }
    assert!(
        std::fs::read(r.dir.join("big")).unwrap() == big,
        "big differs"
    );
    drop(r);
    drop(w);
}

/// What the cluster says of the chain of a volume's keys.
struct VolumeInfo {
    rt: tokio::runtime::Runtime,
    client: ate::remote::RemoteClient,
    chain: ate::ChainId,
}

impl VolumeInfo {
    fn of(cluster: &Cluster, keys: &Path) -> VolumeInfo {
        VolumeInfo {
            rt: rt(),
            client: cluster.client(std::time::Duration::from_secs(20)),
            chain: ate::KeyFile::load(keys).unwrap().chain,
        }
    }

    fn get(&self) -> ate::remote::pb::chain::InfoReply {
        self.rt.block_on(self.client.info(self.chain)).unwrap()
    }
}

/// A host whose cache is empty (a pod on a new node) or behind what the cluster still keeps in
/// its log (a host that was away while the cluster compacted) catches up through the
/// cluster's snapshot of the chain, then follows the chain as usual.
#[test]
fn a_new_or_stale_cache_catches_up_through_the_snapshot() {
    let Some((cluster, tmp, keys)) = setup_with(40) else {
        return;
    };
    let volume = VolumeInfo::of(&cluster, &keys);
    let info = || volume.get();

    let stale = Mount::start(&cluster, tmp.path(), "stale", &keys);
    std::fs::write(stale.dir.join("early"), b"before the snapshot").unwrap();
    drop(stale);
    let stale_at = info().index;

    let w = Mount::start(&cluster, tmp.path(), "writer", &keys);
    let mut n = 0;
    while info().first_index <= stale_at + 1 {
        assert!(
            n < 3000,
            "the cluster never compacted the chain: {:?}",
            info()
        );
        std::fs::write(w.dir.join(format!("f{n}")), format!("file {n}")).unwrap();
        n += 1;
    }
    std::fs::write(w.dir.join("f0"), b"overwritten").unwrap();
    std::fs::remove_file(w.dir.join("f1")).unwrap();
    std::fs::write(w.dir.join("early"), b"after the snapshot").unwrap();
    assert!(info().first_index > 1);

    let fresh = Mount::start(&cluster, tmp.path(), "fresh", &keys);
    let stale = Mount::start(&cluster, tmp.path(), "stale", &keys);
    for m in [&fresh, &stale] {
        assert_eq!(std::fs::read(m.dir.join("f0")).unwrap(), b"overwritten");
        assert!(!m.dir.join("f1").exists(), "a deleted file came back");
        for i in 2..n {
            assert_eq!(
                std::fs::read(m.dir.join(format!("f{i}"))).unwrap(),
                format!("file {i}").into_bytes(),
                "f{i}"
            );
        }
        assert_eq!(
            std::fs::read(m.dir.join("early")).unwrap(),
            b"after the snapshot"
        );
    }
    // Both follow the chain from there on.
    std::fs::write(fresh.dir.join("later"), b"from the fresh host").unwrap();
    assert_eq!(
        std::fs::read(stale.dir.join("later")).unwrap(),
        b"from the fresh host"
    );
    drop((fresh, stale, w));
}

/// The snapshot files (`snap-*.snap`) under a mount's cache directory.
fn images_in(cache: &Path) -> Vec<PathBuf> {
    files_under(cache)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap-") && n.ends_with(".snap"))
        })
        .collect()
}

/// A mount whose daemon was frozen (SIGSTOP) while the cluster compacted past everything it
/// had catches up by itself, still mounted: its subscription is refused ("covered by a
/// snapshot"), it takes the chain's image into its cache and follows on from there, so the
/// next open sees every change made meanwhile and its own writes land. Before session 29 it
/// stopped following for good: every open and write failed until a remount.
#[test]
fn a_mount_frozen_past_the_clusters_log_catches_up_while_mounted() {
    let Some((cluster, tmp, keys)) = setup_with(40) else {
        return;
    };
    let volume = VolumeInfo::of(&cluster, &keys);
    let info = || volume.get();

    let frozen = Mount::start(&cluster, tmp.path(), "frozen", &keys);
    let w = Mount::start(&cluster, tmp.path(), "writer", &keys);
    let mut f = std::fs::File::create(frozen.dir.join("early")).unwrap();
    f.write_all(b"before the freeze").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let cache = tmp.path().join("frozen-cache");
    assert!(images_in(&cache).is_empty());
    let at = info().index;

    let stopped = Stopped::stop(frozen.child.id());
    // Past the log the cluster keeps, and past what the frozen subscription's buffers (the
    // sockets', HTTP/2's windows) took in before it froze: 32 MiB.
    let content = |i: usize| format!("file {i} ").repeat(16 << 10).into_bytes();
    let mut n = 0;
    while info().first_index <= at + 1 || n < 256 {
        assert!(
            n < 3000,
            "the cluster never compacted the chain: {:?}",
            info()
        );
        std::fs::write(w.dir.join(format!("f{n}")), content(n)).unwrap();
        n += 1;
    }
    std::fs::write(w.dir.join("early"), b"after the freeze").unwrap();
    std::fs::remove_file(w.dir.join("f0")).unwrap();
    drop(stopped);

    // An open waits until the cache has what the cluster has (close-to-open).
    assert_eq!(
        std::fs::read(frozen.dir.join("early")).unwrap(),
        b"after the freeze"
    );
    assert!(!frozen.dir.join("f0").exists(), "a deleted file came back");
    for i in 1..n {
        assert!(
            std::fs::read(frozen.dir.join(format!("f{i}"))).unwrap() == content(i),
            "f{i}"
        );
    }
    assert_eq!(
        images_in(&cache).len(),
        1,
        "no image in {}",
        cache.display()
    );
    let mut f = std::fs::File::create(frozen.dir.join("later")).unwrap();
    f.write_all(b"from the thawed host").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(
        std::fs::read(w.dir.join("later")).unwrap(),
        b"from the thawed host"
    );
    drop((frozen, w));
}

/// A mount rides out an outage of the whole cluster without a remount: while no replica
/// answers (longer than its `--timeout-secs 4`), a file open before still reads from the
/// cache, and an fsync or a create fails with EIO instead of hanging; once the replicas are
/// back, opens
/// work again, the data whose commit failed is committed after all (a fresh host reads it),
/// and new writes reach other hosts. Before session 29 the mount failed every open, close and
/// fsync from the outage on until it was unmounted.
#[test]
fn a_mount_rides_out_an_outage_of_the_whole_cluster() {
    let Some((mut cluster, tmp, keys)) = setup() else {
        return;
    };
    let host = Mount::start_with(
        &cluster,
        tmp.path(),
        "host",
        &keys,
        &["--timeout-secs", "4"],
    );
    let write_synced = |name: &str, body: &[u8]| {
        let mut f = std::fs::File::create(host.dir.join(name))?;
        f.write_all(body)?;
        f.sync_all()
    };
    write_synced("before", b"written before the outage").unwrap();
    let mut open_before = std::fs::File::open(host.dir.join("before")).unwrap();
    write_synced("during", b"").unwrap();
    let mut during = std::fs::OpenOptions::new()
        .write(true)
        .open(host.dir.join("during"))
        .unwrap();

    for i in 0..3 {
        cluster.kill(i);
    }
    during.write_all(b"written during the outage").unwrap();
    let e = during.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EIO), "{e}");
    let e = write_synced("created during", b"").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EIO), "{e}");
    // Said on the root (what a CSI node plugin reports as the volume's condition) once the
    // mount's subscription, too, has retried for its 4 s.
    let status = await_status(
        &host.dir,
        "not following: ",
        std::time::Duration::from_secs(20),
    );
    assert!(status.contains("reconnecting"), "{status}");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut open_before, &mut text).unwrap();
    assert_eq!(text, "written before the outage");

    for i in 0..3 {
        cluster.spawn(i, false);
    }
    for i in 0..3 {
        cluster.wait_ready(i, std::time::Duration::from_secs(30));
    }
    // The mount reconnects by itself, within a second of the cluster answering; until then
    // an open fails at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let reread = loop {
        match std::fs::read(host.dir.join("before")) {
            Ok(b) => break b,
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(e.raw_os_error(), Some(EIO), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("the mount never came back: {e}"),
        }
    };
    assert_eq!(reread, b"written before the outage");
    // What failed to commit stayed buffered; an fsync now commits it. (A replica restarted
    // last may still call an election, and on a loaded machine that can outlast the 4 s: an
    // EIO then is what the mount gives while it waits, and the data stays buffered.)
    eventually(|| during.sync_all());
    drop(during);
    eventually(|| write_synced("after", b"written after the outage"));
    assert_eq!(status_of(&host.dir), "following");
    let fresh = Mount::start(&cluster, tmp.path(), "fresh", &keys);
    assert_eq!(
        std::fs::read(fresh.dir.join("during")).unwrap(),
        b"written during the outage"
    );
    assert_eq!(
        std::fs::read(fresh.dir.join("after")).unwrap(),
        b"written after the outage"
    );
    drop(open_before);
    drop((fresh, host));
}

/// `--exclusive` is enforced by the cluster: a newer exclusive mount takes the writer lease,
/// and from then on the older mount's commits are refused (its fsync fails) instead of being
/// merged with the newer writer's.
#[test]
fn a_newer_exclusive_mount_fences_the_older_one() {
    let Some((cluster, tmp, keys)) = setup() else {
        return;
    };
    let old = Mount::start_with(&cluster, tmp.path(), "old", &keys, &["--exclusive"]);
    let mut f = std::fs::File::create_new(old.dir.join("a")).unwrap();
    f.write_all(b"written while holding the lease").unwrap();
    f.sync_all().unwrap();
    drop(f);

    let new = Mount::start_with(&cluster, tmp.path(), "new", &keys, &["--exclusive"]);
    let mut f = std::fs::File::create_new(old.dir.join("b")).unwrap();
    f.write_all(b"written after the lease moved").unwrap();
    let fenced = f.sync_all();
    assert!(
        fenced.is_err(),
        "the fenced mount's fsync succeeded: {fenced:?}"
    );
    drop(f);

    assert_eq!(
        std::fs::read(new.dir.join("a")).unwrap(),
        b"written while holding the lease"
    );
    assert!(
        !new.dir.join("b").exists(),
        "the fenced mount's file reached the chain"
    );
    let mut f = std::fs::File::create_new(new.dir.join("c")).unwrap();
    f.write_all(b"the lease holder writes on").unwrap();
    f.sync_all().unwrap();
    drop(f);
    drop((old, new));
}

/// The cache is never fdatasynced (the cluster holds the chain), so after a host's crash any
/// part of it may be damaged: a damaged cache is cut at its first defect and the rest fetched
/// again from the cluster, where a durable log would refuse to open; a damaged snapshot makes
/// the mount clear the cache and fetch it whole.
#[test]
fn a_damaged_cache_is_cut_and_fetched_again() {
    let Some((cluster, tmp, keys)) = setup() else {
        return;
    };
    let content = |i: usize| format!("file {i} {}\n", "y".repeat(10_000 + i)).into_bytes();
    let big: Vec<u8> = (0..(3u32 << 20) / 4)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    let host = Mount::start(&cluster, tmp.path(), "host", &keys);
    for i in 0..50 {
        std::fs::write(host.dir.join(format!("f{i}")), content(i)).unwrap();
    }
    std::fs::write(host.dir.join("big"), &big).unwrap();
    std::fs::write(host.dir.join("last"), b"written last").unwrap();
    drop(host);

    let chain = ate::KeyFile::load(&keys).unwrap().chain;
    let cache = tmp
        .path()
        .join("host-cache")
        .join(format!("cache-{}", chain.to_hex()));
    let segment = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| ate::redo::parse_name(n.to_str()?))
                .is_some_and(|(segment, _)| segment)
        })
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("the cache has a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let len = bytes.len();
    assert!(len > 3 << 20, "{} is {len} bytes", segment.display());
    // Damage in the middle, with whole entries after it: not a torn tail.
    for b in &mut bytes[len / 3..len / 3 + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&segment, &bytes).unwrap();

    let host = Mount::start(&cluster, tmp.path(), "host", &keys);
    for i in 0..50 {
        assert_eq!(
            std::fs::read(host.dir.join(format!("f{i}"))).unwrap(),
            content(i),
            "f{i}"
        );
    }
    assert!(
        std::fs::read(host.dir.join("big")).unwrap() == big,
        "big differs"
    );
    assert_eq!(
        std::fs::read(host.dir.join("last")).unwrap(),
        b"written last"
    );
    drop(host);

    // A damaged snapshot cannot be cut: the cache is cleared and fetched whole.
    std::fs::write(cache.join(ate::redo::snapshot_name(5)), vec![0x41; 4096]).unwrap();
    let host = Mount::start(&cluster, tmp.path(), "host", &keys);
    assert!(
        std::fs::read(host.dir.join("big")).unwrap() == big,
        "big differs"
    );
    assert_eq!(std::fs::read(host.dir.join("f7")).unwrap(), content(7));
    drop(host);
}
