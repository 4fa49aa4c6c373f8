//! A local chain: the redo log, its materialized view and a group-commit thread.
//!
//! Callers validate and encode on their own threads (signatures are the expensive part and
//! parallelise); one committer thread checks authority and preconditions in order, appends the
//! whole batch, fdatasyncs once, publishes the batch to the view and only then acknowledges.
//! Readers therefore never see a transaction that is not durable.

use crate::authority::RootAuthority;
use crate::codec::DecodeError;
use crate::crypto::CryptoError;
use crate::crypto::SigningKey;
use crate::ids::{ChainId, RecordKey, TxHash};
use crate::queue::BatchQueue;
use crate::redo::{
    Location, LogCursor, LogError, LogOptions, Recovered, RecoveryVisitor, RedoLog, SnapshotRecord,
    SnapshotWriter,
};
use crate::storage::Storage;
use crate::tx::{RecordHeader, Skeleton, Transaction};
use crate::validate::{check_format, check_skeleton, check_stateless, ChainState, ValidationError};
use crate::view::{locate, plan, RecordEntry, View};
use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

mod committer;
mod frozen;
mod install;
mod run_read;
pub use frozen::{Frozen, LiveRecord};

/// Why a chain operation failed.
#[derive(Debug, Error)]
pub enum ChainError {
    /// The transaction was refused; the chain is unchanged.
    #[error("transaction refused: {0}")]
    Rejected(#[from] ValidationError),
    /// The log failed; see the inner error for file and offset.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Stored bytes did not decode.
    #[error("undecodable transaction at index {index}: {source}")]
    Decode {
        /// Log index.
        index: u64,
        /// Why.
        source: DecodeError,
    },
    /// A payload failed to open.
    #[error("record {key}: {source}")]
    Crypto {
        /// The record.
        key: RecordKey,
        /// Why.
        source: CryptoError,
    },
    /// The chain was closed.
    #[error("the chain is closed")]
    Closed,
    /// The upstream (a chain-server cluster) refused or failed the commit.
    #[error("upstream: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
}

/// Tuning of a chain.
#[derive(Clone, Debug)]
pub struct ChainOptions {
    /// Redo log tuning.
    pub log: LogOptions,
    /// Most transactions per group commit.
    pub max_batch: usize,
    /// Most bytes per group commit (a batch closes at the first transaction over it).
    pub max_batch_bytes: usize,
    /// `None`: a commit is acknowledged once it is on disk (every group commit fdatasyncs).
    /// `Some(d)`: a commit is acknowledged (and readable) once validated and appended; the log
    /// is fdatasynced at most `d` later, at once when [`Chain::sync`] asks. For writers with
    /// their own durability points (a file system's fsync), which then pay one fdatasync per
    /// fsync instead of one per group commit.
    pub deferred_sync: Option<Duration>,
}

impl Default for ChainOptions {
    fn default() -> Self {
        Self {
            log: LogOptions::default(),
            max_batch: 1024,
            max_batch_bytes: 32 << 20,
            deferred_sync: None,
        }
    }
}

/// What a successful commit returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// Log index of the transaction.
    pub index: u64,
    /// Its hash.
    pub hash: TxHash,
}

/// Sizes for `atefs status` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainStats {
    /// Last durable index.
    pub last_index: u64,
    /// Records, tombstones included.
    pub records: usize,
    /// Live records.
    pub live: usize,
    /// Sealed payload bytes of the live records (about what a compaction would keep).
    pub live_bytes: u64,
    /// Bytes on disk (segments and snapshot).
    pub bytes: u64,
    /// Snapshot's last index, if any.
    pub snapshot: Option<u64>,
}

#[derive(Debug)]
struct Pending {
    tx: Transaction,
    bytes: Bytes,
    offsets: Vec<usize>,
    hash: TxHash,
    reply: Arc<Reply>,
}

/// A transaction ready for the log: its encoding, and its headers without the payloads
/// (the committer needs headers; the payloads are in `bytes`).
#[derive(Debug)]
pub(crate) struct Prepared {
    tx: Transaction,
    bytes: Bytes,
    offsets: Vec<usize>,
}

