//! atefs mounts of one chain of a three-replica cluster, as two "hosts" (two mount daemons with
//! their own caches): each sees the other's changes at open (close-to-open), racing exclusive
//! creates of one name give one success and one EEXIST, and no replica stores a name or a
//! content in plaintext. Needs root and /dev/fuse (skipped otherwise) and the atefs binary
//! (built with the workspace).
#![allow(clippy::unwrap_used)]

mod common;

use common::{files_under, rt, Cluster, Stopped};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn atefs_bin() -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_chain-server"));
    server.with_file_name("atefs")
}

fn can_mount() -> bool {
    Path::new("/dev/fuse").exists()
        && Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n")
}

/// A mount daemon in the foreground; unmounted (and killed if need be) on drop.
struct Mount {
    dir: PathBuf,
    child: Child,
}

impl Mount {
    fn start(cluster: &Cluster, root: &Path, name: &str, keys: &Path) -> Mount {
        Self::start_with(cluster, root, name, keys, &[])
    }

    fn start_with(
        cluster: &Cluster,
        root: &Path,
        name: &str,
        keys: &Path,
        extra: &[&str],
    ) -> Mount {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(atefs_bin())
            .arg("mount")
            .arg(&dir)
            .arg("--data")
            .arg(root.join(format!("{name}-cache")))
            .args(cluster_args(cluster, keys))
            .arg("--foreground")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "mounted", "mount {name} failed");
        Mount { dir, child }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new(atefs_bin())
            .arg("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A cluster, a temp dir and a fresh volume key envelope; None when mounts are impossible.
fn setup() -> Option<(Cluster, tempfile::TempDir, PathBuf)> {
    setup_with(1_000_000)
}

/// As [`setup`], with a snapshot every `snapshot_every` entries.
fn setup_with(snapshot_every: u64) -> Option<(Cluster, tempfile::TempDir, PathBuf)> {
    if !can_mount() {
        eprintln!("skipped: needs root and /dev/fuse");
        return None;
    }
    assert!(
        atefs_bin().exists(),
        "{} missing: build the workspace (cargo build --workspace)",
        atefs_bin().display()
    );
    let cluster = Cluster::start(true, snapshot_every);
    let tmp = tempfile::tempdir().unwrap();
    let keys = keygen(&tmp.path().join("keys"));
    Some((cluster, tmp, keys))
}

/// A fresh volume key envelope at `path` (`atefs keygen`).
fn keygen(path: &Path) -> PathBuf {
    assert!(Command::new(atefs_bin())
        .arg("keygen")
        .arg(path)
        .status()
        .unwrap()
        .success());
    path.to_path_buf()
}

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

/// errno of an I/O error.
const EIO: i32 = 5;

/// Runs `op` until it succeeds, for at most 30 s; only EIO may come meanwhile.
fn eventually(mut op: impl FnMut() -> std::io::Result<()>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match op() {
            Ok(()) => return,
            Err(e) if e.raw_os_error() == Some(EIO) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => panic!("still failing: {e}"),
        }
    }
}

/// The `atefs.status` attribute of a mount's root.
fn status_of(dir: &Path) -> String {
    let mut buf = [0u8; 4096];
    let n = rustix::fs::getxattr(dir, "atefs.status", &mut buf[..]).unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut status = status_of(&host.dir);
    while status == "following" && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        status = status_of(&host.dir);
    }
    assert!(
        status.starts_with("not following: ") && status.contains("reconnecting"),
        "{status}"
    );
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

/// The arguments naming the volume of `keys` on `cluster`: `--server`, `--keys`, `--ca`.
fn cluster_args(cluster: &Cluster, keys: &Path) -> [std::ffi::OsString; 6] {
    [
        "--server".into(),
        cluster.endpoints().join(",").into(),
        "--keys".into(),
        keys.into(),
        "--ca".into(),
        cluster.dir.path().join("certs/ca.pem").into(),
    ]
}

/// `atefs COMMAND ARGS` for the volume of `keys` on `cluster`.
fn atefs_on(cluster: &Cluster, keys: &Path, command: &str, args: &[&str]) -> std::process::Output {
    Command::new(atefs_bin())
        .arg(command)
        .args(args)
        .args(cluster_args(cluster, keys))
        .output()
        .unwrap()
}

/// statfs through the kernel: (size, used) in bytes.
fn volume_usage(dir: &Path) -> (u64, u64) {
    let out = Command::new("stat")
        .args(["-f", "-c", "%b %f %S"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "stat -f {}", dir.display());
    let text = String::from_utf8(out.stdout).unwrap();
    let n: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    (n[0] * n[2], (n[0] - n[1]) * n[2])
}

fn volume_size(dir: &Path) -> u64 {
    volume_usage(dir).0
}

/// A volume's quota bounds what it holds, not what was written to it: on a shared mount and
/// on an exclusive one (whose deletions are queued), a 1 MiB file rewritten twelve times
/// fits a 4 MiB volume, `df` counts it once, a file that does not fit beside it is refused
/// with ENOSPC, and once the files are removed it fits. Before, the cluster counted every
/// byte ever committed: the fifth rewrite failed and so did the removal.
#[test]
fn rewrites_do_not_use_a_volume_up_and_a_removal_makes_room() {
    let Some((cluster, tmp, keys)) = setup() else {
        return;
    };
    for (name, extra) in [("shared", &[][..]), ("exclusive", &["--exclusive"][..])] {
        let keys = match name {
            "shared" => keys.clone(),
            _ => keygen(&tmp.path().join("keys-exclusive")),
        };
        let args = [&["--quota", "4194304"][..], extra].concat();
        let m = Mount::start_with(&cluster, tmp.path(), name, &keys, &args);
        let write = |file: &str, data: &[u8]| -> std::io::Result<()> {
            let mut f = std::fs::File::create(m.dir.join(file))?;
            f.write_all(data)?;
            f.sync_all()
        };
        for round in 0..12u8 {
            write("a", &vec![round; 1 << 20]).unwrap();
        }
        let (size, used) = volume_usage(&m.dir);
        assert_eq!(size, 4 << 20, "{name}");
        assert!((1 << 20..5 << 19).contains(&used), "{name}: used {used}");
        let big: Vec<u8> = (0..7u32 << 19).map(|i| (i % 251) as u8).collect();
        let refused = write("b", &big).unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::StorageFull,
            "{name}: {refused}"
        );
        // What was refused stays buffered for as long as its file is there (and lands once
        // there is room): removed with the file it was refused for.
        std::fs::remove_file(m.dir.join("b")).unwrap();
        std::fs::remove_file(m.dir.join("a")).unwrap();
        write("c", &big).unwrap();
        assert!(std::fs::read(m.dir.join("c")).unwrap() == big, "{name}");
        let (_, used) = volume_usage(&m.dir);
        assert!((7 << 19..4 << 20).contains(&used), "{name}: used {used}");
    }
}

/// A volume's expansion while it is mounted: the chain's owner raises its quota on the
/// cluster; the mount's statfs shows the new size, and a write the old quota refused with
/// ENOSPC lands.
#[test]
fn a_raised_quota_reaches_a_mounted_volume() {
    let Some((cluster, tmp, keys)) = setup() else {
        return;
    };
    let m = Mount::start_with(&cluster, tmp.path(), "m", &keys, &["--quota", "1048576"]);
    assert_eq!(volume_size(&m.dir), 1 << 20);
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
    let refused = std::fs::write(m.dir.join("big"), &data).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::StorageFull, "{refused}");

