//! The Raft transport on the wire, client side: a request is the `RaftRequest` envelope
//! (proto/raft.proto) around openraft's message in postcard, framed as gRPC frames it, and
//! sent in pieces whose large byte strings are the log's own buffers. Encoding through
//! tonic's codec copied every replicated byte into a fresh buffer once per follower: a
//! twentieth of a three-replica write's CPU, most of it the leader's (perf, session 34).

use crate::pb::raft::RaftReply;
use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, WireType};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Status;

/// Byte strings shorter than this are copied: a piece costs more than copying a few KiB.
const SHARE_MIN: usize = 64 << 10;

/// What a message holds as [`Bytes`] (transactions): sent as they are, not copied; and the
/// hashes its commit entries carry (`carried_hash`), which go beside its body.
pub trait Shared {
    fn shared(&self) -> Vec<Bytes> {
        Vec::new()
    }
    fn hashes(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// A request as gRPC puts it on the wire: one message (its 5-byte prefix first), in pieces.
#[derive(Debug)]
pub struct Framed(VecDeque<Bytes>);

impl Framed {
    /// `body` in the envelope for `partition`, with its commit entries' hashes
    /// ([`Shared::hashes`]); its byte strings that are [`Shared::shared`] go as they are.
    /// Fails when postcard does, or when the message would exceed `limit` bytes.
    pub fn new<R: Serialize + Shared>(
        partition: u32,
        body: &R,
        limit: usize,
    ) -> Result<Self, Status> {
        let failed = |e: postcard::Error| Status::internal(format!("encoding a raft message: {e}"));
        let n = postcard::experimental::serialized_size(body).map_err(failed)?;
        let hashes = body.hashes();
        let mut head = BytesMut::with_capacity(32 + hashes.len());
        if partition != 0 {
            prost::encoding::uint32::encode(1, &partition, &mut head);
        }
        // Fields may come in any order; the body goes last because it is sent in pieces.
        if !hashes.is_empty() {
            encode_key(3, WireType::LengthDelimited, &mut head);
            encode_varint(hashes.len() as u64, &mut head);
            head.put_slice(&hashes);
        }
        if n > 0 {
            encode_key(2, WireType::LengthDelimited, &mut head);
            encode_varint(n as u64, &mut head);
        }
        let prefix = ate::remote::wire::prefix(head.len() + n, limit, "raft message")?;
        let shared: HashMap<usize, Bytes> = body
            .shared()
            .into_iter()
            .filter(|b| b.len() >= SHARE_MIN)
            .map(|b| (b.as_ptr() as usize, b.clone()))
            .collect();
        // Room for what is copied (the message less its shared byte strings): a large
        // snapshot chunk would otherwise be copied again each time the buffer doubled.
        let copied = n.saturating_sub(shared.values().map(Bytes::len).sum());
        let mut cur = BytesMut::with_capacity(5 + head.len() + copied);
        cur.put_slice(&prefix);
        cur.put_slice(&head);
        let mut out = Pieces {
            cur,
            done: VecDeque::new(),
            shared,
        };
        if n > 0 {
            postcard::serialize_with_flavor(body, &mut out).map_err(failed)?;
        }
        let Pieces { cur, mut done, .. } = out;
        if !cur.is_empty() {
            done.push_back(cur.freeze());
        }
        Ok(Self(done))
    }

    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }
}

/// postcard's output: small writes gathered, shared byte strings as pieces of their own.
struct Pieces {
    cur: BytesMut,
    done: VecDeque<Bytes>,
    shared: HashMap<usize, Bytes>,
}

impl postcard::ser_flavors::Flavor for &mut Pieces {
    type Output = ();

    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.cur.put_u8(b);
        Ok(())
    }

    fn try_extend(&mut self, b: &[u8]) -> postcard::Result<()> {
        let same = self
            .shared
            .get(&(b.as_ptr() as usize))
            .filter(|s| s.len() == b.len());
        match same {
            Some(s) => {
                if !self.cur.is_empty() {
                    self.done.push_back(self.cur.split().freeze());
                }
                self.done.push_back(s.clone());
            }
            None => self.cur.put_slice(b),
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl http_body::Body for Framed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len() as u64)
    }
}

/// One unary call of `path` with `request`; the reply, or the call's status. A reply over
/// `limit` bytes is refused before it is all read.
pub async fn unary(
    channel: Channel,
    path: PathAndQuery,
    request: Framed,
    limit: usize,
) -> Result<RaftReply, Status> {
    let mut replies = ate::remote::wire::open(channel, path, request)
        .await?
        .into_streaming(tonic_prost::ProstDecoder::<RaftReply>::default(), limit);
    let reply = replies
        .message()
        .await?
        .ok_or_else(|| Status::internal("a raft reply without a message"))?;
    // Its status follows it, in the trailers.
    replies.trailers().await?;
    Ok(reply)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pb::raft::RaftRequest;
    use prost::Message;

    #[derive(Serialize)]
    struct Body {
        small: Bytes,
        large: Bytes,
        n: u64,
        copied: Vec<u8>,
        #[serde(skip)]
        hashes: Vec<u8>,
    }

    impl Shared for Body {
        fn shared(&self) -> Vec<Bytes> {
            vec![self.small.clone(), self.large.clone()]
        }
        fn hashes(&self) -> Vec<u8> {
            self.hashes.clone()
        }
    }

    impl Shared for Vec<u8> {}

    /// The pieces make the message prost would have written (byte for byte without hashes,
    /// the same fields with them), prefixed as gRPC frames it; a large shared byte string is
    /// a piece of its own that is the same memory, a small one and one not named shared are
    /// copied.
    #[test]
    fn the_pieces_are_the_framed_envelope_and_share_the_large_payloads() {
        let mut body = Body {
            small: Bytes::from(vec![1u8; 100]),
            large: Bytes::from(vec![2u8; 300_000]),
            n: 77,
            copied: vec![3u8; 200_000],
            hashes: Vec::new(),
        };
        for (partition, hashes) in [(0u32, 0), (7, 0), (300_000, 0), (9, 64)] {
            body.hashes = vec![7u8; hashes];
            let framed = Framed::new(partition, &body, 1 << 30).unwrap();
            let want = RaftRequest {
                partition,
                body: postcard::to_stdvec(&body).unwrap().into(),
                hashes: body.hashes.clone(),
            };
            let mut got = Vec::new();
            for piece in &framed.0 {
                got.extend_from_slice(piece);
            }
            assert_eq!(got[0], 0);
            assert_eq!(
                u32::from_be_bytes(got[1..5].try_into().unwrap()) as usize,
                want.encoded_len()
            );
            if body.hashes.is_empty() {
                assert_eq!(&got[5..], &want.encode_to_vec()[..]);
            }
            assert_eq!(RaftRequest::decode(&got[5..]).unwrap(), want);
            let large: Vec<&Bytes> = framed
                .0
                .iter()
                .filter(|p| p.as_ptr() == body.large.as_ptr())
                .collect();
            assert_eq!(large.len(), 1);
            assert_eq!(large[0].len(), body.large.len());
            assert!(framed.0.iter().all(|p| p.as_ptr() != body.small.as_ptr()));
            assert!(framed.0.iter().all(|p| p.as_ptr() != body.copied.as_ptr()));
        }
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_it_is_sent() {
        let body = vec![0u8; 10_000];
        let err = Framed::new(1, &body, 9_000).unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
    }
}
