//! Cases of the persisted change history: whole batches under their
//! request's sequence, paging that hands out every batch once, the live
//! feed's payloads and batch boundaries, namespace clears, retention and the
//! errors of positions that cannot be resumed, and scan positions
//! consistent with history.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::clock::ManualClock;
use crate::engine::{Change, HistoryBatch, HistoryError, HistoryPosition, PutPayload};

/// Every batch after `after`, read page by page with `max_events` per page,
/// checking that pages hold whole batches in increasing order.
async fn read_all_history(engine: &dyn Engine, after: u64, max_events: usize) -> Vec<HistoryBatch> {
    let id = engine.history_id();
    let mut position = after;
    let mut batches: Vec<HistoryBatch> = Vec::new();
    loop {
        let page = engine
            .read_history(
                HistoryPosition {
                    history_id: id,
                    sequence: position,
                },
                max_events,
            )
            .await
            .expect("read history");
        let Some(last) = page.batches.last() else {
            assert!(page.latest >= position);
            return batches;
        };
        let before_last: usize = page.batches[..page.batches.len() - 1]
            .iter()
            .map(|batch| batch.events.len())
            .sum();
        assert!(
            page.batches.len() == 1 || before_last < max_events,
            "a page takes another batch only while it is under its bound"
        );
        assert!(last.sequence <= page.latest);
        for batch in &page.batches {
            assert!(
                batch.sequence > position,
                "batches come in commit order, once"
            );
            position = batch.sequence;
            let sequences: Vec<u64> = batch.events.iter().map(|event| event.sequence).collect();
            assert_eq!(sequences.last(), Some(&batch.sequence));
            assert!(sequences.windows(2).all(|pair| pair[1] >= pair[0]));
            assert!(batch
                .events
                .iter()
                .all(|event| event.batch_sequence == batch.sequence));
        }
        batches.extend(page.batches);
    }
}

/// The history keeps one whole batch per write request under the sequence
/// the write returned, with keys, versions, expiry and schema version (but
/// no values); read page by page (even one event per page, smaller than a
/// batch), every batch comes exactly once, in commit order; a write that
/// failed its precondition leaves nothing.
pub async fn history_keeps_whole_batches<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let (_, start) = engine.history_bounds().await.unwrap();
    let mut written = Vec::new();
    let receipt = engine
        .write(vec![
            put("user:a", "1"),
            put_with("cache:b", "2", |op| {
                op.expire_at_millis = Some(T0 + 9_000);
                op.schema_version = 3;
            }),
            delete("user:gone", Precondition::None),
        ])
        .await
        .unwrap();
    written.push(receipt);
    let failed = engine
        .write(vec![put_with("user:a", "x", |op| {
            op.precondition = Precondition::IfAbsent
        })])
        .await;
    assert!(matches!(
        failed,
        Err(EngineError::PreconditionFailed { .. })
    ));
    for n in 0..5 {
        written.push(
            engine
                .write(vec![put(&format!("user:n{n}"), "v")])
                .await
                .unwrap(),
        );
    }
    written.push(
        engine
            .write(vec![put("user:a", "2"), put("user:a", "3")])
            .await
            .unwrap(),
    );

    for max_events in [1, 2, 1000] {
        let batches = read_all_history(engine.as_ref(), start, max_events).await;
        let sequences: Vec<u64> = batches.iter().map(|batch| batch.sequence).collect();
        let receipts: Vec<u64> = written.iter().map(|receipt| receipt.sequence).collect();
        assert_eq!(
            sequences, receipts,
            "one batch per request, at its sequence"
        );
        let first = &batches[0];
        assert!(first.committed_at_millis >= T0);
        let seen: Vec<(&str, Change)> = first
            .events
            .iter()
            .map(|event| (&*event.key, event.change.clone()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    "user:a",
                    Change::Put {
                        version: version_of(&written[0][0]),
                        expire_at_millis: None,
                        schema_version: 1,
                        payload: None,
                    }
                ),
                (
                    "cache:b",
                    Change::Put {
                        version: version_of(&written[0][1]),
                        expire_at_millis: Some(T0 + 9_000),
                        schema_version: 3,
                        payload: None,
                    }
                ),
                ("user:gone", Change::Delete),
            ]
        );
        assert_eq!(batches.last().unwrap().events.len(), 2);
    }
}

