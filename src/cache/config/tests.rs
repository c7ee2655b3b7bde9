//! Tests of the `[cache]` configuration.

use super::*;

fn namespaces() -> Namespaces {
    Namespaces::new(["cache:", "cache:nested:", "user:", "session:"])
        .with_owners([("session:", "tierkv.v1.SessionService")])
        .unwrap()
}

fn with_origin(origin: OriginConfig) -> CacheConfig {
    CacheConfig {
        origins: vec![origin],
        ..CacheConfig::default()
    }
}

fn origin() -> OriginConfig {
    OriginConfig::new("cache:api:", "https://api.example.com/{key}")
}

fn error_of(config: CacheConfig) -> String {
    config.validate(&namespaces()).unwrap_err()
}

/// The section parses from TOML with defaults filled in and durations
/// with units.
#[test]
fn parses_with_defaults_and_units() {
    let config: CacheConfig = toml::from_str(
        r#"
        memory_mb = 8
        [[origins]]
        prefix = "cache:api:"
        url = "https://api.example.com/{key}"
        memory_ttl = "250ms"
        store_ttl = "1h"
        stale_if_error = "1m30s"
        headers = { Authorization = "Bearer secret" }
        "#,
    )
    .unwrap();
    assert_eq!(config.memory_mb, 8);
    let origin = &config.origins[0];
    assert_eq!(origin.memory_ttl, Duration::from_millis(250));
    assert_eq!(origin.store_ttl, Duration::from_secs(3600));
    assert_eq!(origin.stale_if_error, Duration::from_secs(90));
    assert_eq!(origin.timeout, Duration::from_secs(10));
    assert_eq!(origin.negative_ttl, Duration::from_secs(30));
    assert_eq!(origin.stale_while_revalidate, Duration::ZERO);
    assert_eq!(origin.max_body_bytes, MAX_VALUE_BYTES);
    assert!(origin.honor_cache_control);
    assert_eq!(origin.headers["Authorization"], "Bearer secret");
    assert_eq!(origin.max_concurrent_fetches, 32);
    assert_eq!(origin.max_store_entries, 100_000);
    assert_eq!(origin.max_store_bytes, 1 << 30);
    assert_eq!(config.max_concurrent_fetches, 256);
    config.validate(&namespaces()).unwrap();
    let capped: CacheConfig = toml::from_str(
        r#"
        max_concurrent_fetches = 8
        [[origins]]
        prefix = "cache:api:"
        url = "https://api.example.com/{key}"
        max_concurrent_fetches = 2
        max_store_entries = 10
        max_store_bytes = 4096
        "#,
    )
    .unwrap();
    assert_eq!(capped.max_concurrent_fetches, 8);
    let origin = &capped.origins[0];
    assert_eq!(
        (
            origin.max_concurrent_fetches,
            origin.max_store_entries,
            origin.max_store_bytes
        ),
        (2, 10, 4096)
    );
    assert_eq!(CacheConfig::default().memory_mb, 64);
    CacheConfig::default().validate(&namespaces()).unwrap();
}

/// Unknown keys, missing required keys and unitless durations are refused
/// by name.
#[test]
fn refuses_unknown_keys_and_bad_durations() {
    let error = toml::from_str::<CacheConfig>("memory_bytes = 1")
        .unwrap_err()
        .to_string();
    assert!(error.contains("memory_bytes"), "{error}");
    let error = toml::from_str::<CacheConfig>(
        "[[origins]]\nprefix = \"cache:\"\nurl = \"http://h/{key}\"\nttl = \"1s\"",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("ttl"), "{error}");
    let error = toml::from_str::<CacheConfig>("[[origins]]\nprefix = \"cache:\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("url"), "{error}");
    let error = toml::from_str::<CacheConfig>(
        "[[origins]]\nprefix = \"cache:\"\nurl = \"http://h/{key}\"\nstore_ttl = 60",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("has no unit"), "{error}");
    let zero: CacheConfig = toml::from_str(
        "[[origins]]\nprefix = \"cache:\"\nurl = \"http://h/{key}\"\nnegative_ttl = 0",
    )
    .unwrap();
    assert_eq!(zero.origins[0].negative_ttl, Duration::ZERO);
}

/// The duration syntax: units, sums, and everything else refused.
#[test]
fn duration_syntax() {
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration(" 60s ").unwrap(), Duration::from_secs(60));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
    assert_eq!(
        parse_duration("1h2m3s4ms").unwrap(),
        Duration::from_millis(3_723_004)
    );
    for bad in [
        "",
        "60",
        "s",
        "1x",
        "1.5s",
        "-1s",
        "1 s",
        "1S",
        "99999999999999999999s",
        "18446744073709551615d",
    ] {
        let error = parse_duration(bad).unwrap_err();
        assert!(error.contains("not a duration"), "{bad}: {error}");
    }
    assert_eq!(format_duration(Duration::from_millis(90_250)), "1m30s250ms");
    assert_eq!(format_duration(Duration::ZERO), "0s");
}

