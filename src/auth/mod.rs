//! Bearer-token authentication with per-prefix permissions.
//!
//! Tokens are configured by their SHA-256, never in clear, so a leaked
//! configuration file or ConfigMap grants nothing. A presented token is
//! hashed and compared with every configured hash in constant time. A token
//! grants `read` and/or `write` on key prefixes, and may grant `admin`
//! (AdminService). No transport types here: `crate::server` authenticates
//! each call and `crate::api` asks the [`Principal`] before touching a key.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a call does to a key or prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Get, BatchGet, List, CacheService Get...
    Read,
    /// Put, Delete, BatchWrite, cache Put/Invalidate/Purge... (Patch needs
    /// both read and write: it returns the whole value).
    Write,
}

impl Access {
    /// The verb, for messages.
    pub fn verb(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// A permission a token may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Read keys under the token's prefixes.
    Read,
    /// Write keys under the token's prefixes.
    Write,
    /// Call AdminService.
    Admin,
}

/// One configured token (`[[auth.tokens]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and messages (never the token).
    pub name: String,
    /// SHA-256 of the token, 64 hex digits (`tierkv auth hash-token`).
    #[serde(default)]
    pub token_sha256: String,
    /// A file holding `token_sha256` instead (a mounted Kubernetes Secret),
    /// so the configuration itself carries no credential material; read
    /// whenever the tokens are loaded. Exactly one of the two is set.
    #[serde(default)]
    pub token_sha256_file: Option<PathBuf>,
    /// Key prefixes the token may read and/or write; `""` is every key.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// What it may do there: `read`, `write`; `admin` for AdminService.
    pub permissions: Vec<Permission>,
}

/// `[auth]`: authentication is on when at least one token is configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The tokens that may call the server.
    pub tokens: Vec<TokenConfig>,
}

type TokenHash = [u8; 32];

impl TokenConfig {
    /// The token's SHA-256, from `token_sha256` or from `token_sha256_file`
    /// (surrounding whitespace ignored). Errors never quote the file.
    fn sha256(&self) -> Result<TokenHash, String> {
        let (text, source) = match (&self.token_sha256_file, self.token_sha256.is_empty()) {
            (None, false) => (self.token_sha256.clone(), "token_sha256".to_string()),
            (Some(path), true) => (
                std::fs::read_to_string(path)
                    .map_err(|error| format!("token_sha256_file {}: {error}", path.display()))?,
                format!("token_sha256_file {}", path.display()),
            ),
            (None, true) => return Err("set token_sha256 or token_sha256_file".into()),
            (Some(_), false) => {
                return Err("set token_sha256 or token_sha256_file, not both".into())
            }
        };
        decode_hex_hash(&text).ok_or_else(|| {
            format!("{source} must hold 64 hex digits (the SHA-256 of the token; `tierkv auth hash-token` prints it)")
        })
    }
}

/// Who a call is: the name of its token and what the token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's configured name.
    pub name: String,
    prefixes: Vec<String>,
    read: bool,
    write: bool,
    admin: bool,
}

impl Principal {
    /// Whether the token may `access` `key`.
    pub fn may(&self, access: Access, key: &str) -> bool {
        self.holds(access)
            && self
                .prefixes
                .iter()
                .any(|prefix| key.starts_with(prefix.as_str()))
    }

    /// Whether the token may `access` every key that starts with `prefix`
    /// (a listing or purge of `prefix` touches only keys it was granted).
    pub fn may_all_under(&self, access: Access, prefix: &str) -> bool {
        self.may(access, prefix)
    }

    /// Whether the token may call AdminService.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    fn holds(&self, access: Access) -> bool {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
        }
    }

    /// The prefixes granted, for messages.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }
}

/// Checks presented tokens against the configured ones.
#[derive(Debug)]
pub struct Authenticator {
    tokens: Vec<(TokenHash, Arc<Principal>)>,
}

fn decode_hex_hash(text: &str) -> Option<TokenHash> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(hash)
}

/// SHA-256 of a token, as the 64 hex digits `token_sha256` takes.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A new random token: 32 bytes from the OS generator, URL-safe base64.
pub fn new_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "tkv_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

impl Authenticator {
    /// The authenticator for `config`, or `None` when no token is
    /// configured (authentication off). Errors name the offending token.
    pub fn new(config: &AuthConfig) -> Result<Option<Self>, String> {
        if config.tokens.is_empty() {
            return Ok(None);
        }
        let mut tokens: Vec<(TokenHash, Arc<Principal>)> = Vec::new();
        for (index, token) in config.tokens.iter().enumerate() {
            let at = format!("auth.tokens[{index}] ({:?})", token.name);
            if token.name.trim().is_empty() {
                return Err(format!("auth.tokens[{index}]: name must not be empty"));
            }
            let hash = token.sha256().map_err(|error| format!("{at}: {error}"))?;
            if tokens.iter().any(|(existing, _)| *existing == hash) {
                return Err(format!("{at}: the same token is configured twice"));
            }
            if token.permissions.is_empty() {
                return Err(format!(
                    "{at}: permissions must name at least one of read, write, admin"
                ));
            }
            let read = token.permissions.contains(&Permission::Read);
            let write = token.permissions.contains(&Permission::Write);
            if (read || write) && token.prefixes.is_empty() {
                return Err(format!(
                    "{at}: read and write need prefixes (\"\" grants every key)"
                ));
            }
            tokens.push((
                hash,
                Arc::new(Principal {
                    name: token.name.clone(),
                    prefixes: token.prefixes.clone(),
                    read,
                    write,
                    admin: token.permissions.contains(&Permission::Admin),
                }),
            ));
        }
        Ok(Some(Self { tokens }))
    }

