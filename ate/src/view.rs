//! The materialized view: latest version of every record and the parent -> children index,
//! built by replaying the log. Payloads stay on disk; the view keeps only their locations, so
//! memory grows with the number of records, not with their size.

use crate::authority::{RootAuthority, WriteAuthority};
use crate::crypto::{Cipher, SEAL_OVERHEAD};
use crate::ids::{ChainId, KeyId, RecordKey};
use crate::redo::Location;
use crate::tx::{Op, RecordHeader, Transaction};
use crate::validate::{ChainState, RecordState};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

mod children;

pub use children::Iter as Children;

/// What a snapshot record costs beside its payload, at most for the records atefs writes:
/// key, version, index, parent, write authority, header and frame (about 130 bytes).
pub const SNAPSHOT_RECORD_BYTES: u64 = 256;

/// How a live version's payload is sealed: its header less the key and the parent, which
/// the view holds once already (as the map's key and [`RecordEntry::parent`]). Every
/// server holds an entry per record of every chain in memory, so its size is what a file
/// costs there (docs/operations.md, "Sizing the chain servers' memory").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealing {
    /// Id of the data key sealing the payload; zero for an empty payload. A view keeps one
    /// allocation per distinct id (a volume has a handful) and its entries share it.
    pub data_key: Arc<KeyId>,
    /// Plaintext length of the payload.
    pub plain_len: u64,
    /// The AEAD of the payload.
    pub cipher: Cipher,
}

impl Sealing {
    /// The sealing `header` describes.
    pub fn of(header: &RecordHeader) -> Self {
        Self {
            data_key: Arc::new(header.data_key),
            plain_len: header.plain_len,
            cipher: header.cipher,
        }
    }

    /// The length of the sealed payload; None when the record has none.
    fn sealed_len(&self) -> Option<usize> {
        (self.plain_len > 0 || *self.data_key != KeyId::default())
            .then(|| self.plain_len as usize + SEAL_OVERHEAD)
    }
}

/// Latest state of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordEntry {
    /// Version (tombstones count).
    pub version: u64,
    /// Log index of the transaction that wrote this version.
    pub index: u64,
    /// Parent.
    pub parent: Option<RecordKey>,
    /// Write authority.
    pub write: WriteAuthority,
    /// How a live version's payload is sealed; None for a tombstone.
    pub sealing: Option<Sealing>,
    /// Where the sealed payload is, and its length.
    pub payload: Option<(Location, usize)>,
}

impl RecordEntry {
    /// The snapshot record of this entry under `key`, for a payload of `payload_len` bytes.
    pub fn to_snapshot(&self, key: RecordKey, payload_len: usize) -> crate::redo::SnapshotRecord {
        crate::redo::SnapshotRecord {
            key,
            version: self.version,
            index: self.index,
            parent: self.parent,
            write: self.write.clone(),
            header: self.header(key),
            payload_len,
        }
    }

    /// The entry a snapshot record restores, its payload at `payload` (when it has one).
    /// The record's header names the record and its parent
    /// ([`crate::redo::decode_snapshot_record`] refuses one that does not).
    pub fn from_snapshot(rec: crate::redo::SnapshotRecord, payload: Option<Location>) -> Self {
        Self {
            version: rec.version,
            index: rec.index,
            parent: rec.parent,
            write: rec.write,
            sealing: rec.header.as_ref().map(Sealing::of),
            payload: payload.map(|l| (l, rec.payload_len)),
        }
    }

    /// The header of the live version of record `key`; None for a tombstone.
    pub fn header(&self, key: RecordKey) -> Option<RecordHeader> {
        self.sealing.as_ref().map(|s| RecordHeader {
            key,
            parent: self.parent,
            data_key: *s.data_key,
            plain_len: s.plain_len,
            cipher: s.cipher,
        })
    }

    /// True for a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.sealing.is_none()
    }

    /// Sealed payload bytes this version holds: what it counts against a chain's quota.
    /// Known from the header alone, so also before the payload has a place.
    pub fn sealed_len(&self) -> u64 {
        self.sealing
            .as_ref()
            .and_then(Sealing::sealed_len)
            .unwrap_or(0) as u64
    }
    fn state(&self) -> RecordState {
        RecordState {
            version: self.version,
            deleted: self.is_deleted(),
            parent: self.parent,
            write: self.write.clone(),
        }
    }
}

/// One effect of a transaction on the view.
#[derive(Clone, Debug)]
pub enum Change {
    /// New root authority.
    Root(RootAuthority),
    /// New latest version of a record.
    Record(RecordKey, RecordEntry),
}

/// In-memory index of a chain.
#[derive(Debug)]
pub struct View {
    chain: ChainId,
    root: Option<RootAuthority>,
    records: HashMap<RecordKey, RecordEntry>,
    children: children::Children,
    /// The data key ids the entries share (see [`Sealing::data_key`]). Never pruned: a
    /// chain has few.
    data_keys: HashSet<Arc<KeyId>>,
    last_index: u64,
    /// Sealed payload bytes of the live versions: what a compaction would keep.
    live_bytes: u64,
    /// Records that are not tombstones.
    live: usize,
}

