//! Changing a chain's keys in place: what `atefs rekey` does to a volume whose key file was
//! exposed.
//!
//! Two steps, each safe to repeat. First one owner-signed transaction swaps the owners: the new
//! owner key in, the old one out ([`swap_owners`]). From then on the old key file can neither
//! write, subscribe, resize nor delete the chain, and no writer holding it can add records
//! sealed under the old data key behind the rekey's back. Then every live record still sealed
//! under the old data key is written again, same key, parent and authority, sealed under the
//! new one and signed by the new owner ([`Resealer`]); each write is conditional on the
//! version it replaces, so a record changed meanwhile is left for the next pass. The old
//! versions stay in the log until a snapshot drops them; on a cluster the rekey asks every
//! replica for one ([`crate::remote::rekey_chain`]).
//!
//! The name key stays: record keys derive from it (a directory entry's key is a keyed hash of
//! its name), so changing it means a copy of the volume ([`crate::copy`]), not new versions.

use crate::authority::{RootAuthority, WriteAuthority};
use crate::chain::{ChainError, Frozen};
use crate::copy::{BATCH_BYTES, BATCH_RECORDS};
use crate::ids::{ChainId, KeyId, RecordKey};
use crate::keyfile::KeyFile;
use crate::tx::{Op, Precondition, Transaction, TxEncoder};
use bytes::Bytes;

/// Why a chain's keys could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    /// The two key files name different chains.
    #[error("the old keys are of chain {old}, the new ones of chain {new}")]
    OtherChain {
        /// The old key file's chain.
        old: ChainId,
        /// The new key file's chain.
        new: ChainId,
    },
    /// The new keys have another name key: the records could no longer be found by name.
    #[error("the new keys have another name key than the old ones: the volume's records could not be found by name")]
    NameKey,
    /// The new keys are the old ones.
    #[error("the new keys are the old ones")]
    SameKeys,
    /// The chain has no root authority (no genesis yet).
    #[error("chain {0} has no root authority")]
    NoRoot(ChainId),
    /// Neither key file's owner key is an owner of the chain.
    #[error("neither key file is an owner of chain {0}")]
    NotAnOwner(ChainId),
    /// A payload is sealed with a data key neither key file holds.
    #[error("record {key} is sealed with data key {data_key}, which neither key file holds")]
    ForeignKey {
        /// The record.
        key: RecordKey,
        /// Its data key.
        data_key: KeyId,
    },
    /// Reading or opening a payload failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// Where a chain stands in a change from `old` to `new` keys, by its root authority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The old owner still owns the chain: the owners are to be swapped.
    Swap,
    /// The new owner owns it and the old one no longer: records are to be sealed again.
    Reseal,
}

/// Checks that `new` can replace `old` on one chain.
pub fn check_pair(old: &KeyFile, new: &KeyFile) -> Result<(), RekeyError> {
    if old.chain != new.chain {
        return Err(RekeyError::OtherChain {
            old: old.chain,
            new: new.chain,
        });
    }
    if old.names.as_bytes() != new.names.as_bytes() {
        return Err(RekeyError::NameKey);
    }
    if old.owner.public() == new.owner.public() || old.data.id() == new.data.id() {
        return Err(RekeyError::SameKeys);
    }
    Ok(())
}

/// The stage `root` shows (None: the chain has no root yet).
pub fn stage(
    root: Option<&RootAuthority>,
    old: &KeyFile,
    new: &KeyFile,
) -> Result<Stage, RekeyError> {
    let root = root.ok_or(RekeyError::NoRoot(old.chain))?;
    let (old_id, new_id) = (old.owner.public().id(), new.owner.public().id());
    if root.is_owner(&new_id) && root.role_of(&old_id).is_none() {
        Ok(Stage::Reseal)
    } else if root.is_owner(&old_id) || root.is_owner(&new_id) {
        Ok(Stage::Swap)
    } else {
        Err(RekeyError::NotAnOwner(old.chain))
    }
}

