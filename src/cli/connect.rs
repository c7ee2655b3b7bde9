//! How client commands reach a server: plaintext `http://`, TLS `https://`
//! (verified against the system roots or `--ca-file`), and mutual TLS with a
//! client certificate.

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::DEFAULT_ENDPOINT;

/// The largest message a command's client encodes or decodes: the largest
/// the server sends or accepts, so that every reply is readable (tonic's
/// default decode limit of 4 MiB is below a page of sessions or a `kv get` of
/// a large value). Every client a command builds sets it both ways.
pub const MAX_MESSAGE_SIZE: usize = crate::server::message_limits::MAX_MESSAGE_BYTES;

/// The connection options every client command shares.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The server to talk to; `https://` for TLS.
    #[arg(long, global = true, env = "TIERKV_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// PEM CA certificate(s) to verify an `https://` server with, instead of the system roots.
    #[arg(long, global = true, env = "TIERKV_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that requires mutual TLS.
    #[arg(long, global = true, env = "TIERKV_CLIENT_CERT_FILE")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `--client-cert-file`.
    #[arg(long, global = true, env = "TIERKV_CLIENT_KEY_FILE")]
    pub client_key_file: Option<PathBuf>,
    /// Bearer token, for a server with `[auth]` tokens (prefer the variable:
    /// arguments show in process listings).
    #[arg(long, global = true, env = "TIERKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A channel whose calls carry the `authorization: Bearer` metadata when a
/// token was given.
pub type CliChannel = InterceptedService<Channel, BearerToken>;

/// Adds the bearer token to every call.
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

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))
}

impl ConnectArgs {
    /// A connected channel to the endpoint, carrying the token if any.
    pub async fn channel(&self) -> Result<CliChannel, String> {
        let token = match &self.token {
            None => None,
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| "the token is not valid header text".to_string())?,
            ),
        };
        let channel = self.plain_channel().await?;
        Ok(InterceptedService::new(channel, BearerToken(token)))
    }

    async fn plain_channel(&self) -> Result<Channel, String> {
        let fail =
            |error: &dyn std::fmt::Display| format!("cannot connect to {}: {error}", self.endpoint);
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone()).map_err(|e| fail(&e))?;
        let https = self.endpoint.starts_with("https://");
        let wants_tls = self.ca_file.is_some() || self.client_cert_file.is_some();
        if wants_tls && !https {
            return Err(format!(
                "{} is not an https:// endpoint, but TLS options were given",
                self.endpoint
            ));
        }
        if https {
            let mut tls = ClientTlsConfig::new();
            tls = match &self.ca_file {
                Some(path) => tls.ca_certificate(Certificate::from_pem(read(path)?)),
                None => tls.with_native_roots(),
            };
            match (&self.client_cert_file, &self.client_key_file) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
                (None, None) => {}
                _ => return Err("--client-cert-file and --client-key-file go together".to_string()),
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| fail(&e))?;
        }
        endpoint.connect().await.map_err(|e| fail(&e))
    }
}
