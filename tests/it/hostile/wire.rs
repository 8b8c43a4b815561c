//! Raw gRPC for the flood: any bytes as a message, or a request body
//! verbatim with frames that lie about themselves.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use prost::bytes::{Buf, BufMut, Bytes};
use tonic::{
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
    Status,
};

/// Sends raw request bytes as one gRPC message (tonic writes the frame
/// header) and returns the raw response bytes.
#[derive(Clone, Copy, Default)]
pub(super) struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A channel that replaces each request's body with `body` verbatim (frame
/// headers included) and adds `headers`: frames that lie about themselves.
#[derive(Clone)]
pub(super) struct ExactBody {
    channel: Channel,
    body: Bytes,
    headers: &'static [(&'static str, &'static str)],
}

pub(super) type ChannelFuture = Pin<
    Box<
        dyn Future<Output = Result<http::Response<tonic::body::Body>, tonic::transport::Error>>
            + Send,
    >,
>;

impl tower::Service<http::Request<tonic::body::Body>> for ExactBody {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = ChannelFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> ChannelFuture {
        let (mut parts, _) = request.into_parts();
        for (name, value) in self.headers {
            parts
                .headers
                .insert(*name, http::HeaderValue::from_static(value));
        }
        let body = tonic::body::Body::new(axum::body::Body::from(self.body.clone()));
        let request = http::Request::from_parts(parts, body);
        Box::pin(tower::Service::call(&mut self.channel, request))
    }
}

/// What goes on the wire.
pub(super) enum Wire {
    /// One message; tonic frames it.
    Message(Bytes),
    /// The request body exactly (frame headers included), plus headers.
    Body(Bytes, &'static [(&'static str, &'static str)]),
}

pub(super) async fn send(channel: Channel, path: &str, wire: &Wire) -> Result<Bytes, Status> {
    let path = http::uri::PathAndQuery::try_from(path).expect("a valid path");
    let unavailable = |e: tonic::transport::Error| Status::unavailable(e.to_string());
    match wire {
        Wire::Message(payload) => {
            let mut grpc = Grpc::new(channel);
            grpc.ready().await.map_err(unavailable)?;
            let request = tonic::Request::new(payload.clone());
            Ok(grpc.unary(request, path, RawCodec).await?.into_inner())
        }
        Wire::Body(body, headers) => {
            let mut grpc = Grpc::new(ExactBody {
                channel,
                body: body.clone(),
                headers,
            });
            grpc.ready().await.map_err(unavailable)?;
            let request = tonic::Request::new(Bytes::new());
            Ok(grpc.unary(request, path, RawCodec).await?.into_inner())
        }
    }
}

/// A gRPC frame: compressed flag, the length it claims, the bytes it has.
pub(super) fn frame(flag: u8, claimed_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(flag);
    out.extend_from_slice(&claimed_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub(super) fn framed(payload: &[u8]) -> Vec<u8> {
    frame(0, payload.len() as u32, payload)
}