/// Live events carry the value and metadata as written and their request's
/// sequence; the last event of a request has exactly that sequence, which is
/// what `write` returned.
pub async fn live_events_carry_payload_and_batch<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let mut changes = engine.subscribe();
    let receipt = engine
        .write(vec![
            put_with("user:p", "hello", |op| {
                op.kind = ValueKind::Json;
                op.metadata = Some(br#"{"m":1}"#.to_vec());
            }),
            delete("user:q", Precondition::None),
        ])
        .await
        .unwrap();
    let single = engine.write(vec![put("user:r", "x")]).await.unwrap();
    let first = next_event(&mut changes).await.unwrap();
    let second = next_event(&mut changes).await.unwrap();
    let third = next_event(&mut changes).await.unwrap();
    assert_eq!(first.batch_sequence, receipt.sequence);
    assert_eq!(second.batch_sequence, receipt.sequence);
    assert_eq!(second.sequence, receipt.sequence);
    assert!(first.sequence <= second.sequence);
    assert_eq!(
        (third.sequence, third.batch_sequence),
        (single.sequence, single.sequence)
    );
    match &first.change {
        Change::Put {
            payload: Some(payload),
            schema_version: 1,
            ..
        } => assert_eq!(
            **payload,
            PutPayload {
                kind: ValueKind::Json,
                value: b"hello".to_vec(),
                metadata: Some(br#"{"m":1}"#.to_vec()),
            }
        ),
        other => panic!("a put with its payload, got {other:?}"),
    }
    assert_eq!(second.change, Change::Delete);
}

/// Clearing a namespace is a batch of its own in history: one
/// NAMESPACE_CLEARED event whose key is the prefix, at the sequence of the
/// event the live feed published.
pub async fn namespace_cleared_is_in_history<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    engine.write(vec![put("user:1", "a")]).await.unwrap();
    let (_, before) = engine.history_bounds().await.unwrap();
    let mut changes = engine.subscribe();
    engine.clear_namespace("user:").await.unwrap();
    let live = next_event(&mut changes).await.unwrap();
    let batches = read_all_history(engine.as_ref(), before, 100).await;
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].sequence, live.sequence);
    assert_eq!(batches[0].events.len(), 1);
    assert_eq!(&*batches[0].events[0].key, "user:");
    assert_eq!(batches[0].events[0].change, Change::NamespaceCleared);
}

/// Positions that cannot be resumed are refused, each with its own error:
/// another history's, one past the latest commit, and (after retention
/// trimmed by count, then by age) one older than the oldest kept. The
/// oldest position reported still works, and the history survives a
/// restart under the same id.
pub async fn unresumable_positions_are_refused<H: Harness>(mut harness: H) {
    let clock = ManualClock::new(T0);
    let engine = harness.open(clock.clone()).await.expect("open");
    let id = engine.history_id();
    let (oldest, _) = engine.history_bounds().await.unwrap();
    let receipt = engine.write(vec![put("user:x", "1")]).await.unwrap();
    let at = |sequence| HistoryPosition {
        history_id: id,
        sequence,
    };
    match engine
        .read_history(
            HistoryPosition {
                history_id: id.wrapping_add(1),
                sequence: receipt.sequence,
            },
            10,
        )
        .await
    {
        Err(HistoryError::OtherHistory { current }) => assert_eq!(current, id),
        other => panic!("OtherHistory expected, got {other:?}"),
    }
    let (_, latest) = engine.history_bounds().await.unwrap();
    match engine.read_history(at(latest + 1), 10).await {
        Err(HistoryError::Ahead { latest: reported }) => assert_eq!(reported, latest),
        other => panic!("Ahead expected, got {other:?}"),
    }
    drop(engine);

    let engine = harness.open(clock.clone()).await.expect("reopen");
    assert_eq!(engine.history_id(), id, "the history survives a restart");
    let batches = read_all_history(engine.as_ref(), oldest, 100).await;
    assert_eq!(
        batches.last().map(|batch| batch.sequence),
        Some(receipt.sequence)
    );

    // Past the count retention: the oldest batches go.
    let ops = |round: usize| -> Vec<WriteOp> {
        (0..100)
            .map(|n| put(&format!("user:r{round}/{n}"), "v"))
            .collect()
    };
    let mut last = receipt.sequence;
    for round in 0..(SUITE_HISTORY_MAX_EVENTS as usize / 100 + 2) {
        last = engine.write(ops(round)).await.unwrap().sequence;
    }
    harness.trim_history(&engine).await.unwrap();
    let (floor, latest) = engine.history_bounds().await.unwrap();
    assert!(floor > receipt.sequence, "trimmed: {floor}");
    assert!(latest >= last);
    match engine.read_history(at(receipt.sequence), 10).await {
        Err(HistoryError::Compacted { oldest }) => assert_eq!(oldest, floor),
        other => panic!("Compacted expected, got {other:?}"),
    }
    let kept = read_all_history(engine.as_ref(), floor, 1000).await;
    assert_eq!(kept.last().map(|batch| batch.sequence), Some(last));
    assert!(kept.iter().all(|batch| batch.sequence > floor));

    // Past the age retention: everything older goes.
    clock.set_millis(T0 + SUITE_HISTORY_MAX_AGE_MILLIS + 1);
    let young = engine.write(vec![put("user:young", "v")]).await.unwrap();
    harness.trim_history(&engine).await.unwrap();
    let (floor, _) = engine.history_bounds().await.unwrap();
    assert!(
        floor >= last,
        "batches older than the age are gone: {floor}"
    );
    assert!(matches!(
        engine.read_history(at(last - 1), 10).await,
        Err(HistoryError::Compacted { .. })
    ));
    let kept = read_all_history(engine.as_ref(), floor, 10).await;
    let kept: Vec<u64> = kept.iter().map(|batch| batch.sequence).collect();
    assert_eq!(kept, vec![young.sequence]);
}

