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

use crate::error::{FsError, FsResult};
use crate::records::{Dirent, Inode, Keys, Kind, MAX_NAME, ROOT_INO};
use ate::tx::TxEncoder;
use ate::{Chain, KeyFile, Op, Precondition, RecordKey, Transaction, WriteAuthority};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

mod block_cache;
use block_cache::Block;
mod ranges;
mod shed;
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

    /// Creates a file, directory, symlink or special file.
    #[allow(clippy::too_many_arguments)] // mirrors mknod(2) plus symlink's target and the caller
    pub fn mknod(
        &self,
        dir: u64,
        name: &[u8],
        kind: Kind,
        perm: u32,
        rdev: u32,
        target: &[u8],
        who: Caller,
    ) -> FsResult<Inode> {
        check_name(name)?;
        let mut st = self.state.lock();
        self.shed(&mut st);
        if self.entries(&mut st, dir)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        let parent = self.node(&mut st, dir)?.attr.clone();
        let ino = loop {
            let i: u64 = rand::random();
            if i > ROOT_INO
                && !st.nodes.contains_key(&i)
                && self.chain.record(&self.keys.inode(i)).is_none()
            {
                break i;
            }
        };
        let mut perm = (perm & 0o7777) as u16;
        let default_acl = parent
            .xattrs
            .iter()
            .find(|(n, _)| n == crate::acl::DEFAULT)
            .map(|(_, v)| v.clone())
            .filter(|_| kind != Kind::Symlink);
        let inherited = default_acl
            .as_deref()
            .and_then(|d| crate::acl::inherit(d, perm & 0o777));
        perm = match &inherited {
            Some((bits, _)) => (perm & 0o7000) | bits,
            None => perm & !(who.umask as u16 & 0o777),
        };
        // BSD group semantics under a setgid directory, as Linux does.
        let gid = if parent.perm & 0o2000 != 0 {
            if kind == Kind::Dir {
                perm |= 0o2000;
            }
            parent.gid
        } else {
            who.gid
        };
        let mut node = Inode::new(ino, kind, perm, who.uid, gid);
        node.rdev = rdev;
        if let Some((_, Some(access))) = inherited {
            node.xattrs.push((crate::acl::ACCESS.to_vec(), access));
        }
        if let (Kind::Dir, Some(d)) = (kind, default_acl) {
            node.xattrs.push((crate::acl::DEFAULT.to_vec(), d));
        }
        node.xattrs.sort();
        if kind == Kind::Dir {
            node.parent = dir;
        }
        if kind == Kind::Symlink {
            node.target = target.to_vec();
            node.size = target.len() as u64;
        }
        let t = now();
        let mut p = parent;
        p.mtime = t;
        p.ctime = t;
        if kind == Kind::Dir {
            p.nlink += 1;
        }
        let mut tx = self.tx();
        tx.preconditions
            .push(Precondition::Absent(self.keys.dirent(dir, name)));
        // The inode number is new too; saying so lets a batch drop a create undone later.
        tx.preconditions
            .push(Precondition::Absent(self.keys.inode(ino)));
        tx.ops.push(self.put_inode(&node));
        tx.ops.push(self.put_dirent(
            dir,
            &Dirent {
                name: name.to_vec(),
                ino,
                kind,
            },
        ));
        tx.ops.push(self.put_inode(&p));
        self.commit(&mut st, tx)?;
        self.node(&mut st, dir)?.attr = p;
        self.entries(&mut st, dir)?
            .insert(name.to_vec(), (ino, kind));
        let used = st.next_tick();
        st.nodes.insert(
            ino,
            Node {
                attr: node.clone(),
                entries: (kind == Kind::Dir).then(BTreeMap::new),
                dirty: BTreeMap::new(),
                dirty_bytes: 0,
                inflight: BTreeMap::new(),
                flushes: 0,
                pending: Vec::new(),
                blocks: Some(Default::default()),
                attr_dirty: false,
                open: 0,
                used,
            },
        );
        Ok(node)
    }

    /// Symlink target.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let a = self.getattr(ino)?;
        if a.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        Ok(a.target)
    }

    /// Adds a hard link.
    pub fn link(&self, ino: u64, dir: u64, name: &[u8]) -> FsResult<Inode> {
        check_name(name)?;
        let mut st = self.state.lock();
        self.shed(&mut st);
        if self.entries(&mut st, dir)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        // Attributes are committed with the next data commit or by the flusher (batched).
        let mut target = self.node(&mut st, ino)?.attr.clone();
        if target.kind == Kind::Dir {
            return Err(FsError::NotPermitted);
        }
        if target.nlink >= 65_000 {
            return Err(FsError::TooManyLinks);
        }
        let t = now();
        target.nlink += 1;
        target.ctime = t;
        let mut p = self.node(&mut st, dir)?.attr.clone();
        p.mtime = t;
        p.ctime = t;
        let mut tx = self.tx();
        tx.preconditions
            .push(Precondition::Absent(self.keys.dirent(dir, name)));
        tx.ops.push(self.put_dirent(
            dir,
            &Dirent {
                name: name.to_vec(),
                ino,
                kind: target.kind,
            },
        ));
        tx.ops.push(self.put_inode(&target));
        tx.ops.push(self.put_inode(&p));
        self.commit(&mut st, tx)?;
        self.node(&mut st, dir)?.attr = p;
        self.entries(&mut st, dir)?
            .insert(name.to_vec(), (ino, target.kind));
        self.node(&mut st, ino)?.attr = target.clone();
        Ok(target)
    }

    /// Removes a name (files, symlinks, special files).
    pub fn unlink(&self, dir: u64, name: &[u8]) -> FsResult<()> {
        self.remove(dir, name, false)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, dir: u64, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return Err(FsError::Invalid("rmdir ."));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        self.remove(dir, name, true)
    }

    fn remove(&self, dir: u64, name: &[u8], want_dir: bool) -> FsResult<()> {
        let mut st = self.state.lock();
        let (ino, kind) = *self
            .entries(&mut st, dir)?
            .get(name)
            .ok_or(FsError::NotFound)?;
        match (want_dir, kind == Kind::Dir) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            _ => {}
        }
        if want_dir && !self.entries(&mut st, ino)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        let t = now();
        let mut p = self.node(&mut st, dir)?.attr.clone();
        p.mtime = t;
        p.ctime = t;
        if want_dir {
            p.nlink -= 1;
        }
        let mut tx = self.tx();
        tx.ops.push(Op::Delete {
            key: self.keys.dirent(dir, name),
        });
        tx.ops.push(self.put_inode(&p));
        let gone = self.drop_link(&mut st, ino, &mut tx, want_dir, t)?;
        self.commit(&mut st, tx)?;
        self.node(&mut st, dir)?.attr = p;
        self.entries(&mut st, dir)?.remove(name);
        self.after_drop_link(&mut st, ino, gone, want_dir, t)?;
        Ok(())
    }

    /// Adds to `tx` what losing one link of `ino` does; returns true when the inode goes away now.
    fn drop_link(
        &self,
        st: &mut State,
        ino: u64,
        tx: &mut Transaction,
        is_dir: bool,
        t: SystemTime,
    ) -> FsResult<bool> {
        let node = self.node(st, ino)?;
        let mut a = node.attr.clone();
        let links = if is_dir { 0 } else { a.nlink.saturating_sub(1) };
        if links == 0 && node.open == 0 {
            // Which of its blocks are stored is known once its commits are answered; one that
            // failed (a full volume) put its blocks back among the buffered ones, which go
            // with the file and need no deletion.
            if let Err(e) = self.settle(st, ino, true) {
                tracing::debug!(ino, error = %e, "buffered data of a removed file dropped");
            }
            let node = self.node(st, ino)?;
            let blocks: Vec<RecordKey> = if node.attr.kind == Kind::File {
                let set = std::mem::take(self.block_set(st, ino)?);
                self.uncache(ino, 0);
                self.stored(st, ino, set)
                    .into_iter()
                    .map(|i| self.keys.block(ino, i))
                    .collect()
            } else {
                Vec::new()
            };
            let node = self.node(st, ino)?;
            node.dirty.clear();
            node.inflight.clear();
            node.dirty_bytes = 0;
            // Large files: delete their blocks in earlier transactions of their own.
            let (first, rest) = blocks.split_at(blocks.len().min(2048));
            for chunk in rest.chunks(4000) {
                let mut del = self.tx();
                del.ops.extend(chunk.iter().map(|k| Op::Delete { key: *k }));
                self.commit(&mut *st, del)?;
            }
            tx.ops.extend(first.iter().map(|k| Op::Delete { key: *k }));
            tx.ops.push(Op::Delete {
                key: self.keys.inode(ino),
            });
            return Ok(true);
        }
        a.nlink = links;
        a.ctime = t;
        tx.ops.push(self.put_inode(&a));
        Ok(false)
    }

    fn after_drop_link(
        &self,
        st: &mut State,
        ino: u64,
        gone: bool,
        is_dir: bool,
        t: SystemTime,
    ) -> FsResult<()> {
        if gone {
            st.nodes.remove(&ino);
            st.deleted.insert(ino);
        } else if let Some(n) = st.nodes.get_mut(&ino) {
            n.attr.nlink = if is_dir {
                0
            } else {
                n.attr.nlink.saturating_sub(1)
            };
            n.attr.ctime = t;
        }
        Ok(())
    }

    /// True when directory `dir` is `ancestor` or lies below it (walking ".." to the root).
    fn is_within(&self, st: &mut State, dir: u64, ancestor: u64) -> FsResult<bool> {
        let mut cur = dir;
        loop {
            if cur == ancestor {
                return Ok(true);
            }
            if cur == ROOT_INO {
                return Ok(false);
            }
            cur = self.node(st, cur)?.attr.parent;
        }
    }

    /// Renames `name` in `dir` to `new_name` in `new_dir`.
    pub fn rename(
        &self,
        dir: u64,
        name: &[u8],
        new_dir: u64,
        new_name: &[u8],
        mode: RenameMode,
    ) -> FsResult<()> {
        check_name(new_name)?;
        if name == b"." || name == b".." {
            return Err(FsError::Invalid("rename of . or .."));
        }
        let mut st = self.state.lock();
        let (src, src_kind) = *self
            .entries(&mut st, dir)?
            .get(name)
            .ok_or(FsError::NotFound)?;
        let dst = self.entries(&mut st, new_dir)?.get(new_name).copied();
        if dir == new_dir && name == new_name {
            return match mode {
                RenameMode::NoReplace => Err(FsError::Exists),
                _ => Ok(()),
            };
        }
        // A directory may not move below itself.
        if src_kind == Kind::Dir && dir != new_dir && self.is_within(&mut st, new_dir, src)? {
            return Err(FsError::Invalid("directory moved below itself"));
        }
        match (mode, dst) {
            (RenameMode::NoReplace, Some(_)) => return Err(FsError::Exists),
            (RenameMode::Exchange, None) => return Err(FsError::NotFound),
            _ => {}
        }
        if mode == RenameMode::Exchange {
            if let Some((dst_ino, dst_kind)) = dst {
                if dst_kind == Kind::Dir
                    && new_dir != dir
                    && self.is_within(&mut st, dir, dst_ino)?
                {
                    return Err(FsError::Invalid("directory moved below itself"));
                }
            }
        }
        if let (RenameMode::Replace, Some((dst_ino, dst_kind))) = (mode, dst) {
            if dst_ino == src {
                return Ok(()); // two names of one file: POSIX says do nothing
            }
            match (src_kind == Kind::Dir, dst_kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.entries(&mut st, dst_ino)?.is_empty() => {
                    return Err(FsError::NotEmpty)
                }
                _ => {}
            }
        }
        let t = now();
        let mut tx = self.tx();
        let mut parents: BTreeMap<u64, Inode> = BTreeMap::new();
        for d in [dir, new_dir] {
            let mut a = self.node(&mut st, d)?.attr.clone();
            a.mtime = t;
            a.ctime = t;
            parents.insert(d, a);
        }
        let mut moved = self.node(&mut st, src)?.attr.clone();
        moved.ctime = t;
        let mut gone = None;
        match (mode, dst) {
            (RenameMode::Exchange, Some((dst_ino, dst_kind))) => {
                let mut other = self.node(&mut st, dst_ino)?.attr.clone();
                other.ctime = t;
                tx.ops.push(self.put_dirent(
                    new_dir,
                    &Dirent {
                        name: new_name.to_vec(),
                        ino: src,
                        kind: src_kind,
                    },
                ));
                tx.ops.push(self.put_dirent(
                    dir,
                    &Dirent {
                        name: name.to_vec(),
                        ino: dst_ino,
                        kind: dst_kind,
                    },
                ));
                if dir != new_dir {
                    if src_kind == Kind::Dir {
                        moved.parent = new_dir;
                        adjust(&mut parents, dir, -1);
                        adjust(&mut parents, new_dir, 1);
                    }
                    if dst_kind == Kind::Dir {
                        other.parent = dir;
                        adjust(&mut parents, new_dir, -1);
                        adjust(&mut parents, dir, 1);
                    }
                }
                tx.ops.push(self.put_inode(&other));
                self.node(&mut st, dst_ino)?.attr = other;
            }
            _ => {
                tx.ops.push(Op::Delete {
                    key: self.keys.dirent(dir, name),
                });
                tx.ops.push(self.put_dirent(
                    new_dir,
                    &Dirent {
                        name: new_name.to_vec(),
                        ino: src,
                        kind: src_kind,
                    },
                ));
                if src_kind == Kind::Dir && dir != new_dir {
                    moved.parent = new_dir;
                    adjust(&mut parents, dir, -1);
                    adjust(&mut parents, new_dir, 1);
                }
                if let Some((dst_ino, dst_kind)) = dst {
                    if dst_kind == Kind::Dir {
                        adjust(&mut parents, new_dir, -1);
                    }
                    gone = Some((
                        dst_ino,
                        dst_kind,
                        self.drop_link(&mut st, dst_ino, &mut tx, dst_kind == Kind::Dir, t)?,
                    ));
                } else {
                    tx.preconditions
                        .push(Precondition::Absent(self.keys.dirent(new_dir, new_name)));
                }
            }
        }
        tx.ops.push(self.put_inode(&moved));
        for a in parents.values() {
            if a.ino != src {
                tx.ops.push(self.put_inode(a));
            }
        }
        self.commit(&mut st, tx)?;
        self.node(&mut st, src)?.attr = moved;
        for (d, a) in parents {
            self.node(&mut st, d)?.attr = a;
        }
        match mode {
            RenameMode::Exchange => {
                if let Some(e) = dst {
                    self.entries(&mut st, dir)?.insert(name.to_vec(), e);
                }
            }
            _ => {
                self.entries(&mut st, dir)?.remove(name);
            }
        }
        self.entries(&mut st, new_dir)?
            .insert(new_name.to_vec(), (src, src_kind));
        if let Some((ino, kind, g)) = gone {
            self.after_drop_link(&mut st, ino, g, kind == Kind::Dir, t)?;
        }
        Ok(())
    }

    /// A write by a caller without CAP_FSETID: drops setuid, and setgid when
    /// group-executable (the kernel asks for it with the write, see fuse.rs init).
    pub fn kill_suidgid(&self, ino: u64) -> FsResult<()> {
        let mut st = self.state.lock();
        let node = self.node(&mut st, ino)?;
        if node.attr.perm & 0o6000 != 0 {
            kill_suidgid(&mut node.attr);
            node.attr_dirty = true;
        }
        Ok(())
    }

    /// Changes attributes.
    pub fn setattr(&self, ino: u64, s: &SetAttr) -> FsResult<Inode> {
        let mut st = self.state.lock();
        let bs = self.opts.block_size as u64;
        if let Some(size) = s.size {
            let kind = self.node(&mut st, ino)?.attr.kind;
            if kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            if size > (1u64 << 50) {
                return Err(FsError::TooBig);
            }
            self.truncate_locked(&mut st, ino, size, bs)?;
        }
        let t = now();
        let node = self.node(&mut st, ino)?;
        let a = &mut node.attr;
        if let Some(m) = s.mode {
            a.perm = (m & 0o7777) as u16;
        } else if s.kill_suidgid {
            kill_suidgid(a);
        }
        if s.uid.is_some() || s.gid.is_some() {
            if s.uid.is_some_and(|u| u != a.uid)
                || s.gid.is_some_and(|g| g != a.gid)
                || a.kind != Kind::Dir
            {
                // Changing owner drops setuid, and setgid when group-executable (as Linux does).
                kill_suidgid(a);
            }
            a.uid = s.uid.unwrap_or(a.uid);
            a.gid = s.gid.unwrap_or(a.gid);
        }
        if let Some(at) = s.atime {
            a.atime = at;
        }
        if let Some(mt) = s.mtime {
            a.mtime = mt;
        }
        a.ctime = s.ctime.unwrap_or(t);
        if s.size.is_some() {
            a.mtime = s.mtime.unwrap_or(t);
        }
        node.attr_dirty = true;
        // Attributes are committed with the next data commit or by the flusher (batched).
        Ok(self.node(&mut st, ino)?.attr.clone())
    }

    fn truncate_locked(&self, st: &mut State, ino: u64, size: u64, bs: u64) -> FsResult<()> {
        self.node(st, ino)?;
        self.settle(st, ino, true)?;
        let old = self.node(st, ino)?.attr.size;
        if size < old {
            let keep = size.div_ceil(bs);
            // Committed blocks past the end go; the new last block is cut.
            // The new last block is cut below, so it goes from the cache too.
            self.uncache(ino, size / bs);
            let gone: Vec<u64> = self
                .block_set(st, ino)?
                .split_off(&keep)
                .into_iter()
                .collect();
            self.delete_blocks(st, ino, &gone)?;
            let tail = (size % bs) as usize;
            let last_block = if tail > 0 { Some(size / bs) } else { None };
            let last_data = match last_block {
                Some(idx) => Some(self.block_locked(st, ino, idx)?),
                None => None,
            };
            let node = self.node(st, ino)?;
            node.dirty.retain(|i, _| *i < keep);
            if let (Some(idx), Some(mut data)) = (last_block, last_data) {
                data.truncate(tail);
                node.dirty.insert(idx, data);
            }
            node.dirty_bytes = node.dirty.values().map(Vec::len).sum();
        }
        let node = self.node(st, ino)?;
        node.attr.size = size;
        node.attr_dirty = true;
        Ok(())
    }

    /// Of the blocks `idxs` of `ino`, those the chain holds or will once a queued commit
    /// lands: a block only ever buffered, or one whose commit was refused (a full volume;
    /// its data waits to be committed again), is not in the chain, and deleting it there is
    /// refused, with the whole transaction it is in (an unlink failed with EIO).
    fn stored(&self, st: &mut State, ino: u64, idxs: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let inflight = st.nodes.get(&ino).map(|n| &n.inflight);
        idxs.into_iter()
            .filter(|i| {
                inflight.is_some_and(|f| f.contains_key(i))
                    || self
                        .chain
                        .record(&self.keys.block(ino, *i))
                        .is_some_and(|e| !e.is_deleted())
            })
            .collect()
    }

    /// Commits the deletion of blocks `idxs` that are stored (at most 4,000 per transaction).
    fn delete_blocks(&self, st: &mut State, ino: u64, idxs: &[u64]) -> FsResult<()> {
        let idxs = self.stored(st, ino, idxs.iter().copied());
        for chunk in idxs.chunks(4000) {
            let mut tx = self.tx();
            tx.ops.extend(chunk.iter().map(|idx| Op::Delete {
                key: self.keys.block(ino, *idx),
            }));
            self.commit(st, tx)?;
        }
        Ok(())
    }

    /// Makes `block` the buffered contents of block `idx` (a cached copy is stale from now).
    fn put_dirty(&self, st: &mut State, ino: u64, idx: u64, block: Vec<u8>) -> FsResult<()> {
        self.cache.lock().forget((ino, idx));
        let node = self.node(st, ino)?;
        let new = block.len();
        let old = node.dirty.insert(idx, block).map_or(0, |b| b.len());
        node.dirty_bytes = node.dirty_bytes - old + new;
        Ok(())
    }

    /// Contents of block `idx` (uncommitted data first; holes are empty).
    fn block_locked(&self, st: &mut State, ino: u64, idx: u64) -> FsResult<Vec<u8>> {
        let block = match self.block_source(st, ino, idx)? {
            Some(data) => data,
            None => {
                let data = Block::new(self.open_block(ino, idx)?);
                self.cache.lock().put((ino, idx), data.clone());
                data
            }
        };
        Ok(Block::unwrap_or_clone(block))
    }

    /// Block `idx` when it is at hand (buffered, in flight, a hole, or cached); None when it
    /// must be read from the chain and opened.
    fn block_source(&self, st: &mut State, ino: u64, idx: u64) -> FsResult<Option<Block>> {
        let node = self.node(st, ino)?;
        if let Some(d) = node
            .dirty
            .get(&idx)
            .or_else(|| node.inflight.get(&idx).map(|(_, d)| d))
        {
            return Ok(Some(Block::new(d.clone())));
        }
        if !self.block_set(st, ino)?.contains(&idx) {
            return Ok(Some(Block::default()));
        }
        Ok(self.cache.lock().get((ino, idx)).cloned())
    }

    /// Reads and opens a committed block.
    fn open_block(&self, ino: u64, idx: u64) -> FsResult<Vec<u8>> {
        Ok(self
            .read_record(&self.keys.block(ino, idx))?
            .unwrap_or_default())
    }

    /// Forgets cached copies of a file's blocks from `from` on (they are about to change).
    fn uncache(&self, ino: u64, from: u64) {
        self.cache.lock().forget_from(ino, from);
    }

    /// The file's block set, loaded from the chain on first use (after its own queued data
    /// commits have landed, so the view is current for this file).
    fn block_set<'a>(
        &self,
        st: &'a mut State,
        ino: u64,
    ) -> FsResult<&'a mut std::collections::BTreeSet<u64>> {
        if self.node(st, ino)?.blocks.is_none() {
            self.settle(st, ino, true)?;
            let bs = self.opts.block_size as u64;
            let node = self.node(st, ino)?;
            let kids: std::collections::HashSet<RecordKey> = self
                .chain
                .children(&self.keys.inode(ino))
                .into_iter()
                .collect();
            let set = (0..node.attr.size.div_ceil(bs))
                .filter(|i| kids.contains(&self.keys.block(ino, *i)))
                .collect();
            node.blocks = Some(set);
        }
        self.node(st, ino)?.blocks.as_mut().ok_or(FsError::NotFound)
    }

    /// Reads up to `len` bytes at `offset`.
    pub fn read(&self, ino: u64, offset: u64, len: usize) -> FsResult<Vec<u8>> {
        let mut buf = Vec::new();
        let n = self.read_into(ino, offset, len, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads up to `len` bytes at `offset` into the front of `buf`; returns how many. `buf`
    /// is scratch: grown when too short, never shrunk or cleared, so a caller that keeps one
    /// (a FUSE worker) pays no allocation or zeroing per read.
    ///
    /// Committed blocks are opened after the state lock is released (see block_cache.rs):
    /// the kernel's readahead sends several reads at once, and they decrypt in parallel.
    pub fn read_into(
        &self,
        ino: u64,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> FsResult<usize> {
        let bs = self.opts.block_size as u64;
        let (size, end, blocks, seen) = {
            let mut st = self.state.lock();
            let a = &self.node(&mut st, ino)?.attr;
            if a.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            let size = a.size;
            if offset >= size {
                return Ok(0);
            }
            let end = size.min(offset + len as u64);
            let blocks = (offset / bs..end.div_ceil(bs))
                .map(|idx| Ok((idx, self.block_source(&mut st, ino, idx)?)))
                .collect::<FsResult<Vec<_>>>()?;
            (size, end, blocks, self.cache.lock().generation())
        };
        let total = (end - offset) as usize;
        if self.read_run(ino, offset, end, size, &blocks, buf)? {
            return Ok(total);
        }
        if buf.len() < total {
            buf.resize(total, 0);
        }
        let mut pos = offset;
        for (idx, block) in blocks {
            let at = (pos - offset) as usize;
            let within = (pos % bs) as usize;
            let take = ((bs - pos % bs).min(end - pos)) as usize;
            let block = match block {
                Some(b) => b,
                // A block read whole (sequential reads) is opened where it lies in the reply
                // and not cached: the kernel's page cache keeps it, and a copy in ours would
                // only cost a copy and evict blocks that partial reads share. Its sealed tail
                // may run past `take`; the blocks after it overwrite that.
                None if within == 0 && (take == bs as usize || pos + take as u64 == size) => {
                    let key = self.keys.block(ino, idx);
                    let got = self
                        .chain
                        .read_plain_into(&key, &self.keyfile.data, buf, at)?
                        .map_or(0, |(_, len)| len)
                        .min(take);
                    buf[at + got..at + take].fill(0);
                    pos += take as u64;
                    continue;
                }
                None => {
                    let data = Block::new(self.open_block(ino, idx)?);
                    self.cache
                        .lock()
                        .put_if_unchanged(seen, (ino, idx), data.clone());
                    data
                }
            };
            let have = block
                .get(within..)
                .map_or(&[][..], |b| &b[..b.len().min(take)]);
            buf[at..at + have.len()].copy_from_slice(have);
            // A block shorter than the file (its tail, or a hole) reads as zeros.
            buf[at + have.len()..at + take].fill(0);
            pos += take as u64;
        }
        Ok(total)
    }

    /// A read of whole committed blocks (the tail block may end the file), at least two, with
    /// few direct reads of the log ([`ate::chain::Chain::read_blocks_into`]) into the front
    /// of `buf`. False when the blocks cannot be read so.
    fn read_run(
        &self,
        ino: u64,
        offset: u64,
        end: u64,
        size: u64,
        blocks: &[(u64, Option<Block>)],
        buf: &mut Vec<u8>,
    ) -> FsResult<bool> {
        let bs = self.opts.block_size as u64;
        let whole = offset.is_multiple_of(bs) && (end.is_multiple_of(bs) || end == size);
        if !whole || blocks.len() < 2 || blocks.iter().any(|(_, b)| b.is_some()) {
            return Ok(false);
        }
        let keys: Vec<RecordKey> = blocks
            .iter()
            .map(|(idx, _)| self.keys.block(ino, *idx))
            .collect();
        let Some(lens) =
            self.chain
                .read_blocks_into(&keys, &self.keyfile.data, buf, bs as usize)?
        else {
            return Ok(false);
        };
        // A block shorter than its share of the read (the file's tail, or one ending in a
        // hole) reads as zeros past its end.
        let mut pos = offset;
        for (k, len) in lens.into_iter().enumerate() {
            let take = (bs.min(end - pos)) as usize;
            let at = k * bs as usize;
            buf[at + len.min(take)..at + take].fill(0);
            pos += take as u64;
        }
        Ok(true)
    }

    /// Writes `data` at `offset`; returns the bytes written.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        let st = self.state.lock();
        let bs = self.opts.block_size as u64;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::TooBig)?;
        if end > (1u64 << 50) {
            return Err(FsError::TooBig);
        }
        let mut st = self.make_room(st, ino, end)?;
        let mut pos = offset;
        let mut src = data;
        while !src.is_empty() {
            let idx = pos / bs;
            let within = (pos % bs) as usize;
            let take = ((bs as usize) - within).min(src.len());
            // A block already buffered is changed in place (no 64 KiB copy per small write).
            if let Some(node) = st.nodes.get_mut(&ino) {
                if let Some(b) = node.dirty.get_mut(&idx) {
                    let old = b.len();
                    if old < within + take {
                        b.resize(within + take, 0);
                    }
                    b[within..within + take].copy_from_slice(&src[..take]);
                    node.dirty_bytes = node.dirty_bytes - old + b.len();
                    pos += take as u64;
                    src = &src[take..];
                    continue;
                }
            }
            let block = if within == 0 && take == bs as usize {
                // A whole block: copied once, without zeroing it first.
                src[..take].to_vec()
            } else {
                let mut block = self.block_locked(&mut st, ino, idx)?;
                if block.len() < within + take {
                    block.resize(within + take, 0);
                }
                block[within..within + take].copy_from_slice(&src[..take]);
                block
            };
            self.put_dirty(&mut st, ino, idx, block)?;
            pos += take as u64;
            src = &src[take..];
        }
        let t = now();
        let node = self.node(&mut st, ino)?;
        node.attr.size = node.attr.size.max(end);
        node.attr.mtime = t;
        node.attr.ctime = t;
        node.attr_dirty = true;
        if node.dirty_bytes >= self.opts.flush_bytes {
            self.start_flush(&mut st, ino)?;
            self.settle(&mut st, ino, false)?;
            // Backpressure: a writer faster than the log waits for its oldest commits once
            // `max_inflight` bytes are in flight, so memory stays bounded however much it writes.
            let node = self.node(&mut st, ino)?;
            let queued: usize = node.inflight.values().map(|(_, d)| d.len()).sum();
            if queued > self.opts.max_inflight {
                let oldest = node.pending.iter().map(|(g, _)| *g).min().unwrap_or(0);
                self.settle_upto(&mut st, ino, oldest)?;
            }
        }
        Ok(data.len())
    }

    /// Queues the file's buffered blocks and attributes for commit, without waiting. The
    /// blocks stay readable from `inflight` until their commit is durable.
    fn start_flush(&self, st: &mut State, ino: u64) -> FsResult<()> {
        self.start_flush_many(st, &[ino])
    }

    /// [`Self::start_flush`] for several files at once, packed into as few transactions as
    /// the size bounds allow (one signature and one commit for many small files: through a
    /// cluster each transaction costs several signature checks and a log entry). Every file
    /// waits for each transaction that carries part of it.
    fn start_flush_many(&self, st: &mut State, inos: &[u64]) -> FsResult<()> {
        let mut inos = inos.to_vec();
        inos.sort_unstable();
        inos.dedup();
        let inos: Vec<u64> = inos
            .into_iter()
            .filter(|i| {
                st.nodes
                    .get(i)
                    .is_some_and(|n| !n.dirty.is_empty() || n.attr_dirty)
            })
            .collect();
        if inos.is_empty() {
            return Ok(());
        }
        // The data may belong to an inode the namespace batch creates: that goes first.
        self.send_batch(st)?;
        let mut files = Vec::with_capacity(inos.len());
        for ino in inos {
            let Some(node) = st.nodes.get(&ino) else {
                continue;
            };
            let idxs: Vec<u64> = node.dirty.keys().copied().collect();
            if !idxs.is_empty() {
                // A new version of each block is on its way: no cached copy may outlive it (a
                // read since the last write, e.g. truncate reading the tail block, cached the
                // old).
                {
                    let mut cache = self.cache.lock();
                    for i in &idxs {
                        cache.forget((ino, *i));
                    }
                }
                self.block_set(st, ino)?.extend(idxs);
            }
            let node = st.nodes.get_mut(&ino).ok_or(FsError::NotFound)?;
            let dirty = std::mem::take(&mut node.dirty);
            node.dirty_bytes = 0;
            node.attr_dirty = false;
            files.push((ino, dirty, node.attr.clone()));
        }
        // Pack: transaction k carries parts of the files `members[k]` (indexes into `files`).
        // Blocks are sealed straight into the encoding (TxEncoder): one copy of the data.
        let mut left: usize = files
            .iter()
            .map(|(_, d, _)| d.values().map(|b| b.len() + PUT_OVERHEAD).sum::<usize>())
            .sum();
        let capacity = |left: usize| left.min(FLUSH_TX_BYTES + BATCH_OPS * PUT_OVERHEAD);
        let mut txs = vec![TxEncoder::new(self.tx(), capacity(left))];
        let mut members: Vec<Vec<usize>> = vec![Vec::new()];
        let mut bytes = 0usize;
        for (fi, (ino, dirty, attr)) in files.iter().enumerate() {
            let ops = dirty
                .iter()
                // Trailing zeros are not stored: the block reads back the same, holes stay
                // cheap.
                .map(|(idx, data)| {
                    let used = data.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
                    (used, Some((*idx, &data[..used])))
                })
                .chain(std::iter::once((0, None)));
            for (used, block) in ops {
                let full = txs
                    .last()
                    .is_some_and(|t| t.ops() >= BATCH_OPS || bytes + used > FLUSH_TX_BYTES);
                if full && txs.last().is_some_and(|t| t.ops() > 0) {
                    txs.push(TxEncoder::new(self.tx(), capacity(left)));
                    members.push(Vec::new());
                    bytes = 0;
                }
                if let (Some(tx), Some(m)) = (txs.last_mut(), members.last_mut()) {
                    match block {
                        Some((idx, data)) => tx.push_sealed(
                            self.keys.block(*ino, idx),
                            Some(self.keys.inode(*ino)),
                            WriteAuthority::Inherit,
                            &self.keyfile.data,
                            data,
                        ),
                        None => tx.push(self.put_inode(attr)),
                    }
                    if m.last() != Some(&fi) {
                        m.push(fi);
                    }
                }
                bytes += used;
                left = left.saturating_sub(used + PUT_OVERHEAD);
            }
        }
        let mut queued: Vec<Vec<ate::chain::PendingCommit>> =
            files.iter().map(|_| Vec::new()).collect();
        let mut failed = None;
        let mut unsent = std::collections::HashSet::new();
        for (k, tx) in txs.into_iter().enumerate() {
            if failed.is_some() {
                unsent.extend(members[k].iter().copied());
                continue;
            }
            let (sk, encoded) = tx.finish(&self.keyfile.owner);
            match self.chain.commit_encoded_async(sk, encoded) {
                Ok(p) => {
                    st.last_queued = Some(p.watch());
                    for fi in &members[k] {
                        queued[*fi].push(p.share());
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    unsent.extend(members[k].iter().copied());
                }
            }
        }
        for (fi, ((ino, dirty, _), pending)) in files.into_iter().zip(queued).enumerate() {
            let Some(node) = st.nodes.get_mut(&ino) else {
                continue;
            };
            node.flushes += 1;
            let generation = node.flushes;
            node.pending
                .extend(pending.into_iter().map(|p| (generation, p)));
            if unsent.contains(&fi) {
                // Not (all) queued: the data stays buffered, newer writes win.
                for (i, d) in dirty {
                    node.dirty.entry(i).or_insert(d);
                }
                node.dirty_bytes = node.dirty.values().map(Vec::len).sum();
                node.attr_dirty = true;
            } else {
                node.inflight
                    .extend(dirty.into_iter().map(|(i, d)| (i, (generation, d))));
            }
        }
        match failed {
            None => Ok(()),
            Some(e) => Err(e.into()),
        }
    }

    /// Collects finished commits of a file (all of them with `wait`). Once none is pending the
    /// chain's view holds the data and `inflight` is dropped. A failed commit puts its data back
    /// as dirty (newer writes win) and reports the error.
    fn settle(&self, st: &mut State, ino: u64, wait: bool) -> FsResult<()> {
        self.settle_upto(st, ino, if wait { u64::MAX } else { 0 })
    }

    /// [`Self::settle`], waiting for the commits of flush generations up to `upto`.
    fn settle_upto(&self, st: &mut State, ino: u64, upto: u64) -> FsResult<()> {
        let Some(node) = st.nodes.get_mut(&ino) else {
            return Ok(());
        };
        let mut error = None;
        let mut still = Vec::new();
        for (g, p) in std::mem::take(&mut node.pending) {
            if g > upto && !p.is_done() {
                still.push((g, p));
                continue;
            }
            if let Err(e) = p.wait() {
                error.get_or_insert(e);
            }
        }
        node.pending = still;
        if let Some(e) = error {
            for (idx, (_, data)) in std::mem::take(&mut node.inflight) {
                node.dirty.entry(idx).or_insert(data);
            }
            node.dirty_bytes = node.dirty.values().map(Vec::len).sum();
            node.attr_dirty = true;
            return Err(e.into());
        }
        // Blocks of generations older than every commit still pending are in the chain now;
        // dropping them as they land keeps a long write's memory bounded.
        let oldest = node
            .pending
            .iter()
            .map(|(g, _)| *g)
            .min()
            .unwrap_or(u64::MAX);
        node.inflight.retain(|_, (g, _)| *g >= oldest);
        Ok(())
    }

    /// Commits the file's buffered data and waits until it is durable.
    fn flush_locked(&self, st: &mut State, ino: u64) -> FsResult<()> {
        self.start_flush(st, ino)?;
        self.settle(st, ino, true)
    }

    /// Close: the file's buffered data is committed together with other closed files' (one
    /// signed transaction for up to [`CLOSED_FILES`] files or `flush_bytes` of data, or by the
    /// background flusher within a second), and the caller does not wait for it; untar-like
    /// workloads close thousands of small files, and a transaction each cost a signature and
    /// a log entry each (through a cluster, several signature checks).
    /// On a shared (remote) volume it commits and waits instead: close-to-open means what a
    /// close returned from is what the next open elsewhere reads.
    pub fn flush_async(&self, ino: u64) -> FsResult<()> {
        let mut st = self.state.lock();
        if self.opts.remote {
            self.start_flush(&mut st, ino)?;
            return self.settle(&mut st, ino, true);
        }
        self.flush_closed(&mut st, ino)
    }

    /// Adds a closed file to the group committed together; commits the group once full.
    fn flush_closed(&self, st: &mut State, ino: u64) -> FsResult<()> {
        let Some(node) = st.nodes.get(&ino) else {
            return Ok(());
        };
        if node.dirty.is_empty() && !node.attr_dirty {
            return self.settle(st, ino, false);
        }
        st.closed_bytes += node.dirty_bytes;
        st.closed.push(ino);
        if st.closed.len() < CLOSED_FILES && st.closed_bytes < self.opts.flush_bytes {
            return Ok(());
        }
        let group = std::mem::take(&mut st.closed);
        st.closed_bytes = 0;
        self.flush_group(st, &group)
    }

    /// Starts committing the files' buffered data together and collects their finished
    /// commits; reports the first failure.
    fn flush_group(&self, st: &mut State, inos: &[u64]) -> FsResult<()> {
        let mut first = self.start_flush_many(st, inos);
        for ino in inos {
            let r = self.settle(st, *ino, false);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Starts committing every file's buffered data; reports the first failure.
    pub fn flush_all_async(&self) -> FsResult<()> {
        let mut st = self.state.lock();
        if let Err(e) = self.send_batch(&mut st) {
            tracing::error!(error = %e, "could not queue the namespace batch");
        }
        // Files with data: blocks and inodes together, many files per transaction.
        let with_data: Vec<u64> = st
            .nodes
            .iter()
            .filter(|(_, n)| !n.dirty.is_empty() || !n.pending.is_empty())
            .map(|(i, _)| *i)
            .collect();
        st.closed.clear();
        st.closed_bytes = 0;
        let mut first = self.flush_group(&mut st, &with_data);
        // Attribute-only changes (chmod, utimes, xattrs, ...): many inodes per transaction.
        let attrs: Vec<u64> = st
            .nodes
            .iter()
            .filter(|(_, n)| n.attr_dirty && n.dirty.is_empty())
            .map(|(i, _)| *i)
            .collect();
        for chunk in attrs.chunks(1000) {
            let mut tx = self.tx();
            for ino in chunk {
                if let Some(n) = st.nodes.get_mut(ino) {
                    n.attr_dirty = false;
                    tx.ops.push(self.put_inode(&n.attr));
                }
            }
            let r = self.commit(&mut st, tx);
            if first.is_ok() {
                first = r;
            }
        }
        let r = self.send_batch(&mut st);
        if first.is_ok() {
            first = r;
        }
        first
    }

    /// Commits buffered data at most `period` after it was written, until the file system is
    /// dropped: the bound on what a crash can lose without fsync.
    pub fn spawn_flusher(
        self: &std::sync::Arc<Self>,
        period: std::time::Duration,
    ) -> std::thread::JoinHandle<()> {
        let weak = std::sync::Arc::downgrade(self);
        std::thread::spawn(move || loop {
            std::thread::sleep(period);
            let Some(fs) = weak.upgrade() else { return };
            if let Err(e) = fs.flush_all_async() {
                tracing::error!(error = %e, "background commit failed; data stays buffered");
            }
            if let Err(e) = fs.maybe_compact() {
                tracing::error!(error = %e, "compaction failed; the log keeps its old segments");
            }
        })
    }

    /// Compacts the chain when the log holds more than twice what a compaction would leave
    /// plus `compact_slack`: rewrites and deletes leave old versions behind, and without this
    /// a volume's disk use grows with every overwrite. Doubling bounds the space overhead and
    /// makes the copying cost amortised O(1) per byte written. What a compaction would leave
    /// is estimated from the records (`Chain::snapshot_estimate`: live payloads plus at most
    /// 256 bytes of metadata per record, tombstones included), not taken from the last
    /// compaction's size: that one stayed the base after the volume's files were deleted, and
    /// their space never came back until as much was written again. Something must have been
    /// written since the last compaction (a 64th of the slack, or any commit without slack),
    /// so an estimate that erred low cannot compact every second. Commits wait while it runs.
    /// Returns whether it compacted.
    pub fn maybe_compact(&self) -> FsResult<bool> {
        use std::sync::atomic::Ordering;
        // Runs every second: O(1) sizes, not `stats()`.
        let (bytes, fresh) = (self.chain.disk_bytes(), self.chain.snapshot_estimate());
        let since = bytes.saturating_sub(self.compacted_bytes.load(Ordering::Relaxed));
        if since <= self.opts.compact_slack / 64
            || bytes
                <= fresh
                    .saturating_mul(2)
                    .saturating_add(self.opts.compact_slack)
        {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        self.chain.compact()?;
        let after = self.chain.disk_bytes();
        self.compacted_bytes.store(after, Ordering::Relaxed);
        tracing::info!(
            before = bytes,
            after,
            estimate = fresh,
            ms = started.elapsed().as_millis() as u64,
            "compacted the log"
        );
        Ok(true)
    }

    /// fsync: commits the file's buffered data and waits until it, and every namespace change
    /// made before, is durable.
    pub fn fsync(&self, ino: u64) -> FsResult<()> {
        let mut st = self.state.lock();
        // Every other file's buffered data rides along in the same group commit: a program
        // that fsyncs many files one after the other then waits for the disk about once.
        let others: Vec<u64> = st
            .nodes
            .iter()
            .filter(|(i, n)| **i != ino && !n.dirty.is_empty())
            .map(|(i, _)| *i)
            .collect();
        let mut all = others;
        all.push(ino);
        self.start_flush_many(&mut st, &all)?;
        self.send_batch(&mut st)?;
        self.wait_unlocked(st);
        let mut st = self.state.lock();
        self.flush_locked(&mut st, ino)?;
        self.sync_all_locked(&mut st)
    }

    /// Waits for everything queued so far to be answered and on disk, with the lock released:
    /// through a cluster the answer takes a round trip, and an fdatasync takes a while, and
    /// other requests (the kernel's writeback among them) must not queue behind either. The
    /// caller then collects the results under the lock, at once.
    fn wait_unlocked(&self, st: parking_lot::MutexGuard<'_, State>) {
        let last = st.last_queued.clone();
        drop(st);
        if let Some(w) = last {
            w.wait();
        }
        // Errors surface in sync_all_locked, which syncs again (a no-op when nothing new).
        let _ = self.chain.sync();
    }

    /// fsyncdir: waits until every change made so far is durable, buffered file data
    /// included (`atefs umount` relies on it: the kernel does not wait for the daemon). Not
    /// syncfs: Linux sends FUSE_SYNCFS to virtiofs only.
    pub fn sync_all(&self) -> FsResult<()> {
        self.flush_all_async()?;
        let mut st = self.state.lock();
        self.send_batch(&mut st)?;
        self.wait_unlocked(st);
        let mut st = self.state.lock();
        self.sync_all_locked(&mut st)
    }

    /// Commits every file's buffered data.
    pub fn flush_all(&self) -> FsResult<()> {
        let mut st = self.state.lock();
        let inos: Vec<u64> = st
            .nodes
            .iter()
            .filter(|(_, n)| !n.dirty.is_empty() || n.attr_dirty || !n.pending.is_empty())
            .map(|(i, _)| *i)
            .collect();
        for ino in inos {
            self.flush_locked(&mut st, ino)?;
        }
        self.sync_all_locked(&mut st)
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

    /// Reads an extended attribute.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if name == STATUS_XATTR && ino == ROOT_INO {
            return Ok(self.status().into_bytes());
        }
        refuse_unsupported_xattr(name)?;
        let a = self.getattr(ino)?;
        a.xattrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or(FsError::NoAttr)
    }

    /// Names of all extended attributes.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        Ok(self
            .getattr(ino)?
            .xattrs
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// Sets an extended attribute (`create`: must not exist; `replace`: must exist).
    pub fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> FsResult<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(FsError::Range);
        }
        refuse_unsupported_xattr(name)?;
        if value.len() > 64 << 10 {
            return Err(FsError::TooBig);
        }
        let mut st = self.state.lock();
        let node = self.node(&mut st, ino)?;
        let pos = node.attr.xattrs.iter().position(|(n, _)| n == name);
        match (pos, create, replace) {
            (Some(_), true, _) => return Err(FsError::Exists),
            (None, _, true) => return Err(FsError::NoAttr),
            (Some(i), _, _) => node.attr.xattrs[i].1 = value.to_vec(),
            (None, _, _) => {
                node.attr.xattrs.push((name.to_vec(), value.to_vec()));
                node.attr.xattrs.sort();
            }
        }
        node.attr.ctime = now();
        // An access ACL carries the permission bits: owner = user_obj, group = mask (or
        // group_obj without a mask), other = other. Keep the mode in step, as every POSIX
        // file system does; the kernel checks permissions against both.
        if name == crate::acl::ACCESS {
            if let Some(bits) = crate::acl::mode_bits(value) {
                node.attr.perm = (node.attr.perm & 0o7000) | bits;
            }
        }
        node.attr_dirty = true;
        Ok(())
    }

    /// Removes an extended attribute.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        refuse_unsupported_xattr(name)?;
        let mut st = self.state.lock();
        let node = self.node(&mut st, ino)?;
        let pos = node
            .attr
            .xattrs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or(FsError::NoAttr)?;
        node.attr.xattrs.remove(pos);
        node.attr.ctime = now();
        node.attr_dirty = true;
        Ok(())
    }
}

