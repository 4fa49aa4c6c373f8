//! The file-system core: plain Rust over a chain, called by the FUSE adapter and by tests
//! without a kernel.
//!
//! Design pressures:
//! - Namespace changes (create, link, unlink, rename, ...) are one signed transaction each,
//!   committed before the call returns, with `Absent` preconditions on new names so that two
//!   writers racing for one name get one success and one EEXIST.
//! - File data is buffered per inode as whole blocks and committed by flush, fsync, release,
//!   or once a file holds `flush_bytes` of dirty data, as few large transactions.
//! - One lock guards the in-memory state. Simple and correct first; the commit path is already
//!   group-committed underneath.
//!
//! This file holds the mount's state, its lookups and its open handles; the operations live
//! beside it: `namespace` (names), `data` (attributes, blocks, reads, writes), `flush`
//! (committing buffered data), `ranges` (fallocate, lseek, copy_file_range), `xattr`, `shed`
//! (bounding the inode table) and `fsck`.

use crate::error::{FsError, FsResult};
use crate::records::{Dirent, Inode, Keys, Kind, MAX_NAME, ROOT_INO};
use ate::{Chain, KeyFile, Op, Precondition, RecordKey, Transaction, WriteAuthority};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

mod block_cache;
use block_cache::Block;
mod data;
mod flush;
mod fsck;
mod namespace;
mod ranges;
mod shed;
mod xattr;
pub use fsck::FsckReport;
pub use ranges::{Allocate, Seek};

/// Operations that make the namespace batch go out at once.
const BATCH_OPS: usize = 4000;
/// Closed files committed together (see [`AteFs::flush_async`]).
const CLOSED_FILES: usize = 256;
/// Most data bytes in one flush transaction.
const FLUSH_TX_BYTES: usize = 32 << 20;
/// Encoding bytes of a block's Put beyond its data (header, authority, nonce and tag), more
/// or less: what a flush reserves per block.
const PUT_OVERHEAD: usize = 160;

/// Tuning and limits of a mount.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Bytes per data block (a record each).
    pub block_size: usize,
    /// Dirty bytes per file that trigger a commit without waiting for flush.
    pub flush_bytes: usize,
    /// Bytes of one file's committed-but-unanswered data before its writer waits (memory
    /// bound of a sequential writer; through a cluster more must be in flight to keep the
    /// replication pipeline full).
    pub max_inflight: usize,
    /// Volume quota in bytes (statfs reports it; writes beyond it fail with ENOSPC).
    pub quota_bytes: u64,
    /// Where the quota is read again while mounted (a shared volume's chain quota, which its
    /// owner may raise); without one, `quota_bytes` is fixed.
    pub quota_source: Option<std::sync::Arc<dyn crate::quota::QuotaSource>>,
    /// Wait for every namespace commit before replying. Needed when other writers share the
    /// chain (their conflicting change makes our commit fail, which must reach the caller as
    /// EEXIST); an embedded volume has one writer by construction and queues instead.
    pub sync_namespace: bool,
    /// Memory for decrypted blocks (the read cache).
    pub cache_bytes: usize,
    /// The chain is shared with other mounts through a cluster (`Chain::open_upstream`):
    /// namespace changes wait for the cluster (racing creates get EEXIST), caches are
    /// revalidated at open (close-to-open) and the kernel caches nothing across calls.
    pub remote: bool,
    /// Garbage allowed in the log before the flusher compacts it: compaction runs once the log
    /// holds more than twice the live data plus this many bytes (see [`AteFs::maybe_compact`]).
    pub compact_slack: u64,
    /// Inodes kept in memory: past this, clean ones (no open handle, nothing buffered) are
    /// dropped, least recently used first, and loaded from the chain again when needed
    /// (shed.rs).
    pub node_cache: usize,
    /// Take the volume's writer lease at mount and fence every commit with it: a newer mount
    /// that takes the lease makes this one's later commits fail on the servers (a single
    /// writer enforced by the cluster, for `--exclusive` mounts; see [`AteFs::take_lease`]).
    pub writer_lease: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            block_size: 64 << 10,
            flush_bytes: 8 << 20,
            max_inflight: 16 << 20,
            quota_bytes: 1 << 40,
            quota_source: None,
            sync_namespace: false,
            cache_bytes: 64 << 20,
            remote: false,
            compact_slack: 256 << 20,
            node_cache: 65_536,
            writer_lease: false,
        }
    }
}

