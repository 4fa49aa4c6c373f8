//! A live mount handed from one daemon to the next (atefs::handover): real mounts, real
//! processes.
#![allow(clippy::unwrap_used)]

mod common;

use atefs::handover::{self, Ack, Reply, Request};
use common::mount::{fsck, require_fuse, Mounted};
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A volume in `tmp` mounted with a handover socket: the mount, its mount point, data
/// directory and socket.
fn mounted_with_handover(tmp: &Path) -> (Mounted, PathBuf, PathBuf, PathBuf) {
    let (mnt, data, sock) = (tmp.join("mnt"), tmp.join("data"), tmp.join("handover.sock"));
    let m = Mounted::start_with(&mnt, &data, &["--handover".as_ref(), sock.as_os_str()]);
    (m, mnt, data, sock)
}

/// Asks the daemon at `sock` for its mount, speaking `protocol`: the connection, its answer
/// and the descriptor that came with it.
fn ask(sock: &Path, protocol: u32) -> (UnixStream, Reply, Option<OwnedFd>) {
    let mut c = handover::connect(sock).unwrap();
    handover::send(&mut c, &Request { protocol }, None).unwrap();
    let (reply, fd) = handover::receive::<Reply>(&mut c).unwrap().unwrap();
    (c, reply, fd)
}

/// Appends numbered lines to `path` (each write fsynced every 16) until told to stop;
/// returns how many it wrote. Any error fails the test.
fn writer(path: std::path::PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).unwrap();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) || n < 100 {
            writeln!(f, "line {n}").unwrap();
            if n.is_multiple_of(16) {
                f.sync_data().unwrap();
            }
            n += 1;
        }
        f.sync_all().unwrap();
        n
    })
}

fn lines(n: u64) -> String {
    (0..n).map(|i| format!("line {i}\n")).collect()
}

/// The mount, its open files (one of them unlinked) and writers in full flow pass to a new
/// daemon and then to a third: nothing the writers did fails or goes missing, the open
/// handles go on working, the unlinked file goes at its last close, and the volume is whole.
#[test]
fn a_mount_passes_to_new_daemons_under_open_files_and_running_writers() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (m, mnt, data, sock) = mounted_with_handover(tmp.path());
    let first = m.pid();
    let mut kept = std::fs::File::create(mnt.join("kept")).unwrap();
    kept.write_all(b"before|").unwrap();
    let mut gone = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(mnt.join("gone"))
        .unwrap();
    gone.write_all(b"unlinked but open").unwrap();
    std::fs::remove_file(mnt.join("gone")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|i| writer(mnt.join(format!("w{i}")), stop.clone()))
        .collect();

    let m = m.hand_over(&sock);
    assert_ne!(m.pid(), first);
    kept.write_all(b"after").unwrap();
    kept.sync_all().unwrap();
    let mut back = String::new();
    gone.rewind().unwrap();
    gone.read_to_string(&mut back).unwrap();
    assert_eq!(back, "unlinked but open", "an unlinked open file survived");

    // A second handover, from the daemon that took the first.
    let m = m.hand_over(&sock);
    stop.store(true, Ordering::SeqCst);
    let written: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for (i, n) in written.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(mnt.join(format!("w{i}"))).unwrap(),
            lines(*n),
            "writer {i}"
        );
    }
    drop(gone);
    drop(kept);
    assert_eq!(
        std::fs::read_to_string(mnt.join("kept")).unwrap(),
        "before|after"
    );
    let names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.contains(&"gone".to_string()));
    m.unmount();
    assert!(!sock.exists(), "the last daemon removed its socket");
    fsck(&data);
    let m = Mounted::start(&mnt, &data);
    assert_eq!(
        std::fs::read_to_string(mnt.join("kept")).unwrap(),
        "before|after"
    );
    for (i, n) in written.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(mnt.join(format!("w{i}"))).unwrap(),
            lines(*n)
        );
    }
    m.unmount();
}

/// Takers that do not finish leave the daemon serving: another protocol version is refused
/// before anything stops; a taker that gets the descriptor and goes away without confirming
/// gives the mount back to the daemon, which serves the requests that waited meanwhile.
#[test]
fn a_handover_that_does_not_finish_leaves_the_daemon_serving() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (m, mnt, data, sock) = mounted_with_handover(tmp.path());
    std::fs::write(mnt.join("f"), b"one").unwrap();

    let (_c, reply, fd) = ask(&sock, 999);
    assert!(
        matches!(&reply, Reply::Refused(why) if why.contains("999")),
        "{reply:?}"
    );
    assert!(fd.is_none());
    std::fs::write(mnt.join("f"), b"two").unwrap();

    let (c, reply, fd) = ask(&sock, handover::PROTOCOL);
    let Reply::Ready(state) = reply else {
        panic!("refused: {reply:?}")
    };
    assert!(fd.is_some(), "the descriptor came with the state");
    assert!(state.args.iter().any(|a| a == "--handover"));
    // The gate is closed now: a write waits for the outcome.
    let waiting = {
        let mnt = mnt.clone();
        std::thread::spawn(move || std::fs::write(mnt.join("f"), b"three"))
    };
    drop(fd);
    drop(c);
    waiting.join().unwrap().unwrap();
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"three");

    // And a real taker still gets it afterwards.
    let m = m.hand_over(&sock);
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"three");
    m.unmount();
    fsck(&data);
}

/// An Ack that is not one (`taken: false`) is no confirmation either.
#[test]
fn only_a_confirmed_handover_ends_the_daemon() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (m, mnt, _, sock) = mounted_with_handover(tmp.path());
    let (mut c, reply, _fd) = ask(&sock, handover::PROTOCOL);
    assert!(matches!(reply, Reply::Ready(_)));
    handover::send(&mut c, &Ack { taken: false }, None).unwrap();
    // The daemon answers nothing more and keeps the connection until it has decided; the
    // end of the stream would mean it exited.
    drop(c);
    std::fs::write(mnt.join("still"), b"served").unwrap();
    assert_eq!(std::fs::read(mnt.join("still")).unwrap(), b"served");
    m.unmount();
}
