//! Backups while serving: a consistent copy of the whole store into a named
//! directory under the configured `backup_dir`. A request names the backup,
//! never a path, so no call can make the server write anywhere else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::AdminError;
use crate::engine::Engine;

/// Longest backup name.
pub const MAX_BACKUP_NAME_BYTES: usize = 128;

/// A finished backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDone {
    /// Where it is.
    pub path: PathBuf,
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
}

impl Backups {
    /// Backups of `engine` under `root` (`None`: backups are off).
    pub fn new(engine: Arc<dyn Engine>, root: Option<PathBuf>) -> Self {
        Self { engine, root }
    }

    /// Writes a backup named `name` (a default name from the clock when
    /// empty) under the backup directory.
    pub async fn backup(&self, name: &str) -> Result<BackupDone, AdminError> {
        let Some(root) = &self.root else {
            return Err(AdminError::BackupsOff);
        };
        let name = if name.is_empty() {
            format!("backup-{}", self.engine.now_millis())
        } else {
            validate_name(name)?;
            name.to_string()
        };
        let path = root.join(&name);
        if path.exists() {
            return Err(AdminError::BackupExists { name });
        }
        let started = Instant::now();
        let info = self.engine.backup(&path).await?;
        let took = started.elapsed();
        tracing::info!(
            path = %path.display(),
            files = info.files,
            bytes = info.bytes,
            took_ms = took.as_millis() as u64,
            "backup written"
        );
        Ok(BackupDone {
            path,
            files: info.files,
            bytes: info.bytes,
            took,
        })
    }
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
