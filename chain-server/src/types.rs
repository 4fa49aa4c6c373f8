//! Every Raft type choice of a partition, in one place, and the commands it replicates.

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// A partition's Raft types.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_data::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of one partition.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<u64>;

/// What a partition replicates. Transactions travel as their `ate` encoding, validated before
/// they are proposed and again (statefully) when applied, so every replica decides alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a chain with a quota; `tx` is its genesis (it must set the root authority).
    Create {
        /// Chain id.
        chain: [u8; 16],
        /// Bytes the chain may hold.
        quota: u64,
        /// The genesis transaction.
        tx: bytes::Bytes,
    },
    /// Appends a transaction to a chain.
    Commit {
        /// Chain id.
        chain: [u8; 16],
        /// The transaction. `Bytes` serializes as bytes, not a sequence of u8 (the same
        /// postcard encoding as `serde_bytes`, copied at once instead of byte by byte: the
        /// leader spent most of its CPU there replicating 8 MiB commits), and clones share
        /// it: the recent entries the log keeps in memory are handed out without a copy.
        /// Decoded from a Raft message, it is a slice of the message (`shared_bytes`).
        #[serde(deserialize_with = "crate::shared_bytes::deserialize")]
        tx: bytes::Bytes,
        /// The writer session it was committed in: a subscription of that session gets it
        /// back by hash only (proto/chain.proto).
        session: Option<[u8; 16]>,
        /// The transaction's hash, as the leader computed it when it checked the transaction
        /// before proposing it: a replica applying the entry, and every replay of the log,
        /// validates against it instead of hashing every byte again (each follower spent a
        /// seventh of its CPU there in a sequential write). Clients check what they receive
        /// themselves, whatever a server says. `None` in entries logged before it was carried.
        /// Not in the postcard encoding: it travels beside it (`carried_hash`), so replicas of
        /// earlier versions still read the Raft messages of this one.
        #[serde(skip)]
        hash: Option<[u8; 32]>,
    },
    /// Deletes a chain and everything in it.
    Delete {
        /// Chain id.
        chain: [u8; 16],
    },
    /// Sets a chain's quota (not below the bytes it holds).
    SetQuota {
        /// Chain id.
        chain: [u8; 16],
        /// Bytes the chain may hold from now on.
        quota: u64,
    },
    /// Asks every replica to snapshot the partition past this entry and to drop the log up
    /// to it (`log_bound`): the chain's old record versions leave the disks.
    Compact {
        /// Chain id (its owner asked).
        chain: [u8; 16],
    },
}

impl Command {
    /// The chain the command is about.
    pub fn chain(&self) -> ate::ChainId {
        match self {
            Command::Create { chain, .. }
            | Command::Commit { chain, .. }
            | Command::Delete { chain }
            | Command::SetQuota { chain, .. }
            | Command::Compact { chain } => ate::ChainId(*chain),
        }
    }
}

/// What applying a command did. Every replica computes the same outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied; the chain's index of the transaction (0 for a delete, the chain's last index
    /// for a quota).
    Applied {
        /// Chain index.
        index: u64,
    },
    /// Not applied, and why (a precondition, authority, quota or a missing chain).
    Refused {
        /// What kind of refusal.
        kind: Refusal,
        /// For people.
        reason: String,
    },
}

/// Why a command had no effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The transaction is malformed.
    Invalid,
    /// The author may not do this (authority, ownership, signature).
    Unauthorized,
    /// A precondition did not hold (a racing writer won).
    Precondition,
    /// The chain does not exist.
    NoChain,
    /// The chain exists already.
    Exists,
    /// The chain's quota is used up.
    Quota,
    /// A quota below the bytes the chain already holds.
    BelowUsage,
}
