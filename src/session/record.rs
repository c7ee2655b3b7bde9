//! The session record codec: the record as stored (see
//! `docs/record-format.md`), the JSON layout of the first release, and the
//! [`DataCodec`] that encodes a session's data and metadata inside it.
//!
//! The record is a protobuf message whose `data` and `metadata` fields hold
//! `google.protobuf.Struct`s, so that a reply can carry them as stored. The
//! domain does not speak protobuf: it sees those two fields as opaque bytes
//! (a length-delimited field is the same on the wire whether it holds bytes
//! or a message) and converts them to and from JSON with the codec the
//! server hands it, which lives beside the generated code
//! (`crate::api::session::StructCodec`).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::token;
use super::SessionError;
use crate::engine::{Record, ValueKind};

/// Encodes a JSON object (a session's data or metadata) as the record
/// stores it, and decodes it back.
pub trait DataCodec: Send + Sync + 'static {
    /// The stored form of `object`.
    fn encode(&self, object: Map<String, Value>) -> Vec<u8>;
    /// The object `bytes` hold; an error for bytes `encode` did not make.
    fn decode(&self, bytes: &[u8]) -> Result<Map<String, Value>, String>;
}

/// The session record as stored: a protobuf message (see
/// `docs/record-format.md`), so that `Get` decodes it in one pass. Tags 8
/// and 9 are `google.protobuf.Struct`s on disk; here they are their
/// encoded bytes, made and read by a [`DataCodec`].
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Stored {
    #[prost(string, tag = "1")]
    pub user_id: String,
    /// SHA-256 of the token's secret, 32 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub secret_hash: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub create_ms: u64,
    #[prost(uint64, tag = "4")]
    pub expire_ms: u64,
    #[prost(uint64, optional, tag = "5")]
    pub idle_timeout_ms: Option<u64>,
    #[prost(uint64, optional, tag = "6")]
    pub idle_expire_ms: Option<u64>,
    #[prost(uint64, tag = "7")]
    pub last_seen_ms: u64,
    /// The data, encoded by the [`DataCodec`].
    #[prost(bytes = "vec", optional, tag = "8")]
    pub data: Option<Vec<u8>>,
    /// The metadata, encoded by the [`DataCodec`]; absent when none was given.
    #[prost(bytes = "vec", optional, tag = "9")]
    pub metadata: Option<Vec<u8>>,
}

impl Stored {
    /// When the record stops being live: the earlier of the two expiries.
    pub fn record_expire_ms(&self) -> u64 {
        self.idle_expire_ms
            .map_or(self.expire_ms, |idle| idle.min(self.expire_ms))
    }

    /// The record's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}

/// The JSON layout of session records written before the protobuf one
/// (`ValueKind::Json`); still read, and rewritten in the new layout by the
/// next change of the session.
#[derive(Deserialize)]
struct LegacyStored {
    user_id: String,
    secret_hash: String,
    create_ms: u64,
    expire_ms: u64,
    #[serde(default)]
    idle_timeout_ms: Option<u64>,
    #[serde(default)]
    idle_expire_ms: Option<u64>,
    last_seen_ms: u64,
    #[serde(default)]
    data: Map<String, Value>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

impl LegacyStored {
    fn into_stored(self, codec: &dyn DataCodec) -> Stored {
        Stored {
            user_id: self.user_id,
            secret_hash: token::decode_hash(&self.secret_hash)
                .map(Vec::from)
                .unwrap_or_default(),
            create_ms: self.create_ms,
            expire_ms: self.expire_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            idle_expire_ms: self.idle_expire_ms,
            last_seen_ms: self.last_seen_ms,
            data: Some(codec.encode(self.data)),
            metadata: self.metadata.map(|metadata| codec.encode(metadata)),
        }
    }
}

/// Reads a session record in either layout.
pub(super) fn decode(
    codec: &dyn DataCodec,
    session_id: &str,
    record: Record,
) -> Result<Stored, SessionError> {
    let invalid = |error: String| {
        SessionError::corrupt(session_id, format!("session record is not valid: {error}"))
    };
    match record.kind {
        ValueKind::Json => serde_json::from_slice::<LegacyStored>(&record.value)
            .map(|legacy| legacy.into_stored(codec))
            .map_err(|error| invalid(error.to_string())),
        _ => <Stored as prost::Message>::decode(record.value.as_slice())
            .map_err(|error| invalid(error.to_string())),
    }
}

/// The JSON object of a stored data or metadata field. Stored objects came
/// from JSON, so decoding cannot fail; a record that says otherwise is
/// corrupt.
pub(super) fn decode_object(
    codec: &dyn DataCodec,
    session_id: &str,
    bytes: &[u8],
) -> Result<Map<String, Value>, SessionError> {
    codec.decode(bytes).map_err(|reason| {
        SessionError::corrupt(session_id, format!("session data is not valid: {reason}"))
    })
}
