//! Session ids and bearer tokens.
//!
//! A token is `<session_id>.<secret>`: the id (16 random bytes) lets the
//! server find the session with one point read, the secret (32 random bytes)
//! proves possession. Both come from the operating system's CSPRNG and are
//! URL-safe base64 without padding. Only SHA-256 of the secret is stored, so a
//! copy of the database yields no usable token; since the secret is 256
//! random bits, a plain hash (no salt, no key stretching) is enough.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Random bytes in a session id.
const SESSION_ID_BYTES: usize = 16;
/// Random bytes in a token's secret.
const SECRET_BYTES: usize = 32;
/// Length of an encoded session id.
pub const SESSION_ID_LEN: usize = 22;
/// Length of an encoded secret.
const SECRET_LEN: usize = 43;

/// SHA-256 of a token's secret.
pub type SecretHash = [u8; 32];

/// A bearer token. Its `Debug` form is redacted so that it cannot reach a log
/// line by accident; read it with [`Token::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token's text, to hand to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The token's text, to hand to the client.
    pub fn into_exposed(self) -> String {
        self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A new session's id, its first token and the hash to store.
pub struct Issued {
    /// The session id.
    pub session_id: String,
    /// The token for the client.
    pub token: Token,
    /// What the server stores.
    pub secret_hash: SecretHash,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS generator failing is a broken system; there is nothing safe to
    // fall back to, so it is fatal rather than a weak token.
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
    bytes
}

/// A fresh session id and token.
pub fn issue() -> Issued {
    // Never starting with `-` (one id in 64 would): command-line tools take
    // such an argument for an option unless told otherwise (ours is told, see
    // cli::session). Drawing again costs a 64th of a bit.
    let session_id = loop {
        let session_id = URL_SAFE_NO_PAD.encode(random_bytes::<SESSION_ID_BYTES>());
        if !session_id.starts_with('-') {
            break session_id;
        }
    };
    reissue(session_id)
}

/// A fresh token for an existing session id.
pub fn reissue(session_id: String) -> Issued {
    let secret = random_bytes::<SECRET_BYTES>();
    let encoded_secret = URL_SAFE_NO_PAD.encode(secret);
    let token = Token(format!("{session_id}.{encoded_secret}"));
    Issued {
        session_id,
        token,
        secret_hash: Sha256::digest(secret).into(),
    }
}

/// Whether `session_id` has the shape of an id this server issues.
pub fn is_session_id(session_id: &str) -> bool {
    // base64's decoder wants room for its estimate (18 bytes for 22
    // characters); a stack buffer keeps the hot path free of allocations.
    let mut bytes = [0u8; SESSION_ID_BYTES + 2];
    session_id.len() == SESSION_ID_LEN
        && URL_SAFE_NO_PAD
            .decode_slice(session_id, &mut bytes)
            .is_ok_and(|length| length == SESSION_ID_BYTES)
}

/// Decodes a token's secret part into a stack buffer.
fn decode_secret(secret: &str) -> Option<[u8; SECRET_BYTES]> {
    if secret.len() != SECRET_LEN {
        return None;
    }
    // Room for the decoder's estimate (33 bytes for 43 characters).
    let mut bytes = [0u8; SECRET_BYTES + 1];
    match URL_SAFE_NO_PAD.decode_slice(secret, &mut bytes) {
        Ok(SECRET_BYTES) => {
            let mut secret = [0u8; SECRET_BYTES];
            secret.copy_from_slice(&bytes[..SECRET_BYTES]);
            Some(secret)
        }
        _ => None,
    }
}

/// A token taken apart: the session id and the hash of the presented secret.
pub struct Presented<'a> {
    /// The session id part.
    pub session_id: &'a str,
    /// SHA-256 of the secret part.
    pub secret_hash: SecretHash,
}

/// Splits a token; `None` when it does not have the shape of one. Hashes
/// something either way, so a malformed token costs what a real one does.
pub fn parse(token: &str) -> Option<Presented<'_>> {
    let parts = token
        .split_once('.')
        .filter(|(id, secret)| is_session_id(id) && secret.len() == SECRET_LEN);
    let secret = parts.and_then(|(_, secret)| decode_secret(secret));
    let secret_hash: SecretHash = Sha256::digest(secret.unwrap_or([0u8; SECRET_BYTES])).into();
    match (parts, secret) {
        (Some((session_id, _)), Some(_)) => Some(Presented {
            session_id,
            secret_hash,
        }),
        _ => None,
    }
}

/// Compares two hashes in time independent of where they differ.
pub fn hashes_equal(left: &SecretHash, right: &SecretHash) -> bool {
    bool::from(left.ct_eq(right))
}

/// Encodes a stored hash.
pub fn encode_hash(hash: &SecretHash) -> String {
    URL_SAFE_NO_PAD.encode(hash)
}

/// Decodes a stored hash.
pub fn decode_hash(text: &str) -> Option<SecretHash> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| SecretHash::try_from(bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issued tokens parse back to their id and hash; tampering does not.
    #[test]
    fn tokens_round_trip_and_resist_tampering() {
        let issued = issue();
        assert!(is_session_id(&issued.session_id));
        let text = issued.token.expose().to_string();
        assert_eq!(text.len(), SESSION_ID_LEN + 1 + SECRET_LEN);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        let presented = parse(&text).expect("parses");
        assert_eq!(presented.session_id, issued.session_id);
        assert!(hashes_equal(&presented.secret_hash, &issued.secret_hash));

        let mut tampered = text.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let presented = parse(&tampered).expect("still well-formed");
        assert!(!hashes_equal(&presented.secret_hash, &issued.secret_hash));

        for bad in [
            "",
            ".",
            "abc",
            "a.b",
            &text[1..],
            &format!("{text}x"),
            &format!("{text}.x"),
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(format!("{:?}", issued.token), "Token(<redacted>)");
        assert_eq!(
            decode_hash(&encode_hash(&issued.secret_hash)),
            Some(issued.secret_hash)
        );
    }

    /// Two issues never collide (a smoke test of the generator's use), and
    /// none starts with `-`.
    #[test]
    fn issues_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let issued = issue();
            // A leading `-` would be an option to a command line (1 in 64
            // ids did; 1000 issues would show one with near certainty).
            assert!(!issued.session_id.starts_with('-'), "{}", issued.session_id);
            assert!(seen.insert(issued.session_id));
            assert!(seen.insert(issued.token.into_exposed()));
        }
    }
}
