//! The protobuf codec of tierkv's services: prost's, except for what a
//! message that cannot be decoded answers.
//!
//! tonic's prost codec answers INTERNAL for every decode failure, including
//! a request nested deeper than the 100 levels protobuf decoders accept
//! (which JSON values and metadata reach at about 33 levels of objects). A
//! request the server cannot decode is the client's error, so it answers
//! INVALID_ARGUMENT and names the JSON nesting limit, which is the usual cause.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// The deepest nesting of arrays and objects the server accepts in JSON
/// values and metadata. Named in the decode error because it is the usual
/// reason a request does not decode; the server checks at compile time that
/// its own limit is this one.
pub const MAX_JSON_DEPTH: usize = 32;

/// A prost codec whose server side answers INVALID_ARGUMENT to requests it
/// cannot decode. Generated code for every service, server and client side,
/// uses it (`build.rs`).
#[derive(Debug)]
pub struct TierkvCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for TierkvCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for TierkvCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = TierkvDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        TierkvDecoder { _type: PhantomData }
    }
}

/// Decodes `U` with prost; see [`TierkvCodec`].
#[derive(Debug)]
pub struct TierkvDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for TierkvDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(decode_status::<U>)
    }
}

/// The status for a message that does not decode.
fn decode_status<U>(error: prost::DecodeError) -> Status {
    // The same codec decodes requests on the server and responses in the
    // generated client. Only a request is the peer's input error; a response
    // that does not decode stays INTERNAL, as in tonic.
    let type_name = std::any::type_name::<U>();
    if !type_name.ends_with("Request") {
        return Status::internal(error.to_string());
    }
    let message_name = type_name.rsplit("::").next().unwrap_or(type_name);
    Status::invalid_argument(format!(
        "the {message_name} could not be decoded ({error}); note that JSON values and metadata \
         nest at most {MAX_JSON_DEPTH} levels of arrays and objects"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1 as pb;

    /// A request nested past prost's limit is INVALID_ARGUMENT naming the
    /// JSON limit; an undecodable response stays INTERNAL.
    #[test]
    fn decode_failures_of_requests_are_invalid_arguments() {
        let mut json = serde_json::json!(1);
        for _ in 0..60 {
            json = serde_json::json!([json]);
        }
        let request = pb::PutRequest {
            key: "k".into(),
            value: Some(pb::put_request::Value::Json(crate::convert::json_to_proto(
                json,
            ))),
            ..Default::default()
        };
        let error = pb::PutRequest::decode(request.encode_to_vec().as_slice()).unwrap_err();
        let status = decode_status::<pb::PutRequest>(error.clone());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("PutRequest"), "{status:?}");
        assert!(status.message().contains("at most 32 levels"), "{status:?}");
        let status = decode_status::<pb::GetResponse>(error);
        assert_eq!(status.code(), tonic::Code::Internal);
    }
}
