//! Reading the live records under a prefix page by page, in key order.
//!
//! A listing, a purge, a batch migration and the cache's store ledger all
//! walk a prefix in bounded pages. Each page resumes after the last key the
//! previous one examined, which is not always the last key it returned: a
//! scan that used up its `max_examined` on expired records ends early with a
//! `resume_after` position, and must not be mistaken for the end.

use crate::engine::{Engine, EngineError, Record, ScanRequest};

/// A position in a walk over the records under one prefix.
#[derive(Debug, Clone)]
pub struct PrefixPages {
    prefix: String,
    start_after: Option<String>,
    include_values: bool,
    max_examined: usize,
    done: bool,
}

impl PrefixPages {
    /// A walk over the live records under `prefix` after `start_after` (from
    /// the first when `None`), with values when `include_values`, examining
    /// at most `max_examined` stored records (live or expired) per page.
    pub fn new(
        prefix: impl Into<String>,
        start_after: Option<String>,
        include_values: bool,
        max_examined: usize,
    ) -> Self {
        Self {
            prefix: prefix.into(),
            start_after,
            include_values,
            max_examined,
            done: false,
        }
    }

    /// The next page of at most `limit` live records; `None` once the walk
    /// has passed the prefix's last record. A page may be short, even empty,
    /// without the walk being over (expired records used up the page's
    /// `max_examined`).
    pub async fn next(
        &mut self,
        engine: &dyn Engine,
        limit: usize,
    ) -> Result<Option<Vec<(String, Record)>>, EngineError> {
        if self.done {
            return Ok(None);
        }
        let page = engine
            .scan(ScanRequest {
                prefix: self.prefix.clone(),
                start_after: self.start_after.clone(),
                limit,
                include_values: self.include_values,
                max_examined: self.max_examined.max(limit),
            })
            .await?;
        self.done = page.entries.len() < limit && page.resume_after.is_none();
        if let Some(next) = page
            .resume_after
            .or_else(|| page.entries.last().map(|(key, _)| key.clone()))
        {
            self.start_after = Some(next);
        }
        Ok(Some(page.entries))
    }

    /// Whether the last page was the prefix's last.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The last key examined so far (where the next page starts after): a
    /// checkpoint to resume from.
    pub fn position(&self) -> Option<&str> {
        self.start_after.as_deref()
    }
}
