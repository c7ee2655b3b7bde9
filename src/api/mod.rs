//! gRPC adapters: each wraps a domain service, converts messages and maps
//! errors to `tonic::Status`. No domain logic lives here.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod call;
pub mod codec;
pub mod convert;
pub mod kv;
pub mod session;
pub mod status;