    // Raised the way a user without Kubernetes does it.
    let quota = |args: &[&str]| {
        let out = atefs_on(&cluster, &keys, "quota", args);
        assert!(out.status.success(), "atefs quota {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let said = quota(&["8388608"]);
    assert!(said.contains("quota 8388608 bytes"), "{said}");
    let said = quota(&[]);
    assert!(said.contains("of 8388608 bytes used"), "{said}");
    // The mount reads the quota again at most once a second (atefs::quota::REFRESH).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while volume_size(&m.dir) != 8 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "statfs still says {} bytes",
            volume_size(&m.dir)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut f = std::fs::File::create(m.dir.join("big")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Another host sees the file, and the size, from its first statfs.
    let other = Mount::start(&cluster, tmp.path(), "other", &keys);
    assert_eq!(volume_size(&other.dir), 8 << 20);
    assert!(std::fs::read(other.dir.join("big")).unwrap() == data);
    drop((other, m));
}

/// `atefs clone`: a copy of a mounted volume as of one moment, with keys of its own. The copy
/// holds the tree as it was (contents, modes, times, links), and from then on each volume
/// goes its own way.
#[test]
fn a_clone_holds_the_volume_as_it_was_and_then_goes_its_own_way() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some((cluster, tmp, keys)) = setup() else {
        return;
    };
    let src = Mount::start(&cluster, tmp.path(), "src", &keys);
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::create_dir(src.dir.join("d")).unwrap();
    let mut f = std::fs::File::create(src.dir.join("d/f")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::set_permissions(src.dir.join("d/f"), PermissionsExt::from_mode(0o640)).unwrap();
    std::fs::hard_link(src.dir.join("d/f"), src.dir.join("d/h")).unwrap();
    std::os::unix::fs::symlink("d/f", src.dir.join("l")).unwrap();
    std::fs::write(src.dir.join("gone"), b"x").unwrap();
    std::fs::remove_file(src.dir.join("gone")).unwrap();

    let out = tmp.path().join("clone-keys");
    let clone = |out: &Path, extra: &[&str]| {
        let mut args = vec![out.to_str().unwrap()];
        args.extend_from_slice(extra);
        atefs_on(&cluster, &keys, "clone", &args)
    };
    // Too small a quota for the copy: refused, and nothing is left behind.
    let small = tmp.path().join("small-keys");
    let refused = clone(&small, &["--quota", "1048576"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a 3 MiB volume copied into 1 MiB"
    );
    assert!(said.contains("quota"), "{said}");
    assert!(!small.exists(), "the failed copy's keys were kept");
    let made = clone(&out, &[]);
    assert!(made.status.success(), "atefs clone: {made:?}");
    let again = clone(&out, &[]);
    assert!(
        !again.status.success(),
        "an existing key file was overwritten"
    );
    // The source goes on after the clone was taken.
    std::fs::write(src.dir.join("after"), b"later").unwrap();

    let copy = Mount::start(&cluster, tmp.path(), "copy", &out);
    assert!(std::fs::read(copy.dir.join("d/f")).unwrap() == data);
    let (a, b) = (
        std::fs::metadata(src.dir.join("d/f")).unwrap(),
        std::fs::metadata(copy.dir.join("d/f")).unwrap(),
    );
    assert_eq!(b.mode(), a.mode());
    assert_eq!(b.nlink(), 2);
    assert_eq!(b.modified().unwrap(), a.modified().unwrap());
    assert_eq!(
        std::fs::metadata(copy.dir.join("d/h")).unwrap().ino(),
        b.ino()
    );
    assert_eq!(
        std::fs::read_link(copy.dir.join("l")).unwrap(),
        Path::new("d/f")
    );
    let mut names: Vec<String> = std::fs::read_dir(&copy.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["d", "l"]);

    std::fs::write(copy.dir.join("mine"), b"clone only").unwrap();
    std::fs::write(copy.dir.join("d/f"), b"rewritten in the clone").unwrap();
    assert!(!src.dir.join("mine").exists());
    assert!(std::fs::read(src.dir.join("d/f")).unwrap() == data);
    assert_eq!(
        std::fs::read(copy.dir.join("d/h")).unwrap(),
        b"rewritten in the clone"
    );
    drop((copy, src));
}

/// The chain servers' disks nearly full, through real mounts (shared and exclusive): files
/// are written and fsynced until one is refused with ENOSPC (the leaders keep a reserve),
/// every file acknowledged before reads back whole, removing the files works on the full
/// disks, and once the disks are larger a file is written again. Before the reserve the
/// disks filled, the replicas' Raft cores stopped, and writes failed with EIO after 30 s.
#[test]
fn full_chain_server_disks_give_enospc_and_removals_still_work() {
    if !can_mount() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    const MIB: u64 = 1 << 20;
    for (name, extra) in [("shared", &[][..]), ("exclusive", &["--exclusive"][..])] {
        let reserve = (16 * MIB).to_string();
        let args = ["--disk-reserve-bytes", reserve.as_str()];
        let cluster = Cluster::start_on(true, 1_000_000, &args, Some(48 * MIB));
        let tmp = tempfile::tempdir().unwrap();
        let keys = keygen(&tmp.path().join("keys"));
        let m = Mount::start_with(&cluster, tmp.path(), name, &keys, extra);
        let file =
            |i: u32| -> Vec<u8> { (0..4u32 << 20).map(|b| (b % 251) as u8 ^ i as u8).collect() };
        let write = |i: u32| -> std::io::Result<()> {
            let mut f = std::fs::File::create(m.dir.join(format!("f{i}")))?;
            f.write_all(&file(i))?;
            f.sync_all()
        };
        let mut written = 0;
        let refused = loop {
            assert!(written < 20, "{name}: 80 MiB taken on 48 MiB disks");
            match write(written) {
                Ok(()) => written += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::StorageFull,
            "{name}: {refused}"
        );
        assert!(written >= 4, "{name}: only {written} files of 4 MiB");
        for i in 0..written {
            let back = std::fs::read(m.dir.join(format!("f{i}"))).unwrap();
            assert!(back == file(i), "{name}: f{i} reads back otherwise");
        }
        for i in 0..=written {
            std::fs::remove_file(m.dir.join(format!("f{i}")))
                .unwrap_or_else(|e| panic!("{name}: rm f{i} on full disks: {e}"));
        }
        for d in &cluster.disks {
            d.resize(128 * MIB);
        }
        write(100).unwrap_or_else(|e| panic!("{name}: a file once the disks are larger: {e}"));
    }
}

/// `atefs rekey`: a volume gets a new owner and data key in place; a mounted one only when
/// forced. Every replica then drops the log that held the old versions. Afterwards the new
/// key file alone opens it: every file reads back through a mount with the new keys (which hold
/// no other data key), the old key file can neither mount nor resize it, and a mount still
/// running with the old keys stops following (its fsync fails) instead of going on
/// unnoticed. A rekey run again after it finished changes nothing; one interrupted after the
/// owner swap (committed by hand here) is finished by running it again.
#[test]
fn a_rekey_gives_a_volume_new_keys_and_shuts_the_old_ones_out() {
    let Some((cluster, tmp, keys)) = setup() else {
        return;
    };
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let writer = Mount::start(&cluster, tmp.path(), "writer", &keys);
    std::fs::create_dir(writer.dir.join("d")).unwrap();
    std::fs::write(writer.dir.join("d/big"), &data).unwrap();
    for i in 0..20 {
        std::fs::write(writer.dir.join(format!("d/small{i}")), format!("file {i}")).unwrap();
    }
    std::os::unix::fs::symlink("d/big", writer.dir.join("link")).unwrap();
    drop(writer);
    let stale = Mount::start(&cluster, tmp.path(), "stale", &keys);
    assert_eq!(
        std::fs::read(stale.dir.join("d/small3")).unwrap(),
        b"file 3"
    );

    // The replicas' logs hold the file's old versions (sealed under the old data key).
    let chain = ate::KeyFile::load(&keys).unwrap().chain;
    let partition = rt()
        .block_on(
            cluster
                .client(std::time::Duration::from_secs(30))
                .info(chain),
        )
        .unwrap()
        .partition;
    let logs = || -> Vec<u64> {
        (0..3)
            .map(|i| cluster.gauge(i, "atefs_stored_bytes", partition))
            .collect()
    };
    assert!(logs().iter().all(|b| *b > 3 << 20), "{:?}", logs());

    let out = tmp.path().join("new-keys");
    let out_arg = out.to_str().unwrap();
    // A mounted volume is refused unless forced.
    let refused = atefs_on(&cluster, &keys, "rekey", &[out_arg]);
    assert!(!refused.status.success(), "a mounted volume was rekeyed");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("in use") && why.contains("1 subscriptions"),
        "{why}"
    );
    assert!(!out.exists(), "a refused rekey left new keys behind");
    let run = atefs_on(&cluster, &keys, "rekey", &[out_arg, "--force"]);
    assert!(run.status.success(), "atefs rekey: {run:?}");
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        said.contains("new owner and data keys;") && !said.contains(" 0 records"),
        "{said}"
    );

    // Each replica snapshots and drops its log up to the rekey's end: the old versions leave
    // the disks (their check runs once a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !logs().iter().all(|b| *b < 1 << 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "the replicas kept their logs: {:?} bytes",
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let fresh = Mount::start(&cluster, tmp.path(), "fresh", &out);
    assert!(std::fs::read(fresh.dir.join("d/big")).unwrap() == data);
    for i in 0..20 {
        assert_eq!(
            std::fs::read(fresh.dir.join(format!("d/small{i}"))).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
    assert_eq!(
        std::fs::read_link(fresh.dir.join("link")).unwrap(),
        Path::new("d/big")
    );
    let mut f = std::fs::File::create_new(fresh.dir.join("after")).unwrap();
    f.write_all(b"under the new keys").unwrap();
    f.sync_all().unwrap();
    drop(f);

    // The old key file: no mount, no resize.
    let cache = tmp.path().join("old-cache");
    let dir = tmp.path().join("old");
    std::fs::create_dir(&dir).unwrap();
    let mount = atefs_on(
        &cluster,
        &keys,
        "mount",
        &[dir.to_str().unwrap(), "--data", cache.to_str().unwrap()],
    );
    assert!(!mount.status.success(), "the old keys mounted: {mount:?}");
    let resize = atefs_on(&cluster, &keys, "quota", &["1073741824"]);
    assert!(!resize.status.success(), "the old keys resized: {resize:?}");
    // The mount that had the old keys stops following, and says why.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !status_of(&stale.dir).starts_with("not following") {
        assert!(
            std::time::Instant::now() < deadline,
            "the old keys' mount still follows: {}",
            status_of(&stale.dir)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        status_of(&stale.dir).contains("no longer reads"),
        "{}",
        status_of(&stale.dir)
    );
    let late = std::fs::File::create_new(stale.dir.join("late")).and_then(|mut f| {
        f.write_all(b"written with the old keys")?;
        f.sync_all()
    });
    assert!(late.is_err(), "the old keys' mount committed");
    drop(stale);
    assert!(!fresh.dir.join("late").exists());

    drop(fresh);
    let again = atefs_on(&cluster, &keys, "rekey", &[out_arg]);
    assert!(again.status.success(), "atefs rekey again: {again:?}");
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.contains("earlier run") && said.contains(" 0 records"),
        "{said}"
    );

    // Interrupted after the owner swap: the next run seals the records again.
    let keys2 = keygen(&tmp.path().join("keys2"));
    let second = Mount::start(&cluster, tmp.path(), "second", &keys2);
    std::fs::write(second.dir.join("f"), b"second volume").unwrap();
    drop(second);
    let (old2, out2) = (
        ate::KeyFile::load(&keys2).unwrap(),
        tmp.path().join("new-keys2"),
    );
    let new2 = old2.rekeyed();
    new2.save(&out2).unwrap();
    let root = ate::RootAuthority::single_owner(old2.owner.public());
    let swap = ate::rekey::swap_owners(&root, &old2, &new2).unwrap();
    rt().block_on(
        cluster
            .client(std::time::Duration::from_secs(30))
            .commit(old2.chain, swap.to_vec()),
    )
    .unwrap();
    let resumed = atefs_on(&cluster, &keys2, "rekey", &[out2.to_str().unwrap()]);
    assert!(resumed.status.success(), "atefs rekey resumed: {resumed:?}");
    assert!(
        String::from_utf8_lossy(&resumed.stdout).contains("earlier run"),
        "{resumed:?}"
    );
    let reopened = Mount::start(&cluster, tmp.path(), "reopened", &out2);
    assert_eq!(
        std::fs::read(reopened.dir.join("f")).unwrap(),
        b"second volume"
    );
    drop(reopened);
}
