//! The L3 client: fetches a key from the origin its prefix is configured with.
//!
//! One [`OriginClient`] serves the whole server. Each origin gets its own
//! pooled `reqwest` client (HTTP/1.1, and HTTP/2 where TLS negotiates it by
//! ALPN; rustls with the system's roots, the bundled webpki roots and the
//! origin's `ca_file`), so one origin's trust settings never apply to
//! another. Requests follow no redirects and use no proxy from the
//! environment: the configured URL is the only place a key's request goes.
//!
//! - `url` — key → URL, with the escaping rules.
//! - `cache_control` — `Cache-Control` and `Age` → [`Freshness`].

mod cache_control;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

pub use self::cache_control::freshness_from_headers;
use super::config::{CacheConfig, OriginConfig};
pub use super::url_template::{encode_segment, UrlTemplate};

/// `User-Agent` sent to origins (unless an origin's headers set another).
pub const USER_AGENT: &str = concat!("tierkv/", env!("CARGO_PKG_VERSION"));

/// The validators of a stored response, sent back to revalidate it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// The `ETag`, as the origin sent it (quotes and `W/` included).
    pub etag: Option<String>,
    /// The `Last-Modified` date, as the origin sent it.
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether there is anything to revalidate with.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// How long the origin lets a response be kept, read from its
/// `Cache-Control` (see [`freshness_from_headers`]).
///
/// When the origin's `honor_cache_control` is false this is always
/// [`Freshness::unrestricted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    /// False for `no-store` and `private`: do not store the response.
    pub store: bool,
    /// The response's remaining lifetime (`s-maxage`, else `max-age`, else
    /// `Expires - Date`, less `Age`); callers cap their TTLs with it. 0 means already stale: use
    /// once, revalidate next time (`no-cache` gives 0).
    pub max_age: Option<Duration>,
    /// The origin's `stale-while-revalidate` window, if it sent one; `Some(0)`
    /// when it forbids serving stale (`must-revalidate`). Callers use the
    /// smaller of this and their configured window.
    pub stale_while_revalidate: Option<Duration>,
    /// The origin's `stale-if-error` window, if it sent one; `Some(0)` when
    /// it forbids serving stale (`must-revalidate`). Callers use the smaller
    /// of this and their configured window.
    pub stale_if_error: Option<Duration>,
}

impl Freshness {
    /// Store, with no limit from the origin.
    pub fn unrestricted() -> Self {
        Self {
            store: true,
            max_age: None,
            stale_while_revalidate: None,
            stale_if_error: None,
        }
    }
}

/// What the origin answered.
#[derive(Debug, Clone)]
pub enum OriginResponse {
    /// 200 OK or 203 Non-Authoritative Information, with the whole body.
    /// (Other 2xx are not cacheable answers to a plain GET and are
    /// [`OriginError::Status`].)
    Fresh {
        /// The body.
        body: Bytes,
        /// The `Content-Type`, if sent.
        content_type: Option<String>,
        /// `ETag` / `Last-Modified`, for revalidating later.
        validators: Validators,
        /// What the origin allows.
        freshness: Freshness,
        /// 200 or 203.
        status: u16,
    },
    /// 304 Not Modified, after a conditional request: the stored body is still
    /// good.
    NotModified {
        /// The validators the 304 carried; a field the 304 left out means
        /// "keep the stored one".
        validators: Validators,
        /// What the origin allows from now on.
        freshness: Freshness,
    },
    /// 404 Not Found or 410 Gone.
    Missing {
        /// 404 or 410.
        status: u16,
        /// What the origin allows (a miss can be `no-store` too).
        freshness: Freshness,
    },
}

/// Why an origin fetch failed. Messages never include keys, URLs or
/// configured header values.
#[derive(Debug, Error)]
pub enum OriginError {
    /// The key is under no configured origin's prefix.
    #[error("the key is under no configured origin")]
    NoOrigin,
    /// The key cannot be put into the origin's URL safely; says why.
    #[error("the key cannot be sent to its origin: {0}")]
    InvalidKey(String),
    /// The caller's budget or the origin's timeout ran out (connection,
    /// headers and body together).
    #[error("the origin did not answer within {after:?}")]
    Timeout {
        /// The effective limit that ran out.
        after: Duration,
    },
    /// The connection failed: refused, reset, TLS, or the client could not
    /// be built.
    #[error("cannot reach the origin: {0}")]
    Connect(String),
    /// A status that is not an answer to cache: 5xx, 3xx (redirects are not
    /// followed), 304 without a conditional request, other 4xx and 2xx.
    #[error("the origin answered with status {0}")]
    Status(u16),
    /// The body is larger than the origin's `max_body_bytes`.
    #[error("the origin's body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
}

impl OriginError {
    /// Whether trying again later might succeed (the origin may recover);
    /// false for errors of the key or the configuration.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            OriginError::Timeout { .. } | OriginError::Connect(_) | OriginError::Status(_)
        )
    }
}

