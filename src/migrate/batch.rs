//! Batch migration (`AdminService.Migrate`): walks every key under a prefix
//! in key order, in bounded batches, and migrates each record older than its
//! target with a compare-and-set on the version it read.
//!
//! - **Resumable**: after each batch the checkpoint (the last key examined)
//!   and the counts are saved with the data ([`crate::engine::Engine::put_state`]),
//!   after the batch's writes are acknowledged. A run that stops (crash,
//!   restart, client gone) is resumed from there by the next `Migrate` of the
//!   same prefix, as long as the configured targets are unchanged.
//! - **Idempotent**: a record already at its target is counted as current and
//!   not written, so records migrated after the last checkpoint and before a
//!   crash are not migrated twice.
//! - **Concurrent writers win**: a write that lands between the read and the
//!   compare-and-set makes it fail; the record is read again and migrated
//!   again if it still needs it (up to [`MAX_ATTEMPTS`] times, then it is
//!   counted as skipped).
//! - **Gentle**: a batch is at most [`MAX_BATCH_SIZE`] records and one atomic
//!   write; the task yields between batches and honours a records-per-second
//!   limit, so normal traffic is never held for long.
//! - **One at a time per prefix**: a second `Migrate` of a prefix that is
//!   running fails with [`MigrateError::AlreadyRunning`].
//! - **Stops with its client**: when the caller goes away, the run stops
//!   after the batch in progress, keeping its checkpoint; calling `Migrate`
//!   again resumes it.
//! - A **dry run** computes the same counts and failures but writes nothing,
//!   saves no checkpoint, and always starts from the beginning.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::state::Failures;
pub use super::state::{
    MigrationProgress, MigrationRequest, MigrationState, DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE,
    MAX_LISTED_FAILURE_BYTES,
};
use super::{lazy::write_back_op, MigrateError, Migrations, Plan};
use crate::engine::{Engine, EngineError, EngineLock, LockAttempt, WriteOp};
use crate::records::limits::MAX_KEY_BYTES;
use crate::records::pages::PrefixPages;

/// Tries to migrate one record that concurrent writers keep changing.
pub const MAX_ATTEMPTS: usize = 3;
/// Progress messages buffered for a slow client before the run waits.
const PROGRESS_BUFFER: usize = 16;

type Registry = Arc<Mutex<HashMap<String, Arc<Mutex<MigrationState>>>>>;

/// Runs batch migrations and remembers the ones in progress.
pub struct Migrator {
    migrations: Arc<Migrations>,
    engine: Arc<dyn Engine>,
    /// Runs in progress by prefix. A std mutex: held for map operations only.
    running: Registry,
    /// Set when the server shuts down: runs stop after their batch.
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for Migrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrator")
            .field("migrations", &self.migrations.fingerprint())
            .finish()
    }
}

/// Removes a run from the registry when its task ends, however it ends.
struct RunGuard {
    registry: Registry,
    prefix: String,
    /// The store-wide lock of the prefix, released with the guard.
    lock: Option<EngineLock>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.prefix);
    }
}

fn state_name(prefix: &str) -> String {
    format!("migration/{prefix}")
}

impl Migrator {
    /// A migrator applying `migrations` to records of `engine`.
    pub fn new(migrations: Arc<Migrations>, engine: Arc<dyn Engine>) -> Self {
        Self {
            migrations,
            engine,
            running: Arc::default(),
            stopping: Arc::default(),
        }
    }

    /// Stops every run after the batch in progress, keeping its checkpoint,
    /// and refuses new ones: the server is shutting down, and a migration
    /// must not hold its drain. Each caller gets UNAVAILABLE and resumes by
    /// calling `Migrate` again, on this server once restarted or another.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The configured migrations.
    pub fn migrations(&self) -> &Migrations {
        &self.migrations
    }

    fn now(&self) -> u64 {
        // The engine's clock is the one clock for expiry.
        self.engine.now_millis()
    }

