//! The Raft transport's request encoding: the `RaftRequest` envelope (proto/raft.proto) with
//! its postcard body written straight into tonic's buffer. Building the body apart and having
//! prost copy it into the buffer was one more copy of every replicated byte per follower, into
//! a fresh 8 MiB allocation each time.

use crate::pb::raft::RaftReply;
use prost::bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, WireType};
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::Arc;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// A request on its way: the partition and openraft's message.
pub struct Outgoing<R> {
    /// `RaftRequest.partition`.
    pub partition: u32,
    /// `RaftRequest.body`, before postcard.
    pub body: Arc<R>,
}

/// Sends [`Outgoing`], receives `RaftReply` (prost).
pub struct RaftCodec<R>(PhantomData<R>);

impl<R> Default for RaftCodec<R> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<R: Serialize + Send + Sync + 'static> Codec for RaftCodec<R> {
    type Encode = Outgoing<R>;
    type Decode = RaftReply;
    type Encoder = RaftEncoder<R>;
    type Decoder = ProstDecoder<RaftReply>;

    fn encoder(&mut self) -> Self::Encoder {
        RaftEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Writes the envelope as prost would (partition omitted when 0), the body in place.
pub struct RaftEncoder<R>(PhantomData<R>);

impl<R: Serialize + Send + Sync + 'static> Encoder for RaftEncoder<R> {
    type Item = Outgoing<R>;
    type Error = Status;

    fn encode(&mut self, item: Outgoing<R>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let failed = |e: postcard::Error| Status::internal(format!("encoding a raft message: {e}"));
        let n = postcard::experimental::serialized_size(&*item.body).map_err(failed)?;
        buf.reserve(n + 16);
        write_request(item.partition, &*item.body, n, buf).map_err(failed)
    }
}

/// `n`: the body's postcard size.
fn write_request<R: Serialize, B: BufMut>(
    partition: u32,
    body: &R,
    n: usize,
    buf: &mut B,
) -> postcard::Result<()> {
    if partition != 0 {
        prost::encoding::uint32::encode(1, &partition, buf);
    }
    if n > 0 {
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(n as u64, buf);
        postcard::serialize_with_flavor(body, Into(buf))?;
    }
    Ok(())
}

/// A postcard output into a `BufMut`, byte strings copied at once.
struct Into<'a, B>(&'a mut B);

impl<B: BufMut> postcard::ser_flavors::Flavor for Into<'_, B> {
    type Output = ();

    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.0.put_u8(b);
        Ok(())
    }

    fn try_extend(&mut self, b: &[u8]) -> postcard::Result<()> {
        self.0.put_slice(b);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pb::raft::RaftRequest;
    use prost::Message;

    /// What the encoder writes decodes as the `RaftRequest` prost would have written.
    #[test]
    fn the_envelope_decodes_as_a_raft_request() {
        for partition in [0u32, 7, 300_000] {
            let body = vec![5u8; 200_000];
            let mut out = bytes::BytesMut::new();
            let n = postcard::experimental::serialized_size(&body).unwrap();
            write_request(partition, &body, n, &mut out).unwrap();
            let want = RaftRequest {
                partition,
                body: postcard::to_stdvec(&body).unwrap().into(),
            };
            assert_eq!(&out[..], &want.encode_to_vec()[..]);
        }
    }
}