impl View {
    /// An empty view of `chain`.
    pub fn new(chain: ChainId) -> Self {
        Self {
            chain,
            root: None,
            records: HashMap::new(),
            children: children::Children::default(),
            data_keys: HashSet::new(),
            last_index: 0,
            live_bytes: 0,
            live: 0,
        }
    }

    /// Names the chain a view built before its id was known belongs to (replaying a log
    /// whose id is read from its files); the records do not depend on it.
    pub(crate) fn set_chain_id(&mut self, chain: ChainId) {
        self.chain = chain;
    }

    /// Index of the last transaction applied.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// A record's latest state, tombstones included.
    pub fn get(&self, key: &RecordKey) -> Option<&RecordEntry> {
        self.records.get(key)
    }

    /// Live children of a record, in key order.
    pub fn children(&self, key: &RecordKey) -> Children<'_> {
        self.children.of(key)
    }

    /// All records (for snapshots).
    pub fn records(&self) -> impl Iterator<Item = (&RecordKey, &RecordEntry)> {
        self.records.iter()
    }

    /// Counts: (records incl. tombstones, live records).
    pub fn counts(&self) -> (usize, usize) {
        (self.records.len(), self.live)
    }

    /// Sealed payload bytes of the live versions.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// About what a snapshot of this view takes, erring high: the live payloads and at most
    /// [`SNAPSHOT_RECORD_BYTES`] per record (tombstones included, a snapshot keeps them).
    /// What a log's size is weighed against to tell how much of it is garbage.
    pub fn snapshot_estimate(&self) -> u64 {
        self.live_bytes
            .saturating_add((self.records.len() as u64).saturating_mul(SNAPSHOT_RECORD_BYTES))
    }

    /// What [`Self::live_bytes`] would be once `changes` are merged: a quota is a bound on
    /// the data a chain holds, not on what was ever written to it, so an overwrite or a
    /// deletion is judged by what it leaves.
    pub fn live_bytes_after(&self, changes: &[Change]) -> u64 {
        let mut staged: HashMap<RecordKey, u64> = HashMap::new();
        let mut live = self.live_bytes;
        for c in changes {
            if let Change::Record(key, e) = c {
                let old = staged.get(key).copied().unwrap_or_else(|| {
                    self.records
                        .get(key)
                        .map_or(0, |o| o.payload.map_or(0, |(_, n)| n as u64))
                });
                let new = e.sealed_len();
                live = live.saturating_sub(old).saturating_add(new);
                staged.insert(*key, new);
            }
        }
        live
    }

    /// Sets the root and index from a snapshot.
    pub fn set_snapshot_root(&mut self, root: Option<RootAuthority>, last_index: u64) {
        self.root = root;
        self.last_index = last_index;
    }

    /// Applies changes computed by [`plan`].
    pub fn merge(&mut self, index: u64, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Root(r) => self.root = Some(r),
                Change::Record(key, entry) => self.put(key, entry),
            }
        }
        self.last_index = self.last_index.max(index);
    }

    /// Inserts a record's latest state, keeping the children index right.
    pub fn put(&mut self, key: RecordKey, mut entry: RecordEntry) {
        if let Some(s) = &mut entry.sealing {
            match self.data_keys.get(&*s.data_key) {
                Some(shared) => s.data_key = shared.clone(),
                None => {
                    self.data_keys.insert(s.data_key.clone());
                }
            }
        }
        let len = |e: &RecordEntry| e.payload.map_or(0, |(_, n)| n as u64);
        self.live_bytes += len(&entry);
        self.live += usize::from(!entry.is_deleted());
        if let Some(old) = self.records.get(&key) {
            self.live_bytes = self.live_bytes.saturating_sub(len(old));
            self.live -= usize::from(!old.is_deleted());
            if let (Some(p), false) = (old.parent, old.is_deleted()) {
                self.children.remove(&p, &key);
            }
        }
        if let (Some(p), false) = (entry.parent, entry.is_deleted()) {
            self.children.insert(p, key);
        }
        self.records.insert(key, entry);
    }

    /// Points a record's payload at `to` if it still lies at `from` (compaction copied it;
    /// a version committed since lies elsewhere and stays).
    pub fn relocate_from(&mut self, key: &RecordKey, from: Location, to: Location) {
        if let Some(e) = self.records.get_mut(key) {
            if let Some((l, _)) = &mut e.payload {
                if *l == from {
                    *l = to;
                }
            }
        }
    }
}

impl ChainState for View {
    fn chain_id(&self) -> ChainId {
        self.chain
    }
    fn root(&self) -> Option<&RootAuthority> {
        self.root.as_ref()
    }
    fn record(&self, key: &RecordKey) -> Option<RecordState> {
        self.records.get(key).map(RecordEntry::state)
    }
}

/// A view plus changes not yet merged: what the committer validates a batch against.
#[derive(Debug)]
pub struct Staged<'a> {
    view: &'a View,
    root: Option<RootAuthority>,
    records: HashMap<RecordKey, RecordEntry>,
}

