//! `KvService.Patch`: RFC 7396 merge patches applied atomically on the server,
//! through the real server and the generated client.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tierkv::api::convert::{json_from_proto, json_to_proto};
use tierkv::proto::v1 as pb;
use tonic::Code;

fn patch(key: &str, merge_patch: serde_json::Value) -> pb::PatchRequest {
    pb::PatchRequest {
        key: key.into(),
        merge_patch: Some(json_to_proto(merge_patch)),
        ..Default::default()
    }
}

fn put_json(key: &str, value: serde_json::Value) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: Some(pb::put_request::Value::Json(json_to_proto(value))),
        ..Default::default()
    }
}

async fn read_json(
    client: &mut KvServiceClient<tonic::transport::Channel>,
    key: &str,
) -> pb::GetResponse {
    client
        .get(pb::GetRequest {
            key: key.into(),
            r#type: pb::ValueType::Json as i32,
            fallback: None,
        })
        .await
        .unwrap()
        .into_inner()
}

fn json_of(response: &pb::GetResponse) -> serde_json::Value {
    match &response.value {
        Some(pb::get_response::Value::Json(value)) => json_from_proto(value.clone()).unwrap(),
        other => panic!("expected a JSON value, got {other:?}"),
    }
}

/// Members merge, null removes, nested objects merge recursively; metadata,
/// expiry and schema version are kept, and the response carries what Get
/// then returns.
#[tokio::test]
async fn merge_patch_keeps_the_rest_of_the_record() {
    let mut server = start().await;
    let client = &mut server.client;
    let mut put = put_json(
        "user:123:profile",
        json!({"name": "John", "age": 30, "prefs": {"theme": "dark", "lang": "en"}}),
    );
    put.metadata = Some(json_to_proto(json!({"owner": "team-a"})));
    put.expiration = Some(pb::put_request::Expiration::Ttl(prost_types::Duration {
        seconds: 600,
        nanos: 0,
    }));
    let written = client.put(put).await.unwrap().into_inner();

    let patched = client
        .patch(patch(
            "user:123:profile",
            json!({"age": 31, "name": null, "prefs": {"lang": "de"}, "city": "Berlin"}),
        ))
        .await
        .unwrap()
        .into_inner();
    let expected = json!({"age": 31, "prefs": {"theme": "dark", "lang": "de"}, "city": "Berlin"});
    assert_eq!(json_from_proto(patched.value.unwrap()).unwrap(), expected);
    assert!(patched.version > written.version);
    assert!(!patched.created);
    assert_eq!(
        patched.expire_time, written.expire_time,
        "ttl kept by default"
    );

    let read = read_json(client, "user:123:profile").await;
    assert_eq!(json_of(&read), expected);
    assert_eq!(read.version, patched.version);
    assert_eq!(read.expire_time, written.expire_time);
    assert_eq!(read.schema_version, 1);
    assert_eq!(
        json_from_proto(read.metadata.unwrap()).unwrap(),
        json!({"owner": "team-a"})
    );
}

