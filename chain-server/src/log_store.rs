//! A partition's Raft log, which is also where its chains' transactions live: the state
//! machine keeps only indexes that point into these segments (one log, not two).
//!
//! Layout: segment files `raft-<first index>.log`, each a 16-byte header (`ATERAFT2`, first
//! index) followed by `ate` frames of kind `RaftEntry`, and before a large transaction
//! possibly a `Pad` frame (`ATERAFT1` segments, written before padding, hold none). A
//! RaftEntry frame's payload is a u32 length, the entry's metadata (postcard) and, for commands carrying a transaction, the transaction's
//! bytes verbatim, so that the state machine can point at its sealed payloads in place. The
//! vote, the purge point and the commit index live in `raft-meta` (replaced atomically).
//!
//! Raft needs what a chain's own redo log never does: cutting off a suffix that a new leader
//! overrides (`truncate`) and dropping a prefix a snapshot covers (`purge`).

use crate::types::{Command, Entry, LogId, StorageError, TypeConfig};
use ate::redo::{
    decode_frame, encode_pad, frame_header, FileRef, Files, FrameKind, Location, FRAME_HEADER,
    MAX_PAD_ALIGN,
};
use ate::storage::{Storage, StorageFile};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{EntryPayload, LogState, Membership, RaftLogReader, StorageIOError, Vote};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;
use thiserror::Error;

/// Segments written now: they may hold padding frames.
const SEGMENT_MAGIC: &[u8; 8] = b"ATERAFT2";
/// Segments written before padding frames (read, and continued without padding).
const SEGMENT_MAGIC_1: &[u8; 8] = b"ATERAFT1";
const SEGMENT_HEADER: u64 = 16;
const META: &str = "raft-meta";
/// Transactions this large are written from where they lie, not copied behind their frame
/// header into the batch buffer (a follower spent 40% of its CPU growing that buffer for
/// 8 MiB commits: fresh pages zeroed, then copied into).
const WRITE_IN_PLACE: usize = 64 << 10;
/// Transaction bytes of the newest entries kept in memory beyond those still needed (below):
/// for subscribers of other mounts, which read each entry right after it is applied (a
/// writer's own subscription gets its transactions by hash, read hollow). Every byte held
/// here is memory a new replica touches for the first time, and the kernel zeroing fresh
/// pages was a third of a new cluster's CPU in a sequential write: at 64 MiB each follower
/// grew by 110 MiB over a 512 MiB write, at 8 MiB by 50 (docs/benchmarks.md, session 35).
const RECENT_BYTES: usize = 8 << 20;
/// Entries still to be applied, or (on a leader) to be sent to a follower, stay in memory past
/// [`RECENT_BYTES`] up to this: with several 8 MiB commits in flight per writer, 64 MiB did not
/// cover them, and applying and replicating read them back through the page cache (374 MiB of
/// readahead per 512 MiB written, perf; docs/benchmarks.md, session 17).
const UNAPPLIED_BYTES: usize = 256 << 20;
/// The most one replication request carries. openraft sends up to `max_payload_entries` (32)
/// entries per request: 32 transactions of 4 MiB passed the gRPC message limit, were refused
/// and sent again, and replication made no progress at all (docs/chain-server.md).
pub const REPLICATION_BYTES: u64 = 8 << 20;

/// Log store failures.
#[derive(Debug, Error)]
pub enum LogStoreError {
    /// An I/O call failed.
    #[error("{op} {file}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{file} at byte {offset}: {reason}")]
    Corrupt {
        /// Which file.
        file: String,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An entry was asked for that is not in the log.
    #[error("no log entry {0}")]
    Missing(u64),
}

fn io(op: &'static str, file: &str) -> impl FnOnce(std::io::Error) -> LogStoreError {
    let file = file.to_string();
    move |source| LogStoreError::Io { op, file, source }
}

fn segment_name(first: u64) -> String {
    format!("raft-{first:020}.log")
}

/// Metadata of a stored entry (its transaction, if any, follows it in the frame).
#[derive(Serialize, Deserialize)]
enum Stored {
    Blank,
    Membership(Membership<u64, openraft::BasicNode>),
    Create {
        chain: [u8; 16],
        quota: u64,
    },
    Commit {
        chain: [u8; 16],
    },
    Delete {
        chain: [u8; 16],
    },
    // Last, so the variants before it keep their encoding (logs written before it existed).
    CommitFrom {
        chain: [u8; 16],
        session: [u8; 16],
    },
    SetQuota {
        chain: [u8; 16],
        quota: u64,
    },
    Compact {
        chain: [u8; 16],
    },
    /// A commit with its hash (`Command::Commit::hash`); `Commit` and `CommitFrom` remain
    /// for logs written before it.
    CommitHashed {
        chain: [u8; 16],
        session: Option<[u8; 16]>,
        hash: [u8; 32],
    },
}

/// What `raft-meta` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote<u64>>,
    purged: Option<LogId>,
    committed: Option<LogId>,
}

/// Where an entry is.
#[derive(Clone, Copy, Debug)]
struct Slot {
    log_id: LogId,
    /// Segment it is in (by first index).
    segment: u64,
    /// Byte offset of its frame.
    frame: u64,
    /// Payload bytes of the frame.
    len: u32,
    /// Offset of the transaction bytes inside the payload.
    tx_at: u32,
}

#[derive(Debug)]
struct Tail {
    first: u64,
    file: Arc<dyn StorageFile>,
    len: u64,
    /// The storage's alignment for direct writes, when this segment may hold padding frames
    /// (`ATERAFT2`) and the storage has one: `(alignment, smallest transaction to align)`.
    align: Option<(usize, usize)>,
}

impl Tail {
    fn new(first: u64, file: Arc<dyn StorageFile>, len: u64, pads: bool) -> Self {
        let align = file
            .write_alignment()
            .filter(|(a, _)| pads && *a <= MAX_PAD_ALIGN);
        Self {
            first,
            file,
            len,
            align,
        }
    }
}

#[derive(Debug)]
struct Inner {
    storage: Arc<dyn Storage>,
    files: Arc<Files>,
    slots: BTreeMap<u64, Slot>,
    meta: Meta,
    segment_bytes: u64,
}

