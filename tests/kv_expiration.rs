//! Every ttl and expire_time error names the 1-second minimum and the actual
//! value exactly, whatever the input; values at the minimum are accepted.

mod common;

use common::*;
use tierkv::clock::Clock;
use tierkv::proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

fn with_ttl(seconds: i64, nanos: i32) -> pb::PutRequest {
    let mut put = put_text("k", "v");
    put.expiration = Some(pb::put_request::Expiration::Ttl(prost_types::Duration {
        seconds,
        nanos,
    }));
    put
}

fn with_expire_time(seconds: i64, nanos: i32) -> pb::PutRequest {
    let mut put = put_text("k", "v");
    put.expiration = Some(pb::put_request::Expiration::ExpireTime(
        prost_types::Timestamp { seconds, nanos },
    ));
    put
}

/// Asserts INVALID_ARGUMENT with exactly `description` for `field`.
fn assert_violation(status: tonic::Status, field: &str, description: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let violations = status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, field);
    assert_eq!(violations[0].description, description);
    assert!(status.message().contains(description), "{status:?}");
}

/// ttl: under the minimum, zero, negative (seconds, nanos or both), malformed
/// and too far, each with its exact value; exactly 1s is accepted.
#[tokio::test]
async fn ttl_errors_name_the_minimum_and_the_exact_value() {
    let mut server = start().await;
    let client = &mut server.client;
    let cases = [
        ((0, 999_999_999), "ttl is 0.999999999s; the minimum is 1s"),
        ((0, 500_000_000), "ttl is 0.5s; the minimum is 1s"),
        ((0, 1), "ttl is 0.000000001s; the minimum is 1s"),
        ((0, 0), "ttl is 0s; the minimum is 1s"),
        ((-5, 0), "ttl is -5s; the minimum is 1s"),
        ((0, -1), "ttl is -0.000000001s; the minimum is 1s"),
        ((-1, -999_999_999), "ttl is -1.999999999s; the minimum is 1s"),
        (
            (i64::MIN, 0),
            "ttl is -9223372036854775808s; the minimum is 1s",
        ),
        (
            (1, -1),
            "ttl has seconds 1 and nanos -1; a google.protobuf.Duration needs both of the same sign",
        ),
        (
            (0, 1_000_000_000),
            "ttl has nanos 1000000000; it must be between -999,999,999 and 999,999,999",
        ),
        (
            (i64::MAX, 0),
            "ttl is 9223372036854775807s; it reaches past 9999-12-31T23:59:59.999Z, the latest expire_time",
        ),
    ];
    for ((seconds, nanos), description) in cases {
        let status = client.put(with_ttl(seconds, nanos)).await.unwrap_err();
        assert_violation(status, "ttl", description);
    }
    assert!(!exists(client, "k").await, "nothing was written");

    let at_minimum = client.put(with_ttl(1, 0)).await.expect("1s is accepted");
    let expire_time = at_minimum.into_inner().expire_time.unwrap();
    let now = server.clock.now_millis();
    assert_eq!(
        expire_time.seconds * 1000 + i64::from(expire_time.nanos / 1_000_000),
        now as i64 + 1000
    );
    server
        .client
        .put(with_ttl(1, 1))
        .await
        .expect("a ttl of 1.000000001s is accepted");
    server.stop().await;
}

/// expire_time: in the past, now, or under a second ahead, each with how far
/// from now it is, to the nanosecond; exactly 1s ahead is accepted.
#[tokio::test]
async fn expire_time_errors_name_the_minimum_and_the_exact_value() {
    let mut server = start().await;
    let now = server.clock.now_millis() as i64;
    let (now_seconds, now_nanos) = (now / 1000, (now % 1000) as i32 * 1_000_000);
    // `now` plus `nanos`, as a valid Timestamp.
    let at = |delta_nanos: i64| {
        let total = i128::from(now_seconds) * 1_000_000_000
            + i128::from(now_nanos)
            + i128::from(delta_nanos);
        (
            total.div_euclid(1_000_000_000) as i64,
            total.rem_euclid(1_000_000_000) as i32,
        )
    };
    let cases = [
        (
            999_999_999,
            "expire_time is 0.999999999s from now; it must be at least 1s in the future",
        ),
        (
            1,
            "expire_time is 0.000000001s from now; it must be at least 1s in the future",
        ),
        (
            0,
            "expire_time is 0s from now; it must be at least 1s in the future",
        ),
        (
            -1_500_000_000,
            "expire_time is 1.5s in the past; it must be at least 1s in the future",
        ),
        (
            -1_000_000_000_000,
            "expire_time is 1000s in the past; it must be at least 1s in the future",
        ),
    ];
    let client = &mut server.client;
    for (delta, description) in cases {
        let (seconds, nanos) = at(delta);
        let status = client
            .put(with_expire_time(seconds, nanos))
            .await
            .unwrap_err();
        assert_violation(status, "expire_time", description);
    }
    let status = client
        .put(with_expire_time(now_seconds + 10, -1))
        .await
        .unwrap_err();
    assert_violation(
        status,
        "expire_time",
        "expire_time has nanos -1; it must be between 0 and 999,999,999",
    );
    let status = client
        .put(with_expire_time(253_402_300_800, 0))
        .await
        .unwrap_err();
    assert_violation(
        status,
        "expire_time",
        "expire_time is 253402300800s after the Unix epoch; the latest is 9999-12-31T23:59:59.999Z",
    );
    assert!(!exists(client, "k").await, "nothing was written");

    let (seconds, nanos) = at(1_000_000_000);
    let response = client
        .put(with_expire_time(seconds, nanos))
        .await
        .expect("exactly 1s ahead is accepted")
        .into_inner();
    assert_eq!(
        response.expire_time,
        Some(prost_types::Timestamp { seconds, nanos })
    );
    server.stop().await;
}

/// In a batch, each mutation's ttl error names its own field and value.
#[tokio::test]
async fn batch_ttl_errors_name_their_mutation() {
    let mut server = start().await;
    let mutations = [with_ttl(0, 999_999_999), with_ttl(-2, -250_000_000)]
        .into_iter()
        .map(|put| pb::Mutation {
            operation: Some(pb::mutation::Operation::Put(put)),
        })
        .collect();
    let status = server
        .client
        .batch_write(pb::BatchWriteRequest { mutations })
        .await
        .unwrap_err();
    let violations = status.get_details_bad_request().unwrap().field_violations;
    let found: Vec<(&str, &str)> = violations
        .iter()
        .map(|violation| (violation.field.as_str(), violation.description.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (
                "mutations[0].put.ttl",
                "ttl is 0.999999999s; the minimum is 1s"
            ),
            ("mutations[1].put.ttl", "ttl is -2.25s; the minimum is 1s"),
        ]
    );
    server.stop().await;
}
