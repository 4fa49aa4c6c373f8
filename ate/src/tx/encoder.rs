//! Transactions built straight into their encoding, each payload sealed where it will lie.
//!
//! Building a [`Transaction`] of sealed ops and then encoding it copies every payload twice
//! (sealed into its own buffer, then into the encoding), and a file's data is most of what a
//! mount writes. Here the plaintext is copied once, into the encoding, and encrypted in place;
//! the hash is taken over the finished body in one pass.

use super::{
    encode_op, encode_put_head, hash_body, put_len, Op, RecordHeader, Sink, Skeleton, Transaction,
};
use crate::authority::WriteAuthority;
use crate::crypto::{DataKey, SigningKey, SEAL_OVERHEAD};
use crate::ids::RecordKey;
use bytes::Bytes;

impl Sink for Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

/// A transaction being encoded. [`TxEncoder::finish`] signs it.
#[derive(Debug)]
pub struct TxEncoder {
    /// The transaction as encoded so far, its Put payloads left empty.
    tx: Transaction,
    buf: Vec<u8>,
    /// Where the operation count lies (written when the count is known).
    ops_at: usize,
    payloads: Vec<(usize, usize)>,
}

impl TxEncoder {
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

    /// Encoded bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True before the first byte (never: the head is written at once).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
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

    /// Appends a Put of `plaintext` sealed under `data_key`, as [`Op::put`] would make it.
    pub fn push_sealed(
        &mut self,
        key: RecordKey,
        parent: Option<RecordKey>,
        write: WriteAuthority,
        data_key: &DataKey,
        plaintext: &[u8],
    ) {
        let header = RecordHeader {
            key,
            parent,
            data_key: data_key.id(),
            plain_len: plaintext.len() as u64,
        };
        let ad = header.associated_data(&self.tx.chain);
        encode_put_head(
            &header,
            &write,
            plaintext.len() + SEAL_OVERHEAD,
            &mut self.buf,
        );
        let at = self.buf.len();
        data_key.seal_onto(&ad, plaintext, &mut self.buf);
        self.payloads.push((at, self.buf.len() - at));
        self.tx.ops.push(Op::Put {
            header,
            write,
            payload: Vec::new(),
        });
    }

    /// Signs with `key` (its public key becomes the author): the transaction without its
    /// payloads, where they lie, its hash, and the encoding.
    pub fn finish(mut self, key: &SigningKey) -> (Skeleton, Bytes) {
        self.tx.author = key.public();
        // The author follows the format version and the chain id.
        let at = std::mem::size_of_val(&super::TX_FORMAT) + self.tx.chain.0.len();
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
        assert_eq!(e.ops(), 3);
        let (sk, bytes) = e.finish(&signer);

        // The bytes decode to the transaction the encoder describes, signed by `signer`.
        let decoded = Transaction::decode(&bytes).expect("decodes");
        assert_eq!(decoded.author, signer.public());
        assert_eq!(decoded.verify_signature().expect("signed"), sk.hash);
        assert_eq!(Transaction::decode_skeleton(&bytes).expect("skeleton"), sk);
        assert_eq!(decoded.encode(), bytes.to_vec());
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
        crate::validate::check_skeleton(&sk).expect("well formed");
    }
}
