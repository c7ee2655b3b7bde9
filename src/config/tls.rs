//! `[tls]`: which certificate the gRPC listener presents and which client
//! CAs mutual TLS accepts. Only the settings and their shape live here; the
//! server builds rustls configurations from them (`crate::server::tls`),
//! which is also where the files are read and checked.

use std::path::PathBuf;

use serde::Deserialize;

/// `[tls]` in the configuration: TLS on the gRPC port when `cert_file` and
/// `key_file` are set; mutual TLS when `client_ca_file` is set too.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates; when set, every client must present a
    /// certificate signed by one of them.
    pub client_ca_file: Option<PathBuf>,
    /// How often, at most, the certificate files are checked for changes.
    pub reload_interval_secs: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            reload_interval_secs: 30,
        }
    }
}

impl TlsSettings {
    /// Whether TLS is configured at all.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Checks that the files named go together: a certificate with its key,
    /// and client CAs only beside both (mutual TLS is TLS first).
    pub fn check_pairing(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (None, None) if self.client_ca_file.is_some() => Err(
                "tls.client_ca_file needs tls.cert_file and tls.key_file: mutual TLS is TLS first"
                    .into(),
            ),
            (None, None) | (Some(_), Some(_)) => Ok(()),
            _ => Err("tls.cert_file and tls.key_file must be set together".into()),
        }
    }
}
