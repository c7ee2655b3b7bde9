//! Listing through the real server: the behaviours of Workers KV's local test
//! suite (byte order, case, special characters, paging, inserts while paging,
//! expiry) plus page-token integrity and namespace merging.

mod common;

use std::time::Duration;

use common::*;
use tierkv::proto::v1 as pb;
use tonic::Code;

async fn page(
    client: &mut KvServiceClient<tonic::transport::Channel>,
    prefix: &str,
    page_size: i32,
    page_token: &str,
) -> pb::ListResponse {
    client
        .list(pb::ListRequest {
            prefix: prefix.to_string(),
            page_size,
            page_token: page_token.to_string(),
        })
        .await
        .expect("list")
        .into_inner()
}

fn names(response: &pb::ListResponse) -> Vec<&str> {
    response.keys.iter().map(|key| key.name.as_str()).collect()
}

/// Keys sort by UTF-8 bytes: `!` before `,`, upper case before lower case,
/// multi-byte characters last.
#[tokio::test]
async fn sorts_by_utf8_bytes() {
    let mut server = start().await;
    put_all(
        &mut server.client,
        &["key,", "key!", "Key", "kéy", "key", "KEY", "k\u{10000}y"],
    )
    .await;
    assert_eq!(
        list_all(&mut server.client, "", 100).await,
        vec!["KEY", "Key", "key", "key!", "key,", "kéy", "k\u{10000}y"]
    );
    server.stop().await;
}

/// Prefixes are case-sensitive and literal: `\`, `_` and `%` match only themselves.
#[tokio::test]
async fn prefixes_are_case_sensitive_and_literal() {
    let mut server = start().await;
    put_all(
        &mut server.client,
        &[
            "dir\\a",
            "dir\\b",
            "dirXa",
            "under_score",
            "underXscore",
            "100%",
            "1000",
            "Upper",
            "upper",
        ],
    )
    .await;
    assert_eq!(
        list_all(&mut server.client, "dir\\", 10).await,
        vec!["dir\\a", "dir\\b"]
    );
    assert_eq!(
        list_all(&mut server.client, "under_", 10).await,
        vec!["under_score"]
    );
    assert_eq!(list_all(&mut server.client, "100%", 10).await, vec!["100%"]);
    assert_eq!(list_all(&mut server.client, "Up", 10).await, vec!["Upper"]);
    assert_eq!(list_all(&mut server.client, "up", 10).await, vec!["upper"]);
    assert!(list_all(&mut server.client, "UP", 10).await.is_empty());
    server.stop().await;
}

