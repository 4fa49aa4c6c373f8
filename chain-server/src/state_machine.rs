//! A partition's state machine: per chain, the `ate` view (latest version of every record)
//! whose payload locations point into the Raft log itself, or into the partition's snapshot
//! once a snapshot covers them. Applying re-validates every transaction against the chain's
//! state, so all replicas take the same decisions from the same log.
//!
//! Snapshot file `snapshot.bin`: `ATESNAP1`, then one section per chain (an `ate` snapshot
//! file image, docs/format.md), then the postcard footer (last applied, membership, per chain
//! its quota, index, bytes held and section offset), its u32 length and `ATESNAP1` again.
//! Views point into the sections, so the log can be purged once the snapshot is durable.

use crate::log_store::LogStore;
use crate::snapshot_build;
use crate::snapshot_data::SnapshotData;
use crate::types::{Command, Entry, LogId, Outcome, Refusal, StorageError, TypeConfig};
use ate::redo::{
    read_snapshot, FileRef, Files, Location, LogError, RecoveryVisitor, SnapshotRecord,
};
use ate::storage::{Storage, StorageFile};
use ate::validate::{validate_skeleton, ChainState};
use ate::view::{locate, plan, RecordEntry, View};
use ate::{ChainId, RootAuthority, Transaction, TxHash, ValidationError};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) const SNAP_MAGIC: &[u8; 8] = b"ATESNAP1";
const SNAP_FILE: &str = "snapshot.bin";
/// Where a snapshot is written before it replaces `SNAP_FILE`: one name for those this
/// replica builds, another for those it receives, as the two may be under way at once.
const BUILD_TMP: &str = "snapshot.bin.build";
const INSTALL_TMP: &str = "snapshot.bin.tmp";

/// One chain of the partition.
#[derive(Debug)]
pub struct ChainData {
    /// Latest records.
    pub view: View,
    /// Bytes quota: a bound on [`ChainData::used`].
    pub quota: u64,
    /// The chain's own index (of its last transaction).
    pub index: u64,
    /// Raft index of each chain index still in the log (for subscriptions).
    pub txs: BTreeMap<u64, u64>,
    /// Recent transaction hashes and their chain index: a client that retries a commit whose
    /// answer it lost gets the original index instead of a second copy (exactly once).
    pub seen: Seen,
    /// The hash of the chain's genesis transaction: which chain of this id this is, as a
    /// restore makes the id again with another genesis. None for a chain known only from a
    /// snapshot written before replicas kept it.
    pub genesis: Option<TxHash>,
}

impl ChainData {
    /// Forgets the transactions before the log's first entry (`first`; None: an empty log).
    fn forget_purged(&mut self, first: Option<u64>) {
        // Raft indexes grow with chain indexes: the purged ones are at the front.
        while let Some(e) = self.txs.first_entry() {
            if first.is_some_and(|f| *e.get() >= f) {
                break;
            }
            e.remove();
        }
    }

    /// Bytes the chain holds: the sealed payloads of its live records. Not the bytes ever
    /// committed to it: rewriting a file, or deleting one, must not use a volume up.
    pub fn used(&self) -> u64 {
        self.view.live_bytes()
    }

    /// The lowest chain index a subscription can start at: earlier ones are only in the
    /// snapshot.
    pub fn first_index(&self) -> u64 {
        self.txs.keys().next().copied().unwrap_or(self.index + 1)
    }
}

/// The last [`SEEN`] transaction hashes of a chain, oldest first.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Seen {
    order: std::collections::VecDeque<([u8; 32], u64)>,
    #[serde(skip)]
    map: std::collections::HashMap<[u8; 32], u64>,
}

/// Hashes remembered per chain (retries come within seconds; this is hours of commits).
const SEEN: usize = 100_000;

