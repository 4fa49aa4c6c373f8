//! What an operator does to a shared volume on a three-replica cluster, through the `atefs`
//! commands and real mounts: sizes (quotas) and full disks, clones, new keys, backups.
//! Needs root and /dev/fuse (skipped otherwise) and the atefs binary (built with the
//! workspace).
#![allow(clippy::unwrap_used)]

mod common;

use common::mount::{
    atefs_bin, atefs_on, await_status, can_mount, keygen, setup, status_of, volume_size,
    volume_usage, Mount,
};
use common::{rt, Cluster, Stopped};
use std::io::Write;
use std::path::Path;

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
    await_status(
        &stale.dir,
        "not following",
        std::time::Duration::from_secs(30),
    );
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

/// A volume outlives its cluster through a backup: `atefs backup` writes its files as they
/// are (sealed: neither a content nor a name shows in the file), every replica of the
/// cluster goes, and `atefs restore` with the same key file makes the volume again on a new
/// cluster, with its tree, contents, modes, links and size. A restore refuses a volume the
/// cluster has and a backup that was changed (writing nothing), and makes again a volume a
/// restore left half made.
#[test]
fn a_volume_comes_back_from_its_backup_on_a_new_cluster() {
    let Some((cluster, tmp, keys)) = setup() else {
        return;
    };
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
    let writer = Mount::start(&cluster, tmp.path(), "writer", &keys);
    let resize = atefs_on(&cluster, &keys, "quota", &["536870912"]);
    assert!(resize.status.success(), "atefs quota: {resize:?}");
    std::fs::create_dir_all(writer.dir.join("projects/alpha")).unwrap();
    std::fs::write(writer.dir.join("projects/alpha/big"), &data).unwrap();
    for i in 0..30 {
        std::fs::write(
            writer.dir.join(format!("projects/secret-plan-{i}")),
            format!("the launch code is {i}"),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("alpha/big", writer.dir.join("projects/link")).unwrap();
    std::fs::hard_link(
        writer.dir.join("projects/secret-plan-7"),
        writer.dir.join("projects/also-7"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        writer.dir.join("projects/secret-plan-3"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    drop(writer);

    let file = tmp.path().join("volume.backup");
    let file_arg = file.to_str().unwrap();
    let run = atefs_on(&cluster, &keys, "backup", &[file_arg]);
    assert!(run.status.success(), "atefs backup: {run:?}");
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(said.contains("backed up chain"), "{said}");
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 3 << 20, "{} bytes", bytes.len());
    for needle in [&b"the launch code is"[..], b"secret-plan", b"alpha"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the backup holds {:?} in plaintext",
            String::from_utf8_lossy(needle)
        );
    }
    assert!(
        !bytes.windows(4096).any(|w| w == &data[..4096]),
        "the backup holds file data in plaintext"
    );
    let again = atefs_on(&cluster, &keys, "backup", &[file_arg]);
    assert!(!again.status.success(), "a backup overwrote a file");
    let verify = |file: &Path| {
        std::process::Command::new(atefs_bin())
            .arg("verify-backup")
            .arg(file)
            .arg("--keys")
            .arg(&keys)
            .output()
            .unwrap()
    };
    let good = verify(&file);
    assert!(good.status.success(), "atefs verify-backup: {good:?}");
    assert!(
        String::from_utf8_lossy(&good.stdout).contains("a good backup"),
        "{good:?}"
    );
    let exists = atefs_on(&cluster, &keys, "restore", &[file_arg]);
    assert!(!exists.status.success(), "restored over a live volume");
    assert!(
        String::from_utf8_lossy(&exists.stderr).contains("exists on the cluster"),
        "{exists:?}"
    );

    // Every replica goes, with its disks.
    drop(cluster);
    let cluster = Cluster::start(true, 1_000_000);
    let mut changed = bytes.clone();
    changed[bytes.len() / 2] ^= 1;
    let bad = tmp.path().join("changed.backup");
    std::fs::write(&bad, &changed).unwrap();
    let checked = verify(&bad);
    assert!(!checked.status.success(), "a changed backup verified");
    let refused = atefs_on(&cluster, &keys, "restore", &[bad.to_str().unwrap()]);
    assert!(!refused.status.success(), "a changed backup was restored");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("signature"),
        "{refused:?}"
    );
    let chain = ate::KeyFile::load(&keys).unwrap().chain;
    let info = rt().block_on(
        cluster
            .client(std::time::Duration::from_secs(30))
            .info(chain),
    );
    assert!(
        matches!(&info, Err(e) if e.is_not_found()),
        "a refused restore wrote: {info:?}"
    );

    let run = atefs_on(&cluster, &keys, "restore", &[file_arg]);
    assert!(run.status.success(), "atefs restore: {run:?}");
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("restored chain"),
        "{run:?}"
    );
    let back = Mount::start(&cluster, tmp.path(), "back", &keys);
    let p = back.dir.join("projects");
    assert!(std::fs::read(p.join("alpha/big")).unwrap() == data);
    for i in 0..30 {
        assert_eq!(
            std::fs::read_to_string(p.join(format!("secret-plan-{i}"))).unwrap(),
            format!("the launch code is {i}")
        );
    }
    assert_eq!(
        std::fs::read_link(p.join("link")).unwrap(),
        Path::new("alpha/big")
    );
    use std::os::unix::fs::MetadataExt;
    let (seven, also) = (
        std::fs::metadata(p.join("secret-plan-7")).unwrap(),
        std::fs::metadata(p.join("also-7")).unwrap(),
    );
    assert_eq!((seven.ino(), seven.nlink()), (also.ino(), 2));
    let mode = std::fs::metadata(p.join("secret-plan-3")).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(volume_size(&back.dir), 512 << 20);
    // The restored volume takes writes.
    let mut f = std::fs::File::create_new(p.join("after")).unwrap();
    f.write_all(b"written after the restore").unwrap();
    f.sync_all().unwrap();
    drop(f);
    drop(back);

    // Run again, it finds the volume there and leaves it be.
    let rerun = atefs_on(&cluster, &keys, "restore", &[file_arg]);
    assert!(!rerun.status.success(), "restored over the restored volume");
    let back = Mount::start(&cluster, tmp.path(), "back-again", &keys);
    assert_eq!(
        std::fs::read(back.dir.join("projects/after")).unwrap(),
        b"written after the restore"
    );
    drop(back);

    // A restore stopped half way (its chain still at the restoring quota) is made again.
    let owner = ate::KeyFile::load(&keys).unwrap().owner;
    let mut genesis = ate::Transaction::new(chain, owner.public());
    genesis
        .ops
        .push(ate::Op::SetRoot(ate::RootAuthority::single_owner(
            owner.public(),
        )));
    let genesis = genesis.sign(&owner).encode();
    let runtime = rt();
    let client = cluster.client(std::time::Duration::from_secs(30));
    runtime.block_on(client.delete(chain, &owner)).unwrap();
    runtime
        .block_on(client.create(chain, ate::remote::RESTORING, genesis))
        .unwrap();
    let run = atefs_on(&cluster, &keys, "restore", &[file_arg]);
    assert!(
        run.status.success(),
        "atefs restore after a half one: {run:?}"
    );
    let back = Mount::start(&cluster, tmp.path(), "back-third", &keys);
    assert!(std::fs::read(back.dir.join("projects/alpha/big")).unwrap() == data);
    assert!(!back.dir.join("projects/after").exists());
    drop(back);
}

/// A mount that outlived its volume does not take the restored one for it, even once the
/// restored chain has grown past what the mount had read. Frozen (SIGSTOP) while every
/// replica loses its disk, the volume is restored from its backup and another mount writes
/// more to it than the old chain ever held; once continued, the old mount reconnects with
/// the genesis of the chain it had read: the cluster refuses that subscription ("made
/// again") and the mount stops following, instead of applying the new chain's transactions
/// after its own. Mounted again over the same cache, it finds that cache of the old chain,
/// starts it over, and reads the restored volume: without what the backup missed.
#[test]
fn a_mount_that_outlived_its_volume_stops_following_the_restored_one() {
    let Some((mut cluster, tmp, keys)) = setup() else {
        return;
    };
    let old = Mount::start(&cluster, tmp.path(), "old", &keys);
    // A commit or more per file: the chain's index passes what a restore makes (a few).
    for i in 0..40 {
        std::fs::write(old.dir.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let file = tmp.path().join("volume.backup");
    let file_arg = file.to_str().unwrap();
    let run = atefs_on(&cluster, &keys, "backup", &[file_arg]);
    assert!(run.status.success(), "atefs backup: {run:?}");
    std::fs::write(old.dir.join("after-backup"), "lost with the cluster").unwrap();
    assert!(
        status_of(&old.dir).starts_with("following"),
        "{}",
        status_of(&old.dir)
    );
    {
        let _frozen = Stopped::stop(old.child.id());
        for i in 0..3 {
            cluster.kill(i);
            std::fs::remove_dir_all(&cluster.replicas[i].data).unwrap();
        }
        for i in 0..3 {
            cluster.spawn(i, i == 0);
        }
        for i in 0..3 {
            cluster.wait_ready(i, std::time::Duration::from_secs(30));
        }
        let run = atefs_on(&cluster, &keys, "restore", &[file_arg]);
        assert!(run.status.success(), "atefs restore: {run:?}");
        // Twice as many commits as the old chain had: the restored one ends past it.
        let grow = Mount::start(&cluster, tmp.path(), "grow", &keys);
        for i in 0..100 {
            std::fs::write(grow.dir.join(format!("g{i}")), format!("grown {i}")).unwrap();
        }
        drop(grow);
    }
    let now = await_status(&old.dir, "made again", std::time::Duration::from_secs(60));
    assert!(now.starts_with("not following"), "{now}");
    assert!(now.contains("genesis"), "{now}");
    drop(old);
    let again = Mount::start(&cluster, tmp.path(), "old", &keys);
    let fresh = Mount::start(&cluster, tmp.path(), "fresh", &keys);
    for m in [&again, &fresh] {
        for i in [0, 7, 39] {
            assert_eq!(
                std::fs::read_to_string(m.dir.join(format!("f{i}"))).unwrap(),
                format!("file {i}")
            );
        }
        assert_eq!(
            std::fs::read_to_string(m.dir.join("g99")).unwrap(),
            "grown 99"
        );
        assert!(!m.dir.join("after-backup").exists());
    }
    drop(fresh);
    drop(again);
}
