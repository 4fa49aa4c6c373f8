//! Real FUSE mounts: persistence across remounts, crash after fsync, no plaintext on disk, and
//! real programs (tar, git, sqlite3). Skipped (with a message) where FUSE cannot be mounted.
#![allow(clippy::unwrap_used)]

mod common;

use common::mount::{fsck, mount_type, require_fuse, Mounted};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Writes a deterministic tree; returns path -> BLAKE3 of content.
fn write_tree(root: &Path, seed: u64) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut x = seed;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for d in 0..4 {
        let dir = root.join(format!("dir{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..6 {
            let len = (next() % 300_000) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let p = dir.join(format!("file{f}"));
            std::fs::write(&p, &data).unwrap();
            out.insert(
                format!("dir{d}/file{f}"),
                blake3::hash(&data).to_hex().to_string(),
            );
        }
    }
    out
}

fn read_tree(root: &Path, names: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    names
        .keys()
        .map(|n| {
            (
                n.clone(),
                blake3::hash(&std::fs::read(root.join(n)).unwrap())
                    .to_hex()
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn tree_survives_unmount_and_remount() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let m = Mounted::start(&mnt, &data);
    let sums = write_tree(&mnt, 0x9e3779b97f4a7c15);
    m.unmount();
    fsck(&data);
    let m = Mounted::start(&mnt, &data);
    assert_eq!(read_tree(&mnt, &sums), sums);
    m.unmount();
}

#[test]
fn fsynced_data_survives_kill_9() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let m = Mounted::start(&mnt, &data);
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 31) as u8).collect();
    {
        std::fs::create_dir(mnt.join("d")).unwrap();
        let mut f = std::fs::File::create(mnt.join("d/synced")).unwrap();
        f.write_all(&payload).unwrap();
        f.sync_all().unwrap();
    }
    m.kill9();
    fsck(&data);
    let m = Mounted::start(&mnt, &data);
    assert_eq!(std::fs::read(mnt.join("d/synced")).unwrap(), payload);
    m.unmount();
}

/// A kill -9 while the fsync-gathering writeback runs: the daemon exits (it once had a thread
/// waiting in its own mount for an answer only its dead threads could give: an unkillable
/// zombie and a dead mount; `Mounted::kill9` fails when the daemon outlives SIGKILL), and the
/// fsynced file is there after a remount.
#[test]
fn a_daemon_killed_while_it_gathers_fsyncs_exits() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    for round in 0..5 {
        let m = Mounted::start(&mnt, &data);
        let files: Vec<std::fs::File> = (0..300)
            .map(|i| {
                let mut f = std::fs::File::create(mnt.join(format!("r{round}-{i}"))).unwrap();
                f.write_all(&[round as u8; 20_000]).unwrap();
                f
            })
            .collect();
        files[0].sync_all().unwrap();
        m.kill9();
        drop(files);
        fsck(&data);
    }
    let m = Mounted::start(&mnt, &data);
    for round in 0..5u8 {
        assert_eq!(
            std::fs::read(mnt.join(format!("r{round}-0"))).unwrap(),
            vec![round; 20_000]
        );
    }
    m.unmount();
}

/// A tmpfs mounted by a test, unmounted on drop (also when the test fails).
struct Tmpfs(std::path::PathBuf);
impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "atefs-test"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs failed");
        Tmpfs(dir.to_path_buf())
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A daemon on its way out after its volume was unmounted leaves alone what was mounted on
/// the directory since (a CSI node can publish a volume again at the same path at once).
/// fuser's own cleanup unmounted the path a second time, taking that file system with it:
/// this failed with the tmpfs gone.
#[test]
fn an_exiting_daemon_leaves_the_next_mount_on_its_directory_alone() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let m = Mounted::start(&mnt, &data);
    std::fs::write(mnt.join("f"), b"committed on the way out").unwrap();
    let mut next = None;
    m.unmount_stopped_then(|| next = Some(Tmpfs::mount(&mnt)));
    assert_eq!(mount_type(&mnt).as_deref(), Some("tmpfs"));
    drop(next);
    let m = Mounted::start(&mnt, &data);
    assert_eq!(
        std::fs::read(mnt.join("f")).unwrap(),
        b"committed on the way out"
    );
    m.unmount();
}