impl Seen {
    fn get(&self, h: &[u8; 32]) -> Option<u64> {
        self.map.get(h).copied()
    }
    fn insert(&mut self, h: [u8; 32], index: u64) {
        self.order.push_back((h, index));
        self.map.insert(h, index);
        if self.order.len() > SEEN {
            if let Some((old, _)) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
    /// The hash of the transaction at chain index `index`, while it is remembered.
    pub fn hash_of(&self, index: u64) -> Option<[u8; 32]> {
        // Applied transactions take consecutive indexes, so the position follows from the
        // first; the check guards the assumption.
        let (_, first) = self.order.front()?;
        let (h, i) = self
            .order
            .get(usize::try_from(index.checked_sub(*first)?).ok()?)?;
        (*i == index).then_some(*h)
    }
    fn rebuild(&mut self) {
        self.map = self.order.iter().copied().collect();
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Footer {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<u64, BasicNode>,
    pub snapshot_id: String,
    pub chains: Vec<ChainHead>,
}

/// Footer fields added after the first snapshot format, encoded right after the [`Footer`]
/// under the same length: a replica that predates them decodes the footer and ignores the
/// rest (postcard reads a value and leaves trailing bytes alone), so replicas of both
/// versions read each other's snapshots during a rolling upgrade.
#[derive(Default, Serialize, Deserialize)]
pub(crate) struct FooterMore {
    /// Each chain's genesis hash, where known.
    pub genesis: Vec<([u8; 16], [u8; 32])>,
}

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct ChainHead {
    pub chain: [u8; 16],
    pub quota: u64,
    /// What the chain held when the snapshot was taken. Not read back: the view it restores
    /// counts it again (snapshots before session 25 hold the bytes ever committed here).
    pub used: u64,
    pub index: u64,
    pub offset: u64,
    pub len: u64,
    pub seen: Seen,
}

#[derive(Debug)]
struct Inner {
    storage: Arc<dyn Storage>,
    log: LogStore,
    /// The snapshot file, as `FileRef::Snapshot(0)`.
    snap_files: Arc<Files>,
    last_applied: Option<LogId>,
    membership: StoredMembership<u64, BasicNode>,
    chains: BTreeMap<ChainId, ChainData>,
    current: Option<SnapshotMeta<u64, BasicNode>>,
    applied_tx: tokio::sync::watch::Sender<u64>,
    /// The log index of the latest `Compact` applied (0: none): `log_bound` snapshots past
    /// it and drops the log up to it. After a restart the entry is applied again unless a
    /// snapshot covers it, which is what it asked for.
    compact_past: u64,
    /// Snapshots made current so far (built or received): a build that started on another
    /// one than the current is dropped.
    installs_or_builds: u64,
    /// The file a snapshot is being received into (`INSTALL_TMP`), once one is.
    receiving: Option<Arc<dyn StorageFile>>,
}

/// The state machine (cheap to clone; clones share it and build snapshots).
#[derive(Clone, Debug)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    applied: tokio::sync::watch::Receiver<u64>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(openraft::AnyError::new(&e)).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, openraft::AnyError::new(&e)).into()
}

/// A chain's image in a snapshot file (an `ate` snapshot file, docs/format.md).
#[derive(Debug)]
pub struct ChainSection {
    /// The image, read as a file of its own.
    pub image: Section,
    /// The chain index it covers up to.
    pub index: u64,
}

/// A snapshot section seen as a file of its own.
#[derive(Debug)]
pub struct Section {
    file: Arc<dyn StorageFile>,
    base: u64,
    len: u64,
}

impl Section {
    /// Its length (known without I/O).
    pub fn byte_len(&self) -> u64 {
        self.len
    }
}

impl StorageFile for Section {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.byte_len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset + buf.len() as u64 > self.len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        self.file.read_at(buf, self.base + offset)
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn truncate(&self, _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }
}

/// Loads one chain's section into a view (payloads relocated into the snapshot file).
struct Loader {
    view: View,
    base: u64,
}

impl RecoveryVisitor for Loader {
    fn snapshot_root(&mut self, root: Option<RootAuthority>, last_index: u64) {
        self.view.set_snapshot_root(root, last_index);
    }
    fn snapshot_record(
        &mut self,
        rec: SnapshotRecord,
        payload: Option<Location>,
    ) -> Result<(), LogError> {
        let at = payload.map(|l| Location {
            file: FileRef::Snapshot(0),
            offset: self.base + l.offset,
        });
        let key = rec.key;
        self.view.put(key, RecordEntry::from_snapshot(rec, at));
        Ok(())
    }
    fn entry(&mut self, _: u64, _: &[u8], at: Location) -> Result<(), LogError> {
        Err(LogError::Corrupt {
            file: SNAP_FILE.into(),
            offset: at.offset,
            reason: "a transaction inside a snapshot section".into(),
        })
    }
}

/// What a snapshot file held.
struct Loaded {
    last_applied: Option<LogId>,
    membership: StoredMembership<u64, BasicNode>,
    snapshot_id: String,
    chains: BTreeMap<ChainId, ChainData>,
}

/// Whether `a` and `b` are one open file.
fn same_file(a: &Arc<dyn StorageFile>, b: &Arc<dyn StorageFile>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// Removes the file `name`, if there is one.
fn remove_if_present(storage: &dyn Storage, name: &str) -> Result<(), LogError> {
    match storage.remove(name) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LogError::io("remove", name)(e)),
        _ => Ok(()),
    }
}

/// Copies `from` to `to` (at its start), a MiB at a time.
fn copy_file(from: &dyn StorageFile, to: &dyn StorageFile) -> Result<(), LogError> {
    let len = from
        .len()
        .map_err(LogError::io("stat", "a received snapshot"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        from.read_at(&mut buf[..n], at)
            .map_err(LogError::io("read", "a received snapshot"))?;
        to.write_at(&buf[..n], at)
            .map_err(LogError::io("write", INSTALL_TMP))?;
        at += n as u64;
    }
    Ok(())
}

/// The whole of `file` (named `name` in errors).
#[cfg(test)]
fn read_all(file: &dyn StorageFile, name: &str) -> Result<Vec<u8>, LogError> {
    let len = file.len().map_err(LogError::io("stat", name))?;
    let mut data = vec![0u8; len as usize];
    file.read_at(&mut data, 0)
        .map_err(LogError::io("read", name))?;
    Ok(data)
}

fn corrupt(reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        file: SNAP_FILE.into(),
        offset: 0,
        reason: reason.into(),
    }
}

/// The footer of a snapshot file, and where it starts (sections lie before it).
fn read_footer(file: &dyn StorageFile) -> Result<(Footer, FooterMore, u64), LogError> {
    let len = file.len().map_err(LogError::io("stat", SNAP_FILE))?;
    if len < 20 {
        return Err(corrupt("shorter than its magic and footer"));
    }
    let mut tail = [0u8; 12];
    file.read_at(&mut tail, len - 12)
        .map_err(LogError::io("read", SNAP_FILE))?;
    if &tail[4..] != SNAP_MAGIC {
        return Err(corrupt("no closing magic (an unfinished snapshot?)"));
    }
    let flen = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    let fstart = len
        .checked_sub(12 + flen)
        .ok_or_else(|| corrupt("footer longer than the file"))?;
    let mut fb = vec![0u8; flen as usize];
    file.read_at(&mut fb, fstart)
        .map_err(LogError::io("read", SNAP_FILE))?;
    let (footer, rest) =
        postcard::take_from_bytes::<Footer>(&fb).map_err(|e| corrupt(e.to_string()))?;
    let more = if rest.is_empty() {
        FooterMore::default()
    } else {
        postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string()))?
    };
    Ok((footer, more, fstart))
}

