//! The engine test suite every [`Engine`] implementation must pass.
//!
//! A backend provides a [`Harness`] that opens the engine over one isolated
//! store (fresh the first time, the same store on later opens, so restarts can
//! be tested) with [`SUITE_NAMESPACES`] and a change feed that holds
//! [`SUITE_CHANGE_FEED_CAPACITY`] unread commits per subscriber, then calls
//! each case. The RocksDB
//! engine runs it from `tests/engine_conformance.rs`; a distributed engine runs
//! the same cases.
//!
//! Compiled only with the `testsuite` feature, so it does not ship in the
//! server's library. The cases are grouped by promise: records (reads,
//! writes, versions, expiry), scans, the change feed (sequences,
//! `catch_up_to`, lags), the change history (batches, paging, retention,
//! positions) and engine state (clock, namespaces, named state).

mod feed;
mod history;
mod records;
mod scans;
mod state;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use feed::*;
pub use history::*;
pub use records::*;
pub use scans::*;
pub use state::*;

use super::{
    ChangeEvent, ChangeSubscription, DeleteOp, Engine, EngineError, Precondition, PutOp, RecvError,
    ScanPage, ScanRequest, ValueKind, WriteOp, WriteOutcome,
};
use crate::clock::SharedClock;

/// The namespaces a harness must configure.
pub const SUITE_NAMESPACES: &[&str] = &["user:", "user:admin:", "cache:"];

/// How many unread commits a harness's change feed holds per subscriber
/// before the subscriber lags.
pub const SUITE_CHANGE_FEED_CAPACITY: usize = 256;

/// The change history's retention a harness must configure: the most
/// recent this many sequences are kept.
pub const SUITE_HISTORY_MAX_EVENTS: u64 = 1000;

/// The change history's retention a harness must configure: batches
/// committed longer ago than this (by the engine's clock) are trimmed.
pub const SUITE_HISTORY_MAX_AGE_MILLIS: u64 = 60 * 60 * 1000;

/// Opens the engine under test.
#[async_trait]
pub trait Harness: Send {
    /// Opens the engine over this harness's store. Every engine opened before
    /// has been dropped.
    async fn open(&mut self, clock: SharedClock) -> Result<Arc<dyn Engine>, EngineError>;

    /// Trims the engine's change history to its retention now, as its
    /// background trimming would eventually (tests do not wait for timers).
    /// The default asks a local engine ([`crate::engine::LocalStorage::trim_history`]);
    /// a remote engine's harness overrides it.
    async fn trim_history(&mut self, engine: &Arc<dyn Engine>) -> Result<(), EngineError> {
        match engine.local() {
            Some(local) => local.trim_history().await.map(|_| ()),
            None => Err(EngineError::Storage(
                "this harness cannot trim the engine's history".into(),
            )),
        }
    }
}

const T0: u64 = 1_800_000_000_000;

/// A put with no metadata, expiry or precondition.
pub fn put(key: &str, value: &str) -> WriteOp {
    put_with(key, value, |_| {})
}

fn put_with(key: &str, value: &str, configure: impl FnOnce(&mut PutOp)) -> WriteOp {
    let mut op = PutOp {
        key: key.to_string(),
        kind: ValueKind::Text,
        value: value.as_bytes().to_vec(),
        metadata: None,
        expire_at_millis: None,
        schema_version: 1,
        precondition: Precondition::None,
    };
    configure(&mut op);
    WriteOp::Put(op)
}

fn delete(key: &str, precondition: Precondition) -> WriteOp {
    WriteOp::Delete(DeleteOp {
        key: key.to_string(),
        precondition,
    })
}

fn version_of(outcome: &WriteOutcome) -> u64 {
    match outcome {
        WriteOutcome::Put { version } => *version,
        WriteOutcome::Delete { .. } => panic!("expected a put outcome, got {outcome:?}"),
    }
}

async fn keys(
    engine: &dyn Engine,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Vec<String> {
    engine
        .scan(ScanRequest {
            prefix: prefix.to_string(),
            start_after: start_after.map(String::from),
            limit,
            include_values: false,
            max_examined: 0,
        })
        .await
        .expect("scan")
        .entries
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

async fn scan(
    engine: &dyn Engine,
    prefix: &str,
    limit: usize,
    include_values: bool,
    max_examined: usize,
) -> ScanPage {
    engine
        .scan(ScanRequest {
            prefix: prefix.to_string(),
            start_after: None,
            limit,
            include_values,
            max_examined,
        })
        .await
        .expect("scan")
}

async fn next_event(changes: &mut ChangeSubscription) -> Result<ChangeEvent, RecvError> {
    tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("a change event within 10 s")
}

/// Every case, for backends that want one call.
pub async fn run_all<H: Harness>(mut make: impl FnMut() -> H) {
    put_then_get_round_trips(make()).await;
    versions_increase_across_deletes_and_restarts(make()).await;
    preconditions_gate_writes(make()).await;
    batches_are_atomic_and_ordered(make()).await;
    expiry_hides_records(make()).await;
    scans_merge_namespaces_in_byte_order(make()).await;
    concurrent_compare_and_set_loses_no_update(make()).await;
    large_values_round_trip(make()).await;
    reads_within_a_byte_budget(make()).await;
    versions_are_ordered_store_wide(make()).await;
    a_read_after_a_write_sees_it(make()).await;
    scans_bound_the_records_they_examine(make()).await;
    change_feed_publishes_commits_in_order(make()).await;
    subscribe_then_read_misses_no_write(make()).await;
    lagging_subscriber_learns_how_much_it_missed(make()).await;
    write_returns_its_commit_sequence(make()).await;
    sequences_strictly_increase(make()).await;
    catch_up_to_waits_for_the_feed(make()).await;
    clock_never_goes_back(make()).await;
    namespaces_are_counted_and_cleared(make()).await;
    history_keeps_whole_batches(make()).await;
    live_events_carry_payload_and_batch(make()).await;
    namespace_cleared_is_in_history(make()).await;
    unresumable_positions_are_refused(make()).await;
    scan_position_is_a_cut_of_history(make()).await;
    history_followed_to_latest_misses_no_write(make()).await;
}
