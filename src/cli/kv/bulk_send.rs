//! Sending `tierkv kv bulk`: mutations grouped into batches within the
//! server's limits, sent one batch at a time with progress.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use pb::kv_service_client::KvServiceClient;

use super::bulk_file::BulkKind;
use crate::cli::error::CliError;
use crate::cli::CliChannel as Channel;
use crate::kv::limits::{MAX_BATCH_WRITE_BYTES, MAX_BATCH_WRITE_MUTATIONS};
use crate::proto::v1 as pb;

/// `bulk put` / `bulk delete`: streams the file twice, holding at most one
/// batch. The first pass checks every entry, so a bad entry anywhere stops
/// the command before anything is written; the second sends batches as they
/// fill, one at a time.
pub(super) async fn bulk(
    client: KvServiceClient<Channel>,
    path: PathBuf,
    kind: BulkKind,
) -> Result<ExitCode, CliError> {
    let runtime = tokio::runtime::Handle::current();
    // Parsing is blocking I/O and CPU: off the async workers, which drive the
    // connection; each batch is sent from there and awaited before the next.
    tokio::task::spawn_blocking(move || {
        let total = kind.for_each_mutation(&path, |_| Ok(()))?;
        let mut sender = BatchSender::new(client, runtime, total, kind.verb());
        kind.for_each_mutation(&path, |mutation| sender.push(mutation))?;
        sender.finish()
    })
    .await
    .map_err(|error| CliError::Usage(format!("bulk command failed: {error}")))?
}

/// Groups mutations into batches within the server's count and size limits.
struct Batcher {
    batch: Vec<pb::Mutation>,
    batch_bytes: usize,
    byte_budget: usize,
    max_mutations: usize,
}

impl Batcher {
    fn new() -> Self {
        Self {
            batch: Vec::new(),
            batch_bytes: 0,
            // Leave headroom under the byte limit for framing.
            byte_budget: MAX_BATCH_WRITE_BYTES - MAX_BATCH_WRITE_BYTES / 16,
            max_mutations: MAX_BATCH_WRITE_MUTATIONS,
        }
    }

    /// Adds a mutation; returns the full batch it does not fit in, to send.
    fn push(&mut self, mutation: pb::Mutation) -> Option<Vec<pb::Mutation>> {
        let size = prost::Message::encoded_len(&mutation);
        let full = (!self.batch.is_empty()
            && (self.batch.len() == self.max_mutations
                || self.batch_bytes + size > self.byte_budget))
            .then(|| self.take());
        self.batch_bytes += size;
        self.batch.push(mutation);
        full
    }

    /// The batch so far, emptying it.
    fn take(&mut self) -> Vec<pb::Mutation> {
        self.batch_bytes = 0;
        std::mem::take(&mut self.batch)
    }
}

/// Sends each batch as soon as it is full and waits for it before the next.
struct BatchSender {
    client: KvServiceClient<Channel>,
    runtime: tokio::runtime::Handle,
    batcher: Batcher,
    done: usize,
    total: usize,
    verb: &'static str,
    progress: indicatif::ProgressBar,
}

impl BatchSender {
    fn new(
        client: KvServiceClient<Channel>,
        runtime: tokio::runtime::Handle,
        total: usize,
        verb: &'static str,
    ) -> Self {
        let progress = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} keys ({eta})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(verb.to_string());
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Self {
            client,
            runtime,
            batcher: Batcher::new(),
            done: 0,
            total,
            verb,
            progress,
        }
    }

    fn push(&mut self, mutation: pb::Mutation) -> Result<(), CliError> {
        match self.batcher.push(mutation) {
            Some(full) => self.send(full),
            None => Ok(()),
        }
    }

    fn send(&mut self, mutations: Vec<pb::Mutation>) -> Result<(), CliError> {
        let count = mutations.len();
        let result = self
            .runtime
            .block_on(self.client.batch_write(pb::BatchWriteRequest { mutations }));
        if let Err(status) = result {
            self.progress.abandon();
            eprintln!(
                "{} of {} keys done before this batch failed; the failed batch wrote nothing",
                self.done, self.total
            );
            return Err(status.into());
        }
        self.done += count;
        self.progress.set_position(self.done as u64);
        Ok(())
    }

    fn finish(mut self) -> Result<ExitCode, CliError> {
        let last = self.batcher.take();
        if !last.is_empty() {
            self.send(last)?;
        }
        self.progress.finish_and_clear();
        eprintln!("{} {} keys: done", self.verb, self.total);
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::super::bulk_file::{bulk_delete_mutation, BulkDeleteEntry};
    use super::*;

    /// Batches respect the per-batch mutation count and byte budget.
    #[test]
    fn batches_respect_the_limits() {
        let delete = |key: &str| bulk_delete_mutation(0, BulkDeleteEntry::Key(key.into())).unwrap();
        let mut batcher = Batcher::new();
        let mut sizes = Vec::new();
        for i in 0..25_001 {
            if let Some(full) = batcher.push(delete(&format!("k{i}"))) {
                sizes.push(full.len());
            }
        }
        sizes.push(batcher.take().len());
        assert_eq!(sizes, vec![10_000, 10_000, 5_001]);

        // A delete of a one-byte key encodes in 5 bytes.
        let mut batcher = Batcher::new();
        batcher.byte_budget = 12;
        assert!(batcher.push(delete("a")).is_none());
        assert!(batcher.push(delete("b")).is_none());
        assert_eq!(batcher.push(delete("c")).map(|full| full.len()), Some(2));
        assert_eq!(batcher.take().len(), 1);
        assert!(batcher.take().is_empty());
    }
}
