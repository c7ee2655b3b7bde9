//! The one place domain errors become gRPC statuses, and where failures are logged.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use std::time::Duration;

use crate::admin::AdminError;
use crate::cache::CacheError;
use crate::engine::{EngineError, Precondition};
use crate::kv::KvError;
use crate::migrate::MigrateError;
use crate::session::SessionError;
use crate::watch::WatchError;

/// The `google.rpc.ErrorInfo` domain of tierkv's errors.
pub const ERROR_DOMAIN: &str = "tierkv.v1";
/// Response metadata carrying the current version after a failed compare-and-set.
pub const CURRENT_VERSION_METADATA: &str = "tierkv-current-version";

/// FAILED_PRECONDITION for a destructive call whose `expected_keys`
/// confirmation does not match the `actual` number of keys under `prefix`
/// (`AdminService.DropNamespace`, `CacheService.Purge`): ErrorInfo reason
/// `EXPECTED_KEYS_MISMATCH` with `prefix` and `actual_keys`, and a
/// PreconditionFailure violation of type `EXPECTED_KEYS`.
pub fn expected_keys_mismatch(message: String, prefix: &str, actual: u64, what: &str) -> Status {
    let mut info = std::collections::HashMap::new();
    info.insert("prefix".to_string(), prefix.to_string());
    info.insert("actual_keys".to_string(), actual.to_string());
    let mut details = ErrorDetails::with_error_info("EXPECTED_KEYS_MISMATCH", ERROR_DOMAIN, info);
    details.add_precondition_failure_violation("EXPECTED_KEYS", prefix, what);
    Status::with_error_details(Code::FailedPrecondition, message, details)
}

/// PERMISSION_DENIED for a call whose token lacks a grant: ErrorInfo reason
/// `NOT_GRANTED` with `metadata` saying what was refused, and nothing about
/// the token.
pub fn not_granted(message: String, metadata: std::collections::HashMap<String, String>) -> Status {
    Status::with_error_details(
        Code::PermissionDenied,
        message,
        ErrorDetails::with_error_info("NOT_GRANTED", ERROR_DOMAIN, metadata),
    )
}

