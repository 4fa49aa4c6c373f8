//! Transactions: the unit of commit, signature and replication.
//!
//! The encoding is canonical (one byte string per value) so that the signature covers exactly
//! what is stored. The author signs BLAKE3("ate tx v1" domain, canonical body); the signature
//! follows the body. Layout: docs/format.md §Transaction.

use crate::authority::{Role, RootAuthority, WriteAuthority};
use crate::codec::{DecodeError, Reader, Writer};
use crate::crypto::{Cipher, CryptoError, DataKey, PublicKey, SigningKey};
use crate::ids::{ChainId, KeyId, RecordKey, TxHash};

/// Format version of transactions whose payloads are all XChaCha20-Poly1305 (or that have none).
pub const TX_FORMAT_1: u16 = 1;
/// Format version of transactions with at least one AES-256-GCM payload: a reader that knows
/// only format 1 refuses them by their version, not by a header it cannot parse.
pub const TX_FORMAT_2: u16 = 2;
/// Most operations in one transaction.
pub const MAX_OPS: usize = 4096;
/// Most preconditions in one transaction.
pub const MAX_PRECONDITIONS: usize = 4096;
/// Largest sealed payload of one record.
pub const MAX_PAYLOAD: usize = 8 << 20;
/// Largest encoded transaction.
pub const MAX_TX_BYTES: usize = 64 << 20;
/// Most keys in a root or record authority.
pub const MAX_AUTH_KEYS: usize = 256;

const SIG_DOMAIN: &str = "ate 2026 transaction v1";

mod encoder;
pub use encoder::TxEncoder;

/// Cleartext header of a record version: what servers index and validate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The record.
    pub key: RecordKey,
    /// Its parent in the authority tree (None only for top-level records).
    pub parent: Option<RecordKey>,
    /// Id of the data key sealing the payload (its read authority); zero for empty payloads.
    pub data_key: KeyId,
    /// Plaintext length of the payload.
    pub plain_len: u64,
    /// The AEAD of the payload (bound to it: the header is its associated data).
    pub cipher: Cipher,
}

/// One change in a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes a new version of a record.
    Put {
        /// Cleartext header.
        header: RecordHeader,
        /// Write authority stored on the record.
        write: WriteAuthority,
        /// Sealed payload (nonce || ciphertext || tag), or empty.
        payload: Vec<u8>,
    },
    /// Writes a tombstone.
    Delete {
        /// The record.
        key: RecordKey,
    },
    /// Replaces the root authority (owners only; the first transaction of a chain).
    SetRoot(RootAuthority),
}

impl Op {
    /// A Put of `plaintext` sealed under `data_key` (no payload when `data_key` is None).
    pub fn put(
        chain: &ChainId,
        key: RecordKey,
        parent: Option<RecordKey>,
        write: WriteAuthority,
        data_key: Option<&DataKey>,
        plaintext: &[u8],
    ) -> Self {
        let mut header = RecordHeader {
            key,
            parent,
            data_key: KeyId::default(),
            plain_len: 0,
            cipher: Cipher::default(),
        };
        let payload = match data_key {
            Some(k) => header.seal(chain, k, plaintext),
            None => Vec::new(),
        };
        Op::Put {
            header,
            write,
            payload,
        }
    }

    /// The record this op touches, if any.
    pub fn record_key(&self) -> Option<RecordKey> {
        match self {
            Op::Put { header, .. } => Some(header.key),
            Op::Delete { key } => Some(*key),
            Op::SetRoot(_) => None,
        }
    }
}

/// A condition checked atomically at commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// The record has no live version (never written, or tombstoned).
    Absent(RecordKey),
    /// The record's latest version (tombstones count) is exactly this.
    AtVersion(RecordKey, u64),
}

/// A signed batch of record writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Chain the transaction belongs to (prevents replay into another chain).
    pub chain: ChainId,
    /// Signing key.
    pub author: PublicKey,
    /// Author's clock, nanoseconds since the Unix epoch (informational).
    pub timestamp_ns: u64,
    /// Random, so two otherwise equal transactions hash differently (retries dedupe by hash).
    pub nonce: u64,
    /// Checked before any op applies.
    pub preconditions: Vec<Precondition>,
    /// Applied in order, all or nothing.
    pub ops: Vec<Op>,
    /// ed25519 signature over [`Transaction::hash`].
    pub signature: [u8; 64],
}

