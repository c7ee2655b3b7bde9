//! The stores of a copy: opening them from their configuration files, the
//! copy's errors and its checkpoint in the target.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cli::error::{EXIT_INVALID, EXIT_OTHER, EXIT_PRECONDITION, EXIT_UNAVAILABLE};
use crate::clock::SharedClock;
use crate::config::{Config, EngineKind};
use crate::engine::{Engine, EngineError, EtcdEngine, Namespaces, ScanRequest};
use crate::server;

/// The server-state name of the copy's checkpoint in the target.
pub(super) const CHECKPOINT: &str = "admin_copy_checkpoint";

/// Records per batch written to a RocksDB target.
const ROCKS_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// A failure of `tierkv admin copy`.
#[derive(Debug, Error)]
pub enum CopyError {
    /// A configuration file is unusable, or the two do not fit together.
    #[error("{0}")]
    Config(String),
    /// The source's directory is locked by another process.
    #[error(
        "the source store {0} is open in another process (a running tierkv server?): stop that server, then copy"
    )]
    SourceInUse(String),
    /// The target is not one this copy may write into.
    #[error("{0}")]
    Refused(String),
    /// A store stopped answering; the checkpoint allows resuming.
    #[error("{0}; run the same command again to resume from the last checkpoint")]
    Interrupted(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl CopyError {
    pub(super) fn exit_code(&self) -> u8 {
        match self {
            CopyError::Config(_) => EXIT_INVALID,
            CopyError::SourceInUse(_) | CopyError::Refused(_) => EXIT_PRECONDITION,
            CopyError::Interrupted(_) => EXIT_UNAVAILABLE,
            CopyError::Failed(_) => EXIT_OTHER,
        }
    }

    pub(super) fn from_engine(error: EngineError, doing: &str) -> Self {
        match error {
            EngineError::Unavailable(reason) => {
                CopyError::Interrupted(format!("{doing}: unavailable: {reason}"))
            }
            EngineError::Limit(reason) => CopyError::Refused(format!("{doing}: {reason}")),
            other => CopyError::Failed(format!("{doing}: {other}")),
        }
    }
}

/// Where a copy stands, stored in the target after every batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Checkpoint {
    /// The source's history id: a checkpoint of another store is not resumed.
    pub(super) source_history_id: u64,
    /// The namespace being copied (its prefix; "" for the default one).
    pub(super) namespace: String,
    /// The last key of that namespace done.
    pub(super) after_key: Option<String>,
    /// Records written so far.
    pub(super) copied: u64,
    /// Records left behind because they had expired.
    pub(super) expired: u64,
    /// Whether every namespace is done.
    pub(super) done: bool,
}

/// One opened store and what one write batch into it may carry.
pub(super) struct Store {
    pub(super) engine: Arc<dyn Engine>,
    pub(super) max_batch_ops: usize,
    pub(super) max_batch_bytes: usize,
    pub(super) describe: String,
}

