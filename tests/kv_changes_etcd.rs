//! The KV change feed suite, `tests/kv_changes.rs`, over the etcd engine: the same
//! tests, every server on the shared three-member etcd test cluster
//! (`tests/common/etcd.rs`) under a key prefix of its own. This binary's
//! name, ending in `_etcd`, makes `tests/common` start etcd-backed servers.
// What only the left-out tests use is unused here (the RocksDB run uses it).
#![allow(dead_code, unused_imports)]

/// Leaves out the tests marked as needing the RocksDB engine's local-only
/// operations (each names why).
macro_rules! rocksdb_only {
    ($reason:literal; $($item:item)*) => {};
}
use rocksdb_only;

#[path = "kv_changes.rs"]
mod suite;