impl<'a> Staged<'a> {
    /// Nothing staged yet.
    pub fn new(view: &'a View) -> Self {
        Self {
            view,
            root: None,
            records: HashMap::new(),
        }
    }
    /// Stages changes.
    pub fn stage(&mut self, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Root(r) => self.root = Some(r.clone()),
                Change::Record(k, e) => {
                    self.records.insert(*k, e.clone());
                }
            }
        }
    }
    fn entry(&self, key: &RecordKey) -> Option<&RecordEntry> {
        self.records.get(key).or_else(|| self.view.get(key))
    }
}

impl ChainState for Staged<'_> {
    fn chain_id(&self) -> ChainId {
        self.view.chain
    }
    fn root(&self) -> Option<&RootAuthority> {
        self.root.as_ref().or(self.view.root.as_ref())
    }
    fn record(&self, key: &RecordKey) -> Option<RecordState> {
        self.entry(key).map(RecordEntry::state)
    }
}

/// Computes the effects of a (validated) transaction committed at `index`, whose encoded bytes
/// start at `tx_at` (None while not yet written; fill in with [`locate`]).
pub fn plan<S: ChainState + ?Sized>(state: &S, tx: &Transaction, index: u64) -> Vec<Change> {
    let mut out = Vec::with_capacity(tx.ops.len());
    let mut versions: HashMap<RecordKey, RecordState> = HashMap::new();
    for op in &tx.ops {
        match op {
            Op::SetRoot(r) => out.push(Change::Root(r.clone())),
            Op::Put { header, write, .. } => {
                let prev = versions
                    .get(&header.key)
                    .cloned()
                    .or_else(|| state.record(&header.key));
                let entry = RecordEntry {
                    version: prev.map_or(1, |p| p.version + 1),
                    index,
                    parent: header.parent,
                    write: write.clone(),
                    sealing: Some(Sealing::of(header)),
                    payload: None,
                };
                versions.insert(header.key, entry.state());
                out.push(Change::Record(header.key, entry));
            }
            Op::Delete { key } => {
                let prev = versions.get(key).cloned().or_else(|| state.record(key));
                let entry = RecordEntry {
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    index,
                    parent: prev.as_ref().and_then(|p| p.parent),
                    write: prev.map(|p| p.write).unwrap_or_default(),
                    sealing: None,
                    payload: None,
                };
                versions.insert(*key, entry.state());
                out.push(Change::Record(*key, entry));
            }
        }
    }
    out
}

/// Fills in payload locations once the transaction's bytes are at `tx_at`; `offsets` are
/// [`Transaction::payload_offsets`].
pub fn locate(changes: &mut [Change], tx_at: Location, offsets: &[usize]) {
    let mut offs = offsets.iter();
    for c in changes {
        if let Change::Record(_, e) = c {
            if let Some(s) = &e.sealing {
                let off = offs.next().copied().unwrap_or(0);
                if let Some(len) = s.sealed_len() {
                    e.payload = Some((
                        Location {
                            file: tx_at.file,
                            offset: tx_at.offset + off as u64,
                        },
                        len,
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(data_key: u8, parent: Option<RecordKey>) -> RecordEntry {
        RecordEntry {
            version: 1,
            index: 1,
            parent,
            write: WriteAuthority::Inherit,
            sealing: Some(Sealing {
                data_key: Arc::new(KeyId([data_key; 32])),
                plain_len: 10,
                cipher: Cipher::Aes256Gcm,
            }),
            payload: None,
        }
    }

    #[test]
    fn entries_share_their_data_key_and_give_back_the_header_they_were_made_from() {
        let mut view = View::new(ChainId::random());
        let (a, b, c, dir) = (
            RecordKey::from_u128(1),
            RecordKey::from_u128(2),
            RecordKey::from_u128(3),
            RecordKey::from_u128(9),
        );
        view.put(a, live(7, Some(dir)));
        view.put(b, live(7, Some(dir)));
        view.put(c, live(8, None));
        let key_of = |k: &RecordKey| {
            view.get(k)
                .and_then(|e| e.sealing.clone())
                .map(|s| s.data_key)
        };
        let (ka, kb, kc) = (key_of(&a), key_of(&b), key_of(&c));
        assert!(matches!((&ka, &kb), (Some(x), Some(y)) if Arc::ptr_eq(x, y)));
        assert!(matches!((&ka, &kc), (Some(x), Some(y)) if !Arc::ptr_eq(x, y)));
        let header = view.get(&a).and_then(|e| e.header(a));
        assert_eq!(
            header,
            Some(RecordHeader {
                key: a,
                parent: Some(dir),
                data_key: KeyId([7; 32]),
                plain_len: 10,
                cipher: Cipher::Aes256Gcm,
            })
        );
        let sealing = header.as_ref().map(Sealing::of);
        assert_eq!(sealing, view.get(&a).and_then(|e| e.sealing.clone()));
        assert_eq!(view.children(&dir).collect::<Vec<_>>(), [&a, &b]);
    }
}
