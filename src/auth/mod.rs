//! Bearer-token authentication with per-prefix permissions.
//!
//! Tokens are configured by their SHA-256, never in clear. The hash is
//! unsalted and fast, which is safe only for tokens with at least 128 random
//! bits (`tierkv auth new-token` makes them; `hash-token` refuses weaker ones
//! unless told otherwise, see [`check_token_strength`]): brute-forcing such a
//! hash from a leaked ConfigMap is out of reach, while a human-chosen token
//! would fall to a dictionary. A presented token is hashed and compared with
//! every configured hash in constant time. A token grants `read` and/or
//! `write` on key prefixes, and AdminService calls by permission: `stats`,
//! `migrate`, `backup`, `drop` (`admin`, deprecated, is all four). The
//! tokens in force can be replaced while serving ([`AuthState`]). No
//! transport types here: `crate::server` authenticates each call and
//! `crate::api` asks the [`Principal`] before touching a key.

mod config;
mod grants;
mod strength;

pub use config::{AuthConfig, TokenConfig};
pub use grants::{Access, Permission, Principal};
pub use strength::{check_token_strength, WeakToken, MIN_TOKEN_BITS};

use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(super) type TokenHash = [u8; 32];

/// Checks presented tokens against the configured ones.
#[derive(Debug)]
pub struct Authenticator {
    tokens: Vec<(TokenHash, Arc<Principal>)>,
}

pub(super) fn decode_hex_hash(text: &str) -> Option<TokenHash> {
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
                    "{at}: permissions must name at least one of read, write, stats, migrate, backup, drop"
                ));
            }
            let mut permissions = Vec::new();
            for permission in &token.permissions {
                let parts: &[Permission] = match permission {
                    Permission::Admin => &Permission::ADMIN_PARTS,
                    other => std::slice::from_ref(other),
                };
                for part in parts {
                    if !permissions.contains(part) {
                        permissions.push(*part);
                    }
                }
            }
            let keyed =
                permissions.contains(&Permission::Read) || permissions.contains(&Permission::Write);
            if keyed && token.prefixes.is_empty() {
                return Err(format!(
                    "{at}: read and write need prefixes (\"\" grants every key)"
                ));
            }
            tokens.push((
                hash,
                Arc::new(Principal {
                    name: token.name.clone(),
                    prefixes: token.prefixes.clone(),
                    permissions,
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
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(Arc::clone(principal));
            }
        }
        found
    }
}

/// The tokens in force, replaceable while serving. Every call reads the
/// current [`Authenticator`], so a token revoked by a reload is refused on
/// its next call, even on a connection opened before it; calls already past
/// authentication finish undisturbed.
#[derive(Debug)]
pub struct AuthState {
    current: RwLock<Option<Arc<Authenticator>>>,
}

impl AuthState {
    /// The state for `config` (authentication off without tokens).
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        Ok(Self {
            current: RwLock::new(Authenticator::new(config)?.map(Arc::new)),
        })
    }

    /// The authenticator in force, or `None` while authentication is off.
    pub fn current(&self) -> Option<Arc<Authenticator>> {
        // Writers only swap the whole value, so a poisoned lock holds a whole one.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts the tokens of `config` in force; returns how many there are.
    ///
    /// Refused, keeping the tokens in force, when `config` is invalid or has
    /// no token while some are in force: a reload that empties `[auth]` (a
    /// truncated or half-written file, say) must not open the server to
    /// anyone; turning authentication off takes a restart.
    pub fn reload(&self, config: &AuthConfig) -> Result<usize, String> {
        let next = Authenticator::new(config)?.map(Arc::new);
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if next.is_none() && current.is_some() {
            return Err(
                "[auth] configures no token: a reload does not turn authentication off (restart for that)"
                    .into(),
            );
        }
        let count = next.as_ref().map_or(0, |next| next.tokens.len());
        *current = next;
        Ok(count)
    }
}

#[cfg(test)]
mod tests;
