//! The Watch stream's own codec and route. The generated `KvServiceServer`
//! encodes every response with prost, which would encode each shared batch
//! again for every watcher; [`KvServer`] serves `KvService/Watch` itself with
//! [`WatchCodec`], whose encoder copies the pre-encoded frame
//! ([`WatchFrame`]), and passes every other method to the generated server.
//! Requests decode exactly as elsewhere ([`TierkvDecoder`]); clients see the
//! same bytes as before.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BufMut as _;
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

use super::watch::{FrameStream, WatchFrame};
use super::KvApi;
use crate::api::codec::{TierkvCodec, TierkvDecoder};
use crate::kv::limits::MAX_MESSAGE_BYTES;
use crate::proto::v1 as pb;

/// The gRPC path of `KvService.Watch`.
const WATCH_PATH: &str = "/tierkv.v1.KvService/Watch";

/// Writes a [`WatchFrame`] as it is; decodes requests like every service.
#[derive(Debug, Default, Clone, Copy)]
pub struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = WatchFrame;
    type Decode = pb::WatchRequest;
    type Encoder = FrameEncoder;
    type Decoder = TierkvDecoder<pb::WatchRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        TierkvCodec::<pb::WatchResponse, pb::WatchRequest>::default().decoder()
    }
}

/// Copies a frame's bytes into the message buffer: one copy per response,
/// no encoding.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameEncoder;

impl Encoder for FrameEncoder {
    type Item = WatchFrame;
    type Error = Status;

    fn encode(&mut self, frame: WatchFrame, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(frame.encoded_len());
        buf.put_slice(&frame.head);
        for part in &frame.parts {
            buf.put_slice(part);
        }
        buf.put_slice(&frame.tail);
        Ok(())
    }
}

/// `tierkv.v1.KvService` as mounted: Watch through [`WatchCodec`], the
/// rest through the generated server.
#[derive(Clone)]
pub struct KvServer {
    generated: pb::kv_service_server::KvServiceServer<KvApi>,
    api: Arc<KvApi>,
}

impl KvServer {
    pub(super) fn new(api: KvApi) -> Self {
        let generated = pb::kv_service_server::KvServiceServer::new(api.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Self {
            generated,
            api: Arc::new(api),
        }
    }
}

impl NamedService for KvServer {
    const NAME: &'static str =
        <pb::kv_service_server::KvServiceServer<KvApi> as NamedService>::NAME;
}

impl tower::Service<http::Request<Body>> for KvServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != WATCH_PATH {
            return self.generated.call(request);
        }
        let api = Arc::clone(&self.api);
        Box::pin(async move {
            // The generated server's settings for every method: no
            // compression, the message size limits.
            let mut grpc = Grpc::new(WatchCodec)
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), Some(MAX_MESSAGE_BYTES));
            Ok(grpc.server_streaming(WatchMethod(api), request).await)
        })
    }
}

/// The Watch method for [`Grpc::server_streaming`].
struct WatchMethod(Arc<KvApi>);

impl ServerStreamingService<pb::WatchRequest> for WatchMethod {
    type Response = WatchFrame;
    type ResponseStream = FrameStream;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<FrameStream>, Status>> + Send>,
    >;

    fn call(&mut self, request: Request<pb::WatchRequest>) -> Self::Future {
        let api = Arc::clone(&self.0);
        Box::pin(async move { api.watch_frames(request).await.map(Response::new) })
    }
}
