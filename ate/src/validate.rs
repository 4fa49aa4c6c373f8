//! The one validator, shared by clients and chain servers: format and size bounds, signature,
//! authority of the signing key over every touched record, and preconditions.
//!
//! Validation is split in two: [`check_stateless`] (format, bounds, signature) needs no chain
//! state and runs on the caller's thread, in parallel; [`check_stateful`] (authority,
//! preconditions) runs in commit order against the current state.

use crate::authority::{RootAuthority, WriteAuthority};
use crate::crypto::{Cipher, CryptoError, SEAL_OVERHEAD};
use crate::ids::{ChainId, KeyId, RecordKey, TxHash};
use crate::tx::{Op, Precondition, Skeleton, Transaction, MAX_AUTH_KEYS, MAX_PAYLOAD};
use std::collections::{HashMap, HashSet};
use thiserror::Error;

/// Deepest parent chain the authority walk follows (guards against cycles).
pub const MAX_DEPTH: usize = 4096;

/// Why a transaction was refused. The chain is unchanged in every case.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ValidationError {
    /// Signature missing (all zero) or not made by the author key.
    #[error("signature: {0}")]
    Signature(#[from] CryptoError),
    /// The transaction names another chain.
    #[error("transaction for chain {got} submitted to chain {expected}")]
    WrongChain {
        /// This chain.
        expected: ChainId,
        /// The transaction's.
        got: ChainId,
    },
    /// The transaction does nothing.
    #[error("transaction has no operations")]
    Empty,
    /// The transaction exceeds a bound of the format.
    #[error("transaction beyond the format's bounds: {0}")]
    TooLarge(&'static str),
    /// A record appears twice in one transaction.
    #[error("record {0} is touched twice in one transaction")]
    DuplicateRecord(RecordKey),
    /// A payload is larger than the format allows or inconsistent with its header.
    #[error("record {key}: {reason}")]
    BadPayload {
        /// The record.
        key: RecordKey,
        /// What is wrong.
        reason: &'static str,
    },
    /// An authority list is malformed.
    #[error("authority: {0}")]
    BadAuthority(&'static str),
    /// The chain has no root authority yet and this is not a genesis transaction.
    #[error("chain has no root authority; the first transaction must set one")]
    NoGenesis,
    /// The author may not write the record.
    #[error("key {author} has no write authority over record {key}")]
    NotAuthorized {
        /// Signing key id.
        author: KeyId,
        /// Record touched.
        key: RecordKey,
    },
    /// Only owners may change the root authority.
    #[error("key {0} is not an owner and cannot change the root authority")]
    NotOwner(KeyId),
    /// The parent of a new version does not exist.
    #[error("parent {parent} of record {key} does not exist")]
    MissingParent {
        /// The record.
        key: RecordKey,
        /// Its missing parent.
        parent: RecordKey,
    },
    /// Delete of a record with no live version.
    #[error("record {0} does not exist")]
    NoSuchRecord(RecordKey),
    /// A precondition does not hold.
    #[error("precondition failed: {0:?}")]
    Precondition(Precondition),
    /// The parent tree is deeper than MAX_DEPTH or has a cycle.
    #[error("authority walk from {0} exceeded {MAX_DEPTH} levels")]
    TooDeep(RecordKey),
}

/// What the validator needs to know about a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordState {
    /// Latest version (tombstones count).
    pub version: u64,
    /// True when the latest version is a tombstone.
    pub deleted: bool,
    /// Parent in the authority tree.
    pub parent: Option<RecordKey>,
    /// Authority stored on the record.
    pub write: WriteAuthority,
}

/// Read access to a chain's state, implemented by the materialized view.
pub trait ChainState {
    /// The chain's id.
    fn chain_id(&self) -> ChainId;
    /// The root authority, or None before genesis.
    fn root(&self) -> Option<&RootAuthority>;
    /// The latest state of a record.
    fn record(&self, key: &RecordKey) -> Option<RecordState>;
}

/// Checks everything that does not depend on chain state; returns the transaction hash.
pub fn check_stateless(tx: &Transaction) -> Result<TxHash, ValidationError> {
    let h = tx.hash();
    check_stateless_hashed(tx, &h)?;
    Ok(h)
}

/// [`check_stateless`] for a transaction whose hash the caller has computed already (hashing
/// reads every payload byte: a replica needs the hash before validating, to find retries).
pub fn check_stateless_hashed(tx: &Transaction, hash: &TxHash) -> Result<(), ValidationError> {
    check_format(tx)?;
    check_signature(tx, hash)
}

fn check_signature(tx: &Transaction, hash: &TxHash) -> Result<(), ValidationError> {
    if tx.signature == [0u8; 64] {
        return Err(ValidationError::Signature(CryptoError::BadSignature(
            tx.author.id(),
        )));
    }
    Ok(tx.author.verify(&hash.0, &tx.signature)?)
}

/// Format and bound checks only (no signature): for a transaction this process signed itself.
pub fn check_format(tx: &Transaction) -> Result<(), ValidationError> {
    check_format_with(tx, |_, payload| payload.len())
}

/// [`check_stateless_hashed`] for a transaction decoded without its payloads: the same
/// checks, the payload lengths taken from where they lie in the encoding.
pub fn check_skeleton(sk: &Skeleton) -> Result<(), ValidationError> {
    check_skeleton_format(sk)?;
    check_signature(&sk.tx, &sk.hash)
}

/// [`check_format`] for a transaction decoded without its payloads (or encoded by this
/// process: [`crate::tx::TxEncoder`]).
pub fn check_skeleton_format(sk: &Skeleton) -> Result<(), ValidationError> {
    check_format_with(&sk.tx, |i, _| sk.payloads.get(i).map_or(0, |(_, len)| *len))
}

/// [`validate_hashed`] for a transaction decoded without its payloads.
pub fn validate_skeleton<S: ChainState + ?Sized>(
    state: &S,
    sk: &Skeleton,
) -> Result<(), ValidationError> {
    check_skeleton(sk)?;
    check_stateful(state, &sk.tx)
}

/// `payload_len(i, payload)`: the length of the i-th Put's payload.
fn check_format_with(
    tx: &Transaction,
    payload_len: impl Fn(usize, &[u8]) -> usize,
) -> Result<(), ValidationError> {
    if tx.ops.is_empty() {
        return Err(ValidationError::Empty);
    }
    // A decoded transaction is within these bounds; a locally built one is checked here so
    // the log never holds what replay would refuse to decode.
    if tx.ops.len() > crate::tx::MAX_OPS {
        return Err(ValidationError::TooLarge("more than MAX_OPS operations"));
    }
    if tx.preconditions.len() > crate::tx::MAX_PRECONDITIONS {
        return Err(ValidationError::TooLarge(
            "more than MAX_PRECONDITIONS preconditions",
        ));
    }
    let mut seen = HashSet::with_capacity(tx.ops.len());
    let mut roots = 0;
    let mut puts = 0;
    for op in &tx.ops {
        match op {
            Op::Put {
                header,
                write,
                payload,
            } => {
                let payload_len = payload_len(puts, payload);
                puts += 1;
                if !seen.insert(header.key) {
                    return Err(ValidationError::DuplicateRecord(header.key));
                }
                let bad = |reason| ValidationError::BadPayload {
                    key: header.key,
                    reason,
                };
                if payload_len > MAX_PAYLOAD {
                    return Err(bad("payload exceeds MAX_PAYLOAD"));
                }
                let expect = payload_len.saturating_sub(SEAL_OVERHEAD);
                if payload_len != 0 && payload_len < SEAL_OVERHEAD {
                    return Err(bad("payload shorter than nonce and tag"));
                }
                if header.plain_len != expect as u64 {
                    return Err(bad("header length does not match payload"));
                }
                if (payload_len == 0) != (header.data_key == KeyId::default()) {
                    return Err(bad(
                        "a payload needs a data key, and only a payload may name one",
                    ));
                }
                if payload_len == 0 && header.cipher != Cipher::default() {
                    return Err(bad("only a payload may name a cipher"));
                }
                if let WriteAuthority::Keys(ks) = write {
                    check_key_list(ks)?;
                }
            }
            Op::Delete { key } => {
                if !seen.insert(*key) {
                    return Err(ValidationError::DuplicateRecord(*key));
                }
            }
            Op::SetRoot(root) => {
                roots += 1;
                if root.keys.is_empty() || root.keys.len() > MAX_AUTH_KEYS {
                    return Err(ValidationError::BadAuthority("root key count out of range"));
                }
                if root.keys.windows(2).any(|w| w[0].0 >= w[1].0) {
                    return Err(ValidationError::BadAuthority(
                        "root keys not sorted and unique",
                    ));
                }
                if !root.has_owner() {
                    return Err(ValidationError::BadAuthority(
                        "root authority without an owner",
                    ));
                }
            }
        }
    }
    if roots > 1 {
        return Err(ValidationError::BadAuthority("more than one root change"));
    }
    Ok(())
}

fn check_key_list(ks: &[KeyId]) -> Result<(), ValidationError> {
    if ks.is_empty() || ks.len() > MAX_AUTH_KEYS {
        return Err(ValidationError::BadAuthority(
            "record key count out of range",
        ));
    }
    if ks.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ValidationError::BadAuthority(
            "record keys not sorted and unique",
        ));
    }
    Ok(())
}