fn load_snapshot(file: &Arc<dyn StorageFile>) -> Result<Loaded, LogError> {
    let (footer, more, fstart) = read_footer(file.as_ref())?;
    let genesis: std::collections::HashMap<_, _> = more.genesis.into_iter().collect();
    let mut chains = BTreeMap::new();
    for h in footer.chains {
        if h.offset + h.len > fstart {
            return Err(corrupt("a section past the footer"));
        }
        let id = ChainId(h.chain);
        let section = Section {
            file: file.clone(),
            base: h.offset,
            len: h.len,
        };
        let mut loader = Loader {
            view: View::new(id),
            base: h.offset,
        };
        read_snapshot(&section, h.index, &mut loader)?;
        chains.insert(
            id,
            ChainData {
                view: loader.view,
                quota: h.quota,
                index: h.index,
                txs: BTreeMap::new(),
                seen: {
                    let mut s = h.seen;
                    s.rebuild();
                    s
                },
                genesis: genesis.get(&h.chain).copied().map(TxHash),
            },
        );
    }
    Ok(Loaded {
        last_applied: footer.last_applied,
        membership: footer.membership,
        snapshot_id: footer.snapshot_id,
        chains,
    })
}

/// The refusal of a command about a chain this state does not hold.
fn no_chain(chain: ChainId) -> Outcome {
    Outcome::Refused {
        kind: Refusal::NoChain,
        reason: format!("no chain {chain}"),
    }
}

/// Reads a sealed payload a view points at: in the log's segments or in the snapshot file.
pub(crate) fn read_payload(
    log: &Files,
    snapshots: &Files,
    loc: Location,
    len: usize,
) -> Result<Vec<u8>, LogError> {
    match loc.file {
        FileRef::Segment(_) => log.read(loc, len),
        FileRef::Snapshot(_) => snapshots.read(loc, len),
    }
}

impl Inner {
    fn read_payload(&self, loc: Location, len: usize) -> Result<Vec<u8>, LogError> {
        read_payload(&self.log.files(), &self.snap_files, loc, len)
    }

    /// Applies a commit of `tx_bytes`, whose hash the entry may carry (`Command::Commit`).
    fn apply_tx(
        &mut self,
        chain: ChainId,
        tx_bytes: &[u8],
        hash: Option<[u8; 32]>,
        raft_index: u64,
    ) -> Outcome {
        let refuse = |kind, reason: String| Outcome::Refused { kind, reason };
        let decoded = match hash {
            Some(hash) => Transaction::decode_skeleton_hashed(tx_bytes, TxHash(hash)),
            None => Transaction::decode_skeleton(tx_bytes),
        };
        let sk = match decoded {
            Ok(sk) => sk,
            Err(e) => return refuse(Refusal::Invalid, e.to_string()),
        };
        let Some(tx_at) = self.log.tx_location(raft_index) else {
            return refuse(Refusal::Invalid, "entry not in the local log".into());
        };
        let Some(c) = self.chains.get_mut(&chain) else {
            return no_chain(chain);
        };
        let hash = sk.hash;
        if let Some(index) = c.seen.get(&hash.0) {
            return Outcome::Applied { index };
        }
        if let Err(e) = validate_skeleton(&c.view, &sk) {
            let kind = refusal_of(&e);
            return refuse(kind, e.to_string());
        }
        let index = c.index + 1;
        let mut changes = plan(&c.view, &sk.tx, index);
        // Only a commit that grows the chain can be refused for its quota: one that frees
        // space (a deletion, a shorter rewrite) must go through on a full chain, or a full
        // volume could never be emptied.
        let (before, after) = (c.used(), c.view.live_bytes_after(&changes));
        if after > before && after > c.quota {
            return refuse(
                Refusal::Quota,
                format!(
                    "chain {chain} would hold {after} bytes, more than its quota of {}",
                    c.quota
                ),
            );
        }
        locate(&mut changes, tx_at, &sk.payload_offsets());
        c.view.merge(index, changes);
        c.index = index;
        c.txs.insert(index, raft_index);
        c.seen.insert(hash.0, index);
        Outcome::Applied { index }
    }

