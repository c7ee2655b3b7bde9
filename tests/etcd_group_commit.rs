//! Group commit in the etcd engine, on a real three-member etcd cluster
//! (tests/common/etcd.rs): concurrent write requests share transactions,
//! and each keeps its own atomicity, outcomes, versions, sequence and
//! batch, on the live feed and in history; a request whose compares fail
//! fails no other request of its group; a shared transaction keeps the
//! configured `--max-txn-ops`.
//!
//! Whether requests were grouped is seen from their sequences: a sequence
//! is `revision << 16 | index`, so two requests of one transaction have
//! the same high bits. Each test writes until it saw grouping (under a
//! generous bound), so it cannot pass without group commit.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::{self, TEST_MAX_REQUEST_BYTES, TEST_MAX_TXN_OPS};
use tierkv::clock::ManualClock;
use tierkv::engine::conformance::SUITE_NAMESPACES;
use tierkv::engine::{
    Change, Engine, EngineError, EtcdEngine, EtcdOptions, HistoryPosition, Namespaces,
    Precondition, PutOp, ValueKind, WriteOp, WriteOutcome, WriteReceipt,
};
use tokio::task::JoinSet;

/// Writers sent at once in one round.
const WRITERS: usize = 48;
/// Rounds a test may take to see two requests share a transaction.
const MAX_ROUNDS: usize = 50;

fn options(name: &str, max_txn_ops: usize) -> EtcdOptions {
    EtcdOptions {
        endpoints: etcd::shared().endpoints(),
        prefix: etcd::unique_prefix(name),
        max_txn_ops,
        max_request_bytes: TEST_MAX_REQUEST_BYTES,
        change_feed_capacity: 100_000,
        ..EtcdOptions::default()
    }
}

async fn open(options: EtcdOptions) -> Arc<EtcdEngine> {
    let engine = EtcdEngine::open(
        options,
        Namespaces::new(SUITE_NAMESPACES.iter().copied()),
        ManualClock::new(1_800_000_000_000),
    )
    .await
    .expect("open the etcd engine");
    Arc::new(engine)
}

fn put(key: &str, value: &str, precondition: Precondition) -> WriteOp {
    WriteOp::Put(PutOp {
        key: key.into(),
        kind: ValueKind::Text,
        value: value.as_bytes().to_vec(),
        metadata: None,
        expire_at_millis: None,
        schema_version: 1,
        precondition,
    })
}

/// The revision a sequence or version belongs to.
fn revision(sequence: u64) -> u64 {
    sequence >> 16
}

/// One round: `WRITERS` concurrent requests, request `n` putting
/// `user:{tag}/{n}/a` and `user:{tag}/{n}/b`; their receipts by `n`.
async fn round(engine: &Arc<EtcdEngine>, tag: &str) -> Vec<(Vec<String>, WriteReceipt)> {
    let mut writers = JoinSet::new();
    for n in 0..WRITERS {
        let engine = Arc::clone(engine);
        let keys = vec![format!("user:{tag}/{n}/a"), format!("user:{tag}/{n}/b")];
        writers.spawn(async move {
            let ops = keys
                .iter()
                .map(|key| put(key, "v", Precondition::None))
                .collect();
            let receipt = engine.write(ops).await.expect("a blind write commits");
            (keys, receipt)
        });
    }
    let mut done = Vec::new();
    while let Some(result) = writers.join_next().await {
        done.push(result.unwrap());
    }
    done
}