/// The newest appended entries (their transactions are shared, not copied, when read).
#[derive(Debug)]
struct Recent {
    entries: BTreeMap<u64, Entry>,
    bytes: usize,
    /// The state machine's last applied index: entries above it are needed again soon.
    applied: u64,
    /// On a leader, the lowest index every follower has; `u64::MAX` elsewhere.
    replicated: u64,
    /// The first entry being written, if any (`u64::MAX` if not): entries from it on are
    /// nowhere else yet and stay whatever the bounds.
    writing: u64,
}

impl Recent {
    fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
            bytes: 0,
            applied: 0,
            replicated: u64::MAX,
            writing: u64::MAX,
        }
    }

    fn insert(&mut self, e: Entry) {
        self.bytes += tx_len(&e);
        if let Some(old) = self.entries.insert(e.log_id.index, e) {
            self.bytes -= tx_len(&old);
        }
        self.evict();
    }

    /// Drops the oldest entries past [`RECENT_BYTES`], but not those still to be applied
    /// unless they pass [`UNAPPLIED_BYTES`].
    fn evict(&mut self) {
        while self.bytes > RECENT_BYTES {
            let Some(oldest) = self.entries.first_entry() else {
                break;
            };
            let needed = *oldest.key() > self.applied.min(self.replicated);
            if *oldest.key() >= self.writing || (needed && self.bytes <= UNAPPLIED_BYTES) {
                break;
            }
            let old = oldest.remove();
            self.bytes -= tx_len(&old);
        }
    }

    fn applied(&mut self, index: u64) {
        self.applied = self.applied.max(index);
        self.evict();
    }

    fn replicated(&mut self, index: u64) {
        self.replicated = index;
        self.evict();
    }

    /// Forgets entries from `from` on (a new leader overrode them).
    fn truncate(&mut self, from: u64) {
        let gone = self.entries.split_off(&from);
        self.bytes -= gone.values().map(tx_len).sum::<usize>();
    }

    /// Forgets entries up to `upto` (a snapshot covers them).
    fn purge(&mut self, upto: u64) {
        let kept = self.entries.split_off(&(upto + 1));
        let gone = std::mem::replace(&mut self.entries, kept);
        self.bytes -= gone.values().map(tx_len).sum::<usize>();
    }
}

/// The first key of `map` in `from..to`.
fn first_in<V>(map: &BTreeMap<u64, V>, from: u64, to: u64) -> Option<u64> {
    map.range(from..to).next().map(|(i, _)| *i)
}

/// How [`LogStore::read_range_within`] reads entries that are no longer in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// With their transactions.
    Whole,
    /// Without ([`LogStore::read_hollow`]).
    Hollow,
}

/// An entry whose transaction was left on disk ([`LogStore::read_hollow`]).
pub(crate) fn is_hollow(e: &Entry) -> bool {
    matches!(&e.payload,
        EntryPayload::Normal(Command::Create { tx, .. } | Command::Commit { tx, .. })
            if tx.is_empty())
}

/// Bytes of an entry's transaction (0 for other entries).
pub(crate) fn tx_len(e: &Entry) -> usize {
    match &e.payload {
        EntryPayload::Normal(Command::Create { tx, .. } | Command::Commit { tx, .. }) => tx.len(),
        _ => 0,
    }
}

/// The log store (cheap to clone; clones share the log and serve as readers).
///
/// Three locks, always taken in this order: `tail`, `inner`, `recent`. An append holds only
/// `tail` while it writes and fdatasyncs, so replication, the state machine and subscribers
/// read on meanwhile (they read what is being written from `recent`): when one lock covered
/// the writes too, a leader could not send a follower anything while its own disk write of
/// the next entries lasted (docs/benchmarks.md, session 18).
#[derive(Clone, Debug)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    /// The segment appends go to; appends, truncations and rolls are made under it.
    tail: Arc<Mutex<Option<Tail>>>,
    recent: Arc<Mutex<Recent>>,
    /// How long appends took (for /metrics).
    append_timing: Arc<Mutex<crate::metrics::Histogram>>,
}

/// An entry's frame payload in two parts: its length-prefixed metadata, and the transaction
/// bytes (verbatim; the state machine points into them).
fn entry_parts(e: &Entry) -> Result<(Vec<u8>, &[u8]), postcard::Error> {
    let (stored, tx): (Stored, &[u8]) = match &e.payload {
        EntryPayload::Blank => (Stored::Blank, &[]),
        EntryPayload::Membership(m) => (Stored::Membership(m.clone()), &[]),
        EntryPayload::Normal(Command::Create { chain, quota, tx }) => (
            Stored::Create {
                chain: *chain,
                quota: *quota,
            },
            tx,
        ),
        EntryPayload::Normal(Command::Commit {
            chain,
            tx,
            session,
            hash,
        }) => match (session, hash) {
            (None, None) => (Stored::Commit { chain: *chain }, tx),
            (Some(session), None) => (
                Stored::CommitFrom {
                    chain: *chain,
                    session: *session,
                },
                tx,
            ),
            (session, Some(hash)) => (
                Stored::CommitHashed {
                    chain: *chain,
                    session: *session,
                    hash: *hash,
                },
                tx,
            ),
        },
        EntryPayload::Normal(Command::Delete { chain }) => (Stored::Delete { chain: *chain }, &[]),
        EntryPayload::Normal(Command::SetQuota { chain, quota }) => (
            Stored::SetQuota {
                chain: *chain,
                quota: *quota,
            },
            &[],
        ),
        EntryPayload::Normal(Command::Compact { chain }) => {
            (Stored::Compact { chain: *chain }, &[])
        }
    };
    let meta = postcard::to_stdvec(&(e.log_id, stored))?;
    let mut head = Vec::with_capacity(4 + meta.len());
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    head.extend_from_slice(&meta);
    Ok((head, tx))
}

/// The metadata at the start of a frame payload, and where the transaction bytes start.
fn decode_meta(payload: &[u8]) -> Result<(LogId, Stored, u32), String> {
    let (len, rest) = payload.split_at_checked(4).ok_or("short entry")?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| "short entry")?) as usize;
    let meta = rest.get(..len).ok_or("entry metadata cut short")?;
    let (log_id, stored): (LogId, Stored) =
        postcard::from_bytes(meta).map_err(|e| format!("entry metadata: {e}"))?;
    Ok((log_id, stored, 4 + len as u32))
}

