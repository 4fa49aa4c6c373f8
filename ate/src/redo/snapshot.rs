//! Snapshots: every record's latest version (tombstones included, so versions never go back and
//! `AtVersion` preconditions stay sound) as of one log index. Written to a temporary file,
//! fsynced and renamed, so a snapshot is either whole or absent; any damage is an error.

use super::frame::{encode_frame, FrameKind, FRAME_HEADER};
use super::recovery::{scan_frame, RecoveryVisitor, Scanned};
use super::segment::{FileHeader, FILE_HEADER, SNAPSHOT_MAGIC};
use super::{FileRef, Location, LogError};
use crate::authority::{RootAuthority, WriteAuthority};
use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::{ChainId, RecordKey};
use crate::storage::{Storage, StorageFile};
use crate::tx::{self, RecordHeader, MAX_PAYLOAD};
use std::sync::Arc;

/// One record as stored in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The record.
    pub key: RecordKey,
    /// Latest version.
    pub version: u64,
    /// Log index of the transaction that wrote it.
    pub index: u64,
    /// Parent.
    pub parent: Option<RecordKey>,
    /// Write authority.
    pub write: WriteAuthority,
    /// Header of a live version; None for a tombstone.
    pub header: Option<RecordHeader>,
    /// Sealed payload length (the bytes follow the record in the frame).
    pub payload_len: usize,
}

fn encode_record(rec: &SnapshotRecord, w: &mut Writer) {
    w.raw(&rec.key.0);
    w.u64(rec.version);
    w.u64(rec.index);
    match &rec.parent {
        None => w.u8(0),
        Some(p) => {
            w.u8(1);
            w.raw(&p.0);
        }
    }
    tx::encode_write_authority(&rec.write, w);
    match &rec.header {
        None => w.u8(0),
        Some(h) => {
            w.u8(1);
            tx::encode_header(h, w);
        }
    }
    w.u32(rec.payload_len as u32);
}

/// Decodes a record frame's metadata; returns it and the offset of the payload in the frame.
pub fn decode_snapshot_record(b: &[u8]) -> Result<(SnapshotRecord, usize), DecodeError> {
    let mut r = Reader::new(b);
    let key = RecordKey(r.array()?);
    let version = r.u64()?;
    let index = r.u64()?;
    let parent = match r.u8()? {
        0 => None,
        1 => Some(RecordKey(r.array()?)),
        v => {
            return Err(DecodeError::Invalid {
                what: "parent tag",
                value: v.into(),
            })
        }
    };
    let write = tx::decode_write_authority(&mut r)?;
    let header = match r.u8()? {
        0 => None,
        1 => Some(tx::decode_header(&mut r)?),
        v => {
            return Err(DecodeError::Invalid {
                what: "header tag",
                value: v.into(),
            })
        }
    };
    if header
        .as_ref()
        .is_some_and(|h| h.key != key || h.parent != parent)
    {
        // A view keeps one copy of the key and the parent (`view::Sealing`): a header
        // naming others could not be restored as written.
        return Err(DecodeError::Invalid {
            what: "snapshot record header (names another record or parent)",
            value: 0,
        });
    }
    let payload_len = r.count("snapshot payload", MAX_PAYLOAD)?;
    let at = r.pos();
    r.take(payload_len)?;
    r.finish()?;
    Ok((
        SnapshotRecord {
            key,
            version,
            index,
            parent,
            write,
            header,
            payload_len,
        },
        at,
    ))
}

/// Writes one snapshot file.
#[derive(Debug)]
pub struct SnapshotWriter {
    storage: Arc<dyn Storage>,
    tmp: String,
    last_index: u64,
    file: Arc<dyn StorageFile>,
    offset: u64,
    buf: Vec<u8>,
    count: u64,
}

impl SnapshotWriter {
    /// Starts a snapshot of `chain` as of `last_index`.
    pub fn create(
        storage: Arc<dyn Storage>,
        chain: ChainId,
        last_index: u64,
        root: Option<&RootAuthority>,
    ) -> Result<Self, LogError> {
        let tmp = format!("{}.tmp", FileRef::Snapshot(last_index).name());
        let file = storage
            .open(&tmp, true)
            .map_err(LogError::io("create", &tmp))?;
        file.truncate(0).map_err(LogError::io("truncate", &tmp))?;
        let mut buf = FileHeader {
            magic: SNAPSHOT_MAGIC,
            index: last_index,
            chain,
        }
        .encode()
        .to_vec();
        let mut w = Writer::default();
        w.u64(last_index);
        match root {
            None => w.u8(0),
            Some(r) => {
                w.u8(1);
                tx::encode_root_authority(r, &mut w);
            }
        }
        encode_frame(FrameKind::SnapshotHeader, &[&w.into_vec()], &mut buf);
        Ok(Self {
            storage,
            tmp,
            last_index,
            file,
            offset: 0,
            buf,
            count: 0,
        })
    }

    /// Adds a record; returns where its payload will be.
    pub fn add(&mut self, rec: &SnapshotRecord, payload: &[u8]) -> Result<Location, LogError> {
        let mut w = Writer::default();
        let rec = SnapshotRecord {
            payload_len: payload.len(),
            ..rec.clone()
        };
        encode_record(&rec, &mut w);
        let meta = w.into_vec();
        let at = self.offset + (self.buf.len() + FRAME_HEADER + meta.len()) as u64;
        encode_frame(FrameKind::SnapshotRecord, &[&meta, payload], &mut self.buf);
        self.count += 1;
        if self.buf.len() > 4 << 20 {
            self.flush()?;
        }
        Ok(Location {
            file: FileRef::Snapshot(self.last_index),
            offset: at,
        })
    }