/// Attribute changes of setattr.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time (None: unchanged).
    pub atime: Option<SystemTime>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
    /// New change time.
    pub ctime: Option<SystemTime>,
    /// Drop setuid, and setgid when group-executable (a truncate by a caller without
    /// CAP_FSETID: the kernel leaves that to the file system, see fuse.rs init).
    pub kill_suidgid: bool,
}

/// Who is asking (for ownership of new inodes).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// The creating process's umask, for new inodes (ignored under a default ACL).
    pub umask: u32,
}

/// How rename treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace it (POSIX rename).
    Replace,
    /// Fail with EEXIST (RENAME_NOREPLACE).
    NoReplace,
    /// Swap the two names (RENAME_EXCHANGE).
    Exchange,
}

#[derive(Debug)]
struct Node {
    attr: Inode,
    /// Directories: name -> (ino, kind), loaded on first use.
    entries: Option<BTreeMap<Vec<u8>, (u64, Kind)>>,
    /// Uncommitted blocks (whole blocks; shorter means zeros after).
    dirty: BTreeMap<u64, Vec<u8>>,
    /// Blocks whose commit is queued but not yet durable (read before the chain), with the
    /// flush generation that queued them.
    inflight: BTreeMap<u64, (u64, Vec<u8>)>,
    /// Commits queued for this file, with their flush generation (commits land in order, so
    /// once every commit of generation g is done, blocks of generations <= g are in the chain).
    pending: Vec<(u64, ate::chain::PendingCommit)>,
    /// Flushes started so far (the generation counter).
    flushes: u64,
    /// Indexes of the blocks that exist (or will, once queued commits land) in the chain;
    /// loaded on first use. Every block put or delete goes through this mount, so this set,
    /// not the chain's view (which lags queued commits), says which blocks to read or delete.
    blocks: Option<std::collections::BTreeSet<u64>>,
    dirty_bytes: usize,
    /// Attributes changed since the last commit.
    attr_dirty: bool,
    /// Open handles; an unlinked inode lives until the last one closes.
    open: u32,
    /// When it was last used ([`State::tick`] then): the least recently used go first when
    /// the table is over its bound (shed.rs).
    used: u64,
}

impl Node {
    /// Holds data or attributes the chain does not have yet (buffered, in flight or queued).
    fn holds_unsaved(&self) -> bool {
        !self.dirty.is_empty()
            || !self.inflight.is_empty()
            || !self.pending.is_empty()
            || self.attr_dirty
    }
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<u64, Node>,
    handles: HashMap<u64, u64>,
    next_fh: u64,
    /// Namespace and attribute commits queued, oldest first.
    pending: Vec<ate::chain::PendingCommit>,
    /// The last commit queued (of any kind): commits are answered in queue order, so once it
    /// is answered everything queued before it is too.
    last_queued: Option<ate::CommitWatch>,
    /// The first failure of a queued commit, reported by the next fsync.
    failed: Option<String>,
    /// Namespace changes not yet queued (see batch.rs).
    batch: crate::batch::Batch,
    /// Closed files whose data waits to be committed together (see [`AteFs::flush_async`]),
    /// and their buffered bytes.
    closed: Vec<u64>,
    closed_bytes: usize,
    /// Inodes deleted by this mount (their deletion may still be queued, so the chain may
    /// still show them).
    deleted: std::collections::HashSet<u64>,
    /// Remote mode: the chain index the caches were last revalidated at.
    synced_at: u64,
    /// Uses of inodes so far, for [`Node::used`].
    tick: u64,
}

