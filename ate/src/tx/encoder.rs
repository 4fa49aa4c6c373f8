//! Transactions built straight into their encoding, each payload sealed where it will lie.
//!
//! Building a [`Transaction`] of sealed ops and then encoding it copies every payload twice
//! (sealed into its own buffer, then into the encoding), and a file's data is most of what a
//! mount writes. Here the plaintext is copied once, into the encoding, and encrypted in place;
//! the hash is taken over the finished body in one pass. The payloads are sealed together at
//! [`TxEncoder::finish`], on several threads when there is enough of them: sealing is most of
//! the CPU a write costs, and the caller (a mount's flush) holds its state lock meanwhile.

use super::{
    encode_op, encode_put_head, hash_body, put_len, Op, RecordHeader, Sink, Skeleton, Transaction,
};
use crate::authority::WriteAuthority;
use crate::crypto::{Cipher, DataKey, SigningKey, NONCE_LEN, SEAL_OVERHEAD, TAG_LEN};
use crate::ids::RecordKey;
use bytes::Bytes;

impl Sink for Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

/// Sealed bytes below which one thread seals them all (a thread costs tens of microseconds).
const PARALLEL_MIN: usize = 1 << 20;
/// Most threads sealing one transaction.
const MAX_THREADS: usize = 4;

/// A payload to seal at [`TxEncoder::finish`]: where its plaintext lies (after room for the
/// nonce), how long, under which key, bound to which header.
#[derive(Debug)]
struct Deferred<'a> {
    at: usize,
    plain_len: usize,
    key: &'a DataKey,
    ad: Vec<u8>,
}

/// A transaction being encoded. [`TxEncoder::finish`] seals and signs it.
#[derive(Debug)]
pub struct TxEncoder<'a> {
    /// The transaction as encoded so far, its Put payloads left empty.
    tx: Transaction,
    buf: Vec<u8>,
    /// Where the operation count lies (written when the count is known).
    ops_at: usize,
    payloads: Vec<(usize, usize)>,
    deferred: Vec<Deferred<'a>>,
}

impl<'a> TxEncoder<'a> {
    /// Starts from `tx`'s chain, author, time, nonce and preconditions, then its ops if any;
    /// `capacity`: the payload bytes expected (saves regrowing a large buffer).
    pub fn new(mut tx: Transaction, capacity: usize) -> Self {
        let ops = std::mem::take(&mut tx.ops);
        let mut buf = Vec::with_capacity(capacity + 128 + tx.preconditions.len() * 41);
        tx.encode_head(&mut buf);
        let ops_at = buf.len();
        put_len(&mut buf, 0);
        let mut e = Self {
            tx,
            buf,
            ops_at,
            payloads: Vec::new(),
            deferred: Vec::new(),
        };
        for op in ops {
            e.push(op);
        }
        e
    }

    /// Operations so far.
    pub fn ops(&self) -> usize {
        self.tx.ops.len()
    }

    /// Appends an operation whose payload (if any) is already sealed.
    pub fn push(&mut self, mut op: Op) {
        encode_op(&op, &mut self.buf);
        if let Op::Put { payload, .. } = &mut op {
            let len = payload.len();
            self.payloads.push((self.buf.len() - len, len));
            *payload = Vec::new();
        }
        self.tx.ops.push(op);
    }

    /// Appends a Put of `plaintext` sealed under `data_key`, as [`Op::put`] would make it
    /// (sealed at [`Self::finish`]).
    pub fn push_sealed(
        &mut self,
        key: RecordKey,
        parent: Option<RecordKey>,
        write: WriteAuthority,
        data_key: &'a DataKey,
        plaintext: &[u8],
    ) {
        let header = RecordHeader {
            key,
            parent,
            data_key: data_key.id(),
            plain_len: plaintext.len() as u64,
            cipher: Cipher::CURRENT,
        };
        let ad = header.associated_data(&self.tx.chain);
        let len = plaintext.len() + SEAL_OVERHEAD;
        encode_put_head(&header, &write, len, &mut self.buf);
        let at = self.buf.len();
        // The plaintext is copied to where its ciphertext will lie and sealed there at finish
        // (zeroing the place first cost 6 % of a mount's CPU in a sequential write, perf).
        self.buf.extend_from_slice(&[0; NONCE_LEN]);
        self.buf.extend_from_slice(plaintext);
        self.buf.extend_from_slice(&[0; TAG_LEN]);
        self.payloads.push((at, len));
        self.deferred.push(Deferred {
            at,
            plain_len: plaintext.len(),
            key: data_key,
            ad,
        });
        self.tx.ops.push(Op::Put {
            header,
            write,
            payload: Vec::new(),
        });
    }

