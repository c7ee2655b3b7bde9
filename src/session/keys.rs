//! The keys of the session namespace (prefix `P`): `P s/<session_id>` for
//! a session, `P u/<escaped user_id>/<session_id>` for the user index. `%`
//! and `/` in user ids are percent-encoded so that one user's index prefix
//! never covers another's.

use std::sync::Arc;

/// Builds the session namespace's keys.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// `P s/`, precomputed: the hot path builds one key per call.
    record_prefix: Arc<str>,
    /// `P u/`.
    index_prefix: Arc<str>,
}

impl Keys {
    /// The keys under the namespace `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            record_prefix: format!("{prefix}s/").into(),
            index_prefix: format!("{prefix}u/").into(),
        }
    }

    /// The key of session `session_id`'s record.
    pub fn record(&self, session_id: &str) -> String {
        let mut key = String::with_capacity(self.record_prefix.len() + session_id.len());
        key.push_str(&self.record_prefix);
        key.push_str(session_id);
        key
    }

    /// The prefix of `user_id`'s index entries.
    pub fn user_prefix(&self, user_id: &str) -> String {
        let mut key = String::with_capacity(self.index_prefix.len() + user_id.len() + 1);
        key.push_str(&self.index_prefix);
        for character in user_id.chars() {
            match character {
                '%' => key.push_str("%25"),
                '/' => key.push_str("%2F"),
                other => key.push(other),
            }
        }
        key.push('/');
        key
    }

    /// The index entry of `user_id`'s session `session_id`.
    pub fn index(&self, user_id: &str, session_id: &str) -> String {
        let mut key = self.user_prefix(user_id);
        key.push_str(session_id);
        key
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    /// The layout `docs/record-format.md` documents, and no user's index
    /// prefix covers another user's entries, whatever the ids contain.
    #[test]
    fn user_prefixes_never_cover_each_other() {
        let keys = Keys::new("session:");
        assert_eq!(keys.record("abc"), "session:s/abc");
        assert_eq!(keys.index("a/b%c", "id"), "session:u/a%2Fb%25c/id");
        let users = ["a", "a/", "a/b", "a%2Fb", "a%", "%", "/", "ab", ""];
        for one in users {
            for other in users {
                if one != other {
                    let entry = keys.index(other, "AAAAAAAAAAAAAAAAAAAAAA");
                    assert!(
                        !entry.starts_with(&keys.user_prefix(one)),
                        "{one:?}'s prefix covers {entry:?}"
                    );
                }
            }
        }
    }
}
