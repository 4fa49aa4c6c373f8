//! Identifiers. All are full-width: 128-bit random ids for chains and records, 256-bit BLAKE3
//! digests for keys and transactions (no truncated hashes anywhere).

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Width of the identifier in bytes.
            pub const LEN: usize = $len;

            /// Lower-case hex form, as used in logs, file names and the CLI.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses the form produced by [`Self::to_hex`].
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.to_hex()[..12])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

id_type!(
    /// Identifies a chain (one volume). Random at creation.
    ChainId,
    16
);
id_type!(
    /// Identifies a record inside a chain. Random, or a keyed hash for name-derived keys.
    RecordKey,
    16
);
id_type!(
    /// BLAKE3 of an ed25519 public key, or of a data key's derivation context.
    KeyId,
    32
);
id_type!(
    /// BLAKE3 of a transaction's canonical signed bytes; what the author signs.
    TxHash,
    32
);

impl ChainId {
    /// A fresh random chain id.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl RecordKey {
    /// A fresh random record key.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Builds a key from a 64-bit number (convenient for tests and well-known records).
    pub fn from_u128(v: u128) -> Self {
        Self(v.to_le_bytes())
    }
}
