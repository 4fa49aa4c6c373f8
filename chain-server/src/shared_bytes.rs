//! Decoding Raft messages without copying the transactions they carry: while a message body
//! is decoded on this thread, a transaction's bytes become a slice of that body (shared, a
//! reference count) instead of a copy. A follower copied every replicated byte here.

use bytes::Bytes;
use serde::de::{DeserializeOwned, Deserializer, Error, SeqAccess, Visitor};
use std::cell::RefCell;

thread_local! {
    /// The body being decoded on this thread, if any.
    static BODY: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Decodes a postcard `body`; transactions in it share its buffer.
pub fn decode<T: DeserializeOwned>(body: &Bytes) -> postcard::Result<T> {
    BODY.with(|b| *b.borrow_mut() = Some(body.clone()));
    let decoded = postcard::from_bytes(body);
    BODY.with(|b| *b.borrow_mut() = None);
    decoded
}

/// `deserialize_with` for a `Bytes` field: a slice of the body being decoded when the bytes
/// lie within it, else a copy (any other format, or a body not decoded through [`decode`]).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    d.deserialize_bytes(SharedBytes)
}

struct SharedBytes;

impl<'de> Visitor<'de> for SharedBytes {
    type Value = Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(BODY.with(|b| match &*b.borrow() {
            Some(body) if within(body, v) => body.slice_ref(v),
            _ => Bytes::copy_from_slice(v),
        }))
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Bytes::from(v))
    }
}

fn within(body: &Bytes, v: &[u8]) -> bool {
    let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
    let (a, b) = (v.as_ptr() as usize, v.as_ptr() as usize + v.len());
    start <= a && b <= end
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::types::Command;

    #[test]
    fn a_decoded_transaction_shares_the_body_and_equals_a_copying_decode() {
        let cmd = Command::Commit {
            chain: [3; 16],
            tx: bytes::Bytes::from(vec![9u8; 100_000]),
            session: Some([4; 16]),
            hash: None,
        };
        let body = bytes::Bytes::from(postcard::to_stdvec(&cmd).unwrap());
        let shared: Command = super::decode(&body).unwrap();
        let copied: Command = postcard::from_bytes(&body).unwrap();
        assert_eq!(shared, cmd);
        assert_eq!(copied, cmd);
        let Command::Commit { tx, .. } = shared else {
            unreachable!()
        };
        let inside = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(
            inside.contains(&(tx.as_ptr() as usize)),
            "not a slice of the body"
        );
    }
}
