//! Frames: the unit of the redo log and snapshots.
//!
//! ```text
//! 0  u32 magic 0xA7E0F4A3      8  u32 payload length
//! 4  u16 format (1)            12 u32 CRC32C over bytes 4..12 and the payload
//! 6  u8  kind   7 u8 flags (0)  16 payload
//! ```

use crate::codec::DecodeError;
use crate::tx::MAX_TX_BYTES;

/// Identifies a frame start.
pub const FRAME_MAGIC: u32 = 0xA7E0_F4A3;
/// Frame format version.
pub const FRAME_FORMAT: u16 = 1;
/// Fixed header bytes.
pub const FRAME_HEADER: usize = 16;
/// Largest payload: one transaction plus its index.
pub const MAX_FRAME_PAYLOAD: usize = MAX_TX_BYTES + 64;

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A committed transaction: u64 index, then the transaction bytes.
    Tx = 1,
    /// A Raft log entry of a replicated partition (chain-server); its layout is the server's.
    RaftEntry = 2,
    /// Zeros that move the next frame's payload to a chosen offset (segment format 2): a large
    /// transaction then lies in the file as in memory, aligned for a direct write.
    Pad = 3,
    /// First frame of a snapshot.
    SnapshotHeader = 16,
    /// One record of a snapshot.
    SnapshotRecord = 17,
    /// Last frame of a snapshot.
    SnapshotEnd = 18,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Tx,
            2 => Self::RaftEntry,
            3 => Self::Pad,
            16 => Self::SnapshotHeader,
            17 => Self::SnapshotRecord,
            18 => Self::SnapshotEnd,
            _ => return None,
        })
    }
}

/// The largest alignment [`encode_pad`] can reach.
pub const MAX_PAD_ALIGN: usize = 4096;
static ZEROS: [u8; 2 * MAX_PAD_ALIGN] = [0; 2 * MAX_PAD_ALIGN];

/// Appends to `out` the padding frame (if any is needed) that moves a payload, which would
/// otherwise start at file offset `lands`, to the offset equal to `addr` modulo `align`
/// (at most [`MAX_PAD_ALIGN`]): the file can then write the payload from memory at `addr`
/// without copying it to aligned memory.
pub fn encode_pad(lands: u64, addr: usize, align: usize, out: &mut Vec<u8>) {
    let want = addr % align;
    let gap = (want + align - (lands % align as u64) as usize) % align;
    if gap != 0 {
        let pad = if gap < FRAME_HEADER { gap + align } else { gap };
        encode_frame(FrameKind::Pad, &[&ZEROS[..pad - FRAME_HEADER]], out);
    }
}

/// Appends a frame to `out`.
pub fn encode_frame(kind: FrameKind, payload_parts: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(&frame_header(kind, payload_parts));
    for p in payload_parts {
        out.extend_from_slice(p);
    }
}

/// The header of a frame whose payload is `payload_parts` in order (for writers that send
/// large payloads from where they lie instead of copying them behind the header).
pub fn frame_header(kind: FrameKind, payload_parts: &[&[u8]]) -> [u8; FRAME_HEADER] {
    let len: usize = payload_parts.iter().map(|p| p.len()).sum();
    let mut h = [0u8; FRAME_HEADER];
    h[..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&FRAME_FORMAT.to_le_bytes());
    h[6] = kind as u8;
    h[7] = 0;
    h[8..12].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    let mut crc = crc32c::crc32c(&h[4..12]);
    for p in payload_parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Kind.
    pub kind: FrameKind,
    /// Payload length.
    pub len: usize,
    crc: u32,
    check: u32,
}

/// Parses the 16 header bytes.
pub fn decode_frame_header(h: &[u8; FRAME_HEADER]) -> Result<FrameHeader, DecodeError> {
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != FRAME_MAGIC {
        return Err(DecodeError::Invalid {
            what: "frame magic",
            value: magic.into(),
        });
    }
    let format = u16::from_le_bytes([h[4], h[5]]);
    if format != FRAME_FORMAT {
        return Err(DecodeError::Invalid {
            what: "frame format",
            value: format.into(),
        });
    }
    let kind = FrameKind::from_u8(h[6]).ok_or(DecodeError::Invalid {
        what: "frame kind",
        value: h[6].into(),
    })?;
    if h[7] != 0 {
        return Err(DecodeError::Invalid {
            what: "frame flags",
            value: h[7].into(),
        });
    }
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(DecodeError::TooLarge {
            what: "frame payload",
            got: len as u64,
            limit: MAX_FRAME_PAYLOAD as u64,
        });
    }
    let crc = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    Ok(FrameHeader {
        kind,
        len,
        crc,
        check: crc32c::crc32c(&h[4..12]),
    })
}

impl FrameHeader {
    /// True when `payload` matches the header's checksum.
    pub fn payload_ok(&self, payload: &[u8]) -> bool {
        crc32c::crc32c_append(self.check, payload) == self.crc
    }
}

/// Decodes one whole frame from the front of `bytes`: (kind, payload, bytes consumed).
pub fn decode_frame(bytes: &[u8]) -> Result<(FrameKind, &[u8], usize), DecodeError> {
    let h: &[u8; FRAME_HEADER] = bytes
        .get(..FRAME_HEADER)
        .and_then(|s| s.try_into().ok())
        .ok_or(DecodeError::Truncated {
            offset: 0,
            needed: FRAME_HEADER.saturating_sub(bytes.len()),
        })?;
    let fh = decode_frame_header(h)?;
    let end = FRAME_HEADER + fh.len;
    let payload = bytes
        .get(FRAME_HEADER..end)
        .ok_or_else(|| DecodeError::Truncated {
            offset: FRAME_HEADER,
            needed: end.saturating_sub(bytes.len()),
        })?;
    if !fh.payload_ok(payload) {
        return Err(DecodeError::Invalid {
            what: "frame checksum",
            value: fh.crc.into(),
        });
    }
    Ok((fh.kind, payload, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_length_is_refused_before_reading_the_payload() {
        let mut buf = Vec::new();
        encode_frame(FrameKind::Tx, &[b"x"], &mut buf);
        buf[8..12].copy_from_slice(&(MAX_FRAME_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(matches!(
            decode_frame(&buf),
            Err(DecodeError::TooLarge {
                what: "frame payload",
                ..
            })
        ));
    }

    #[test]
    fn long_input_with_trailing_bytes_decodes_the_first_frame() {
        // Regression (fuzz target `frame`): the truncation error was computed eagerly and
        // underflowed when the input was longer than the frame.
        let mut buf = Vec::new();
        encode_frame(FrameKind::Tx, &[b"x"], &mut buf);
        buf.extend_from_slice(&[0; 100]);
        assert_eq!(
            decode_frame(&buf).map(|(_, p, n)| (p.len(), n)),
            Ok((1, FRAME_HEADER + 1))
        );
        assert!(decode_frame(&buf[..FRAME_HEADER]).is_err());
    }

    #[test]
    fn roundtrip_and_every_flip_detected() {
        let mut buf = Vec::new();
        encode_frame(FrameKind::Tx, &[b"abc", b"defgh"], &mut buf);
        let (kind, payload, used) = decode_frame(&buf).expect("valid frame");
        assert_eq!(
            (kind, payload, used),
            (FrameKind::Tx, &b"abcdefgh"[..], buf.len())
        );
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                assert!(decode_frame(&bad).is_err(), "flip byte {i} bit {bit}");
            }
        }
    }
}
