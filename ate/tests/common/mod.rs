//! Helpers shared by the ate integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use ate::storage::{MemStorage, Storage};
use ate::{
    Chain, ChainId, ChainOptions, DataKey, Op, RecordKey, RootAuthority, SigningKey, Transaction,
    WriteAuthority,
};
use std::sync::Arc;

pub struct Fixture {
    pub chain_id: ChainId,
    pub owner: SigningKey,
    pub data: DataKey,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            chain_id: ChainId::from_hex("00112233445566778899aabbccddeeff").unwrap(),
            owner: SigningKey::generate(),
            data: DataKey::generate(),
        }
    }

    /// The fixture of a volume's keys: its chain, owner key and data key.
    pub fn of(keys: &ate::KeyFile) -> Self {
        Self {
            chain_id: keys.chain,
            owner: keys.owner.clone(),
            data: keys.data.clone(),
        }
    }

    pub fn genesis(&self, root: RootAuthority) -> Transaction {
        let mut tx = Transaction::new(self.chain_id, self.owner.public());
        tx.ops.push(Op::SetRoot(root));
        tx.sign(&self.owner)
    }

    pub fn put(
        &self,
        signer: &SigningKey,
        key: RecordKey,
        parent: Option<RecordKey>,
        data: &[u8],
    ) -> Transaction {
        let mut tx = Transaction::new(self.chain_id, signer.public());
        tx.ops.push(Op::put(
            &self.chain_id,
            key,
            parent,
            WriteAuthority::Inherit,
            Some(&self.data),
            data,
        ));
        tx.sign(signer)
    }

    pub fn open(&self, storage: &Arc<dyn Storage>) -> Chain {
        Chain::open(
            storage.clone(),
            Some(self.chain_id),
            ChainOptions::default(),
            |_, _| {},
        )
        .unwrap()
        .0
    }

    /// Commits top-level record `key` sealed under a data key of its own, one no key file of
    /// the test holds.
    pub fn put_under_foreign_key(&self, chain: &Chain, key: RecordKey) {
        let foreign = Fixture {
            chain_id: self.chain_id,
            owner: self.owner.clone(),
            data: DataKey::generate(),
        };
        chain
            .commit(foreign.put(&self.owner, key, None, b"x"))
            .unwrap();
    }

    /// A memory-backed chain with genesis committed.
    pub fn mem_chain(&self) -> (MemStorage, Chain) {
        let mem = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(mem.clone());
        let chain = self.open(&storage);
        chain
            .commit(self.genesis(RootAuthority::single_owner(self.owner.public())))
            .unwrap();
        (mem, chain)
    }
}

impl Fixture {
    /// A chain on disk in `dir` with genesis committed, and its storage (to reopen it).
    pub fn disk_chain(&self, dir: &std::path::Path) -> (Arc<dyn Storage>, Chain) {
        let storage: Arc<dyn Storage> = Arc::new(ate::storage::FileStorage::new(dir).unwrap());
        let chain = self.open(&storage);
        chain
            .commit(self.genesis(RootAuthority::single_owner(self.owner.public())))
            .unwrap();
        (storage, chain)
    }

    /// Puts `payloads` under keys `first..` in one transaction.
    pub fn put_all(&self, first: u128, payloads: &[Vec<u8>]) -> Transaction {
        let mut tx = Transaction::new(self.chain_id, self.owner.public());
        for (i, p) in payloads.iter().enumerate() {
            tx.ops.push(Op::put(
                &self.chain_id,
                key(first + i as u128),
                None,
                WriteAuthority::Inherit,
                Some(&self.data),
                p,
            ));
        }
        tx.sign(&self.owner)
    }
}

pub fn key(n: u128) -> RecordKey {
    RecordKey::from_u128(n)
}

/// Plaintext of every live record with a payload, sorted by key.
pub fn contents(
    chain: &Chain,
    keys: impl IntoIterator<Item = RecordKey>,
    data: &DataKey,
) -> Vec<(RecordKey, Vec<u8>)> {
    let mut out: Vec<_> = keys
        .into_iter()
        .filter_map(|k| chain.read_plain(&k, data).unwrap().map(|(_, p)| (k, p)))
        .collect();
    out.sort();
    out
}