/// Fetches keys from their origins; cheap to clone.
#[derive(Clone)]
pub struct OriginClient {
    origins: Arc<[Origin]>,
}

impl std::fmt::Debug for OriginClient {
    // Headers may hold secrets: show only the prefixes.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OriginClient")
            .field(
                "prefixes",
                &self
                    .origins
                    .iter()
                    .map(|origin| origin.config.prefix.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

struct Origin {
    config: OriginConfig,
    template: UrlTemplate,
    client: reqwest::Client,
}

impl OriginClient {
    /// A client for every configured origin. Fails (as
    /// [`OriginError::Connect`]) on what `CacheConfig::validate` refuses and
    /// when TLS cannot be set up.
    pub fn new(config: &CacheConfig) -> Result<Self, OriginError> {
        let origins = config
            .origins
            .iter()
            .enumerate()
            .map(|(index, origin)| {
                Origin::new(origin).map_err(|error| {
                    OriginError::Connect(format!("cache.origins[{index}]: {error}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            origins: origins.into(),
        })
    }

    /// The origin `key` reads through (longest prefix) and the key's suffix.
    fn route<'a>(&self, key: &'a str) -> Result<(&Origin, &'a str), OriginError> {
        self.origins
            .iter()
            .filter(|origin| key.starts_with(origin.config.prefix.as_str()))
            .max_by_key(|origin| origin.config.prefix.len())
            .map(|origin| (origin, &key[origin.config.prefix.len()..]))
            .ok_or(OriginError::NoOrigin)
    }

    /// The configuration of the origin `key` reads through.
    pub fn origin_config(&self, key: &str) -> Option<&OriginConfig> {
        self.route(key).ok().map(|(origin, _)| &origin.config)
    }

    /// The URL a key maps to; fails for keys under no origin or that cannot
    /// be mapped safely.
    pub fn url_for(&self, key: &str) -> Result<reqwest::Url, OriginError> {
        let (origin, suffix) = self.route(key)?;
        origin
            .template
            .url_for(suffix)
            .map_err(OriginError::InvalidKey)
    }

    /// Fetches `key` (the full key: the origin is chosen by prefix, the
    /// suffix goes into `{key}`), conditionally when `conditional` has
    /// validators. `budget` (the caller's remaining deadline) caps the
    /// origin's `timeout`; the limit covers connecting, the headers and the
    /// whole body.
    pub async fn fetch(
        &self,
        key: &str,
        conditional: Option<&Validators>,
        budget: Duration,
    ) -> Result<OriginResponse, OriginError> {
        let (origin, suffix) = self.route(key)?;
        let url = origin
            .template
            .url_for(suffix)
            .map_err(OriginError::InvalidKey)?;
        let limit = budget.min(origin.config.timeout);
        if limit.is_zero() {
            return Err(OriginError::Timeout { after: limit });
        }
        match tokio::time::timeout(limit, origin.fetch(url, conditional)).await {
            Ok(Err(OriginError::Timeout { .. })) | Err(_) => {
                Err(OriginError::Timeout { after: limit })
            }
            Ok(result) => result,
        }
    }
}

impl Origin {
    fn new(config: &OriginConfig) -> Result<Self, String> {
        let template = UrlTemplate::parse(&config.url).map_err(|error| format!("url: {error}"))?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::USER_AGENT,
            reqwest::header::HeaderValue::from_static(USER_AGENT),
        );
        for (name, value) in &config.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: {name:?} is not a valid HTTP header name"))?;
            let mut value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                format!("headers.{name}: the value is not a valid HTTP header value (not shown)")
            })?;
            // Keeps it out of HTTP/2 header compression tables and debug output.
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .default_headers(headers);
        if let Some(path) = &config.ca_file {
            for certificate in load_ca_file(path).map_err(|error| format!("ca_file: {error}"))? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .build()
            .map_err(|error| format!("cannot build the HTTP client: {}", error_chain(&error)))?;
        Ok(Self {
            config: config.clone(),
            template,
            client,
        })
    }

    async fn fetch(
        &self,
        url: reqwest::Url,
        conditional: Option<&Validators>,
    ) -> Result<OriginResponse, OriginError> {
        let mut request = self.client.get(url);
        let conditional = conditional.filter(|validators| !validators.is_empty());
        if let Some(validators) = conditional {
            // A validator that is not a valid header value cannot have come
            // from an origin's header; skip it rather than fail.
            if let Some(etag) = validators
                .etag
                .as_deref()
                .and_then(|etag| reqwest::header::HeaderValue::from_str(etag).ok())
            {
                request = request.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            if let Some(date) = validators
                .last_modified
                .as_deref()
                .and_then(|date| reqwest::header::HeaderValue::from_str(date).ok())
            {
                request = request.header(reqwest::header::IF_MODIFIED_SINCE, date);
            }
        }
        let mut response = request.send().await.map_err(request_error)?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let freshness = if self.config.honor_cache_control {
            freshness_from_headers(headers)
        } else {
            Freshness::unrestricted()
        };
        let validators = Validators {
            etag: header_text(headers, reqwest::header::ETAG),
            last_modified: header_text(headers, reqwest::header::LAST_MODIFIED),
        };
        match status {
            200 | 203 => {}
            304 if conditional.is_some() => {
                return Ok(OriginResponse::NotModified {
                    validators,
                    freshness,
                })
            }
            404 | 410 => return Ok(OriginResponse::Missing { status, freshness }),
            _ => return Err(OriginError::Status(status)),
        }
        let content_type = header_text(headers, reqwest::header::CONTENT_TYPE);
        let limit = self.config.max_body_bytes;
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(OriginError::BodyTooLarge { limit });
        }
        // Kept as the chunks that arrived, joined at the end: memory grows
        // with what the origin has sent, never with what it announced (a
        // Content-Length up to the limit costs nothing until the bytes come).
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut received = 0usize;
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if received + chunk.len() > limit {
                return Err(OriginError::BodyTooLarge { limit });
            }
            received += chunk.len();
            chunks.push(chunk);
        }
        let body = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(received);
                for chunk in &chunks {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        };
        Ok(OriginResponse::Fresh {
            body,
            content_type,
            validators,
            freshness,
            status,
        })
    }
}

fn header_text(
    headers: &reqwest::header::HeaderMap,
    name: reqwest::header::HeaderName,
) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// Maps a reqwest error without its URL (which holds the key).
fn request_error(error: reqwest::Error) -> OriginError {
    if error.is_timeout() {
        // The real limit is filled in by the caller.
        return OriginError::Timeout {
            after: Duration::ZERO,
        };
    }
    OriginError::Connect(error_chain(&error.without_url()))
}

/// An error and its sources, joined: reqwest's own message alone is often
/// just "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Reads a PEM bundle of root certificates; fails when it cannot be read or
/// holds no certificate.
pub fn load_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|_| format!("{} is not a PEM certificate bundle", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// Checks what the origin client reads from files at start (each origin's
/// `ca_file`), naming the setting like [`CacheConfig::validate`] does
/// (`cache.origins[0].ca_file: ...`). Here, not in the configuration module,
/// because reading certificates is the client's business.
pub fn check_files(config: &CacheConfig) -> Result<(), String> {
    for (index, origin) in config.origins.iter().enumerate() {
        if let Some(path) = &origin.ca_file {
            load_ca_file(path)
                .map_err(|error| format!("cache.origins[{index}].ca_file: {error}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(origins: Vec<OriginConfig>) -> OriginClient {
        OriginClient::new(&CacheConfig {
            origins,
            ..CacheConfig::default()
        })
        .unwrap()
    }

    /// Keys route by longest prefix; the suffix is what goes into `{key}`.
    #[test]
    fn url_for_routes_by_longest_prefix() {
        let client = client(vec![
            OriginConfig::new("cache:", "http://a.example/{key}"),
            OriginConfig::new("cache:api:", "https://b.example/v1/{key}?full=1"),
        ]);
        assert_eq!(
            client.url_for("cache:api:users/1").unwrap().as_str(),
            "https://b.example/v1/users%2F1?full=1"
        );
        assert_eq!(
            client.url_for("cache:apx").unwrap().as_str(),
            "http://a.example/apx"
        );
        assert!(matches!(
            client.url_for("user:1"),
            Err(OriginError::NoOrigin)
        ));
        assert!(matches!(
            client.url_for("cache:api:"),
            Err(OriginError::InvalidKey(_))
        ));
        assert_eq!(
            client.origin_config("cache:api:x").unwrap().prefix,
            "cache:api:"
        );
    }

    /// Secrets in headers never show in `Debug` output nor in errors.
    #[test]
    fn secrets_stay_hidden() {
        let mut origin = OriginConfig::new("cache:", "http://a.example/{key}");
        origin
            .headers
            .insert("Authorization".into(), "Bearer hunter2".into());
        let client = client(vec![origin.clone()]);
        assert!(!format!("{client:?}").contains("hunter2"));
        origin
            .headers
            .insert("Authorization".into(), "Bearer hunter2\n".into());
        let error = OriginClient::new(&CacheConfig {
            origins: vec![origin],
            ..CacheConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("cache.origins[0]"), "{error}");
    }

    /// A spent budget fails at once, without a request.
    #[tokio::test]
    async fn zero_budget_times_out() {
        let client = client(vec![OriginConfig::new("cache:", "http://192.0.2.1/{key}")]);
        let error = client
            .fetch("cache:x", None, Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(error, OriginError::Timeout { after } if after.is_zero()));
        assert!(error.is_retryable());
        assert!(!OriginError::NoOrigin.is_retryable());
    }
}
