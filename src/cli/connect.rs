//! How client commands reach a server: plaintext `http://`, TLS `https://`
//! (verified against the system roots or `--ca-file`), and mutual TLS with a
//! client certificate.

use std::path::{Path, PathBuf};

use clap::Args;
use tierkv_client::{Client, ConnectOptions};

use super::error::CliError;
use super::DEFAULT_ENDPOINT;

// The clients of the commands ([`tierkv_client::Client`]) encode and decode
// messages up to the largest the server sends or accepts, so that every reply
// is readable.
const _: () = assert!(tierkv_client::MAX_MESSAGE_SIZE == crate::kv::limits::MAX_MESSAGE_BYTES);

/// The connection options every client command shares, listed in `--help`
/// under their own heading, after the command's own options.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The server to talk to; `https://` for TLS.
    #[arg(long, global = true, help_heading = "Connection options", env = "TIERKV_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// PEM CA certificate(s) to verify an `https://` server with, instead of the system roots.
    #[arg(
        long,
        global = true,
        help_heading = "Connection options",
        env = "TIERKV_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that requires mutual TLS.
    #[arg(
        long,
        global = true,
        help_heading = "Connection options",
        env = "TIERKV_CLIENT_CERT_FILE"
    )]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `--client-cert-file`.
    #[arg(
        long,
        global = true,
        help_heading = "Connection options",
        env = "TIERKV_CLIENT_KEY_FILE"
    )]
    pub client_key_file: Option<PathBuf>,
    /// Bearer token, for a server with `[auth]` tokens (prefer the variable:
    /// arguments show in process listings).
    #[arg(
        long,
        global = true,
        help_heading = "Connection options",
        env = "TIERKV_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// A channel whose calls carry the `authorization: Bearer` metadata when a
/// token was given.
pub type CliChannel = tierkv_client::AuthChannel;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))
}

impl ConnectArgs {
    /// A connected client of the endpoint, carrying the token if any.
    pub async fn client(&self) -> Result<Client, CliError> {
        let options = self.options().map_err(CliError::Usage)?;
        Client::connect(options)
            .await
            .map_err(|error| CliError::Connect(error.to_string()))
    }

    /// The connection options the arguments describe, with the files read.
    fn options(&self) -> Result<ConnectOptions, String> {
        let mut options = ConnectOptions::new(self.endpoint.clone());
        if let Some(token) = &self.token {
            options = options.with_token(token.clone());
        }
        let https = self.endpoint.starts_with("https://");
        let wants_tls = self.ca_file.is_some() || self.client_cert_file.is_some();
        if wants_tls && !https {
            // Checked before the files are read, as the library would.
            return Err(
                tierkv_client::ConnectError::TlsOnPlaintext(self.endpoint.clone()).to_string(),
            );
        }
        if let Some(path) = &self.ca_file {
            options = options.with_ca_pem(read(path)?);
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => {
                options = options.with_identity_pem(read(cert)?, read(key)?);
            }
            (None, None) => {}
            _ if !https => {}
            _ => return Err("--client-cert-file and --client-key-file go together".to_string()),
        }
        Ok(options)
    }
}
