//! Routing keys to namespaces by prefix.
//!
//! Each configured prefix is a namespace (one RocksDB column family); a key
//! belongs to the namespace of the longest configured prefix it starts with, or
//! to the default namespace when none matches.
//!
//! A namespace can be **owned** by a service (`tierkv.v1.SessionService` owns
//! `session:`): its keys are that service's internals. The KV service refuses
//! them, and a scan whose prefix spans namespaces leaves out owned ones unless
//! the prefix itself lies inside them, so that a listing of everything never
//! shows another service's records.

/// Index of a namespace in [`Namespaces`]; 0 is always the default namespace.
pub type NamespaceId = usize;

/// The default namespace, for keys matching no configured prefix.
pub const DEFAULT_NAMESPACE: NamespaceId = 0;

/// The configured namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    /// `prefixes[0]` is the default namespace's empty prefix; the rest are the
    /// configured prefixes, sorted and unique.
    prefixes: Vec<String>,
    /// The owning service of each namespace, parallel to `prefixes`.
    owners: Vec<Option<String>>,
}

impl Namespaces {
    /// Namespaces for the given prefixes (empty ones and duplicates are ignored).
    pub fn new<I, S>(prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut configured: Vec<String> = prefixes
            .into_iter()
            .map(Into::into)
            .filter(|prefix| !prefix.is_empty())
            .collect();
        configured.sort();
        configured.dedup();
        let mut prefixes = vec![String::new()];
        prefixes.extend(configured);
        let owners = vec![None; prefixes.len()];
        Self { prefixes, owners }
    }

