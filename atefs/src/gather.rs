//! fsync gathering under the writeback cache.
//!
//! With the kernel's writeback cache, a file's data reaches the daemon only when the kernel
//! writes its pages back: at fsync, close, or after the dirty expiry (30 s). A program that
//! writes many files and then fsyncs each (a package manager, `smallfiles.py`, a mail store)
//! would therefore hand the daemon one file per fsync, and every fsync would pay its own
//! fdatasync. On the first fsync this asks the kernel, from a thread of its own, to write back
//! every dirty page of the mount (`syncfs`); the data arrives as ordinary writes while the
//! first fsync runs, the next fsync commits all of it in one group, and the fsyncs after that
//! find their files already durable. Nothing waits for the gathering thread, so it cannot
//! hold up a request (the writes it causes are served by the FUSE worker threads).
//!
//! The `syncfs` runs in a helper process, never in the daemon: a thread of the daemon waiting
//! in its own mount cannot be killed. After a kill -9 the daemon's other threads were gone,
//! that thread waited (uninterruptibly) for an answer only they could give, and the kernel
//! keeps the connection until the daemon's last thread exits: an unkillable zombie and a dead
//! mount until someone aborted the connection by hand. A helper blocked there instead does
//! not keep the daemon alive; the daemon exits, its /dev/fuse descriptor closes, the helper's
//! request fails and it sees the end of its pipe.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// The daemon's handle on the helper; dropping it ends the helper.
#[derive(Debug)]
pub struct Gather {
    child: Child,
    kicks: parking_lot::Mutex<Option<ChildStdin>>,
}

impl Gather {
    /// Starts the helper: `helper` is a command that runs [`serve`] for the mount (the `atefs`
    /// binary re-executes itself); its standard input becomes the channel of kicks.
    pub fn start(mut helper: Command) -> std::io::Result<Self> {
        let mut child = helper.stdin(Stdio::piped()).stdout(Stdio::null()).spawn()?;
        let kicks = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the helper has no standard input"))?;
        Ok(Self {
            child,
            kicks: parking_lot::Mutex::new(Some(kicks)),
        })
    }

    /// Asks for a writeback of the whole mount (coalesced with others the helper has not
    /// started on yet). Never blocks for long: the pipe holds far more kicks than wait.
    pub fn kick(&self) {
        if let Some(kicks) = self.kicks.lock().as_mut() {
            if let Err(e) = kicks.write_all(b"k") {
                tracing::debug!(error = %e, "fsync gathering helper gone");
            }
        }
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        // The end of its input ends the helper; the kill only hurries it (not waited for: it
        // may be inside a request to a mount that is going away).
        self.kicks.lock().take();
        let _ = self.child.kill();
        let _ = self.child.try_wait();
    }
}

/// The helper's loop: one `syncfs` of the mount at `mountpoint` per batch of kicks read from
/// standard input; returns when the input ends (the daemon exited or dropped its handle).
pub fn serve(mountpoint: &Path) {
    let mut input = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    // One read takes every kick queued so far: they coalesce into one syncfs.
    while matches!(input.read(&mut buf), Ok(n) if n > 0) {
        // Opened per use: a descriptor held on the mount would make a plain umount fail (EBUSY).
        match std::fs::File::open(mountpoint) {
            Ok(dir) => {
                if let Err(e) = rustix::fs::syncfs(&dir) {
                    tracing::debug!(error = %e, "syncfs for fsync gathering");
                }
            }
            Err(e) => tracing::debug!(error = %e, "fsync gathering cannot open the mount"),
        }
    }
}
