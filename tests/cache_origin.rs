//! The origin client against a real local origin (tests/common/origin.rs):
//! HTTP/1.1, HTTPS with a test CA (h2 and HTTP/1.1 by ALPN), timeouts,
//! refused connections, statuses, revalidation, body limits, redirects, and
//! the key-escaping cases that must never reach another path or host.

mod common;

use std::time::{Duration, Instant};

use common::origin::{Reply, TestOrigin};
use tierkv::cache::config::{CacheConfig, OriginConfig};
use tierkv::cache::origin::{
    encode_segment, Freshness, OriginClient, OriginError, OriginResponse, Validators, USER_AGENT,
};

const BUDGET: Duration = Duration::from_secs(10);

fn client_for(origins: Vec<OriginConfig>) -> OriginClient {
    OriginClient::new(&CacheConfig {
        origins,
        ..CacheConfig::default()
    })
    .expect("client")
}

fn client(origin: &TestOrigin) -> OriginClient {
    client_for(vec![origin.origin_config("cache:api:", "/items/{key}")])
}

fn fresh(response: OriginResponse) -> (bytes::Bytes, Option<String>, Validators, Freshness, u16) {
    match response {
        OriginResponse::Fresh {
            body,
            content_type,
            validators,
            freshness,
            status,
        } => (body, content_type, validators, freshness, status),
        other => panic!("expected a fresh response, got {other:?}"),
    }
}

