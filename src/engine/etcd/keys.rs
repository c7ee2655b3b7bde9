//! Where the etcd engine keeps things: every key of one tierkv cluster lives
//! under its root prefix, in ranges that never overlap.
//!
//! ```text
//! <root>k/<key>     record heads (value inline up to INLINE_VALUE_MAX)
//! <root>v/<key>     out-of-line values of longer records
//! <root>f           the feed record: what the last write request did
//! <root>s/<name>    named server state (Engine::get_state)
//! <root>meta/clock  the clock's high-water mark, 20 decimal digits
//! <root>meta/secret the instance secret shared by every replica
//! <root>meta/history_id, history_floor   the change history's identity and retention
//! <root>meta/namespaces  the namespaces configured at the last open
//! <root>lock/<name>  locks (one batch migration of a prefix at a time)
//! ```
//!
//! Records are one ordered range, so a scan across namespaces is one etcd
//! `Range`, and byte order is etcd's own.

/// The key layout under one root prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    root: Vec<u8>,
}

impl Keys {
    /// The layout under `root` (for instance `tierkv/`).
    pub(crate) fn new(root: &str) -> Self {
        Self {
            root: root.as_bytes().to_vec(),
        }
    }

    fn under(&self, part: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.root.len() + part.len() + rest.len());
        key.extend_from_slice(&self.root);
        key.extend_from_slice(part);
        key.extend_from_slice(rest);
        key
    }

    /// The head of record `key`.
    pub(crate) fn head(&self, key: &str) -> Vec<u8> {
        self.under(b"k/", key.as_bytes())
    }

    /// The out-of-line value of record `key`.
    pub(crate) fn value(&self, key: &str) -> Vec<u8> {
        self.under(b"v/", key.as_bytes())
    }

    /// The record key a head's etcd key stands for.
    pub(crate) fn record_key<'a>(&self, head: &'a [u8]) -> Option<&'a str> {
        let rest = head
            .strip_prefix(self.root.as_slice())?
            .strip_prefix(b"k/")?;
        std::str::from_utf8(rest).ok()
    }

    /// The record key an out-of-line value's etcd key stands for.
    pub(crate) fn value_key<'a>(&self, value: &'a [u8]) -> Option<&'a str> {
        let rest = value
            .strip_prefix(self.root.as_slice())?
            .strip_prefix(b"v/")?;
        std::str::from_utf8(rest).ok()
    }

    /// The history's id.
    pub(crate) fn history_id(&self) -> Vec<u8> {
        self.under(b"meta/history_id", b"")
    }

    /// The oldest resumable position, raised by retention.
    pub(crate) fn history_floor(&self) -> Vec<u8> {
        self.under(b"meta/history_floor", b"")
    }

    /// A lock shared by every replica.
    pub(crate) fn lock(&self, name: &str) -> Vec<u8> {
        self.under(b"lock/", name.as_bytes())
    }

    /// The feed record, written by every write request.
    pub(crate) fn feed(&self) -> Vec<u8> {
        self.under(b"f", b"")
    }

    /// Named server state.
    pub(crate) fn state(&self, name: &str) -> Vec<u8> {
        self.under(b"s/", name.as_bytes())
    }

    /// The clock's high-water mark.
    pub(crate) fn clock(&self) -> Vec<u8> {
        self.under(b"meta/clock", b"")
    }

    /// The namespaces configured at the last open (a JSON list of prefixes).
    pub(crate) fn namespaces(&self) -> Vec<u8> {
        self.under(b"meta/namespaces", b"")
    }

    /// The instance secret.
    pub(crate) fn secret(&self) -> Vec<u8> {
        self.under(b"meta/secret", b"")
    }

    /// The range of heads whose record keys start with `prefix`.
    pub(crate) fn head_range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.head(prefix);
        let end = prefix_end(&start);
        (start, end)
    }

    /// The range of out-of-line values whose record keys start with `prefix`.
    pub(crate) fn value_range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.value(prefix);
        let end = prefix_end(&start);
        (start, end)
    }
}

/// The first key above every key starting with `prefix` (etcd's range end
/// for a prefix). Root and part are never all 0xFF, so there always is one.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only for an empty or all-0xFF prefix: etcd's "to the end of the keyspace".
    vec![0]
}

/// The clock mark's stored form: fixed width, so byte order is numeric order
/// and an etcd `value <` compare orders marks.
pub(crate) fn clock_mark(millis: u64) -> Vec<u8> {
    format!("{millis:020}").into_bytes()
}

/// Reads a stored clock mark; 0 for anything else.
pub(crate) fn parse_clock_mark(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

/// A version from the revision of its commit and the mutation's index in
/// its batch: later commits give higher versions, and two mutations of one
/// batch different ones.
pub(crate) fn version(revision: i64, index: u64) -> u64 {
    ((revision.max(0) as u64) << 16) | (index & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefix ends step the last byte, and skip trailing 0xFF bytes.
    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"r/k/user:"), b"r/k/user;".to_vec());
        assert_eq!(prefix_end(b"r/k/"), b"r/k0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }

    /// Clock marks order as numbers; versions order by revision first.
    #[test]
    fn marks_and_versions_order() {
        assert!(clock_mark(999) < clock_mark(1000));
        assert_eq!(
            parse_clock_mark(&clock_mark(1_800_000_000_000)),
            1_800_000_000_000
        );
        assert!(version(2, 0) > version(1, 9999));
        let keys = Keys::new("t/");
        assert_eq!(keys.record_key(&keys.head("user:1")), Some("user:1"));
        assert_eq!(keys.record_key(&keys.value("user:1")), None);
    }
}