/// A daemon whose log can no longer be written (its stderr a pipe nobody reads: the terminal
/// that started `atefs mount` went away) goes on serving. tracing-subscriber reported the
/// failed write with eprintln!, which panicked on the same stderr: the mount died at its first
/// log line after, with what it had buffered.
#[test]
fn a_daemon_whose_log_cannot_be_written_goes_on_serving() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atefs"));
    cmd.arg("mount")
        .arg(&mnt)
        .arg("--data")
        .arg(&data)
        .arg("--foreground")
        .env("RUST_LOG", "debug")
        .stderr(std::process::Stdio::piped());
    let mut m = Mounted::from_command(&mnt, cmd);
    m.close_stderr();
    for i in 0..10 {
        let f = mnt.join(format!("f{i}"));
        std::fs::write(&f, format!("file {i}")).unwrap();
        std::fs::File::open(&f).unwrap().sync_all().unwrap();
    }
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 10);
    assert_eq!(std::fs::read(mnt.join("f9")).unwrap(), b"file 9");
    m.unmount();
}

/// SIGTERM (how an orchestrator stops a daemon) unmounts, commits what was written without
/// fsync and exits with success.
#[test]
fn sigterm_unmounts_and_keeps_what_was_written() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let m = Mounted::start(&mnt, &data);
    std::fs::write(mnt.join("f"), b"written, never fsynced").unwrap();
    m.terminate();
    let m = Mounted::start(&mnt, &data);
    assert_eq!(
        std::fs::read(mnt.join("f")).unwrap(),
        b"written, never fsynced"
    );
    m.unmount();
}

/// Bytes in the files under `dir` (the volume's log and snapshot).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

#[test]
fn closed_data_reaches_the_log_without_fsync() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let m = Mounted::start(&mnt, &data);
    let before = dir_bytes(&data);
    // 20 closed files, 2 MiB: below the closed-file group's own commit threshold (256 files
    // or 8 MiB), so only the background flusher commits them.
    let files: Vec<(String, Vec<u8>)> = (0..20u32)
        .map(|i| {
            let body = (0..100_000u32).map(|j| (j * 7 + i) as u8).collect();
            (format!("f{i}"), body)
        })
        .collect();
    for (name, body) in &files {
        std::fs::write(mnt.join(name), body).unwrap();
    }
    let wanted = files.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
    // No event reaches outside the daemon when the flusher commits: watch the log grow
    // (the documented bound is about 1.25 s; the deadline only ends a broken run).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while dir_bytes(&data) < before + wanted {
        assert!(
            std::time::Instant::now() < deadline,
            "closed, un-fsynced data never reached the log"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    m.kill9();
    fsck(&data);
    let m = Mounted::start(&mnt, &data);
    for (name, body) in &files {
        assert_eq!(&std::fs::read(mnt.join(name)).unwrap(), body, "{name}");
    }
    m.unmount();
}

#[test]
fn no_plaintext_names_or_content_on_disk() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let m = Mounted::start(&mnt, &data);
    let name = "very-secret-file-name-4711";
    let content = "the quick brown fox keeps this sentence secret 0815";
    std::fs::write(mnt.join(name), content.repeat(100)).unwrap();
    m.unmount();
    for needle in [name, content, &content[4..20]] {
        let st = Command::new("grep")
            .args(["-r", "-q", "-a", needle])
            .arg(&data)
            .status()
            .unwrap();
        assert_eq!(
            st.code(),
            Some(1),
            "found {needle:?} in the state directory"
        );
    }
    // The test can fail: the same search finds the text in a plain copy.
    std::fs::write(data.join("plain-copy"), content).unwrap();
    let st = Command::new("grep")
        .args(["-r", "-q", "-a", content])
        .arg(&data)
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
}

fn run(cwd: &Path, cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn real_programs_tar_git_sqlite() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let m = Mounted::start(&mnt, &data);
    // tar: a source tree in, and out again with identical content.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("ate");
    run(
        tmp.path(),
        &format!("tar -C {} -cf src.tar .", src.display()),
    );
    run(
        &mnt,
        &format!(
            "mkdir x && tar -C x -xf {}/src.tar && tar -C x -cf {}/again.tar .",
            tmp.path().display(),
            tmp.path().display()
        ),
    );
    run(
        tmp.path(),
        "mkdir a b && tar -C a -xf src.tar && tar -C b -xf again.tar && diff -r a b",
    );
    // git: init, commit, fsck.
    run(&mnt, "git init -q repo && cd repo && cp -r ../x src && git add -A && git -c user.name=t -c user.email=t@t commit -qm one && git fsck --full --strict");
    // sqlite: transactions, one rolled back.
    if Command::new("sqlite3").arg("-version").output().is_ok() {
        let sql = "create table t(a integer primary key, b text); \
                   begin; insert into t(b) values ('x'),('y'); commit; \
                   begin; insert into t(b) values ('z'); rollback; \
                   pragma integrity_check; select count(*) from t;";
        let out = run(&mnt, &format!("sqlite3 db.sqlite \"{sql}\""));
        assert_eq!(out.trim(), "ok\n2");
    }
    m.unmount();
    fsck(&data);
}

