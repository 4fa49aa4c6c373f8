//! Keys and primitives: ed25519 signatures over BLAKE3 digests, XChaCha20-Poly1305 payloads with
//! the cleartext header as associated data, and keyed BLAKE3 for name-derived record keys.
//!
//! Secrets are zeroized on drop. Nonces are random 192-bit values, so a data key can seal an
//! unbounded number of payloads without nonce bookkeeping (the reason for XChaCha over AES-GCM).
//!
//! XChaCha20-Poly1305 is built as its specification (draft-irtf-cfrg-xchacha) defines it:
//! HChaCha20 derives a subkey from the key and the first 16 nonce bytes, then ChaCha20-Poly1305
//! (RFC 8439) runs with nonce `0000 ‖ last 8 bytes`. The AEAD itself is ring's assembly, about
//! twice as fast as the portable implementation; a test checks byte equality with RustCrypto's
//! `XChaCha20Poly1305`.

use crate::ids::{KeyId, RecordKey};
use ed25519_dalek::{Signer, Verifier};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Nonce bytes in front of every sealed payload.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag bytes after every sealed payload.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed payload adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// A cryptographic check failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The signature does not verify under the claimed key.
    #[error("bad signature by key {0}")]
    BadSignature(KeyId),
    /// The public key bytes are not a valid ed25519 point, or a small-order (weak) one.
    #[error("malformed public key")]
    MalformedPublicKey,
    /// Authentication of a sealed payload failed: wrong key, or bytes changed.
    #[error("payload authentication failed (wrong data key or tampered ciphertext)")]
    Unseal,
    /// A sealed payload is shorter than nonce + tag.
    #[error("sealed payload of {0} bytes is too short")]
    ShortCiphertext(usize),
}

/// An ed25519 public key as stored in transactions and authorities.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", &hex::encode(self.0)[..12])
    }
}

impl PublicKey {
    /// The key's id: BLAKE3 of its bytes.
    pub fn id(&self) -> KeyId {
        KeyId(*blake3::hash(&self.0).as_bytes())
    }

    /// Verifies `sig` over `digest`.
    pub fn verify(&self, digest: &[u8; 32], sig: &[u8; 64]) -> Result<(), CryptoError> {
        let vk = self.verifying_key()?;
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        // RFC 8032 verification with a canonical `s`; weak (small-order) keys were refused when
        // the key was decompressed. verify_strict would also decompress R to refuse small-order
        // R, a square root per signature that buys nothing here: the author's key is fixed.
        vk.verify(digest, &sig)
            .map_err(|_| CryptoError::BadSignature(self.id()))
    }
}

/// Decompressed verifying keys by their bytes. A chain has few authors, and decompressing a
/// point (a field square root) is a third of the cost of a verification, so it is done once.
static VERIFYING_KEYS: parking_lot::RwLock<
    Option<std::collections::HashMap<[u8; 32], ed25519_dalek::VerifyingKey>>,
> = parking_lot::RwLock::new(None);
const VERIFYING_KEYS_MAX: usize = 4096;

impl PublicKey {
    fn verifying_key(&self) -> Result<ed25519_dalek::VerifyingKey, CryptoError> {
        if let Some(vk) = VERIFYING_KEYS.read().as_ref().and_then(|m| m.get(&self.0)) {
            return Ok(*vk);
        }
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&self.0)
            .map_err(|_| CryptoError::MalformedPublicKey)?;
        let mut cache = VERIFYING_KEYS.write();
        let map = cache.get_or_insert_with(Default::default);
        if map.len() >= VERIFYING_KEYS_MAX {
            map.clear();
        }
        map.insert(self.0, vk);
        Ok(vk)
    }
}

/// A signing key (author identity). Zeroized on drop by ed25519-dalek.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public={:?})", self.public())
    }
}

impl SigningKey {
    /// A fresh random key from the OS generator.
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }
    /// Restores a key from its 32 secret bytes.
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(secret))
    }
    /// The 32 secret bytes (for key files; handle with care).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }
    /// Signs a 32-byte digest.
    pub fn sign(&self, digest: &[u8; 32]) -> [u8; 64] {
        self.0.sign(digest).to_bytes()
    }
}