    fn apply(&mut self, cmd: Command, raft_index: u64) -> Outcome {
        match cmd {
            Command::Commit {
                chain, tx, hash, ..
            } => self.apply_tx(ChainId(chain), &tx, hash, raft_index),
            Command::Create { chain, quota, tx } => {
                let id = ChainId(chain);
                let genesis = Transaction::decode(&tx).ok().map(|t| t.hash());
                let retried = genesis.and_then(|h| self.chains.get(&id)?.seen.get(&h.0));
                if let Some(index) = retried {
                    return Outcome::Applied { index };
                }
                if self.chains.contains_key(&id) {
                    return Outcome::Refused {
                        kind: Refusal::Exists,
                        reason: format!("chain {id} exists"),
                    };
                }
                self.chains.insert(
                    id,
                    ChainData {
                        view: View::new(id),
                        quota,
                        index: 0,
                        txs: BTreeMap::new(),
                        seen: Seen::default(),
                        genesis,
                    },
                );
                let out = self.apply_tx(id, &tx, genesis.map(|h| h.0), raft_index);
                let genesis_ok = matches!(out, Outcome::Applied { .. })
                    && self
                        .chains
                        .get(&id)
                        .is_some_and(|c| c.view.root().is_some());
                if !genesis_ok {
                    self.chains.remove(&id);
                    if let Outcome::Applied { .. } = out {
                        return Outcome::Refused {
                            kind: Refusal::Invalid,
                            reason: "the genesis transaction must set the root authority".into(),
                        };
                    }
                }
                out
            }
            Command::Delete { chain } => match self.chains.remove(&ChainId(chain)) {
                Some(_) => Outcome::Applied { index: 0 },
                None => no_chain(ChainId(chain)),
            },
            Command::SetQuota { chain, quota } => match self.chains.get_mut(&ChainId(chain)) {
                Some(c) if quota < c.used() => Outcome::Refused {
                    kind: Refusal::BelowUsage,
                    reason: format!(
                        "chain {} holds {} bytes, more than a quota of {quota}",
                        ChainId(chain),
                        c.used()
                    ),
                },
                Some(c) => {
                    c.quota = quota;
                    Outcome::Applied { index: c.index }
                }
                None => no_chain(ChainId(chain)),
            },
            Command::Compact { chain } => match self.chains.get(&ChainId(chain)) {
                Some(c) => {
                    self.compact_past = self.compact_past.max(raft_index);
                    Outcome::Applied { index: c.index }
                }
                None => no_chain(ChainId(chain)),
            },
        }
    }

    /// An empty temporary snapshot file named `tmp`.
    fn create_tmp(&self, tmp: &str) -> Result<Arc<dyn StorageFile>, LogError> {
        let out = self
            .storage
            .open(tmp, true)
            .map_err(LogError::io("create", tmp))?;
        out.truncate(0).map_err(LogError::io("truncate", tmp))?;
        Ok(out)
    }

    /// Makes the (synced) temporary file the snapshot, durably, and the one payloads are read
    /// from.
    fn publish(&mut self, tmp: &str) -> Result<Arc<dyn StorageFile>, LogError> {
        self.storage
            .rename(tmp, SNAP_FILE)
            .map_err(LogError::io("rename", tmp))?;
        self.storage.sync_dir().map_err(LogError::io("sync", "."))?;
        let file = self
            .storage
            .open(SNAP_FILE, false)
            .map_err(LogError::io("open", SNAP_FILE))?;
        self.snap_files.insert(FileRef::Snapshot(0), file.clone());
        self.installs_or_builds += 1;
        Ok(file)
    }

