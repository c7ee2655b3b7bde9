//! Opaque, tamper-evident page tokens.
//!
//! A token is `base64url(version ‖ last_key ‖ tag)` where `tag` is a truncated
//! HMAC-SHA256 over the version, the listing's prefix and the last key, keyed
//! with the store's persisted secret. The prefix is bound by the tag but not
//! carried, so a token reused with another prefix fails verification; the
//! secret lives with the data, so tokens survive restarts and work on every
//! server over the same store.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

const TOKEN_VERSION: u8 = 1;
const TAG_LEN: usize = 16;

/// A page token that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PageTokenError {
    /// Not something this server issued.
    #[error(
        "page_token is malformed; pass back the next_page_token of the previous page unchanged"
    )]
    Malformed,
    /// Altered, or issued for a listing with another prefix.
    #[error("page_token was altered or belongs to a listing with another prefix")]
    Mismatch,
}

fn mac(secret: &[u8], prefix: &str, last_key: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(&[TOKEN_VERSION]);
    mac.update(&(prefix.len() as u64).to_le_bytes());
    mac.update(prefix.as_bytes());
    mac.update(last_key);
    mac
}

fn tag(secret: &[u8], prefix: &str, last_key: &[u8]) -> [u8; TAG_LEN] {
    let full = mac(secret, prefix, last_key).finalize().into_bytes();
    let mut truncated = [0u8; TAG_LEN];
    truncated.copy_from_slice(&full[..TAG_LEN]);
    truncated
}

/// A token resuming a listing of `prefix` after `last_key`.
pub fn encode(secret: &[u8], prefix: &str, last_key: &str) -> String {
    let mut raw = Vec::with_capacity(1 + last_key.len() + TAG_LEN);
    raw.push(TOKEN_VERSION);
    raw.extend_from_slice(last_key.as_bytes());
    raw.extend_from_slice(&tag(secret, prefix, last_key.as_bytes()));
    URL_SAFE_NO_PAD.encode(raw)
}

/// The key a token resumes after, if the token is genuine and for `prefix`.
pub fn decode(secret: &[u8], prefix: &str, token: &str) -> Result<String, PageTokenError> {
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| PageTokenError::Malformed)?;
    if raw.len() < 1 + TAG_LEN || raw[0] != TOKEN_VERSION {
        return Err(PageTokenError::Malformed);
    }
    let (body, received_tag) = raw.split_at(raw.len() - TAG_LEN);
    let last_key = &body[1..];
    mac(secret, prefix, last_key)
        .verify_truncated_left(received_tag)
        .map_err(|_| PageTokenError::Mismatch)?;
    String::from_utf8(last_key.to_vec()).map_err(|_| PageTokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token round-trips, and fails for another prefix, another secret or any flipped bit.
    #[test]
    fn tokens_are_tamper_evident() {
        let token = encode(b"secret", "user:", "user:42");
        assert_eq!(decode(b"secret", "user:", &token).unwrap(), "user:42");
        assert_eq!(
            decode(b"secret", "user", &token),
            Err(PageTokenError::Mismatch)
        );
        assert_eq!(
            decode(b"other", "user:", &token),
            Err(PageTokenError::Mismatch)
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for index in 1..raw.len() {
            raw[index] ^= 1;
            let altered = URL_SAFE_NO_PAD.encode(&raw);
            assert!(
                decode(b"secret", "user:", &altered).is_err(),
                "bit flip at {index}"
            );
            raw[index] ^= 1;
        }
        assert_eq!(
            decode(b"secret", "user:", "!!!"),
            Err(PageTokenError::Malformed)
        );
        assert_eq!(
            decode(b"secret", "user:", "AQ"),
            Err(PageTokenError::Malformed)
        );
    }
}
