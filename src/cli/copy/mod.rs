//! `tierkv admin copy`: copies every live record of one store into another,
//! offline, engine to engine, each opened from its own configuration file
//! (typically an embedded RocksDB `data_dir` into an etcd cluster's prefix,
//! to move a single server to several replicas; see docs/replicas.md).
//!
//! What is copied: every record of every namespace, owned ones included
//! (sessions, cache entries), with its value, kind, metadata, expiry and
//! schema version. Records already expired by the copy's clock are left
//! behind. Versions are the target's own: every copied record gets a new
//! one, so `if_version` values, page tokens and Watch positions taken from
//! the source do not carry over.
//!
//! Why offline: with the source closed, a namespace-by-namespace walk is a
//! consistent snapshot and nothing written meanwhile can be missed. RocksDB
//! locks its directory, so a source held by a running server is refused.
//!
//! Restartable: after every batch a checkpoint (the namespace and the last
//! key done, and the source's history id) is stored in the target as server
//! state. Running the same command again resumes after it; the batch that
//! was in flight is written again, with the same content (the puts are
//! unconditional). A target holding records but no checkpoint is refused, so
//! a copy never overwrites data it did not write. A finished copy is
//! recorded too: running it again changes nothing.

mod copier;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, EngineKind};
use crate::engine::LockAttempt;
use copier::Copier;
use store::{count_live, open, shown, start_point, Checkpoint, CopyError, Store};

/// The lock a copy holds on its target, so two copies never interleave.
const LOCK: &str = "admin_copy";

/// How long a held copy lock is waited for: longer than the etcd lease
/// (10 s) a killed copy leaves behind.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Arguments of `tierkv admin copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Configuration file of the store to copy from (its `[engine]`,
    /// `data_dir` and `namespaces`). The server using it must be stopped.
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// Configuration file of the store to copy into (typically `[engine]
    /// kind = "etcd"` with its `[engine.etcd]`). It must hold no records,
    /// or an unfinished copy of the same source, which is resumed.
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    /// Most records per write batch (the etcd engine's limits may make
    /// batches smaller).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
}