/// Concurrent requests share transactions, and each keeps its own: two
/// versions of its own (distinct from every other request's), a sequence of
/// its own that its last event carries, its events together as one batch on
/// the live feed and in history, exactly once; resuming history at a
/// request that shared its revision returns the requests after it, not it.
#[tokio::test]
async fn shared_transactions_keep_each_request_its_own_batch() {
    let engine = open(options("group", TEST_MAX_TXN_OPS)).await;
    let (_, start) = engine.history_bounds().await.unwrap();
    let mut changes = engine.subscribe();
    let mut written = Vec::new();
    let mut shared = None;
    for tag in 0..MAX_ROUNDS {
        written.extend(round(&engine, &format!("r{tag}")).await);
        let mut by_revision: HashMap<u64, Vec<u64>> = HashMap::new();
        for (_, receipt) in &written {
            by_revision
                .entry(revision(receipt.sequence))
                .or_default()
                .push(receipt.sequence);
        }
        shared = by_revision
            .into_values()
            .find(|sequences| sequences.len() > 1);
        if shared.is_some() {
            break;
        }
    }
    let mut shared = shared.expect("concurrent requests never shared a transaction");
    shared.sort_unstable();

    let mut versions = HashSet::new();
    let mut sequences = HashSet::new();
    let mut expected: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (keys, receipt) in &written {
        assert!(sequences.insert(receipt.sequence), "a sequence repeats");
        for outcome in &receipt.outcomes {
            let WriteOutcome::Put { version } = outcome else {
                panic!("a put's outcome expected: {outcome:?}");
            };
            assert!(versions.insert(*version), "version {version} repeats");
            assert_eq!(revision(*version), revision(receipt.sequence));
            assert!(*version <= receipt.sequence);
        }
        expected.insert(receipt.sequence, keys.clone());
    }

    // The live feed: every request's two events, together, in sequence
    // order, the last carrying the request's sequence as both.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut live: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut last_sequence = 0;
    while live.values().map(Vec::len).sum::<usize>() < 2 * written.len() {
        let event = tokio::time::timeout_at(deadline.into(), changes.recv())
            .await
            .expect("every event arrives")
            .expect("no lag, no close");
        assert!(event.sequence >= last_sequence, "events in commit order");
        assert!(event.sequence <= event.batch_sequence);
        last_sequence = event.sequence;
        assert!(matches!(event.change, Change::Put { .. }));
        live.entry(event.batch_sequence)
            .or_default()
            .push(event.key.to_string());
    }
    assert_eq!(live, expected, "one batch per request, exactly once");

    // History: the same batches, exactly once, each at its request's sequence.
    let id = engine.history_id();
    let mut history: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut after = start;
    loop {
        let page = engine
            .read_history(
                HistoryPosition {
                    history_id: id,
                    sequence: after,
                },
                7,
            )
            .await
            .unwrap();
        let Some(last) = page.batches.last() else {
            break;
        };
        after = last.sequence;
        for batch in page.batches {
            let keys = batch.events.iter().map(|e| e.key.to_string()).collect();
            assert!(history.insert(batch.sequence, keys).is_none());
        }
    }
    assert_eq!(history, expected, "history keeps one batch per request");

    // Resume between two requests that shared a revision.
    let page = engine
        .read_history(
            HistoryPosition {
                history_id: id,
                sequence: shared[0],
            },
            1,
        )
        .await
        .unwrap();
    assert_eq!(
        page.batches.first().map(|batch| batch.sequence),
        Some(shared[1]),
        "resuming after the first request of a shared revision returns the next, not it"
    );
}

/// Writers incrementing one counter with compare-and-set race each other
/// in shared transactions beside blind writers: every acknowledged increment
/// counts exactly once (the counter ends at their number), and no blind
/// write fails for another request's compare.
#[tokio::test]
async fn a_failed_compare_fails_no_other_request_of_its_group() {
    const INCREMENTERS: usize = 8;
    const INCREMENTS: usize = 15;
    let engine = open(options("compare", TEST_MAX_TXN_OPS)).await;
    engine
        .write(vec![put("user:counter", "0", Precondition::None)])
        .await
        .unwrap();
    let mut tasks = JoinSet::new();
    for _ in 0..INCREMENTERS {
        let engine = Arc::clone(&engine);
        tasks.spawn(async move {
            let mut done = 0;
            while done < INCREMENTS {
                let record = engine
                    .get_many(vec!["user:counter".into()])
                    .await
                    .unwrap()
                    .remove(0)
                    .expect("the counter exists");
                let value: usize = String::from_utf8(record.value).unwrap().parse().unwrap();
                let next = (value + 1).to_string();
                match engine
                    .write(vec![put(
                        "user:counter",
                        &next,
                        Precondition::IfVersion(record.version),
                    )])
                    .await
                {
                    Ok(_) => done += 1,
                    Err(EngineError::PreconditionFailed { .. }) => {}
                    Err(other) => panic!("an increment failed: {other}"),
                }
            }
        });
    }
    let blind = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move {
            let mut grouped = 0;
            for tag in 0..10 {
                let receipts = round(&engine, &format!("b{tag}")).await;
                let revisions: HashSet<u64> = receipts
                    .iter()
                    .map(|(_, receipt)| revision(receipt.sequence))
                    .collect();
                grouped += receipts.len() - revisions.len();
            }
            grouped
        })
    };
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    let grouped = blind.await.unwrap();
    assert!(grouped > 0, "the blind writers never shared a transaction");
    let counter = engine
        .get_many(vec!["user:counter".into()])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(
        String::from_utf8(counter.value).unwrap(),
        (INCREMENTERS * INCREMENTS).to_string(),
        "every acknowledged increment counted once"
    );
}