/// State as seen part-way through a transaction: the chain plus the ops already checked.
struct Overlay<'a, S: ChainState + ?Sized> {
    base: &'a S,
    root: Option<RootAuthority>,
    changed: HashMap<RecordKey, RecordState>,
}

impl<S: ChainState + ?Sized> Overlay<'_, S> {
    fn record(&self, key: &RecordKey) -> Option<RecordState> {
        match self.changed.get(key) {
            Some(s) => Some(s.clone()),
            None => self.base.record(key),
        }
    }

    fn root(&self) -> Option<&RootAuthority> {
        self.root.as_ref().or_else(|| self.base.root())
    }

    /// May `author` write under `key`'s effective authority? `key` None means top level.
    fn may_write(&self, author: &KeyId, start: Option<RecordKey>) -> Result<bool, ValidationError> {
        let Some(root) = self.root() else {
            return Err(ValidationError::NoGenesis);
        };
        if root.is_owner(author) {
            return Ok(true);
        }
        let mut cur = start;
        for _ in 0..MAX_DEPTH {
            let Some(key) = cur else {
                return Ok(root.is_writer(author));
            };
            let Some(state) = self.record(&key) else {
                return Ok(root.is_writer(author));
            };
            if let WriteAuthority::Keys(ks) = &state.write {
                return Ok(ks.binary_search(author).is_ok());
            }
            cur = state.parent;
        }
        Err(ValidationError::TooDeep(start.unwrap_or_default()))
    }
}