/// Longest prefix wins; keys under no prefix have no origin.
#[test]
fn origin_for_picks_longest_prefix() {
    let config = CacheConfig {
        origins: vec![
            OriginConfig::new("cache:", "http://a/{key}"),
            OriginConfig::new("cache:api:", "http://b/{key}"),
        ],
        ..CacheConfig::default()
    };
    assert_eq!(
        config.origin_for("cache:api:x").unwrap().url,
        "http://b/{key}"
    );
    assert_eq!(
        config.origin_for("cache:apx").unwrap().url,
        "http://a/{key}"
    );
    assert!(config.origin_for("user:1").is_none());
}

/// `memory_mb` has a floor and a ceiling.
#[test]
fn memory_bound_range() {
    let error = error_of(CacheConfig {
        memory_mb: 0,
        ..CacheConfig::default()
    });
    assert!(error.contains("cache.memory_mb is 0"), "{error}");
    let error = error_of(CacheConfig {
        memory_mb: MEMORY_MB_CEILING + 1,
        ..CacheConfig::default()
    });
    assert!(error.contains("cache.memory_mb"), "{error}");
    assert_eq!(CacheConfig::default().memory_bytes(), 64 * 1024 * 1024);
    let error = error_of(CacheConfig {
        max_concurrent_fetches: 0,
        ..CacheConfig::default()
    });
    assert!(
        error.contains("cache.max_concurrent_fetches is 0"),
        "{error}"
    );
}

/// Prefixes: not empty, not too long, in one unowned namespace, unique.
#[test]
fn prefix_errors() {
    let cases: Vec<(OriginConfig, &str)> = vec![
        (
            OriginConfig {
                prefix: String::new(),
                ..origin()
            },
            "cache.origins[0].prefix must not be empty",
        ),
        (
            OriginConfig {
                prefix: format!("cache:{}", "x".repeat(600)),
                ..origin()
            },
            "the limit is 512",
        ),
        (
            OriginConfig {
                prefix: "api:".into(),
                ..origin()
            },
            "not inside a configured namespace",
        ),
        (
            OriginConfig {
                prefix: "session:x".into(),
                ..origin()
            },
            "which tierkv.v1.SessionService owns",
        ),
        (
            OriginConfig {
                prefix: "cache:".into(),
                ..origin()
            },
            "spans namespaces",
        ),
    ];
    for (origin, expected) in cases {
        let error = error_of(with_origin(origin));
        assert!(error.contains(expected), "{expected}: {error}");
    }
    let error = error_of(CacheConfig {
        origins: vec![
            origin(),
            OriginConfig::new("user:x", "http://h/{key}"),
            origin(),
        ],
        ..CacheConfig::default()
    });
    assert!(
        error.contains(
            "cache.origins[2].prefix \"cache:api:\" is also the prefix of cache.origins[0]"
        ),
        "{error}"
    );
    // A prefix equal to a namespace, with nothing nested, is fine.
    with_origin(OriginConfig {
        prefix: "user:".into(),
        ..origin()
    })
    .validate(&namespaces())
    .unwrap();
}