/// With `max_txn_ops` of 8 (7 operations and the feed record), concurrent
/// requests of two puts (two operations each, three with the spare delete
/// of an old out-of-line value) share transactions of at most three
/// requests: the limit holds per shared transaction.
#[tokio::test]
async fn shared_transactions_keep_the_txn_ops_limit() {
    let engine = open(options("limit", 8)).await;
    let mut largest = 0;
    for tag in 0..MAX_ROUNDS {
        let receipts = round(&engine, &format!("l{tag}")).await;
        let mut per_revision: HashMap<u64, usize> = HashMap::new();
        for (_, receipt) in &receipts {
            *per_revision.entry(revision(receipt.sequence)).or_default() += 1;
        }
        largest = largest.max(per_revision.into_values().max().unwrap_or(0));
        if largest > 1 {
            break;
        }
    }
    assert!(largest > 1, "requests never shared a transaction");
    assert!(
        largest <= 3,
        "{largest} requests of 2 puts in one transaction of at most 7 operations"
    );
}

/// Concurrent blind puts of one key share transactions (each later one
/// overwrites the earlier, as if committed right after it): every request
/// gets a version of its own, the key ends with the value of the request
/// with the highest version, a read sees that version, and the feed
/// carries every request's event, once, in version order.
#[tokio::test]
async fn blind_puts_of_one_key_share_a_transaction_and_the_last_wins() {
    let engine = open(options("same-key", TEST_MAX_TXN_OPS)).await;
    let mut changes = engine.subscribe();
    let mut receipts: Vec<(String, u64)> = Vec::new();
    let mut grouped = false;
    for tag in 0..MAX_ROUNDS {
        let mut writers = JoinSet::new();
        for n in 0..WRITERS {
            let engine = Arc::clone(&engine);
            let value = format!("{tag}/{n}");
            writers.spawn(async move {
                let receipt = engine
                    .write(vec![put("user:same", &value, Precondition::None)])
                    .await
                    .expect("a blind put commits");
                let WriteOutcome::Put { version } = receipt.outcomes[0] else {
                    panic!("a put's outcome expected");
                };
                assert_eq!(version, receipt.sequence);
                (value, version)
            });
        }
        let mut revisions = HashSet::new();
        let mut count = 0;
        while let Some(result) = writers.join_next().await {
            let (value, version) = result.unwrap();
            revisions.insert(revision(version));
            receipts.push((value, version));
            count += 1;
        }
        if revisions.len() < count {
            grouped = true;
            break;
        }
    }
    assert!(grouped, "blind puts of one key never shared a transaction");
    let versions: HashSet<u64> = receipts.iter().map(|(_, version)| *version).collect();
    assert_eq!(
        versions.len(),
        receipts.len(),
        "every put has its own version"
    );
    let (last_value, last_version) = receipts.iter().max_by_key(|(_, v)| *v).unwrap().clone();
    let record = engine
        .get_many(vec!["user:same".into()])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(record.version, last_version);
    assert_eq!(String::from_utf8(record.value).unwrap(), last_value);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while seen.len() < receipts.len() {
        let event = tokio::time::timeout_at(deadline.into(), changes.recv())
            .await
            .expect("every event arrives")
            .expect("no lag, no close");
        let Change::Put { version, .. } = event.change else {
            panic!("a put event expected");
        };
        assert_eq!(event.batch_sequence, version, "each put is its own batch");
        seen.push(version);
    }
    let mut expected: Vec<u64> = versions.into_iter().collect();
    expected.sort_unstable();
    assert_eq!(seen, expected, "every put once, in version order");
}

