//! The KV expiry suite, `tests/kv_expiration.rs`, over the etcd engine: the same
//! tests, every server on the shared three-member etcd test cluster
//! (`tests/common/etcd.rs`) under a key prefix of its own. This binary's
//! name, ending in `_etcd`, makes `tests/common` start etcd-backed servers.

#[path = "kv_expiration.rs"]
mod suite;
