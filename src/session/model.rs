//! Sessions as callers see them, what creating one needs, and what a
//! listing answers: the service's types, in JSON and plain times.

use super::record::DataCodec;
use super::record::{decode_object, Stored};
use super::token::Token;
use super::SessionError;
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
    /// Application data, a JSON object.
    pub data: Map<String, Value>,
    /// The bytes `data` takes encoded (as stored, and as a reply carries it).
    pub data_bytes: usize,
    /// Metadata given at creation.
    pub metadata: Option<Map<String, Value>>,
    /// The bytes `metadata` takes encoded.
    pub metadata_bytes: Option<usize>,
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
            + delimited_len(self.data_bytes)
            + self.metadata_bytes.map_or(0, delimited_len)
            + SESSION_REPLY_OVERHEAD;
        delimited_len(body)
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

/// The session `stored` holds, its data and metadata decoded.
pub(super) fn into_session(
    codec: &dyn DataCodec,
    stored: Stored,
    session_id: String,
    version: u64,
    token: Option<Token>,
) -> Result<Session, SessionError> {
    let data_bytes = stored.data.as_deref().unwrap_or_default();
    let data = decode_object(codec, &session_id, data_bytes)?;
    let metadata = match stored.metadata.as_deref() {
        Some(bytes) => Some((decode_object(codec, &session_id, bytes)?, bytes.len())),
        None => None,
    };
    Ok(Session {
        token,
        user_id: stored.user_id,
        data,
        data_bytes: data_bytes.len(),
        metadata_bytes: metadata.as_ref().map(|(_, len)| *len),
        metadata: metadata.map(|(metadata, _)| metadata),
        create_at_millis: stored.create_ms,
        expire_at_millis: stored.expire_ms,
        idle_expire_at_millis: stored.idle_expire_ms,
        last_seen_at_millis: stored.last_seen_ms,
        version,
        session_id,
    })
}
