//! Conversions between JSON and the protobuf well-known types. They live in
//! the `tierkv-client` crate, beside the generated code, so that clients share
//! them; re-exported here for the adapters.

pub use tierkv_client::convert::*;