    /// Gives namespaces to services: each `(prefix, service)` pair makes the
    /// configured namespace `prefix` owned by `service` (a gRPC service name).
    /// Fails naming the prefix when it is not a configured namespace or is
    /// already owned by another service.
    pub fn with_owners<I, P, S>(mut self, owners: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = (P, S)>,
        P: AsRef<str>,
        S: Into<String>,
    {
        for (prefix, service) in owners {
            let prefix = prefix.as_ref();
            let service = service.into();
            let Some(id) = (1..self.prefixes.len()).find(|id| self.prefixes[*id] == prefix) else {
                return Err(format!(
                    "namespace {prefix:?} (owned by {service}) is not a configured namespace; add it to namespaces"
                ));
            };
            match &self.owners[id] {
                Some(existing) if *existing != service => {
                    return Err(format!(
                        "namespace {prefix:?} cannot be owned by both {existing} and {service}"
                    ))
                }
                _ => self.owners[id] = Some(service),
            }
        }
        Ok(self)
    }

    /// The service owning namespace `id`, if any.
    pub fn owner(&self, id: NamespaceId) -> Option<&str> {
        self.owners[id].as_deref()
    }

    /// The owned namespace a key falls in, as `(prefix, owning service)`.
    pub fn owner_of(&self, key: &str) -> Option<(&str, &str)> {
        let id = self.route(key);
        self.owner(id).map(|owner| (self.prefix(id), owner))
    }

    /// Whether any namespace is owned; lets hot paths skip the routing.
    pub fn has_owners(&self) -> bool {
        self.owners.iter().any(Option::is_some)
    }

    /// The default set: `user:`, `session:`, `cache:`, `feature:`.
    pub fn default_prefixes() -> Vec<String> {
        ["user:", "session:", "cache:", "feature:"]
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// How many namespaces there are, the default one included.
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    /// Always false: the default namespace always exists.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The prefix of a namespace (empty for the default one).
    pub fn prefix(&self, id: NamespaceId) -> &str {
        &self.prefixes[id]
    }

    /// The configured prefixes, without the default namespace.
    pub fn configured_prefixes(&self) -> impl Iterator<Item = &str> {
        self.prefixes[1..].iter().map(String::as_str)
    }

    /// The namespace a key is stored in: the longest matching prefix.
    pub fn route(&self, key: &str) -> NamespaceId {
        self.prefixes
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, prefix)| key.starts_with(prefix.as_str()))
            .max_by_key(|(_, prefix)| prefix.len())
            .map(|(id, _)| id)
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// Every namespace a scan of `prefix` reads: the one the prefix itself
    /// routes to, plus every namespace nested under the prefix, except those
    /// owned by a service other than the routed namespace's owner (a listing
    /// of everything leaves other services' internals out).
    pub fn spanning(&self, prefix: &str) -> Vec<NamespaceId> {
        let routed = self.route(prefix);
        let mut ids = vec![routed];
        ids.extend((1..self.prefixes.len()).filter(|id| {
            *id != routed
                && self.prefixes[*id].starts_with(prefix)
                && (self.owners[*id].is_none() || self.owners[*id] == self.owners[routed])
        }));
        ids
    }

    /// Namespaces nested directly inside namespace `id`: keys with their
    /// prefixes would have been stored in `id` had they not been configured.
    pub fn nested_in(&self, id: NamespaceId) -> Vec<NamespaceId> {
        (1..self.prefixes.len())
            .filter(|other| *other != id && self.parent(*other) == id)
            .collect()
    }

    /// The namespace a configured prefix's keys would route to without it.
    fn parent(&self, id: NamespaceId) -> NamespaceId {
        let prefix = &self.prefixes[id];
        self.prefixes
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(other, candidate)| *other != id && prefix.starts_with(candidate.as_str()))
            .max_by_key(|(_, candidate)| candidate.len())
            .map(|(other, _)| other)
            .unwrap_or(DEFAULT_NAMESPACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longest prefix wins; unmatched keys go to the default namespace.
    #[test]
    fn routes_by_longest_prefix() {
        let namespaces = Namespaces::new(["user:", "user:admin:", "cache:"]);
        assert_eq!(namespaces.prefix(namespaces.route("user:1")), "user:");
        assert_eq!(
            namespaces.prefix(namespaces.route("user:admin:1")),
            "user:admin:"
        );
        assert_eq!(namespaces.route("other"), DEFAULT_NAMESPACE);
        assert_eq!(namespaces.route("User:1"), DEFAULT_NAMESPACE);
    }

    /// A listing prefix spans its own namespace and the ones nested under it.
    #[test]
    fn spanning_covers_nested_namespaces() {
        let namespaces = Namespaces::new(["user:", "user:admin:", "cache:"]);
        let names = |ids: Vec<NamespaceId>| {
            let mut names: Vec<&str> = ids.into_iter().map(|id| namespaces.prefix(id)).collect();
            names.sort();
            names
        };
        assert_eq!(
            names(namespaces.spanning("")),
            vec!["", "cache:", "user:", "user:admin:"]
        );
        assert_eq!(
            names(namespaces.spanning("u")),
            vec!["", "user:", "user:admin:"]
        );
        assert_eq!(
            names(namespaces.spanning("user:")),
            vec!["user:", "user:admin:"]
        );
        assert_eq!(
            names(namespaces.spanning("user:a")),
            vec!["user:", "user:admin:"]
        );
        assert_eq!(names(namespaces.spanning("user:b")), vec!["user:"]);
        assert_eq!(
            names(namespaces.spanning("user:admin:x")),
            vec!["user:admin:"]
        );
    }

    /// Owned namespaces are left out of spanning scans unless the prefix lies
    /// inside them; ownership of an unknown or doubly owned prefix is refused.
    #[test]
    fn owned_namespaces_are_left_out_of_spanning_scans() {
        let namespaces = Namespaces::new(["user:", "session:", "cache:"])
            .with_owners([("session:", "tierkv.v1.SessionService")])
            .unwrap();
        let names = |ids: Vec<NamespaceId>| {
            let mut names: Vec<&str> = ids.into_iter().map(|id| namespaces.prefix(id)).collect();
            names.sort();
            names
        };
        assert_eq!(names(namespaces.spanning("")), vec!["", "cache:", "user:"]);
        assert_eq!(names(namespaces.spanning("s")), vec![""]);
        assert_eq!(names(namespaces.spanning("session:")), vec!["session:"]);
        assert_eq!(names(namespaces.spanning("session:u/")), vec!["session:"]);
        assert_eq!(
            namespaces.owner_of("session:x"),
            Some(("session:", "tierkv.v1.SessionService"))
        );
        assert_eq!(namespaces.owner_of("sessions"), None);
        assert!(namespaces.has_owners());
        assert!(Namespaces::new(["a:"])
            .with_owners([("b:", "X")])
            .unwrap_err()
            .contains("\"b:\""));
        assert!(Namespaces::new(["a:"])
            .with_owners([("a:", "X"), ("a:", "Y")])
            .is_err());
    }

    /// Nested namespaces are found for the startup repair of misplaced keys.
    #[test]
    fn finds_nested_namespaces() {
        let namespaces = Namespaces::new(["user:", "user:admin:", "cache:"]);
        let user = namespaces.route("user:");
        let nested: Vec<&str> = namespaces
            .nested_in(user)
            .into_iter()
            .map(|id| namespaces.prefix(id))
            .collect();
        assert_eq!(nested, vec!["user:admin:"]);
        let mut top: Vec<&str> = namespaces
            .nested_in(DEFAULT_NAMESPACE)
            .into_iter()
            .map(|id| namespaces.prefix(id))
            .collect();
        top.sort();
        assert_eq!(top, vec!["cache:", "user:"]);
    }
}