impl Prepared {
    fn new(mut tx: Transaction) -> Self {
        let bytes = Bytes::from(tx.encode());
        let offsets = tx.payload_offsets();
        for op in &mut tx.ops {
            if let crate::tx::Op::Put { payload, .. } = op {
                *payload = Vec::new();
            }
        }
        Self { tx, bytes, offsets }
    }

    /// A transaction already encoded (`bytes`), described by its skeleton; and its hash.
    fn from_skeleton(sk: Skeleton, bytes: Bytes) -> (Self, TxHash) {
        let offsets = sk.payload_offsets();
        let prepared = Self {
            tx: sk.tx,
            bytes,
            offsets,
        };
        (prepared, sk.hash)
    }
}

/// A one-shot reply slot. Waiters park at once: with dozens of writers on two cores, the
/// spin-then-yield of a channel's receive burns the CPU the signatures need.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    /// The answer, once there; it stays (every handle of a shared commit gets a copy).
    slot: Mutex<Option<Result<Receipt, ChainError>>>,
    ready: Condvar,
}

impl Reply {
    pub(crate) fn send(&self, r: Result<Receipt, ChainError>) {
        *self.slot.lock() = Some(r);
        self.ready.notify_all();
    }
}

/// Waits for a queued commit without owning it (see [`PendingCommit::watch`]).
#[derive(Clone, Debug)]
pub struct CommitWatch {
    reply: std::sync::Weak<Reply>,
}