impl State {
    /// A new [`State::tick`], for an inode just used.
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

/// The file system.
#[derive(Debug)]
pub struct AteFs {
    chain: Chain,
    keyfile: KeyFile,
    keys: Keys,
    opts: FsOptions,
    quota: crate::quota::Quota,
    state: Mutex<State>,
    /// Decrypted committed blocks, bounded by `FsOptions::cache_bytes`. Taken after `state`.
    cache: Mutex<block_cache::BlockCache>,
    /// Log size right after this mount's last compaction (0 before the first).
    compacted_bytes: std::sync::atomic::AtomicU64,
    /// The writer lease record and the version this mount wrote, when it holds the lease:
    /// every transaction requires it unchanged.
    lease: Option<(RecordKey, u64)>,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > MAX_NAME {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(FsError::Invalid("bad name"));
    }
    Ok(())
}

impl AteFs {
    /// Opens the file system on `chain`, creating the root directory on a new chain.
    pub fn new(
        chain: Chain,
        keyfile: KeyFile,
        opts: FsOptions,
        root_owner: Caller,
    ) -> FsResult<Self> {
        let keys = Keys::new(keyfile.names.clone());
        let blocks = (opts.cache_bytes / opts.block_size.max(1)).max(1);
        let cap = std::num::NonZeroUsize::new(blocks).unwrap_or(std::num::NonZeroUsize::MIN);
        let quota = crate::quota::Quota::new(opts.quota_bytes, opts.quota_source.clone());
        let mut fs = Self {
            chain,
            keyfile,
            keys,
            opts,
            quota,
            state: Mutex::new(State {
                next_fh: 1,
                ..Default::default()
            }),
            cache: Mutex::new(block_cache::BlockCache::new(cap)),
            compacted_bytes: Default::default(),
            lease: None,
        };
        if fs.chain.root().is_none() {
            let mut tx = fs.tx();
            tx.ops.push(Op::SetRoot(ate::RootAuthority::single_owner(
                fs.keyfile.owner.public(),
            )));
            fs.chain.sign_and_commit(tx, &fs.keyfile.owner)?;
        }
        if fs.chain.record(&fs.keys.inode(ROOT_INO)).is_none() {
            let mut root = Inode::new(ROOT_INO, Kind::Dir, 0o755, root_owner.uid, root_owner.gid);
            root.parent = ROOT_INO;
            let mut tx = fs.tx();
            tx.preconditions
                .push(Precondition::Absent(fs.keys.inode(ROOT_INO)));
            tx.ops.push(fs.put_inode(&root));
            match fs.chain.sign_and_commit(tx, &fs.keyfile.owner) {
                Ok(_) => {}
                // Another mount of a shared volume made it first.
                Err(ate::ChainError::Upstream(ate::UpstreamError::Precondition(_))) => {
                    fs.chain.sync_upstream()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if fs.opts.writer_lease {
            fs.lease = Some(fs.take_lease()?);
        }
        Ok(fs)
    }

    /// Writes the volume's lease record, conditional on the version this mount saw (so two
    /// mounts taking it at once cannot both win), and returns the version it wrote. From
    /// then on every transaction carries `AtVersion(lease, version)`: once a newer mount
    /// rewrites the record, the servers refuse this mount's commits (EIO at fsync); they are
    /// never merged with the newer writer's.
    fn take_lease(&self) -> FsResult<(RecordKey, u64)> {
        let key = self.keys.lease();
        self.chain.sync_upstream()?;
        let seen = self.chain.record(&key).filter(|e| !e.is_deleted());
        let mut tx = self.tx();
        tx.preconditions.push(match &seen {
            Some(e) => Precondition::AtVersion(key, e.version),
            None => Precondition::Absent(key),
        });
        let holder: [u8; 16] = rand::random();
        tx.ops.push(Op::put(
            &self.chain.id(),
            key,
            // No parent, like inodes: a child of a directory's inode would read as an entry.
            None,
            WriteAuthority::Inherit,
            Some(&self.keyfile.data),
            &holder,
        ));
        self.chain.sign_and_commit(tx, &self.keyfile.owner)?;
        let version = self
            .chain
            .record(&key)
            .map(|e| e.version)
            .ok_or(FsError::NotFound)?;
        tracing::info!(version, "took the volume's writer lease");
        Ok((key, version))
    }

    /// The options it runs with.
    pub fn options(&self) -> &FsOptions {
        &self.opts
    }

    /// The chain underneath.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    fn tx(&self) -> Transaction {
        let mut tx = Transaction::new(self.chain.id(), self.keyfile.owner.public());
        if let Some((key, version)) = self.lease {
            tx.preconditions.push(Precondition::AtVersion(key, version));
        }
        tx
    }

    /// Queues a namespace or attribute commit without waiting for it: this mount's caches are
    /// already up to date, and commits apply in queue order. fsync and fsyncdir wait for
    /// everything queued ([`Self::sync_all_locked`]); a failure is reported there.
    fn commit(&self, st: &mut State, tx: Transaction) -> FsResult<()> {
        if self.opts.sync_namespace || self.opts.remote {
            self.chain.sign_and_commit(tx, &self.keyfile.owner)?;
            return Ok(());
        }
        // A transaction holds at most ate::tx::MAX_OPS operations.
        if st.batch.len() + tx.ops.len() > BATCH_OPS {
            self.send_batch(st)?;
        }
        st.batch.add(tx.ops, &tx.preconditions);
        if st.batch.len() >= BATCH_OPS {
            self.send_batch(st)?;
        }
        Ok(())
    }

    /// Queues the namespace batch as one transaction.
    fn send_batch(&self, st: &mut State) -> FsResult<()> {
        if st.batch.len() == 0 {
            return Ok(());
        }
        let mut tx = self.tx();
        tx.ops = st.batch.take();
        self.queue(st, tx)
    }

    /// Queues a transaction without waiting; finished ones are collected as we go.
    fn queue(&self, st: &mut State, tx: Transaction) -> FsResult<()> {
        let p = self.chain.sign_and_commit_async(tx, &self.keyfile.owner)?;
        st.last_queued = Some(p.watch());
        // Collect finished commits from the front so the list stays short.
        while st.pending.first().is_some_and(|p| p.is_done()) {
            let done = st.pending.remove(0);
            if let Err(e) = done.wait() {
                tracing::error!(error = %e, "a queued commit failed");
                st.failed.get_or_insert(e.to_string());
            }
        }
        st.pending.push(p);
        Ok(())
    }

    /// Sends the namespace batch and waits for every queued commit: then the chain's view
    /// holds every namespace change this mount made. A failed commit is kept in
    /// `State::failed` for the next fsync to report.
    fn wait_queued(&self, st: &mut State) -> FsResult<()> {
        self.send_batch(st)?;
        for p in std::mem::take(&mut st.pending) {
            if let Err(e) = p.wait() {
                st.failed.get_or_insert(e.to_string());
            }
        }
        Ok(())
    }

    /// Waits for every queued commit; reports (once) a failure of any of them.
    fn sync_all_locked(&self, st: &mut State) -> FsResult<()> {
        self.wait_queued(st)?;
        if let Err(e) = self.chain.sync() {
            st.failed.get_or_insert(e.to_string());
        }
        match st.failed.take() {
            None => Ok(()),
            Some(e) => Err(FsError::CommitFailed(e)),
        }
    }

    fn put_inode(&self, i: &Inode) -> Op {
        let id = self.chain.id();
        Op::put(
            &id,
            self.keys.inode(i.ino),
            None,
            WriteAuthority::Inherit,
            Some(&self.keyfile.data),
            &i.encode(),
        )
    }

    fn put_dirent(&self, dir: u64, d: &Dirent) -> Op {
        let id = self.chain.id();
        let key = self.keys.dirent(dir, &d.name);
        Op::put(
            &id,
            key,
            Some(self.keys.inode(dir)),
            WriteAuthority::Inherit,
            Some(&self.keyfile.data),
            &d.encode(),
        )
    }

    fn read_record(&self, key: &RecordKey) -> FsResult<Option<Vec<u8>>> {
        Ok(self
            .chain
            .read_plain(key, &self.keyfile.data)?
            .map(|(_, p)| p))
    }

    /// Loads a node into the state (from the chain on first use).
    fn node<'a>(&self, st: &'a mut State, ino: u64) -> FsResult<&'a mut Node> {
        if st.deleted.contains(&ino) {
            return Err(FsError::NotFound);
        }
        let tick = st.next_tick();
        if let std::collections::hash_map::Entry::Vacant(slot) = st.nodes.entry(ino) {
            let attr = self.load_attr(ino)?.ok_or(FsError::NotFound)?;
            slot.insert(Node {
                attr,
                entries: None,
                dirty: BTreeMap::new(),
                dirty_bytes: 0,
                inflight: BTreeMap::new(),
                flushes: 0,
                pending: Vec::new(),
                blocks: None,
                attr_dirty: false,
                open: 0,
                used: tick,
            });
        }
        let node = st.nodes.get_mut(&ino).ok_or(FsError::NotFound)?;
        node.used = tick;
        Ok(node)
    }

