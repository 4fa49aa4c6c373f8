//! File headers shared by segments and snapshots.
//!
//! ```text
//! 0  [u8;8] magic "ATE-SEG\0" or "ATE-SNP\0"   20 [u8;16] chain id
//! 8  u16 format        10 u16 reserved (0)      36 u32 CRC32C of bytes 0..36
//! 12 u64 first index (segments) / last index (snapshots)
//! ```

use crate::codec::{DecodeError, Reader};
use crate::ids::ChainId;

/// Bytes in a file header.
pub const FILE_HEADER: usize = 40;
/// Segment magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"ATE-SEG\0";
/// Snapshot magic.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"ATE-SNP\0";
/// Segment file format version written: 2 since a segment may hold padding frames (a
/// format-1 reader refuses such a file by its version). Format-1 segments are still read and
/// appended to (without padding, so they stay readable by format-1 readers).
pub const FILE_FORMAT: u16 = 2;
/// The first segment format: transaction frames only.
pub const FILE_FORMAT_1: u16 = 1;
/// Snapshot file format version: 2 since record headers may name AES-256-GCM payloads (a
/// format-1 reader refuses such a file by its version). Format-1 snapshots are still read.
pub const SNAPSHOT_FORMAT: u16 = 2;

/// A decoded file header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    /// Which magic.
    pub magic: [u8; 8],
    /// First index (segment) or last index covered (snapshot).
    pub index: u64,
    /// The chain.
    pub chain: ChainId,
}

impl FileHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; FILE_HEADER] {
        let mut b = [0u8; FILE_HEADER];
        b[..8].copy_from_slice(&self.magic);
        let format = if self.magic == SNAPSHOT_MAGIC {
            SNAPSHOT_FORMAT
        } else {
            FILE_FORMAT
        };
        b[8..10].copy_from_slice(&format.to_le_bytes());
        b[12..20].copy_from_slice(&self.index.to_le_bytes());
        b[20..36].copy_from_slice(&self.chain.0);
        let crc = crc32c::crc32c(&b[..36]);
        b[36..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with_format(b).map(|(h, _)| h)
    }

    /// [`Self::decode`], also returning the file's format version.
    pub fn decode_with_format(b: &[u8]) -> Result<(Self, u16), DecodeError> {
        let mut r = Reader::new(b);
        let magic: [u8; 8] = r.array()?;
        if magic != SEGMENT_MAGIC && magic != SNAPSHOT_MAGIC {
            return Err(DecodeError::Invalid {
                what: "file magic",
                value: u64::from_le_bytes(magic),
            });
        }
        let format = r.u16()?;
        let known = if magic == SNAPSHOT_MAGIC {
            format == 1 || format == SNAPSHOT_FORMAT
        } else {
            format == FILE_FORMAT_1 || format == FILE_FORMAT
        };
        if !known {
            return Err(DecodeError::Invalid {
                what: "file format",
                value: format.into(),
            });
        }
        let reserved = r.u16()?;
        if reserved != 0 {
            return Err(DecodeError::Invalid {
                what: "file header reserved",
                value: reserved.into(),
            });
        }
        let index = r.u64()?;
        let chain = ChainId(r.array()?);
        let crc = r.u32()?;
        if crc != crc32c::crc32c(&b[..36]) {
            return Err(DecodeError::Invalid {
                what: "file header checksum",
                value: crc.into(),
            });
        }
        Ok((
            Self {
                magic,
                index,
                chain,
            },
            format,
        ))
    }
}

/// Segment file name for a first index (sorts by index).
pub fn segment_name(first_index: u64) -> String {
    format!("seg-{first_index:020}.log")
}

/// Snapshot file name for a last index.
pub fn snapshot_name(last_index: u64) -> String {
    format!("snap-{last_index:020}.snap")
}

/// Parses names produced by [`segment_name`] / [`snapshot_name`].
pub fn parse_name(name: &str) -> Option<(bool, u64)> {
    if let Some(n) = name
        .strip_prefix("seg-")
        .and_then(|s| s.strip_suffix(".log"))
    {
        return n.parse().ok().map(|i| (true, i));
    }
    name.strip_prefix("snap-")
        .and_then(|s| s.strip_suffix(".snap"))
        .and_then(|n| n.parse().ok())
        .map(|i| (false, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_format(magic: [u8; 8], format: u16) -> [u8; FILE_HEADER] {
        let mut b = FileHeader {
            magic,
            index: 9,
            chain: ChainId::default(),
        }
        .encode();
        b[8..10].copy_from_slice(&format.to_le_bytes());
        let crc = crc32c::crc32c(&b[..36]);
        b[36..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn both_formats_of_segments_and_snapshots_are_read_and_others_refused() {
        let snap = FileHeader {
            magic: SNAPSHOT_MAGIC,
            index: 9,
            chain: ChainId::default(),
        };
        assert_eq!(snap.encode()[8..10], SNAPSHOT_FORMAT.to_le_bytes());
        for f in [1, SNAPSHOT_FORMAT] {
            assert_eq!(
                FileHeader::decode_with_format(&with_format(SNAPSHOT_MAGIC, f)),
                Ok((snap, f))
            );
        }
        let seg = FileHeader {
            magic: SEGMENT_MAGIC,
            ..snap
        };
        assert_eq!(seg.encode()[8..10], FILE_FORMAT.to_le_bytes());
        for f in [FILE_FORMAT_1, FILE_FORMAT] {
            assert_eq!(
                FileHeader::decode_with_format(&with_format(SEGMENT_MAGIC, f)),
                Ok((seg, f))
            );
        }
        for (magic, f) in [(SEGMENT_MAGIC, 3), (SNAPSHOT_MAGIC, 3), (SEGMENT_MAGIC, 0)] {
            assert!(matches!(
                FileHeader::decode(&with_format(magic, f)),
                Err(DecodeError::Invalid {
                    what: "file format",
                    ..
                })
            ));
        }
    }
}
