//! Keys and primitives: ed25519 signatures over BLAKE3 digests, AEAD-sealed payloads with the
//! cleartext header as associated data, and keyed BLAKE3 for name-derived record keys.
//!
//! Secrets are zeroized on drop. Nonces are random 192-bit values, so a data key can seal an
//! unbounded number of payloads without nonce bookkeeping. Both ciphers ([`Cipher`]) use the
//! same construction: a per-payload subkey from the data key and the first 16 nonce bytes,
//! then an RFC 8439 style AEAD with nonce `0000 ‖ last 8 nonce bytes`, so a subkey seals one
//! payload and random nonces never collide in practice (2^64 payloads per subkey collision).
//!
//! - [`Cipher::XChaCha20Poly1305`] (format 1): the subkey is HChaCha20's, exactly
//!   draft-irtf-cfrg-xchacha; a test checks byte equality with RustCrypto's `XChaCha20Poly1305`.
//! - [`Cipher::Aes256Gcm`] (format 2, what new payloads use): the subkey is a keyed BLAKE3 of
//!   the nonce prefix, the AEAD AES-256-GCM. With AES-NI and carry-less multiply, ring's
//!   AES-256-GCM seals 4.5× faster than its ChaCha20-Poly1305 on this project's machines
//!   (bench/src/bin/aead-bench.rs), and the cipher was the largest cost of sequential reads
//!   and writes. A plain AES-GCM key with random 96-bit nonces would have to be retired after
//!   about 2^32 payloads; the derived subkey removes that bound (docs/format.md).

use crate::ids::{KeyId, RecordKey};
use ed25519_dalek::{Signer, Verifier};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The AEAD that sealed a payload; its record header names it (docs/format.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// XChaCha20-Poly1305: every payload of format-1 transactions.
    #[default]
    XChaCha20Poly1305,
    /// AES-256-GCM under a per-payload BLAKE3-derived subkey: what new payloads use.
    Aes256Gcm,
}

impl Cipher {
    /// The cipher new payloads are sealed with.
    pub const CURRENT: Cipher = Cipher::Aes256Gcm;
}

