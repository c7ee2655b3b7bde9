//! Connecting to a server: plaintext `http://`, TLS `https://` (verified
//! against the system roots or given CA certificates), mutual TLS with a
//! client certificate, and a bearer token on every call.

use std::time::Duration;

use thiserror::Error;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A channel whose calls carry the `authorization: Bearer` metadata when a
/// token was given. Every generated client works over it.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// Why a connection could not be set up.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The endpoint is not a URI tonic accepts.
    #[error("cannot connect to {endpoint}: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS options were given for a plaintext endpoint.
    #[error("{0} is not an https:// endpoint, but TLS options were given")]
    TlsOnPlaintext(String),
    /// The token cannot travel in a header.
    #[error("the token is not valid header text")]
    Token,
    /// TLS could not be configured (bad certificate or key).
    #[error("cannot connect to {endpoint}: {reason}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The server could not be reached.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        reason: String,
    },
}

/// Where and how to connect. Build it with [`ConnectOptions::new`] and the
/// `with_…` methods.
#[derive(Clone)]
pub struct ConnectOptions {
    endpoint: String,
    ca_pem: Option<Vec<u8>>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    token: Option<String>,
    connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token nor the private key.
        f.debug_struct("ConnectOptions")
            .field("endpoint", &self.endpoint)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "…"))
            .field("identity_pem", &self.identity_pem.as_ref().map(|_| "…"))
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ConnectOptions {
    /// Options for `endpoint` (`http://host:port`, or `https://` for TLS
    /// verified against the system roots), with no token and no connect
    /// timeout but the operating system's.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            ca_pem: None,
            identity_pem: None,
            token: None,
            connect_timeout: None,
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Verifies the server against these PEM CA certificates instead of the
    /// system roots.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this PEM certificate and key, for a server that requires
    /// mutual TLS.
    pub fn with_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity_pem = Some((cert.into(), key.into()));
        self
    }

    /// Sends `authorization: Bearer <token>` with every call (surrounding
    /// whitespace, as a file or variable often has, is dropped).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long establishing the connection may take.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The configured endpoint, TLS included, not yet connected.
    fn endpoint_config(&self) -> Result<Endpoint, ConnectError> {
        let invalid = |reason: String| ConnectError::Endpoint {
            endpoint: self.endpoint.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|error| invalid(error.to_string()))?;
        if let Some(timeout) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(timeout);
        }
        let https = self.endpoint.starts_with("https://");
        if !https {
            if self.ca_pem.is_some() || self.identity_pem.is_some() {
                return Err(ConnectError::TlsOnPlaintext(self.endpoint.clone()));
            }
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|error| ConnectError::Tls {
                endpoint: self.endpoint.clone(),
                reason: error.to_string(),
            })?;
        Ok(endpoint)
    }

    fn bearer(&self) -> Result<BearerToken, ConnectError> {
        match &self.token {
            None => Ok(BearerToken(None)),
            Some(token) => format!("Bearer {}", token.trim())
                .parse::<MetadataValue<Ascii>>()
                .map(|value| BearerToken(Some(value)))
                .map_err(|_| ConnectError::Token),
        }
    }

    /// Connects now: an unreachable server is an error here.
    pub async fn connect(&self) -> Result<AuthChannel, ConnectError> {
        let bearer = self.bearer()?;
        let channel =
            self.endpoint_config()?
                .connect()
                .await
                .map_err(|error| ConnectError::Connect {
                    endpoint: self.endpoint.clone(),
                    reason: error.to_string(),
                })?;
        Ok(InterceptedService::new(channel, bearer))
    }

    /// A channel that connects on its first call (and reconnects after a
    /// failure): an unreachable server shows as UNAVAILABLE calls, which
    /// [`crate::retry`] retries.
    pub fn connect_lazy(&self) -> Result<AuthChannel, ConnectError> {
        let bearer = self.bearer()?;
        let channel = self.endpoint_config()?.connect_lazy();
        Ok(InterceptedService::new(channel, bearer))
    }
}

/// Adds the bearer token, if any, to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_tuple("BearerToken")
            .field(&self.0.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
