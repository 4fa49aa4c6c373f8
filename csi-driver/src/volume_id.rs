//! Volume ids and key envelopes as the CO hands them over. A volume id is its chain's id (32
//! lower-case hex digits); the node-stage secret holds the volume's key envelope, hex-encoded
//! under `keyEnvelope` (CSI secrets are strings, and the envelope is binary).

use ate::{ChainId, KeyFile};
use std::collections::HashMap;
use tonic::Status;

/// The secret entry holding the key envelope.
pub const KEY_ENVELOPE: &str = "keyEnvelope";

/// A volume: the chain behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeId(pub ChainId);

impl VolumeId {
    /// Parses a volume id; INVALID_ARGUMENT for anything but a chain id.
    pub fn parse(s: &str) -> Result<Self, Status> {
        if s.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        if s.len() != 2 * ChainId::LEN || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Status::invalid_argument(format!(
                "volume_id {s:?} is not an atefs volume id (32 lower-case hex digits)"
            )));
        }
        ChainId::from_hex(s)
            .map(VolumeId)
            .ok_or_else(|| Status::invalid_argument(format!("volume_id {s:?} is not hex")))
    }
}

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a hex key envelope could not be read (never quoting it).
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not hex.
    #[error("not hex")]
    NotHex,
    /// Hex, but not an envelope (length, magic, checksum, ...).
    #[error("not a key envelope: {0}")]
    Invalid(ate::codec::DecodeError),
}

/// A key envelope as secrets hold it: hex (CSI secrets are strings; the envelope is binary).
pub fn envelope_to_hex(keys: &KeyFile) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(hex::encode(&*keys.encode()))
}

/// The key envelope in `hex` (the plain bytes are zeroed after decoding).
pub fn envelope_from_hex(hex: &str) -> Result<KeyFile, EnvelopeError> {
    let bytes = zeroize::Zeroizing::new(hex::decode(hex).map_err(|_| EnvelopeError::NotHex)?);
    KeyFile::decode(&bytes).map_err(EnvelopeError::Invalid)
}

/// The key envelope of `id` from the node-stage secrets. Never echoes the secret.
pub fn parse_keys(secrets: &HashMap<String, String>, id: &VolumeId) -> Result<KeyFile, Status> {
    let hex = secrets.get(KEY_ENVELOPE).ok_or_else(|| {
        Status::invalid_argument(format!(
            "the node-stage secret has no {KEY_ENVELOPE} entry (the StorageClass must name the volume's Secret: csi.storage.k8s.io/node-stage-secret-name)"
        ))
    })?;
    let keys = envelope_from_hex(hex.trim())
        .map_err(|e| Status::invalid_argument(format!("the secret's {KEY_ENVELOPE} is {e}")))?;
    if keys.chain != id.0 {
        return Err(Status::invalid_argument(format!(
            "the secret's key envelope is for chain {}, not volume {id}",
            keys.chain
        )));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(k: &KeyFile) -> HashMap<String, String> {
        HashMap::from([(KEY_ENVELOPE.to_string(), envelope_to_hex(k).to_string())])
    }

    #[test]
    fn volume_ids_are_chain_ids() {
        let c = ChainId::random();
        assert_eq!(VolumeId::parse(&c.to_hex()).map(|v| v.0).ok(), Some(c));
        for bad in ["", "abc", &c.to_hex().to_uppercase(), &"g".repeat(32)] {
            assert_eq!(
                VolumeId::parse(bad).map_err(|s| s.code()).err(),
                Some(tonic::Code::InvalidArgument),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keys_must_be_the_volumes_and_intact() {
        let k = KeyFile::generate(ChainId::random());
        let id = VolumeId(k.chain);
        assert!(parse_keys(&secrets(&k), &id).is_ok());

        let other = VolumeId(ChainId::random());
        let e = parse_keys(&secrets(&k), &other)
            .err()
            .map(|s| s.message().to_string());
        assert!(e.is_some_and(|m| m.contains("is for chain")));

        let mut damaged = secrets(&k);
        if let Some(v) = damaged.get_mut(KEY_ENVELOPE) {
            v.replace_range(40..42, if &v[40..42] == "00" { "01" } else { "00" });
        }
        let e = parse_keys(&damaged, &id)
            .err()
            .map(|s| s.message().to_string());
        assert!(e.is_some_and(|m| m.contains("not a key envelope")));

        assert_eq!(
            parse_keys(&HashMap::new(), &id).err().map(|s| s.code()),
            Some(tonic::Code::InvalidArgument)
        );
    }
}
