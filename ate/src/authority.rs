//! The authority tree: who may write which record.
//!
//! A chain's *root authority* lists ed25519 keys with a role. Owners may write everything and
//! change the root authority; writers may write anything not narrowed away from them; readers
//! may only subscribe. Any record may carry its own [`WriteAuthority`]: a list of key ids that
//! replaces the inherited one for the record and its descendants (narrowing or delegating).

use crate::crypto::PublicKey;
use crate::ids::KeyId;

/// What a root key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Role {
    /// Writes everything; changes the root authority.
    Owner = 1,
    /// Writes records whose effective authority includes the root writers.
    Writer = 2,
    /// Reads (subscribes) only.
    Reader = 3,
}

impl Role {
    /// Decodes the wire tag.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Owner),
            2 => Some(Self::Writer),
            3 => Some(Self::Reader),
            _ => None,
        }
    }
}

/// The keys fixed at chain creation, changeable only by an owner-signed transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootAuthority {
    /// Sorted by key, no duplicates (enforced by the validator).
    pub keys: Vec<(PublicKey, Role)>,
}

impl RootAuthority {
    /// An authority with one owner.
    pub fn single_owner(owner: PublicKey) -> Self {
        Self {
            keys: vec![(owner, Role::Owner)],
        }
    }
    /// Adds a key with a role, keeping the list sorted; replaces an existing role.
    pub fn with(mut self, key: PublicKey, role: Role) -> Self {
        self.keys.retain(|(k, _)| *k != key);
        self.keys.push((key, role));
        self.keys.sort();
        self
    }
    /// The role of a key id, if any.
    pub fn role_of(&self, id: &KeyId) -> Option<Role> {
        self.keys
            .iter()
            .find(|(k, _)| k.id() == *id)
            .map(|(_, r)| *r)
    }
    /// True when `id` is an owner.
    pub fn is_owner(&self, id: &KeyId) -> bool {
        self.role_of(id) == Some(Role::Owner)
    }
    /// True when `id` may write records that inherit the root authority.
    pub fn is_writer(&self, id: &KeyId) -> bool {
        matches!(self.role_of(id), Some(Role::Owner | Role::Writer))
    }
    /// True when `id` may read (any role reads).
    pub fn can_read(&self, id: &KeyId) -> bool {
        self.role_of(id).is_some()
    }
    /// This authority with `new` as an owner in `old`'s place (`old` gone, whatever its
    /// role): a copy's root, or the owners a rekey swaps.
    pub fn owner_replaced(&self, old: PublicKey, new: PublicKey) -> Self {
        let mut keys = self.keys.clone();
        keys.retain(|(k, _)| *k != old);
        RootAuthority { keys }.with(new, Role::Owner)
    }
    /// True when at least one owner remains (a chain without owners could never be repaired).
    pub fn has_owner(&self) -> bool {
        self.keys.iter().any(|(_, r)| *r == Role::Owner)
    }
}

/// Write authority attached to a record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WriteAuthority {
    /// Same as the parent (or the root writers for a record without parent).
    #[default]
    Inherit,
    /// Exactly these keys (plus the chain owners) for this record and its inheriting descendants.
    Keys(Vec<KeyId>),
}

impl WriteAuthority {
    /// The same authority with key `from` named `to` instead (a copy's or a rekey's new owner
    /// in the old one's place).
    pub fn replacing(&self, from: KeyId, to: KeyId) -> Self {
        match self {
            WriteAuthority::Inherit => WriteAuthority::Inherit,
            WriteAuthority::Keys(ids) => WriteAuthority::Keys(
                ids.iter()
                    .map(|k| if *k == from { to } else { *k })
                    .collect(),
            ),
        }
    }
}
