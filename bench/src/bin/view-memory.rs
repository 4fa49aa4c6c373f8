//! Heap bytes a chain's in-memory view takes: opens a chain's log directory (an embedded
//! volume's `DATA/chain`, a mount's cache) under a counting allocator and reports what the
//! open left allocated, per record. Usage: `view-memory DIR...`
use anyhow::Context;
use ate::storage::FileStorage;
use ate::{Chain, ChainOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; the counter only adds and
// subtracts the sizes the caller asked for.
#[allow(unsafe_code)] // a counting allocator is unsafe by trait
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() -> anyhow::Result<()> {
    println!(
        "size_of RecordEntry {} B",
        std::mem::size_of::<ate::view::RecordEntry>()
    );
    for dir in std::env::args().skip(1) {
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let storage = Arc::new(FileStorage::new(std::path::Path::new(&dir))?);
        let (chain, _) = Chain::open(storage, None, ChainOptions::default(), |d, t| {
            if std::env::var_os("TRACE").is_some() {
                eprintln!(
                    "{d}/{t} live {} peak {}",
                    LIVE.load(Ordering::Relaxed) >> 20,
                    PEAK.load(Ordering::Relaxed) >> 20
                );
            }
        })
        .with_context(|| format!("opening {dir}"))?;
        let heap = LIVE.load(Ordering::Relaxed) - before;
        let peak = PEAK.load(Ordering::Relaxed) - before;
        let records = chain.stats().records;
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        println!(
            "{dir}: {records} records, heap {:.1} MiB ({} B per record), peak while opening {:.1} MiB",
            mib(heap),
            heap / records.max(1),
            mib(peak)
        );
        drop(chain);
    }
    Ok(())
}