fn entry_of(log_id: LogId, stored: Stored, tx: bytes::Bytes) -> Entry {
    let payload = match stored {
        Stored::Blank => EntryPayload::Blank,
        Stored::Membership(m) => EntryPayload::Membership(m),
        Stored::Create { chain, quota } => {
            EntryPayload::Normal(Command::Create { chain, quota, tx })
        }
        Stored::Commit { chain } => EntryPayload::Normal(Command::Commit {
            chain,
            tx,
            session: None,
            hash: None,
        }),
        Stored::CommitFrom { chain, session } => EntryPayload::Normal(Command::Commit {
            chain,
            tx,
            session: Some(session),
            hash: None,
        }),
        Stored::CommitHashed {
            chain,
            session,
            hash,
        } => EntryPayload::Normal(Command::Commit {
            chain,
            tx,
            session,
            hash: Some(hash),
        }),
        Stored::Delete { chain } => EntryPayload::Normal(Command::Delete { chain }),
        Stored::SetQuota { chain, quota } => {
            EntryPayload::Normal(Command::SetQuota { chain, quota })
        }
        Stored::Compact { chain } => EntryPayload::Normal(Command::Compact { chain }),
    };
    Entry { log_id, payload }
}

/// Frames of one append on their way to the tail: small parts gathered, large transactions
/// written from where they lie; nothing is visible until `finish` made it durable.
#[derive(Default)]
struct TailWriter {
    buf: Vec<u8>,
    /// Bytes already written past the tail's length.
    written: u64,
    slots: Vec<(u64, Slot)>,
}

impl TailWriter {
    fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// Adds an entry's frame (`head`, then `tx`); returns the frame's offset in the segment.
    fn push(&mut self, tail: &Tail, head: &[u8], tx: &[u8]) -> Result<u64, LogStoreError> {
        if let Some((align, _)) = tail.align.filter(|(_, min)| tx.len() >= *min) {
            // Moves the transaction to the file offset that matches its memory address, so
            // the file writes it from where it lies (copying it to aligned memory was 5 % of
            // the replicas' CPU in a sequential write through a cluster, perf).
            let lands = tail.len + self.len() + (FRAME_HEADER + head.len()) as u64;
            encode_pad(lands, tx.as_ptr() as usize, align, &mut self.buf);
        }
        let frame = tail.len + self.len();
        let parts = [head, tx];
        self.buf
            .extend_from_slice(&frame_header(FrameKind::RaftEntry, &parts));
        for p in parts {
            if p.len() >= WRITE_IN_PLACE {
                self.write_buf(tail)?;
                self.written += write_tail(tail, self.written, p)?;
            } else {
                self.buf.extend_from_slice(p);
            }
        }
        Ok(frame)
    }

