//! `[auth]` in the configuration: the tokens and their grants.

use super::{decode_hex_hash, Permission, TokenHash};
use serde::Deserialize;
use std::path::PathBuf;

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
    /// What it may do there: `read`, `write`; and AdminService calls:
    /// `stats`, `migrate`, `backup`, `drop` (`admin`, deprecated: all four).
    pub permissions: Vec<Permission>,
}

/// `[auth]`: authentication is on when at least one token is configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The tokens that may call the server.
    pub tokens: Vec<TokenConfig>,
}

impl AuthConfig {
    /// Names of the tokens granted the deprecated `admin` permission, for a
    /// warning naming its replacements.
    pub fn deprecated_admin_tokens(&self) -> Vec<&str> {
        self.tokens
            .iter()
            .filter(|token| token.permissions.contains(&Permission::Admin))
            .map(|token| token.name.as_str())
            .collect()
    }
}

impl TokenConfig {
    /// The token's SHA-256, from `token_sha256` or from `token_sha256_file`
    /// (surrounding whitespace ignored). Errors never quote the file.
    pub(super) fn sha256(&self) -> Result<TokenHash, String> {
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