    /// Starts (or resumes) the migration of `request.prefix` and returns its
    /// progress reports; the last one has `done` set. The run stops when the
    /// receiver is dropped.
    pub async fn start(
        &self,
        request: MigrationRequest,
    ) -> Result<mpsc::Receiver<Result<MigrationProgress, MigrateError>>, MigrateError> {
        let invalid = |field: &str, description: String| MigrateError::InvalidArgument {
            field: field.to_string(),
            description,
        };
        if request.prefix.len() > MAX_KEY_BYTES {
            return Err(invalid(
                "prefix",
                format!(
                    "prefix is {} bytes; the limit is {MAX_KEY_BYTES} bytes",
                    request.prefix.len()
                ),
            ));
        }
        if !self.migrations.covers(&request.prefix) {
            let configured: Vec<&str> = self
                .migrations
                .chains()
                .map(|chain| chain.prefix.as_str())
                .collect();
            return Err(invalid(
                "prefix",
                format!(
                    "no migration is configured for keys under {:?} (configured: {})",
                    request.prefix,
                    if configured.is_empty() {
                        "none".to_string()
                    } else {
                        configured.join(", ")
                    }
                ),
            ));
        }
        if request.batch_size > MAX_BATCH_SIZE {
            return Err(invalid(
                "batch_size",
                format!(
                    "batch_size is {}; the limit is {MAX_BATCH_SIZE}",
                    request.batch_size
                ),
            ));
        }
        if request.max_records_per_second == Some(0) {
            return Err(invalid(
                "max_records_per_second",
                "max_records_per_second must be at least 1 (leave it unset for no limit)".into(),
            ));
        }

        if self.stopping.load(Ordering::SeqCst) {
            return Err(MigrateError::ShuttingDown {
                prefix: request.prefix,
            });
        }
        let fingerprint = self.migrations.fingerprint();
        let shared = Arc::new(Mutex::new(MigrationState::default()));
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if running.contains_key(&request.prefix) {
                return Err(MigrateError::AlreadyRunning {
                    prefix: request.prefix,
                });
            }
            running.insert(request.prefix.clone(), Arc::clone(&shared));
        }
        let mut guard = RunGuard {
            registry: Arc::clone(&self.running),
            prefix: request.prefix.clone(),
            lock: None,
        };
        // Other servers over the same store (etcd replicas) run one
        // migration of a prefix at a time too.
        match self
            .engine
            .try_lock(&format!("migrate/{}", request.prefix))
            .await?
        {
            LockAttempt::Acquired(lock) => guard.lock = Some(lock),
            LockAttempt::Held { holder } => {
                return Err(MigrateError::RunningElsewhere {
                    prefix: request.prefix,
                    holder,
                })
            }
        }
        let saved = if request.dry_run {
            None
        } else {
            self.saved_state(&request.prefix).await?
        };
        let state = match saved {
            Some(saved) if !saved.done && saved.fingerprint == fingerprint => MigrationState {
                running: true,
                ..saved
            },
            _ => MigrationState {
                prefix: request.prefix.clone(),
                dry_run: request.dry_run,
                started_at_millis: self.now(),
                running: true,
                fingerprint,
                ..MigrationState::default()
            },
        };
        *shared.lock().unwrap_or_else(|e| e.into_inner()) = state;

        let (sender, receiver) = mpsc::channel(PROGRESS_BUFFER);
        let run = Run {
            stopping: Arc::clone(&self.stopping),
            guard: Some(guard),
            migrations: Arc::clone(&self.migrations),
            engine: Arc::clone(&self.engine),
            shared,
            request,
            sender,
        };
        tokio::spawn(run.run());
        Ok(receiver)
    }

    /// The states of the runs in progress on this server, by prefix.
    pub fn running_states(&self) -> Vec<MigrationState> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut states: Vec<MigrationState> = running
            .values()
            .map(|shared| shared.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        states.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        states
    }

    /// The state of the migration of `prefix`: the run in progress on this
    /// server if there is one, else the last one saved.
    pub async fn state(&self, prefix: &str) -> Result<MigrationState, MigrateError> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(prefix)
            .cloned();
        if let Some(shared) = running {
            return Ok(shared.lock().unwrap_or_else(|e| e.into_inner()).clone());
        }
        self.saved_state(prefix)
            .await?
            .ok_or_else(|| MigrateError::NotFound {
                prefix: prefix.to_string(),
            })
    }

    async fn saved_state(&self, prefix: &str) -> Result<Option<MigrationState>, MigrateError> {
        let Some(bytes) = self.engine.get_state(&state_name(prefix)).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| MigrateError::CorruptState {
                prefix: prefix.to_string(),
                reason: error.to_string(),
            })
    }
}