/// A transaction decoded without its payloads ([`Transaction::decode_skeleton`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skeleton {
    /// The transaction; its Put payloads are empty.
    pub tx: Transaction,
    /// Offset and length of each Put's payload in the encoding, in op order.
    pub payloads: Vec<(usize, usize)>,
    /// [`Transaction::hash`] of the whole transaction.
    pub hash: TxHash,
}

impl Skeleton {
    /// Offsets of the payloads (what [`Transaction::payload_offsets`] gives for the whole).
    pub fn payload_offsets(&self) -> Vec<usize> {
        self.payloads.iter().map(|(o, _)| *o).collect()
    }
}

/// Receives encoded bytes: a Vec when encoding, a hasher when signing (no copy of payloads).
trait Sink {
    fn put(&mut self, b: &[u8]);
    /// Called for payload bytes; lets [`Offsets`] note where they start.
    fn payload(&mut self, b: &[u8]) {
        self.put(b)
    }
}

/// Counts bytes and notes where each Put's payload starts.
struct Offsets {
    pos: usize,
    payloads: Vec<usize>,
}
impl Sink for Offsets {
    fn put(&mut self, b: &[u8]) {
        self.pos += b.len();
    }
    fn payload(&mut self, b: &[u8]) {
        self.payloads.push(self.pos);
        self.pos += b.len();
    }
}
impl Sink for Writer {
    fn put(&mut self, b: &[u8]) {
        self.raw(b)
    }
}
impl Sink for blake3::Hasher {
    fn put(&mut self, b: &[u8]) {
        self.update(b);
    }
}

