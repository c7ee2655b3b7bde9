//! Why the server could not start or stopped serving.

use crate::config::ConfigError;
use crate::engine::EngineError;
use std::net::SocketAddr;
use thiserror::Error;

/// A failure to start or run the server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened or flushed.
    #[error("storage: {0}")]
    Engine(#[from] EngineError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The cache's origins could not be set up.
    #[error("cache: {0}")]
    Cache(String),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error("{0}")]
    Tls(String),
    /// The configuration reload (SIGHUP) could not be set up.
    #[error("{0}")]
    Reload(String),
    /// The metrics listen address, set in the file, the environment or the
    /// flag, could not be bound. The message names all three, since whoever
    /// reads it has to move the address or turn metrics off.
    #[error(
        "cannot listen for metrics on {addr}: {source}; set metrics_listen (file), \
         TIERKV_METRICS_LISTEN or --metrics-listen to a free address, or to \"off\""
    )]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The engine can no longer write (its writer died or storage failed);
    /// the process should exit so an orchestrator restarts it.
    #[error("the storage engine failed: {0}")]
    EngineFailed(String),
}