/// One run in its task.
struct Run {
    /// The migrator's shutdown flag.
    stopping: Arc<AtomicBool>,
    /// Released before the last report, so that a caller who saw it can
    /// start the next run at once; dropped first otherwise.
    guard: Option<RunGuard>,
    migrations: Arc<Migrations>,
    engine: Arc<dyn Engine>,
    shared: Arc<Mutex<MigrationState>>,
    request: MigrationRequest,
    sender: mpsc::Sender<Result<MigrationProgress, MigrateError>>,
}

/// Why a run stopped before its end.
enum Stop {
    /// The client went away; the checkpoint is saved.
    Disconnected,
    /// The engine failed.
    Failed(MigrateError),
}

impl Run {
    fn snapshot(&self) -> MigrationState {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut MigrationState)) -> MigrationState {
        let mut state = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        state.clone()
    }

    fn now(&self) -> u64 {
        // The engine's clock is the one clock for expiry.
        self.engine.now_millis()
    }

    async fn save(&self, state: &MigrationState) -> Result<(), MigrateError> {
        if state.dry_run {
            return Ok(());
        }
        let bytes = serde_json::to_vec(state).unwrap_or_default();
        self.engine
            .put_state(&state_name(&state.prefix), Some(bytes))
            .await?;
        Ok(())
    }

    async fn run(mut self) {
        let outcome = self.batches().await;
        let state = self.update(|state| state.running = false);
        self.guard.take();
        match outcome {
            Ok(()) | Err(Stop::Disconnected) => {}
            Err(Stop::Failed(error)) => {
                // Engine errors can name a key; their summary does not.
                let summary = match &error {
                    MigrateError::Engine(engine) => engine.log_summary(),
                    other => other.to_string(),
                };
                tracing::warn!(prefix = %state.prefix, error = %summary, "a batch migration stopped; its checkpoint is kept");
                let _ = self.sender.send(Err(error)).await;
            }
        }
    }

    async fn batches(&mut self) -> Result<(), Stop> {
        let batch_size = match self.request.batch_size {
            0 => DEFAULT_BATCH_SIZE,
            size => size,
        };
        // A batch is never more than a second's worth of the rate.
        let batch_size = self
            .request
            .max_records_per_second
            .map_or(batch_size, |rate| batch_size.min(rate)) as usize;
        let started = Instant::now();
        let mut scanned_this_run: u64 = 0;
        let mut pages = PrefixPages::new(
            self.request.prefix.clone(),
            self.snapshot().checkpoint,
            true,
            batch_size.saturating_mul(4),
        );
        loop {
            if self.sender.is_closed() {
                return Err(Stop::Disconnected);
            }
            if self.stopping.load(Ordering::SeqCst) {
                return Err(Stop::Failed(MigrateError::ShuttingDown {
                    prefix: self.request.prefix.clone(),
                }));
            }
            let entries = pages
                .next(self.engine.as_ref(), batch_size)
                .await
                .map_err(|error| Stop::Failed(error.into()))?
                .unwrap_or_default();
            let finished = pages.is_done();
            let last_key = pages.position().map(str::to_string);
            let examined = entries.len() as u64;
            let (counts, failures) = self.migrate_batch(entries).await?;
            let now = self.now();
            let state = self.update(|state| {
                state.scanned += examined;
                state.migrated += counts.migrated;
                state.already_current += counts.already_current;
                state.failed += counts.failed;
                state.newer_than_known += counts.newer_than_known;
                state.skipped += counts.skipped;
                if last_key.is_some() {
                    state.checkpoint = last_key;
                }
                if finished {
                    state.done = true;
                    state.running = false;
                    state.finished_at_millis = Some(now);
                }
            });
            // Saved only once the batch's writes are acknowledged: a crash
            // before this re-examines the batch, whose migrated records now
            // count as current.
            self.save(&state).await.map_err(Stop::Failed)?;
            if finished {
                self.guard.take();
            }
            let progress = MigrationProgress {
                state,
                failures: failures.listed,
                failures_not_listed: failures.not_listed,
            };
            if self.sender.send(Ok(progress)).await.is_err() {
                return Err(Stop::Disconnected);
            }
            if finished {
                return Ok(());
            }
            scanned_this_run += examined;
            match self.request.max_records_per_second {
                Some(rate) => {
                    let due = Duration::from_secs_f64(scanned_this_run as f64 / f64::from(rate));
                    tokio::time::sleep_until((started + due).into()).await;
                }
                None => tokio::task::yield_now().await,
            }
        }
    }

    /// Plans every record of a batch and writes the migrated ones in one
    /// atomic write; records a concurrent writer changed are retried one by one.
    async fn migrate_batch(
        &self,
        entries: Vec<(String, crate::engine::Record)>,
    ) -> Result<(BatchCounts, Failures), Stop> {
        let now = self.now();
        let mut counts = BatchCounts::default();
        let mut failures = Failures::default();
        let mut writes = Vec::new();
        for (key, record) in entries {
            let plan = self.migrations.plan(&key, &record, now);
            match counts.settle(&key, plan, &mut failures) {
                None => {}
                Some(_) if self.request.dry_run => counts.migrated += 1,
                Some(migrated) => writes.push(write_back_op(&key, migrated)),
            }
        }
        // One atomic write for the batch; a failed compare-and-set names its
        // mutation, which is set aside for a retry and the rest written again.
        let mut retries = Vec::new();
        while !writes.is_empty() {
            let ops = writes.iter().cloned().map(WriteOp::Put).collect();
            match self.engine.write(ops).await {
                Ok(_) => {
                    counts.migrated += writes.len() as u64;
                    break;
                }
                Err(EngineError::PreconditionFailed { index, .. }) if index < writes.len() => {
                    retries.push(writes.remove(index).key);
                }
                Err(error) => return Err(Stop::Failed(error.into())),
            }
        }
        for key in retries {
            self.retry(key, now, &mut counts, &mut failures).await?;
        }
        Ok((counts, failures))
    }

    /// Migrates one record a writer changed under the batch: read it again,
    /// plan again, compare-and-set again.
    async fn retry(
        &self,
        key: String,
        now: u64,
        counts: &mut BatchCounts,
        failures: &mut Failures,
    ) -> Result<(), Stop> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(record) = self
                .engine
                .get(key.clone())
                .await
                .map_err(|error| Stop::Failed(error.into()))?
            else {
                counts.skipped += 1;
                return Ok(());
            };
            let plan = self.migrations.plan(&key, &record, now);
            let Some(migrated) = counts.settle(&key, plan, failures) else {
                return Ok(());
            };
            let op = write_back_op(&key, migrated);
            match self.engine.write(vec![WriteOp::Put(op)]).await {
                Ok(_) => {
                    counts.migrated += 1;
                    return Ok(());
                }
                Err(EngineError::PreconditionFailed { .. }) => continue,
                Err(error) => return Err(Stop::Failed(error.into())),
            }
        }
        counts.skipped += 1;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct BatchCounts {
    migrated: u64,
    already_current: u64,
    failed: u64,
    newer_than_known: u64,
    skipped: u64,
}

impl BatchCounts {
    /// Counts a plan that needs no write (a failure also goes to
    /// `failures`); hands back the migrated record of one that does, which
    /// the caller counts once it is written.
    fn settle(
        &mut self,
        key: &str,
        plan: Plan,
        failures: &mut Failures,
    ) -> Option<crate::engine::Record> {
        match plan {
            Plan::Uncovered | Plan::Current => self.already_current += 1,
            Plan::NewerThanKnown => self.newer_than_known += 1,
            Plan::Failed(reason) => {
                self.failed += 1;
                failures.push(key, reason);
            }
            Plan::Migrated(migrated) => return Some(migrated),
        }
        None
    }
}
