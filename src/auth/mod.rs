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

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

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
    /// Read-only figures: AdminService `Stats`, `ListNamespaces`,
    /// `GetMigration`.
    Stats,
    /// Run batch migrations: AdminService `Migrate` (and `GetMigration`).
    Migrate,
    /// Take backups: AdminService `Backup`.
    Backup,
    /// Destroy data: AdminService `DropNamespace`.
    Drop,
    /// Deprecated: `stats`, `migrate`, `backup` and `drop` together, as the
    /// single AdminService permission of earlier versions meant; accepted
    /// so existing configurations keep working, with a warning at start.
    Admin,
}

impl Permission {
    /// The permission as configured, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Stats => "stats",
            Permission::Migrate => "migrate",
            Permission::Backup => "backup",
            Permission::Drop => "drop",
            Permission::Admin => "admin",
        }
    }

    /// What `admin` stands for.
    pub const ADMIN_PARTS: [Permission; 4] = [
        Permission::Stats,
        Permission::Migrate,
        Permission::Backup,
        Permission::Drop,
    ];
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
    /// The permissions held, `admin` expanded into its parts.
    permissions: Vec<Permission>,
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

    /// Whether the token holds `permission` (`admin`: all of its parts).
    pub fn has(&self, permission: Permission) -> bool {
        match permission {
            Permission::Admin => Permission::ADMIN_PARTS
                .iter()
                .all(|part| self.permissions.contains(part)),
            other => self.permissions.contains(&other),
        }
    }

    fn holds(&self, access: Access) -> bool {
        self.has(match access {
            Access::Read => Permission::Read,
            Access::Write => Permission::Write,
        })
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

/// The fewest bits of entropy a token must carry to be stored as an
/// unsalted SHA-256.
pub const MIN_TOKEN_BITS: f64 = 128.0;

/// Characters of a bearer token (RFC 6750 `b64token`): what generated
/// tokens (base64, base64url, hex) are made of.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/' | '=')
}

/// Why a token is too weak to be stored as an unsalted hash.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum WeakToken {
    /// Nothing to hash.
    #[error("the token is empty")]
    Empty,
    /// Spaces, punctuation or non-ASCII characters: a passphrase or password,
    /// not a generated token.
    #[error("it has characters generated tokens never have (they use letters, digits and - . _ ~ + / =); it looks chosen by a person")]
    UnusualCharacters,
    /// Too short for its alphabet.
    #[error("its length and alphabet allow at most {bits:.0} bits; at least {min:.0} are needed", min = MIN_TOKEN_BITS)]
    TooShort {
        /// Length times the bits of one character of its alphabet.
        bits: f64,
    },
    /// Few distinct characters, or some very frequent.
    #[error("it repeats characters too often (about {bits:.0} bits by character frequency)")]
    Repetitive {
        /// Length times the entropy of its character frequencies.
        bits: f64,
    },
    /// A repeated sequence (`abcabc…`, `passwordpassword…`).
    #[error("it repeats a pattern ({distinct} different pairs of neighbouring characters out of {pairs})")]
    Patterned {
        /// Distinct pairs of neighbouring characters.
        distinct: usize,
        /// All pairs.
        pairs: usize,
    },
}

/// A test of whether a byte belongs to a class of characters.
type CharacterClass = fn(&u8) -> bool;

