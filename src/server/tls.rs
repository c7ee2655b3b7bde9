//! TLS and mutual TLS for the gRPC listener, with rustls.
//!
//! The certificate and key are re-read when their files change (checked at
//! most once per `reload_interval_secs`, on a handshake), so a rotation by
//! cert-manager or a Kubernetes Secret update needs no restart. A file that
//! fails to load keeps the previous certificate in service, with a warning.
//! The whole acceptor (with the client CAs of mutual TLS) can be replaced
//! while serving ([`SharedAcceptor`], on SIGHUP): new connections use the
//! new one, open connections keep the handshake they made.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// Checks that the configured files load, so a bad certificate stops the
/// server at start rather than failing every handshake.
pub fn validate(settings: &TlsSettings) -> Result<(), String> {
    acceptor(settings).map(|_| ())
}

/// The acceptor for the configured certificate, or `None` without TLS.
pub fn acceptor(settings: &TlsSettings) -> Result<Option<TlsAcceptor>, String> {
    settings.check_pairing()?;
    let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) else {
        return Ok(None);
    };
    let (cert_file, key_file) = (cert_file.clone(), key_file.clone());
    let provider = Arc::new(ring::default_provider());
    let resolver = ReloadingCertificate::new(
        cert_file,
        key_file,
        Duration::from_secs(settings.reload_interval_secs),
        Arc::clone(&provider),
    )?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|error| format!("tls.client_ca_file {}: {error}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| format!("tls.client_ca_file {}: {error}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The TLS acceptor in force, replaceable while serving.
#[derive(Clone)]
pub struct SharedAcceptor(Arc<RwLock<TlsAcceptor>>);

impl std::fmt::Debug for SharedAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAcceptor").finish_non_exhaustive()
    }
}

impl SharedAcceptor {
    /// Shares `acceptor`.
    pub fn new(acceptor: TlsAcceptor) -> Self {
        Self(Arc::new(RwLock::new(acceptor)))
    }

    /// The acceptor for the next handshake.
    pub fn current(&self) -> TlsAcceptor {
        // Writers only swap the whole value: a poisoned lock holds a whole one.
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts `acceptor` in force for the connections accepted from now on.
    pub fn replace(&self, acceptor: TlsAcceptor) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = acceptor;
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("{}: {error}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certificates)
}

fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let certificates = read_certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|error| format!("{}: no usable PEM private key: {error}", key_file.display()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| format!("{}: {error}", key_file.display()))?;
    let certified = CertifiedKey::new(certificates, signing_key);
    certified.keys_match().map_err(|error| {
        format!(
            "{} does not match the certificate in {}: {error}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// Modification times of the two files, to notice a rotation.
fn stamp(cert_file: &Path, key_file: &Path) -> Option<(SystemTime, SystemTime)> {
    let modified = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
    };
    Some((modified(cert_file)?, modified(key_file)?))
}

/// Serves the current certificate, re-reading the files when they change.
#[derive(Debug)]
struct ReloadingCertificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    interval: Duration,
    provider: Arc<CryptoProvider>,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Option<(SystemTime, SystemTime)>,
    checked: Instant,
}

impl ReloadingCertificate {
    fn new(
        cert_file: PathBuf,
        key_file: PathBuf,
        interval: Duration,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, String> {
        let stamp = stamp(&cert_file, &key_file);
        let key = load_certified_key(&cert_file, &key_file, &provider)?;
        Ok(Self {
            cert_file,
            key_file,
            interval,
            provider,
            state: Mutex::new(Loaded {
                key,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        // A panic while holding the lock leaves `Loaded` whole (fields are
        // replaced, never half-written), so a poisoned lock is usable.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.checked.elapsed() >= self.interval {
            state.checked = Instant::now();
            let stamp = stamp(&self.cert_file, &self.key_file);
            if stamp.is_some() && stamp != state.stamp {
                match load_certified_key(&self.cert_file, &self.key_file, &self.provider) {
                    Ok(key) => {
                        state.key = key;
                        state.stamp = stamp;
                        tracing::info!(cert_file = %self.cert_file.display(), "reloaded the TLS certificate");
                    }
                    Err(error) => tracing::warn!(
                        %error,
                        "the TLS certificate files changed but do not load; keeping the previous certificate"
                    ),
                }
            }
        }
        Arc::clone(&state.key)
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
