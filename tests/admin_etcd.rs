//! The Admin service suite, `tests/admin.rs`, over the etcd engine: the same
//! tests, every server on the shared three-member etcd test cluster
//! (`tests/common/etcd.rs`) under a key prefix of its own. This binary's
//! name, ending in `_etcd`, makes `tests/common` start etcd-backed servers.

#[path = "admin.rs"]
mod suite;