    /// Seals the deferred payloads into their places.
    fn seal_deferred(&mut self) {
        let deferred = std::mem::take(&mut self.deferred);
        // The payloads' places, in order, as disjoint slices of the buffer.
        let mut places = Vec::with_capacity(deferred.len());
        let mut rest: &mut [u8] = &mut self.buf;
        let mut consumed = 0;
        for d in &deferred {
            let len = d.plain_len + SEAL_OVERHEAD;
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(d.at - consumed);
            let (place, tail) = tail.split_at_mut(len);
            places.push((place, d));
            rest = tail;
            consumed = d.at + len;
        }
        let total: usize = deferred.iter().map(|d| d.plain_len).sum();
        let threads = if total < PARALLEL_MIN {
            1
        } else {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_THREADS)
        };
        let seal = |work: &mut [(&mut [u8], &Deferred<'_>)]| {
            for (place, d) in work.iter_mut() {
                d.key.seal_in_place(Cipher::CURRENT, &d.ad, place);
            }
        };
        if threads <= 1 {
            seal(&mut places);
            return;
        }
        // Shares of about equal bytes, one per thread; this thread seals the first.
        let share = total.div_ceil(threads);
        let mut shares: Vec<&mut [(&mut [u8], &Deferred<'_>)]> = Vec::with_capacity(threads);
        let mut left: &mut [(&mut [u8], &Deferred<'_>)] = &mut places;
        while !left.is_empty() {
            let mut bytes = 0;
            let n = left
                .iter()
                .take_while(|(_, d)| {
                    let take = bytes < share;
                    bytes += d.plain_len;
                    take
                })
                .count()
                .max(1);
            let (head, tail) = std::mem::take(&mut left).split_at_mut(n);
            shares.push(head);
            left = tail;
        }
        std::thread::scope(|s| {
            let mut shares = shares.into_iter();
            let first = shares.next();
            for work in shares {
                s.spawn(move || seal(work));
            }
            if let Some(work) = first {
                seal(work);
            }
        });
    }

    /// Signs with `key` (its public key becomes the author): the transaction without its
    /// payloads, where they lie, its hash, and the encoding.
    pub fn finish(mut self, key: &SigningKey) -> (Skeleton, Bytes) {
        self.seal_deferred();
        self.tx.author = key.public();
        // The format version depends on the ops' ciphers, known only now.
        let format = self.tx.format().to_le_bytes();
        self.buf[..format.len()].copy_from_slice(&format);
        // The author follows the format version and the chain id.
        let at = format.len() + self.tx.chain.0.len();
        self.buf[at..at + self.tx.author.0.len()].copy_from_slice(&self.tx.author.0);
        let count = u32::try_from(self.tx.ops.len()).unwrap_or(u32::MAX);
        self.buf[self.ops_at..self.ops_at + 4].copy_from_slice(&count.to_le_bytes());
        let hash = hash_body(&self.buf);
        self.tx.signature = key.sign(&hash.0);
        self.buf.extend_from_slice(&self.tx.signature);
        let sk = Skeleton {
            tx: self.tx,
            payloads: self.payloads,
            hash,
        };
        (sk, Bytes::from(self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChainId;

    #[test]
    fn an_encoded_transaction_equals_the_one_built_then_encoded_and_opens() {
        let signer = SigningKey::generate();
        let dk = DataKey::generate();
        let chain = ChainId::default();
        let mut tx = Transaction::new(chain, SigningKey::generate().public());
        tx.preconditions
            .push(super::super::Precondition::Absent(RecordKey::from_u128(7)));
        tx.ops.push(Op::Delete {
            key: RecordKey::from_u128(1),
        });
        let mut e = TxEncoder::new(tx.clone(), 0);
        let plain = vec![0xa5u8; 100_000];
        e.push_sealed(
            RecordKey::from_u128(2),
            Some(RecordKey::from_u128(3)),
            WriteAuthority::Inherit,
            &dk,
            &plain,
        );
        e.push(Op::put(
            &chain,
            RecordKey::from_u128(4),
            None,
            WriteAuthority::Inherit,
            Some(&dk),
            b"small",
        ));
        // Enough more to be sealed on several threads, and one under another key.
        let blocks: Vec<Vec<u8>> = (0..24u8).map(|i| vec![i; 64 << 10]).collect();
        for (i, b) in blocks.iter().enumerate() {
            e.push_sealed(
                RecordKey::from_u128(100 + i as u128),
                None,
                WriteAuthority::Inherit,
                &dk,
                b,
            );
        }
        let other = DataKey::generate();
        e.push_sealed(
            RecordKey::from_u128(5),
            None,
            WriteAuthority::Inherit,
            &other,
            b"other key",
        );
        assert_eq!(e.ops(), 3 + 24 + 1);
        let (sk, bytes) = e.finish(&signer);

        // The bytes decode to the transaction the encoder describes, signed by `signer`.
        let decoded = Transaction::decode(&bytes).expect("decodes");
        assert_eq!(decoded.author, signer.public());
        assert_eq!(decoded.verify_signature().expect("signed"), sk.hash);
        assert_eq!(Transaction::decode_skeleton(&bytes).expect("skeleton"), sk);
        assert_eq!(decoded.encode(), bytes.to_vec());
        assert_eq!(bytes[..2], super::super::TX_FORMAT_2.to_le_bytes());
        assert_eq!(decoded.preconditions, tx.preconditions);
        // The sealed payload opens to the plaintext under its header.
        let Op::Put {
            header, payload, ..
        } = &decoded.ops[1]
        else {
            panic!("op 1 is the sealed put");
        };
        assert_eq!(
            header.open(&chain, &dk, payload.clone()).expect("opens"),
            plain
        );
        for (i, b) in blocks.iter().enumerate() {
            let Op::Put {
                header, payload, ..
            } = &decoded.ops[3 + i]
            else {
                panic!("op {} is a block", 3 + i);
            };
            assert_eq!(
                &header.open(&chain, &dk, payload.clone()).expect("opens"),
                b
            );
        }
        let Op::Put {
            header, payload, ..
        } = &decoded.ops[27]
        else {
            panic!("op 27 is the other key's");
        };
        assert_eq!(
            header.open(&chain, &other, payload.clone()).expect("opens"),
            b"other key"
        );
        crate::validate::check_skeleton(&sk).expect("well formed");
    }
}
