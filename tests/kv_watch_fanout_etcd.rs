//! The fan-out suite (`kv_watch_fanout.rs`) over the etcd engine.

#[path = "kv_watch_fanout.rs"]
mod suite;