fn adjust(parents: &mut BTreeMap<u64, Inode>, dir: u64, by: i32) {
    if let Some(a) = parents.get_mut(&dir) {
        a.nlink = a.nlink.saturating_add_signed(by);
    }
}

/// What [`AteFs::fsck`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FsckReport {
    /// Directories walked.
    pub dirs: u64,
    /// Non-directories found.
    pub files: u64,
    /// Every inconsistency, one line each (empty when the tree is consistent).
    pub problems: Vec<String>,
}

impl AteFs {
    /// Walks the whole tree from the root and checks it against the chain: every entry names an
    /// existing inode of the entry's kind, link counts match the entries (files) and
    /// subdirectories (directories), ".." is right, and no data block lies past a file's end.
    pub fn fsck(&self) -> FsResult<FsckReport> {
        self.flush_all()?;
        let mut report = FsckReport::default();
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut stack = vec![(ROOT_INO, ROOT_INO)];
        let bs = self.opts.block_size as u64;
        let mut seen_dirs = std::collections::HashSet::new();
        while let Some((dir, parent)) = stack.pop() {
            if !seen_dirs.insert(dir) {
                report
                    .problems
                    .push(format!("directory {dir} is reachable twice"));
                continue;
            }
            report.dirs += 1;
            let a = self.getattr(dir)?;
            if a.parent != parent {
                report.problems.push(format!(
                    "directory {dir}: '..' is {}, expected {parent}",
                    a.parent
                ));
            }
            let entries = self.readdir(dir)?;
            let mut subdirs = 0;
            for (ino, kind, name) in entries.into_iter().skip(2) {
                let shown = String::from_utf8_lossy(&name).into_owned();
                let child = match self.getattr(ino) {
                    Ok(c) => c,
                    Err(FsError::NotFound) => {
                        report
                            .problems
                            .push(format!("{dir}/{shown}: inode {ino} does not exist"));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if child.kind != kind {
                    report.problems.push(format!(
                        "{dir}/{shown}: entry says {kind:?}, inode is {:?}",
                        child.kind
                    ));
                }
                if child.kind == Kind::Dir {
                    subdirs += 1;
                    stack.push((ino, dir));
                } else {
                    let first_sight = !links.contains_key(&ino);
                    *links.entry(ino).or_default() += 1;
                    if first_sight {
                        report.files += 1;
                        let valid: std::collections::HashSet<RecordKey> =
                            (0..child.size.div_ceil(bs))
                                .map(|i| self.keys.block(ino, i))
                                .collect();
                        let stray = self
                            .chain
                            .children(&self.keys.inode(ino))
                            .iter()
                            .filter(|k| !valid.contains(k))
                            .count();
                        if stray > 0 {
                            report.problems.push(format!(
                                "{dir}/{shown}: {stray} data blocks past the end of the file"
                            ));
                        }
                    }
                }
            }
            if a.nlink != 2 + subdirs {
                report.problems.push(format!(
                    "directory {dir}: nlink {} but {subdirs} subdirectories",
                    a.nlink
                ));
            }
        }
        for (ino, n) in links {
            let a = self.getattr(ino)?;
            if a.nlink != n {
                report
                    .problems
                    .push(format!("inode {ino}: nlink {} but {n} entries", a.nlink));
            }
        }
        Ok(report)
    }
}

/// Drops setuid, and setgid when group-executable (setgid without group execute marks
/// mandatory locking and stays), as Linux does on chown, truncate and write; not on
/// directories.
fn kill_suidgid(a: &mut Inode) {
    if a.kind != Kind::Dir {
        a.perm &= !0o4000;
        if a.perm & 0o010 != 0 {
            a.perm &= !0o2000;
        }
    }
}

/// SELinux labels are not stored: on a FUSE mount the kernel labels every file from the
/// mount's context (genfscon or `context=`) and never consults a per-file label, so a stored
/// one would be a label nothing enforces. Answering "not supported" rather than "no such
/// attribute" also lets tools stop asking: `ls -l` queries `security.selinux` once per file
/// (the kernel never caches the answer) unless the device says it has no labels at all.
/// Names starting `atefs.` are the mount's own (see [`STATUS_XATTR`]): never stored.
fn refuse_unsupported_xattr(name: &[u8]) -> FsResult<()> {
    if name == b"security.selinux" || name.starts_with(b"atefs.") {
        return Err(FsError::NotSupported);
    }
    Ok(())
}

/// An attribute of the root that is not stored: how the mount is doing ([`AteFs::status`]).
/// What a CSI node plugin asks to report a volume's condition; any user may read it (the
/// kernel passes any name to a FUSE file system, and this one is not listed).
pub const STATUS_XATTR: &[u8] = b"atefs.status";