    fn write_buf(&mut self, tail: &Tail) -> Result<(), LogStoreError> {
        if !self.buf.is_empty() {
            self.written += write_tail(tail, self.written, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes what is left, makes it durable, then readable from the segment.
    fn finish(&mut self, tail: &mut Tail, inner: &Mutex<Inner>) -> Result<(), LogStoreError> {
        if self.len() == 0 {
            return Ok(());
        }
        self.write_buf(tail)?;
        tail.file
            .sync_data()
            .map_err(io("fdatasync", &segment_name(tail.first)))?;
        tail.len += self.written;
        self.written = 0;
        inner.lock().slots.extend(self.slots.drain(..));
        Ok(())
    }
}

/// Writes `bytes` at `past` bytes beyond the tail's durable length; returns how many.
fn write_tail(tail: &Tail, past: u64, bytes: &[u8]) -> Result<u64, LogStoreError> {
    tail.file
        .write_at(bytes, tail.len + past)
        .map_err(io("write", &segment_name(tail.first)))?;
    Ok(bytes.len() as u64)
}

impl LogStore {
    /// Opens (or creates) the log in `storage`. A torn frame at the end of the last segment
    /// (a crash mid-append; never acknowledged) is cut off; damage anywhere else is an error.
    pub fn open(storage: Arc<dyn Storage>, segment_bytes: u64) -> Result<Self, LogStoreError> {
        let files = Arc::new(Files::new(storage.clone()));
        let mut firsts: Vec<u64> = storage
            .list()
            .map_err(io("list", "."))?
            .iter()
            .filter_map(|n| n.strip_prefix("raft-")?.strip_suffix(".log")?.parse().ok())
            .collect();
        firsts.sort_unstable();
        let meta: Meta = match storage.open(META, false) {
            Ok(f) => {
                let len = f.len().map_err(io("stat", META))? as usize;
                let mut b = vec![0u8; len];
                f.read_at(&mut b, 0).map_err(io("read", META))?;
                postcard::from_bytes(&b).map_err(|e| LogStoreError::Corrupt {
                    file: META.into(),
                    offset: 0,
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(io("open", META)(e)),
        };
        let mut slots = BTreeMap::new();
        let mut tail = None;
        for (n, &first) in firsts.iter().enumerate() {
            let last_segment = n + 1 == firsts.len();
            let name = segment_name(first);
            let file = storage.open(&name, false).map_err(io("open", &name))?;
            let len = file.len().map_err(io("stat", &name))?;
            let mut bytes = vec![0u8; len as usize];
            file.read_at(&mut bytes, 0).map_err(io("read", &name))?;
            let corrupt = |offset: u64, reason: String| LogStoreError::Corrupt {
                file: name.clone(),
                offset,
                reason,
            };
            let magic = bytes.get(..8);
            let pads = magic == Some(SEGMENT_MAGIC);
            if bytes.len() < SEGMENT_HEADER as usize || !(pads || magic == Some(SEGMENT_MAGIC_1)) {
                if last_segment && bytes.len() < SEGMENT_HEADER as usize {
                    // Created, header never written: holds nothing.
                    storage.remove(&name).map_err(io("remove", &name))?;
                    continue;
                }
                return Err(corrupt(0, "not a raft segment".into()));
            }
            let mut at = SEGMENT_HEADER;
            while (at as usize) < bytes.len() {
                match decode_frame(&bytes[at as usize..]) {
                    Ok((FrameKind::RaftEntry, payload, used)) => {
                        let (log_id, _, tx_at) =
                            decode_meta(payload).map_err(|r| corrupt(at, r))?;
                        slots.insert(
                            log_id.index,
                            Slot {
                                log_id,
                                segment: first,
                                frame: at,
                                len: payload.len() as u32,
                                tx_at,
                            },
                        );
                        at += used as u64;
                    }
                    Ok((FrameKind::Pad, _, used)) if pads => at += used as u64,
                    Ok((kind, _, _)) => {
                        return Err(corrupt(at, format!("unexpected frame {kind:?}")));
                    }
                    Err(e) if last_segment => {
                        tracing::warn!(file = %name, offset = at, error = %e,
                            "cutting a torn tail (an append that was never acknowledged)");
                        file.truncate(at).map_err(io("truncate", &name))?;
                        file.sync_data().map_err(io("fdatasync", &name))?;
                        break;
                    }
                    Err(e) => return Err(corrupt(at, e.to_string())),
                }
            }
            files.insert(FileRef::Segment(first), file.clone());
            if last_segment {
                tail = Some(Tail::new(first, file, at, pads));
            }
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                storage,
                files,
                slots,
                meta,
                segment_bytes,
            })),
            tail: Arc::new(Mutex::new(tail)),
            recent: Arc::new(Mutex::new(Recent::new())),
            append_timing: Arc::default(),
        })
    }

    /// The files of the log, for reading payloads in place.
    pub fn files(&self) -> Arc<Files> {
        self.inner.lock().files.clone()
    }

    /// Where the transaction of entry `index` starts (its sealed payloads are at the
    /// transaction's payload offsets from there).
    pub fn tx_location(&self, index: u64) -> Option<Location> {
        let inner = self.inner.lock();
        let s = inner.slots.get(&index)?;
        Some(Location {
            file: FileRef::Segment(s.segment),
            offset: s.frame + FRAME_HEADER as u64 + u64::from(s.tx_at),
        })
    }

    /// Whether this replica ever saved a vote (false for a new or wiped disk).
    pub fn has_vote(&self) -> bool {
        self.inner.lock().meta.vote.is_some()
    }

    /// The first index still held (entries before it were purged).
    pub fn first_index(&self) -> Option<u64> {
        self.inner.lock().slots.keys().next().copied()
    }

    /// The state machine applied entries up to `index`: memory may let them go.
    pub fn applied(&self, index: u64) {
        self.recent.lock().applied(index);
    }

    /// Every follower has entries up to `index` (`u64::MAX` on a node that is not leading):
    /// memory may let them go.
    pub fn replicated(&self, index: u64) {
        self.recent.lock().replicated(index);
    }

    /// Bytes of all segments.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().files.total_bytes()
    }

    /// The segments' bytes on either side of the end of entry `index`: (up to and including
    /// it, after it). What a snapshot at `index` covers and what it does not.
    pub fn bytes_around(&self, index: u64) -> (u64, u64) {
        let inner = self.inner.lock();
        let (starts, total) = Self::segment_starts(&inner);
        let upto = Self::end_of(&inner, &starts, total, index);
        (upto, total.saturating_sub(upto))
    }

    /// The highest index up to which purging leaves at most `keep` bytes of the entries up
    /// to `index` (a snapshot's last): None when they take no more already. Segments go whole
    /// (`purge`), so up to a segment's worth more may stay.
    pub fn purge_point(&self, index: u64, keep: u64) -> Option<u64> {
        let inner = self.inner.lock();
        let (starts, total) = Self::segment_starts(&inner);
        let held = Self::end_of(&inner, &starts, total, index);
        if held <= keep {
            return None;
        }
        let first = *inner.slots.keys().next()?;
        // Purging up to i - 1 leaves the bytes from entry i's frame on.
        match inner
            .slots
            .range(first..=index)
            .find(|(_, s)| held.saturating_sub(Self::position(&starts, s)) <= keep)
        {
            Some((i, _)) => i.checked_sub(1).filter(|u| *u >= first),
            None => Some(index),
        }
    }

    /// Where each segment starts, counted over the segments in order, and their total.
    fn segment_starts(inner: &Inner) -> (BTreeMap<u64, u64>, u64) {
        let mut at = 0;
        let mut starts = BTreeMap::new();
        for first in inner.files.segments() {
            starts.insert(first, at);
            at += inner
                .files
                .get(&FileRef::Segment(first))
                .and_then(|f| f.len().ok())
                .unwrap_or(0);
        }
        (starts, at)
    }

    /// Where entry `index` ends (the next one's frame starts), counted over the segments.
    fn end_of(inner: &Inner, starts: &BTreeMap<u64, u64>, total: u64, index: u64) -> u64 {
        inner
            .slots
            .range(index + 1..)
            .next()
            .map_or(total, |(_, s)| Self::position(starts, s))
    }

    /// Where `s`'s frame starts, counted over the segments in order.
    fn position(starts: &BTreeMap<u64, u64>, s: &Slot) -> u64 {
        starts.get(&s.segment).copied().unwrap_or(0) + s.frame
    }

    /// Entries with indexes in `from..to` (those still held): recent ones from memory, the
    /// others from the segments.
    pub fn read_range(&self, from: u64, to: u64) -> Result<Vec<Entry>, LogStoreError> {
        self.read_range_within(from, to, u64::MAX, Read::Whole)
    }

    /// Like [`LogStore::read_range`], but the entries read back from the segments come
    /// *hollow*: their metadata only, a transaction left on disk as an empty `tx` (no valid
    /// transaction is empty), for [`LogStore::fill`] to read when it is needed. What openraft
    /// itself reads: to apply (a restart applies everything after the commit index it last
    /// saved, in one call), to re-apply at start, to find memberships and log ids. Read
    /// whole, a replica restarted after 4 GiB of writes held them all at once: 2.4 GiB
    /// (docs/benchmarks.md, session 30). Recent entries are in memory and come whole.
    pub fn read_hollow(&self, from: u64, to: u64) -> Result<Vec<Entry>, LogStoreError> {
        self.read_range_within(from, to, u64::MAX, Read::Hollow)
    }

    /// `e` with its transaction, read back from the segment when it came hollow from
    /// [`LogStore::read_hollow`]; any other entry as it is.
    pub fn fill(&self, e: Entry) -> Result<Entry, LogStoreError> {
        if !is_hollow(&e) {
            return Ok(e);
        }
        let index = e.log_id.index;
        match self.read_range(index, index + 1)?.pop() {
            Some(whole) if whole.log_id == e.log_id && !is_hollow(&whole) => Ok(whole),
            _ => Err(LogStoreError::Missing(index)),
        }
    }

    /// Like [`LogStore::read_range`], but stops before the entries' frames pass `max_bytes`
    /// (the first entry is always returned, whatever its size).
    pub fn read_range_within(
        &self,
        from: u64,
        to: u64,
        max_bytes: u64,
        read: Read,
    ) -> Result<Vec<Entry>, LogStoreError> {
        let (files, wanted): (_, Vec<Result<Entry, Slot>>) = {
            let inner = self.inner.lock();
            let recent = self.recent.lock();
            let mut wanted = Vec::new();
            let mut total = 0u64;
            // Entries before the first held one were purged.
            let start = first_in(&inner.slots, from, to)
                .or_else(|| first_in(&recent.entries, from, to))
                .unwrap_or(to);
            for index in start..to {
                // Entries being appended have no slot yet: they are in memory.
                let (len, entry) = match (inner.slots.get(&index), recent.entries.get(&index)) {
                    (Some(s), e) => (u64::from(s.len), e.cloned().ok_or(*s)),
                    (None, Some(e)) => (tx_len(e) as u64, Ok(e.clone())),
                    (None, None) => break,
                };
                total += len;
                if !wanted.is_empty() && total > max_bytes {
                    break;
                }
                wanted.push(entry);
            }
            (inner.files.clone(), wanted)
        };
        wanted
            .into_iter()
            .map(|w| w.or_else(|s| Self::read_entry(&files, s, read)))
            .collect()
    }

    /// Reads one entry from its segment; the transaction lands in a buffer of its own (or,
    /// read hollow, stays on disk).
    fn read_entry(files: &Files, s: Slot, read: Read) -> Result<Entry, LogStoreError> {
        let at = |offset: u32| Location {
            file: FileRef::Segment(s.segment),
            offset: s.frame + FRAME_HEADER as u64 + u64::from(offset),
        };
        let missing = |_| LogStoreError::Missing(s.log_id.index);
        let corrupt = |reason: String| LogStoreError::Corrupt {
            file: segment_name(s.segment),
            offset: s.frame,
            reason,
        };
        let head = files.read(at(0), s.tx_at as usize).map_err(missing)?;
        let (log_id, stored, tx_at) = decode_meta(&head).map_err(corrupt)?;
        if tx_at != s.tx_at || log_id != s.log_id {
            return Err(corrupt(format!("entry {} moved", s.log_id.index)));
        }
        let tx_len = s
            .len
            .checked_sub(tx_at)
            .ok_or_else(|| corrupt("short entry".into()))?;
        if read == Read::Hollow {
            return Ok(entry_of(log_id, stored, bytes::Bytes::new()));
        }
        let tx = files.read(at(tx_at), tx_len as usize).map_err(missing)?;
        Ok(entry_of(log_id, stored, tx.into()))
    }

    /// How long the appends so far took to write and fdatasync.
    pub fn append_seconds(&self) -> crate::metrics::Histogram {
        self.append_timing.lock().clone()
    }

    pub(crate) fn append_sync(&self, entries: Vec<Entry>) -> Result<(), LogStoreError> {
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return Ok(());
        };
        let mut tail = self.tail.lock();
        // Entries that replace held ones: openraft truncates first, but replacing keeps the
        // log a sequence whatever the caller does (nothing to do when `first` is not held).
        self.truncate_under(&mut tail, first)?;
        {
            let mut recent = self.recent.lock();
            recent.writing = first;
            for e in &entries {
                recent.insert(e.clone());
            }
        }
        let started = std::time::Instant::now();
        let written = self.write_entries(&mut tail, &entries);
        if written.is_ok() {
            self.append_timing.lock().observe(started.elapsed());
        }
        let mut recent = self.recent.lock();
        recent.writing = u64::MAX;
        if written.is_err() {
            // Never durable: no reader may find them (openraft stops this node's Raft).
            recent.truncate(first);
        }
        recent.evict();
        written
    }