fn put_len<S: Sink>(s: &mut S, n: usize) {
    s.put(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

/// Bodies from which hashing is spread over the cores (BLAKE3's tree splits; below this a
/// thread hand-off costs more than it saves).
const PARALLEL_HASH_MIN: usize = 1 << 20;

/// The signed digest of an encoded body (the encoding without its signature).
fn hash_body(body: &[u8]) -> TxHash {
    let mut h = blake3::Hasher::new_derive_key(SIG_DOMAIN);
    // A file's data hashed on one thread was a sixth of a mount's CPU in a sequential write,
    // with the mount's state lock held meanwhile (perf); the digest is the same either way.
    if body.len() >= PARALLEL_HASH_MIN {
        h.update_rayon(body);
    } else {
        h.update(body);
    }
    TxHash(*h.finalize().as_bytes())
}

fn encode_op<S: Sink>(op: &Op, s: &mut S) {
    match op {
        Op::Put {
            header,
            write,
            payload,
        } => {
            encode_put_head(header, write, payload.len(), s);
            s.payload(payload);
        }
        Op::Delete { key } => {
            s.put(&[2]);
            s.put(&key.0);
        }
        Op::SetRoot(root) => {
            s.put(&[3]);
            encode_root(root, s);
        }
    }
}

/// A Put up to its payload, which follows.
fn encode_put_head<S: Sink>(header: &RecordHeader, write: &WriteAuthority, len: usize, s: &mut S) {
    s.put(&[1]);
    header.encode(s);
    encode_write(write, s);
    put_len(s, len);
}

impl RecordHeader {
    /// Associated data binding a sealed payload to its chain, record and header.
    pub fn associated_data(&self, chain: &ChainId) -> Vec<u8> {
        let mut w = Writer::with_capacity(96);
        w.raw(b"ate-ad1");
        w.raw(&chain.0);
        self.encode(&mut w);
        w.into_vec()
    }

    fn encode<S: Sink>(&self, s: &mut S) {
        s.put(&self.key.0);
        s.put(&[self.flags()]);
        if let Some(p) = &self.parent {
            s.put(&p.0);
        }
        s.put(&self.data_key.0);
        s.put(&self.plain_len.to_le_bytes());
    }

    /// Bit 0: a parent key follows; bit 1: the payload is AES-256-GCM (format 2).
    fn flags(&self) -> u8 {
        u8::from(self.parent.is_some()) | (u8::from(self.cipher == Cipher::Aes256Gcm) << 1)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let key = RecordKey(r.array()?);
        let flags = r.u8()?;
        if flags > 0b11 {
            return Err(DecodeError::Invalid {
                what: "record header flags",
                value: flags.into(),
            });
        }
        let parent = match flags & 1 {
            0 => None,
            _ => Some(RecordKey(r.array()?)),
        };
        Ok(Self {
            key,
            parent,
            data_key: KeyId(r.array()?),
            plain_len: r.u64()?,
            cipher: match flags & 0b10 {
                0 => Cipher::XChaCha20Poly1305,
                _ => Cipher::Aes256Gcm,
            },
        })
    }

    /// Seals `plaintext` for this header under `key` with [`Cipher::CURRENT`], filling in
    /// `data_key`, `plain_len` and `cipher`.
    pub fn seal(&mut self, chain: &ChainId, key: &DataKey, plaintext: &[u8]) -> Vec<u8> {
        self.seal_with(Cipher::CURRENT, chain, key, plaintext)
    }

    /// [`Self::seal`] with a chosen cipher (format 1's XChaCha20-Poly1305 for compatibility
    /// tests and tools).
    pub fn seal_with(
        &mut self,
        cipher: Cipher,
        chain: &ChainId,
        key: &DataKey,
        plaintext: &[u8],
    ) -> Vec<u8> {
        self.data_key = key.id();
        self.plain_len = plaintext.len() as u64;
        self.cipher = cipher;
        key.seal(cipher, &self.associated_data(chain), plaintext)
    }

    /// Opens a payload sealed for this header.
    pub fn open(
        &self,
        chain: &ChainId,
        key: &DataKey,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>, CryptoError> {
        let plain = key.open(self.cipher, &self.associated_data(chain), sealed)?;
        if plain.len() as u64 != self.plain_len {
            return Err(CryptoError::Unseal);
        }
        Ok(plain)
    }

    /// [`Self::open`] for a payload that fills `buf`: the plaintext is left at its front and
    /// its length returned.
    pub fn open_in_place(
        &self,
        chain: &ChainId,
        key: &DataKey,
        buf: &mut [u8],
    ) -> Result<usize, CryptoError> {
        self.open_within(chain, key, buf, 0)
    }

    /// [`Self::open`] for a payload that fills `buf[src..]`: the plaintext is left at the front
    /// of `buf` and its length returned.
    pub fn open_within(
        &self,
        chain: &ChainId,
        key: &DataKey,
        buf: &mut [u8],
        src: usize,
    ) -> Result<usize, CryptoError> {
        let len = key.open_within(self.cipher, &self.associated_data(chain), buf, src)?;
        if len as u64 != self.plain_len {
            return Err(CryptoError::Unseal);
        }
        Ok(len)
    }
}

fn encode_root<S: Sink>(root: &RootAuthority, s: &mut S) {
    put_len(s, root.keys.len());
    for (k, role) in &root.keys {
        s.put(&k.0);
        s.put(&[*role as u8]);
    }
}

fn decode_root(r: &mut Reader<'_>) -> Result<RootAuthority, DecodeError> {
    let n = r.count("root authority keys", MAX_AUTH_KEYS)?;
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let k = PublicKey(r.array()?);
        let tag = r.u8()?;
        let role = Role::from_u8(tag).ok_or(DecodeError::Invalid {
            what: "role",
            value: tag.into(),
        })?;
        keys.push((k, role));
    }
    Ok(RootAuthority { keys })
}

/// Encodes a root authority on its own (used by snapshots).
pub fn encode_root_authority(root: &RootAuthority, w: &mut Writer) {
    encode_root(root, w)
}

/// Decodes what [`encode_root_authority`] wrote.
pub fn decode_root_authority(r: &mut Reader<'_>) -> Result<RootAuthority, DecodeError> {
    decode_root(r)
}

/// Encodes a record write authority.
pub fn encode_write_authority(a: &WriteAuthority, w: &mut Writer) {
    encode_write(a, w)
}

/// Decodes a record write authority.
pub fn decode_write_authority(r: &mut Reader<'_>) -> Result<WriteAuthority, DecodeError> {
    decode_write(r)
}

fn encode_write<S: Sink>(a: &WriteAuthority, s: &mut S) {
    match a {
        WriteAuthority::Inherit => s.put(&[0]),
        WriteAuthority::Keys(ks) => {
            s.put(&[1]);
            put_len(s, ks.len());
            for k in ks {
                s.put(&k.0);
            }
        }
    }
}

fn decode_write(r: &mut Reader<'_>) -> Result<WriteAuthority, DecodeError> {
    match r.u8()? {
        0 => Ok(WriteAuthority::Inherit),
        1 => {
            let n = r.count("record authority keys", MAX_AUTH_KEYS)?;
            let mut ks = Vec::with_capacity(n);
            for _ in 0..n {
                ks.push(KeyId(r.array()?));
            }
            Ok(WriteAuthority::Keys(ks))
        }
        v => Err(DecodeError::Invalid {
            what: "write authority tag",
            value: v.into(),
        }),
    }
}

/// Encodes a record header (used by snapshots).
pub fn encode_header(h: &RecordHeader, w: &mut Writer) {
    h.encode(w)
}

/// Decodes a record header.
pub fn decode_header(r: &mut Reader<'_>) -> Result<RecordHeader, DecodeError> {
    RecordHeader::decode(r)
}

impl Transaction {
    /// An unsigned transaction by `author`, with a fresh nonce and the current time.
    pub fn new(chain: ChainId, author: PublicKey) -> Self {
        let timestamp_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            chain,
            author,
            timestamp_ns,
            nonce: rand::random(),
            preconditions: Vec::new(),
            ops: Vec::new(),
            signature: [0; 64],
        }
    }

    fn encode_body<S: Sink>(&self, s: &mut S) {
        self.encode_head(s);
        put_len(s, self.ops.len());
        for op in &self.ops {
            encode_op(op, s);
        }
    }

    /// The format version this transaction is encoded in: 2 exactly when a Put names
    /// AES-256-GCM, so the encoding stays canonical.
    pub fn format(&self) -> u16 {
        let aes =
            |op: &Op| matches!(op, Op::Put { header, .. } if header.cipher == Cipher::Aes256Gcm);
        if self.ops.iter().any(aes) {
            TX_FORMAT_2
        } else {
            TX_FORMAT_1
        }
    }

    /// Everything before the operation count.
    fn encode_head<S: Sink>(&self, s: &mut S) {
        s.put(&self.format().to_le_bytes());
        s.put(&self.chain.0);
        s.put(&self.author.0);
        s.put(&self.timestamp_ns.to_le_bytes());
        s.put(&self.nonce.to_le_bytes());
        put_len(s, self.preconditions.len());
        for p in &self.preconditions {
            match p {
                Precondition::Absent(k) => {
                    s.put(&[1]);
                    s.put(&k.0);
                }
                Precondition::AtVersion(k, v) => {
                    s.put(&[2]);
                    s.put(&k.0);
                    s.put(&v.to_le_bytes());
                }
            }
        }
    }

    /// The digest the author signs (and the transaction's identity).
    pub fn hash(&self) -> TxHash {
        let mut h = blake3::Hasher::new_derive_key(SIG_DOMAIN);
        self.encode_body(&mut h);
        TxHash(*h.finalize().as_bytes())
    }

    /// Signs in place with `key` (which must match `author`).
    pub fn sign(self, key: &SigningKey) -> Self {
        self.sign_hashed(key).0
    }

    /// Signs in place and also returns the hash (saves hashing the payloads twice).
    pub fn sign_hashed(mut self, key: &SigningKey) -> (Self, TxHash) {
        self.author = key.public();
        let h = self.hash();
        self.signature = key.sign(&h.0);
        (self, h)
    }

    /// Verifies the signature; returns the transaction hash.
    pub fn verify_signature(&self) -> Result<TxHash, CryptoError> {
        let h = self.hash();
        self.author.verify(&h.0, &self.signature)?;
        Ok(h)
    }

    /// Offsets, within the encoded transaction, of each Put's payload (in op order).
    pub fn payload_offsets(&self) -> Vec<usize> {
        let mut o = Offsets {
            pos: 0,
            payloads: Vec::new(),
        };
        self.encode_body(&mut o);
        o.payloads
    }

    /// Bytes of the encoded transaction (body then signature).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.encoded_len_hint());
        self.encode_body(&mut w);
        w.raw(&self.signature);
        w.into_vec()
    }

    fn encoded_len_hint(&self) -> usize {
        128 + self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { payload, .. } => payload.len() + 96,
                _ => 48,
            })
            .sum::<usize>()
            + self.preconditions.len() * 25
    }

    /// Decodes a transaction; the whole input must be one transaction.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_parts(bytes, true, |_, _| {})
    }

    /// Decodes everything but the payloads, which stay in `bytes` (a replica validating and
    /// storing a transaction never needs them apart: copying them out was a copy of every
    /// byte written, on every replica). Put payloads in `tx` are left empty.
    pub fn decode_skeleton(bytes: &[u8]) -> Result<Skeleton, DecodeError> {
        let (tx, payloads) = Self::decode_bare(bytes)?;
        let hash = Self::hash_encoded(bytes);
        Ok(Skeleton { tx, payloads, hash })
    }

    /// [`Self::decode_skeleton`] of bytes whose [`Self::hash_encoded`] the caller computed
    /// before (the same bytes, still unchanged): no second pass over them.
    pub fn decode_skeleton_hashed(bytes: &[u8], hash: TxHash) -> Result<Skeleton, DecodeError> {
        let (tx, payloads) = Self::decode_bare(bytes)?;
        Ok(Skeleton { tx, payloads, hash })
    }

    /// The transaction without its payloads, and where each payload lies.
    fn decode_bare(bytes: &[u8]) -> Result<(Self, Vec<(usize, usize)>), DecodeError> {
        let mut payloads = Vec::new();
        let tx = Self::decode_parts(bytes, false, |offset, len| payloads.push((offset, len)))?;
        Ok((tx, payloads))
    }

    /// The hash of a transaction from its encoding: the encoding is canonical (fixed-width
    /// fields, every tag checked, nothing trailing), so for bytes that decode this equals
    /// [`Self::hash`] of the decoded transaction; one pass over contiguous bytes.
    pub fn hash_encoded(bytes: &[u8]) -> TxHash {
        hash_body(&bytes[..bytes.len().saturating_sub(64)])
    }

    fn decode_parts(
        bytes: &[u8],
        keep_payloads: bool,
        mut payload_at: impl FnMut(usize, usize),
    ) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_TX_BYTES {
            return Err(DecodeError::TooLarge {
                what: "transaction",
                got: bytes.len() as u64,
                limit: MAX_TX_BYTES as u64,
            });
        }
        let mut r = Reader::new(bytes);
        let format = r.u16()?;
        if format != TX_FORMAT_1 && format != TX_FORMAT_2 {
            return Err(DecodeError::Invalid {
                what: "transaction format",
                value: format.into(),
            });
        }
        let chain = ChainId(r.array()?);
        let author = PublicKey(r.array()?);
        let timestamp_ns = r.u64()?;
        let nonce = r.u64()?;
        let np = r.count("preconditions", MAX_PRECONDITIONS)?;
        let mut preconditions = Vec::with_capacity(np.min(1024));
        for _ in 0..np {
            preconditions.push(match r.u8()? {
                1 => Precondition::Absent(RecordKey(r.array()?)),
                2 => Precondition::AtVersion(RecordKey(r.array()?), r.u64()?),
                v => {
                    return Err(DecodeError::Invalid {
                        what: "precondition tag",
                        value: v.into(),
                    })
                }
            });
        }
        let no = r.count("ops", MAX_OPS)?;
        let mut ops = Vec::with_capacity(no.min(1024));
        for _ in 0..no {
            ops.push(match r.u8()? {
                1 => {
                    let header = RecordHeader::decode(&mut r)?;
                    let write = decode_write(&mut r)?;
                    let sealed = r.bytes("payload", MAX_PAYLOAD)?;
                    payload_at(bytes.len() - r.remaining() - sealed.len(), sealed.len());
                    let payload = if keep_payloads {
                        sealed.to_vec()
                    } else {
                        Vec::new()
                    };
                    Op::Put {
                        header,
                        write,
                        payload,
                    }
                }
                2 => Op::Delete {
                    key: RecordKey(r.array()?),
                },
                3 => Op::SetRoot(decode_root(&mut r)?),
                v => {
                    return Err(DecodeError::Invalid {
                        what: "op tag",
                        value: v.into(),
                    })
                }
            });
        }
        let signature = r.array()?;
        r.finish()?;
        let tx = Self {
            chain,
            author,
            timestamp_ns,
            nonce,
            preconditions,
            ops,
            signature,
        };
        if tx.format() != format {
            // Format 1 cannot carry AES-256-GCM payloads, and format 2 without one would be
            // a second encoding of a format-1 transaction.
            return Err(DecodeError::Invalid {
                what: "transaction format for its payloads' ciphers",
                value: format.into(),
            });
        }
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Transaction {
        let k = SigningKey::generate();
        let dk = DataKey::generate();
        let chain = ChainId::random();
        let mut header = RecordHeader {
            key: RecordKey::random(),
            parent: Some(RecordKey::random()),
            data_key: KeyId::default(),
            plain_len: 0,
            cipher: Cipher::default(),
        };
        let payload = header.seal(&chain, &dk, b"data");
        let mut tx = Transaction::new(chain, k.public());
        tx.preconditions.push(Precondition::Absent(header.key));
        tx.preconditions
            .push(Precondition::AtVersion(RecordKey::random(), 7));
        tx.ops.push(Op::Put {
            header,
            write: WriteAuthority::Keys(vec![k.public().id()]),
            payload,
        });
        tx.ops.push(Op::Delete {
            key: RecordKey::random(),
        });
        tx.ops
            .push(Op::SetRoot(RootAuthority::single_owner(k.public())));
        tx.sign(&k)
    }

    #[test]
    fn roundtrip() {
        let tx = sample();
        let bytes = tx.encode();
        assert_eq!(Transaction::decode(&bytes).as_ref(), Ok(&tx));
        assert!(tx.verify_signature().is_ok());
    }

    #[test]
    fn a_skeleton_is_the_transaction_without_its_payloads_and_validates_alike() {
        use crate::validate::{check_skeleton, check_stateless};
        let tx = sample();
        let bytes = tx.encode();
        let sk = Transaction::decode_skeleton(&bytes).expect("decodes");
        assert_eq!(sk.hash, tx.hash());
        assert_eq!(sk.payload_offsets(), tx.payload_offsets());
        let mut bare = tx.clone();
        let mut payloads = Vec::new();
        for op in &mut bare.ops {
            if let Op::Put { payload, .. } = op {
                payloads.push(std::mem::take(payload));
            }
        }
        assert_eq!(sk.tx, bare);
        assert_eq!(sk.payloads.len(), payloads.len());
        for ((off, len), p) in sk.payloads.iter().zip(&payloads) {
            assert_eq!(&bytes[*off..off + len], &p[..]);
        }
        assert!(check_skeleton(&sk).is_ok());
        // Any changed bit fails to decode, or fails the checks (the signature covers it all).
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            if let Ok(sk) = Transaction::decode_skeleton(&b) {
                assert!(
                    check_skeleton(&sk).is_err(),
                    "byte {i} changed, still valid"
                );
            }
        }
        // A format error is refused alike (here a header whose length is not its payload's).
        let mut wrong = tx.clone();
        let k = SigningKey::generate();
        if let Some(Op::Put { header, .. }) = wrong.ops.first_mut() {
            header.plain_len += 1;
        }
        let wrong = wrong.sign(&k);
        let sk = Transaction::decode_skeleton(&wrong.encode()).expect("decodes");
        let (a, b) = (check_stateless(&wrong), check_skeleton(&sk));
        assert!(
            matches!(
                (&a, &b),
                (
                    Err(crate::ValidationError::BadPayload { .. }),
                    Err(crate::ValidationError::BadPayload { .. })
                )
            ),
            "{a:?} / {b:?}"
        );
    }

    #[test]
    fn oversized_counts_and_payloads_are_refused() {
        let tx = sample();
        let mut bytes = tx.encode();
        // The precondition count sits after format, chain, author, timestamp and nonce.
        let at = 2 + 16 + 32 + 8 + 8;
        bytes[at..at + 4].copy_from_slice(&(MAX_PRECONDITIONS as u32 + 1).to_le_bytes());
        assert!(matches!(
            Transaction::decode(&bytes),
            Err(DecodeError::TooLarge {
                what: "preconditions",
                ..
            })
        ));
        let big = vec![0u8; MAX_TX_BYTES + 1];
        assert!(matches!(
            Transaction::decode(&big),
            Err(DecodeError::TooLarge {
                what: "transaction",
                ..
            })
        ));
    }

    /// A transaction with one Put sealed under `cipher`, signed.
    fn one_put(cipher: Cipher) -> (Transaction, DataKey) {
        let k = SigningKey::generate();
        let dk = DataKey::generate();
        let chain = ChainId::random();
        let mut header = RecordHeader {
            key: RecordKey::random(),
            parent: None,
            data_key: KeyId::default(),
            plain_len: 0,
            cipher: Cipher::default(),
        };
        let payload = header.seal_with(cipher, &chain, &dk, b"data");
        let mut tx = Transaction::new(chain, k.public());
        tx.ops.push(Op::Put {
            header,
            write: WriteAuthority::Inherit,
            payload,
        });
        (tx.sign(&k), dk)
    }

    #[test]
    fn the_format_version_names_the_ciphers_and_a_mismatch_is_refused() {
        for (cipher, format) in [
            (Cipher::XChaCha20Poly1305, TX_FORMAT_1),
            (Cipher::Aes256Gcm, TX_FORMAT_2),
        ] {
            let (tx, dk) = one_put(cipher);
            assert_eq!(tx.format(), format);
            let bytes = tx.encode();
            assert_eq!(bytes[..2], format.to_le_bytes());
            let back = Transaction::decode(&bytes).expect("decodes");
            assert_eq!(back, tx);
            let Some(Op::Put {
                header, payload, ..
            }) = back.ops.first()
            else {
                panic!("one put");
            };
            assert_eq!(header.cipher, cipher);
            assert_eq!(
                header.open(&tx.chain, &dk, payload.clone()).as_deref(),
                Ok(&b"data"[..])
            );
            // The other version number on the same body is refused, not read differently.
            let mut other = bytes.clone();
            other[..2].copy_from_slice(&(TX_FORMAT_1 + TX_FORMAT_2 - format).to_le_bytes());
            assert!(
                matches!(
                    Transaction::decode(&other),
                    Err(DecodeError::Invalid {
                        what: "transaction format for its payloads' ciphers",
                        ..
                    })
                ),
                "{cipher:?}"
            );
            for unknown in [0u16, 3, u16::MAX] {
                let mut b = bytes.clone();
                b[..2].copy_from_slice(&unknown.to_le_bytes());
                assert!(matches!(
                    Transaction::decode(&b),
                    Err(DecodeError::Invalid {
                        what: "transaction format",
                        ..
                    })
                ));
            }
        }
        // A transaction without payloads stays format 1.
        let k = SigningKey::generate();
        let mut tx = Transaction::new(ChainId::random(), k.public());
        tx.ops.push(Op::Delete {
            key: RecordKey::random(),
        });
        assert_eq!(tx.sign(&k).encode()[..2], TX_FORMAT_1.to_le_bytes());
    }

    #[test]
    fn unknown_record_header_flags_are_refused() {
        let (tx, _) = one_put(Cipher::Aes256Gcm);
        let mut bytes = tx.encode();
        // The flags byte follows format, chain, author, timestamp, nonce, the precondition
        // count, the op count, the op tag and the record key.
        let at = 2 + 16 + 32 + 8 + 8 + 4 + 4 + 1 + 16;
        assert_eq!(bytes[at], 0b10);
        bytes[at] = 0b100;
        assert!(matches!(
            Transaction::decode(&bytes),
            Err(DecodeError::Invalid {
                what: "record header flags",
                value: 4
            })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Transaction::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Transaction::decode(&long), Err(DecodeError::Trailing(1)));
    }
}
