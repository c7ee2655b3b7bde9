//! Wiring: opens the engine, builds the services, serves gRPC with health and
//! reflection within the configured bounds, and shuts down gracefully.

pub mod auth_layer;
pub mod banner;
pub mod coalesce;
pub mod connections;
pub mod deadline;
mod error;
pub mod http2;
pub mod in_flight;
pub mod load_shed;
pub mod message_limits;
pub mod metrics_http;
pub mod reload;
pub mod request_limits;
pub mod response_budget;
pub mod rpc_metrics;
mod running;
mod services;
mod stats;
pub mod store;
pub mod tls;

pub use error::ServerError;
pub use running::{shutdown_signal, RunningServer};
use services::{known_method_paths, probe_or_tooling};
pub use services::{ServiceSet, SERVICE_NAMES};
pub use stats::ServerStats;
use stats::{LazyMigrationFigures, ServiceFigures, WatchFigures};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic_health::ServingStatus;

use crate::admin::backup::Backups;
use crate::admin::NamespaceAdmin;
use crate::api::admin::AdminApi;
use crate::api::cache::CacheApi;
use crate::api::kv::KvApi;
use crate::api::session::SessionApi;
use crate::cache::CacheService;
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::engine::{Engine, EngineError, Namespaces, RocksEngine, RocksOptions};
use crate::kv::{KvService, RecordStore};
use crate::migrate::{LazyMigrator, Migrator};
use crate::session::SessionService;
use crate::watch::WatchService;
use auth_layer::AuthLayer;
use deadline::DeadlineLayer;
use in_flight::InFlightLayer;
use load_shed::LoadShedLayer;
use request_limits::RequestLimitLayer;
use response_budget::ResponseBudgetLayer;
use rpc_metrics::RpcMetricsLayer;

use crate::metrics::{EngineFigures, MetricsBuilder};

/// Idle time before TCP keepalive probes find dead peers.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Streams a client may have reset before we accepted them, before GOAWAY
/// (h2's default, stated so it cannot silently change).
const MAX_PENDING_RESET_STREAMS: usize = 20;
/// Streams we may reset because of the client's errors, before GOAWAY
/// (hyper's default, stated likewise).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Largest block of request headers (gRPC metadata), in bytes; hyper's
/// default is 16 MiB per stream.
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// After the grace period, how long closed connections get to drop their calls.
const FORCED_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Opens the RocksDB engine described by `config`.
pub async fn open_engine(config: &Config, clock: SharedClock) -> Result<RocksEngine, ServerError> {
    let path = config.data_dir.clone();
    let namespaces: Namespaces = config.namespaces().map_err(ConfigError::Invalid)?;
    let options = RocksOptions {
        sync_writes: config.sync_writes,
        block_cache_bytes: config.block_cache_mb * 1024 * 1024,
        expiry_grace: Duration::from_secs(config.expiry_grace_secs),
        write_queue_bytes: config.write_queue_mb * 1024 * 1024,
        history_max_events: config.watch.history_events,
        history_max_age_millis: config.watch.history_age_secs.saturating_mul(1000),
        ..RocksOptions::default()
    };
    let engine =
        tokio::task::spawn_blocking(move || RocksEngine::open(path, namespaces, options, clock))
            .await
            .map_err(|error| EngineError::Storage(format!("open task failed: {error}")))??;
    Ok(engine)
}

/// The sockets a server listens on.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC port.
    pub grpc: TcpListener,
    /// The metrics and probes port, unless `metrics_listen` is off.
    pub metrics: Option<TcpListener>,
    /// The default metrics address, when it was taken: the server runs
    /// without metrics rather than not at all (see `docs/setup.md`).
    pub metrics_taken: Option<SocketAddr>,
}

impl Listeners {
    /// Binds the addresses of a validated `config`.
    pub async fn bind(config: &Config) -> Result<Self, ServerError> {
        let grpc = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let mut metrics_taken = None;
        let metrics = match config.metrics_addr()? {
            None => None,
            Some(addr) => match TcpListener::bind(addr).await {
                Ok(listener) => Some(listener),
                // Nobody asked for this port: a second server on the machine
                // (or anything else holding it) must not stop this one.
                Err(error) if config.metrics_listen_is_default() => {
                    tracing::warn!(
                        addr = %addr,
                        %error,
                        "metrics are off: the default metrics address {addr} is taken; \
                         set metrics_listen (file), TIERKV_METRICS_LISTEN or --metrics-listen \
                         to a free address to serve /metrics, /healthz and /readyz"
                    );
                    metrics_taken = Some(addr);
                    None
                }
                Err(source) => return Err(ServerError::MetricsBind { addr, source }),
            },
        };
        Ok(Self {
            grpc,
            metrics,
            metrics_taken,
        })
    }
}