/// The transaction that swaps the owners: `root` without the old owner key (whatever its
/// role) and with the new one as an owner, signed by whichever of the two owns the chain now.
pub fn swap_owners(
    root: &RootAuthority,
    old: &KeyFile,
    new: &KeyFile,
) -> Result<Bytes, RekeyError> {
    let (old_pub, new_pub) = (old.owner.public(), new.owner.public());
    let signer = if root.is_owner(&old_pub.id()) {
        &old.owner
    } else if root.is_owner(&new_pub.id()) {
        &new.owner
    } else {
        return Err(RekeyError::NotAnOwner(old.chain));
    };
    let mut tx = Transaction::new(old.chain, signer.public());
    tx.ops
        .push(Op::SetRoot(root.owner_replaced(old_pub, new_pub)));
    Ok(Bytes::from(tx.sign(signer).encode()))
}

/// Produces the transactions that seal a frozen chain's records again under the new data
/// key, signed by the new owner: every live record whose payload is under the old data key,
/// or whose write authority names the old owner key.
pub struct Resealer<'f, 'c> {
    frozen: &'f Frozen<'c>,
    old: &'f KeyFile,
    new: &'f KeyFile,
    /// Indexes into the frozen records still to write.
    todo: Vec<usize>,
    next: usize,
    /// One buffer for every payload's plaintext.
    plain: Vec<u8>,
}

impl std::fmt::Debug for Resealer<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resealer")
            .field("records", &self.todo.len())
            .field("next", &self.next)
            .finish()
    }
}

impl<'f, 'c> Resealer<'f, 'c> {
    /// The records of `frozen` that still need the new keys. A payload under a data key
    /// neither key file holds is refused here, before anything is written.
    pub fn new(
        frozen: &'f Frozen<'c>,
        old: &'f KeyFile,
        new: &'f KeyFile,
    ) -> Result<Self, RekeyError> {
        check_pair(old, new)?;
        let (old_data, new_data) = (old.data.id(), new.data.id());
        let old_owner = old.owner.public().id();
        let mut todo = Vec::new();
        for (i, r) in frozen.records.iter().enumerate() {
            let sealed = r.header.data_key;
            let names_old = matches!(&r.write, WriteAuthority::Keys(ks) if ks.contains(&old_owner));
            if sealed == old_data || names_old {
                todo.push(i);
            } else if sealed != new_data && sealed != KeyId::default() {
                return Err(RekeyError::ForeignKey {
                    key: r.key,
                    data_key: sealed,
                });
            }
        }
        Ok(Self {
            frozen,
            old,
            new,
            todo,
            next: 0,
            plain: Vec::new(),
        })
    }

    /// Records to write.
    pub fn records(&self) -> usize {
        self.todo.len()
    }

    /// Records written so far.
    pub fn done(&self) -> usize {
        self.next
    }

    /// The next encoded, signed transaction, None when every record is written.
    pub fn next_tx(&mut self) -> Option<Result<Bytes, RekeyError>> {
        if self.next == self.todo.len() {
            return None;
        }
        // Preconditions lead a transaction's encoding: the batch is chosen first.
        let start = self.next;
        let mut end = start;
        let mut planned = 0u64;
        while end < self.todo.len() && planned < BATCH_BYTES as u64 && end - start < BATCH_RECORDS {
            planned += self.frozen.records[self.todo[end]].header.plain_len;
            end += 1;
        }
        let records = &self.frozen.records;
        let mut head = Transaction::new(self.new.chain, self.new.owner.public());
        head.preconditions = self.todo[start..end]
            .iter()
            .map(|&i| Precondition::AtVersion(records[i].key, records[i].version))
            .collect();
        let mut tx = TxEncoder::new(head, planned as usize + (1 << 20));
        let (old_owner, new_owner) = (self.old.owner.public().id(), self.new.owner.public().id());
        let mut plain = std::mem::take(&mut self.plain);
        for &i in &self.todo[start..end] {
            let r = &records[i];
            let write = r.write.replacing(old_owner, new_owner);
            let opener = if r.header.data_key == self.old.data.id() {
                &self.old.data
            } else if r.header.data_key == self.new.data.id() {
                // Only its authority changes; sealing it again is simplest.
                &self.new.data
            } else {
                tx.push(Op::put(&self.new.chain, r.key, r.parent, write, None, &[]));
                continue;
            };
            let len = match self.frozen.read_plain_into(r, opener, &mut plain) {
                Ok(len) => len,
                Err(e) => return Some(Err(e.into())),
            };
            tx.push_sealed(r.key, r.parent, write, &self.new.data, &plain[..len]);
        }
        self.next = end;
        self.plain = plain;
        Some(Ok(tx.finish(&self.new.owner).1))
    }
}