/// Maps a KV error to a status with `google.rpc` details, logging it once.
pub fn kv_status(method: &'static str, error: KvError) -> Status {
    let message = error.to_string();
    let status = match error {
        KvError::InvalidArgument(violations) => {
            let mut details = ErrorDetails::new();
            for violation in violations {
                details.add_bad_request_violation(violation.field, violation.description);
            }
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        KvError::PreconditionFailed {
            key,
            index,
            precondition,
            current_version,
        } => {
            let mut info = std::collections::HashMap::new();
            info.insert("key".to_string(), key.clone());
            info.insert(
                "current_version".to_string(),
                current_version.map_or_else(|| "absent".to_string(), |v| v.to_string()),
            );
            if let Some(index) = index {
                info.insert("mutation_index".to_string(), index.to_string());
            }
            let expected = match precondition {
                Precondition::IfVersion(version) => format!("version {version}"),
                Precondition::IfAbsent => "absent".to_string(),
                Precondition::None => "any".to_string(),
            };
            let mut details = ErrorDetails::with_error_info("VERSION_MISMATCH", ERROR_DOMAIN, info);
            details.add_precondition_failure_violation(
                "VERSION",
                key,
                format!("expected {expected}"),
            );
            let mut status = Status::with_error_details(Code::Aborted, message, details);
            let current = current_version.map_or_else(|| "absent".to_string(), |v| v.to_string());
            if let Ok(value) = current.parse() {
                status
                    .metadata_mut()
                    .insert(CURRENT_VERSION_METADATA, value);
            }
            status
        }
        KvError::NotConvertible { .. } | KvError::MetadataTooDeep { .. } => {
            Status::failed_precondition(message)
        }
        KvError::ResponseTooLarge { limit, .. } | KvError::JsonResponseTooLarge { limit, .. } => {
            let mut info = std::collections::HashMap::new();
            info.insert("limit_bytes".to_string(), limit.to_string());
            let details = ErrorDetails::with_error_info("RESPONSE_TOO_LARGE", ERROR_DOMAIN, info);
            Status::with_error_details(Code::ResourceExhausted, message, details)
        }
        KvError::PermissionDenied {
            namespace, owner, ..
        } => {
            let mut info = std::collections::HashMap::new();
            info.insert("namespace".to_string(), namespace);
            info.insert("owner".to_string(), owner);
            let details = ErrorDetails::with_error_info("NAMESPACE_OWNED", ERROR_DOMAIN, info);
            Status::with_error_details(Code::PermissionDenied, message, details)
        }
        KvError::Engine(engine) => return engine_status(method, engine),
        KvError::NotFound { .. } => Status::not_found(message),
        KvError::NotJson { .. } => Status::failed_precondition(message),
    };
    // Client errors are expected traffic: one line at debug, without the
    // message, which can carry a key (and keys can be secrets).
    tracing::debug!(method, code = ?status.code(), "request rejected");
    status
}

/// Maps a storage failure to a status, logging it once.
pub fn engine_status(method: &'static str, error: EngineError) -> Status {
    let summary = error.log_summary();
    let message = error.to_string();
    if let EngineError::Corrupt { .. } = error {
        tracing::error!(method, error = %summary, "corrupt record");
        let details = ErrorDetails::with_error_info(
            "CORRUPT_RECORD",
            ERROR_DOMAIN,
            [(
                "remedy".to_string(),
                "an unconditional Delete removes the record".to_string(),
            )]
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
        );
        return Status::with_error_details(Code::DataLoss, message, details);
    }
    if let EngineError::Limit(_) = error {
        // A batch or value over what the store accepts: the client's to
        // change, and the message names the limit and the setting.
        tracing::debug!(method, "request over a storage limit");
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("mutations", message.clone());
        return Status::with_error_details(Code::InvalidArgument, message, details);
    }
    if error.is_retryable() {
        tracing::warn!(method, error = %summary, "storage unavailable");
        Status::unavailable(message)
    } else {
        tracing::error!(method, error = %summary, "storage failure");
        Status::internal(message)
    }
}

/// Maps a cache error to a status with `google.rpc` details, logging it once.
pub fn cache_status(method: &'static str, error: CacheError) -> Status {
    let error = match error {
        CacheError::Kv(kv) => return kv_status(method, kv),
        other => other,
    };
    let message = error.to_string();
    let with_reason = |code: Code, reason: &str, retry: Option<Duration>| {
        let mut details = ErrorDetails::with_error_info(
            reason,
            ERROR_DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        );
        if let Some(delay) = retry {
            details.set_retry_info(Some(delay));
        }
        Status::with_error_details(code, message.clone(), details)
    };
    let status = match &error {
        CacheError::Kv(_) => unreachable!("answered by kv_status above"),
        CacheError::NotFound { .. } => with_reason(Code::NotFound, "ORIGIN_NOT_FOUND", None),
        CacheError::OriginUnavailable { .. } => with_reason(
            Code::Unavailable,
            "ORIGIN_UNAVAILABLE",
            Some(Duration::from_secs(1)),
        ),
        CacheError::OriginTimeout { .. } | CacheError::DeadlineExceeded { .. } => {
            with_reason(Code::DeadlineExceeded, "ORIGIN_TIMEOUT", None)
        }
        CacheError::InvalidOriginKey { .. } => {
            let mut details = ErrorDetails::new();
            details.add_bad_request_violation("key", message.clone());
            Status::with_error_details(Code::InvalidArgument, message.clone(), details)
        }
        CacheError::OriginBodyTooLarge { .. } => {
            with_reason(Code::FailedPrecondition, "ORIGIN_BODY_TOO_LARGE", None)
        }
        CacheError::PurgeExpectedKeysMismatch {
            prefix,
            actual,
            more,
            ..
        } => expected_keys_mismatch(
            message.clone(),
            prefix,
            *actual,
            &if *more {
                format!("the purge lists the first {actual} live keys under the prefix")
            } else {
                format!("the purge lists {actual} live keys under the prefix")
            },
        ),
        CacheError::FetchesExhausted { retry_after, .. } => with_reason(
            Code::ResourceExhausted,
            "ORIGIN_FETCHES_EXHAUSTED",
            Some(*retry_after),
        ),
        CacheError::PurgeIncomplete { .. } => Status::deadline_exceeded(message.clone()),
    };
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => {
            tracing::warn!(method, code = ?status.code(), error = %message, "origin failure")
        }
        _ => tracing::debug!(method, code = ?status.code(), "request rejected"),
    }
    status
}

