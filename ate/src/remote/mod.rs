//! The client side of chain-server (feature `remote`): the generated gRPC code, shared with the
//! server, and a client that finds the leader, retries and resumes subscriptions.

/// Generated gRPC code (proto/chain.proto and proto/raft.proto).
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    /// The client API.
    pub mod chain {
        tonic::include_proto!("atefs.chain.v1");
    }
    /// The replica transport.
    pub mod raft {
        tonic::include_proto!("atefs.raft.v1");
    }
}

use crate::crypto::SigningKey;
use crate::ids::ChainId;

/// The signed first transaction of a new chain (`Create`'s genesis): `owner` as its single
/// root owner.
pub fn genesis(chain: ChainId, owner: &SigningKey) -> Vec<u8> {
    let mut tx = crate::tx::Transaction::new(chain, owner.public());
    tx.ops.push(crate::tx::Op::SetRoot(
        crate::authority::RootAuthority::single_owner(owner.public()),
    ));
    tx.sign(owner).encode()
}

/// What a reader key signs to subscribe to `chain` from `from`, given the server's `nonce`.
pub fn subscribe_digest(chain: &ChainId, nonce: &[u8], from: u64) -> [u8; 32] {
    proof_digest(b"atefs-subscribe", chain, nonce, from)
}

/// What a reader key signs to fetch `chain`'s snapshot image, given the server's `nonce`.
pub fn snapshot_digest(chain: &ChainId, nonce: &[u8]) -> [u8; 32] {
    proof_digest(b"atefs-fetch-snapshot", chain, nonce, 0)
}

/// What an owner key signs to delete `chain`, given the server's `nonce`.
pub fn delete_digest(chain: &ChainId, nonce: &[u8]) -> [u8; 32] {
    proof_digest(b"atefs-delete", chain, nonce, 0)
}

/// What an owner key signs to ask the replicas of `chain` to compact it now, given the
/// server's `nonce`.
pub fn compact_digest(chain: &ChainId, nonce: &[u8]) -> [u8; 32] {
    proof_digest(b"atefs-compact", chain, nonce, 0)
}

/// What an owner key signs to set `chain`'s quota to `quota` bytes, given the server's
/// `nonce`.
pub fn quota_digest(chain: &ChainId, nonce: &[u8], quota: u64) -> [u8; 32] {
    proof_digest(b"atefs-set-quota", chain, nonce, quota)
}

fn proof_digest(context: &[u8], chain: &ChainId, nonce: &[u8], n: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(context);
    h.update(&chain.0);
    h.update(&(nonce.len() as u64).to_le_bytes());
    h.update(nonce);
    h.update(&n.to_le_bytes());
    *h.finalize().as_bytes()
}

mod client;
pub mod codec;
pub mod wire;
pub use client::{
    CaError, Event, RemoteClient, RemoteError, RemoteOptions, Session, Subscription, KEEPALIVE,
    LEADER_HEADER, SERVER_NAME,
};

mod backup;
pub use backup::{
    backup_chain, backup_chain_to, restore_chain, RemoteBackupError, RestoreReport, RESTORING,
};
mod copy;
pub use copy::{copy_chain, CopyReport, RemoteCopyError};
mod follower;
mod incarnation;
mod pipe;
mod rekey;
pub use rekey::{refuse_in_use, rekey_chain, RekeyReport, RemoteRekeyError};
mod replica;
pub use replica::{open_remote, open_remote_in_session, QuotaReader, RemoteChain, ReplicaError};