/// A symmetric key that seals record payloads. Its id names the read authority of a record.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey(id={:?})", self.id())
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(rand::random())
    }
    /// Restores a key from its bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
    /// The secret bytes (for key files).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Derives a sub-key for `context` (BLAKE3 key derivation).
    pub fn derive(&self, context: &str) -> DataKey {
        DataKey(blake3::derive_key(context, &self.0))
    }
    /// Public id of the key: derived, so it reveals nothing about the key.
    pub fn id(&self) -> KeyId {
        KeyId(blake3::derive_key("ate 2026 data key id", &self.0))
    }

    /// The RFC 8439 key and nonce that XChaCha20 uses for a 24-byte nonce.
    fn subkey(&self, nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
        use chacha20::cipher::consts::U10;
        use chacha20::cipher::generic_array::GenericArray;
        let mut sub = chacha20::hchacha::<U10>(
            GenericArray::from_slice(&self.0),
            GenericArray::from_slice(&nonce[..16]),
        );
        // ChaCha20-Poly1305 accepts any 32-byte key, so this cannot fail.
        let key = UnboundKey::new(&CHACHA20_POLY1305, &sub).map(LessSafeKey::new);
        sub.as_mut_slice().zeroize();
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&nonce[16..]);
        match key {
            Ok(k) => (k, Nonce::assume_unique_for_key(n)),
            Err(_) => unreachable!("a 32-byte key is always valid for ChaCha20-Poly1305"),
        }
    }

    /// Seals `plaintext` bound to `ad`. Output: nonce || ciphertext || tag.
    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = vec![0; plaintext.len() + SEAL_OVERHEAD];
        self.seal_into(ad, plaintext, &mut out);
        out
    }

    /// [`Self::seal`] into `out`, which must be exactly `plaintext.len() + SEAL_OVERHEAD`
    /// long: a payload sealed where it will lie (a transaction's encoding) is copied once.
    pub fn seal_into(&self, ad: &[u8], plaintext: &[u8], out: &mut [u8]) {
        assert_eq!(out.len(), plaintext.len() + SEAL_OVERHEAD, "sealed length");
        let nonce: [u8; NONCE_LEN] = rand::random();
        let (head, rest) = out.split_at_mut(NONCE_LEN);
        head.copy_from_slice(&nonce);
        let (body, tag_out) = rest.split_at_mut(plaintext.len());
        body.copy_from_slice(plaintext);
        let (key, n) = self.subkey(&nonce);
        // Only fails for inputs above 256 GiB, far beyond MAX_PAYLOAD.
        match key.seal_in_place_separate_tag(n, Aad::from(ad), body) {
            Ok(tag) => tag_out.copy_from_slice(tag.as_ref()),
            Err(_) => unreachable!("payload within ChaCha20-Poly1305 limits"),
        }
    }

    /// Opens a payload sealed by [`Self::seal`] with the same `ad`.
    pub fn open(&self, ad: &[u8], mut sealed: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::ShortCiphertext(sealed.len()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let (key, n) = self.subkey(&nonce);
        // Opened where it lies, the plaintext shifted to the front in the same pass: reads of
        // file blocks spent a tenth of their time copying before (perf, sequential read).
        let len = key
            .open_within(n, Aad::from(ad), &mut sealed, NONCE_LEN..)
            .map_err(|_| CryptoError::Unseal)?
            .len();
        sealed.truncate(len);
        Ok(sealed)
    }
}

/// The per-chain secret for name-derived record keys (a keyed BLAKE3 hash), so servers cannot
/// confirm a guessed file name by hashing it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct NameKey([u8; 32]);

impl std::fmt::Debug for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameKey(..)")
    }
}

impl NameKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(rand::random())
    }
    /// Restores a key from its bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
    /// The secret bytes (for key files).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Keyed hash of `parts`, each length-prefixed so that ("ab","c") != ("a","bc").
    pub fn hash(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        *h.finalize().as_bytes()
    }
    /// A record key derived from `parts` (the first 128 bits of the keyed hash: record keys are
    /// 128-bit by design, see docs/format.md).
    pub fn record_key(&self, parts: &[&[u8]]) -> RecordKey {
        let h = self.hash(parts);
        let mut k = [0u8; 16];
        k.copy_from_slice(&h[..16]);
        RecordKey(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        let k = DataKey::generate();
        let sealed = k.seal(b"header", b"hello world");
        assert_eq!(
            k.open(b"header", sealed.clone()).ok().as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(k.open(b"other", sealed.clone()), Err(CryptoError::Unseal));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert_eq!(
                k.open(b"header", bad),
                Err(CryptoError::Unseal),
                "flip at {i}"
            );
        }
        assert_eq!(
            DataKey::generate().open(b"header", sealed.clone()),
            Err(CryptoError::Unseal)
        );
    }

    #[test]
    fn construction_equals_rustcrypto_xchacha20poly1305() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let k = DataKey::generate();
        let reference = chacha20poly1305::XChaCha20Poly1305::new(k.as_bytes().into());
        for len in [0usize, 1, 63, 64, 65, 1000, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sealed = k.seal(b"ad", &plain);
            let nonce = chacha20poly1305::XNonce::from_slice(&sealed[..NONCE_LEN]);
            let theirs = reference
                .encrypt(
                    nonce,
                    Payload {
                        msg: &plain,
                        aad: b"ad",
                    },
                )
                .expect("reference seal");
            assert_eq!(&sealed[NONCE_LEN..], &theirs[..], "len {len}");
            assert_eq!(k.open(b"ad", sealed.clone()).expect("open"), plain);
        }
    }

    #[test]
    fn sign_verify() {
        let k = SigningKey::generate();
        let d = *blake3::hash(b"m").as_bytes();
        let s = k.sign(&d);
        assert!(k.public().verify(&d, &s).is_ok());
        let mut bad = s;
        bad[3] ^= 1;
        assert!(k.public().verify(&d, &bad).is_err());
        assert!(SigningKey::generate().public().verify(&d, &s).is_err());
    }

    #[test]
    fn name_hash_is_length_prefixed() {
        let k = NameKey::generate();
        assert_ne!(k.hash(&[b"ab", b"c"]), k.hash(&[b"a", b"bc"]));
    }
}
