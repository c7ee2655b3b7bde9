//! A throwaway certificate authority for TLS tests: a CA, server
//! certificates for 127.0.0.1/localhost and client certificates, as PEM
//! files in a temporary directory.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA that issues certificates into its own temporary directory.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub cert_file: PathBuf,
    dir: tempfile::TempDir,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Certificate chain file (leaf only).
    pub cert_file: PathBuf,
    /// Private key file.
    pub key_file: PathBuf,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let cert_file = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, certificate.pem()).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            cert_file,
            dir,
        }
    }

    fn issue(&self, file_name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, file_name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = self.dir.path().join(format!("{file_name}.pem"));
        let key_file = self.dir.path().join(format!("{file_name}-key.pem"));
        std::fs::write(&cert_file, certificate.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Issued {
            cert_file,
            key_file,
        }
    }

    /// A server certificate valid for `localhost` and `127.0.0.1`.
    pub fn server(&self, file_name: &str) -> Issued {
        self.issue(
            file_name,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate for mutual TLS.
    pub fn client(&self, file_name: &str) -> Issued {
        self.issue(
            file_name,
            &["client.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}