/// Binds the listen addresses of a validated `config`, then opens the store.
/// Binding first fails fast on a taken port, before a long open.
pub async fn open_and_bind(
    config: &Config,
    clock: SharedClock,
) -> Result<(RocksEngine, Listeners), ServerError> {
    let listeners = Listeners::bind(config).await?;
    let engine = open_engine(config, clock).await?;
    Ok((engine, listeners))
}

/// The span of one call: every log line the call causes carries its method
/// and, when the caller sent a W3C `traceparent`, its trace and parent span
/// ids; the RPC metrics layer records the status code and latency into it.
fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        method = %request.uri().path(),
        trace_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
        code = tracing::field::Empty,
        latency_us = tracing::field::Empty,
    );
    if let Some(context) = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(crate::telemetry::parse_traceparent)
    {
        span.record("trace_id", context.trace_id.as_str());
        span.record("parent_span_id", context.parent_span_id.as_str());
    }
    span
}

/// Aborts a background task when dropped, so every way out of the server stops it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves on `listener` until `shutdown` resolves, then drains (see
/// [`serve_with_stats`]).
pub async fn serve(
    config: Config,
    engine: Arc<dyn Engine>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let stats = ServerStats::new(&config);
    serve_with_stats(config, engine, listeners, shutdown, stats).await
}

/// Serves on `listener` until `shutdown` resolves, counting into `stats`.
///
/// Shutdown runs in this order: health turns NOT_SERVING; calls are still
/// served for `shutdown_delay_ms` so load balancers notice; then new
/// connections and calls are refused (the listener closes, connections get
/// GOAWAY) and in-flight calls get `shutdown_grace_ms` to finish; connections
/// still open after that are closed, which drops their calls; once no handler
/// runs any more, the store is flushed. The store is flushed on every way
/// out, errors included.
pub async fn serve_with_stats(
    config: Config,
    engine: Arc<dyn Engine>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    stats: ServerStats,
) -> Result<(), ServerError> {
    serve_until_flushed(config, engine, listeners, shutdown, stats, None).await
}

/// Like [`serve`], re-reading `[auth]` and `[tls]` on SIGHUP (see
/// [`reload`]).
pub async fn serve_reloading(
    config: Config,
    engine: Arc<dyn Engine>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    reload: reload::Reload,
) -> Result<(), ServerError> {
    let stats = ServerStats::new(&config);
    serve_until_flushed(config, engine, listeners, shutdown, stats, Some(reload)).await
}

async fn serve_until_flushed(
    config: Config,
    engine: Arc<dyn Engine>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    stats: ServerStats,
    reload: Option<reload::Reload>,
) -> Result<(), ServerError> {
    let served = serve_until_stopped(
        &config,
        Arc::clone(&engine),
        listeners,
        shutdown,
        &stats,
        reload,
    )
    .await;
    let flushed = engine.flush().await;
    match (served, flushed) {
        (Ok(()), Ok(())) => {
            tracing::info!("stopped");
            Ok(())
        }
        (Ok(()), Err(error)) => Err(error.into()),
        (Err(error), flushed) => {
            if let Err(flush_error) = flushed {
                tracing::error!(error = %flush_error, "flushing the store after a failure failed too");
            }
            Err(error)
        }
    }
}

/// Why the server stops serving.
#[derive(Debug)]
enum StopReason {
    /// The shutdown future resolved (SIGTERM, Ctrl-C, `RunningServer::stop`).
    Requested,
    /// The storage engine failed for good (see [`crate::engine::LocalStorage::failed`]); the
    /// server drains like any other stop, then reports the failure so the
    /// process exits non-zero instead of answering UNAVAILABLE while SERVING.
    EngineFailed(String),
}

