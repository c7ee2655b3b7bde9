//! Namespace administration: listing namespaces with their estimated sizes
//! and retiring one by deleting its data on purpose. No transport types.
//!
//! A namespace removed from the configuration is refused at start while its
//! column family holds data ([`crate::engine::RocksEngine::open`]); the way to
//! retire one is to drop its data while it is still configured, with the
//! exact key count as a confirmation, then remove it from `namespaces`.

pub mod backup;
pub mod error;

pub use error::AdminError;

use std::sync::Arc;

use crate::engine::Engine;

/// A namespace with its estimated size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// The prefix (empty for the default namespace).
    pub prefix: String,
    /// Where the engine keeps it (the column family).
    pub column_family: String,
    /// Estimated key count.
    pub estimated_keys: u64,
    /// Estimated live bytes.
    pub estimated_live_bytes: u64,
    /// The owning service, if any.
    pub owner: Option<String>,
}

/// Lists and drops namespaces.
#[derive(Clone)]
pub struct NamespaceAdmin {
    engine: Arc<dyn Engine>,
    /// Prefixes of the cache's origins: the namespaces holding them are owned
    /// by the cache.
    cache_origins: Vec<String>,
}

/// The owner [`NamespaceAdmin`] names for a namespace holding cache origins.
pub const CACHE_OWNER: &str = "tierkv.v1.CacheService";

impl NamespaceAdmin {
    /// Administration of `engine`'s namespaces.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            engine,
            cache_origins: Vec::new(),
        }
    }

    /// Counts the namespaces holding these cache origin prefixes as owned
    /// by the cache, so dropping them needs `force`.
    pub fn with_cache_origins(mut self, prefixes: impl IntoIterator<Item = String>) -> Self {
        self.cache_origins = prefixes.into_iter().collect();
        self
    }

    /// Who depends on the configured namespace `prefix`, if anyone: a
    /// service owning it, or the cache reading origins into it.
    fn owner(&self, prefix: &str) -> Option<String> {
        let namespaces = self.engine.namespaces();
        let id = namespaces.route(prefix);
        if let Some(owner) = namespaces.owner(id) {
            return Some(owner.to_string());
        }
        let origins: Vec<String> = self
            .cache_origins
            .iter()
            .filter(|origin| namespaces.prefix(namespaces.route(origin)) == prefix)
            .map(|origin| format!("{origin:?}"))
            .collect();
        (!origins.is_empty())
            .then(|| format!("{CACHE_OWNER} (cache origins {})", origins.join(", ")))
    }

    /// Every namespace, the default one first, with estimates.
    pub async fn list(&self) -> Result<Vec<NamespaceInfo>, AdminError> {
        let namespaces = self.engine.namespaces();
        let stats = self.engine.namespace_stats().await?;
        Ok(stats
            .into_iter()
            .map(|stats| {
                let owner = namespaces
                    .owner(namespaces.route(&stats.prefix))
                    .filter(|_| !stats.prefix.is_empty())
                    .map(str::to_string);
                NamespaceInfo {
                    prefix: stats.prefix,
                    column_family: stats.storage,
                    estimated_keys: stats.estimated_keys,
                    estimated_live_bytes: stats.estimated_live_bytes,
                    owner,
                }
            })
            .collect())
    }

    /// Deletes every key of the namespace `prefix` once `expected_keys`
    /// equals its exact live key count; returns that count. The default
    /// namespace `""` and namespaces a service owns (the session namespace,
    /// namespaces holding cache origins) also need `force`: their data is
    /// not one client's to retire.
    ///
    /// The count is taken just before the drop: a key written in between is
    /// dropped too. The confirmation guards against dropping the wrong
    /// namespace, not against concurrent writers: stop writing to a
    /// namespace before retiring it.
    pub async fn drop_namespace(
        &self,
        prefix: &str,
        expected_keys: Option<u64>,
        force: bool,
    ) -> Result<u64, AdminError> {
        let namespaces = self.engine.namespaces();
        let configured = prefix.is_empty() || namespaces.configured_prefixes().any(|p| p == prefix);
        if !configured {
            return Err(AdminError::UnknownNamespace {
                prefix: prefix.to_string(),
                configured: namespaces
                    .configured_prefixes()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if !force {
            let owner = self.owner(prefix);
            if prefix.is_empty() || owner.is_some() {
                return Err(AdminError::ForceRequired {
                    prefix: prefix.to_string(),
                    owner,
                });
            }
        }
        let actual = self.engine.count_namespace(prefix).await?;
        if expected_keys != Some(actual) {
            return Err(AdminError::ExpectedKeysMismatch {
                prefix: prefix.to_string(),
                expected: expected_keys,
                actual,
            });
        }
        self.engine.clear_namespace(prefix).await?;
        tracing::warn!(prefix, deleted_keys = actual, "namespace dropped");
        Ok(actual)
    }
}