/// A scan's position is a cut of history under concurrent writes: every
/// write whose sequence is at most the position is in the page, none after
/// it is, and reading history after the position returns exactly the
/// writes the page misses.
pub async fn scan_position_is_a_cut_of_history<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let engine = Arc::clone(&engine);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut written: HashMap<String, u64> = HashMap::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) || n < 50 {
                let key = format!("user:cut/{n:06}");
                let receipt = engine.write(vec![put(&key, "v")]).await.unwrap();
                written.insert(key, receipt.sequence);
                n += 1;
                if n % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            written
        })
    };
    let mut pages = Vec::new();
    for _ in 0..10 {
        pages.push(scan(engine.as_ref(), "user:cut/", 100_000, false, 0).await);
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.await.unwrap();
    for page in pages {
        let listed: Vec<&str> = page.entries.iter().map(|(key, _)| key.as_str()).collect();
        for (key, sequence) in &written {
            assert_eq!(
                listed.contains(&key.as_str()),
                *sequence <= page.position,
                "{key} at {sequence}, page at {}",
                page.position
            );
        }
        let later = read_all_history(engine.as_ref(), page.position, 10_000).await;
        let missed = written
            .values()
            .filter(|sequence| **sequence > page.position)
            .count();
        assert_eq!(later.len(), missed);
    }
}

/// A history page's `latest` is a cut: a reader that follows the history
/// page by page, moving to `latest` whenever a page is empty (as a watcher
/// does once it has caught up), misses no write made meanwhile. An engine
/// whose `latest` comes from somewhere the page's read did not look (its
/// live feed, say, which may have published a commit the read began
/// before) skips that commit for good; this found it over etcd.
pub async fn history_followed_to_latest_misses_no_write<H: Harness>(mut harness: H) {
    const WRITES: usize = 400;
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let (_, start) = engine.history_bounds().await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let engine = Arc::clone(&engine);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut written = Vec::new();
            for n in 0..WRITES {
                let key = format!("user:follow/{n:06}");
                written.push(engine.write(vec![put(&key, "v")]).await.unwrap().sequence);
            }
            done.store(true, Ordering::SeqCst);
            written
        })
    };
    let id = engine.history_id();
    let mut cursor = start;
    let mut seen = Vec::new();
    let mut follow = |page: crate::engine::HistoryPage, cursor: &mut u64| {
        if page.batches.is_empty() {
            assert!(page.latest >= *cursor, "latest never goes back");
            *cursor = page.latest;
            return true;
        }
        for batch in page.batches {
            assert!(batch.sequence > *cursor, "in order, once");
            *cursor = batch.sequence;
            seen.push(batch.sequence);
        }
        false
    };
    // Read as fast as the writer writes, so that a commit often lands
    // while a read is under way; then once more after the last write.
    let mut writing = true;
    loop {
        let page = engine
            .read_history(
                HistoryPosition {
                    history_id: id,
                    sequence: cursor,
                },
                1000,
            )
            .await
            .expect("read history");
        let caught_up = follow(page, &mut cursor);
        if caught_up && !writing {
            break;
        }
        writing = !done.load(Ordering::SeqCst);
    }
    let written = writer.await.unwrap();
    let missed: Vec<&u64> = written
        .iter()
        .filter(|sequence| !seen.contains(sequence))
        .collect();
    assert!(
        missed.is_empty(),
        "{} of {} writes were skipped by a page's latest: {missed:?}",
        missed.len(),
        written.len()
    );
    assert_eq!(seen, written, "every write once, in commit order");
}
