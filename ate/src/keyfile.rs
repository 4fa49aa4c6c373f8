//! The key envelope: the secrets of one volume, as stored in a key file (mode 0600) or in a
//! Kubernetes Secret. Chain servers never see it.
//!
//! ```text
//! 0   [u8;8]  magic "ATEKEYS\0"     12  [u8;16] chain id
//! 8   u16     format (1)            28  [u8;32] ed25519 signing key (owner)
//! 10  u16     reserved (0)          60  [u8;32] data key    92 [u8;32] name key
//! 124 [u8;32] BLAKE3 of bytes 0..124
//! ```

use crate::codec::{DecodeError, Reader};
use crate::crypto::{DataKey, NameKey, SigningKey};
use crate::ids::ChainId;
use std::path::Path;
use thiserror::Error;
use zeroize::Zeroizing;

/// Envelope size.
pub const KEYFILE_LEN: usize = 156;
const MAGIC: [u8; 8] = *b"ATEKEYS\0";

/// Why a key file could not be used.
#[derive(Debug, Error)]
pub enum KeyFileError {
    /// I/O on the file.
    #[error("key file {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a key file, or damaged.
    #[error("key file {path} is not valid: {reason}")]
    Invalid {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Readable by others than its owner.
    #[error("key file {path} has mode {mode:o}; run `chmod 600 {path}`")]
    Permissions {
        /// The path.
        path: String,
        /// Its mode.
        mode: u32,
    },
}

/// The secrets of a volume.
#[derive(Clone, Debug)]
pub struct KeyFile {
    /// The chain these keys belong to.
    pub chain: ChainId,
    /// The owner's signing key.
    pub owner: SigningKey,
    /// The data key sealing every payload.
    pub data: DataKey,
    /// The key of name-derived record keys.
    pub names: NameKey,
}

impl KeyFile {
    /// Fresh keys for a new chain.
    pub fn generate(chain: ChainId) -> Self {
        Self {
            chain,
            owner: SigningKey::generate(),
            data: DataKey::generate(),
            names: NameKey::generate(),
        }
    }

    /// Keys for a copy of this chain as `chain` (see [`crate::copy`]): a new owner and data
    /// key, so neither set opens or signs for the other chain, and the same name key, from
    /// which the records' keys derive.
    pub fn for_copy(&self, chain: ChainId) -> Self {
        Self {
            names: self.names.clone(),
            ..Self::generate(chain)
        }
    }

    /// Keys to replace these on the same chain ([`crate::rekey`]): a new owner and data key,
    /// the same chain and name key.
    pub fn rekeyed(&self) -> Self {
        Self {
            chain: self.chain,
            ..self.for_copy(self.chain)
        }
    }

    /// Encodes the envelope.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut b = Zeroizing::new(Vec::with_capacity(KEYFILE_LEN));
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&self.chain.0);
        b.extend_from_slice(&Zeroizing::new(self.owner.to_bytes())[..]);
        b.extend_from_slice(self.data.as_bytes());
        b.extend_from_slice(self.names.as_bytes());
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    /// Decodes an envelope.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != KEYFILE_LEN {
            return Err(DecodeError::Invalid {
                what: "key file length",
                value: bytes.len() as u64,
            });
        }
        let mut r = Reader::new(bytes);
        if r.array::<8>()? != MAGIC {
            return Err(DecodeError::Invalid {
                what: "key file magic",
                value: 0,
            });
        }
        let format = r.u16()?;
        if format != 1 {
            return Err(DecodeError::Invalid {
                what: "key file format",
                value: format.into(),
            });
        }
        let reserved = r.u16()?;
        if reserved != 0 {
            return Err(DecodeError::Invalid {
                what: "key file reserved",
                value: reserved.into(),
            });
        }
        let chain = ChainId(r.array()?);
        let owner = Zeroizing::new(r.array::<32>()?);
        let data = r.array::<32>()?;
        let names = r.array::<32>()?;
        let sum: [u8; 32] = r.array()?;
        if blake3::hash(&bytes[..124]).as_bytes() != &sum {
            return Err(DecodeError::Invalid {
                what: "key file checksum",
                value: 0,
            });
        }
        Ok(Self {
            chain,
            owner: SigningKey::from_bytes(&owner),
            data: DataKey::from_bytes(data),
            names: NameKey::from_bytes(names),
        })
    }

    /// Writes the envelope to `path` with mode 0600, atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = path.display().to_string();
        let io = |source| KeyFileError::Io {
            path: p.clone(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&self.encode()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }

    /// Reads an envelope, refusing files readable by group or others.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        use std::os::unix::fs::PermissionsExt;
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| KeyFileError::Io {
            path: p.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions { path: p, mode });
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyFileError::Io {
            path: p.clone(),
            source,
        })?);
        Self::decode(&bytes).map_err(|e| KeyFileError::Invalid {
            path: p,
            reason: e.to_string(),
        })
    }
}
