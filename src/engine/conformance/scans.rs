//! Cases of ordered prefix scans.

use super::*;
use crate::clock::ManualClock;

/// Scans merge namespaces in byte order, respect prefix bounds and resume
/// strictly after a key.
pub async fn scans_merge_namespaces_in_byte_order<H: Harness>(mut harness: H) {
    let engine = harness.open(ManualClock::new(T0)).await.expect("open");
    let all = [
        "a",
        "cache:x",
        "u",
        "user:1",
        "user:2",
        "user:admin:1",
        "user:admin:2",
        "user;",
        "user",
        "v",
        "\u{00e9}",
        "!",
        ",",
    ];
    engine
        .write(all.iter().map(|key| put(key, "v")).collect())
        .await
        .unwrap();
    let mut expected: Vec<&str> = all.to_vec();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(keys(engine.as_ref(), "", None, 100).await, expected);
    assert_eq!(
        keys(engine.as_ref(), "u", None, 100).await,
        vec![
            "u",
            "user",
            "user:1",
            "user:2",
            "user:admin:1",
            "user:admin:2",
            "user;"
        ]
    );
    assert_eq!(
        keys(engine.as_ref(), "user:", None, 100).await,
        vec!["user:1", "user:2", "user:admin:1", "user:admin:2"]
    );
    assert_eq!(
        keys(engine.as_ref(), "user:a", None, 100).await,
        vec!["user:admin:1", "user:admin:2"]
    );
    assert_eq!(
        keys(engine.as_ref(), "user:", Some("user:2"), 2).await,
        vec!["user:admin:1", "user:admin:2"]
    );
    assert_eq!(
        keys(engine.as_ref(), "", Some("user;"), 100).await,
        vec!["v", "\u{00e9}"]
    );
    assert_eq!(keys(engine.as_ref(), "", None, 2).await, vec!["!", ","]);
    assert!(keys(engine.as_ref(), "zzz", None, 10).await.is_empty());
    let with_values = engine
        .scan(ScanRequest {
            prefix: "user:1".into(),
            start_after: None,
            limit: 1,
            include_values: true,
            max_examined: 0,
        })
        .await
        .unwrap()
        .entries;
    assert_eq!(with_values[0].1.value, b"v");
}

/// A scan examines at most `max_examined` stored records: a run of expired
/// ones ends it early with `resume_after`, and resuming finds what follows.
pub async fn scans_bound_the_records_they_examine<H: Harness>(mut harness: H) {
    let clock = ManualClock::new(T0);
    let engine = harness.open(clock.clone()).await.expect("open");
    let mut ops: Vec<WriteOp> = (0..10)
        .map(|i| {
            put_with(&format!("user:{i:02}"), "dead", |op| {
                op.expire_at_millis = Some(T0 + 1_000)
            })
        })
        .collect();
    ops.push(put("user:99", "live"));
    engine.write(ops).await.unwrap();
    clock.advance(Duration::from_secs(2));

    let mut after: Option<String> = None;
    let mut found = Vec::new();
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls <= 10, "the scan does not make progress");
        let page = engine
            .scan(ScanRequest {
                prefix: "user:".into(),
                start_after: after.clone(),
                limit: 5,
                include_values: false,
                max_examined: 4,
            })
            .await
            .unwrap();
        found.extend(page.entries.into_iter().map(|(key, _)| key));
        match page.resume_after {
            Some(key) => {
                assert!(after.as_ref().is_none_or(|after| key > *after), "progress");
                after = Some(key);
            }
            None => break,
        }
    }
    assert_eq!(found, vec!["user:99"]);
    assert_eq!(calls, 3, "11 records examined 4 at a time");
    let unbounded = scan(engine.as_ref(), "user:", 5, false, 0).await;
    assert_eq!(unbounded.entries.len(), 1);
    assert_eq!(unbounded.resume_after, None);
}