/// Whether `token` looks like one with at least [`MIN_TOKEN_BITS`] random
/// bits. A heuristic that errs towards refusing: short tokens, characters
/// outside the bearer-token alphabet, repeated characters or patterns are
/// refused. It cannot tell a long run of dictionary words from random
/// letters; generate tokens (`tierkv auth new-token`) rather than choose them.
pub fn check_token_strength(token: &str) -> Result<(), WeakToken> {
    if token.is_empty() {
        return Err(WeakToken::Empty);
    }
    if !token.chars().all(is_token_char) {
        return Err(WeakToken::UnusualCharacters);
    }
    // ASCII only from here: one byte per character.
    let bytes = token.as_bytes();
    let length = bytes.len() as f64;
    let alphabet = if bytes.iter().all(u8::is_ascii_digit) {
        10
    } else if bytes.iter().all(u8::is_ascii_hexdigit)
        && !(bytes.iter().any(u8::is_ascii_lowercase) && bytes.iter().any(u8::is_ascii_uppercase))
    {
        16
    } else {
        let classes: [(CharacterClass, u32); 4] = [
            (u8::is_ascii_lowercase, 26),
            (u8::is_ascii_uppercase, 26),
            (u8::is_ascii_digit, 10),
            (|c| !c.is_ascii_alphanumeric(), 7),
        ];
        classes
            .iter()
            .filter(|(class, _)| bytes.iter().any(class))
            .map(|(_, size)| size)
            .sum()
    };
    let bits = length * f64::from(alphabet).log2();
    if bits < MIN_TOKEN_BITS {
        return Err(WeakToken::TooShort { bits });
    }
    let mut counts = [0u32; 128];
    for &byte in bytes {
        counts[usize::from(byte)] += 1;
    }
    let frequency_bits: f64 = counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = f64::from(count) / length;
            -p * p.log2() * length
        })
        .sum();
    // Random tokens of 128 bits score 70 or more (22 base64 characters at
    // their least varied); `aaaa…` scores 0, `abab…` one bit per character.
    if frequency_bits < MIN_TOKEN_BITS / 2.0 {
        return Err(WeakToken::Repetitive {
            bits: frequency_bits,
        });
    }
    let pairs = bytes.len() - 1;
    let distinct = bytes
        .windows(2)
        .collect::<std::collections::HashSet<_>>()
        .len();
    // Random tokens repeat few neighbouring pairs; a repeated word or run
    // repeats most of them.
    if (distinct as f64) < 0.6 * pairs as f64 {
        return Err(WeakToken::Patterned { distinct, pairs });
    }
    Ok(())
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
        assert!(!orders.has(Permission::Stats));
        let reader = auth.authenticate("s2").unwrap();
        assert!(reader.may(Access::Read, "user:1"));
        assert!(!reader.may(Access::Write, "user:1"));
        assert!(!reader.may_all_under(Access::Read, "us"));
        assert!(reader.may_all_under(Access::Read, "user:1"));
        let ops = auth.authenticate("s3").unwrap();
        for part in Permission::ADMIN_PARTS {
            assert!(ops.has(part), "admin means {part:?}");
        }
        assert!(ops.has(Permission::Admin));
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

    /// Each AdminService permission stands alone; `admin` is all four.
    #[test]
    fn admin_permissions_are_split() {
        let auth = Authenticator::new(&config(vec![
            token("monitoring", "m", &[], &[Permission::Stats]),
            token("dropper", "d", &[], &[Permission::Drop, Permission::Backup]),
        ]))
        .unwrap()
        .unwrap();
        let monitoring = auth.authenticate("m").unwrap();
        assert!(monitoring.has(Permission::Stats));
        for other in [
            Permission::Migrate,
            Permission::Backup,
            Permission::Drop,
            Permission::Admin,
        ] {
            assert!(!monitoring.has(other), "{other:?}");
        }
        let dropper = auth.authenticate("d").unwrap();
        assert!(dropper.has(Permission::Drop) && dropper.has(Permission::Backup));
        assert!(!dropper.has(Permission::Stats));
        let parsed: AuthConfig = toml::from_str(
            "[[tokens]]\nname = \"a\"\ntoken_sha256 = \"00\"\npermissions = [\"stats\", \"admin\"]\n",
        )
        .unwrap();
        assert_eq!(parsed.deprecated_admin_tokens(), vec!["a"]);
    }

    /// A reload replaces the tokens at once, keeps them when the new
    /// configuration is invalid, and never turns authentication off.
    #[test]
    fn reloads_swap_tokens_and_never_turn_authentication_off() {
        let state = AuthState::new(&config(vec![token(
            "a",
            "s1",
            &["x:"],
            &[Permission::Read],
        )]))
        .unwrap();
        let before = state.current().unwrap();
        assert_eq!(
            state
                .reload(&config(vec![token(
                    "b",
                    "s2",
                    &["x:"],
                    &[Permission::Read]
                )]))
                .unwrap(),
            1
        );
        let after = state.current().unwrap();
        assert!(after.authenticate("s1").is_none() && after.authenticate("s2").is_some());
        assert!(
            before.authenticate("s1").is_some(),
            "a call holding the old one finishes"
        );
        let mut bad = token("c", "s3", &["x:"], &[Permission::Read]);
        bad.token_sha256 = "nope".into();
        assert!(state.reload(&config(vec![bad])).is_err());
        let error = state.reload(&AuthConfig::default()).unwrap_err();
        assert!(
            error.contains("does not turn authentication off"),
            "{error}"
        );
        assert!(state.current().unwrap().authenticate("s2").is_some());
        // Off at start, a reload may turn it on.
        let off = AuthState::new(&AuthConfig::default()).unwrap();
        assert!(off.current().is_none());
        off.reload(&config(vec![token(
            "d",
            "s4",
            &["x:"],
            &[Permission::Read],
        )]))
        .unwrap();
        assert!(off.current().is_some());
    }

    /// Generated tokens pass the strength check; short, repetitive,
    /// patterned and human-looking ones do not.
    #[test]
    fn token_strength() {
        for _ in 0..1000 {
            let token = new_token();
            assert_eq!(check_token_strength(&token), Ok(()), "{token}");
        }
        for strong in [
            "3f9a0c41d2e87b65a0f1c93e4d5b2a77",
            "3F9A0C41D2E87B65A0F1C93E4D5B2A7786E1F0C9",
            "q3Zr8Tb1xW0vLk9PfE2hYc+/mN7sJd4u",
        ] {
            assert_eq!(check_token_strength(strong), Ok(()), "{strong}");
        }
        let weak = |token: &str| check_token_strength(token).unwrap_err();
        assert_eq!(weak(""), WeakToken::Empty);
        assert_eq!(
            weak("correct horse battery staple"),
            WeakToken::UnusualCharacters
        );
        assert_eq!(
            weak("naïve-token-naïve-token-naïve-token"),
            WeakToken::UnusualCharacters
        );
        assert!(matches!(weak("hunter2"), WeakToken::TooShort { .. }));
        assert!(matches!(
            weak("0123456789abcdef"),
            WeakToken::TooShort { .. }
        ));
        assert!(matches!(
            weak(&"a".repeat(64)),
            WeakToken::Repetitive { .. }
        ));
        assert!(matches!(
            weak(&"ab".repeat(20)),
            WeakToken::Repetitive { .. }
        ));
        assert!(matches!(
            weak("passwordpasswordpassword1234567890"),
            WeakToken::Patterned { .. }
        ));
        assert!(weak("hunter2").to_string().contains("128"));
    }
}