/// Maps a session error to a status, logging it once. Messages never carry
/// a token: the domain's errors do not contain one.
pub fn session_status(method: &'static str, error: SessionError) -> Status {
    let message = error.to_string();
    let status = match error {
        SessionError::InvalidArgument(violations) => {
            let mut details = ErrorDetails::new();
            for violation in violations {
                details.add_bad_request_violation(violation.field, violation.description);
            }
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        SessionError::NotFound => Status::not_found(message),
        SessionError::VersionMismatch { current, .. } => {
            let mut info = std::collections::HashMap::new();
            info.insert("current_version".to_string(), current.to_string());
            let details = ErrorDetails::with_error_info("VERSION_MISMATCH", ERROR_DOMAIN, info);
            Status::with_error_details(Code::Aborted, message, details)
        }
        SessionError::Contention(_) => Status::aborted(message),
        SessionError::ReplyTooLarge { limit, .. } => {
            let mut info = std::collections::HashMap::new();
            info.insert("limit_bytes".to_string(), limit.to_string());
            let details = ErrorDetails::with_error_info("RESPONSE_TOO_LARGE", ERROR_DOMAIN, info);
            Status::with_error_details(Code::ResourceExhausted, message, details)
        }
        SessionError::Engine(engine) => return engine_status(method, engine),
    };
    tracing::debug!(method, code = ?status.code(), "request rejected");
    status
}

/// Maps a migration error to a status, logging it once.
pub fn migrate_status(method: &'static str, error: MigrateError) -> Status {
    let message = error.to_string();
    let status = match error {
        MigrateError::InvalidArgument { field, description } => {
            let mut details = ErrorDetails::new();
            details.add_bad_request_violation(field, description);
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        MigrateError::AlreadyRunning { prefix } => {
            let mut info = std::collections::HashMap::new();
            info.insert("prefix".to_string(), prefix);
            let details = ErrorDetails::with_error_info("MIGRATION_RUNNING", ERROR_DOMAIN, info);
            Status::with_error_details(Code::Aborted, message, details)
        }
        MigrateError::RunningElsewhere { prefix, holder } => {
            let mut info = std::collections::HashMap::new();
            info.insert("prefix".to_string(), prefix);
            info.insert("holder".to_string(), holder);
            let details = ErrorDetails::with_error_info("MIGRATION_RUNNING", ERROR_DOMAIN, info);
            Status::with_error_details(Code::Aborted, message, details)
        }
        MigrateError::NotFound { .. } => Status::not_found(message),
        MigrateError::ShuttingDown { .. } => Status::unavailable(message),
        MigrateError::InvalidStep { .. } | MigrateError::CorruptState { .. } => {
            tracing::error!(method, error = %message, "migration state failure");
            return Status::internal(message);
        }
        MigrateError::Engine(engine) => return engine_status(method, engine),
    };
    tracing::debug!(method, code = ?status.code(), "request rejected");
    status
}

/// Maps a namespace administration error to a status, logging it once.
pub fn admin_status(method: &'static str, error: AdminError) -> Status {
    let message = error.to_string();
    let status = match error {
        AdminError::UnknownNamespace { .. } => Status::not_found(message),
        AdminError::ExpectedKeysMismatch { prefix, actual, .. } => expected_keys_mismatch(
            message,
            &prefix,
            actual,
            &format!("the namespace holds {actual} live keys"),
        ),
        AdminError::ForceRequired { prefix, owner } => {
            let mut info = std::collections::HashMap::new();
            info.insert("prefix".to_string(), prefix.clone());
            if let Some(owner) = owner {
                info.insert("owner".to_string(), owner);
            }
            let mut details = ErrorDetails::with_error_info("FORCE_REQUIRED", ERROR_DOMAIN, info);
            details.add_precondition_failure_violation(
                "FORCE",
                prefix,
                "the default namespace and owned namespaces are dropped only with force = true",
            );
            Status::with_error_details(Code::FailedPrecondition, message, details)
        }
        AdminError::BackupsOff | AdminError::BackupNotLocal => Status::failed_precondition(message),
        AdminError::InvalidBackupName { .. } => {
            let mut details = ErrorDetails::new();
            details.add_bad_request_violation("name", message.clone());
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        AdminError::BackupExists { .. } => Status::already_exists(message),
        AdminError::Engine(engine) => return engine_status(method, engine),
    };
    tracing::debug!(method, code = ?status.code(), "request rejected");
    status
}

/// Maps a Watch error to a status with `google.rpc` details, logging it once.
/// Errors that end a stream carry the position to resume from in their
/// ErrorInfo (`last_position`), so a client resumes without guessing.
pub fn watch_status(error: WatchError) -> Status {
    use std::collections::HashMap;
    let message = error.to_string();
    let info = |reason: &str, entries: Vec<(&str, String)>| {
        let metadata: HashMap<String, String> = entries
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
    };
    let status = match error {
        WatchError::Kv(kv) => return kv_status("Watch", kv),
        WatchError::Engine(engine) => return engine_status("Watch", engine),
        WatchError::MalformedPosition(_) => {
            let mut details = ErrorDetails::new();
            details.add_bad_request_violation("start_after", message.clone());
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        WatchError::Compacted { oldest, .. } => Status::with_error_details(
            Code::OutOfRange,
            message,
            info(
                "HISTORY_COMPACTED",
                vec![("oldest_position", oldest.to_string())],
            ),
        ),
        WatchError::OtherHistory { current, .. } => Status::with_error_details(
            Code::OutOfRange,
            message,
            info(
                "HISTORY_MISMATCH",
                vec![("history_id", format!("{current:016x}"))],
            ),
        ),
        WatchError::Rewound { latest, .. } => Status::with_error_details(
            Code::OutOfRange,
            message,
            info(
                "HISTORY_REWOUND",
                vec![("latest_position", latest.to_string())],
            ),
        ),
        WatchError::TooManyWatchers { limit } => {
            let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(1)));
            details.set_error_info(
                "TOO_MANY_WATCHERS",
                ERROR_DOMAIN,
                [("max_watchers".to_string(), limit.to_string())]
                    .into_iter()
                    .collect::<HashMap<_, _>>(),
            );
            Status::with_error_details(Code::ResourceExhausted, message, details)
        }
        WatchError::SlowConsumer {
            buffer_bytes,
            last_sent,
        } => Status::with_error_details(
            Code::ResourceExhausted,
            message,
            info(
                "WATCHER_FELL_BEHIND",
                vec![
                    ("last_position", last_sent.to_string()),
                    ("buffer_bytes", buffer_bytes.to_string()),
                ],
            ),
        ),
        WatchError::ShuttingDown { last_sent } => Status::with_error_details(
            Code::Unavailable,
            message,
            info(
                "SHUTTING_DOWN",
                vec![("last_position", last_sent.to_string())],
            ),
        ),
    };
    tracing::debug!(method = "Watch", code = ?status.code(), "watch ended");
    status
}
