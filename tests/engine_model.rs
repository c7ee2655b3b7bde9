//! Model-based test: random sequences of writes, batches, concurrent requests
//! committed as one group, clock moves (forward and back), compactions and
//! restarts against the RocksDB engine and a `BTreeMap` model must agree on
//! every read, scan, version and precondition outcome.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use tierkv::clock::{ManualClock, SharedClock};
use tierkv::engine::conformance::SUITE_NAMESPACES;
use tierkv::engine::{
    DeleteOp, Engine, EngineError, Namespaces, Precondition, PutOp, RocksEngine, RocksOptions,
    ScanRequest, ValueKind, WriteOp, WriteOutcome,
};

const KEYS: &[&str] = &[
    "a",
    "u",
    "user:a",
    "user:b",
    "user:admin:x",
    "user:admin:y",
    "user;",
    "cache:1",
    "cache:2",
    "z",
];
const PREFIXES: &[&str] = &["", "u", "user:", "user:a", "user:admin:", "cache:", "q"];
const T0: u64 = 1_800_000_000_000;

#[derive(Debug, Clone)]
enum Step {
    Write(Vec<MutationSpec>),
    /// Several requests queued while the writer is held, so they commit as
    /// one group, in this order.
    Group(Vec<Vec<MutationSpec>>),
    Advance(u64),
    /// Steps the injected clock back; the engine's clock must not follow.
    ClockBack(u64),
    Compact,
    Restart,
    Get(usize),
    Scan {
        prefix: usize,
        after: Option<usize>,
        limit: usize,
    },
}

#[derive(Debug, Clone)]
struct MutationSpec {
    key: usize,
    delete: bool,
    value: u8,
    ttl_millis: Option<u64>,
    precondition: PreconditionSpec,
}

#[derive(Debug, Clone)]
enum PreconditionSpec {
    None,
    IfAbsent,
    /// Expect the model's current version (or a wrong one when false).
    IfCurrentVersion(bool),
}

