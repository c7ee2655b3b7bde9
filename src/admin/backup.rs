//! Backups while serving: a consistent copy of the whole store into a named
//! directory under the configured `backup_dir`. A request names the backup,
//! never a path, so no call can make the server write anywhere else.
//!
//! A name is claimed for the whole time its backup is written: of
//! concurrent backups of one name, one is written and the others get
//! [`AdminError::BackupExists`]. The checkpoint is written under a staging
//! name no request can give (`<name>~partial`) and renamed into place when
//! complete, so a backup directory is always whole and a crash leaves only a
//! staging directory, removed by the next backup of that name.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::AdminError;
use crate::engine::Engine;

/// Longest backup name.
pub const MAX_BACKUP_NAME_BYTES: usize = 128;

/// A finished backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDone {
    /// Its name: its directory under the backup directory.
    pub name: String,
    /// Files written.
    pub files: u64,
    /// Their size in bytes.
    pub bytes: u64,
    /// How long it took.
    pub took: Duration,
}

/// Takes backups into one directory.
#[derive(Clone)]
pub struct Backups {
    engine: Arc<dyn Engine>,
    root: Option<PathBuf>,
    /// Names of the backups being written.
    writing: Arc<Mutex<HashSet<String>>>,
}

/// A claimed backup name, released when dropped.
struct Claim {
    name: String,
    writing: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        // The set is only inserted into and removed from: usable if poisoned.
        self.writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.name);
    }
}

/// Suffix of the directory a backup is written to before it is complete; `~`
/// is never in a name, so no backup can be called that.
const STAGING_SUFFIX: &str = "~partial";

/// Removes a directory left by a crashed backup, if any.
fn remove_leftover(path: &Path) -> Result<(), AdminError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "removed the leftover of an unfinished backup");
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(AdminError::Engine(crate::engine::EngineError::Storage(
            format!("removing the unfinished backup {}: {error}", path.display()),
        ))),
    }
}

impl Backups {
    /// Backups of `engine` under `root` (`None`: backups are off).
    pub fn new(engine: Arc<dyn Engine>, root: Option<PathBuf>) -> Self {
        Self {
            engine,
            root,
            writing: Arc::default(),
        }
    }

    fn claim(&self, name: &str) -> Result<Claim, AdminError> {
        let mut writing = self
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !writing.insert(name.to_string()) {
            return Err(AdminError::BackupExists {
                name: name.to_string(),
            });
        }
        Ok(Claim {
            name: name.to_string(),
            writing: Arc::clone(&self.writing),
        })
    }

    /// Writes a backup named `name` (a default name from the clock when
    /// empty) under the backup directory.
    pub async fn backup(&self, name: &str) -> Result<BackupDone, AdminError> {
        if self.engine.local().is_none() {
            return Err(AdminError::BackupNotLocal);
        }
        let Some(root) = &self.root else {
            return Err(AdminError::BackupsOff);
        };
        let name = if name.is_empty() {
            format!("backup-{}", self.engine.now_millis())
        } else {
            validate_name(name)?;
            name.to_string()
        };
        let claim = self.claim(&name)?;
        // The work runs in a task of its own, holding the claim: a caller
        // that goes away does not release the name while the checkpoint is
        // still being written.
        let engine = Arc::clone(&self.engine);
        let root = root.clone();
        tokio::spawn(async move { write_backup(engine, &root, claim).await })
            .await
            .map_err(|error| {
                AdminError::Engine(crate::engine::EngineError::Storage(format!(
                    "backup task failed: {error}"
                )))
            })?
    }
}

/// Writes the backup `claim` names under `root`.
async fn write_backup(
    engine: Arc<dyn Engine>,
    root: &Path,
    claim: Claim,
) -> Result<BackupDone, AdminError> {
    let name = claim.name.clone();
    let path = root.join(&name);
    if path.exists() {
        return Err(AdminError::BackupExists { name });
    }
    let staging = root.join(format!("{name}{STAGING_SUFFIX}"));
    // RocksDB writes a checkpoint into `<dir>.tmp` first, then renames it.
    remove_leftover(&root.join(format!("{name}{STAGING_SUFFIX}.tmp")))?;
    remove_leftover(&staging)?;
    let started = Instant::now();
    let local = engine.local().ok_or_else(|| {
        crate::engine::EngineError::Storage(
            "this storage engine keeps no local files to back up".into(),
        )
    })?;
    let info = local.backup(&staging).await?;
    if let Err(error) = std::fs::rename(&staging, &path) {
        let _ = std::fs::remove_dir_all(&staging);
        // Only another process could have made it since the check above.
        if path.exists() {
            return Err(AdminError::BackupExists { name });
        }
        return Err(AdminError::Engine(crate::engine::EngineError::Storage(
            format!("moving the backup into {}: {error}", path.display()),
        )));
    }
    let took = started.elapsed();
    tracing::info!(
        path = %path.display(),
        files = info.files,
        bytes = info.bytes,
        took_ms = took.as_millis() as u64,
        "backup written"
    );
    drop(claim);
    Ok(BackupDone {
        name,
        files: info.files,
        bytes: info.bytes,
        took,
    })
}

/// A name is one plain path component: letters, digits, `.`, `_`, `-`.
fn validate_name(name: &str) -> Result<(), AdminError> {
    let invalid = |reason: String| AdminError::InvalidBackupName {
        name: name.chars().take(MAX_BACKUP_NAME_BYTES).collect(),
        reason,
    };
    if name.len() > MAX_BACKUP_NAME_BYTES {
        return Err(invalid(format!(
            "it is {} bytes; the limit is {MAX_BACKUP_NAME_BYTES}",
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(invalid("it must not be \".\" or \"..\"".into()));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "{bad:?} is not allowed; use letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only one plain path component is a name.
    #[test]
    fn names_are_one_plain_component() {
        for good in ["nightly", "2026-11-26T02.00", "a_b-c.d"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            ".",
            "..",
            "../etc",
            "a/b",
            "/abs",
            "a b",
            "a\\b",
            "naïve",
            &"x".repeat(MAX_BACKUP_NAME_BYTES + 1),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
