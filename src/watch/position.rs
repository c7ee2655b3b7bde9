//! The text form of a position clients see: `"<history id as 16 hex>-<sequence>"`.
//! Opaque to clients; it names the history so that a position of a lost,
//! rewound or restored store is refused instead of answered with the wrong
//! events.

use std::fmt;

/// A point in one store's history of commits: everything up to `sequence`
/// has been delivered (or read, for a List).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// Which history: changes when the store's history is lost or rewound.
    pub history_id: u64,
    /// A commit sequence of that history.
    pub sequence: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.history_id, self.sequence)
    }
}

/// Most characters of a position's text: 16 + 1 + 20.
const MAX_TEXT: usize = 37;

impl Position {
    /// Parses the text form; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Position> {
        if text.len() > MAX_TEXT {
            return None;
        }
        let (id, sequence) = text.split_once('-')?;
        if id.len() != 16
            || !id.bytes().all(|byte| byte.is_ascii_hexdigit())
            || sequence.is_empty()
            || !sequence.bytes().all(|byte| byte.is_ascii_digit())
        {
            return None;
        }
        Some(Position {
            history_id: u64::from_str_radix(id, 16).ok()?,
            sequence: sequence.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A position round-trips through its text; anything else is refused.
    #[test]
    fn text_form_round_trips_and_refuses_garbage() {
        let position = Position {
            history_id: 0xdead_beef_0000_0001,
            sequence: 42,
        };
        assert_eq!(position.to_string(), "deadbeef00000001-42");
        assert_eq!(Position::parse("deadbeef00000001-42"), Some(position));
        let max = Position {
            history_id: u64::MAX,
            sequence: u64::MAX,
        };
        assert_eq!(Position::parse(&max.to_string()), Some(max));
        for bad in [
            "",
            "42",
            "deadbeef-42",
            "deadbeef00000001-",
            "deadbeef00000001-+1",
            "deadbeef00000001--1",
            "xeadbeef00000001-1",
            "deadbeef00000001-99999999999999999999999",
            "deadbeef00000001-1-2",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
    }
}