    /// The principal of `token`, if it is a configured one. Compares the
    /// hash with every configured hash, in time independent of the token.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Principal>> {
        let presented: TokenHash = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, principal) in &self.tokens {
            if crate::session::token::hashes_equal(hash, &presented) {
                found = Some(Arc::clone(principal));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tokens: Vec<TokenConfig>) -> AuthConfig {
        AuthConfig { tokens }
    }

    fn token(
        name: &str,
        secret: &str,
        prefixes: &[&str],
        permissions: &[Permission],
    ) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            token_sha256: hash_token(secret),
            token_sha256_file: None,
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            permissions: permissions.to_vec(),
        }
    }

    /// Grants are by prefix and permission; unknown tokens get nothing.
    #[test]
    fn grants_by_prefix_and_permission() {
        let auth = Authenticator::new(&config(vec![
            token(
                "orders",
                "s1",
                &["orders:", "user:"],
                &[Permission::Read, Permission::Write],
            ),
            token("reader", "s2", &["user:"], &[Permission::Read]),
            token("ops", "s3", &[], &[Permission::Admin]),
        ]))
        .unwrap()
        .unwrap();
        let orders = auth.authenticate("s1").unwrap();
        assert!(orders.may(Access::Write, "orders:1"));
        assert!(orders.may(Access::Read, "user:9"));
        assert!(!orders.may(Access::Read, "session:x"));
        assert!(!orders.is_admin());
        let reader = auth.authenticate("s2").unwrap();
        assert!(reader.may(Access::Read, "user:1"));
        assert!(!reader.may(Access::Write, "user:1"));
        assert!(!reader.may_all_under(Access::Read, "us"));
        assert!(reader.may_all_under(Access::Read, "user:1"));
        let ops = auth.authenticate("s3").unwrap();
        assert!(ops.is_admin());
        assert!(!ops.may(Access::Read, "user:1"));
        assert!(auth.authenticate("s4").is_none());
        assert!(auth.authenticate("").is_none());
    }

    /// No tokens: authentication is off; bad configurations are refused by name.
    #[test]
    fn configuration_is_validated() {
        assert!(Authenticator::new(&AuthConfig::default())
            .unwrap()
            .is_none());
        let mut bad_hash = token("a", "s", &["x:"], &[Permission::Read]);
        bad_hash.token_sha256 = "abc".into();
        let error = Authenticator::new(&config(vec![bad_hash])).unwrap_err();
        assert!(
            error.contains("auth.tokens[0]") && error.contains("64 hex"),
            "{error}"
        );
        let error = Authenticator::new(&config(vec![
            token("a", "s", &["x:"], &[Permission::Read]),
            token("b", "s", &["y:"], &[Permission::Read]),
        ]))
        .unwrap_err();
        assert!(error.contains("twice"), "{error}");
        let error = Authenticator::new(&config(vec![token("a", "s", &[], &[Permission::Write])]))
            .unwrap_err();
        assert!(error.contains("need prefixes"), "{error}");
        let error = Authenticator::new(&config(vec![token("a", "s", &["x:"], &[])])).unwrap_err();
        assert!(error.contains("permissions"), "{error}");
    }

    /// `token_sha256_file` reads the hash from a file (a mounted Secret);
    /// exactly one of it and `token_sha256` is set, and a bad file is named
    /// without quoting what it holds.
    #[test]
    fn token_hash_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sha256");
        std::fs::write(&path, format!("{}\n", hash_token("s1"))).unwrap();
        let mut from_file = token("app", "s1", &["x:"], &[Permission::Read]);
        from_file.token_sha256 = String::new();
        from_file.token_sha256_file = Some(path.clone());
        let auth = Authenticator::new(&config(vec![from_file.clone()]))
            .unwrap()
            .unwrap();
        assert_eq!(auth.authenticate("s1").unwrap().name, "app");
        assert!(auth.authenticate("s2").is_none());

        std::fs::write(&path, "not-a-hash-but-a-secret").unwrap();
        let error = Authenticator::new(&config(vec![from_file.clone()])).unwrap_err();
        assert!(
            error.contains("auth.tokens[0]")
                && error.contains("app.sha256")
                && error.contains("64 hex"),
            "{error}"
        );
        assert!(!error.contains("not-a-hash"), "{error}");

        let mut missing = from_file.clone();
        missing.token_sha256_file = Some(dir.path().join("absent"));
        let error = Authenticator::new(&config(vec![missing])).unwrap_err();
        assert!(error.contains("absent"), "{error}");

        let mut both = from_file.clone();
        both.token_sha256 = hash_token("s1");
        let error = Authenticator::new(&config(vec![both])).unwrap_err();
        assert!(error.contains("not both"), "{error}");
        let mut neither = from_file;
        neither.token_sha256_file = None;
        let error = Authenticator::new(&config(vec![neither])).unwrap_err();
        assert!(
            error.contains("token_sha256 or token_sha256_file"),
            "{error}"
        );
    }

    /// The hash matches the standard SHA-256 of the token.
    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(new_token().starts_with("tkv_"));
        assert_ne!(new_token(), new_token());
    }
}
