//! How client commands reach a server: plaintext `http://`, TLS `https://`
//! (verified against the system roots or `--ca-file`), and mutual TLS with a
//! client certificate.

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::DEFAULT_ENDPOINT;

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
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))
}

impl ConnectArgs {
    /// A connected channel to the endpoint.
    pub async fn channel(&self) -> Result<Channel, String> {
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
