//! ate: a signed, encrypted, crash-safe event log; the datastore under atefs.
//!
//! Map of the crate, bottom up:
//! - [`ids`], [`codec`]: identifiers and bounded little-endian encoding.
//! - [`crypto`]: ed25519 over BLAKE3 digests, AES-256-GCM payloads (XChaCha20-Poly1305 in
//!   format 1), keyed hashes.
//! - [`authority`], [`tx`]: the authority tree and signed transactions.
//! - [`validate`]: the one validator clients and servers share.
//! - [`storage`]: the I/O backend trait (file, memory, fault injection).
//! - [`redo`]: segments of CRC-framed entries, recovery, snapshots.
//! - [`view`]: the materialized view (latest versions, children).
//! - [`chain`]: a local chain with group commit and subscriptions.
//! - [`keyfile`]: the key envelope of a volume.
//! - [`copy`]: a chain's live records copied into a new chain under other keys.
//! - [`rekey`]: a chain's keys changed in place (owner swapped, records sealed again).
//!
//! ate knows nothing of FUSE, gRPC servers or Kubernetes.

pub mod authority;
pub mod backup;
pub mod chain;
pub mod codec;
pub mod copy;
pub mod crypto;
pub mod ids;
pub mod keyfile;
mod queue;
pub mod redo;
pub mod rekey;
#[cfg(feature = "remote")]
pub mod remote;
pub mod storage;
pub mod tx;
pub mod upstream;
pub mod validate;
pub mod view;

pub use authority::{Role, RootAuthority, WriteAuthority};
pub use chain::{Chain, ChainError, ChainOptions, ChainStats, CommitWatch, Receipt, Subscription};
pub use crypto::{Cipher, DataKey, NameKey, PublicKey, SigningKey};
pub use ids::{ChainId, KeyId, RecordKey, TxHash};
pub use keyfile::KeyFile;
pub use tx::{Op, Precondition, RecordHeader, Skeleton, Transaction};
pub use upstream::{Upstream, UpstreamError};
pub use validate::ValidationError;