    /// What a snapshot of the state as it is now copies: the records' list, no payloads.
    fn plan_snapshot(&self) -> snapshot_build::Planned {
        snapshot_build::Planned {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    self.last_applied.map_or(0, |l| l.index),
                    now_nanos()
                ),
            },
            chains: self
                .chains
                .iter()
                .map(|(id, c)| snapshot_build::PlannedChain {
                    id: *id,
                    root: c.view.root().cloned(),
                    genesis: c.genesis,
                    head: ChainHead {
                        chain: id.0,
                        quota: c.quota,
                        used: c.used(),
                        index: c.index,
                        offset: 0,
                        len: 0,
                        seen: c.seen.clone(),
                    },
                    records: c.view.records().map(|(k, e)| (*k, e.clone())).collect(),
                })
                .collect(),
            log: self.log.files(),
            snapshots: self.snap_files.clone(),
            generation: self.installs_or_builds,
        }
    }

    /// Makes a written snapshot current and points the views at it, unless another snapshot
    /// took its place meanwhile (one received from the leader): then that one stands.
    fn finish_snapshot(
        &mut self,
        planned: snapshot_build::Planned,
        moves: snapshot_build::Moves,
    ) -> Result<SnapshotMeta<u64, BasicNode>, LogError> {
        if planned.generation != self.installs_or_builds {
            let _ = self.storage.remove(BUILD_TMP);
            return self
                .current
                .clone()
                .ok_or_else(|| corrupt("a snapshot replaced meanwhile is gone"));
        }
        self.publish(BUILD_TMP)?;
        let first = self.log.first_index();
        for (id, moved) in moves {
            if let Some(c) = self.chains.get_mut(&id) {
                for (key, from, at) in moved {
                    // A version committed while the snapshot was written lies in the log and
                    // stays there.
                    c.view.relocate_from(
                        &key,
                        from,
                        Location {
                            file: FileRef::Snapshot(0),
                            offset: at,
                        },
                    );
                }
                // Subscriptions read transactions from the log while it still has them; only
                // what earlier purges removed is forgotten here.
                c.forget_purged(first);
            }
        }
        self.current = Some(planned.meta.clone());
        Ok(planned.meta)
    }

    /// A fresh file to receive a snapshot into. A new inode, not the old file cut short: a
    /// write of a receipt openraft gave up may still be on its way to the old one.
    fn begin_receiving(&mut self) -> Result<Arc<dyn StorageFile>, LogError> {
        remove_if_present(self.storage.as_ref(), INSTALL_TMP)?;
        let file = self.create_tmp(INSTALL_TMP)?;
        self.receiving = Some(file.clone());
        Ok(file)
    }

    /// Makes `data`, a snapshot received whole (and synced, when it is the file received
    /// into), the state. Any other file is first copied to `INSTALL_TMP`.
    fn install(&mut self, data: &SnapshotData) -> Result<(), LogError> {
        let received = self.receiving.take();
        let out = match received.filter(|r| same_file(r, data.file())) {
            Some(file) => file,
            None => {
                let out = self.create_tmp(INSTALL_TMP)?;
                copy_file(data.file().as_ref(), out.as_ref())?;
                out.sync_data()
                    .map_err(LogError::io("fdatasync", INSTALL_TMP))?;
                out
            }
        };
        // Check it whole before it replaces anything.
        let loaded = load_snapshot(&out)?;
        self.publish(INSTALL_TMP)?;
        self.adopt(loaded);
        Ok(())
    }

    /// Takes a loaded snapshot as the whole state and tells waiters how far it goes.
    fn adopt(&mut self, loaded: Loaded) {
        self.last_applied = loaded.last_applied;
        self.membership = loaded.membership.clone();
        self.chains = loaded.chains;
        self.current = Some(SnapshotMeta {
            last_log_id: loaded.last_applied,
            last_membership: loaded.membership,
            snapshot_id: loaded.snapshot_id,
        });
        self.notify_applied();
    }

    fn notify_applied(&self) {
        let index = self.last_applied.map_or(0, |l| l.index);
        self.log.applied(index);
        let _ = self.applied_tx.send(index);
    }
}

/// How a validation failure is reported.
pub fn refusal_of(e: &ValidationError) -> Refusal {
    match e {
        ValidationError::Precondition(_) => Refusal::Precondition,
        ValidationError::NotAuthorized { .. }
        | ValidationError::NotOwner(_)
        | ValidationError::Signature(_) => Refusal::Unauthorized,
        _ => Refusal::Invalid,
    }
}