    /// Writes and fdatasyncs `entries` behind the tail, rolling segments as they fill.
    fn write_entries(
        &self,
        tail: &mut Option<Tail>,
        entries: &[Entry],
    ) -> Result<(), LogStoreError> {
        let (storage, files, segment_bytes) = {
            let inner = self.inner.lock();
            (
                inner.storage.clone(),
                inner.files.clone(),
                inner.segment_bytes,
            )
        };
        let mut out = TailWriter::default();
        for e in entries {
            let index = e.log_id.index;
            let roll = match tail.as_ref() {
                None => true,
                // A compaction request starts a segment (unless the tail holds nothing yet):
                // then a purge up to it removes every segment before it, the whole log it
                // covers, not all but the tail (`log_bound`).
                Some(t) => {
                    t.len + out.len() >= segment_bytes
                        || (matches!(e.payload, EntryPayload::Normal(Command::Compact { .. }))
                            && t.len + out.len() > SEGMENT_HEADER)
                }
            };
            if roll {
                if let Some(t) = tail.as_mut() {
                    out.finish(t, &self.inner)?;
                }
                let name = segment_name(index);
                let file = storage.open(&name, true).map_err(io("create", &name))?;
                let mut header = SEGMENT_MAGIC.to_vec();
                header.extend_from_slice(&index.to_le_bytes());
                file.write_at(&header, 0).map_err(io("write", &name))?;
                file.sync_data().map_err(io("fdatasync", &name))?;
                storage.sync_dir().map_err(io("sync", "."))?;
                files.insert(FileRef::Segment(index), file.clone());
                *tail = Some(Tail::new(index, file, SEGMENT_HEADER, true));
            }
            let Some(t) = tail.as_ref() else {
                return Err(LogStoreError::Missing(index));
            };
            if is_hollow(e) {
                // An entry read back without its transaction (`read_hollow`) is for applying
                // only; written, it would lose the transaction for good.
                return Err(LogStoreError::Corrupt {
                    file: segment_name(t.first),
                    offset: t.len + out.len(),
                    reason: format!("entry {index} to append has an empty transaction"),
                });
            }
            let (head, tx) = entry_parts(e).map_err(|err| LogStoreError::Corrupt {
                file: segment_name(t.first),
                offset: t.len + out.len(),
                reason: err.to_string(),
            })?;
            let frame = out.push(t, &head, tx)?;
            out.slots.push((
                index,
                Slot {
                    log_id: e.log_id,
                    segment: t.first,
                    frame,
                    len: (head.len() + tx.len()) as u32,
                    tx_at: head.len() as u32,
                },
            ));
        }
        match tail.as_mut() {
            Some(t) => out.finish(t, &self.inner),
            None => Ok(()),
        }
    }