    /// An inode's attributes as the chain has them.
    fn load_attr(&self, ino: u64) -> FsResult<Option<Inode>> {
        let key = self.keys.inode(ino);
        let Some(bytes) = self.read_record(&key)? else {
            return Ok(None);
        };
        Inode::decode(&bytes)
            .map(Some)
            .map_err(|e| FsError::Corrupt(key, e.to_string()))
    }

    /// A directory's entries, loaded on first use.
    fn entries<'a>(
        &self,
        st: &'a mut State,
        dir: u64,
    ) -> FsResult<&'a mut BTreeMap<Vec<u8>, (u64, Kind)>> {
        let node = self.node(st, dir)?;
        if node.attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if node.entries.is_none() {
            let mut map = BTreeMap::new();
            for key in self.chain.children(&self.keys.inode(dir)) {
                if let Some(bytes) = self.read_record(&key)? {
                    let d =
                        Dirent::decode(&bytes).map_err(|e| FsError::Corrupt(key, e.to_string()))?;
                    map.insert(d.name, (d.ino, d.kind));
                }
            }
            node.entries = Some(map);
        }
        node.entries.as_mut().ok_or(FsError::NotDir)
    }

    /// Attributes of an inode (including uncommitted size changes).
    pub fn getattr(&self, ino: u64) -> FsResult<Inode> {
        let mut st = self.state.lock();
        self.shed(&mut st);
        Ok(self.node(&mut st, ino)?.attr.clone())
    }

    /// Looks a name up in a directory.
    pub fn lookup(&self, dir: u64, name: &[u8]) -> FsResult<Inode> {
        match self.lookup_cached(dir, name) {
            // Another mount may have made the name since the cache was filled.
            Err(FsError::NotFound) if self.opts.remote => {
                self.revalidate()?;
                self.lookup_cached(dir, name)
            }
            r => r,
        }
    }

    fn lookup_cached(&self, dir: u64, name: &[u8]) -> FsResult<Inode> {
        let mut st = self.state.lock();
        self.shed(&mut st);
        if name.len() > MAX_NAME {
            return Err(FsError::NameTooLong);
        }
        let ino = match name {
            b"." => dir,
            b".." => self.node(&mut st, dir)?.attr.parent,
            _ => self
                .entries(&mut st, dir)?
                .get(name)
                .map(|e| e.0)
                .ok_or(FsError::NotFound)?,
        };
        Ok(self.node(&mut st, ino)?.attr.clone())
    }

    /// Entries of a directory, with "." and ".." first.
    pub fn readdir(&self, dir: u64) -> FsResult<Vec<(u64, Kind, Vec<u8>)>> {
        let mut st = self.state.lock();
        self.shed(&mut st);
        let parent = self.node(&mut st, dir)?.attr.parent;
        let mut out = vec![
            (dir, Kind::Dir, b".".to_vec()),
            (parent, Kind::Dir, b"..".to_vec()),
        ];
        out.extend(
            self.entries(&mut st, dir)?
                .iter()
                .map(|(n, (i, k))| (*i, *k, n.clone())),
        );
        Ok(out)
    }

    /// Opens a file; returns a handle.
    pub fn open(&self, ino: u64, truncate: bool) -> FsResult<u64> {
        self.revalidate()?;
        let mut st = self.state.lock();
        let bs = self.opts.block_size as u64;
        if truncate {
            self.truncate_locked(&mut st, ino, 0, bs)?;
            let t = now();
            let n = self.node(&mut st, ino)?;
            n.attr.mtime = t;
            n.attr.ctime = t;
            // Attributes are committed with the next data commit or by the flusher (batched).
        }
        self.node(&mut st, ino)?.open += 1;
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles.insert(fh, ino);
        Ok(fh)
    }

    /// Remote mode: brings the chain up to what the cluster has now and, when other writers
    /// changed it since the last time, forgets every cached node without local changes and
    /// every decrypted block (close-to-open consistency). A no-op for an embedded volume.
    pub fn revalidate(&self) -> FsResult<()> {
        if !self.opts.remote {
            return Ok(());
        }
        let index = self.chain.sync_upstream()?;
        let mut st = self.state.lock();
        if index == st.synced_at {
            return Ok(());
        }
        st.synced_at = index;
        let mut keep = HashMap::new();
        for (ino, mut n) in std::mem::take(&mut st.nodes) {
            if n.holds_unsaved() {
                keep.insert(ino, n);
            } else if n.open > 0 {
                // Open handles live in the node: keep it, but reload what others may change.
                if let Some(attr) = self.load_attr(ino)? {
                    n.attr = attr;
                }
                n.entries = None;
                n.blocks = None;
                keep.insert(ino, n);
            }
        }
        st.nodes = keep;
        self.cache.lock().clear();
        Ok(())
    }

    /// The open file handles, (handle, inode), and the next handle to give out: what a daemon
    /// taking this mount over must go on knowing (handover.rs).
    pub fn handles(&self) -> (Vec<(u64, u64)>, u64) {
        let st = self.state.lock();
        let mut h: Vec<(u64, u64)> = st.handles.iter().map(|(fh, ino)| (*fh, *ino)).collect();
        h.sort_unstable();
        (h, st.next_fh)
    }

    /// Takes over the open handles of the daemon this one replaces (from [`Self::handles`]).
    /// An inode whose last link went while it was open is still in the chain with no links,
    /// and goes at its last close here as it would have there.
    pub fn adopt_handles(&self, handles: &[(u64, u64)], next_fh: u64) -> FsResult<()> {
        let mut st = self.state.lock();
        for &(fh, ino) in handles {
            self.node(&mut st, ino)?.open += 1;
            st.handles.insert(fh, ino);
        }
        let above = handles.iter().map(|(fh, _)| fh + 1).max().unwrap_or(1);
        st.next_fh = st.next_fh.max(next_fh).max(above);
        Ok(())
    }

    /// Closes a handle; commits the file's data; frees an unlinked inode on its last close.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let mut st = self.state.lock();
        let ino = st.handles.remove(&fh).ok_or(FsError::BadHandle)?;
        let node = self.node(&mut st, ino)?;
        node.open = node.open.saturating_sub(1);
        if node.open == 0 && node.attr.nlink == 0 {
            let mut tx = self.tx();
            if self.drop_link(&mut st, ino, &mut tx, true, now())? {
                self.commit(&mut st, tx)?;
                st.nodes.remove(&ino);
                st.deleted.insert(ino);
            }
            return Ok(());
        }
        if !self.opts.remote {
            return self.flush_closed(&mut st, ino);
        }
        self.start_flush(&mut st, ino)?;
        self.settle(&mut st, ino, false)
    }

    /// Takes `st` back once the file `ino` may grow to `end` bytes within the quota, or fails
    /// with `NoSpace`. The quota bounds what the chain holds, and deletions and truncations
    /// this mount queued free their space only once they land: before a write is refused they
    /// are waited for, as a file system commits its delayed frees before it reports ENOSPC
    /// (`rm a; cp b .` must not fail for the space `a` held).
    fn make_room<'a>(
        &'a self,
        mut st: parking_lot::MutexGuard<'a, State>,
        ino: u64,
        end: u64,
    ) -> FsResult<parking_lot::MutexGuard<'a, State>> {
        let mut waited = false;
        loop {
            // Read again after the wait: the lock was released meanwhile.
            let grow = end.saturating_sub(self.node(&mut st, ino)?.attr.size);
            if grow == 0 || self.quota.fits(self.chain.live_bytes(), grow) {
                return Ok(st);
            }
            if waited {
                return Err(FsError::NoSpace);
            }
            self.send_batch(&mut st)?;
            let last = st.last_queued.clone();
            drop(st);
            if let Some(w) = last {
                w.wait();
            }
            st = self.state.lock();
            waited = true;
        }
    }

    /// "local" (an embedded volume), "following" (a shared one that follows its chain on the
    /// cluster) or "not following: WHY" (it cannot reach the cluster, or stopped for good).
    pub fn status(&self) -> String {
        match self.chain.upstream() {
            None => "local".into(),
            Some(up) => match up.stopped() {
                None => "following".into(),
                Some(why) => format!("not following: {why}"),
            },
        }
    }

    /// Volume usage: (total bytes, used bytes, inodes used). Used is what the volume holds
    /// (its live records), the measure its quota bounds; old versions still in the log until
    /// the next compaction are the log's overhead, not the user's data.
    pub fn statfs(&self) -> (u64, u64, u64) {
        let s = self.chain.stats();
        (self.quota.fresh(), s.live_bytes, s.live as u64)
    }

    /// Block size (statfs and st_blksize).
    pub fn block_size(&self) -> usize {
        self.opts.block_size
    }
}

/// An attribute of the root that is not stored: how the mount is doing ([`AteFs::status`]).
/// What a CSI node plugin asks to report a volume's condition; any user may read it (the
/// kernel passes any name to a FUSE file system, and this one is not listed).
pub const STATUS_XATTR: &[u8] = b"atefs.status";