fn now_nanos() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl StateMachine {
    /// Opens the state machine in `storage` (its snapshot, if any); entries after the snapshot
    /// are re-applied from `log` by Raft.
    pub fn open(storage: Arc<dyn Storage>, log: LogStore) -> Result<Self, LogError> {
        let snap_files = Arc::new(Files::new(storage.clone()));
        let (tx, rx) = tokio::sync::watch::channel(0);
        let mut inner = Inner {
            storage: storage.clone(),
            log,
            snap_files,
            last_applied: None,
            membership: StoredMembership::default(),
            chains: BTreeMap::new(),
            current: None,
            applied_tx: tx,
            compact_past: 0,
            installs_or_builds: 0,
            receiving: None,
        };
        // What a crash left half written: a received snapshot can be as large as the data.
        for tmp in [INSTALL_TMP, BUILD_TMP] {
            remove_if_present(storage.as_ref(), tmp)?;
        }
        match storage.open(SNAP_FILE, false) {
            Ok(file) => {
                let loaded = load_snapshot(&file)?;
                inner.snap_files.insert(FileRef::Snapshot(0), file);
                inner.adopt(loaded);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io("open", SNAP_FILE)(e)),
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            applied: rx,
        })
    }

    /// Runs `f` on a chain's state, if the chain exists.
    pub fn with_chain<T>(&self, chain: &ChainId, f: impl FnOnce(&ChainData) -> T) -> Option<T> {
        let mut inner = self.inner.lock();
        let first = inner.log.first_index();
        let c = inner.chains.get_mut(chain)?;
        // A purge may have come since the last snapshot (the log is also kept within bytes,
        // log_bound.rs): its transactions are no longer in the log to subscribe from.
        c.forget_purged(first);
        Some(f(c))
    }

    /// Whether `tx` would leave `chain` holding fewer bytes than it does (a deletion, a
    /// truncation), judged on the chain as applied so far; false for a chain not held here.
    pub fn frees_space(&self, chain: &ChainId, tx: &Transaction) -> bool {
        self.with_chain(chain, |c| {
            let changes = plan(&c.view, tx, c.index + 1);
            c.view.live_bytes_after(&changes) < c.used()
        })
        .unwrap_or(false)
    }

    /// About what a fresh snapshot would take, erring high (`View::snapshot_estimate`).
    pub fn snapshot_estimate(&self) -> u64 {
        let inner = self.inner.lock();
        inner
            .chains
            .values()
            .map(|c| c.view.snapshot_estimate())
            .sum()
    }

    /// The log index of the latest `Compact` request applied (0: none).
    pub fn compact_past(&self) -> u64 {
        self.inner.lock().compact_past
    }

    /// Bytes of the current snapshot file (0 before the first).
    pub fn snapshot_bytes(&self) -> u64 {
        self.inner
            .lock()
            .snap_files
            .get(&FileRef::Snapshot(0))
            .and_then(|f| f.len().ok())
            .unwrap_or(0)
    }

    /// Records of every chain held, tombstones included: each is an entry of a view in
    /// memory, so a replica's memory grows with them (docs/operations.md, "Sizing the chain
    /// servers' memory").
    pub fn records(&self) -> u64 {
        let inner = self.inner.lock();
        inner
            .chains
            .values()
            .map(|c| c.view.counts().0 as u64)
            .sum()
    }

    /// Ids of the chains held.
    pub fn chains(&self) -> Vec<ChainId> {
        self.inner.lock().chains.keys().copied().collect()
    }

    /// Raft index applied so far; changes wake `watch_applied` receivers.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.clone()
    }

    /// `chain`'s image in the current snapshot file (None without a snapshot or without the
    /// chain in it). The handle stays readable when a newer snapshot replaces the file.
    pub fn chain_section(&self, chain: &ChainId) -> Result<Option<ChainSection>, LogError> {
        let Some(file) = self.inner.lock().snap_files.get(&FileRef::Snapshot(0)) else {
            return Ok(None);
        };
        let (footer, _, _) = read_footer(file.as_ref())?;
        Ok(footer
            .chains
            .into_iter()
            .find(|h| h.chain == chain.0)
            .map(|h| ChainSection {
                image: Section {
                    file: file.clone(),
                    base: h.offset,
                    len: h.len,
                },
                index: h.index,
            }))
    }

    /// Reads a sealed payload the view points at.
    pub fn read_payload(&self, loc: Location, len: usize) -> Result<Vec<u8>, LogError> {
        self.inner.lock().read_payload(loc, len)
    }
}

impl StateMachine {
    /// [`Self::try_build`]; on a full disk it gives up and leaves everything as it was (the
    /// log is kept whole until there is room): openraft stops a partition whose snapshot
    /// build fails, and running out of room for a copy is no reason to stop.
    fn build(&self) -> Result<SnapshotMeta<u64, BasicNode>, LogError> {
        match self.try_build() {
            Err(e) if e.is_no_space() => {
                let inner = self.inner.lock();
                let _ = inner.storage.remove(BUILD_TMP);
                tracing::warn!(error = %e, "no room on the disk for a snapshot; the log stays as it is");
                // Not newer than the current one: openraft keeps that.
                Ok(inner.current.clone().unwrap_or_else(|| SnapshotMeta {
                    last_log_id: None,
                    last_membership: inner.membership.clone(),
                    snapshot_id: String::new(),
                }))
            }
            r => r,
        }
    }