    fn flush(&mut self) -> Result<(), LogError> {
        self.file
            .write_at(&self.buf, self.offset)
            .map_err(LogError::io("write", &self.tmp))?;
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Seals the file durably under its final name and returns it opened.
    pub fn finish(mut self) -> Result<Arc<dyn StorageFile>, LogError> {
        encode_frame(
            FrameKind::SnapshotEnd,
            &[&self.count.to_le_bytes()],
            &mut self.buf,
        );
        self.flush()?;
        self.file
            .sync_data()
            .map_err(LogError::io("fdatasync", &self.tmp))?;
        let name = FileRef::Snapshot(self.last_index).name();
        self.storage
            .rename(&self.tmp, &name)
            .map_err(LogError::io("rename", &self.tmp))?;
        self.storage
            .sync_dir()
            .map_err(LogError::io("fsync", "."))?;
        self.storage
            .open(&name, false)
            .map_err(LogError::io("open", &name))
    }
}

/// Reads a whole snapshot into `visitor`; returns its chain. Any damage is an error.
pub fn read_snapshot(
    file: &dyn StorageFile,
    last_index: u64,
    visitor: &mut dyn RecoveryVisitor,
) -> Result<ChainId, LogError> {
    let name = FileRef::Snapshot(last_index).name();
    let corrupt = |offset: u64, reason: String| LogError::Corrupt {
        file: name.clone(),
        offset,
        reason,
    };
    let len = file.len().map_err(LogError::io("stat", &name))?;
    let mut hb = [0u8; FILE_HEADER];
    file.read_at(&mut hb, 0)
        .map_err(|_| corrupt(0, "shorter than its header".into()))?;
    let fh = FileHeader::decode(&hb).map_err(|e| corrupt(0, e.to_string()))?;
    if fh.magic != SNAPSHOT_MAGIC || fh.index != last_index {
        return Err(corrupt(0, "header does not match the file name".into()));
    }
    let mut off = FILE_HEADER as u64;
    let mut records = 0u64;
    let mut seen_header = false;
    loop {
        let (kind, payload, next) = match scan_frame(file, &name, off, len)? {
            Scanned::Frame {
                kind,
                payload,
                next,
            } => (kind, payload, next),
            Scanned::End => return Err(corrupt(off, "snapshot ends without its end frame".into())),
            Scanned::Bad { reason } => return Err(corrupt(off, reason)),
        };
        let mut r = Reader::new(&payload);
        match kind {
            FrameKind::SnapshotHeader if !seen_header => {
                seen_header = true;
                let idx = r.u64().map_err(|e| corrupt(off, e.to_string()))?;
                let root = match r.u8().map_err(|e| corrupt(off, e.to_string()))? {
                    0 => None,
                    _ => Some(
                        tx::decode_root_authority(&mut r)
                            .map_err(|e| corrupt(off, e.to_string()))?,
                    ),
                };
                if idx != last_index {
                    return Err(corrupt(off, "header frame index mismatch".into()));
                }
                visitor.snapshot_root(root, last_index);
            }
            FrameKind::SnapshotRecord if seen_header => {
                let (rec, at) =
                    decode_snapshot_record(&payload).map_err(|e| corrupt(off, e.to_string()))?;
                let loc = (rec.payload_len > 0).then_some(Location {
                    file: FileRef::Snapshot(last_index),
                    offset: off + (FRAME_HEADER + at) as u64,
                });
                records += 1;
                visitor.snapshot_record(rec, loc)?;
            }
            FrameKind::SnapshotEnd if seen_header => {
                let n = r.u64().map_err(|e| corrupt(off, e.to_string()))?;
                if n != records || next != len {
                    return Err(corrupt(
                        off,
                        format!("end frame counts {n} records, read {records}"),
                    ));
                }
                return Ok(fh.chain);
            }
            other => return Err(corrupt(off, format!("unexpected frame {other:?}"))),
        }
        off = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Cipher;
    use crate::ids::KeyId;

    fn record(header_key: u128, header_parent: Option<u128>) -> Vec<u8> {
        let key = RecordKey::from_u128(1);
        let rec = SnapshotRecord {
            key,
            version: 3,
            index: 7,
            parent: Some(RecordKey::from_u128(2)),
            write: WriteAuthority::Inherit,
            header: Some(RecordHeader {
                key: RecordKey::from_u128(header_key),
                parent: header_parent.map(RecordKey::from_u128),
                data_key: KeyId([5; 32]),
                plain_len: 4,
                cipher: Cipher::Aes256Gcm,
            }),
            payload_len: 0,
        };
        let mut w = Writer::default();
        encode_record(&rec, &mut w);
        w.into_vec()
    }

    #[test]
    fn a_record_whose_header_names_another_record_or_parent_is_refused() {
        let (rec, _) = decode_snapshot_record(&record(1, Some(2))).expect("decodes");
        assert_eq!(rec.header.map(|h| h.plain_len), Some(4));
        for bad in [record(9, Some(2)), record(1, Some(9)), record(1, None)] {
            let err = decode_snapshot_record(&bad).expect_err("refused");
            assert!(err.to_string().contains("names another record"), "{err}");
        }
    }
}