pub(super) async fn open(
    config: &Config,
    role: &str,
    clock: SharedClock,
) -> Result<Store, CopyError> {
    let namespaces = config
        .namespaces()
        .map_err(|error| CopyError::Config(format!("--{role}: namespaces: {error}")))?;
    match config.engine.kind {
        EngineKind::Rocksdb => {
            let dir = config.data_dir.display().to_string();
            if role == "from" && !config.data_dir.join("CURRENT").exists() {
                return Err(CopyError::Config(format!(
                    "--from: {dir} holds no tierkv store (no RocksDB CURRENT file)"
                )));
            }
            let engine = server::open_engine(config, clock).await.map_err(|error| {
                let text = error.to_string();
                if text.to_ascii_lowercase().contains("lock") {
                    if role == "from" {
                        CopyError::SourceInUse(dir.clone())
                    } else {
                        CopyError::Refused(format!(
                            "the target store {dir} is open in another process (a running tierkv server?): stop it first"
                        ))
                    }
                } else {
                    CopyError::Failed(format!("--{role}: opening {dir}: {text}"))
                }
            })?;
            Ok(Store {
                engine: Arc::new(engine),
                max_batch_ops: 10_000,
                max_batch_bytes: ROCKS_BATCH_BYTES,
                describe: format!("rocksdb {dir}"),
            })
        }
        EngineKind::Etcd => {
            let options = server::store::etcd_options(config)
                .map_err(|error| CopyError::Config(format!("--{role}: {error}")))?;
            let describe = format!(
                "etcd {} prefix {:?}",
                options.endpoints.join(","),
                options.prefix
            );
            let engine = EtcdEngine::open(options, namespaces, clock)
                .await
                .map_err(|error| CopyError::from_engine(error, &format!("opening {describe}")))?;
            let limits = engine.limits();
            Ok(Store {
                engine: Arc::new(engine),
                max_batch_ops: limits.max_batch_ops,
                // Room for the estimate's error; a batch refused anyway is split.
                max_batch_bytes: limits.max_request_bytes / 4 * 3,
                describe,
            })
        }
    }
}

/// Where to start: the target's checkpoint of this source, or the beginning
/// when the target holds nothing at all.
pub(super) async fn start_point(source: &Store, target: &Store) -> Result<Checkpoint, CopyError> {
    let source_history_id = source.engine.history_id();
    let stored = target
        .engine
        .get_state(CHECKPOINT)
        .await
        .map_err(|error| CopyError::from_engine(error, "reading the target's checkpoint"))?;
    if let Some(bytes) = stored {
        let checkpoint: Checkpoint = serde_json::from_slice(&bytes).map_err(|error| {
            CopyError::Failed(format!(
                "the target's copy checkpoint is unreadable: {error}"
            ))
        })?;
        if checkpoint.source_history_id != source_history_id {
            return Err(CopyError::Refused(format!(
                "{} holds a copy of another store (history id {:x}, the source's is {:x}); \
                 copy into an empty target (another [engine.etcd] prefix)",
                target.describe, checkpoint.source_history_id, source_history_id
            )));
        }
        return Ok(checkpoint);
    }
    let namespaces = target.engine.namespaces().clone();
    for id in 0..namespaces.len() {
        let prefix = namespaces.prefix(id).to_string();
        let page = target
            .engine
            .scan(ScanRequest {
                prefix: prefix.clone(),
                limit: 1,
                max_examined: 0,
                ..ScanRequest::default()
            })
            .await
            .map_err(|error| CopyError::from_engine(error, "checking the target is empty"))?;
        if let Some((key, _)) = page.entries.first() {
            let key = shown(&namespaces, key);
            return Err(CopyError::Refused(format!(
                "{} already holds records (namespace {prefix:?}: {key}) and no copy of this \
                 source; copy into an empty target (another [engine.etcd] prefix), so that nothing \
                 of it is overwritten",
                target.describe
            )));
        }
    }
    Ok(Checkpoint {
        source_history_id,
        namespace: String::new(),
        after_key: None,
        copied: 0,
        expired: 0,
        done: false,
    })
}

/// Live records of every namespace of `engine`, for the progress bar.
pub(super) async fn count_live(engine: &dyn Engine) -> Result<u64, CopyError> {
    let namespaces = engine.namespaces().clone();
    let mut total = 0;
    for id in 0..namespaces.len() {
        total += engine
            .count_namespace(namespaces.prefix(id))
            .await
            .map_err(|error| CopyError::from_engine(error, "counting the source's records"))?;
    }
    Ok(total)
}

/// A key as messages may show it: keys of a namespace a service owns
/// (session ids) are secrets, so only their namespace is shown.
pub(super) fn shown(namespaces: &Namespaces, key: &str) -> String {
    match namespaces.owner_of(key) {
        Some((prefix, _)) => format!("{prefix:?}…"),
        None => format!("{key:?}"),
    }
}