    /// Writes a snapshot of the state as applied now and makes it current; commits are
    /// applied meanwhile (snapshot_build.rs).
    fn try_build(&self) -> Result<SnapshotMeta<u64, BasicNode>, LogError> {
        let started = std::time::Instant::now();
        let (planned, out) = {
            let inner = self.inner.lock();
            (inner.plan_snapshot(), inner.create_tmp(BUILD_TMP)?)
        };
        let moves = match snapshot_build::write(&planned, &out) {
            Ok(moves) => moves,
            Err(e) => {
                // A snapshot received meanwhile replaced the state and let openraft purge
                // the log this one was copying from: that one stands.
                let mut inner = self.inner.lock();
                if planned.generation == inner.installs_or_builds {
                    return Err(e);
                }
                tracing::info!(error = %e, "snapshot overtaken by one received; dropped");
                return inner.finish_snapshot(planned, Vec::new());
            }
        };
        let bytes = out.len().map_err(LogError::io("stat", BUILD_TMP))?;
        let meta = self.inner.lock().finish_snapshot(planned, moves)?;
        tracing::info!(
            index = meta.last_log_id.map_or(0, |l| l.index),
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(meta)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let sm = self.clone();
        let meta = tokio::task::spawn_blocking(move || sm.build())
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        // openraft keeps only the meta of a snapshot it asked for (a follower is sent the
        // file through `get_current_snapshot`).
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::empty().map_err(snap_err)?),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, BasicNode>), StorageError> {
        let inner = self.inner.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let log = self.inner.lock().log.clone();
        let mut out = Vec::new();
        for e in entries {
            // Entries no longer in the log's memory come hollow (`LogStore::read_hollow`):
            // each is read whole here, outside the lock, so applying a long log holds one
            // transaction at a time.
            let index = e.log_id.index;
            let e = log.fill(e).map_err(|err| {
                StorageIOError::read_log_at_index(index, openraft::AnyError::new(&err))
            })?;
            let mut inner = self.inner.lock();
            inner.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Outcome::Applied { index: 0 }),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Outcome::Applied { index: 0 });
                }
                EntryPayload::Normal(cmd) => out.push(inner.apply(cmd, e.log_id.index)),
            }
        }
        self.inner.lock().notify_applied();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let file = self.inner.lock().begin_receiving().map_err(snap_err)?;
        Ok(Box::new(SnapshotData::new(file)))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        // Made durable before the lock is taken: it can be as large as the partition's data.
        let file = snapshot.file().clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(sm_err)?
            .map_err(sm_err)?;
        let mut inner = self.inner.lock();
        inner.install(&snapshot).map_err(sm_err)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let inner = self.inner.lock();
        let Some(meta) = inner.current.clone() else {
            return Ok(None);
        };
        let file = inner
            .snap_files
            .get(&FileRef::Snapshot(0))
            .ok_or_else(|| snap_err(corrupt("the current snapshot file is not open")))?;
        // The open file: a newer snapshot replacing it under its name leaves this one whole.
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::new(file.clone())),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ate::storage::MemStorage;

    /// openraft stops a partition whose snapshot build fails: a build that finds the disk
    /// full gives up, leaves no file behind, and keeps the current snapshot (none: nothing
    /// newer than nothing); once there is room the next one is written.
    #[test]
    fn a_snapshot_without_room_on_the_disk_is_given_up_and_changes_nothing() {
        use ate::storage::FaultStorage;
        use std::sync::atomic::Ordering;
        let mem = MemStorage::new();
        let (faulty, plan) = FaultStorage::new(Arc::new(mem.clone()));
        let log = LogStore::open(Arc::new(MemStorage::new()), 1 << 20).unwrap();
        let sm = StateMachine::open(Arc::new(faulty), log).unwrap();
        plan.space_left.store(0, Ordering::SeqCst);
        let none = sm.build().unwrap();
        assert_eq!((none.last_log_id, none.snapshot_id.as_str()), (None, ""));
        plan.space_left.store(-1, Ordering::SeqCst);
        let first = sm.build().unwrap();
        plan.space_left.store(8, Ordering::SeqCst);
        let again = sm.build().unwrap();
        assert_eq!(
            again.snapshot_id, first.snapshot_id,
            "the current one stands"
        );
        assert!(!mem.list().unwrap().iter().any(|f| f == BUILD_TMP));
        plan.space_left.store(-1, Ordering::SeqCst);
        let next = sm.build().unwrap();
        assert_ne!(next.snapshot_id, first.snapshot_id);
        assert_eq!(
            sm.inner.lock().current.clone().unwrap().snapshot_id,
            next.snapshot_id
        );
    }

    /// What a crash left of a snapshot being received or built (it can be as large as the
    /// data) is removed when the state machine opens.
    #[test]
    fn half_written_snapshots_are_removed_on_opening() {
        let mem = MemStorage::new();
        for tmp in [INSTALL_TMP, BUILD_TMP] {
            mem.open(tmp, true).unwrap().write_at(b"half", 0).unwrap();
        }
        let log = LogStore::open(Arc::new(MemStorage::new()), 1 << 20).unwrap();
        StateMachine::open(Arc::new(mem.clone()), log).unwrap();
        assert!(mem.list().unwrap().is_empty(), "{:?}", mem.list());
    }

    /// A chain's genesis hash survives a snapshot; the footer it is written after still
    /// decodes alone (what a replica of an earlier version reads), and a snapshot without it
    /// (written by one) loads with the genesis unknown.
    #[test]
    fn a_chains_genesis_survives_a_snapshot_that_older_replicas_still_read() {
        let mem = MemStorage::new();
        let log = LogStore::open(Arc::new(MemStorage::new()), 1 << 20).unwrap();
        let sm = StateMachine::open(Arc::new(mem.clone()), log.clone()).unwrap();
        let owner = ate::SigningKey::generate();
        let chain = ChainId::random();
        let tx = ate::remote::genesis(chain, &owner);
        let hash = Transaction::decode(&tx).unwrap().hash();
        let create = Command::Create {
            chain: chain.0,
            quota: 1 << 20,
            tx: tx.into(),
        };
        let entry = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(create.clone()),
        };
        log.append_sync(vec![entry]).unwrap();
        let out = sm.inner.lock().apply(create, 1);
        assert!(matches!(out, Outcome::Applied { index: 1 }), "{out:?}");
        assert_eq!(sm.with_chain(&chain, |c| c.genesis), Some(Some(hash)));
        sm.build().unwrap();
        let file = mem.open(SNAP_FILE, false).unwrap();
        let loaded = load_snapshot(&file).unwrap();
        assert_eq!(loaded.chains[&chain].genesis, Some(hash));

        let (footer, _, fstart) = read_footer(file.as_ref()).unwrap();
        let len = file.len().unwrap();
        let mut fb = vec![0u8; (len - 12 - fstart) as usize];
        file.read_at(&mut fb, fstart).unwrap();
        let alone: Footer = postcard::from_bytes(&fb).unwrap();
        assert_eq!(alone.chains.len(), 1);
        assert_eq!(alone.chains[0].chain, chain.0);

        // What an earlier version writes: the footer and nothing after it.
        let old = postcard::to_stdvec(&footer).unwrap();
        let earlier = MemStorage::new().open("earlier", true).unwrap();
        let mut sections = vec![0u8; fstart as usize];
        file.read_at(&mut sections, 0).unwrap();
        earlier.write_at(&sections, 0).unwrap();
        let mut tail = old.clone();
        tail.extend_from_slice(&(old.len() as u32).to_le_bytes());
        tail.extend_from_slice(SNAP_MAGIC);
        earlier.write_at(&tail, fstart).unwrap();
        let loaded = load_snapshot(&earlier).unwrap();
        assert_eq!(loaded.chains[&chain].genesis, None);
        assert_eq!(loaded.chains[&chain].index, 1);
    }

    /// A replica applies a commit against the hash its entry carries, as the leader computed
    /// it: a wrong one fails the signature check (so it is what is checked), the right one
    /// applies, and an entry logged without one (before it was carried) is hashed here.
    #[test]
    fn a_commit_is_checked_against_the_hash_its_entry_carries() {
        let log = LogStore::open(Arc::new(MemStorage::new()), 1 << 20).unwrap();
        let sm = StateMachine::open(Arc::new(MemStorage::new()), log.clone()).unwrap();
        let owner = ate::SigningKey::generate();
        let chain = ChainId::random();
        let key = ate::DataKey::generate();
        let put = |name: &[u8]| {
            let mut tx = Transaction::new(chain, owner.public());
            let rk = ate::RecordKey(*blake3::hash(name).as_bytes().first_chunk().unwrap());
            tx.ops.push(ate::Op::put(
                &chain,
                rk,
                None,
                ate::WriteAuthority::Inherit,
                Some(&key),
                b"value",
            ));
            let tx = tx.sign(&owner);
            (bytes::Bytes::from(tx.encode()), tx.hash().0)
        };
        let (a, a_hash) = put(b"a");
        let (b, _) = put(b"b");
        let commits = [(a.clone(), Some([0xee; 32])), (a, Some(a_hash)), (b, None)];
        let mut cmds = vec![Command::Create {
            chain: chain.0,
            quota: 1 << 20,
            tx: ate::remote::genesis(chain, &owner).into(),
        }];
        cmds.extend(commits.into_iter().map(|(tx, hash)| Command::Commit {
            chain: chain.0,
            tx,
            session: None,
            hash,
        }));
        let entries: Vec<Entry> = (1..)
            .zip(&cmds)
            .map(|(index, cmd)| Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(cmd.clone()),
            })
            .collect();
        log.append_sync(entries).unwrap();
        let outs: Vec<Outcome> = (1..)
            .zip(cmds)
            .map(|(index, cmd)| sm.inner.lock().apply(cmd, index))
            .collect();
        assert!(matches!(outs[0], Outcome::Applied { index: 1 }), "{outs:?}");
        assert!(
            matches!(
                &outs[1],
                Outcome::Refused {
                    kind: Refusal::Unauthorized,
                    ..
                }
            ),
            "a wrong hash: {outs:?}"
        );
        assert!(matches!(outs[2], Outcome::Applied { index: 2 }), "{outs:?}");
        assert!(matches!(outs[3], Outcome::Applied { index: 3 }), "{outs:?}");
    }

    /// A snapshot being built when one is received (a lagging follower): the received one
    /// stands, and the build leaves nothing behind.
    #[test]
    fn a_build_overtaken_by_a_received_snapshot_is_dropped() {
        let mem = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(mem.clone());
        let log = LogStore::open(Arc::new(MemStorage::new()), 1 << 20).unwrap();
        let sm = StateMachine::open(storage, log).unwrap();
        let first = sm.build().unwrap();
        let received = read_all(
            sm.inner
                .lock()
                .snap_files
                .get(&FileRef::Snapshot(0))
                .unwrap()
                .as_ref(),
            SNAP_FILE,
        )
        .unwrap();
        let received = {
            let file = MemStorage::new().open("received", true).unwrap();
            file.write_at(&received, 0).unwrap();
            SnapshotData::new(file)
        };
        let mut inner = sm.inner.lock();
        let planned = inner.plan_snapshot();
        let out = inner.create_tmp(BUILD_TMP).unwrap();
        let moves = snapshot_build::write(&planned, &out).unwrap();
        inner.install(&received).unwrap();
        let meta = inner.finish_snapshot(planned, moves).unwrap();
        assert_eq!(
            meta.snapshot_id, first.snapshot_id,
            "the received one stands"
        );
        assert!(!mem.list().unwrap().iter().any(|f| f == BUILD_TMP));
        // Not overtaken: the build becomes the snapshot.
        let planned = inner.plan_snapshot();
        let out = inner.create_tmp(BUILD_TMP).unwrap();
        let moves = snapshot_build::write(&planned, &out).unwrap();
        let id = planned.meta.snapshot_id.clone();
        let meta = inner.finish_snapshot(planned, moves).unwrap();
        assert_eq!(
            (meta.snapshot_id, inner.current.clone().unwrap().snapshot_id),
            (id.clone(), id)
        );
    }
}
