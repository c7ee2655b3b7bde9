//! Expiry through the server when the system clock steps: a clock stepped
//! back never brings an expired key back (not even across a restart), and a
//! TTL written meanwhile counts from the time the store has already reached.

mod common;

use std::time::Duration;

use common::*;

fn put_with_ttl(key: &str, seconds: i64) -> tierkv::proto::v1::PutRequest {
    let mut request = put_text(key, "v");
    request.expiration = Some(tierkv::proto::v1::put_request::Expiration::Ttl(
        prost_types::Duration { seconds, nanos: 0 },
    ));
    request
}

/// Step the clock forward past an expiry, then back: the expired key stays
/// gone, a fresh key with a 5 s TTL lives its 5 s, and after a restart with
/// the clock still behind, both hold.
#[tokio::test]
async fn clock_stepped_back_brings_nothing_back() {
    let mut server = start().await;
    server
        .client
        .put(put_with_ttl("lease:old", 10))
        .await
        .unwrap();
    server.clock.advance(Duration::from_secs(20));
    assert!(!exists(&mut server.client, "lease:old").await);

    // An NTP correction (or a VM restore) steps the clock back 20 s.
    let now = tierkv::clock::Clock::now_millis(&*server.clock);
    server.clock.set_millis(now - 20_000);
    assert!(
        !exists(&mut server.client, "lease:old").await,
        "an expired key reappeared when the clock stepped back"
    );
    server
        .client
        .put(put_with_ttl("lease:new", 5))
        .await
        .unwrap();
    assert!(
        exists(&mut server.client, "lease:new").await,
        "a 5 s TTL written after the step must not be born expired"
    );

    let mut server = server.restart().await;
    assert!(!exists(&mut server.client, "lease:old").await);
    assert!(exists(&mut server.client, "lease:new").await);
    // The clock catches up with the store's time and passes the new TTL.
    server.clock.advance(Duration::from_secs(25));
    assert!(!exists(&mut server.client, "lease:new").await);
    server.stop().await;
}
