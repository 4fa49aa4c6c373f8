//! A volume's size. An embedded volume's is fixed at mount; a shared volume's is its chain's
//! quota on the cluster, which the chain's owner may raise while it is mounted (a CSI volume
//! expansion). That one is read again when statfs asks and before a write is refused for want
//! of space, at most once per [`REFRESH`] (per [`RETRY_AFTER_FAILURE`] once the cluster did not
//! answer): a raised quota is seen by the next `df` or write, and a full volume does not ask
//! the cluster on every write it refuses.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shortest time between two reads of a quota source.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The time before the source is asked again after it could not answer (each try may take
/// [`READ_LIMIT`], with statfs or a write waiting on it).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// How long a read of the cluster's quota may take before the known value stands.
const READ_LIMIT: Duration = Duration::from_secs(2);

/// Where a volume's current quota comes from.
pub trait QuotaSource: Send + Sync + std::fmt::Debug {
    /// The quota in bytes, or None when it cannot be had now (the last one stands).
    fn read(&self) -> Option<u64>;
}

impl QuotaSource for ate::remote::QuotaReader {
    fn read(&self) -> Option<u64> {
        match ate::remote::QuotaReader::read(self, READ_LIMIT) {
            Ok(q) => Some(q),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the volume's quota; keeping the last one");
                None
            }
        }
    }
}

/// The quota as last known, and where to read it again.
#[derive(Debug)]
pub struct Quota {
    bytes: AtomicU64,
    source: Option<Arc<dyn QuotaSource>>,
    /// When the source may be read next. Held while it is read, so concurrent callers wait
    /// for that read instead of each asking.
    next_read: Mutex<Option<Instant>>,
}

impl Quota {
    /// `bytes` until `source` (if any) says otherwise.
    pub fn new(bytes: u64, source: Option<Arc<dyn QuotaSource>>) -> Self {
        Self {
            bytes: AtomicU64::new(bytes),
            source,
            next_read: Mutex::new(None),
        }
    }

    /// The quota as last known.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The quota, read from the source unless that was done within [`REFRESH`].
    pub fn fresh(&self) -> u64 {
        let Some(source) = &self.source else {
            return self.bytes();
        };
        let mut next_read = self.next_read.lock();
        if next_read.is_some_and(|t| Instant::now() < t) {
            return self.bytes();
        }
        let wait = match source.read() {
            Some(q) => {
                self.bytes.store(q, Ordering::Relaxed);
                REFRESH
            }
            None => RETRY_AFTER_FAILURE,
        };
        *next_read = Some(Instant::now() + wait);
        self.bytes()
    }

    /// Whether `used + grow` bytes fit: in the known quota, else in a fresh one.
    pub fn fits(&self, used: u64, grow: u64) -> bool {
        let want = used.saturating_add(grow);
        want <= self.bytes() || want <= self.fresh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Scripted {
        value: Mutex<Option<u64>>,
        reads: AtomicU64,
    }

    impl QuotaSource for Scripted {
        fn read(&self) -> Option<u64> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            *self.value.lock()
        }
    }

    fn scripted(v: Option<u64>) -> Arc<Scripted> {
        Arc::new(Scripted {
            value: Mutex::new(v),
            reads: AtomicU64::new(0),
        })
    }

    #[test]
    fn a_fixed_quota_never_changes() {
        let q = Quota::new(100, None);
        assert!(q.fits(60, 40));
        assert!(!q.fits(60, 41));
        assert!(!q.fits(u64::MAX, 1));
        assert_eq!(q.fresh(), 100);
    }

    #[test]
    fn a_raised_quota_is_read_before_a_write_is_refused_and_reads_are_spaced() {
        let src = scripted(Some(100));
        let q = Quota::new(100, Some(src.clone()));
        // Fits what is known: the source is not asked.
        assert!(q.fits(50, 50));
        assert_eq!(src.reads.load(Ordering::Relaxed), 0);
        // Does not fit: asked once; still 100, refused.
        assert!(!q.fits(50, 60));
        assert_eq!(src.reads.load(Ordering::Relaxed), 1);
        // Raised meanwhile, but asked within REFRESH: the known value stands.
        *src.value.lock() = Some(200);
        assert!(!q.fits(50, 60));
        assert_eq!(src.reads.load(Ordering::Relaxed), 1);
        // Once REFRESH passed, the raise is seen.
        *q.next_read.lock() = Some(Instant::now());
        assert!(q.fits(50, 60));
        assert_eq!((q.bytes(), src.reads.load(Ordering::Relaxed)), (200, 2));
    }

    #[test]
    fn an_unreadable_source_keeps_the_last_quota_and_is_asked_again_much_later() {
        let src = scripted(None);
        let q = Quota::new(100, Some(src.clone()));
        assert_eq!(q.fresh(), 100);
        assert_eq!(src.reads.load(Ordering::Relaxed), 1);
        // Not asked again within RETRY_AFTER_FAILURE, even past REFRESH.
        *src.value.lock() = Some(200);
        let next = *q.next_read.lock();
        assert!(next.is_some_and(|t| t >= Instant::now() + RETRY_AFTER_FAILURE - REFRESH));
        assert!(!q.fits(100, 50));
        assert_eq!(src.reads.load(Ordering::Relaxed), 1);
        *q.next_read.lock() = Some(Instant::now());
        assert!(q.fits(100, 50));
        assert_eq!(src.reads.load(Ordering::Relaxed), 2);
    }
}