/// Concurrent point reads share read transactions, and each gets its own
/// keys: many tasks each write their key, read it back at once with a
/// neighbour's (their own write is always seen: the read started after it),
/// and read a fixed key with a known value; every answer is the right one.
#[tokio::test]
async fn concurrent_point_reads_each_get_their_own_keys() {
    const READERS: usize = 64;
    let engine = open(options("reads", TEST_MAX_TXN_OPS)).await;
    engine
        .write(vec![put("user:fixed", "fixed", Precondition::None)])
        .await
        .unwrap();
    let mut tasks = JoinSet::new();
    for n in 0..READERS {
        let engine = Arc::clone(&engine);
        tasks.spawn(async move {
            for round in 0..10 {
                let own = format!("user:reader/{n}");
                let value = format!("{n}/{round}");
                let receipt = engine
                    .write(vec![put(&own, &value, Precondition::None)])
                    .await
                    .unwrap();
                let read = engine
                    .get_many(vec![
                        own.clone(),
                        format!("user:reader/{}", (n + 1) % READERS),
                        "user:fixed".into(),
                        own.clone(),
                    ])
                    .await
                    .unwrap();
                let own_read = read[0].as_ref().expect("its own write is seen");
                assert_eq!(String::from_utf8(own_read.value.clone()).unwrap(), value);
                assert!(own_read.version <= receipt.sequence);
                assert_eq!(read[3].as_ref().map(|r| r.version), Some(own_read.version));
                if let Some(neighbour) = &read[1] {
                    let text = String::from_utf8(neighbour.value.clone()).unwrap();
                    assert!(text.starts_with(&format!("{}/", (n + 1) % READERS)));
                }
                let fixed = read[2].as_ref().expect("the fixed key");
                assert_eq!(fixed.value, b"fixed");
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
}

/// Through a real server over etcd: concurrent BatchWrites share
/// transactions, yet a Watch receives each whole and once, in sequence
/// order, and resuming after any request (even one that shared its
/// revision with the next) delivers exactly the requests after it.
///
/// A request's sequence is its last put's version (what BatchWrite
/// answers), so a resume position is built from it in the documented
/// `<history id>-<sequence>` form of `Watch` positions.
#[tokio::test]
async fn watch_over_shared_transactions_is_whole_and_exactly_once() {
    use common::{connect, put_text};
    use tierkv::proto::v1 as pb;

    const WRITERS: usize = 24;
    const ROUNDS: usize = 6;
    const PER_BATCH: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let server = etcd::spawn(etcd::server_command(
        &etcd::shared().endpoints(),
        &etcd::unique_prefix("watch"),
        dir.path(),
    ));
    let mut client = connect(&server.endpoint()).await;
    let watch = |start_after: Option<String>| pb::WatchRequest {
        prefix: "user:w/".into(),
        start_after,
        ..Default::default()
    };
    let mut live = client.watch(watch(None)).await.unwrap().into_inner();
    let mut writers = JoinSet::new();
    for writer in 0..WRITERS {
        let endpoint = server.endpoint();
        writers.spawn(async move {
            let mut client = connect(&endpoint).await;
            let mut requests = Vec::new();
            for round in 0..ROUNDS {
                let keys: Vec<String> = (0..PER_BATCH)
                    .map(|index| format!("user:w/{writer:02}/{round}/{index}"))
                    .collect();
                let mutations = keys
                    .iter()
                    .map(|key| pb::Mutation {
                        operation: Some(pb::mutation::Operation::Put(put_text(key, "v"))),
                    })
                    .collect();
                let reply = client
                    .batch_write(pb::BatchWriteRequest { mutations })
                    .await
                    .unwrap()
                    .into_inner();
                let sequence = reply.results.last().unwrap().version;
                requests.push((sequence, keys));
            }
            requests
        });
    }
    let mut requests: Vec<(u64, Vec<String>)> = Vec::new();
    while let Some(result) = writers.join_next().await {
        requests.extend(result.unwrap());
    }
    requests.sort();
    let shared: Vec<usize> = (1..requests.len())
        .filter(|at| revision(requests[at - 1].0) == revision(requests[*at].0))
        .map(|at| at - 1)
        .collect();
    assert!(
        !shared.is_empty(),
        "no two BatchWrites shared a transaction"
    );

    // Reads `expected` keys from a stream; checks each response holds whole
    // requests; returns the keys in order and the stream's history id.
    async fn receive(
        stream: &mut tonic::Streaming<pb::WatchResponse>,
        expected: usize,
    ) -> (Vec<String>, String) {
        let mut keys = Vec::new();
        let mut history = String::new();
        while keys.len() < expected {
            let response = tokio::time::timeout(Duration::from_secs(60), stream.message())
                .await
                .expect("a response in time")
                .expect("no error")
                .expect("the stream goes on");
            history = response.position.split('-').next().unwrap().to_string();
            let Some(pb::watch_response::Kind::Events(events)) = response.kind else {
                continue;
            };
            assert_eq!(events.events.len() % PER_BATCH, 0, "a request was split");
            keys.extend(events.events.into_iter().map(|event| event.key));
        }
        assert_eq!(keys.len(), expected, "nothing more than expected");
        (keys, history)
    }
    let all: Vec<String> = requests.iter().flat_map(|(_, keys)| keys.clone()).collect();
    let (received, history) = receive(&mut live, all.len()).await;
    assert_eq!(
        received, all,
        "every request once, whole, in sequence order"
    );

    // Resume between two requests that shared a revision, and at a few others.
    let mut cuts = vec![shared[0], shared[shared.len() / 2]];
    cuts.extend([0, requests.len() / 3, requests.len() - 2]);
    for cut in cuts {
        let position = format!("{history}-{}", requests[cut].0);
        let rest: Vec<String> = requests[cut + 1..]
            .iter()
            .flat_map(|(_, keys)| keys.clone())
            .collect();
        let mut stream = client
            .watch(watch(Some(position.clone())))
            .await
            .unwrap()
            .into_inner();
        let (resumed, _) = receive(&mut stream, rest.len()).await;
        assert_eq!(resumed, rest, "resumed after {position}");
    }
}