/// Checks authority and preconditions against `state`, in op order.
pub fn check_stateful<S: ChainState + ?Sized>(
    state: &S,
    tx: &Transaction,
) -> Result<(), ValidationError> {
    if tx.chain != state.chain_id() {
        return Err(ValidationError::WrongChain {
            expected: state.chain_id(),
            got: tx.chain,
        });
    }
    for p in &tx.preconditions {
        let ok = match p {
            Precondition::Absent(k) => state.record(k).is_none_or(|s| s.deleted),
            Precondition::AtVersion(k, v) => state.record(k).is_some_and(|s| s.version == *v),
        };
        if !ok {
            return Err(ValidationError::Precondition(*p));
        }
    }
    let author = tx.author.id();
    let mut ov = Overlay {
        base: state,
        root: None,
        changed: HashMap::new(),
    };
    for op in &tx.ops {
        match op {
            Op::SetRoot(root) => {
                let allowed = match ov.root() {
                    // Genesis: the author must be an owner of the authority it installs.
                    None => root.is_owner(&author),
                    Some(cur) => cur.is_owner(&author),
                };
                if !allowed {
                    return Err(ValidationError::NotOwner(author));
                }
                ov.root = Some(root.clone());
            }
            Op::Put { header, write, .. } => {
                let key = header.key;
                let existing = ov.record(&key);
                if let Some(parent) = header.parent {
                    if ov.record(&parent).is_none_or(|p| p.deleted) {
                        return Err(ValidationError::MissingParent { key, parent });
                    }
                }
                // An existing record is governed by its own current authority; a new one (or a
                // move) also needs authority over the destination parent.
                let mut ok = match &existing {
                    Some(_) => ov.may_write(&author, Some(key))?,
                    None => true,
                };
                if existing.as_ref().is_none_or(|e| e.parent != header.parent) {
                    ok &= ov.may_write(&author, header.parent)?;
                }
                if !ok {
                    return Err(ValidationError::NotAuthorized { author, key });
                }
                let version = existing.map_or(1, |e| e.version + 1);
                ov.changed.insert(
                    key,
                    RecordState {
                        version,
                        deleted: false,
                        parent: header.parent,
                        write: write.clone(),
                    },
                );
            }
            Op::Delete { key } => {
                let Some(existing) = ov.record(key).filter(|s| !s.deleted) else {
                    return Err(ValidationError::NoSuchRecord(*key));
                };
                if !ov.may_write(&author, Some(*key))? {
                    return Err(ValidationError::NotAuthorized { author, key: *key });
                }
                ov.changed.insert(
                    *key,
                    RecordState {
                        version: existing.version + 1,
                        deleted: true,
                        ..existing
                    },
                );
            }
        }
    }
    Ok(())
}

/// Both checks, in order.
pub fn validate<S: ChainState + ?Sized>(
    state: &S,
    tx: &Transaction,
) -> Result<TxHash, ValidationError> {
    let h = check_stateless(tx)?;
    check_stateful(state, tx)?;
    Ok(h)
}

/// [`validate`] with the transaction's hash already computed.
pub fn validate_hashed<S: ChainState + ?Sized>(
    state: &S,
    tx: &Transaction,
    hash: &TxHash,
) -> Result<(), ValidationError> {
    check_stateless_hashed(tx, hash)?;
    check_stateful(state, tx)
}
