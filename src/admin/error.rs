//! The namespace administration error: one enum, mapped to a gRPC status in
//! one place (`crate::api::status`).

use thiserror::Error;

use crate::engine::EngineError;

/// A failure of a namespace administration call.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The prefix is not a configured namespace.
    #[error("{prefix:?} is not a configured namespace (configured: {configured}); only configured namespaces can be dropped")]
    UnknownNamespace {
        /// The prefix asked for.
        prefix: String,
        /// The configured prefixes, for the message.
        configured: String,
    },
    /// The confirmation does not match the namespace's key count.
    #[error("namespace {prefix:?} holds {actual} live keys{}; pass expected_keys = {actual} to drop them", match .expected { Some(expected) => format!(", not the {expected} expected"), None => String::new() })]
    ExpectedKeysMismatch {
        /// The prefix.
        prefix: String,
        /// The confirmation given, if any.
        expected: Option<u64>,
        /// The exact live key count.
        actual: u64,
    },
    /// The namespace is the default one or owned by a service, and the
    /// call did not say `force`.
    #[error("{}; pass force = true (tierkv admin drop-namespace --force) to drop it anyway", describe_protected(.prefix, .owner))]
    ForceRequired {
        /// The prefix.
        prefix: String,
        /// Who depends on it: a service, or `None` for the default namespace.
        owner: Option<String>,
    },
    /// The store keeps no local files (an etcd cluster): etcd is backed up
    /// with its own tools.
    #[error("this server's store is an etcd cluster, so tierkv keeps no files to back up: back up etcd itself with `etcdctl snapshot save FILE` against one member (restore with `etcdctl snapshot restore`; see docs/replicas.md)")]
    BackupNotLocal,
    /// No `backup_dir` is configured.
    #[error("backups are off: set backup_dir (TIERKV_BACKUP_DIR) to the directory backups go to")]
    BackupsOff,
    /// The backup name is not one plain path component.
    #[error("backup name {name:?} is invalid: {reason}")]
    InvalidBackupName {
        /// The name (truncated).
        name: String,
        /// Why.
        reason: String,
    },
    /// A backup of that name exists.
    #[error("a backup named {name:?} already exists; choose another name")]
    BackupExists {
        /// The name.
        name: String,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn describe_protected(prefix: &str, owner: &Option<String>) -> String {
    match owner {
        None => format!("{prefix:?} is the default namespace: it holds every key outside the configured namespaces"),
        Some(owner) => format!("namespace {prefix:?} is owned by {owner}, whose data dropping it destroys"),
    }
}
