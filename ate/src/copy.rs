//! Copying a chain's live records into a new chain under other keys: what a volume's clone or
//! snapshot is made of.
//!
//! Transactions cannot be replayed into another chain (each names its chain, and payloads are
//! sealed with the chain id in their associated data), so a copy opens every live payload with
//! the source's data key and seals it again for the new chain with the copy's own. The copy's
//! owner signs; record keys, parents and write authorities stay (record keys derive from the
//! name key, which a copy keeps: a volume's directory entries name their records by it). What
//! the copy leaves behind is the history: record versions start again at 1.

use crate::authority::RootAuthority;
use crate::chain::{ChainError, Frozen, LiveRecord};
use crate::ids::{KeyId, RecordKey};
use crate::keyfile::KeyFile;
use crate::tx::{Op, Transaction, TxEncoder};
use bytes::Bytes;
use std::collections::HashMap;

/// Plaintext bytes per copy transaction (a transaction closes at the first record over it);
/// what a mount's writes commit at once, the size the cluster's write path is tuned for.
pub const BATCH_BYTES: usize = 8 << 20;
/// Records per copy transaction.
pub const BATCH_RECORDS: usize = 1024;

/// Why a chain could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source's keys are not an owner of its chain.
    #[error("the source keys are not an owner of chain {0}")]
    NotAnOwner(crate::ids::ChainId),
    /// The source chain has no root authority (no genesis yet).
    #[error("chain {0} has no root authority")]
    NoRoot(crate::ids::ChainId),
    /// A payload is sealed with a data key the source's key file does not hold.
    #[error("record {key} is sealed with data key {data_key}, not the volume's")]
    ForeignKey {
        /// The record.
        key: RecordKey,
        /// Its data key.
        data_key: KeyId,
    },
    /// The copy's keys have another name key ([`KeyFile::for_copy`] keeps it).
    #[error("the copy's keys have another name key than the source's: its records could not be found by name")]
    NameKey,
    /// Reading or opening a payload failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// Produces the transactions that copy a frozen chain into `to.chain`: [`Copier::genesis`]
/// first (the new chain's root authority), then each of [`Copier::next_tx`] in order.
pub struct Copier<'f, 'c> {
    frozen: &'f Frozen<'c>,
    from: &'f KeyFile,
    to: &'f KeyFile,
    /// Indexes into the frozen records, parents before children.
    order: Vec<usize>,
    next: usize,
    skipped: usize,
    root: RootAuthority,
    /// One buffer for every payload's plaintext.
    plain: Vec<u8>,
    /// Plaintext bytes copied so far.
    bytes: u64,
}

impl std::fmt::Debug for Copier<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copier")
            .field("records", &self.order.len())
            .field("next", &self.next)
            .finish()
    }
}

impl<'f, 'c> Copier<'f, 'c> {
    /// A copy of `frozen` (the chain of `from`) into a new chain under `to`'s keys.
    pub fn new(
        frozen: &'f Frozen<'c>,
        from: &'f KeyFile,
        to: &'f KeyFile,
    ) -> Result<Self, CopyError> {
        if from.names.as_bytes() != to.names.as_bytes() {
            return Err(CopyError::NameKey);
        }
        let root = frozen.root.clone().ok_or(CopyError::NoRoot(from.chain))?;
        let old_owner = from.owner.public();
        if !root.is_owner(&old_owner.id()) {
            return Err(CopyError::NotAnOwner(from.chain));
        }
        let root = root.owner_replaced(old_owner, to.owner.public());
        let (order, skipped) = parents_first(&frozen.records);
        Ok(Self {
            frozen,
            from,
            to,
            order,
            next: 0,
            skipped,
            root,
            plain: Vec::new(),
            bytes: 0,
        })
    }

    /// The new chain's genesis (its `Create` request's).
    pub fn genesis(&self) -> Vec<u8> {
        let mut tx = Transaction::new(self.to.chain, self.to.owner.public());
        tx.ops.push(Op::SetRoot(self.root.clone()));
        tx.sign(&self.to.owner).encode()
    }

    /// Records to copy.
    pub fn records(&self) -> usize {
        self.order.len()
    }

    /// Records copied so far.
    pub fn done(&self) -> usize {
        self.next
    }

    /// Plaintext bytes of the records copied so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Live records left out because an ancestor is gone: nothing can reach them (a file
    /// system's records hang from its inodes), and the new chain would refuse them.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The next encoded, signed transaction, None when every record is copied.
    pub fn next_tx(&mut self) -> Option<Result<Bytes, CopyError>> {
        if self.next == self.order.len() {
            return None;
        }
        let (old, new) = (self.from.owner.public().id(), self.to.owner.public().id());
        let mut tx = TxEncoder::new(
            Transaction::new(self.to.chain, self.to.owner.public()),
            BATCH_BYTES + (1 << 20),
        );
        let mut plain = std::mem::take(&mut self.plain);
        let mut bytes = 0;
        while self.next < self.order.len() && bytes < BATCH_BYTES && tx.ops() < BATCH_RECORDS {
            let r = &self.frozen.records[self.order[self.next]];
            let write = r.write.replacing(old, new);
            if r.header.plain_len == 0 && r.header.data_key == KeyId::default() {
                tx.push(Op::put(&self.to.chain, r.key, r.parent, write, None, &[]));
            } else if r.header.data_key != self.from.data.id() {
                return Some(Err(CopyError::ForeignKey {
                    key: r.key,
                    data_key: r.header.data_key,
                }));
            } else {
                let len = match self.frozen.read_plain_into(r, &self.from.data, &mut plain) {
                    Ok(len) => len,
                    Err(e) => return Some(Err(e.into())),
                };
                tx.push_sealed(r.key, r.parent, write, &self.to.data, &plain[..len]);
                bytes += len;
                self.bytes += len as u64;
            }
            self.next += 1;
        }
        self.plain = plain;
        Some(Ok(tx.finish(&self.to.owner).1))
    }
}

/// Indexes of `records` with every parent before its children, and how many were left out
/// for a missing ancestor.
pub(crate) fn parents_first(records: &[LiveRecord]) -> (Vec<usize>, usize) {
    let at: HashMap<RecordKey, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.key, i))
        .collect();
    // Per record: not yet known, or its depth (top-level records 0), None when an ancestor
    // is missing (or the walk loops, which a validated chain cannot).
    let mut depth: Vec<Option<Option<i64>>> = vec![None; records.len()];
    for start in 0..records.len() {
        let mut path = Vec::new();
        let mut cur = start;
        // The depth of the parent of the last record on `path`.
        let above = loop {
            if let Some(d) = depth[cur] {
                break d;
            }
            if path.len() > crate::validate::MAX_DEPTH || path.contains(&cur) {
                break None;
            }
            path.push(cur);
            match records[cur].parent {
                None => break Some(-1),
                Some(p) => match at.get(&p) {
                    Some(&i) => cur = i,
                    None => break None,
                },
            }
        };
        let mut d = above;
        for &i in path.iter().rev() {
            d = d.map(|d| d + 1);
            depth[i] = Some(d);
        }
    }
    let mut order: Vec<usize> = (0..records.len())
        .filter(|&i| matches!(depth[i], Some(Some(_))))
        .collect();
    order.sort_by_key(|&i| depth[i].flatten());
    let skipped = records.len() - order.len();
    (order, skipped)
}