fn mutation() -> impl Strategy<Value = MutationSpec> {
    (
        0..KEYS.len(),
        prop::bool::weighted(0.25),
        any::<u8>(),
        prop::option::weighted(0.4, 1u64..5_000),
        prop_oneof![
            6 => Just(PreconditionSpec::None),
            1 => Just(PreconditionSpec::IfAbsent),
            2 => any::<bool>().prop_map(PreconditionSpec::IfCurrentVersion),
        ],
    )
        .prop_map(
            |(key, delete, value, ttl_millis, precondition)| MutationSpec {
                key,
                delete,
                value,
                ttl_millis,
                precondition,
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::collection::vec(mutation(), 1..4).prop_map(Step::Write),
        3 => prop::collection::vec(prop::collection::vec(mutation(), 1..3), 2..6)
            .prop_map(Step::Group),
        2 => (1u64..3_000).prop_map(Step::Advance),
        1 => (1u64..5_000).prop_map(Step::ClockBack),
        1 => Just(Step::Compact),
        1 => Just(Step::Restart),
        3 => (0..KEYS.len()).prop_map(Step::Get),
        3 => (0..PREFIXES.len(), prop::option::of(0..KEYS.len()), 1usize..6)
            .prop_map(|(prefix, after, limit)| Step::Scan { prefix, after, limit }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct ModelRecord {
    value: Vec<u8>,
    expire_at: Option<u64>,
    version: u64,
}

#[derive(Default)]
struct Model {
    records: BTreeMap<String, ModelRecord>,
    last_version: u64,
}

impl Model {
    fn live(&self, key: &str, now: u64) -> Option<&ModelRecord> {
        self.records
            .get(key)
            .filter(|record| record.expire_at.is_none_or(|at| at > now))
    }

    /// Applies a batch to a copy; commits only if every precondition holds.
    fn apply(&mut self, ops: &[WriteOp], now: u64) -> Result<Vec<WriteOutcome>, usize> {
        let mut next = Model {
            records: self.records.clone(),
            last_version: self.last_version,
        };
        let mut outcomes = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            let current = next.live(op.key(), now).map(|record| record.version);
            match op {
                WriteOp::Put(put) => {
                    if !put.precondition.holds(current) {
                        return Err(index);
                    }
                    next.last_version += 1;
                    next.records.insert(
                        put.key.clone(),
                        ModelRecord {
                            value: put.value.clone(),
                            expire_at: put.expire_at_millis,
                            version: next.last_version,
                        },
                    );
                    outcomes.push(WriteOutcome::Put {
                        version: next.last_version,
                    });
                }
                WriteOp::Delete(delete) => {
                    if !delete.precondition.holds(current) {
                        return Err(index);
                    }
                    next.records.remove(&delete.key);
                    outcomes.push(WriteOutcome::Delete {
                        existed: current.is_some(),
                    });
                }
            }
        }
        *self = next;
        Ok(outcomes)
    }
}

fn open(dir: &std::path::Path, clock: SharedClock) -> RocksEngine {
    RocksEngine::open(
        dir,
        Namespaces::new(SUITE_NAMESPACES.iter().copied()),
        // No grace: compaction steps remove every expired record they reach.
        RocksOptions {
            expiry_grace: Duration::ZERO,
            ..RocksOptions::default()
        },
        clock,
    )
    .expect("open")
}

/// The ops of one request, with preconditions resolved against the model.
fn build_ops(specs: &[MutationSpec], model: &Model, at: u64, now: u64) -> Vec<WriteOp> {
    specs
        .iter()
        .map(|spec| {
            let key = KEYS[spec.key].to_string();
            let current = model.live(&key, now).map(|record| record.version);
            let precondition = match spec.precondition {
                PreconditionSpec::None => Precondition::None,
                PreconditionSpec::IfAbsent => Precondition::IfAbsent,
                PreconditionSpec::IfCurrentVersion(true) => {
                    Precondition::IfVersion(current.unwrap_or(999_999))
                }
                PreconditionSpec::IfCurrentVersion(false) => {
                    Precondition::IfVersion(current.unwrap_or(0) + 7)
                }
            };
            if spec.delete {
                WriteOp::Delete(DeleteOp { key, precondition })
            } else {
                WriteOp::Put(PutOp {
                    key,
                    kind: ValueKind::Bytes,
                    value: vec![spec.value],
                    metadata: None,
                    expire_at_millis: spec.ttl_millis.map(|ttl| at + ttl),
                    schema_version: 1,
                    precondition,
                })
            }
        })
        .collect()
}

fn compare(
    expected: Result<Vec<WriteOutcome>, usize>,
    actual: Result<Vec<WriteOutcome>, EngineError>,
) -> Result<(), TestCaseError> {
    match (expected, actual) {
        (Ok(expected), Ok(actual)) => prop_assert_eq!(expected, actual),
        (Err(index), Err(EngineError::PreconditionFailed { index: actual, .. })) => {
            prop_assert_eq!(index, actual)
        }
        (expected, actual) => {
            return Err(TestCaseError::fail(format!(
                "model {expected:?} but engine {actual:?}"
            )))
        }
    }
    Ok(())
}

async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let shared: SharedClock = clock.clone();
    let mut engine = open(dir.path(), shared.clone());
    let mut model = Model::default();
    let raw = |clock: &ManualClock| tierkv::clock::Clock::now_millis(clock);
    // The engine's clock: the injected one, but never going back.
    let mut model_now = T0;

    let mut last_sequence = 0;
    for step in steps {
        let now = model_now;
        match step {
            Step::Write(specs) => {
                let ops = build_ops(&specs, &model, raw(&clock), now);
                let expected = model.apply(&ops, now);
                let actual = engine.write(ops).await;
                if let Ok(receipt) = &actual {
                    prop_assert!(receipt.sequence > last_sequence, "sequences increase");
                    last_sequence = receipt.sequence;
                }
                compare(expected, actual.map(|receipt| receipt.outcomes))?;
            }
            Step::Group(requests) => {
                let groups_before = engine.groups_committed();
                let pause = engine.pause_writer();
                let mut tasks = Vec::new();
                let mut expected = Vec::new();
                for specs in &requests {
                    let ops = build_ops(specs, &model, raw(&clock), now);
                    expected.push(model.apply(&ops, now));
                    let queued = engine.queued_write_bytes();
                    let writer = engine.clone();
                    tasks.push(tokio::spawn(async move { writer.write(ops).await }));
                    while engine.queued_write_bytes() == queued {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                drop(pause);
                for (task, expected) in tasks.into_iter().zip(expected) {
                    let actual = task.await.unwrap();
                    if let Ok(receipt) = &actual {
                        // Committed in queue order: each request's sequence is above the last.
                        prop_assert!(receipt.sequence > last_sequence, "sequences increase");
                        last_sequence = receipt.sequence;
                    }
                    compare(expected, actual.map(|receipt| receipt.outcomes))?;
                }
                prop_assert!(
                    engine.groups_committed() <= groups_before + 2,
                    "the held requests commit together"
                );
            }
            Step::Advance(millis) => {
                clock.advance(Duration::from_millis(millis));
                // The engine's clock is the latest time it has read; make it
                // read this one now, as a background tick might anyway.
                prop_assert_eq!(engine.now_millis(), raw(&clock).max(model_now));
                model_now = model_now.max(raw(&clock));
            }
            Step::ClockBack(millis) => {
                clock.set_millis(raw(&clock) - millis);
                prop_assert_eq!(
                    engine.now_millis(),
                    model_now,
                    "the engine's clock went back"
                );
            }
            Step::Compact => {
                let compacting = engine.clone();
                tokio::task::spawn_blocking(move || compacting.compact_all())
                    .await
                    .unwrap();
            }
            Step::Restart => {
                drop(engine);
                engine = open(dir.path(), shared.clone());
                // Opening reads the clock.
                model_now = model_now.max(raw(&clock));
            }
            Step::Get(key) => {
                let expected = model.live(KEYS[key], now).cloned();
                let actual = engine
                    .get(KEYS[key].to_string())
                    .await
                    .unwrap()
                    .map(|record| ModelRecord {
                        value: record.value,
                        expire_at: record.expire_at_millis,
                        version: record.version,
                    });
                prop_assert_eq!(expected, actual);
            }
            Step::Scan {
                prefix,
                after,
                limit,
            } => {
                let at = now;
                let prefix = PREFIXES[prefix];
                let after = after.map(|key| KEYS[key].to_string());
                let expected: Vec<(String, u64)> = model
                    .records
                    .iter()
                    .filter(|(key, _)| key.starts_with(prefix))
                    .filter(|(key, _)| {
                        after
                            .as_ref()
                            .is_none_or(|after| key.as_str() > after.as_str())
                    })
                    .filter(|(key, _)| model.live(key, at).is_some())
                    .take(limit)
                    .map(|(key, record)| (key.clone(), record.version))
                    .collect();
                let actual: Vec<(String, u64)> = engine
                    .scan(ScanRequest {
                        prefix: prefix.to_string(),
                        start_after: after,
                        limit,
                        include_values: false,
                        max_examined: 0,
                    })
                    .await
                    .unwrap()
                    .entries
                    .into_iter()
                    .map(|(key, record)| (key, record.version))
                    .collect();
                prop_assert_eq!(expected, actual);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The engine behaves like the model for every generated history.
    #[test]
    fn engine_matches_model(steps in prop::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(steps))?;
    }
}