/// Runs `tierkv admin copy`; exit codes as in [`super::EXIT_CODES`].
pub async fn run(args: CopyArgs) -> ExitCode {
    match copy(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn load(path: &Path, role: &str) -> Result<Config, CopyError> {
    // The files alone: TIERKV_* variables would apply to both stores alike.
    let config = Config::load(Some(path), &HashMap::new())
        .map_err(|error| CopyError::Config(format!("--{role} {}: {error}", path.display())))?;
    config
        .engine
        .validate()
        .map_err(|error| CopyError::Config(format!("--{role} {}: {error}", path.display())))?;
    Ok(config)
}

fn same_store(from: &Config, to: &Config) -> bool {
    match (from.engine.kind, to.engine.kind) {
        (EngineKind::Rocksdb, EngineKind::Rocksdb) => from.data_dir == to.data_dir,
        (EngineKind::Etcd, EngineKind::Etcd) => {
            from.engine.etcd.prefix == to.engine.etcd.prefix
                && from
                    .engine
                    .etcd
                    .endpoints
                    .iter()
                    .any(|endpoint| to.engine.etcd.endpoints.contains(endpoint))
        }
        _ => false,
    }
}

async fn copy(args: CopyArgs) -> Result<(), CopyError> {
    if args.batch_size == 0 {
        return Err(CopyError::Config("--batch-size must be at least 1".into()));
    }
    let from_config = load(&args.from, "from")?;
    let to_config = load(&args.to, "to")?;
    if same_store(&from_config, &to_config) {
        return Err(CopyError::Config(
            "--from and --to name the same store".into(),
        ));
    }
    let from_namespaces: Vec<String> = namespace_prefixes(&from_config)?;
    let to_namespaces: Vec<String> = namespace_prefixes(&to_config)?;
    if from_namespaces != to_namespaces {
        return Err(CopyError::Config(format!(
            "the two configurations list different namespaces ({from_namespaces:?} and {to_namespaces:?}); \
             give the target the source's namespaces, so every record keeps its namespace"
        )));
    }
    let clock: SharedClock = Arc::new(SystemClock);
    let source = open(&from_config, "from", Arc::clone(&clock)).await?;
    let target = open(&to_config, "to", clock).await?;
    let _lock = lock(&target).await?;
    let started = Instant::now();
    let checkpoint = start_point(&source, &target).await?;
    if checkpoint.done {
        eprintln!(
            "the copy from {} into {} was already complete; nothing to do",
            source.describe, target.describe
        );
        print_summary(&source, &target, &checkpoint, started);
        return Ok(());
    }
    let resuming = checkpoint.copied > 0 || checkpoint.after_key.is_some();
    let total = count_live(source.engine.as_ref()).await?;
    let bar = ProgressBar::new(total.max(1)).with_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} records {msg} [{elapsed_precise}, {per_sec}, eta {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.enable_steady_tick(Duration::from_millis(200));
    if resuming {
        bar.suspend(|| {
            eprintln!(
                "resuming after {} records (namespace {:?}, after key {})",
                checkpoint.copied,
                checkpoint.namespace,
                checkpoint.after_key.as_deref().map_or_else(
                    || "none".to_string(),
                    |key| shown(source.engine.namespaces(), key)
                )
            )
        });
    }
    bar.set_position(checkpoint.copied + checkpoint.expired);
    let result = Copier {
        source: &source,
        target: &target,
        batch_size: args.batch_size,
        checkpoint,
        bar: &bar,
    }
    .run()
    .await;
    match result {
        Ok(done) => {
            bar.finish_and_clear();
            target
                .engine
                .flush()
                .await
                .map_err(|error| CopyError::from_engine(error, "flushing the target"))?;
            eprintln!(
                "copied {} records from {} into {}; {} had expired and were left behind. \
                 Every copied record has a new version: if_version values, page tokens and Watch \
                 positions from the source do not carry over.",
                done.copied, source.describe, target.describe, done.expired
            );
            print_summary(&source, &target, &done, started);
            Ok(())
        }
        Err(error) => {
            bar.abandon();
            Err(error)
        }
    }
}

/// Takes the target's copy lock. A copy that was killed holds it until its
/// etcd lease runs out (10 s), so a held lock is waited for a while before
/// the copy is refused as running elsewhere.
async fn lock(target: &Store) -> Result<crate::engine::EngineLock, CopyError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut told = false;
    loop {
        let attempt = target
            .engine
            .try_lock(LOCK)
            .await
            .map_err(|error| CopyError::from_engine(error, "locking the target"))?;
        match attempt {
            LockAttempt::Acquired(guard) => return Ok(guard),
            LockAttempt::Held { holder } if Instant::now() >= deadline => {
                return Err(CopyError::Refused(format!(
                    "another copy into {} is running ({holder})",
                    target.describe
                )))
            }
            LockAttempt::Held { holder } => {
                if !told {
                    eprintln!(
                        "waiting for the copy lock of {} held by {holder} (a copy that was \
                         stopped holds it until its lease runs out)",
                        target.describe
                    );
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn namespace_prefixes(config: &Config) -> Result<Vec<String>, CopyError> {
    let namespaces = config.namespaces().map_err(CopyError::Config)?;
    Ok(namespaces.configured_prefixes().map(String::from).collect())
}

fn print_summary(source: &Store, target: &Store, checkpoint: &Checkpoint, started: Instant) {
    let summary = json!({
        "from": source.describe,
        "to": target.describe,
        "copied": checkpoint.copied,
        "expired_left_behind": checkpoint.expired,
        "done": checkpoint.done,
        "took_ms": started.elapsed().as_millis() as u64,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_else(|_| summary.to_string())
    );
}