#[test]
fn posix_acls_are_enforced() {
    require_fuse!();
    let have = |p: &str| Command::new(p).arg("--version").output().is_ok();
    if !(have("setfacl") && have("setpriv")) {
        eprintln!("skipped: needs setfacl and setpriv");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    // nobody must be able to reach the mount point, or every check below passes for that reason.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let m = Mounted::start(&mnt, &data);
    std::fs::set_permissions(&mnt, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(mnt.join("public"), "x").unwrap();
    let public = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
        .arg(mnt.join("public"))
        .status()
        .unwrap();
    assert!(public.success(), "nobody cannot reach the mount at all");
    let f = mnt.join("private");
    std::fs::write(&f, "for nobody's eyes").unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let read_as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
            .arg(&f)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!read_as_nobody(), "mode 0600 must keep nobody out");
    run(&mnt, "setfacl -m u:nobody:r private");
    assert!(read_as_nobody(), "the ACL entry must let nobody read");
    assert!(run(&mnt, "getfacl -c private").contains("user:nobody:r--"));
    // A default ACL on a directory is inherited by what is created in it, umask or not.
    run(&mnt, "mkdir shared && setfacl -d -m u:nobody:rw shared");
    run(
        &mnt,
        "umask 077 && echo inherited > shared/new && mkdir shared/sub",
    );
    let acl = run(&mnt, "getfacl -c shared/new");
    assert!(acl.contains("user:nobody:rw-"), "{acl}");
    assert!(run(&mnt, "getfacl -cd shared/sub").contains("user:nobody:rw-"));
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
        .arg(mnt.join("shared/new"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&as_nobody.stdout), "inherited\n");
    m.unmount();
    // ACLs persist: they are xattrs in the chain.
    let m = Mounted::start(&mnt, &data);
    assert!(read_as_nobody());
    m.unmount();
}

#[test]
fn fallocate_seek_data_hole_and_copy_file_range_through_the_kernel() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let m = Mounted::start(&mnt, &data);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/ranges.py");
    let out = run(
        tmp.path(),
        &format!("python3 {} {}", script.display(), mnt.display()),
    );
    assert_eq!(out.trim(), "ok");
    m.unmount();
    fsck(&data);
}

#[test]
fn ls_asks_for_selinux_labels_once_per_mount_not_once_per_file() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let m = Mounted::start(&mnt, &data);
    for i in 0..20 {
        std::fs::write(mnt.join(format!("f{i}")), "x").unwrap();
    }
    let errno = run(
        &mnt,
        "python3 -c \"import os\ntry: os.getxattr('f0', 'security.selinux')\nexcept OSError as e: print(e.errno)\"",
    );
    assert_eq!(
        errno.trim(),
        libc::EOPNOTSUPP.to_string(),
        "the kernel must pass the daemon's answer through"
    );
    if Command::new("strace").arg("-V").output().is_ok() {
        let log = tmp.path().join("strace.log");
        run(
            tmp.path(),
            &format!(
                "strace -e trace=lgetxattr -o {} ls -l {} >/dev/null",
                log.display(),
                mnt.display()
            ),
        );
        let asked = std::fs::read_to_string(&log)
            .unwrap()
            .matches("security.selinux")
            .count();
        assert_eq!(
            asked, 1,
            "ls -l must stop asking after the first 'not supported'"
        );
    }
    m.unmount();
}

/// The root's `atefs.status` says how the mount is doing ("local" for an embedded volume; a
/// shared one's is tested in chain-server/tests/remote_mount.rs); `atefs.*` names are the
/// mount's own and cannot be set or removed, on the root or elsewhere.
#[test]
fn the_root_says_how_the_mount_is_doing_and_atefs_names_are_reserved() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, data) = (tmp.path().join("mnt"), tmp.path().join("data"));
    let m = Mounted::start(&mnt, &data);
    std::fs::write(mnt.join("f"), "x").unwrap();
    let out = run(
        &mnt,
        "python3 -c \"import os\nprint(os.getxattr('.', 'atefs.status').decode())\nfor p in ('.', 'f'):\n  try: os.setxattr(p, 'atefs.status', b'fine')\n  except OSError as e: print(e.errno)\n  try: os.removexattr(p, 'atefs.status')\n  except OSError as e: print(e.errno)\nprint(os.listxattr('.'))\"",
    );
    let eopnotsupp = libc::EOPNOTSUPP.to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "local",
            &eopnotsupp,
            &eopnotsupp,
            &eopnotsupp,
            &eopnotsupp,
            "[]"
        ],
        "{out}"
    );
    m.unmount();
}
