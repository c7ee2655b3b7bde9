//! The Cache origin suite, `tests/cache_origin.rs`, over the etcd engine: the same
//! tests, every server on the shared three-member etcd test cluster
//! (`tests/common/etcd.rs`) under a key prefix of its own. This binary's
//! name, ending in `_etcd`, makes `tests/common` start etcd-backed servers.

#[path = "cache_origin.rs"]
mod suite;
