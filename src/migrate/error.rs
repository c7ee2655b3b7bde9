//! The migrator's error: one enum, mapped to a gRPC status in one place
//! (`crate::api::status`).

use thiserror::Error;

use crate::engine::EngineError;

/// A failure of the migrator.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// The `[[migrations]]` configuration is unusable.
    #[error("migrations[{index}] (prefix {prefix:?}, {from} -> {to}): {message}")]
    InvalidStep {
        /// The step's index in the configuration.
        index: usize,
        /// Its prefix.
        prefix: String,
        /// Its `from`.
        from: u32,
        /// Its `to`.
        to: u32,
        /// What is wrong.
        message: String,
    },
    /// A request is malformed.
    #[error("{field}: {description}")]
    InvalidArgument {
        /// The request field.
        field: String,
        /// What is wrong.
        description: String,
    },
    /// A migration of the same prefix is already running.
    #[error("a migration of prefix {prefix:?} is already running; watch it with GetMigration or wait for it to finish")]
    AlreadyRunning {
        /// The prefix.
        prefix: String,
    },
    /// A migration of the same prefix is running on another server over the
    /// same store (an etcd engine's replicas share one lock per prefix).
    #[error("a migration of prefix {prefix:?} is already running on {holder}; watch it there with GetMigration or wait for it to finish")]
    RunningElsewhere {
        /// The prefix.
        prefix: String,
        /// The server running it.
        holder: String,
    },
    /// The server is shutting down; the run stopped (or never started) and
    /// keeps its checkpoint.
    #[error("the server is shutting down; the migration of {prefix:?} stopped after its last batch and keeps its checkpoint: call Migrate again to resume")]
    ShuttingDown {
        /// The prefix.
        prefix: String,
    },
    /// No migration of that prefix has been run.
    #[error("no migration of prefix {prefix:?} has been run on this store")]
    NotFound {
        /// The prefix.
        prefix: String,
    },
    /// The persisted state of a migration cannot be read.
    #[error("the saved state of the migration of {prefix:?} is unreadable: {reason}")]
    CorruptState {
        /// The prefix.
        prefix: String,
        /// Why.
        reason: String,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}