/// A missing key is NOT_FOUND unless the patch may create it; created keys
/// never expire unless the patch replaces the TTL.
#[tokio::test]
async fn missing_keys_are_created_only_when_asked() {
    let mut server = start().await;
    let client = &mut server.client;
    let status = client
        .patch(patch("user:missing", json!({"a": 1})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(!exists(client, "user:missing").await);

    let mut create = patch("user:new", json!({"a": 1, "b": null}));
    create.create_if_missing = true;
    let created = client.patch(create.clone()).await.unwrap().into_inner();
    assert!(created.created);
    assert_eq!(created.expire_time, None);
    assert_eq!(
        json_from_proto(created.value.unwrap()).unwrap(),
        json!({"a": 1})
    );

    create.merge_patch = Some(json_to_proto(json!({"b": 2})));
    let again = client.patch(create).await.unwrap().into_inner();
    assert!(!again.created);
    assert_eq!(
        json_from_proto(again.value.unwrap()).unwrap(),
        json!({"a": 1, "b": 2})
    );

    // An explicit if_version on a missing key is the caller's conflict.
    let mut conditional = patch("user:absent", json!({"a": 1}));
    conditional.if_version = Some(1);
    conditional.create_if_missing = true;
    let status = client.patch(conditional).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
}

/// Values that are not JSON, or not objects under an object patch, are
/// FAILED_PRECONDITION and unchanged; a non-object patch replaces the value.
#[tokio::test]
async fn non_json_values_are_failed_precondition() {
    let mut server = start().await;
    let client = &mut server.client;
    client
        .put(put_text("user:text", "{\"a\":1}"))
        .await
        .unwrap();
    let status = client
        .patch(patch("user:text", json!({"b": 2})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("text"), "{}", status.message());

    client
        .put(put_json("user:list", json!([1, 2])))
        .await
        .unwrap();
    let status = client
        .patch(patch("user:list", json!({"b": 2})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        json_of(&read_json(client, "user:list").await),
        json!([1, 2])
    );

    let replaced = client
        .patch(patch("user:list", json!([3])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        json_from_proto(replaced.value.unwrap()).unwrap(),
        json!([3])
    );
}

/// if_version: a stale one is ABORTED (nothing written), the current one wins.
#[tokio::test]
async fn if_version_is_checked() {
    let mut server = start().await;
    let client = &mut server.client;
    let v1 = client
        .put(put_json("user:cas", json!({"n": 1})))
        .await
        .unwrap()
        .into_inner()
        .version;
    client
        .put(put_json("user:cas", json!({"n": 2})))
        .await
        .unwrap();
    let mut stale = patch("user:cas", json!({"m": 1}));
    stale.if_version = Some(v1);
    let status = client.patch(stale).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    let current = read_json(client, "user:cas").await;
    assert_eq!(json_of(&current), json!({"n": 2}));

    let mut fresh = patch("user:cas", json!({"m": 1}));
    fresh.if_version = Some(current.version);
    let patched = client.patch(fresh).await.unwrap().into_inner();
    assert_eq!(
        json_from_proto(patched.value.unwrap()).unwrap(),
        json!({"n": 2, "m": 1})
    );
}

/// TTL handling: REPLACE sets a new expiry (or none), KEEP with a TTL is a
/// contradiction (INVALID_ARGUMENT), an under-minimum TTL names the minimum.
#[tokio::test]
async fn ttl_modes() {
    let mut server = start().await;
    let client = &mut server.client;
    let mut put = put_json("user:ttl", json!({"a": 1}));
    put.expiration = Some(pb::put_request::Expiration::Ttl(prost_types::Duration {
        seconds: 600,
        nanos: 0,
    }));
    let written = client.put(put).await.unwrap().into_inner();

    let mut replace = patch("user:ttl", json!({"b": 1}));
    replace.ttl_mode = pb::TtlMode::Replace as i32;
    replace.expiration = Some(pb::patch_request::Expiration::Ttl(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    }));
    let patched = client.patch(replace.clone()).await.unwrap().into_inner();
    let at = patched.expire_time.unwrap();
    assert!(at.seconds < written.expire_time.unwrap().seconds - 500);

    replace.expiration = Some(pb::patch_request::Expiration::Ttl(prost_types::Duration {
        seconds: 0,
        nanos: 5,
    }));
    let status = client.patch(replace.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("the minimum is 1s"),
        "{}",
        status.message()
    );

    let mut keep_with_ttl = replace.clone();
    keep_with_ttl.ttl_mode = pb::TtlMode::Keep as i32;
    let status = client.patch(keep_with_ttl).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    replace.expiration = None;
    let forever = client.patch(replace).await.unwrap().into_inner();
    assert_eq!(forever.expire_time, None);

    // The kept expiry still expires the record.
    let mut short = put_json("user:short", json!({"a": 1}));
    short.expiration = Some(pb::put_request::Expiration::Ttl(prost_types::Duration {
        seconds: 10,
        nanos: 0,
    }));
    client.put(short).await.unwrap();
    client
        .patch(patch("user:short", json!({"b": 2})))
        .await
        .unwrap();
    server.clock.advance(Duration::from_secs(11));
    assert!(!exists(&mut server.client, "user:short").await);
    // An expired key is missing to Patch too.
    let status = server
        .client
        .patch(patch("user:short", json!({"c": 3})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

/// Patch bodies have Put's limits (INVALID_ARGUMENT naming them), and
/// another service's namespace is PERMISSION_DENIED.
#[tokio::test]
async fn limits_and_ownership() {
    let mut server = start().await;
    let client = &mut server.client;
    client.put(put_json("user:deep", json!({}))).await.unwrap();
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!({ "d": deep });
    }
    let status = client.patch(patch("user:deep", deep)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("32"), "{}", status.message());

    let missing = pb::PatchRequest {
        key: "user:deep".into(),
        ..Default::default()
    };
    let status = client.patch(missing).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("merge_patch"),
        "{}",
        status.message()
    );

    let status = client
        .patch(patch("session:s/forged", json!({"a": 1})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// 100 clients patch 100 different fields of one record at once: every
/// patch succeeds and every field is there at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_of_different_fields_all_win() {
    let mut server = start().await;
    server
        .client
        .put(put_json("user:123:profile", json!({"name": "John"})))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let mut client = server.client.clone();
        tasks.spawn(async move {
            client
                .patch(patch("user:123:profile", json!({ format!("field{i}"): i })))
                .await
                .map(|response| response.into_inner().version)
        });
    }
    let mut versions = Vec::new();
    while let Some(done) = tasks.join_next().await {
        versions.push(done.unwrap().expect("every patch wins"));
    }
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 100, "each patch committed its own version");

    let read = read_json(&mut server.client, "user:123:profile").await;
    let value = json_of(&read);
    assert_eq!(value["name"], json!("John"));
    for i in 0..100 {
        assert_eq!(value[format!("field{i}")], json!(i), "field{i} in {value}");
    }
    assert_eq!(read.version, *versions.last().unwrap());
}

/// A record of an older schema is migrated before the patch applies: the
/// stored result has the migration's fields, the patch's, and the target
/// schema version.
#[tokio::test]
async fn old_records_are_migrated_before_patching() {
    let mut server = start_with(|config| {
        config.migrations = vec![tierkv::migrate::MigrationStep {
            prefix: "user:".into(),
            from: 1,
            to: 2,
            patch: r#"[{"op": "copy", "from": "/name", "path": "/userName"}]"#.into(),
        }]
    })
    .await;
    let client = &mut server.client;
    let mut v1 = put_json("user:7", json!({"name": "John"}));
    v1.schema_version = 1;
    client.put(v1).await.unwrap();
    let patched = client
        .patch(patch("user:7", json!({"plan": "pro"})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        json_from_proto(patched.value.unwrap()).unwrap(),
        json!({"name": "John", "userName": "John", "plan": "pro"})
    );
    let read = read_json(client, "user:7").await;
    assert_eq!(read.schema_version, 2);
    assert_eq!(
        json_of(&read),
        json!({"name": "John", "userName": "John", "plan": "pro"})
    );
}

/// The patch's size estimate (computed in the domain without a protobuf
/// library) is the exact size prost encodes, multi-byte lengths included.
#[test]
fn proto_length_estimate_is_exact() {
    use prost::Message as _;
    let value = json!({
        "a": [1, 2.5, null, true, "text", {"nested": vec!["x"; 200]}],
        "long": "y".repeat(300),
        "longer": "z".repeat(20_000),
        "": {}
    });
    let proto = json_to_proto(value.clone());
    assert_eq!(
        tierkv::kv::patch::json_proto_len(&value),
        proto.encoded_len()
    );
}
