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

use parking_lot::{Condvar, Mutex};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Default)]
struct Flags {
    kicked: bool,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    flags: Mutex<Flags>,
    wake: Condvar,
}

/// The gathering thread's handle; dropping it stops the thread.
#[derive(Debug)]
pub struct Gather {
    shared: Arc<Shared>,
}

impl Gather {
    /// Starts the thread for the mount at `mountpoint`.
    pub fn start(mountpoint: PathBuf) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("atefs-gather".into())
            .spawn(move || run(&s, &mountpoint))?;
        Ok(Self { shared })
    }

    /// Asks for a writeback of the whole mount (coalesced with one already asked for).
    pub fn kick(&self) {
        self.shared.flags.lock().kicked = true;
        self.shared.wake.notify_one();
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        self.shared.flags.lock().stop = true;
        self.shared.wake.notify_one();
    }
}

fn run(shared: &Shared, mountpoint: &std::path::Path) {
    loop {
        {
            let mut f = shared.flags.lock();
            while !f.kicked && !f.stop {
                shared.wake.wait(&mut f);
            }
            if f.stop {
                return;
            }
            f.kicked = false;
        }
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
