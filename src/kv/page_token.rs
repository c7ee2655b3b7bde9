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

/// Version 1 carried the last key only; version 2 also the listing's
/// position (the first page's snapshot), so every page reports it.
const TOKEN_V1: u8 = 1;
const TOKEN_VERSION: u8 = 2;
const TAG_LEN: usize = 16;
const POSITION_LEN: usize = 8;

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

/// What a page token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    /// The key the next page starts after.
    pub last_key: String,
    /// The listing's position (its first page's snapshot sequence); `None`
    /// in a token of a server before positions.
    pub position: Option<u64>,
}

fn mac(secret: &[u8], version: u8, prefix: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(&[version]);
    mac.update(&(prefix.len() as u64).to_le_bytes());
    mac.update(prefix.as_bytes());
    mac.update(body);
    mac
}

/// A token resuming a listing of `prefix` after `last_key`, read at `position`.
pub fn encode(secret: &[u8], prefix: &str, last_key: &str, position: u64) -> String {
    let mut raw = Vec::with_capacity(1 + POSITION_LEN + last_key.len() + TAG_LEN);
    raw.push(TOKEN_VERSION);
    raw.extend_from_slice(&position.to_le_bytes());
    raw.extend_from_slice(last_key.as_bytes());
    let full = mac(secret, TOKEN_VERSION, prefix, &raw[1..])
        .finalize()
        .into_bytes();
    raw.extend_from_slice(&full[..TAG_LEN]);
    URL_SAFE_NO_PAD.encode(raw)
}

/// What a token carries, if the token is genuine and for `prefix`.
pub fn decode(secret: &[u8], prefix: &str, token: &str) -> Result<PageToken, PageTokenError> {
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| PageTokenError::Malformed)?;
    let version = *raw.first().ok_or(PageTokenError::Malformed)?;
    let header = match version {
        TOKEN_V1 => 0,
        TOKEN_VERSION => POSITION_LEN,
        _ => return Err(PageTokenError::Malformed),
    };
    if raw.len() < 1 + header + TAG_LEN {
        return Err(PageTokenError::Malformed);
    }
    let (body, received_tag) = raw.split_at(raw.len() - TAG_LEN);
    let body = &body[1..];
    mac(secret, version, prefix, body)
        .verify_truncated_left(received_tag)
        .map_err(|_| PageTokenError::Mismatch)?;
    let (position, last_key) = body.split_at(header);
    let position = (header == POSITION_LEN).then(|| {
        let mut bytes = [0u8; POSITION_LEN];
        bytes.copy_from_slice(position);
        u64::from_le_bytes(bytes)
    });
    let last_key = String::from_utf8(last_key.to_vec()).map_err(|_| PageTokenError::Malformed)?;
    Ok(PageToken { last_key, position })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token round-trips, and fails for another prefix, another secret or any flipped bit.
    #[test]
    fn tokens_are_tamper_evident() {
        let token = encode(b"secret", "user:", "user:42", 77);
        assert_eq!(
            decode(b"secret", "user:", &token).unwrap(),
            PageToken {
                last_key: "user:42".into(),
                position: Some(77)
            }
        );
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

    /// A token of a server before positions (version 1) still resumes,
    /// without a position.
    #[test]
    fn version_one_tokens_still_decode() {
        let mut raw = vec![TOKEN_V1];
        raw.extend_from_slice(b"user:42");
        let full = mac(b"secret", TOKEN_V1, "user:", b"user:42")
            .finalize()
            .into_bytes();
        raw.extend_from_slice(&full[..TAG_LEN]);
        let token = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            decode(b"secret", "user:", &token).unwrap(),
            PageToken {
                last_key: "user:42".into(),
                position: None
            }
        );
    }
}
