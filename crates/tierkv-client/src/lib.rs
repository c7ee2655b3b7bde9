//! A Rust client for tierkv, without the server: builds without RocksDB.
//!
//! - [`proto`] — the generated messages, clients and server traits of
//!   `proto/tierkv/v1` (the server re-exports this module as `tierkv::proto`).
//! - [`convert`] — JSON (`serde_json`) ⇄ `google.protobuf.Value`/`Struct`,
//!   `Timestamp` and `Duration`.
//! - [`connect`] — plaintext, TLS or mutual TLS channels with a bearer token;
//!   [`Client`] hands out the four services' clients over one of them.
//! - [`deadline`] — a per-call deadline whose expiry is `DEADLINE_EXCEEDED`.
//! - [`retry`] — retrying `UNAVAILABLE`, and `RESOURCE_EXHAUSTED` with a
//!   `RetryInfo`, with back-off.
//! - [`codec`] — the protobuf codec the generated code uses.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tierkv_client::{deadline, proto::v1 as pb, retry::RetryPolicy, Client, ConnectOptions};
//!
//! let client = Client::connect(ConnectOptions::new("http://127.0.0.1:50051")).await?;
//! let request = pb::GetRequest { key: "user:1".into(), ..Default::default() };
//! let found = RetryPolicy::default()
//!     .run(|_| {
//!         let mut kv = client.kv();
//!         let request = request.clone();
//!         async move { deadline::call(Duration::from_secs(1), request, |r| kv.get(r)).await }
//!     })
//!     .await?
//!     .into_inner()
//!     .found;
//! # let _ = found;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod codec;
pub mod connect;
pub mod convert;
pub mod deadline;
pub mod retry;

pub use connect::{AuthChannel, ConnectError, ConnectOptions};

/// Generated protobuf code.
pub mod proto {
    /// The `tierkv.v1` package.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("tierkv.v1");
    }

    /// The encoded descriptor set of every tierkv proto file (with imports),
    /// served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/tierkv_descriptor.bin"));
}

use proto::v1::admin_service_client::AdminServiceClient;
use proto::v1::cache_service_client::CacheServiceClient;
use proto::v1::kv_service_client::KvServiceClient;
use proto::v1::session_service_client::SessionServiceClient;

/// The largest message the clients [`Client`] hands out encode or decode: at
/// least the largest the server sends or accepts (104 MiB), so that every
/// reply is readable. tonic's default decode limit of 4 MiB is below a page of
/// sessions or a large value.
pub const MAX_MESSAGE_SIZE: usize = 104 * 1024 * 1024;

/// One connection to a server, and a client of each service over it. Cheap
/// to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    channel: AuthChannel,
}

impl Client {
    /// Connects now (an unreachable server is an error here).
    pub async fn connect(options: ConnectOptions) -> Result<Self, ConnectError> {
        Ok(Self::from_channel(options.connect().await?))
    }

    /// Connects on the first call and reconnects after failures: an
    /// unreachable server shows as `UNAVAILABLE` calls, which
    /// [`retry::RetryPolicy`] retries.
    pub fn connect_lazy(options: ConnectOptions) -> Result<Self, ConnectError> {
        Ok(Self::from_channel(options.connect_lazy()?))
    }

    /// Wraps a channel made by [`ConnectOptions`].
    pub fn from_channel(channel: AuthChannel) -> Self {
        Self { channel }
    }

    /// The channel, for a client this type does not hand out (health, reflection).
    pub fn channel(&self) -> AuthChannel {
        self.channel.clone()
    }

    /// A `KvService` client.
    pub fn kv(&self) -> KvServiceClient<AuthChannel> {
        KvServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// A `SessionService` client.
    pub fn session(&self) -> SessionServiceClient<AuthChannel> {
        SessionServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// A `CacheService` client.
    pub fn cache(&self) -> CacheServiceClient<AuthChannel> {
        CacheServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// An `AdminService` client.
    pub fn admin(&self) -> AdminServiceClient<AuthChannel> {
        AdminServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}