/// A plain HTTP/1.1 fetch returns body, type, validators and freshness, and
/// the origin sees one GET with our User-Agent and the configured headers.
#[tokio::test]
async fn http1_fetch_returns_body_and_metadata() {
    let origin = TestOrigin::start().await;
    origin.respond(
        "/items/users",
        Reply::ok(r#"{"users":[]}"#)
            .content_type("application/json")
            .etag("\"v1\"")
            .last_modified("Wed, 21 Oct 2015 07:28:00 GMT")
            .cache_control("public, max-age=60"),
    );
    let mut config = origin.origin_config("cache:api:", "/items/{key}");
    config.headers.insert("X-Api-Key".into(), "k-123".into());
    let client = client_for(vec![config]);

    let (body, content_type, validators, freshness, status) =
        fresh(client.fetch("cache:api:users", None, BUDGET).await.unwrap());
    assert_eq!(&body[..], br#"{"users":[]}"#);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
    assert_eq!(
        validators.last_modified.as_deref(),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
    assert_eq!(freshness.max_age, Some(Duration::from_secs(60)));
    assert!(freshness.store);
    assert_eq!(status, 200);

    let requests = origin.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "GET");
    assert_eq!(request.target, "/items/users");
    assert_eq!(request.version, http::Version::HTTP_11);
    assert_eq!(request.header("user-agent"), Some(USER_AGENT));
    assert!(USER_AGENT.starts_with("tierkv/"));
    assert_eq!(request.header("x-api-key"), Some("k-123"));
    assert_eq!(request.header("if-none-match"), None);
}

/// Sequential fetches reuse one pooled connection.
#[tokio::test]
async fn connections_are_pooled() {
    let origin = TestOrigin::start().await;
    origin.respond_with(|_| Reply::ok("x"));
    let client = client(&origin);
    for index in 0..5 {
        client
            .fetch(&format!("cache:api:{index}"), None, BUDGET)
            .await
            .unwrap();
    }
    assert_eq!(origin.count(), 5);
    assert_eq!(origin.connections(), 1);
}

/// HTTPS with the test CA negotiates h2 by ALPN, over one connection.
#[tokio::test]
async fn https_with_test_ca_speaks_h2() {
    let origin = TestOrigin::start_tls().await;
    origin.respond("/items/a", Reply::ok("secure"));
    let client = client(&origin);
    for _ in 0..3 {
        let (body, ..) = fresh(client.fetch("cache:api:a", None, BUDGET).await.unwrap());
        assert_eq!(&body[..], b"secure");
    }
    let requests = origin.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests
        .iter()
        .all(|request| request.version == http::Version::HTTP_2));
    assert_eq!(requests[0].target, "/items/a");
    assert_eq!(requests[0].header("user-agent"), Some(USER_AGENT));
    assert_eq!(origin.connections(), 1);
}

/// An HTTPS origin offering only HTTP/1.1 is spoken to in HTTP/1.1.
#[tokio::test]
async fn https_http1_only_origin() {
    let origin = TestOrigin::start_tls_http1().await;
    origin.respond("/items/a", Reply::ok("one"));
    let (body, ..) = fresh(
        client(&origin)
            .fetch("cache:api:a", None, BUDGET)
            .await
            .unwrap(),
    );
    assert_eq!(&body[..], b"one");
    assert_eq!(origin.requests()[0].version, http::Version::HTTP_11);
}

/// Without the test CA the certificate is not trusted: a connection error,
/// and no request reaches the origin.
#[tokio::test]
async fn https_untrusted_certificate_is_a_connect_error() {
    let origin = TestOrigin::start_tls().await;
    origin.respond("/items/a", Reply::ok("secure"));
    let config = OriginConfig::new("cache:api:", origin.url("/items/{key}"));
    let error = client_for(vec![config])
        .fetch("cache:api:a", None, BUDGET)
        .await
        .unwrap_err();
    assert!(matches!(error, OriginError::Connect(_)), "{error:?}");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
    assert_eq!(origin.count(), 0);
}

/// A slow origin: the caller's budget and the origin's timeout both cut the
/// request short, reported as a timeout naming the limit.
#[tokio::test]
async fn slow_origin_times_out() {
    let origin = TestOrigin::start().await;
    origin.respond(
        "/items/slow",
        Reply::ok("late").delay(Duration::from_secs(30)),
    );
    let client = client(&origin);
    let started = Instant::now();
    let error = client
        .fetch("cache:api:slow", None, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(error, OriginError::Timeout { after } if after == Duration::from_millis(200)),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let mut config = origin.origin_config("cache:api:", "/items/{key}");
    config.timeout = Duration::from_millis(150);
    let error = client_for(vec![config])
        .fetch("cache:api:slow", None, BUDGET)
        .await
        .unwrap_err();
    assert!(
        matches!(error, OriginError::Timeout { after } if after == Duration::from_millis(150)),
        "{error:?}"
    );
}

/// The budget covers the body too: headers on time, body late, is a timeout.
#[tokio::test]
async fn slow_body_times_out() {
    let origin = TestOrigin::start().await;
    origin.respond(
        "/items/trickle",
        Reply::ok(vec![b'x'; 1000]).body_delay(Duration::from_secs(30)),
    );
    let error = client(&origin)
        .fetch("cache:api:trickle", None, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(error, OriginError::Timeout { .. }), "{error:?}");
    assert_eq!(origin.count(), 1);
}

/// Origin down: connection refused; back up on the same port: served again.
#[tokio::test]
async fn origin_down_then_back() {
    let origin = TestOrigin::start().await;
    origin.respond("/items/a", Reply::ok("up"));
    let client = client(&origin);
    fresh(client.fetch("cache:api:a", None, BUDGET).await.unwrap());

    origin.stop().await;
    let error = client.fetch("cache:api:a", None, BUDGET).await.unwrap_err();
    assert!(matches!(error, OriginError::Connect(_)), "{error:?}");
    assert!(error.is_retryable());
    // The message names no key nor URL.
    assert!(!error.to_string().contains("items"), "{error}");

    origin.restart().await;
    let (body, ..) = fresh(client.fetch("cache:api:a", None, BUDGET).await.unwrap());
    assert_eq!(&body[..], b"up");
    assert_eq!(origin.count(), 2);
}

/// 5xx and other non-answers are status errors; 203 is accepted.
#[tokio::test]
async fn statuses() {
    let origin = TestOrigin::start().await;
    let client = client(&origin);
    for status in [500u16, 502, 503, 504, 400, 401, 403, 429, 201, 204, 206] {
        origin.respond(
            &format!("/items/s{status}"),
            Reply::status(status).cache_control("max-age=60"),
        );
        let error = client
            .fetch(&format!("cache:api:s{status}"), None, BUDGET)
            .await
            .unwrap_err();
        assert!(
            matches!(error, OriginError::Status(code) if code == status),
            "{status}: {error:?}"
        );
    }
    origin.respond("/items/s203", Reply::ok("proxied").status_code(203));
    let (body, .., status) = fresh(client.fetch("cache:api:s203", None, BUDGET).await.unwrap());
    assert_eq!((&body[..], status), (&b"proxied"[..], 203));
}

/// 404 and 410 are misses, with the origin's Cache-Control.
#[tokio::test]
async fn not_found_and_gone_are_missing() {
    let origin = TestOrigin::start().await;
    origin.respond("/items/gone", Reply::status(410).cache_control("max-age=5"));
    origin.respond(
        "/items/nostore",
        Reply::status(404).cache_control("no-store"),
    );
    let client = client(&origin);
    match client
        .fetch("cache:api:absent", None, BUDGET)
        .await
        .unwrap()
    {
        OriginResponse::Missing { status, freshness } => {
            assert_eq!(status, 404);
            assert_eq!(freshness, Freshness::unrestricted());
        }
        other => panic!("{other:?}"),
    }
    match client.fetch("cache:api:gone", None, BUDGET).await.unwrap() {
        OriginResponse::Missing { status, freshness } => {
            assert_eq!(status, 410);
            assert_eq!(freshness.max_age, Some(Duration::from_secs(5)));
        }
        other => panic!("{other:?}"),
    }
    match client
        .fetch("cache:api:nostore", None, BUDGET)
        .await
        .unwrap()
    {
        OriginResponse::Missing { freshness, .. } => assert!(!freshness.store),
        other => panic!("{other:?}"),
    }
}

/// Validators are sent back; a match is a 304 with no body, a mismatch a
/// full response; a 304 nobody asked for is an error.
#[tokio::test]
async fn conditional_requests() {
    let origin = TestOrigin::start().await;
    let modified = "Wed, 21 Oct 2015 07:28:00 GMT";
    origin.respond(
        "/items/doc",
        Reply::ok("body")
            .etag("\"v2\"")
            .last_modified(modified)
            .cache_control("max-age=30")
            .conditional(),
    );
    let client = client(&origin);
    let by_etag = Validators {
        etag: Some("\"v2\"".into()),
        last_modified: None,
    };
    match client
        .fetch("cache:api:doc", Some(&by_etag), BUDGET)
        .await
        .unwrap()
    {
        OriginResponse::NotModified {
            validators,
            freshness,
        } => {
            assert_eq!(validators.etag.as_deref(), Some("\"v2\""));
            assert_eq!(freshness.max_age, Some(Duration::from_secs(30)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(origin.requests()[0].header("if-none-match"), Some("\"v2\""));

    let by_date = Validators {
        etag: None,
        last_modified: Some(modified.into()),
    };
    assert!(matches!(
        client
            .fetch("cache:api:doc", Some(&by_date), BUDGET)
            .await
            .unwrap(),
        OriginResponse::NotModified { .. }
    ));
    let request = &origin.requests()[1];
    assert_eq!(request.header("if-modified-since"), Some(modified));
    assert_eq!(request.header("if-none-match"), None);

    let stale = Validators {
        etag: Some("\"v1\"".into()),
        last_modified: None,
    };
    let (body, _, validators, ..) = fresh(
        client
            .fetch("cache:api:doc", Some(&stale), BUDGET)
            .await
            .unwrap(),
    );
    assert_eq!(&body[..], b"body");
    assert_eq!(validators.etag.as_deref(), Some("\"v2\""));

    // Empty validators make an unconditional request.
    fresh(
        client
            .fetch("cache:api:doc", Some(&Validators::default()), BUDGET)
            .await
            .unwrap(),
    );
    assert_eq!(origin.requests()[3].header("if-none-match"), None);

    origin.respond("/items/odd", Reply::status(304));
    let error = client
        .fetch("cache:api:odd", None, BUDGET)
        .await
        .unwrap_err();
    assert!(matches!(error, OriginError::Status(304)), "{error:?}");
}

/// Bodies over the limit are refused, by Content-Length or while streaming;
/// a body of exactly the limit is accepted.
#[tokio::test]
async fn body_limit() {
    let origin = TestOrigin::start().await;
    origin.respond("/items/big", Reply::ok(vec![b'b'; 2000]));
    origin.respond("/items/bigstream", Reply::ok(vec![b'b'; 2000]).streamed());
    origin.respond("/items/exact", Reply::ok(vec![b'e'; 1000]).streamed());
    let mut config = origin.origin_config("cache:api:", "/items/{key}");
    config.max_body_bytes = 1000;
    let client = client_for(vec![config]);
    for key in ["cache:api:big", "cache:api:bigstream"] {
        let error = client.fetch(key, None, BUDGET).await.unwrap_err();
        assert!(
            matches!(error, OriginError::BodyTooLarge { limit: 1000 }),
            "{key}: {error:?}"
        );
        assert!(error.to_string().contains("1000"), "{error}");
    }
    let (body, ..) = fresh(client.fetch("cache:api:exact", None, BUDGET).await.unwrap());
    assert_eq!(body.len(), 1000);
}

/// Redirects are not followed, not even to the same host; the target never
/// sees a request.
#[tokio::test]
async fn redirects_are_not_followed() {
    let origin = TestOrigin::start().await;
    let elsewhere = TestOrigin::start().await;
    elsewhere.respond_with(|_| Reply::ok("stolen"));
    let client = client(&origin);
    for status in [301u16, 302, 303, 307, 308] {
        origin.respond(
            &format!("/items/r{status}"),
            Reply::status(status).header("location", &elsewhere.url("/steal")),
        );
        let error = client
            .fetch(&format!("cache:api:r{status}"), None, BUDGET)
            .await
            .unwrap_err();
        assert!(
            matches!(error, OriginError::Status(code) if code == status),
            "{error:?}"
        );
    }
    origin.respond(
        "/items/local",
        Reply::status(302).header("location", "/items/other"),
    );
    assert!(matches!(
        client.fetch("cache:api:local", None, BUDGET).await,
        Err(OriginError::Status(302))
    ));
    assert_eq!(elsewhere.count(), 0);
    assert_eq!(origin.count_path("/items/other"), 0);
    assert_eq!(origin.count(), 6);
}

/// With `honor_cache_control = false`, the origin's directives are ignored.
#[tokio::test]
async fn cache_control_can_be_ignored() {
    let origin = TestOrigin::start().await;
    origin.respond(
        "/items/a",
        Reply::ok("x")
            .cache_control("no-store, max-age=0")
            .header("cache-control", "stale-if-error=5"),
    );
    let (.., honoured, _) = fresh(
        client(&origin)
            .fetch("cache:api:a", None, BUDGET)
            .await
            .unwrap(),
    );
    assert!(!honoured.store);
    assert_eq!(honoured.max_age, Some(Duration::ZERO));
    assert_eq!(honoured.stale_if_error, Some(Duration::from_secs(5)));

    let mut config = origin.origin_config("cache:api:", "/items/{key}");
    config.honor_cache_control = false;
    let (.., ignored, _) = fresh(
        client_for(vec![config])
            .fetch("cache:api:a", None, BUDGET)
            .await
            .unwrap(),
    );
    assert_eq!(ignored, Freshness::unrestricted());
}

/// Every escaping case reaches the origin as exactly one encoded segment
/// under the template's path, on the template's host and port; another
/// origin named inside the keys never sees a request.
#[tokio::test]
async fn keys_never_leave_their_segment() {
    let origin = TestOrigin::start().await;
    let evil = TestOrigin::start().await;
    origin.respond_with(|_| Reply::ok("ok"));
    evil.respond_with(|_| Reply::ok("evil"));
    let client = client_for(vec![
        origin.origin_config("cache:api:", "/items/{key}"),
        origin.origin_config("cache:q:", "/v1/{key}.json?format=full"),
    ]);
    let evil_host = evil.addr().to_string();
    let long = "../".repeat(170);
    let suffixes: Vec<String> = vec![
        "../admin".into(),
        "a/../../b".into(),
        "?x=1".into(),
        "#frag".into(),
        "%2F".into(),
        "%2e%2e".into(),
        "%2e%2e%2fadmin".into(),
        "..%2F..%2Fadmin".into(),
        "http://evil.example/".into(),
        format!("http://{evil_host}/steal"),
        format!("//{evil_host}/steal"),
        "@evil".into(),
        format!("@{evil_host}"),
        format!("x@{evil_host}/y"),
        "\\..\\admin".into(),
        "a b+c&d=e;f,g".into(),
        "ключ/ü/日本".into(),
        "...".into(),
        "./x".into(),
        long.clone(),
    ];
    for (prefix, before, after) in [
        ("cache:api:", "/items/", ""),
        ("cache:q:", "/v1/", ".json?format=full"),
    ] {
        for suffix in &suffixes {
            origin.clear_requests();
            let key = format!("{prefix}{suffix}");
            let url = client.url_for(&key).unwrap();
            assert_eq!(url.host_str(), Some("127.0.0.1"), "{suffix}");
            assert_eq!(url.port(), Some(origin.addr().port()), "{suffix}");
            let (body, ..) = fresh(client.fetch(&key, None, BUDGET).await.unwrap());
            assert_eq!(&body[..], b"ok", "{suffix}");
            let requests = origin.requests();
            assert_eq!(requests.len(), 1, "{suffix}");
            let expected = format!("{before}{}{after}", encode_segment(suffix));
            assert_eq!(requests[0].target, expected, "{suffix}");
            // One segment: no '/' after the template's part, no '?' or '#'
            // from the key.
            let segment = requests[0].path.strip_prefix(before).unwrap();
            assert!(!segment.contains('/'), "{suffix}: {segment}");
            assert_eq!(
                requests[0].target.matches('?').count(),
                after.matches('?').count(),
                "{suffix}"
            );
            assert!(!requests[0].target.contains('#'), "{suffix}");
            assert_eq!(
                requests[0].header("host"),
                Some(origin.addr().to_string().as_str()),
                "{suffix}"
            );
        }
    }
    assert_eq!(
        client.url_for("cache:api:../admin").unwrap().path(),
        "/items/..%2Fadmin"
    );

    // Refused: no request at all.
    origin.clear_requests();
    for key in [
        "cache:api:",
        "cache:api:.",
        "cache:api:..",
        "cache:api:a\nb",
        "cache:api:\r\nHost: evil",
        "cache:api:\u{0}",
        "cache:q:..",
    ] {
        let error = client.fetch(key, None, BUDGET).await.unwrap_err();
        assert!(
            matches!(error, OriginError::InvalidKey(_)),
            "{key:?}: {error:?}"
        );
        assert!(!error.to_string().contains("evil"), "{error}");
    }
    let too_long = format!("cache:api:{}", "k".repeat(600));
    assert!(matches!(
        client.fetch(&too_long, None, BUDGET).await,
        Err(OriginError::InvalidKey(_))
    ));
    assert!(matches!(
        client.fetch("user:1", None, BUDGET).await,
        Err(OriginError::NoOrigin)
    ));
    assert_eq!(origin.count(), 0);
    assert_eq!(evil.count(), 0);
    assert_eq!(evil.connections(), 0);
}

/// The worked origin example of docs/configuration.md loads, validates, and maps
/// `cache:api:users` to `https://api.example.com/users`.
#[test]
fn readme_origin_example_is_valid() {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let section = &readme[readme.find("**Cache origins.**").expect("the section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tierkv.toml");
    std::fs::write(&path, example).unwrap();
    let config = tierkv::config::Config::load(Some(&path), &Default::default()).unwrap();
    config.validate().unwrap();
    let origin = &config.cache.origins[0];
    assert_eq!(origin.store_ttl, Duration::from_secs(300));
    assert_eq!(origin.memory_ttl, Duration::from_secs(60));
    let client = OriginClient::new(&config.cache).unwrap();
    assert_eq!(
        client.url_for("cache:api:users").unwrap().as_str(),
        "https://api.example.com/users"
    );
    assert_eq!(
        client.url_for("cache:api:users/42").unwrap().as_str(),
        "https://api.example.com/users%2F42"
    );
}
