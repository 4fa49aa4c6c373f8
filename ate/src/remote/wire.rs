//! gRPC calls whose requests go out as pieces the caller hands over, and the commit stream
//! made so (client side): each `CommitRequest` goes as a head, its transaction as the `Bytes`
//! it already is, and the session. Through the generated client, prost copied every
//! transaction a mount writes into tonic's encode buffer before rustls copied it again to seal
//! it (2 % of a three-replica write's CPU, perf, session 34). The replies are read by tonic's
//! own decoder, and the server sees the same bytes as before. chain-server's Raft transport
//! sends its requests the same way.

use super::pb::chain::{CommitRequest, CommitResult};
use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codec::Streaming;
use tonic::codegen::http::{self, uri::PathAndQuery};
use tonic::codegen::Service;
use tonic::transport::Channel;
use tonic::Status;

const PATH: &str = "/atefs.chain.v1.Chains/CommitStream";

/// One request as gRPC puts it on the wire (its 5-byte prefix first): a head with the chain
/// and the transaction's key and length, the transaction itself, and the session after it.
/// A request over `limit` bytes is refused, as tonic's encoder refuses it.
fn pieces(req: &CommitRequest, limit: usize) -> Result<Vec<Bytes>, Status> {
    let mut head = BytesMut::with_capacity(48);
    head.put_slice(&prefix(req.encoded_len(), limit, "commit request")?);
    if !req.chain.is_empty() {
        prost::encoding::bytes::encode(1, &req.chain, &mut head);
    }
    let mut out = Vec::with_capacity(3);
    if req.tx.is_empty() {
        out.push(head.freeze());
    } else {
        encode_key(2, WireType::LengthDelimited, &mut head);
        encode_varint(req.tx.len() as u64, &mut head);
        out.push(head.freeze());
        out.push(req.tx.clone());
    }
    if !req.session.is_empty() {
        let mut tail = BytesMut::with_capacity(24);
        prost::encoding::bytes::encode(3, &req.session, &mut tail);
        out.push(tail.freeze());
    }
    Ok(out)
}

/// The request body: the requests `rx` gives, each in its pieces, until `rx` closes.
struct Requests {
    rx: tokio::sync::mpsc::Receiver<CommitRequest>,
    queued: VecDeque<Bytes>,
    limit: usize,
}

impl http_body::Body for Requests {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(b) = self.queued.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(req)) => {
                let mut pieces = match pieces(&req, self.limit) {
                    Ok(p) => VecDeque::from(p),
                    Err(e) => return Poll::Ready(Some(Err(e))),
                };
                let first = pieces.pop_front().map(|b| Ok(Frame::data(b)));
                self.queued = pieces;
                Poll::Ready(first)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Opens a CommitStream on `channel` sending what `rx` gives; the replies as tonic's
/// generated client would give them (messages of at most `limit` bytes).
pub(crate) async fn commit_stream(
    channel: Channel,
    rx: tokio::sync::mpsc::Receiver<CommitRequest>,
    limit: usize,
) -> Result<Streaming<CommitResult>, Status> {
    let body = Requests {
        rx,
        queued: VecDeque::new(),
        limit,
    };
    let opened = open(channel, PathAndQuery::from_static(PATH), body).await?;
    Ok(opened.into_streaming(tonic_prost::ProstDecoder::<CommitResult>::default(), limit))
}

/// A call's answer as far as its headers.
#[derive(Debug)]
pub struct Opened {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// Whether the headers carried the (OK) gRPC status: no messages and no trailers follow.
    pub trailers_only: bool,
    /// The rest: the messages, then the trailers.
    pub body: tonic::body::Body,
}

impl Opened {
    /// The answer's messages (of at most `limit` bytes each), read with `decoder` as tonic's
    /// generated clients read them: a status in the trailers, or the HTTP status for none,
    /// ends the stream with that error.
    pub fn into_streaming<D>(self, decoder: D, limit: usize) -> Streaming<D::Item>
    where
        D: tonic::codec::Decoder<Error = Status> + Send + 'static,
    {
        if self.trailers_only {
            Streaming::new_empty(decoder, self.body)
        } else {
            Streaming::new_response(decoder, self.body, self.status, None, Some(limit))
        }
    }
}

/// Starts a gRPC call of `path` on `channel` whose request body is `body` (already framed as
/// gRPC frames messages: a 5-byte prefix, then the message), and waits for the answer's
/// headers. A refusal carried in them (a trailers-only answer) is the error.
pub async fn open<B>(mut channel: Channel, path: PathAndQuery, body: B) -> Result<Opened, Status>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(http::Uri::from(path))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(body))
        .map_err(|e| Status::internal(format!("building a request: {e}")))?;
    let unavailable = |e: tonic::transport::Error| Status::unavailable(e.to_string());
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(unavailable)?;
    let resp = channel.call(req).await.map_err(unavailable)?;
    let trailers_only = match Status::from_header_map(resp.headers()) {
        Some(s) if s.code() != tonic::Code::Ok => return Err(s),
        Some(_) => true,
        None => false,
    };
    Ok(Opened {
        status: resp.status(),
        trailers_only,
        body: resp.into_body(),
    })
}

/// The 5-byte prefix gRPC puts before a message of `len` bytes (uncompressed), or why a
/// message that long is not sent.
pub fn prefix(len: usize, limit: usize, what: &str) -> Result<[u8; 5], Status> {
    let n = u32::try_from(len)
        .ok()
        .filter(|_| len <= limit)
        .ok_or_else(|| Status::out_of_range(format!("a {what} of {len} bytes (limit {limit})")))?;
    let b = n.to_be_bytes();
    Ok([0, b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The pieces are prost's encoding behind gRPC's prefix, the transaction the same memory.
    #[test]
    fn the_pieces_are_the_framed_request_and_share_the_transaction() {
        let tx = Bytes::from(vec![9u8; 300_000]);
        for (chain, tx, session) in [
            (vec![1u8; 16], tx.clone(), vec![2u8; 16]),
            (vec![1u8; 16], tx.clone(), vec![]),
            (vec![1u8; 16], Bytes::new(), vec![2u8; 16]),
            (vec![], Bytes::new(), vec![]),
        ] {
            let req = CommitRequest { chain, tx, session };
            let got: Vec<u8> = pieces(&req, 1 << 20)
                .unwrap()
                .iter()
                .flatten()
                .copied()
                .collect();
            let want = req.encode_to_vec();
            assert_eq!(got[0], 0);
            assert_eq!(
                u32::from_be_bytes(got[1..5].try_into().unwrap()) as usize,
                want.len()
            );
            assert_eq!(&got[5..], &want[..]);
            if !req.tx.is_empty() {
                let p = pieces(&req, 1 << 20).unwrap();
                assert!(p
                    .iter()
                    .any(|b| b.as_ptr() == req.tx.as_ptr() && b.len() == req.tx.len()));
                let err = pieces(&req, req.tx.len()).unwrap_err();
                assert_eq!(err.code(), tonic::Code::OutOfRange);
            }
        }
    }
}