impl CommitWatch {
    /// Returns once the commit is answered (or abandoned with its chain). Commits queued by
    /// one thread are answered in order, so watching the last of them waits for them all.
    pub fn wait(&self) {
        loop {
            let Some(reply) = self.reply.upgrade() else {
                return;
            };
            let mut slot = reply.slot.lock();
            if slot.is_some() {
                return;
            }
            reply.ready.wait_for(&mut slot, Duration::from_millis(100));
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    id: ChainId,
    view: RwLock<View>,
    log: Mutex<RedoLog>,
    durable: Mutex<u64>,
    durable_cv: Condvar,
    /// Last index appended and merged into the view (readable; equals `durable` unless
    /// syncs are deferred).
    visible: Mutex<u64>,
    /// Signalled when `visible` moves. Its own condvar: parking_lot's panics when one is
    /// waited on with two mutexes at once (`durable` waiters use `durable_cv`).
    visible_cv: Condvar,
    /// Deferred syncs: the index a [`Chain::sync`] caller waits for (the syncer does not
    /// wait out its delay while this is ahead of what it synced).
    sync_target: Mutex<u64>,
    sync_cv: Condvar,
    /// The fdatasync failure that poisoned the log, reported to every later sync.
    sync_failed: Mutex<Option<LogError>>,
    /// Sequence number of the last batch merged into the view.
    published: Mutex<u64>,
    /// The log's files, for readers: reading never waits for the appender's lock.
    files: Arc<crate::redo::Files>,
    /// This chain's own transactions sent upstream, until they come back by hash
    /// ([`crate::upstream::Upstream::returns_own_by_hash`]).
    pub(crate) held: Mutex<std::collections::HashMap<TxHash, Prepared>>,
    /// Held by the one compaction that may run at a time.
    compacting: Mutex<()>,
}

impl Shared {
    /// Waits until `counter` (durable or visible index, signalled by `cv`) reaches `target`;
    /// fails once an fdatasync has failed (the counter would never get there).
    fn wait_reaching(
        &self,
        counter: &Mutex<u64>,
        cv: &Condvar,
        target: u64,
    ) -> Result<(), ChainError> {
        let mut c = counter.lock();
        while *c < target {
            if let Some(e) = &*self.sync_failed.lock() {
                return Err(ChainError::Log(e.duplicate()));
            }
            cv.wait_for(&mut c, Duration::from_millis(100));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Committer {
    queue: Arc<BatchQueue<Pending>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends commits upstream (see upstream.rs).
#[derive(Debug)]
struct Sender {
    upstream: Arc<dyn crate::upstream::Upstream>,
    queue: Arc<BatchQueue<crate::upstream::Outgoing>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A chain stored locally. Cheap to clone; the committer stops when the last clone drops.
#[derive(Clone, Debug)]
pub struct Chain {
    pub(crate) shared: Arc<Shared>,
    committer: Arc<Committer>,
    sender: Option<Arc<Sender>>,
}

struct Replay<'a, F: FnMut(u64, u64)> {
    view: View,
    progress: &'a mut F,
}

impl<F: FnMut(u64, u64)> RecoveryVisitor for Replay<'_, F> {
    fn snapshot_root(&mut self, root: Option<RootAuthority>, last_index: u64) {
        self.view.set_snapshot_root(root, last_index);
    }
    fn snapshot_record(
        &mut self,
        rec: SnapshotRecord,
        payload: Option<Location>,
    ) -> Result<(), LogError> {
        let key = rec.key;
        self.view.put(key, RecordEntry::from_snapshot(rec, payload));
        Ok(())
    }
    fn entry(&mut self, index: u64, tx: &[u8], tx_at: Location) -> Result<(), LogError> {
        let t = Transaction::decode(tx).map_err(|e| LogError::Corrupt {
            file: tx_at.file.name(),
            offset: tx_at.offset,
            reason: format!("checksummed frame holds an undecodable transaction: {e}"),
        })?;
        let mut changes = plan(&self.view, &t, index);
        locate(&mut changes, tx_at, &t.payload_offsets());
        self.view.merge(index, changes);
        Ok(())
    }
    fn progress(&mut self, done: u64, total: u64) {
        (self.progress)(done, total)
    }
}

impl Chain {
    /// Opens the chain in `storage` (creating chain `create` in an empty storage), replaying the
    /// log; `progress(done_bytes, total_bytes)` is called while replaying.
    pub fn open(
        storage: Arc<dyn Storage>,
        create: Option<ChainId>,
        opts: ChainOptions,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(Chain, Recovered), ChainError> {
        let mut replay = Replay {
            view: View::new(create.unwrap_or_default()),
            progress: &mut progress,
        };
        let (log, report) = RedoLog::open(storage, create, opts.log.clone(), &mut replay)?;
        let mut view = replay.view;
        // The id is only known once the files were read. It is set in place: rebuilding the
        // view to change it held two copies of every record at once (2.4x the view's memory
        // at the peak of a remount, bench/src/bin/view-memory.rs).
        view.set_chain_id(log.chain());
        let last = log.next_index() - 1;
        let files = log.files().clone();
        let shared = Arc::new(Shared {
            id: log.chain(),
            view: RwLock::new(view),
            log: Mutex::new(log),
            durable: Mutex::new(last),
            durable_cv: Condvar::new(),
            visible: Mutex::new(last),
            visible_cv: Condvar::new(),
            sync_target: Mutex::new(last),
            sync_cv: Condvar::new(),
            sync_failed: Mutex::new(None),
            published: Mutex::new(0),
            files,
            held: Mutex::default(),
            compacting: Mutex::new(()),
        });
        let queue = Arc::new(BatchQueue::new());
        let s = shared.clone();
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ate-commit-{}", &shared.id.to_hex()[..8]))
            .spawn(move || committer::committer_loop(s, &q, opts))
            .map_err(|e| LogError::Io {
                op: "spawn committer",
                file: ".".into(),
                source: e,
            })?;
        let committer = Arc::new(Committer {
            queue,
            thread: Some(thread),
        });
        Ok((
            Chain {
                shared,
                committer,
                sender: None,
            },
            report,
        ))
    }

    /// Opens a local cache of a chain whose order `upstream` decides: commits go upstream,
    /// and the log only grows through [`Self::apply_upstream`] (see upstream.rs).
    pub fn open_upstream(
        storage: Arc<dyn Storage>,
        id: ChainId,
        opts: ChainOptions,
        upstream: Arc<dyn crate::upstream::Upstream>,
        progress: impl FnMut(u64, u64),
    ) -> Result<(Chain, Recovered), ChainError> {
        let (mut chain, report) = Self::open(storage, Some(id), opts, progress)?;
        let queue = Arc::new(BatchQueue::new());
        let q = queue.clone();
        let weak = Arc::downgrade(&chain.shared);
        let up = upstream.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ate-upstream-{}", &id.to_hex()[..8]))
            .spawn(move || crate::upstream::sender_loop(weak, up, &q))
            .map_err(|e| LogError::Io {
                op: "spawn upstream sender",
                file: ".".into(),
                source: e,
            })?;
        chain.sender = Some(Arc::new(Sender {
            upstream,
            queue,
            thread: Some(thread),
        }));
        Ok((chain, report))
    }

    /// The upstream, for a chain opened with [`Self::open_upstream`].
    pub fn upstream(&self) -> Option<&Arc<dyn crate::upstream::Upstream>> {
        self.sender.as_ref().map(|s| &s.upstream)
    }

    /// Appends a transaction the upstream ordered at `index` (the caller feeds them in order,
    /// from one thread). Validated like any commit, from its encoding (which is what goes into
    /// the log: its payloads are not copied out, nor is it encoded again); a refusal or an
    /// index other than `index` means the cache diverged from the upstream.
    pub fn apply_upstream(&self, index: u64, bytes: Bytes) -> Result<PendingCommit, ChainError> {
        let sk = Transaction::decode_skeleton(&bytes)
            .map_err(|source| ChainError::Decode { index, source })?;
        check_skeleton(&sk)?;
        self.shared.held.lock().remove(&sk.hash);
        let (prepared, hash) = Prepared::from_skeleton(sk, bytes);
        self.push_prepared(prepared, hash)
    }

    /// Appends this chain's own transaction `hash`, which the upstream ordered next and sent
    /// back by hash (the caller feeds them in order, as for [`Self::apply_upstream`]). `None`
    /// when the chain does not hold it (the commit was given up on, or made by another
    /// process): the caller then needs it in full.
    pub fn apply_upstream_own(&self, hash: &TxHash) -> Option<Result<PendingCommit, ChainError>> {
        let prepared = self.shared.held.lock().remove(hash)?;
        Some(self.push_prepared(prepared, *hash))
    }

    pub(crate) fn wait_visible(shared: &Shared, index: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut v = shared.visible.lock();
        while *v < index {
            if shared.visible_cv.wait_until(&mut v, deadline).timed_out() {
                return *v >= index;
            }
        }
        true
    }

    /// The chain's id.
    pub fn id(&self) -> ChainId {
        self.shared.id
    }

    /// Validates, commits and waits until the transaction is durable.
    pub fn commit(&self, tx: Transaction) -> Result<Receipt, ChainError> {
        self.commit_async(tx)?.wait()
    }

    /// Signs `tx` with `key` and commits it. The signature is made here, so verifying it again
    /// would prove nothing: only format, authority and preconditions are checked. This is the
    /// path of a local writer (the embedded file system); transactions that arrive from
    /// elsewhere go through [`Self::commit`].
    pub fn sign_and_commit(
        &self,
        tx: Transaction,
        key: &SigningKey,
    ) -> Result<Receipt, ChainError> {
        self.sign_and_commit_async(tx, key)?.wait()
    }

    /// [`Self::sign_and_commit`] without waiting: commits queued by one thread apply in order.
    pub fn sign_and_commit_async(
        &self,
        tx: Transaction,
        key: &SigningKey,
    ) -> Result<PendingCommit, ChainError> {
        let (tx, hash) = tx.sign_hashed(key);
        check_format(&tx)?;
        self.enqueue(tx, hash)
    }

    /// Validates and queues; the returned handle waits for durability.
    pub fn commit_async(&self, tx: Transaction) -> Result<PendingCommit, ChainError> {
        let hash = check_stateless(&tx)?;
        self.enqueue(tx, hash)
    }

    /// Queues a transaction this process encoded and signed ([`crate::tx::TxEncoder`]);
    /// checked for format, as [`Self::sign_and_commit_async`] does.
    pub fn commit_encoded_async(
        &self,
        sk: Skeleton,
        bytes: Bytes,
    ) -> Result<PendingCommit, ChainError> {
        crate::validate::check_skeleton_format(&sk)?;
        let (prepared, hash) = Prepared::from_skeleton(sk, bytes);
        self.enqueue_prepared(prepared, hash)
    }

    fn enqueue(&self, tx: Transaction, hash: TxHash) -> Result<PendingCommit, ChainError> {
        self.enqueue_prepared(Prepared::new(tx), hash)
    }

    fn enqueue_prepared(
        &self,
        prepared: Prepared,
        hash: TxHash,
    ) -> Result<PendingCommit, ChainError> {
        if prepared.bytes.len() > crate::tx::MAX_TX_BYTES {
            // Replay would refuse it: the log must hold only what decodes.
            return Err(ChainError::Rejected(ValidationError::TooLarge(
                "more than MAX_TX_BYTES",
            )));
        }
        if let Some(sender) = &self.sender {
            let reply = Arc::new(Reply::default());
            let bytes = prepared.bytes.clone();
            if sender.upstream.returns_own_by_hash() {
                self.shared.held.lock().insert(hash, prepared);
            }
            let out = crate::upstream::Outgoing {
                bytes,
                hash,
                reply: reply.clone(),
            };
            if sender.queue.push(out).is_err() {
                return Ok(Self::answered(Err(ChainError::Closed)));
            }
            return Ok(PendingCommit { reply });
        }
        self.push_prepared(prepared, hash)
    }

    fn push_prepared(&self, prepared: Prepared, hash: TxHash) -> Result<PendingCommit, ChainError> {
        let Prepared { tx, bytes, offsets } = prepared;
        let reply = Arc::new(Reply::default());
        self.committer
            .queue
            .push(Pending {
                tx,
                bytes,
                offsets,
                hash,
                reply: reply.clone(),
            })
            .map_err(|_| ChainError::Closed)?;
        Ok(PendingCommit { reply })
    }

    /// Latest state of a record (tombstones included).
    pub fn record(&self, key: &RecordKey) -> Option<RecordEntry> {
        self.shared.view.read().get(key).cloned()
    }

    /// Opens the live version's payload with `key_for` giving the data key for its header.
    pub fn read_plain(
        &self,
        key: &RecordKey,
        data_key: &crate::crypto::DataKey,
    ) -> Result<Option<(RecordHeader, Vec<u8>)>, ChainError> {
        let mut buf = Vec::new();
        Ok(self
            .read_plain_into(key, data_key, &mut buf, 0)?
            .map(|(header, len)| {
                buf.truncate(len);
                (header, buf)
            }))
    }

    /// [`Self::read_plain`] into `buf` at `at` (grown when too short, never shrunk, so a
    /// caller reusing one buffer pays neither allocation nor zeroing per read); returns the
    /// header and the plaintext's length, None when the record is absent.
    pub fn read_plain_into(
        &self,
        key: &RecordKey,
        data_key: &crate::crypto::DataKey,
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<Option<(RecordHeader, usize)>, ChainError> {
        let Some(entry) = self.record(key).filter(|e| !e.is_deleted()) else {
            return Ok(None);
        };
        let Some(header) = entry.header(*key) else {
            return Ok(None);
        };
        match self.open_payload_into(key, &header, entry.payload, data_key, buf, at) {
            Ok(plain) => Ok(Some((header, plain))),
            // Compaction may have moved it between our two lookups: look again.
            Err(ChainError::Log(LogError::Compacted { .. })) => {
                self.read_plain_into(key, data_key, buf, at)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the sealed payload of record `key` (`header`) found at `payload` into `buf` at
    /// `at` (grown when too short) and opens it there; returns the plaintext's length (0
    /// without a payload).
    pub(crate) fn open_payload_into(
        &self,
        key: &RecordKey,
        header: &RecordHeader,
        payload: Option<(Location, usize)>,
        data_key: &crate::crypto::DataKey,
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<usize, ChainError> {
        let Some((loc, len)) = payload.filter(|(_, len)| *len > 0) else {
            return Ok(0);
        };
        let end = at + len;
        if buf.len() < end {
            buf.resize(end, 0);
        }
        self.shared.files.read_into(loc, &mut buf[at..end])?;
        header
            .open_in_place(&self.shared.id, data_key, &mut buf[at..end])
            .map_err(|source| ChainError::Crypto { key: *key, source })
    }

    /// Live children of a record.
    pub fn children(&self, key: &RecordKey) -> Vec<RecordKey> {
        self.shared.view.read().children(key).copied().collect()
    }

    /// The root authority (None before genesis).
    pub fn root(&self) -> Option<RootAuthority> {
        self.shared.view.read().root().cloned()
    }

    /// Index of the last transaction in the view (durable unless syncs are deferred).
    pub fn last_index(&self) -> u64 {
        *self.shared.visible.lock()
    }

    /// Index of the last transaction on disk.
    pub fn durable_index(&self) -> u64 {
        *self.shared.durable.lock()
    }

    /// Waits until `index` is in the view; false on timeout.
    pub fn wait_for(&self, index: u64, timeout: Duration) -> bool {
        Self::wait_visible(&self.shared, index, timeout)
    }

    /// Waits until every transaction acknowledged so far is on disk (with deferred syncs,
    /// asking for the fdatasync now). Fails if an fdatasync failed. For a chain opened with
    /// [`Self::open_upstream`] it returns at once: its commits are acknowledged once the
    /// upstream has them.
    pub fn sync(&self) -> Result<(), ChainError> {
        if self.sender.is_some() {
            // A cache of an upstream: what is durable is what the upstream acknowledged.
            return Ok(());
        }
        let target = *self.shared.visible.lock();
        {
            let mut t = self.shared.sync_target.lock();
            *t = (*t).max(target);
        }
        self.shared.sync_cv.notify_all();
        self.shared
            .wait_reaching(&self.shared.durable, &self.shared.durable_cv, target)
    }

    /// Committed transactions from `from` on: history, then live.
    pub fn subscribe(&self, from: u64) -> Result<Subscription, ChainError> {
        let files = self.shared.files.clone();
        Ok(Subscription {
            cursor: LogCursor::new(files, from)?,
            shared: self.shared.clone(),
        })
    }

    /// Sealed payload bytes of the live record versions; cheap, unlike [`Self::stats`].
    pub fn live_bytes(&self) -> u64 {
        self.shared.view.read().live_bytes()
    }

    /// About what a compaction would leave, erring high ([`crate::view::View::snapshot_estimate`]).
    pub fn snapshot_estimate(&self) -> u64 {
        self.shared.view.read().snapshot_estimate()
    }

    /// Bytes on disk (segments and snapshot); cheap, unlike [`Self::stats`].
    pub fn disk_bytes(&self) -> u64 {
        self.shared.files.total_bytes()
    }

    /// Sizes.
    pub fn stats(&self) -> ChainStats {
        let (records, live, live_bytes) = {
            let view = self.shared.view.read();
            let (records, live) = view.counts();
            (records, live, view.live_bytes())
        };
        let log = self.shared.log.lock();
        ChainStats {
            last_index: self.last_index(),
            records,
            live,
            live_bytes,
            bytes: log.files().total_bytes(),
            snapshot: log.files().snapshot(),
        }
    }

    /// Writes a snapshot of every record as of now and drops the segments it covers. Returns
    /// the snapshot's last index.
    ///
    /// Commits go on while the snapshot is written: only taking the records' list (a copy of
    /// the index, no payloads) and, at the end, pointing the unchanged ones at their new place
    /// and removing the old segments hold the log. Holding it throughout stalled every writer
    /// for as long as copying the live data took (a third of a second for 64 MiB here; minutes
    /// for a large volume).
    pub fn compact(&self) -> Result<u64, ChainError> {
        let _one = self.shared.compacting.lock();
        let (last, files, records, root) = {
            let mut log = self.shared.log.lock();
            let last = log.next_index() - 1;
            // Without deferred syncs a batch is merged into the view only after its
            // fdatasync, outside the log lock: a snapshot of a view behind the log would drop
            // it.
            self.shared
                .wait_reaching(&self.shared.visible, &self.shared.visible_cv, last)?;
            // New commits go to a segment of their own, which the snapshot does not cover.
            log.roll()?;
            let view = self.shared.view.read();
            let records: Vec<(RecordKey, RecordEntry)> =
                view.records().map(|(k, e)| (*k, e.clone())).collect();
            (last, log.files().clone(), records, view.root().cloned())
        };
        // Only this compaction removes segments, so every location read here stays valid.
        let mut w =
            SnapshotWriter::create(files.storage.clone(), self.shared.id, last, root.as_ref())?;
        let mut moved = Vec::new();
        for (key, e) in &records {
            let payload = match e.payload {
                Some((loc, len)) => files.read(loc, len)?,
                None => Vec::new(),
            };
            let loc = w.add(&e.to_snapshot(*key, payload.len()), &payload)?;
            if let Some((old, _)) = e.payload {
                moved.push((*key, old, loc));
            }
        }
        let snapshot_file = w.finish()?;
        files.insert(crate::redo::FileRef::Snapshot(last), snapshot_file.clone());
        {
            // A record committed again meanwhile keeps its newer place.
            let mut view = self.shared.view.write();
            for (k, old, loc) in moved {
                view.relocate_from(&k, old, loc);
            }
        }
        self.shared.log.lock().retire_upto(snapshot_file, last)?;
        tracing::info!(chain = %self.shared.id, last, "compacted");
        Ok(last)
    }
}

/// A queued commit.
#[derive(Debug)]
pub struct PendingCommit {
    reply: Arc<Reply>,
}

impl PendingCommit {
    pub(crate) fn new(reply: Arc<Reply>) -> Self {
        Self { reply }
    }

    /// A handle that waits for this commit's answer without taking it, so a caller can wait
    /// without holding the lock that guards the owner of this handle.
    pub fn watch(&self) -> CommitWatch {
        CommitWatch {
            reply: Arc::downgrade(&self.reply),
        }
    }

    /// Another handle to the same commit (one transaction can carry several files' data,
    /// each of which waits for it). The answer is copied to every handle that waits.
    pub fn share(&self) -> PendingCommit {
        PendingCommit {
            reply: self.reply.clone(),
        }
    }

    /// True once the commit is durable or refused ([`Self::wait`] then returns at once).
    pub fn is_done(&self) -> bool {
        self.reply.slot.lock().is_some() || Arc::strong_count(&self.reply) == 1
    }

    /// Waits until the transaction is durable or refused.
    pub fn wait(self) -> Result<Receipt, ChainError> {
        let mut slot = self.reply.slot.lock();
        loop {
            if let Some(r) = slot.as_ref() {
                return match r {
                    Ok(receipt) => Ok(*receipt),
                    Err(e) => Err(e.duplicate()),
                };
            }
            // The committer always answers: every Pending it takes gets a reply, and a
            // Pending it never takes is dropped with the queue, which only happens when the
            // chain (and so this handle's owner) is gone.
            if Arc::strong_count(&self.reply) == 1 {
                return Err(ChainError::Closed);
            }
            self.reply.ready.wait_for(&mut slot, Duration::from_secs(1));
        }
    }
}

impl ChainError {
    /// A copy (the log's I/O errors are not Clone), for every handle of a shared commit.
    pub fn duplicate(&self) -> ChainError {
        match self {
            ChainError::Rejected(e) => ChainError::Rejected(e.clone()),
            ChainError::Log(e) => ChainError::Log(e.duplicate()),
            ChainError::Decode { index, source } => ChainError::Decode {
                index: *index,
                source: source.clone(),
            },
            ChainError::Crypto { key, source } => ChainError::Crypto {
                key: *key,
                source: source.clone(),
            },
            ChainError::Closed => ChainError::Closed,
            ChainError::Upstream(e) => ChainError::Upstream(e.clone()),
        }
    }
}

/// A stream of committed transactions.
#[derive(Debug)]
pub struct Subscription {
    cursor: LogCursor,
    shared: Arc<Shared>,
}

impl Subscription {
    /// Index of the next transaction this subscription yields.
    pub fn position(&self) -> u64 {
        self.cursor.position()
    }

    /// The next committed transaction, waiting up to `timeout` for one.
    pub fn next_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(u64, Transaction)>, ChainError> {
        let deadline = Instant::now() + timeout;
        loop {
            let durable = *self.shared.durable.lock();
            if let Some((index, bytes)) = self.cursor.read_next(durable)? {
                let tx = Transaction::decode(&bytes)
                    .map_err(|source| ChainError::Decode { index, source })?;
                return Ok(Some((index, tx)));
            }
            let mut d = self.shared.durable.lock();
            if *d < self.cursor.position()
                && self
                    .shared
                    .durable_cv
                    .wait_until(&mut d, deadline)
                    .timed_out()
            {
                return Ok(None);
            }
            if Instant::now() >= deadline && *d < self.cursor.position() {
                return Ok(None);
            }
        }
    }
}
