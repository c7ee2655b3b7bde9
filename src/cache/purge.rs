//! Purge: removing the live keys under a prefix from both tiers, listed
//! first and confirmed by their count, each deleted only at the version
//! listed.

use std::time::Instant;

use crate::engine::{DeleteOp, Precondition, WriteOp, WriteOutcome};
use crate::kv::limits::MAX_LIST_EXAMINED;
use crate::kv::{self, KvError};
use crate::records::pages::PrefixPages;

use super::error::{invalid, CacheError};
use super::service::{CacheService, Inner};

/// Keys deleted per batch by a purge: one bounded write at a time.
pub const PURGE_BATCH_KEYS: usize = 1000;
/// Most keys one purge lists and deletes: its listing (keys and versions) is
/// held in memory, and its confirmation counts it. A prefix holding more is
/// purged by calling again (the response says `more`).
pub const MAX_PURGE_KEYS: usize = 10_000;

/// A purge of the keys under a prefix, guarded like `DropNamespace`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PurgeCommand {
    /// Every live key starting with this (not empty) is listed.
    pub prefix: String,
    /// The number of keys the purge lists, as a confirmation: nothing is
    /// deleted unless it matches.
    pub expected_keys: Option<u64>,
    /// List and count only; delete nothing.
    pub dry_run: bool,
}

/// What a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeOutcome {
    /// Records deleted (0 for a dry run).
    pub purged: u64,
    /// Live keys listed under the prefix, at most [`MAX_PURGE_KEYS`].
    pub listed: u64,
    /// Listed keys left as they are because they were rewritten or deleted
    /// after the listing.
    pub skipped: u64,
    /// The prefix holds more keys than one purge lists: call again.
    pub more: bool,
}

impl CacheService {
    /// Removes the live keys under `command.prefix` — at most
    /// [`MAX_PURGE_KEYS`] of them, listed first — from both tiers, once
    /// `expected_keys` equals the number listed (the guard of
    /// `DropNamespace`); a dry run only lists.
    ///
    /// It deletes only what it listed, each key only at the version it
    /// listed: a key rewritten or deleted after the listing is left as it is
    /// (`skipped`), so a Put racing a purge survives it. Fills of keys under
    /// the prefix whose origin requests went out before the purge store
    /// nothing. Deletes go in batches of [`PURGE_BATCH_KEYS`]; a deadline
    /// reached in between answers [`CacheError::PurgeIncomplete`].
    pub async fn purge(
        &self,
        command: PurgeCommand,
        deadline: Option<Instant>,
    ) -> Result<PurgeOutcome, CacheError> {
        let inner = &self.inner;
        let prefix = command.prefix.as_str();
        if prefix.is_empty() {
            return Err(invalid(
                "prefix",
                "prefix must not be empty: a purge removes the keys under a prefix, and the \
                 empty prefix would remove every key of the store"
                    .into(),
            ));
        }
        kv::validate_prefix("prefix", prefix)
            .map_err(|violation| CacheError::Kv(KvError::InvalidArgument(vec![violation])))?;
        inner.records.check_owner("prefix", prefix)?;
        if !command.dry_run {
            // Before the listing: a fill that stored before this is listed
            // and deleted, one that had not yet stored will not.
            inner.fences.invalidate_prefix(prefix).await;
        }
        let (listing, more) = inner.list_for_purge(prefix, deadline).await?;
        let mut outcome = PurgeOutcome {
            listed: listing.len() as u64,
            more,
            ..PurgeOutcome::default()
        };
        if command.dry_run {
            return Ok(outcome);
        }
        if command.expected_keys != Some(outcome.listed) {
            return Err(CacheError::PurgeExpectedKeysMismatch {
                prefix: prefix.to_string(),
                expected: command.expected_keys,
                actual: outcome.listed,
                more,
            });
        }
        for batch in listing.chunks(PURGE_BATCH_KEYS) {
            let (purged, skipped) = inner.delete_listed(batch, deadline, outcome.purged).await?;
            outcome.purged += purged;
            outcome.skipped += skipped;
        }
        // Remembered 404s have no record to delete.
        inner.memory.invalidate_prefix(prefix);
        tracing::info!(
            prefix,
            purged = outcome.purged,
            skipped = outcome.skipped,
            "cache prefix purged"
        );
        Ok(outcome)
    }
}

impl Inner {
    /// The live keys under `prefix` with their versions, in key order: at
    /// most [`MAX_PURGE_KEYS`], and whether there are more.
    async fn list_for_purge(
        &self,
        prefix: &str,
        deadline: Option<Instant>,
    ) -> Result<(Vec<(String, u64)>, bool), CacheError> {
        let mut listing = Vec::new();
        // Scans leave out namespaces other services own (session:).
        let mut pages = PrefixPages::new(prefix, None, false, MAX_LIST_EXAMINED);
        loop {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(CacheError::PurgeIncomplete { purged: 0 });
            }
            // One key beyond the bound tells whether there are more.
            let limit = (MAX_PURGE_KEYS + 1 - listing.len()).min(PURGE_BATCH_KEYS);
            let Some(page) = pages
                .next(self.records.engine().as_ref(), limit)
                .await
                .map_err(KvError::from)?
            else {
                return Ok((listing, false));
            };
            listing.extend(page.into_iter().map(|(key, record)| (key, record.version)));
            if listing.len() > MAX_PURGE_KEYS {
                listing.truncate(MAX_PURGE_KEYS);
                return Ok((listing, true));
            }
            if pages.is_done() {
                return Ok((listing, false));
            }
        }
    }

    /// Deletes each listed key at its listed version, in one atomic batch
    /// per attempt: a key whose version changed since fails the batch, is
    /// left out and the rest is tried again. Returns (deleted, skipped).
    /// `purged` (deleted by earlier batches) is for the deadline's error.
    async fn delete_listed(
        &self,
        batch: &[(String, u64)],
        deadline: Option<Instant>,
        purged: u64,
    ) -> Result<(u64, u64), CacheError> {
        let mut pending = batch.to_vec();
        let mut skipped = 0u64;
        while !pending.is_empty() {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(CacheError::PurgeIncomplete { purged });
            }
            let deletes = pending
                .iter()
                .map(|(key, version)| {
                    WriteOp::Delete(DeleteOp {
                        key: key.clone(),
                        precondition: Precondition::IfVersion(*version),
                    })
                })
                .collect();
            match self.records.write(deletes).await {
                Ok(outcomes) => {
                    let deleted = outcomes
                        .iter()
                        .filter(|outcome| matches!(outcome, WriteOutcome::Delete { existed: true }))
                        .count() as u64;
                    return Ok((deleted, skipped + pending.len() as u64 - deleted));
                }
                Err(KvError::PreconditionFailed {
                    index: Some(index), ..
                }) if index < pending.len() => {
                    // Rewritten or deleted since the listing: not ours to delete.
                    pending.remove(index);
                    skipped += 1;
                }
                Err(error) => return Err(CacheError::Kv(error)),
            }
        }
        Ok((0, skipped))
    }
}