/// Paging with a page size that changes between calls visits every key once,
/// in order, and only the last page has an empty token.
#[tokio::test]
async fn pages_with_variable_page_size() {
    let mut server = start().await;
    let keys: Vec<String> = (0..23).map(|i| format!("user:{i:03}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    put_all(&mut server.client, &key_refs).await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut sizes = [1, 5, 2, 10, 3, 7].into_iter().cycle();
    loop {
        let size = sizes.next().unwrap();
        let response = page(&mut server.client, "user:", size, &token).await;
        assert!(response.keys.len() <= size as usize);
        assert!(
            !response.keys.is_empty(),
            "a page is empty only when the listing is complete"
        );
        seen.extend(names(&response).into_iter().map(String::from));
        if response.next_page_token.is_empty() {
            break;
        }
        assert_eq!(
            response.keys.len(),
            size as usize,
            "only the last page may be short"
        );
        token = response.next_page_token;
    }
    assert_eq!(seen, keys);

    let exact = page(&mut server.client, "user:", 23, "").await;
    assert_eq!(exact.keys.len(), 23);
    assert!(
        exact.next_page_token.is_empty(),
        "no token when the page holds the rest"
    );
    server.stop().await;
}

/// page_size 0 means 1000.
#[tokio::test]
async fn default_page_size_is_1000() {
    let mut server = start().await;
    let keys: Vec<String> = (0..1001).map(|i| format!("k{i:04}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    put_all(&mut server.client, &key_refs).await;
    let first = page(&mut server.client, "", 0, "").await;
    assert_eq!(first.keys.len(), 1000);
    assert!(!first.next_page_token.is_empty());
    let second = page(&mut server.client, "", 0, &first.next_page_token).await;
    assert_eq!(names(&second), vec!["k1000"]);
    assert!(second.next_page_token.is_empty());
    server.stop().await;
}

/// Keys written behind the cursor while paging do not appear; keys ahead of it do.
#[tokio::test]
async fn inserts_while_paging() {
    let mut server = start().await;
    put_all(&mut server.client, &["b", "d", "f"]).await;
    let first = page(&mut server.client, "", 2, "").await;
    assert_eq!(names(&first), vec!["b", "d"]);
    put_all(&mut server.client, &["a", "c", "e", "g"]).await;
    let rest = page(&mut server.client, "", 10, &first.next_page_token).await;
    assert_eq!(names(&rest), vec!["e", "f", "g"]);
    server.stop().await;
}

/// Expired keys never appear, even when a whole page's worth of them sits
/// between live keys.
#[tokio::test]
async fn expired_keys_are_hidden() {
    let mut server = start().await;
    put_all(&mut server.client, &["a", "z"]).await;
    let mutations = (0..50)
        .map(|i| {
            let mut put = put_text(&format!("m{i:02}"), "v");
            put.expiration = Some(pb::put_request::Expiration::Ttl(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }));
            pb::Mutation {
                operation: Some(pb::mutation::Operation::Put(put)),
            }
        })
        .collect();
    server
        .client
        .batch_write(pb::BatchWriteRequest { mutations })
        .await
        .unwrap();
    assert_eq!(list_all(&mut server.client, "", 1000).await.len(), 52);
    server.clock.advance(Duration::from_secs(60));
    let first = page(&mut server.client, "", 1, "").await;
    assert_eq!(names(&first), vec!["a"]);
    let second = page(&mut server.client, "", 1, &first.next_page_token).await;
    assert_eq!(names(&second), vec!["z"]);
    assert!(second.next_page_token.is_empty());
    server.stop().await;
}

/// One call examines at most MAX_LIST_EXAMINED stored records: past a longer
/// run of expired keys it answers a short (here empty) page with a token
/// that resumes after the last record it examined, and paging on reaches the
/// live key behind them.
#[tokio::test]
async fn a_call_examines_a_bounded_number_of_expired_keys() {
    use tierkv::kv::limits::{MAX_BATCH_WRITE_MUTATIONS, MAX_LIST_EXAMINED};
    let mut server = start().await;
    let dead = MAX_LIST_EXAMINED + 500;
    let names_of_dead: Vec<String> = (0..dead).map(|i| format!("d{i:06}")).collect();
    for chunk in names_of_dead.chunks(MAX_BATCH_WRITE_MUTATIONS) {
        let mutations = chunk
            .iter()
            .map(|name| {
                let mut put = put_text(name, "v");
                put.expiration = Some(pb::put_request::Expiration::Ttl(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }));
                pb::Mutation {
                    operation: Some(pb::mutation::Operation::Put(put)),
                }
            })
            .collect();
        server
            .client
            .batch_write(pb::BatchWriteRequest { mutations })
            .await
            .unwrap();
    }
    put_all(&mut server.client, &["zlive"]).await;
    server.clock.advance(Duration::from_secs(60));

    let first = page(&mut server.client, "", 10, "").await;
    assert!(first.keys.is_empty(), "{:?}", names(&first));
    assert!(
        !first.next_page_token.is_empty(),
        "a partial page says there is more"
    );
    let second = page(&mut server.client, "", 10, &first.next_page_token).await;
    assert_eq!(names(&second), vec!["zlive"]);
    assert!(second.next_page_token.is_empty());
    server.stop().await;
}

/// Listed keys carry expire_time, metadata and version.
#[tokio::test]
async fn listed_keys_carry_their_attributes() {
    let mut server = start().await;
    let mut put = put_text("feature:flags:beta", "on");
    put.metadata = Some(tierkv::api::convert::json_to_proto(
        serde_json::json!({"owner": "web"}),
    ));
    put.expiration = Some(pb::put_request::Expiration::Ttl(prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    }));
    let written = server.client.put(put).await.unwrap().into_inner();
    let response = page(&mut server.client, "feature:", 10, "").await;
    let key = &response.keys[0];
    assert_eq!(key.name, "feature:flags:beta");
    assert_eq!(key.version, written.version);
    assert_eq!(key.expire_time, written.expire_time);
    assert_eq!(
        key.metadata,
        Some(tierkv::api::convert::json_to_proto(
            serde_json::json!({"owner": "web"})
        ))
    );
    server.stop().await;
}

/// A listing spanning namespaces merges them in key order; one inside a
/// namespace sees only its keys.
#[tokio::test]
async fn merges_namespaces() {
    let mut server = start_with(|config| {
        config.namespaces = vec![
            "user:".into(),
            "user:admin:".into(),
            "cache:".into(),
            "session:".into(),
        ];
    })
    .await;
    put_all(
        &mut server.client,
        &[
            "cache:api:users",
            "order:abc",
            "user:123:profile",
            "user:admin:1",
            "user;",
            "u",
            "zz",
        ],
    )
    .await;
    assert_eq!(
        list_all(&mut server.client, "", 2).await,
        vec![
            "cache:api:users",
            "order:abc",
            "u",
            "user:123:profile",
            "user:admin:1",
            "user;",
            "zz"
        ]
    );
    assert_eq!(
        list_all(&mut server.client, "u", 1).await,
        vec!["u", "user:123:profile", "user:admin:1", "user;"]
    );
    assert_eq!(
        list_all(&mut server.client, "user:", 1).await,
        vec!["user:123:profile", "user:admin:1"]
    );
    server.stop().await;
}

/// Malformed, tampered and foreign page tokens are INVALID_ARGUMENT.
#[tokio::test]
async fn rejects_bad_page_tokens() {
    let mut server = start().await;
    put_all(&mut server.client, &["user:1", "user:2", "user:3"]).await;
    let first = page(&mut server.client, "user:", 1, "").await;
    let token = first.next_page_token.clone();

    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (prefix, bad) in [
        ("user:", "not a token!"),
        ("user:", tampered.as_str()),
        ("user", token.as_str()),
        ("", token.as_str()),
    ] {
        let error = server
            .client
            .list(pb::ListRequest {
                prefix: prefix.into(),
                page_size: 1,
                page_token: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{prefix:?} {bad:?}");
        assert!(error.message().contains("page_token"));
    }
    let second = page(&mut server.client, "user:", 1, &token).await;
    assert_eq!(names(&second), vec!["user:2"]);
    server.stop().await;
}

/// Page tokens survive a server restart (the signing secret is persisted).
#[tokio::test]
async fn page_tokens_survive_restart() {
    let mut server = start().await;
    put_all(&mut server.client, &["a", "b", "c"]).await;
    let first = page(&mut server.client, "", 1, "").await;
    let mut server = server.restart().await;
    let rest = page(&mut server.client, "", 10, &first.next_page_token).await;
    assert_eq!(names(&rest), vec!["b", "c"]);
    server.stop().await;
}
