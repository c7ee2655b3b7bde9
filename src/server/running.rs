//! Running a server in the background (tests, embedding) and the signals
//! that stop it.

use super::{open_engine, serve_with_stats, store, validate, Listeners, ServerError, ServerStats};
use crate::clock::SharedClock;
use crate::config::{Config, EngineKind};
use crate::engine::{Engine, EngineError, RocksEngine};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running in the background, for tests and embedding.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where its metrics and probes are served, unless `metrics_listen` is off.
    pub metrics_addr: Option<SocketAddr>,
    /// The engine it serves, whichever `[engine] kind` names.
    pub engine: Arc<dyn Engine>,
    /// The RocksDB engine's own handle when that is the engine: its
    /// local-only operations (writer pauses, fault injection, history trims)
    /// exist only there. `None` over etcd.
    rocks: Option<RocksEngine>,
    /// Its live counters.
    pub stats: ServerStats,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Starts a server for `config` (its `listen` may use port 0) over the
    /// store `[engine] kind` names: RocksDB in `data_dir`, or the etcd
    /// cluster (waiting while it is unreachable, as `tierkv serve` does).
    /// Both engines read `clock`, so a manual clock drives expiry on either.
    pub async fn start(config: Config, clock: SharedClock) -> Result<Self, ServerError> {
        validate(&config)?;
        // Binding first fails fast on a taken port, before a long open.
        let listeners = Listeners::bind(&config).await?;
        let (engine, rocks): (Arc<dyn Engine>, Option<RocksEngine>) = match config.engine.kind {
            EngineKind::Rocksdb => {
                let rocks = open_engine(&config, Arc::clone(&clock)).await?;
                (Arc::new(rocks.clone()), Some(rocks))
            }
            EngineKind::Etcd => (store::open_store(&config, Arc::clone(&clock)).await?, None),
        };
        let addr = listeners
            .grpc
            .local_addr()
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let metrics_addr = listeners
            .metrics
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let stats = ServerStats::new(&config);
        let task = tokio::spawn(serve_with_stats(
            config,
            Arc::clone(&engine),
            listeners,
            async {
                let _ = shutdown_rx.await;
            },
            stats.clone(),
        ));
        Ok(Self {
            addr,
            metrics_addr,
            engine,
            rocks,
            stats,
            shutdown: Some(shutdown_tx),
            task,
        })
    }

    /// The RocksDB engine, for its local-only operations; `None` when the
    /// server runs over etcd.
    pub fn rocks(&self) -> Option<&RocksEngine> {
        self.rocks.as_ref()
    }

    /// The `http://` endpoint clients connect to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down gracefully and waits until the store is flushed.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task)
            .await
            .map_err(|error| EngineError::Storage(format!("server task failed: {error}")))?
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are registered when this is called, not when the future is
/// first polled: the server is polled only once it serves, and a SIGTERM
/// arriving in between would otherwise kill the process without a drain.
/// Must be called inside a tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = signal(SignalKind::terminate())
            .and_then(|terminate| Ok((terminate, signal(SignalKind::interrupt())?)));
        async move {
            match handlers {
                Ok((mut terminate, mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {},
                        _ = interrupt.recv() => {},
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
