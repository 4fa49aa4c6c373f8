//! A backend that fails on command: the next N writes or syncs, or every write once a byte budget
//! (a "disk") is used up. Counters are shared so a test can arm them while the log runs. It
//! can also hold one write or sync mid-way until the test lets it go, to check what goes on
//! meanwhile.

use super::{Storage, StorageFile};
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An operation [`FaultPlan::hold`] can stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// A write.
    Write,
    /// An fdatasync.
    Sync,
}

/// The longest an operation is held: past it, it goes on and
/// [`FaultPlan::held_too_long`] says so (what the test waited for did not happen).
const HOLD_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Hold {
    /// The operation to hold next, on a file whose name starts with this.
    armed: Option<(Held, String)>,
    holding: bool,
    released: bool,
    too_long: bool,
}

/// What to fail. Negative counters are disarmed.
#[derive(Debug)]
pub struct FaultPlan {
    /// Writes left before every later write fails with EIO (-1 = never).
    pub writes_before_failure: AtomicI64,
    /// Syncs left before every later sync fails with EIO (-1 = never).
    pub syncs_before_failure: AtomicI64,
    /// Bytes that may still be written before writes fail with ENOSPC (-1 = unlimited).
    pub space_left: AtomicI64,
    hold: parking_lot::Mutex<Hold>,
    held: parking_lot::Condvar,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            writes_before_failure: AtomicI64::new(-1),
            syncs_before_failure: AtomicI64::new(-1),
            space_left: AtomicI64::new(-1),
            hold: Default::default(),
            held: Default::default(),
        }
    }
}

impl FaultPlan {
    /// Disarms everything.
    pub fn heal(&self) {
        self.writes_before_failure.store(-1, Ordering::SeqCst);
        self.syncs_before_failure.store(-1, Ordering::SeqCst);
        self.space_left.store(-1, Ordering::SeqCst);
    }

    /// Holds the next `op` on a file whose name starts with `prefix` until [`Self::release`].
    pub fn hold(&self, op: Held, prefix: &str) {
        *self.hold.lock() = Hold {
            armed: Some((op, prefix.to_string())),
            ..Hold::default()
        };
    }

    /// Waits until the operation armed by [`Self::hold`] is being held.
    pub fn wait_held(&self) {
        let mut h = self.hold.lock();
        while !h.holding {
            self.held.wait(&mut h);
        }
    }

    /// Lets the held operation go on.
    pub fn release(&self) {
        self.hold.lock().released = true;
        self.held.notify_all();
    }

    /// Whether the held operation went on by itself, unreleased after 30 s.
    pub fn held_too_long(&self) -> bool {
        self.hold.lock().too_long
    }

    fn pass(&self, op: Held, name: &str) {
        let mut h = self.hold.lock();
        let armed = h.armed.as_ref();
        if !armed.is_some_and(|(o, prefix)| *o == op && name.starts_with(prefix.as_str())) {
            return;
        }
        h.armed = None;
        h.holding = true;
        self.held.notify_all();
        let deadline = Instant::now() + HOLD_LIMIT;
        while !h.released {
            if self.held.wait_until(&mut h, deadline).timed_out() {
                h.too_long = true;
                break;
            }
        }
    }

    fn countdown(c: &AtomicI64) -> bool {
        // -1 means disarmed; 0 means fail; >0 counts down.
        let v = c.load(Ordering::SeqCst);
        if v < 0 {
            return false;
        }
        if v == 0 {
            return true;
        }
        c.fetch_sub(1, Ordering::SeqCst);
        false
    }

    fn charge(&self, n: usize) -> io::Result<()> {
        if Self::countdown(&self.writes_before_failure) {
            return Err(io::Error::other("injected write failure"));
        }
        let left = self.space_left.load(Ordering::SeqCst);
        if left >= 0 {
            if (n as i64) > left {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.space_left.fetch_sub(n as i64, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Wraps another backend with a [`FaultPlan`].
#[derive(Debug, Clone)]
pub struct FaultStorage {
    inner: Arc<dyn Storage>,
    plan: Arc<FaultPlan>,
}

impl FaultStorage {
    /// Wraps `inner`; returns the storage and its plan.
    pub fn new(inner: Arc<dyn Storage>) -> (Self, Arc<FaultPlan>) {
        let plan = Arc::new(FaultPlan::default());
        (
            Self {
                inner,
                plan: plan.clone(),
            },
            plan,
        )
    }
}

#[derive(Debug)]
struct FaultFile {
    name: String,
    inner: Arc<dyn StorageFile>,
    plan: Arc<FaultPlan>,
}

impl Storage for FaultStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let inner = self.inner.open(name, create)?;
        Ok(Arc::new(FaultFile {
            name: name.to_string(),
            inner,
            plan: self.plan.clone(),
        }))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

impl StorageFile for FaultFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn read_direct_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_direct_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.plan.pass(Held::Write, &self.name);
        if let Err(e) = self.plan.charge(buf.len()) {
            // Like a real disk filling up: part of the write may land before the error.
            let partial = buf.len() / 2;
            let _ = self.inner.write_at(&buf[..partial], offset);
            return Err(e);
        }
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.plan.pass(Held::Sync, &self.name);
        if FaultPlan::countdown(&self.plan.syncs_before_failure) {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.inner.sync_data()
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }
    fn write_alignment(&self) -> Option<(usize, usize)> {
        self.inner.write_alignment()
    }
}
