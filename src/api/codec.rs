//! The protobuf codec of tierkv's services (a request that does not decode is
//! INVALID_ARGUMENT, not INTERNAL). It lives in the `tierkv-client` crate,
//! because the generated code it is named in lives there.

pub use tierkv_client::codec::{TierkvCodec, TierkvDecoder};

// The decode error names the client crate's JSON depth limit: it must be the
// one the server enforces.
const _: () =
    assert!(tierkv_client::codec::MAX_JSON_DEPTH == crate::records::limits::MAX_JSON_DEPTH);
