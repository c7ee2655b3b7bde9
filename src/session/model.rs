//! Sessions as callers see them, what creating one needs, and what a
//! listing answers: the service's types, in JSON and plain times.

use super::record::{DataCodec, Stored};
use super::token::Token;
use serde_json::{Map, Value};

/// What a listed session adds to its reply at most beyond its strings and
/// structs: four timestamps of at most 19 bytes each, a version of at most
/// 11, and the tags and lengths of the remaining fields.
const SESSION_REPLY_OVERHEAD: usize = 4 * 19 + 11 + 16;

/// A session as callers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The bearer token; only set by `create` and `rotate`.
    pub token: Option<Token>,
    /// The non-secret handle.
    pub session_id: String,
    /// The owning user.
    pub user_id: String,
    /// Application data, a JSON object, as the record stores it.
    pub data: StoredObject,
    /// Metadata given at creation, as the record stores it.
    pub metadata: Option<StoredObject>,
    /// Creation time, milliseconds since the Unix epoch.
    pub create_at_millis: u64,
    /// Absolute expiry.
    pub expire_at_millis: u64,
    /// Idle expiry, when the session has an idle timeout.
    pub idle_expire_at_millis: Option<u64>,
    /// Last recorded use.
    pub last_seen_at_millis: u64,
    /// The session record's version.
    pub version: u64,
}

impl Session {
    /// The most bytes this session takes in a reply, as an element of a
    /// repeated `tierkv.v1.Session` field: what a listing counts against its
    /// byte limit.
    pub fn reply_bytes_bound(&self) -> usize {
        let token = self.token.as_ref().map_or(0, |token| token.expose().len());
        let body = delimited_len(token)
            + delimited_len(self.session_id.len())
            + delimited_len(self.user_id.len())
            + delimited_len(self.data.len())
            + self
                .metadata
                .as_ref()
                .map_or(0, |metadata| delimited_len(metadata.len()))
            + SESSION_REPLY_OVERHEAD;
        delimited_len(body)
    }
}

/// A session's data or metadata: a JSON object kept in the encoded form the
/// record stores (made by the service's [`DataCodec`]). A read hands it on
/// as it is, so that a reply built from it (the server's codec stores the
/// reply's own `Struct` encoding) costs no conversion; [`StoredObject::to_json`]
/// decodes it where JSON is wanted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredObject(Vec<u8>);

impl StoredObject {
    /// An object in the form `codec.encode` made it.
    pub fn new(encoded: Vec<u8>) -> Self {
        Self(encoded)
    }

    /// The encoded bytes.
    pub fn encoded(&self) -> &[u8] {
        &self.0
    }

    /// Bytes it takes encoded (as stored, and as a reply carries it).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it takes no bytes (an empty object may).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The JSON object, decoded with the codec that encoded it.
    pub fn to_json(&self, codec: &dyn DataCodec) -> Result<Map<String, Value>, String> {
        codec.decode(&self.0)
    }
}

/// Bytes of a length-delimited protobuf field of `body` bytes, with a tag of
/// one byte.
fn delimited_len(body: usize) -> usize {
    1 + varint_len(body as u64) + body
}

/// Bytes of `value` as a protobuf varint: seven bits a byte.
pub(super) fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// What `create` needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CreateSession {
    /// The owning user.
    pub user_id: String,
    /// Absolute lifetime in nanoseconds (signed, so that a negative input is
    /// reported as such); `None` uses the configured default.
    pub ttl_nanos: Option<i128>,
    /// Idle timeout in nanoseconds; `None` uses the configured default.
    pub idle_timeout_nanos: Option<i128>,
    /// Application data.
    pub data: Option<Map<String, Value>>,
    /// Metadata.
    pub metadata: Option<Map<String, Value>>,
}

/// Which session `revoke` ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// The session a token belongs to.
    Token(String),
    /// A session by id.
    SessionId(String),
}

/// One page of a user's sessions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionPage {
    /// Sessions in order of their ids, without tokens.
    pub sessions: Vec<Session>,
    /// The token of the next page; empty when the listing is complete.
    pub next_page_token: String,
}

/// The session `stored` holds, its data and metadata as stored.
pub(super) fn into_session(
    stored: Stored,
    session_id: String,
    version: u64,
    token: Option<Token>,
) -> Session {
    Session {
        token,
        user_id: stored.user_id,
        data: StoredObject::new(stored.data.unwrap_or_default()),
        metadata: stored.metadata.map(StoredObject::new),
        create_at_millis: stored.create_ms,
        expire_at_millis: stored.expire_ms,
        idle_expire_at_millis: stored.idle_expire_ms,
        last_seen_at_millis: stored.last_seen_ms,
        version,
        session_id,
    }
}
