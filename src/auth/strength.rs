//! How strong a configured token must be: at least 128 bits, estimated from
//! its length and the character classes it draws from.

use thiserror::Error;

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