/// URL templates: scheme, host, one `{key}`, only in the path.
#[test]
fn url_errors() {
    let cases = [
        ("", "exactly one {key} (it has 0)"),
        ("api.example.com/{key}", "not a valid URL"),
        ("ftp://h/{key}", "http:// or https://"),
        ("file:///tmp/{key}", "http:// or https://"),
        ("http://h/items", "exactly one {key}"),
        ("http://h/{key}/{key}", "exactly one {key}"),
        ("http://{key}.example.com/", "only in the path"),
        ("http://h:{key}/", "invalid port number"),
        ("http://h/x?id={key}", "only in the path"),
        ("http://h/x#{key}", "only in the path"),
        ("http://h/{key}#top", "fragment"),
        ("{key}://h/", "only in the path"),
        ("http://user:pw@h/{key}", "credentials"),
        ("http://h/{KEY}", "exactly one {key}"),
    ];
    for (url, expected) in cases {
        let error = error_of(with_origin(OriginConfig {
            url: url.into(),
            ..origin()
        }));
        assert!(
            error.starts_with("cache.origins[0].url: "),
            "{url}: {error}"
        );
        assert!(error.contains(expected), "{url}: {expected}: {error}");
        // The credentials never show.
        assert!(!error.contains("pw"), "{error}");
    }
    for good in [
        "http://127.0.0.1:8080/{key}",
        "https://api.example.com/v1/items/{key}.json?format=full",
        "https://[::1]:8443/a{key}b",
    ] {
        with_origin(OriginConfig {
            url: good.into(),
            ..origin()
        })
        .validate(&namespaces())
        .unwrap();
    }
}

/// TTLs, timeout, negative TTL and body limit ranges, each named.
#[test]
fn duration_and_size_errors() {
    let cases: Vec<(OriginConfig, &str)> = vec![
        (
            OriginConfig { store_ttl: Duration::from_millis(500), ..origin() },
            "cache.origins[0].store_ttl is 500ms; it must be at least 1s",
        ),
        (
            OriginConfig { memory_ttl: Duration::from_secs(600), ..origin() },
            "cache.origins[0].memory_ttl is 10m; it must be at most cache.origins[0].store_ttl (5m)",
        ),
        (
            OriginConfig { timeout: Duration::ZERO, ..origin() },
            "cache.origins[0].timeout must be more than 0",
        ),
        (
            OriginConfig { negative_ttl: Duration::from_millis(10), ..origin() },
            "cache.origins[0].negative_ttl is 10ms",
        ),
        (
            OriginConfig { stale_if_error: DURATION_CEILING + Duration::from_secs(1), ..origin() },
            "cache.origins[0].stale_if_error is 3650d1s; the most is 3650d",
        ),
        (
            OriginConfig { max_body_bytes: 0, ..origin() },
            "cache.origins[0].max_body_bytes is 0",
        ),
        (
            OriginConfig { max_body_bytes: MAX_VALUE_BYTES + 1, ..origin() },
            "between 1 and 26214400",
        ),
        (
            OriginConfig { max_concurrent_fetches: 0, ..origin() },
            "cache.origins[0].max_concurrent_fetches is 0; it must be between 1 and 65536",
        ),
        (
            OriginConfig { max_store_entries: 0, ..origin() },
            "cache.origins[0].max_store_entries is 0",
        ),
        (
            OriginConfig { max_store_bytes: 0, ..origin() },
            "cache.origins[0].max_store_bytes is 0",
        ),
    ];
    for (origin, expected) in cases {
        let error = error_of(with_origin(origin));
        assert!(error.contains(expected), "{expected}: {error}");
    }
    let fine = OriginConfig {
        memory_ttl: Duration::ZERO,
        negative_ttl: Duration::ZERO,
        store_ttl: Duration::from_secs(1),
        ..origin()
    };
    with_origin(fine).validate(&namespaces()).unwrap();
}

/// Header names and values must be valid HTTP; some names are refused;
/// a bad value is never echoed.
#[test]
fn header_errors() {
    let with_header = |name: &str, value: &str| {
        let mut origin = origin();
        origin.headers.insert(name.into(), value.into());
        with_origin(origin)
    };
    let error = error_of(with_header("bad name", "x"));
    assert!(
        error.contains("\"bad name\" is not a valid HTTP header name"),
        "{error}"
    );
    for refused in [
        "Host",
        "content-length",
        "If-None-Match",
        "Range",
        "Connection",
    ] {
        let error = error_of(with_header(refused, "x"));
        assert!(error.contains("cannot be configured"), "{refused}: {error}");
    }
    let error = error_of(with_header("Authorization", "Bearer top\nsecret"));
    assert!(
        error.contains("cache.origins[0].headers.Authorization"),
        "{error}"
    );
    assert!(!error.contains("secret"), "{error}");
    with_header("Authorization", "Bearer ok")
        .validate(&namespaces())
        .unwrap();
}