const AES_SUBKEY_DOMAIN: &[u8] = b"ate 2026 aes-256-gcm payload subkey";

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

    /// The one-payload key and the 12-byte AEAD nonce for a 24-byte nonce under `cipher`.
    fn subkey(&self, cipher: Cipher, nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
        let (mut sub, alg): ([u8; 32], _) = match cipher {
            Cipher::XChaCha20Poly1305 => {
                use chacha20::cipher::consts::U10;
                use chacha20::cipher::generic_array::GenericArray;
                let mut g = chacha20::hchacha::<U10>(
                    GenericArray::from_slice(&self.0),
                    GenericArray::from_slice(&nonce[..16]),
                );
                let mut sub = [0u8; 32];
                sub.copy_from_slice(&g);
                g.as_mut_slice().zeroize();
                (sub, &CHACHA20_POLY1305)
            }
            Cipher::Aes256Gcm => {
                let mut h = blake3::Hasher::new_keyed(&self.0);
                h.update(AES_SUBKEY_DOMAIN);
                h.update(&nonce[..16]);
                (*h.finalize().as_bytes(), &AES_256_GCM)
            }
        };
        // Both algorithms take any 32-byte key, so this cannot fail.
        let key = UnboundKey::new(alg, &sub).map(LessSafeKey::new);
        sub.zeroize();
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&nonce[16..]);
        match key {
            Ok(k) => (k, Nonce::assume_unique_for_key(n)),
            Err(_) => unreachable!("a 32-byte key is always valid for {cipher:?}"),
        }
    }

    /// Seals `plaintext` bound to `ad` with `cipher`. Output: nonce || ciphertext || tag.
    pub fn seal(&self, cipher: Cipher, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = vec![0; plaintext.len() + SEAL_OVERHEAD];
        self.seal_into(cipher, ad, plaintext, &mut out);
        out
    }

    /// [`Self::seal`] into `out`, which must be exactly `plaintext.len() + SEAL_OVERHEAD`
    /// long: a payload sealed where it will lie (a transaction's encoding) is copied once.
    pub fn seal_into(&self, cipher: Cipher, ad: &[u8], plaintext: &[u8], out: &mut [u8]) {
        assert_eq!(out.len(), plaintext.len() + SEAL_OVERHEAD, "sealed length");
        out[NONCE_LEN..NONCE_LEN + plaintext.len()].copy_from_slice(plaintext);
        self.seal_in_place(cipher, ad, out);
    }

    /// Seals the plaintext lying in `buf` after room for the nonce and before room for the
    /// tag (`buf` is `SEAL_OVERHEAD` longer than it), leaving nonce || ciphertext || tag.
    pub fn seal_in_place(&self, cipher: Cipher, ad: &[u8], buf: &mut [u8]) {
        assert!(buf.len() >= SEAL_OVERHEAD, "room for nonce and tag");
        let nonce: [u8; NONCE_LEN] = rand::random();
        let (head, rest) = buf.split_at_mut(NONCE_LEN);
        head.copy_from_slice(&nonce);
        let (body, tag_out) = rest.split_at_mut(rest.len() - TAG_LEN);
        let (key, n) = self.subkey(cipher, &nonce);
        // Only fails for inputs of many GiB, far beyond MAX_PAYLOAD.
        match key.seal_in_place_separate_tag(n, Aad::from(ad), body) {
            Ok(tag) => tag_out.copy_from_slice(tag.as_ref()),
            Err(_) => unreachable!("payload within {cipher:?} limits"),
        }
    }

    /// Opens a payload sealed by [`Self::seal`] with the same `cipher` and `ad`.
    pub fn open(
        &self,
        cipher: Cipher,
        ad: &[u8],
        mut sealed: Vec<u8>,
    ) -> Result<Vec<u8>, CryptoError> {
        let len = self.open_in_place(cipher, ad, &mut sealed)?;
        sealed.truncate(len);
        Ok(sealed)
    }

    /// Opens the sealed payload that fills `buf`, leaving the plaintext at its front; returns
    /// the plaintext's length. A failed open leaves `buf` garbled.
    pub fn open_in_place(
        &self,
        cipher: Cipher,
        ad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, CryptoError> {
        self.open_within(cipher, ad, buf, 0)
    }

    /// Opens the sealed payload that fills `buf[src..]`, leaving the plaintext at the front of
    /// `buf`; returns the plaintext's length. A failed open leaves `buf` garbled.
    pub fn open_within(
        &self,
        cipher: Cipher,
        ad: &[u8],
        buf: &mut [u8],
        src: usize,
    ) -> Result<usize, CryptoError> {
        let sealed = buf.len().saturating_sub(src);
        if sealed < SEAL_OVERHEAD {
            return Err(CryptoError::ShortCiphertext(sealed));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[src..src + NONCE_LEN]);
        let (key, n) = self.subkey(cipher, &nonce);
        // Opened where it lies, the plaintext shifted to the front in the same pass: reads of
        // file blocks spent a tenth of their time copying before (perf, sequential read).
        Ok(key
            .open_within(n, Aad::from(ad), buf, src + NONCE_LEN..)
            .map_err(|_| CryptoError::Unseal)?
            .len())
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

    const CIPHERS: [Cipher; 2] = [Cipher::XChaCha20Poly1305, Cipher::Aes256Gcm];

    #[test]
    fn sealing_in_place_is_sealing_and_opening_in_place_is_opening() {
        for c in CIPHERS {
            let k = DataKey::generate();
            let plain = b"sealed where it lies";
            let mut buf = vec![0xee; NONCE_LEN];
            buf.extend_from_slice(plain);
            buf.extend_from_slice(&[0xee; TAG_LEN]);
            k.seal_in_place(c, b"ad", &mut buf);
            assert_ne!(&buf[NONCE_LEN..NONCE_LEN + plain.len()], plain);
            assert_eq!(
                k.open(c, b"ad", buf.clone()).ok().as_deref(),
                Some(&plain[..])
            );
            let mut sealed = k.seal(c, b"ad", plain);
            let n = k.open_in_place(c, b"ad", &mut sealed).expect("opens");
            assert_eq!(&sealed[..n], plain);
            let mut bad = k.seal(c, b"ad", plain);
            bad[NONCE_LEN] ^= 1;
            assert_eq!(
                k.open_in_place(c, b"ad", &mut bad),
                Err(CryptoError::Unseal)
            );
            assert_eq!(
                k.open_in_place(c, b"ad", &mut [0; SEAL_OVERHEAD - 1]),
                Err(CryptoError::ShortCiphertext(SEAL_OVERHEAD - 1))
            );
        }
    }

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        for c in CIPHERS {
            let k = DataKey::generate();
            let sealed = k.seal(c, b"header", b"hello world");
            assert_eq!(
                k.open(c, b"header", sealed.clone()).ok().as_deref(),
                Some(&b"hello world"[..])
            );
            assert_eq!(
                k.open(c, b"other", sealed.clone()),
                Err(CryptoError::Unseal)
            );
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x40;
                assert_eq!(
                    k.open(c, b"header", bad),
                    Err(CryptoError::Unseal),
                    "{c:?}: flip at {i}"
                );
            }
            assert_eq!(
                DataKey::generate().open(c, b"header", sealed.clone()),
                Err(CryptoError::Unseal)
            );
            assert_eq!(
                k.open(c, b"header", sealed[..SEAL_OVERHEAD - 1].to_vec()),
                Err(CryptoError::ShortCiphertext(SEAL_OVERHEAD - 1))
            );
        }
    }

    #[test]
    fn a_payload_opens_only_under_the_cipher_that_sealed_it() {
        let k = DataKey::generate();
        for c in CIPHERS {
            let sealed = k.seal(c, b"ad", b"payload");
            for other in CIPHERS.into_iter().filter(|o| *o != c) {
                assert_eq!(
                    k.open(other, b"ad", sealed.clone()),
                    Err(CryptoError::Unseal)
                );
            }
        }
    }

    /// The AES-256-GCM construction pinned to fixed bytes: the subkey derivation and nonce
    /// layout are part of the format, so a change here must fail a test.
    #[test]
    fn aes_construction_is_blake3_subkey_then_aes_256_gcm() {
        let k = DataKey::from_bytes([7; 32]);
        let sealed = k.seal(Cipher::Aes256Gcm, b"ad", b"plain");
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("nonce");
        let mut h = blake3::Hasher::new_keyed(&[7; 32]);
        h.update(b"ate 2026 aes-256-gcm payload subkey");
        h.update(&nonce[..16]);
        let sub = UnboundKey::new(&AES_256_GCM, h.finalize().as_bytes()).expect("key");
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&nonce[16..]);
        let mut mine = sealed[NONCE_LEN..].to_vec();
        let plain = LessSafeKey::new(sub)
            .open_in_place(Nonce::assume_unique_for_key(n), Aad::from(b"ad"), &mut mine)
            .expect("opens under the documented construction");
        assert_eq!(plain, b"plain");
    }

    #[test]
    fn construction_equals_rustcrypto_xchacha20poly1305() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let k = DataKey::generate();
        let reference = chacha20poly1305::XChaCha20Poly1305::new(k.as_bytes().into());
        for len in [0usize, 1, 63, 64, 65, 1000, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sealed = k.seal(Cipher::XChaCha20Poly1305, b"ad", &plain);
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
            assert_eq!(
                k.open(Cipher::XChaCha20Poly1305, b"ad", sealed.clone())
                    .expect("open"),
                plain
            );
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
