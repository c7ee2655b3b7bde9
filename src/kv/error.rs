//! The KV service's error: one enum, mapped to a gRPC status in one place
//! (`crate::api::status`).

use thiserror::Error;

use crate::engine::{EngineError, Precondition};
use crate::records::limits::MAX_JSON_DEPTH;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path, e.g. `mutations[3].put.key`.
    pub field: String,
    /// What is wrong, with the limit and the actual size where there is one.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`, described.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// A failure of a KV operation.
#[derive(Debug, Error)]
pub enum KvError {
    /// The request is malformed; nothing was done.
    #[error("{}", describe_violations(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// A compare-and-set precondition did not hold; nothing was written.
    #[error("precondition failed for key {key:?}: {}", describe_precondition(*.precondition, *.current_version))]
    PreconditionFailed {
        /// The key.
        key: String,
        /// The mutation's index within a batch.
        index: Option<usize>,
        /// The condition that failed.
        precondition: Precondition,
        /// The key's current version, `None` when absent.
        current_version: Option<u64>,
    },
    /// The stored value cannot be returned in the requested representation.
    #[error("value of key {key:?} cannot be read as {requested}: {reason}")]
    NotConvertible {
        /// The key.
        key: String,
        /// The representation asked for.
        requested: &'static str,
        /// Why not.
        reason: String,
    },
    /// A value read as JSON would not fit in the response as
    /// `google.protobuf.Value`, whose encoding can be several times larger
    /// than the stored JSON (a number of 2 bytes becomes 11).
    #[error("key {key:?} read as JSON does not fit in the response: as google.protobuf.Value it needs more than the {available} bytes left of the {limit}-byte response limit (stored, it is {stored} bytes); read it with type TEXT or BYTES, which cost its stored size")]
    JsonResponseTooLarge {
        /// The key.
        key: String,
        /// The stored size of the value.
        stored: usize,
        /// The bytes that were left for it in the response.
        available: usize,
        /// The response limit.
        limit: usize,
    },
    /// Stored metadata nests deeper than [`MAX_JSON_DEPTH`]; it was written
    /// before the limit existed and cannot be sent to standard clients.
    #[error("metadata of key {key:?} nests more than {MAX_JSON_DEPTH} levels deep, the limit for JSON; rewrite the key with shallower metadata")]
    MetadataTooDeep {
        /// The key.
        key: String,
    },
    /// The response would exceed a size limit.
    #[error("{what} would be {actual} bytes; the limit is {limit} bytes")]
    ResponseTooLarge {
        /// What is too large.
        what: &'static str,
        /// The limit.
        limit: usize,
        /// The size it would have.
        actual: usize,
    },
    /// The key or prefix lies in a namespace another service owns.
    #[error("{field}: keys starting with {namespace:?} belong to {owner}; use that service")]
    PermissionDenied {
        /// The request field naming the key.
        field: String,
        /// The owned namespace's prefix.
        namespace: String,
        /// The owning service.
        owner: String,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Engine(EngineError),
    /// The key does not exist (or has expired), and the operation needs it.
    #[error("key {key:?} does not exist")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The operation needs a JSON value (a JSON object, for an object merge
    /// patch) and the key holds something else.
    #[error("key {key:?} cannot be patched: {reason}")]
    NotJson {
        /// The key.
        key: String,
        /// What the key holds instead.
        reason: String,
    },
}

/// The violations as one line of text, for error messages: `field:
/// description` pairs joined by `; `.
pub fn describe_violations(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_precondition(precondition: Precondition, current: Option<u64>) -> String {
    let current = match current {
        Some(version) => format!("current version is {version}"),
        None => "the key does not exist".to_string(),
    };
    match precondition {
        Precondition::IfVersion(expected) => format!("expected version {expected}, {current}"),
        Precondition::IfAbsent => format!("expected the key to be absent, {current}"),
        Precondition::None => current,
    }
}

impl From<EngineError> for KvError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::PreconditionFailed {
                index,
                key,
                precondition,
                current_version,
            } => KvError::PreconditionFailed {
                key,
                index: Some(index),
                precondition,
                current_version,
            },
            other => KvError::Engine(other),
        }
    }
}

/// A request refused for one field: the shared shape of every such error of
/// the KV service and the cache.
pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> KvError {
    KvError::InvalidArgument(vec![FieldViolation::new(field, description)])
}

/// A single-key call reports no batch index.
pub(crate) fn single_op(error: KvError) -> KvError {
    match error {
        KvError::PreconditionFailed {
            key,
            precondition,
            current_version,
            ..
        } => KvError::PreconditionFailed {
            key,
            index: None,
            precondition,
            current_version,
        },
        other => other,
    }
}
