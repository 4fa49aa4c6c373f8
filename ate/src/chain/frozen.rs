//! A chain's records as of one index, readable while the chain moves on: what a copy of a
//! volume (a clone, a snapshot) is taken from.

use super::{Chain, ChainError};
use crate::authority::{RootAuthority, WriteAuthority};
use crate::crypto::DataKey;
use crate::ids::RecordKey;
use crate::redo::Location;
use crate::tx::RecordHeader;
use crate::validate::ChainState;

/// A live record of a [`Frozen`] chain.
#[derive(Clone, Debug)]
pub struct LiveRecord {
    /// The record.
    pub key: RecordKey,
    /// Its version (tombstones count): what a write conditional on it not having changed
    /// names.
    pub version: u64,
    /// Its parent.
    pub parent: Option<RecordKey>,
    /// Its write authority.
    pub write: WriteAuthority,
    /// Its header.
    pub header: RecordHeader,
    payload: Option<(Location, usize)>,
}

/// The live records of a chain at [`Frozen::index`]. Later commits do not show; compaction
/// waits until this drops (it would move the payloads the entries point at).
pub struct Frozen<'a> {
    chain: &'a Chain,
    _no_compaction: parking_lot::MutexGuard<'a, ()>,
    /// The chain index the records are as of.
    pub index: u64,
    /// The root authority at that index.
    pub root: Option<RootAuthority>,
    /// Live records (tombstones left out), in key order.
    pub records: Vec<LiveRecord>,
}

impl std::fmt::Debug for Frozen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frozen")
            .field("index", &self.index)
            .field("records", &self.records.len())
            .finish()
    }
}

impl Chain {
    /// The live records as of the last index in the view.
    pub fn frozen(&self) -> Frozen<'_> {
        let guard = self.shared.compacting.lock();
        let view = self.shared.view.read();
        let mut records: Vec<LiveRecord> = view
            .records()
            .filter_map(|(k, e)| {
                Some(LiveRecord {
                    key: *k,
                    version: e.version,
                    parent: e.parent,
                    write: e.write.clone(),
                    header: e.header(*k)?,
                    payload: e.payload,
                })
            })
            .collect();
        records.sort_by_key(|r| r.key);
        Frozen {
            chain: self,
            _no_compaction: guard,
            index: view.last_index(),
            root: view.root().cloned(),
            records,
        }
    }
}

impl Frozen<'_> {
    /// The payload of `record` as it is stored (sealed) into the front of `buf` (grown when
    /// too short); returns its length, 0 for a record without payload.
    pub fn read_sealed_into(
        &self,
        record: &LiveRecord,
        buf: &mut Vec<u8>,
    ) -> Result<usize, ChainError> {
        let Some((loc, len)) = record.payload.filter(|(_, len)| *len > 0) else {
            return Ok(0);
        };
        if buf.len() < len {
            buf.resize(len, 0);
        }
        self.chain.shared.files.read_into(loc, &mut buf[..len])?;
        Ok(len)
    }

    /// Opens the payload of `record` (one of [`Self::records`]) with `data_key` into the
    /// front of `buf` (grown when too short, never shrunk, so one buffer serves a whole
    /// copy); returns the plaintext's length, 0 for a record without payload.
    pub fn read_plain_into(
        &self,
        record: &LiveRecord,
        data_key: &DataKey,
        buf: &mut Vec<u8>,
    ) -> Result<usize, ChainError> {
        self.chain.open_payload_into(
            &record.key,
            &record.header,
            record.payload,
            data_key,
            buf,
            0,
        )
    }
}
