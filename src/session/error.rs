//! What a session operation can fail with.

use super::NOT_FOUND_MESSAGE;
use crate::engine::EngineError;
use crate::kv::{describe_violations, FieldViolation};
use thiserror::Error;

/// A failure of a session operation.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The request is malformed; nothing was done.
    #[error("{}", describe_violations(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The token is malformed, unknown, expired or revoked — deliberately
    /// indistinguishable.
    #[error("{NOT_FOUND_MESSAGE}")]
    NotFound,
    /// `if_version` did not match; nothing was written.
    #[error("session version is {current}; the request expected {expected}")]
    VersionMismatch {
        /// The version the caller expected.
        expected: u64,
        /// The session's version now.
        current: u64,
    },
    /// The session kept changing while this change retried; retrying later may succeed.
    #[error("the session changed on each of {0} attempts to apply this change; retry")]
    Contention(usize),
    /// One session alone is larger than a reply may be; nothing was answered.
    #[error("session {session_id} takes {bytes} bytes in a reply; the limit is {limit} bytes")]
    ReplyTooLarge {
        /// The session.
        session_id: String,
        /// Its size in a reply, at most.
        bytes: usize,
        /// The reply limit.
        limit: usize,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl SessionError {
    /// A session record that cannot be read: its key is named by the
    /// session id only, never by the token.
    pub fn corrupt(session_id: &str, reason: String) -> Self {
        EngineError::Corrupt {
            key: format!("session {session_id}"),
            reason,
        }
        .into()
    }
}

pub(super) fn invalid(field: &str, description: String) -> SessionError {
    SessionError::InvalidArgument(vec![violation(field, description)])
}

pub(super) fn violation(field: &str, description: String) -> FieldViolation {
    FieldViolation {
        field: field.to_string(),
        description,
    }
}