    fn truncate_sync(&self, from: u64) -> Result<(), LogStoreError> {
        let mut tail = self.tail.lock();
        self.truncate_under(&mut tail, from)
    }

    /// Truncates from `from` on; the caller holds the tail.
    fn truncate_under(&self, tail: &mut Option<Tail>, from: u64) -> Result<(), LogStoreError> {
        let mut inner = self.inner.lock();
        let Some(first) = inner.slots.get(&from).copied() else {
            return Ok(());
        };
        inner.slots.split_off(&from);
        self.recent.lock().truncate(from);
        let segments = inner.files.segments();
        for seg in segments.into_iter().filter(|s| *s > first.segment) {
            let name = segment_name(seg);
            inner.files.remove(&FileRef::Segment(seg));
            inner.storage.remove(&name).map_err(io("remove", &name))?;
        }
        let name = segment_name(first.segment);
        let file = inner
            .files
            .get(&FileRef::Segment(first.segment))
            .ok_or(LogStoreError::Missing(from))?;
        file.truncate(first.frame).map_err(io("truncate", &name))?;
        file.sync_data().map_err(io("fdatasync", &name))?;
        inner.storage.sync_dir().map_err(io("sync", "."))?;
        let mut magic = [0u8; 8];
        file.read_at(&mut magic, 0).map_err(io("read", &name))?;
        let pads = &magic == SEGMENT_MAGIC;
        *tail = Some(Tail::new(first.segment, file, first.frame, pads));
        Ok(())
    }

    fn purge_sync(&self, upto: LogId) -> Result<(), LogStoreError> {
        let mut inner = self.inner.lock();
        inner.meta.purged = Some(upto);
        Self::save_meta(&inner)?;
        let keep = inner.slots.split_off(&(upto.index + 1));
        inner.slots = keep;
        self.recent.lock().purge(upto.index);
        // A segment goes once the next one starts at or below the first index still kept.
        let segments = inner.files.segments();
        for pair in segments.windows(2) {
            if pair[1] <= upto.index + 1 {
                let name = segment_name(pair[0]);
                inner.files.remove(&FileRef::Segment(pair[0]));
                inner.storage.remove(&name).map_err(io("remove", &name))?;
            }
        }
        Ok(())
    }

    fn save_meta(inner: &Inner) -> Result<(), LogStoreError> {
        let bytes = postcard::to_stdvec(&inner.meta).map_err(|e| LogStoreError::Corrupt {
            file: META.into(),
            offset: 0,
            reason: e.to_string(),
        })?;
        let tmp = format!("{META}.tmp");
        let f = inner.storage.open(&tmp, true).map_err(io("create", &tmp))?;
        f.truncate(0).map_err(io("truncate", &tmp))?;
        f.write_at(&bytes, 0).map_err(io("write", &tmp))?;
        f.sync_data().map_err(io("fdatasync", &tmp))?;
        inner
            .storage
            .rename(&tmp, META)
            .map_err(io("rename", &tmp))?;
        inner.storage.sync_dir().map_err(io("sync", "."))
    }
}

fn read_err(e: LogStoreError) -> StorageError {
    StorageIOError::read_logs(openraft::AnyError::new(&e)).into()
}

