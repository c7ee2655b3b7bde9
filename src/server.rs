//! Wiring: opens the engine, builds the services, serves gRPC with health and
//! reflection, and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use std::convert::Infallible;

use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

use crate::api::deadline::DeadlineLayer;
use crate::api::kv::KvApi;
use crate::api::session::SessionApi;
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::engine::{Engine, EngineError, Namespaces, RocksEngine, RocksOptions};
use crate::kv::KvService;
use crate::session::SessionService;

/// The services this server exposes (each also has a health status).
pub const SERVICE_NAMES: &[&str] = &["tierkv.v1.KvService", "tierkv.v1.SessionService"];

/// The gRPC services of a server, collected with their names so that
/// registering a service is one line and health reporting follows it.
#[derive(Default)]
pub struct ServiceSet {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
}

impl ServiceSet {
    /// Mounts a generated tonic server and reports its health by name.
    pub fn add<S>(&mut self, service: S) -> &mut Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// The names of the services added so far.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

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
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The engine can no longer write (its writer died or storage failed);
    /// the process should exit so an orchestrator restarts it.
    #[error("the storage engine failed: {0}")]
    EngineFailed(String),
}

/// Opens the RocksDB engine described by `config`.
pub async fn open_engine(config: &Config, clock: SharedClock) -> Result<RocksEngine, ServerError> {
    let path = config.data_dir.clone();
    let namespaces: Namespaces = config.namespaces().map_err(ConfigError::Invalid)?;
    let options = RocksOptions {
        sync_writes: config.sync_writes,
        block_cache_bytes: config.block_cache_mb * 1024 * 1024,
        expiry_grace: Duration::from_secs(config.expiry_grace_secs),
        write_queue_bytes: config.write_queue_mb * 1024 * 1024,
        ..RocksOptions::default()
    };
    let engine =
        tokio::task::spawn_blocking(move || RocksEngine::open(path, namespaces, options, clock))
            .await
            .map_err(|error| EngineError::Storage(format!("open task failed: {error}")))??;
    Ok(engine)
}

/// Opens the store and binds the listen address of a validated `config`.
pub async fn open_and_bind(
    config: &Config,
    clock: SharedClock,
) -> Result<(RocksEngine, TcpListener), ServerError> {
    let engine = open_engine(config, clock).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    Ok((engine, listener))
}

/// Serves on `listener` until `shutdown` resolves, then drains: health turns
/// NOT_SERVING, new connections are refused, in-flight calls get up to the
/// configured grace period, and the store is flushed.
///
/// If the engine fails for good (see [`Engine::failed`]), the server drains
/// the same way and returns [`ServerError::EngineFailed`], so the process
/// exits non-zero instead of serving UNAVAILABLE while reporting SERVING.
pub async fn serve(
    config: Config,
    engine: Arc<dyn Engine>,
    clock: SharedClock,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let mut services = ServiceSet::default();
    services.add(KvApi::new(KvService::new(Arc::clone(&engine), Arc::clone(&clock))).into_server());
    services.add(
        SessionApi::new(SessionService::new(
            Arc::clone(&engine),
            clock,
            config.session.clone(),
        ))
        .into_server(),
    );
    let service_names = services.names().to_vec();

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in &service_names {
        health_reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    health_reporter
        .set_service_status("", ServingStatus::Serving)
        .await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|error| ServerError::Reflection(error.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|error| ServerError::Reflection(error.to_string()))?;

    let local_addr = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let mut routes = services.routes;
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let router = tonic::transport::Server::builder()
        // Every log line a request causes carries its method.
        .trace_fn(|request| tracing::info_span!("rpc", method = %request.uri().path()))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(DeadlineLayer::new(config.request_timeout()))
        .add_routes(routes.routes());
    // The builder's tcp_nodelay does not reach connections from our own
    // listener; without it Nagle's algorithm holds small responses ~40 ms.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let serving = router.serve_with_incoming_shutdown(incoming, async {
        let _ = drain_rx.await;
    });
    tokio::pin!(serving);
    tracing::info!(addr = %local_addr, data_dir = %config.data_dir.display(), "serving");

    let mut engine_failure = None;
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            reason = engine.failed() => {
                tracing::error!(%reason, "the storage engine failed; stopping");
                engine_failure = Some(reason);
            }
        }
    };

    tokio::select! {
        result = &mut serving => result?,
        () = stop => {
            tracing::info!(grace_ms = config.shutdown_grace_ms, "shutting down: draining in-flight requests");
            for name in &service_names {
                health_reporter.set_service_status(*name, ServingStatus::NotServing).await;
            }
            health_reporter.set_service_status("", ServingStatus::NotServing).await;
            let _ = drain_tx.send(());
            match tokio::time::timeout(config.shutdown_grace(), &mut serving).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(
                    grace_ms = config.shutdown_grace_ms,
                    "grace period over; closing the remaining connections"
                ),
            }
        }
    }
    let flushed = engine.flush().await;
    if let Some(reason) = engine_failure {
        return Err(ServerError::EngineFailed(reason));
    }
    flushed?;
    tracing::info!("stopped");
    Ok(())
}

/// A server running in the background, for tests and embedding.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The engine it serves.
    pub engine: RocksEngine,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Starts a server for `config` (its `listen` may use port 0).
    pub async fn start(config: Config, clock: SharedClock) -> Result<Self, ServerError> {
        config.validate()?;
        let (engine, listener) = open_and_bind(&config, Arc::clone(&clock)).await?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let served: Arc<dyn Engine> = Arc::new(engine.clone());
        let task = tokio::spawn(serve(config, served, clock, listener, async {
            let _ = shutdown_rx.await;
        }));
        Ok(Self {
            addr,
            engine,
            shutdown: Some(shutdown_tx),
            task,
        })
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
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
