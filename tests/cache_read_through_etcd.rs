//! The Cache read-through suite, `tests/cache_read_through.rs`, over the etcd engine: the same
//! tests, every server on the shared three-member etcd test cluster
//! (`tests/common/etcd.rs`) under a key prefix of its own. This binary's
//! name, ending in `_etcd`, makes `tests/common` start etcd-backed servers.

#[path = "cache_read_through.rs"]
mod suite;