async fn serve_until_stopped(
    config: &Config,
    engine: Arc<dyn Engine>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    stats: &ServerStats,
    reload: Option<reload::Reload>,
) -> Result<(), ServerError> {
    let listener = listeners.grpc;
    let mut metrics = MetricsBuilder::new();
    let rpc_metrics = metrics.rpc(known_method_paths());
    metrics.collector(stats.clone());
    metrics.refreshed_collector(EngineFigures::new(Arc::clone(&engine)));
    // AdminService.Stats serves the same figures; they exist once every
    // component has registered, after the services are built.
    let frozen_metrics = Arc::new(std::sync::OnceLock::new());
    let migrations = Arc::new(config.migrations()?);
    let lazy_migration = Arc::new(LazyMigrator::new(
        Arc::clone(&migrations),
        Arc::clone(&engine),
    ));
    metrics.collector(LazyMigrationFigures(Arc::clone(&lazy_migration)));
    let migrator = Arc::new(Migrator::new(migrations, Arc::clone(&engine)));
    // KV and the cache reach records by one path: owner checks, lazy
    // migration and version preconditions alike.
    let records =
        RecordStore::new(Arc::clone(&engine)).with_lazy_migration(Arc::clone(&lazy_migration));
    let mut services = ServiceSet::default();
    let watch = WatchService::new(records.clone(), config.watch.clone());
    metrics.collector(WatchFigures(watch.clone()));
    services.add(
        KvApi::new(
            KvService::over(records.clone()).with_fallback_counters(Arc::clone(&stats.fallbacks)),
        )
        .with_watch(watch.clone())
        .into_server(),
    );
    services.add(
        AdminApi::new(
            Arc::clone(&migrator),
            NamespaceAdmin::new(Arc::clone(&engine)).with_cache_origins(
                config
                    .cache
                    .origins
                    .iter()
                    .map(|origin| origin.prefix.clone()),
            ),
            Backups::new(Arc::clone(&engine), config.backup_dir.clone()),
            Arc::clone(&frozen_metrics),
        )
        .into_server(),
    );
    let sessions = SessionService::new(
        Arc::clone(&engine),
        config.session.clone(),
        Arc::new(crate::api::session::StructCodec),
    );
    metrics.collector(ServiceFigures {
        sessions: sessions.clone(),
        migrator: Arc::clone(&migrator),
    });
    services.add(SessionApi::new(sessions).into_server());
    let cache = CacheService::new(records, config.cache.clone(), Arc::clone(&stats.cache))
        .map_err(|error| ServerError::Cache(error.to_string()))?;
    services.add(CacheApi::new(cache).into_server());
    let service_names = services.names().to_vec();

    let metrics = metrics.build();
    let _ = frozen_metrics.set(metrics.clone());
    let metrics_addr = listeners
        .metrics
        .as_ref()
        .and_then(|listener| listener.local_addr().ok())
        .map(|addr| addr.to_string())
        .unwrap_or_else(|| "off".to_string());
    let _metrics_listener = listeners.metrics.map(|listener| {
        AbortOnDrop(metrics_http::spawn(
            listener,
            metrics,
            Arc::clone(&stats.readiness),
        ))
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, &service_names, ServingStatus::Serving).await;

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
    let auth = Arc::new(crate::auth::AuthState::new(&config.auth).map_err(ConfigError::Invalid)?);
    for name in config.auth.deprecated_admin_tokens() {
        tracing::warn!(
            token = name,
            "permission `admin` is deprecated: grant stats, migrate, backup and/or drop instead"
        );
    }
    let stack = tower::ServiceBuilder::new()
        // Outermost, so shutdown can wait for every call, whatever answered it.
        .layer(InFlightLayer::new(Arc::clone(&stats.in_flight)))
        // Outside the deadline and request limits, so calls they answer are counted.
        .layer(RpcMetricsLayer::new(rpc_metrics))
        // Before any waiting: a call without a valid token costs nothing.
        .layer(AuthLayer::new(Arc::clone(&auth)))
        // Answers what admission decided when the stream was accepted
        // (http2::serve), before any waiting (deadline, request memory).
        .layer(LoadShedLayer::new(Arc::clone(&stats.call_limit)))
        // Inside shedding (a shed call builds no reply); counts each reply
        // from when it is encoded until it is written, and refuses calls
        // while replies waiting for slow clients fill the budget.
        .layer(ResponseBudgetLayer::new(Arc::clone(&stats.response_budget)))
        .layer(DeadlineLayer::new(config.request_timeout()))
        // Inside the deadline, so waiting for request memory counts against it.
        .layer(RequestLimitLayer::new(Arc::clone(&stats.budget)))
        .service(routes.routes().prepare());
    let settings = http2::Http2Settings {
        // A ping every 30 s finds dead peers (and keeps NAT and proxy state
        // alive); no answer in 20 s closes the connection.
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_timeout: Duration::from_secs(20),
        // Advertised in SETTINGS_MAX_CONCURRENT_STREAMS.
        max_concurrent_streams: config.max_concurrent_streams,
        // Rapid-reset protection: a client that resets (or makes us reset)
        // more streams than this before we accept them gets GOAWAY.
        max_pending_accept_reset_streams: MAX_PENDING_RESET_STREAMS,
        max_local_error_reset_streams: MAX_LOCAL_ERROR_RESET_STREAMS,
        max_header_list_size: MAX_HEADER_LIST_BYTES,
        // GOAWAY after this long, so long-lived clients reconnect and spread
        // over new pods behind a Kubernetes Service; calls in flight finish
        // within the grace period.
        max_connection_age: config.max_connection_age(),
        max_connection_age_grace: config.max_connection_age_grace(),
    };
    let tls = tls::acceptor(&config.tls)
        .map_err(ServerError::Tls)?
        .map(tls::SharedAcceptor::new);
    let _reloading = reload.map(|reload| {
        AbortOnDrop(tokio::spawn(reload.run(reload::Targets {
            auth: Arc::clone(&auth),
            tls: tls.clone(),
        })))
    });
    let incoming = connections::incoming(listener, Arc::clone(&stats.connections), tls);
    let serving = http2::serve(
        incoming,
        stack,
        Arc::clone(&stats.call_limit),
        rpc_span,
        settings,
        async {
            let _ = drain_rx.await;
        },
    );
    tokio::pin!(serving);
    if !config.listens_on_loopback_only() && !config.authenticates_clients() {
        // Only with allow_unauthenticated = true: validation refuses it otherwise.
        tracing::warn!(
            addr = %local_addr,
            "serving without authentication on an address other hosts can reach \
             (allow_unauthenticated = true): whatever reaches the port may read, write and drop every key"
        );
    }
    tracing::info!(
        addr = %local_addr,
        metrics_addr = %metrics_addr,
        data_dir = %config.data_dir.display(),
        max_connections = config.max_connections,
        max_concurrent_streams = config.max_concurrent_streams,
        request_memory_mb = config.request_memory_mb,
        response_memory_mb = config.response_memory_mb,
        tls = config.tls.enabled(),
        auth_tokens = config.auth.tokens.len(),
        mutual_tls = config.tls.client_ca_file.is_some(),
        "serving"
    );
    stats.readiness.set(true);
    // A remote store's outages show in health until the shutdown below.
    let following = AbortOnDrop(tokio::spawn(store::follow_store(
        Arc::clone(&engine),
        health_reporter.clone(),
        service_names.clone(),
        Arc::clone(&stats.readiness),
        Duration::from_millis(config.engine.etcd.request_timeout_ms),
    )));

    // Every reason to stop is one arm here; the drain below is the same for all.
    let reason = tokio::select! {
        () = &mut serving => {
            set_health(&health_reporter, &service_names, ServingStatus::NotServing).await;
            return Ok(());
        }
        () = shutdown => StopReason::Requested,
        // Only a local engine has a writer that can fail for good.
        reason = async {
            match engine.local() {
                Some(local) => local.failed().await,
                None => std::future::pending().await,
            }
        } => {
            tracing::error!(%reason, "the storage engine failed; stopping");
            StopReason::EngineFailed(reason)
        }
    };

    drop(following);
    set_health(&health_reporter, &service_names, ServingStatus::NotServing).await;
    stats.readiness.set(false);
    // Batch migrations stop at their next batch, so they do not hold the drain.
    migrator.shut_down();
    tracing::info!(
        ?reason,
        delay_ms = config.shutdown_delay_ms,
        grace_ms = config.shutdown_grace_ms,
        "shutting down: health is NOT_SERVING; still serving during the delay"
    );
    tokio::select! {
        () = &mut serving => return Ok(()),
        () = tokio::time::sleep(config.shutdown_delay()) => {}
    }

    tracing::info!(
        calls_in_flight = stats.in_flight.count(),
        open_connections = stats.connections.counts().open,
        "refusing new calls; draining in-flight calls"
    );
    // Watch streams would hold the drain for as long as their clients like:
    // they end now with UNAVAILABLE and the position to resume from elsewhere.
    watch.shut_down();
    let _ = drain_tx.send(());
    match tokio::time::timeout(config.shutdown_grace(), &mut serving).await {
        Ok(()) => {}
        Err(_) => {
            let closed = stats.connections.close_all();
            tracing::warn!(
                grace_ms = config.shutdown_grace_ms,
                closed_connections = closed,
                calls_in_flight = stats.in_flight.count(),
                "grace period over; closed the remaining connections"
            );
            // Closed sockets end their connections' tasks, which drops their
            // calls; wait (briefly, in case a handler is stuck) for that.
            let settled = async {
                let _ = (&mut serving).await;
                stats.in_flight.idle().await;
            };
            if tokio::time::timeout(FORCED_CLOSE_WAIT, settled)
                .await
                .is_err()
            {
                tracing::error!(
                    calls_in_flight = stats.in_flight.count(),
                    "calls still running after their connections were closed"
                );
            }
        }
    }
    if let StopReason::EngineFailed(reason) = reason {
        return Err(ServerError::EngineFailed(reason));
    }
    Ok(())
}

async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    service_names: &[&'static str],
    status: ServingStatus,
) {
    for name in service_names {
        reporter.set_service_status(*name, status).await;
    }
    reporter.set_service_status("", status).await;
}

/// Checks `config` as the server will use it: everything
/// [`Config::validate`] checks, and that the TLS files load (which takes the
/// server's rustls code, so the configuration module cannot check it).
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    config.validate()?;
    tls::validate(&config.tls).map_err(ConfigError::Invalid)
}