fn write_err(e: LogStoreError) -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::new(&e)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i + 1,
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.read_hollow(from, to).map_err(read_err)
    }

    /// What one AppendEntries carries: at most [`REPLICATION_BYTES`] of entries, so that a
    /// request of large transactions fits the time openraft gives it (one heartbeat).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_range_within(start, end, REPLICATION_BYTES, Read::Whole)
            .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.lock();
        let last = inner.slots.values().next_back().map(|s| s.log_id);
        Ok(LogState {
            last_purged_log_id: inner.meta.purged,
            last_log_id: last.or(inner.meta.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        inner.meta.vote = Some(*vote);
        Self::save_meta(&inner)
            .map_err(|e| StorageIOError::write_vote(openraft::AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.inner.lock().meta.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: it only lets a restart re-apply sooner, and it is written
        // with the next vote or purge anyway.
        self.inner.lock().meta.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.lock().meta.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let r = self.append_sync(entries.into_iter().collect());
        match r {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.truncate_sync(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purge_sync(log_id).map_err(write_err)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test set-up: a failure should stop the test where it is
mod tests {
    use super::*;
    use ate::storage::FileStorage;

    /// The log in `dir` (opened again where a test reopens it), segments of `segment_bytes`.
    fn on_disk(dir: &std::path::Path, segment_bytes: u64) -> LogStore {
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(dir).unwrap());
        LogStore::open(storage, segment_bytes).unwrap()
    }

    fn commit(index: u64, term: u64, tx: Vec<u8>) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::Commit {
                chain: [7; 16],
                tx: tx.into(),
                // Every stored form: with and without a writer session, with and without
                // the hash.
                session: index.is_multiple_of(2).then_some([index as u8; 16]),
                hash: index.is_multiple_of(3).then_some([index as u8 ^ 0x5a; 32]),
            }),
        }
    }

    type Commits = Vec<(u64, Vec<u8>, Option<[u8; 16]>, Option<[u8; 32]>)>;

    fn txs(log: &LogStore, from: u64, to: u64) -> Commits {
        commits(&log.read_range(from, to).unwrap())
    }

    #[test]
    fn large_and_small_entries_read_back_alike_from_memory_and_disk_after_a_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let open = || on_disk(dir.path(), 4 << 20);
        let log = open();
        let big = |seed: u8| {
            (0..300_000)
                .map(|i| (i % 251) as u8 ^ seed)
                .collect::<Vec<u8>>()
        };
        // Small ones share the batch buffer; large ones (past WRITE_IN_PLACE) are written in
        // place; 4 MiB segments make the batch roll over to new segment files mid-append.
        let first: Vec<Entry> = (1..=40)
            .map(|i| {
                commit(
                    i,
                    1,
                    if i % 3 == 0 {
                        big(i as u8)
                    } else {
                        vec![i as u8; 100]
                    },
                )
            })
            .collect();
        log.append_sync(first.clone()).unwrap();
        // A new leader overrides the suffix from 30: no stale entry may be served from memory.
        log.truncate_sync(30).unwrap();
        let second: Vec<Entry> = (30..=45)
            .map(|i| commit(i, 2, big(200 + i as u8)))
            .collect();
        log.append_sync(second.clone()).unwrap();
        let expected = commits(&[&first[..29], &second].concat());
        assert_eq!(txs(&log, 1, 46), expected, "from memory");
        drop(log);
        let reopened = open();
        assert_eq!(txs(&reopened, 1, 46), expected, "from the segments");
        // Purged entries are gone from memory too.
        reopened
            .purge_sync(LogId::new(openraft::CommittedLeaderId::new(2, 1), 35))
            .unwrap();
        assert_eq!(txs(&reopened, 1, 46), expected[35..].to_vec());
    }

    #[test]
    fn entries_read_hollow_leave_their_transactions_on_disk_until_filled() {
        let dir = tempfile::tempdir().unwrap();
        let open = || on_disk(dir.path(), 1 << 20);
        let log = open();
        let written: Vec<Entry> = (1..=12)
            .map(|i| commit(i, 1, vec![i as u8; 200 << 10]))
            .collect();
        log.append_sync(written.clone()).unwrap();
        // In memory they are whole (a clone costs nothing).
        assert_eq!(commits(&log.read_hollow(1, 13).unwrap()), commits(&written));
        drop(log);
        let log = open();
        let hollow = log.read_hollow(1, 13).unwrap();
        assert_eq!(
            hollow.iter().map(|e| e.log_id).collect::<Vec<_>>(),
            written.iter().map(|e| e.log_id).collect::<Vec<_>>()
        );
        assert!(hollow.iter().all(is_hollow), "read back from the segments");
        // openraft's own reads go the hollow way.
        let mut reader = log.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let via_trait = rt.block_on(reader.try_get_log_entries(3..5)).unwrap();
        assert!(via_trait.iter().all(is_hollow));
        let filled: Vec<Entry> = hollow.into_iter().map(|e| log.fill(e).unwrap()).collect();
        assert_eq!(commits(&filled), commits(&written));
        // A hollow entry is never written: it would lose its transaction.
        let mut again = log.read_hollow(12, 13).unwrap();
        again[0].log_id = LogId::new(openraft::CommittedLeaderId::new(1, 1), 13);
        let err = log.append_sync(again).unwrap_err();
        assert!(err.to_string().contains("empty transaction"), "{err}");
        // Filling an entry the log no longer holds is an error, not an empty transaction.
        let mut gone = log.read_hollow(5, 6).unwrap();
        gone[0].log_id = LogId::new(openraft::CommittedLeaderId::new(1, 1), 40);
        assert!(matches!(
            log.fill(gone.remove(0)),
            Err(LogStoreError::Missing(40))
        ));
    }

    #[test]
    fn the_bytes_around_a_snapshot_and_the_purge_that_keeps_within_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        // 1 MiB segments, 100 KiB entries: nine or ten to a segment.
        let log = on_disk(dir.path(), 1 << 20);
        log.append_sync(
            (1..=60)
                .map(|i| commit(i, 1, vec![i as u8; 100 << 10]))
                .collect(),
        )
        .unwrap();
        let total = log.bytes();
        assert!(total > 60 * (100 << 10), "{total}");
        let (upto, after) = log.bytes_around(30);
        assert_eq!(upto + after, total);
        // Thirty entries on either side, give or take their frames and segment headers.
        assert!(upto.abs_diff(after) < 4 << 10, "{upto} {after}");
        assert_eq!(log.bytes_around(60), (total, 0));
        // Within the bound already: nothing to purge.
        assert_eq!(log.purge_point(30, upto), None);
        // Keep at most ~1.5 MiB of the thirty: the purge leaves the newest of them.
        let keep = 3 << 19;
        let point = log.purge_point(30, keep).unwrap();
        assert!((15..30).contains(&point), "{point}");
        log.purge_sync(LogId::new(openraft::CommittedLeaderId::new(1, 1), point))
            .unwrap();
        let (held, rest) = log.bytes_around(30);
        assert_eq!(rest, after, "what the snapshot does not cover stays");
        // Whole segments went: at most one segment more than asked stays.
        assert!(held <= keep + (1 << 20), "{held}");
        assert!(held < upto, "{held} {upto}");
        assert_eq!(log.first_index(), Some(point + 1));
        // An entry larger than the bound: everything the snapshot covers may go.
        assert_eq!(log.purge_point(30, 10), Some(30));
    }

    #[test]
    fn memory_keeps_entries_still_to_be_applied_or_replicated_within_its_cap() {
        const MIB8: usize = 8 << 20;
        let tx = bytes::Bytes::from(vec![0u8; MIB8]);
        let mut recent = Recent::new();
        let held = |r: &Recent| r.entries.keys().copied().collect::<Vec<u64>>();
        for i in 1..=40 {
            let mut e = commit(i, 1, Vec::new());
            if let EntryPayload::Normal(Command::Commit { tx: t, .. }) = &mut e.payload {
                *t = tx.clone();
            }
            recent.insert(e);
        }
        // Nothing applied: only the cap lets entries go.
        assert_eq!(
            held(&recent),
            (41 - (UNAPPLIED_BYTES / MIB8) as u64..=40).collect::<Vec<_>>()
        );
        recent.applied(20);
        assert_eq!(held(&recent), (21..=40).collect::<Vec<_>>());
        // A follower of this leader has only up to 10: applied entries stay for it.
        recent.replicated(10);
        recent.applied(40);
        assert_eq!(held(&recent), (21..=40).collect::<Vec<_>>());
        recent.replicated(u64::MAX);
        let newest = (RECENT_BYTES / MIB8) as u64;
        assert_eq!(held(&recent), (41 - newest..=40).collect::<Vec<_>>());
        assert_eq!(recent.bytes, RECENT_BYTES);
    }

    /// The kinds of a segment's frames, in order.
    fn frame_kinds(bytes: &[u8]) -> Vec<FrameKind> {
        let mut at = SEGMENT_HEADER as usize;
        let mut kinds = Vec::new();
        while at < bytes.len() {
            let (kind, _, used) = decode_frame(&bytes[at..]).unwrap();
            kinds.push(kind);
            at += used;
        }
        kinds
    }

    fn commits(entries: &[Entry]) -> Commits {
        entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(Command::Commit {
                    tx, session, hash, ..
                }) => (e.log_id.index, tx.to_vec(), *session, *hash),
                _ => panic!("not a commit"),
            })
            .collect()
    }

    #[test]
    fn large_entries_are_padded_to_their_memory_alignment_except_in_format_1_segments() {
        let mem = ate::storage::MemStorage::new();
        let (_, min) = mem.open("probe", true).unwrap().write_alignment().unwrap();
        mem.remove("probe").unwrap();
        let open = || LogStore::open(Arc::new(mem.clone()), 1 << 20);
        let log = open().unwrap();
        let small: Vec<Entry> = (1..=3).map(|i| commit(i, 1, vec![i as u8; 10])).collect();
        log.append_sync(small.clone()).unwrap();
        drop(log);
        // Make segment 1 one written before padding frames.
        let first = segment_name(1);
        let mut v1 = mem.contents(&first).unwrap();
        v1[..8].copy_from_slice(SEGMENT_MAGIC_1);
        mem.set_contents(&first, v1);
        let log = open().unwrap();
        // Lengths off the alignment, so that entries land anywhere; 1 MiB segments roll.
        let large: Vec<Entry> = (4..=40)
            .map(|i| commit(i, 1, vec![i as u8; min + 1000 * i as usize]))
            .collect();
        log.append_sync(large.clone()).unwrap();
        drop(log);
        let mut segments: Vec<String> = mem
            .list()
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with("raft-") && n.ends_with(".log"))
            .collect();
        segments.sort();
        assert!(segments.len() > 2, "{segments:?}");
        assert!(
            !frame_kinds(&mem.contents(&first).unwrap()).contains(&FrameKind::Pad),
            "a format-1 segment is continued without padding"
        );
        let padded = segments[1..]
            .iter()
            .find(|n| frame_kinds(&mem.contents(n).unwrap()).contains(&FrameKind::Pad))
            .expect("newer segments hold padding frames")
            .clone();
        let expected = commits(&[small, large].concat());
        assert_eq!(txs(&open().unwrap(), 1, 41), expected, "padding is skipped");
        // A padding frame in a format-1 segment is damage, not something to skip.
        let mut bad = mem.contents(&padded).unwrap();
        bad[..8].copy_from_slice(SEGMENT_MAGIC_1);
        mem.set_contents(&padded, bad);
        let err = open().unwrap_err().to_string();
        assert!(err.contains("unexpected frame Pad"), "{err}");
    }

    #[test]
    fn entries_being_written_are_read_from_memory_without_waiting_for_the_disk() {
        use ate::storage::{FaultStorage, Held, MemStorage};
        let (storage, plan) = FaultStorage::new(Arc::new(MemStorage::new()));
        let log = LogStore::open(Arc::new(storage), 64 << 20).unwrap();
        let all: Vec<Entry> = (1..=6).map(|i| commit(i, 1, vec![i as u8; 100])).collect();
        log.append_sync(all[..3].to_vec()).unwrap();
        plan.hold(Held::Sync, "raft-");
        let writer = {
            let (log, rest) = (log.clone(), all[3..].to_vec());
            std::thread::spawn(move || log.append_sync(rest))
        };
        plan.wait_held();
        // The append waits in its fdatasync. Replication and the state machine go on.
        let read = txs(&log, 1, 7);
        log.applied(6);
        log.replicated(u64::MAX);
        let located = log.tx_location(5).is_some();
        let waited = plan.held_too_long();
        plan.release();
        writer.join().unwrap().unwrap();
        assert!(!waited, "readers waited for the append's fdatasync");
        assert_eq!(read, commits(&all));
        assert!(
            !located,
            "an entry is found in its segment only once it is durable"
        );
        assert!(log.tx_location(5).is_some());
        assert_eq!(txs(&log, 1, 7), commits(&all));
    }

    /// An owner's compaction request starts a segment, so that a purge up to it leaves no
    /// segment holding what came before it (old record versions, after a rekey): with 64 MiB
    /// segments the tail would otherwise keep up to 64 MiB of them.
    #[test]
    fn a_compaction_request_starts_a_segment_and_a_purge_up_to_it_leaves_none_before() {
        let dir = tempfile::tempdir().unwrap();
        let log = on_disk(dir.path(), 64 << 20);
        let id = |i| LogId::new(openraft::CommittedLeaderId::new(1, 1), i);
        let mut entries: Vec<Entry> = (1..=5).map(|i| commit(i, 1, vec![i as u8; 1000])).collect();
        entries.push(Entry {
            log_id: id(6),
            payload: EntryPayload::Normal(Command::Compact { chain: [7; 16] }),
        });
        entries.push(commit(7, 1, vec![7; 1000]));
        log.append_sync(entries).unwrap();
        let segments = || log.inner.lock().files.segments();
        assert_eq!(segments(), vec![1, 6], "the request starts a segment");
        log.purge_sync(id(6)).unwrap();
        assert_eq!(segments(), vec![6], "nothing before the request is left");
        assert_eq!(txs(&log, 7, 8), commits(&[commit(7, 1, vec![7; 1000])]));
        // Read back from the segment, the request is what was appended.
        drop(log);
        let log = on_disk(dir.path(), 64 << 20);
        assert!(matches!(
            log.read_range(6, 7).unwrap()[0].payload,
            EntryPayload::Normal(Command::Compact { chain }) if chain == [7; 16]
        ));
    }
}
